//! Rows to bytes, and bytes to S3 parts: memory holds at most one part whatever the row count.
//!
//! Cells are JSON values. Text a spreadsheet would run as a formula is neutralised in CSV
//! ([`ferry_core::cells::formula_escaped`]) unless the job asks otherwise; numbers never are, and
//! keep every digit: a number serde_json cannot hold exactly arrives as
//! [`ferry_core::cells::number_text`] and is written as that text (in JSON lines, as a number token).

use std::borrow::Cow;
use std::sync::{Mutex, PoisonError};

use ferry_aws::exports::Multipart;
use ferry_aws::s3::S3Error;
use ferry_core::cells;
use serde_json::Value;

/// How rows become bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// RFC 4180 CSV with a header row; formula-like text gets a leading `'`.
    Csv,
    /// RFC 4180 CSV with every text as it is (`"formula_escape": false`, for machine consumers).
    CsvPlain,
    /// One JSON object per line, keys in column order.
    Jsonl,
    /// One JSON array per line, the header first: what the xlsx step reads back.
    Staged,
}

impl Encoding {
    fn csv_text(self, text: &str) -> Cow<'_, str> {
        if self == Encoding::Csv { cells::formula_escaped(text) } else { Cow::Borrowed(text) }
    }

    /// A cell as CSV text. Only text is escaped: a number (even `-5`) is written as it is.
    fn csv_field(self, v: &Value) -> Cow<'_, str> {
        match v {
            Value::Null => Cow::Borrowed(""),
            Value::String(s) => self.csv_text(s),
            Value::Number(n) => Cow::Owned(n.to_string()),
            Value::Bool(b) => Cow::Borrowed(if *b { "true" } else { "false" }),
            other => match cells::number_text(other) {
                Some(number) => Cow::Borrowed(number),
                None => Cow::Owned(self.csv_text(&other.to_string()).into_owned()),
            },
        }
    }
}

/// What the reused CSV writer writes into; each record is moved out of it as soon as it is written.
#[derive(Debug, Default)]
struct Sink(Mutex<Vec<u8>>);

impl std::io::Write for Sink {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.get_mut().unwrap_or_else(PoisonError::into_inner).extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Encodes rows in one [`Encoding`], reusing what every row would otherwise build again: one CSV
/// writer (and its buffer) for every record, and for JSON lines each column's `"name":`, escaped
/// once per set of columns. Each record is written whole, exactly as a writer of its own would
/// write it.
#[derive(Debug)]
pub struct RowEncoder {
    encoding: Encoding,
    csv: csv::Writer<Sink>,
    /// The columns `keys` were encoded for.
    columns: Vec<String>,
    /// `"name":` of each column back to back, each after the first preceded by `,`.
    keys: Vec<u8>,
    /// Where each column's part of `keys` ends.
    key_ends: Vec<usize>,
}

impl RowEncoder {
    pub fn new(encoding: Encoding) -> RowEncoder {
        // Flexible: records are independent, as when each had a writer of its own.
        let csv = csv::WriterBuilder::new().flexible(true).from_writer(Sink::default());
        RowEncoder { encoding, csv, columns: Vec::new(), keys: Vec::new(), key_ends: Vec::new() }
    }

    pub fn encoding(&self) -> Encoding {
        self.encoding
    }

    /// Appends the header (CSV and staged rows have one; JSON lines name columns in every row).
    pub fn header(&mut self, buf: &mut Vec<u8>, columns: &[String]) {
        let enc = self.encoding;
        match enc {
            Encoding::Csv | Encoding::CsvPlain => self.csv_record(buf, columns.iter().map(|c| enc.csv_text(c))),
            Encoding::Jsonl => {}
            Encoding::Staged => json_line(buf, &Value::from(columns.to_vec())),
        }
    }

    /// Names the columns of the rows that follow (JSON lines key every cell by them).
    pub fn columns(&mut self, columns: &[String]) {
        if self.encoding != Encoding::Jsonl || self.columns == columns {
            return;
        }
        self.columns = columns.to_vec();
        self.keys.clear();
        self.key_ends.clear();
        for (i, c) in columns.iter().enumerate() {
            if i > 0 {
                self.keys.push(b',');
            }
            let _ = serde_json::to_writer(&mut self.keys, c);
            self.keys.push(b':');
            self.key_ends.push(self.keys.len());
        }
    }

    /// Appends one row (cells in the order of [`RowEncoder::columns`]).
    pub fn row(&mut self, buf: &mut Vec<u8>, row: &[Value]) {
        let enc = self.encoding;
        match enc {
            Encoding::Csv | Encoding::CsvPlain => self.csv_record(buf, row.iter().map(|v| enc.csv_field(v))),
            Encoding::Jsonl => {
                buf.push(b'{');
                let mut start = 0;
                for (&end, v) in self.key_ends.iter().zip(row) {
                    buf.extend_from_slice(&self.keys[start..end]);
                    json_cell(buf, v);
                    start = end;
                }
                buf.extend_from_slice(b"}\n");
            }
            // Exact numbers stay `{"$number": text}` objects here; the xlsx step reads them back.
            Encoding::Staged => {
                buf.push(b'[');
                for (i, v) in row.iter().enumerate() {
                    if i > 0 {
                        buf.push(b',');
                    }
                    let _ = serde_json::to_writer(&mut *buf, v);
                }
                buf.extend_from_slice(b"]\n");
            }
        }
    }

