use std::sync::Arc;

use ferry_aws::lambda::Invoker;
use job_invoker::{Api, JobEnv, JobSettings, Registry, api};
use lambda_http::{Error, run, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::tracing::init_default_subscriber();
    let settings = Arc::new(JobSettings::from_env()?);
    let conf = ferry_aws::load_config().await;
    // The kinds without their work: the API admits and describes jobs, the worker runs them.
    let state = Api { env: JobEnv::with_kinds(&conf, settings, Registry::admitting()), lambda: Invoker::new(&conf) };
    run(service_fn(|req| api::handle(&state, req))).await
}
