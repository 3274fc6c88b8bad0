//! The CSV contract.
//!
//! Regional upload: a header naming `kseq` and `score` (any case, any order, optional UTF-8 BOM, fields
//! optionally quoted); `kseq` is an opaque non-empty string, `score` a finite number >= 0; duplicate
//! keys are summed. Locale result: `kseq,score,raw`. Global result: `kseq,score,{locale}...`.
//!
//! Here: [`Tally`] (the keys, each with one number) and [`TallyError`]. The read side (the upload and
//! locale-result readers) is `read`, the write side (the result writers) is `write`; their public
//! names are re-exported here, so `ferry_core::tally::X` is the path to use.

use std::fmt;
use std::hash::BuildHasher;

use hashbrown::{DefaultHashBuilder, HashTable};

mod read;
mod write;

pub(crate) use read::read_records;
pub use read::{check_size, read_locale_result, read_tally, read_tally_within};
pub use write::{GlobalRow, NormRow, format_number, write_global_result, write_locale_result};
pub(crate) use write::{global_header, global_rows_csv, locale_rows_csv};

/// A bad input file. Names the file (object key or path), the line when there is one, and what is wrong.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub struct TallyError {
    /// The object key or file path the bytes came from.
    pub source_name: String,
    /// 1-based line of the offending record, when the fault is in one record.
    pub line: Option<u64>,
    pub kind: TallyErrorKind,
}

impl fmt::Display for TallyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}: line {}: {}", self.source_name, line, self.kind),
            None => write!(f, "{}: {}", self.source_name, self.kind),
        }
    }
}

/// What is wrong with a file.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TallyErrorKind {
    /// The file has no header line at all.
    #[error("the file is empty: expected a header naming {expected}")]
    NoHeader { expected: String },
    /// A required column is not named in the header.
    #[error("the header has no `{column}` column (found: {found})")]
    MissingColumn { column: &'static str, found: String },
    /// A required column is named twice.
    #[error("the header names `{column}` more than once")]
    DuplicateColumn { column: &'static str },
    /// A field is not valid UTF-8.
    #[error("field `{column}` is not valid UTF-8")]
    InvalidUtf8 { column: &'static str },
    /// The key field is empty.
    #[error("field `kseq` is empty")]
    EmptyKey,
    /// A number field does not parse.
    #[error("field `{column}` is not a number: {value:?}")]
    NotANumber { column: &'static str, value: String },
    /// A number field is NaN or infinite.
    #[error("field `{column}` is not finite: {value:?}")]
    NotFinite { column: &'static str, value: String },
    /// A score is below zero.
    #[error("field `{column}` is negative: {value:?}")]
    Negative { column: &'static str, value: String },
    /// Summing duplicate rows of one key overflowed.
    #[error("the summed score of kseq {kseq:?} overflows")]
    SumOverflow { kseq: String },
    /// A key appears twice in a file whose keys must be unique (results).
    #[error("kseq {kseq:?} appears more than once")]
    DuplicateKey { kseq: String },
    /// An empty line: the contract has no empty records, and a body of nothing but newlines must
    /// not pass as an empty tally.
    #[error("the line is blank")]
    BlankLine,
    /// The CSV itself is malformed (unequal field counts, unterminated quote...).
    #[error("malformed CSV: {message}")]
    Csv { message: String },
    /// The file is larger than the configured limit.
    #[error("the file is {size} bytes, over the limit of {limit} bytes")]
    TooLarge { size: u64, limit: u64 },
    /// The file has more distinct keys than the memory of the function reading it can normalise.
    #[error("{keys} distinct keys by this line need more than the {memory} bytes of memory there are to normalise them")]
    OverMemory { keys: usize, memory: u64 },
}

impl TallyError {
    pub fn new(source_name: &str, line: Option<u64>, kind: TallyErrorKind) -> TallyError {
        TallyError { source_name: source_name.to_owned(), line, kind }
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

/// Pairs with a repeated key are summed, as [`read_tally`] sums duplicate rows.
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
struct Builder {
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
    fn insert(&mut self, key: &str, value: f64) -> Option<usize> {
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
    fn for_input(bytes: &[u8]) -> Builder {
        let lines = bytes.iter().filter(|&&b| b == b'\n').count() + 1;
        Builder::with_capacity(crate::budget::key_capacity(bytes.len(), lines), bytes.len())
    }

    fn finish(self) -> Tally {
        let mut tally = self.tally;
        tally.shrink_to_fit();
        tally
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn rows(t: &Tally) -> Vec<(&str, f64)> {
        t.iter().collect()
    }

    #[test]
    fn keys_are_stored_once_and_pairs_sum_like_rows() {
        let t: Tally = [("b", 1.0), ("a", 2.0), ("b", 0.5), ("", 0.0)].into_iter().collect();
        assert_eq!(rows(&t), vec![("b", 1.5), ("a", 2.0), ("", 0.0)]);
        assert_eq!((t.len(), t.key(1), t.value(0)), (3, "a", 1.5));
        let doubled = t.clone().map_values(|v| v.iter().map(|x| x * 2.0).collect());
        assert_eq!(rows(&doubled), vec![("b", 3.0), ("a", 4.0), ("", 0.0)]);
        let read = read_tally("f", b"kseq,score\nb,1\na,2\nb,0.5\n").unwrap();
        assert_eq!(rows(&read), vec![("b", 1.5), ("a", 2.0)]);
    }
}
