//! The CSV contract of the vote pipeline, whole: what every file between the regions and the
//! global ranking looks like, and the one reader and writer of each.
//!
//! - Regional upload (`data/`, and what `ferry votes push` writes): a header naming `kseq` and
//!   `score` (any case, any order, optional UTF-8 BOM, fields optionally quoted, other columns
//!   ignored); `kseq` is an opaque non-empty string, `score` a finite number >= 0; duplicate keys are
//!   summed ([`read_tally`], [`read_tally_within`]; written by [`write_tally`]).
//! - Locale result (`result/`): `kseq,score,raw`, keys unique ([`read_locale_result`];
//!   [`write_locale_result`]).
//! - Global result (`global/`): `kseq,score,{locale}...`, keys unique, locales alphabetical
//!   ([`read_global_scores`]; [`write_global_result`]).
//!
//! Numbers are written in the shortest form that reads back the same ([`format_number`]), never
//! `-0`. No file has an empty line. Every fault is a [`TallyError`] naming the file, the line and the
//! field. The read side is `read`, the write side `write`; `ferry_core::csv::X` is the path to use.

use std::fmt;

mod read;
mod write;

pub use read::{check_size, read_global_scores, read_locale_result, read_tally, read_tally_within};
pub use write::{GlobalRow, NormRow, format_number, write_global_result, write_locale_result, write_tally};
pub(crate) use write::{global_header, global_rows_csv, locale_rows_csv};

/// The key column of every file.
pub const KSEQ: &str = "kseq";
/// The score column of every file: the votes of an upload, the normalised or merged score of a result.
pub const SCORE: &str = "score";
/// The locale result's column holding the summed votes its score was normalised from.
pub const RAW: &str = "raw";

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
    /// More distinct keys than a tally can index.
    #[error("more than {limit} distinct keys")]
    TooManyKeys { limit: u64 },
}

impl TallyError {
    pub fn new(source_name: &str, line: Option<u64>, kind: TallyErrorKind) -> TallyError {
        TallyError { source_name: source_name.to_owned(), line, kind }
    }
}
