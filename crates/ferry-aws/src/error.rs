//! [`Error`]: the one error of an AWS call, whatever the service. The adapters' own errors
//! (`JobStoreError`, `NotifyAwsError`, `S3Error`, ...) hold it as their source, adding only what
//! the call was about.

use std::fmt;

use aws_smithy_types::error::display::DisplayErrorContext;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

/// Every SDK's error type: `SdkError<OperationError, HttpResponse>`, the same generic type for all.
pub(crate) type SdkError<E, R> = aws_sdk_dynamodb::error::SdkError<E, R>;

type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// An AWS call that failed, or whose answer could not be used. Names the service, the operation and
/// the resource (table and item, queue, bucket and key, ...). Shown as one line with the service's
/// error code and message; the SDK error, when there is one, is its [`source`](std::error::Error::source).
#[derive(Debug)]
pub struct Error {
    service: &'static str,
    operation: &'static str,
    resource: String,
    code: Option<String>,
    message: String,
    source: Option<BoxError>,
}

impl Error {
    /// The SDK error `e` of `operation` on `resource`. Its one-line message is the service's code
    /// and message when the service answered, else the whole chain (a timeout, a connection failure).
    pub(crate) fn sdk<E, R>(service: &'static str, operation: &'static str, resource: impl Into<String>, e: SdkError<E, R>) -> Error
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
        R: fmt::Debug + Send + Sync + 'static,
    {
        let (code, message) = match e.as_service_error() {
            Some(s) => (s.code().map(str::to_owned), format!("{}: {}", s.code().unwrap_or("error"), s.message().unwrap_or("no message"))),
            None => (None, DisplayErrorContext(&e).to_string()),
        };
        Error { service, operation, resource: resource.into(), code, message, source: Some(Box::new(e)) }
    }

    /// A failure without an SDK error: an answer that refused part of a request, an unreadable item,
    /// a request the SDK would not build.
    pub(crate) fn other(service: &'static str, operation: &'static str, resource: impl Into<String>, message: impl Into<String>) -> Error {
        Error { service, operation, resource: resource.into(), code: None, message: message.into(), source: None }
    }

    /// The same error with the service's code set (a code a service gives outside its error body,
    /// such as S3's `Forbidden` for a denied HEAD).
    pub(crate) fn with_code(mut self, code: impl Into<String>) -> Error {
        let code = code.into();
        // A body-less answer left only a placeholder: say what the status meant instead.
        if self.message.starts_with("error: no message") {
            self.message = format!("{code}: the answer had no body to say more");
        }
        self.code = Some(code);
        self
    }

    /// The service: `DynamoDB`, `SQS`, `S3`, `Lambda`, `EventBridge`, `SSM`.
    pub fn service(&self) -> &'static str {
        self.service
    }

    /// The operation (`UpdateItem`, `SendMessage`, ...).
    pub fn operation(&self) -> &'static str {
        self.operation
    }

    /// What the call was about.
    pub fn resource(&self) -> &str {
        &self.resource
    }

    /// The service's error code (`ConditionalCheckFailedException`, `AccessDenied`, ...), when it
    /// answered with one.
    pub fn code(&self) -> Option<&str> {
        self.code.as_deref()
    }

    /// The service's code and message (or the cause, when the service did not answer), one line.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} on {}: {}", self.service, self.operation, self.resource, self.message)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn std::error::Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_code_given_outside_the_body_replaces_the_placeholder() {
        let head = Error::other("S3", "HeadObject", "s3://b/k", "error: no message: service error").with_code("Forbidden");
        assert_eq!(head.to_string(), "S3 HeadObject on s3://b/k: Forbidden: the answer had no body to say more");
        assert_eq!(head.code(), Some("Forbidden"));
        // A message of the service's own stays.
        let put = Error::other("S3", "PutObject", "s3://b/k", "a concurrent conditional write won").with_code("PreconditionFailed");
        assert_eq!(put.message(), "a concurrent conditional write won");
    }
}
