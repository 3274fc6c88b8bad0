//! The delivery provider's HTTP API, as the consumer calls it.
//!
//! `POST {base_url}/v1/messages` with the JSON body `{notification_id, channel, recipient, template,
//! variables}` and the header `Idempotency-Key: {notification_id}:{channel}` (per channel, so an SMS
//! fallback is not mistaken for a repeat of the alimtalk attempt). A 2xx reply may carry
//! `{"status": "sent" | "delivered", "provider_message_id": "..."}`; without it the message counts as
//! `sent`. Other statuses are classified by [`ferry_core::notify::classify_status`].

use std::time::Duration;

use ferry_core::notify::{Attempt, Channel, Notification, Status, classify_status};

/// Where the provider is and how long to wait for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderSettings {
    pub base_url: String,
    pub timeout: Duration,
}

impl ProviderSettings {
    /// Reads `FERRY_PROVIDER_URL` (required) and `FERRY_PROVIDER_TIMEOUT_MS` (default 5000).
    pub fn from_env() -> Result<ProviderSettings, String> {
        let base_url = std::env::var("FERRY_PROVIDER_URL")
            .ok()
            .filter(|v| !v.is_empty())
            .ok_or("FERRY_PROVIDER_URL: not set (the provider's base URL)")?;
        let timeout = match std::env::var("FERRY_PROVIDER_TIMEOUT_MS").ok().filter(|v| !v.is_empty()) {
            Some(v) => Duration::from_millis(
                v.parse().map_err(|_| format!("FERRY_PROVIDER_TIMEOUT_MS: {v:?} is not a whole number of milliseconds"))?,
            ),
            None => Duration::from_millis(5000),
        };
        Ok(ProviderSettings { base_url, timeout })
    }
}

/// What the provider said to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Accepted {
        status: Status,
        provider_message_id: Option<String>,
    },
    /// Down, slow or throttling: retry later.
    Transient(String),
    /// Refused: the same request will be refused again.
    Permanent(String),
}

/// A client of the provider, built once per execution environment.
#[derive(Debug, Clone)]
pub struct Provider {
    http: reqwest::Client,
    endpoint: String,
}

#[derive(serde::Serialize)]
struct Request<'a> {
    notification_id: &'a str,
    channel: &'a str,
    recipient: &'a str,
    template: &'a str,
    variables: &'a std::collections::BTreeMap<String, String>,
}

#[derive(serde::Deserialize)]
struct Accepted {
    status: Option<String>,
    provider_message_id: Option<String>,
}

impl Provider {
    pub fn new(settings: &ProviderSettings) -> Result<Provider, reqwest::Error> {
        let http = reqwest::Client::builder().timeout(settings.timeout).connect_timeout(settings.timeout).build()?;
        Ok(Provider { http, endpoint: format!("{}/v1/messages", settings.base_url.trim_end_matches('/')) })
    }

    /// Sends `n` through `channel`. Never fails: every outcome is a [`Reply`].
    pub async fn send(&self, n: &Notification, channel: Channel) -> Reply {
        let body = Request {
            notification_id: &n.notification_id,
            channel: channel.as_str(),
            recipient: &n.recipient,
            template: &n.template,
            variables: &n.variables,
        };
        let res =
            self.http.post(&self.endpoint).header("Idempotency-Key", format!("{}:{channel}", n.notification_id)).json(&body).send().await;
        let res = match res {
            Ok(r) => r,
            // Timeouts and connection failures: the provider may or may not have it; the retry
            // carries the same idempotency key.
            Err(e) => return Reply::Transient(format!("{channel}: {}", error_chain(&e))),
        };
        let status = res.status().as_u16();
        match classify_status(status) {
            Attempt::Accepted => {
                let parsed: Option<Accepted> = res.json().await.ok();
                let status =
                    parsed.as_ref().and_then(|a| a.status.as_deref()).and_then(|s| s.parse().ok()).filter(|s: &Status| s.is_done());
                Reply::Accepted { status: status.unwrap_or(Status::Sent), provider_message_id: parsed.and_then(|a| a.provider_message_id) }
            }
            Attempt::Transient => Reply::Transient(format!("{channel}: provider answered {status}")),
            Attempt::Permanent => {
                let text = res.text().await.unwrap_or_default();
                Reply::Permanent(format!("{channel}: provider answered {status}: {}", text.chars().take(300).collect::<String>()))
            }
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
