//! Async jobs: an API that hands long work to a background worker Lambda.
//!
//! - [`api`]: the `job-api` Lambda (API Gateway HTTP API): submit, status, list, cancel.
//! - [`worker`]: the `job-worker` Lambda, invoked asynchronously with a job id: claims the job, runs it,
//!   continues in a new invocation when time runs short.
//! - [`kind`]: the seam every kind of job implements ([`Kind`]), and the [`Registry`] of them.
//! - [`export`]: the export job: DynamoDB or S3-dataset rows to CSV, JSON lines or xlsx on S3.
//! - [`batch`]: the batch job: many items to an outside HTTP API, with concurrency, rate, retries.
//! - [`lifecycle`]: the `ferry.jobs` events a job publishes when it starts and ends.
//! - [`settings`]: [`JobSettings`], from the environment.
//!
//! The rules (status machine, request validation) are in `ferry_core::jobs`; every AWS call is in
//! `ferry_aws::jobs` and `ferry_aws::exports`.

pub mod api;
pub mod batch;
pub mod export;
pub mod kind;
pub mod lifecycle;
pub mod settings;
pub mod worker;

pub use api::Api;
pub use kind::{JobEnv, Kind, Registry};
pub use settings::{InvokeMode, JobSettings};
pub use worker::Worker;
