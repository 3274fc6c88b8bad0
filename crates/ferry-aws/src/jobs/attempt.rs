//! One attempt of a job while it runs: the claim of a delivery, then the writes of its runner
//! (keep-alive, heartbeat, checkpoint), each conditional on the attempt and its lease.

use aws_sdk_dynamodb::types::ReturnValue;
use ferry_core::jobs::{JobRecord, Progress, Status, Transition};

use super::codec::{from_item, job_pk, status_in, transition};
use super::lock::{LOCK_LEASE_SET, lock_lease_values, lock_pk};
use super::{Beat, Claimed, JobStoreError, JobTable, Refused};
use crate::dynamo::{AttributeValue, Item, Written, is_true, n, num, s, text};

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

/// What a claim sets: running, claimed under `claim_token`, with a fresh lease.
const CLAIM_SET: &str =
    "SET #status = :to, claimed = :true, claim_token = :token, lease_expires_at = :lease, updated_at = :now, phase = :phase";

/// The condition of a claim (the status it may come from, the attempt, unclaimed) and the values of
/// it and [`CLAIM_SET`].
fn claim_update(token: &str, attempt: u32, now: i64, lease_ms: i64) -> (String, Item) {
    let (cond, mut values) = transition(Transition::Claim);
    for (k, v) in [
        (":true", AttributeValue::Bool(true)),
        (":false", AttributeValue::Bool(false)),
        (":token", s(token)),
        (":attempt", n(attempt)),
        (":lease", n(now + lease_ms)),
        (":now", n(now)),
    ] {
        values.insert(k.to_owned(), v);
    }
    (format!("{cond} AND attempt = :attempt AND claimed = :false"), values)
}

impl JobTable {
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
        let item = match self.conditional(&pk, "UpdateItem", out)? {
            Written::Done(o) => o.attributes.unwrap_or_default(),
            // Refused, or a resend of this very claim after the first send landed: the token tells.
            Written::ConditionFailed => {
                let mut current = self.get_raw(&pk).await?;
                if let Some(item) = current.as_ref().filter(|i| Self::waits_past_its_lease(i, attempt, now)) {
                    current = self.late_claim(item, &token, now, lease_ms).await?;
                }
                match current {
                    Some(item) if Self::holds_claim(&item, &token, attempt, now) => item,
                    other => return Ok(Err(self.refusal_of(&pk, other, now)?)),
                }
            }
        };
        let record = from_item(&item).map_err(|m| self.corrupt(&pk, m))?;
        self.extend_lock(&record, now + lease_ms).await?;
        Ok(Ok(Claimed { record, checkpoint: text(&item, "checkpoint") }))
    }

    /// Whether `item` is attempt `attempt`, unclaimed, with a lease that passed: its delivery waited
    /// in Lambda's retry queue (a throttle) longer than the lease. Readers call it `lost`, but that
    /// is derived; the delivery may still take it unless another job took its lock meanwhile.
    fn waits_past_its_lease(item: &Item, attempt: u32, now: i64) -> bool {
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
    async fn late_claim(&self, item: &Item, token: &str, now: i64, lease_ms: i64) -> Result<Option<Item>, JobStoreError> {
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
        // Cancelled: a condition did not hold (another claim, or the lock moved on); the item read
        // back below tells.
        if let Err(e) = out.map_err(|e| self.error(&pk, "TransactWriteItems", e))
            && e.0.code() != Some("TransactionCanceledException")
        {
            return Err(e);
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
    fn holds_claim(item: &Item, token: &str, attempt: u32, now: i64) -> bool {
        text(item, "claim_token").as_deref() == Some(token)
            && num(item, "attempt") == Some(i64::from(attempt))
            && is_true(item, "claimed")
            && text(item, "status").as_deref() == Some(Status::Running.as_str())
            && num(item, "lease_expires_at").is_some_and(|l| l >= now)
    }

    pub(super) async fn refusal(&self, id: &str, now: i64) -> Result<Refused, JobStoreError> {
        let pk = job_pk(id);
        let item = self.get_raw(&pk).await?;
        self.refusal_of(&pk, item, now)
    }

    /// Why a conditional write on the job item `pk`, now holding `item`, did not go through.
    fn refusal_of(&self, pk: &str, item: Option<Item>, now: i64) -> Result<Refused, JobStoreError> {
        let record = item.map(|i| from_item(&i).map_err(|m| self.corrupt(pk, m))).transpose()?;
        Ok(match record.filter(|r| !r.is_expired(now)) {
            None => Refused::Missing,
            Some(r) if r.status == Status::Cancelled => Refused::Cancelled,
            Some(r) => Refused::NotOurs(Box::new(r)),
        })
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
            req = req
                .expression_attribute_values(":phase", s(progress.phase.as_str()))
                .expression_attribute_values(":done", n(progress.done));
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
        let Written::Done(o) = self.conditional(&pk, "UpdateItem", out)? else { return Ok(Err(self.refusal(u.id, u.now).await?)) };
        let record = from_item(&o.attributes.unwrap_or_default()).map_err(|m| self.corrupt(&pk, m))?;
        if !self.extend_lock(&record, u.now + u.lease_ms).await? {
            // Another job of the same request holds the lock: this one was lost and replaced.
            return Ok(Err(Refused::NotOurs(Box::new(record))));
        }
        Ok(Ok(record))
    }
}
