//! The export job: rows from a DynamoDB table or an S3 dataset, written to S3 as CSV, JSON lines or
//! xlsx with a multipart upload.
//!
//! The source is split into partitions (scan segments, or dataset objects in key order), read ahead
//! in parallel and written strictly in partition order, page by page, so the output is the same on
//! every run. After each page the worker heartbeats (which is how it learns of a cancel) and checks
//! the time left; when too little is left it stores a [`Checkpoint`] (next partition and page, the
//! open multipart upload, and the bytes not yet uploaded) and a new invocation resumes from it.
//!
//! xlsx cannot be appended to across invocations, so its rows are first staged as JSON lines
//! (under `ferry_core::jobs::STAGING_PREFIX`, the only part of `exports/` the worker reads back), and
//! the last invocation turns them into the workbook ([`xlsx::build`]).
//!
//! A dataset is a snapshot: the first run lists the prefix once and records each object's key, size
//! and ETag; every read of an object, in that run and in every continuation, is a GET with
//! `If-Match` on that ETag, and continuations read the recorded list instead of listing again. An
//! object changed or removed meanwhile fails the job ([`ExportError::DatasetChanged`]) rather than
//! skipping or repeating rows. The checkpoint holds the list inline, or names the staging object it
//! was written to when it is long ([`ferry_core::jobs::place_snapshot`]).
//!
//! Before reading, the source is checked against the allowlist again ([`JobSettings::source_policy`]):
//! the API checked it at submit, and the settings may have changed since. A failure reaches the job's
//! owner only as [`ExportError::public`]: a code and a message that names nothing outside their source.

pub mod dataset;
pub mod writer;
pub mod xlsx;

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use ferry_aws::exports::{self, Multipart, MultipartState, SourceErrorKind, TableRead};
use ferry_aws::jobs::{Beat, JobStoreError};
use ferry_aws::s3::{Fetched, Pinned, S3Error, Store};
use ferry_core::cells::XLSX_MAX_COLUMNS;
use ferry_core::jobs::{
    DatasetFormat, DatasetObject, ExportParams, Filter, Format, JobRecord, JobResult, Progress, Snapshot, Source, SubmitError,
};
use ferry_core::public::{ErrorCode, PublicError, leaks_internals};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use crate::kind::{Admission, AdmitError, JobEnv, Kind, Outcome, RunError, Step};
use crate::settings::{ms, now_ms};
use writer::{Encoding, PartWriter};

/// Where a continuation picks up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The partition being written.
    pub partition: usize,
    /// Where its next page starts (`None`: at its beginning).
    pub start: Option<String>,
    /// Rows written so far.
    pub rows: u64,
    pub total: Option<u64>,
    /// The output's columns, once known.
    pub columns: Vec<String>,
    pub upload: MultipartState,
    /// Where the bytes encoded but not yet uploaded were saved.
    pub carry: Option<String>,
    /// The dataset objects the export reads (S3 sources). `None` for tables, and in checkpoints
    /// written before snapshots were recorded: those list the prefix again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<Snapshot>,
}

