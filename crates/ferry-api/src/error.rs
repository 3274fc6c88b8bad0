//! The one error body every route answers with: `{"error": {"code", "message", "field"?,
//! "request_id"?}}` ([`ErrorBody`]), and API Gateway's own error answers a client can meet
//! ([`GatewayMessage`]).

use ferry_core::public::PublicError;
use serde::{Deserialize, Serialize};

use crate::jobs::JobView;

/// An error answer. The job API adds the job the error is about (a cancel of an ended job, a job
/// whose worker could not be started); no other member is ever added.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: PublicError,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<JobView>,
}

impl ErrorBody {
    pub fn new(error: PublicError) -> ErrorBody {
        ErrorBody { error, job: None }
    }

    /// The body with the job the error is about beside it.
    pub fn with_job(mut self, job: JobView) -> ErrorBody {
        self.job = Some(job);
        self
    }
}

/// What API Gateway answers on its own (`{"message": "Internal Server Error"}`, a throttle, a
/// missing token): not ours, but a client reads it when no [`ErrorBody`] came.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayMessage {
    pub message: String,
}

#[cfg(test)]
mod tests {
    use ferry_core::public::ErrorCode;

    use super::*;

    #[test]
    fn the_error_body_has_no_empty_members() {
        let body = ErrorBody::new(PublicError::new(ErrorCode::BadRequest, "no such channel").with_field("channel"));
        assert_eq!(
            serde_json::to_string(&body).unwrap(),
            r#"{"error":{"code":"bad_request","message":"no such channel","field":"channel"}}"#
        );
        assert_eq!(serde_json::from_str::<ErrorBody>(&serde_json::to_string(&body).unwrap()).unwrap(), body);
        let gateway: GatewayMessage = serde_json::from_str(r#"{"message":"Internal Server Error"}"#).unwrap();
        assert_eq!(gateway.message, "Internal Server Error");
        assert!(serde_json::from_str::<ErrorBody>(r#"{"message":"Internal Server Error"}"#).is_err());
    }
}
