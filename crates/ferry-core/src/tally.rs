//! [`Tally`]: distinct keys, each with one number, as every step of the vote pipeline holds them.
//! How a tally is read from and written to a file is the CSV contract, [`crate::csv`].

use std::hash::BuildHasher;

use hashbrown::{DefaultHashBuilder, HashTable};

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

    /// Replaces every value at once (same count, same order), keeping the keys: how a tally becomes
    /// its normalised scores without copying a key.
    pub fn map_values(mut self, f: impl FnOnce(&[f64]) -> Vec<f64>) -> Tally {
        let values = f(&self.values);
        assert_eq!(values.len(), self.values.len(), "map_values must keep one value per key");
        self.values = values;
        self
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
    hasher: DefaultHashBuilder,
    /// Row numbers, hashed by their key: the key itself is stored once, in the tally.
    index: HashTable<usize>,
}

impl Builder {
    fn with_capacity(rows: usize, text: usize) -> Builder {
        let tally = Tally { text: String::with_capacity(text), ends: Vec::with_capacity(rows), values: Vec::with_capacity(rows) };
        Builder { tally, hasher: DefaultHashBuilder::default(), index: HashTable::with_capacity(rows) }
    }

    /// Adds `key` with `value` and returns `None`, or returns the row `key` already has.
    pub(crate) fn insert(&mut self, key: &str, value: f64) -> Option<usize> {
        let Builder { tally, hasher, index } = self;
        let hash = hasher.hash_one(key);
        if let Some(&i) = index.find(hash, |&i| tally.key_bytes(i) == key.as_bytes()) {
            return Some(i);
        }
        index.insert_unique(hash, tally.len(), |&i| hasher.hash_one(tally.key(i)));
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
        let doubled = t.clone().map_values(|v| v.iter().map(|x| x * 2.0).collect());
        assert_eq!(rows(&doubled), vec![("b", 3.0), ("a", 4.0), ("", 0.0)]);
        let read = crate::csv::read_tally("f", b"kseq,score\nb,1\na,2\nb,0.5\n").unwrap();
        assert_eq!(rows(&read), vec![("b", 1.5), ("a", 2.0)]);
    }
}
