//! Async jobs: what a job is, which state changes are allowed, and what a submit request may ask for.
//!
//! - [`Status`] and [`Transition`]: the state machine `queued -> running -> succeeded | failed | cancelled`.
//!   [`Status::Lost`] is never stored: [`JobRecord::status_at`] derives it from a lease that expired
//!   without a heartbeat.
//! - [`JobRecord`]: the status record as the API and the worker see it.
//! - What a `POST /jobs` body may ask for ([`check_kind_name`], [`check_retry_of`],
//!   [`check_envelope`], [`check_body_size`]; the body's JSON is read by `ferry_api::jobs`), with
//!   [`ExportParams`] and their canonical form ([`ExportParams::canonical`], [`ExportParams::hash`])
//!   that makes equal requests take the same lock.
//! - [`ListCursor`]: the opaque cursor of `GET /jobs`.
//! - [`export_key`] and [`staging_key`]: where an export and the worker's temporary objects lie.
//! - [`DatasetObject`] and [`place_snapshot`]: the object list an S3-dataset export reads, and whether its
//!   checkpoint holds it inline or in a staging object.
//!
//! Every time is milliseconds since the Unix epoch and is passed in: nothing here reads a clock.
//!
//! One file per part, each public name re-exported here (`ferry_core::jobs::X` is the path to use):
//! `status` (the state machine and the record), `submit` (the submit decisions, export params,
//! canonical JSON and its hash) and `keys` (object keys, the dataset snapshot, the list cursor).

mod keys;
mod phase;
mod status;
mod submit;

pub use keys::{
    DatasetObject, ListCursor, SNAPSHOT_INLINE_MAX_BYTES, STAGING_PREFIX, Snapshot, export_key, is_job_id, output_key, parse_page_size,
    parse_snapshot, place_snapshot, snapshot_bytes, staging_key, staging_object,
};
pub use phase::Phase;
pub use status::{JobRecord, JobResult, OutputFile, Progress, Status, Transition, TransitionError, rfc3339, slot_is_free};
pub use submit::{
    DatasetFormat, ExportParams, Filter, FilterOp, Format, Source, SubmitError, canonical_json, check_body_size, check_envelope,
    check_kind_name, check_retry_of, is_kind_name, params_hash,
};

/// The largest `POST /jobs` body accepted: room for a batch's inline items, and well under the
/// 400 KB a DynamoDB item holds, since the params are stored with the job.
pub const MAX_SUBMIT_BYTES: usize = 256 * 1024;
/// Page size of `GET /jobs` when the caller names none, and the largest it may name.
pub const DEFAULT_PAGE_SIZE: u32 = 20;
pub const MAX_PAGE_SIZE: u32 = 100;
/// Rows of one xlsx worksheet, the header row included (Excel's limit).
pub const XLSX_MAX_ROWS: u32 = 1_048_576;
/// Most partitions (DynamoDB scan segments) one export may be split into.
pub const MAX_SEGMENTS: u32 = 64;
