//! The read side of the CSV contract: a regional upload ([`read_tally`], duplicate keys summed; within
//! a memory budget, [`read_tally_within`]), a locale result ([`read_locale_result`], keys unique) and
//! the global result's scores ([`read_global_scores`]), every fault a [`TallyError`] naming the file
//! and line; [`check_size`] before a body is read.

use super::{KSEQ, RAW, SCORE, TallyError, TallyErrorKind};
use crate::tally::{Builder, Tally};

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
    read_records(source_name, bytes, &[KSEQ, SCORE], |_, kseq, values| {
        let score = values[0];
        if score < 0.0 {
            return Err(TallyErrorKind::Negative { column: SCORE, value: score.to_string() });
        }
        if b.is_full() {
            return Err(TallyErrorKind::TooManyKeys { limit: u64::from(u32::MAX) });
        }
        // -0.0 is a valid zero; store it as +0.0 so it never prints as "-0".
        match b.insert(kseq, score + 0.0) {
            Some(i) => {
                let sum = b.value(i) + score;
                if !sum.is_finite() {
                    return Err(TallyErrorKind::SumOverflow { kseq: kseq.to_owned() });
                }
                b.set_value(i, sum);
            }
            None => {
                let keys = b.len();
                if crate::budget::normalize_peak(input, b.key_bytes() as u64, keys as u64) > memory {
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
    read_records(source_name, bytes, &[KSEQ, SCORE, RAW], |_, kseq, values| {
        if b.is_full() {
            return Err(TallyErrorKind::TooManyKeys { limit: u64::from(u32::MAX) });
        }
        match b.insert(kseq, values[0]) {
            Some(_) => Err(TallyErrorKind::DuplicateKey { kseq: kseq.to_owned() }),
            None => Ok(()),
        }
    })?;
    Ok(b.finish())
}

/// Reads the global result (`kseq,score,{locale}...`) as `(kseq, score)` pairs in file order. Keys
/// must be unique and scores finite (they may be negative: z-scores are).
pub fn read_global_scores(source_name: &str, bytes: &[u8]) -> Result<Vec<(String, f64)>, TallyError> {
    let mut seen: hashbrown::HashSet<String> = hashbrown::HashSet::new();
    let mut rows = Vec::new();
    read_records(source_name, bytes, &[KSEQ, SCORE], |_, kseq, values| {
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
///
/// Plain lines (quoted or bare fields without quotes inside, ended by LF or CRLF) are split here, a
/// batch at a time; the csv reader takes every other line from where they stop, so both give the
/// same records and the same faults at the same lines.
fn read_records(
    source_name: &str,
    bytes: &[u8],
    columns: &[&'static str],
    row: impl FnMut(u64, &str, &[f64]) -> Result<(), TallyErrorKind>,
) -> Result<(), TallyError> {
    read_records_with(source_name, bytes, columns, true, row)
}

/// Plain lines parsed before any is handed on.
const BATCH: usize = 64;

fn read_records_with<'a>(
    source_name: &str,
    bytes: &'a [u8],
    columns: &[&'static str],
    plain_lines: bool,
    mut row: impl FnMut(u64, &str, &[f64]) -> Result<(), TallyErrorKind>,
) -> Result<(), TallyError> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let err = |line, kind| TallyError::new(source_name, line, kind);
    let mut reader = ::csv::ReaderBuilder::new().has_headers(false).from_reader(std::io::Cursor::new(bytes));
    let mut record = ::csv::ByteRecord::new();
    let csv_err = |e: ::csv::Error| {
        let line = e.position().map(|p| p.line());
        err(line, TallyErrorKind::Csv { message: csv_message(&e) })
    };

    // csv skips blank lines; each place it starts looking for a record is checked for one.
    let blank = |record: &::csv::ByteRecord| {
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

    let mut take = |line: u64, kseq: &str, numbers: &[f64]| row(line, kseq, numbers).map_err(|k| err(Some(line), k));

    // A file that is UTF-8 throughout (checked at once, far quicker than field by field) hands out
    // its plain lines' fields as text.
    let text = std::str::from_utf8(bytes).ok();
    let width = header.len();
    let count = columns.len() - 1;
    let mut spans = vec![(0, 0); if plain_lines { BATCH * width } else { 0 }];
    let mut keys: Vec<&'a str> = Vec::with_capacity(BATCH);
    let mut numbers = vec![0.0; BATCH * count];
    let mut fields: Vec<Field<'a>> = vec![Field::Bytes(&[]); width];
    // Where the csv reader stands: the next record starts here, on this line.
    let (mut at, mut line) = (reader.position().byte() as usize, reader.position().line());
    loop {
        // Plain lines only start after a line feed: a CR the csv reader ended a record on may have
        // its LF still to come.
        let clean = at == 0 || bytes[at - 1] == b'\n';
        let start = at;
        while clean && !spans.is_empty() && at < bytes.len() {
            // A batch of plain lines is split and parsed, then handed on in a loop of its own: the
            // handler's key index then waits for several cache misses at once.
            let mut next = at;
            let mut fault = None;
            keys.clear();
            for (spans, numbers) in spans.chunks_exact_mut(width).zip(numbers.chunks_exact_mut(count.max(1))) {
                let Some(end) = plain_line(bytes, next, spans) else { break };
                for (field, &(a, b)) in fields.iter_mut().zip(&*spans) {
                    *field = text.map_or(Field::Bytes(&bytes[a..b]), |t| Field::Text(&t[a..b]));
                }
                match parse_record(&fields, &positions, columns, &mut numbers[..count]) {
                    Ok(kseq) => keys.push(kseq),
                    Err(kind) => {
                        fault = Some(err(Some(line + keys.len() as u64), kind));
                        break;
                    }
                }
                next = end;
                if next == bytes.len() {
                    break;
                }
            }
            if keys.is_empty() && fault.is_none() {
                break;
            }
            // Faults keep their order: every line before a bad one is handed on first.
            for (i, kseq) in keys.iter().enumerate() {
                take(line + i as u64, kseq, &numbers[i * count..(i + 1) * count])?;
            }
            if let Some(e) = fault {
                return Err(e);
            }
            (at, line) = (next, line + keys.len() as u64);
        }
        if at != start {
            let mut position = ::csv::Position::new();
            position.set_byte(at as u64).set_line(line);
            reader.seek_raw(std::io::SeekFrom::Start(at as u64), position).map_err(csv_err)?;
        }
        if !reader.read_byte_record(&mut record).map_err(csv_err)? {
            break;
        }
        blank(&record)?;
        let record_line = record.position().map_or(0, |p| p.line());
        let fields: Vec<Field<'_>> = record.iter().map(Field::Bytes).collect();
        let mut numbers = vec![0.0; count];
        // The record's fields live until the next read: parsed and handed on at once.
        let kseq = parse_record(&fields, &positions, columns, &mut numbers).map_err(|k| err(Some(record_line), k))?;
        take(record_line, kseq, &numbers)?;
        (at, line) = (reader.position().byte() as usize, reader.position().line());
    }
    // Blank lines after the last record.
    blank(&record)
}

/// The key of a record (`columns[0]`, at `positions[0]`), and the numbers of the other columns into
/// `numbers`.
fn parse_record<'f>(
    fields: &[Field<'f>],
    positions: &[usize],
    columns: &[&'static str],
    numbers: &mut [f64],
) -> Result<&'f str, TallyErrorKind> {
    let kseq = fields[positions[0]].text().ok_or(TallyErrorKind::InvalidUtf8 { column: columns[0] })?;
    if kseq.is_empty() {
        return Err(TallyErrorKind::EmptyKey);
    }
    for (slot, i) in numbers.iter_mut().zip(1..) {
        *slot = parse_number(columns[i], fields[positions[i]])?;
    }
    Ok(kseq)
}

/// One field of a record: text when its file is known to be UTF-8, bytes to check otherwise.
#[derive(Debug, Clone, Copy)]
enum Field<'a> {
    Text(&'a str),
    Bytes(&'a [u8]),
}

impl<'a> Field<'a> {
    fn bytes(self) -> &'a [u8] {
        match self {
            Field::Text(t) => t.as_bytes(),
            Field::Bytes(b) => b,
        }
    }

    /// `None` when the bytes are not UTF-8.
    fn text(self) -> Option<&'a str> {
        match self {
            Field::Text(t) => Some(t),
            Field::Bytes(b) => std::str::from_utf8(b).ok(),
        }
    }
}

/// Finds the fields of the plain line at `at` (as many as `spans`, each as start and end) and
/// returns where the next line starts; `None` for any other line, which the csv reader then reads:
/// a blank line, a quote inside a field, a line break inside quotes, a CR not before LF, another
/// field count.
fn plain_line(bytes: &[u8], mut at: usize, spans: &mut [(usize, usize)]) -> Option<usize> {
    let count = spans.len();
    for (n, span) in spans.iter_mut().enumerate() {
        let end;
        if bytes.get(at) == Some(&b'"') {
            let len = bytes[at + 1..].iter().position(|&b| matches!(b, b'"' | b'\n' | b'\r'))?;
            if bytes[at + 1 + len] != b'"' {
                return None;
            }
            *span = (at + 1, at + 1 + len);
            end = at + len + 2;
        } else {
            let len = bytes[at..].iter().position(|&b| matches!(b, b'"' | b'\n' | b'\r' | b',')).unwrap_or(bytes.len() - at);
            if bytes.get(at + len) == Some(&b'"') {
                return None;
            }
            *span = (at, at + len);
            end = at + len;
        }
        let last = n + 1 == count;
        match bytes.get(end) {
            Some(b',') if !last => at = end + 1,
            Some(b'\n') if last => return Some(end + 1),
            Some(b'\r') if last && bytes.get(end + 1) == Some(&b'\n') => return Some(end + 2),
            None if last => return Some(end),
            _ => return None,
        }
    }
    None
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

fn parse_number(column: &'static str, field: Field<'_>) -> Result<f64, TallyErrorKind> {
    // Vote counts are nearly always plain integers (written `76` in uploads, `76.0` in results); up
    // to 15 digits they are exact in an f64, and summing the digits is several times quicker than
    // the general parser.
    let raw = field.bytes();
    let digits = raw.strip_suffix(b".0").unwrap_or(raw);
    if !digits.is_empty() && digits.len() <= 15 && digits.iter().all(u8::is_ascii_digit) {
        return Ok(digits.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')) as f64);
    }
    let text = field.text().ok_or(TallyErrorKind::InvalidUtf8 { column })?;
    let text = text.trim();
    let value: f64 = text.parse().map_err(|_| TallyErrorKind::NotANumber { column, value: text.to_owned() })?;
    if !value.is_finite() {
        return Err(TallyErrorKind::NotFinite { column, value: text.to_owned() });
    }
    Ok(value)
}

fn csv_message(e: &::csv::Error) -> String {
    match e.kind() {
        ::csv::ErrorKind::UnequalLengths { expected_len, len, .. } => {
            format!("the record has {len} fields but the header has {expected_len}")
        }
        _ => e.to_string(),
    }
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
    fn integer_fast_path_agrees_with_the_parser() {
        for text in
            ["0", "7", "076", "123456789012345", "1234567890123456", " 12 ", "1.5", "1e3", "+4", "76.0", "0.0", "1234567890123456.0", ".0"]
        {
            let parsed: f64 = text.trim().parse().unwrap();
            assert_eq!(parse_number("score", Field::Bytes(text.as_bytes())), Ok(parsed), "{text:?}");
            assert_eq!(parse_number("score", Field::Text(text)), Ok(parsed), "{text:?}");
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

    /// Every input read with plain lines split by hand gives what the csv reader alone gives: the same
    /// rows, or the same fault at the same line.
    fn same_as_the_csv_reader(input: &[u8]) {
        let read = |plain_lines| {
            let mut rows = Vec::new();
            let r = read_records_with("f", input, &[KSEQ, SCORE], plain_lines, |line, kseq, values| {
                rows.push((line, kseq.to_owned(), values[0]));
                Ok(())
            });
            (r, rows)
        };
        assert_eq!(read(true), read(false), "{:?}", String::from_utf8_lossy(input));
    }

    #[test]
    fn plain_lines_read_as_the_csv_reader_reads_them() {
        for input in [
            &b"kseq,score\na,1\n"[..],
            b"kseq,score\r\na,1\r\nb,2",
            b"kseq,score\r\n\"a\"\"b\",1\r\nb,2\r\nc,3\r\n",
            b"kseq,score\n\"a\nb\",1\nc,2\n\"d\",3\n",
            b"kseq,score\ra,1\rb,2\n",
            b"kseq,score\na,1\r\r\nb,2\n",
            b"kseq,score\na\"b,1\nc,2\n",
            b"kseq,score\n\"a\"x,1\nc,2\n",
            b"kseq,score,x\na,1\nb,2,3\n",
            b"kseq,score\na,1\n\nb,2\n",
            b"kseq,score\na,1\n\n",
            b"kseq,score\na,1\n\r\n",
            b"kseq,score\n\"\",1\n",
            b"kseq,score\n,1\n",
            b"score,kseq\n1,\"(1,2)\"\n\"2\",b\n",
        ] {
            same_as_the_csv_reader(input);
        }
    }

    proptest::proptest! {
        #[test]
        fn any_input_reads_as_the_csv_reader_reads_it(
            body in proptest::collection::vec(proptest::sample::select(&b"ab1,\"\r\n.x\xff"[..]), 0..60),
            header in proptest::sample::select(&["kseq,score\n", "score,kseq\r\n", "kseq,score,x\n", "\"kseq\",\"score\"\n"][..]),
        ) {
            let mut input = header.as_bytes().to_vec();
            input.extend(body);
            same_as_the_csv_reader(&input);
        }
    }

    #[test]
    fn size_limit() {
        assert!(check_size("f", 10, 10).is_ok());
        let e = check_size("k", 11, 10).unwrap_err();
        assert_eq!(e.to_string(), "k: the file is 11 bytes, over the limit of 10 bytes");
    }

    #[test]
    fn locale_result_rejects_duplicate_keys_but_allows_negative_scores() {
        assert!(read_locale_result("r", b"kseq,score,raw\na,-1.2,3\n").is_ok());
        let e = read_locale_result("r", b"kseq,score,raw\na,1,1\na,2,2\n").unwrap_err();
        assert_eq!(e.line, Some(3));
    }
}
