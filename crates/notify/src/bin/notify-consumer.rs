use ferry_aws::notify::DeliveryTable;
use lambda_runtime::{Error, run, service_fn};
use notify::{Consumer, ConsumerSettings, Provider, ProviderAuth, ProviderSettings};

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::tracing::init_default_subscriber();
    // Settings are checked before anything else, so a bad one (a plain-http provider) stops the
    // function at start with a message naming it.
    let settings = ConsumerSettings::from_env()?;
    let provider_settings = ProviderSettings::from_env()?;
    let auth_source = ProviderSettings::auth_from_env()?;
    let table = std::env::var("FERRY_NOTIFY_TABLE").ok().filter(|t| !t.is_empty()).unwrap_or_else(|| "notifications".to_owned());
    let conf = ferry_aws::load_config().await;
    // The provider's credential is read once per execution environment.
    let auth = match auth_source {
        Some(source) => {
            let secret = ferry_aws::secrets::read_parameter(&ferry_aws::secrets::ssm(&conf), &source.parameter).await?;
            Some(ProviderAuth::new(&source.header, secret.expose())?)
        }
        None => None,
    };
    let consumer = Consumer {
        sqs: ferry_aws::clients::sqs(&conf),
        table: DeliveryTable::new(ferry_aws::clients::dynamodb(&conf), table),
        provider: Provider::with_auth(&provider_settings, auth)?,
        settings,
    };
    run(service_fn(|event| notify::consumer::handle(&consumer, event))).await
}
