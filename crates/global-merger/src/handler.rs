use std::collections::BTreeSet;

use aws_lambda_events::s3::S3Event;
use ferry_aws::s3::{S3Client, Store};
use ferry_aws::votes::{self, MergeOutcome, VoteError, VoteSettings};
use ferry_core::key::{ResultKey, decode_event_key};
use lambda_runtime::{Diagnostic, LambdaEvent};
use serde::Serialize;

/// State built once per execution environment.
#[derive(Debug, Clone)]
pub struct Merger {
    pub s3: S3Client,
    pub settings: VoteSettings,
}

/// One merge per distinct (bucket, evno, stage) in the event, and the records skipped.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub merges: Vec<MergeOutcome>,
    pub skipped: Vec<Skipped>,
}

#[derive(Debug, Serialize)]
pub struct Skipped {
    pub key: String,
    pub reason: String,
}

/// The event failed; the message names every object at fault.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    #[error("event is not an S3 notification: {0}")]
    BadEvent(String),
    #[error("{} of {} merges failed: {}", .failures.len(), .total, .failures.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    Merges { total: usize, failures: Vec<VoteError> },
}

impl From<HandlerError> for Diagnostic {
    fn from(e: HandlerError) -> Diagnostic {
        let error_type = match &e {
            HandlerError::BadEvent(_) => "BadEvent",
            HandlerError::Merges { failures, .. } => failures.first().map_or("Error", VoteError::kind),
        };
        Diagnostic { error_type: error_type.to_owned(), error_message: e.to_string() }
    }
}

/// Handles one S3 notification: records of the same (bucket, evno, stage) share one merge.
pub async fn handle(state: &Merger, event: LambdaEvent<serde_json::Value>) -> Result<Report, HandlerError> {
    let payload = event.payload;
    if payload.get("Event").and_then(|e| e.as_str()) == Some("s3:TestEvent") {
        tracing::info!("s3:TestEvent received; nothing to do");
        return Ok(Report::default());
    }
    let event: S3Event = serde_json::from_value(payload).map_err(|e| HandlerError::BadEvent(e.to_string()))?;
    let mut report = Report::default();
    let mut stages: BTreeSet<(String, u64, String)> = BTreeSet::new();
    for record in event.records {
        let key = decode_event_key(record.s3.object.key.as_deref().unwrap_or_default()).into_owned();
        let event_name = record.event_name.unwrap_or_default();
        let reason = if !event_name.is_empty() && !event_name.starts_with("ObjectCreated") {
            Some(format!("event {event_name} is not ObjectCreated"))
        } else {
            match (ResultKey::parse(&key), record.s3.bucket.name) {
                (Ok(k), Some(bucket)) => {
                    stages.insert((bucket, k.evno, k.stage));
                    None
                }
                (Err(e), _) => Some(e.to_string()),
                (_, None) => Some("record names no bucket".to_owned()),
            }
        };
        if let Some(reason) = reason {
            tracing::info!(key, reason, "record skipped");
            report.skipped.push(Skipped { key, reason });
        }
    }
    let total = stages.len();
    let mut failures = Vec::new();
    for (bucket, evno, stage) in stages {
        let store = Store::new(state.s3.clone(), bucket);
        match votes::merge_stage(&store, &state.settings, evno, &stage).await {
            Ok(outcome) => {
                tracing::info!(evno, stage, ?outcome, "merge done");
                report.merges.push(outcome);
            }
            Err(e) => {
                tracing::error!(evno, stage, error = %e, kind = e.kind(), "merge failed");
                failures.push(e);
            }
        }
    }
    if failures.is_empty() { Ok(report) } else { Err(HandlerError::Merges { total, failures }) }
}
