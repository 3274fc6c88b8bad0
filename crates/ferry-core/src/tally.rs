//! [`Tally`]: distinct keys, each with one number, as every step of the vote pipeline holds them.
//! How a tally is read from and written to a file is the CSV contract, [`crate::csv`].

use std::cmp::Ordering;
use std::hash::BuildHasher;
use std::sync::OnceLock;

use hashbrown::{DefaultHashBuilder, HashTable};

/// The hash of a key, the same for every index of keys in this process: one seed for all of them.
/// The seed is random per process, as a `HashMap`'s is, so no file can choose keys that collide.
pub(crate) fn key_hash(key: &[u8]) -> u64 {
    static HASHER: OnceLock<DefaultHashBuilder> = OnceLock::new();
    HASHER.get_or_init(DefaultHashBuilder::default).hash_one(key)
}

/// A key's first sixteen bytes (zero-padded) and its length: the whole key when it is at most
/// sixteen bytes long, and otherwise enough to order and tell apart most keys.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Head {
    bytes: [u8; 16],
    /// Up to `u16::MAX`: past sixteen bytes only the whole keys tell keys apart.
    len: u16,
}

impl Head {
    pub(crate) fn of(key: &[u8]) -> Head {
        let mut bytes = [0u8; 16];
        // Byte by byte: quicker for short keys than a copy of unknown length.
        for (b, k) in bytes.iter_mut().zip(key) {
            *b = *k;
        }
        Head { bytes, len: key.len().min(u16::MAX.into()) as u16 }
    }

    pub(crate) fn is_whole(&self) -> bool {
        self.len <= 16
    }

    /// The head as two numbers, to keep in arrays of numbers.
    pub(crate) fn to_parts(self) -> (u128, u16) {
        (u128::from_ne_bytes(self.bytes), self.len)
    }

    pub(crate) fn from_parts(bytes: u128, len: u16) -> Head {
        Head { bytes: bytes.to_ne_bytes(), len }
    }

    /// Orders as the keys do, or `None` when only the whole keys can tell.
    pub(crate) fn cmp_keys(&self, other: &Head) -> Option<Ordering> {
        match u128::from_be_bytes(self.bytes).cmp(&u128::from_be_bytes(other.bytes)) {
            // Zero padding orders "ab" before "ab\0": equal heads of whole keys differ in length.
            Ordering::Equal if self.is_whole() && other.is_whole() => Some(self.len.cmp(&other.len)),
            Ordering::Equal => None,
            order => Some(order),
        }
    }
}

/// Distinct keys, each with one number, in insertion order: a regional upload's summed scores, or a
/// locale's normalised ones.
///
/// The keys sit back to back in one buffer: a million keys are one allocation, not a million, and
/// every later step (normalise, merge, write) refers to them instead of copying them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tally {
    text: String,
    /// End of key `i` in `text`; key `i` starts where key `i - 1` ends.
    ends: Vec<usize>,
    values: Vec<f64>,
}

impl Tally {
    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    pub fn key(&self, i: usize) -> &str {
        &self.text[self.span(i)]
    }

    /// [`Tally::key`] as bytes: comparing these skips the char-boundary checks of slicing a str.
    pub(crate) fn key_bytes(&self, i: usize) -> &[u8] {
        &self.text.as_bytes()[self.span(i)]
    }

    /// Where key `i` sits in `text`.
    fn span(&self, i: usize) -> std::ops::Range<usize> {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        start..self.ends[i]
    }

    pub fn value(&self, i: usize) -> f64 {
        self.values[i]
    }

    pub fn values(&self) -> &[f64] {
        &self.values
    }

    /// The values, to change in place (one per key, in order), keeping the keys: how a tally becomes
    /// its normalised scores without copying a key.
    pub fn values_mut(&mut self) -> &mut [f64] {
        &mut self.values
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, f64)> + '_ {
        (0..self.len()).map(|i| (self.key(i), self.values[i]))
    }

    fn push(&mut self, key: &str, value: f64) {
        self.text.push_str(key);
        self.ends.push(self.text.len());
        self.values.push(value);
    }

    fn shrink_to_fit(&mut self) {
        self.text.shrink_to_fit();
        self.ends.shrink_to_fit();
        self.values.shrink_to_fit();
    }
}

/// Pairs with a repeated key are summed, as [`crate::csv::read_tally`] sums duplicate rows.
impl<K: AsRef<str>> FromIterator<(K, f64)> for Tally {
    fn from_iter<I: IntoIterator<Item = (K, f64)>>(pairs: I) -> Tally {
        let mut b = Builder::with_capacity(0, 0);
        for (key, value) in pairs {
            if let Some(i) = b.insert(key.as_ref(), value) {
                b.tally.values[i] += value;
            }
        }
        b.tally
    }
}

