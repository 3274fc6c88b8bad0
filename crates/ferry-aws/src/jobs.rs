//! Job status records and their locks in one DynamoDB table, and the asynchronous worker invoke.
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

use std::collections::HashMap;

use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection, ProjectionType,
    ReturnValue, ScalarAttributeType, TimeToLiveSpecification,
};
use ferry_core::jobs::{JobRecord, JobResult, ListCursor, Progress, Status, Transition, canonical_json, params_hash};
use ferry_core::public::{ErrorCode, PublicError};

/// The SDK's DynamoDB client, named here so callers hold one without depending on the SDK.
pub use aws_sdk_dynamodb::Client as DynamoClient;

const BY_OWNER: &str = "by-owner";
/// How many times a submit re-reads after its lock changed under it.
const SUBMIT_ATTEMPTS: u32 = 8;
/// How many times a submit that found the lock looks for the holder's job before calling the lock stale.
const HOLDER_POLLS: u32 = 25;
/// How long a submit may take from its lock (or slot) to its job item; a lock or slot naming a job
/// that is still missing after this was left by a submit that died between the two writes.
pub const WRITE_GRACE_MS: i64 = 30_000;

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

/// One write to a running attempt: its lease always, progress and a hand-over when given.
struct RunningUpdate<'a> {
    id: &'a str,
    attempt: u32,
    now: i64,
    lease_ms: i64,
    progress: Option<&'a Progress>,
    checkpoint: Option<&'a str>,
}

impl<'a> RunningUpdate<'a> {
    fn of(beat: Beat<'a>, checkpoint: Option<&'a str>) -> RunningUpdate<'a> {
        RunningUpdate {
            id: beat.id,
            attempt: beat.attempt,
            now: beat.now,
            lease_ms: beat.lease_ms,
            progress: Some(beat.progress),
            checkpoint,
        }
    }
}

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn job_pk(id: &str) -> String {
    format!("JOB#{id}")
}

fn slot_pk(owner: &str, k: u32) -> String {
    format!("SLOT#{owner}#{k}")
}

fn lock_pk(owner: &str, kind: &str, hash: &str) -> String {
    format!("LOCK#{owner}#{kind}#{hash}")
}

/// `:s0, :s1, ...` and their values for `#status IN (...)`.
fn status_in(statuses: &[Status]) -> (String, Vec<(String, AttributeValue)>) {
    let names: Vec<String> = (0..statuses.len()).map(|i| format!(":s{i}")).collect();
    let values = names.iter().zip(statuses).map(|(k, st)| (k.clone(), s(st.as_str()))).collect();
    (format!("#status IN ({})", names.join(", ")), values)
}

/// What a claim sets: running, claimed under `claim_token`, with a fresh lease.
const CLAIM_SET: &str =
    "SET #status = :running, claimed = :true, claim_token = :token, lease_expires_at = :lease, updated_at = :now, phase = :phase";

/// The condition of a claim (the status it may come from, the attempt, unclaimed) and the values of
/// it and [`CLAIM_SET`].
fn claim_update(token: &str, attempt: u32, now: i64, lease_ms: i64) -> (String, HashMap<String, AttributeValue>) {
    let (cond, values) = status_in(Transition::Claim.allowed_from());
    let mut values: HashMap<String, AttributeValue> = values.into_iter().collect();
    for (k, v) in [
        (":running", s(Status::Running.as_str())),
        (":true", AttributeValue::Bool(true)),
        (":false", AttributeValue::Bool(false)),
        (":token", s(token)),
        (":attempt", n(attempt)),
        (":lease", n(now + lease_ms)),
        (":now", n(now)),
        (":phase", s("reading")),
    ] {
        values.insert(k.to_owned(), v);
    }
    (format!("{cond} AND attempt = :attempt AND claimed = :false"), values)
}

/// What extending a lock's lease sets, conditional on `job_id = :id`.
const LOCK_LEASE_SET: &str = "SET lease_expires_at = :lease, expires_at = :ttl";

fn lock_lease_values(job_id: &str, lease: i64) -> HashMap<String, AttributeValue> {
    HashMap::from([(":lease".to_owned(), n(lease)), (":ttl".to_owned(), n(lease / 1000 + 86_400)), (":id".to_owned(), s(job_id))])
}

fn service_code<E: ProvideErrorMetadata>(e: &SdkError<E, aws_sdk_dynamodb::config::http::HttpResponse>) -> Option<&str> {
    e.as_service_error().and_then(|s| s.code())
}

