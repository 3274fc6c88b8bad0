//! The delivery provider's HTTP API, as the consumer calls it.
//!
//! `POST {base_url}/v1/messages` with the JSON body `{notification_id, channel, recipient, template,
//! variables}` and the header `Idempotency-Key: {sender}:{notification_id}:{channel}` (per sender,
//! since ids are unique per sender only; per channel, so an SMS fallback is not mistaken for a
//! repeat of the alimtalk attempt). A 2xx reply may carry
//! `{"status": "sent" | "delivered", "provider_message_id": "..."}`; without it the message counts
//! as `sent`. Other statuses are classified by [`ferry_core::notify::classify_status`].
//!
//! The client authenticates with a configurable header ([`ProviderAuth`]), follows no redirects
//! (a 3xx is a transient failure: a provider moving its API is not a reason to send recipients
//! elsewhere), reads at most [`MAX_REPLY_BYTES`] of a reply, and never puts the URL, the auth
//! header or a full recipient into an error or a log.

use std::fmt;
use std::time::Duration;

use ferry_core::notify::{Attempt, Channel, Notification, Sender, Status, classify_status, mask_recipient};
use ferry_lambda::error_chain;
use ferry_lambda::settings::{SettingsError, Vars};
use reqwest::Url;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

/// The most of a reply body the client reads; the rest is dropped unread.
pub const MAX_REPLY_BYTES: usize = 64 * 1024;

/// Where the provider is and how long to wait for it.
#[derive(Clone, PartialEq, Eq)]
pub struct ProviderSettings {
    pub base_url: String,
    pub timeout: Duration,
}

impl fmt::Debug for ProviderSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProviderSettings").field("base_url", &redact_url(&self.base_url)).field("timeout", &self.timeout).finish()
    }
}

/// Where the provider's credential comes from: the header to send it in, and the SSM parameter
/// holding it (read once at start-up).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthSource {
    pub header: String,
    pub parameter: String,
}

impl ProviderSettings {
    /// Reads `FERRY_PROVIDER_URL` (required; `https://`, or `http://` to a loopback address for
    /// local runs) and `FERRY_PROVIDER_TIMEOUT_MS` (default 5000).
    pub fn from_vars(vars: &Vars) -> Result<ProviderSettings, SettingsError> {
        let base_url = vars.required("FERRY_PROVIDER_URL")?;
        check_base_url(&base_url).map_err(|e| SettingsError::invalid("FERRY_PROVIDER_URL", e))?;
        let timeout = vars.millis("FERRY_PROVIDER_TIMEOUT_MS")?.unwrap_or(Duration::from_millis(5000));
        Ok(ProviderSettings { base_url, timeout })
    }

    /// [`ProviderSettings::from_vars`] over the process environment.
    pub fn from_env() -> Result<ProviderSettings, SettingsError> {
        ProviderSettings::from_vars(&Vars::env())
    }

    /// Reads `FERRY_PROVIDER_AUTH_HEADER` (the header name, e.g. `Authorization` or `X-Api-Key`)
    /// and `FERRY_PROVIDER_AUTH_PARAMETER` (the SSM parameter holding its value): both or neither.
    pub fn auth_from_vars(vars: &Vars) -> Result<Option<AuthSource>, SettingsError> {
        let Some((header, parameter)) = vars.pair("FERRY_PROVIDER_AUTH_HEADER", "FERRY_PROVIDER_AUTH_PARAMETER")? else {
            return Ok(None);
        };
        HeaderName::try_from(header.as_str())
            .map_err(|_| SettingsError::invalid("FERRY_PROVIDER_AUTH_HEADER", format!("{header:?} is not a header name")))?;
        Ok(Some(AuthSource { header, parameter }))
    }

    /// [`ProviderSettings::auth_from_vars`] over the process environment.
    pub fn auth_from_env() -> Result<Option<AuthSource>, SettingsError> {
        ProviderSettings::auth_from_vars(&Vars::env())
    }
}

/// Whether `url` may be the provider's base URL: `https://`, or `http://` to a loopback address
/// (a local provider in tests and the demo); no user or password in it (a secret in a URL ends up
/// in logs: use the auth header), no fragment. Returns the parsed URL.
pub fn check_base_url(url: &str) -> Result<Url, String> {
    let parsed = Url::parse(url).map_err(|e| format!("not a URL ({e})"))?;
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("must not hold a user or password; send credentials in the auth header".to_owned());
    }
    if parsed.fragment().is_some() {
        return Err("must not have a fragment".to_owned());
    }
    let host = parsed.host_str().filter(|h| !h.is_empty()).ok_or("has no host")?;
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host.trim_start_matches('[').trim_end_matches(']').parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    match parsed.scheme() {
        "https" => {}
        "http" if loopback => {}
        "http" => return Err("must be https:// (plain http only to a loopback address)".to_owned()),
        other => return Err(format!("scheme {other}: must be https://")),
    }
    Ok(parsed)
}

