//! Locks (one running job per owner, kind and params) and slots (a bound on an owner's running
//! jobs), both items of the jobs table.

use std::collections::HashMap;

use ferry_core::jobs::JobRecord;

use super::{JobStoreError, JobTable, WRITE_GRACE_MS};
use crate::dynamo::{Item, n, num, s, text};

fn slot_pk(owner: &str, k: u32) -> String {
    format!("SLOT#{owner}#{k}")
}

pub(super) fn lock_pk(owner: &str, kind: &str, hash: &str) -> String {
    format!("LOCK#{owner}#{kind}#{hash}")
}

/// What extending a lock's lease sets, conditional on `job_id = :id`.
pub(super) const LOCK_LEASE_SET: &str = "SET lease_expires_at = :lease, expires_at = :ttl";

pub(super) fn lock_lease_values(job_id: &str, lease: i64) -> Item {
    HashMap::from([(":lease".to_owned(), n(lease)), (":ttl".to_owned(), n(lease / 1000 + 86_400)), (":id".to_owned(), s(job_id))])
}

impl JobTable {
    /// Takes one of `owner`'s `limit` running-job slots for job `id` (not written yet; the slot holds
    /// for [`WRITE_GRACE_MS`] until it is). `Ok(false)`: every slot names a queued or running job.
    /// Exact under concurrent submits: each slot is one conditional write.
    pub(super) async fn take_slot(&self, owner: &str, id: &str, limit: u32, now: i64) -> Result<bool, JobStoreError> {
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
            if self.conditional(&pk, "PutItem", put("attribute_not_exists(pk)", None).await)?.is_done() {
                return Ok(true);
            }
            let Some(slot) = self.get_raw(&pk).await? else { continue };
            let holder_id = text(&slot, "job_id").unwrap_or_default();
            let holder = self.get(&holder_id, now).await?;
            if !ferry_core::jobs::slot_is_free(holder.as_ref(), num(&slot, "held_until").unwrap_or(0), now) {
                continue;
            }
            // `None`: another submit took it first.
            if self.conditional(&pk, "PutItem", put("job_id = :old", Some(&holder_id)).await)?.is_done() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The lock follows the job's lease, so that a job that reads `lost` can be submitted again.
    pub(super) async fn extend_lock(&self, job: &JobRecord, lease: i64) -> Result<bool, JobStoreError> {
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
        Ok(self.conditional(&lock, "UpdateItem", out)?.is_done())
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
        // Held by another job (or gone): nothing of ours to release.
        self.conditional(&lock, "DeleteItem", out)?;
        Ok(())
    }
}
