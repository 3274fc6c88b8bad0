//! The admin route behind API Gateway (HTTP API, JWT authorizer) that pushes dead letters back.
//!
//! - `GET /admin/redrive`: the DLQ's recent move tasks (`ListMessageMoveTasks`).
//! - `POST /admin/redrive`: without a filter or `dry_run`, starts SQS's own move task
//!   (`StartMessageMoveTask`, optional `rate`); with them, runs a selective redrive and answers
//!   with what it moved (or, dry, would move). Body and answers: [`ferry_api::redrive`].
//!
//! Every request must carry the admin claim ([`AdminRule`]: exact membership, over the claim's
//! items as [`ferry_api::claims::is_admin`] reads them); anyone else gets a 403 that says only
//! "forbidden". Errors are [`PublicError`]s; an AWS failure is a 503 whose cause is logged under
//! the request id.

use std::time::Duration;

use ferry_api::claims;
use ferry_api::redrive::{Mode, NativeStarted, RedriveRequest, RedriveStatus, SelectiveDone};
use ferry_aws::notify::{self, NotifyAwsError, QueuePair, RedriveOptions, SqsClient};
use ferry_core::notify::{AdminRule, RedriveFilter};
use ferry_core::public::{ErrorCode, PublicError};
use ferry_lambda::http::{self, json};
use ferry_lambda::metrics::{Function, Line, Metric};
use ferry_lambda::settings::{SettingsError, Vars};
use lambda_http::http::{Method, StatusCode};
use lambda_http::{Body, Request, Response};

/// The route this function serves.
pub const ROUTE: &str = "/admin/redrive";

/// State built once per execution environment.
#[derive(Debug, Clone)]
pub struct Redriver {
    pub sqs: SqsClient,
    pub queues: QueuePair,
    pub admin: AdminRule,
    /// How long a selective redrive may run inside one request (API Gateway gives up at 30 s).
    pub time_budget: Duration,
}

impl Redriver {
    /// Reads `FERRY_NOTIFY_QUEUE_URL`, `FERRY_NOTIFY_DLQ_URL` (both required), `FERRY_ADMIN_CLAIM`
    /// and `FERRY_ADMIN_VALUE` (default: `cognito:groups` holding `ferry-admin`).
    pub fn from_vars(sqs: SqsClient, vars: &Vars) -> Result<Redriver, SettingsError> {
        let mut admin = AdminRule::default();
        if let Some(c) = vars.optional("FERRY_ADMIN_CLAIM") {
            admin.claim = c;
        }
        if let Some(v) = vars.optional("FERRY_ADMIN_VALUE") {
            admin.value = v;
        }
        Ok(Redriver {
            sqs,
            queues: QueuePair { source_url: vars.required("FERRY_NOTIFY_QUEUE_URL")?, dlq_url: vars.required("FERRY_NOTIFY_DLQ_URL")? },
            admin,
            time_budget: Duration::from_secs(25),
        })
    }

    /// [`Redriver::from_vars`] over the process environment.
    pub fn from_env(sqs: SqsClient) -> Result<Redriver, SettingsError> {
        Redriver::from_vars(sqs, &Vars::env())
    }
}

/// Whether the caller carries the admin claim, per the JWT authorizer's claims. No authorizer at
/// all (a misconfigured route) is no admin.
pub fn is_admin(rule: &AdminRule, req: &Request) -> bool {
    http::claims(req).is_some_and(|claims| claims::is_admin(rule, |k| claims.get(k).map(String::as_str)))
}

/// The Lambda handler. Every outcome is a response.
pub async fn handle(state: &Redriver, req: Request) -> Result<Response<Body>, std::convert::Infallible> {
    let request_id = http::request_id(&req).unwrap_or_default();
    if !is_admin(&state.admin, &req) {
        tracing::warn!(request_id, path = req.uri().path(), claim = state.admin.claim, "redrive refused: no admin claim");
        return Ok(http::forbidden(&req));
    }
    match route(state, &req).await {
        Ok(res) => Ok(res),
        Err(e) => {
            tracing::error!(request_id, error = %e, "redrive failed");
            Ok(http::error_response(&req, PublicError::code(ErrorCode::Unavailable)))
        }
    }
}

