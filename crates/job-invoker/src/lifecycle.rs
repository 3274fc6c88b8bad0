//! Lifecycle events: every job announces when it starts and how it ends, on the EventBridge bus
//! (`source: ferry.jobs`), so other systems react without polling.
//!
//! Publishing never changes a job's outcome: a failed publish is logged and the job goes on.
//! Events are at least once (a retried worker may announce twice); `detail.event_id` is the same for
//! every copy of one event so listeners can drop the duplicates.

use ferry_core::events::{JobEvent, ResultLocation};
use ferry_core::jobs::{JobRecord, rfc3339};

pub use ferry_core::events::JobEventType as Lifecycle;

use crate::kind::JobEnv;
use crate::settings::now_ms;

/// The event of `job` reaching `what`, from the record as it was written.
pub fn event(what: Lifecycle, job: &JobRecord, now: i64) -> JobEvent {
    let at = rfc3339(now).unwrap_or_default();
    let status = match what {
        Lifecycle::Lost => "lost".to_owned(),
        _ => job.status.as_str().to_owned(),
    };
    let mut event = JobEvent::new(what, &job.id, &job.owner, &job.kind, &status, job.attempt, at);
    let counts = job.result.as_ref().map(|r| &r.counts).filter(|c| !c.is_empty()).unwrap_or(&job.progress.counts);
    if !counts.is_empty() {
        event = event.with_counts(serde_json::json!(counts));
    }
    if let Some(r) = &job.result {
        let files = r.files.iter().map(|(name, f)| (name.clone(), f.key.clone())).collect();
        event = event.with_result(ResultLocation { bucket: r.bucket.clone(), key: r.key.clone(), size: r.size, files });
    }
    if let Some(e) = job.error_at(now) {
        event = event.with_error_code(e.code.as_str());
    }
    event
}

/// Publishes the event of `job` reaching `what`, when the deployment has a bus.
pub async fn announce(env: &JobEnv, what: Lifecycle, job: &JobRecord) {
    let Some(bus) = &env.events else { return };
    let event = event(what, job, now_ms());
    match bus.publish(&event).await {
        Ok(()) => tracing::info!(job_id = job.id, event = what.detail_type(), "event published"),
        Err(e) => tracing::error!(job_id = job.id, event = what.detail_type(), error = %e, "publishing the event failed"),
    }
}
