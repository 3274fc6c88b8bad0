//! The only crate of ferry that talks to AWS.
//!
//! - [`clients`]: SDK clients built once from `aws-config` ([`clients::load`], [`clients::s3`]).
//! - [`s3`]: [`s3::Store`], a bucket with the handful of operations ferry needs (conditional puts,
//!   size-capped gets, paginated listings), and [`s3::S3Error`].
//! - [`votes`]: the vote pipeline's steps over a store: [`votes::normalize_upload`] and
//!   [`votes::merge_stage`].
//! - [`jobs`]: async job status records and locks in DynamoDB ([`jobs::JobTable`]), the worker invoke.
//! - [`exports`]: export plumbing: DynamoDB pages as rows, multipart uploads across runs, download links.
//! - [`notify`]: notification delivery records (DynamoDB, conditional claims) and the dead-letter
//!   queue (SQS): dead-lettering with reasons, native and selective redrive.
//! - [`secrets`]: secrets read once at start-up from SSM Parameter Store.

pub mod clients;
pub mod exports;
pub mod jobs;
pub mod notify;
pub mod s3;
pub mod secrets;
pub mod votes;

pub use clients::load as load_config;
pub use s3::{S3Error, Store};
