//! Where a job's objects lie ([`export_key`], [`output_key`], and the worker's staging objects
//! under [`STAGING_PREFIX`]), the dataset snapshot an S3 export reads ([`DatasetObject`],
//! [`place_snapshot`]: inline in the checkpoint or staged), and the opaque [`ListCursor`] of
//! `GET /jobs`.

use serde::{Deserialize, Serialize};

use super::submit::{Format, SubmitError};
use super::{DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE};

/// Where the worker keeps what it reads back between runs (staged xlsx rows, bytes not yet
/// uploaded). The only part of `exports/` the worker may read: no owner segment starts with `.`.
pub const STAGING_PREFIX: &str = "exports/.staging/";

/// Where the export of job `id` is written: `exports/{owner}/{id}.{ext}`. The owner is
/// percent-encoded, since a JWT `sub` may hold any character.
pub fn export_key(owner: &str, id: &str, format: Format) -> String {
    format!("exports/{}/{id}.{}", owner_segment(owner), format.extension())
}

/// A temporary object of job `id` (`what`: `rows`, `carry`, `snapshot`), under [`STAGING_PREFIX`].
pub fn staging_key(owner: &str, id: &str, format: Format, what: &str) -> String {
    format!("{STAGING_PREFIX}{}/{id}.{}.{what}", owner_segment(owner), format.extension())
}

/// An output of job `id` other than an export: `exports/{owner}/{id}.{name}` (a batch's
/// `results.jsonl`, `failed.jsonl`).
pub fn output_key(owner: &str, id: &str, name: &str) -> String {
    format!("exports/{}/{id}.{name}", owner_segment(owner))
}

/// A temporary object of job `id` of any kind, `{STAGING_PREFIX}{owner}/{id}.{what}`.
pub fn staging_object(owner: &str, id: &str, what: &str) -> String {
    format!("{STAGING_PREFIX}{}/{id}.{what}", owner_segment(owner))
}

/// One object of an S3 dataset as the export listed it when it started. The export reads exactly
/// these objects, each only while it still has this ETag: a dataset is a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatasetObject {
    pub key: String,
    pub size: u64,
    /// Without surrounding quotes.
    pub etag: String,
}

/// Where a checkpoint keeps the dataset snapshot: in itself, or in a staging object (its key) when
/// the list is too long for the job's DynamoDB item (400 KB at most, the checkpoint included).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Snapshot {
    Inline(Vec<DatasetObject>),
    Staged(String),
}

/// Largest snapshot (its JSON) a checkpoint holds inline.
pub const SNAPSHOT_INLINE_MAX_BYTES: usize = 200 * 1024;

/// How a checkpoint carries `objects`: inline when their JSON takes at most `inline_max` bytes;
/// otherwise as the object `staged_key`, whose body is returned to be written there first.
pub fn place_snapshot(objects: Vec<DatasetObject>, inline_max: usize, staged_key: &str) -> (Snapshot, Option<Vec<u8>>) {
    let body = snapshot_bytes(&objects);
    if body.len() <= inline_max { (Snapshot::Inline(objects), None) } else { (Snapshot::Staged(staged_key.to_owned()), Some(body)) }
}

/// The body of a staged snapshot.
pub fn snapshot_bytes(objects: &[DatasetObject]) -> Vec<u8> {
    // Strings and numbers only: serialising cannot fail.
    serde_json::to_vec(objects).unwrap_or_default()
}

/// Reads back a staged snapshot's body.
pub fn parse_snapshot(body: &[u8]) -> Result<Vec<DatasetObject>, String> {
    serde_json::from_slice(body).map_err(|e| e.to_string())
}

/// The owner as one key segment. A leading `.` is encoded too, so that no owner's segment is
/// `.staging` (or `.`, `..`).
fn owner_segment(owner: &str) -> String {
    let mut segment: String = percent_encoding::utf8_percent_encode(owner, KEY_SEGMENT).collect();
    if segment.starts_with('.') {
        segment.replace_range(..1, "%2E");
    }
    segment
}

const KEY_SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'@');

/// Where `GET /jobs` resumes: after the job created at `created_at` with id `id` (newest first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListCursor {
    pub created_at: i64,
    pub id: String,
}

impl ListCursor {
    /// The sort key of a job in its owner's listing; orders by creation time, then id.
    pub fn sort_key(created_at: i64, id: &str) -> String {
        format!("{created_at:015}#{id}")
    }

    /// An opaque token (hex of the sort key).
    pub fn encode(&self) -> String {
        hex(Self::sort_key(self.created_at, &self.id).as_bytes())
    }

