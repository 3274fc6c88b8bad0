//! A job as the API shows it ([`JobView`]) and the answers that carry it.
//!
//! The members keep the order the API has always written them in: the summary first, then what a
//! kind says of its params, the error, and the links.

use std::collections::BTreeMap;

use ferry_core::jobs::{JobRecord, Progress, Status, rfc3339};
use ferry_core::public::PublicError;
use serde::{Deserialize, Serialize};

/// A job as `GET /jobs/{id}` shows it, and as every other answer about a job carries it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobView {
    pub id: String,
    pub kind: String,
    /// As of the answer: `lost` when an active job's lease ran out.
    pub status: Status,
    pub progress: Progress,
    pub attempt: u32,
    /// RFC 3339 times.
    pub created_at: Option<String>,
    pub updated_at: Option<String>,
    pub retained_until: Option<String>,
    /// What the job's kind says of its params (an export's `format`, a batch's `target`).
    #[serde(flatten)]
    pub details: BTreeMap<String, serde_json::Value>,
    /// Why it failed, or the lease that ran out of a lost job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<PublicError>,
    /// The main result, once the job succeeded (or failed keeping output).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub download: Option<Download>,
    /// Final counts by state, for kinds that count items.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub counts: BTreeMap<String, u64>,
    /// Other outputs by name (a batch's `failed` items).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub files: BTreeMap<String, FileLink>,
}

impl JobView {
    /// The summary of `job` as of `now` (no links): what a list, a submit and a cancel show.
    /// `details` is what the job's kind says of its params.
    pub fn summary(job: &JobRecord, now: i64, details: BTreeMap<String, serde_json::Value>) -> JobView {
        JobView {
            id: job.id.clone(),
            kind: job.kind.clone(),
            status: job.status_at(now),
            progress: job.progress.clone(),
            attempt: job.attempt,
            created_at: rfc3339(job.created_at),
            updated_at: rfc3339(job.updated_at),
            retained_until: rfc3339(job.retain_until),
            details,
            error: job.error_at(now),
            download: None,
            counts: BTreeMap::new(),
            files: BTreeMap::new(),
        }
    }
}

/// The link to a job's main result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Download {
    pub url: String,
    pub expires_at: Option<String>,
    pub size: u64,
    pub rows: u64,
    pub sheets: u32,
    pub truncated_cells: u64,
}

/// The link to another output of a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileLink {
    pub url: String,
    pub expires_at: Option<String>,
    pub size: u64,
    pub rows: u64,
}

/// The answer to `POST /jobs`: the new job (202), or the same owner's running one (200,
/// `duplicate`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Submitted {
    pub job: JobView,
    pub status_url: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub duplicate: bool,
}

/// The answer to `GET /jobs`: a page of the caller's jobs, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobList {
    pub jobs: Vec<JobView>,
    /// Where the next page starts; `null` on the last.
    pub next_cursor: Option<String>,
}

/// The answer to `DELETE /jobs/{id}`: the cancelled job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cancelled {
    pub job: JobView,
}

#[cfg(test)]
mod tests {
    use ferry_core::jobs::JobResult;
    use ferry_core::public::ErrorCode;
    use serde_json::json;

    use super::*;

    fn record(status: Status) -> JobRecord {
        JobRecord {
            id: "00000000-0000-4000-8000-000000000000".into(),
            owner: "u".into(),
            kind: "export".into(),
            params: json!({}),
            params_hash: String::new(),
            status,
            attempt: 2,
            progress: Progress { phase: "writing".into(), done: 5, total: None, counts: BTreeMap::new() },
            lease_expires_at: i64::MAX,
            result: None::<JobResult>,
            error: None,
            created_at: 0,
            updated_at: 1_000,
            retain_until: 86_400_000,
        }
    }

    /// The view as the API built it before it had a type: `json!` in this order, then members set.
    fn by_hand(job: &JobRecord, details: &BTreeMap<String, serde_json::Value>) -> serde_json::Value {
        let mut v = json!({
            "id": job.id,
            "kind": job.kind,
            "status": job.status.as_str(),
            "progress": job.progress,
            "attempt": job.attempt,
            "created_at": rfc3339(job.created_at),
            "updated_at": rfc3339(job.updated_at),
            "retained_until": rfc3339(job.retain_until),
        });
        for (k, d) in details {
            v[k] = d.clone();
        }
        if let Some(e) = &job.error {
            v["error"] = json!(e);
        }
        v
    }

    #[test]
    fn a_view_is_byte_for_byte_the_answer_built_by_hand() {
        let details = BTreeMap::from([("format".to_owned(), json!("csv")), ("target".to_owned(), json!("crm"))]);
        let mut failed = record(Status::Failed);
        failed.error = Some(PublicError::code(ErrorCode::Internal).with_request_id("r-1"));
        for job in [record(Status::Running), failed] {
            let view = JobView::summary(&job, 0, details.clone());
            let typed = serde_json::to_value(&view).unwrap();
            assert_eq!(typed.to_string(), by_hand(&job, &details).to_string());
            assert_eq!(serde_json::from_value::<JobView>(typed).unwrap(), view, "reads back");
        }

        let mut view = JobView::summary(&record(Status::Succeeded), 0, BTreeMap::new());
        let link = |url: &str| FileLink { url: url.into(), expires_at: Some("2026-11-22T15:30:00Z".into()), size: 3, rows: 1 };
        view.download = Some(Download { url: "u".into(), expires_at: None, size: 10, rows: 2, sheets: 1, truncated_cells: 0 });
        view.counts = BTreeMap::from([("failed".to_owned(), 1)]);
        view.files = BTreeMap::from([("failed".to_owned(), link("f"))]);
        let mut expect = by_hand(&record(Status::Succeeded), &BTreeMap::new());
        expect["download"] = json!({"url": "u", "expires_at": null, "size": 10, "rows": 2, "sheets": 1, "truncated_cells": 0});
        expect["counts"] = json!({"failed": 1});
        expect["files"]["failed"] = json!({"url": "f", "expires_at": "2026-11-22T15:30:00Z", "size": 3, "rows": 1});
        assert_eq!(serde_json::to_value(&view).unwrap().to_string(), expect.to_string());
    }

    #[test]
    fn answers_keep_their_members() {
        let job = JobView::summary(&record(Status::Queued), 0, BTreeMap::new());
        let fresh = Submitted { job: job.clone(), status_url: "/jobs/x".into(), duplicate: false };
        let again = Submitted { duplicate: true, ..fresh.clone() };
        let (fresh_v, again_v) = (serde_json::to_value(&fresh).unwrap(), serde_json::to_value(&again).unwrap());
        let mut expect = json!({ "job": job, "status_url": "/jobs/x" });
        assert_eq!(fresh_v.to_string(), expect.to_string());
        expect["duplicate"] = serde_json::Value::Bool(true);
        assert_eq!(again_v.to_string(), expect.to_string());
        let list = JobList { jobs: vec![job.clone()], next_cursor: None };
        assert_eq!(serde_json::to_value(&list).unwrap().to_string(), json!({ "jobs": [job], "next_cursor": null }).to_string());
    }
}