    fn csv_record<'a>(&mut self, buf: &mut Vec<u8>, fields: impl Iterator<Item = Cow<'a, str>>) {
        // Writing to memory cannot fail, and a flexible writer takes records of any length.
        for field in fields {
            let _ = self.csv.write_field(field.as_bytes());
        }
        let _ = self.csv.write_record(None::<&[u8]>);
        let _ = self.csv.flush();
        let mut written = self.csv.get_ref().0.lock().unwrap_or_else(PoisonError::into_inner);
        buf.extend_from_slice(&written);
        written.clear();
    }
}

fn json_line(buf: &mut Vec<u8>, v: &Value) {
    let _ = serde_json::to_writer(&mut *buf, v);
    buf.push(b'\n');
}

/// A cell as JSON: an exact number as a number token with all its digits.
fn json_cell(buf: &mut Vec<u8>, v: &Value) {
    match cells::number_text(v) {
        Some(number) => buf.extend_from_slice(number.as_bytes()),
        None => {
            let _ = serde_json::to_writer(&mut *buf, v);
        }
    }
}

/// Encodes rows into a buffer and uploads it as a part whenever it holds `part_bytes`.
#[derive(Debug)]
pub struct PartWriter {
    encoder: RowEncoder,
    upload: Multipart,
    buf: Vec<u8>,
    part_bytes: usize,
}

impl PartWriter {
    /// `carry` is what the previous run had encoded but not yet uploaded.
    pub fn new(encoding: Encoding, upload: Multipart, carry: Vec<u8>, part_bytes: usize) -> PartWriter {
        PartWriter { encoder: RowEncoder::new(encoding), upload, buf: carry, part_bytes }
    }

    pub fn upload(&self) -> &Multipart {
        &self.upload
    }

    /// Bytes encoded but not yet uploaded.
    pub fn pending(&self) -> &[u8] {
        &self.buf
    }

    /// Writes the header (CSV and staged rows have one; JSON lines name columns in every row).
    pub fn header(&mut self, columns: &[String]) {
        self.encoder.header(&mut self.buf, columns);
    }

    /// Encodes rows (cells in column order) and uploads every full part.
    pub async fn write(&mut self, columns: &[String], rows: &[Vec<Value>]) -> Result<(), S3Error> {
        self.encoder.columns(columns);
        for row in rows {
            self.encoder.row(&mut self.buf, row);
            if self.buf.len() >= self.part_bytes {
                let part = std::mem::take(&mut self.buf);
                self.upload.upload_part(part).await?;
            }
        }
        Ok(())
    }

    /// Uploads what is left as the last part and completes the object; returns its size.
    pub async fn finish(self) -> Result<u64, S3Error> {
        self.upload.complete(self.buf).await
    }

