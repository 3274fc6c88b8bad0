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
//! attempt, and on an unexpired lease, so only one worker ever runs an attempt; the status and phase
//! it sets are the transition's ([`Transition::target`], [`Transition::phase`]), and a submit writes
//! [`JobRecord::queued`]. Conditional writes go through [`crate::dynamo::Written`].
//!
//! [`JobTable`]'s methods, by file: `table` (create, submit, reads), `attempt` (claim, keep-alive,
//! heartbeat, checkpoint), `finish` (succeed, fail, cancel, the lost announcement), `lock` (locks
//! and slots); `codec` maps items to [`JobRecord`]s. The worker invoke lives in [`crate::lambda`]
//! and is re-exported here.
//!
//! [`Transition::allowed_from`]: ferry_core::jobs::Transition::allowed_from
//! [`Transition::target`]: ferry_core::jobs::Transition::target
//! [`Transition::phase`]: ferry_core::jobs::Transition::phase

mod attempt;
mod codec;
mod finish;
mod lock;
mod table;

use ferry_core::jobs::{JobRecord, Progress};

/// The SDK's DynamoDB client, named here so callers hold one without depending on the SDK.
pub use crate::dynamo::DynamoClient;
use crate::dynamo::{self, Written};
use crate::error::SdkError;
// The invoke moved to `crate::lambda`; its old paths stay.
pub use crate::lambda::{InvokeError, WorkerPayload, invoke_worker};

/// How long a submit may take from its lock (or slot) to its job item; a lock or slot naming a job
/// that is still missing after this was left by a submit that died between the two writes.
pub const WRITE_GRACE_MS: i64 = 30_000;

/// A call on the jobs table that failed, or an item it could not read. The [`crate::Error`] names
/// the table, the item and the operation.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct JobStoreError(#[from] pub crate::Error);

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

impl JobTable {
    pub fn new(client: DynamoClient, table: impl Into<String>) -> JobTable {
        JobTable { client, table: table.into() }
    }

    pub fn name(&self) -> &str {
        &self.table
    }

    fn error<E, R>(&self, item: &str, op: &'static str, e: SdkError<E, R>) -> JobStoreError
    where
        E: aws_sdk_dynamodb::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
        R: std::fmt::Debug + Send + Sync + 'static,
    {
        JobStoreError(dynamo::error(op, &dynamo::item_resource(&self.table, item), e))
    }

    fn corrupt(&self, item: &str, message: String) -> JobStoreError {
        JobStoreError(crate::Error::other("DynamoDB", "decode", dynamo::item_resource(&self.table, item), message))
    }

    /// A conditional write's outcome; any failure but its condition as the error of `op` on `item`.
    fn conditional<T, E, R>(&self, item: &str, op: &'static str, out: Result<T, SdkError<E, R>>) -> Result<Written<T>, JobStoreError>
    where
        E: aws_sdk_dynamodb::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
        R: std::fmt::Debug + Send + Sync + 'static,
    {
        Ok(dynamo::written(op, &dynamo::item_resource(&self.table, item), out)?)
    }
}
