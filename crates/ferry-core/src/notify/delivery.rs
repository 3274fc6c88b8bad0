//! Where a delivery is: [`Status`] (`sending` -> `sent` -> `delivered`, and `failed`), whose
//! [`Status::rank`] never goes down, and what one provider call came to ([`classify_status`]: an
//! [`Attempt`] accepted, transient or permanent).

use std::fmt;
use std::str::FromStr;

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
