//! Async jobs: what a job is, which state changes are allowed, and what a submit request may ask for.
//!
//! - [`Status`] and [`Transition`]: the state machine `queued -> running -> succeeded | failed | cancelled`.
//!   [`Status::Lost`] is never stored: [`JobRecord::status_at`] derives it from a lease that expired
//!   without a heartbeat.
//! - [`JobRecord`]: the status record as the API and the worker see it.
//! - [`SubmitRequest`] / [`parse_submit`]: the body of `POST /jobs`, validated, with [`ExportParams`]
//!   and their canonical form ([`ExportParams::canonical`], [`ExportParams::hash`]) that makes equal
//!   requests take the same lock.
//! - [`ListCursor`]: the opaque cursor of `GET /jobs`.
//! - [`export_key`] and [`staging_key`]: where an export and the worker's temporary objects lie.
//! - [`DatasetObject`] and [`place_snapshot`]: the object list an S3-dataset export reads, and whether its
//!   checkpoint holds it inline or in a staging object.
//!
//! Every time is milliseconds since the Unix epoch and is passed in: nothing here reads a clock.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::public::{ErrorCode, PublicError};

/// The largest `POST /jobs` body accepted: room for a batch's inline items, and well under the
/// 400 KB a DynamoDB item holds, since the params are stored with the job.
pub const MAX_SUBMIT_BYTES: usize = 256 * 1024;
/// Page size of `GET /jobs` when the caller names none, and the largest it may name.
pub const DEFAULT_PAGE_SIZE: u32 = 20;
pub const MAX_PAGE_SIZE: u32 = 100;
/// Rows of one xlsx worksheet, the header row included (Excel's limit).
pub const XLSX_MAX_ROWS: u32 = 1_048_576;
/// Most partitions (DynamoDB scan segments) one export may be split into.
pub const MAX_SEGMENTS: u32 = 64;

/// Where a job is. `Lost` is derived, never stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    /// Queued or running, but its lease passed without a heartbeat: the worker died or never started.
    Lost,
}

impl Status {
    pub const STORED: [Status; 5] = [Status::Queued, Status::Running, Status::Succeeded, Status::Failed, Status::Cancelled];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Running => "running",
            Status::Succeeded => "succeeded",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
            Status::Lost => "lost",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        [Status::Queued, Status::Running, Status::Succeeded, Status::Failed, Status::Cancelled, Status::Lost]
            .into_iter()
            .find(|st| st.as_str() == s)
    }

    /// Queued or running: a worker is (or should be) on it, and its lease matters.
    pub fn is_active(self) -> bool {
        matches!(self, Status::Queued | Status::Running)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A change of a job's stored status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// A worker takes the job (first run or a continuation).
    Claim,
    /// The running worker reports progress and extends its lease, or hands over to a continuation.
    Heartbeat,
    Succeed,
    /// The worker failed, or the invoke that should have started it did.
    Fail,
    Cancel,
}

/// A transition that is not allowed from the status the job has.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("job is {from}: cannot {transition:?}")]
pub struct TransitionError {
    pub from: Status,
    pub transition: Transition,
}

impl Transition {
    /// The stored statuses this transition may start from. Conditional writes use exactly this list,
    /// so the store enforces the same machine as [`Transition::apply`].
    pub fn allowed_from(self) -> &'static [Status] {
        match self {
            Transition::Claim => &[Status::Queued, Status::Running],
            Transition::Heartbeat | Transition::Succeed => &[Status::Running],
            Transition::Fail | Transition::Cancel => &[Status::Queued, Status::Running],
        }
    }

    pub fn target(self) -> Status {
        match self {
            Transition::Claim | Transition::Heartbeat => Status::Running,
            Transition::Succeed => Status::Succeeded,
            Transition::Fail => Status::Failed,
            Transition::Cancel => Status::Cancelled,
        }
    }

    /// The status after this transition from `from`.
    pub fn apply(self, from: Status) -> Result<Status, TransitionError> {
        if self.allowed_from().contains(&from) { Ok(self.target()) } else { Err(TransitionError { from, transition: self }) }
    }
}

/// How far a running job is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// What the worker is doing: `queued`, `reading`, `writing`, `done`, ...
    pub phase: String,
    /// Rows (or items) done so far.
    pub done: u64,
    /// Rows expected in all, when the source can tell.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total: Option<u64>,
    /// Items by state, for kinds that count them (a batch: pending, running, succeeded, ...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub counts: BTreeMap<String, u64>,
}

