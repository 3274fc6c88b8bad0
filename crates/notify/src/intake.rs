//! `POST /notifications` behind API Gateway (HTTP API, JWT authorizer): the only way onto the
//! notification queue.
//!
//! In order: the caller's identity ([`Sender`], from the verified claims), the scope (when one is
//! configured), the body limit, validation ([`Notification::parse`], a 400 names the field), the
//! caller's throttle ([`DeliveryTable::admit`], a 429 says when to retry), then the message goes
//! onto the queue with its sender ([`ferry_api::sqs::attr::SENDER`]). The consumer keys its
//! claim on (sender, notification id), so one caller's ids never touch another's. Nothing is
//! queued for a refused request.

use ferry_api::notifications::Queued;
use ferry_aws::notify::{Admission, DeliveryTable, DynamoClient, SqsClient, send_notification};
use ferry_core::notify::{FixedWindow, MessageError, Notification, Sender, has_scope};
use ferry_core::public::{ErrorCode, PublicError};
use ferry_lambda::http;
use ferry_lambda::metrics::{Function, Line, Metric};
use ferry_lambda::settings::{SettingsError, Vars};
use lambda_http::http::{HeaderValue, Method, StatusCode};
use lambda_http::{Body, Request, Response};

/// The route this function serves.
pub const ROUTE: &str = "/notifications";

/// Largest body accepted by default, in bytes.
const DEFAULT_MAX_BODY_BYTES: u64 = 16 * 1024;
/// Requests per caller and window by default.
const DEFAULT_RATE_LIMIT: u32 = 60;
/// The throttle's window by default, in seconds.
const DEFAULT_RATE_WINDOW_SECS: u64 = 60;

/// Settings of the intake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntakeSettings {
    pub queue_url: String,
    /// The deliveries table, which holds the throttle's counters.
    pub table: String,
    /// An OAuth scope the caller's `scope` claim must hold; `None` for no check here.
    pub scope: Option<String>,
    /// Largest body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Requests per caller and window; `None` for no throttle.
    pub rate: Option<FixedWindow>,
}

impl IntakeSettings {
    /// The settings of an intake onto `queue_url` throttled in `table`, every other one at its default.
    pub fn new(queue_url: impl Into<String>, table: impl Into<String>) -> IntakeSettings {
        IntakeSettings {
            queue_url: queue_url.into(),
            table: table.into(),
            scope: None,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES as usize,
            rate: Some(FixedWindow { limit: DEFAULT_RATE_LIMIT, window_secs: DEFAULT_RATE_WINDOW_SECS }),
        }
    }

    /// Reads `FERRY_NOTIFY_QUEUE_URL` and `FERRY_NOTIFY_TABLE` (required), `FERRY_NOTIFY_SCOPE`
    /// (unset: none), `FERRY_NOTIFY_MAX_BODY_BYTES` (default 16384), `FERRY_NOTIFY_RATE_LIMIT`
    /// (requests per caller and window, default 60; 0 turns the throttle off) and
    /// `FERRY_NOTIFY_RATE_WINDOW_SECS` (default 60).
    pub fn from_vars(vars: &Vars) -> Result<IntakeSettings, SettingsError> {
        let mut s = IntakeSettings::new(vars.required("FERRY_NOTIFY_QUEUE_URL")?, vars.required("FERRY_NOTIFY_TABLE")?);
        s.scope = vars.optional("FERRY_NOTIFY_SCOPE");
        let max_body = vars.positive("FERRY_NOTIFY_MAX_BODY_BYTES")?.unwrap_or(DEFAULT_MAX_BODY_BYTES);
        s.max_body_bytes = usize::try_from(max_body).unwrap_or(usize::MAX);
        let limit = vars.within("FERRY_NOTIFY_RATE_LIMIT", 0..=u32::MAX.into(), "")?.unwrap_or(DEFAULT_RATE_LIMIT.into());
        let window_secs = vars.positive("FERRY_NOTIFY_RATE_WINDOW_SECS")?.unwrap_or(DEFAULT_RATE_WINDOW_SECS);
        // `within` bounds the limit to a u32.
        s.rate = (limit > 0).then(|| FixedWindow { limit: u32::try_from(limit).unwrap_or(u32::MAX), window_secs });
        Ok(s)
    }

    /// [`IntakeSettings::from_vars`] over the process environment.
    pub fn from_env() -> Result<IntakeSettings, SettingsError> {
        IntakeSettings::from_vars(&Vars::env())
    }
}

