//! The local demo and the event builders it shares with the tests.
//!
//! - [`events`]: Lambda events shaped exactly as AWS sends them, built from the fixtures in `events/`.
//! - [`votes`]: the cross-region vote scenario, end to end against a local S3.
//! - [`edge`]: regional Redis sorted sets pushed to S3 and the global ranking pulled back.
//! - [`jobs`]: async jobs: an xlsx export of 100,000 orders through the job API and a background
//!   worker, and the local Lambda `Invoke` endpoint the tests use too.

pub mod edge;
pub mod events;
pub mod jobs;
pub mod votes;
