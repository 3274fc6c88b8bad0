//! What a job is and which state changes are allowed: [`Status`] and [`Transition`] (`queued ->
//! running -> succeeded | failed | cancelled`), the [`JobRecord`] the API and the worker read (its
//! `lost` status derived from the lease, never stored), and whether a running-job slot is free.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::Phase;
use crate::public::{ErrorCode, PublicError};

/// Where a job is. `Lost` is derived, never stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    /// Queued or running, but its lease passed without a heartbeat: the worker died or never started.
    Lost,
}

impl Status {
    pub const STORED: [Status; 5] = [Status::Queued, Status::Running, Status::Succeeded, Status::Failed, Status::Cancelled];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Running => "running",
            Status::Succeeded => "succeeded",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
            Status::Lost => "lost",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        [Status::Queued, Status::Running, Status::Succeeded, Status::Failed, Status::Cancelled, Status::Lost]
            .into_iter()
            .find(|st| st.as_str() == s)
    }

    /// Queued or running: a worker is (or should be) on it, and its lease matters.
    pub fn is_active(self) -> bool {
        matches!(self, Status::Queued | Status::Running)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A change of a job's stored status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// A worker takes the job (first run or a continuation).
    Claim,
    /// The running worker reports progress and extends its lease, or hands over to a continuation.
    Heartbeat,
    Succeed,
    /// The worker failed, or the invoke that should have started it did.
    Fail,
    Cancel,
}

/// A transition that is not allowed from the status the job has.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("job is {from}: cannot {transition:?}")]
pub struct TransitionError {
    pub from: Status,
    pub transition: Transition,
}

impl Transition {
    /// The stored statuses this transition may start from. Conditional writes use exactly this list,
    /// so the store enforces the same machine as [`Transition::apply`].
    pub fn allowed_from(self) -> &'static [Status] {
        match self {
            Transition::Claim => &[Status::Queued, Status::Running],
            Transition::Heartbeat | Transition::Succeed => &[Status::Running],
            Transition::Fail | Transition::Cancel => &[Status::Queued, Status::Running],
        }
    }

    pub fn target(self) -> Status {
        match self {
            Transition::Claim | Transition::Heartbeat => Status::Running,
            Transition::Succeed => Status::Succeeded,
            Transition::Fail => Status::Failed,
            Transition::Cancel => Status::Cancelled,
        }
    }

    /// The status after this transition from `from`.
    pub fn apply(self, from: Status) -> Result<Status, TransitionError> {
        if self.allowed_from().contains(&from) { Ok(self.target()) } else { Err(TransitionError { from, transition: self }) }
    }

    /// The phase the write of this transition sets: a claim starts reading, an end names itself. A
    /// heartbeat sets none of its own: it records the phase its worker reports.
    pub fn phase(self) -> Option<Phase> {
        match self {
            Transition::Claim => Some(Phase::Reading),
            Transition::Heartbeat => None,
            Transition::Succeed => Some(Phase::Done),
            Transition::Fail => Some(Phase::Failed),
            Transition::Cancel => Some(Phase::Cancelled),
        }
    }
}

/// How far a running job is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// What the worker is doing: `queued`, `reading`, `done`, ...
    pub phase: Phase,
    /// Rows (or items) done so far.
    pub done: u64,
    /// Rows expected in all, when the source can tell.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total: Option<u64>,
    /// Items by state, for kinds that count them (a batch: pending, running, succeeded, ...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub counts: BTreeMap<String, u64>,
}

/// Another file a job wrote beside its main result (a batch's failed items).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputFile {
    pub key: String,
    pub size: u64,
    pub rows: u64,
}

/// Where a finished job's output lies.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobResult {
    pub bucket: String,
    pub key: String,
    pub size: u64,
    pub rows: u64,
    /// Worksheets of an xlsx (1 for other formats).
    pub sheets: u32,
    /// Text cells of an xlsx cut to Excel's limit of 32,767 characters (0 for other formats, and
    /// for results stored before this was counted).
    #[serde(default)]
    pub truncated_cells: u64,
    /// Other files by name (`failed`), each downloadable like the main one.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub files: BTreeMap<String, OutputFile>,
    /// Final counts by state, for kinds that count items.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub counts: BTreeMap<String, u64>,
}

