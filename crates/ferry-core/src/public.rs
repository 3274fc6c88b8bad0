//! What a caller may see of a failure: a stable [`ErrorCode`] from a closed set and a safe message.
//!
//! Causes (SDK errors, ARNs, account ids, object keys, endpoints) go to the structured log with the
//! request id; the caller gets the code, a message written for them, the field at fault when there
//! is one, and the request id to quote. A [`PublicError`] is built only from these parts, so nothing
//! else can reach a response by accident.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The closed set of error codes a caller can see. Adding one is an API change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request is malformed or names something it may not; `field` says which part.
    BadRequest,
    /// No verified identity on the request.
    Unauthorized,
    /// The caller is known but may not do this.
    Forbidden,
    /// No such resource for this caller (another caller's resource is also "not found").
    NotFound,
    /// The resource is in a state that does not allow this.
    Conflict,
    /// The body is over the limit.
    PayloadTooLarge,
    /// The caller sent too much too fast, or holds too many running jobs.
    TooManyRequests,
    /// A dependency of the service failed; retrying later may succeed.
    Unavailable,
    /// The service failed in a way the caller cannot fix; quote the request id.
    Internal,
    /// A job's source could not be read (missing or not readable: the two are not told apart).
    SourceUnavailable,
    /// A job's source was read but its contents are not what the job needs.
    BadSourceData,
    /// A job's input or output is over a limit.
    TooLarge,
    /// A job's worker could not be started or continued.
    WorkerUnavailable,
    /// A batch job's items failed beyond what it tolerates; the rest were not sent.
    TooManyFailures,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 14] = [
        ErrorCode::BadRequest,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::NotFound,
        ErrorCode::Conflict,
        ErrorCode::PayloadTooLarge,
        ErrorCode::TooManyRequests,
        ErrorCode::Unavailable,
        ErrorCode::Internal,
        ErrorCode::SourceUnavailable,
        ErrorCode::BadSourceData,
        ErrorCode::TooLarge,
        ErrorCode::WorkerUnavailable,
        ErrorCode::TooManyFailures,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Conflict => "conflict",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::TooManyRequests => "too_many_requests",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
            ErrorCode::SourceUnavailable => "source_unavailable",
            ErrorCode::BadSourceData => "bad_source_data",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::WorkerUnavailable => "worker_unavailable",
            ErrorCode::TooManyFailures => "too_many_failures",
        }
    }

    pub fn parse(s: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// The HTTP status an API answers with for this code.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::BadRequest => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::Conflict => 409,
            ErrorCode::PayloadTooLarge | ErrorCode::TooLarge => 413,
            ErrorCode::TooManyRequests => 429,
            ErrorCode::BadSourceData | ErrorCode::SourceUnavailable | ErrorCode::TooManyFailures => 422,
            ErrorCode::Internal => 500,
            ErrorCode::Unavailable | ErrorCode::WorkerUnavailable => 503,
        }
    }

    /// The message shown when the caller has nothing more specific coming: says what, never why.
    pub fn default_message(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "the request is not valid",
            ErrorCode::Unauthorized => "no verified identity on the request",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not found",
            ErrorCode::Conflict => "the resource is in a state that does not allow this",
            ErrorCode::PayloadTooLarge => "the request body is over the limit",
            ErrorCode::TooManyRequests => "too many requests; retry later",
            ErrorCode::Unavailable => "the service is temporarily unavailable; retry later",
            ErrorCode::Internal => "internal error; quote the request id when reporting it",
            ErrorCode::SourceUnavailable => "the source does not exist or cannot be read",
            ErrorCode::BadSourceData => "the source holds data the job cannot read",
            ErrorCode::TooLarge => "the source or result is over a limit",
            ErrorCode::WorkerUnavailable => "the worker could not be started; submit again later",
            ErrorCode::TooManyFailures => "more items failed than the job tolerates; the rest were not sent",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error as a caller sees it. Build the message from what the caller sent or may know, never
/// from an error's `Display` of a lower layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicError {
    pub code: ErrorCode,
    pub message: String,
    /// The request field at fault (`params.source.prefix`), when one is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// The request id to quote; the log holds the cause under it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

impl PublicError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> PublicError {
        PublicError { code, message: message.into(), field: None, request_id: None }
    }

    /// The code with its default message.
    pub fn code(code: ErrorCode) -> PublicError {
        PublicError::new(code, code.default_message())
    }

    pub fn with_field(mut self, field: impl Into<String>) -> PublicError {
        self.field = Some(field.into());
        self
    }

    pub fn with_request_id(mut self, request_id: impl Into<String>) -> PublicError {
        self.request_id = Some(request_id.into());
        self
    }
}

