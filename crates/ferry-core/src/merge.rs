//! The global merge: score = sum over locales of weight x normalised value, a key missing in a
//! locale contributing 0. Locales are combined in alphabetical order, so the result does not depend
//! on the order inputs arrive in.

use hashbrown::HashTable;
use rayon::iter::{IndexedParallelIterator, IntoParallelIterator, IntoParallelRefIterator, IntoParallelRefMutIterator, ParallelIterator};
use rayon::slice::ParallelSliceMut;

use crate::csv::{self, GlobalRow};
use crate::tally::{Head, Tally, key_hash};

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
    /// Per slot, the key of a merged row as [`packed`] (input, row). Each partition of the merge
    /// owns as many slots as it could need; those it did not need were never touched, and cost
    /// address space, not memory.
    keys: Vec<u64>,
    /// `locales.len()` per slot.
    contributions: Vec<f64>,
    /// The result's rows, as slots: by score descending, then key ascending.
    order: Vec<u32>,
}

/// (input, row in that input) in one number.
fn packed(input: u32, row: u32) -> u64 {
    (u64::from(input) << 32) | u64::from(row)
}

/// A row's score: its contributions summed in locale order, so every input order gives the same
/// bits.
fn total(contributions: &[f64]) -> f64 {
    contributions.iter().fold(0.0, |acc, c| acc + c)
}

