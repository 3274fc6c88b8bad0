//! The CSV contract.
//!
//! Regional upload: a header naming `kseq` and `score` (any case, any order, optional UTF-8 BOM, fields
//! optionally quoted); `kseq` is an opaque non-empty string, `score` a finite number >= 0; duplicate
//! keys are summed. Locale result: `kseq,score,raw`. Global result: `kseq,score,{locale}...`.

use std::fmt;
use std::hash::BuildHasher;

use hashbrown::{DefaultHashBuilder, HashTable};

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

/// Fails with [`TallyErrorKind::TooLarge`] when `size` is over `limit`. Call it before reading a body.
pub fn check_size(source_name: &str, size: u64, limit: u64) -> Result<(), TallyError> {
    if size > limit {
        return Err(TallyError::new(source_name, None, TallyErrorKind::TooLarge { size, limit }));
    }
    Ok(())
}

/// Reads a regional upload and sums duplicate keys.
pub fn read_tally(source_name: &str, bytes: &[u8]) -> Result<Tally, TallyError> {
    read_tally_within(source_name, bytes, u64::MAX)
}

/// [`read_tally`] for a normalizer with `memory` bytes to spend: a file whose distinct keys would
/// take more than that to normalise ([`crate::budget::normalize_peak`]) is refused at the line where
/// they do. The size cap alone cannot promise this: short rows pack more keys into the same bytes.
pub fn read_tally_within(source_name: &str, bytes: &[u8], memory: u64) -> Result<Tally, TallyError> {
    let mut b = Builder::for_input(bytes);
    let input = bytes.len() as u64;
    read_records(source_name, bytes, &["kseq", "score"], |_, kseq, values| {
        let score = values[0];
        if score < 0.0 {
            return Err(TallyErrorKind::Negative { column: "score", value: score.to_string() });
        }
        // -0.0 is a valid zero; store it as +0.0 so it never prints as "-0".
        match b.insert(kseq, score + 0.0) {
            Some(i) => {
                let sum = b.tally.values[i] + score;
                if !sum.is_finite() {
                    return Err(TallyErrorKind::SumOverflow { kseq: kseq.to_owned() });
                }
                b.tally.values[i] = sum;
            }
            None => {
                let keys = b.tally.len();
                if crate::budget::normalize_peak(input, b.tally.text.len() as u64, keys as u64) > memory {
                    return Err(TallyErrorKind::OverMemory { keys, memory });
                }
            }
        }
        Ok(())
    })?;
    Ok(b.finish())
}

/// Reads a locale result (`kseq,score,raw`) as its keys and scores. Keys must be unique.
pub fn read_locale_result(source_name: &str, bytes: &[u8]) -> Result<Tally, TallyError> {
    let mut b = Builder::for_input(bytes);
    read_records(source_name, bytes, &["kseq", "score", "raw"], |_, kseq, values| match b.insert(kseq, values[0]) {
        Some(_) => Err(TallyErrorKind::DuplicateKey { kseq: kseq.to_owned() }),
        None => Ok(()),
    })?;
    Ok(b.finish())
}

/// Reads every record, resolving `columns[0]` as the key and the rest as finite numbers, and hands
/// each to `row(line, key, numbers)`.
pub(crate) fn read_records(
    source_name: &str,
    bytes: &[u8],
    columns: &[&'static str],
    mut row: impl FnMut(u64, &str, &[f64]) -> Result<(), TallyErrorKind>,
) -> Result<(), TallyError> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let err = |line, kind| TallyError::new(source_name, line, kind);
    let mut reader = csv::ReaderBuilder::new().has_headers(false).from_reader(bytes);
    let mut record = csv::ByteRecord::new();
    let csv_err = |e: csv::Error| {
        let line = e.position().map(|p| p.line());
        err(line, TallyErrorKind::Csv { message: csv_message(&e) })
    };

    // csv skips blank lines; each place it starts looking for a record is checked for one.
    let blank = |record: &csv::ByteRecord| {
        let start = record.position().map_or(0, |p| p.byte() as usize);
        blank_line_at(bytes, start).map_or(Ok(()), |line| Err(err(Some(line), TallyErrorKind::BlankLine)))
    };

    let has_header = reader.read_byte_record(&mut record).map_err(csv_err)?;
    blank(&record)?;
    if !has_header {
        return Err(err(None, TallyErrorKind::NoHeader { expected: columns.join(", ") }));
    }
    let header: Vec<String> = record.iter().map(|f| String::from_utf8_lossy(f).trim().to_ascii_lowercase()).collect();
    let mut positions = Vec::with_capacity(columns.len());
    for &column in columns {
        let mut found = header.iter().enumerate().filter(|(_, h)| *h == column).map(|(i, _)| i);
        let Some(pos) = found.next() else {
            return Err(err(Some(1), TallyErrorKind::MissingColumn { column, found: header.join(",") }));
        };
        if found.next().is_some() {
            return Err(err(Some(1), TallyErrorKind::DuplicateColumn { column }));
        }
        positions.push(pos);
    }

    let mut numbers = vec![0.0; columns.len() - 1];
    while reader.read_byte_record(&mut record).map_err(csv_err)? {
        blank(&record)?;
        let line = record.position().map(|p| p.line());
        let field = |i: usize| record.get(positions[i]).unwrap_or_default();
        let kseq = std::str::from_utf8(field(0)).map_err(|_| err(line, TallyErrorKind::InvalidUtf8 { column: columns[0] }))?;
        if kseq.is_empty() {
            return Err(err(line, TallyErrorKind::EmptyKey));
        }
        for (slot, i) in numbers.iter_mut().zip(1..) {
            *slot = parse_number(columns[i], field(i)).map_err(|k| err(line, k))?;
        }
        row(line.unwrap_or(0), kseq, &numbers).map_err(|k| err(line, k))?;
    }
    // Blank lines after the last record.
    blank(&record)
}