fn is_condition_failed<E: ProvideErrorMetadata>(e: &SdkError<E, aws_sdk_dynamodb::config::http::HttpResponse>) -> bool {
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
        e: SdkError<E, aws_sdk_dynamodb::config::http::HttpResponse>,
    ) -> JobStoreError {
        let message = match e.as_service_error() {
            Some(s) => format!("{}: {}", s.code().unwrap_or("error"), s.message().unwrap_or("no message")),
            None => aws_smithy_types::error::display::DisplayErrorContext(&e).to_string(),
        };
        JobStoreError { table: self.table.clone(), item: item.to_owned(), op, message }
    }

    fn corrupt(&self, item: &str, message: String) -> JobStoreError {
        JobStoreError { table: self.table.clone(), item: item.to_owned(), op: "decode", message }
    }

    /// Creates the table with its owner index and TTL attribute (for local runs and tests; the
    /// deployed table comes from the template).
    pub async fn create(&self) -> Result<(), JobStoreError> {
        let key = |name: &str, t: KeyType| KeySchemaElement::builder().attribute_name(name).key_type(t).build();
        let attr = |name: &str| AttributeDefinition::builder().attribute_name(name).attribute_type(ScalarAttributeType::S).build();
        let build = |e: aws_sdk_dynamodb::error::BuildError| self.corrupt(&self.table, e.to_string());
        let gsi = GlobalSecondaryIndex::builder()
            .index_name(BY_OWNER)
            .key_schema(key("owner", KeyType::Hash).map_err(build)?)
            .key_schema(key("created_key", KeyType::Range).map_err(build)?)
            .projection(Projection::builder().projection_type(ProjectionType::All).build())
            .build()
            .map_err(build)?;
        let created = self
            .client
            .create_table()
            .table_name(&self.table)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(attr("pk").map_err(build)?)
            .attribute_definitions(attr("owner").map_err(build)?)
            .attribute_definitions(attr("created_key").map_err(build)?)
            .key_schema(key("pk", KeyType::Hash).map_err(build)?)
            .global_secondary_indexes(gsi)
            .send()
            .await;
        match created {
            Ok(_) => {}
            Err(e) if service_code(&e) == Some("ResourceInUseException") => {}
            Err(e) => return Err(self.error(&self.table, "CreateTable", e)),
        }
        let ttl = TimeToLiveSpecification::builder().enabled(true).attribute_name("expires_at").build().map_err(build)?;
        self.client.update_time_to_live().table_name(&self.table).time_to_live_specification(ttl).send().await.map(|_| ()).or_else(|e| {
            if service_code(&e) == Some("ValidationException") { Ok(()) } else { Err(self.error(&self.table, "UpdateTimeToLive", e)) }
        })
    }

    /// Takes one of `owner`'s `limit` running-job slots for job `id` (not written yet; the slot holds
    /// for [`WRITE_GRACE_MS`] until it is). `Ok(false)`: every slot names a queued or running job.
    /// Exact under concurrent submits: each slot is one conditional write.
    async fn take_slot(&self, owner: &str, id: &str, limit: u32, now: i64) -> Result<bool, JobStoreError> {
        for k in 0..limit {
            let pk = slot_pk(owner, k);
            let put = |condition: &str, old: Option<&str>| {
                let mut req = self
                    .client
                    .put_item()
                    .table_name(&self.table)
                    .item("pk", s(&pk))
                    .item("job_id", s(id))
                    .item("held_until", n(now + WRITE_GRACE_MS))
                    .item("expires_at", n((now + WRITE_GRACE_MS) / 1000 + 86_400 * 30))
                    .condition_expression(condition);
                if let Some(old) = old {
                    req = req.expression_attribute_values(":old", s(old));
                }
                req.send()
            };
            match put("attribute_not_exists(pk)", None).await {
                Ok(_) => return Ok(true),
                Err(e) if is_condition_failed(&e) => {}
                Err(e) => return Err(self.error(&pk, "PutItem", e)),
            }
            let Some(slot) = self.get_raw(&pk).await? else { continue };
            let holder_id = text(&slot, "job_id").unwrap_or_default();
            let holder = self.get(&holder_id, now).await?;
            if !ferry_core::jobs::slot_is_free(holder.as_ref(), num(&slot, "held_until").unwrap_or(0), now) {
                continue;
            }
            match put("job_id = :old", Some(&holder_id)).await {
                Ok(_) => return Ok(true),
                // Another submit took it first.
                Err(e) if is_condition_failed(&e) => {}
                Err(e) => return Err(self.error(&pk, "PutItem", e)),
            }
        }
        Ok(false)
    }

    /// Takes the lock of (owner, kind, params) and creates the job, or returns the job that holds the
    /// lock. Concurrent equal submits create exactly one job: the lock is one conditional put.
    pub async fn submit(&self, job: NewJob<'_>) -> Result<Submitted, JobStoreError> {
        let hash = params_hash(&canonical_json(job.params));
        let lock = lock_pk(job.owner, job.kind, &hash);
        let lease = job.now + job.start_lease_ms;
        let record = JobRecord {
            id: job.id.to_owned(),
            owner: job.owner.to_owned(),
            kind: job.kind.to_owned(),
            params: job.params.clone(),
            params_hash: hash.clone(),
            status: Status::Queued,
            attempt: 0,
            progress: Progress { phase: "queued".into(), ..Progress::default() },
            lease_expires_at: lease,
            result: None,
            error: None,
            created_at: job.now,
            updated_at: job.now,
            retain_until: job.now + job.retention_ms,
        };
        for _ in 0..SUBMIT_ATTEMPTS {
            // The lock first, then the job: a concurrent submit that finds the lock waits for the job.
            // (Not one transaction: the lock alone decides, and the job item is only ever written by
            // the submit that took it.)
            let taken = self
                .client
                .put_item()
                .table_name(&self.table)
                .item("pk", s(&lock))
                .item("job_id", s(job.id))
                .item("lease_expires_at", n(lease))
                .item("written_at", n(job.now))
                .item("expires_at", n(lease / 1000 + 86_400))
                .condition_expression("attribute_not_exists(pk) OR lease_expires_at < :now")
                .expression_attribute_values(":now", n(job.now))
                .send()
                .await;
            match taken {
                Ok(_) => {
                    // The request is new: it needs one of the owner's slots, or it is refused and
                    // leaves nothing behind.
                    if !self.take_slot(job.owner, job.id, job.max_running, job.now).await? {
                        self.release_lock(job.owner, job.kind, &hash, job.id).await?;
                        return Ok(Submitted::Full);
                    }
                    self.client
                        .put_item()
                        .table_name(&self.table)
                        .set_item(Some(to_item(&record)))
                        .condition_expression("attribute_not_exists(pk)")
                        .send()
                        .await
                        .map_err(|e| self.error(&job_pk(job.id), "PutItem", e))?;
                    return Ok(Submitted::Created(record));
                }
                Err(e) if is_condition_failed(&e) => {}
                Err(e) => return Err(self.error(&lock, "PutItem", e)),
            }
            // The lock is held: find out by whom, and whether that job still runs.
            let Some(holder) = self.get_raw(&lock).await? else { continue };
            if num(&holder, "lease_expires_at").unwrap_or(0) < job.now {
                continue;
            }
            let holder_id = text(&holder, "job_id").unwrap_or_default();
            // The holder writes its job right after the lock; give it a moment.
            let mut found = None;
            for wait in 0..HOLDER_POLLS {
                found = self.get(&holder_id, job.now).await?;
                if found.is_some() {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50 * u64::from(wait.min(4) + 1))).await;
            }
            match found {
                Some(running) if running.status_at(job.now).is_active() => return Ok(Submitted::Existing(running)),
                // The holder finished without releasing (it crashed between two writes) or is lost:
                // free the lock it left and try again.
                Some(_) => self.release_lock(job.owner, job.kind, &hash, &holder_id).await?,
                // Its submit died between the lock and the job: the lock is stale once the job had
                // all the time it needs to be written (not the start lease, which may be hours).
                None if num(&holder, "written_at").unwrap_or(0) + WRITE_GRACE_MS < job.now => {
                    self.release_lock(job.owner, job.kind, &hash, &holder_id).await?
                }
                // Its job is not written yet: a slow submit.
                None => return Ok(Submitted::Busy { holder: holder_id }),
            }
        }
        Err(JobStoreError {
            table: self.table.clone(),
            item: lock,
            op: "submit",
            message: format!("lock changed hands {SUBMIT_ATTEMPTS} times while submitting"),
        })
    }

    async fn get_raw(&self, pk: &str) -> Result<Option<HashMap<String, AttributeValue>>, JobStoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(pk))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| self.error(pk, "GetItem", e))?;
        Ok(out.item)
    }

    /// The job, unless it does not exist or is past its retention.
    pub async fn get(&self, id: &str, now: i64) -> Result<Option<JobRecord>, JobStoreError> {
        Ok(self.get_with_checkpoint(id, now).await?.map(|c| c.record))
    }

    async fn get_with_checkpoint(&self, id: &str, now: i64) -> Result<Option<Claimed>, JobStoreError> {
        let pk = job_pk(id);
        let Some(item) = self.get_raw(&pk).await? else { return Ok(None) };
        let record = from_item(&item).map_err(|m| self.corrupt(&pk, m))?;
        Ok((!record.is_expired(now)).then(|| Claimed { record, checkpoint: text(&item, "checkpoint") }))
    }

    /// One page of the owner's jobs, newest first, and the cursor of the next page if there may be one.
    pub async fn list(
        &self,
        owner: &str,
        limit: u32,
        after: Option<&ListCursor>,
        now: i64,
    ) -> Result<(Vec<JobRecord>, Option<ListCursor>), JobStoreError> {
        let mut req = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(BY_OWNER)
            .key_condition_expression("#owner = :owner")
            .expression_attribute_names("#owner", "owner")
            .expression_attribute_values(":owner", s(owner))
            .scan_index_forward(false)
            .limit(limit as i32);
        if let Some(c) = after {
            // The cursor names a position in this owner's listing only: the owner comes from the caller.
            req = req
                .exclusive_start_key("pk", s(job_pk(&c.id)))
                .exclusive_start_key("owner", s(owner))
                .exclusive_start_key("created_key", s(ListCursor::sort_key(c.created_at, &c.id)));
        }
        let out = req.send().await.map_err(|e| self.error(owner, "Query", e))?;
        let mut jobs = Vec::new();
        for item in out.items() {
            let record = from_item(item).map_err(|m| self.corrupt(owner, m))?;
            if !record.is_expired(now) {
                jobs.push(record);
            }
        }
        let next = out.last_evaluated_key().and_then(|k| {
            let key = text(k, "created_key")?;
            let (created, id) = key.split_once('#')?;
            Some(ListCursor { created_at: created.parse().ok()?, id: id.to_owned() })
        });
        Ok((jobs, next))
    }

    /// Claims attempt `attempt` of the job for this delivery. Only one delivery of an attempt ever
    /// succeeds: Lambda may deliver an asynchronous event more than once.
    ///
    /// Each call writes a fresh `claim_token` with the claim. The SDK resends an update whose answer
    /// it did not get (a timeout, a 5xx); when the first send had landed, the resend fails its own
    /// condition, and the token tells that apart from a claim by another delivery.
    pub async fn claim(&self, id: &str, attempt: u32, now: i64, lease_ms: i64) -> Result<Result<Claimed, Refused>, JobStoreError> {
        let pk = job_pk(id);
        let token = uuid::Uuid::new_v4().to_string();
        let (cond, values) = claim_update(&token, attempt, now, lease_ms);
        let out = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(&pk))
            .update_expression(CLAIM_SET)
            .condition_expression(format!("attribute_exists(pk) AND {cond} AND lease_expires_at >= :now"))
            .expression_attribute_names("#status", "status")
            .set_expression_attribute_values(Some(values))
            .return_values(ReturnValue::AllNew)
            .send()
            .await;
        let item = match out {
            Ok(o) => o.attributes.unwrap_or_default(),
            // Refused, or a resend of this very claim after the first send landed: the token tells.
            Err(e) if is_condition_failed(&e) => {
                let mut current = self.get_raw(&pk).await?;
                if let Some(item) = current.as_ref().filter(|i| Self::waits_past_its_lease(i, attempt, now)) {
                    current = self.late_claim(item, &token, now, lease_ms).await?;
                }
                match current {
                    Some(item) if Self::holds_claim(&item, &token, attempt, now) => item,
                    other => return Ok(Err(self.refusal_of(&pk, other, now)?)),
                }
            }
            Err(e) => return Err(self.error(&pk, "UpdateItem", e)),
        };
        let record = from_item(&item).map_err(|m| self.corrupt(&pk, m))?;
        self.extend_lock(&record, now + lease_ms).await?;
        Ok(Ok(Claimed { record, checkpoint: text(&item, "checkpoint") }))
    }

    /// Whether `item` is attempt `attempt`, unclaimed, with a lease that passed: its delivery waited
    /// in Lambda's retry queue (a throttle) longer than the lease. Readers call it `lost`, but that
    /// is derived; the delivery may still take it unless another job took its lock meanwhile.
    fn waits_past_its_lease(item: &HashMap<String, AttributeValue>, attempt: u32, now: i64) -> bool {
        num(item, "attempt") == Some(i64::from(attempt))
            && item.get("claimed") == Some(&AttributeValue::Bool(false))
            && text(item, "status").is_some_and(|st| Transition::Claim.allowed_from().iter().any(|a| a.as_str() == st))
            && num(item, "lease_expires_at").is_some_and(|l| l < now)
    }

    /// Claims a job whose lease passed while its delivery waited, in one transaction with its lock:
    /// only while the lock still names this job (no new submit of the same request took it) and
    /// the job is still unclaimed at its attempt. Returns the job item as it is afterwards (read
    /// back, so a resent transaction that landed the first time counts); the caller's token tells
    /// whether the claim is its own.
    async fn late_claim(
        &self,
        item: &HashMap<String, AttributeValue>,
        token: &str,
        now: i64,
        lease_ms: i64,
    ) -> Result<Option<HashMap<String, AttributeValue>>, JobStoreError> {
        use aws_sdk_dynamodb::types::{TransactWriteItem, Update};
        let record = from_item(item).map_err(|m| self.corrupt(&text(item, "pk").unwrap_or_default(), m))?;
        let pk = job_pk(&record.id);
        let build = |e: aws_sdk_dynamodb::error::BuildError| self.corrupt(&pk, e.to_string());
        let (cond, values) = claim_update(token, record.attempt, now, lease_ms);
        let job = Update::builder()
            .table_name(&self.table)
            .key("pk", s(&pk))
            .update_expression(CLAIM_SET)
            .condition_expression(cond)
            .expression_attribute_names("#status", "status")
            .set_expression_attribute_values(Some(values))
            .build()
            .map_err(build)?;
        let held = Update::builder()
            .table_name(&self.table)
            .key("pk", s(lock_pk(&record.owner, &record.kind, &record.params_hash)))
            .update_expression(LOCK_LEASE_SET)
            .condition_expression("job_id = :id")
            .set_expression_attribute_values(Some(lock_lease_values(&record.id, now + lease_ms)))
            .build()
            .map_err(build)?;
        let out = self
            .client
            .transact_write_items()
            .transact_items(TransactWriteItem::builder().update(job).build())
            .transact_items(TransactWriteItem::builder().update(held).build())
            .send()
            .await;
        match out {
            Ok(_) => {}
            Err(e) if service_code(&e) == Some("TransactionCanceledException") => {}
            Err(e) => return Err(self.error(&pk, "TransactWriteItems", e)),
        }
        self.get_raw(&pk).await
    }

    /// Extends the lease of the running attempt without touching its progress: the worker's
    /// background heartbeat, which keeps a job alive through steps that report no progress (an
    /// estimate, a listing, the xlsx build, completing the upload). `Err(Refused)`: stop.
    pub async fn keep_alive(&self, id: &str, attempt: u32, now: i64, lease_ms: i64) -> Result<Result<JobRecord, Refused>, JobStoreError> {
        self.running_update(RunningUpdate { id, attempt, now, lease_ms, progress: None, checkpoint: None }).await
    }

    /// Whether `item` is running attempt `attempt` under the claim written with `token`, unexpired.
    fn holds_claim(item: &HashMap<String, AttributeValue>, token: &str, attempt: u32, now: i64) -> bool {
        text(item, "claim_token").as_deref() == Some(token)
            && num(item, "attempt") == Some(i64::from(attempt))
            && item.get("claimed") == Some(&AttributeValue::Bool(true))
            && text(item, "status").as_deref() == Some(Status::Running.as_str())
            && num(item, "lease_expires_at").is_some_and(|l| l >= now)
    }

    async fn refusal(&self, id: &str, now: i64) -> Result<Refused, JobStoreError> {
        let pk = job_pk(id);
        let item = self.get_raw(&pk).await?;
        self.refusal_of(&pk, item, now)
    }

    /// Why a conditional write on the job item `pk`, now holding `item`, did not go through.
    fn refusal_of(&self, pk: &str, item: Option<HashMap<String, AttributeValue>>, now: i64) -> Result<Refused, JobStoreError> {
        let record = item.map(|i| from_item(&i).map_err(|m| self.corrupt(pk, m))).transpose()?;
        Ok(match record.filter(|r| !r.is_expired(now)) {
            None => Refused::Missing,
            Some(r) if r.status == Status::Cancelled => Refused::Cancelled,
            Some(r) => Refused::NotOurs(Box::new(r)),
        })
    }

    /// The lock follows the job's lease, so that a job that reads `lost` can be submitted again.
    async fn extend_lock(&self, job: &JobRecord, lease: i64) -> Result<bool, JobStoreError> {
        let lock = lock_pk(&job.owner, &job.kind, &job.params_hash);
        let out = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(&lock))
            .update_expression(LOCK_LEASE_SET)
            .condition_expression("job_id = :id")
            .set_expression_attribute_values(Some(lock_lease_values(&job.id, lease)))
            .send()
            .await;
        match out {
            Ok(_) => Ok(true),
            Err(e) if is_condition_failed(&e) => Ok(false),
            Err(e) => Err(self.error(&lock, "UpdateItem", e)),
        }
    }

    /// Records progress and extends the lease of the running attempt. `Err(Refused)` tells the worker
    /// to stop: the job was cancelled, or its lease passed and it is no longer this worker's.
    pub async fn heartbeat(&self, beat: Beat<'_>) -> Result<Result<JobRecord, Refused>, JobStoreError> {
        self.running_update(RunningUpdate::of(beat, None)).await
    }

    /// Hands the job over to the next attempt, which resumes from `checkpoint`. The lease covers the
    /// time the continuation takes to start.
    pub async fn checkpoint(&self, beat: Beat<'_>, checkpoint: &str) -> Result<Result<JobRecord, Refused>, JobStoreError> {
        self.running_update(RunningUpdate::of(beat, Some(checkpoint))).await
    }

    /// Extends the lease of the running attempt (and its lock's), recording progress and a
    /// checkpoint when given.
    async fn running_update(&self, u: RunningUpdate<'_>) -> Result<Result<JobRecord, Refused>, JobStoreError> {
        let pk = job_pk(u.id);
        let (cond, values) = status_in(Transition::Heartbeat.allowed_from());
        let mut req = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(&pk))
            .set_expression_attribute_values(Some(values.into_iter().collect()));
        let mut set = String::from("SET lease_expires_at = :lease, updated_at = :now");
        if let Some(progress) = u.progress {
            set.push_str(", phase = :phase, done = :done");
            req = req.expression_attribute_values(":phase", s(&progress.phase)).expression_attribute_values(":done", n(progress.done));
            if let Some(t) = progress.total {
                set.push_str(", #total = :total");
                req = req.expression_attribute_names("#total", "total").expression_attribute_values(":total", n(t));
            }
            if !progress.counts.is_empty() {
                set.push_str(", counts = :counts");
                req = req.expression_attribute_values(":counts", s(serde_json::to_string(&progress.counts).unwrap_or_default()));
            }
        }
        if let Some(cp) = u.checkpoint {
            set.push_str(", attempt = :next, claimed = :false, checkpoint = :cp");
            req = req
                .expression_attribute_values(":next", n(u.attempt + 1))
                .expression_attribute_values(":false", AttributeValue::Bool(false))
                .expression_attribute_values(":cp", s(cp));
        }
        let out = req
            .update_expression(set)
            .condition_expression(format!("{cond} AND attempt = :attempt AND claimed = :true AND lease_expires_at >= :now"))
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":attempt", n(u.attempt))
            .expression_attribute_values(":true", AttributeValue::Bool(true))
            .expression_attribute_values(":lease", n(u.now + u.lease_ms))
            .expression_attribute_values(":now", n(u.now))
            .return_values(ReturnValue::AllNew)
            .send()
            .await;
        match out {
            Ok(o) => {
                let record = from_item(&o.attributes.unwrap_or_default()).map_err(|m| self.corrupt(&pk, m))?;
                if !self.extend_lock(&record, u.now + u.lease_ms).await? {
                    // Another job of the same request holds the lock: this one was lost and replaced.
                    return Ok(Err(Refused::NotOurs(Box::new(record))));
                }
                Ok(Ok(record))
            }
            Err(e) if is_condition_failed(&e) => Ok(Err(self.refusal(u.id, u.now).await?)),
            Err(e) => Err(self.error(&pk, "UpdateItem", e)),
        }
    }

    /// Marks the running attempt succeeded with its result and releases the lock.
    pub async fn succeed(&self, beat: Beat<'_>, result: &JobResult) -> Result<Result<JobRecord, Refused>, JobStoreError> {
        let pk = job_pk(beat.id);
        let (cond, values) = status_in(Transition::Succeed.allowed_from());
        let out = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(&pk))
            .update_expression("SET #status = :to, updated_at = :now, finished_at = :now, phase = :phase, done = :done, #total = :total, counts = :counts, #result = :result REMOVE checkpoint")
            .condition_expression(format!("{cond} AND attempt = :attempt AND claimed = :true AND lease_expires_at >= :now"))
            .expression_attribute_names("#status", "status")
            .expression_attribute_names("#result", "result")
            .expression_attribute_names("#total", "total")
            // Sets the whole map: every value below goes after it.
            .set_expression_attribute_values(Some(values.into_iter().collect()))
            .expression_attribute_values(":total", n(beat.progress.total.unwrap_or(beat.progress.done)))
            .expression_attribute_values(":to", s(Status::Succeeded.as_str()))
            .expression_attribute_values(":attempt", n(beat.attempt))
            .expression_attribute_values(":true", AttributeValue::Bool(true))
            .expression_attribute_values(":now", n(beat.now))
            .expression_attribute_values(":phase", s("done"))
            .expression_attribute_values(":done", n(beat.progress.done))
            .expression_attribute_values(":counts", s(serde_json::to_string(&beat.progress.counts).unwrap_or_default()))
            .expression_attribute_values(":result", s(serde_json::to_string(result).unwrap_or_default()))
            .return_values(ReturnValue::AllNew)
            .send()
            .await;
        self.finish(beat.id, beat.now, out).await
    }

    /// Marks the job failed (from queued or running) and releases the lock. `attempt` restricts it to
    /// the worker running that attempt; `None` is the API failing a job whose worker never started.
    /// `error` is what the job's owner will see.
    /// [`JobTable::fail`] of the running `attempt`, keeping `result`: output written before the
    /// failure that the owner may still download.
    pub async fn fail_with_result(
        &self,
        id: &str,
        attempt: u32,
        error: &PublicError,
        now: i64,
        result: &JobResult,
    ) -> Result<Result<JobRecord, Refused>, JobStoreError> {
        let values = [(":attempt", n(attempt)), (":true", AttributeValue::Bool(true))];
        self.fail_if(id, "attempt = :attempt AND claimed = :true", values, error, now, Some(result)).await
    }

    pub async fn fail(
        &self,
        id: &str,
        attempt: Option<u32>,
        error: &PublicError,
        now: i64,
    ) -> Result<Result<JobRecord, Refused>, JobStoreError> {
        match attempt {
            Some(a) => {
                let values = [(":attempt", n(a)), (":true", AttributeValue::Bool(true))];
                self.fail_if(id, "attempt = :attempt AND claimed = :true", values, error, now, None).await
            }
            None => self.fail_if(id, "attribute_exists(pk)", [], error, now, None).await,
        }
    }

    /// Marks attempt `attempt` failed because Lambda gave up on delivering it (its on-failure
    /// destination): only while that attempt never ran (unclaimed) or its runner's lease passed, so
    /// a record about a delivery whose duplicate is running the job changes nothing. Releases the lock.
    pub async fn fail_undelivered(
        &self,
        id: &str,
        attempt: u32,
        error: &PublicError,
        now: i64,
    ) -> Result<Result<JobRecord, Refused>, JobStoreError> {
        let values = [(":attempt", n(attempt)), (":false", AttributeValue::Bool(false))];
        self.fail_if(id, "attempt = :attempt AND (claimed = :false OR lease_expires_at < :now)", values, error, now, None).await
    }

    /// The failing write, under `condition` (with its `values`; `:now` is there already) besides
    /// the statuses a job may fail from.
    async fn fail_if<const N: usize>(
        &self,
        id: &str,
        condition: &str,
        values: [(&str, AttributeValue); N],
        error: &PublicError,
        now: i64,
        result: Option<&JobResult>,
    ) -> Result<Result<JobRecord, Refused>, JobStoreError> {
        let pk = job_pk(id);
        let (cond, statuses) = status_in(Transition::Fail.allowed_from());
        let set = if result.is_some() { ", #result = :result" } else { "" };
        let mut req = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(&pk))
            .update_expression(format!(
                "SET #status = :to, updated_at = :now, finished_at = :now, #error = :error, phase = :phase{set} REMOVE checkpoint"
            ))
            .condition_expression(format!("{cond} AND {condition}"))
            .expression_attribute_names("#status", "status")
            .expression_attribute_names("#error", "error")
            .set_expression_attribute_values(Some(statuses.into_iter().collect()))
            .expression_attribute_values(":to", s(Status::Failed.as_str()))
            .expression_attribute_values(":now", n(now))
            .expression_attribute_values(":phase", s("failed"))
            .expression_attribute_values(":error", error_value(error))
            .return_values(ReturnValue::AllNew);
        for (k, v) in values {
            req = req.expression_attribute_values(k, v);
        }
        if let Some(r) = result {
            req = req
                .expression_attribute_names("#result", "result")
                .expression_attribute_values(":result", s(serde_json::to_string(r).unwrap_or_default()));
        }
        let out = req.send().await;
        self.finish(id, now, out).await
    }

    /// Cancels the owner's job if it is queued or running. The worker notices at its next page.
    /// `Ok(Err(Refused::NotOurs))` carries a job that had already finished.
    pub async fn cancel(&self, id: &str, owner: &str, now: i64) -> Result<Result<JobRecord, Refused>, JobStoreError> {
        let pk = job_pk(id);
        let (cond, values) = status_in(Transition::Cancel.allowed_from());
        let out = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(&pk))
            .update_expression("SET #status = :to, updated_at = :now, finished_at = :now, phase = :phase")
            .condition_expression(format!("{cond} AND #owner = :owner"))
            .expression_attribute_names("#status", "status")
            .expression_attribute_names("#owner", "owner")
            .set_expression_attribute_values(Some(values.into_iter().collect()))
            .expression_attribute_values(":to", s(Status::Cancelled.as_str()))
            .expression_attribute_values(":owner", s(owner))
            .expression_attribute_values(":now", n(now))
            .expression_attribute_values(":phase", s("cancelled"))
            .return_values(ReturnValue::AllNew)
            .send()
            .await;
        self.finish(id, now, out).await
    }

    async fn finish<E: ProvideErrorMetadata + std::error::Error + 'static>(
        &self,
        id: &str,
        now: i64,
        out: Result<aws_sdk_dynamodb::operation::update_item::UpdateItemOutput, SdkError<E, aws_sdk_dynamodb::config::http::HttpResponse>>,
    ) -> Result<Result<JobRecord, Refused>, JobStoreError> {
        let pk = job_pk(id);
        match out {
            Ok(o) => {
                let record = from_item(&o.attributes.unwrap_or_default()).map_err(|m| self.corrupt(&pk, m))?;
                self.release_lock(&record.owner, &record.kind, &record.params_hash, &record.id).await?;
                Ok(Ok(record))
            }
            Err(e) if is_condition_failed(&e) => Ok(Err(self.refusal(id, now).await?)),
            Err(e) => Err(self.error(&pk, "UpdateItem", e)),
        }
    }

    /// Records that job `id` was announced lost, if it still reads lost at `now` and nobody
    /// recorded it before: `true` for exactly one caller, who publishes the event.
    pub async fn claim_lost_announcement(&self, id: &str, now: i64) -> Result<bool, JobStoreError> {
        let pk = job_pk(id);
        let (cond, values) = status_in(&[Status::Queued, Status::Running]);
        let out = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(&pk))
            .update_expression("SET lost_announced_at = :now")
            .condition_expression(format!("{cond} AND lease_expires_at < :now AND attribute_not_exists(lost_announced_at)"))
            .expression_attribute_names("#status", "status")
            .set_expression_attribute_values(Some(values.into_iter().collect()))
            .expression_attribute_values(":now", n(now))
            .send()
            .await;
        match out {
            Ok(_) => Ok(true),
            Err(e) if is_condition_failed(&e) => Ok(false),
            Err(e) => Err(self.error(&pk, "UpdateItem", e)),
        }
    }

    /// Deletes the lock if job `id` still holds it.
    pub async fn release_lock(&self, owner: &str, kind: &str, hash: &str, id: &str) -> Result<(), JobStoreError> {
        let lock = lock_pk(owner, kind, hash);
        let out = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key("pk", s(&lock))
            .condition_expression("job_id = :id")
            .expression_attribute_values(":id", s(id))
            .send()
            .await;
        match out {
            Ok(_) => Ok(()),
            Err(e) if is_condition_failed(&e) => Ok(()),
            Err(e) => Err(self.error(&lock, "DeleteItem", e)),
        }
    }

    /// The job id holding the lock of (owner, kind, params), if any and unexpired.
    pub async fn lock_holder(
        &self,
        owner: &str,
        kind: &str,
        params: &serde_json::Value,
        now: i64,
    ) -> Result<Option<String>, JobStoreError> {
        let lock = lock_pk(owner, kind, &params_hash(&canonical_json(params)));
        Ok(self.get_raw(&lock).await?.filter(|l| num(l, "lease_expires_at").unwrap_or(0) >= now).and_then(|l| text(&l, "job_id")))
    }
}

