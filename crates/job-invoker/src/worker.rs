//! The worker Lambda: invoked asynchronously with `{"job_id": ..., "attempt": n}`, it claims that
//! attempt of the job, runs the export, and records the outcome. A duplicate delivery finds the
//! attempt claimed and does nothing; a run that is out of time checkpoints and invokes attempt n+1.
//!
//! A failure is logged in full with the Lambda request id; the job records only what its owner may
//! see ([`ExportError::public`]) and that request id, to quote.

use std::sync::Arc;

use aws_lambda_events::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};
use ferry_aws::jobs::{Beat, JobStoreError, JobTable, Refused};
use ferry_aws::lambda::{InvokeError, Invoker, WorkerPayload};
use ferry_core::jobs::{JobRecord, JobResult, Progress};
use ferry_core::public::{ErrorCode, PublicError};
use lambda_runtime::{Diagnostic, LambdaEvent};
use serde::Serialize;

use crate::kind::{JobEnv, Leftovers, Outcome, RunError, Step};
use crate::lifecycle::{self, Lifecycle};
use crate::settings::{ms, now_ms};

/// State built once per execution environment.
#[derive(Debug, Clone)]
pub struct Worker {
    pub env: JobEnv,
    pub lambda: Invoker,
}

/// What one invocation did.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum WorkerReport {
    Succeeded {
        job_id: String,
        attempt: u32,
        rows: u64,
        key: String,
    },
    /// Handed over to the next attempt.
    Continued {
        job_id: String,
        attempt: u32,
        rows: u64,
    },
    /// The job was cancelled while this run was on it.
    Cancelled {
        job_id: String,
        attempt: u32,
    },
    /// This delivery found nothing to do: a duplicate, a finished job, or one that is no longer its.
    Skipped {
        job_id: String,
        attempt: u32,
        reason: String,
    },
    Failed {
        job_id: String,
        attempt: u32,
        error: PublicError,
    },
}

/// The invocation failed; the job is marked failed when it could be.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("event is not a worker payload: {0}")]
    BadEvent(String),
    #[error(transparent)]
    Store(#[from] JobStoreError),
    #[error("job {job_id}: {source}")]
    Run { job_id: String, source: RunError },
    #[error("job {job_id}: {source}")]
    Continue { job_id: String, source: InvokeError },
}

impl From<WorkerError> for Diagnostic {
    fn from(e: WorkerError) -> Diagnostic {
        let error_type = match &e {
            WorkerError::BadEvent(_) => "BadEvent",
            WorkerError::Store(_) => "StoreError",
            WorkerError::Run { source, .. } => source.kind,
            WorkerError::Continue { .. } => "InvokeError",
        };
        Diagnostic { error_type: error_type.to_owned(), error_message: e.to_string() }
    }
}

/// Lambda's longest timeout, plus a minute for clocks that disagree.
const LONGEST_RUN_MS: i64 = 16 * 60 * 1000;

/// When this run must hand over, in ms since the epoch: the invocation's deadline when it is one
/// (ahead of `now`, and within Lambda's longest timeout), else `Err` with `budget` from `now`. A run
/// that believed a deadline of 0, of the past or in another unit would hand over at once, and every
/// continuation the same: a job that never gets done.
fn believable_deadline(deadline: u64, now: i64, budget: std::time::Duration) -> Result<i64, i64> {
    match i64::try_from(deadline) {
        Ok(d) if d > now && d - now <= LONGEST_RUN_MS => Ok(d),
        _ => Err(now.saturating_add(ms(budget))),
    }
}