/// A [`Tally`] under construction, with an index from key to row.
pub(crate) struct Builder {
    tally: Tally,
    /// Row numbers, hashed by their key: the key itself is stored once, in the tally. Four bytes a
    /// row keep the index half the size it would be with `usize`, and its cache misses fewer.
    index: HashTable<u32>,
}

impl Builder {
    fn with_capacity(rows: usize, text: usize) -> Builder {
        let tally = Tally { text: String::with_capacity(text), ends: Vec::with_capacity(rows), values: Vec::with_capacity(rows) };
        Builder { tally, index: HashTable::with_capacity(rows) }
    }

    /// Adds `key` with `value` and returns `None`, or returns the row `key` already has.
    pub(crate) fn insert(&mut self, key: &str, value: f64) -> Option<usize> {
        let Builder { tally, index } = self;
        let hash = key_hash(key.as_bytes());
        if let Some(&i) = index.find(hash, |&i| tally.key_bytes(i as usize) == key.as_bytes()) {
            return Some(i as usize);
        }
        // Readers refuse the key past the last one (`is_full`); no other tally comes near it.
        let row = u32::try_from(tally.len()).expect("a tally holds at most u32::MAX keys");
        // Sized for every key up front (`for_input`), the index rarely grows: rehashing its keys
        // then costs less than keeping each key's hash.
        index.insert_unique(hash, row, |&i| key_hash(tally.key_bytes(i as usize)));
        tally.push(key, value);
        None
    }

    /// Sized once from the input: growing to a million keys would rehash about twenty times and
    /// hold the old and new tables at once. The size comes from the bytes, not from the lines alone
    /// (see [`crate::budget::key_capacity`]): a file of newlines must not reserve a table for rows it
    /// does not have. Capacity never touched costs address space, not memory.
    pub(crate) fn for_input(bytes: &[u8]) -> Builder {
        let lines = bytes.iter().filter(|&&b| b == b'\n').count() + 1;
        Builder::with_capacity(crate::budget::key_capacity(bytes.len(), lines), bytes.len())
    }

    /// Whether a new key would be one more than a tally can hold (`u32::MAX`).
    pub(crate) fn is_full(&self) -> bool {
        self.tally.len() >= u32::MAX as usize
    }

    /// Keys so far.
    pub(crate) fn len(&self) -> usize {
        self.tally.len()
    }

    /// Bytes of the keys so far.
    pub(crate) fn key_bytes(&self) -> usize {
        self.tally.text.len()
    }

    pub(crate) fn value(&self, row: usize) -> f64 {
        self.tally.values[row]
    }

    pub(crate) fn set_value(&mut self, row: usize, value: f64) {
        self.tally.values[row] = value;
    }

    pub(crate) fn finish(self) -> Tally {
        let mut tally = self.tally;
        tally.shrink_to_fit();
        tally
    }
}

/// Keys that tie past their first sixteen bytes, and keys longer than a [`Head`]'s length counts:
/// the keys only whole-key comparison tells apart, for the merge's and the locale result's tests.
#[cfg(test)]
pub(crate) fn keys_past_their_head() -> Vec<String> {
    let long = "k".repeat(70_000);
    vec![
        format!("{}b", "x".repeat(20)),
        format!("{}a", "x".repeat(20)),
        "x".repeat(16),
        format!("{}\0", "x".repeat(16)),
        format!("{long}b"),
        format!("{long}a"),
        long,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(t: &Tally) -> Vec<(&str, f64)> {
        t.iter().collect()
    }

    #[test]
    fn keys_are_stored_once_and_pairs_sum_like_rows() {
        let t: Tally = [("b", 1.0), ("a", 2.0), ("b", 0.5), ("", 0.0)].into_iter().collect();
        assert_eq!(rows(&t), vec![("b", 1.5), ("a", 2.0), ("", 0.0)]);
        assert_eq!((t.len(), t.key(1), t.value(0)), (3, "a", 1.5));
        let mut doubled = t.clone();
        doubled.values_mut().iter_mut().for_each(|x| *x *= 2.0);
        assert_eq!(rows(&doubled), vec![("b", 3.0), ("a", 4.0), ("", 0.0)]);
        let read = crate::csv::read_tally("f", b"kseq,score\nb,1\na,2\nb,0.5\n").unwrap();
        assert_eq!(rows(&read), vec![("b", 1.5), ("a", 2.0)]);
    }
}
