//! The job API behind API Gateway (HTTP API, payload v2):
//!
//! - `POST /jobs` `{"kind": "export", "params": {...}}`: 202 and the new job, or 200 and the running
//!   one when the same owner already runs the same export.
//! - `GET /jobs/{id}`: status, progress, times, error, and a download link once it succeeded.
//! - `GET /jobs?limit=&cursor=`: the caller's jobs, newest first.
//! - `DELETE /jobs/{id}`: cancel; the worker stops at its next page.
//!
//! The owner is the JWT `sub` the authorizer verified. Another owner's job is 404, as is a job past its
//! retention. Client errors are JSON `{"error": {"field": ..., "message": ...}}`.

use std::sync::Arc;

use ferry_aws::jobs::{InvokeError, JobStoreError, JobTable, NewJob, Refused, Submitted, WorkerPayload};
use ferry_aws::s3::{S3Error, Store};
use ferry_core::jobs::{self, JobRecord, ListCursor, Status, SubmitError};
use lambda_http::http::{Method, StatusCode};
use lambda_http::request::RequestContext;
use lambda_http::{Body, Request, RequestExt, Response};
use lambda_runtime::Diagnostic;
use serde_json::{Value, json};

use crate::settings::{InvokeMode, JobSettings, ms, now_ms};

/// State built once per execution environment.
#[derive(Debug, Clone)]
pub struct Api {
    pub table: JobTable,
    /// The bucket exports are written to.
    pub store: Store,
    pub lambda: aws_sdk_lambda::Client,
    pub settings: Arc<JobSettings>,
}

