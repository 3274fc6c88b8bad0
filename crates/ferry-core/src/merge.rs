//! The global merge: score = sum over locales of weight x normalised value, a key missing in a
//! locale contributing 0. Locales are combined in alphabetical order, so the result does not depend
//! on the order inputs arrive in.

use hashbrown::HashTable;
use rayon::iter::{
    IndexedParallelIterator, IntoParallelIterator, IntoParallelRefIterator, IntoParallelRefMutIterator, ParallelExtend, ParallelIterator,
};
use rayon::slice::ParallelSliceMut;

use crate::csv::{self, GlobalRow};
use crate::tally::{Head, Tally};

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
/// carries its key's first sixteen bytes (all of nearly every key) and refers to the key in the
/// first input (alphabetically) that has it for the rest.
#[derive(Debug, Clone)]
pub struct Global<'a> {
    /// Alphabetical.
    pub locales: Vec<String>,
    /// The inputs, in `locales` order.
    inputs: Vec<&'a Tally>,
    /// Per merged row: (input, row in that input) of its key.
    keys: Vec<(u32, u32)>,
    /// `locales.len()` per merged row.
    contributions: Vec<f64>,
    /// The result's rows: by score descending, then key ascending.
    ranked: Vec<Ranked>,
}

/// A row of the result, with what orders it.
#[derive(Debug, Clone, Copy)]
struct Ranked {
    score: f64,
    key: Head,
    /// Its merged row.
    row: u32,
}

impl<'a> Global<'a> {
    pub fn len(&self) -> usize {
        self.ranked.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ranked.is_empty()
    }

    fn key(&self, row: usize) -> &'a str {
        let (input, i) = self.keys[row];
        self.inputs[input as usize].key(i as usize)
    }

    /// The `i`-th row of the result.
    pub fn row(&self, i: usize) -> GlobalRow<'_> {
        let r = &self.ranked[i];
        let row = r.row as usize;
        let n = self.locales.len();
        let kseq = r.key.key_or(|| self.key(row));
        GlobalRow { kseq, score: r.score, contributions: &self.contributions[row * n..(row + 1) * n] }
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
        const AHEAD: usize = 256;
        out.write_all(&csv::global_header(&self.locales))?;
        // The same buffers serve every batch of blocks: memory touched once, not once a block.
        let mut blocks: Vec<Vec<u8>> = vec![Vec::new(); 2 * rayon::current_num_threads().max(1)];
        for start in (0..self.len()).step_by(BLOCK * blocks.len()) {
            blocks.par_iter_mut().enumerate().for_each(|(b, block)| {
                let from = (start + b * BLOCK).min(self.len());
                block.clear();
                for from in (from..(from + BLOCK).min(self.len())).step_by(AHEAD) {
                    let rows = from..(from + AHEAD).min(self.len());
                    // Rows in score order sit anywhere among the contributions: touched first, in a
                    // loop of nothing else, their cache misses overlap instead of waiting in turn.
                    for r in &self.ranked[rows.clone()] {
                        std::hint::black_box(self.contributions.get(r.row as usize * self.locales.len()).copied());
                    }
                    *block = csv::global_rows_csv(std::mem::take(block), rows.map(|i| self.row(i)));
                }
            });
            for block in &blocks {
                out.write_all(block)?;
            }
        }
        out.flush()
    }

    /// The result as CSV in memory: the bytes of [`Global::write_csv`].
    pub fn to_csv(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len() * (24 + 22 * (self.locales.len() + 1)));
        self.write_csv(&mut out).expect("writing into memory cannot fail");
        out
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
    let key_bytes = |(input, i): (u32, u32)| tallies[input as usize].key_bytes(i as usize);
    // Keys are merged partition by partition, a partition being the keys whose hashes share some
    // bits, wherever they come from: each partition's index fits in a core's cache, partitions are
    // merged on every core at once, and no key is hashed again (a tally keeps its keys' hashes).
    // Keys are compared by hash and head, and their bytes read only past sixteen.
    let bits = partition_bits(inputs.iter().map(|i| i.scores.len()).max().unwrap_or(0));
    // Filed a few partitions at a time, so that the filed copies of the keys take at most about
    // `FILED_BYTES` beside the inputs.
    let entries: usize = inputs.iter().map(|i| i.scores.len()).sum();
    let passes = (entries * size_of::<Entry>()).div_ceil(FILED_BYTES).clamp(1, 1 << bits);
    let per_pass = (1usize << bits).div_ceil(passes);
    let mut parts: Vec<Part> = Vec::with_capacity(1 << bits);
    // Each input's rows by pass, in row order: a pass then reads its rows nearly in sequence.
    let rows_by_pass: Vec<Vec<Vec<u32>>> = tallies
        .par_iter()
        .map(|t| {
            let mut lists = vec![Vec::new(); (1usize << bits).div_ceil(per_pass)];
            for i in 0..t.len() {
                lists[partition(t.hash(i), bits) / per_pass].push(i as u32);
            }
            lists
        })
        .collect();
    // Refilled pass after pass: memory the first pass touched serves the others.
    let mut filed: Vec<Filed> = tallies.iter().map(|_| Filed::default()).collect();
    for (pass, first) in (0..1usize << bits).step_by(per_pass).enumerate() {
        let range = first..(first + per_pass).min(1 << bits);
        filed.par_iter_mut().zip(&tallies).zip(&rows_by_pass).for_each(|((f, t), rows)| f.fill(t, bits, range.clone(), &rows[pass]));
        parts.par_extend(range.clone().into_par_iter().map(|p| merge_part(inputs.as_slice(), &filed, p - range.start, &key_bytes)));
    }
    drop(rows_by_pass);

    let rows: usize = parts.iter().map(|p| p.keys.len()).sum();
    if u32::try_from(rows).is_err() {
        return Err(MergeError::TooManyKeys { locale: inputs.iter().map(|i| i.locale).collect::<Vec<_>>().join("+"), rows });
    }
    let mut keys: Vec<(u32, u32)> = Vec::with_capacity(rows);
    let mut contributions: Vec<f64> = Vec::with_capacity(rows * n);
    let mut ranked: Vec<Ranked> = Vec::with_capacity(rows);
    for part in parts {
        let base = keys.len() as u32;
        ranked.extend(part.ranked.into_iter().map(|r| Ranked { row: base + r.row, ..r }));
        keys.extend(part.keys);
        contributions.extend(part.contributions);
    }
    // Most comparisons end on the score and the key's head; long-tailed votes tie a lot.
    ranked.par_sort_unstable_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then_with(|| a.key.cmp_keys(&b.key).unwrap_or_else(|| key_bytes(keys[a.row as usize]).cmp(key_bytes(keys[b.row as usize]))))
    });
    Ok(Global { locales: inputs.iter().map(|i| i.locale.to_owned()).collect(), inputs: tallies, keys, contributions, ranked })
}