    pub fn decode(token: &str) -> Result<ListCursor, SubmitError> {
        let bad = || SubmitError::new("cursor", "is not a cursor this API returned");
        if token.len() > 400 || !token.len().is_multiple_of(2) {
            return Err(bad());
        }
        let bytes: Option<Vec<u8>> =
            (0..token.len()).step_by(2).map(|i| token.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok())).collect();
        let text = bytes.and_then(|b| String::from_utf8(b).ok()).ok_or_else(bad)?;
        let (created, id) = text.split_once('#').ok_or_else(bad)?;
        let valid_id = !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        match created.parse::<i64>() {
            Ok(created_at) if created.len() == 15 && valid_id => Ok(ListCursor { created_at, id: id.to_owned() }),
            _ => Err(bad()),
        }
    }
}

/// Parses the `limit` query parameter of `GET /jobs`.
pub fn parse_page_size(raw: Option<&str>) -> Result<u32, SubmitError> {
    match raw {
        None => Ok(DEFAULT_PAGE_SIZE),
        Some(s) => match s.parse::<u32>() {
            Ok(n) if (1..=MAX_PAGE_SIZE).contains(&n) => Ok(n),
            _ => Err(SubmitError::new("limit", format!("must be a whole number from 1 to {MAX_PAGE_SIZE}, got {s:?}"))),
        },
    }
}

/// Whether `id` has the shape of a job id (a UUID); anything else is not looked up.
pub fn is_job_id(id: &str) -> bool {
    id.len() == 36 && id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
}

pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_forgeries() {
        let c = ListCursor { created_at: 1_763_800_000_000, id: "0b7d2c1e-0000-4000-8000-000000000001".into() };
        assert_eq!(ListCursor::decode(&c.encode()).unwrap(), c);
        for bad in ["", "zz", "abc", &hex(b"12#x"), &hex(b"000000000000001#a/b"), &"ab".repeat(300)] {
            assert_eq!(ListCursor::decode(bad).unwrap_err().field, "cursor", "{bad}");
        }
        assert_eq!(parse_page_size(None), Ok(DEFAULT_PAGE_SIZE));
        assert_eq!(parse_page_size(Some("100")), Ok(100));
        assert!(parse_page_size(Some("0")).is_err());
        assert!(parse_page_size(Some("101")).is_err());
    }

    #[test]
    fn export_keys() {
        assert_eq!(export_key("user-1", "j", Format::Xlsx), "exports/user-1/j.xlsx");
        assert_eq!(export_key("auth0|42/x", "j", Format::Csv), "exports/auth0%7C42%2Fx/j.csv");
        assert_eq!(export_key(".staging", "j", Format::Csv), "exports/%2Estaging/j.csv");
        assert_eq!(export_key("..", "j", Format::Csv), "exports/%2E./j.csv");
        assert_eq!(export_key("a.b", "j", Format::Csv), "exports/a.b/j.csv");
        assert_eq!(staging_key("user-1", "j", Format::Xlsx, "rows"), "exports/.staging/user-1/j.xlsx.rows");
        assert!(staging_key(".x", "j", Format::Csv, "carry").starts_with(STAGING_PREFIX));
        // Nothing an owner can be named puts an export under the staging prefix.
        for owner in [".staging", "%2Estaging", "./.staging", "/.staging", ".", "", "..staging"] {
            assert!(!export_key(owner, "j", Format::Csv).starts_with(STAGING_PREFIX), "{owner:?}");
        }
    }

    #[test]
    fn a_snapshot_stays_inline_until_it_would_crowd_the_checkpoint() {
        let objects = |n: usize| -> Vec<DatasetObject> {
            (0..n)
                .map(|i| DatasetObject { key: format!("datasets/shop/part-{i:06}.csv"), size: 1 << 20, etag: format!("{i:032x}") })
                .collect()
        };
        let staged = staging_key("user-1", "j", Format::Csv, "snapshot");
        let small = objects(3);
        let len = snapshot_bytes(&small).len();
        assert_eq!(place_snapshot(small.clone(), len, &staged), (Snapshot::Inline(small.clone()), None), "at the limit: inline");
        let (placed, body) = place_snapshot(small.clone(), len - 1, &staged);
        assert_eq!(placed, Snapshot::Staged(staged.clone()), "one byte over: staged");
        assert_eq!(parse_snapshot(&body.expect("the staged body")).unwrap(), small, "the staged body reads back");
        // With the default limit, thousands of objects stay inline; tens of thousands are staged.
        assert!(matches!(place_snapshot(objects(1000), SNAPSHOT_INLINE_MAX_BYTES, &staged), (Snapshot::Inline(_), None)));
        assert!(matches!(place_snapshot(objects(20_000), SNAPSHOT_INLINE_MAX_BYTES, &staged), (Snapshot::Staged(_), Some(_))));
        // A checkpoint stores it tagged, and an empty list is still a snapshot (not "none recorded").
        assert_eq!(serde_json::to_string(&Snapshot::Staged("k".into())).unwrap(), r#"{"staged":"k"}"#);
        assert_eq!(serde_json::to_string(&Snapshot::Inline(Vec::new())).unwrap(), r#"{"inline":[]}"#);
        assert!(parse_snapshot(b"{").is_err());
    }
}
