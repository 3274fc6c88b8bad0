use ferry_aws::notify::DeliveryTable;
use lambda_runtime::{Error, run, service_fn};
use notify::{Consumer, ConsumerSettings, Provider, ProviderSettings};

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::tracing::init_default_subscriber();
    let settings = ConsumerSettings::from_env()?;
    let provider = Provider::new(&ProviderSettings::from_env()?)?;
    let table = std::env::var("FERRY_NOTIFY_TABLE").ok().filter(|t| !t.is_empty()).unwrap_or_else(|| "notifications".to_owned());
    let conf = ferry_aws::load_config().await;
    let consumer = Consumer {
        sqs: ferry_aws::clients::sqs(&conf),
        table: DeliveryTable::new(ferry_aws::clients::dynamodb(&conf), table),
        provider,
        settings,
    };
    run(service_fn(|event| notify::consumer::handle(&consumer, event))).await
}
