//! Job status records and their locks in one DynamoDB table.
//!
//! Items (`pk` is the only key):
//! - job `JOB#{id}`: owner, kind, params (canonical JSON), params_hash, status, attempt, claimed,
//!   claim_token (new with each claim, so a resent claim knows itself), progress (phase, done,
//!   total), lease_expires_at, result, error (a map: `code`, `message`, `request_id`; what the
//!   caller sees, never a cause), checkpoint, created/updated times, retain_until, and `expires_at`,
//!   the TTL attribute (seconds).
//! - lock `LOCK#{owner}#{kind}#{params_hash}`: the job holding it, its lease and when it was
//!   written. Free when absent, when its lease has passed, or when its job is still missing
//!   [`WRITE_GRACE_MS`] after it was written (its submit died between the two writes).
//! - slot `SLOT#{owner}#{k}`, `k` below the per-owner limit: the job holding it and `held_until`.
//!   Free when that job has ended or reads `lost` ([`ferry_core::jobs::slot_is_free`]).
//!
//! The global secondary index `by-owner` (`owner`, `created_key`) lists an owner's jobs newest first.
//! DynamoDB's TTL deletes days late, so every read checks leases and retention in code. Every write
//! that changes a status is conditional on the statuses [`Transition::allowed_from`] names, on the
//! attempt, and on an unexpired lease, so only one worker ever runs an attempt.
//!
//! [`JobTable`]'s methods, by file: `table` (create, submit, reads), `attempt` (claim, keep-alive,
//! heartbeat, checkpoint), `finish` (succeed, fail, cancel, the lost announcement), `lock` (locks
//! and slots); `codec` maps items to [`JobRecord`]s. The worker invoke lives in [`crate::lambda`]
//! and is re-exported here.
//!
//! [`Transition::allowed_from`]: ferry_core::jobs::Transition::allowed_from

mod attempt;
mod codec;
mod finish;
mod lock;
mod table;

use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use ferry_core::jobs::{JobRecord, Progress};

/// The SDK's DynamoDB client, named here so callers hold one without depending on the SDK.
pub use aws_sdk_dynamodb::Client as DynamoClient;
// The invoke moved to `crate::lambda`; its old paths stay.
pub use crate::lambda::{InvokeError, WorkerPayload, invoke_worker};

/// How long a submit may take from its lock (or slot) to its job item; a lock or slot naming a job
/// that is still missing after this was left by a submit that died between the two writes.
pub const WRITE_GRACE_MS: i64 = 30_000;

type HttpResponse = aws_sdk_dynamodb::config::http::HttpResponse;

/// A DynamoDB call that failed. Names the table, the item and the operation.
#[derive(Debug, thiserror::Error)]
#[error("dynamodb table {table}, item {item}: {op} failed: {message}")]
pub struct JobStoreError {
    pub table: String,
    pub item: String,
    pub op: &'static str,
    pub message: String,
}

/// The jobs table.
#[derive(Debug, Clone)]
pub struct JobTable {
    client: DynamoClient,
    table: String,
}

/// A job to create.
#[derive(Debug, Clone)]
pub struct NewJob<'a> {
    pub id: &'a str,
    pub owner: &'a str,
    /// The kind's name.
    pub kind: &'a str,
    /// The params as the kind admitted them.
    pub params: &'a serde_json::Value,
    pub now: i64,
    /// How long the job may stay queued before it reads `lost` (the worker must claim it by then).
    pub start_lease_ms: i64,
    /// How long the record and its file are kept.
    pub retention_ms: i64,
    /// Most jobs the owner may have queued or running at once.
    pub max_running: u32,
}

/// The outcome of [`JobTable::submit`].
#[derive(Debug, Clone, PartialEq)]
pub enum Submitted {
    /// This call took the lock and created the job: start a worker.
    Created(JobRecord),
    /// The same owner already has this export running: no second worker.
    Existing(JobRecord),
    /// Another submit of the same request holds the lock but has not written its job yet.
    Busy { holder: String },
    /// The owner already has `max_running` jobs queued or running; nothing was written.
    Full,
}

/// A job a worker claimed, with where the previous run of it stopped.
#[derive(Debug, Clone, PartialEq)]
pub struct Claimed {
    pub record: JobRecord,
    pub checkpoint: Option<String>,
}

/// Why a claim or heartbeat did not go through.
#[derive(Debug, Clone, PartialEq)]
pub enum Refused {
    /// The job does not exist (or is past its retention).
    Missing,
    /// It was cancelled: stop.
    Cancelled,
    /// Another delivery runs this attempt, it is finished, or its lease passed: stop without touching it.
    NotOurs(Box<JobRecord>),
}

/// What the running worker reports.
#[derive(Debug, Clone, Copy)]
pub struct Beat<'a> {
    pub id: &'a str,
    pub attempt: u32,
    pub progress: &'a Progress,
    pub now: i64,
    pub lease_ms: i64,
}

fn service_code<E: ProvideErrorMetadata>(e: &SdkError<E, HttpResponse>) -> Option<&str> {
    e.as_service_error().and_then(|s| s.code())
}

fn is_condition_failed<E: ProvideErrorMetadata>(e: &SdkError<E, HttpResponse>) -> bool {
    service_code(e) == Some("ConditionalCheckFailedException")
}

impl JobTable {
    pub fn new(client: DynamoClient, table: impl Into<String>) -> JobTable {
        JobTable { client, table: table.into() }
    }

    pub fn name(&self) -> &str {
        &self.table
    }

    pub fn client(&self) -> &DynamoClient {
        &self.client
    }

    fn error<E: ProvideErrorMetadata + std::error::Error + 'static>(
        &self,
        item: &str,
        op: &'static str,
        e: SdkError<E, HttpResponse>,
    ) -> JobStoreError {
        JobStoreError { table: self.table.clone(), item: item.to_owned(), op, message: crate::sdk_message(&e) }
    }

    fn corrupt(&self, item: &str, message: String) -> JobStoreError {
        JobStoreError { table: self.table.clone(), item: item.to_owned(), op: "decode", message }
    }

    /// A conditional write's outcome: `Some` when it went through, `None` when its condition did
    /// not hold (what that means is the caller's: a refusal, a lock held elsewhere), and any other
    /// failure as the error of `op` on `item`.
    fn conditional<T, E: ProvideErrorMetadata + std::error::Error + 'static>(
        &self,
        item: &str,
        op: &'static str,
        out: Result<T, SdkError<E, HttpResponse>>,
    ) -> Result<Option<T>, JobStoreError> {
        match out {
            Ok(o) => Ok(Some(o)),
            Err(e) if is_condition_failed(&e) => Ok(None),
            Err(e) => Err(self.error(item, op, e)),
        }
    }
}