/// A URL as logs may show it: scheme, host, port and path; never the query or credentials.
fn redact_url(url: &str) -> String {
    match Url::parse(url) {
        Ok(u) => {
            format!("{}://{}{}", u.scheme(), u.host_str().unwrap_or("?"), u.port().map(|p| format!(":{p}")).unwrap_or_default()) + u.path()
        }
        Err(_) => "<unparsable>".to_owned(),
    }
}

/// The header the provider authenticates requests by.
#[derive(Clone)]
pub struct ProviderAuth {
    name: HeaderName,
    value: HeaderValue,
}

impl ProviderAuth {
    /// `value` is the whole header value (e.g. `Bearer abc`); it is marked sensitive, so that no
    /// debug output of a request shows it.
    pub fn new(name: &str, value: &str) -> Result<ProviderAuth, ProviderError> {
        let name = HeaderName::try_from(name).map_err(|_| ProviderError::Settings(format!("{name:?} is not a header name")))?;
        let mut value = HeaderValue::try_from(value)
            .map_err(|_| ProviderError::Settings(format!("the value of header {name} is not a valid header value")))?;
        value.set_sensitive(true);
        Ok(ProviderAuth { name, value })
    }
}

impl fmt::Debug for ProviderAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProviderAuth").field("name", &self.name).field("value", &"<redacted>").finish()
    }
}

/// The client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("provider settings: {0}")]
    Settings(String),
    #[error("building the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
}

/// What the provider said to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Accepted {
        status: Status,
        provider_message_id: Option<String>,
    },
    /// Down, slow, throttling or redirecting: retry later.
    Transient(String),
    /// Refused: the same request will be refused again.
    Permanent(String),
}

/// A client of the provider, built once per execution environment.
#[derive(Clone)]
pub struct Provider {
    /// Sends the auth header, if any, on every request (a default header).
    http: reqwest::Client,
    endpoint: Url,
    /// For `Debug` only: which header authenticates (its value redacted).
    auth: Option<ProviderAuth>,
}

impl fmt::Debug for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Provider").field("endpoint", &redact_url(self.endpoint.as_str())).field("auth", &self.auth).finish()
    }
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
    /// A client without an auth header (a local provider).
    pub fn new(settings: &ProviderSettings) -> Result<Provider, ProviderError> {
        Provider::with_auth(settings, None)
    }

    /// Refuses a base URL [`check_base_url`] refuses.
    pub fn with_auth(settings: &ProviderSettings, auth: Option<ProviderAuth>) -> Result<Provider, ProviderError> {
        let mut endpoint = check_base_url(&settings.base_url).map_err(ProviderError::Settings)?;
        let path = format!("{}/v1/messages", endpoint.path().trim_end_matches('/'));
        endpoint.set_path(&path);
        // The value is marked sensitive (see `ProviderAuth::new`), and stays so in the client.
        let mut headers = HeaderMap::new();
        if let Some(a) = &auth {
            headers.insert(a.name.clone(), a.value.clone());
        }
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(ProviderError::Client)?;
        Ok(Provider { http, endpoint, auth })
    }

    /// Sends `sender`'s `n` through `channel`. Never fails: every outcome is a [`Reply`], whose
    /// text names the channel and status but not the URL or the recipient.
    pub async fn send(&self, sender: &Sender, n: &Notification, channel: Channel) -> Reply {
        let body = Request {
            notification_id: &n.notification_id,
            channel: channel.as_str(),
            recipient: &n.recipient,
            template: &n.template,
            variables: &n.variables,
        };
        let req = self.http.post(self.endpoint.clone()).header("Idempotency-Key", idempotency_key(sender, n, channel)).json(&body);
        let mut res = match req.send().await {
            Ok(r) => r,
            // Timeouts and connection failures: the provider may or may not have it; the retry
            // carries the same idempotency key.
            Err(e) => return Reply::Transient(format!("{channel}: {}", error_chain(&e.without_url()))),
        };
        let status = res.status().as_u16();
        match classify_status(status) {
            Attempt::Accepted => {
                // The status line is the answer; a reply body that is too big, slow or malformed
                // only loses the optional details.
                let bytes = read_bounded(&mut res, MAX_REPLY_BYTES).await;
                let parsed: Option<Accepted> = serde_json::from_slice(&bytes).ok();
                let status =
                    parsed.as_ref().and_then(|a| a.status.as_deref()).and_then(|s| s.parse().ok()).filter(|s: &Status| s.is_done());
                Reply::Accepted { status: status.unwrap_or(Status::Sent), provider_message_id: parsed.and_then(|a| a.provider_message_id) }
            }
            Attempt::Transient if (300..400).contains(&status) => {
                Reply::Transient(format!("{channel}: provider answered {status} (a redirect, not followed)"))
            }
            Attempt::Transient => Reply::Transient(format!("{channel}: provider answered {status}")),
            Attempt::Permanent => {
                let bytes = read_bounded(&mut res, MAX_REPLY_BYTES).await;
                let text: String = String::from_utf8_lossy(&bytes).chars().take(300).collect();
                // The provider may echo the recipient; the reason is logged and stored.
                let text = if n.recipient.is_empty() { text } else { text.replace(&n.recipient, &mask_recipient(&n.recipient)) };
                Reply::Permanent(format!("{channel}: provider answered {status}: {text}"))
            }
        }
    }
}

