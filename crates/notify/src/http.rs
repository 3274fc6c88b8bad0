//! What the notification routes share: the verified JWT claims of an HTTP API v2 request, and
//! error bodies as callers see them (`{"error": {"code", "message", "field"?, "request_id"?}}`,
//! a [`PublicError`]); the cause of an error goes to the log under the same request id.

use std::collections::HashMap;

use ferry_core::public::{ErrorCode, PublicError, leaks_internals};
use lambda_http::http::{HeaderValue, StatusCode};
use lambda_http::request::RequestContext;
use lambda_http::{Body, Request, RequestExt, Response};

/// The JWT claims API Gateway's authorizer verified; `None` when the route has no JWT authorizer.
pub fn claims(req: &Request) -> Option<&HashMap<String, String>> {
    match req.request_context_ref() {
        Some(RequestContext::ApiGatewayV2(c)) => c.authorizer.as_ref().and_then(|a| a.jwt.as_ref()).map(|j| &j.claims),
        _ => None,
    }
}

/// API Gateway's id of the request, which callers quote and the access log carries.
pub fn request_id(req: &Request) -> Option<String> {
    match req.request_context_ref() {
        Some(RequestContext::ApiGatewayV2(c)) => c.request_id.clone(),
        _ => None,
    }
}

/// A JSON response.
pub fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let mut res = Response::new(Body::Text(value.to_string()));
    *res.status_mut() = status;
    res.headers_mut().insert("content-type", HeaderValue::from_static("application/json"));
    res
}

/// The response for `error`, with the request id attached. A message that would show internals
/// is replaced by the code's default message (the log keeps the cause).
pub fn error(req: &Request, mut error: PublicError) -> Response<Body> {
    if leaks_internals(&error.message) {
        error.message = error.code.default_message().to_owned();
    }
    if let Some(id) = request_id(req) {
        error = error.with_request_id(id);
    }
    let status = StatusCode::from_u16(error.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json(status, &serde_json::json!({ "error": error }))
}

/// A 403 that says only "forbidden": never which claim or scope was missing.
pub fn forbidden(req: &Request) -> Response<Body> {
    error(req, PublicError::code(ErrorCode::Forbidden))
}