/// Handles one delivery.
pub async fn handle(state: &Worker, event: LambdaEvent<serde_json::Value>) -> Result<WorkerReport, WorkerError> {
    let payload: WorkerPayload = serde_json::from_value(event.payload).map_err(|e| WorkerError::BadEvent(e.to_string()))?;
    let request_id = event.context.request_id.clone();
    let stamp = |e: PublicError| if request_id.is_empty() { e } else { e.with_request_id(request_id.clone()) };
    let (job_id, attempt) = (payload.job_id.clone(), payload.attempt);
    let settings = Arc::clone(&state.env.settings);
    let table = &state.env.table;
    let claimed = match table.claim(&job_id, attempt, now_ms(), ms(settings.lease)).await? {
        Ok(c) => c,
        Err(refused) => {
            let reason = describe(&refused);
            tracing::info!(job_id, attempt, reason, "delivery skipped");
            return Ok(match refused {
                Refused::Cancelled => WorkerReport::Cancelled { job_id, attempt },
                _ => WorkerReport::Skipped { job_id, attempt, reason },
            });
        }
    };
    let job = claimed.record;
    tracing::info!(job_id, attempt, kind = job.kind, resumed = claimed.checkpoint.is_some(), "job claimed");
    // Judged once claimed: a budget counts from when this run starts its work.
    let deadline = match believable_deadline(event.context.deadline, now_ms(), settings.run_budget) {
        Ok(d) => d,
        Err(d) => {
            let given = event.context.deadline;
            tracing::warn!(
                job_id,
                attempt,
                given,
                budget_ms = ms(settings.run_budget),
                "the invocation's deadline is not believable; running for FERRY_JOB_RUN_BUDGET_MS"
            );
            d
        }
    };
    let leftovers = Leftovers::default();
    if claimed.checkpoint.is_none() {
        lifecycle::announce(&state.env, Lifecycle::Started, &job).await;
    }
    let Some(kind) = state.env.kinds.get(&job.kind) else {
        // Submitted under a kind this deployment no longer runs.
        let error = stamp(PublicError::new(ErrorCode::Internal, format!("this deployment does not run jobs of kind {:?}", job.kind)));
        tracing::error!(job_id, attempt, kind = job.kind, "unknown job kind; failing the job");
        finish_failed(state, &job, attempt, &error, None).await;
        return Ok(WorkerReport::Failed { job_id, attempt, error });
    };
    // Held until the outcome is recorded: the lease stays alive through steps that report nothing.
    let mut keepalive = Keepalive::start(table.clone(), job_id.clone(), attempt, settings.lease);
    let step = Step { env: &state.env, job: &job, checkpoint: claimed.checkpoint.as_deref(), deadline, leftovers: &leftovers };
    let outcome = tokio::select! {
        biased;
        out = kind.run(step) => out,
        // Cancelled or no longer ours: stop now rather than at the next page (what the run left
        // open is in `leftovers`).
        refused = keepalive.stopped() => Ok(Outcome::Stopped(refused)),
    };
    match outcome {
        Ok(Outcome::Finished { result, progress }) => {
            let beat = Beat { id: &job_id, attempt, progress: &progress, now: now_ms(), lease_ms: ms(settings.lease) };
            match table.succeed(beat, &result).await? {
                Ok(done) => {
                    tracing::info!(job_id, attempt, rows = result.rows, key = result.key, size = result.size, "job succeeded");
                    lifecycle::announce(&state.env, Lifecycle::Succeeded, &done).await;
                    Ok(WorkerReport::Succeeded { job_id, attempt, rows: result.rows, key: result.key })
                }
                Err(refused) => Ok(stopped(job_id, attempt, refused)),
            }
        }
        Ok(Outcome::Continued { done }) => {
            let next = attempt + 1;
            if next > settings.max_continuations {
                let message = format!("the job needs more than {} continuations", settings.max_continuations);
                let error = stamp(PublicError::new(ErrorCode::TooLarge, message));
                tracing::error!(job_id, attempt, request_id, "out of continuations; failing the job");
                // The checkpoint already handed the job to `next`, which will never run: fail it there.
                let _ = table.claim(&job_id, next, now_ms(), ms(settings.lease)).await;
                finish_failed(state, &job, next, &error, None).await;
                leftovers.clean(&state.env.store).await;
                return Ok(WorkerReport::Failed { job_id, attempt, error });
            }
            // The configured name, never the context's ARN: a local runtime hands over a placeholder.
            let function = &settings.worker_function;
            let payload = WorkerPayload { job_id: job_id.clone(), attempt: next };
            if let Err(e) = state.lambda.invoke_event(function, &payload).await {
                tracing::error!(job_id, attempt, request_id, error = %e, "invoking the continuation failed; failing the job");
                let _ = table.claim(&job_id, next, now_ms(), ms(settings.lease)).await;
                finish_failed(state, &job, next, &stamp(PublicError::code(ErrorCode::WorkerUnavailable)), None).await;
                leftovers.clean(&state.env.store).await;
                return Err(WorkerError::Continue { job_id, source: e });
            }
            lifecycle::continued(&job);
            tracing::info!(job_id, attempt, done, "continuing in a new invocation");
            Ok(WorkerReport::Continued { job_id, attempt, rows: done })
        }
        Ok(Outcome::Stopped(refused)) => {
            // Only a cancel ends the job: a delivery that is no longer the job's leaves the uploads
            // to the attempt that is.
            if matches!(refused, Refused::Cancelled) {
                leftovers.clean(&state.env.store).await;
            }
            Ok(stopped(job_id, attempt, refused))
        }
        Err(e) => {
            let public = stamp((*e.public).clone());
            tracing::error!(job_id, attempt, request_id, error = %e, kind = e.kind, code = %public.code, "job failed");
            finish_failed_with(state, &job, attempt, &public, e.progress.as_deref(), e.result.as_deref()).await;
            leftovers.clean(&state.env.store).await;
            Err(WorkerError::Run { job_id, source: e })
        }
    }
}

