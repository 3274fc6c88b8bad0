//! Lifecycle events: every job announces when it starts and how it ends, on the EventBridge bus
//! (`source: ferry.jobs`), so other systems react without polling, and as metrics
//! (`ferry_lambda::metrics`: started, succeeded, failed, cancelled, lost, continued; the duration
//! and rows of a job that ended; a batch's items by final state), so a team can alarm on them.
//!
//! Publishing never changes a job's outcome: a failed publish is logged and the job goes on.
//! Events are at least once (a retried worker may announce twice); `detail.event_id` is the same for
//! every copy of one event so listeners can drop the duplicates.

use ferry_core::events::{JobEvent, ResultLocation};
use ferry_core::jobs::{JobRecord, rfc3339};
use ferry_lambda::metrics::{Function, Line, Metric};

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

/// The function that announces `what` as a rule: the worker runs jobs, the API cancels them and
/// sees them lost. The API's own failure (no worker could be started) uses [`announce_by`].
fn announcer(what: Lifecycle) -> Function {
    match what {
        Lifecycle::Cancelled | Lifecycle::Lost => Function::JobApi,
        Lifecycle::Started | Lifecycle::Succeeded | Lifecycle::Failed => Function::JobWorker,
    }
}

/// The metrics line of `job` reaching `what` at `now`, emitted by `function`.
pub fn metrics(function: Function, what: Lifecycle, job: &JobRecord, now: i64) -> Line {
    let count = match what {
        Lifecycle::Started => Metric::JobsStarted,
        Lifecycle::Succeeded => Metric::JobsSucceeded,
        Lifecycle::Failed => Metric::JobsFailed,
        Lifecycle::Cancelled => Metric::JobsCancelled,
        Lifecycle::Lost => Metric::JobsLost,
    };
    let mut line = Line::new(function).kind(&job.kind).count(count, 1).property("job_id", job.id.clone());
    if matches!(what, Lifecycle::Succeeded | Lifecycle::Failed) {
        // The record's time stamps, not this process's clock: a job's end is when it was written.
        let end = if job.updated_at > 0 { job.updated_at } else { now };
        line = line.count(Metric::JobDuration, u64::try_from(end - job.created_at).unwrap_or(0));
        let counts = job.result.as_ref().map(|r| &r.counts).filter(|c| !c.is_empty()).unwrap_or(&job.progress.counts);
        for (state, n) in counts {
            if let Some(m) = Metric::items(state) {
                line = line.count(m, *n);
            }
        }
        let (ok, failed) = (counts.get("succeeded").copied().unwrap_or(0), counts.get("failed").copied().unwrap_or(0));
        if ok + failed > 0 {
            // Per job, so an alarm needs no metric math: the worst job of a period is its maximum.
            line = line.value(Metric::ItemsFailedPercent, 100.0 * failed as f64 / (ok + failed) as f64);
        }
    }
    if let (Lifecycle::Succeeded, Some(r)) = (what, &job.result) {
        line = line.count(Metric::JobRows, r.rows);
    }
    line
}

/// Emits the metric of a job handing over to its next attempt in a new invocation.
pub fn continued(job: &JobRecord) {
    Line::new(Function::JobWorker).kind(&job.kind).count(Metric::JobsContinued, 1).property("job_id", job.id.clone()).emit();
}

/// Emits the metrics of `job` reaching `what` and publishes its event, when the deployment has a
/// bus.
pub async fn announce(env: &JobEnv, what: Lifecycle, job: &JobRecord) {
    announce_by(env, announcer(what), what, job).await
}

