use ferry_lambda::settings::Vars;
use lambda_http::{Error, run, service_fn};
use notify::Redriver;

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::tracing::init_default_subscriber();
    let conf = ferry_aws::load_config().await;
    let redriver = Redriver::from_vars(ferry_aws::clients::sqs(&conf), &Vars::env())?;
    run(service_fn(|req| notify::redrive::handle(&redriver, req))).await
}