/// A job's status record.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRecord {
    pub id: String,
    pub owner: String,
    /// The kind's name (`export`, `batch`, ...): which implementation runs it.
    pub kind: String,
    /// The params as the kind admitted them, in canonical form ([`canonical_json`](super::canonical_json)).
    pub params: serde_json::Value,
    /// [`params_hash`](super::params_hash) of `params`: which lock the job holds.
    pub params_hash: String,
    /// The stored status; read it through [`JobRecord::status_at`].
    pub status: Status,
    /// Which run of the job is current: 0 for the first, +1 for each continuation.
    pub attempt: u32,
    pub progress: Progress,
    pub lease_expires_at: i64,
    pub result: Option<JobResult>,
    /// Why it failed, as the caller may see it.
    pub error: Option<PublicError>,
    pub created_at: i64,
    pub updated_at: i64,
    /// When the record and its file stop being served (also the store's TTL attribute, in seconds).
    pub retain_until: i64,
}

impl JobRecord {
    /// The record of a job just submitted: queued at attempt 0, with the params' hash (the lock it
    /// takes), a lease for its worker to start within, and its retention, all counted from `now`.
    pub fn queued(
        id: &str,
        owner: &str,
        kind: &str,
        params: &serde_json::Value,
        now: i64,
        start_lease_ms: i64,
        retention_ms: i64,
    ) -> JobRecord {
        JobRecord {
            id: id.to_owned(),
            owner: owner.to_owned(),
            kind: kind.to_owned(),
            params: params.clone(),
            params_hash: super::params_hash(&super::canonical_json(params)),
            status: Status::Queued,
            attempt: 0,
            progress: Progress { phase: Phase::Queued, ..Progress::default() },
            lease_expires_at: now + start_lease_ms,
            result: None,
            error: None,
            created_at: now,
            updated_at: now,
            retain_until: now + retention_ms,
        }
    }

    /// The status as of `now`: an active job whose lease passed is `Lost`.
    pub fn status_at(&self, now: i64) -> Status {
        if self.status.is_active() && self.lease_expires_at < now { Status::Lost } else { self.status }
    }

    /// The error the caller sees as of `now`: the stored one of a failed job, or for a lost one the
    /// lease that ran out (nothing else is known, and nothing else is said).
    pub fn error_at(&self, now: i64) -> Option<PublicError> {
        match self.status_at(now) {
            Status::Failed => Some(self.error.clone().unwrap_or_else(|| PublicError::code(ErrorCode::Internal))),
            Status::Lost => {
                let when = rfc3339(self.lease_expires_at).unwrap_or_else(|| "an unknown time".into());
                let message = format!("the worker stopped reporting progress; its lease ended at {when}");
                Some(PublicError::new(ErrorCode::WorkerUnavailable, message))
            }
            _ => None,
        }
    }

    /// Past its retention: treated as gone even if the store has not deleted it yet (TTL deletes late).
    pub fn is_expired(&self, now: i64) -> bool {
        self.retain_until < now
    }
}

/// `ms` (milliseconds since the Unix epoch) as an RFC 3339 UTC time, or `None` when it is out of range.
pub fn rfc3339(ms: i64) -> Option<String> {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
}