/// `{sender length}:{sender}:{notification_id}:{channel}`. Senders and ids may both hold `:`; the
/// length makes the key one-to-one, so one sender can never make a key another sender's
/// notification will use (`shop:x` + `1` and `shop` + `x:1` differ).
pub fn idempotency_key(sender: &Sender, n: &Notification, channel: Channel) -> String {
    format!("{}:{sender}:{}:{channel}", sender.to_string().len(), n.notification_id)
}

/// Reads at most `max` bytes of the body, chunk by chunk, and stops there. Returns what it read,
/// cut at `max`. A read error (the client's timeout, a reset) ends the read.
async fn read_bounded(res: &mut reqwest::Response, max: usize) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        match res.chunk().await {
            Ok(Some(chunk)) => {
                let room = max - out.len();
                if chunk.len() > room {
                    out.extend_from_slice(&chunk[..room]);
                    return out;
                }
                out.extend_from_slice(&chunk);
            }
            Ok(None) | Err(_) => return out,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotency_keys_of_two_senders_never_meet() {
        let n = |id: &str| {
            let body = format!(
                r#"{{"notification_id":"{id}","channel":"sms","recipient":"+821000000000","template":"t","variables":{{}},"requested_at":"2026-11-22T15:30:00Z"}}"#
            );
            Notification::parse(&body).expect("a notification")
        };
        let sender = |s: &str| Sender::parse(s).expect("a sender");
        let a = idempotency_key(&sender("shop:x"), &n("1"), Channel::Sms);
        let b = idempotency_key(&sender("shop"), &n("x:1"), Channel::Sms);
        assert_ne!(a, b);
        assert_eq!(a, "6:shop:x:1:sms");
        assert_eq!(idempotency_key(&sender("shop"), &n("x:1"), Channel::Sms), b, "the same sender and id: the same key");
    }

    #[test]
    fn base_urls_must_be_https_except_on_loopback() {
        let cases = [
            ("https://api.provider.example", true),
            ("https://api.provider.example/base?tenant=7", true),
            ("http://127.0.0.1:8080", true),
            ("http://127.8.0.1", true),
            ("http://localhost:9000/p", true),
            ("http://[::1]:9000", true),
            ("http://api.provider.example", false),
            ("http://10.0.0.1", false),
            ("http://127.0.0.1.nip.io", false),
            ("ftp://api.provider.example", false),
            ("https://user:pw@api.provider.example", false),
            ("https://api.provider.example/#x", false),
            ("api.provider.example", false),
        ];
        for (url, ok) in cases {
            assert_eq!(check_base_url(url).is_ok(), ok, "{url}: {:?}", check_base_url(url));
        }
    }

    #[test]
    fn urls_in_debug_output_lose_their_query() {
        let s = ProviderSettings { base_url: "https://p.example:8443/api?token=s3cret".into(), timeout: Duration::from_secs(1) };
        let shown = format!("{s:?}");
        assert!(shown.contains("https://p.example:8443/api") && !shown.contains("s3cret"), "{shown}");
        let p = Provider::with_auth(&s, Some(ProviderAuth::new("X-Api-Key", "k-123").unwrap())).unwrap();
        assert_eq!(p.endpoint.as_str(), "https://p.example:8443/api/v1/messages?token=s3cret");
        let shown = format!("{p:?}");
        assert!(!shown.contains("s3cret") && !shown.contains("k-123"), "{shown}");
    }
}