fn text(item: &HashMap<String, AttributeValue>, name: &str) -> Option<String> {
    item.get(name).and_then(|v| v.as_s().ok()).cloned()
}

fn num(item: &HashMap<String, AttributeValue>, name: &str) -> Option<i64> {
    item.get(name).and_then(|v| v.as_n().ok()).and_then(|v| v.parse().ok())
}

fn to_item(r: &JobRecord) -> HashMap<String, AttributeValue> {
    let mut item = HashMap::from([
        ("pk".to_owned(), s(job_pk(&r.id))),
        ("id".to_owned(), s(&r.id)),
        ("owner".to_owned(), s(&r.owner)),
        ("created_key".to_owned(), s(ListCursor::sort_key(r.created_at, &r.id))),
        ("kind".to_owned(), s(&r.kind)),
        ("params".to_owned(), s(canonical_json(&r.params))),
        ("params_hash".to_owned(), s(&r.params_hash)),
        ("status".to_owned(), s(r.status.as_str())),
        ("attempt".to_owned(), n(r.attempt)),
        ("claimed".to_owned(), AttributeValue::Bool(false)),
        ("phase".to_owned(), s(&r.progress.phase)),
        ("done".to_owned(), n(r.progress.done)),
        ("lease_expires_at".to_owned(), n(r.lease_expires_at)),
        ("created_at".to_owned(), n(r.created_at)),
        ("updated_at".to_owned(), n(r.updated_at)),
        ("retain_until".to_owned(), n(r.retain_until)),
        ("expires_at".to_owned(), n(r.retain_until / 1000)),
    ]);
    if let Some(t) = r.progress.total {
        item.insert("total".into(), n(t));
    }
    item
}

