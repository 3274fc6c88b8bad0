//! How a job ends: succeeded, failed or cancelled (each releasing its lock), and the one-time
//! record that it was announced lost.

use aws_sdk_dynamodb::operation::update_item::{UpdateItemError, UpdateItemOutput};
use aws_sdk_dynamodb::types::ReturnValue;
use ferry_core::jobs::{JobRecord, JobResult, Status, Transition};
use ferry_core::public::PublicError;

use super::codec::{error_value, from_item, job_pk, status_in, transition};
use super::{Beat, JobStoreError, JobTable, Refused};
use crate::dynamo::{AttributeValue, Written, n, s};
use crate::error::SdkError;

impl JobTable {
    /// Marks the running attempt succeeded with its result and releases the lock.
    pub async fn succeed(&self, beat: Beat<'_>, result: &JobResult) -> Result<Result<JobRecord, Refused>, JobStoreError> {
        let pk = job_pk(beat.id);
        let (cond, values) = transition(Transition::Succeed);
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
            .set_expression_attribute_values(Some(values))
            .expression_attribute_values(":total", n(beat.progress.total.unwrap_or(beat.progress.done)))
            .expression_attribute_values(":attempt", n(beat.attempt))
            .expression_attribute_values(":true", AttributeValue::Bool(true))
            .expression_attribute_values(":now", n(beat.now))
            .expression_attribute_values(":done", n(beat.progress.done))
            .expression_attribute_values(":counts", s(serde_json::to_string(&beat.progress.counts).unwrap_or_default()))
            .expression_attribute_values(":result", s(serde_json::to_string(result).unwrap_or_default()))
            .return_values(ReturnValue::AllNew)
            .send()
            .await;
        self.finish(beat.id, beat.now, out).await
    }

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

    /// Marks the job failed (from queued or running) and releases the lock. `attempt` restricts it to
    /// the worker running that attempt; `None` is the API failing a job whose worker never started.
    /// `error` is what the job's owner will see.
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
        let (cond, statuses) = transition(Transition::Fail);
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
            .set_expression_attribute_values(Some(statuses))
            .expression_attribute_values(":now", n(now))
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
        let (cond, values) = transition(Transition::Cancel);
        let out = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(&pk))
            .update_expression("SET #status = :to, updated_at = :now, finished_at = :now, phase = :phase")
            .condition_expression(format!("{cond} AND #owner = :owner"))
            .expression_attribute_names("#status", "status")
            .expression_attribute_names("#owner", "owner")
            .set_expression_attribute_values(Some(values))
            .expression_attribute_values(":owner", s(owner))
            .expression_attribute_values(":now", n(now))
            .return_values(ReturnValue::AllNew)
            .send()
            .await;
        self.finish(id, now, out).await
    }

    /// The end of a finishing write: the record as written (its lock released), or why it was refused.
    async fn finish<R: std::fmt::Debug + Send + Sync + 'static>(
        &self,
        id: &str,
        now: i64,
        out: Result<UpdateItemOutput, SdkError<UpdateItemError, R>>,
    ) -> Result<Result<JobRecord, Refused>, JobStoreError> {
        let pk = job_pk(id);
        let Written::Done(o) = self.conditional(&pk, "UpdateItem", out)? else { return Ok(Err(self.refusal(id, now).await?)) };
        let record = from_item(&o.attributes.unwrap_or_default()).map_err(|m| self.corrupt(&pk, m))?;
        self.release_lock(&record.owner, &record.kind, &record.params_hash, &record.id).await?;
        Ok(Ok(record))
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
        Ok(self.conditional(&pk, "UpdateItem", out)?.is_done())
    }
}