/// [`announce`], with the metrics emitted as `function`'s.
pub async fn announce_by(env: &JobEnv, function: Function, what: Lifecycle, job: &JobRecord) {
    metrics(function, what, job, now_ms()).emit();
    let Some(bus) = &env.events else { return };
    let event = event(what, job, now_ms());
    match bus.publish(&event).await {
        Ok(()) => tracing::info!(job_id = job.id, event = what.detail_type(), "event published"),
        Err(e) => tracing::error!(job_id = job.id, event = what.detail_type(), error = %e, "publishing the event failed"),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use ferry_core::jobs::{JobResult, Status};
    use ferry_lambda::metrics::{self, Emitted};

    use super::*;

    fn read(line: Line) -> Emitted {
        let text = line.to_json(now_ms()).to_string();
        metrics::verify(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
    }

    fn batch_job() -> JobRecord {
        let mut job = JobRecord::queued("j-1", "seller-0001", "batch", &serde_json::json!({}), 1_000, 60_000, 86_400_000);
        job.updated_at = 4_500;
        job
    }

    #[test]
    fn each_event_counts_once_under_the_function_that_sees_it() {
        let check = |what: Lifecycle, metric: Metric, function: &str| {
            let e = read(metrics(announcer(what), what, &batch_job(), 9_000));
            assert_eq!(e.value(metric), Some(1.0), "{what:?}");
            assert_eq!((e.get("function"), e.get("kind"), e.get("job_id")), (Some(function), Some("batch"), Some("j-1")), "{what:?}");
        };
        check(Lifecycle::Started, Metric::JobsStarted, "job-worker");
        check(Lifecycle::Succeeded, Metric::JobsSucceeded, "job-worker");
        check(Lifecycle::Failed, Metric::JobsFailed, "job-worker");
        check(Lifecycle::Cancelled, Metric::JobsCancelled, "job-api");
        check(Lifecycle::Lost, Metric::JobsLost, "job-api");
        let e = read(metrics(Function::JobApi, Lifecycle::Failed, &batch_job(), 9_000));
        assert_eq!((e.get("function"), e.value(Metric::JobsFailed)), (Some("job-api"), Some(1.0)));
        // Only an end has a duration.
        assert_eq!(read(metrics(Function::JobWorker, Lifecycle::Started, &batch_job(), 9_000)).value(Metric::JobDuration), None);
    }

    #[test]
    fn a_batch_that_ended_reports_its_duration_rows_and_items_by_state() {
        let mut job = batch_job();
        job.status = Status::Succeeded;
        let counts = BTreeMap::from([
            ("succeeded".to_owned(), 7),
            ("failed".to_owned(), 2),
            ("skipped".to_owned(), 1),
            ("pending".to_owned(), 0),
            ("running".to_owned(), 0),
        ]);
        job.result = Some(JobResult {
            bucket: "b".into(),
            key: "k".into(),
            size: 10,
            rows: 10,
            sheets: 1,
            truncated_cells: 0,
            files: BTreeMap::new(),
            counts,
        });
        let e = read(metrics(Function::JobWorker, Lifecycle::Succeeded, &job, 9_000));
        let got: Vec<Option<f64>> = [
            Metric::JobDuration,
            Metric::JobRows,
            Metric::ItemsSucceeded,
            Metric::ItemsFailed,
            Metric::ItemsSkipped,
            Metric::ItemsFailedPercent,
        ]
        .iter()
        .map(|m| e.value(*m))
        .collect();
        assert_eq!(got, [Some(3_500.0), Some(10.0), Some(7.0), Some(2.0), Some(1.0), Some(100.0 * 2.0 / 9.0)]);
        assert!(!e.values.contains_key("pending"), "states without a metric are left out: {e:?}");

        // A failed batch counts from its last progress.
        let mut failed = batch_job();
        failed.progress.counts = BTreeMap::from([("succeeded".to_owned(), 3), ("failed".to_owned(), 5)]);
        let e = read(metrics(Function::JobWorker, Lifecycle::Failed, &failed, 9_000));
        assert_eq!((e.value(Metric::ItemsSucceeded), e.value(Metric::ItemsFailed), e.value(Metric::JobRows)), (Some(3.0), Some(5.0), None));
        assert_eq!(e.value(Metric::ItemsFailedPercent), Some(62.5));
        // An export counts no items.
        let mut export = batch_job();
        export.kind = "export".into();
        assert_eq!(read(metrics(Function::JobWorker, Lifecycle::Failed, &export, 9_000)).value(Metric::ItemsFailedPercent), None);
    }

    #[test]
    fn a_continuation_is_counted_by_the_worker() {
        let capture = metrics::Capture::start();
        continued(&batch_job());
        let mine: Vec<Emitted> =
            capture.lines().iter().map(|l| metrics::verify(l).expect("valid")).filter(|e| e.get("job_id") == Some("j-1")).collect();
        assert_eq!(mine.len(), 1);
        assert_eq!((mine[0].get("function"), mine[0].value(Metric::JobsContinued)), (Some("job-worker"), Some(1.0)));
    }
}
