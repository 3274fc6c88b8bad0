//! What a batch writes: an [`ItemResult`] per item in the results file ([`write_result`], JSON lines
//! or CSV), the failed items as an item file of their own ([`write_failed`]), the [`Counts`] a
//! running job shows, and [`Reorder`], which releases results in input order.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::MAX_RESPONSE_CHARS;
use super::items::Item;
use super::params::OutputFormat;
use crate::cells::formula_escaped;

/// What became of one item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ItemStatus {
    Succeeded,
    Failed,
    /// never sent: the job failed early
    Skipped,
}

impl ItemStatus {
    /// The name as written in results.
    pub fn as_str(self) -> &'static str {
        match self {
            ItemStatus::Succeeded => "succeeded",
            ItemStatus::Failed => "failed",
            ItemStatus::Skipped => "skipped",
        }
    }
}

/// One line of the results file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ItemResult {
    pub seq: u64,
    pub id: Option<String>,
    pub status: ItemStatus,
    /// Status of the last response, if any.
    pub http_status: Option<u16>,
    /// Tries made (0 when skipped).
    pub attempts: u32,
    /// The last response body, as [`bounded_response`] keeps it.
    pub response: Option<String>,
    /// Why it failed, when not told by a response.
    pub error: Option<String>,
}

/// A response body as kept in the results: UTF-8 (lossy), cut at MAX_RESPONSE_CHARS characters on a char boundary.
pub fn bounded_response(body: &[u8]) -> String {
    // At most 4 bytes a char: decode no more than could be kept.
    let body = &body[..body.len().min(MAX_RESPONSE_CHARS * 4)];
    let text = String::from_utf8_lossy(body);
    match text.char_indices().nth(MAX_RESPONSE_CHARS) {
        Some((i, _)) => text[..i].to_owned(),
        None => text.into_owned(),
    }
}

/// The CSV header line of the results file.
pub fn results_csv_header() -> &'static [u8] {
    b"seq,id,status,http_status,attempts,response,error\n"
}

/// Appends one result to `out` as a JSON line (always the 7 keys, nulls included) or a CSV record
/// (text cells formula-escaped; quoting by the csv crate rules).
pub fn write_result(format: OutputFormat, r: &ItemResult, out: &mut Vec<u8>) {
    let text = |s: &Option<String>| s.as_ref().map_or(Value::Null, |s| Value::String(s.clone()));
    match format {
        OutputFormat::Jsonl => {
            // Written by hand (Value's Display cannot fail) to fix the key order whatever serde_json's features.
            let http = r.http_status.map_or(Value::Null, Value::from);
            let line = format!(
                "{{\"seq\":{},\"id\":{},\"status\":\"{}\",\"http_status\":{},\"attempts\":{},\"response\":{},\"error\":{}}}\n",
                r.seq,
                text(&r.id),
                r.status.as_str(),
                http,
                r.attempts,
                text(&r.response),
                text(&r.error)
            );
            out.extend_from_slice(line.as_bytes());
        }
        OutputFormat::Csv => {
            let cell = |s: &Option<String>| s.as_deref().map(|s| formula_escaped(s).into_owned()).unwrap_or_default();
            let record = [
                r.seq.to_string(),
                cell(&r.id),
                r.status.as_str().to_owned(),
                r.http_status.map(|s| s.to_string()).unwrap_or_default(),
                r.attempts.to_string(),
                cell(&r.response),
                cell(&r.error),
            ];
            let mut writer = csv::WriterBuilder::new().has_headers(false).from_writer(Vec::new());
            // Writing to a Vec cannot fail.
            if writer.write_record(&record).is_ok()
                && let Ok(bytes) = writer.into_inner()
            {
                out.extend_from_slice(&bytes);
            }
        }
    }
}

/// Appends the item as a line of the failed file: its value as one JSON line (a CSV row as its
/// object), so the failed file is itself a JSON lines item file that can be submitted again.
pub fn write_failed(item: &Item, out: &mut Vec<u8>) {
    out.extend_from_slice(item.value.to_string().as_bytes());
    out.push(b'\n');
}

/// Items by state while a batch runs (what the job status shows).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub pending: u64,
    pub running: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub retrying: u64,
}

/// Results that complete out of order, released in input order. Bounded by what the caller lets in flight.
#[derive(Debug)]
pub struct Reorder<T> {
    next: u64,
    waiting: BTreeMap<u64, T>,
}

impl<T> Reorder<T> {
    /// Empty, releasing from `next` on.
    pub fn new(next: u64) -> Self {
        Reorder { next, waiting: BTreeMap::new() }
    }

    /// Files the result of `seq` (>= next; a seq below next or a duplicate is ignored and returns false).
    pub fn insert(&mut self, seq: u64, value: T) -> bool {
        if seq < self.next || self.waiting.contains_key(&seq) {
            return false;
        }
        self.waiting.insert(seq, value);
        true
    }

    /// The result of `next`, when it is in; advances `next`.
    pub fn pop_ready(&mut self) -> Option<T> {
        let value = self.waiting.remove(&self.next)?;
        self.next += 1;
        Some(value)
    }

    /// The seq released next.
    pub fn next(&self) -> u64 {
        self.next
    }

