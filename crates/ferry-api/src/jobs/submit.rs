//! The body of `POST /jobs`: the [`Envelope`] ([`parse_envelope`]) and an export's body validated
//! whole ([`parse_submit`]).

use ferry_core::jobs::{self, ExportParams, SubmitError};
use serde::Serialize;

/// The body of `POST /jobs`: `{"kind": ..., "params": {...}}`, or `{"retry_of": job_id}` (with an
/// optional `kind`) to run again what a batch job left undone. The kind checks its own params.
///
/// Serialises to what a client sends (members left out when `None`); read one with
/// [`parse_envelope`], which refuses what this type could not say.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Envelope {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub params: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_of: Option<String>,
}

impl Envelope {
    /// A submit of `kind` with `params`.
    pub fn new(kind: impl Into<String>, params: serde_json::Value) -> Envelope {
        Envelope { kind: Some(kind.into()), params: Some(params), retry_of: None }
    }

    /// A retry of the caller's job `id`.
    pub fn retry(id: impl Into<String>) -> Envelope {
        Envelope { retry_of: Some(id.into()), ..Envelope::default() }
    }
}

/// Parses the envelope of a `POST /jobs` body; errors name the field.
pub fn parse_envelope(body: &[u8]) -> Result<Envelope, SubmitError> {
    jobs::check_body_size(body.len())?;
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| SubmitError::new("body", format!("not valid JSON: {e}")))?;
    let serde_json::Value::Object(mut map) = value else {
        return Err(SubmitError::new("body", "must be a JSON object"));
    };
    if let Some(extra) = map.keys().find(|k| !matches!(k.as_str(), "kind" | "params" | "retry_of")) {
        return Err(SubmitError::new(extra.as_str(), "unknown field; expected `kind` and `params` (or `retry_of`)"));
    }
    let kind = match map.remove("kind") {
        Some(serde_json::Value::String(k)) => jobs::check_kind_name(&k).map(|()| Some(k))?,
        Some(_) => return Err(SubmitError::new("kind", "must be a string")),
        None => None,
    };
    let retry_of = match map.remove("retry_of") {
        Some(value) => {
            // A value that is not a string is no job id either: the same answer.
            let id = value.as_str().unwrap_or_default();
            jobs::check_retry_of(id)?;
            Some(id.to_owned())
        }
        None => None,
    };
    let params = map.remove("params");
    jobs::check_envelope(kind.is_some(), params.is_some(), retry_of.is_some())?;
    Ok(Envelope { kind, params, retry_of })
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

#[cfg(test)]
mod tests {
    use ferry_core::jobs::MAX_SUBMIT_BYTES;

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

    #[test]
    fn an_envelope_serialises_to_what_a_client_sends() {
        let id = "00000000-0000-4000-8000-000000000000";
        assert_eq!(serde_json::to_string(&Envelope::retry(id)).unwrap(), format!(r#"{{"retry_of":"{id}"}}"#));
        let e = Envelope::new("batch", serde_json::json!({"target": "crm"}));
        assert_eq!(parse_envelope(&serde_json::to_vec(&e).unwrap()).unwrap(), e);
    }
}
