//! The `batch` kind: many items sent to an outside HTTP API chosen by name from the deployment's
//! targets, with at most `max_concurrency` calls in flight, calls started no faster than the rate,
//! retries with backoff on 429/5xx/timeouts (honouring `Retry-After`), and a failure tolerance.
//!
//! Items come inline or from an item file (CSV or JSON lines) at an allowed dataset location, read
//! by ranges pinned to the ETag the API recorded at submit, so memory follows the concurrency and
//! not the item count. Every call carries `Idempotency-Key: {job_id}:{seq}` of its first item.
//!
//! Results are written in input order whatever the completion order ([`Reorder`]): one line per
//! item (seq, id, status, HTTP status, attempts, bounded response, error) into a multipart upload,
//! and every item that did not succeed into a `failed.jsonl` that is itself an item file
//! (`{"retry_of": id}` runs exactly those).
//!
//! Out of time, the run stops starting calls, waits for those in flight (each bounded by its
//! timeout), and hands over: the checkpoint holds the read position, the next seq to write, the
//! uploads, and a staged object with the bytes not yet uploaded, the results that finished ahead
//! of a gap, and the items still waiting for a retry. An item recorded as done is never sent again.

mod call;
mod run;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ferry_aws::s3::{Fetched, Pinned, Store};
use ferry_core::batch::{BatchParams, ItemFormat, ItemReader, Items, ReadCursor, Target};
use ferry_core::jobs::{JobRecord, Status, SubmitError};
use futures::future::BoxFuture;
use serde_json::Value;

use crate::kind::{Admission, AdmitError, Kind, Outcome, RunError, Step};
use crate::settings::JobSettings;

pub use call::{CallResult, send};

/// Bytes of an item file read per range request.
pub const CHUNK_BYTES: u64 = 8 * 1024 * 1024;

/// The `batch` kind.
#[derive(Debug, Clone, Copy)]
pub struct Batch;

/// What calling targets needs, built once per execution environment.
#[derive(Debug, Clone)]
pub struct BatchEnv {
    pub http: reqwest::Client,
    /// Per target, its secret headers with their values (read once at start).
    pub secret_headers: BTreeMap<String, Vec<(String, ferry_aws::secrets::Secret)>>,
}

impl BatchEnv {
    /// A client that never follows redirects (a target cannot bounce calls elsewhere) and the
    /// secret headers given.
    pub fn new(_settings: &JobSettings, secret_headers: BTreeMap<String, Vec<(String, ferry_aws::secrets::Secret)>>) -> BatchEnv {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(ferry_core::batch::MAX_CONCURRENCY as usize)
            .build()
            .unwrap_or_default();
        BatchEnv { http, secret_headers }
    }

    /// [`BatchEnv::new`] with every target's secret headers read from SSM. A missing parameter
    /// refuses to start, naming the target and header (never the value).
    pub async fn load(conf: &ferry_aws::SdkConfig, settings: &JobSettings) -> Result<BatchEnv, String> {
        let ssm = ferry_aws::secrets::ssm(conf);
        let mut resolved = BTreeMap::new();
        for (name, target) in &settings.batch_targets {
            let mut headers = Vec::new();
            for (header, parameter) in &target.secret_headers {
                let value = ferry_aws::secrets::read_parameter(&ssm, parameter)
                    .await
                    .map_err(|e| format!("target {name}, header {header}: {e}"))?;
                headers.push((header.clone(), value));
            }
            resolved.insert(name.clone(), headers);
        }
        Ok(BatchEnv::new(settings, resolved))
    }
}

/// The params of a stored batch job.
fn stored(job: &JobRecord) -> Result<BatchParams, RunError> {
    BatchParams::deserialize_stored(&job.params).map_err(|e| RunError::internal("BadParams", e))
}

/// Where a batch's failed items are written (and `retry_of` reads them).
pub fn failed_key(owner: &str, id: &str) -> String {
    ferry_core::jobs::output_key(owner, id, "failed.jsonl")
}