/// The 1-based line of a blank line at `start`, where the reader began looking for a record: the
/// bytes there are a line ending rather than a record. The LF of a CRLF whose CR ended the previous
/// record is not one.
fn blank_line_at(bytes: &[u8], start: usize) -> Option<u64> {
    let mut at = start;
    if at > 0 && bytes[at - 1] == b'\r' && bytes.get(at) == Some(&b'\n') {
        at += 1;
    }
    matches!(bytes.get(at), Some(b'\r' | b'\n')).then(|| bytes[..at].iter().filter(|&&b| b == b'\n').count() as u64 + 1)
}

fn parse_number(column: &'static str, raw: &[u8]) -> Result<f64, TallyErrorKind> {
    // Vote counts are nearly always plain integers; up to 15 digits they are exact in an f64, and
    // summing the digits is several times quicker than the general parser.
    if !raw.is_empty() && raw.len() <= 15 && raw.iter().all(u8::is_ascii_digit) {
        return Ok(raw.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')) as f64);
    }
    let text = std::str::from_utf8(raw).map_err(|_| TallyErrorKind::InvalidUtf8 { column })?;
    let text = text.trim();
    let value: f64 = text.parse().map_err(|_| TallyErrorKind::NotANumber { column, value: text.to_owned() })?;
    if !value.is_finite() {
        return Err(TallyErrorKind::NotFinite { column, value: text.to_owned() });
    }
    Ok(value)
}

fn csv_message(e: &csv::Error) -> String {
    match e.kind() {
        csv::ErrorKind::UnequalLengths { expected_len, len, .. } => {
            format!("the record has {len} fields but the header has {expected_len}")
        }
        _ => e.to_string(),
    }
}

/// One row of a locale result.
#[derive(Debug, Clone, PartialEq)]
pub struct NormRow {
    pub kseq: String,
    pub score: f64,
    pub raw: f64,
}

/// One row of the global result: the total and each locale's weighted contribution.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GlobalRow<'a> {
    pub kseq: &'a str,
    pub score: f64,
    pub contributions: &'a [f64],
}

/// Formats a finite number in the shortest form that reads back to the same value.
pub fn format_number(buf: &mut ryu::Buffer, value: f64) -> &str {
    debug_assert!(value.is_finite(), "non-finite value {value} reached a writer");
    // Adding 0.0 turns -0.0 into 0.0.
    buf.format_finite(value + 0.0)
}

/// Writes a locale result, `kseq,score,raw`, in the order given.
pub fn write_locale_result(rows: &[NormRow]) -> Vec<u8> {
    locale_rows_csv(rows.len(), rows.iter().map(|r| (r.kseq.as_str(), r.score, r.raw)))
}

/// The one writer of locale results: `len` rows of (kseq, score, raw) after the header.
pub(crate) fn locale_rows_csv<'a>(len: usize, rows: impl Iterator<Item = (&'a str, f64, f64)>) -> Vec<u8> {
    let mut out = csv::Writer::from_writer(Vec::with_capacity(len * 32 + 16));
    let mut a = ryu::Buffer::new();
    let mut b = ryu::Buffer::new();
    write_row(&mut out, ["kseq", "score", "raw"]);
    for (kseq, score, raw) in rows {
        write_row(&mut out, [kseq, format_number(&mut a, score), format_number(&mut b, raw)]);
    }
    finish(out)
}

