use lambda_runtime::{Error, run, service_fn};
use regional_normalizer::{Normalizer, handle};

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::tracing::init_default_subscriber();
    let settings = ferry_aws::votes::VoteSettings::from_env()?;
    let conf = ferry_aws::load_config().await;
    let state = Normalizer { s3: ferry_aws::clients::s3(&conf), settings };
    run(service_fn(|event| handle(&state, event))).await
}
