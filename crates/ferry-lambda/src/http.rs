//! An HTTP API (payload v2) request as the routes read it, and the answers they give.
//!
//! Identity comes only from the claims API Gateway's JWT authorizer verified ([`claims`],
//! [`claim`]), never from the body. Every error a caller sees is one body,
//! `{"error": {"code", "message", "field"?, "request_id"?}}` (`ferry_api::error::ErrorBody`, a
//! [`PublicError`]): the request id lets the caller quote what the log holds under it, and a
//! message that would show internals is replaced by its code's default message ([`stamp`]).

use std::collections::HashMap;

use ferry_api::error::ErrorBody;
use ferry_core::public::{ErrorCode, PublicError, leaks_internals};
use lambda_http::http::{HeaderValue, StatusCode};
use lambda_http::request::RequestContext;
use lambda_http::{Body, Request, RequestExt, Response};
use serde::Serialize;

/// The JWT claims API Gateway's authorizer verified; `None` when the route has no JWT authorizer.
pub fn claims(req: &Request) -> Option<&HashMap<String, String>> {
    match req.request_context_ref()? {
        RequestContext::ApiGatewayV2(c) => c.authorizer.as_ref()?.jwt.as_ref().map(|j| &j.claims),
        _ => None,
    }
}

/// One verified claim (`sub`, `client_id`); an empty one counts as absent, since an empty
/// identity must never match anything.
pub fn claim<'r>(req: &'r Request, name: &str) -> Option<&'r str> {
    claims(req)?.get(name).map(String::as_str).filter(|v| !v.is_empty())
}

/// The id the function's log lines carry: Lambda's request id, or API Gateway's when the handler
/// runs outside Lambda (a test, the demo). Empty ids count as absent.
pub fn request_id(req: &Request) -> Option<String> {
    let lambda = req.lambda_context_ref().map(|c| c.request_id.as_str());
    let gateway = || match req.request_context_ref()? {
        RequestContext::ApiGatewayV2(c) => c.request_id.as_deref(),
        _ => None,
    };
    lambda.filter(|id| !id.is_empty()).or_else(|| gateway().filter(|id| !id.is_empty())).map(str::to_owned)
}

/// A JSON response with `body` (a `ferry_api` shape, or a `serde_json::Value`).
pub fn json<T: Serialize + ?Sized>(status: StatusCode, body: &T) -> Response<Body> {
    // Through a `Value`, so that members come out in the order a `Value` keeps them, as the
    // answers built as values always did. Our shapes hold strings, numbers and string-keyed
    // maps only: serialising cannot fail.
    let text = serde_json::to_value(body).unwrap_or_default().to_string();
    let mut res = Response::new(Body::Text(text));
    *res.status_mut() = status;
    res.headers_mut().insert("content-type", HeaderValue::from_static("application/json"));
    res
}

