//! The Lambda edge every ferry function shares, written once.
//!
//! - [`http`]: an HTTP API (payload v2) request as the routes read it (the verified JWT claims,
//!   the request id) and the answers they give: [`http::json`] of a `ferry_api` shape, and the one
//!   error body `{"error": PublicError}` ([`http::error_response`]) with the request id and the
//!   guard against messages that show internals.
//! - [`s3`]: an S3 notification as the handlers read it: `s3:TestEvent` detection
//!   ([`s3::parse`]), the records as [`s3::ObjectEvent`]s with decoded keys, the `ObjectCreated`
//!   filter ([`s3::ObjectEvent::admit`]), and every failure of an invocation as one error
//!   ([`s3::Failures`], [`s3::EventError`]).
//! - [`diagnostic`]: an error as a `lambda_runtime::Diagnostic` named by its kind.
//! - [`error_chain`]: an error and its sources on one line, for logs.
//! - [`metrics`]: CloudWatch embedded metric format lines on stdout: every metric name, unit and
//!   dimension of ferry in one place, the emitter, and the check a line must pass.
//!
//! **Invariant:** the edge only, no decisions. Which keys a function takes, who may call a route
//! and what a failure means are the calling crate's (and `ferry_core`'s); this crate only turns
//! event and request shapes into values and values into responses. It calls no AWS SDK.

pub mod diagnostic;
pub mod http;
pub mod metrics;
pub mod s3;
pub mod settings;

/// `error` and each of its sources, joined by `": "`: the whole cause on one log line.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("{what}")]
    struct Layer {
        what: &'static str,
        #[source]
        source: Option<Box<Layer>>,
    }

    fn layers(names: &[&'static str]) -> Option<Box<Layer>> {
        names.iter().rev().fold(None, |source, &what| Some(Box::new(Layer { what, source })))
    }

    #[test]
    fn error_chain_prints_every_source_in_order() {
        let check = |names: &[&'static str], expect: &str| {
            let e = layers(names).expect("at least one layer");
            assert_eq!(error_chain(e.as_ref()), expect);
        };
        check(&["alone"], "alone");
        check(&["sending", "connecting", "refused"], "sending: connecting: refused");
    }
}