impl<'a> Global<'a> {
    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    fn key(&self, packed: u64) -> &'a str {
        self.inputs[(packed >> 32) as usize].key(packed as u32 as usize)
    }

    /// The `i`-th row of the result.
    pub fn row(&self, i: usize) -> GlobalRow<'_> {
        let slot = self.order[i] as usize;
        let n = self.locales.len();
        let contributions = &self.contributions[slot * n..(slot + 1) * n];
        GlobalRow { kseq: self.key(self.keys[slot]), score: total(contributions), contributions }
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
                let mut keys = [0u64; AHEAD];
                for from in (from..(from + BLOCK).min(self.len())).step_by(AHEAD) {
                    let rows = from..(from + AHEAD).min(self.len());
                    // Rows in score order sit anywhere among the slots and the inputs' keys: touched
                    // first, in loops of nothing else, their cache misses overlap instead of
                    // waiting in turn.
                    for (key, &slot) in keys.iter_mut().zip(&self.order[rows.clone()]) {
                        *key = self.keys[slot as usize];
                    }
                    for (&key, &slot) in keys.iter().zip(&self.order[rows.clone()]) {
                        let contribution = self.contributions[slot as usize * self.locales.len()];
                        std::hint::black_box((self.key(key).as_bytes().first().copied(), contribution));
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
    let key_bytes = |packed: u64| tallies[(packed >> 32) as usize].key_bytes(packed as u32 as usize);
    // Keys are merged partition by partition, a partition being the keys whose hashes share some
    // bits, wherever they come from: each partition's index fits in a core's cache, and partitions
    // are merged on every core at once. Keys are compared by hash and head, their bytes read only
    // past sixteen.
    let bits = partition_bits(inputs.iter().map(|i| i.scores.len()).max().unwrap_or(0));
    let parts = 1usize << bits;
    let entries: usize = inputs.iter().map(|i| i.scores.len()).sum();
    if u32::try_from(entries).is_err() {
        return Err(MergeError::TooManyKeys { locale: inputs.iter().map(|i| i.locale).collect::<Vec<_>>().join("+"), rows: entries });
    }
    // Filed a few partitions at a time, so that the filed copies of the keys take at most about
    // `FILED_BYTES` beside the inputs.
    let passes = (entries * size_of::<Entry>()).div_ceil(FILED_BYTES).clamp(1, parts);
    let per_pass = parts.div_ceil(passes);
    let hashed: Vec<Hashed> = tallies.par_iter().map(|t| Hashed::new(t, bits, per_pass)).collect();
    // Partition `p` owns slots `starts[p]..starts[p + 1]`: as many as its keys in every input.
    let mut starts = vec![0usize; parts + 1];
    for p in 0..parts {
        starts[p + 1] = starts[p] + hashed.iter().map(|h| h.counts[p] as usize).sum::<usize>();
    }
    // Zeroed on allocation by the system: pages of slots no key needs are never touched.
    let mut keys = vec![0u64; entries];
    let mut contributions = vec![0.0f64; entries * n];
    let mut heads = vec![0u128; entries];
    let mut lens = vec![0u16; entries];
    let mut used = vec![0usize; parts];
    // Refilled pass after pass: memory the first pass touched serves the others.
    let mut filed: Vec<Filed> = tallies.iter().map(|_| Filed::default()).collect();
    for (pass, first) in (0..parts).step_by(per_pass).enumerate() {
        let range = first..(first + per_pass).min(parts);
        filed.par_iter_mut().zip(&tallies).zip(&hashed).for_each(|((f, t), h)| f.fill(t, h, bits, range.clone(), pass));
        let sizes = || starts[range.clone()].iter().zip(&starts[range.start + 1..=range.end]).map(|(a, b)| b - a);
        let stretch = starts[range.start]..starts[range.end];
        let slots: Vec<Slots<'_>> = split(&mut keys[stretch.clone()], sizes())
            .into_iter()
            .zip(split(&mut contributions[stretch.start * n..stretch.end * n], sizes().map(|s| s * n)))
            .zip(split(&mut heads[stretch.clone()], sizes()))
            .zip(split(&mut lens[stretch], sizes()))
            .map(|(((keys, contributions), heads), lens)| Slots { keys, contributions, heads, lens })
            .collect();
        slots.into_par_iter().zip(&mut used[range]).enumerate().for_each_init(Scratch::default, |scratch, (p, (slots, used))| {
            *used = scratch.merge_part(inputs.as_slice(), &filed, p, slots, &key_bytes);
        });
    }
    drop((filed, hashed));

    let mut ranked: Vec<Ranked> = Vec::with_capacity(used.iter().sum());
    for (p, &used) in used.iter().enumerate() {
        ranked.extend((starts[p]..starts[p] + used).map(|slot| Ranked {
            score: total(&contributions[slot * n..(slot + 1) * n]),
            key: Head::from_parts(heads[slot], lens[slot]),
            slot: slot as u32,
        }));
    }
    drop((heads, lens));
    let key_of = |r: &Ranked| key_bytes(keys[r.slot as usize]);
    // Most comparisons end on the score and the key's head; long-tailed votes tie a lot.
    ranked.par_sort_unstable_by(|a, b| {
        b.score.total_cmp(&a.score).then_with(|| a.key.cmp_keys(&b.key).unwrap_or_else(|| key_of(a).cmp(key_of(b))))
    });
    // Kept as slots alone: an eighth of the memory while the result is written.
    let order = ranked.iter().map(|r| r.slot).collect();
    drop(ranked);
    Ok(Global { locales: inputs.iter().map(|i| i.locale.to_owned()).collect(), inputs: tallies, keys, contributions, order })
}

/// A row of the result while the rows are sorted, with what orders it.
#[derive(Debug, Clone, Copy)]
struct Ranked {
    score: f64,
    key: Head,
    slot: u32,
}

/// At most this much memory holds the filed copies of the inputs' keys at once.
const FILED_BYTES: usize = 48 << 20;

/// `slice` cut into consecutive pieces of the given lengths.
fn split<T>(mut slice: &mut [T], lens: impl Iterator<Item = usize>) -> Vec<&mut [T]> {
    lens.map(|len| {
        let (piece, rest) = std::mem::take(&mut slice).split_at_mut(len);
        slice = rest;
        piece
    })
    .collect()
}

/// The slots of one partition.
struct Slots<'s> {
    keys: &'s mut [u64],
    contributions: &'s mut [f64],
    heads: &'s mut [u128],
    lens: &'s mut [u16],
}

/// What merging a partition needs besides its slots, kept from one partition to the next.
#[derive(Default)]
struct Scratch {
    /// The partition's keys by hash: their slots.
    index: HashTable<u32>,
    /// The hash of the key of each slot used.
    hashes: Vec<u64>,
}

