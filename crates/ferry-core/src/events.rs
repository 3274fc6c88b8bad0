//! Job lifecycle events: what every job publishes (source [`SOURCE`]) as it starts and ends, so
//! listeners react without polling the job API.
//!
//! - [`JobEventType`]: the lifecycle step, as an EventBridge `detail-type` ([`JobEventType::detail_type`]).
//! - [`JobEventDetail`]: the event's `detail`; [`JobEventDetail::event_id`] is stable across
//!   redeliveries, since publishing is at least once.
//! - [`JobEvent`]: both, built with [`JobEvent::new`] and the `with_*` methods.
//!
//! Pure: the caller supplies the time and publishes (`ferry_aws::events`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The EventBridge `source` of every job event.
pub const SOURCE: &str = "ferry.jobs";

/// A step of a job's life that listeners hear about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobEventType {
    Started,
    Succeeded,
    Failed,
    Cancelled,
    /// Its lease passed without a heartbeat: the worker died or never started.
    Lost,
}

impl JobEventType {
    pub const ALL: [JobEventType; 5] =
        [JobEventType::Started, JobEventType::Succeeded, JobEventType::Failed, JobEventType::Cancelled, JobEventType::Lost];

    /// The EventBridge `detail-type`, which rules match on.
    pub fn detail_type(self) -> &'static str {
        match self {
            JobEventType::Started => "JobStarted",
            JobEventType::Succeeded => "JobSucceeded",
            JobEventType::Failed => "JobFailed",
            JobEventType::Cancelled => "JobCancelled",
            JobEventType::Lost => "JobLost",
        }
    }
}

/// The detail of a `ferry.jobs` event: what a listener needs to react without polling.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobEventDetail {
    /// `{job_id}:{detail_type}:{attempt}`: the same for every delivery of one event, so listeners
    /// can drop duplicates (publishing is at least once).
    pub event_id: String,
    pub job_id: String,
    pub owner: String,
    pub kind: String,
    pub status: String,
    pub attempt: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub counts: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<ResultLocation>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    /// RFC 3339, when it happened.
    pub at: String,
}

/// Where a finished job's output is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultLocation {
    pub bucket: String,
    pub key: String,
    pub size: u64,
    /// Other outputs by name (e.g. `failed`) -> their key in the same bucket.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub files: BTreeMap<String, String>,
}

/// One event to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct JobEvent {
    pub event_type: JobEventType,
    pub detail: JobEventDetail,
}

impl JobEvent {
    /// An event without counts, result or error code; `event_id` is built from the fields.
    pub fn new(event_type: JobEventType, job_id: &str, owner: &str, kind: &str, status: &str, attempt: u32, at: String) -> JobEvent {
        JobEvent {
            event_type,
            detail: JobEventDetail {
                event_id: format!("{job_id}:{}:{attempt}", event_type.detail_type()),
                job_id: job_id.to_owned(),
                owner: owner.to_owned(),
                kind: kind.to_owned(),
                status: status.to_owned(),
                attempt,
                counts: None,
                result: None,
                error_code: None,
                at,
            },
        }
    }

    pub fn with_counts(mut self, counts: serde_json::Value) -> JobEvent {
        self.detail.counts = Some(counts);
        self
    }

    pub fn with_result(mut self, r: ResultLocation) -> JobEvent {
        self.detail.result = Some(r);
        self
    }

    pub fn with_error_code(mut self, code: &str) -> JobEvent {
        self.detail.error_code = Some(code.to_owned());
        self
    }

    /// The detail as EventBridge's `Detail` (a JSON object).
    pub fn detail_json(&self) -> String {
        // Only strings, numbers and JSON values with string keys: serialising cannot fail.
        serde_json::to_string(&self.detail).expect("a job event detail serialises")
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    const AT: &str = "2026-03-01T12:00:00Z";

    #[test]
    fn detail_types_are_the_published_names() {
        let names: Vec<&str> = JobEventType::ALL.iter().map(|t| t.detail_type()).collect();
        assert_eq!(names, ["JobStarted", "JobSucceeded", "JobFailed", "JobCancelled", "JobLost"]);
    }

    #[test]
    fn event_id_is_job_type_and_attempt() {
        let e = JobEvent::new(JobEventType::Failed, "j-1", "alice", "batch", "failed", 3, AT.into());
        assert_eq!(e.detail.event_id, "j-1:JobFailed:3");
        // Redelivery builds the same id; another attempt or type does not.
        assert_eq!(
            JobEvent::new(JobEventType::Failed, "j-1", "alice", "batch", "failed", 3, "later".into()).detail.event_id,
            "j-1:JobFailed:3"
        );
        assert_ne!(JobEvent::new(JobEventType::Failed, "j-1", "alice", "batch", "failed", 4, AT.into()).detail.event_id, e.detail.event_id);
        assert_ne!(JobEvent::new(JobEventType::Lost, "j-1", "alice", "batch", "lost", 3, AT.into()).detail.event_id, e.detail.event_id);
    }

    #[test]
    fn absent_optionals_are_omitted() {
        let e = JobEvent::new(JobEventType::Started, "j-1", "alice", "export", "running", 1, AT.into());
        let v: Value = serde_json::from_str(&e.detail_json()).unwrap();
        assert_eq!(
            v,
            json!({
                "event_id": "j-1:JobStarted:1", "job_id": "j-1", "owner": "alice", "kind": "export",
                "status": "running", "attempt": 1, "at": AT,
            })
        );
    }

    #[test]
    fn optionals_serialise_and_read_back() {
        let files = BTreeMap::from([("failed".to_owned(), "exports/j-2.failed.jsonl".to_owned())]);
        let e = JobEvent::new(JobEventType::Succeeded, "j-2", "bob", "batch", "succeeded", 2, AT.into())
            .with_counts(json!({"ok": 9, "failed": 1}))
            .with_result(ResultLocation { bucket: "b".into(), key: "exports/j-2.jsonl".into(), size: 120, files })
            .with_error_code("partial");
        let text = e.detail_json();
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["counts"], json!({"ok": 9, "failed": 1}));
        assert_eq!(
            v["result"],
            json!({"bucket": "b", "key": "exports/j-2.jsonl", "size": 120, "files": {"failed": "exports/j-2.failed.jsonl"}})
        );
        assert_eq!(v["error_code"], "partial");
        assert_eq!(serde_json::from_str::<JobEventDetail>(&text).unwrap(), e.detail);

        // A result without other files has no `files` key, and reads back with an empty map.
        let plain = ResultLocation { bucket: "b".into(), key: "k".into(), size: 0, files: BTreeMap::new() };
        let v = serde_json::to_value(&plain).unwrap();
        assert_eq!(v, json!({"bucket": "b", "key": "k", "size": 0}));
        assert_eq!(serde_json::from_value::<ResultLocation>(v).unwrap(), plain);
    }
}
