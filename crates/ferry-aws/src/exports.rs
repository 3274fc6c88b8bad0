//! What an export needs from AWS: pages of a DynamoDB table as rows, a multipart upload that can be
//! handed from one Lambda run to the next, and a presigned download link.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_dynamodb::types::Select;
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use serde::{Deserialize, Serialize};

// The cell codec moved to `dynamo`; its old path stays.
pub use crate::dynamo::to_json;
use crate::dynamo::{self, DynamoClient, decode_key, encode_key, key_value};
use crate::error::SdkError;
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
            .map_err(|e| store.error(key, "CreateMultipartUpload", e))?;
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
            .map_err(|e| self.store.error(&self.state.key, "UploadPart", e))?;
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
            .map_err(|e| self.store.error(&self.state.key, "CompleteMultipartUpload", e))?;
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
            .map_err(|e| self.store.error(&self.state.key, "AbortMultipartUpload", e))
    }
}

/// A GET link for `key` that expires after `lifetime` (at most [`MAX_LINK_LIFETIME`]) and downloads
/// as `filename`.
pub async fn presign_get(store: &Store, key: &str, filename: &str, lifetime: Duration) -> Result<String, S3Error> {
    let config = PresigningConfig::expires_in(lifetime.min(MAX_LINK_LIFETIME)).map_err(|e| store.failure(key, "presign", e.to_string()))?;
    let req = store
        .client()
        .get_object()
        .bucket(store.bucket())
        .key(key)
        .response_content_disposition(format!("attachment; filename=\"{filename}\""))
        .presigned(config)
        .await
        .map_err(|e| store.error(key, "presign GetObject", e))?;
    Ok(req.uri().to_owned())
}

/// Reading an export's source failed. The [`crate::Error`] names the table and the operation.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct SourceError(#[from] pub crate::Error);

impl SourceError {
    /// What the failure means for the job's owner, decided by DynamoDB's code, never by the text.
    pub fn kind(&self) -> SourceErrorKind {
        match self.0.code() {
            Some("ResourceNotFoundException" | "AccessDeniedException" | "TableNotFoundException") => SourceErrorKind::Unavailable,
            Some("ValidationException") => SourceErrorKind::Invalid,
            _ => SourceErrorKind::Other,
        }
    }
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

fn source_error<E, R>(table: &str, op: &'static str, e: SdkError<E, R>) -> SourceError
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    SourceError(dynamo::error(op, &format!("table {table}"), e))
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
        Some(s) => Some(
            decode_key(s).map_err(|message| SourceError(crate::Error::other("DynamoDB", "resume", format!("table {table}"), message)))?,
        ),
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
