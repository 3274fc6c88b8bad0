use ferry_aws::s3::{S3Client, Store};
use ferry_aws::votes::{self, NormalizeOutcome, VoteError, VoteSettings};
use ferry_core::key::UploadKey;
use ferry_lambda::s3;
use lambda_runtime::LambdaEvent;
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
pub type HandlerError = s3::EventError<VoteError>;

/// Handles one S3 notification. Every record is attempted; if any failed, the invocation fails
/// (so Lambda retries it) with an error naming each bad object and line.
pub async fn handle(state: &Normalizer, event: LambdaEvent<serde_json::Value>) -> Result<Report, HandlerError> {
    let Some(event) = s3::parse(event.payload)? else {
        return Ok(Report::default());
    };
    let objects = s3::objects(event);
    let mut report = Report::default();
    let mut failures = s3::Failures::new("records", objects.len());
    for object in objects {
        let skip = |reason: String| {
            tracing::info!(key = object.key, reason, "record skipped");
            RecordReport { key: object.key.clone(), outcome: RecordOutcome::Skipped { reason } }
        };
        if object.event_name == s3::TEST_EVENT {
            report.records.push(skip(s3::TEST_EVENT.into()));
            continue;
        }
        let bucket = match object.admit(UploadKey::parse) {
            Ok((bucket, _)) => bucket,
            Err(reason) => {
                report.records.push(skip(reason));
                continue;
            }
        };
        let key = object.key;
        let store = Store::new(state.s3.clone(), bucket);
        match votes::normalize_upload(&store, &state.settings, &key).await {
            Ok(outcome) => {
                tracing::info!(key, ?outcome, "record done");
                report.records.push(RecordReport { key, outcome: RecordOutcome::Done(outcome) });
            }
            Err(e) => {
                tracing::error!(key, error = %e, kind = e.kind(), "record failed");
                failures.push(e.kind(), e);
            }
        }
    }
    failures.into_result(report)
}