/// The longest stored error message.
const MAX_ERROR_CHARS: usize = 2000;

fn error_value(e: &PublicError) -> AttributeValue {
    let mut m = HashMap::from([
        ("code".to_owned(), s(e.code.as_str())),
        ("message".to_owned(), s(e.message.chars().take(MAX_ERROR_CHARS).collect::<String>())),
    ]);
    if let Some(id) = &e.request_id {
        m.insert("request_id".into(), s(id));
    }
    AttributeValue::M(m)
}

/// A stored error. Items written before errors had codes hold free text that may name anything,
/// so they read as `internal` with its default message.
fn error_of(v: &AttributeValue) -> PublicError {
    let Ok(m) = v.as_m() else { return PublicError::code(ErrorCode::Internal) };
    let code = text(m, "code").and_then(|c| ErrorCode::parse(&c));
    let mut e = match (code, text(m, "message")) {
        (Some(code), Some(message)) => PublicError::new(code, message),
        _ => PublicError::code(ErrorCode::Internal),
    };
    e.request_id = text(m, "request_id");
    e
}

fn from_item(item: &HashMap<String, AttributeValue>) -> Result<JobRecord, String> {
    let need = |name: &str| text(item, name).ok_or_else(|| format!("attribute {name} is missing or not a string"));
    let need_n = |name: &str| num(item, name).ok_or_else(|| format!("attribute {name} is missing or not a number"));
    let kind = need("kind")?;
    let status = need("status")?;
    let params: serde_json::Value = serde_json::from_str(&need("params")?).map_err(|e| format!("attribute params: {e}"))?;
    let result = match text(item, "result") {
        Some(r) => Some(serde_json::from_str::<JobResult>(&r).map_err(|e| format!("attribute result: {e}"))?),
        None => None,
    };
    Ok(JobRecord {
        id: need("id")?,
        owner: need("owner")?,
        kind,
        params,
        params_hash: need("params_hash")?,
        status: Status::parse(&status).filter(|s| *s != Status::Lost).ok_or_else(|| format!("attribute status: unknown {status:?}"))?,
        attempt: u32::try_from(need_n("attempt")?).map_err(|e| format!("attribute attempt: {e}"))?,
        progress: Progress {
            phase: text(item, "phase").unwrap_or_default(),
            done: num(item, "done").unwrap_or(0).max(0) as u64,
            total: num(item, "total").map(|t| t.max(0) as u64),
            counts: match text(item, "counts") {
                Some(c) => serde_json::from_str(&c).map_err(|e| format!("attribute counts: {e}"))?,
                None => Default::default(),
            },
        },
        lease_expires_at: need_n("lease_expires_at")?,
        result,
        error: item.get("error").map(error_of),
        created_at: need_n("created_at")?,
        updated_at: need_n("updated_at")?,
        retain_until: need_n("retain_until")?,
    })
}

