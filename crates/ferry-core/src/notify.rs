//! Notifications: the message contract, the delivery state machine, what counts as a transient
//! failure, and which dead letters a selective redrive moves.
//!
//! - [`Notification::parse`]: strict validation of a queued message; a [`MessageError`] names the field.
//! - [`Status`]: `sending` -> `sent` -> `delivered` (and `failed`); [`Status::rank`] never goes down.
//! - [`classify_status`]: a provider's HTTP status as [`Attempt`] (accepted, transient, permanent).
//! - [`DeadLetter`] and [`RedriveFilter`]: what a dead letter says about itself, and the selection.
//! - [`AdminRule`]: which JWT claim makes a caller an admin who may redrive ([`claim_items`]: a
//!   claim as the list API Gateway hands over); [`has_scope`]: an OAuth scope, item by item.
//! - [`Sender`]: who submitted a notification; a notification id is unique per sender only.
//! - [`FixedWindow`]: the per-caller submit throttle's windows.
//! - [`mask_recipient`]: a recipient as logs may show it.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde_json::Value;

/// A delivery channel.
#[derive(Debug, Clone, Copy, serde::Serialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    /// KakaoTalk business message; its usual fallback is `sms` to the same number.
    Alimtalk,
    Sms,
    Email,
    Push,
}

impl Channel {
    pub const ALL: [Channel; 4] = [Channel::Alimtalk, Channel::Sms, Channel::Email, Channel::Push];

    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Alimtalk => "alimtalk",
            Channel::Sms => "sms",
            Channel::Email => "email",
            Channel::Push => "push",
        }
    }

    /// Whether `recipient` is an address this channel can reach.
    fn check_recipient(self, recipient: &str) -> Result<(), &'static str> {
        match self {
            Channel::Alimtalk | Channel::Sms => {
                let digits = recipient.strip_prefix('+').unwrap_or(recipient);
                let ok = (8..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit());
                if ok { Ok(()) } else { Err("is not a phone number (8 to 15 digits, optional leading +)") }
            }
            Channel::Email => {
                let ok = recipient.len() <= 254
                    && recipient.split_once('@').is_some_and(|(local, domain)| {
                        !local.is_empty()
                            && !domain.contains('@')
                            && domain.contains('.')
                            && !domain.starts_with('.')
                            && !domain.ends_with('.')
                    })
                    && !recipient.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control());
                if ok { Ok(()) } else { Err("is not an e-mail address") }
            }
            Channel::Push => {
                let ok = (1..=4096).contains(&recipient.len()) && recipient.bytes().all(|b| b.is_ascii_graphic());
                if ok { Ok(()) } else { Err("is not a device token (1 to 4096 printable ASCII characters)") }
            }
        }
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Channel {
    type Err = String;
    fn from_str(s: &str) -> Result<Channel, String> {
        Channel::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| format!("unknown channel {s:?} (expected alimtalk, sms, email or push)"))
    }
}

/// A validated notification request.
#[derive(Debug, Clone, serde::Serialize, PartialEq)]
pub struct Notification {
    pub notification_id: String,
    pub channel: Channel,
    pub recipient: String,
    pub template: String,
    pub variables: BTreeMap<String, String>,
    pub fallback: Option<Channel>,
    /// Seconds since the Unix epoch.
    pub requested_at: i64,
}

/// Why a message is not a notification. `field` is `None` when the body is not JSON at all.
#[derive(Debug, Clone, serde::Serialize, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    #[error("field `{field}`: {message}")]
    Field { field: String, message: String },
}

impl MessageError {
    fn field(field: &str, message: impl Into<String>) -> MessageError {
        MessageError::Field { field: field.to_owned(), message: message.into() }
    }

    /// How a dead letter carrying this error is classified.
    pub fn kind(&self) -> ErrorKind {
        match self {
            MessageError::MalformedJson(_) => ErrorKind::MalformedJson,
            MessageError::Field { .. } => ErrorKind::InvalidMessage,
        }
    }
}

const FIELDS: [&str; 7] = ["notification_id", "channel", "recipient", "template", "variables", "fallback", "requested_at"];
const MAX_VARIABLES: usize = 64;
const MAX_VARIABLE_BYTES: usize = 2048;

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn is_identifier(s: &str, max: usize, extra: &[u8]) -> bool {
    (1..=max).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || extra.contains(&b))
}

