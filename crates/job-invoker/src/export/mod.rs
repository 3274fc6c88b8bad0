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
//!
//! Here: the kind and the write loop. `read.rs` reads the source, `error.rs` holds [`ExportError`].

pub mod dataset;
mod error;
mod read;
pub mod writer;
pub mod xlsx;

use std::collections::{BTreeMap, VecDeque};

use ferry_aws::exports::{Multipart, MultipartState};
use ferry_aws::jobs::Beat;
use ferry_aws::s3::{DownloadError, Fetched, Store};
use ferry_core::cells::XLSX_MAX_COLUMNS;
use ferry_core::jobs::{ExportParams, Format, JobRecord, JobResult, Phase, Progress, Snapshot, SubmitError};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

pub use error::ExportError;
use read::{Batch, align, dataset_snapshot, estimate, partitions, spawn_reader};

use crate::kind::{Admission, AdmitError, JobEnv, Kind, Leftovers, Outcome, RunError, Step};
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
            run(step.env, step.job, &params, step.checkpoint, step.deadline, step.leftovers).await.map_err(|e| {
                let public = e.public(&params);
                RunError::new(e.kind(), public, e)
            })
        })
    }

    fn describe(&self, params: &Value) -> BTreeMap<&'static str, Value> {
        params.get("format").map(|f| BTreeMap::from([("format", f.clone())])).unwrap_or_default()
    }
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

/// Runs (or resumes) the export of a claimed job until it is done, out of time, or stopped.
/// `deadline` is when the invocation ends (ms since the epoch); what it opens or stages it names in
/// `leftovers`.
pub async fn run(
    env: &JobEnv,
    job: &JobRecord,
    params: &ExportParams,
    checkpoint: Option<&str>,
    deadline: i64,
    leftovers: &Leftovers,
) -> Result<Outcome, ExportError> {
    // The API stored the source normalised; anything else did not come through it.
    match env.settings.source_policy().admit(&params.source) {
        Ok(admitted) if admitted == params.source => {}
        Ok(_) => return Err(ExportError::Refused(SubmitError::new("params.source.prefix", "is not in normal form"))),
        Err(e) => return Err(ExportError::Refused(e)),
    }
    let resumed: Option<Checkpoint> =
        checkpoint.map(serde_json::from_str).transpose().map_err(|e| ExportError::Checkpoint(e.to_string()))?;
    let carry_key = ferry_core::jobs::staging_key(&job.owner, &job.id, params.format, "carry");
    let snapshot_key = ferry_core::jobs::staging_key(&job.owner, &job.id, params.format, "snapshot");
    // Whatever an earlier attempt staged, by name: deleting one that was never written is harmless.
    for key in [&carry_key, &snapshot_key] {
        leftovers.object(key);
    }
    if params.format == Format::Xlsx {
        leftovers.object(&data_key(job, params));
    }
    if let Some(cp) = &resumed {
        leftovers.upload(&cp.upload);
    }
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
            leftovers.upload(upload.state());
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
    let beat = |cp: &Checkpoint, phase: Phase| Progress { phase, done: cp.rows, total: cp.total, ..Progress::default() };

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
        let progress = beat(&cp, Phase::Reading);
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
            let progress = beat(&cp, Phase::Continuing);
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
            let progress = beat(&cp, Phase::BuildingXlsx);
            let b = Beat { id: &job.id, attempt: job.attempt, progress: &progress, now: now_ms(), lease_ms: ms(env.settings.lease) };
            if let Err(refused) = env.table.heartbeat(b).await? {
                delete_quietly(&env.store, &data_key(job, params)).await;
                return Ok(Outcome::Stopped(refused));
            }
            let built = build_xlsx(env, job, params, &key, leftovers).await?;
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
    let progress = Progress { phase: Phase::Done, done: cp.rows, total: Some(cp.rows), ..Progress::default() };
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
    if let Err(e) = store.delete(key).await {
        tracing::warn!(key, error = %e, "deleting a temporary object failed");
    }
}

/// Downloads the staged rows to local disk, builds the workbook there, and uploads it in parts.
/// Returns (size, sheets, text cells truncated).
async fn build_xlsx(
    env: &JobEnv,
    job: &JobRecord,
    params: &ExportParams,
    key: &str,
    leftovers: &Leftovers,
) -> Result<(u64, u32, u64), ExportError> {
    let dir = std::env::temp_dir().join(format!("ferry-export-{}", job.id));
    let io = |path: &std::path::Path, e: std::io::Error| ExportError::Io { path: path.display().to_string(), message: e.to_string() };
    tokio::fs::create_dir_all(&dir).await.map_err(|e| io(&dir, e))?;
    let result = async {
        let staged = dir.join("rows.jsonl");
        let out = dir.join("export.xlsx");
        let staged_key = data_key(job, params);
        env.store.download_to_file(&staged_key, &staged).await.map_err(|e| match e {
            DownloadError::S3(e) => ExportError::S3(e),
            DownloadError::Io { path, source } => io(&path, source),
        })?;
        let sheet_rows = env.settings.sheet_rows;
        let (s, o, d) = (staged.clone(), out.clone(), dir.clone());
        let built = tokio::task::spawn_blocking(move || xlsx::build(&s, &o, &d, sheet_rows))
            .await
            .map_err(|e| ExportError::Io { path: out.display().to_string(), message: e.to_string() })??;
        let mut upload = Multipart::begin(&env.store, key, Format::Xlsx.content_type()).await?;
        leftovers.upload(upload.state());
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

#[cfg(test)]
mod tests {
    use ferry_core::jobs::DatasetObject;

    use super::*;

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
}
