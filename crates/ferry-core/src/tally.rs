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
    /// The CSV itself is malformed (unequal field counts, unterminated quote...).
    #[error("malformed CSV: {message}")]
    Csv { message: String },
    /// The file is larger than the configured limit.
    #[error("the file is {size} bytes, over the limit of {limit} bytes")]
    TooLarge { size: u64, limit: u64 },
}

impl TallyError {
    pub fn new(source_name: &str, line: Option<u64>, kind: TallyErrorKind) -> TallyError {
        TallyError { source_name: source_name.to_owned(), line, kind }
    }
}

/// Summed scores of one regional upload, one row per distinct key, in first-seen order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tally {
    pub rows: Vec<(String, f64)>,
}

impl Tally {
    pub fn len(&self) -> usize {
        self.rows.len()
    }
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
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
    // Sized once from the line count: growing to a million keys would rehash about twenty times and
    // hold the old and new tables at once. The index holds row numbers, not a second copy of each
    // key, so every key is allocated once.
    let lines = bytes.iter().filter(|&&b| b == b'\n').count() + 1;
    let hasher = DefaultHashBuilder::default();
    let mut index: HashTable<usize> = HashTable::with_capacity(lines);
    let mut rows: Vec<(String, f64)> = Vec::with_capacity(lines);
    read_records(source_name, bytes, &["kseq", "score"], |_, kseq, values| {
        let score = values[0];
        if score < 0.0 {
            return Err(TallyErrorKind::Negative { column: "score", value: score.to_string() });
        }
        let hash = hasher.hash_one(kseq);
        match index.find(hash, |&i| rows[i].0 == kseq).copied() {
            Some(i) => {
                let sum = rows[i].1 + score;
                if !sum.is_finite() {
                    return Err(TallyErrorKind::SumOverflow { kseq: kseq.to_owned() });
                }
                rows[i].1 = sum;
            }
            None => {
                index.insert_unique(hash, rows.len(), |&i| hasher.hash_one(rows[i].0.as_str()));
                // -0.0 is a valid zero; store it as +0.0 so it never prints as "-0".
                rows.push((kseq.to_owned(), score + 0.0));
            }
        }
        Ok(())
    })?;
    // Duplicate rows leave capacity unused; give it back.
    rows.shrink_to_fit();
    Ok(Tally { rows })
}

/// Reads a locale result (`kseq,score,raw`) as `(kseq, score)` pairs. Keys must be unique.
pub fn read_locale_result(source_name: &str, bytes: &[u8]) -> Result<Vec<(String, f64)>, TallyError> {
    let mut seen: hashbrown::HashSet<String> = hashbrown::HashSet::new();
    let mut rows = Vec::new();
    read_records(source_name, bytes, &["kseq", "score", "raw"], |_, kseq, values| {
        if !seen.insert(kseq.to_owned()) {
            return Err(TallyErrorKind::DuplicateKey { kseq: kseq.to_owned() });
        }
        rows.push((kseq.to_owned(), values[0]));
        Ok(())
    })?;
    Ok(rows)
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

    if !reader.read_byte_record(&mut record).map_err(csv_err)? {
        return Err(err(None, TallyErrorKind::NoHeader { expected: columns.join(", ") }));
    }
    let header: Vec<String> =
        record.iter().map(|f| String::from_utf8_lossy(f).trim().to_ascii_lowercase()).collect();
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
        let line = record.position().map(|p| p.line());
        let field = |i: usize| record.get(positions[i]).unwrap_or_default();
        let kseq = std::str::from_utf8(field(0))
            .map_err(|_| err(line, TallyErrorKind::InvalidUtf8 { column: columns[0] }))?;
        if kseq.is_empty() {
            return Err(err(line, TallyErrorKind::EmptyKey));
        }
        for (slot, i) in numbers.iter_mut().zip(1..) {
            *slot = parse_number(columns[i], field(i)).map_err(|k| err(line, k))?;
        }
        row(line.unwrap_or(0), kseq, &numbers).map_err(|k| err(line, k))?;
    }
    Ok(())
}

fn parse_number(column: &'static str, raw: &[u8]) -> Result<f64, TallyErrorKind> {
    let text = std::str::from_utf8(raw).map_err(|_| TallyErrorKind::InvalidUtf8 { column })?;
    let text = text.trim();
    let value: f64 =
        text.parse().map_err(|_| TallyErrorKind::NotANumber { column, value: text.to_owned() })?;
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
#[derive(Debug, Clone, PartialEq)]
pub struct GlobalRow {
    pub kseq: String,
    pub score: f64,
    pub contributions: Vec<f64>,
}

/// Formats a finite number in the shortest form that reads back to the same value.
pub fn format_number(buf: &mut ryu::Buffer, value: f64) -> &str {
    debug_assert!(value.is_finite(), "non-finite value {value} reached a writer");
    // Adding 0.0 turns -0.0 into 0.0.
    buf.format_finite(value + 0.0)
}

/// Writes a locale result, `kseq,score,raw`, in the order given.
pub fn write_locale_result(rows: &[NormRow]) -> Vec<u8> {
    let mut out = csv::Writer::from_writer(Vec::with_capacity(rows.len() * 32 + 16));
    let mut a = ryu::Buffer::new();
    let mut b = ryu::Buffer::new();
    write_row(&mut out, ["kseq", "score", "raw"]);
    for r in rows {
        write_row(&mut out, [r.kseq.as_str(), format_number(&mut a, r.score), format_number(&mut b, r.raw)]);
    }
    finish(out)
}

/// Writes the global result, `kseq,score,{locale}...`, in the order given.
pub fn write_global_result(locales: &[String], rows: &[GlobalRow]) -> Vec<u8> {
    let mut out = csv::Writer::from_writer(Vec::with_capacity(rows.len() * (24 + 20 * locales.len()) + 64));
    let mut header = vec!["kseq", "score"];
    header.extend(locales.iter().map(String::as_str));
    write_row(&mut out, header);
    let mut bufs: Vec<ryu::Buffer> = (0..=locales.len()).map(|_| ryu::Buffer::new()).collect();
    for r in rows {
        let (first, rest) = bufs.split_at_mut(1);
        let mut fields = Vec::with_capacity(2 + locales.len());
        fields.push(r.kseq.as_str());
        fields.push(format_number(&mut first[0], r.score));
        for (buf, &c) in rest.iter_mut().zip(&r.contributions) {
            fields.push(format_number(buf, c));
        }
        write_row(&mut out, fields);
    }
    finish(out)
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
        t.rows.iter().map(|(k, v)| (k.as_str(), *v)).collect()
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
        assert_eq!(back, vec![("(1,2,3)".to_owned(), 0.75), ("x".to_owned(), 0.0)]);

        let g = write_global_result(
            &["jp".into(), "kr".into()],
            &[GlobalRow { kseq: "a".into(), score: 1.5, contributions: vec![1.0, 0.5] }],
        );
        assert_eq!(String::from_utf8(g).unwrap(), "kseq,score,jp,kr\na,1.5,1.0,0.5\n");
    }

    #[test]
    fn locale_result_rejects_duplicate_keys_but_allows_negative_scores() {
        assert!(read_locale_result("r", b"kseq,score,raw\na,-1.2,3\n").is_ok());
        let e = read_locale_result("r", b"kseq,score,raw\na,1,1\na,2,2\n").unwrap_err();
        assert_eq!(e.line, Some(3));
    }
}
