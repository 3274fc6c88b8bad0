//! Rows to bytes, and bytes to S3 parts: memory holds at most one part whatever the row count.
//!
//! Cells are JSON values. Text a spreadsheet would run as a formula is neutralised in CSV
//! ([`ferry_core::cells::formula_escaped`]) unless the job asks otherwise; numbers never are, and
//! keep every digit: a number serde_json cannot hold exactly arrives as
//! [`ferry_core::cells::number_text`] and is written as that text (in JSON lines, as a number token).

use std::borrow::Cow;

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
    /// CSV with or without formula escaping; other encodings are unaffected (JSON is not opened as
    /// a spreadsheet, and the xlsx writer keeps every text a string cell).
    pub fn with_formula_escape(self, on: bool) -> Encoding {
        match (self, on) {
            (Encoding::Csv | Encoding::CsvPlain, true) => Encoding::Csv,
            (Encoding::Csv | Encoding::CsvPlain, false) => Encoding::CsvPlain,
            (other, _) => other,
        }
    }

    /// Appends the header (CSV and staged rows have one; JSON lines name columns in every row).
    pub fn header(self, buf: &mut Vec<u8>, columns: &[String]) {
        match self {
            Encoding::Csv | Encoding::CsvPlain => {
                let fields: Vec<Cow<'_, str>> = columns.iter().map(|c| self.csv_text(c)).collect();
                csv_record(buf, &fields);
            }
            Encoding::Jsonl => {}
            Encoding::Staged => json_line(buf, &Value::from(columns.to_vec())),
        }
    }

    /// Appends one row (cells in column order).
    pub fn row(self, buf: &mut Vec<u8>, columns: &[String], row: &[Value]) {
        match self {
            Encoding::Csv | Encoding::CsvPlain => {
                let fields: Vec<Cow<'_, str>> = row.iter().map(|v| self.csv_field(v)).collect();
                csv_record(buf, &fields);
            }
            Encoding::Jsonl => {
                buf.push(b'{');
                for (i, (c, v)) in columns.iter().zip(row).enumerate() {
                    if i > 0 {
                        buf.push(b',');
                    }
                    let _ = serde_json::to_writer(&mut *buf, c);
                    buf.push(b':');
                    json_cell(buf, v);
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

fn csv_record(buf: &mut Vec<u8>, fields: &[Cow<'_, str>]) {
    let mut w = csv::WriterBuilder::new().from_writer(std::mem::take(buf));
    // Writing to a Vec cannot fail.
    let _ = w.write_record(fields.iter().map(|f| f.as_bytes()));
    *buf = w.into_inner().unwrap_or_default();
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
    encoding: Encoding,
    upload: Multipart,
    buf: Vec<u8>,
    part_bytes: usize,
}

impl PartWriter {
    /// `carry` is what the previous run had encoded but not yet uploaded.
    pub fn new(encoding: Encoding, upload: Multipart, carry: Vec<u8>, part_bytes: usize) -> PartWriter {
        PartWriter { encoding, upload, buf: carry, part_bytes }
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
        self.encoding.header(&mut self.buf, columns);
    }

    /// Encodes rows (cells in column order) and uploads every full part.
    pub async fn write(&mut self, columns: &[String], rows: &[Vec<Value>]) -> Result<(), S3Error> {
        for row in rows {
            self.encoding.row(&mut self.buf, columns, row);
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
        enc.header(&mut buf, &columns);
        for row in rows {
            enc.row(&mut buf, &columns, row);
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
        let enc = Encoding::Csv.with_formula_escape(false);
        assert_eq!(enc, Encoding::CsvPlain);
        assert_eq!(encode(enc, &["=h", "n"], &[vec![json!("=1+1"), json!(-5)], vec![json!("@x"), json!("-y")]]), "=h,n\n=1+1,-5\n@x,-y\n");
        assert_eq!(enc.with_formula_escape(true), Encoding::Csv);
        assert_eq!(Encoding::Jsonl.with_formula_escape(false), Encoding::Jsonl);
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
