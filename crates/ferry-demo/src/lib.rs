//! The local demo and the event builders it shares with the tests.
//!
//! - [`events`]: Lambda events shaped exactly as AWS sends them, built from the fixtures in `events/`.
//! - [`votes`]: the cross-region vote scenario, end to end against a local S3.
//! - [`jobs`]: async jobs: an xlsx export of 100,000 orders through the job API and a background
//!   worker, and the local Lambda `Invoke` endpoint the tests use too.
//! - [`batch`]: a batch job: 3,000 orders pushed to a slow, throttling partner API through the job
//!   API and a background worker, its failed items retried once the partner is healthy.
//! - [`notify`]: notifications through SQS with a failing provider, a DLQ and a redrive; the local
//!   provider and the SQS event-source loop the tests use too.
//! - [`edge`]: regional Redis sorted sets pushed to S3 and the global ranking pulled back.

pub mod batch;
pub mod edge;
pub mod events;
pub mod jobs;
pub mod notify;
pub mod target;
pub mod votes;