impl Scratch {
    /// Merges the `p`-th filed partition of every input into `slots`; returns how many it used.
    fn merge_part<'k>(
        &mut self,
        inputs: &[LocaleScores<'_>],
        filed: &[Filed],
        p: usize,
        slots: Slots<'_>,
        key_bytes: &impl Fn(u64) -> &'k [u8],
    ) -> usize {
        let n = inputs.len();
        let Scratch { index, hashes } = self;
        let Slots { keys, contributions, heads, lens } = slots;
        index.clear();
        hashes.clear();
        for (col, (input, filed)) in inputs.iter().zip(filed).enumerate() {
            for e in filed.part(p) {
                let (head, len) = e.head.to_parts();
                let key = packed(col as u32, e.row);
                let same = |&r: &u32| {
                    let r = r as usize;
                    hashes[r] == e.hash && heads[r] == head && lens[r] == len && (e.head.is_whole() || key_bytes(keys[r]) == key_bytes(key))
                };
                let r = match index.find(e.hash, same) {
                    Some(&r) => r as usize,
                    None => {
                        let r = hashes.len();
                        (keys[r], heads[r], lens[r]) = (key, head, len);
                        hashes.push(e.hash);
                        index.insert_unique(e.hash, r as u32, |&r| hashes[r as usize]);
                        r
                    }
                };
                contributions[r * n + col] += input.weight * e.score;
            }
        }
        hashes.len()
    }
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

/// An input's key hashes, how many keys each partition has, and its rows by pass of the merge in
/// row order (a pass then reads its rows nearly in sequence).
struct Hashed {
    hashes: Vec<u64>,
    counts: Vec<u32>,
    by_pass: Vec<Vec<u32>>,
}

impl Hashed {
    fn new(tally: &Tally, bits: u32, per_pass: usize) -> Hashed {
        let hashes: Vec<u64> = (0..tally.len()).map(|i| key_hash(tally.key_bytes(i))).collect();
        let mut counts = vec![0u32; 1 << bits];
        for &hash in &hashes {
            counts[partition(hash, bits)] += 1;
        }
        let mut by_pass: Vec<Vec<u32>> = counts.chunks(per_pass).map(|c| Vec::with_capacity(c.iter().map(|&c| c as usize).sum())).collect();
        for (i, &hash) in hashes.iter().enumerate() {
            by_pass[partition(hash, bits) / per_pass].push(i as u32);
        }
        Hashed { hashes, counts, by_pass }
    }
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
    /// Files the rows of `tally` in the partitions of `range`, the `pass`-th of the merge.
    fn fill(&mut self, tally: &Tally, hashed: &Hashed, bits: u32, range: std::ops::Range<usize>, pass: usize) {
        let Filed { entries, starts } = self;
        starts.clear();
        starts.push(0);
        let mut at = 0;
        for &count in &hashed.counts[range.clone()] {
            at += count as usize;
            starts.push(at);
        }
        let mut next = starts.clone();
        entries.clear();
        entries.resize(at, Entry::default());
        for &i in &hashed.by_pass[pass] {
            let (hash, score) = (hashed.hashes[i as usize], tally.value(i as usize));
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

    /// Keys that share their first sixteen bytes (and keys longer than a head's length counts) merge,
    /// match across locales and order by their whole bytes.
    #[test]
    fn keys_past_their_head_match_and_order_by_every_byte() {
        let keys = crate::tally::keys_past_their_head();
        let jp: Tally = keys.iter().map(|k| (k.as_str(), 1.0)).collect();
        let kr: Tally = keys.iter().rev().map(|k| (k.as_str(), 1.0)).collect();
        let g = merge(&[LocaleScores { locale: "jp", weight: 1.0, scores: &jp }, LocaleScores { locale: "kr", weight: 1.0, scores: &kr }])
            .unwrap();
        let mut expect: Vec<&str> = keys.iter().map(String::as_str).collect();
        expect.sort();
        let got: Vec<(&str, Vec<f64>)> = g.rows().map(|r| (r.kseq, r.contributions.to_vec())).collect();
        assert_eq!(got.iter().map(|(k, _)| *k).collect::<Vec<_>>(), expect);
        assert!(got.iter().all(|(_, c)| c == &[1.0, 1.0]), "every key met itself in the other locale");
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
