//! The global merge: score = sum over locales of weight x normalised value, a key missing in a
//! locale contributing 0. Locales are combined in alphabetical order, so the result does not depend
//! on the order inputs arrive in.

use std::cmp::Ordering;
use std::hash::BuildHasher;

use hashbrown::{DefaultHashBuilder, HashTable};
use rayon::iter::{IntoParallelIterator, ParallelIterator};
use rayon::slice::ParallelSliceMut;

use crate::csv::{self, GlobalRow};
use crate::tally::Tally;

/// A merge that cannot be done.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MergeError {
    #[error("locale {0:?} is given more than once")]
    DuplicateLocale(String),
    #[error("weight of locale {locale:?} must be a finite number >= 0, got {weight}")]
    BadWeight { locale: String, weight: f64 },
    #[error("locale {locale:?} has {rows} keys, more than a merge can index")]
    TooManyKeys { locale: String, rows: usize },
}

/// One locale's normalised scores.
#[derive(Debug, Clone, Copy)]
pub struct LocaleScores<'a> {
    pub locale: &'a str,
    pub weight: f64,
    pub scores: &'a Tally,
}

/// The merged ranking with one contribution column per locale. Keys are not copied: each row
/// refers to the key in the first input (alphabetically) that has it.
#[derive(Debug, Clone)]
pub struct Global<'a> {
    /// Alphabetical.
    pub locales: Vec<String>,
    /// The inputs, in `locales` order.
    inputs: Vec<&'a Tally>,
    /// Per merged row: (input, row in that input) of its key.
    keys: Vec<(u32, u32)>,
    totals: Vec<f64>,
    /// `locales.len()` per merged row.
    contributions: Vec<f64>,
    /// Merged rows by score descending, then key ascending.
    order: Vec<u32>,
}

impl<'a> Global<'a> {
    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    fn key(&self, row: usize) -> &'a str {
        let (input, i) = self.keys[row];
        self.inputs[input as usize].key(i as usize)
    }

    /// The `i`-th row of the result.
    pub fn row(&self, i: usize) -> GlobalRow<'_> {
        let row = self.order[i] as usize;
        let n = self.locales.len();
        GlobalRow { kseq: self.key(row), score: self.totals[row], contributions: &self.contributions[row * n..(row + 1) * n] }
    }

    /// The rows by score descending, then key ascending.
    pub fn rows(&self) -> impl ExactSizeIterator<Item = GlobalRow<'_>> + '_ {
        (0..self.len()).map(|i| self.row(i))
    }

    /// Writes the result as CSV (see [`crate::csv::write_global_result`]), formatting blocks of rows on
    /// every core and writing them in order; `out` sees the same bytes, and at most a few blocks
    /// are in memory at once.
    pub fn write_csv(&self, mut out: impl std::io::Write) -> std::io::Result<()> {
        const BLOCK: usize = 16 * 1024;
        out.write_all(&csv::global_header(&self.locales))?;
        let batch = BLOCK * 2 * rayon::current_num_threads().max(1);
        for start in (0..self.len()).step_by(batch) {
            let end = (start + batch).min(self.len());
            let blocks: Vec<Vec<u8>> = (start..end)
                .step_by(BLOCK)
                .collect::<Vec<_>>()
                .into_par_iter()
                .map(|from| csv::global_rows_csv(Vec::new(), (from..(from + BLOCK).min(end)).map(|i| self.row(i))))
                .collect();
            for block in blocks {
                out.write_all(&block)?;
            }
        }
        out.flush()
    }
}

