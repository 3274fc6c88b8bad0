//! SDK clients, built once per process from the default credential chain and region.

use aws_config::{BehaviorVersion, SdkConfig};

/// Loads the shared SDK configuration. `AWS_ENDPOINT_URL` (and the per-service variants) are
/// honoured by `aws-config` itself.
pub async fn load() -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest()).load().await
}

/// An S3 client. With a custom endpoint (a local S3 such as moto), addressing is path-style,
/// since such endpoints do not resolve `bucket.host` names.
pub fn s3(conf: &SdkConfig) -> aws_sdk_s3::Client {
    let mut builder = aws_sdk_s3::config::Builder::from(conf);
    if conf.endpoint_url().is_some() {
        builder = builder.force_path_style(true);
    }
    aws_sdk_s3::Client::from_conf(builder.build())
}

pub fn sqs(conf: &SdkConfig) -> aws_sdk_sqs::Client {
    aws_sdk_sqs::Client::new(conf)
}

pub fn dynamodb(conf: &SdkConfig) -> aws_sdk_dynamodb::Client {
    aws_sdk_dynamodb::Client::new(conf)
}

pub fn lambda(conf: &SdkConfig) -> aws_sdk_lambda::Client {
    aws_sdk_lambda::Client::new(conf)
}

pub fn eventbridge(conf: &SdkConfig) -> aws_sdk_eventbridge::Client {
    aws_sdk_eventbridge::Client::new(conf)
}