/// The payload the worker is invoked with: only the job id and which attempt to run.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WorkerPayload {
    pub job_id: String,
    #[serde(default)]
    pub attempt: u32,
}

/// The asynchronous invoke did not go through.
#[derive(Debug, thiserror::Error)]
#[error("invoking {function} asynchronously failed: {message}")]
pub struct InvokeError {
    pub function: String,
    pub message: String,
}

/// Invokes the worker with `InvocationType=Event`: Lambda queues the event and answers 202 at once.
pub async fn invoke_worker(client: &aws_sdk_lambda::Client, function: &str, payload: &WorkerPayload) -> Result<(), InvokeError> {
    let err = |message: String| InvokeError { function: function.to_owned(), message };
    let body = serde_json::to_vec(payload).map_err(|e| err(e.to_string()))?;
    let out = client
        .invoke()
        .function_name(function)
        .invocation_type(aws_sdk_lambda::types::InvocationType::Event)
        .payload(aws_sdk_lambda::primitives::Blob::new(body))
        .send()
        .await
        .map_err(|e| err(aws_smithy_types::error::display::DisplayErrorContext(&e).to_string()))?;
    match out.status_code() {
        202 => Ok(()),
        code => Err(err(format!("Lambda answered {code}, not 202"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_errors_round_trip_and_old_text_reads_as_internal() {
        let e = PublicError::new(ErrorCode::BadSourceData, "a.csv: line 3: not a number").with_request_id("r-1");
        assert_eq!(error_of(&error_value(&e)), e);
        let bare = PublicError::code(ErrorCode::SourceUnavailable);
        assert_eq!(error_of(&error_value(&bare)), bare);
        let long = PublicError::new(ErrorCode::Internal, "x".repeat(5000));
        assert_eq!(error_of(&error_value(&long)).message.len(), MAX_ERROR_CHARS);
        // An item from before error codes: its text may carry an SDK error, so it is not shown.
        let old = s("dynamodb table t: Scan failed: AccessDeniedException: User: arn:aws:sts::123456789012:assumed-role/x");
        assert_eq!(error_of(&old), PublicError::code(ErrorCode::Internal));
        let unknown = AttributeValue::M(HashMap::from([("code".into(), s("AccessDenied")), ("message".into(), s("arn:..."))]));
        assert_eq!(error_of(&unknown), PublicError::code(ErrorCode::Internal));
    }
}
