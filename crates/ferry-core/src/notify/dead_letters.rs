//! Dead letters: why a message is in the dead-letter queue ([`ErrorKind`]), what a dead letter says
//! about itself ([`DeadLetter::describe`], from the [`Marks`] the consumer left on it or its body), and
//! which ones a selective redrive moves ([`RedriveFilter`], its ages read by [`parse_age`]).

use std::fmt;
use std::str::FromStr;

use serde_json::Value;

use super::message::Channel;

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

/// What a dead letter says about itself, from its attributes or, lacking them, its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub kind: ErrorKind,
    pub channel: Option<Channel>,
    pub notification_id: Option<String>,
    /// Who submitted it.
    pub sender: Option<String>,
    /// When the message first entered the source queue, in Unix milliseconds.
    pub first_sent_at: i64,
}

/// The marks the consumer leaves on a message it dead-letters, each as the text it carries. All
/// are optional: SQS's own redrive policy moves a message with none of them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Marks<'a> {
    pub error_kind: Option<&'a str>,
    pub channel: Option<&'a str>,
    pub notification_id: Option<&'a str>,
    /// When the message first entered the source queue, in Unix milliseconds.
    pub first_sent_at: Option<&'a str>,
    pub sender: Option<&'a str>,
}

impl DeadLetter {
    /// `sent_timestamp` is the message's SQS `SentTimestamp` (which SQS keeps when its redrive
    /// policy moves a message). A message without an error kind was moved by SQS after too many
    /// receives; the body fills in what the marks lack.
    pub fn describe(marks: Marks<'_>, body: &str, sent_timestamp: i64) -> DeadLetter {
        let kind = marks.error_kind.and_then(|k| k.parse().ok()).unwrap_or(ErrorKind::RetriesExhausted);
        let peeked = serde_json::from_str::<Value>(body).ok();
        let peek = |field: &str| peeked.as_ref().and_then(|v| v.get(field)).and_then(Value::as_str).map(str::to_owned);
        let channel = marks.channel.map(str::to_owned).or_else(|| peek("channel")).and_then(|c| c.parse().ok());
        let notification_id = marks.notification_id.map(str::to_owned).or_else(|| peek("notification_id"));
        let first_sent_at = marks.first_sent_at.and_then(|t| t.parse().ok()).unwrap_or(sent_timestamp);
        let sender = marks.sender.map(str::to_owned);
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
    use crate::notify::message::tests::VALID;

    #[test]
    fn dead_letters_describe_themselves() {
        let marks =
            Marks { error_kind: Some("provider_rejected"), channel: Some("email"), first_sent_at: Some("1000"), ..Marks::default() };
        let d = DeadLetter::describe(marks, "{}", 5000);
        assert_eq!((d.kind, d.channel, d.first_sent_at), (ErrorKind::ProviderRejected, Some(Channel::Email), 1000));
        // Moved by SQS's redrive policy: no attributes; the body still tells the channel.
        let d = DeadLetter::describe(Marks::default(), VALID, 5000);
        assert_eq!((d.kind, d.channel, d.first_sent_at), (ErrorKind::RetriesExhausted, Some(Channel::Alimtalk), 5000));
        assert_eq!(d.notification_id.as_deref(), Some("n-1"));
        let d = DeadLetter::describe(Marks::default(), "{oops", 5000);
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
