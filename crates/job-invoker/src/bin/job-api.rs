use std::sync::Arc;

use job_invoker::{Api, JobSettings, api};
use lambda_http::{Error, run, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::tracing::init_default_subscriber();
    let settings = Arc::new(JobSettings::from_env()?);
    let conf = ferry_aws::load_config().await;
    let state = Api {
        table: ferry_aws::jobs::JobTable::new(ferry_aws::clients::dynamodb(&conf), settings.table.clone()),
        store: ferry_aws::Store::new(ferry_aws::clients::s3(&conf), settings.bucket.clone()),
        lambda: ferry_aws::clients::lambda(&conf),
        settings,
    };
    run(service_fn(|req| api::handle(&state, req))).await
}
