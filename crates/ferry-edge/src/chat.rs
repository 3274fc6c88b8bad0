//! A Slack-compatible incoming webhook: `POST {"text": ...}`.

use std::time::Duration;

/// The environment variable holding the webhook URL. The URL is a secret (whoever has it can post),
/// so it never appears in errors or logs.
pub const WEBHOOK_ENV: &str = "FERRY_CHAT_WEBHOOK_URL";

/// A notice that could not be delivered.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    #[error("chat webhook: the URL is not valid: {0}")]
    BadUrl(String),
    #[error("chat webhook: {0}")]
    Http(#[source] reqwest::Error),
    #[error("chat webhook: answered HTTP {status}: {body}")]
    Status { status: u16, body: String },
}

/// An incoming webhook.
#[derive(Debug, Clone)]
pub struct Webhook {
    client: reqwest::Client,
    url: reqwest::Url,
}

impl Webhook {
    /// A webhook at `url`; each post gives up after `timeout`, so a slow chat never holds a cron slot.
    pub fn new(url: &str, timeout: Duration) -> Result<Webhook, ChatError> {
        let url = reqwest::Url::parse(url).map_err(|e| ChatError::BadUrl(e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(ChatError::BadUrl(format!("scheme {:?} is not http or https", url.scheme())));
        }
        let client =
            reqwest::Client::builder().timeout(timeout).connect_timeout(timeout).build().map_err(|e| ChatError::Http(e.without_url()))?;
        Ok(Webhook { client, url })
    }

    /// Posts `text` as `{"text": text}`.
    pub async fn post(&self, text: &str) -> Result<(), ChatError> {
        let body = serde_json::json!({ "text": text });
        let resp = self.client.post(self.url.clone()).json(&body).send().await.map_err(|e| ChatError::Http(e.without_url()))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let mut body = resp.text().await.unwrap_or_default();
        if body.len() > 200 {
            let mut end = 200;
            while !body.is_char_boundary(end) {
                end -= 1;
            }
            body.truncate(end);
        }
        Err(ChatError::Status { status: status.as_u16(), body })
    }
}