/// Another file a job wrote beside its main result (a batch's failed items).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputFile {
    pub key: String,
    pub size: u64,
    pub rows: u64,
}

/// Where a finished job's output lies.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobResult {
    pub bucket: String,
    pub key: String,
    pub size: u64,
    pub rows: u64,
    /// Worksheets of an xlsx (1 for other formats).
    pub sheets: u32,
    /// Text cells of an xlsx cut to Excel's limit of 32,767 characters (0 for other formats, and
    /// for results stored before this was counted).
    #[serde(default)]
    pub truncated_cells: u64,
    /// Other files by name (`failed`), each downloadable like the main one.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub files: BTreeMap<String, OutputFile>,
    /// Final counts by state, for kinds that count items.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub counts: BTreeMap<String, u64>,
}

/// A job's status record.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRecord {
    pub id: String,
    pub owner: String,
    /// The kind's name (`export`, `batch`, ...): which implementation runs it.
    pub kind: String,
    /// The params as the kind admitted them, in canonical form ([`canonical_json`]).
    pub params: serde_json::Value,
    /// [`params_hash`] of `params`: which lock the job holds.
    pub params_hash: String,
    /// The stored status; read it through [`JobRecord::status_at`].
    pub status: Status,
    /// Which run of the job is current: 0 for the first, +1 for each continuation.
    pub attempt: u32,
    pub progress: Progress,
    pub lease_expires_at: i64,
    pub result: Option<JobResult>,
    /// Why it failed, as the caller may see it.
    pub error: Option<PublicError>,
    pub created_at: i64,
    pub updated_at: i64,
    /// When the record and its file stop being served (also the store's TTL attribute, in seconds).
    pub retain_until: i64,
}

impl JobRecord {
    /// The status as of `now`: an active job whose lease passed is `Lost`.
    pub fn status_at(&self, now: i64) -> Status {
        if self.status.is_active() && self.lease_expires_at < now { Status::Lost } else { self.status }
    }

    /// The error the caller sees as of `now`: the stored one of a failed job, or for a lost one the
    /// lease that ran out (nothing else is known, and nothing else is said).
    pub fn error_at(&self, now: i64) -> Option<PublicError> {
        match self.status_at(now) {
            Status::Failed => Some(self.error.clone().unwrap_or_else(|| PublicError::code(ErrorCode::Internal))),
            Status::Lost => {
                let when = rfc3339(self.lease_expires_at).unwrap_or_else(|| "an unknown time".into());
                let message = format!("the worker stopped reporting progress; its lease ended at {when}");
                Some(PublicError::new(ErrorCode::WorkerUnavailable, message))
            }
            _ => None,
        }
    }

    /// Past its retention: treated as gone even if the store has not deleted it yet (TTL deletes late).
    pub fn is_expired(&self, now: i64) -> bool {
        self.retain_until < now
    }
}

/// `ms` (milliseconds since the Unix epoch) as an RFC 3339 UTC time, or `None` when it is out of range.
pub fn rfc3339(ms: i64) -> Option<String> {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
}

/// Whether `s` can name a job kind: 1 to 32 of `a-z`, `0-9`, `_`, starting with a letter.
pub fn is_kind_name(s: &str) -> bool {
    (1..=32).contains(&s.len())
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// One spelling of a JSON value: object keys sorted at every depth, no whitespace. Two params that
/// mean the same request have the same canonical form once the kind has filled in its defaults.
pub fn canonical_json(v: &serde_json::Value) -> String {
    // Keys are sorted explicitly: serde_json's map keeps insertion order whenever any crate in the
    // build enables its `preserve_order` feature.
    fn sorted(v: &serde_json::Value) -> serde_json::Value {
        match v {
            serde_json::Value::Object(m) => {
                let mut entries: Vec<(&String, &serde_json::Value)> = m.iter().collect();
                entries.sort_by(|a, b| a.0.cmp(b.0));
                serde_json::Value::Object(entries.into_iter().map(|(k, v)| (k.clone(), sorted(v))).collect())
            }
            serde_json::Value::Array(a) => serde_json::Value::Array(a.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    sorted(v).to_string()
}

/// Hex SHA-256 of `canonical` (a [`canonical_json`]): which lock a request takes.
pub fn params_hash(canonical: &str) -> String {
    hex(&Sha256::digest(canonical.as_bytes()))
}

/// The output file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    Csv,
    Xlsx,
    Jsonl,
}

impl Format {
    pub fn extension(self) -> &'static str {
        match self {
            Format::Csv => "csv",
            Format::Xlsx => "xlsx",
            Format::Jsonl => "jsonl",
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Csv => "text/csv",
            Format::Xlsx => "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
            Format::Jsonl => "application/x-ndjson",
        }
    }
}

/// The file format of an S3 dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DatasetFormat {
    Csv,
    Parquet,
}

/// Where an export reads its rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Source {
    /// Every item of one partition key value, in sort-key order.
    DynamodbQuery { table: String, key: String, value: serde_json::Value },
    /// The whole table, read as `segments` parallel scan segments, written segment by segment.
    DynamodbScan {
        table: String,
        #[serde(default = "one")]
        segments: u32,
    },
    /// Every CSV or Parquet object under a prefix, in key order.
    S3 { bucket: String, prefix: String, format: DatasetFormat },
}

