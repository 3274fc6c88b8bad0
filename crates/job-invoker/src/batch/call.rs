//! One call to a target: the request built from the target's configuration and the items, and the
//! answer reduced to what the rules need (outcome, `Retry-After`, a bounded body).

use std::time::Duration;

use ferry_core::batch::{CallOutcome, Item, MAX_RESPONSE_CHARS};
use reqwest::header::{HeaderName, HeaderValue};

use super::CallCtx;
use crate::settings::now_ms;

/// Most bytes of a response body read: the results keep far fewer, and a target cannot make the
/// worker buffer an unbounded answer.
const MAX_BODY_BYTES: usize = MAX_RESPONSE_CHARS * 4 + 4;

/// What one call came to.
#[derive(Debug, Clone)]
pub struct CallResult {
    pub outcome: CallOutcome,
    pub retry_after: Option<Duration>,
    /// The body, bounded (a response's), or why there is none (timeout, connection).
    pub body: Option<String>,
    pub error: Option<String>,
}

/// Sends `group` (consecutive items) to the target as one call.
pub async fn send(ctx: &CallCtx, group: &[Item]) -> CallResult {
    let first = group.first().map_or(0, |i| i.seq);
    let body = ferry_core::batch::render_body(ctx.target.body.as_ref(), group, &ctx.job_id);
    let method = reqwest::Method::from_bytes(ctx.target.method.as_bytes()).unwrap_or(reqwest::Method::POST);
    let mut req = ctx
        .env
        .http
        .request(method, &ctx.target.url)
        .timeout(ctx.timeout)
        .header("idempotency-key", ferry_core::batch::idempotency_key(&ctx.job_id, first))
        .header("content-type", "application/json")
        .body(body.to_string());
    for (k, v) in &ctx.target.headers {
        req = req.header(k.as_str(), v.as_str());
    }
    if let Some(secrets) = ctx.env.secret_headers.get(&ctx.target_name) {
        for (k, v) in secrets {
            if let (Ok(name), Ok(mut value)) = (HeaderName::from_bytes(k.as_bytes()), HeaderValue::from_str(v.expose())) {
                value.set_sensitive(true);
                req = req.header(name, value);
            }
        }
    }
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) => {
            let outcome = if e.is_timeout() { CallOutcome::Timeout } else { CallOutcome::Transport };
            // Without the URL: it may carry a key in its query.
            let error = if e.is_timeout() { "timed out".to_owned() } else { format!("connection failed: {}", kind_of(&e)) };
            return CallResult { outcome, retry_after: None, body: None, error: Some(error) };
        }
    };
    let status = resp.status().as_u16();
    let retry_after =
        resp.headers().get("retry-after").and_then(|v| v.to_str().ok()).and_then(|v| ferry_core::batch::parse_retry_after(v, now_ms()));
    let mut resp = resp;
    let mut bytes = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                let room = MAX_BODY_BYTES.saturating_sub(bytes.len());
                bytes.extend_from_slice(&chunk[..chunk.len().min(room)]);
                if bytes.len() >= MAX_BODY_BYTES {
                    break;
                }
            }
            Ok(None) => break,
            // The status is known; a body cut short by the timeout keeps what arrived.
            Err(_) => break,
        }
    }
    CallResult { outcome: CallOutcome::Status(status), retry_after, body: Some(ferry_core::batch::bounded_response(&bytes)), error: None }
}

fn kind_of(e: &reqwest::Error) -> &'static str {
    if e.is_connect() {
        "could not connect"
    } else if e.is_redirect() {
        "redirects are not followed"
    } else if e.is_request() {
        "the request could not be sent"
    } else {
        "transport error"
    }
}