pub fn merge<'a>(inputs: &[LocaleScores<'a>]) -> Result<Global<'a>, MergeError> {
    let mut inputs: Vec<LocaleScores<'a>> = inputs.to_vec();
    inputs.sort_by(|a, b| a.locale.cmp(b.locale));
    for pair in inputs.windows(2) {
        if pair[0].locale == pair[1].locale {
            return Err(MergeError::DuplicateLocale(pair[0].locale.to_owned()));
        }
    }
    for input in &inputs {
        if !input.weight.is_finite() || input.weight < 0.0 {
            return Err(MergeError::BadWeight { locale: input.locale.to_owned(), weight: input.weight });
        }
        // Rows are indexed as u32: half the memory of usize, and no upload within the size cap
        // comes near four billion keys.
        if u32::try_from(input.scores.len()).is_err() {
            return Err(MergeError::TooManyKeys { locale: input.locale.to_owned(), rows: input.scores.len() });
        }
    }
    let n = inputs.len();
    let tallies: Vec<&'a Tally> = inputs.iter().map(|i| i.scores).collect();
    let key_of = |&(input, i): &(u32, u32)| tallies[input as usize].key(i as usize);
    let key_bytes = |&(input, i): &(u32, u32)| tallies[input as usize].key_bytes(i as usize);
    // Each shard indexes the keys whose hash falls in it, all shards at once: the time of a merge
    // is cache misses in its index, and they wait in parallel. Every shard reads every key, in
    // order, to hash it; that is cheap next to one miss.
    let hasher = DefaultHashBuilder::default();
    let shards = rayon::current_num_threads().max(1);
    let capacity = inputs.iter().map(|i| i.scores.len()).max().unwrap_or(0) / shards + 1;
    // Per shard: the (input, row) of each key it indexed, and their contributions.
    type Shard = (Vec<(u32, u32)>, Vec<f64>);
    let parts: Vec<Shard> = (0..shards)
        .into_par_iter()
        .map(|shard| {
            let mut index: HashTable<u32> = HashTable::with_capacity(capacity);
            let mut keys: Vec<(u32, u32)> = Vec::with_capacity(capacity);
            let mut contributions: Vec<f64> = Vec::with_capacity(capacity * n);
            for (col, input) in inputs.iter().enumerate() {
                for (i, (kseq, score)) in input.scores.iter().enumerate() {
                    let hash = hasher.hash_one(kseq);
                    if (hash >> 32) as usize % shards != shard {
                        continue;
                    }
                    let row = match index.find(hash, |&row| key_bytes(&keys[row as usize]) == kseq.as_bytes()) {
                        Some(&row) => row as usize,
                        None => {
                            let row = keys.len();
                            keys.push((col as u32, i as u32));
                            contributions.extend(std::iter::repeat_n(0.0, n));
                            index.insert_unique(hash, row as u32, |&r| hasher.hash_one(key_of(&keys[r as usize])));
                            row
                        }
                    };
                    contributions[row * n + col] += input.weight * score;
                }
            }
            (keys, contributions)
        })
        .collect();
    let rows: usize = parts.iter().map(|(k, _)| k.len()).sum();
    let mut keys: Vec<(u32, u32)> = Vec::with_capacity(rows);
    let mut contributions: Vec<f64> = Vec::with_capacity(rows * n);
    for (k, c) in parts {
        keys.extend(k);
        contributions.extend(c);
    }
    // Summed in locale order, so every input order gives the same bits.
    let totals: Vec<f64> = contributions.chunks_exact(n.max(1)).map(|parts| parts.iter().fold(0.0, |acc, c| acc + c)).collect();

    // Sorted as (score, first eight bytes of the key, row): most comparisons end on the two numbers
    // without reaching for the key, and long-tailed votes tie a lot.
    let mut sort: Vec<(f64, u64, u32)> =
        totals.iter().zip(&keys).enumerate().map(|(row, (&t, k))| (t, key_prefix(key_of(k)), row as u32)).collect();
    sort.par_sort_unstable_by(|a, b| {
        b.0.total_cmp(&a.0)
            .then(a.1.cmp(&b.1))
            .then_with(|| if a.2 == b.2 { Ordering::Equal } else { key_bytes(&keys[a.2 as usize]).cmp(key_bytes(&keys[b.2 as usize])) })
    });
    let order = sort.into_iter().map(|(_, _, row)| row).collect();
    Ok(Global { locales: inputs.iter().map(|i| i.locale.to_owned()).collect(), inputs: tallies, keys, totals, contributions, order })
}

