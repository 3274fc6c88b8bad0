//! The only crate of ferry that talks to AWS.
//!
//! - [`clients`]: SDK clients built once from `aws-config` ([`clients::load`], [`clients::s3`]).
//! - [`s3`]: [`s3::Store`], a bucket with the handful of operations ferry needs (conditional puts,
//!   size-capped gets, paginated listings), and [`s3::S3Error`].
//! - [`votes`]: the vote pipeline's steps over a store: [`votes::normalize_upload`] and
//!   [`votes::merge_stage`].
//! - [`jobs`]: async job status records, locks and slots in DynamoDB ([`jobs::JobTable`]; `table`,
//!   `attempt`, `finish`, `lock`, `codec`).
//! - [`lambda`]: the worker's asynchronous invoke ([`lambda::Invoker`], [`lambda::WorkerPayload`]).
//! - [`exports`]: export plumbing: DynamoDB pages as rows, multipart uploads across runs, download links.
//! - [`seed`]: a DynamoDB table filled in bulk, for the demo and the tests.
//! - [`notify`]: notification delivery records (DynamoDB, conditional claims; `deliveries`,
//!   `dead_letters`) and the dead-letter queue (SQS; `queues`): dead-lettering with reasons, native
//!   and selective redrive (`redrive`).
//! - [`secrets`]: secrets read once at start-up from SSM Parameter Store.
//! - [`events`]: [`events::EventBus`], EventBridge `PutEvents`.

pub mod clients;
pub mod events;
pub mod exports;
pub mod jobs;
pub mod lambda;
pub mod notify;
pub mod s3;
pub mod secrets;
pub mod seed;
pub mod votes;

pub use aws_config::SdkConfig;
pub use clients::load as load_config;
pub use s3::{S3Error, Store};

use aws_sdk_sqs::error::{ProvideErrorMetadata, SdkError};

/// An SDK error as one line: the service's code and message, or else the whole error chain (a
/// timeout, a connection failure). The same for every service: their error types share these traits.
pub(crate) fn sdk_message<E, R>(e: &SdkError<E, R>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match e.as_service_error() {
        Some(s) => format!("{}: {}", s.code().unwrap_or("error"), s.message().unwrap_or("no message")),
        None => aws_smithy_types::error::display::DisplayErrorContext(e).to_string(),
    }
}
