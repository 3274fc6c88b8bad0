//! Who is calling: the [`Sender`] of a notification (from the JWT `sub` or `client_id`), whether an
//! OAuth scope is granted ([`has_scope`]), the [`AdminRule`] that makes a caller an admin who may
//! redrive (over a claim's items; reading them from the forms a gateway hands over is
//! `ferry_api::claims`'s), and the [`FixedWindow`] of the per-caller submit throttle.

use std::fmt;

/// Who may redrive: a JWT claim that must hold a value.
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
    /// Whether a caller whose [`AdminRule::claim`] holds `items` is an admin: one item equals the
    /// value exactly (never a part of an item, so `"user ferry-admin"` or a group named
    /// `x,ferry-admin` is not membership), and an empty value matches nothing.
    pub fn allows<S: AsRef<str>>(&self, items: &[S]) -> bool {
        !self.value.is_empty() && items.iter().any(|item| item.as_ref() == self.value)
    }
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn admins_hold_the_value_as_a_whole_item() {
        let rule = AdminRule::default();
        let cases: [(&[&str], bool); 7] = [
            (&["ferry-admin"], true),
            (&["support", "ferry-admin"], true),
            (&["user ferry-admin"], false),
            (&["x,ferry-admin"], false),
            (&["ferry-admins"], false),
            (&[" ferry-admin"], false),
            (&[], false),
        ];
        for (items, expect) in cases {
            assert_eq!(rule.allows(items), expect, "{items:?}");
        }
        let empty = AdminRule { claim: "cognito:groups".into(), value: String::new() };
        assert!(!empty.allows(&[""]));
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
}
