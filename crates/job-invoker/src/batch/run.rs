//! One attempt of a batch: dispatch, retry, write in order, and hand over or finish.
//!
//! The items come from `source.rs`; the results and failed items go out through `outputs.rs`.

mod outputs;
mod source;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ferry_aws::exports::{Multipart, MultipartState};
use ferry_aws::s3::{Fetched, NewObject};
use ferry_core::batch::{BatchParams, Item, ItemResult, ItemStatus, Items, OutputFormat, ReadCursor, Reorder, Target, Verdict};
use ferry_core::jobs::{JobResult, OutputFile, Phase, Progress};
use ferry_core::public::{ErrorCode, PublicError};
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use serde::{Deserialize, Serialize};

use super::{CallCtx, CallResult, failed_key, send};
use crate::kind::{Outcome, RunError, Step};
use outputs::{Outputs, Uploader};
use source::Source;

/// How often progress (counts by state) is written while the batch runs.
const REPORT_EVERY: Duration = Duration::from_secs(1);

/// Where a continuation picks up.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Checkpoint {
    /// The next item not yet taken from the input.
    cursor: ReadCursor,
    /// The next seq to write to the results.
    head: u64,
    succeeded: u64,
    failed: u64,
    /// Lines in the failed file so far.
    failed_rows: u64,
    results: MultipartState,
    failed_upload: MultipartState,
    /// The staging object holding [`Carried`].
    carry: Option<String>,
}

/// What an attempt hands over beside the checkpoint (too large for the job's item).
#[derive(Debug, Default, Serialize, Deserialize)]
struct Carried {
    /// Encoded results and failed lines not yet uploaded (less than a part each).
    results: String,
    failed: String,
    /// Results that finished ahead of an unfinished item.
    waiting: Vec<Done>,
    /// Items taken but not finished: waiting for a retry.
    unfinished: Vec<Pending>,
}

/// A finished item, waiting for its turn in the results.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Done {
    result: ItemResult,
    /// The item, kept only when it goes to the failed file.
    item: Option<Item>,
}

/// Items sent together, and how often they were tried.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Pending {
    items: Vec<Item>,
    tries: u32,
    /// The last answer, recorded if no further try is made.
    last_status: Option<u16>,
    last_body: Option<String>,
    last_error: Option<String>,
}

/// Why the dispatching stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    HandOver,
    TooManyFailures,
}

/// A small xorshift generator for backoff jitter: retries of many items must not line up, and
/// nothing here needs more than that.
struct Jitter(u64);