impl Notification {
    /// Parses and validates a queued message body. Unknown fields are refused, so that a typo
    /// (`fallbak`) fails loudly instead of silently dropping the fallback.
    pub fn parse(body: &str) -> Result<Notification, MessageError> {
        let value: Value = serde_json::from_str(body).map_err(|e| MessageError::MalformedJson(e.to_string()))?;
        let Value::Object(map) = value else {
            return Err(MessageError::MalformedJson(format!("the message is {}, not an object", type_name(&value))));
        };
        if let Some(unknown) = map.keys().find(|k| !FIELDS.contains(&k.as_str())) {
            return Err(MessageError::field(unknown, "unknown field"));
        }
        let string = |name: &str| -> Result<&str, MessageError> {
            match map.get(name) {
                None => Err(MessageError::field(name, "missing")),
                Some(Value::String(s)) => Ok(s.as_str()),
                Some(v) => Err(MessageError::field(name, format!("must be a string, got {}", type_name(v)))),
            }
        };

        let notification_id = string("notification_id")?;
        if !is_identifier(notification_id, 128, b"-_.:") {
            return Err(MessageError::field("notification_id", "must be 1 to 128 characters of A-Z a-z 0-9 - _ . :"));
        }
        let channel: Channel = string("channel")?.parse().map_err(|e: String| MessageError::field("channel", e))?;
        let recipient = string("recipient")?;
        channel.check_recipient(recipient).map_err(|m| MessageError::field("recipient", format!("{m} for channel {channel}")))?;
        let template = string("template")?;
        if !is_identifier(template, 64, b"-_.") {
            return Err(MessageError::field("template", "must be 1 to 64 characters of A-Z a-z 0-9 - _ ."));
        }

        let variables = match map.get("variables") {
            None => return Err(MessageError::field("variables", "missing (use {} for none)")),
            Some(Value::Object(vars)) => vars,
            Some(v) => return Err(MessageError::field("variables", format!("must be an object, got {}", type_name(v)))),
        };
        if variables.len() > MAX_VARIABLES {
            return Err(MessageError::field("variables", format!("has {} entries, at most {MAX_VARIABLES} allowed", variables.len())));
        }
        let mut vars = BTreeMap::new();
        for (k, v) in variables {
            let field = format!("variables.{k}");
            if !is_identifier(k, 64, b"-_.") {
                return Err(MessageError::field(&field, "name must be 1 to 64 characters of A-Z a-z 0-9 - _ ."));
            }
            let Value::String(s) = v else {
                return Err(MessageError::field(&field, format!("must be a string, got {}", type_name(v))));
            };
            if s.len() > MAX_VARIABLE_BYTES {
                return Err(MessageError::field(&field, format!("is {} bytes, at most {MAX_VARIABLE_BYTES} allowed", s.len())));
            }
            vars.insert(k.clone(), s.clone());
        }

        let fallback = match map.get("fallback") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.parse::<Channel>().map_err(|e| MessageError::field("fallback", e))?),
            Some(v) => return Err(MessageError::field("fallback", format!("must be a string or null, got {}", type_name(v)))),
        };
        if let Some(fb) = fallback {
            if fb == channel {
                return Err(MessageError::field("fallback", format!("is the primary channel {channel}")));
            }
            fb.check_recipient(recipient).map_err(|m| MessageError::field("fallback", format!("recipient {m} for channel {fb}")))?;
        }

        let requested_at = string("requested_at")?;
        let requested_at = time::OffsetDateTime::parse(requested_at, &time::format_description::well_known::Rfc3339)
            .map_err(|e| MessageError::field("requested_at", format!("{requested_at:?} is not an RFC 3339 timestamp: {e}")))?
            .unix_timestamp();

        Ok(Notification {
            notification_id: notification_id.to_owned(),
            channel,
            recipient: recipient.to_owned(),
            template: template.to_owned(),
            variables: vars,
            fallback,
            requested_at,
        })
    }

    /// The channels to try, in order.
    pub fn channels(&self) -> impl Iterator<Item = Channel> + '_ {
        std::iter::once(self.channel).chain(self.fallback)
    }
}

