//! One item of a batch ([`Item`]: its seq, its id, its value; inline items as items) and how one
//! complete record of an item file (a JSON line, or a CSV row under its header) becomes one, or an
//! [`ItemError`] naming its line. Reading a whole file in chunks is
//! [`ItemReader`](super::ItemReader)'s.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::MAX_LINE_BYTES;
use super::params::ItemFormat;

/// Longest message of an [`ItemError`]: a parser's message must not carry a whole line along.
const MAX_ERROR_CHARS: usize = 200;

/// One item: its position in the input (0-based `seq`), its `id` when it has one, and its value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Item {
    pub seq: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub value: Value,
}

impl Item {
    /// The item at `seq` holding `value`, its id taken from the value.
    pub fn new(seq: u64, value: Value) -> Item {
        Item { seq, id: item_id(&value), value }
    }
}

/// An item's id: the `id` member of an object value when it is a string or an integer (integers as
/// their decimal text); else None.
pub fn item_id(value: &Value) -> Option<String> {
    match value.get("id")? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) if n.is_i64() || n.is_u64() => Some(n.to_string()),
        _ => None,
    }
}

/// Inline items as [`Item`]s, seq from 0.
pub fn inline_items(values: &[Value]) -> Vec<Item> {
    inline_items_from(values, 0)
}

/// The inline items from position `first_seq` on (those before it skipped, as after a resume), each
/// with its position as seq.
pub fn inline_items_from(values: &[Value], first_seq: u64) -> Vec<Item> {
    let skip = usize::try_from(first_seq).unwrap_or(usize::MAX);
    values.iter().zip(0u64..).skip(skip).map(|(v, seq)| Item::new(seq, v.clone())).collect()
}

/// A malformed item: the 1-based line and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct ItemError {
    pub line: u64,
    pub message: String,
}

/// What one complete record is.
pub(super) enum Record {
    Blank,
    Header,
    Value(Value),
    Invalid(String),
}

pub(super) fn too_long() -> String {
    format!("line longer than {MAX_LINE_BYTES} bytes")
}

/// `message` cut to [`MAX_ERROR_CHARS`] characters.
fn capped(message: String) -> String {
    match message.char_indices().nth(MAX_ERROR_CHARS) {
        Some((i, _)) => format!("{}...", &message[..i]),
        None => message,
    }
}

/// One complete record (without its newline) of an item file.
pub(super) fn parse_record(format: ItemFormat, bytes: &[u8], header: &mut Option<Vec<String>>) -> Record {
    let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Record::Blank;
    }
    match format {
        ItemFormat::Jsonl => match serde_json::from_slice::<Value>(bytes) {
            Ok(v) => Record::Value(v),
            Err(e) => {
                // serde_json says "at line 1 column N" of this one line: keep only the column.
                let text = e.to_string();
                let what = text.rsplit_once(" at line ").map_or(text.as_str(), |(what, _)| what);
                Record::Invalid(capped(format!("not valid JSON: {what} at column {}", e.column())))
            }
        },
        ItemFormat::Csv => parse_csv_record(bytes, header),
    }
}

fn parse_csv_record(bytes: &[u8], header: &mut Option<Vec<String>>) -> Record {
    let mut reader = csv::ReaderBuilder::new().has_headers(false).flexible(true).from_reader(bytes);
    let mut records = reader.records();
    let fields: Vec<String> = match records.next() {
        None => return Record::Blank,
        Some(Err(e)) => return Record::Invalid(capped(format!("not valid CSV: {e}"))),
        Some(Ok(r)) => r.iter().map(str::to_owned).collect(),
    };
    if records.next().is_some() {
        // The csv crate ends a record at a bare CR too; the file's records end at newlines only.
        return Record::Invalid("a carriage return outside quotes splits the record".into());
    }
    match header {
        None => match check_header(&fields) {
            Ok(()) => {
                *header = Some(fields);
                Record::Header
            }
            Err(message) => {
                // Empty marks "invalid header" in the cursor, so a resume does not take a row for one.
                *header = Some(Vec::new());
                Record::Invalid(capped(message))
            }
        },
        Some(columns) if columns.is_empty() => Record::Invalid("no item can be read: the header record is not valid".into()),
        Some(columns) if columns.len() != fields.len() => {
            Record::Invalid(format!("has {} fields, the header has {}", fields.len(), columns.len()))
        }
        Some(columns) => Record::Value(Value::Object(columns.iter().cloned().zip(fields.into_iter().map(Value::String)).collect())),
    }
}