/// Reads an item file whole, range by range, checking every record; returns (ETag, size, items).
/// A malformed record is a 400 naming its line.
async fn check_item_file(store: &Store, key: &str, format: ItemFormat, cap: u64, field: &str) -> Result<(String, u64, u64), AdmitError> {
    let gone = || AdmitError::Bad(SubmitError::new(field, "no such item file, or it may not be read"));
    let head = match store.head(key).await {
        Ok(Some(h)) => h,
        Ok(None) => return Err(gone()),
        Err(e) if e.is_missing_or_denied() => return Err(gone()),
        Err(e) => return Err(AdmitError::Unavailable(e.to_string())),
    };
    if head.size > cap {
        return Err(SubmitError::new(field, format!("the item file is {} bytes, over the limit of {cap}", head.size)).into());
    }
    let mut reader = ItemReader::new(format, ReadCursor::default());
    let mut count = 0u64;
    let mut offset = 0u64;
    let bad = |e: ferry_core::batch::ItemError| AdmitError::Bad(SubmitError::new("params.items", e.to_string()));
    while offset < head.size {
        let end = (offset + CHUNK_BYTES).min(head.size);
        let body = match store.get_range_if_match(key, offset, end, &head.etag).await {
            Ok(Pinned::Read(Fetched::Object(o))) => o.body,
            Ok(Pinned::Changed) => {
                return Err(SubmitError::new(field, "the item file changed while it was being read; submit again").into());
            }
            Ok(_) => return Err(gone()),
            Err(e) if e.is_missing_or_denied() => return Err(gone()),
            Err(e) => return Err(AdmitError::Unavailable(e.to_string())),
        };
        offset = end;
        reader.push(&body);
        while let Some(item) = reader.next_item() {
            item.map_err(bad)?;
            count += 1;
        }
    }
    while let Some(item) = reader.finish() {
        item.map_err(bad)?;
        count += 1;
    }
    if count == 0 {
        return Err(SubmitError::new("params.items", "the item file holds no items").into());
    }
    Ok((head.etag, head.size, count))
}

/// The target named by `params`, or the 400 naming the known ones.
fn target<'s>(settings: &'s JobSettings, params: &BatchParams) -> Result<&'s Target, SubmitError> {
    settings.batch_targets.get(&params.target).ok_or_else(|| {
        let known: Vec<&str> = settings.batch_targets.keys().map(String::as_str).collect();
        let known = if known.is_empty() { "none are configured".to_owned() } else { format!("known: {}", known.join(", ")) };
        SubmitError::new("params.target", format!("unknown target {:?}; {known}", params.target))
    })
}

