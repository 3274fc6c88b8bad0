//! Lambda events and API Gateway requests as AWS sends them, built from the fixtures under
//! `events/`, so that the fixtures used with `cargo lambda invoke` and the events the tests, the
//! benchmarks and the demo send are one shape.
//!
//! - [`s3_put_event`]: an S3 `ObjectCreated:Put` notification (`events/s3-put.json`).
//! - [`sqs_event`]: an SQS batch as the event source mapping delivers it (`events/sqs-notification.json`).
//! - [`notify_request`]: `POST /notifications` as the intake receives it (`events/apigw-notify.json`).
//! - [`api_request`]: a `job-api` request, HTTP API payload v2 (`events/apigw-http-jobs.json`).
//! - [`notification`]: a notification body; [`event_fixture`]: any fixture, parsed.

use std::sync::atomic::{AtomicUsize, Ordering};

use ferry_aws::notify::Received;
use ferry_core::notify::Channel;

use crate::workspace;

/// Reads a fixture under `events/`.
pub fn event_fixture(name: &str) -> serde_json::Value {
    let path = workspace().join("events").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

/// The `events/s3-put.json` fixture.
pub const S3_PUT: &str = include_str!("../../../events/s3-put.json");

/// An S3 `ObjectCreated:Put` notification with one record per key. Keys are form-url-encoded as S3
/// encodes them (a space becomes `+`).
pub fn s3_put_event(bucket: &str, keys: &[&str]) -> serde_json::Value {
    let mut event: serde_json::Value = serde_json::from_str(S3_PUT).expect("events/s3-put.json is valid JSON");
    let template = event["Records"][0].clone();
    let records: Vec<serde_json::Value> = keys
        .iter()
        .map(|key| {
            let mut r = template.clone();
            r["s3"]["bucket"]["name"] = bucket.into();
            r["s3"]["bucket"]["arn"] = format!("arn:aws:s3:::{bucket}").into();
            r["s3"]["object"]["key"] = form_encode(key).into();
            r
        })
        .collect();
    event["Records"] = records.into();
    event
}

/// Encodes a key the way S3 event notifications do: URL-encoded, spaces as `+`.
pub fn form_encode(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'*' | b'/' => out.push(b as char),
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

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

/// The `events/apigw-http-jobs.json` fixture.
pub const APIGW_HTTP_JOBS: &str = include_str!("../../../events/apigw-http-jobs.json");

/// A `job-api` request: `method` on `path` (with an optional query string), `body`, from the caller
/// whose JWT `sub` is `owner` (`None`: no verified identity). Each request gets its own request id,
/// as API Gateway gives it.
pub fn api_request(method: &str, path_and_query: &str, body: Option<&str>, owner: Option<&str>) -> lambda_http::Request {
    let mut event: serde_json::Value = serde_json::from_str(APIGW_HTTP_JOBS).expect("events/apigw-http-jobs.json is valid JSON");
    event["requestContext"]["requestId"] = next_request_id().into();
    let (path, query) = path_and_query.split_once('?').unwrap_or((path_and_query, ""));
    event["rawPath"] = path.into();
    event["rawQueryString"] = query.into();
    event["routeKey"] = format!("{method} {path}").into();
    event["requestContext"]["routeKey"] = event["routeKey"].clone();
    event["requestContext"]["http"]["method"] = method.into();
    event["requestContext"]["http"]["path"] = path.into();
    if !query.is_empty() {
        let params: serde_json::Map<String, serde_json::Value> = query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), serde_json::Value::String(v.to_owned())))
            .collect();
        event["queryStringParameters"] = params.into();
    }
    match body {
        Some(b) => event["body"] = b.into(),
        None => {
            event.as_object_mut().map(|o| o.remove("body"));
        }
    }
    match owner {
        Some(o) => event["requestContext"]["authorizer"]["jwt"]["claims"]["sub"] = o.into(),
        None => {
            event["requestContext"].as_object_mut().map(|o| o.remove("authorizer"));
        }
    }
    lambda_http::request::from_str(&event.to_string()).expect("a valid API Gateway v2 event")
}

/// A request id unique in this process (`req-{pid}-{n}`).
pub fn next_request_id() -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!("req-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// A notification body as a sender posts it: `id` on `channel` to `recipient` with `template`,
/// and an optional `fallback` channel.
pub fn notification(id: &str, channel: Channel, recipient: &str, template: &str, fallback: Option<Channel>) -> String {
    let mut v = serde_json::json!({
        "notification_id": id,
        "channel": channel.as_str(),
        "recipient": recipient,
        "template": template,
        "variables": {"name": "Kim", "order": format!("A-{}", id.len())},
        "requested_at": "2026-11-22T15:30:00Z",
    });
    if let Some(fb) = fallback {
        v["fallback"] = fb.as_str().into();
    }
    v.to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn keys_are_encoded_as_s3_does() {
        assert_eq!(super::form_encode("/data/1/a b+c,d.csv"), "/data/1/a+b%2Bc%2Cd.csv");
        let e = super::s3_put_event("b", &["x y", "z"]);
        assert_eq!(e["Records"][0]["s3"]["object"]["key"], "x+y");
        assert_eq!(e["Records"][1]["s3"]["bucket"]["name"], "b");
    }
}
