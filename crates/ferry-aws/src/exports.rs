//! What an export needs from AWS: pages of a DynamoDB table as rows, a multipart upload that can be
//! handed from one Lambda run to the next, and a presigned download link.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_dynamodb::types::{AttributeValue, Select};
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use serde::{Deserialize, Serialize};

use crate::jobs::DynamoClient;
use crate::s3::{S3Error, Store};

/// S3's smallest part, except the last.
pub const MIN_PART_BYTES: usize = 5 * 1024 * 1024;
/// The longest a download link may live.
pub const MAX_LINK_LIFETIME: Duration = Duration::from_secs(15 * 60);

/// A multipart upload in progress, as a checkpoint stores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MultipartState {
    pub key: String,
    pub upload_id: String,
    /// (part number, ETag) of every part uploaded so far.
    pub parts: Vec<(i32, String)>,
    pub bytes: u64,
}

/// A multipart upload. Parts go up as they fill; the object appears only on [`Multipart::complete`].
#[derive(Debug)]
pub struct Multipart {
    store: Store,
    state: MultipartState,
}

fn s3_error(store: &Store, key: &str, op: &'static str, e: impl std::error::Error + 'static) -> S3Error {
    S3Error {
        bucket: store.bucket().to_owned(),
        key: key.to_owned(),
        op,
        code: None,
        message: aws_smithy_types::error::display::DisplayErrorContext(&e).to_string(),
    }
}

impl Multipart {
    pub async fn begin(store: &Store, key: &str, content_type: &str) -> Result<Multipart, S3Error> {
        let out = store
            .client()
            .create_multipart_upload()
            .bucket(store.bucket())
            .key(key)
            .content_type(content_type)
            .send()
            .await
            .map_err(|e| s3_error(store, key, "CreateMultipartUpload", e))?;
        let upload_id = out.upload_id().unwrap_or_default().to_owned();
        Ok(Multipart { store: store.clone(), state: MultipartState { key: key.to_owned(), upload_id, parts: Vec::new(), bytes: 0 } })
    }

    /// Continues an upload another run began.
    pub fn resume(store: &Store, state: MultipartState) -> Multipart {
        Multipart { store: store.clone(), state }
    }

    pub fn state(&self) -> &MultipartState {
        &self.state
    }

    /// Uploads the next part. Every part but the last must hold at least [`MIN_PART_BYTES`].
    pub async fn upload_part(&mut self, body: Vec<u8>) -> Result<(), S3Error> {
        let number = self.state.parts.len() as i32 + 1;
        let len = body.len() as u64;
        let out = self
            .store
            .client()
            .upload_part()
            .bucket(self.store.bucket())
            .key(&self.state.key)
            .upload_id(&self.state.upload_id)
            .part_number(number)
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| s3_error(&self.store, &self.state.key, "UploadPart", e))?;
        self.state.parts.push((number, out.e_tag().unwrap_or_default().to_owned()));
        self.state.bytes += len;
        Ok(())
    }

    /// Completes the upload with `last` as its final part; returns the object's size.
    pub async fn complete(mut self, last: Vec<u8>) -> Result<u64, S3Error> {
        if !last.is_empty() || self.state.parts.is_empty() {
            self.upload_part(last).await?;
        }
        let parts: Vec<CompletedPart> =
            self.state.parts.iter().map(|(n, etag)| CompletedPart::builder().part_number(*n).e_tag(etag).build()).collect();
        self.store
            .client()
            .complete_multipart_upload()
            .bucket(self.store.bucket())
            .key(&self.state.key)
            .upload_id(&self.state.upload_id)
            .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
            .send()
            .await
            .map_err(|e| s3_error(&self.store, &self.state.key, "CompleteMultipartUpload", e))?;
        Ok(self.state.bytes)
    }

    /// Abandons the upload so its parts are not kept (and billed).
    pub async fn abort(self) -> Result<(), S3Error> {
        self.store
            .client()
            .abort_multipart_upload()
            .bucket(self.store.bucket())
            .key(&self.state.key)
            .upload_id(&self.state.upload_id)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| s3_error(&self.store, &self.state.key, "AbortMultipartUpload", e))
    }
}

/// A GET link for `key` that expires after `lifetime` (at most [`MAX_LINK_LIFETIME`]) and downloads
/// as `filename`.
pub async fn presign_get(store: &Store, key: &str, filename: &str, lifetime: Duration) -> Result<String, S3Error> {
    let config = PresigningConfig::expires_in(lifetime.min(MAX_LINK_LIFETIME)).map_err(|e| s3_error(store, key, "presign", e))?;
    let req = store
        .client()
        .get_object()
        .bucket(store.bucket())
        .key(key)
        .response_content_disposition(format!("attachment; filename=\"{filename}\""))
        .presigned(config)
        .await
        .map_err(|e| s3_error(store, key, "presign GetObject", e))?;
    Ok(req.uri().to_owned())
}