impl fmt::Display for PublicError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.field {
            Some(field) => write!(f, "{} ({field}): {}", self.code, self.message)?,
            None => write!(f, "{}: {}", self.code, self.message)?,
        }
        if let Some(id) = &self.request_id {
            write!(f, " [request id {id}]")?;
        }
        Ok(())
    }
}

/// Whether `text` looks like it carries something a caller must never see: an ARN, a 12-digit
/// account id, an endpoint URL, or an SDK error type name. Tests assert every caller-visible string
/// passes; a response builder may use it as a last guard.
pub fn leaks_internals(text: &str) -> bool {
    let lower = text.to_ascii_lowercase();
    if lower.contains("arn:") || lower.contains("http://") || lower.contains("https://") {
        return true;
    }
    const SDK_WORDS: [&str; 8] =
        ["accessdenied", "resourcenotfound", "nosuchbucket", "nosuchkey", "serviceerror", "dispatchfailure", "sdkerror", "exception"];
    if SDK_WORDS.iter().any(|w| lower.contains(w)) {
        return true;
    }
    // Twelve digits in a row, not part of a longer number: an account id.
    let bytes = text.as_bytes();
    let mut run = 0;
    for (i, b) in bytes.iter().enumerate() {
        if b.is_ascii_digit() {
            run += 1;
        } else {
            if run == 12 {
                return true;
            }
            run = 0;
        }
        if i + 1 == bytes.len() && run == 12 {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_map_to_statuses() {
        for c in ErrorCode::ALL {
            assert_eq!(ErrorCode::parse(c.as_str()), Some(c));
            assert_eq!(serde_json::to_value(c).unwrap(), serde_json::Value::String(c.as_str().into()));
            assert!((400..600).contains(&c.http_status()), "{c}");
            assert!(!leaks_internals(c.default_message()), "{c}");
        }
        assert_eq!(ErrorCode::parse("AccessDenied"), None);
    }

    #[test]
    fn public_errors_serialise_without_empty_parts() {
        let e = PublicError::new(ErrorCode::BadRequest, "is refused").with_field("params.source.prefix");
        assert_eq!(serde_json::to_string(&e).unwrap(), r#"{"code":"bad_request","message":"is refused","field":"params.source.prefix"}"#);
        assert_eq!(e.to_string(), "bad_request (params.source.prefix): is refused");
        let e = PublicError::code(ErrorCode::Internal).with_request_id("r-1");
        assert_eq!(serde_json::from_str::<PublicError>(&serde_json::to_string(&e).unwrap()).unwrap(), e);
    }

    #[test]
    fn leak_detector() {
        for bad in [
            "User: arn:aws:sts::123456789012:assumed-role/x is not authorized",
            "account 123456789012 denied",
            "123456789012",
            "dispatch failure: http://127.0.0.1:5000/",
            "AccessDenied: no",
            "ResourceNotFoundException",
            "NoSuchBucket",
        ] {
            assert!(leaks_internals(bad), "{bad}");
        }
        for ok in ["the source does not exist or cannot be read", "line 12: column `price` is not a number", "1234567890123", "12345"] {
            assert!(!leaks_internals(ok), "{ok}");
        }
    }
}