fn check_header(columns: &[String]) -> Result<(), String> {
    if let Some(i) = columns.iter().position(String::is_empty) {
        return Err(format!("header: column {} has no name", i + 1));
    }
    let mut seen = std::collections::BTreeSet::new();
    match columns.iter().find(|c| !seen.insert(c.as_str())) {
        Some(dup) => Err(format!("header: names column {dup:?} twice")),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::batch::reader::tests::{CSV, ok_items, read_all};
    use crate::batch::reader::{ItemReader, ReadCursor};

    #[test]
    fn item_ids_and_inline_items() {
        assert_eq!(item_id(&json!({"id": "a-1"})), Some("a-1".into()));
        assert_eq!(item_id(&json!({"id": 42})), Some("42".into()));
        assert_eq!(item_id(&json!({"id": -7})), Some("-7".into()));
        assert_eq!(item_id(&json!({"id": 1.5})), None);
        assert_eq!(item_id(&json!({"id": null})), None);
        assert_eq!(item_id(&json!({"id": [1]})), None);
        assert_eq!(item_id(&json!({"ID": 1})), None);
        assert_eq!(item_id(&json!("id")), None);
        let values = [json!({"id": "a"}), json!(2), json!({"id": 3})];
        let items = inline_items(&values);
        assert_eq!(
            items,
            vec![
                Item { seq: 0, id: Some("a".into()), value: json!({"id": "a"}) },
                Item { seq: 1, id: None, value: json!(2) },
                Item { seq: 2, id: Some("3".into()), value: json!({"id": 3}) },
            ]
        );
        assert_eq!(inline_items_from(&values, 2), items[2..].to_vec());
        assert_eq!(inline_items_from(&values, 9), vec![]);
    }

    #[test]
    fn malformed_json_names_its_line_and_reading_goes_on() {
        let bytes = b"{\"a\":1}\n\n{\"a\": tru\n{\"a\":3}\n";
        for chunk in [1, 64] {
            let got = read_all(ItemFormat::Jsonl, ReadCursor::default(), bytes, chunk);
            assert_eq!(got.len(), 3);
            let err = got[1].as_ref().unwrap_err();
            assert_eq!(err.line, 3);
            assert!(err.message.starts_with("not valid JSON: "), "{err}");
            assert!(err.message.contains("column"), "{err}");
            assert!(!err.message.contains("line 1"), "{err}");
            assert!(err.to_string().starts_with("line 3: "), "{err}");
            // The bad line takes no seq.
            assert_eq!(got[2], Ok(Item { seq: 1, id: None, value: json!({"a": 3}) }));
        }
        // The message never carries the line along.
        let long = format!("{{\"a\": \"{}\" oops}}\n", "x".repeat(5_000));
        let err = read_all(ItemFormat::Jsonl, ReadCursor::default(), long.as_bytes(), 4096).remove(0).unwrap_err();
        assert!(err.message.chars().count() <= MAX_ERROR_CHARS + 3, "{}", err.message.len());
        assert!(!err.message.contains("xxxxxxxxxx"));
    }

    #[test]
    fn csv_rows_become_objects() {
        let row =
            |seq, id: &str, name: &str, note: &str| Item { seq, id: Some(id.into()), value: json!({"id": id, "name": name, "note": note}) };
        let want = vec![row(0, "1", "Ann", "said \"hi\""), row(1, "2", "Bob", "two\nlines"), row(2, "3", "Cy, Jr", "")];
        for chunk in [1, 2, 5, usize::MAX] {
            assert_eq!(ok_items(read_all(ItemFormat::Csv, ReadCursor::default(), CSV.as_bytes(), chunk)), want, "chunk {chunk}");
        }
        let mut reader = ItemReader::new(ItemFormat::Csv, ReadCursor::default());
        reader.push(CSV.as_bytes());
        let mut lines = Vec::new();
        while let Some(r) = reader.next_item() {
            r.unwrap();
            lines.push(reader.cursor().line);
        }
        // Row 2 starts on line 4 and spans two lines: row 3 starts on line 6.
        assert_eq!(lines, vec![3, 6, 7]);
        assert_eq!(reader.cursor().header, Some(vec!["id".to_owned(), "name".to_owned(), "note".to_owned()]));
        // With a BOM, no trailing newline.
        let bytes = b"\xEF\xBB\xBFa,b\n1,2";
        assert_eq!(
            ok_items(read_all(ItemFormat::Csv, ReadCursor::default(), bytes, 1)),
            vec![Item { seq: 0, id: None, value: json!({"a": "1", "b": "2"}) }]
        );
    }

    #[test]
    fn csv_errors_name_their_line() {
        let first_err =
            |text: &str| read_all(ItemFormat::Csv, ReadCursor::default(), text.as_bytes(), 1).into_iter().find_map(Result::err).unwrap();
        for bad in ["a,,c\n1,2,3\n", "a,b,a\n1,2,3\n", ",\n1,2\n"] {
            let err = first_err(bad);
            assert_eq!(err.line, 1, "{bad:?}");
            assert!(err.message.starts_with("header: "), "{err}");
        }
        // After a bad header, every row is an error (not an item), and so it stays after a resume.
        let got = read_all(ItemFormat::Csv, ReadCursor::default(), b"a,a\n1,2\n3,4\n", 1);
        assert_eq!(got.iter().map(|r| r.as_ref().unwrap_err().line).collect::<Vec<_>>(), vec![1, 2, 3]);
        let got = read_all(ItemFormat::Csv, ReadCursor { offset: 4, seq: 0, line: 2, header: Some(vec![]) }, b"1,2\n", 1);
        assert_eq!(got[0].as_ref().unwrap_err().line, 2);

        let err = first_err("a,b\n1,2\n\n1,2,3\n");
        assert_eq!(err, ItemError { line: 4, message: "has 3 fields, the header has 2".into() });
        let err = first_err("a,b\n1,2\n\"x\ny\"\n5\n");
        assert_eq!((err.line, err.message.as_str()), (3, "has 1 fields, the header has 2"));
        let err = first_err("a,b\n1,\"open\n");
        assert_eq!(err.line, 2);
        assert!(err.message.contains("not closed"), "{err}");
        let err = first_err("a,b\n1,2\r3\n");
        assert_eq!(err.line, 2);
    }
}