fn one() -> u32 {
    1
}

/// A comparison rows must pass to be exported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FilterOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    pub column: String,
    pub op: FilterOp,
    /// A string, number or boolean.
    pub value: serde_json::Value,
}

/// What an export job does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportParams {
    pub source: Source,
    pub format: Format,
    /// Output columns, in order. Required for DynamoDB sources (items have no fixed schema);
    /// for an S3 dataset, all of its columns when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub columns: Option<Vec<String>>,
    /// Only for an S3 dataset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<Filter>,
    /// CSV only: text cells a spreadsheet would run as a formula get a leading `'`
    /// ([`crate::cells::formula_escaped`]). `false` is for machine consumers. Left out of the
    /// canonical form when `true`, so leaving it out is the same request as spelling it.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub formula_escape: bool,
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

impl ExportParams {
    /// One spelling of these params: keys sorted, defaults filled in, no whitespace. Two requests that
    /// mean the same export have the same canonical form.
    pub fn canonical(&self) -> String {
        canonical_json(&self.to_value())
    }

    /// Hex SHA-256 of [`ExportParams::canonical`].
    pub fn hash(&self) -> String {
        params_hash(&self.canonical())
    }

    /// These params as the JSON value a job record stores.
    pub fn to_value(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }

    /// Parses and validates the `params` of an export submit; errors name the field.
    pub fn parse(params: serde_json::Value) -> Result<ExportParams, SubmitError> {
        let params: ExportParams = serde_json::from_value(params).map_err(|e| SubmitError::new("params", e.to_string()))?;
        validate(&params)?;
        Ok(params)
    }

    /// The params of a stored export job.
    pub fn from_value(v: &serde_json::Value) -> Result<ExportParams, SubmitError> {
        ExportParams::deserialize(v).map_err(|e| SubmitError::new("params", e.to_string()))
    }

    /// Parses params stored by [`ExportParams::canonical`].
    pub fn from_canonical(s: &str) -> Result<ExportParams, SubmitError> {
        serde_json::from_str(s).map_err(|e| SubmitError::new("params", e.to_string()))
    }
}

/// A submit request that cannot be accepted. Names the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SubmitError {
    pub field: String,
    pub message: String,
}

impl SubmitError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> SubmitError {
        SubmitError { field: field.into(), message: message.into() }
    }

    /// The caller's view: `bad_request` naming the field. The message is built from what the
    /// caller sent, so it is theirs to see.
    pub fn public(&self) -> PublicError {
        PublicError::new(ErrorCode::BadRequest, self.message.clone()).with_field(self.field.clone())
    }
}

/// The envelope of a `POST /jobs` body: `{"kind": ..., "params": {...}}`, or
/// `{"retry_of": job_id}` (with an optional `kind`) to run again what a batch job left undone.
/// The kind checks its own params.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    pub kind: Option<String>,
    pub params: Option<serde_json::Value>,
    pub retry_of: Option<String>,
}