/// Where a notification is in its delivery.
#[derive(Debug, Clone, Copy, serde::Serialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// A consumer holds the claim and is talking to the provider.
    Sending,
    /// Every channel refused it permanently; a redrive may try again.
    Failed,
    /// The provider accepted it.
    Sent,
    /// The provider confirmed it reached the recipient.
    Delivered,
}

impl Status {
    pub const ALL: [Status; 4] = [Status::Sending, Status::Failed, Status::Sent, Status::Delivered];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Sending => "sending",
            Status::Failed => "failed",
            Status::Sent => "sent",
            Status::Delivered => "delivered",
        }
    }

    /// How far along the delivery is. A record's rank only ever grows, except that `sending` and
    /// `failed` (both "not handed to the provider") may alternate as a redrive retries.
    pub fn rank(self) -> u8 {
        match self {
            Status::Sending | Status::Failed => 1,
            Status::Sent => 2,
            Status::Delivered => 3,
        }
    }

    /// Whether the provider has the notification: a message in this state is never sent again.
    pub fn is_done(self) -> bool {
        self.rank() >= Status::Sent.rank()
    }

    /// Whether a record in state `from` (none yet: `None`) may become `to`.
    pub fn may_become(from: Option<Status>, to: Status) -> bool {
        match from {
            None => true,
            Some(f) => to.rank() > f.rank() || (f.rank() == 1 && to.rank() == 1),
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Status {
    type Err = String;
    fn from_str(s: &str) -> Result<Status, String> {
        Status::ALL.into_iter().find(|x| x.as_str() == s).ok_or_else(|| format!("unknown status {s:?}"))
    }
}

/// What one provider call came to.
#[derive(Debug, Clone, Copy, serde::Serialize, PartialEq, Eq)]
pub enum Attempt {
    Accepted,
    /// Worth retrying later: the provider is down, slow or throttling.
    Transient,
    /// Retrying the same request cannot help: the provider refused it.
    Permanent,
}

/// Classifies a provider's HTTP status. 408 (timeout), 425, 429 (throttling) and 5xx are transient;
/// any other 4xx is permanent. Anything unexpected (1xx, 3xx) is transient, so that nothing is
/// dead-lettered on a status the contract does not define.
pub fn classify_status(status: u16) -> Attempt {
    match status {
        200..=299 => Attempt::Accepted,
        408 | 425 | 429 => Attempt::Transient,
        400..=499 => Attempt::Permanent,
        _ => Attempt::Transient,
    }
}

/// Why a message is in the dead-letter queue.
#[derive(Debug, Clone, Copy, serde::Serialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The body is not a JSON object.
    MalformedJson,
    /// The body is JSON but breaks the schema.
    InvalidMessage,
    /// The provider refused it permanently (4xx) on every channel.
    ProviderRejected,
    /// SQS moved it after too many transient failures (it carries no reason of its own).
    RetriesExhausted,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 4] =
        [ErrorKind::MalformedJson, ErrorKind::InvalidMessage, ErrorKind::ProviderRejected, ErrorKind::RetriesExhausted];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::MalformedJson => "malformed_json",
            ErrorKind::InvalidMessage => "invalid_message",
            ErrorKind::ProviderRejected => "provider_rejected",
            ErrorKind::RetriesExhausted => "retries_exhausted",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ErrorKind {
    type Err = String;
    fn from_str(s: &str) -> Result<ErrorKind, String> {
        ErrorKind::ALL.into_iter().find(|k| k.as_str() == s).ok_or_else(|| {
            format!("unknown error kind {s:?} (expected malformed_json, invalid_message, provider_rejected or retries_exhausted)")
        })
    }
}

/// Message attributes the consumer puts on what it dead-letters.
pub mod attr {
    /// An [`super::ErrorKind`].
    pub const ERROR_KIND: &str = "ferry-error-kind";
    /// The error, as text.
    pub const ERROR: &str = "ferry-error";
    /// The primary channel, when the message got that far.
    pub const CHANNEL: &str = "ferry-channel";
    pub const NOTIFICATION_ID: &str = "ferry-notification-id";
    /// When the message first entered the source queue, in Unix milliseconds.
    pub const FIRST_SENT_AT: &str = "ferry-first-sent-at";
    /// When it was dead-lettered, in Unix milliseconds.
    pub const FAILED_AT: &str = "ferry-failed-at";
    /// The [`super::Sender`] who submitted it. Set by the intake on every queued message and kept
    /// through the DLQ and both redrives; a message without it is refused.
    pub const SENDER: &str = "ferry-sender";
}

/// What a dead letter says about itself, from its attributes or, lacking them, its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub kind: ErrorKind,
    pub channel: Option<Channel>,
    pub notification_id: Option<String>,
    /// Who submitted it ([`attr::SENDER`]).
    pub sender: Option<String>,
    /// When the message first entered the source queue, in Unix milliseconds.
    pub first_sent_at: i64,
}