/// Marks `attempt` of the job failed with `error` (recording `progress` first, when given) and
/// announces it. A store failure is logged: the job then reads lost when its lease ends.
async fn finish_failed(state: &Worker, job: &JobRecord, attempt: u32, error: &PublicError, progress: Option<&Progress>) {
    finish_failed_with(state, job, attempt, error, progress, None).await
}

/// [`finish_failed`], keeping `result` (output the owner may still download) when given.
async fn finish_failed_with(
    state: &Worker,
    job: &JobRecord,
    attempt: u32,
    error: &PublicError,
    progress: Option<&Progress>,
    result: Option<&JobResult>,
) {
    let table = &state.env.table;
    if let Some(progress) = progress {
        let beat = Beat { id: &job.id, attempt, progress, now: now_ms(), lease_ms: ms(state.env.settings.lease) };
        if let Err(e) = table.heartbeat(beat).await {
            tracing::warn!(job_id = job.id, error = %e, "could not record the final progress");
        }
    }
    let failed = match result {
        Some(r) => table.fail_with_result(&job.id, attempt, error, now_ms(), r).await,
        None => table.fail(&job.id, Some(attempt), error, now_ms()).await,
    };
    match failed {
        Ok(Ok(failed)) => lifecycle::announce(&state.env, Lifecycle::Failed, &failed).await,
        Ok(Err(refused)) => tracing::info!(job_id = job.id, reason = describe(&refused), "the job ended otherwise meanwhile"),
        Err(e) => tracing::error!(job_id = job.id, error = %e, "could not mark the job failed; it will read lost when its lease ends"),
    }
}

/// The background heartbeat of a claimed attempt: extends its lease every third of the lease, and
/// reports when the job was cancelled or is no longer this attempt's.
struct Keepalive {
    task: tokio::task::JoinHandle<()>,
    stop: tokio::sync::watch::Receiver<Option<Refused>>,
}

impl Keepalive {
    fn start(table: JobTable, id: String, attempt: u32, lease: std::time::Duration) -> Keepalive {
        let (tx, stop) = tokio::sync::watch::channel(None);
        let every = (lease / 3).max(std::time::Duration::from_millis(100));
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await; // the claim has just set the lease
            loop {
                tick.tick().await;
                match table.keep_alive(&id, attempt, now_ms(), ms(lease)).await {
                    Ok(Ok(_)) => {}
                    // This attempt checkpointed and handed the job on: nothing left to keep alive.
                    Ok(Err(Refused::NotOurs(r))) if r.attempt > attempt => return,
                    Ok(Err(refused)) => {
                        tracing::info!(job_id = id, attempt, reason = describe(&refused), "heartbeat refused; stopping");
                        let _ = tx.send(Some(refused));
                        return;
                    }
                    // Transient: the lease lasts three beats, so the next one may still land.
                    Err(e) => tracing::warn!(job_id = id, attempt, error = %e, "heartbeat failed; retrying at the next beat"),
                }
            }
        });
        Keepalive { task, stop }
    }

    /// Resolves when the job must stop; never, while it may go on.
    async fn stopped(&mut self) -> Refused {
        loop {
            if let Some(refused) = self.stop.borrow().clone() {
                return refused;
            }
            if self.stop.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }
}

