//! The local demo and the event builders it shares with the tests.
//!
//! - [`events`]: Lambda events shaped exactly as AWS sends them, built from the fixtures in `events/`.
//! - [`votes`]: the cross-region vote scenario, end to end against a local S3.

pub mod events;
pub mod votes;
