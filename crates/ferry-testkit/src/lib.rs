//! What ferry's tests, benchmarks and demo share: local stand-ins for AWS and the services around
//! it, and the events Lambda sends, so the real handlers and SDK calls run on loopback.
//!
//! This crate stands in for AWS, so it names the AWS SDK crates (to provision moto, seed it, read
//! behind the code under test and inject the faults moto cannot produce); no production crate
//! depends on it (`scripts/check-boundaries.sh`).
//!
//! - [`moto`], [`sdk_config`], [`unique`], [`binary`]: moto in server mode started once per process,
//!   an SDK configuration for it, collision-free names, the workspace's binaries. [`redis`]: a real
//!   redis-server, started the same way. [`mocked_client!`]: an SDK client answered by mock rules.
//! - [`provision`]: buckets, the jobs and deliveries tables, a queue and its DLQ, as the template
//!   creates them; [`provision::lock_holder`] reads a job lock behind the job table's back.
//! - [`seed`]: a DynamoDB table filled in bulk ([`seed::seed_orders`]); [`workbook`]: an xlsx read back.
//! - [`events`]: Lambda events and API Gateway requests built from the fixtures in `events/`.
//! - [`lambda::LocalLambda`]: Lambda's `Invoke` API on loopback, running a handler in-process.
//! - [`sqs`]: what Lambda's SQS event source mapping does ([`sqs::pump_with`]), and queue reads.
//! - [`provider::LocalProvider`]: the notification provider; [`target::LocalTarget`]: the outside API
//!   a batch job calls ([`target::outside_api`]).
//! - With feature `jobs`, [`jobs`]: the job worker behind a [`lambda::LocalLambda`] and the job API
//!   called as API Gateway calls it. With feature `notify`, [`sqs::pump`]: the notification
//!   consumer behind the pump. They are features because they need the function crates.

pub mod events;
#[cfg(feature = "jobs")]
pub mod jobs;
pub mod lambda;
pub mod provider;
pub mod provision;
pub mod redis;
pub mod seed;
mod services;
pub mod sqs;
pub mod target;
pub mod workbook;

pub use events::event_fixture;
pub use provision::{bucket, list_keys, put_object};
pub use services::{Service, binary, free_port, moto, moto_endpoint, sdk_config, start_service, unique, wait_for_port, workspace};

// For `mocked_client!`, so its callers need not name the mocks crate themselves.
#[doc(hidden)]
pub use aws_smithy_mocks;

/// A client of the SDK crate `$sdk` that never reaches the network: every call is answered by the
/// `aws_smithy_mocks` rules of `$interceptor` (a `MockResponseInterceptor`). For errors moto cannot
/// produce, such as an access denial.
#[macro_export]
macro_rules! mocked_client {
    ($sdk:ident, $interceptor:expr) => {
        $sdk::Client::from_conf(
            $sdk::Config::builder()
                .behavior_version($sdk::config::BehaviorVersion::latest())
                .region($sdk::config::Region::new("us-east-1"))
                .credentials_provider($sdk::config::Credentials::new("testing", "testing", None, None, "mock"))
                .http_client($crate::aws_smithy_mocks::create_mock_http_client())
                .interceptor($interceptor)
                .build(),
        )
    };
}

/// An SDK error as one line: the service's code and message, or else the whole error chain.
pub(crate) fn sdk_message<E, R>(e: &aws_sdk_dynamodb::error::SdkError<E, R>) -> String
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match e.as_service_error() {
        Some(s) => format!("{}: {}", s.code().unwrap_or("error"), s.message().unwrap_or("no message")),
        None => aws_smithy_types::error::display::DisplayErrorContext(e).to_string(),
    }
}

/// A failed call while setting up or reading local AWS resources. Names the resource and the operation.
#[derive(Debug, thiserror::Error)]
#[error("{resource}: {op} failed: {message}")]
pub struct SetupError {
    pub resource: String,
    pub op: &'static str,
    pub message: String,
}

impl SetupError {
    pub(crate) fn new(resource: &str, op: &'static str, message: impl Into<String>) -> SetupError {
        SetupError { resource: resource.to_owned(), op, message: message.into() }
    }
}
