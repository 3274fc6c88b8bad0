//! The local notification provider: axum on loopback, told per test how to fail, counting every
//! message it accepted per notification id.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use ferry_core::notify::Channel;
/// How a [`LocalProvider`] fails one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// 503.
    Unavailable,
    /// 429.
    Throttled,
    /// Answers (503) only after the client's timeout; the message is not taken.
    Hang,
}

#[derive(Debug, Default)]
struct ProviderState {
    down_channels: HashSet<String>,
    rejected_templates: HashSet<String>,
    rejected: HashSet<(String, String)>,
    fail_next: HashMap<String, VecDeque<Failure>>,
    /// Channels each notification id was accepted on, one entry per accepted request.
    accepted: HashMap<String, Vec<String>>,
    /// The recipient of each accepted request, per notification id.
    recipients: HashMap<String, Vec<String>>,
    /// A header every request must carry (name, value); others are refused with 401.
    auth: Option<(String, String)>,
    /// Idempotency keys already accepted, with the provider's message id.
    keys: HashMap<String, String>,
    /// Requests repeating an accepted idempotency key (the consumer sent twice).
    repeats: usize,
    requests: usize,
    reply: Option<&'static str>,
}

/// A delivery provider on 127.0.0.1 that can be told to fail.
#[derive(Debug, Clone)]
pub struct LocalProvider {
    pub url: String,
    state: Arc<Mutex<ProviderState>>,
    hang_for: Duration,
}

impl LocalProvider {
    /// Starts the provider on a free loopback port. A [`Failure::Hang`] holds the answer for `hang_for`.
    pub async fn start(hang_for: Duration) -> anyhow::Result<LocalProvider> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.context("binding the local provider")?;
        let url = format!("http://{}", listener.local_addr()?);
        let provider = LocalProvider { url, state: Arc::default(), hang_for };
        let app = axum::Router::new().route("/v1/messages", axum::routing::post(accept)).with_state(provider.clone());
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "local provider stopped");
            }
        });
        Ok(provider)
    }

    fn with<T>(&self, f: impl FnOnce(&mut ProviderState) -> T) -> T {
        f(&mut self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// Every request on `channel` answers 503 while `down`.
    pub fn set_channel_down(&self, channel: Channel, down: bool) {
        self.with(|s| if down { s.down_channels.insert(channel.to_string()) } else { s.down_channels.remove(channel.as_str()) });
    }

    /// Every request for `template` answers 400 ("template not registered") while `rejected`.
    pub fn set_template_rejected(&self, template: &str, rejected: bool) {
        self.with(|s| if rejected { s.rejected_templates.insert(template.to_owned()) } else { s.rejected_templates.remove(template) });
    }

    /// Requests for `id` on `channel` answer 400 (e.g. the number has no KakaoTalk account).
    pub fn reject(&self, id: &str, channel: Channel) {
        self.with(|s| s.rejected.insert((id.to_owned(), channel.to_string())));
    }

    /// The next requests for `id` fail this way, in order.
    pub fn fail_next(&self, id: &str, failures: &[Failure]) {
        self.with(|s| s.fail_next.entry(id.to_owned()).or_default().extend(failures));
    }

    /// Every request must carry header `name` with `value`, as a real provider's API key.
    pub fn require_auth(&self, name: &str, value: &str) {
        self.with(|s| s.auth = Some((name.to_ascii_lowercase(), value.to_owned())));
    }

    /// The recipients `id` was accepted for, one per accepted request.
    pub fn accepted_recipients(&self, id: &str) -> Vec<String> {
        self.with(|s| s.recipients.get(id).cloned().unwrap_or_default())
    }

    /// Accepted messages answer `{"status": "delivered"}` instead of `sent`.
    pub fn reply_delivered(&self, yes: bool) {
        self.with(|s| s.reply = yes.then_some("delivered"));
    }

    /// The channels `id` was accepted on, one per accepted request.
    pub fn accepted(&self, id: &str) -> Vec<String> {
        self.with(|s| s.accepted.get(id).cloned().unwrap_or_default())
    }

    /// Accepted requests per notification id.
    pub fn accepted_counts(&self) -> HashMap<String, usize> {
        self.with(|s| s.accepted.iter().map(|(k, v)| (k.clone(), v.len())).collect())
    }

    pub fn repeats(&self) -> usize {
        self.with(|s| s.repeats)
    }

    pub fn requests(&self) -> usize {
        self.with(|s| s.requests)
    }
}

async fn accept(State(p): State<LocalProvider>, headers: HeaderMap, axum::Json(body): axum::Json<serde_json::Value>) -> Response {
    let field = |k: &str| body.get(k).and_then(|v| v.as_str()).unwrap_or_default().to_owned();
    let (id, channel, template, recipient) = (field("notification_id"), field("channel"), field("template"), field("recipient"));
    let key = headers.get("idempotency-key").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    enum Answer {
        Fail(StatusCode, &'static str),
        Hang,
        Ok(String, &'static str),
    }
    let answer = p.with(|s| {
        s.requests += 1;
        if let Some((name, value)) = &s.auth
            && headers.get(name.as_str()).and_then(|v| v.to_str().ok()) != Some(value.as_str())
        {
            return Answer::Fail(StatusCode::UNAUTHORIZED, "missing or wrong API key");
        }
        if key.is_empty() {
            return Answer::Fail(StatusCode::BAD_REQUEST, "Idempotency-Key header missing");
        }
        if let Some(f) = s.fail_next.get_mut(&id).and_then(VecDeque::pop_front) {
            return match f {
                Failure::Unavailable => Answer::Fail(StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
                Failure::Throttled => Answer::Fail(StatusCode::TOO_MANY_REQUESTS, "slow down"),
                Failure::Hang => Answer::Hang,
            };
        }
        if s.down_channels.contains(&channel) {
            return Answer::Fail(StatusCode::SERVICE_UNAVAILABLE, "channel gateway down");
        }
        if s.rejected_templates.contains(&template) {
            return Answer::Fail(StatusCode::BAD_REQUEST, "template not registered");
        }
        if s.rejected.contains(&(id.clone(), channel.clone())) {
            return Answer::Fail(StatusCode::UNPROCESSABLE_ENTITY, "recipient cannot be reached on this channel");
        }
        let reply = s.reply.unwrap_or("sent");
        if let Some(pm) = s.keys.get(&key) {
            // A real provider deduplicates by key; counting the repeat shows a consumer sent twice.
            s.repeats += 1;
            return Answer::Ok(pm.clone(), reply);
        }
        let pm = format!("pm-{}", s.keys.len() + 1);
        s.keys.insert(key.clone(), pm.clone());
        s.accepted.entry(id.clone()).or_default().push(channel.clone());
        s.recipients.entry(id.clone()).or_default().push(recipient.clone());
        Answer::Ok(pm, reply)
    });
    match answer {
        Answer::Fail(status, message) => (status, axum::Json(serde_json::json!({ "error": message }))).into_response(),
        Answer::Hang => {
            tokio::time::sleep(p.hang_for).await;
            (StatusCode::SERVICE_UNAVAILABLE, "late").into_response()
        }
        Answer::Ok(pm, status) => axum::Json(serde_json::json!({ "status": status, "provider_message_id": pm })).into_response(),
    }
}