impl Kind for Batch {
    fn name(&self) -> &'static str {
        ferry_core::batch::KIND
    }

    /// Valid params, a configured target, and items that are there and well formed: an item file
    /// must be at an allowed dataset location and is read whole, so a bad line is a 400 now rather
    /// than a failed job later. Its ETag, size and count are stored: the job runs that version.
    fn admit<'a>(&'a self, at: Admission<'a>, params: Value) -> BoxFuture<'a, Result<Value, AdmitError>> {
        Box::pin(async move {
            let mut params = BatchParams::parse(params)?;
            let settings = &at.env.settings;
            let target = target(settings, &params)?;
            let most = target.max_concurrency.unwrap_or(ferry_core::batch::MAX_CONCURRENCY);
            if params.max_concurrency > most {
                let message = format!("target {:?} allows at most {most} calls in flight, got {}", params.target, params.max_concurrency);
                return Err(SubmitError::new("params.max_concurrency", message).into());
            }
            if let Items::Object { bucket, key, format, etag, size, count } = &mut params.items {
                let (b, k) = admit_location(settings, bucket, key).inspect_err(|_| {
                    tracing::warn!(owner = at.owner, request_id = at.request_id, bucket = %bucket, key = %key, "item file refused by the allowlist");
                })?;
                let store = Store::new(at.env.s3.clone(), b.clone());
                let (e, s, c) = check_item_file(&store, &k, *format, settings.batch_max_item_file_bytes, "params.items.key").await?;
                (*bucket, *key, *etag, *size, *count) = (b, k, Some(e), Some(s), Some(c));
            }
            Ok(params.to_value())
        })
    }

    /// The first job's params with its failed items as the items: only those run again.
    fn retry<'a>(&'a self, at: Admission<'a>, first: &'a JobRecord) -> BoxFuture<'a, Result<Value, AdmitError>> {
        Box::pin(async move {
            if first.status.is_active() {
                return Err(SubmitError::new("retry_of", format!("the job is still {}; retry it once it has ended", first.status)).into());
            }
            if first.status == Status::Cancelled {
                return Err(SubmitError::new("retry_of", "the job was cancelled; submit it again instead").into());
            }
            let mut params = stored(first).map_err(|e| AdmitError::Unavailable(e.to_string()))?;
            target(&at.env.settings, &params)?;
            let key = failed_key(&first.owner, &first.id);
            let cap = at.env.settings.batch_max_item_file_bytes;
            let (etag, size, count) = match check_item_file(&at.env.store, &key, ItemFormat::Jsonl, cap, "retry_of").await {
                Ok(found) => found,
                Err(AdmitError::Bad(e)) if e.field == "retry_of" || e.message.contains("no items") => {
                    return Err(SubmitError::new("retry_of", "the job left no failed items to retry").into());
                }
                Err(e) => return Err(e),
            };
            params.items = Items::Object {
                bucket: at.env.store.bucket().to_owned(),
                key,
                format: ItemFormat::Jsonl,
                etag: Some(etag),
                size: Some(size),
                count: Some(count),
            };
            params.retry_of = Some(first.id.clone());
            Ok(params.to_value())
        })
    }

    fn run<'a>(&'a self, step: Step<'a>) -> BoxFuture<'a, Result<Outcome, RunError>> {
        Box::pin(async move {
            let params = stored(step.job)?;
            // The API checked the target and the item file's location; the settings may have changed since.
            let target = target(&step.env.settings, &params)
                .map_err(|e| {
                    RunError::new(
                        "UnknownTarget",
                        ferry_core::public::PublicError::code(ferry_core::public::ErrorCode::BadRequest).with_field("params.target"),
                        e,
                    )
                })?
                .clone();
            if let Items::Object { bucket, key, .. } = &params.items {
                let own_failed = params
                    .retry_of
                    .as_ref()
                    .is_some_and(|first| *bucket == step.env.store.bucket() && *key == failed_key(&step.job.owner, first));
                if !own_failed {
                    admit_location(&step.env.settings, bucket, key).map_err(|e| {
                        RunError::new(
                            "SourceRefused",
                            ferry_core::public::PublicError::code(ferry_core::public::ErrorCode::SourceUnavailable),
                            e,
                        )
                    })?;
                }
            }
            run::run(step, &params, &target).await
        })
    }

    fn download_name(&self, job: &JobRecord, file: Option<&str>) -> String {
        match file {
            None => {
                let ext = job.result.as_ref().and_then(|r| r.key.rsplit_once('.')).map_or("jsonl", |(_, e)| e);
                format!("{}.results.{ext}", job.id)
            }
            Some(name) => format!("{}.{name}.jsonl", job.id),
        }
    }

    fn describe(&self, params: &Value) -> BTreeMap<&'static str, Value> {
        let mut d = BTreeMap::new();
        for k in ["target", "max_concurrency", "items_per_request"] {
            if let Some(v) = params.get(k) {
                d.insert(k, v.clone());
            }
        }
        d
    }
}

/// An item file's (bucket, key) when it lies at an allowed dataset location (normalised as the
/// export allowlist normalises a prefix); else the 400 naming the field.
fn admit_location(settings: &JobSettings, bucket: &str, key: &str) -> Result<(String, String), SubmitError> {
    let source =
        ferry_core::jobs::Source::S3 { bucket: bucket.to_owned(), prefix: key.to_owned(), format: ferry_core::jobs::DatasetFormat::Csv };
    let field = |e: SubmitError| {
        SubmitError::new(e.field.replace("params.source.prefix", "params.items.key").replace("params.source", "params.items"), e.message)
    };
    if let Err(e) = ferry_core::sources::normalize_prefix(key) {
        return Err(SubmitError::new("params.items.key", e.to_string()));
    }
    match settings.source_policy().admit(&source).map_err(field)? {
        ferry_core::jobs::Source::S3 { bucket, prefix, .. } if !prefix.is_empty() && !prefix.ends_with('/') => Ok((bucket, prefix)),
        _ => Err(SubmitError::new("params.items.key", "must name one object")),
    }
}

/// Shared, read-only state of one run's calls.
#[derive(Debug)]
pub struct CallCtx {
    pub env: Arc<BatchEnv>,
    pub target: Target,
    pub target_name: String,
    pub job_id: String,
    pub timeout: Duration,
}