/// State built once per execution environment.
#[derive(Debug, Clone)]
pub struct Intake {
    pub sqs: SqsClient,
    /// The deliveries table (`settings.table`), which holds the throttle's counters.
    pub table: DeliveryTable,
    pub settings: IntakeSettings,
}

impl Intake {
    pub fn new(sqs: SqsClient, dynamodb: DynamoClient, settings: IntakeSettings) -> Intake {
        let table = DeliveryTable::new(dynamodb, settings.table.clone());
        Intake { sqs, table, settings }
    }
}

/// The Lambda handler. Every outcome is a response: refusals are 4xx with a [`PublicError`], an
/// AWS failure is a 503 whose cause is logged under the request id.
pub async fn handle(state: &Intake, req: Request) -> Result<Response<Body>, std::convert::Infallible> {
    let request_id = http::request_id(&req).unwrap_or_default();
    let claims = http::claims(&req);
    let Some(sender) = claims.and_then(|c| Sender::from_claims(|k| c.get(k).map(String::as_str))) else {
        tracing::warn!(request_id, "notification refused: no usable sub or client_id claim");
        return Ok(http::error_response(&req, PublicError::code(ErrorCode::Unauthorized)));
    };
    if let Some(scope) = &state.settings.scope
        && !has_scope(claims.and_then(|c| c.get("scope")).map(String::as_str), scope)
    {
        tracing::warn!(request_id, %sender, "notification refused: the token lacks the required scope");
        return Ok(http::forbidden(&req));
    }
    if req.uri().path().trim_end_matches('/') != ROUTE {
        return Ok(http::error_response(&req, PublicError::code(ErrorCode::NotFound)));
    }
    if req.method() != Method::POST {
        return Ok(http::error_response(&req, PublicError::new(ErrorCode::BadRequest, "use POST")));
    }
    let body: &[u8] = req.body().as_ref();
    if body.len() > state.settings.max_body_bytes {
        tracing::warn!(request_id, %sender, bytes = body.len(), "notification refused: body over the limit");
        let message = format!("the body is {} bytes, at most {} allowed", body.len(), state.settings.max_body_bytes);
        return Ok(http::error_response(&req, PublicError::new(ErrorCode::PayloadTooLarge, message)));
    }
    let Ok(text) = std::str::from_utf8(body) else {
        return Ok(http::error_response(&req, PublicError::new(ErrorCode::BadRequest, "the body is not UTF-8 text")));
    };
    let notification = match Notification::parse(text) {
        Ok(n) => n,
        Err(MessageError::Field { field, message }) => {
            return Ok(http::error_response(&req, PublicError::new(ErrorCode::BadRequest, message).with_field(field)));
        }
        Err(MessageError::MalformedJson(message)) => {
            return Ok(http::error_response(&req, PublicError::new(ErrorCode::BadRequest, format!("malformed JSON: {message}"))));
        }
    };
    if let Some(rule) = state.settings.rate {
        match state.table.admit(&sender, rule).await {
            Ok(Admission::Admitted) => {}
            Ok(Admission::Limited { retry_after }) => {
                tracing::warn!(request_id, %sender, retry_after_secs = retry_after.as_secs(), "notification refused: caller throttled");
                Line::new(Function::NotifyIntake)
                    .count(Metric::NotificationsThrottled, 1)
                    .property("notification_id", notification.notification_id.clone())
                    .emit();
                let mut res = http::error_response(&req, PublicError::code(ErrorCode::TooManyRequests));
                if let Ok(v) = HeaderValue::from_str(&retry_after.as_secs().to_string()) {
                    res.headers_mut().insert("retry-after", v);
                }
                return Ok(res);
            }
            Err(e) => {
                tracing::error!(request_id, %sender, error = %e, "throttle check failed");
                return Ok(http::error_response(&req, PublicError::code(ErrorCode::Unavailable)));
            }
        }
    }
    match send_notification(&state.sqs, &state.settings.queue_url, &sender, text).await {
        Ok(message_id) => {
            tracing::info!(request_id, %sender, notification_id = notification.notification_id, message_id, "queued");
            Line::new(Function::NotifyIntake)
                .count(Metric::NotificationsAccepted, 1)
                .property("notification_id", notification.notification_id.clone())
                .emit();
            Ok(http::json(StatusCode::ACCEPTED, &Queued::new(notification.notification_id)))
        }
        Err(e) => {
            tracing::error!(request_id, %sender, notification_id = notification.notification_id, error = %e, "could not queue");
            Ok(http::error_response(&req, PublicError::code(ErrorCode::Unavailable)))
        }
    }
}