/// Reading an export's source failed. Names the table and the operation.
#[derive(Debug, thiserror::Error)]
#[error("dynamodb table {table}: {op} failed: {message}")]
pub struct SourceError {
    pub table: String,
    pub op: &'static str,
    pub kind: SourceErrorKind,
    pub message: String,
}

/// What a failed source read means for the job's owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceErrorKind {
    /// The table does not exist or may not be read. One kind for both, so that a caller cannot use
    /// the answer to learn which tables exist.
    Unavailable,
    /// DynamoDB refused the request as invalid for this table (a key that is not its partition key).
    Invalid,
    /// Anything else: throttling, a network failure, a bad resume point.
    Other,
}

/// Which part of a table a page comes from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TableRead<'a> {
    /// Segment `segment` of a parallel scan in `total` segments.
    Scan { segment: u32, total: u32 },
    /// Every item with partition key `key` = `value` (a string or number).
    Query { key: &'a str, value: &'a serde_json::Value },
}

/// One page of rows, and where the next page starts (`None`: the partition is done).
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub rows: Vec<Vec<serde_json::Value>>,
    /// The DynamoDB start key of the next page, as JSON (opaque to callers).
    pub next: Option<String>,
}

fn source_error<E, R>(table: &str, op: &'static str, e: aws_sdk_dynamodb::error::SdkError<E, R>) -> SourceError
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let kind = match e.as_service_error().and_then(aws_sdk_dynamodb::error::ProvideErrorMetadata::code) {
        Some("ResourceNotFoundException" | "AccessDeniedException" | "TableNotFoundException") => SourceErrorKind::Unavailable,
        Some("ValidationException") => SourceErrorKind::Invalid,
        _ => SourceErrorKind::Other,
    };
    SourceError { table: table.to_owned(), op, kind, message: aws_smithy_types::error::display::DisplayErrorContext(&e).to_string() }
}

fn key_value(v: &serde_json::Value) -> AttributeValue {
    match v {
        serde_json::Value::Number(n) => AttributeValue::N(n.to_string()),
        serde_json::Value::String(s) => AttributeValue::S(s.clone()),
        other => AttributeValue::S(other.to_string()),
    }
}

/// Reads one page of `read` from `table`, keeping `columns` of each item in that order.
pub async fn read_page(
    client: &DynamoClient,
    table: &str,
    read: TableRead<'_>,
    start: Option<&str>,
    limit: u32,
    columns: &[String],
) -> Result<Page, SourceError> {
    let start = match start {
        Some(s) => Some(decode_key(s).map_err(|message| SourceError {
            table: table.to_owned(),
            op: "resume",
            kind: SourceErrorKind::Other,
            message,
        })?),
        None => None,
    };
    let names: HashMap<String, String> = columns.iter().enumerate().map(|(i, c)| (format!("#c{i}"), c.clone())).collect();
    let projection = (0..columns.len()).map(|i| format!("#c{i}")).collect::<Vec<_>>().join(", ");
    let (items, last) = match read {
        TableRead::Scan { segment, total } => {
            // One segment is the whole table: a plain scan, the same to DynamoDB (and moto cannot
            // segment a table whose key is binary).
            let segmented = total > 1;
            let out = client
                .scan()
                .table_name(table)
                .set_segment(segmented.then_some(segment as i32))
                .set_total_segments(segmented.then_some(total as i32))
                .limit(limit as i32)
                .consistent_read(true)
                .projection_expression(projection)
                .set_expression_attribute_names(Some(names))
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| source_error(table, "Scan", e))?;
            (out.items.unwrap_or_default(), out.last_evaluated_key)
        }
        TableRead::Query { key, value } => {
            let mut names = names;
            names.insert("#pk".into(), key.to_owned());
            let out = client
                .query()
                .table_name(table)
                .key_condition_expression("#pk = :v")
                .expression_attribute_values(":v", key_value(value))
                .limit(limit as i32)
                .consistent_read(true)
                .projection_expression(projection)
                .set_expression_attribute_names(Some(names))
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| source_error(table, "Query", e))?;
            (out.items.unwrap_or_default(), out.last_evaluated_key)
        }
    };
    let rows = items.iter().map(|item| columns.iter().map(|c| item.get(c).map_or(serde_json::Value::Null, to_json)).collect()).collect();
    Ok(Page { rows, next: last.filter(|k| !k.is_empty()).map(|k| encode_key(&k)) })
}

