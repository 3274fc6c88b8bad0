use ferry_aws::notify::DeliveryTable;
use ferry_lambda::settings::Vars;
use lambda_runtime::{Error, run, service_fn};
use notify::{Consumer, ConsumerSettings, Provider, ProviderAuth, ProviderSettings};

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::tracing::init_default_subscriber();
    // Settings are checked before anything else, so a bad one (a plain-http provider) stops the
    // function at start with a message naming it.
    let vars = Vars::env();
    let settings = ConsumerSettings::from_vars(&vars)?;
    let provider_settings = ProviderSettings::from_vars(&vars)?;
    let auth_source = ProviderSettings::auth_from_vars(&vars)?;
    // The deliveries table holds the claims: without it nothing can be sent exactly once.
    let table = vars.required("FERRY_NOTIFY_TABLE")?;
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