/// Why an export failed. Names the object, table or line at fault: this is for the log; the job's
/// owner sees [`ExportError::public`].
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The source is not one exports may read (any more).
    #[error("source refused by the allowlist: {0}")]
    Refused(SubmitError),
    /// The dataset's bucket or objects do not exist or may not be read.
    #[error("s3://{bucket}/{prefix}: {message}")]
    DatasetUnavailable { bucket: String, prefix: String, message: String },
    #[error(transparent)]
    Source(#[from] exports::SourceError),
    #[error(transparent)]
    Dataset(#[from] dataset::DatasetError),
    #[error(transparent)]
    S3(#[from] S3Error),
    #[error(transparent)]
    Store(#[from] JobStoreError),
    #[error(transparent)]
    Xlsx(#[from] xlsx::XlsxBuildError),
    /// A dataset object was overwritten or removed after the export listed it.
    #[error("s3://{bucket}/{key}: {} since the export listed it (ETag {etag})", if *.removed { "removed" } else { "changed" })]
    DatasetChanged { bucket: String, key: String, etag: String, removed: bool },
    #[error("s3://{bucket}/{key}: {size} bytes is over the limit of {limit} for one dataset object")]
    ObjectTooLarge { bucket: String, key: String, size: u64, limit: u64 },
    /// A dataset object under the cap whose footer says it decodes to more (a Parquet "bomb").
    #[error("s3://{bucket}/{key}: decodes to {decoded} bytes, over the limit of {limit} for one dataset object")]
    DecodesTooLarge { bucket: String, key: String, decoded: u64, limit: u64 },
    /// More output columns than an xlsx sheet holds.
    #[error("{columns} columns, over xlsx's limit of {limit} columns a sheet")]
    TooManyColumns { columns: usize, limit: usize },
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    #[error("local file {path}: {message}")]
    Io { path: String, message: String },
}

impl ExportError {
    pub fn kind(&self) -> &'static str {
        match self {
            ExportError::Refused(_) => "SourceRefused",
            ExportError::DatasetUnavailable { .. } => "SourceUnavailable",
            ExportError::Source(_) => "SourceError",
            ExportError::Dataset(_) | ExportError::ObjectTooLarge { .. } | ExportError::DecodesTooLarge { .. } => "BadDataset",
            ExportError::DatasetChanged { .. } => "DatasetChanged",
            ExportError::TooManyColumns { .. } => "TooManyColumns",
            ExportError::S3(_) => "S3Error",
            ExportError::Store(_) => "StoreError",
            ExportError::Xlsx(_) => "XlsxError",
            ExportError::Checkpoint(_) => "BadCheckpoint",
            ExportError::Io { .. } => "IoError",
        }
    }

    /// What the job's owner sees. Built from the error's kind and from what the owner named, never
    /// from a cause's text: a missing and a forbidden source read the same, and an object is named
    /// only by its key under the prefix the owner gave.
    pub fn public(&self, params: &ExportParams) -> PublicError {
        match self {
            ExportError::Refused(_) | ExportError::DatasetUnavailable { .. } => PublicError::code(ErrorCode::SourceUnavailable),
            ExportError::Source(e) => match e.kind {
                SourceErrorKind::Unavailable => PublicError::code(ErrorCode::SourceUnavailable),
                SourceErrorKind::Invalid => PublicError::new(
                    ErrorCode::BadSourceData,
                    "the table cannot be read as asked; check params.source.key against its partition key",
                ),
                SourceErrorKind::Other => PublicError::code(ErrorCode::Internal),
            },
            ExportError::Dataset(e) => guarded(ErrorCode::BadSourceData, format!("{}: {}", object_name(params, &e.key), e.message)),
            // Not `source_unavailable`: that one message stands for every missing or forbidden source
            // and names nothing, while this object was there when the export began.
            ExportError::DatasetChanged { key, removed, .. } => guarded(
                ErrorCode::BadSourceData,
                format!(
                    "{} {} during the export; submit the job again to export the dataset as it is now",
                    object_name(params, key),
                    if *removed { "was removed" } else { "changed" }
                ),
            ),
            ExportError::ObjectTooLarge { key, size, limit, .. } => guarded(
                ErrorCode::TooLarge,
                format!("{}: {size} bytes is over the limit of {limit} for one dataset object", object_name(params, key)),
            ),
            ExportError::DecodesTooLarge { key, decoded, limit, .. } => guarded(
                ErrorCode::TooLarge,
                format!("{}: decodes to {decoded} bytes, over the limit of {limit} for one dataset object", object_name(params, key)),
            ),
            ExportError::TooManyColumns { columns, limit } => PublicError::new(
                ErrorCode::TooLarge,
                format!(
                    "the export has {columns} columns, over xlsx's limit of {limit} columns a sheet; \
                     name at most {limit} in params.columns, or export as csv or jsonl"
                ),
            ),
            ExportError::S3(_) | ExportError::Store(_) | ExportError::Xlsx(_) | ExportError::Checkpoint(_) | ExportError::Io { .. } => {
                PublicError::code(ErrorCode::Internal)
            }
        }
    }
}

/// `message` under `code`, unless it looks like it carries an internal detail (a parser quoting
/// something unexpected): then the code's default message.
fn guarded(code: ErrorCode, message: String) -> PublicError {
    if leaks_internals(&message) { PublicError::code(code) } else { PublicError::new(code, message) }
}

/// A dataset object as its owner may see it named: its key relative to the prefix they gave.
fn object_name(params: &ExportParams, key: &str) -> String {
    match &params.source {
        Source::S3 { prefix, .. } => match key.strip_prefix(prefix.as_str()) {
            Some(rest) if !rest.is_empty() => format!("object {rest:?} under the prefix"),
            Some(_) => "the object at the prefix".into(),
            None => "an object under the prefix".into(),
        },
        _ => "an object under the prefix".into(),
    }
}

/// Whether a failed S3 call on a dataset means it is missing or forbidden (the caller is not told
/// which), rather than a failure of the service.
fn dataset_unavailable(e: &S3Error) -> bool {
    matches!(
        e.code.as_deref(),
        Some("NoSuchBucket" | "NoSuchKey" | "AccessDenied" | "AllAccessDisabled" | "PermanentRedirect" | "InvalidBucketName")
    )
}

fn dataset_error(bucket: &str, prefix: &str, e: S3Error) -> ExportError {
    if dataset_unavailable(&e) {
        ExportError::DatasetUnavailable { bucket: bucket.into(), prefix: prefix.into(), message: e.to_string() }
    } else {
        ExportError::S3(e)
    }
}

/// The `export` kind.
#[derive(Debug, Clone, Copy)]
pub struct Export;

impl Kind for Export {
    fn name(&self) -> &'static str {
        "export"
    }

    /// Valid params whose source is on the allowlist, stored in normal form (what the worker reads).
    fn admit<'a>(&'a self, at: Admission<'a>, params: Value) -> BoxFuture<'a, Result<Value, AdmitError>> {
        Box::pin(async move {
            let mut params = ExportParams::parse(params)?;
            // Checked before anything is written: a refused source never becomes a job.
            match at.env.settings.source_policy().admit(&params.source) {
                Ok(source) => params.source = source,
                Err(e) => {
                    tracing::warn!(owner = at.owner, request_id = at.request_id, source = ?params.source, "source refused by the allowlist");
                    return Err(e.into());
                }
            }
            Ok(params.to_value())
        })
    }

    fn run<'a>(&'a self, step: Step<'a>) -> BoxFuture<'a, Result<Outcome, RunError>> {
        Box::pin(async move {
            let params = ExportParams::from_value(&step.job.params).map_err(|e| RunError::internal("BadParams", e))?;
            run(step.env, step.job, &params, step.checkpoint, step.deadline).await.map_err(|e| {
                let public = e.public(&params);
                RunError::new(e.kind(), public, e)
            })
        })
    }

    fn describe(&self, params: &Value) -> BTreeMap<&'static str, Value> {
        params.get("format").map(|f| BTreeMap::from([("format", f.clone())])).unwrap_or_default()
    }
}

/// One partition of the source.
#[derive(Debug, Clone)]
enum Partition {
    Scan { table: String, segment: u32, total: u32 },
    Query { table: String, key: String, value: Value },
    Object { bucket: String, object: DatasetObject, format: DatasetFormat },
}

/// A page of rows from one partition.
#[derive(Debug)]
struct Batch {
    /// The columns of `rows` when they are not already the export's (a dataset without a selection).
    columns: Option<Arc<Vec<String>>>,
    rows: Vec<Vec<Value>>,
    next: Option<String>,
}

/// The objects under `prefix` now, in key order.
async fn list_dataset(env: &JobEnv, bucket: &str, prefix: &str) -> Result<Vec<DatasetObject>, ExportError> {
    let store = Store::new(env.s3.clone(), bucket);
    let listed = store.list(prefix).await.map_err(|e| dataset_error(bucket, prefix, e))?;
    let mut objects: Vec<DatasetObject> =
        listed.into_iter().filter(|h| !h.key.ends_with('/')).map(|h| DatasetObject { key: h.key, size: h.size, etag: h.etag }).collect();
    if objects.is_empty() {
        // S3 has no empty folders: nothing under the prefix is a dataset that does not exist.
        let message = "no objects under the prefix".into();
        return Err(ExportError::DatasetUnavailable { bucket: bucket.into(), prefix: prefix.into(), message });
    }
    objects.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(objects)
}

/// The dataset objects this run reads (S3 sources): the checkpoint's snapshot; on a first run, or
/// resuming a checkpoint written before snapshots were recorded, a listing made now.
async fn dataset_snapshot(env: &JobEnv, params: &ExportParams, cp: Option<&Checkpoint>) -> Result<Option<Vec<DatasetObject>>, ExportError> {
    let Source::S3 { bucket, prefix, .. } = &params.source else { return Ok(None) };
    Ok(Some(match cp.and_then(|c| c.snapshot.as_ref()) {
        Some(Snapshot::Inline(objects)) => objects.clone(),
        Some(Snapshot::Staged(key)) => match env.store.get_capped(key, u64::MAX).await? {
            Fetched::Object(o) => ferry_core::jobs::parse_snapshot(&o.body)
                .map_err(|e| ExportError::Checkpoint(format!("the dataset snapshot {key}: {e}")))?,
            _ => return Err(ExportError::Checkpoint(format!("the dataset snapshot {key} is gone"))),
        },
        None => list_dataset(env, bucket, prefix).await?,
    }))
}

fn partitions(params: &ExportParams, snapshot: Option<&[DatasetObject]>) -> Vec<Partition> {
    match &params.source {
        Source::DynamodbScan { table, segments } => {
            (0..*segments).map(|segment| Partition::Scan { table: table.clone(), segment, total: *segments }).collect()
        }
        Source::DynamodbQuery { table, key, value } => {
            vec![Partition::Query { table: table.clone(), key: key.clone(), value: value.clone() }]
        }
        Source::S3 { bucket, format, .. } => snapshot
            .unwrap_or_default()
            .iter()
            .map(|object| Partition::Object { bucket: bucket.clone(), object: object.clone(), format: *format })
            .collect(),
    }
}

/// Reads `part` from `start`, page by page, into a small channel: readers run ahead of the writer by
/// at most two pages each.
fn spawn_reader(
    env: &JobEnv,
    part: Partition,
    start: Option<String>,
    columns: Option<Vec<String>>,
    filter: Option<Filter>,
) -> mpsc::Receiver<Result<Batch, ExportError>> {
    let (tx, rx) = mpsc::channel(2);
    let env = env.clone();
    tokio::spawn(async move {
        let result = match part {
            Partition::Scan { table, segment, total } => {
                read_table(&env, &table, TableRead::Scan { segment, total }, start, &columns.unwrap_or_default(), &tx).await
            }
            Partition::Query { table, key, value } => {
                read_table(&env, &table, TableRead::Query { key: &key, value: &value }, start, &columns.unwrap_or_default(), &tx).await
            }
            Partition::Object { bucket, object, format } => read_object(&env, &bucket, &object, format, start, columns, filter, &tx).await,
        };
        if let Err(e) = result {
            let _ = tx.send(Err(e)).await;
        }
    });
    rx
}

async fn read_table(
    env: &JobEnv,
    table: &str,
    read: TableRead<'_>,
    mut start: Option<String>,
    columns: &[String],
    tx: &mpsc::Sender<Result<Batch, ExportError>>,
) -> Result<(), ExportError> {
    loop {
        let page = exports::read_page(&env.dynamo, table, read, start.as_deref(), env.settings.page_size, columns).await?;
        let done = page.next.is_none();
        start = page.next.clone();
        if tx.send(Ok(Batch { columns: None, rows: page.rows, next: page.next })).await.is_err() || done {
            return Ok(());
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn read_object(
    env: &JobEnv,
    bucket: &str,
    object: &DatasetObject,
    format: DatasetFormat,
    start: Option<String>,
    columns: Option<Vec<String>>,
    filter: Option<Filter>,
    tx: &mpsc::Sender<Result<Batch, ExportError>>,
) -> Result<(), ExportError> {
    let (key, limit) = (object.key.as_str(), env.settings.max_object_bytes);
    // Exactly the version in the snapshot, or nothing.
    let fetched = Store::new(env.s3.clone(), bucket)
        .get_capped_if_match(key, limit, &object.etag)
        .await
        .map_err(|e| dataset_error(bucket, key, e))?;
    let changed = |removed| ExportError::DatasetChanged { bucket: bucket.into(), key: key.into(), etag: object.etag.clone(), removed };
    let body = match fetched {
        Pinned::Read(Fetched::Object(o)) => o.body,
        Pinned::Read(Fetched::Missing) => return Err(changed(true)),
        Pinned::Changed => return Err(changed(false)),
        Pinned::Read(Fetched::TooLarge { size }) => {
            return Err(ExportError::ObjectTooLarge { bucket: bucket.into(), key: key.into(), size, limit });
        }
    };
    let (b, k) = (bucket.to_owned(), key.to_owned());
    let selected = columns.is_some();
    let frame = if body.is_empty() {
        None
    } else {
        // The cap bounds what the object decodes to, not only its bytes: a small Parquet object can
        // hold gigabytes. Its footer tells, before anything is decoded.
        let parsed = tokio::task::spawn_blocking(move || -> Result<dataset::Frame, ExportError> {
            let decoded = dataset::decoded_bytes(&b, &k, &body, format)?;
            if decoded > limit {
                return Err(ExportError::DecodesTooLarge { bucket: b, key: k, decoded, limit });
            }
            Ok(dataset::read(&b, &k, body, format, columns.as_deref(), filter.as_ref())?)
        })
        .await
        .map_err(|e| dataset::DatasetError { bucket: bucket.into(), key: key.into(), message: e.to_string() })??;
        Some(parsed)
    };
    let Some(frame) = frame else {
        let _ = tx.send(Ok(Batch { columns: None, rows: Vec::new(), next: None })).await;
        return Ok(());
    };
    let header = (!selected).then(|| Arc::new(frame.columns.clone()));
    let page = env.settings.page_size as usize;
    let mut offset: usize = start.and_then(|s| s.parse().ok()).unwrap_or(0);
    loop {
        let rows = frame.rows(offset, page);
        offset += rows.len();
        let next = (offset < frame.height()).then(|| offset.to_string());
        let done = next.is_none();
        if tx.send(Ok(Batch { columns: header.clone(), rows, next })).await.is_err() || done {
            return Ok(());
        }
    }
}

/// Cells of `row` (named by `from`) in the order of `to`; absent columns are null.
fn align(row: Vec<Value>, from: &[String], to: &[String]) -> Vec<Value> {
    to.iter().map(|c| from.iter().position(|f| f == c).and_then(|i| row.get(i).cloned()).unwrap_or(Value::Null)).collect()
}

/// How an export's rows become bytes. `formula_escape` is for CSV only: JSON is not opened as a
/// spreadsheet, and the xlsx writer keeps every text a string cell.
fn encoding(format: Format, formula_escape: bool) -> Encoding {
    match format {
        Format::Csv if formula_escape => Encoding::Csv,
        Format::Csv => Encoding::CsvPlain,
        Format::Jsonl => Encoding::Jsonl,
        Format::Xlsx => Encoding::Staged,
    }
}

/// Refuses output columns an xlsx sheet cannot hold, before anything is written: a wider row would
/// otherwise lose the cells past the last column.
fn check_width(format: Format, columns: &[String]) -> Result<(), ExportError> {
    if format == Format::Xlsx && columns.len() > XLSX_MAX_COLUMNS {
        return Err(ExportError::TooManyColumns { columns: columns.len(), limit: XLSX_MAX_COLUMNS });
    }
    Ok(())
}

/// The object the rows stream into: the export itself, or for xlsx the staged rows.
fn data_key(job: &JobRecord, params: &ExportParams) -> String {
    match params.format {
        Format::Xlsx => ferry_core::jobs::staging_key(&job.owner, &job.id, params.format, "rows"),
        _ => ferry_core::jobs::export_key(&job.owner, &job.id, params.format),
    }
}

async fn estimate(env: &JobEnv, params: &ExportParams) -> Result<Option<u64>, ExportError> {
    Ok(match &params.source {
        Source::DynamodbScan { table, segments } => {
            exports::estimate_rows(&env.dynamo, table, TableRead::Scan { segment: 0, total: *segments }).await?
        }
        Source::DynamodbQuery { table, key, value } => exports::estimate_rows(&env.dynamo, table, TableRead::Query { key, value }).await?,
        Source::S3 { .. } => None,
    })
}

/// Runs (or resumes) the export of a claimed job until it is done, out of time, or stopped.
/// `deadline` is when the invocation ends (ms since the epoch).
pub async fn run(
    env: &JobEnv,
    job: &JobRecord,
    params: &ExportParams,
    checkpoint: Option<&str>,
    deadline: i64,
) -> Result<Outcome, ExportError> {
    // The API stored the source normalised; anything else did not come through it.
    match env.settings.source_policy().admit(&params.source) {
        Ok(admitted) if admitted == params.source => {}
        Ok(_) => return Err(ExportError::Refused(SubmitError::new("params.source.prefix", "is not in normal form"))),
        Err(e) => return Err(ExportError::Refused(e)),
    }
    let resumed: Option<Checkpoint> =
        checkpoint.map(serde_json::from_str).transpose().map_err(|e| ExportError::Checkpoint(e.to_string()))?;
    let snapshot = dataset_snapshot(env, params, resumed.as_ref()).await?;
    let parts = partitions(params, snapshot.as_deref());
    let enc = encoding(params.format, params.formula_escape);
    let (mut cp, mut writer) = match resumed {
        Some(cp) => {
            let carry = match &cp.carry {
                Some(key) => match env.store.get_capped(key, u64::MAX).await? {
                    Fetched::Object(o) => o.body,
                    _ => return Err(ExportError::Checkpoint(format!("the saved bytes {key} are gone"))),
                },
                None => Vec::new(),
            };
            let upload = Multipart::resume(&env.store, cp.upload.clone());
            let writer = PartWriter::new(enc, upload, carry, env.settings.part_bytes);
            (cp, writer)
        }
        None => {
            check_width(params.format, params.columns.as_deref().unwrap_or_default())?;
            let total = estimate(env, params).await?;
            let upload = Multipart::begin(&env.store, &data_key(job, params), params.format.content_type()).await?;
            let mut writer = PartWriter::new(enc, upload, Vec::new(), env.settings.part_bytes);
            let columns = params.columns.clone().unwrap_or_default();
            if !columns.is_empty() {
                writer.header(&columns);
            }
            let upload = writer.upload().state().clone();
            let cp = Checkpoint { partition: 0, start: None, rows: 0, total, columns, upload, carry: None, snapshot: None };
            (cp, writer)
        }
    };
    let carry_key = ferry_core::jobs::staging_key(&job.owner, &job.id, params.format, "carry");
    let snapshot_key = ferry_core::jobs::staging_key(&job.owner, &job.id, params.format, "snapshot");
    let beat = |cp: &Checkpoint, phase: &str| Progress { phase: phase.into(), done: cp.rows, total: cp.total, ..Progress::default() };

    // Readers for the current partition and the next few, in order.
    let mut readers: VecDeque<mpsc::Receiver<Result<Batch, ExportError>>> = VecDeque::new();
    let mut next_reader = cp.partition;
    let read_ahead = env.settings.read_ahead.max(1);
    while cp.partition < parts.len() {
        while next_reader < parts.len() && next_reader < cp.partition + read_ahead {
            let start = if next_reader == cp.partition { cp.start.clone() } else { None };
            readers.push_back(spawn_reader(env, parts[next_reader].clone(), start, params.columns.clone(), params.filter.clone()));
            next_reader += 1;
        }
        let Some(rx) = readers.front_mut() else { break };
        let batch = match rx.recv().await {
            Some(Ok(b)) => b,
            Some(Err(e)) => {
                if matches!(e, ExportError::DatasetChanged { .. }) {
                    // The snapshot can no longer be read, so nothing will resume this export.
                    drop(readers);
                    abandon(env, writer, &temporaries(&cp, &carry_key)).await;
                }
                return Err(e);
            }
            None => return Err(ExportError::Checkpoint(format!("partition {} ended without its last page", cp.partition))),
        };
        if let Some(cols) = &batch.columns
            && cp.columns.is_empty()
        {
            if let Err(e) = check_width(params.format, cols) {
                drop(readers);
                abandon(env, writer, &temporaries(&cp, &carry_key)).await;
                return Err(e);
            }
            cp.columns = cols.as_ref().clone();
            writer.header(&cp.columns);
        }
        let rows: Vec<Vec<Value>> = match &batch.columns {
            Some(from) if from.as_slice() != cp.columns.as_slice() => batch.rows.into_iter().map(|r| align(r, from, &cp.columns)).collect(),
            _ => batch.rows,
        };
        writer.write(&cp.columns, &rows).await?;
        cp.rows += rows.len() as u64;
        match batch.next {
            Some(next) => cp.start = Some(next),
            None => {
                readers.pop_front();
                cp.partition += 1;
                cp.start = None;
            }
        }
        let now = now_ms();
        let progress = beat(&cp, "reading");
        let b = Beat { id: &job.id, attempt: job.attempt, progress: &progress, now, lease_ms: ms(env.settings.lease) };
        let remaining = deadline - now;
        if cp.partition < parts.len() && remaining < ms(env.settings.continue_margin) {
            // Out of time with work left: save what is not uploaded yet and hand over.
            cp.upload = writer.upload().state().clone();
            cp.carry = None;
            if !writer.pending().is_empty() {
                let body = writer.pending().to_vec();
                env.store
                    .put(&carry_key, ferry_aws::s3::NewObject { body, content_type: "application/octet-stream", ..Default::default() })
                    .await?;
                cp.carry = Some(carry_key.clone());
            }
            // The first hand-over records the snapshot; later ones pass on the one they resumed from.
            if cp.snapshot.is_none()
                && let Some(objects) = &snapshot
            {
                let inline_max = env.settings.snapshot_inline_bytes;
                let (placed, staged) = ferry_core::jobs::place_snapshot(objects.clone(), inline_max, &snapshot_key);
                if let Some(body) = staged {
                    env.store
                        .put(&snapshot_key, ferry_aws::s3::NewObject { body, content_type: "application/json", ..Default::default() })
                        .await?;
                }
                cp.snapshot = Some(placed);
            }
            let text = serde_json::to_string(&cp).map_err(|e| ExportError::Checkpoint(e.to_string()))?;
            let progress = beat(&cp, "continuing");
            return match env.table.checkpoint(Beat { progress: &progress, ..b }, &text).await? {
                Ok(_) => Ok(Outcome::Continued { done: cp.rows }),
                Err(refused) => {
                    abandon(env, writer, &temporaries(&cp, &carry_key)).await;
                    Ok(Outcome::Stopped(refused))
                }
            };
        }
        if let Err(refused) = env.table.heartbeat(b).await? {
            abandon(env, writer, &temporaries(&cp, &carry_key)).await;
            return Ok(Outcome::Stopped(refused));
        }
    }
    drop(readers);

    let key = ferry_core::jobs::export_key(&job.owner, &job.id, params.format);
    let written = writer.finish().await?;
    let (size, sheets, truncated_cells) = match params.format {
        Format::Xlsx => {
            let progress = beat(&cp, "building xlsx");
            let b = Beat { id: &job.id, attempt: job.attempt, progress: &progress, now: now_ms(), lease_ms: ms(env.settings.lease) };
            if let Err(refused) = env.table.heartbeat(b).await? {
                delete_quietly(&env.store, &data_key(job, params)).await;
                return Ok(Outcome::Stopped(refused));
            }
            let built = build_xlsx(env, job, params, &key).await?;
            delete_quietly(&env.store, &data_key(job, params)).await;
            built
        }
        _ => (written, 1, 0),
    };
    for key in temporaries(&cp, &carry_key) {
        delete_quietly(&env.store, &key).await;
    }
    let result = JobResult {
        bucket: env.store.bucket().to_owned(),
        key,
        size,
        rows: cp.rows,
        sheets,
        truncated_cells,
        files: BTreeMap::new(),
        counts: BTreeMap::new(),
    };
    let progress = Progress { phase: "done".into(), done: cp.rows, total: Some(cp.rows), ..Progress::default() };
    Ok(Outcome::Finished { result, progress })
}

/// The staging objects a finished or abandoned export has no more use for: the carried bytes, and
/// the snapshot when it was staged.
fn temporaries(cp: &Checkpoint, carry_key: &str) -> Vec<String> {
    let mut keys = vec![carry_key.to_owned()];
    if let Some(Snapshot::Staged(key)) = &cp.snapshot {
        keys.push(key.clone());
    }
    keys
}

async fn abandon(env: &JobEnv, writer: PartWriter, temporaries: &[String]) {
    if let Err(e) = writer.abort().await {
        tracing::warn!(error = %e, "abandoning the multipart upload failed; a lifecycle rule cleans it up");
    }
    for key in temporaries {
        delete_quietly(&env.store, key).await;
    }
}

async fn delete_quietly(store: &Store, key: &str) {
    if let Err(e) = store.client().delete_object().bucket(store.bucket()).key(key).send().await {
        tracing::warn!(key, error = %aws_smithy_types_display(&e), "deleting a temporary object failed");
    }
}

fn aws_smithy_types_display(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

/// Downloads the staged rows to local disk, builds the workbook there, and uploads it in parts.
/// Returns (size, sheets, text cells truncated).
async fn build_xlsx(env: &JobEnv, job: &JobRecord, params: &ExportParams, key: &str) -> Result<(u64, u32, u64), ExportError> {
    let dir = std::env::temp_dir().join(format!("ferry-export-{}", job.id));
    let io = |path: &std::path::Path, e: std::io::Error| ExportError::Io { path: path.display().to_string(), message: e.to_string() };
    tokio::fs::create_dir_all(&dir).await.map_err(|e| io(&dir, e))?;
    let result = async {
        let staged = dir.join("rows.jsonl");
        let out = dir.join("export.xlsx");
        let staged_key = data_key(job, params);
        let obj = env.store.client().get_object().bucket(env.store.bucket()).key(&staged_key).send().await.map_err(|e| S3Error {
            bucket: env.store.bucket().into(),
            key: staged_key.clone(),
            op: "GetObject",
            code: None,
            message: aws_smithy_types_display(&e),
        })?;
        let mut body = obj.body;
        let mut file = tokio::fs::File::create(&staged).await.map_err(|e| io(&staged, e))?;
        while let Some(chunk) = body.try_next().await.map_err(|e| S3Error {
            bucket: env.store.bucket().into(),
            key: staged_key.clone(),
            op: "GetObject (body)",
            code: None,
            message: e.to_string(),
        })? {
            file.write_all(&chunk).await.map_err(|e| io(&staged, e))?;
        }
        file.flush().await.map_err(|e| io(&staged, e))?;
        drop(file);
        let sheet_rows = env.settings.sheet_rows;
        let (s, o, d) = (staged.clone(), out.clone(), dir.clone());
        let built = tokio::task::spawn_blocking(move || xlsx::build(&s, &o, &d, sheet_rows))
            .await
            .map_err(|e| ExportError::Io { path: out.display().to_string(), message: e.to_string() })??;
        let mut upload = Multipart::begin(&env.store, key, Format::Xlsx.content_type()).await?;
        let mut file = tokio::fs::File::open(&out).await.map_err(|e| io(&out, e))?;
        let part = env.settings.part_bytes;
        loop {
            let mut buf = Vec::with_capacity(part);
            let n = (&mut file).take(part as u64).read_to_end(&mut buf).await.map_err(|e| io(&out, e))?;
            if n < part {
                let size = upload.complete(buf).await?;
                return Ok((size, built.sheets, built.truncated));
            }
            upload.upload_part(buf).await?;
        }
    }
    .await;
    let _ = tokio::fs::remove_dir_all(&dir).await;
    result
}

use tokio::io::AsyncReadExt;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_align_by_column_name() {
        let from = ["b".to_owned(), "a".to_owned()];
        let to = ["a".to_owned(), "b".to_owned(), "c".to_owned()];
        assert_eq!(align(vec![Value::from(2), Value::from(1)], &from, &to), vec![Value::from(1), Value::from(2), Value::Null]);
    }

    #[test]
    fn checkpoints_carry_the_snapshot_and_old_ones_without_it_still_resume() {
        // As stored before snapshots were recorded: no `snapshot` field.
        let old = r#"{"partition":2,"start":"5","rows":7,"total":null,"columns":["id"],
            "upload":{"key":"exports/u/j.csv","upload_id":"up","parts":[],"bytes":0},"carry":null}"#;
        let cp: Checkpoint = serde_json::from_str(old).unwrap();
        assert_eq!((cp.partition, &cp.snapshot), (2, &None));
        let objects = vec![DatasetObject { key: "datasets/a.csv".into(), size: 3, etag: "e1".into() }];
        for snapshot in [Snapshot::Inline(objects), Snapshot::Staged("exports/.staging/u/j.csv.snapshot".into())] {
            let cp = Checkpoint { snapshot: Some(snapshot), ..serde_json::from_str(old).unwrap() };
            assert_eq!(serde_json::from_str::<Checkpoint>(&serde_json::to_string(&cp).unwrap()).unwrap(), cp);
        }
        // A table export's checkpoint has none, and does not store the field.
        assert!(!serde_json::to_string(&cp).unwrap().contains("snapshot"));
    }

    #[test]
    fn failures_reach_the_owner_as_codes_naming_only_their_own_objects() {
        let params: ExportParams = serde_json::from_value(serde_json::json!({
            "source": {"type": "s3", "bucket": "lake", "prefix": "datasets/shop/", "format": "csv"},
            "format": "csv",
        }))
        .unwrap();
        let dataset = |key: &str, message: &str| {
            ExportError::Dataset(dataset::DatasetError { bucket: "lake".into(), key: key.into(), message: message.into() })
        };
        let check = |e: ExportError, code: ErrorCode, message: &str| assert_eq!(e.public(&params), PublicError::new(code, message), "{e}");
        check(
            dataset("datasets/shop/2026/a.csv", "column \"x\" does not exist"),
            ErrorCode::BadSourceData,
            "object \"2026/a.csv\" under the prefix: column \"x\" does not exist",
        );
        check(dataset("elsewhere/b.csv", "bad"), ErrorCode::BadSourceData, "an object under the prefix: bad");
        // A parser quoting something that looks internal: the code's own message instead.
        check(dataset("datasets/shop/a.csv", "near arn:aws:s3:::x"), ErrorCode::BadSourceData, ErrorCode::BadSourceData.default_message());
        let too_large = ExportError::ObjectTooLarge { bucket: "lake".into(), key: "datasets/shop/big.csv".into(), size: 9, limit: 8 };
        check(too_large, ErrorCode::TooLarge, "object \"big.csv\" under the prefix: 9 bytes is over the limit of 8 for one dataset object");
        let bomb = ExportError::DecodesTooLarge { bucket: "lake".into(), key: "datasets/shop/bomb.parquet".into(), decoded: 90, limit: 8 };
        check(
            bomb,
            ErrorCode::TooLarge,
            "object \"bomb.parquet\" under the prefix: decodes to 90 bytes, over the limit of 8 for one dataset object",
        );
        let changed =
            |key: &str, removed| ExportError::DatasetChanged { bucket: "lake".into(), key: key.into(), etag: "e1".into(), removed };
        let again = "during the export; submit the job again to export the dataset as it is now";
        check(
            changed("datasets/shop/2026/b.csv", true),
            ErrorCode::BadSourceData,
            &format!("object \"2026/b.csv\" under the prefix was removed {again}"),
        );
        check(
            changed("datasets/shop/c.csv", false),
            ErrorCode::BadSourceData,
            &format!("object \"c.csv\" under the prefix changed {again}"),
        );
        let s3 = |code: &str, message: &str| S3Error {
            bucket: "lake".into(),
            key: "datasets/shop/".into(),
            op: "ListObjectsV2",
            code: Some(code.into()),
            message: format!("{code}: {message}"),
        };
        let unavailable = ErrorCode::SourceUnavailable.default_message();
        for (code, m) in
            [("AccessDenied", "User: arn:aws:sts::123456789012:assumed-role/w"), ("NoSuchBucket", "The specified bucket does not exist")]
        {
            check(dataset_error("lake", "datasets/shop/", s3(code, m)), ErrorCode::SourceUnavailable, unavailable);
        }
        // The code decides, not the text: a message that merely starts like a code is a service failure.
        let lookalike = S3Error { code: None, ..s3("NoSuchBucket", "but S3 sent no code") };
        check(dataset_error("lake", "datasets/shop/", lookalike), ErrorCode::Internal, ErrorCode::Internal.default_message());
        check(
            dataset_error("lake", "datasets/shop/", s3("SlowDown", "reduce your rate")),
            ErrorCode::Internal,
            ErrorCode::Internal.default_message(),
        );
        check(ExportError::Refused(SubmitError::new("params.source.prefix", "x")), ErrorCode::SourceUnavailable, unavailable);
        check(ExportError::Checkpoint("arn:aws:...".into()), ErrorCode::Internal, ErrorCode::Internal.default_message());
    }
}