/// The global result's header line.
pub(crate) fn global_header(locales: &[String]) -> Vec<u8> {
    let mut out = csv::Writer::from_writer(Vec::new());
    write_row(&mut out, ["kseq", "score"].into_iter().chain(locales.iter().map(String::as_str)));
    finish(out)
}

/// Global result rows as CSV lines, without the header, appended to `into`.
pub(crate) fn global_rows_csv<'a>(mut into: Vec<u8>, rows: impl IntoIterator<Item = GlobalRow<'a>>) -> Vec<u8> {
    let rows = rows.into_iter();
    into.reserve(rows.size_hint().0 * 110);
    let mut out = csv::Writer::from_writer(into);
    let mut buf = ryu::Buffer::new();
    for r in rows {
        // Writing into a Vec cannot fail.
        out.write_field(r.kseq).expect("writing CSV into memory");
        out.write_field(format_number(&mut buf, r.score)).expect("writing CSV into memory");
        for &c in r.contributions {
            out.write_field(format_number(&mut buf, c)).expect("writing CSV into memory");
        }
        // An empty record ends the one written field by field.
        write_row(&mut out, None::<&str>);
    }
    finish(out)
}

/// Writes the global result, `kseq,score,{locale}...`, into memory, in the order given.
pub fn write_global_result<'a>(locales: &[String], rows: impl IntoIterator<Item = GlobalRow<'a>>) -> Vec<u8> {
    global_rows_csv(global_header(locales), rows)
}

fn write_row<'a>(out: &mut csv::Writer<Vec<u8>>, fields: impl IntoIterator<Item = &'a str>) {
    // Writing into a Vec cannot fail.
    out.write_record(fields).expect("writing CSV into memory");
}