/// The HTTP status `code` answers with.
pub fn status_of(code: ErrorCode) -> StatusCode {
    StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// `error` as a caller may see it: with `request_id` to quote, and the code's default message in
/// place of one that would show internals (the log keeps the cause, under that id).
pub fn stamp(mut error: PublicError, request_id: Option<&str>) -> PublicError {
    if leaks_internals(&error.message) {
        error.message = error.code.default_message().to_owned();
    }
    match request_id {
        Some(id) => error.with_request_id(id),
        None => error,
    }
}

/// `{"error": error}` ([`ErrorBody`]), stamped ([`stamp`]). A route may add the job it is about
/// ([`ErrorBody::with_job`]) before answering with [`json`].
pub fn error_body(error: PublicError, request_id: Option<&str>) -> ErrorBody {
    ErrorBody::new(stamp(error, request_id))
}

/// The answer to `req` for `error`: the code's status and [`error_body`] with the request's id.
pub fn error_response(req: &Request, error: PublicError) -> Response<Body> {
    let status = status_of(error.code);
    json(status, &error_body(error, request_id(req).as_deref()))
}

/// A 403 that says only "forbidden": never which claim or scope was missing.
pub fn forbidden(req: &Request) -> Response<Body> {
    error_response(req, PublicError::code(ErrorCode::Forbidden))
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    /// An HTTP API v2 request with `claims` (no authorizer when `None`) and API Gateway's
    /// `gateway_id`.
    fn request(claims: Option<Value>, gateway_id: Option<&str>) -> Request {
        let mut context = serde_json::json!({
            "accountId": "123456789012",
            "apiId": "abc123",
            "domainName": "abc123.execute-api.us-east-1.amazonaws.com",
            "http": { "method": "POST", "path": "/x", "protocol": "HTTP/1.1", "sourceIp": "127.0.0.1", "userAgent": "t" },
            "routeKey": "POST /x",
            "stage": "$default",
            "time": "22/Nov/2026:15:30:00 +0000",
            "timeEpoch": 1795361400000_u64,
        });
        if let Some(c) = claims {
            context["authorizer"] = serde_json::json!({ "jwt": { "claims": c, "scopes": null } });
        }
        if let Some(id) = gateway_id {
            context["requestId"] = id.into();
        }
        let event = serde_json::json!({
            "version": "2.0",
            "routeKey": "POST /x",
            "rawPath": "/x",
            "rawQueryString": "",
            "headers": {},
            "requestContext": context,
            "isBase64Encoded": false,
        });
        lambda_http::request::from_str(&event.to_string()).expect("an HTTP API v2 request")
    }

    fn with_lambda_id(req: Request, id: &str) -> Request {
        let mut ctx = lambda_runtime::Context::default();
        ctx.request_id = id.to_owned();
        req.with_lambda_context(ctx)
    }

    fn body(res: &Response<Body>) -> Value {
        serde_json::from_slice(res.body().as_ref()).expect("a JSON body")
    }

    #[test]
    fn claims_come_from_the_jwt_authorizer_only() {
        let req = request(Some(serde_json::json!({ "sub": "u-1", "client_id": "" })), None);
        assert_eq!(claim(&req, "sub"), Some("u-1"));
        assert_eq!(claim(&req, "client_id"), None, "an empty claim is no claim");
        assert_eq!(claim(&req, "scope"), None);
        assert_eq!(claims(&req).map(HashMap::len), Some(2));

        let anonymous = request(None, None);
        assert_eq!(claims(&anonymous), None, "no authorizer, no claims");
        assert_eq!(claim(&anonymous, "sub"), None);
    }

    #[test]
    fn the_request_id_is_lambdas_then_api_gateways() {
        let check = |lambda: Option<&str>, gateway: Option<&str>, expect: Option<&str>| {
            let mut req = request(None, gateway);
            if let Some(id) = lambda {
                req = with_lambda_id(req, id);
            }
            assert_eq!(request_id(&req).as_deref(), expect, "lambda {lambda:?}, gateway {gateway:?}");
        };
        check(Some("lambda-1"), Some("gw-1"), Some("lambda-1"));
        check(None, Some("gw-1"), Some("gw-1"));
        check(Some(""), Some("gw-1"), Some("gw-1"));
        check(Some("lambda-1"), None, Some("lambda-1"));
        check(None, Some(""), None);
        check(None, None, None);
    }

    #[test]
    fn an_error_is_one_body_with_the_request_id() {
        let req = request(None, Some("gw-1"));
        let res = error_response(&req, PublicError::new(ErrorCode::BadRequest, "no such channel").with_field("channel"));
        assert_eq!(res.status(), StatusCode::BAD_REQUEST);
        assert_eq!(res.headers().get("content-type").and_then(|v| v.to_str().ok()), Some("application/json"));
        assert_eq!(
            body(&res),
            serde_json::json!({ "error": { "code": "bad_request", "message": "no such channel", "field": "channel", "request_id": "gw-1" } })
        );

        let anonymous = error_response(&request(None, None), PublicError::code(ErrorCode::NotFound));
        assert_eq!(anonymous.status(), StatusCode::NOT_FOUND);
        assert_eq!(body(&anonymous)["error"].get("request_id"), None, "no id to quote, no member");
    }

    #[test]
    fn a_message_that_shows_internals_becomes_the_default() {
        let check = |message: &str, expect: &str| {
            let e = stamp(PublicError::new(ErrorCode::Unavailable, message), Some("r-1"));
            assert_eq!((e.message.as_str(), e.request_id.as_deref()), (expect, Some("r-1")), "{message}");
        };
        let default = ErrorCode::Unavailable.default_message();
        check("arn:aws:s3:::bucket is gone", default);
        check("AccessDenied: not allowed", default);
        check("account 123456789012 is closed", default);
        check("try again shortly", "try again shortly");
    }

    #[test]
    fn forbidden_says_nothing_else() {
        let res = forbidden(&request(Some(serde_json::json!({ "sub": "u-1" })), Some("gw-1")));
        assert_eq!(res.status(), StatusCode::FORBIDDEN);
        assert_eq!(body(&res), serde_json::json!({ "error": { "code": "forbidden", "message": "forbidden", "request_id": "gw-1" } }));
    }

    #[test]
    fn extra_members_sit_beside_the_error() {
        let mut b = serde_json::to_value(error_body(PublicError::code(ErrorCode::Conflict), None)).expect("a JSON body");
        b["job"] = serde_json::json!({ "id": "j-1" });
        assert_eq!(b["error"]["code"], "conflict");
        assert_eq!(b["job"]["id"], "j-1");
    }
}
