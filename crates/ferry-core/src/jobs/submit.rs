//! What a `POST /jobs` body may ask for: the decisions its envelope passes through
//! ([`check_body_size`], [`check_kind_name`], [`check_retry_of`], [`check_envelope`]), an
//! export's [`ExportParams`] validated ([`ExportParams::parse`]), and the canonical JSON of params
//! and its hash ([`canonical_json`], [`params_hash`]) that make equal requests take the same lock.
//! Reading the body's JSON is the API's (`ferry_api::jobs::parse_envelope`).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::keys::{hex, is_job_id};
use super::{MAX_SEGMENTS, MAX_SUBMIT_BYTES};
use crate::public::{ErrorCode, PublicError};

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

/// Refuses a `POST /jobs` body over [`MAX_SUBMIT_BYTES`] before it is read.
pub fn check_body_size(len: usize) -> Result<(), SubmitError> {
    if len > MAX_SUBMIT_BYTES {
        return Err(SubmitError::new("body", format!("{len} bytes is over the limit of {MAX_SUBMIT_BYTES}")));
    }
    Ok(())
}

/// Refuses a `kind` that cannot name a job kind ([`is_kind_name`]).
pub fn check_kind_name(kind: &str) -> Result<(), SubmitError> {
    if is_kind_name(kind) { Ok(()) } else { Err(SubmitError::new("kind", format!("unknown job kind {kind:?}"))) }
}

/// Refuses a `retry_of` that cannot be a job id ([`is_job_id`]); whose job it is, is the API's to
/// look up.
pub fn check_retry_of(id: &str) -> Result<(), SubmitError> {
    if is_job_id(id) { Ok(()) } else { Err(SubmitError::new("retry_of", "must be the id of one of your jobs")) }
}

/// Which members of a submit go together: a kind with its params, or `retry_of` (with an
/// optional kind) and no params, since a retry runs with the first job's params.
pub fn check_envelope(has_kind: bool, has_params: bool, has_retry_of: bool) -> Result<(), SubmitError> {
    match (has_kind, has_params, has_retry_of) {
        (_, true, true) => Err(SubmitError::new("params", "cannot be given with `retry_of`: the retry runs with the first job's params")),
        (false, _, false) => Err(SubmitError::new("kind", "is missing")),
        (true, false, false) => Err(SubmitError::new("params", "is missing")),
        _ => Ok(()),
    }
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

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(in crate::jobs) const SCAN: &str =
        r#"{"format":"xlsx","source":{"segments":4,"table":"orders","type":"dynamodb_scan"},"columns":["id"]}"#;

    #[test]
    fn envelope_decisions_name_the_field() {
        let id = "00000000-0000-4000-8000-000000000000";
        let field = |r: Result<(), SubmitError>| r.err().map(|e| e.field);
        assert_eq!(field(check_body_size(MAX_SUBMIT_BYTES)), None);
        assert_eq!(field(check_body_size(MAX_SUBMIT_BYTES + 1)).as_deref(), Some("body"));
        assert_eq!(field(check_kind_name("my_kind2")), None);
        assert_eq!(field(check_kind_name("Batch!")).as_deref(), Some("kind"));
        assert_eq!(field(check_retry_of(id)), None);
        for bad in ["", "../x", &"g".repeat(36)] {
            assert_eq!(field(check_retry_of(bad)).as_deref(), Some("retry_of"), "{bad:?}");
        }
        // (kind, params, retry_of) given.
        let cases = [
            ((true, true, false), None),
            ((false, false, true), None),
            ((true, false, true), None),
            ((true, true, true), Some("params")),
            ((false, true, true), Some("params")),
            ((false, true, false), Some("kind")),
            ((false, false, false), Some("kind")),
            ((true, false, false), Some("params")),
        ];
        for ((kind, params, retry_of), expect) in cases {
            assert_eq!(field(check_envelope(kind, params, retry_of)).as_deref(), expect, "{kind} {params} {retry_of}");
        }
    }

    #[test]
    fn kind_names_and_canonical_json() {
        assert!(
            is_kind_name("batch") && is_kind_name("my_kind2") && !is_kind_name("2x") && !is_kind_name("") && !is_kind_name(&"a".repeat(33))
        );
        // Canonical JSON sorts keys at every depth, so the same request hashes the same however spelled.
        let a = serde_json::json!({"b": 1, "a": {"d": [1, {"z": 0, "y": 1}], "c": null}});
        assert_eq!(canonical_json(&a), r#"{"a":{"c":null,"d":[1,{"y":1,"z":0}]},"b":1}"#);
        assert_eq!(params_hash(&canonical_json(&a)).len(), 64);
    }
}
