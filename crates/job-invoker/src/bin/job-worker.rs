use std::sync::Arc;

use job_invoker::export::ExportEnv;
use job_invoker::{JobSettings, Worker, worker};
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
    let s3 = ferry_aws::clients::s3(&conf);
    let dynamo = ferry_aws::clients::dynamodb(&conf);
    let state = Worker {
        env: ExportEnv {
            table: ferry_aws::jobs::JobTable::new(dynamo.clone(), settings.table.clone()),
            store: ferry_aws::Store::new(s3.clone(), settings.bucket.clone()),
            s3,
            dynamo,
            settings,
        },
        lambda: ferry_aws::clients::lambda(&conf),
    };
    run(service_fn(|event| worker::handle_any(&state, event))).await
}
