//! `/notifications`: what a sender asks to deliver ([`NotificationRequest`]) and the intake's
//! answer ([`Queued`]).
//!
//! The intake reads a body with `ferry_core::notify::Notification::parse` (strict: every field
//! checked, unknown ones refused, errors name the field), which is also what the consumer applies
//! to the queued message; this type is the same contract from the sender's side.

use std::collections::BTreeMap;

use ferry_core::notify::Channel;
use serde::{Deserialize, Serialize};

/// The body of `POST /notifications`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NotificationRequest {
    /// Unique per sender: a repeat is delivered once.
    pub notification_id: String,
    pub channel: Channel,
    pub recipient: String,
    pub template: String,
    pub variables: BTreeMap<String, String>,
    /// A second channel tried when the first refuses (`sms` after `alimtalk`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallback: Option<Channel>,
    /// RFC 3339.
    pub requested_at: String,
}

/// The answer to an accepted notification (202): it is on the queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Queued {
    pub notification_id: String,
    /// Always `queued`.
    pub status: String,
}

impl Queued {
    pub fn new(notification_id: impl Into<String>) -> Queued {
        Queued { notification_id: notification_id.into(), status: "queued".to_owned() }
    }
}

#[cfg(test)]
mod tests {
    use ferry_core::notify::Notification;

    use super::*;

    #[test]
    fn a_request_is_what_the_intake_accepts() {
        let request = NotificationRequest {
            notification_id: "n-1".into(),
            channel: Channel::Alimtalk,
            recipient: "+821012345678".into(),
            template: "order.shipped".into(),
            variables: BTreeMap::from([("name".to_owned(), "Kim".to_owned())]),
            fallback: Some(Channel::Sms),
            requested_at: "2026-11-22T15:30:00Z".into(),
        };
        let n = Notification::parse(&serde_json::to_string(&request).unwrap()).unwrap();
        assert_eq!((n.notification_id.as_str(), n.channel, n.fallback), ("n-1", Channel::Alimtalk, Some(Channel::Sms)));
        let plain = NotificationRequest { fallback: None, ..request };
        assert_eq!(Notification::parse(&serde_json::to_string(&plain).unwrap()).unwrap().fallback, None);
    }

    #[test]
    fn the_answer_reads_as_it_always_did() {
        let q = serde_json::to_value(Queued::new("n-1")).unwrap();
        assert_eq!(q.to_string(), serde_json::json!({ "notification_id": "n-1", "status": "queued" }).to_string());
    }
}
