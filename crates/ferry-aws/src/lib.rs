//! The only crate of ferry that talks to AWS.
//!
//! - [`Error`]: the one error of an AWS call (service, operation, resource, the service's code and
//!   message, the SDK error as its source); each adapter's error holds it.
//! - [`dynamo`]: what the DynamoDB adapters share: conditional writes with a typed outcome
//!   ([`dynamo::Written`]) and the item codec.
//! - [`clients`]: SDK clients built once from `aws-config` ([`clients::load`], [`clients::s3`]).
//! - [`s3`]: [`s3::Store`], a bucket with the handful of operations ferry needs (conditional puts,
//!   size-capped gets, paginated listings), and [`s3::S3Error`].
//! - [`votes`]: the vote pipeline's steps over a store: [`votes::normalize_upload`] and
//!   [`votes::merge_stage`].
//! - [`jobs`]: async job status records, locks and slots in DynamoDB ([`jobs::JobTable`]; `table`,
//!   `attempt`, `finish`, `lock`, `codec`).
//! - [`lambda`]: the worker's asynchronous invoke ([`lambda::Invoker`], [`lambda::WorkerPayload`]).
//! - [`exports`]: export plumbing: DynamoDB pages as rows, multipart uploads across runs, download links.
//! - [`sqs`]: the generic SQS operations (send, send a batch, receive, delete, release, queue
//!   attributes) the notification queues are built on.
//! - [`notify`]: notification delivery records (DynamoDB, conditional claims; `deliveries`,
//!   `dead_letters`) and the dead-letter queue (SQS; `queues`): dead-lettering with reasons, native
//!   and selective redrive (`redrive`).
//! - [`secrets`]: secrets read once at start-up from SSM Parameter Store.
//! - [`events`]: [`events::EventBus`], EventBridge `PutEvents`.

pub mod clients;
pub mod dynamo;
mod error;
pub mod events;
pub mod exports;
pub mod jobs;
pub mod lambda;
pub mod notify;
pub mod s3;
pub mod secrets;
pub mod sqs;
pub mod votes;

pub use aws_config::SdkConfig;
pub use clients::load as load_config;
pub use error::Error;
pub use s3::{S3Error, Store};
