use global_merger::{Merger, handle};
use lambda_runtime::{Error, run, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::tracing::init_default_subscriber();
    let settings = ferry_aws::votes::VoteSettings::from_env()?;
    let conf = ferry_aws::load_config().await;
    let state = Merger { s3: ferry_aws::clients::s3(&conf), settings };
    run(service_fn(|event| handle(&state, event))).await
}
