//! An S3 notification as the handlers read it, and how an invocation over it fails.
//!
//! [`parse`] tells S3's `s3:TestEvent` (sent once when a notification is configured; it has no
//! records) from a notification, and [`objects`] gives each record as an [`ObjectEvent`] with its
//! key decoded. [`ObjectEvent::admit`] is the filter every handler applies in the same order:
//! an `ObjectCreated` record, a key the handler's own grammar accepts, a bucket.
//!
//! A handler attempts every unit of work (a record, a merge) and collects what failed in
//! [`Failures`]; any failure fails the invocation ([`EventError`]), so that Lambda retries the
//! event, with one message naming each object at fault and the first failure's kind as the
//! `errorType` of its [`Diagnostic`].

use std::fmt::{self, Display};

use aws_lambda_events::s3::S3Event;
use ferry_api::s3::decode_event_key;
use lambda_runtime::Diagnostic;

/// The name S3 gives its test event.
pub const TEST_EVENT: &str = "s3:TestEvent";

/// The notification in `payload`, or `None` for S3's `s3:TestEvent` (logged: there is nothing to
/// do).
pub fn parse(payload: serde_json::Value) -> Result<Option<S3Event>, BadEvent> {
    if payload.get("Event").and_then(|e| e.as_str()) == Some(TEST_EVENT) {
        tracing::info!("s3:TestEvent received; nothing to do");
        return Ok(None);
    }
    serde_json::from_value(payload).map(Some).map_err(BadEvent)
}

/// The payload is neither an S3 notification nor its test event.
#[derive(Debug, thiserror::Error)]
// The parser's error is in the message, not a source, so that a printed chain shows it once.
#[error("event is not an S3 notification: {0}")]
pub struct BadEvent(serde_json::Error);

/// One record of a notification: what happened, to which object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectEvent {
    /// `ObjectCreated:Put`, ...; empty when the record has none.
    pub event_name: String,
    pub bucket: Option<String>,
    /// The object key, decoded: S3 sends it URL-encoded, with `+` for a space.
    pub key: String,
}

/// The records of `event`, in order.
pub fn objects(event: S3Event) -> Vec<ObjectEvent> {
    event
        .records
        .into_iter()
        .map(|r| ObjectEvent {
            event_name: r.event_name.unwrap_or_default(),
            key: decode_event_key(r.s3.object.key.as_deref().unwrap_or_default()).into_owned(),
            bucket: r.s3.bucket.name,
        })
        .collect()
}

impl ObjectEvent {
    /// The bucket, and what `parse_key` (the handler's key grammar) made of the key; or why the
    /// record is skipped: it is not an object creation, `parse_key` refused the key (its
    /// reason), or it names no bucket. A record without an event name counts as a creation.
    pub fn admit<T, E: Display>(&self, parse_key: impl FnOnce(&str) -> Result<T, E>) -> Result<(String, T), String> {
        if !self.event_name.is_empty() && !self.event_name.starts_with("ObjectCreated") {
            return Err(format!("event {} is not ObjectCreated", self.event_name));
        }
        let parsed = parse_key(&self.key).map_err(|e| e.to_string())?;
        let bucket = self.bucket.clone().ok_or("record names no bucket")?;
        Ok((bucket, parsed))
    }
}

/// The units of work of one invocation that failed, each with its kind (`BadKey`,
/// `StoreError`, ...). Reads `{failed} of {total} {noun} failed: {each error, joined by "; "}`.
#[derive(Debug)]
pub struct Failures<E> {
    noun: &'static str,
    total: usize,
    failures: Vec<(&'static str, E)>,
}

impl<E> Failures<E> {
    /// None yet, of `total` units called `noun` (`records`, `merges`).
    pub fn new(noun: &'static str, total: usize) -> Failures<E> {
        Failures { noun, total, failures: Vec::new() }
    }

    pub fn push(&mut self, kind: &'static str, error: E) {
        self.failures.push((kind, error));
    }

    pub fn is_empty(&self) -> bool {
        self.failures.is_empty()
    }

    /// How many units were attempted.
    pub fn total(&self) -> usize {
        self.total
    }

    /// The errors, in the order they were pushed.
    pub fn errors(&self) -> impl Iterator<Item = &E> {
        self.failures.iter().map(|(_, e)| e)
    }

    /// The first failure's kind: the one a retry most likely meets first.
    pub fn kind(&self) -> &'static str {
        self.failures.first().map_or("Error", |(k, _)| k)
    }

    /// `done` when nothing failed, else the invocation's error.
    pub fn into_result<T>(self, done: T) -> Result<T, EventError<E>> {
        if self.is_empty() { Ok(done) } else { Err(EventError::Failed(self)) }
    }
}

impl<E: Display> Display for Failures<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} of {} {} failed: ", self.failures.len(), self.total, self.noun)?;
        for (i, (_, e)) in self.failures.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