/// Parses the envelope of a `POST /jobs` body; errors name the field.
pub fn parse_envelope(body: &[u8]) -> Result<Envelope, SubmitError> {
    if body.len() > MAX_SUBMIT_BYTES {
        return Err(SubmitError::new("body", format!("{} bytes is over the limit of {MAX_SUBMIT_BYTES}", body.len())));
    }
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| SubmitError::new("body", format!("not valid JSON: {e}")))?;
    let serde_json::Value::Object(mut map) = value else {
        return Err(SubmitError::new("body", "must be a JSON object"));
    };
    if let Some(extra) = map.keys().find(|k| !matches!(k.as_str(), "kind" | "params" | "retry_of")) {
        return Err(SubmitError::new(extra.as_str(), "unknown field; expected `kind` and `params` (or `retry_of`)"));
    }
    let kind = match map.remove("kind") {
        Some(serde_json::Value::String(k)) if is_kind_name(&k) => Some(k),
        Some(serde_json::Value::String(k)) => return Err(SubmitError::new("kind", format!("unknown job kind {k:?}"))),
        Some(_) => return Err(SubmitError::new("kind", "must be a string")),
        None => None,
    };
    let retry_of = match map.remove("retry_of") {
        Some(serde_json::Value::String(id)) if is_job_id(&id) => Some(id),
        Some(_) => return Err(SubmitError::new("retry_of", "must be the id of one of your jobs")),
        None => None,
    };
    let params = map.remove("params");
    match (&kind, &params, &retry_of) {
        (_, Some(_), Some(_)) => {
            Err(SubmitError::new("params", "cannot be given with `retry_of`: the retry runs with the first job's params"))
        }
        (None, _, None) => Err(SubmitError::new("kind", "is missing")),
        (Some(_), None, None) => Err(SubmitError::new("params", "is missing")),
        _ => Ok(Envelope { kind, params, retry_of }),
    }
}

/// A validated export submit.
#[derive(Debug, Clone, PartialEq)]
pub struct SubmitRequest {
    pub kind: String,
    pub params: ExportParams,
}

/// Parses and validates an export's `POST /jobs` body: `{"kind": "export", "params": {...}}`.
pub fn parse_submit(body: &[u8]) -> Result<SubmitRequest, SubmitError> {
    let envelope = parse_envelope(body)?;
    let kind = envelope.kind.unwrap_or_default();
    if kind != "export" {
        return Err(SubmitError::new("kind", format!("unknown job kind {kind:?}; known: export")));
    }
    let params = envelope.params.ok_or_else(|| SubmitError::new("params", "is missing"))?;
    Ok(SubmitRequest { kind, params: ExportParams::parse(params)? })
}

fn validate(p: &ExportParams) -> Result<(), SubmitError> {
    let err = |field: &str, message: &str| Err(SubmitError::new(field, message));
    match &p.source {
        Source::DynamodbQuery { table, key, value } => {
            check_table(table)?;
            if key.is_empty() {
                return err("params.source.key", "must name the partition key attribute");
            }
            if !(value.is_string() || value.is_number()) {
                return err("params.source.value", "must be a string or a number");
            }
        }
        Source::DynamodbScan { table, segments } => {
            check_table(table)?;
            if !(1..=MAX_SEGMENTS).contains(segments) {
                return Err(SubmitError::new("params.source.segments", format!("must be 1 to {MAX_SEGMENTS}, got {segments}")));
            }
        }
        Source::S3 { bucket, prefix, .. } => {
            if !crate::sources::is_bucket_name(bucket) {
                return err("params.source.bucket", "is not a valid bucket name");
            }
            if let Err(e) = crate::sources::normalize_prefix(prefix) {
                return Err(SubmitError::new("params.source.prefix", e.to_string()));
            }
        }
    }
    let is_dynamo = !matches!(p.source, Source::S3 { .. });
    match &p.columns {
        None if is_dynamo => return err("params.columns", "is required for a DynamoDB source"),
        Some(cols) if cols.is_empty() => return err("params.columns", "must name at least one column"),
        Some(cols) if cols.len() > 1000 => return err("params.columns", "names more than 1000 columns"),
        Some(cols) => {
            if cols.iter().any(String::is_empty) {
                return err("params.columns", "holds an empty column name");
            }
            let mut sorted: Vec<&String> = cols.iter().collect();
            sorted.sort();
            if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
                return Err(SubmitError::new("params.columns", format!("names {:?} twice", w[0])));
            }
        }
        None => {}
    }
    if let Some(f) = &p.filter {
        if is_dynamo {
            return err("params.filter", "is only supported for an S3 dataset");
        }
        if f.column.is_empty() {
            return err("params.filter.column", "is empty");
        }
        if !(f.value.is_string() || f.value.is_number() || f.value.is_boolean()) {
            return err("params.filter.value", "must be a string, number or boolean");
        }
    }
    Ok(())
}