fn finish(out: csv::Writer<Vec<u8>>) -> Vec<u8> {
    out.into_inner().expect("flushing CSV into memory")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(t: &Tally) -> Vec<(&str, f64)> {
        t.iter().collect()
    }

    #[track_caller]
    fn check_err(input: &[u8], line: Option<u64>, expect: &str) {
        let e = read_tally("data/1/jp-prod-202611221530.csv", input).unwrap_err();
        assert_eq!(e.line, line, "{e}");
        let text = e.to_string();
        assert!(text.starts_with("data/1/jp-prod-202611221530.csv"), "{text}");
        assert!(text.contains(expect), "{text:?} does not mention {expect:?}");
    }

    #[test]
    fn header_any_case_any_order_bom_and_quotes() {
        let t = read_tally("f", b"\xEF\xBB\xBF\"SCORE\",\"Kseq\"\n\"3\",\"(1,2,3)\"\n\"1.5\",\"a\"\"b\"\n").unwrap();
        assert_eq!(rows(&t), vec![("(1,2,3)", 3.0), ("a\"b", 1.5)]);
    }

    #[test]
    fn duplicates_are_summed_and_extra_columns_ignored() {
        let t = read_tally("f", b"id,kseq,score\n1,a,1\n2,b,2\n3,a,4\n").unwrap();
        assert_eq!(rows(&t), vec![("a", 5.0), ("b", 2.0)]);
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

    #[test]
    fn integer_fast_path_agrees_with_the_parser() {
        for text in ["0", "7", "076", "123456789012345", "1234567890123456", " 12 ", "1.5", "1e3", "+4"] {
            let parsed: f64 = text.trim().parse().unwrap();
            assert_eq!(parse_number("score", text.as_bytes()), Ok(parsed), "{text:?}");
        }
    }

    #[test]
    fn header_only_is_an_empty_tally() {
        assert!(read_tally("f", b"kseq,score\n").unwrap().is_empty());
        assert!(read_tally("f", b"kseq,score").unwrap().is_empty());
    }

    #[test]
    fn bad_input_names_the_line() {
        check_err(b"", None, "empty");
        check_err(b"key,score\na,1\n", Some(1), "no `kseq` column");
        check_err(b"kseq,points\na,1\n", Some(1), "no `score` column");
        check_err(b"kseq,score,SCORE\na,1,2\n", Some(1), "more than once");
        check_err(b"kseq,score\na,1\nb,x\n", Some(3), "not a number: \"x\"");
        check_err(b"kseq,score\na,1\nb,-2\n", Some(3), "negative");
        check_err(b"kseq,score\na,NaN\n", Some(2), "not finite");
        check_err(b"kseq,score\na,inf\n", Some(2), "not finite");
        check_err(b"kseq,score\na,1\n,2\n", Some(3), "`kseq` is empty");
        check_err(b"kseq,score\na,1\n\xff\xfe,2\n", Some(3), "UTF-8");
        check_err(b"kseq,score\na,1\nb,2,3\n", Some(3), "3 fields but the header has 2");
        check_err(b"kseq,score\na,1e308\na,1e308\n", Some(3), "overflows");
        check_err(b"kseq,score\na,12a\n", Some(2), "not a number: \"12a\"");
    }

    #[test]
    fn blank_lines_are_bad_input_but_crlf_is_not() {
        for ok in [
            &b"kseq,score\r\na,1\r\nb,2\r\n"[..],
            b"kseq,score\r\na,1\r\nb,2",
            b"kseq,score\ra,1\rb,2\r",
            b"kseq,score\n\"x\n\ny\",1\nb,2\n",
        ] {
            let t = read_tally("f", ok).unwrap_or_else(|e| panic!("{ok:?}: {e}"));
            assert_eq!(t.len(), 2, "{ok:?}");
        }
        check_err(b"kseq,score\n\n", Some(2), "line 2: the line is blank");
        check_err(b"kseq,score\na,1\n\nb,2\n", Some(3), "blank");
        check_err(b"kseq,score\r\na,1\r\n\r\n", Some(3), "blank");
        check_err(b"\nkseq,score\na,1\n", Some(1), "blank");
        check_err(b"\xEF\xBB\xBF\r\nkseq,score\n", Some(1), "blank");
        check_err(format!("kseq,score\n{}", "\n".repeat(1000)).as_bytes(), Some(2), "blank");
        let e = read_locale_result("r", b"kseq,score,raw\na,1,1\n\n").unwrap_err();
        assert_eq!((e.line, e.kind), (Some(3), TallyErrorKind::BlankLine));
    }

    #[test]
    fn keys_over_the_memory_are_refused_at_their_line() {
        let rows: String = (0..1000).map(|i| format!("{i},1\n")).collect();
        let input = format!("kseq,score\n{rows}");
        let all = read_tally_within("f", input.as_bytes(), u64::MAX).unwrap();
        assert_eq!(all.len(), 1000);
        // Room for 500 keys, not 501.
        let memory = crate::budget::normalize_peak(input.len() as u64, all.iter().take(500).map(|(k, _)| k.len() as u64).sum(), 500);
        let e = read_tally_within("f", input.as_bytes(), memory).unwrap_err();
        assert_eq!((e.line, e.kind.clone()), (Some(502), TallyErrorKind::OverMemory { keys: 501, memory }), "{e}");
        assert!(e.to_string().starts_with("f: line 502: 501 distinct keys by this line need more than"), "{e}");
        // Repeats of known keys cost nothing more.
        let repeats = format!("kseq,score\n{}", "7,1\n".repeat(5000));
        assert_eq!(read_tally_within("f", repeats.as_bytes(), memory).unwrap().len(), 1);
    }

    #[test]
    fn size_limit() {
        assert!(check_size("f", 10, 10).is_ok());
        let e = check_size("k", 11, 10).unwrap_err();
        assert_eq!(e.to_string(), "k: the file is 11 bytes, over the limit of 10 bytes");
    }

    #[test]
    fn writers_quote_keys_and_round_trip() {
        let out = write_locale_result(&[
            NormRow { kseq: "(1,2,3)".into(), score: 0.75, raw: 3.0 },
            NormRow { kseq: "x".into(), score: -0.0, raw: 0.0 },
        ]);
        assert_eq!(String::from_utf8(out.clone()).unwrap(), "kseq,score,raw\n\"(1,2,3)\",0.75,3.0\nx,0.0,0.0\n");
        let back = read_locale_result("r", &out).unwrap();
        assert_eq!(rows(&back), vec![("(1,2,3)", 0.75), ("x", 0.0)]);

        let g = write_global_result(&["jp".into(), "kr".into()], [GlobalRow { kseq: "a", score: 1.5, contributions: &[1.0, 0.5] }]);
        assert_eq!(String::from_utf8(g).unwrap(), "kseq,score,jp,kr\na,1.5,1.0,0.5\n");
    }

    #[test]
    fn locale_result_rejects_duplicate_keys_but_allows_negative_scores() {
        assert!(read_locale_result("r", b"kseq,score,raw\na,-1.2,3\n").is_ok());
        let e = read_locale_result("r", b"kseq,score,raw\na,1,1\na,2,2\n").unwrap_err();
        assert_eq!(e.line, Some(3));
    }
}
