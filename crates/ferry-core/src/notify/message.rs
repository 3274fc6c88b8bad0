//! The message contract: the delivery [`Channel`]s and who each can reach, a queued message parsed
//! strictly into a [`Notification`] ([`Notification::parse`]; a [`MessageError`] names the field),
//! and a recipient as logs may show it ([`mask_recipient`]).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde_json::Value;

use super::dead_letters::ErrorKind;

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

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(in crate::notify) const VALID: &str = r#"{"notification_id":"n-1","channel":"alimtalk","recipient":"+821012345678","template":"order.shipped","variables":{"name":"Kim"},"fallback":"sms","requested_at":"2026-11-22T15:30:00Z"}"#;

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
}