impl DeadLetter {
    /// `attrs` are the message's string attributes; `sent_timestamp` is its SQS `SentTimestamp`
    /// (which SQS keeps when its redrive policy moves a message). A message without
    /// [`attr::ERROR_KIND`] was moved by SQS after too many receives.
    pub fn describe(attrs: &BTreeMap<String, String>, body: &str, sent_timestamp: i64) -> DeadLetter {
        let kind = attrs.get(attr::ERROR_KIND).and_then(|k| k.parse().ok()).unwrap_or(ErrorKind::RetriesExhausted);
        let peeked = serde_json::from_str::<Value>(body).ok();
        let peek = |field: &str| peeked.as_ref().and_then(|v| v.get(field)).and_then(Value::as_str).map(str::to_owned);
        let channel = attrs.get(attr::CHANNEL).cloned().or_else(|| peek("channel")).and_then(|c| c.parse().ok());
        let notification_id = attrs.get(attr::NOTIFICATION_ID).cloned().or_else(|| peek("notification_id"));
        let first_sent_at = attrs.get(attr::FIRST_SENT_AT).and_then(|t| t.parse().ok()).unwrap_or(sent_timestamp);
        let sender = attrs.get(attr::SENDER).cloned();
        DeadLetter { kind, channel, notification_id, sender, first_sent_at }
    }
}

/// Which dead letters a selective redrive moves. Empty lists match everything; the ages bound how
/// long ago the message first entered the source queue.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedriveFilter {
    pub kinds: Vec<ErrorKind>,
    pub channels: Vec<Channel>,
    /// Only messages at least this old (seconds).
    pub min_age_secs: Option<u64>,
    /// Only messages at most this old (seconds).
    pub max_age_secs: Option<u64>,
}

impl RedriveFilter {
    pub fn is_everything(&self) -> bool {
        *self == RedriveFilter::default()
    }

    /// `now_ms`: the current time in Unix milliseconds.
    pub fn matches(&self, letter: &DeadLetter, now_ms: i64) -> bool {
        let age_secs = u64::try_from((now_ms - letter.first_sent_at).max(0) / 1000).unwrap_or(0);
        (self.kinds.is_empty() || self.kinds.contains(&letter.kind))
            && (self.channels.is_empty() || letter.channel.is_some_and(|c| self.channels.contains(&c)))
            && self.min_age_secs.is_none_or(|min| age_secs >= min)
            && self.max_age_secs.is_none_or(|max| age_secs <= max)
    }
}

/// Who may redrive: a JWT claim that must hold a value. API Gateway (HTTP API, JWT authorizer)
/// hands claims over as strings; [`claim_items`] reads the list forms it produces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminRule {
    pub claim: String,
    pub value: String,
}

impl Default for AdminRule {
    /// Membership of the Cognito group `ferry-admin`.
    fn default() -> AdminRule {
        AdminRule { claim: "cognito:groups".to_owned(), value: "ferry-admin".to_owned() }
    }
}

impl AdminRule {
    /// Whether the caller with these JWT claims is an admin: one item of the claim equals the
    /// value exactly. A scalar claim is one item, so `"user ferry-admin"` or a group named
    /// `x,ferry-admin` is not membership.
    pub fn allows<'a>(&self, mut claim: impl FnMut(&str) -> Option<&'a str>) -> bool {
        let Some(raw) = claim(&self.claim) else { return false };
        !self.value.is_empty() && claim_items(raw).contains(&self.value)
    }
}