impl Drop for Keepalive {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Handles any event the worker function receives: a job delivery, or a batch of records Lambda
/// wrote to the on-failure destination queue about deliveries it gave up on.
pub async fn handle_any(state: &Worker, event: LambdaEvent<serde_json::Value>) -> Result<serde_json::Value, WorkerError> {
    if event.payload.get("Records").is_some() {
        let batch: SqsEvent = serde_json::from_value(event.payload).map_err(|e| WorkerError::BadEvent(e.to_string()))?;
        let response = undelivered(&state.env, batch).await;
        return serde_json::to_value(response).map_err(|e| WorkerError::BadEvent(e.to_string()));
    }
    let report = handle(state, event).await?;
    serde_json::to_value(report).map_err(|e| WorkerError::BadEvent(e.to_string()))
}

/// The part of Lambda's invocation record (on-failure destination) the worker reads.
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct InvocationRecord {
    request_context: RecordContext,
    request_payload: WorkerPayload,
}

#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct RecordContext {
    #[serde(default)]
    request_id: String,
    /// `RetriesExhausted` or `EventAgeExceeded` (the event waited, throttled, past its maximum age).
    #[serde(default)]
    condition: String,
}

/// Fails each job whose delivery Lambda gave up on, and frees its lock, so that it reads `failed`
/// with a reason instead of waiting to read `lost`. Only a store error returns a record to the
/// queue; a record that is not an invocation record is logged and dropped.
pub async fn undelivered(env: &JobEnv, batch: SqsEvent) -> SqsBatchResponse {
    let table = &env.table;
    let mut response = SqsBatchResponse::default();
    for message in batch.records {
        let id = message.message_id.clone().unwrap_or_default();
        let record: InvocationRecord = match serde_json::from_str(message.body.as_deref().unwrap_or_default()) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(message_id = id, error = %e, "not a Lambda invocation record; dropped");
                continue;
            }
        };
        let WorkerPayload { job_id, attempt } = record.request_payload;
        let condition = record.request_context.condition;
        let message = match condition.as_str() {
            "EventAgeExceeded" => "the worker was busy for too long and the job was never started; submit it again",
            _ => "the worker failed on every retry; submit it again",
        };
        let mut error = PublicError::new(ErrorCode::WorkerUnavailable, message);
        if !record.request_context.request_id.is_empty() {
            error = error.with_request_id(record.request_context.request_id);
        }
        match table.fail_undelivered(&job_id, attempt, &error, now_ms()).await {
            Ok(Ok(failed)) => {
                tracing::warn!(job_id, attempt, condition, "Lambda gave up on the delivery; job failed");
                lifecycle::announce(env, Lifecycle::Failed, &failed).await;
            }
            Ok(Err(refused)) => {
                tracing::info!(job_id, attempt, condition, reason = describe(&refused), "undelivered record changes nothing")
            }
            Err(e) => {
                tracing::error!(job_id, attempt, error = %e, "could not fail the undelivered job; retrying the record");
                let mut failure = BatchItemFailure::default();
                failure.item_identifier = id;
                response.batch_item_failures.push(failure);
            }
        }
    }
    response
}

fn stopped(job_id: String, attempt: u32, refused: Refused) -> WorkerReport {
    tracing::info!(job_id, attempt, reason = describe(&refused), "worker stopped");
    match refused {
        Refused::Cancelled => WorkerReport::Cancelled { job_id, attempt },
        other => WorkerReport::Skipped { job_id, attempt, reason: describe(&other) },
    }
}

fn describe(refused: &Refused) -> String {
    match refused {
        Refused::Missing => "no such job".into(),
        Refused::Cancelled => "the job was cancelled".into(),
        Refused::NotOurs(r) => format!(
            "the job is {} at attempt {} (this delivery is a duplicate, late, or its lease passed)",
            r.status_at(now_ms()),
            r.attempt
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn only_a_deadline_ahead_within_lambdas_timeout_is_believed() {
        let now = 1_790_000_000_000;
        let budget = Duration::from_secs(30);
        let check = |deadline: u64, expect: Result<i64, i64>| assert_eq!(believable_deadline(deadline, now, budget), expect, "{deadline}");
        check(now as u64 + 60_000, Ok(now + 60_000));
        check(now as u64 + 15 * 60_000, Ok(now + 15 * 60_000));
        // None, the past, a duration instead of a time, microseconds, more than Lambda allows.
        for bad in [0, now as u64 - 1, now as u64, 900_000, now as u64 * 1000, now as u64 + 17 * 60_000, u64::MAX] {
            check(bad, Err(now + 30_000));
        }
    }
}
