//! The worker Lambda: invoked asynchronously with `{"job_id": ..., "attempt": n}`, it claims that
//! attempt of the job, runs the export, and records the outcome. A duplicate delivery finds the
//! attempt claimed and does nothing; a run that is out of time checkpoints and invokes attempt n+1.
//!
//! A failure is logged in full with the Lambda request id; the job records only what its owner may
//! see ([`ExportError::public`]) and that request id, to quote.

use std::sync::Arc;

use ferry_aws::jobs::{Beat, InvokeError, JobStoreError, Refused, WorkerPayload};
use ferry_core::public::{ErrorCode, PublicError};
use lambda_runtime::{Diagnostic, LambdaEvent};
use serde::Serialize;

use crate::export::{self, ExportEnv, ExportError, Outcome};
use crate::settings::{ms, now_ms};

/// State built once per execution environment.
#[derive(Debug, Clone)]
pub struct Worker {
    pub env: ExportEnv,
    pub lambda: aws_sdk_lambda::Client,
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
    Export { job_id: String, source: ExportError },
    #[error("job {job_id}: {source}")]
    Continue { job_id: String, source: InvokeError },
}

impl From<WorkerError> for Diagnostic {
    fn from(e: WorkerError) -> Diagnostic {
        let error_type = match &e {
            WorkerError::BadEvent(_) => "BadEvent",
            WorkerError::Store(_) => "StoreError",
            WorkerError::Export { source, .. } => source.kind(),
            WorkerError::Continue { .. } => "InvokeError",
        };
        Diagnostic { error_type: error_type.to_owned(), error_message: e.to_string() }
    }
}

/// The deadline of the invocation in ms since the epoch; without one (a local run), the Lambda
/// maximum of 15 minutes from now.
fn deadline_of(ctx: &lambda_runtime::Context) -> i64 {
    if ctx.deadline > 0 { ctx.deadline as i64 } else { now_ms() + 15 * 60 * 1000 }
}

/// Handles one delivery.
pub async fn handle(state: &Worker, event: LambdaEvent<serde_json::Value>) -> Result<WorkerReport, WorkerError> {
    let payload: WorkerPayload = serde_json::from_value(event.payload).map_err(|e| WorkerError::BadEvent(e.to_string()))?;
    let deadline = deadline_of(&event.context);
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
    tracing::info!(job_id, attempt, resumed = claimed.checkpoint.is_some(), "job claimed");
    let outcome = export::run(&state.env, &job, claimed.checkpoint.as_deref(), deadline).await;
    let fail = |error: PublicError| async move {
        if let Err(e) = table.fail(&job.id, Some(attempt), &error, now_ms()).await {
            tracing::error!(job_id = job.id, error = %e, "could not mark the job failed; it will read lost when its lease ends");
        }
    };
    match outcome {
        Ok(Outcome::Finished(result)) => {
            let progress = ferry_core::jobs::Progress { phase: "done".into(), done: result.rows, total: Some(result.rows) };
            let beat = Beat { id: &job_id, attempt, progress: &progress, now: now_ms(), lease_ms: ms(settings.lease) };
            match table.succeed(beat, &result).await? {
                Ok(_) => {
                    tracing::info!(job_id, attempt, rows = result.rows, key = result.key, size = result.size, "export written");
                    Ok(WorkerReport::Succeeded { job_id, attempt, rows: result.rows, key: result.key })
                }
                Err(refused) => Ok(stopped(job_id, attempt, refused)),
            }
        }
        Ok(Outcome::Continued(cp)) => {
            let next = attempt + 1;
            if next > settings.max_continuations {
                let message = format!("the export needs more than {} continuations", settings.max_continuations);
                let error = stamp(PublicError::new(ErrorCode::TooLarge, message));
                tracing::error!(job_id, attempt, request_id, "out of continuations; failing the job");
                // The checkpoint already handed the job to `next`, which will never run: fail it there.
                let _ = table.claim(&job_id, next, now_ms(), ms(settings.lease)).await;
                if let Err(e) = table.fail(&job_id, Some(next), &error, now_ms()).await {
                    tracing::error!(job_id, error = %e, "could not mark the job failed");
                }
                return Ok(WorkerReport::Failed { job_id, attempt, error });
            }
            let function = if event.context.invoked_function_arn.is_empty() {
                settings.worker_function.clone()
            } else {
                event.context.invoked_function_arn.clone()
            };
            let payload = WorkerPayload { job_id: job_id.clone(), attempt: next };
            if let Err(e) = ferry_aws::jobs::invoke_worker(&state.lambda, &function, &payload).await {
                tracing::error!(job_id, attempt, request_id, error = %e, "invoking the continuation failed; failing the job");
                let _ = table.claim(&job_id, next, now_ms(), ms(settings.lease)).await;
                let _ = table.fail(&job_id, Some(next), &stamp(PublicError::code(ErrorCode::WorkerUnavailable)), now_ms()).await;
                return Err(WorkerError::Continue { job_id, source: e });
            }
            tracing::info!(job_id, attempt, rows = cp.rows, partition = cp.partition, "continuing in a new invocation");
            Ok(WorkerReport::Continued { job_id, attempt, rows: cp.rows })
        }
        Ok(Outcome::Stopped(refused)) => Ok(stopped(job_id, attempt, refused)),
        Err(e) => {
            let public = stamp(e.public(&job.params));
            tracing::error!(job_id, attempt, request_id, error = %e, kind = e.kind(), code = %public.code, "export failed");
            fail(public).await;
            Err(WorkerError::Export { job_id, source: e })
        }
    }
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