fn check_table(table: &str) -> Result<(), SubmitError> {
    if crate::sources::is_table_name(table) {
        Ok(())
    } else {
        Err(SubmitError::new("params.source.table", format!("{table:?} is not a valid table name")))
    }
}

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

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether one of an owner's running-job slots is free: the job it names has ended (or reads
/// `lost`), or, when that job is not written yet, the slot's hold (the submit that took it) passed.
/// Derived from the job, so a slot frees itself whatever way its job ended, crashes included.
pub fn slot_is_free(holder: Option<&JobRecord>, held_until: i64, now: i64) -> bool {
    match holder {
        Some(job) => !job.status_at(now).is_active(),
        None => held_until < now,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check_submit(body: &str, expect: Result<&str, (&str, &str)>) {
        let got = parse_submit(body.as_bytes());
        match (got, expect) {
            (Ok(req), Ok(canonical)) => assert_eq!(req.params.canonical(), canonical, "{body}"),
            (Err(e), Err((field, needle))) => {
                assert_eq!(e.field, field, "{body}: {e}");
                assert!(e.message.contains(needle), "{body}: {e:?} does not say {needle:?}");
            }
            (got, expect) => panic!("{body}: got {got:?}, expected {expect:?}"),
        }
    }

    const SCAN: &str = r#"{"format":"xlsx","source":{"segments":4,"table":"orders","type":"dynamodb_scan"},"columns":["id"]}"#;

    #[test]
    fn submit_requests() {
        check_submit(
            &format!(r#"{{"kind":"export","params":{SCAN}}}"#),
            Ok(r#"{"columns":["id"],"format":"xlsx","source":{"segments":4,"table":"orders","type":"dynamodb_scan"}}"#),
        );
        // Defaults are filled in, so leaving one out is the same request as spelling it.
        check_submit(
            r#"{"params":{"source":{"type":"dynamodb_scan","table":"orders"},"columns":["id"],"format":"csv"},"kind":"export"}"#,
            Ok(r#"{"columns":["id"],"format":"csv","source":{"segments":1,"table":"orders","type":"dynamodb_scan"}}"#),
        );
        check_submit(
            r#"{"kind":"export","params":{"source":{"type":"s3","bucket":"data-lake","prefix":"orders/","format":"parquet"},"format":"jsonl","filter":{"column":"status","op":"eq","value":"paid"}}}"#,
            Ok(
                r#"{"filter":{"column":"status","op":"eq","value":"paid"},"format":"jsonl","source":{"bucket":"data-lake","format":"parquet","prefix":"orders/","type":"s3"}}"#,
            ),
        );
        check_submit("{", Err(("body", "not valid JSON")));
        check_submit("[1]", Err(("body", "JSON object")));
        check_submit(r#"{"kind":"report","params":{}}"#, Err(("kind", "unknown job kind \"report\"")));
        check_submit(r#"{"kind":7,"params":{}}"#, Err(("kind", "must be a string")));
        check_submit(r#"{"params":{}}"#, Err(("kind", "is missing")));
        check_submit(r#"{"kind":"export"}"#, Err(("params", "is missing")));
        check_submit(r#"{"kind":"export","params":{},"x":1}"#, Err(("x", "unknown field")));
        check_submit(
            r#"{"kind":"export","params":{"source":{"type":"dynamodb_scan","table":"orders"},"format":"pdf","columns":["a"]}}"#,
            Err(("params", "pdf")),
        );
        check_submit(
            r#"{"kind":"export","params":{"source":{"type":"dynamodb_scan","table":"orders","segments":0},"format":"csv","columns":["a"]}}"#,
            Err(("params.source.segments", "1 to 64")),
        );
        check_submit(
            r#"{"kind":"export","params":{"source":{"type":"dynamodb_scan","table":"o"},"format":"csv","columns":["a"]}}"#,
            Err(("params.source.table", "not a valid table name")),
        );
        check_submit(
            r#"{"kind":"export","params":{"source":{"type":"dynamodb_scan","table":"orders"},"format":"csv"}}"#,
            Err(("params.columns", "required")),
        );
        check_submit(
            r#"{"kind":"export","params":{"source":{"type":"dynamodb_scan","table":"orders"},"format":"csv","columns":["a","a"]}}"#,
            Err(("params.columns", "twice")),
        );
        check_submit(
            r#"{"kind":"export","params":{"source":{"type":"dynamodb_query","table":"orders","key":"seller","value":[1]},"format":"csv","columns":["a"]}}"#,
            Err(("params.source.value", "string or a number")),
        );
        check_submit(
            r#"{"kind":"export","params":{"source":{"type":"dynamodb_scan","table":"orders","color":1},"format":"csv","columns":["a"]}}"#,
            Err(("params", "color")),
        );
        check_submit(
            r#"{"kind":"export","params":{"source":{"type":"s3","bucket":"B","prefix":"","format":"csv"},"format":"csv"}}"#,
            Err(("params.source.bucket", "not a valid bucket")),
        );
        check_submit(
            r#"{"kind":"export","params":{"source":{"type":"s3","bucket":"lake","prefix":"datasets/../../x","format":"csv"},"format":"csv"}}"#,
            Err(("params.source.prefix", "climbs above")),
        );
        check_submit(
            r#"{"kind":"export","params":{"source":{"type":"dynamodb_scan","table":"orders"},"format":"csv","columns":["a"],"filter":{"column":"a","op":"eq","value":1}}}"#,
            Err(("params.filter", "only supported")),
        );
        let big = format!(r#"{{"kind":"export","params":{{"x":"{}"}}}}"#, "a".repeat(MAX_SUBMIT_BYTES));
        check_submit(&big, Err(("body", "over the limit")));
    }

    #[test]
    fn envelopes_leave_params_to_their_kind_and_retry_of_stands_alone() {
        let id = "00000000-0000-4000-8000-000000000000";
        let e = parse_envelope(br#"{"kind":"batch","params":{"target":"crm","items":[1]}}"#).unwrap();
        assert_eq!((e.kind.as_deref(), e.retry_of), (Some("batch"), None));
        assert_eq!(e.params, Some(serde_json::json!({"target": "crm", "items": [1]})));
        let e = parse_envelope(format!(r#"{{"retry_of":"{id}"}}"#).as_bytes()).unwrap();
        assert_eq!((e.kind, e.params, e.retry_of.as_deref()), (None, None, Some(id)));
        let refused = |body: String, field: &str, needle: &str| {
            let e = parse_envelope(body.as_bytes()).unwrap_err();
            assert_eq!(e.field, field, "{body}: {e}");
            assert!(e.message.contains(needle), "{body}: {e}");
        };
        refused(format!(r#"{{"retry_of":"{id}","params":{{}}}}"#), "params", "cannot be given with `retry_of`");
        refused(r#"{"retry_of":"../x"}"#.into(), "retry_of", "id of one of your jobs");
        refused(r#"{"retry_of":7}"#.into(), "retry_of", "id of one of your jobs");
        refused(r#"{"kind":"Batch!","params":{}}"#.into(), "kind", "unknown job kind");
        refused(r#"{"kind":"batch"}"#.into(), "params", "is missing");
        refused(r#"{}"#.into(), "kind", "is missing");
        assert!(
            is_kind_name("batch") && is_kind_name("my_kind2") && !is_kind_name("2x") && !is_kind_name("") && !is_kind_name(&"a".repeat(33))
        );
        // Canonical JSON sorts keys at every depth, so the same request hashes the same however spelled.
        let a = serde_json::json!({"b": 1, "a": {"d": [1, {"z": 0, "y": 1}], "c": null}});
        assert_eq!(canonical_json(&a), r#"{"a":{"c":null,"d":[1,{"y":1,"z":0}]},"b":1}"#);
        assert_eq!(params_hash(&canonical_json(&a)).len(), 64);
    }

    #[test]
    fn equal_requests_hash_equal() {
        let a = parse_submit(
            br#"{"kind":"export","params":{"format":"csv","columns":["a"],"source":{"table":"orders","type":"dynamodb_scan"}}}"#,
        )
        .unwrap();
        let b = parse_submit(br#"{"kind":"export","params":{"source":{"type":"dynamodb_scan","table":"orders","segments":1},"columns":["a"],"format":"csv"}}"#).unwrap();
        let c = parse_submit(br#"{"kind":"export","params":{"source":{"type":"dynamodb_scan","table":"orders","segments":2},"columns":["a"],"format":"csv"}}"#).unwrap();
        assert_eq!(a.params.hash(), b.params.hash());
        assert_ne!(a.params.hash(), c.params.hash());
        assert_eq!(a.params.hash().len(), 64);
        assert_eq!(ExportParams::from_canonical(&a.params.canonical()).unwrap(), a.params);
    }

    #[track_caller]
    fn check_transition(t: Transition, from: Status, expect: Option<Status>) {
        assert_eq!(t.apply(from).ok(), expect, "{t:?} from {from}");
    }

    #[test]
    fn state_machine() {
        use Status::*;
        use Transition::*;
        check_transition(Claim, Queued, Some(Running));
        check_transition(Claim, Running, Some(Running));
        check_transition(Heartbeat, Running, Some(Running));
        check_transition(Heartbeat, Queued, None);
        check_transition(Succeed, Running, Some(Succeeded));
        check_transition(Succeed, Queued, None);
        check_transition(Fail, Queued, Some(Failed));
        check_transition(Fail, Running, Some(Failed));
        check_transition(Cancel, Queued, Some(Cancelled));
        check_transition(Cancel, Running, Some(Cancelled));
        // Nothing leaves a terminal status.
        for from in [Succeeded, Failed, Cancelled] {
            for t in [Claim, Heartbeat, Succeed, Fail, Cancel] {
                check_transition(t, from, None);
            }
        }
        assert_eq!(Status::STORED.map(|s| Status::parse(s.as_str())), Status::STORED.map(Some));
    }

    fn record(status: Status, lease: i64) -> JobRecord {
        JobRecord {
            id: "00000000-0000-4000-8000-000000000000".into(),
            owner: "u".into(),
            kind: "export".into(),
            params: parse_submit(format!(r#"{{"kind":"export","params":{SCAN}}}"#).as_bytes()).unwrap().params.to_value(),
            params_hash: String::new(),
            status,
            attempt: 0,
            progress: Progress::default(),
            lease_expires_at: lease,
            result: None,
            error: None,
            created_at: 0,
            updated_at: 0,
            retain_until: 5_000,
        }
    }

    #[test]
    fn a_slot_is_free_once_its_job_ends_or_reads_lost() {
        let at = |status, lease| record(status, lease);
        assert!(!slot_is_free(Some(&at(Status::Queued, 2_000)), 0, 1_000));
        assert!(!slot_is_free(Some(&at(Status::Running, 2_000)), 0, 1_000));
        assert!(slot_is_free(Some(&at(Status::Running, 500)), 9_000, 1_000), "lost frees it");
        for done in [Status::Succeeded, Status::Failed, Status::Cancelled] {
            assert!(slot_is_free(Some(&at(done, 2_000)), 9_000, 1_000), "{done:?}");
        }
        // A submit between taking the slot and writing its job holds it until its hold passes.
        assert!(!slot_is_free(None, 1_000, 1_000));
        assert!(slot_is_free(None, 999, 1_000));
    }

    #[test]
    fn lost_is_derived_from_an_expired_lease() {
        let check =
            |status, lease, now, expect| assert_eq!(record(status, lease).status_at(now), expect, "{status} lease {lease} at {now}");
        check(Status::Running, 1_000, 999, Status::Running);
        check(Status::Running, 1_000, 1_000, Status::Running);
        check(Status::Running, 1_000, 1_001, Status::Lost);
        check(Status::Queued, 1_000, 1_001, Status::Lost);
        check(Status::Succeeded, 1_000, 9_999, Status::Succeeded);
        check(Status::Cancelled, 1_000, 9_999, Status::Cancelled);
        let lost = record(Status::Running, 1_763_805_600_000).error_at(1_763_805_600_001).unwrap();
        assert_eq!(lost.code, ErrorCode::WorkerUnavailable);
        assert_eq!(lost.message, "the worker stopped reporting progress; its lease ended at 2025-11-22T10:00:00Z");
        assert!(!crate::public::leaks_internals(&lost.message));
        assert_eq!(record(Status::Running, 1_000).error_at(999), None);
        let mut failed = record(Status::Failed, 0);
        assert_eq!(failed.error_at(1).map(|e| e.code), Some(ErrorCode::Internal), "a failure without a stored error");
        failed.error = Some(PublicError::code(ErrorCode::TooLarge));
        assert_eq!(failed.error_at(1), Some(PublicError::code(ErrorCode::TooLarge)));
        assert!(!record(Status::Succeeded, 0).is_expired(5_000));
        assert!(record(Status::Succeeded, 0).is_expired(5_001));
    }

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