/// A failure that is the service's, not the caller's (API Gateway answers 500).
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Store(#[from] JobStoreError),
    #[error(transparent)]
    S3(#[from] S3Error),
}

impl From<ApiError> for Diagnostic {
    fn from(e: ApiError) -> Diagnostic {
        let error_type = match &e {
            ApiError::Store(_) => "StoreError",
            ApiError::S3(_) => "S3Error",
        };
        Diagnostic { error_type: error_type.to_owned(), error_message: e.to_string() }
    }
}

fn respond(status: StatusCode, body: Value) -> Response<Body> {
    let mut r = Response::new(Body::Text(body.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert("content-type", lambda_http::http::HeaderValue::from_static("application/json"));
    r
}

fn client_error(status: StatusCode, field: &str, message: &str) -> Response<Body> {
    respond(status, json!({ "error": { "field": field, "message": message } }))
}

fn bad_request(e: &SubmitError) -> Response<Body> {
    client_error(StatusCode::BAD_REQUEST, &e.field, &e.message)
}

fn not_found() -> Response<Body> {
    client_error(StatusCode::NOT_FOUND, "id", "no such job")
}

/// The JWT `sub` of the caller, as API Gateway's JWT authorizer put it in the request context.
fn owner(req: &Request) -> Option<String> {
    match req.request_context_ref()? {
        RequestContext::ApiGatewayV2(ctx) => ctx.authorizer.as_ref()?.jwt.as_ref()?.claims.get("sub").filter(|s| !s.is_empty()).cloned(),
        _ => None,
    }
}

fn status_url(req: &Request, id: &str) -> String {
    let path = format!("/jobs/{id}");
    match req.request_context_ref() {
        Some(RequestContext::ApiGatewayV2(ctx)) => match (&ctx.domain_name, ctx.stage.as_deref()) {
            (Some(domain), Some(stage)) if stage != "$default" => format!("https://{domain}/{stage}{path}"),
            (Some(domain), _) => format!("https://{domain}{path}"),
            _ => path,
        },
        _ => path,
    }
}

fn rfc3339(ms: i64) -> Value {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .map_or(Value::Null, Value::String)
}

/// A job as the API shows it. `download` is added for a succeeded job by [`Api::view`].
fn summary(job: &JobRecord, now: i64) -> Value {
    let status = job.status_at(now);
    let error = match status {
        Status::Lost => Some(format!(
            "the worker stopped reporting progress; its lease ended at {}",
            rfc3339(job.lease_expires_at).as_str().unwrap_or("?")
        )),
        Status::Failed => job.error.clone(),
        _ => None,
    };
    let mut v = json!({
        "id": job.id,
        "kind": job.kind.as_str(),
        "status": status.as_str(),
        "progress": job.progress,
        "attempt": job.attempt,
        "format": job.params.format,
        "created_at": rfc3339(job.created_at),
        "updated_at": rfc3339(job.updated_at),
        "retained_until": rfc3339(job.retain_until),
    });
    if let Some(e) = error {
        v["error"] = Value::String(e);
    }
    v
}

impl Api {
    async fn view(&self, job: &JobRecord, now: i64) -> Result<Value, ApiError> {
        let mut v = summary(job, now);
        if let (Status::Succeeded, Some(result)) = (job.status_at(now), &job.result) {
            let store = Store::new(self.store.client().clone(), result.bucket.clone());
            let filename = format!("{}.{}", job.id, job.params.format.extension());
            let lifetime = self.settings.link_lifetime.min(ferry_aws::exports::MAX_LINK_LIFETIME);
            let url = ferry_aws::exports::presign_get(&store, &result.key, &filename, lifetime).await?;
            v["download"] = json!({
                "url": url,
                "expires_at": rfc3339(now + ms(lifetime)),
                "size": result.size,
                "rows": result.rows,
                "sheets": result.sheets,
            });
        }
        Ok(v)
    }

    /// The owner's job, or `None` (404) when it does not exist, is another owner's, or is expired.
    async fn owned(&self, id: &str, owner: &str, now: i64) -> Result<Option<JobRecord>, ApiError> {
        if !jobs::is_job_id(id) {
            return Ok(None);
        }
        Ok(self.table.get(id, now).await?.filter(|j| j.owner == owner))
    }
}

/// Handles one request.
pub async fn handle(api: &Api, req: Request) -> Result<Response<Body>, ApiError> {
    let Some(owner) = owner(&req) else {
        return Ok(client_error(StatusCode::UNAUTHORIZED, "authorization", "no verified identity (JWT sub) on the request"));
    };
    let path = req.raw_http_path().trim_end_matches('/').to_owned();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let method = req.method().clone();
    match (segments.as_slice(), method) {
        (["jobs"], Method::POST) => submit(api, &req, &owner).await,
        (["jobs"], Method::GET) => list(api, &req, &owner).await,
        (["jobs", id], Method::GET) => {
            let now = now_ms();
            match api.owned(id, &owner, now).await? {
                Some(job) => Ok(respond(StatusCode::OK, api.view(&job, now).await?)),
                None => Ok(not_found()),
            }
        }
        (["jobs", id], Method::DELETE) => cancel(api, id, &owner).await,
        (["jobs"] | ["jobs", _], _) => Ok(client_error(StatusCode::METHOD_NOT_ALLOWED, "method", "not allowed on this path")),
        _ => Ok(client_error(StatusCode::NOT_FOUND, "path", "no such resource")),
    }
}

async fn submit(api: &Api, req: &Request, owner: &str) -> Result<Response<Body>, ApiError> {
    let body: &[u8] = match req.body() {
        Body::Empty => b"",
        Body::Text(t) => t.as_bytes(),
        Body::Binary(b) => b,
        _ => b"",
    };
    let request = match jobs::parse_submit(body) {
        Ok(r) => r,
        Err(e) => return Ok(bad_request(&e)),
    };
    let now = now_ms();
    let id = uuid::Uuid::new_v4().to_string();
    let new = NewJob {
        id: &id,
        owner,
        kind: request.kind,
        params: &request.params,
        now,
        start_lease_ms: ms(api.settings.start_lease),
        retention_ms: ms(api.settings.retention),
    };
    let job = match api.table.submit(new).await? {
        Submitted::Existing(job) => {
            let mut body = json!({ "job": api.view(&job, now).await?, "status_url": status_url(req, &job.id) });
            body["duplicate"] = Value::Bool(true);
            return Ok(respond(StatusCode::OK, body));
        }
        Submitted::Busy { holder } => {
            let message = format!("an identical job ({holder}) is being created; retry shortly");
            return Ok(client_error(StatusCode::CONFLICT, "params", &message));
        }
        Submitted::Created(job) => job,
    };
    tracing::info!(job_id = job.id, owner, kind = %job.kind, "job created");
    let payload = WorkerPayload { job_id: job.id.clone(), attempt: 0 };
    match api.settings.invoke_mode {
        InvokeMode::Await => {
            if let Err(e) = start_worker(api, &payload).await {
                let failed = fail_unstarted(api, &job, &e).await?;
                let body = json!({ "job": summary(&failed, now_ms()), "error": { "field": "worker", "message": e.to_string() } });
                return Ok(respond(StatusCode::SERVICE_UNAVAILABLE, body));
            }
        }
        InvokeMode::Detached => {
            let (api, job) = (api.clone(), job.clone());
            tokio::spawn(async move {
                if let Err(e) = start_worker(&api, &payload).await {
                    let _ = fail_unstarted(&api, &job, &e).await;
                }
            });
        }
    }
    let mut resp = respond(StatusCode::ACCEPTED, json!({ "job": summary(&job, now), "status_url": status_url(req, &job.id) }));
    if let Ok(v) = lambda_http::http::HeaderValue::from_str(&format!("/jobs/{}", job.id)) {
        resp.headers_mut().insert("location", v);
    }
    Ok(resp)
}

async fn start_worker(api: &Api, payload: &WorkerPayload) -> Result<(), InvokeError> {
    ferry_aws::jobs::invoke_worker(&api.lambda, &api.settings.worker_function, payload).await
}

/// The worker could not be started: fail the job and free its lock, so nothing is left orphaned.
async fn fail_unstarted(api: &Api, job: &JobRecord, e: &InvokeError) -> Result<JobRecord, ApiError> {
    tracing::error!(job_id = job.id, error = %e, "starting the worker failed; failing the job");
    Ok(match api.table.fail(&job.id, None, &format!("the worker could not be started: {e}"), now_ms()).await? {
        Ok(j) => j,
        Err(Refused::NotOurs(j)) => *j,
        Err(_) => job.clone(),
    })
}

async fn list(api: &Api, req: &Request, owner: &str) -> Result<Response<Body>, ApiError> {
    let query = req.query_string_parameters();
    let limit = match jobs::parse_page_size(query.first("limit")) {
        Ok(l) => l,
        Err(e) => return Ok(bad_request(&e)),
    };
    let cursor = match query.first("cursor").map(ListCursor::decode).transpose() {
        Ok(c) => c,
        Err(e) => return Ok(bad_request(&e)),
    };
    let now = now_ms();
    let (found, next) = api.table.list(owner, limit, cursor.as_ref(), now).await?;
    let jobs: Vec<Value> = found.iter().map(|j| summary(j, now)).collect();
    Ok(respond(StatusCode::OK, json!({ "jobs": jobs, "next_cursor": next.map(|c| c.encode()) })))
}

async fn cancel(api: &Api, id: &str, owner: &str) -> Result<Response<Body>, ApiError> {
    let now = now_ms();
    let Some(job) = api.owned(id, owner, now).await? else { return Ok(not_found()) };
    match api.table.cancel(&job.id, owner, now).await? {
        Ok(cancelled) => {
            tracing::info!(job_id = cancelled.id, "job cancelled");
            Ok(respond(StatusCode::OK, json!({ "job": summary(&cancelled, now) })))
        }
        // Already ended (or cancelled): say how.
        Err(Refused::NotOurs(_) | Refused::Cancelled) => match api.owned(id, owner, now).await? {
            Some(current) => {
                let body = json!({
                    "error": { "field": "status", "message": format!("the job is already {}", current.status_at(now)) },
                    "job": summary(&current, now),
                });
                Ok(respond(StatusCode::CONFLICT, body))
            }
            None => Ok(not_found()),
        },
        Err(Refused::Missing) => Ok(not_found()),
    }
}
