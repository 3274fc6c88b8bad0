//! Submitting a job, and reading jobs back.

use ferry_core::jobs::{JobRecord, ListCursor};

use super::codec::{from_item, job_pk, to_item};
use super::lock::lock_pk;
use super::{Claimed, JobStoreError, JobTable, NewJob, Submitted, WRITE_GRACE_MS};
use crate::dynamo::{Item, n, num, s, text};

const BY_OWNER: &str = "by-owner";
/// How many times a submit re-reads after its lock changed under it.
const SUBMIT_ATTEMPTS: u32 = 8;
/// How many times a submit that found the lock looks for the holder's job before calling the lock stale.
const HOLDER_POLLS: u32 = 25;

impl JobTable {
    /// Takes the lock of (owner, kind, params) and creates the job, or returns the job that holds the
    /// lock. Concurrent equal submits create exactly one job: the lock is one conditional put.
    pub async fn submit(&self, job: NewJob<'_>) -> Result<Submitted, JobStoreError> {
        let record = JobRecord::queued(job.id, job.owner, job.kind, job.params, job.now, job.start_lease_ms, job.retention_ms);
        let hash = record.params_hash.clone();
        let lock = lock_pk(job.owner, job.kind, &hash);
        let lease = record.lease_expires_at;
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
            if self.conditional(&lock, "PutItem", taken)?.is_done() {
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
        let message = format!("lock changed hands {SUBMIT_ATTEMPTS} times while submitting");
        Err(JobStoreError(crate::Error::other("DynamoDB", "submit", crate::dynamo::item_resource(&self.table, &lock), message)))
    }

    pub(super) async fn get_raw(&self, pk: &str) -> Result<Option<Item>, JobStoreError> {
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
}