    pub async fn abort(self) -> Result<(), S3Error> {
        self.upload.abort().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn encode(enc: Encoding, columns: &[&str], rows: &[Vec<Value>]) -> String {
        let columns: Vec<String> = columns.iter().map(|c| (*c).to_owned()).collect();
        let mut buf = Vec::new();
        let mut encoder = RowEncoder::new(enc);
        encoder.header(&mut buf, &columns);
        encoder.columns(&columns);
        for row in rows {
            encoder.row(&mut buf, row);
        }
        String::from_utf8(buf).unwrap_or_default()
    }

    fn exact(text: &str) -> Value {
        json!({ "$number": text })
    }

    #[test]
    fn csv_text_that_could_run_as_a_formula_is_escaped() {
        let check = |cell: Value, expect: &str| {
            assert_eq!(encode(Encoding::Csv, &["c"], &[vec![cell.clone()]]), format!("c\n{expect}\n"), "{cell}");
        };
        check(json!("=1+1"), "'=1+1");
        check(json!("=HYPERLINK(\"http://x\",\"y\")"), "\"'=HYPERLINK(\"\"http://x\"\",\"\"y\"\")\"");
        check(json!("+1"), "'+1");
        check(json!("-5"), "'-5");
        check(json!("@SUM(A1)"), "'@SUM(A1)");
        check(json!("\t=1"), "'\t=1");
        check(json!("\r=1"), "\"'\r=1\"");
        check(json!("a,b"), "\"a,b\"");
        check(json!("a=b"), "a=b");
        // Numbers are numbers, even negative, whatever carries them.
        check(json!(-5), "-5");
        check(json!(-1.5), "-1.5");
        check(exact("-123456789012345678901234567890"), "-123456789012345678901234567890");
        check(json!(true), "true");
        check(Value::Null, "\"\"");
        // A header is text too.
        assert_eq!(encode(Encoding::Csv, &["=x", "y"], &[]), "'=x,y\n");
    }

    #[test]
    fn csv_without_formula_escape_writes_text_as_it_is() {
        use ferry_core::jobs::Format;
        let enc = super::super::encoding(Format::Csv, false);
        assert_eq!(enc, Encoding::CsvPlain);
        assert_eq!(encode(enc, &["=h", "n"], &[vec![json!("=1+1"), json!(-5)], vec![json!("@x"), json!("-y")]]), "=h,n\n=1+1,-5\n@x,-y\n");
        assert_eq!(super::super::encoding(Format::Csv, true), Encoding::Csv);
        assert_eq!(super::super::encoding(Format::Jsonl, false), Encoding::Jsonl);
    }

    /// What each record was before the writer was reused: a CSV writer of its own.
    fn record_alone(fields: &[String]) -> Vec<u8> {
        let mut w = csv::WriterBuilder::new().from_writer(Vec::new());
        w.write_record(fields).unwrap();
        w.into_inner().unwrap()
    }

    #[test]
    fn a_reused_writer_writes_each_record_as_a_writer_of_its_own_would() {
        // Records of every length (none, one empty field, long ones past the writer's 8 KiB buffer),
        // quoting that must not carry over from one record to the next.
        let long = format!("\"{}\"", "x,".repeat(6_000));
        let rows: Vec<Vec<Value>> = vec![
            vec![json!("a"), json!("b,c"), json!(1)],
            vec![],
            vec![Value::Null],
            vec![json!("line\nbreak"), json!("=1"), json!("q\"uote")],
            vec![json!(long), Value::Null, json!(-5)],
            vec![json!(""), json!("")],
            vec![json!("\r"), json!({ "$number": "123456789012345678901234567890" })],
            vec![json!(true)],
        ];
        for enc in [Encoding::Csv, Encoding::CsvPlain] {
            let mut expected = record_alone(&["h".to_owned(), "=i".to_owned()].map(|h| enc.csv_text(&h).into_owned()));
            for row in &rows {
                expected.extend(record_alone(&row.iter().map(|v| enc.csv_field(v).into_owned()).collect::<Vec<_>>()));
            }
            let got = encode(enc, &["h", "=i"], &rows);
            assert_eq!(got.as_bytes(), expected.as_slice(), "{enc:?}");
        }
    }

    #[test]
    fn json_lines_key_each_row_by_the_columns_of_its_batch() {
        let mut encoder = RowEncoder::new(Encoding::Jsonl);
        let mut buf = Vec::new();
        let first = ["a\"b".to_owned(), "ü\n".to_owned()];
        encoder.columns(&first);
        encoder.row(&mut buf, &[json!(1), json!("x")]);
        encoder.row(&mut buf, &[]);
        encoder.row(&mut buf, &[json!(null)]);
        encoder.columns(&["c".to_owned()]);
        encoder.row(&mut buf, &[json!({ "$number": "1.50" })]);
        encoder.columns(&[]);
        encoder.row(&mut buf, &[json!(2)]);
        let text = String::from_utf8(buf).unwrap();
        assert_eq!(text, "{\"a\\\"b\":1,\"ü\\n\":\"x\"}\n{}\n{\"a\\\"b\":null}\n{\"c\":1.50}\n{}\n");
        assert!(text.lines().all(|l| serde_json::from_str::<Value>(l).is_ok()), "{text}");
    }

    #[test]
    fn numbers_keep_every_digit() {
        let row = vec![
            exact("123456789012345678901234567890"),
            json!(9_007_199_254_740_993i64),
            json!(i64::MIN),
            json!(u64::MAX),
            exact("12.50"),
            json!("=1"),
        ];
        let cols = ["a", "b", "c", "d", "e", "f"];
        assert_eq!(
            encode(Encoding::Csv, &cols, std::slice::from_ref(&row)),
            "a,b,c,d,e,f\n123456789012345678901234567890,9007199254740993,-9223372036854775808,18446744073709551615,12.50,'=1\n"
        );
        // JSON lines: number tokens with the exact digits; text left as it is.
        let line = encode(Encoding::Jsonl, &cols, std::slice::from_ref(&row));
        assert_eq!(
            line,
            "{\"a\":123456789012345678901234567890,\"b\":9007199254740993,\"c\":-9223372036854775808,\"d\":18446744073709551615,\"e\":12.50,\"f\":\"=1\"}\n"
        );
        assert!(serde_json::from_str::<Value>(&line).is_ok_and(|v| v["f"] == "=1"), "valid JSON: {line}");
        // Staged rows read back as the same cells.
        let staged = encode(Encoding::Staged, &cols, std::slice::from_ref(&row));
        let back: Vec<Value> = staged.lines().skip(1).filter_map(|l| serde_json::from_str(l).ok()).collect();
        assert_eq!(back, vec![Value::from(row)]);
    }
}
