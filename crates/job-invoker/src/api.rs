//! The job API behind API Gateway (HTTP API, payload v2):
//!
//! - `POST /jobs` `{"kind": "export" | "batch" | ..., "params": {...}}`: 202 and the new job, or 200
//!   and the running one when the same owner already runs the same request. `{"retry_of": id}` runs
//!   again what that job of the caller's left undone (a batch's failed items).
//! - `GET /jobs/{id}`: status, progress, times, error, and a download link once it succeeded.
//! - `GET /jobs?limit=&cursor=`: the caller's jobs, newest first.
//! - `DELETE /jobs/{id}`: cancel; the worker stops at its next page.
//!
//! The owner is the JWT `sub` the authorizer verified. Another owner's job is 404, as is a job past its
//! retention. Every error answer is `{"error": {"code", "message", "field"?, "request_id"}}` (a
//! `ferry_core::public::PublicError`): a code from a closed set and a message built from what the
//! caller sent. Causes go to the log under the same request id, never into a body. The bodies are
//! `ferry_api`'s shapes ([`ferry_api::jobs`], [`ferry_api::error::ErrorBody`]); the request's
//! identity and id, and the JSON answer, are `ferry_lambda::http`'s.
//!
//! Each kind admits its own params ([`crate::kind::Kind::admit`]): an export's source must be on the
//! allowlist (`JobSettings::source_policy`), a batch's target configured and its item file on the
//! allowlist and well formed. What the kind returns is stored, and is what the worker reads.

use std::collections::BTreeMap;
use std::sync::Arc;

use ferry_api::error::ErrorBody;
use ferry_api::jobs::{Cancelled, Download, FileLink, JobList, JobView};
use ferry_aws::jobs::{JobStoreError, NewJob, Refused, Submitted};
use ferry_aws::lambda::{InvokeError, Invoker, WorkerPayload};
use ferry_aws::s3::S3Error;
use ferry_core::jobs::{self, JobRecord, ListCursor, Status, SubmitError, rfc3339};
use ferry_core::public::{ErrorCode, PublicError};
use ferry_lambda::http::{self, json};
use ferry_lambda::metrics::Function;
use lambda_http::http::{Method, StatusCode};
use lambda_http::request::RequestContext;
use lambda_http::{Body, Request, RequestExt, Response};
use lambda_runtime::Diagnostic;
use serde_json::Value;

use crate::kind::{Admission, AdmitError, JobEnv, Kind, Registry};
use crate::lifecycle::{self, Lifecycle};
use crate::settings::{InvokeMode, ms, now_ms};

/// State built once per execution environment.
#[derive(Debug, Clone)]
pub struct Api {
    pub env: JobEnv,
    pub lambda: Invoker,
}

/// A failure that is the service's, not the caller's. Logged in full; the caller gets
/// `unavailable` and the request id.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Store(#[from] JobStoreError),
    #[error(transparent)]
    S3(#[from] S3Error),
    /// A kind could not check a submit (its source could not be read).
    #[error("admitting the job: {0}")]
    Admit(String),
}

impl ApiError {
    fn kind(&self) -> &'static str {
        match self {
            ApiError::Store(_) => "StoreError",
            ApiError::S3(_) => "S3Error",
            ApiError::Admit(_) => "AdmitError",
        }
    }
}

impl From<ApiError> for Diagnostic {
    fn from(e: ApiError) -> Diagnostic {
        ferry_lambda::diagnostic::of(e.kind(), &e)
    }
}

/// Who is asking, and the id the log files this request under.
#[derive(Debug, Clone)]
struct Caller {
    owner: Option<String>,
    request_id: Option<String>,
}

impl Caller {
    /// `e` as an answer, with the request id to quote. The status follows the code.
    fn error(&self, e: PublicError) -> Response<Body> {
        self.error_with(http::status_of(e.code), e, None)
    }

    /// `e` with the request id to quote, when there is one. Not [`http::stamp`]: its guard would
    /// replace a 400's message that echoes what the caller sent (a URL given as a batch target),
    /// which the caller needs to see to fix the request.
    fn stamp(&self, e: PublicError) -> PublicError {
        match &self.request_id {
            Some(id) => e.with_request_id(id.clone()),
            None => e,
        }
    }

    /// `e` with an explicit status and the job it is about beside `error`.
    fn error_with(&self, status: StatusCode, e: PublicError, job: Option<JobView>) -> Response<Body> {
        let body = ErrorBody { error: self.stamp(e), job };
        json(status, &body)
    }