/// How many rows `read` will give, as far as DynamoDB can tell cheaply: the table's item count for a
/// scan (DynamoDB refreshes it about every six hours), a counting query for a partition.
pub async fn estimate_rows(client: &DynamoClient, table: &str, read: TableRead<'_>) -> Result<Option<u64>, SourceError> {
    match read {
        TableRead::Scan { .. } => {
            let out = client.describe_table().table_name(table).send().await.map_err(|e| source_error(table, "DescribeTable", e))?;
            Ok(out.table().and_then(|t| t.item_count()).map(|c| c.max(0) as u64))
        }
        TableRead::Query { key, value } => {
            let mut pages = client
                .query()
                .table_name(table)
                .key_condition_expression("#pk = :v")
                .expression_attribute_names("#pk", key)
                .expression_attribute_values(":v", key_value(value))
                .select(Select::Count)
                .into_paginator()
                .send();
            let mut total = 0u64;
            while let Some(page) = pages.next().await {
                total += page.map_err(|e| source_error(table, "Query (count)", e))?.count().max(0) as u64;
            }
            Ok(Some(total))
        }
    }
}

/// An attribute as a cell: strings, booleans and nulls as themselves; a number with every digit
/// DynamoDB returned (up to 38, more than `i64` or `f64` hold: [`ferry_core::cells::number_cell`]);
/// binary as base64; sets, lists and maps as their JSON text, with the same exact numbers and
/// base64, and map keys sorted so that the text is the same on every run.
pub fn to_json(v: &AttributeValue) -> serde_json::Value {
    use serde_json::Value;
    match v {
        AttributeValue::S(s) => Value::String(s.clone()),
        AttributeValue::N(n) => ferry_core::cells::number_cell(n),
        AttributeValue::B(b) => Value::String(aws_smithy_types::base64::encode(b.as_ref())),
        AttributeValue::Bool(b) => Value::Bool(*b),
        AttributeValue::Null(_) => Value::Null,
        other => {
            let mut text = Vec::new();
            write_nested(&mut text, other);
            Value::String(String::from_utf8(text).unwrap_or_default())
        }
    }
}

/// `v` as JSON, written by hand so that a number keeps its digits (serde_json's `Value` would
/// round it to an `f64`).
fn write_nested(out: &mut Vec<u8>, v: &AttributeValue) {
    fn string(out: &mut Vec<u8>, s: &str) {
        let _ = serde_json::to_writer(&mut *out, s);
    }
    fn number(out: &mut Vec<u8>, n: &str) {
        match ferry_core::cells::json_number(n) {
            Some(token) => out.extend_from_slice(token.as_bytes()),
            None => string(out, n),
        }
    }
    fn binary(out: &mut Vec<u8>, b: &aws_sdk_dynamodb::primitives::Blob) {
        string(out, &aws_smithy_types::base64::encode(b.as_ref()));
    }
    fn list<T>(out: &mut Vec<u8>, items: &[T], each: fn(&mut Vec<u8>, &T)) {
        out.push(b'[');
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            each(out, item);
        }
        out.push(b']');
    }
    match v {
        AttributeValue::S(s) => string(out, s),
        AttributeValue::N(n) => number(out, n),
        AttributeValue::B(b) => binary(out, b),
        AttributeValue::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        AttributeValue::L(l) => list(out, l, write_nested),
        AttributeValue::M(m) => {
            let mut entries: Vec<(&String, &AttributeValue)> = m.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push(b'{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                string(out, k);
                out.push(b':');
                write_nested(out, v);
            }
            out.push(b'}');
        }
        AttributeValue::Ss(s) => list(out, s, |out, s| string(out, s)),
        AttributeValue::Ns(s) => list(out, s, |out, n| number(out, n)),
        AttributeValue::Bs(s) => list(out, s, binary),
        // `Null`, and a type newer than this SDK.
        _ => out.extend_from_slice(b"null"),
    }
}