/// Whether one of an owner's running-job slots is free: the job it names has ended (or reads
/// `lost`), or, when that job is not written yet, the slot's hold (the submit that took it) passed.
/// Derived from the job, so a slot frees itself whatever way its job ended, crashes included.
pub fn slot_is_free(holder: Option<&JobRecord>, held_until: i64, now: i64) -> bool {
    match holder {
        Some(job) => !job.status_at(now).is_active(),
        None => held_until < now,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::ExportParams;
    use crate::jobs::submit::tests::SCAN;

    #[track_caller]
    fn check_transition(t: Transition, from: Status, expect: Option<Status>) {
        assert_eq!(t.apply(from).ok(), expect, "{t:?} from {from}");
    }

    #[test]
    fn state_machine() {
        use Status::*;
        use Transition::*;
        check_transition(Claim, Queued, Some(Running));
        check_transition(Claim, Running, Some(Running));
        check_transition(Heartbeat, Running, Some(Running));
        check_transition(Heartbeat, Queued, None);
        check_transition(Succeed, Running, Some(Succeeded));
        check_transition(Succeed, Queued, None);
        check_transition(Fail, Queued, Some(Failed));
        check_transition(Fail, Running, Some(Failed));
        check_transition(Cancel, Queued, Some(Cancelled));
        check_transition(Cancel, Running, Some(Cancelled));
        // Nothing leaves a terminal status.
        for from in [Succeeded, Failed, Cancelled] {
            for t in [Claim, Heartbeat, Succeed, Fail, Cancel] {
                check_transition(t, from, None);
            }
        }
        assert_eq!(Status::STORED.map(|s| Status::parse(s.as_str())), Status::STORED.map(Some));
    }

    fn record(status: Status, lease: i64) -> JobRecord {
        JobRecord {
            id: "00000000-0000-4000-8000-000000000000".into(),
            owner: "u".into(),
            kind: "export".into(),
            params: ExportParams::parse(serde_json::from_str(SCAN).unwrap()).unwrap().to_value(),
            params_hash: String::new(),
            status,
            attempt: 0,
            progress: Progress::default(),
            lease_expires_at: lease,
            result: None,
            error: None,
            created_at: 0,
            updated_at: 0,
            retain_until: 5_000,
        }
    }

    #[test]
    fn each_write_sets_its_phase() {
        let check = |t: Transition, expect: Option<Phase>| assert_eq!(t.phase(), expect, "{t:?}");
        check(Transition::Claim, Some(Phase::Reading));
        check(Transition::Heartbeat, None);
        check(Transition::Succeed, Some(Phase::Done));
        check(Transition::Fail, Some(Phase::Failed));
        check(Transition::Cancel, Some(Phase::Cancelled));
    }

    #[test]
    fn a_submitted_job_is_queued_with_its_lease_and_retention() {
        let params = serde_json::json!({"b": 1, "a": [2]});
        let r = JobRecord::queued("j-1", "u", "export", &params, 1_000, 60_000, 86_400_000);
        assert_eq!((r.status, r.attempt, r.progress.phase.as_str()), (Status::Queued, 0, "queued"));
        assert_eq!((r.lease_expires_at, r.created_at, r.updated_at, r.retain_until), (61_000, 1_000, 1_000, 86_401_000));
        assert_eq!(r.params_hash, crate::jobs::params_hash(&crate::jobs::canonical_json(&params)));
        assert_eq!((r.id.as_str(), r.owner.as_str(), r.kind.as_str(), &r.params), ("j-1", "u", "export", &params));
        assert_eq!((r.status_at(61_000), r.status_at(61_001)), (Status::Queued, Status::Lost));
        assert_eq!((r.result, r.error), (None, None));
    }

    #[test]
    fn a_slot_is_free_once_its_job_ends_or_reads_lost() {
        let at = |status, lease| record(status, lease);
        assert!(!slot_is_free(Some(&at(Status::Queued, 2_000)), 0, 1_000));
        assert!(!slot_is_free(Some(&at(Status::Running, 2_000)), 0, 1_000));
        assert!(slot_is_free(Some(&at(Status::Running, 500)), 9_000, 1_000), "lost frees it");
        for done in [Status::Succeeded, Status::Failed, Status::Cancelled] {
            assert!(slot_is_free(Some(&at(done, 2_000)), 9_000, 1_000), "{done:?}");
        }
        // A submit between taking the slot and writing its job holds it until its hold passes.
        assert!(!slot_is_free(None, 1_000, 1_000));
        assert!(slot_is_free(None, 999, 1_000));
    }

    #[test]
    fn lost_is_derived_from_an_expired_lease() {
        let check =
            |status, lease, now, expect| assert_eq!(record(status, lease).status_at(now), expect, "{status} lease {lease} at {now}");
        check(Status::Running, 1_000, 999, Status::Running);
        check(Status::Running, 1_000, 1_000, Status::Running);
        check(Status::Running, 1_000, 1_001, Status::Lost);
        check(Status::Queued, 1_000, 1_001, Status::Lost);
        check(Status::Succeeded, 1_000, 9_999, Status::Succeeded);
        check(Status::Cancelled, 1_000, 9_999, Status::Cancelled);
        let lost = record(Status::Running, 1_763_805_600_000).error_at(1_763_805_600_001).unwrap();
        assert_eq!(lost.code, ErrorCode::WorkerUnavailable);
        assert_eq!(lost.message, "the worker stopped reporting progress; its lease ended at 2025-11-22T10:00:00Z");
        assert!(!crate::public::leaks_internals(&lost.message));
        assert_eq!(record(Status::Running, 1_000).error_at(999), None);
        let mut failed = record(Status::Failed, 0);
        assert_eq!(failed.error_at(1).map(|e| e.code), Some(ErrorCode::Internal), "a failure without a stored error");
        failed.error = Some(PublicError::code(ErrorCode::TooLarge));
        assert_eq!(failed.error_at(1), Some(PublicError::code(ErrorCode::TooLarge)));
        assert!(!record(Status::Succeeded, 0).is_expired(5_000));
        assert!(record(Status::Succeeded, 0).is_expired(5_001));
    }
}