// No source: the message already names every failure, and there is no single cause to chain.
impl<E: fmt::Debug + Display> std::error::Error for Failures<E> {}

/// An invocation over an S3 notification failed; the message names every object at fault.
#[derive(Debug, thiserror::Error)]
pub enum EventError<E> {
    #[error(transparent)]
    BadEvent(#[from] BadEvent),
    #[error(transparent)]
    Failed(Failures<E>),
}

impl<E> EventError<E> {
    /// The `errorType` Lambda logs: `BadEvent`, or the first failure's kind.
    pub fn kind(&self) -> &'static str {
        match self {
            EventError::BadEvent(_) => "BadEvent",
            EventError::Failed(f) => f.kind(),
        }
    }
}

impl<E: fmt::Debug + Display> From<EventError<E>> for Diagnostic {
    fn from(e: EventError<E>) -> Diagnostic {
        crate::diagnostic::of(e.kind(), &e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PUT: &str = r#"{"Records": [{
        "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "us-east-1",
        "eventTime": "2026-11-22T15:30:05.000Z", "eventName": "ObjectCreated:Put",
        "userIdentity": {"principalId": "EXAMPLE"}, "requestParameters": {"sourceIPAddress": "127.0.0.1"},
        "responseElements": {},
        "s3": {"s3SchemaVersion": "1.0", "bucket": {"name": "ferry-demo"}, "object": {"key": "data/1/my+file%2B1.csv", "size": 1}}
    }]}"#;

    fn object(event_name: &str, bucket: Option<&str>, key: &str) -> ObjectEvent {
        ObjectEvent { event_name: event_name.to_owned(), bucket: bucket.map(str::to_owned), key: key.to_owned() }
    }

    /// Accepts keys under `data/`, as a handler's grammar would.
    fn data_key(key: &str) -> Result<usize, String> {
        key.strip_prefix("data/").map(str::len).ok_or_else(|| format!("key {key}: not under data/"))
    }

    #[test]
    fn the_test_event_is_no_notification_and_garbage_is_bad() {
        let test_event = serde_json::json!({ "Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "ferry-demo" });
        assert!(matches!(parse(test_event), Ok(None)));
        let bad = parse(serde_json::json!({ "Records": "none" })).expect_err("not a notification");
        assert!(bad.to_string().starts_with("event is not an S3 notification: "), "{bad}");
        let e: EventError<String> = bad.into();
        assert_eq!(e.kind(), "BadEvent");
    }

    #[test]
    fn records_come_with_decoded_keys() {
        let event = parse(serde_json::from_str(PUT).expect("JSON")).expect("an event").expect("not the test event");
        assert_eq!(objects(event), [object("ObjectCreated:Put", Some("ferry-demo"), "data/1/my file+1.csv")]);
    }

    #[test]
    fn only_object_creations_with_a_good_key_and_a_bucket_are_admitted() {
        let check = |o: ObjectEvent, expect: Result<(&str, usize), &str>| {
            let got = o.admit(data_key);
            assert_eq!(got.as_ref().map(|(b, n)| (b.as_str(), *n)).map_err(String::as_str), expect, "{o:?}");
        };
        check(object("ObjectCreated:Put", Some("b"), "data/x.csv"), Ok(("b", 5)));
        check(object("ObjectCreated:CompleteMultipartUpload", Some("b"), "data/x"), Ok(("b", 1)));
        check(object("", Some("b"), "data/x"), Ok(("b", 1)));
        check(object("ObjectRemoved:Delete", Some("b"), "data/x"), Err("event ObjectRemoved:Delete is not ObjectCreated"));
        // The event name is judged first, then the key, then the bucket.
        check(object("ObjectRemoved:Delete", None, "other/x"), Err("event ObjectRemoved:Delete is not ObjectCreated"));
        check(object("ObjectCreated:Put", None, "other/x"), Err("key other/x: not under data/"));
        check(object("ObjectCreated:Put", None, "data/x"), Err("record names no bucket"));
    }

    #[test]
    fn failures_become_one_error_naming_each() {
        let none: Failures<String> = Failures::new("records", 3);
        assert_eq!(none.into_result("report").ok(), Some("report"));

        let mut some = Failures::new("merges", 3);
        some.push("BadKey", "key a: bad".to_owned());
        some.push("StoreError", "b: gone".to_owned());
        assert_eq!(some.errors().count(), 2);
        let e = some.into_result(()).expect_err("two failed");
        assert_eq!(e.to_string(), "2 of 3 merges failed: key a: bad; b: gone");
        let d = Diagnostic::from(e);
        assert_eq!((d.error_type.as_str(), d.error_message.as_str()), ("BadKey", "2 of 3 merges failed: key a: bad; b: gone"));
    }
}
