//! Rows to bytes, and bytes to S3 parts: memory holds at most one part whatever the row count.

use ferry_aws::exports::Multipart;
use ferry_aws::s3::S3Error;
use serde_json::Value;

/// How rows become bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// RFC 4180 CSV with a header row.
    Csv,
    /// One JSON object per line, keys in column order.
    Jsonl,
    /// One JSON array per line, the header first: what the xlsx step reads back.
    Staged,
}

/// Encodes rows into a buffer and uploads it as a part whenever it holds `part_bytes`.
#[derive(Debug)]
pub struct PartWriter {
    encoding: Encoding,
    upload: Multipart,
    buf: Vec<u8>,
    part_bytes: usize,
}

/// A cell as CSV text.
fn csv_field(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
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
        match self.encoding {
            Encoding::Csv => self.csv_record(columns.iter().map(String::as_str)),
            Encoding::Jsonl => {}
            Encoding::Staged => self.json_line(&Value::from(columns.to_vec())),
        }
    }

    fn csv_record<'a>(&mut self, fields: impl Iterator<Item = &'a str>) {
        let mut w = csv::WriterBuilder::new().from_writer(std::mem::take(&mut self.buf));
        // Writing to a Vec cannot fail.
        let _ = w.write_record(fields);
        self.buf = w.into_inner().unwrap_or_default();
    }

    fn json_line(&mut self, v: &Value) {
        let _ = serde_json::to_writer(&mut self.buf, v);
        self.buf.push(b'\n');
    }

    /// Encodes rows (cells in column order) and uploads every full part.
    pub async fn write(&mut self, columns: &[String], rows: &[Vec<Value>]) -> Result<(), S3Error> {
        for row in rows {
            match self.encoding {
                Encoding::Csv => {
                    let fields: Vec<String> = row.iter().map(csv_field).collect();
                    self.csv_record(fields.iter().map(String::as_str));
                }
                Encoding::Jsonl => {
                    self.buf.push(b'{');
                    for (i, (c, v)) in columns.iter().zip(row).enumerate() {
                        if i > 0 {
                            self.buf.push(b',');
                        }
                        let _ = serde_json::to_writer(&mut self.buf, c);
                        self.buf.push(b':');
                        let _ = serde_json::to_writer(&mut self.buf, v);
                    }
                    self.buf.extend_from_slice(b"}\n");
                }
                Encoding::Staged => self.json_line(&Value::from(row.clone())),
            }
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

    #[test]
    fn csv_fields() {
        assert_eq!(csv_field(&Value::Null), "");
        assert_eq!(csv_field(&serde_json::json!("a,b")), "a,b");
        assert_eq!(csv_field(&serde_json::json!(1.5)), "1.5");
        assert_eq!(csv_field(&serde_json::json!(true)), "true");
    }
}
