use std::collections::BTreeSet;

use ferry_aws::s3::{S3Client, Store};
use ferry_aws::votes::{self, MergeOutcome, VoteError, VoteSettings};
use ferry_core::key::ResultKey;
use ferry_lambda::{metrics, s3};
use lambda_runtime::LambdaEvent;
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
pub type HandlerError = s3::EventError<VoteError>;

/// Handles one S3 notification: records of the same (bucket, evno, stage) share one merge.
pub async fn handle(state: &Merger, event: LambdaEvent<serde_json::Value>) -> Result<Report, HandlerError> {
    let Some(event) = s3::parse(event.payload)? else {
        return Ok(Report::default());
    };
    let mut report = Report::default();
    let mut stages: BTreeSet<(String, u64, String)> = BTreeSet::new();
    for object in s3::objects(event) {
        match object.admit(ResultKey::parse) {
            Ok((bucket, k)) => {
                stages.insert((bucket, k.evno, k.stage));
            }
            Err(reason) => {
                tracing::info!(key = object.key, reason, "record skipped");
                report.skipped.push(Skipped { key: object.key, reason });
            }
        }
    }
    let mut failures = s3::Failures::new("merges", stages.len());
    for (bucket, evno, stage) in stages {
        let store = Store::new(state.s3.clone(), bucket);
        match votes::merge_stage(&store, &state.settings, evno, &stage).await {
            Ok(outcome) => {
                tracing::info!(evno, stage, ?outcome, "merge done");
                if let MergeOutcome::Written { rows, input_bytes, .. } = &outcome {
                    metrics::Line::new(metrics::Function::GlobalMerger)
                        .count(metrics::Metric::RowsMerged, *rows as u64)
                        .count(metrics::Metric::InputBytesMerged, *input_bytes)
                        .emit();
                }
                report.merges.push(outcome);
            }
            Err(e) => {
                tracing::error!(evno, stage, error = %e, kind = e.kind(), "merge failed");
                failures.push(e.kind(), e);
            }
        }
    }
    failures.into_result(report)
}
