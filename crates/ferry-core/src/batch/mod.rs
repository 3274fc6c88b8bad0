//! The rules of the `batch` job kind: many items sent to an outside HTTP API configured by name
//! (a [`Target`]), with bounded concurrency, a rate limit, retries and a failure tolerance.
//!
//! - [`BatchParams`]: the `params` of a batch submit, validated ([`BatchParams::parse`]).
//! - [`Items`], [`ItemReader`], [`ReadCursor`]: where the items are, and how an item file (JSON lines
//!   or CSV) is read in chunks and resumed from a checkpoint.
//! - [`parse_targets`], [`render_body`], [`idempotency_key`]: what each call sends, and where.
//! - [`classify`], [`retry_delay`], [`parse_retry_after`], [`Tolerance`]: which outcomes are
//!   retried, how long to wait, and when the whole batch gives up.
//! - [`ItemResult`], [`write_result`], [`write_failed`], [`Reorder`]: the results file, the file of
//!   failed items (itself an item file), and results released in input order.
//!
//! Nothing here does I/O or reads a clock or a random source: callers pass `now` and jitter in.
//!
//! One file per part, each public name re-exported here (`ferry_core::batch::X` is the path to use):
//! `params`, `items` (an item, and one record of an item file), `reader` (the chunked, resumable
//! reader), `targets`, `calls` (outcomes, backoff, tolerance) and `results`.

mod calls;
mod items;
mod params;
mod reader;
mod results;
mod targets;

pub use calls::{CallOutcome, Tolerance, Verdict, classify, parse_retry_after, retry_delay};
pub use items::{Item, ItemError, inline_items, inline_items_from, item_id};
pub use params::{BatchParams, ItemFormat, Items, OutputFormat};
pub use reader::{ItemReader, ReadCursor};
pub use results::{Counts, ItemResult, ItemStatus, Reorder, bounded_response, results_csv_header, write_failed, write_result};
pub use targets::{Target, idempotency_key, parse_targets, render_body};

/// The job kind these rules are for.
pub const KIND: &str = "batch";
/// Most calls one job may have in flight.
pub const MAX_CONCURRENCY: u32 = 100;
/// Most items one call may carry.
pub const MAX_ITEMS_PER_REQUEST: u32 = 100;
/// Most items a submit may carry inline (more go in an item file).
pub const MAX_INLINE_ITEMS: usize = 5_000;
/// Longest timeout of one call.
pub const MAX_TIMEOUT_MS: u64 = 120_000;
/// Timeout of one call when the submit names none.
pub const DEFAULT_TIMEOUT_MS: u64 = 10_000;
/// Most tries per item, the first included.
pub const MAX_ATTEMPTS: u32 = 10;
/// Tries per item when the submit names none.
pub const DEFAULT_ATTEMPTS: u32 = 3;
/// Characters of a response body kept per item in the results.
pub const MAX_RESPONSE_CHARS: usize = 1_000;
/// The backoff ceiling of the first retry.
pub const BACKOFF_BASE_MS: u64 = 200;
/// The largest backoff ceiling.
pub const BACKOFF_CAP_MS: u64 = 20_000;
/// A Retry-After longer than this is capped to it.
pub const MAX_RETRY_AFTER_MS: u64 = 60_000;
/// Longest line (or CSV record) of an item file, in bytes: bounds the reader's memory.
pub const MAX_LINE_BYTES: u64 = 1_048_576;