/// Serves the request; an AWS call that failed comes back as the error, which [`handle`] answers
/// with a 503 and logs.
async fn route(state: &Redriver, req: &Request) -> Result<Response<Body>, NotifyAwsError> {
    if req.uri().path().trim_end_matches('/') != ROUTE {
        return Ok(http::error_response(req, PublicError::code(ErrorCode::NotFound)));
    }
    match *req.method() {
        Method::GET => {
            let arn = notify::queue_arn(&state.sqs, &state.queues.dlq_url).await?;
            let tasks = notify::list_move_tasks(&state.sqs, &arn).await?;
            Ok(json(StatusCode::OK, &RedriveStatus { dead_letter_queue: arn, tasks }))
        }
        Method::POST => {
            let body: &[u8] = req.body().as_ref();
            let request: RedriveRequest = if body.iter().all(u8::is_ascii_whitespace) {
                RedriveRequest::default()
            } else {
                match serde_json::from_slice(body) {
                    Ok(r) => r,
                    Err(e) => return Ok(http::error_response(req, PublicError::new(ErrorCode::BadRequest, format!("body: {e}")))),
                }
            };
            let filter = match request.filter.to_filter() {
                Ok(f) => f,
                Err(e) => return Ok(http::error_response(req, e)),
            };
            let selective = !filter.is_everything() || request.dry_run || request.max_messages.is_some();
            match request.mode {
                Some(Mode::Native) if selective => Ok(http::error_response(
                    req,
                    PublicError::new(
                        ErrorCode::BadRequest,
                        "native moves everything; filter, dry_run and max_messages need mode selective",
                    )
                    .with_field("mode"),
                )),
                Some(Mode::Native) | None if !selective => start_native(state, request.rate).await,
                _ => run_selective(state, &filter, &request).await,
            }
        }
        _ => Ok(http::error_response(req, PublicError::new(ErrorCode::BadRequest, "use GET (status) or POST (redrive)"))),
    }
}

async fn start_native(state: &Redriver, rate: Option<u32>) -> Result<Response<Body>, NotifyAwsError> {
    let dlq_arn = notify::queue_arn(&state.sqs, &state.queues.dlq_url).await?;
    let source_arn = notify::queue_arn(&state.sqs, &state.queues.source_url).await?;
    let rate = rate.map(|r| r.clamp(1, 500) as i32);
    let handle = notify::start_move_task(&state.sqs, &dlq_arn, Some(&source_arn), rate).await?;
    tracing::info!(dlq = dlq_arn, destination = source_arn, rate, task = handle, "move task started");
    Ok(json(
        StatusCode::ACCEPTED,
        &NativeStarted { mode: Mode::Native, task_handle: handle, source: dlq_arn, destination: source_arn, rate },
    ))
}

async fn run_selective(state: &Redriver, filter: &RedriveFilter, request: &RedriveRequest) -> Result<Response<Body>, NotifyAwsError> {
    let options = RedriveOptions {
        dry_run: request.dry_run,
        rate: request.rate.map(f64::from),
        max_messages: request.max_messages,
        time_budget: Some(state.time_budget),
        ..RedriveOptions::default()
    };
    let report = notify::selective_redrive(&state.sqs, &state.queues, filter, &options, &mut |_| {}).await?;
    tracing::info!(
        dry_run = report.dry_run,
        examined = report.examined,
        matched = report.matched,
        moved = report.moved,
        "selective redrive done"
    );
    if !report.dry_run {
        Line::new(Function::DlqRedrive).count(Metric::NotificationsRedriven, report.moved as u64).emit();
    }
    Ok(json(StatusCode::OK, &SelectiveDone::new(report)))
}