/// A claim's items, in the forms API Gateway's JWT authorizer produces: a JSON array string
/// (`["a","b"]`), an array it flattened (`[a b]`), or a single value (one item, never split).
/// A JSON array holding anything but strings yields no items.
pub fn claim_items(raw: &str) -> Vec<String> {
    let trimmed = raw.trim();
    let Some(inner) = trimmed.strip_prefix('[').and_then(|r| r.strip_suffix(']')) else {
        return if raw.is_empty() { Vec::new() } else { vec![raw.to_owned()] };
    };
    if inner.trim_start().starts_with('"') {
        return match serde_json::from_str::<Vec<Value>>(trimmed) {
            Ok(values) if values.iter().all(Value::is_string) => {
                values.into_iter().filter_map(|v| v.as_str().map(str::to_owned)).filter(|v| !v.is_empty()).collect()
            }
            _ => Vec::new(),
        };
    }
    // Flattened by API Gateway: items separated by single spaces. Group names cannot hold spaces.
    inner.split(' ').filter(|v| !v.is_empty()).map(str::to_owned).collect()
}

/// Whether an OAuth `scope` claim (space-separated) holds `required` as a whole item.
pub fn has_scope(scope_claim: Option<&str>, required: &str) -> bool {
    !required.is_empty() && scope_claim.is_some_and(|s| s.split(' ').any(|item| item == required))
}

/// Who submitted a notification: the JWT `sub`, or `client_id` for a client-credentials token
/// without one. Notification ids are unique per sender, so one caller cannot occupy another's id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct Sender(String);

/// Longest sender accepted: it is part of a storage key and an SQS attribute.
pub const MAX_SENDER_BYTES: usize = 256;

impl Sender {
    /// A sender as stored in a message attribute: 1 to 256 printable ASCII characters, no spaces
    /// (it travels in the provider's `Idempotency-Key` header; JWT `sub` and `client_id` values
    /// are such strings).
    pub fn parse(s: &str) -> Result<Sender, String> {
        if s.is_empty() || s.len() > MAX_SENDER_BYTES {
            return Err(format!("must be 1 to {MAX_SENDER_BYTES} bytes, got {}", s.len()));
        }
        if !s.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("must be printable ASCII without spaces".to_owned());
        }
        Ok(Sender(s.to_owned()))
    }

    /// The sender of a request with these verified JWT claims, if it names one.
    pub fn from_claims<'a>(mut claim: impl FnMut(&str) -> Option<&'a str>) -> Option<Sender> {
        ["sub", "client_id"].into_iter().filter_map(&mut claim).find(|v| !v.is_empty()).and_then(|v| Sender::parse(v).ok())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Sender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A fixed-window rate limit: at most `limit` requests per caller in each `window_secs` window
/// (windows start at multiples of `window_secs` since the Unix epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FixedWindow {
    pub limit: u32,
    pub window_secs: u64,
}

impl FixedWindow {
    /// The window `now_secs` falls in, and the seconds until the next one starts (at least 1):
    /// what `Retry-After` says when the window is full.
    pub fn window(&self, now_secs: u64) -> (u64, u64) {
        let len = self.window_secs.max(1);
        let index = now_secs / len;
        (index, ((index + 1) * len - now_secs).max(1))
    }
}

/// A recipient as logs may show it: every character but the last four masked. Short values are
/// masked whole, so no log carries a full phone number, address or device token.
pub fn mask_recipient(recipient: &str) -> String {
    let n = recipient.chars().count();
    if n <= 4 {
        return "*".repeat(n);
    }
    let keep = n - 4;
    recipient.chars().enumerate().map(|(i, c)| if i < keep { '*' } else { c }).collect()
}