/// A start key as text for a checkpoint, each attribute in DynamoDB's typed form: `{"N": "12.5"}`,
/// `{"S": "a"}`, `{"B": "<base64>"}` (key attributes have no other type).
fn encode_key(key: &HashMap<String, AttributeValue>) -> String {
    let map: serde_json::Map<String, serde_json::Value> = key
        .iter()
        .map(|(k, v)| {
            let typed = match v {
                AttributeValue::N(n) => serde_json::json!({ "N": n }),
                AttributeValue::S(s) => serde_json::json!({ "S": s }),
                AttributeValue::B(b) => serde_json::json!({ "B": aws_smithy_types::base64::encode(b.as_ref()) }),
                // Not a key type: [`decode_key`] refuses it, so the resume fails naming the attribute.
                other => serde_json::json!({ "unsupported": format!("{other:?}") }),
            };
            (k.clone(), typed)
        })
        .collect();
    serde_json::Value::Object(map).to_string()
}

fn decode_key(s: &str) -> Result<HashMap<String, AttributeValue>, String> {
    let map: HashMap<String, HashMap<String, String>> = serde_json::from_str(s).map_err(|e| format!("bad start key: {e}"))?;
    map.into_iter()
        .map(|(k, typed)| match typed.into_iter().next() {
            Some((t, v)) if t == "N" => Ok((k, AttributeValue::N(v))),
            Some((t, v)) if t == "S" => Ok((k, AttributeValue::S(v))),
            Some((t, v)) if t == "B" => match aws_smithy_types::base64::decode(&v) {
                Ok(bytes) => Ok((k, AttributeValue::B(aws_sdk_dynamodb::primitives::Blob::new(bytes)))),
                Err(e) => Err(format!("bad start key attribute {k}: {e}")),
            },
            _ => Err(format!("bad start key attribute {k}")),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_keys_round_trip() {
        use aws_sdk_dynamodb::primitives::Blob;
        let key = HashMap::from([("pk".to_owned(), AttributeValue::S("a#1".into())), ("n".to_owned(), AttributeValue::N("12.5".into()))]);
        assert_eq!(decode_key(&encode_key(&key)).unwrap(), key);
        // Binary keys, with bytes that are not UTF-8, and numbers beyond f64.
        let key = HashMap::from([
            ("pk".to_owned(), AttributeValue::B(Blob::new(vec![0, 0xff, 0xfe, b'+', 0x80]))),
            ("sk".to_owned(), AttributeValue::N("123456789012345678901234567890".into())),
        ]);
        let text = encode_key(&key);
        assert!(text.contains(r#"{"B":"AP/+K4A="}"#), "{text}");
        assert_eq!(decode_key(&text).unwrap(), key);
        assert!(decode_key(r#"{"pk":{"B":"not base64!"}}"#).unwrap_err().contains("pk"));
        assert!(decode_key(r#"{"pk":{"BOOL":"true"}}"#).is_err());
        let not_a_key = HashMap::from([("pk".to_owned(), AttributeValue::Bool(true))]);
        assert!(decode_key(&encode_key(&not_a_key)).is_err());
    }

    #[test]
    fn attributes_as_cells() {
        use aws_sdk_dynamodb::primitives::Blob;
        use serde_json::json;
        let check = |v: AttributeValue, expect: serde_json::Value| assert_eq!(to_json(&v), expect, "{v:?}");
        let n = |s: &str| AttributeValue::N(s.into());
        check(AttributeValue::S("x".into()), json!("x"));
        check(n("42"), json!(42));
        check(n("1.5"), json!(1.5));
        check(n("-9223372036854775808"), json!(i64::MIN));
        check(n("18446744073709551615"), json!(u64::MAX));
        check(n("9007199254740993"), json!(9_007_199_254_740_993i64));
        check(n("123456789012345678901234567890"), json!({ "$number": "123456789012345678901234567890" }));
        check(n("-1.5E-130"), json!({ "$number": "-1.5E-130" }));
        check(AttributeValue::B(Blob::new(vec![0, 0xff, b'a'])), json!("AP9h"));
        check(AttributeValue::Bool(true), json!(true));
        check(AttributeValue::Null(true), json!(null));
        check(AttributeValue::L(vec![n("1")]), json!("[1]"));
        check(
            AttributeValue::M(HashMap::from([
                ("z".to_owned(), n("123456789012345678901234567890")),
                ("a".to_owned(), AttributeValue::L(vec![AttributeValue::B(Blob::new(vec![1])), AttributeValue::Null(true)])),
                ("m".to_owned(), AttributeValue::Ns(vec!["0.1".into(), "9007199254740993".into()])),
            ])),
            json!(r#"{"a":["AQ==",null],"m":[0.1,9007199254740993],"z":123456789012345678901234567890}"#),
        );
        check(AttributeValue::Ss(vec!["a\"b".into()]), json!(r#"["a\"b"]"#));
        check(AttributeValue::Bs(vec![Blob::new(vec![0xff])]), json!(r#"["/w=="]"#));
    }
}