    /// A request the caller must fix: logged with who asked, answered 400 naming the field.
    fn bad_request(&self, e: &SubmitError) -> Response<Body> {
        tracing::warn!(owner = self.owner, request_id = self.request_id, field = e.field, reason = e.message, "request refused");
        self.error(e.public())
    }

    fn not_found(&self) -> Response<Body> {
        self.error(PublicError::new(ErrorCode::NotFound, "no such job").with_field("id"))
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

/// A job as the API shows it, with what its kind says of its params. The links are added for a
/// succeeded job by [`Api::view`].
fn summary(kinds: &Registry, job: &JobRecord, now: i64) -> JobView {
    let details: BTreeMap<String, Value> = kinds
        .get(&job.kind)
        .map(|kind| kind.describe(&job.params).into_iter().map(|(k, d)| (k.to_owned(), d)).collect())
        .unwrap_or_default();
    JobView::summary(job, now, details)
}

impl Api {
    fn summary(&self, job: &JobRecord, now: i64) -> JobView {
        summary(&self.env.kinds, job, now)
    }

    /// The summary, with download links once it succeeded (or failed keeping output): `download`
    /// for the main result and `files.{name}` for each other output (a batch's failed items).
    async fn view(&self, job: &JobRecord, now: i64) -> Result<JobView, ApiError> {
        let mut v = self.summary(job, now);
        // A failed job may have kept output too (a batch that failed early: its results and failed items).
        if let (Status::Succeeded | Status::Failed, Some(result)) = (job.status_at(now), &job.result) {
            let kind = self.env.kinds.get(&job.kind);
            let name = |file: Option<&str>| match &kind {
                Some(k) => k.download_name(job, file),
                None => format!("{}.out", job.id),
            };
            let store = self.env.store.in_bucket(result.bucket.clone());
            let lifetime = self.env.settings.link_lifetime.min(ferry_aws::exports::MAX_LINK_LIFETIME);
            let url = ferry_aws::exports::presign_get(&store, &result.key, &name(None), lifetime).await?;
            v.download = Some(Download {
                url,
                expires_at: rfc3339(now + ms(lifetime)),
                size: result.size,
                rows: result.rows,
                sheets: result.sheets,
                truncated_cells: result.truncated_cells,
            });
            v.counts = result.counts.clone();
            for (file, out) in &result.files {
                let url = ferry_aws::exports::presign_get(&store, &out.key, &name(Some(file)), lifetime).await?;
                let link = FileLink { url, expires_at: rfc3339(now + ms(lifetime)), size: out.size, rows: out.rows };
                v.files.insert(file.clone(), link);
            }
        }
        Ok(v)
    }

    /// The owner's job, or `None` (404) when it does not exist, is another owner's, or is expired.
    async fn owned(&self, id: &str, owner: &str, now: i64) -> Result<Option<JobRecord>, ApiError> {
        if !jobs::is_job_id(id) {
            return Ok(None);
        }
        let job = self.env.table.get(id, now).await?.filter(|j| j.owner == owner);
        if let Some(j) = &job {
            self.announce_if_lost(j, now).await;
        }
        Ok(job)
    }

    /// `lost` is derived, never written, so no worker announces it: the first read that sees a job
    /// lost does, once (a conditional mark on the job). Best effort: a failure is only logged.
    async fn announce_if_lost(&self, job: &JobRecord, now: i64) {
        if job.status_at(now) != Status::Lost || self.env.events.is_none() {
            return;
        }
        match self.env.table.claim_lost_announcement(&job.id, now).await {
            Ok(true) => lifecycle::announce(&self.env, Lifecycle::Lost, job).await,
            Ok(false) => {}
            Err(e) => tracing::warn!(job_id = job.id, error = %e, "could not record the lost announcement"),
        }
    }
}

/// Handles one request. Never fails: a failure of a dependency is logged with its cause and
/// answered `unavailable` with the request id, so that API Gateway's bare 500 is never the answer.
pub async fn handle(api: &Api, req: Request) -> Result<Response<Body>, ApiError> {
    let caller = Caller { owner: http::claim(&req, "sub").map(str::to_owned), request_id: http::request_id(&req) };
    match route(api, &req, &caller).await {
        Ok(resp) => Ok(resp),
        Err(e) => {
            tracing::error!(owner = caller.owner, request_id = caller.request_id, kind = e.kind(), error = %e, "request failed");
            Ok(caller.error(PublicError::code(ErrorCode::Unavailable)))
        }
    }
}

async fn route(api: &Api, req: &Request, caller: &Caller) -> Result<Response<Body>, ApiError> {
    let Some(owner) = caller.owner.as_deref() else {
        let e = PublicError::new(ErrorCode::Unauthorized, "no verified identity (JWT sub) on the request").with_field("authorization");
        return Ok(caller.error(e));
    };
    let path = req.raw_http_path().trim_end_matches('/').to_owned();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let method = req.method().clone();
    match (segments.as_slice(), method) {
        (["jobs"], Method::POST) => submit(api, req, caller, owner).await,
        (["jobs"], Method::GET) => list(api, req, caller, owner).await,
        (["jobs", id], Method::GET) => {
            let now = now_ms();
            match api.owned(id, owner, now).await? {
                Some(job) => Ok(json(StatusCode::OK, &api.view(&job, now).await?)),
                None => Ok(caller.not_found()),
            }
        }
        (["jobs", id], Method::DELETE) => cancel(api, caller, id, owner).await,
        (["jobs"] | ["jobs", _], _) => {
            let e = PublicError::new(ErrorCode::BadRequest, "not allowed on this path").with_field("method");
            Ok(caller.error_with(StatusCode::METHOD_NOT_ALLOWED, e, None))
        }
        _ => Ok(caller.error(PublicError::new(ErrorCode::NotFound, "no such resource").with_field("path"))),
    }
}

/// What a refused submit over the per-owner limit is told to wait: about one short export.
const RETRY_AFTER_SECS: &str = "30";

async fn duplicate(api: &Api, req: &Request, job: &JobRecord, now: i64) -> Result<Response<Body>, ApiError> {
    let body = ferry_api::jobs::Submitted { job: api.view(job, now).await?, status_url: status_url(req, &job.id), duplicate: true };
    Ok(json(StatusCode::OK, &body))
}

async fn submit(api: &Api, req: &Request, caller: &Caller, owner: &str) -> Result<Response<Body>, ApiError> {
    let body: &[u8] = match req.body() {
        Body::Empty => b"",
        Body::Text(t) => t.as_bytes(),
        Body::Binary(b) => b,
        _ => b"",
    };
    let envelope = match ferry_api::jobs::parse_envelope(body) {
        Ok(r) => r,
        Err(e) => return Ok(caller.bad_request(&e)),
    };
    let at = Admission { env: &api.env, owner, request_id: caller.request_id.as_deref() };
    // Checked before anything is written: a refused request never becomes a job.
    let admitted = match &envelope.retry_of {
        Some(original) => {
            let Some(first) = api.owned(original, owner, now_ms()).await? else {
                return Ok(caller.bad_request(&SubmitError::new("retry_of", "no such job")));
            };
            match api.env.kinds.require(&first.kind) {
                Ok(kind) if envelope.kind.as_deref().is_none_or(|k| k == first.kind) => {
                    kind.retry(at, &first).await.map(|params| (kind, params))
                }
                Ok(_) => Err(AdmitError::Bad(SubmitError::new("kind", format!("the job to retry is of kind {:?}", first.kind)))),
                Err(e) => Err(e.into()),
            }
        }
        None => {
            let name = envelope.kind.as_deref().unwrap_or_default();
            match api.env.kinds.require(name) {
                Ok(kind) => kind.admit(at, envelope.params.unwrap_or_default()).await.map(|params| (kind, params)),
                Err(e) => Err(e.into()),
            }
        }
    };
    let (kind, params): (Arc<dyn Kind>, Value) = match admitted {
        Ok(a) => a,
        Err(AdmitError::Bad(e)) => return Ok(caller.bad_request(&e)),
        Err(AdmitError::Unavailable(cause)) => return Err(ApiError::Admit(cause)),
    };
    let settings = &api.env.settings;
    let now = now_ms();
    let id = uuid::Uuid::new_v4().to_string();
    let new = NewJob {
        id: &id,
        owner,
        kind: kind.name(),
        params: &params,
        now,
        start_lease_ms: ms(settings.start_lease),
        retention_ms: ms(settings.retention),
        max_running: settings.max_running_per_owner,
    };
    let job = match api.env.table.submit(new).await? {
        Submitted::Existing(job) => return duplicate(api, req, &job, now).await,
        Submitted::Full => {
            let limit = settings.max_running_per_owner;
            tracing::info!(owner, request_id = caller.request_id, limit, "per-owner job limit reached");
            let message = format!("you have {limit} jobs queued or running; retry when one has finished");
            let mut res = caller.error(PublicError::new(ErrorCode::TooManyRequests, message));
            res.headers_mut().insert("retry-after", lambda_http::http::HeaderValue::from_static(RETRY_AFTER_SECS));
            return Ok(res);
        }
        Submitted::Busy { holder } => {
            let message = format!("an identical job ({holder}) is being created; retry shortly");
            return Ok(caller.error(PublicError::new(ErrorCode::Conflict, message).with_field("params")));
        }
        Submitted::Created(job) => job,
    };
    tracing::info!(job_id = job.id, owner, request_id = caller.request_id, kind = %job.kind, "job created");
    let payload = WorkerPayload { job_id: job.id.clone(), attempt: 0 };
    let unstarted = || caller.stamp(PublicError::code(ErrorCode::WorkerUnavailable));
    match settings.invoke_mode {
        InvokeMode::Await => {
            if let Err(e) = start_worker(api, &payload).await {
                let failed = fail_unstarted(api, &job, &e, &unstarted()).await?;
                let status = StatusCode::SERVICE_UNAVAILABLE;
                return Ok(caller.error_with(status, unstarted(), Some(api.summary(&failed, now_ms()))));
            }
        }
        InvokeMode::Detached => {
            let (api, job, error) = (api.clone(), job.clone(), unstarted());
            tokio::spawn(async move {
                if let Err(e) = start_worker(&api, &payload).await {
                    let _ = fail_unstarted(&api, &job, &e, &error).await;
                }
            });
        }
    }
    let body = ferry_api::jobs::Submitted { job: api.summary(&job, now), status_url: status_url(req, &job.id), duplicate: false };
    let mut resp = json(StatusCode::ACCEPTED, &body);
    if let Ok(v) = lambda_http::http::HeaderValue::from_str(&format!("/jobs/{}", job.id)) {
        resp.headers_mut().insert("location", v);
    }
    Ok(resp)
}

async fn start_worker(api: &Api, payload: &WorkerPayload) -> Result<(), InvokeError> {
    api.lambda.invoke_event(&api.env.settings.worker_function, payload).await
}

/// The worker could not be started: fail the job and free its lock, so nothing is left orphaned.
/// The job records `error`; the cause goes to the log.
async fn fail_unstarted(api: &Api, job: &JobRecord, e: &InvokeError, error: &PublicError) -> Result<JobRecord, ApiError> {
    tracing::error!(job_id = job.id, request_id = error.request_id, error = %e, "starting the worker failed; failing the job");
    Ok(match api.env.table.fail(&job.id, None, error, now_ms()).await? {
        Ok(j) => {
            lifecycle::announce_by(&api.env, Function::JobApi, Lifecycle::Failed, &j).await;
            j
        }
        Err(Refused::NotOurs(j)) => *j,
        Err(_) => job.clone(),
    })
}

async fn list(api: &Api, req: &Request, caller: &Caller, owner: &str) -> Result<Response<Body>, ApiError> {
    let query = req.query_string_parameters();
    let limit = match jobs::parse_page_size(query.first("limit")) {
        Ok(l) => l,
        Err(e) => return Ok(caller.bad_request(&e)),
    };
    let cursor = match query.first("cursor").map(ListCursor::decode).transpose() {
        Ok(c) => c,
        Err(e) => return Ok(caller.bad_request(&e)),
    };
    let now = now_ms();
    let (found, next) = api.env.table.list(owner, limit, cursor.as_ref(), now).await?;
    for job in &found {
        api.announce_if_lost(job, now).await;
    }
    let jobs = found.iter().map(|j| api.summary(j, now)).collect();
    Ok(json(StatusCode::OK, &JobList { jobs, next_cursor: next.map(|c| c.encode()) }))
}

async fn cancel(api: &Api, caller: &Caller, id: &str, owner: &str) -> Result<Response<Body>, ApiError> {
    let now = now_ms();
    let Some(job) = api.owned(id, owner, now).await? else { return Ok(caller.not_found()) };
    match api.env.table.cancel(&job.id, owner, now).await? {
        Ok(cancelled) => {
            tracing::info!(job_id = cancelled.id, "job cancelled");
            lifecycle::announce(&api.env, Lifecycle::Cancelled, &cancelled).await;
            Ok(json(StatusCode::OK, &Cancelled { job: api.summary(&cancelled, now) }))
        }
        // Already ended (or cancelled): say how.
        Err(Refused::NotOurs(_) | Refused::Cancelled) => match api.owned(id, owner, now).await? {
            Some(current) => {
                let message = format!("the job is already {}", current.status_at(now));
                let e = PublicError::new(ErrorCode::Conflict, message).with_field("status");
                Ok(caller.error_with(StatusCode::CONFLICT, e, Some(api.summary(&current, now))))
            }
            None => Ok(caller.not_found()),
        },
        Err(Refused::Missing) => Ok(caller.not_found()),
    }
}
