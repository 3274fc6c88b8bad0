//! Notifications as SQS carries them: the message attributes the intake and the consumer put on
//! a message ([`attr`]), and a dead letter read back from them ([`dead_letter`]).

use std::collections::BTreeMap;

use ferry_core::notify::{DeadLetter, Marks};

/// Message attribute names. The intake sets [`attr::SENDER`] on every queued message; the consumer
/// adds the others to what it dead-letters.
pub mod attr {
    /// A `ferry_core::notify::ErrorKind`.
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
    /// The `ferry_core::notify::Sender` who submitted it. Set by the intake on every queued message
    /// and kept through the DLQ and both redrives; a message without it is refused.
    pub const SENDER: &str = "ferry-sender";
}

/// What a dead letter says about itself: `attrs` are its string message attributes,
/// `sent_timestamp` its SQS `SentTimestamp`.
pub fn dead_letter(attrs: &BTreeMap<String, String>, body: &str, sent_timestamp: i64) -> DeadLetter {
    let get = |name: &str| attrs.get(name).map(String::as_str);
    let marks = Marks {
        error_kind: get(attr::ERROR_KIND),
        channel: get(attr::CHANNEL),
        notification_id: get(attr::NOTIFICATION_ID),
        first_sent_at: get(attr::FIRST_SENT_AT),
        sender: get(attr::SENDER),
    };
    DeadLetter::describe(marks, body, sent_timestamp)
}

#[cfg(test)]
mod tests {
    use ferry_core::notify::{Channel, ErrorKind};

    use super::*;

    #[test]
    fn each_attribute_lands_in_its_field() {
        let attrs = BTreeMap::from([
            (attr::ERROR_KIND.to_owned(), "provider_rejected".to_owned()),
            (attr::CHANNEL.to_owned(), "email".to_owned()),
            (attr::NOTIFICATION_ID.to_owned(), "n-7".to_owned()),
            (attr::FIRST_SENT_AT.to_owned(), "1000".to_owned()),
            (attr::SENDER.to_owned(), "shop".to_owned()),
        ]);
        let d = dead_letter(&attrs, "{}", 5000);
        assert_eq!((d.kind, d.channel, d.first_sent_at), (ErrorKind::ProviderRejected, Some(Channel::Email), 1000));
        assert_eq!((d.notification_id.as_deref(), d.sender.as_deref()), (Some("n-7"), Some("shop")));
        // Moved by SQS's redrive policy: no attributes, so the kind and the time are SQS's.
        let d = dead_letter(&BTreeMap::new(), "{}", 5000);
        assert_eq!((d.kind, d.first_sent_at, d.sender), (ErrorKind::RetriesExhausted, 5000, None));
    }
}
