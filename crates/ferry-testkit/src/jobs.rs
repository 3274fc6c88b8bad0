//! The job functions run in-process (feature `jobs`): the worker handler behind a
//! [`LocalLambda`], and the API handler called as API Gateway calls it. Behind a feature because it
//! needs `job-invoker` (and with it polars); the rest of the kit builds without it.

use std::sync::Arc;
use std::time::Duration;

use aws_config::SdkConfig;
use ferry_aws::lambda::Invoker;
use job_invoker::worker::{self, WorkerReport};
use job_invoker::{Api, JobEnv, JobSettings, Registry, Worker};

use crate::events::api_request;
use crate::lambda::LocalLambda;
use crate::provision;

/// The local Lambda endpoint running the job worker.
pub type WorkerLambda = LocalLambda<WorkerReport>;

/// Starts a local Lambda endpoint running the worker `make_worker` builds (it receives an invoker
/// of this endpoint: the worker invokes itself to continue), with a deadline `run_for` after each start.
pub async fn start_worker(
    conf: &SdkConfig,
    run_for: Duration,
    make_worker: impl FnOnce(Invoker) -> Worker,
) -> std::io::Result<WorkerLambda> {
    LocalLambda::start(conf, run_for, |invoker| {
        let worker = make_worker(invoker);
        move |event| {
            let worker = worker.clone();
            async move { worker::handle(&worker, event).await.map_err(|e| e.to_string()) }
        }
    })
    .await
}

/// Calls the API handler like API Gateway does, and returns the status and JSON body.
pub async fn call(
    api: &Api,
    method: &str,
    path: &str,
    body: Option<&str>,
    owner: Option<&str>,
) -> anyhow::Result<(u16, serde_json::Value)> {
    let resp = job_invoker::api::handle(api, api_request(method, path, body, owner)).await.map_err(|e| anyhow::anyhow!("job-api: {e}"))?;
    let status = resp.status().as_u16();
    let body = match resp.body() {
        lambda_http::Body::Text(t) => serde_json::from_str(t)?,
        lambda_http::Body::Binary(b) => serde_json::from_slice(b)?,
        _ => serde_json::Value::Null,
    };
    Ok((status, body))
}

/// The API and worker state for one jobs table and export bucket, with the worker behind `lambda`
/// (an [`Invoker`], or a Lambda client from `ferry_aws::clients::lambda`).
pub fn api_and_worker(conf: &SdkConfig, settings: Arc<JobSettings>, lambda: impl Into<Invoker>) -> (Api, impl FnOnce(Invoker) -> Worker) {
    api_and_worker_with(conf, settings, lambda, Arc::new(Registry::standard()))
}

/// [`api_and_worker`] running the kinds of `kinds` (a registry with a kind of your own).
pub fn api_and_worker_with(
    conf: &SdkConfig,
    settings: Arc<JobSettings>,
    lambda: impl Into<Invoker>,
    kinds: Arc<Registry>,
) -> (Api, impl FnOnce(Invoker) -> Worker) {
    let env = JobEnv { kinds, ..JobEnv::new(conf, settings) };
    let api = Api { env: env.clone(), lambda: lambda.into() };
    let make = move |lambda| Worker { env, lambda };
    (api, make)
}

/// A fresh jobs table and bucket (created here), the API, and a local Lambda endpoint running the
/// worker over `kinds` with a deadline `run_for` after each start: what the tests and the demo run.
pub async fn start_local(
    conf: &SdkConfig,
    settings: Arc<JobSettings>,
    run_for: Duration,
    kinds: Arc<Registry>,
) -> anyhow::Result<(Api, WorkerLambda)> {
    provision::jobs_table(&ferry_aws::clients::dynamodb(conf), &settings.table).await?;
    provision::create_bucket(&ferry_aws::clients::s3(conf), &settings.bucket).await?;
    let (_, make) = api_and_worker_with(conf, settings.clone(), Invoker::new(conf), kinds.clone());
    let lambda = start_worker(conf, run_for, make).await?;
    let (api, _) = api_and_worker_with(conf, settings, lambda.client(conf), kinds);
    Ok((api, lambda))
}