    /// Results filed and not yet released.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Drains every waiting result (for a checkpoint), in seq order.
    pub fn drain_waiting(&mut self) -> Vec<(u64, T)> {
        std::mem::take(&mut self.waiting).into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::batch::items::inline_items;
    use crate::batch::params::ItemFormat;
    use crate::batch::reader::ReadCursor;
    use crate::batch::reader::tests::{ok_items, read_all};

    #[test]
    fn results_as_json_lines_and_csv() {
        let r = ItemResult {
            seq: 3,
            id: Some("a\"1".into()),
            status: ItemStatus::Failed,
            http_status: Some(422),
            attempts: 2,
            response: Some("=HYPERLINK(\"x\")".into()),
            error: None,
        };
        let mut out = Vec::new();
        write_result(OutputFormat::Jsonl, &r, &mut out);
        let line = String::from_utf8(out).unwrap();
        assert_eq!(
            line,
            "{\"seq\":3,\"id\":\"a\\\"1\",\"status\":\"failed\",\"http_status\":422,\"attempts\":2,\"response\":\"=HYPERLINK(\\\"x\\\")\",\"error\":null}\n"
        );
        assert_eq!(serde_json::from_str::<ItemResult>(&line).unwrap(), r);
        let skipped =
            ItemResult { seq: 9, id: None, status: ItemStatus::Skipped, http_status: None, attempts: 0, response: None, error: None };
        let mut out = Vec::new();
        write_result(OutputFormat::Jsonl, &skipped, &mut out);
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v.as_object().unwrap().len(), 7);
        assert_eq!(v["id"], Value::Null);

        let mut out = results_csv_header().to_vec();
        write_result(OutputFormat::Csv, &r, &mut out);
        write_result(OutputFormat::Csv, &skipped, &mut out);
        let error = ItemResult { error: Some("-timeout, 3 tries".into()), response: Some("line1\nline2".into()), ..skipped.clone() };
        write_result(OutputFormat::Csv, &error, &mut out);
        assert_eq!(
            String::from_utf8(out.clone()).unwrap(),
            "seq,id,status,http_status,attempts,response,error\n\
             3,\"a\"\"1\",failed,422,2,\"'=HYPERLINK(\"\"x\"\")\",\n\
             9,,skipped,,0,,\n\
             9,,skipped,,0,\"line1\nline2\",\"'-timeout, 3 tries\"\n"
        );
        let rows: Vec<csv::StringRecord> = csv::Reader::from_reader(&out[..]).records().map(|r| r.unwrap()).collect();
        assert_eq!(rows.len(), 3);
        assert_eq!(&rows[0][5], "'=HYPERLINK(\"x\")");
    }

    #[test]
    fn bounded_responses() {
        assert_eq!(bounded_response(b"ok"), "ok");
        assert_eq!(bounded_response(b"bad \xFF byte"), "bad \u{FFFD} byte");
        let long = "é".repeat(MAX_RESPONSE_CHARS + 10);
        let kept = bounded_response(long.as_bytes());
        assert_eq!(kept.chars().count(), MAX_RESPONSE_CHARS);
        assert!(long.starts_with(&kept));
        let exact = "x".repeat(MAX_RESPONSE_CHARS);
        assert_eq!(bounded_response(exact.as_bytes()), exact);
        let emoji = "😀".repeat(MAX_RESPONSE_CHARS * 2);
        assert_eq!(bounded_response(emoji.as_bytes()).chars().count(), MAX_RESPONSE_CHARS);
    }

    #[test]
    fn failed_file_is_an_item_file() {
        let mut items = inline_items(&[json!({"id": 1, "x": [1, {"y": null}]}), json!("plain"), json!(2.5)]);
        items.extend(ok_items(read_all(ItemFormat::Csv, ReadCursor::default(), b"id,v\nq,\"=a\nb\"\n", 3)));
        let mut out = Vec::new();
        for it in &items {
            write_failed(it, &mut out);
        }
        assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), items.len(), "one line each");
        let again = ok_items(read_all(ItemFormat::Jsonl, ReadCursor::default(), &out, 7));
        let values = |v: &[Item]| v.iter().map(|i| (i.id.clone(), i.value.clone())).collect::<Vec<_>>();
        assert_eq!(values(&again), values(&items));
        assert_eq!(again.iter().map(|i| i.seq).collect::<Vec<_>>(), vec![0, 1, 2, 3]);
    }

    #[test]
    fn reorder_releases_in_seq_order() {
        let mut r = Reorder::new(5);
        assert_eq!(r.next(), 5);
        assert!(r.insert(7, "seven"));
        assert!(r.insert(6, "six"));
        assert!(!r.insert(7, "again"), "duplicate ignored");
        assert!(!r.insert(4, "old"), "below next ignored");
        assert_eq!(r.pop_ready(), None, "5 is not in");
        assert_eq!(r.waiting(), 2);
        assert!(r.insert(5, "five"));
        assert_eq!(r.pop_ready(), Some("five"));
        assert!(!r.insert(5, "late duplicate"));
        assert_eq!(r.pop_ready(), Some("six"));
        assert_eq!(r.pop_ready(), Some("seven"));
        assert_eq!(r.pop_ready(), None);
        assert_eq!(r.next(), 8);
        assert!(r.insert(10, "ten"));
        assert!(r.insert(9, "nine"));
        assert_eq!(r.drain_waiting(), vec![(9, "nine"), (10, "ten")]);
        assert_eq!(r.waiting(), 0);
        assert_eq!(r.next(), 8);
        let counts = Counts { pending: 1, running: 2, succeeded: 3, failed: 4, retrying: 5 };
        assert_eq!(serde_json::to_value(counts).unwrap(), json!({"pending": 1, "running": 2, "succeeded": 3, "failed": 4, "retrying": 5}));
    }
}