/// At most this much memory holds the filed copies of the inputs' keys at once.
const FILED_BYTES: usize = 48 << 20;

/// What one partition's merge found: per key, where it was first seen, its rank order and its
/// contributions.
struct Part {
    /// (input, row in that input) of each key.
    keys: Vec<(u32, u32)>,
    /// Each key's score and head; `row` counts from the partition's first key.
    ranked: Vec<Ranked>,
    /// `n` per key.
    contributions: Vec<f64>,
}

/// Merges partition `p` of every input: keys are compared by hash and head, and their bytes read
/// only past sixteen.
fn merge_part<'k>(inputs: &[LocaleScores<'_>], filed: &[Filed], p: usize, key_bytes: &impl Fn((u32, u32)) -> &'k [u8]) -> Part {
    let n = inputs.len();
    let capacity = filed.iter().map(|f| f.part(p).len()).max().unwrap_or(0);
    let mut keys: Vec<(u32, u32)> = Vec::with_capacity(capacity);
    let mut firsts: Vec<Entry> = Vec::with_capacity(capacity);
    let mut contributions: Vec<f64> = Vec::with_capacity(capacity * n);
    let mut index: HashTable<u32> = HashTable::with_capacity(capacity);
    for (col, (input, filed)) in inputs.iter().zip(filed).enumerate() {
        let col = col as u32;
        for e in filed.part(p) {
            let same = |&r: &u32| {
                let first = &firsts[r as usize];
                first.hash == e.hash
                    && first.head == e.head
                    && (e.head.is_whole() || key_bytes(keys[r as usize]) == key_bytes((col, e.row)))
            };
            let row = match index.find(e.hash, same) {
                Some(&row) => row as usize,
                None => {
                    let row = keys.len();
                    keys.push((col, e.row));
                    firsts.push(*e);
                    contributions.extend(std::iter::repeat_n(0.0, n));
                    index.insert_unique(e.hash, row as u32, |&r| firsts[r as usize].hash);
                    row
                }
            };
            contributions[row * n + col as usize] += input.weight * e.score;
        }
    }
    let ranked = firsts
        .iter()
        .zip(contributions.chunks_exact(n.max(1)))
        .enumerate()
        // Summed in locale order, so every input order gives the same bits.
        .map(|(row, (first, c))| Ranked { score: c.iter().fold(0.0, |acc, c| acc + c), key: first.head, row: row as u32 })
        .collect();
    Part { keys, ranked, contributions }
}

/// How many bits of a key's hash choose its partition: about 4,096 keys a partition, whose index
/// then fits in a core's cache.
fn partition_bits(keys: usize) -> u32 {
    (keys / 4096).checked_ilog2().map_or(0, |b| b + 1).min(12)
}

/// A key's partition: bits the hash table leaves alone (it takes its buckets from the low bits
/// and its tags from the top seven), so keys of one partition still spread over its index.
fn partition(hash: u64, bits: u32) -> usize {
    ((hash >> 32) & ((1 << bits) - 1)) as usize
}

/// One key of an input, filed under its partition.
#[derive(Debug, Clone, Copy, Default)]
struct Entry {
    hash: u64,
    score: f64,
    head: Head,
    row: u32,
}

/// An input's keys in a range of partitions, grouped by partition (a counting sort: in row order
/// within a partition).
#[derive(Default)]
struct Filed {
    entries: Vec<Entry>,
    /// Partition `range.start + p` is `entries[starts[p]..starts[p + 1]]`.
    starts: Vec<usize>,
}

impl Filed {
    /// Files `rows` of `tally`, every one of them in a partition of `range`.
    fn fill(&mut self, tally: &Tally, bits: u32, range: std::ops::Range<usize>, rows: &[u32]) {
        let Filed { entries, starts } = self;
        starts.clear();
        starts.resize(range.len() + 1, 0);
        for &i in rows {
            starts[partition(tally.hash(i as usize), bits) - range.start + 1] += 1;
        }
        for p in 1..starts.len() {
            starts[p] += starts[p - 1];
        }
        let mut next = starts.clone();
        entries.clear();
        entries.resize(rows.len(), Entry::default());
        for &i in rows {
            let (hash, score) = (tally.hash(i as usize), tally.value(i as usize));
            let at = &mut next[partition(hash, bits) - range.start];
            entries[*at] = Entry { hash, score, head: Head::of(tally.key_bytes(i as usize)), row: i };
            *at += 1;
        }
    }

    fn part(&self, p: usize) -> &[Entry] {
        &self.entries[self.starts[p]..self.starts[p + 1]]
    }
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
