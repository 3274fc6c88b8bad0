//! The regional edge of the vote pipeline: where a region's Redis meets the bucket.
//!
//! - [`push`]: reads a region's sorted set page by page (`ZSCAN`) and uploads it as a regional CSV,
//!   `data/{evno}/{locale}-{stage}-{yyyyMMddHHmm}.csv` ([`PushConfig`], [`PushOutcome`]).
//! - [`pull`]: reads `global/{evno}/{stage}/result-global.csv`, validates it whole, loads it into a
//!   temporary key and swaps it over the live key in one atomic step ([`PullConfig`], [`PullOutcome`]);
//!   [`pull_and_notify`] adds the chat notice.
//! - [`chat`]: a Slack-compatible incoming webhook ([`Webhook`]).
//! - [`EdgeError`]: why a push or pull failed, naming the sorted set, object or member at fault.
//!
//! The rules (what a member may be, what a valid global result is, what changed in the top) live in
//! `ferry_core::ranking`; this crate only moves bytes between Redis, S3 and the chat.

pub mod chat;
mod error;
pub mod pull;
pub mod push;

pub use chat::{ChatError, Webhook};
pub use error::{EdgeError, connect};
pub use pull::{ChatStatus, PullConfig, PullOutcome, PullReport, pull, pull_and_notify};
pub use push::{PushConfig, PushOutcome, push};