/// Parses a duration such as `90s`, `15m`, `2h`, `7d` (a bare number is seconds) into seconds.
pub fn parse_age(s: &str) -> Result<u64, String> {
    let (digits, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = digits.parse().map_err(|_| format!("{s:?} is not a duration like 90s, 15m, 2h or 7d"))?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use s, m, h or d)")),
    };
    n.checked_mul(mult).ok_or_else(|| format!("{s:?} is too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = r#"{"notification_id":"n-1","channel":"alimtalk","recipient":"+821012345678","template":"order.shipped","variables":{"name":"Kim"},"fallback":"sms","requested_at":"2026-11-22T15:30:00Z"}"#;

    fn with(field: &str, value: Value) -> String {
        let mut v: Value = serde_json::from_str(VALID).unwrap();
        if value.is_null() && field != "fallback" {
            v.as_object_mut().unwrap().remove(field);
        } else {
            v[field] = value;
        }
        v.to_string()
    }

    #[test]
    fn parses_a_valid_message() {
        let n = Notification::parse(VALID).unwrap();
        assert_eq!(n.notification_id, "n-1");
        assert_eq!(n.channel, Channel::Alimtalk);
        assert_eq!(n.fallback, Some(Channel::Sms));
        assert_eq!(n.variables["name"], "Kim");
        assert_eq!(n.requested_at, 1_795_361_400);
        assert_eq!(n.channels().collect::<Vec<_>>(), [Channel::Alimtalk, Channel::Sms]);
        let n = Notification::parse(&with("fallback", Value::Null)).unwrap();
        assert_eq!(n.fallback, None);
    }

    #[track_caller]
    fn check(body: &str, expect: &str) {
        let err = Notification::parse(body).unwrap_err().to_string();
        assert!(err.contains(expect), "{err:?} does not mention {expect:?}");
    }

    #[test]
    fn errors_name_the_field() {
        use serde_json::json;
        check("{not json", "malformed JSON");
        check("[1,2]", "an array, not an object");
        check(&with("notification_id", Value::Null), "field `notification_id`: missing");
        check(&with("notification_id", json!(7)), "field `notification_id`: must be a string, got a number");
        check(&with("notification_id", json!("a b")), "field `notification_id`");
        check(&with("channel", json!("fax")), "field `channel`: unknown channel \"fax\"");
        check(&with("recipient", json!("kim@example.com")), "field `recipient`: is not a phone number");
        check(&with("template", json!("")), "field `template`");
        check(&with("variables", Value::Null), "field `variables`: missing");
        check(&with("variables", json!({"n": 1})), "field `variables.n`: must be a string, got a number");
        check(&with("variables", json!({"bad name": "x"})), "field `variables.bad name`");
        check(&with("fallback", json!("alimtalk")), "field `fallback`: is the primary channel alimtalk");
        check(&with("fallback", json!("email")), "field `fallback`: recipient is not an e-mail address");
        check(&with("fallback", json!(true)), "field `fallback`: must be a string or null");
        check(&with("requested_at", json!("yesterday")), "field `requested_at`");
        check(&with("fallbak", json!("sms")), "field `fallbak`: unknown field");
    }

    #[test]
    fn recipients_per_channel() {
        let cases = [
            (Channel::Sms, "01012345678", true),
            (Channel::Sms, "+8210-1234", false),
            (Channel::Email, "a@b.co", true),
            (Channel::Email, "a@b", false),
            (Channel::Email, "a@@b.co", false),
            (Channel::Email, "a b@c.co", false),
            (Channel::Push, "fcm:AbC123_-", true),
            (Channel::Push, "tok en", false),
        ];
        for (channel, recipient, ok) in cases {
            assert_eq!(channel.check_recipient(recipient).is_ok(), ok, "{channel} {recipient}");
        }
    }

    #[test]
    fn status_never_goes_backwards() {
        use Status::*;
        let cases = [
            (None, Sending, true),
            (Some(Sending), Sent, true),
            (Some(Sending), Delivered, true),
            (Some(Sent), Delivered, true),
            (Some(Sending), Failed, true),
            (Some(Failed), Sending, true),
            (Some(Delivered), Sent, false),
            (Some(Delivered), Sending, false),
            (Some(Sent), Sent, false),
            (Some(Sent), Failed, false),
            (Some(Sent), Sending, false),
        ];
        for (from, to, ok) in cases {
            assert_eq!(Status::may_become(from, to), ok, "{from:?} -> {to:?}");
        }
        assert!(Sent.is_done() && Delivered.is_done() && !Failed.is_done() && !Sending.is_done());
    }

    #[test]
    fn provider_statuses() {
        let cases = [
            (200, Attempt::Accepted),
            (202, Attempt::Accepted),
            (400, Attempt::Permanent),
            (404, Attempt::Permanent),
            (422, Attempt::Permanent),
            (408, Attempt::Transient),
            (429, Attempt::Transient),
            (500, Attempt::Transient),
            (503, Attempt::Transient),
            (302, Attempt::Transient),
        ];
        for (status, expect) in cases {
            assert_eq!(classify_status(status), expect, "{status}");
        }
    }

    #[test]
    fn dead_letters_describe_themselves() {
        let attrs = BTreeMap::from([
            (attr::ERROR_KIND.to_owned(), "provider_rejected".to_owned()),
            (attr::CHANNEL.to_owned(), "email".to_owned()),
            (attr::FIRST_SENT_AT.to_owned(), "1000".to_owned()),
        ]);
        let d = DeadLetter::describe(&attrs, "{}", 5000);
        assert_eq!((d.kind, d.channel, d.first_sent_at), (ErrorKind::ProviderRejected, Some(Channel::Email), 1000));
        // Moved by SQS's redrive policy: no attributes; the body still tells the channel.
        let d = DeadLetter::describe(&BTreeMap::new(), VALID, 5000);
        assert_eq!((d.kind, d.channel, d.first_sent_at), (ErrorKind::RetriesExhausted, Some(Channel::Alimtalk), 5000));
        assert_eq!(d.notification_id.as_deref(), Some("n-1"));
        let d = DeadLetter::describe(&BTreeMap::new(), "{oops", 5000);
        assert_eq!((d.channel, d.notification_id), (None, None));
    }

    #[test]
    fn filters_select_by_kind_channel_and_age() {
        let letter = DeadLetter {
            kind: ErrorKind::RetriesExhausted,
            channel: Some(Channel::Sms),
            notification_id: None,
            sender: None,
            first_sent_at: 1_000_000,
        };
        let now = 1_000_000 + 3_600_000; // an hour later
        let f = |kinds: &[ErrorKind], channels: &[Channel], min: Option<u64>, max: Option<u64>| RedriveFilter {
            kinds: kinds.to_vec(),
            channels: channels.to_vec(),
            min_age_secs: min,
            max_age_secs: max,
        };
        let cases = [
            (f(&[], &[], None, None), true),
            (f(&[ErrorKind::RetriesExhausted], &[], None, None), true),
            (f(&[ErrorKind::MalformedJson, ErrorKind::InvalidMessage], &[], None, None), false),
            (f(&[], &[Channel::Sms, Channel::Email], None, None), true),
            (f(&[], &[Channel::Push], None, None), false),
            (f(&[], &[], Some(3600), None), true),
            (f(&[], &[], Some(3601), None), false),
            (f(&[], &[], None, Some(3600)), true),
            (f(&[], &[], None, Some(60)), false),
        ];
        for (filter, expect) in cases {
            assert_eq!(filter.matches(&letter, now), expect, "{filter:?}");
        }
        let no_channel = DeadLetter { channel: None, ..letter };
        assert!(!f(&[], &[Channel::Sms], None, None).matches(&no_channel, now));
        assert!(RedriveFilter::default().is_everything());
    }

    #[test]
    fn admin_claims_match_whole_items() {
        let rule = AdminRule::default();
        let check = |claims: &[(&str, &str)], expect: bool| {
            let map: BTreeMap<String, String> = claims.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            assert_eq!(rule.allows(|k| map.get(k).map(String::as_str)), expect, "{claims:?}");
        };
        // The forms API Gateway produces, holding the group.
        check(&[("cognito:groups", "ferry-admin")], true);
        check(&[("cognito:groups", "[support ferry-admin]")], true);
        check(&[("cognito:groups", "[ferry-admin]")], true);
        check(&[("cognito:groups", "[\"support\",\"ferry-admin\"]")], true);
        check(&[("cognito:groups", "[\"ferry-admin\"]")], true);
        // A scalar is one item: never split on spaces or commas.
        check(&[("cognito:groups", "x ferry-admin")], false);
        check(&[("cognito:groups", "user ferry-admin")], false);
        check(&[("cognito:groups", "x,ferry-admin")], false);
        check(&[("cognito:groups", "[x,ferry-admin]")], false);
        check(&[("cognito:groups", "[\"x,ferry-admin\"]")], false);
        check(&[("cognito:groups", "[\"x ferry-admin\"]")], false);
        check(&[("cognito:groups", " ferry-admin")], false);
        check(&[("cognito:groups", "ferry-admins")], false);
        check(&[("cognito:groups", "[ferry-admins]")], false);
        check(&[("cognito:groups", "[\"ferry-admin\", 1]")], false);
        check(&[("cognito:groups", "[support]")], false);
        check(&[("cognito:groups", "")], false);
        check(&[("cognito:groups", "[]")], false);
        // Another claim holding the value, or no claims at all (a missing authorizer).
        check(&[("scope", "ferry-admin")], false);
        check(&[], false);
        // An empty required value never matches.
        let empty = AdminRule { claim: "cognito:groups".into(), value: String::new() };
        assert!(!empty.allows(|_| Some("")));
    }

    #[test]
    fn claim_lists() {
        let cases: [(&str, &[&str]); 7] = [
            ("a", &["a"]),
            ("a b", &["a b"]),
            ("[a b]", &["a", "b"]),
            ("[\"a\",\"b c\"]", &["a", "b c"]),
            ("[\"a\",2]", &[]),
            ("[\"a\"", &["[\"a\""]),
            ("", &[]),
        ];
        for (raw, expect) in cases {
            assert_eq!(claim_items(raw), expect, "{raw:?}");
        }
    }

    #[test]
    fn scopes_match_whole_items() {
        let cases = [
            (Some("notify/send"), true),
            (Some("openid notify/send profile"), true),
            (Some("notify/send2"), false),
            (Some("notify"), false),
            (Some("openid,notify/send"), false),
            (Some(""), false),
            (None, false),
        ];
        for (claim, expect) in cases {
            assert_eq!(has_scope(claim, "notify/send"), expect, "{claim:?}");
        }
        assert!(!has_scope(Some(""), ""));
    }

    #[test]
    fn senders_come_from_sub_or_client_id() {
        let from = |claims: &[(&str, &str)]| {
            let map: BTreeMap<String, String> = claims.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            Sender::from_claims(|k| map.get(k).map(String::as_str)).map(|s| s.as_str().to_owned())
        };
        assert_eq!(from(&[("sub", "u-1"), ("client_id", "c-1")]).as_deref(), Some("u-1"));
        assert_eq!(from(&[("client_id", "c-1")]).as_deref(), Some("c-1"));
        assert_eq!(from(&[("sub", ""), ("client_id", "c-1")]).as_deref(), Some("c-1"));
        assert_eq!(from(&[("iss", "x")]), None);
        assert_eq!(from(&[("sub", "a\nb")]), None);
        assert_eq!(from(&[("sub", "a b")]), None);
        assert_eq!(from(&[("sub", "é")]), None);
        assert!(Sender::parse(&"x".repeat(MAX_SENDER_BYTES)).is_ok());
        assert!(Sender::parse(&"x".repeat(MAX_SENDER_BYTES + 1)).is_err());
        assert!(Sender::parse("").is_err());
    }

    #[test]
    fn fixed_windows() {
        let w = FixedWindow { limit: 10, window_secs: 60 };
        assert_eq!(w.window(120), (2, 60));
        assert_eq!(w.window(179), (2, 1));
        assert_eq!(w.window(180), (3, 60));
        assert_eq!(FixedWindow { limit: 1, window_secs: 0 }.window(5), (5, 1));
    }

    #[test]
    fn recipients_are_masked_but_the_last_four() {
        let cases = [
            ("+821012345678", "*********5678"),
            ("kim@example.com", "***********.com"),
            ("12345", "*2345"),
            ("1234", "****"),
            ("", ""),
            ("김철수님안녕", "**수님안녕"),
        ];
        for (recipient, masked) in cases {
            assert_eq!(mask_recipient(recipient), masked, "{recipient}");
        }
    }

    #[test]
    fn ages() {
        assert_eq!(parse_age("90"), Ok(90));
        assert_eq!(parse_age("90s"), Ok(90));
        assert_eq!(parse_age("15m"), Ok(900));
        assert_eq!(parse_age("2h"), Ok(7200));
        assert_eq!(parse_age("7d"), Ok(604_800));
        assert!(parse_age("2w").is_err());
        assert!(parse_age("h").is_err());
    }
}
