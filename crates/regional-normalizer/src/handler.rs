use aws_lambda_events::s3::S3Event;
use ferry_aws::s3::{S3Client, Store};
use ferry_aws::votes::{self, NormalizeOutcome, VoteError, VoteSettings};
use ferry_core::key::{UploadKey, decode_event_key};
use lambda_runtime::{Diagnostic, LambdaEvent};
use serde::Serialize;

/// State built once per execution environment.
#[derive(Debug, Clone)]
pub struct Normalizer {
    pub s3: S3Client,
    pub settings: VoteSettings,
}

/// What happened to each record of the event.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub records: Vec<RecordReport>,
}

#[derive(Debug, Serialize)]
pub struct RecordReport {
    pub key: String,
    #[serde(flatten)]
    pub outcome: RecordOutcome,
}

#[derive(Debug, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum RecordOutcome {
    Done(NormalizeOutcome),
    Skipped { reason: String },
}

/// The event failed; the message names every object at fault.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    #[error("event is not an S3 notification: {0}")]
    BadEvent(String),
    #[error("{} of {} records failed: {}", .failures.len(), .total, .failures.iter().map(|(_, e)| e.to_string()).collect::<Vec<_>>().join("; "))]
    Records { total: usize, failures: Vec<(&'static str, VoteError)> },
}

impl From<HandlerError> for Diagnostic {
    fn from(e: HandlerError) -> Diagnostic {
        let error_type = match &e {
            HandlerError::BadEvent(_) => "BadEvent",
            HandlerError::Records { failures, .. } => failures.first().map_or("Error", |(k, _)| k),
        };
        Diagnostic { error_type: error_type.to_owned(), error_message: e.to_string() }
    }
}

/// Handles one S3 notification. Every record is attempted; if any failed, the invocation fails
/// (so Lambda retries it) with an error naming each bad object and line.
pub async fn handle(state: &Normalizer, event: LambdaEvent<serde_json::Value>) -> Result<Report, HandlerError> {
    let Some(event) = parse_event(event.payload)? else {
        tracing::info!("s3:TestEvent received; nothing to do");
        return Ok(Report::default());
    };
    let mut report = Report::default();
    let mut failures = Vec::new();
    let total = event.records.len();
    for record in event.records {
        let raw_key = record.s3.object.key.clone().unwrap_or_default();
        let key = decode_event_key(&raw_key).into_owned();
        let event_name = record.event_name.clone().unwrap_or_default();
        let skip = |reason: String| {
            tracing::info!(key, reason, "record skipped");
            RecordReport { key: key.clone(), outcome: RecordOutcome::Skipped { reason } }
        };
        if event_name == "s3:TestEvent" {
            report.records.push(skip("s3:TestEvent".into()));
            continue;
        }
        if !event_name.is_empty() && !event_name.starts_with("ObjectCreated") {
            report.records.push(skip(format!("event {event_name} is not ObjectCreated")));
            continue;
        }
        if let Err(e) = UploadKey::parse(&key) {
            report.records.push(skip(e.to_string()));
            continue;
        }
        let Some(bucket) = record.s3.bucket.name.clone() else {
            report.records.push(skip("record names no bucket".into()));
            continue;
        };
        let store = Store::new(state.s3.clone(), bucket);
        match votes::normalize_upload(&store, &state.settings, &key).await {
            Ok(outcome) => {
                tracing::info!(key, ?outcome, "record done");
                report.records.push(RecordReport { key, outcome: RecordOutcome::Done(outcome) });
            }
            Err(e) => {
                tracing::error!(key, error = %e, kind = e.kind(), "record failed");
                failures.push((e.kind(), e));
            }
        }
    }
    if failures.is_empty() { Ok(report) } else { Err(HandlerError::Records { total, failures }) }
}

/// `None` for S3's `s3:TestEvent`, which carries no records.
fn parse_event(payload: serde_json::Value) -> Result<Option<S3Event>, HandlerError> {
    if payload.get("Event").and_then(|e| e.as_str()) == Some("s3:TestEvent") {
        return Ok(None);
    }
    serde_json::from_value(payload).map(Some).map_err(|e| HandlerError::BadEvent(e.to_string()))
}
