use std::sync::Arc;

use ferry_aws::lambda::Invoker;
use job_invoker::batch::BatchEnv;
use job_invoker::{JobEnv, JobSettings, Worker, worker};
use lambda_runtime::{Error, run, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::tracing::init_default_subscriber();
    let settings = Arc::new(JobSettings::from_env()?);
    // Objects read ahead that the memory cannot hold at once would end in an out-of-memory kill on
    // the first large dataset.
    if let Err(e) = settings.check_worker_memory() {
        tracing::error!(error = %e, "refusing to start");
        return Err(e.into());
    }
    let conf = ferry_aws::load_config().await;
    let mut env = JobEnv::new(&conf, settings);
    // Secret headers of the batch targets, read once: a missing one refuses to start.
    match BatchEnv::load(&conf, &env.settings).await {
        Ok(batch) => env.batch = Arc::new(batch),
        Err(e) => {
            tracing::error!(error = %e, "refusing to start");
            return Err(e.into());
        }
    }
    let state = Worker { env, lambda: Invoker::new(&conf) };
    run(service_fn(|event| worker::handle_any(&state, event))).await
}
