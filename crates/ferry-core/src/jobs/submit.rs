//! What a `POST /jobs` body may ask for: the envelope ([`parse_envelope`]: a kind and its params,
//! or `retry_of`), an export's [`ExportParams`] validated ([`parse_submit`]), and the canonical JSON
//! of params and its hash ([`canonical_json`], [`params_hash`]) that make equal requests take the
//! same lock.

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

#[cfg(test)]
pub(super) mod tests {
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

    pub(in crate::jobs) const SCAN: &str =
        r#"{"format":"xlsx","source":{"segments":4,"table":"orders","type":"dynamodb_scan"},"columns":["id"]}"#;

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
}
