//! Pure domain logic of ferry.
//!
//! This crate knows nothing about AWS, Lambda or JSON event shapes. It owns:
//! - [`key`]: the S3 key grammar of uploads and results ([`UploadKey`], [`ResultKey`], [`GlobalKey`]);
//! - [`csv`]: the CSV contract of uploads, locale results and the global result, read and written;
//! - [`tally`]: [`Tally`], the keys and numbers every step of the vote pipeline holds;
//! - [`normalize`]: the per-locale normalisation methods ([`Method`]);
//! - [`merge`]: the weighted global merge ([`merge::merge`]);
//! - [`config`]: per-event settings ([`EventConfig`]);
//! - [`pipeline`]: the vote pipeline's decisions: what the normalizer and the merger write, or why not;
//! - [`jobs`]: async jobs: the status state machine, submit validation, canonical params;
//! - [`ranking`]: Redis sorted sets as tallies, the global result as a ranking, top changes;
//! - [`public`]: what a caller sees of a failure ([`public::ErrorCode`], [`public::PublicError`]);
//! - [`sources`]: which export sources may be read ([`sources::SourcePolicy`], prefix normalisation).

pub mod batch;
pub mod budget;
pub mod cells;
pub mod config;
pub mod csv;
pub mod events;
pub mod jobs;
pub mod key;
pub mod merge;
pub mod normalize;
pub mod notify;
pub mod pipeline;
pub mod public;
pub mod ranking;
pub mod sources;
pub mod tally;

pub use config::{ConfigError, EventConfig};
pub use csv::TallyError;
pub use key::{GlobalKey, KeyError, ResultKey, UploadKey};
pub use normalize::Method;
pub use tally::Tally;
