use global_merger::{Merger, handle};
use lambda_runtime::{Error, run, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::tracing::init_default_subscriber();
    let vars = ferry_lambda::settings::Vars::env();
    let settings = ferry_aws::votes::VoteSettings::from_vars(|name| vars.optional(name))?;
    // A cap the memory cannot hold would end in an out-of-memory kill on the first large input.
    if let Err(e) = settings.check_merger_memory() {
        tracing::error!(error = %e, "refusing to start");
        return Err(e.into());
    }
    let conf = ferry_aws::load_config().await;
    let state = Merger { s3: ferry_aws::clients::s3(&conf), settings };
    run(service_fn(|event| handle(&state, event))).await
}