/// The key's first eight bytes as a big-endian number, zero-padded: ordering these orders the keys
/// by those bytes; equal prefixes need the whole keys compared.
fn key_prefix(key: &str) -> u64 {
    let mut b = [0u8; 8];
    let k = key.as_bytes();
    let len = k.len().min(8);
    b[..len].copy_from_slice(&k[..len]);
    u64::from_be_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::normalize::by_score_then_key;
    use proptest::prelude::*;

    fn rows(pairs: &[(&str, f64)]) -> Tally {
        pairs.iter().copied().collect()
    }

    #[test]
    fn weighted_sum_with_missing_keys() {
        let jp = rows(&[("a", 0.5), ("b", 0.5)]);
        let kr = rows(&[("b", 0.25), ("c", 0.75)]);
        let g = merge(&[LocaleScores { locale: "kr", weight: 2.0, scores: &kr }, LocaleScores { locale: "jp", weight: 1.0, scores: &jp }])
            .unwrap();
        assert_eq!(g.locales, ["jp", "kr"]);
        let got: Vec<(&str, f64, Vec<f64>)> = g.rows().map(|r| (r.kseq, r.score, r.contributions.to_vec())).collect();
        assert_eq!(got, vec![("c", 1.5, vec![0.0, 1.5]), ("b", 1.0, vec![0.5, 0.5]), ("a", 0.5, vec![0.5, 0.0])]);
    }

    #[test]
    fn ties_break_by_key() {
        let jp = rows(&[("z", 1.0), ("m", 1.0), ("a", 1.0)]);
        let g = merge(&[LocaleScores { locale: "jp", weight: 1.0, scores: &jp }]).unwrap();
        let keys: Vec<&str> = g.rows().map(|r| r.kseq).collect();
        assert_eq!(keys, ["a", "m", "z"]);
    }

    #[test]
    fn ties_past_the_eighth_byte_and_nul_bytes_break_by_the_whole_key() {
        let jp = rows(&[("(7,47,4600)", 1.0), ("(7,47,46)", 1.0), ("ab\0", 1.0), ("(7,47,460)", 1.0), ("ab", 1.0), ("(7,47,45)", 2.0)]);
        let g = merge(&[LocaleScores { locale: "jp", weight: 1.0, scores: &jp }]).unwrap();
        let keys: Vec<&str> = g.rows().map(|r| r.kseq).collect();
        assert_eq!(keys, ["(7,47,45)", "(7,47,46)", "(7,47,460)", "(7,47,4600)", "ab", "ab\0"]);
    }

    #[test]
    fn rejects_duplicate_locale_and_bad_weight() {
        let r = rows(&[("a", 1.0)]);
        let jp = LocaleScores { locale: "jp", weight: 1.0, scores: &r };
        assert_eq!(merge(&[jp, jp]).unwrap_err(), MergeError::DuplicateLocale("jp".into()));
        let bad = LocaleScores { locale: "kr", weight: -1.0, scores: &r };
        assert!(matches!(merge(&[jp, bad]), Err(MergeError::BadWeight { .. })));
        assert!(merge(&[]).unwrap().is_empty());
    }

    fn locale_rows() -> impl Strategy<Value = Tally> {
        prop::collection::hash_map("[a-e]{1,2}", -3.0f64..3.0, 0..20).prop_map(|m| m.into_iter().collect())
    }

    fn all(g: &Global<'_>) -> Vec<(String, f64, Vec<f64>)> {
        g.rows().map(|r| (r.kseq.to_owned(), r.score, r.contributions.to_vec())).collect()
    }

    proptest! {
        #[test]
        fn independent_of_input_order(a in locale_rows(), b in locale_rows(), c in locale_rows(), wa in 0.0f64..5.0) {
            let la = LocaleScores { locale: "jp", weight: wa, scores: &a };
            let lb = LocaleScores { locale: "kr", weight: 1.0, scores: &b };
            let lc = LocaleScores { locale: "na", weight: 0.5, scores: &c };
            let one = merge(&[la, lb, lc]).unwrap();
            let two = merge(&[lc, la, lb]).unwrap();
            prop_assert_eq!(&one.locales, &two.locales);
            prop_assert_eq!(all(&one), all(&two));
        }

        #[test]
        fn tied_scores_order_by_key(a in prop::collection::hash_map("[ab\\x00(,)]{1,12}", 0u8..3, 0..40)) {
            let t: Tally = a.iter().map(|(k, v)| (k, f64::from(*v))).collect();
            let g = merge(&[LocaleScores { locale: "jp", weight: 1.0, scores: &t }]).unwrap();
            let mut expect: Vec<(&str, f64)> = a.iter().map(|(k, v)| (k.as_str(), f64::from(*v))).collect();
            expect.sort_by(|x, y| by_score_then_key(x.1, x.0, y.1, y.0));
            let got: Vec<(&str, f64)> = g.rows().map(|r| (r.kseq, r.score)).collect();
            prop_assert_eq!(got, expect);
        }

        #[test]
        fn score_is_sum_of_contributions(a in locale_rows(), b in locale_rows()) {
            let g = merge(&[
                LocaleScores { locale: "jp", weight: 1.5, scores: &a },
                LocaleScores { locale: "tw", weight: 1.0, scores: &b },
            ]).unwrap();
            let mut seen = std::collections::HashSet::new();
            for r in g.rows() {
                prop_assert!(seen.insert(r.kseq), "{} twice", r.kseq);
                let expect_jp = a.iter().find(|(k, _)| *k == r.kseq).map_or(0.0, |(_, v)| 1.5 * v);
                prop_assert_eq!(r.contributions[0], expect_jp);
                prop_assert!((r.score - r.contributions.iter().sum::<f64>()).abs() < 1e-12);
            }
            let union: std::collections::HashSet<&str> = a.iter().chain(b.iter()).map(|(k, _)| k).collect();
            prop_assert_eq!(seen, union);
            let rows: Vec<_> = g.rows().collect();
            for w in rows.windows(2) {
                prop_assert!(by_score_then_key(w[0].score, w[0].kseq, w[1].score, w[1].kseq).is_lt());
            }
        }
    }
}