impl Jitter {
    fn next(&mut self) -> f64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn s3_failed(e: ferry_aws::S3Error) -> RunError {
    RunError::internal("S3Error", e)
}

fn counts(total: u64, cp: &Checkpoint, running: u64, retrying: u64) -> BTreeMap<String, u64> {
    let pending = total.saturating_sub(cp.succeeded + cp.failed + running + retrying);
    BTreeMap::from([
        ("pending".to_owned(), pending),
        ("running".to_owned(), running),
        ("succeeded".to_owned(), cp.succeeded),
        ("failed".to_owned(), cp.failed),
        ("retrying".to_owned(), retrying),
    ])
}

fn finished_item(item: Item, status: ItemStatus, p: &Pending) -> Done {
    let result = ItemResult {
        seq: item.seq,
        id: item.id.clone(),
        status,
        http_status: p.last_status,
        attempts: p.tries,
        response: p.last_body.clone(),
        error: p.last_error.clone(),
    };
    Done { result, item: (status != ItemStatus::Succeeded).then_some(item) }
}

type InFlight<'a> = FuturesUnordered<BoxFuture<'a, (Pending, CallResult)>>;

/// Runs (or resumes) a batch until it is done, out of time, failed beyond its tolerance, or stopped.
pub(super) async fn run(step: Step<'_>, params: &BatchParams, target: &Target) -> Result<Outcome, RunError> {
    let env = step.env;
    let job = step.job;
    let settings = &env.settings;
    let total = match &params.items {
        Items::Inline(values) => values.len() as u64,
        Items::Object { count, .. } => count.unwrap_or(0),
    };
    let results_name = match params.output {
        OutputFormat::Jsonl => "results.jsonl",
        OutputFormat::Csv => "results.csv",
    };
    let results_key = ferry_core::jobs::output_key(&job.owner, &job.id, results_name);
    let carry_key = ferry_core::jobs::staging_object(&job.owner, &job.id, "batch.carry");
    // Named before it may exist: deleting a carry never written is harmless.
    step.leftovers.object(&carry_key);

    let (mut cp, carried) = match step.checkpoint {
        Some(text) => {
            let cp: Checkpoint = serde_json::from_str(text).map_err(|e| RunError::internal("BadCheckpoint", e))?;
            step.leftovers.upload(&cp.results);
            step.leftovers.upload(&cp.failed_upload);
            let carried = match &cp.carry {
                Some(key) => match env.store.get_capped(key, u64::MAX).await.map_err(s3_failed)? {
                    Fetched::Object(o) => serde_json::from_slice(&o.body).map_err(|e| RunError::internal("BadCheckpoint", e))?,
                    _ => return Err(RunError::internal("BadCheckpoint", format!("the carried state {key} is gone"))),
                },
                None => Carried::default(),
            };
            (cp, carried)
        }
        None => {
            let content_type = match params.output {
                OutputFormat::Jsonl => "application/x-ndjson",
                OutputFormat::Csv => "text/csv",
            };
            let results = Multipart::begin(&env.store, &results_key, content_type).await.map_err(s3_failed)?;
            step.leftovers.upload(results.state());
            let failed = Multipart::begin(&env.store, &failed_key(&job.owner, &job.id), "application/x-ndjson").await.map_err(s3_failed)?;
            step.leftovers.upload(failed.state());
            let mut carried = Carried::default();
            if params.output == OutputFormat::Csv {
                carried.results = String::from_utf8_lossy(ferry_core::batch::results_csv_header()).into_owned();
            }
            let cp = Checkpoint {
                cursor: ReadCursor::default(),
                head: 0,
                succeeded: 0,
                failed: 0,
                failed_rows: 0,
                results: results.state().clone(),
                failed_upload: failed.state().clone(),
                carry: None,
            };
            (cp, carried)
        }
    };
    let mut out = Outputs {
        format: params.output,
        results: Uploader::new(Multipart::resume(&env.store, cp.results.clone())),
        results_buf: carried.results.into_bytes(),
        failed: Uploader::new(Multipart::resume(&env.store, cp.failed_upload.clone())),
        failed_buf: carried.failed.into_bytes(),
        failed_rows: cp.failed_rows,
        part_bytes: settings.part_bytes,
    };
    let mut reorder: Reorder<Done> = Reorder::new(cp.head);
    for done in carried.waiting {
        reorder.insert(done.result.seq, done);
    }
    // Carried items are due at once: their backoff was spent waiting for the hand-over.
    let mut retries: Vec<(tokio::time::Instant, Pending)> =
        carried.unfinished.into_iter().map(|p| (tokio::time::Instant::now(), p)).collect();
    let mut source = Source::open(&step, params, &cp.cursor)?;
    let ctx = Arc::new(CallCtx {
        env: Arc::clone(&env.batch),
        target: target.clone(),
        target_name: params.target.clone(),
        job_id: job.id.clone(),
        timeout: Duration::from_millis(params.timeout_ms),
    });
    let interval = params.interval();
    let tolerance = params.tolerance();
    let per_call = params.items_per_request.max(1) as usize;
    let concurrency = params.max_concurrency.max(1) as usize;
    // Results held for an unfinished item, plus items in flight or waiting to retry: memory is
    // bounded by this, not by the item count. Wide enough that one item waiting out a Retry-After
    // does not stall the others (a result line is about a hundred bytes to a few KB).
    let window = (concurrency * per_call * 16).clamp(1024, 50_000) as u64;
    // Hand over early enough that every call in flight can still end within the invocation.
    let hand_over_ms = crate::settings::ms(settings.continue_margin) + params.timeout_ms as i64;
    // Seeded per job and attempt (FNV-1a): two jobs' retries do not line up either.
    let seed = job.id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    let mut jitter = Jitter((seed ^ u64::from(job.attempt)) | 1);
    let mut in_flight: InFlight<'_> = FuturesUnordered::new();
    let mut running = 0u64;
    let mut retrying: u64 = retries.iter().map(|(_, p)| p.items.len() as u64).sum();
    let mut exhausted = false;
    let mut stop: Option<Stop> = None;
    let mut next_start = tokio::time::Instant::now();
    let mut last_report = tokio::time::Instant::now();

    let outcome = loop {
        while let Some(done) = reorder.pop_ready() {
            out.write(&done).await?;
        }
        if stop.is_none() && cp.failed > 0 && tolerance.exceeded(cp.failed, total) {
            tracing::warn!(job_id = job.id, failed = cp.failed, total, "failures past the tolerance; sending no more items");
            stop = Some(Stop::TooManyFailures);
        }
        if stop.is_none() && step.deadline - crate::settings::now_ms() < hand_over_ms {
            stop = Some(Stop::HandOver);
        }
        if in_flight.is_empty() {
            match stop {
                Some(s) => break s,
                None if exhausted && retries.is_empty() => break Stop::HandOver,
                None => {}
            }
        }
        let mut wake: Option<tokio::time::Instant> = None;
        if stop.is_none() {
            while in_flight.len() < concurrency {
                let now = tokio::time::Instant::now();
                if now < next_start {
                    wake = Some(next_start);
                    break;
                }
                let due = retries.iter().position(|(at, _)| *at <= now);
                let pending = if let Some(i) = due {
                    let (_, p) = retries.swap_remove(i);
                    retrying -= p.items.len() as u64;
                    p
                } else if !exhausted && reorder.waiting() as u64 + running + retrying < window {
                    let mut items = Vec::with_capacity(per_call);
                    while items.len() < per_call {
                        match source.next().await? {
                            Some(item) => items.push(item),
                            None => {
                                exhausted = true;
                                break;
                            }
                        }
                    }
                    if items.is_empty() {
                        break;
                    }
                    Pending { items, tries: 0, last_status: None, last_body: None, last_error: None }
                } else {
                    wake = retries.iter().map(|(at, _)| *at).min();
                    break;
                };
                running += pending.items.len() as u64;
                next_start = now + interval;
                let ctx = Arc::clone(&ctx);
                in_flight.push(Box::pin(async move {
                    let result = send(&ctx, &pending.items).await;
                    (pending, result)
                }));
            }
            if in_flight.len() < concurrency
                && let Some(at) = retries.iter().map(|(at, _)| *at).min()
            {
                wake = Some(wake.map_or(at, |w| w.min(at)));
            }
        }
        let report_at = last_report + REPORT_EVERY;
        let wake_at = wake.map_or(report_at, |w| w.min(report_at));
        tokio::select! {
            Some((mut pending, result)) = in_flight.next(), if !in_flight.is_empty() => {
                let n = pending.items.len() as u64;
                running -= n;
                pending.tries += 1;
                pending.last_status = match result.outcome {
                    ferry_core::batch::CallOutcome::Status(s) => Some(s),
                    _ => None,
                };
                pending.last_body = result.body.clone();
                pending.last_error = result.error.clone();
                let verdict = ferry_core::batch::classify(result.outcome);
                match verdict {
                    Verdict::Retry if pending.tries < params.max_attempts => {
                        let delay = ferry_core::batch::retry_delay(pending.tries, result.retry_after, jitter.next());
                        retrying += n;
                        retries.push((tokio::time::Instant::now() + delay, pending));
                    }
                    _ => {
                        let status = if verdict == Verdict::Succeeded { ItemStatus::Succeeded } else { ItemStatus::Failed };
                        if status == ItemStatus::Succeeded { cp.succeeded += n } else { cp.failed += n }
                        for item in std::mem::take(&mut pending.items) {
                            let done = finished_item(item, status, &pending);
                            reorder.insert(done.result.seq, done);
                        }
                    }
                }
            }
            _ = tokio::time::sleep_until(wake_at) => {}
        }
        if last_report.elapsed() >= REPORT_EVERY {
            last_report = tokio::time::Instant::now();
            let progress = Progress {
                phase: Phase::Calling,
                done: cp.succeeded + cp.failed,
                total: Some(total),
                counts: counts(total, &cp, running, retrying),
            };
            if let Err(refused) = step.report(&progress).await? {
                drop(in_flight);
                out.abandon(&env.store, &carry_key).await;
                return Ok(Outcome::Stopped(refused));
            }
        }
    };
    drop(in_flight);

    let work_left = !exhausted || !retries.is_empty() || reorder.waiting() > 0;
    if outcome == Stop::HandOver && work_left {
        // Hand over: what is not uploaded, the results ahead of a gap and the items to retry
        // go to a staging object; the checkpoint names it.
        let carried = Carried {
            results: String::from_utf8_lossy(&out.results_buf).into_owned(),
            failed: String::from_utf8_lossy(&out.failed_buf).into_owned(),
            waiting: reorder.drain_waiting().into_iter().map(|(_, d)| d).collect(),
            unfinished: retries.into_iter().map(|(_, p)| p).collect(),
        };
        let body = serde_json::to_vec(&carried).map_err(|e| RunError::internal("BadCheckpoint", e))?;
        env.store.put(&carry_key, NewObject { body, content_type: "application/json", ..Default::default() }).await.map_err(s3_failed)?;
        cp.carry = Some(carry_key.clone());
        cp.cursor = source.cursor();
        cp.head = reorder.next();
        cp.failed_rows = out.failed_rows;
        cp.results = out.results.settle().await?.state().clone();
        cp.failed_upload = out.failed.settle().await?.state().clone();
        let retrying = carried.unfinished.iter().map(|p| p.items.len() as u64).sum();
        let progress = Progress {
            phase: Phase::Continuing,
            done: cp.succeeded + cp.failed,
            total: Some(total),
            counts: counts(total, &cp, 0, retrying),
        };
        let text = serde_json::to_string(&cp).map_err(|e| RunError::internal("BadCheckpoint", e))?;
        return match step.hand_over(&progress, &text).await? {
            Ok(()) => Ok(Outcome::Continued { done: cp.succeeded + cp.failed }),
            Err(refused) => {
                out.abandon(&env.store, &carry_key).await;
                Ok(Outcome::Stopped(refused))
            }
        };
    }

    let mut skipped = 0u64;
    if outcome == Stop::TooManyFailures {
        // The rest are not sent: each is written as skipped, and goes to the failed file so that
        // `retry_of` runs it.
        // `reorder` puts them in input order.
        for (_, mut p) in retries {
            for item in std::mem::take(&mut p.items) {
                skipped += 1;
                let done = finished_item(item, ItemStatus::Skipped, &p);
                reorder.insert(done.result.seq, done);
            }
        }
        while let Some(done) = reorder.pop_ready() {
            out.write(&done).await?;
        }
        let never = Pending { items: Vec::new(), tries: 0, last_status: None, last_body: None, last_error: None };
        while let Some(item) = source.next().await? {
            skipped += 1;
            reorder.insert(item.seq, finished_item(item, ItemStatus::Skipped, &never));
            while let Some(done) = reorder.pop_ready() {
                out.write(&done).await?;
            }
        }
    }
    while let Some(done) = reorder.pop_ready() {
        out.write(&done).await?;
    }
    let written = reorder.next();
    let Outputs { results, results_buf, failed, failed_buf, failed_rows, .. } = out;
    let size = results.finish().await?.complete(results_buf).await.map_err(s3_failed)?;
    let failed = failed.finish().await?;
    let mut files = BTreeMap::new();
    if failed_rows > 0 {
        let failed_size = failed.complete(failed_buf).await.map_err(s3_failed)?;
        let key = failed_key(&job.owner, &job.id);
        files.insert("failed".to_owned(), OutputFile { key, size: failed_size, rows: failed_rows });
    } else if let Err(e) = failed.abort().await {
        tracing::warn!(error = %e, "abandoning the empty failed file's upload failed; the lifecycle rule cleans it up");
    }
    if cp.carry.is_some()
        && let Err(e) = env.store.delete(&carry_key).await
    {
        tracing::warn!(key = carry_key, error = %e, "deleting the carried state failed");
    }
    let mut final_counts = counts(total, &cp, 0, 0);
    final_counts.insert("skipped".into(), skipped);
    final_counts.insert("pending".into(), 0);
    let result = JobResult {
        bucket: env.store.bucket().to_owned(),
        key: results_key,
        size,
        rows: written,
        sheets: 1,
        truncated_cells: 0,
        files,
        counts: final_counts.clone(),
    };
    let progress = Progress { phase: Phase::Done, done: cp.succeeded + cp.failed, total: Some(total), counts: final_counts };
    tracing::info!(job_id = job.id, succeeded = cp.succeeded, failed = cp.failed, skipped, "batch finished");
    if outcome == Stop::TooManyFailures {
        let allowed = match (tolerance.count, tolerance.percent) {
            (Some(c), Some(p)) => format!("{c} items or {p}%"),
            (Some(c), None) => format!("{c} items"),
            (None, Some(p)) => format!("{p}%"),
            (None, None) => "none".into(),
        };
        let message = format!(
            "{} of {total} items failed, more than the job tolerates ({allowed}); {skipped} were not sent. \
             The results and the failed items are in the job's files; {{\"retry_of\": \"{}\"}} runs the failed ones again",
            cp.failed, job.id
        );
        let mut e = RunError::new(
            "TooManyFailures",
            PublicError::new(ErrorCode::TooManyFailures, message),
            format!("{} of {total} items failed", cp.failed),
        );
        e.progress = Some(Box::new(progress));
        e.result = Some(Box::new(result));
        return Err(e);
    }
    Ok(Outcome::Finished { result, progress })
}
