use ferry_aws::s3::{S3Client, Store};
use ferry_aws::votes::{self, NormalizeOutcome, VoteError, VoteSettings};
use ferry_core::key::UploadKey;
use ferry_lambda::{metrics, s3};
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

/// One record: its key, then what happened to it (`status`, and the outcome's fields).
#[derive(Debug)]
pub struct RecordReport {
    pub key: String,
    pub outcome: RecordOutcome,
}

impl Serialize for RecordReport {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        // Some outcomes (`missing`, `stamped_ahead`) name the record's key themselves: a flattened
        // outcome would write `key` twice, which JSON readers take differently.
        let outcome = serde_json::to_value(&self.outcome).map_err(serde::ser::Error::custom)?;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("key", &self.key)?;
        if let serde_json::Value::Object(fields) = outcome {
            for (name, value) in fields.iter().filter(|(name, _)| name.as_str() != "key") {
                map.serialize_entry(name, value)?;
            }
        }
        map.end()
    }
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
                if let NormalizeOutcome::Written { rows, input_bytes, .. } = &outcome {
                    metrics::Line::new(metrics::Function::RegionalNormalizer)
                        .count(metrics::Metric::RowsNormalized, *rows as u64)
                        .count(metrics::Metric::InputBytesNormalized, *input_bytes)
                        .emit();
                }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_names_its_key_once() {
        let key = "data/1/jp-final-202611010000.csv";
        for outcome in [
            NormalizeOutcome::Missing { key: key.into() },
            NormalizeOutcome::StampedAhead { key: key.into(), skipped: vec![key.into()] },
            NormalizeOutcome::UpToDate { result: "result/1/final/result-jp.csv".into(), source: key.into() },
        ] {
            let text = serde_json::to_string(&RecordReport { key: key.into(), outcome: RecordOutcome::Done(outcome) }).unwrap();
            assert_eq!(text.matches("\"key\"").count(), 1, "{text}");
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert_eq!((v["key"].as_str(), v["status"].as_str()), (Some(key), Some("done")), "{text}");
        }
        let skipped = RecordReport { key: key.into(), outcome: RecordOutcome::Skipped { reason: "s3:TestEvent".into() } };
        let v = serde_json::to_value(&skipped).unwrap();
        assert_eq!(v, serde_json::json!({"key": key, "status": "skipped", "reason": "s3:TestEvent"}));
    }
}
