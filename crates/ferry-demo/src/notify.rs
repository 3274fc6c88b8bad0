//! The notification scenario, and the pieces the tests share with it:
//!
//! - [`LocalProvider`]: a delivery provider on loopback (axum) that can be told to fail or to
//!   demand an auth header, and that counts every message it accepted per notification id.
//! - [`sqs_event`]: an SQS event as Lambda sends it, built from `events/sqs-notification.json`.
//! - [`notify_request`]: a `POST /notifications` request as API Gateway hands it to the intake,
//!   built from `events/apigw-notify.json`.
//! - [`pump`]: what Lambda's SQS event source mapping does: receive batches, invoke the consumer,
//!   delete what it did not report as failed, until the queue is empty.
//! - [`run`]: two senders sharing a notification id through the intake; then 1,000 notifications,
//!   some malformed, some hitting a failing provider; fix it, redrive, and check that every valid
//!   one was delivered exactly once and every failed one is in the DLQ exactly once.

mod provider;
mod pump;
mod scenario;

use ferry_aws::notify::Received;

pub use provider::{Failure, LocalProvider};
pub use pump::{PumpSettings, PumpStats, peek_all, peek_and_release, pump};
pub use scenario::{DEMO_SENDER, notification, run};

/// The `events/sqs-notification.json` fixture.
pub const SQS_NOTIFICATION: &str = include_str!("../../../events/sqs-notification.json");

/// The `events/apigw-notify.json` fixture: `POST /notifications` with a user's access token.
pub const APIGW_NOTIFY: &str = include_str!("../../../events/apigw-notify.json");

/// A `POST /notifications` request as API Gateway's HTTP API hands it over, carrying `body`. The
/// fixture's verified JWT claims are replaced by `claims`; `None` removes the authorizer (a route
/// without one).
pub fn notify_request(claims: Option<&[(&str, &str)]>, body: &str) -> lambda_http::Request {
    let mut v: serde_json::Value = serde_json::from_str(APIGW_NOTIFY).expect("events/apigw-notify.json is valid JSON");
    match claims {
        Some(claims) => {
            let map: serde_json::Map<String, serde_json::Value> = claims.iter().map(|(k, v)| ((*k).to_owned(), (*v).into())).collect();
            v["requestContext"]["authorizer"]["jwt"]["claims"] = map.into();
        }
        None => {
            if let Some(ctx) = v["requestContext"].as_object_mut() {
                ctx.remove("authorizer");
            }
        }
    }
    v["body"] = body.into();
    lambda_http::request::from_str(&v.to_string()).expect("an HTTP API v2 request")
}

/// An SQS event carrying `messages` as Lambda's event source mapping delivers them.
pub fn sqs_event(queue_arn: &str, messages: &[Received]) -> serde_json::Value {
    let mut event: serde_json::Value = serde_json::from_str(SQS_NOTIFICATION).expect("events/sqs-notification.json is valid JSON");
    let template = event["Records"][0].clone();
    let records: Vec<serde_json::Value> = messages
        .iter()
        .map(|m| {
            let mut r = template.clone();
            r["messageId"] = m.message_id.clone().into();
            r["receiptHandle"] = m.receipt_handle.clone().into();
            r["body"] = m.body.clone().into();
            r["eventSourceARN"] = queue_arn.into();
            r["attributes"] = serde_json::to_value(&m.system).unwrap_or_default();
            r["messageAttributes"] = m
                .attributes
                .iter()
                .map(|(k, v)| {
                    (k.clone(), serde_json::json!({"stringValue": v, "stringListValues": [], "binaryListValues": [], "dataType": "String"}))
                })
                .collect::<serde_json::Map<_, _>>()
                .into();
            r
        })
        .collect();
    event["Records"] = records.into();
    event
}
