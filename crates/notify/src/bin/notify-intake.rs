use ferry_lambda::settings::Vars;
use lambda_http::{Error, run, service_fn};
use notify::{Intake, IntakeSettings};

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::tracing::init_default_subscriber();
    let settings = IntakeSettings::from_vars(&Vars::env())?;
    let conf = ferry_aws::load_config().await;
    let intake = Intake::new(ferry_aws::clients::sqs(&conf), ferry_aws::clients::dynamodb(&conf), settings);
    run(service_fn(|req| notify::intake::handle(&intake, req))).await
}
