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

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::ops::RangeInclusive;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::cells::formula_escaped;
use crate::jobs::SubmitError;
use crate::sources::is_bucket_name;

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

/// Items per call when the submit names none.
const DEFAULT_ITEMS_PER_REQUEST: u32 = 1;
/// Concurrency when the submit names none.
const DEFAULT_CONCURRENCY: u32 = 10;
/// Longest `min_interval_ms`.
const MAX_MIN_INTERVAL_MS: u64 = 60_000;
/// Highest `rate_per_second`.
const MAX_RATE_PER_SECOND: u64 = 10_000;
/// Shortest `timeout_ms`: below it almost every call would time out.
const MIN_TIMEOUT_MS: u64 = 100;
/// S3's longest key.
const MAX_KEY_BYTES: usize = 1024;
/// Longest message of an [`ItemError`]: a parser's message must not carry a whole line along.
const MAX_ERROR_CHARS: usize = 200;
/// The fields of a batch submit's `params`.
const PARAMS_FIELDS: [&str; 11] = [
    "target",
    "items",
    "items_per_request",
    "max_concurrency",
    "min_interval_ms",
    "rate_per_second",
    "timeout_ms",
    "max_attempts",
    "tolerated_failure_count",
    "tolerated_failure_percent",
    "output",
];
/// Headers the runner sets itself: a target may not override them.
const RESERVED_HEADERS: [&str; 4] = ["idempotency-key", "host", "content-length", "content-type"];
const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// How an item file is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ItemFormat {
    Jsonl,
    Csv,
}

/// How the results file is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputFormat {
    #[default]
    Jsonl,
    Csv,
}

/// Where the items are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Items {
    /// `"items": [ ...json values... ]`
    Inline(Vec<Value>),
    /// `"items": {"bucket": "...", "key": "...", "format": "jsonl"|"csv"}`, plus `etag`, `size` and
    /// `count`, which the server fills in at submit (never taken from the caller).
    Object {
        bucket: String,
        key: String,
        format: ItemFormat,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        etag: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        size: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        count: Option<u64>,
    },
}

/// The validated `params` of a batch job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchParams {
    /// The name of a configured [`Target`].
    pub target: String,
    pub items: Items,
    /// Items per call, 1 to [`MAX_ITEMS_PER_REQUEST`].
    #[serde(default = "default_items_per_request")]
    pub items_per_request: u32,
    /// Calls in flight at most, 1 to [`MAX_CONCURRENCY`].
    #[serde(default = "default_concurrency")]
    pub max_concurrency: u32,
    /// Least time between the starts of two calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_interval_ms: Option<u64>,
    /// Most calls started per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_per_second: Option<u32>,
    /// Timeout of one call.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Tries per item, the first included.
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    /// Failed items tolerated before the batch fails early.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerated_failure_count: Option<u64>,
    /// Percentage of failed items tolerated before the batch fails early.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerated_failure_percent: Option<f64>,
    /// How the results file is written.
    #[serde(default)]
    pub output: OutputFormat,
    /// The job whose failed items these are, for a retry (`{"retry_of": id}`): set by the server,
    /// never taken from a submit's params.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_of: Option<String>,
}

fn default_items_per_request() -> u32 {
    DEFAULT_ITEMS_PER_REQUEST
}

fn default_concurrency() -> u32 {
    DEFAULT_CONCURRENCY
}

fn default_timeout_ms() -> u64 {
    DEFAULT_TIMEOUT_MS
}

fn default_attempts() -> u32 {
    DEFAULT_ATTEMPTS
}

impl BatchParams {
    /// Parses and validates the `params` of a batch submit; every error names its field
    /// (`params.max_concurrency`, `params.items.key`, ...).
    pub fn parse(value: Value) -> Result<BatchParams, SubmitError> {
        let Value::Object(map) = value else {
            return Err(SubmitError::new("params", "must be a JSON object"));
        };
        if map.contains_key("retry_of") {
            return Err(SubmitError::new("params.retry_of", "is set by the server; ask for a retry with `retry_of` beside `kind`"));
        }
        if let Some(unknown) = map.keys().find(|k| !PARAMS_FIELDS.contains(&k.as_str())) {
            return Err(SubmitError::new(
                format!("params.{unknown}"),
                format!("unknown field; expected one of {}", PARAMS_FIELDS.join(", ")),
            ));
        }
        // A field set to null reads as left out.
        let get = |name: &str| map.get(name).filter(|v| !v.is_null());

        let target = match get("target") {
            Some(Value::String(s)) if is_name(s) => s.clone(),
            Some(Value::String(s)) => {
                return Err(SubmitError::new("params.target", format!("must be a target name (1 to 64 of A-Z a-z 0-9 _ -), got {s:?}")));
            }
            Some(_) => return Err(SubmitError::new("params.target", "must be a string")),
            None => return Err(SubmitError::new("params.target", "is missing")),
        };
        let items = parse_items(get("items"))?;
        let items_per_request = whole("items_per_request", get("items_per_request"), 1..=u64::from(MAX_ITEMS_PER_REQUEST))?
            .map_or(Ok(DEFAULT_ITEMS_PER_REQUEST), u32::try_from);
        let max_concurrency = whole("max_concurrency", get("max_concurrency"), 1..=u64::from(MAX_CONCURRENCY))?
            .map_or(Ok(DEFAULT_CONCURRENCY), u32::try_from);
        let min_interval_ms = whole("min_interval_ms", get("min_interval_ms"), 0..=MAX_MIN_INTERVAL_MS)?;
        let rate_per_second = whole("rate_per_second", get("rate_per_second"), 1..=MAX_RATE_PER_SECOND)?.map(u32::try_from).transpose();
        if min_interval_ms.is_some() && get("rate_per_second").is_some() {
            return Err(SubmitError::new("params.rate_per_second", "give min_interval_ms or rate_per_second, not both"));
        }
        let timeout_ms = whole("timeout_ms", get("timeout_ms"), MIN_TIMEOUT_MS..=MAX_TIMEOUT_MS)?.unwrap_or(DEFAULT_TIMEOUT_MS);
        let max_attempts =
            whole("max_attempts", get("max_attempts"), 1..=u64::from(MAX_ATTEMPTS))?.map_or(Ok(DEFAULT_ATTEMPTS), u32::try_from);
        let tolerated_failure_count = whole("tolerated_failure_count", get("tolerated_failure_count"), 0..=u64::MAX)?;
        let tolerated_failure_percent = match get("tolerated_failure_percent") {
            None => None,
            Some(v) => match v.as_f64() {
                Some(p) if (0.0..=100.0).contains(&p) => Some(p),
                _ => return Err(SubmitError::new("params.tolerated_failure_percent", format!("must be a number from 0 to 100, got {v}"))),
            },
        };
        let output = match get("output") {
            None => OutputFormat::default(),
            Some(v) => match v.as_str() {
                Some("jsonl") => OutputFormat::Jsonl,
                Some("csv") => OutputFormat::Csv,
                _ => return Err(SubmitError::new("params.output", format!("must be \"jsonl\" or \"csv\", got {v}"))),
            },
        };
        // The ranges checked above fit u32, so these conversions cannot fail; still, no panics.
        let narrow = |field: &str, r: Result<u32, std::num::TryFromIntError>| {
            r.map_err(|_| SubmitError::new(format!("params.{field}"), "is out of range"))
        };
        Ok(BatchParams {
            target,
            items,
            items_per_request: narrow("items_per_request", items_per_request)?,
            max_concurrency: narrow("max_concurrency", max_concurrency)?,
            min_interval_ms,
            rate_per_second: rate_per_second.map_err(|_| SubmitError::new("params.rate_per_second", "is out of range"))?,
            timeout_ms,
            max_attempts: narrow("max_attempts", max_attempts)?,
            tolerated_failure_count,
            tolerated_failure_percent,
            output,
            retry_of: None,
        })
    }

    /// These params as the JSON value a job record stores.
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    /// The params of a stored batch job (as [`BatchParams::to_value`] wrote them).
    pub fn deserialize_stored(v: &Value) -> Result<BatchParams, SubmitError> {
        BatchParams::deserialize(v).map_err(|e| SubmitError::new("params", e.to_string()))
    }

    /// The least time between the starts of two calls: the larger of `min_interval_ms` and
    /// `1/rate_per_second` (rounded up to the µs, so the rate is never exceeded); zero when neither.
    pub fn interval(&self) -> Duration {
        let by_interval = Duration::from_millis(self.min_interval_ms.unwrap_or(0));
        let by_rate = match self.rate_per_second {
            Some(r) if r > 0 => Duration::from_micros(1_000_000u64.div_ceil(u64::from(r))),
            _ => Duration::ZERO,
        };
        by_interval.max(by_rate)
    }

    /// When this batch fails early.
    pub fn tolerance(&self) -> Tolerance {
        Tolerance { count: self.tolerated_failure_count, percent: self.tolerated_failure_percent }
    }
}

/// Whether `s` is a target name: 1 to 64 ASCII letters, digits, `_` or `-`.
fn is_name(s: &str) -> bool {
    (1..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// An optional whole number of `params.{field}` within `range`.
fn whole(field: &str, value: Option<&Value>, range: RangeInclusive<u64>) -> Result<Option<u64>, SubmitError> {
    let Some(v) = value else { return Ok(None) };
    match v.as_u64() {
        Some(n) if range.contains(&n) => Ok(Some(n)),
        _ => {
            let wanted = if *range.end() == u64::MAX {
                format!("a whole number of {} or more", range.start())
            } else {
                format!("a whole number from {} to {}", range.start(), range.end())
            };
            Err(SubmitError::new(format!("params.{field}"), format!("must be {wanted}, got {v}")))
        }
    }
}

fn parse_items(value: Option<&Value>) -> Result<Items, SubmitError> {
    match value {
        None => Err(SubmitError::new("params.items", "is missing")),
        Some(Value::Array(values)) if values.is_empty() => Err(SubmitError::new("params.items", "must hold at least one item")),
        Some(Value::Array(values)) if values.len() > MAX_INLINE_ITEMS => Err(SubmitError::new(
            "params.items",
            format!("holds {} items, more than {MAX_INLINE_ITEMS} inline; put them in an item file", values.len()),
        )),
        Some(Value::Array(values)) => Ok(Items::Inline(values.clone())),
        Some(Value::Object(map)) => parse_item_object(map),
        Some(_) => Err(SubmitError::new("params.items", "must be an array of items or an item file {\"bucket\", \"key\", \"format\"}")),
    }
}

fn parse_item_object(map: &Map<String, Value>) -> Result<Items, SubmitError> {
    for name in map.keys() {
        match name.as_str() {
            "bucket" | "key" | "format" => {}
            // The server fills these in from the object it finds; a caller's word is not taken.
            "etag" | "size" | "count" => {
                return Err(SubmitError::new(format!("params.items.{name}"), "is set by the server; leave it out"));
            }
            _ => return Err(SubmitError::new(format!("params.items.{name}"), "unknown field; expected bucket, key, format")),
        }
    }
    let text = |name: &str| match map.get(name) {
        Some(Value::String(s)) => Ok(s.as_str()),
        Some(_) => Err(SubmitError::new(format!("params.items.{name}"), "must be a string")),
        None => Err(SubmitError::new(format!("params.items.{name}"), "is missing")),
    };
    let bucket = text("bucket")?;
    if !is_bucket_name(bucket) {
        return Err(SubmitError::new("params.items.bucket", format!("{bucket:?} is not a valid bucket name")));
    }
    let key = text("key")?;
    if key.is_empty() || key.ends_with('/') {
        return Err(SubmitError::new("params.items.key", "must name an object (not empty, not ending in '/')"));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(SubmitError::new("params.items.key", format!("is {} bytes, more than {MAX_KEY_BYTES}", key.len())));
    }
    let format = match text("format")? {
        "jsonl" => ItemFormat::Jsonl,
        "csv" => ItemFormat::Csv,
        other => return Err(SubmitError::new("params.items.format", format!("must be \"jsonl\" or \"csv\", got {other:?}"))),
    };
    Ok(Items::Object { bucket: bucket.to_owned(), key: key.to_owned(), format, etag: None, size: None, count: None })
}

/// One item: its position in the input (0-based `seq`), its `id` when it has one, and its value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Item {
    pub seq: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub value: Value,
}

impl Item {
    /// The item at `seq` holding `value`, its id taken from the value.
    pub fn new(seq: u64, value: Value) -> Item {
        Item { seq, id: item_id(&value), value }
    }
}

/// An item's id: the `id` member of an object value when it is a string or an integer (integers as
/// their decimal text); else None.
pub fn item_id(value: &Value) -> Option<String> {
    match value.get("id")? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) if n.is_i64() || n.is_u64() => Some(n.to_string()),
        _ => None,
    }
}

/// Inline items as [`Item`]s, seq from 0.
pub fn inline_items(values: &[Value]) -> Vec<Item> {
    inline_items_from(values, 0)
}

/// The inline items from position `first_seq` on (those before it skipped, as after a resume), each
/// with its position as seq.
pub fn inline_items_from(values: &[Value], first_seq: u64) -> Vec<Item> {
    let skip = usize::try_from(first_seq).unwrap_or(usize::MAX);
    values.iter().zip(0u64..).skip(skip).map(|(v, seq)| Item::new(seq, v.clone())).collect()
}

/// Where reading an item file stands: serializable, kept in a job checkpoint.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ReadCursor {
    /// Bytes of the object consumed: the next read starts here.
    pub offset: u64,
    /// Seq of the next item.
    pub seq: u64,
    /// 1-based line where the next record starts (0, as in `Default`, reads as 1).
    pub line: u64,
    /// The CSV header once read (empty when the header was invalid).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<Vec<String>>,
}

/// A malformed item: the 1-based line and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct ItemError {
    pub line: u64,
    pub message: String,
}

/// Streams items out of an item file fed in byte chunks (the object is read by ranges; memory is
/// bounded by the chunk and [`MAX_LINE_BYTES`], not the file).
///
/// A malformed record yields an [`ItemError`], takes no seq, and is passed over: reading goes on
/// with the next record. A record over [`MAX_LINE_BYTES`] is reported as soon as the bytes pushed
/// pass the limit, then its rest is dropped as it arrives; until its end is seen, [`ItemReader::cursor`]
/// stays at its start (a resume from there reports it again).
#[derive(Debug)]
pub struct ItemReader {
    format: ItemFormat,
    /// Bytes pushed and not yet consumed (from `head`) or dropped.
    buf: Vec<u8>,
    /// Absolute offset in the object of `buf[0]`.
    base: u64,
    /// Index in `buf` where the current record starts (meaningless while `skipping`).
    head: usize,
    /// Index in `buf` up to which the current record was searched for its end.
    scan: usize,
    /// Absolute offset where the current record starts.
    start: u64,
    seq: u64,
    line: u64,
    header: Option<Vec<String>>,
    /// CSV: whether the record scanned so far holds an odd number of quotes (so a newline is data).
    quoted: bool,
    /// CSV: newlines inside quotes in the record scanned so far.
    newlines: u64,
    /// Dropping the rest of an over-long record that was already reported.
    skipping: bool,
    /// Whether a BOM at offset 0 was looked for.
    bom_done: bool,
    /// `finish` has taken the last record.
    ended: bool,
}

/// What one complete record is.
enum Record {
    Blank,
    Header,
    Value(Value),
    Invalid(String),
}

impl ItemReader {
    /// A reader starting at `from` (`ReadCursor::default()` for the start of the object).
    pub fn new(format: ItemFormat, from: ReadCursor) -> ItemReader {
        ItemReader {
            format,
            buf: Vec::new(),
            base: from.offset,
            head: 0,
            scan: 0,
            start: from.offset,
            seq: from.seq,
            line: from.line.max(1),
            header: from.header,
            quoted: false,
            newlines: 0,
            skipping: false,
            bom_done: from.offset != 0,
            ended: false,
        }
    }

    /// Appends the next bytes of the object (those right after what was pushed before).
    pub fn push(&mut self, chunk: &[u8]) {
        // Drop what is consumed first, so the buffer holds only the record being read.
        let keep = if self.skipping { self.scan } else { self.head };
        if keep > 0 {
            self.buf.drain(..keep);
            self.base += keep as u64;
            self.head -= keep.min(self.head);
            self.scan -= keep;
        }
        self.buf.extend_from_slice(chunk);
    }

    /// The next complete item, if the bytes pushed so far hold one. None: push more (or call `finish`).
    pub fn next_item(&mut self) -> Option<Result<Item, ItemError>> {
        loop {
            if self.ended || !self.skip_bom(false) {
                return None;
            }
            let Some(newline) = self.scan_end() else {
                if self.skipping {
                    // Already reported: drop it as it comes.
                    self.buf.drain(..self.scan);
                    self.base += self.scan as u64;
                    self.scan = 0;
                    self.head = 0;
                } else if self.base + self.scan as u64 - self.start > MAX_LINE_BYTES {
                    self.skipping = true;
                    return Some(Err(self.error(too_long())));
                }
                return None;
            };
            let len = self.base + newline as u64 - self.start;
            let record = if self.skipping {
                Record::Blank
            } else if len > MAX_LINE_BYTES {
                Record::Invalid(too_long())
            } else {
                parse_record(self.format, &self.buf[self.head..newline], &mut self.header)
            };
            let line = self.line;
            self.consume(newline + 1);
            if let Some(r) = self.produce(record, line) {
                return Some(r);
            }
        }
    }

    /// At the end of the object: the last record when it had no trailing newline, then None.
    /// (Records still complete in the buffer come first, so looping on `finish` alone reads them all.)
    pub fn finish(&mut self) -> Option<Result<Item, ItemError>> {
        if let Some(r) = self.next_item() {
            return Some(r);
        }
        if self.ended {
            return None;
        }
        self.skip_bom(true);
        self.ended = true;
        let end = self.buf.len();
        if self.skipping {
            self.consume(end);
            return None;
        }
        if self.head == end {
            return None;
        }
        let record = if self.format == ItemFormat::Csv && self.quoted {
            Record::Invalid("a quoted field is not closed at the end of the file".into())
        } else {
            parse_record(self.format, &self.buf[self.head..end], &mut self.header)
        };
        let line = self.line;
        self.consume(end);
        self.produce(record, line)
    }

    /// The position after the last item returned (what a checkpoint stores to resume exactly there).
    pub fn cursor(&self) -> ReadCursor {
        ReadCursor { offset: self.start, seq: self.seq, line: self.line, header: self.header.clone() }
    }

    /// Passes a UTF-8 BOM at offset 0. False while the bytes pushed may still be the start of one.
    fn skip_bom(&mut self, at_end: bool) -> bool {
        if self.bom_done {
            return true;
        }
        let rest = &self.buf[self.head..];
        if rest.starts_with(UTF8_BOM) {
            self.head += UTF8_BOM.len();
            self.scan = self.head;
            self.start += UTF8_BOM.len() as u64;
        } else if UTF8_BOM.starts_with(rest) && !at_end {
            return false;
        }
        self.bom_done = true;
        true
    }

    /// The index of the newline that ends the current record, if pushed yet.
    fn scan_end(&mut self) -> Option<usize> {
        let from = self.scan;
        match self.format {
            ItemFormat::Jsonl => {
                let found = self.buf[from..].iter().position(|&b| b == b'\n').map(|i| from + i);
                self.scan = found.unwrap_or(self.buf.len());
                found
            }
            ItemFormat::Csv => {
                for (i, &b) in self.buf.iter().enumerate().skip(from) {
                    match b {
                        b'"' => self.quoted = !self.quoted,
                        b'\n' if self.quoted => self.newlines += 1,
                        b'\n' => {
                            self.scan = i;
                            return Some(i);
                        }
                        _ => {}
                    }
                }
                self.scan = self.buf.len();
                None
            }
        }
    }

    /// Marks `buf[..end]` consumed: the next record starts after it.
    fn consume(&mut self, end: usize) {
        self.head = end;
        self.scan = end;
        self.start = self.base + end as u64;
        self.line += 1 + self.newlines;
        self.newlines = 0;
        self.quoted = false;
        self.skipping = false;
    }

    /// What the caller gets for a record that started at `line`.
    fn produce(&mut self, record: Record, line: u64) -> Option<Result<Item, ItemError>> {
        match record {
            Record::Blank | Record::Header => None,
            Record::Invalid(message) => Some(Err(ItemError { line, message })),
            Record::Value(value) => {
                let item = Item::new(self.seq, value);
                self.seq += 1;
                Some(Ok(item))
            }
        }
    }

    fn error(&self, message: String) -> ItemError {
        ItemError { line: self.line, message }
    }
}

fn too_long() -> String {
    format!("line longer than {MAX_LINE_BYTES} bytes")
}

/// `message` cut to [`MAX_ERROR_CHARS`] characters.
fn capped(message: String) -> String {
    match message.char_indices().nth(MAX_ERROR_CHARS) {
        Some((i, _)) => format!("{}...", &message[..i]),
        None => message,
    }
}

/// One complete record (without its newline) of an item file.
fn parse_record(format: ItemFormat, bytes: &[u8], header: &mut Option<Vec<String>>) -> Record {
    let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Record::Blank;
    }
    match format {
        ItemFormat::Jsonl => match serde_json::from_slice::<Value>(bytes) {
            Ok(v) => Record::Value(v),
            Err(e) => {
                // serde_json says "at line 1 column N" of this one line: keep only the column.
                let text = e.to_string();
                let what = text.rsplit_once(" at line ").map_or(text.as_str(), |(what, _)| what);
                Record::Invalid(capped(format!("not valid JSON: {what} at column {}", e.column())))
            }
        },
        ItemFormat::Csv => parse_csv_record(bytes, header),
    }
}

fn parse_csv_record(bytes: &[u8], header: &mut Option<Vec<String>>) -> Record {
    let mut reader = csv::ReaderBuilder::new().has_headers(false).flexible(true).from_reader(bytes);
    let mut records = reader.records();
    let fields: Vec<String> = match records.next() {
        None => return Record::Blank,
        Some(Err(e)) => return Record::Invalid(capped(format!("not valid CSV: {e}"))),
        Some(Ok(r)) => r.iter().map(str::to_owned).collect(),
    };
    if records.next().is_some() {
        // The csv crate ends a record at a bare CR too; the file's records end at newlines only.
        return Record::Invalid("a carriage return outside quotes splits the record".into());
    }
    match header {
        None => match check_header(&fields) {
            Ok(()) => {
                *header = Some(fields);
                Record::Header
            }
            Err(message) => {
                // Empty marks "invalid header" in the cursor, so a resume does not take a row for one.
                *header = Some(Vec::new());
                Record::Invalid(capped(message))
            }
        },
        Some(columns) if columns.is_empty() => Record::Invalid("no item can be read: the header record is not valid".into()),
        Some(columns) if columns.len() != fields.len() => {
            Record::Invalid(format!("has {} fields, the header has {}", fields.len(), columns.len()))
        }
        Some(columns) => Record::Value(Value::Object(columns.iter().cloned().zip(fields.into_iter().map(Value::String)).collect())),
    }
}

fn check_header(columns: &[String]) -> Result<(), String> {
    if let Some(i) = columns.iter().position(String::is_empty) {
        return Err(format!("header: column {} has no name", i + 1));
    }
    let mut seen = std::collections::BTreeSet::new();
    match columns.iter().find(|c| !seen.insert(c.as_str())) {
        Some(dup) => Err(format!("header: names column {dup:?} twice")),
        None => Ok(()),
    }
}

/// An outside HTTP API batch items are sent to, configured per deployment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// Where calls go: https:// (plain http only to a loopback host).
    pub url: String,
    /// POST, PUT or PATCH.
    #[serde(default = "default_method")]
    pub method: String,
    /// Headers sent with every call.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// header name -> SSM parameter name holding its value (read once at start; never logged)
    #[serde(default)]
    pub secret_headers: BTreeMap<String, String>,
    /// JSON body template; None: the item value itself (items_per_request 1) or the array of values.
    #[serde(default)]
    pub body: Option<Value>,
    /// most concurrency a job may ask of this target (default MAX_CONCURRENCY)
    #[serde(default)]
    pub max_concurrency: Option<u32>,
}

fn default_method() -> String {
    "POST".to_owned()
}

/// Parses the configured targets, `{"name": Target, ...}`; errors name the target and field
/// (`targets.crm.url: ...`).
pub fn parse_targets(json: &str) -> Result<BTreeMap<String, Target>, String> {
    let raw: BTreeMap<String, Value> = serde_json::from_str(json).map_err(|e| format!("targets: not a JSON object of targets: {e}"))?;
    let mut targets = BTreeMap::new();
    for (name, value) in raw {
        if !is_name(&name) {
            return Err(format!("targets.{name:?}: not a target name (1 to 64 of A-Z a-z 0-9 _ -)"));
        }
        let target: Target = serde_json::from_value(value).map_err(|e| format!("targets.{name}: {e}"))?;
        check_target(&target).map_err(|(field, message)| format!("targets.{name}.{field}: {message}"))?;
        targets.insert(name, target);
    }
    Ok(targets)
}

/// The field at fault and why.
fn check_target(t: &Target) -> Result<(), (String, String)> {
    check_url(&t.url).map_err(|m| ("url".to_owned(), m))?;
    if !matches!(t.method.as_str(), "POST" | "PUT" | "PATCH") {
        return Err(("method".into(), format!("must be POST, PUT or PATCH, got {:?}", t.method)));
    }
    let mut seen = std::collections::BTreeSet::new();
    for (group, map) in [("headers", &t.headers), ("secret_headers", &t.secret_headers)] {
        for (name, value) in map {
            let field = format!("{group}.{name}");
            let lower = name.to_ascii_lowercase();
            if name.is_empty() || !name.bytes().all(is_tchar) {
                return Err((field, "is not a valid HTTP header name".into()));
            }
            if RESERVED_HEADERS.contains(&lower.as_str()) {
                return Err((field, "is set by the runner; a target may not set it".into()));
            }
            if !seen.insert(lower) {
                return Err((field, "is set twice (header names ignore case)".into()));
            }
            if group == "headers" && value.bytes().any(|b| matches!(b, b'\r' | b'\n' | 0)) {
                return Err((field, "value holds a CR, LF or NUL".into()));
            }
            if group == "secret_headers" && !is_ssm_name(value) {
                return Err((field, "is not an SSM parameter name".into()));
            }
        }
    }
    if let Some(c) = t.max_concurrency
        && !(1..=MAX_CONCURRENCY).contains(&c)
    {
        return Err(("max_concurrency".into(), format!("must be 1 to {MAX_CONCURRENCY}, got {c}")));
    }
    Ok(())
}

/// A `tchar` of RFC 9110: what an HTTP header name is made of.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_ssm_name(s: &str) -> bool {
    (1..=2048).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-/".contains(&b))
}

/// Why `url` may not be a target's url. Strict on purpose: what passes here reads the same in any
/// URL parser (no user info, backslash, whitespace or fragment to disagree about).
fn check_url(url: &str) -> Result<(), String> {
    const HTTPS: &str = "must be https://host[:port][/path] (plain http only to localhost, 127.0.0.0/8 or [::1])";
    if url.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control() || b == b'\\') {
        return Err("must not hold whitespace, control characters or '\\'".into());
    }
    if url.contains('#') {
        return Err("must not have a fragment ('#')".into());
    }
    let lower = url.to_ascii_lowercase();
    let (secure, rest) = if lower.starts_with("https://") {
        (true, &url["https://".len()..])
    } else if lower.starts_with("http://") {
        (false, &url["http://".len()..])
    } else {
        return Err(HTTPS.into());
    };
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    if authority.contains('@') {
        return Err("must not have user info ('user@')".into());
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        match v6.split_once(']') {
            Some((h, p)) => (h, p),
            None => return Err("has an unclosed '[' in its host".into()),
        }
    } else {
        authority.split_at(authority.find(':').unwrap_or(authority.len()))
    };
    if host.is_empty() {
        return Err("has no host".into());
    }
    if !port.is_empty() {
        let valid = port.strip_prefix(':').and_then(|p| p.parse::<u16>().ok()).is_some_and(|p| p > 0);
        if !valid {
            return Err("has an invalid port".into());
        }
    }
    let loopback = if authority.starts_with('[') {
        host.parse::<Ipv6Addr>().is_ok_and(|ip| ip.is_loopback())
    } else {
        host.eq_ignore_ascii_case("localhost") || host.parse::<Ipv4Addr>().is_ok_and(|ip| ip.is_loopback())
    };
    if !secure && !loopback {
        return Err(HTTPS.into());
    }
    Ok(())
}

/// The body of one call: `template` with every JSON string exactly equal to a placeholder replaced
/// (`{{item}}`, `{{items}}`, `{{seq}}`, `{{id}}`, `{{job_id}}`), recursively; no template: the item
/// value when the group has one item, else the array of values.
pub fn render_body(template: Option<&Value>, group: &[Item], job_id: &str) -> Value {
    let values = || Value::Array(group.iter().map(|i| i.value.clone()).collect());
    match template {
        None => match group {
            [one] => one.value.clone(),
            _ => values(),
        },
        Some(t) => fill(t, group, job_id, &values),
    }
}

/// Only whole-string placeholders are replaced, and only in the template: an item's text is never
/// interpolated into a string, nor searched for placeholders itself.
fn fill(t: &Value, group: &[Item], job_id: &str, values: &dyn Fn() -> Value) -> Value {
    let first = group.first();
    match t {
        Value::String(s) => match s.as_str() {
            "{{item}}" => first.map_or(Value::Null, |i| i.value.clone()),
            "{{items}}" => values(),
            "{{seq}}" => first.map_or(Value::Null, |i| Value::from(i.seq)),
            "{{id}}" => first.and_then(|i| i.id.clone()).map_or(Value::Null, Value::String),
            "{{job_id}}" => Value::String(job_id.to_owned()),
            _ => t.clone(),
        },
        Value::Array(a) => Value::Array(a.iter().map(|v| fill(v, group, job_id, values)).collect()),
        Value::Object(m) => Value::Object(m.iter().map(|(k, v)| (k.clone(), fill(v, group, job_id, values))).collect()),
        _ => t.clone(),
    }
}

/// `Idempotency-Key` of the call carrying a group: `{job_id}:{seq}` of its first item (a group is
/// always the same items for the same first seq, so a retry carries the same key).
pub fn idempotency_key(job_id: &str, first_seq: u64) -> String {
    format!("{job_id}:{first_seq}")
}

/// How one call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallOutcome {
    /// A response with this status.
    Status(u16),
    /// No response within the timeout.
    Timeout,
    /// No response: connection, TLS or protocol failure.
    Transport,
}

/// What to do about a call's items.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Succeeded,
    Retry,
    Failed,
}

/// 2xx succeeded; 408, 425, 429, 500..=599, Timeout, Transport retry; every other status failed (permanent).
pub fn classify(o: CallOutcome) -> Verdict {
    match o {
        CallOutcome::Status(200..=299) => Verdict::Succeeded,
        CallOutcome::Status(408 | 425 | 429 | 500..=599) | CallOutcome::Timeout | CallOutcome::Transport => Verdict::Retry,
        CallOutcome::Status(_) => Verdict::Failed,
    }
}

/// How long to wait before try `tries + 1` after `tries` tries: full jitter, `jitter` in [0,1) times
/// min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2^(tries-1)), but never less than `retry_after` (capped at
/// MAX_RETRY_AFTER_MS).
pub fn retry_delay(tries: u32, retry_after: Option<Duration>, jitter: f64) -> Duration {
    // Past 2^20 the ceiling is the cap anyway; the bound keeps the shift in range.
    let doublings = tries.saturating_sub(1).min(20);
    let ceiling = BACKOFF_BASE_MS.saturating_mul(1 << doublings).min(BACKOFF_CAP_MS);
    let jitter = if jitter.is_finite() { jitter.clamp(0.0, 1.0) } else { 0.0 };
    // Truncation, not rounding: jitter below 1 must stay below the ceiling.
    let backoff = Duration::from_micros((jitter * (ceiling * 1_000) as f64) as u64);
    let floor = retry_after.unwrap_or(Duration::ZERO).min(Duration::from_millis(MAX_RETRY_AFTER_MS));
    backoff.max(floor)
}

/// A Retry-After header: delay-seconds or an HTTP-date (IMF-fixdate, e.g. "Wed, 21 Oct 2015
/// 07:28:00 GMT") relative to `now_ms`; None when unparseable; a date in the past is zero.
pub fn parse_retry_after(header: &str, now_ms: i64) -> Option<Duration> {
    let header = header.trim();
    if !header.is_empty() && header.bytes().all(|b| b.is_ascii_digit()) {
        // All digits: only overflow can fail, and a delay that long is "as long as allowed".
        return Some(Duration::from_secs(header.parse().unwrap_or(u64::MAX)));
    }
    let format = time::macros::format_description!("[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT");
    let at = time::PrimitiveDateTime::parse(header, format).ok()?.assume_utc();
    let at_ms = at.unix_timestamp_nanos() / 1_000_000;
    let wait_ms = at_ms - i128::from(now_ms);
    Some(Duration::from_millis(u64::try_from(wait_ms).unwrap_or(if wait_ms < 0 { 0 } else { u64::MAX })))
}

/// When a batch fails early (Step Functions' ToleratedFailureCount/Percentage semantics).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tolerance {
    pub count: Option<u64>,
    pub percent: Option<f64>,
}

impl Tolerance {
    /// Whether `failed` failures out of `total` items exceed what is tolerated: failed > count, or
    /// failed*100 > percent*total (either threshold suffices). Neither set: any failure exceeds.
    pub fn exceeded(&self, failed: u64, total: u64) -> bool {
        if self.count.is_none() && self.percent.is_none() {
            return failed > 0;
        }
        // A NaN percent compares false with everything: read it as 0, not as "tolerate all".
        let percent = self.percent.map(|p| if p.is_nan() { 0.0 } else { p });
        self.count.is_some_and(|c| failed > c) || percent.is_some_and(|p| failed as f64 * 100.0 > p * total as f64)
    }
}

/// What became of one item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ItemStatus {
    Succeeded,
    Failed,
    /// never sent: the job failed early
    Skipped,
}

impl ItemStatus {
    /// The name as written in results.
    pub fn as_str(self) -> &'static str {
        match self {
            ItemStatus::Succeeded => "succeeded",
            ItemStatus::Failed => "failed",
            ItemStatus::Skipped => "skipped",
        }
    }
}

/// One line of the results file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ItemResult {
    pub seq: u64,
    pub id: Option<String>,
    pub status: ItemStatus,
    /// Status of the last response, if any.
    pub http_status: Option<u16>,
    /// Tries made (0 when skipped).
    pub attempts: u32,
    /// The last response body, as [`bounded_response`] keeps it.
    pub response: Option<String>,
    /// Why it failed, when not told by a response.
    pub error: Option<String>,
}

/// A response body as kept in the results: UTF-8 (lossy), cut at MAX_RESPONSE_CHARS characters on a char boundary.
pub fn bounded_response(body: &[u8]) -> String {
    // At most 4 bytes a char: decode no more than could be kept.
    let body = &body[..body.len().min(MAX_RESPONSE_CHARS * 4)];
    let text = String::from_utf8_lossy(body);
    match text.char_indices().nth(MAX_RESPONSE_CHARS) {
        Some((i, _)) => text[..i].to_owned(),
        None => text.into_owned(),
    }
}

/// The CSV header line of the results file.
pub fn results_csv_header() -> &'static [u8] {
    b"seq,id,status,http_status,attempts,response,error\n"
}

/// Appends one result to `out` as a JSON line (always the 7 keys, nulls included) or a CSV record
/// (text cells formula-escaped; quoting by the csv crate rules).
pub fn write_result(format: OutputFormat, r: &ItemResult, out: &mut Vec<u8>) {
    let text = |s: &Option<String>| s.as_ref().map_or(Value::Null, |s| Value::String(s.clone()));
    match format {
        OutputFormat::Jsonl => {
            // Written by hand (Value's Display cannot fail) to fix the key order whatever serde_json's features.
            let http = r.http_status.map_or(Value::Null, Value::from);
            let line = format!(
                "{{\"seq\":{},\"id\":{},\"status\":\"{}\",\"http_status\":{},\"attempts\":{},\"response\":{},\"error\":{}}}\n",
                r.seq,
                text(&r.id),
                r.status.as_str(),
                http,
                r.attempts,
                text(&r.response),
                text(&r.error)
            );
            out.extend_from_slice(line.as_bytes());
        }
        OutputFormat::Csv => {
            let cell = |s: &Option<String>| s.as_deref().map(|s| formula_escaped(s).into_owned()).unwrap_or_default();
            let record = [
                r.seq.to_string(),
                cell(&r.id),
                r.status.as_str().to_owned(),
                r.http_status.map(|s| s.to_string()).unwrap_or_default(),
                r.attempts.to_string(),
                cell(&r.response),
                cell(&r.error),
            ];
            let mut writer = csv::WriterBuilder::new().has_headers(false).from_writer(Vec::new());
            // Writing to a Vec cannot fail.
            if writer.write_record(&record).is_ok()
                && let Ok(bytes) = writer.into_inner()
            {
                out.extend_from_slice(&bytes);
            }
        }
    }
}

/// Appends the item as a line of the failed file: its value as one JSON line (a CSV row as its
/// object), so the failed file is itself a JSON lines item file that can be submitted again.
pub fn write_failed(item: &Item, out: &mut Vec<u8>) {
    out.extend_from_slice(item.value.to_string().as_bytes());
    out.push(b'\n');
}

/// Items by state while a batch runs (what the job status shows).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub pending: u64,
    pub running: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub retrying: u64,
}

/// Results that complete out of order, released in input order. Bounded by what the caller lets in flight.
#[derive(Debug)]
pub struct Reorder<T> {
    next: u64,
    waiting: BTreeMap<u64, T>,
}

impl<T> Reorder<T> {
    /// Empty, releasing from `next` on.
    pub fn new(next: u64) -> Self {
        Reorder { next, waiting: BTreeMap::new() }
    }

    /// Files the result of `seq` (>= next; a seq below next or a duplicate is ignored and returns false).
    pub fn insert(&mut self, seq: u64, value: T) -> bool {
        if seq < self.next || self.waiting.contains_key(&seq) {
            return false;
        }
        self.waiting.insert(seq, value);
        true
    }

    /// The result of `next`, when it is in; advances `next`.
    pub fn pop_ready(&mut self) -> Option<T> {
        let value = self.waiting.remove(&self.next)?;
        self.next += 1;
        Some(value)
    }

    /// The seq released next.
    pub fn next(&self) -> u64 {
        self.next
    }

    /// Results filed and not yet released.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Drains every waiting result (for a checkpoint), in seq order.
    pub fn drain_waiting(&mut self) -> Vec<(u64, T)> {
        std::mem::take(&mut self.waiting).into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn params(v: Value) -> Result<BatchParams, SubmitError> {
        BatchParams::parse(v)
    }

    /// The field of the error of parsing `params` `base` with `extra` members merged in.
    fn refused(extra: Value) -> (String, String) {
        let mut base = json!({"target": "crm", "items": [{"id": 1}]});
        if let (Value::Object(b), Value::Object(e)) = (&mut base, extra) {
            b.extend(e);
        }
        let e = params(base).unwrap_err();
        (e.field, e.message)
    }

    #[test]
    fn parse_fills_defaults() {
        let p = params(json!({"target": "crm-v2_x", "items": [{"id": 1}, 2]})).unwrap();
        assert_eq!(p.target, "crm-v2_x");
        assert_eq!(p.items, Items::Inline(vec![json!({"id": 1}), json!(2)]));
        assert_eq!(p.items_per_request, 1);
        assert_eq!(p.max_concurrency, 10);
        assert_eq!(p.min_interval_ms, None);
        assert_eq!(p.rate_per_second, None);
        assert_eq!(p.timeout_ms, DEFAULT_TIMEOUT_MS);
        assert_eq!(p.max_attempts, DEFAULT_ATTEMPTS);
        assert_eq!(p.tolerated_failure_count, None);
        assert_eq!(p.tolerated_failure_percent, None);
        assert_eq!(p.output, OutputFormat::Jsonl);
        assert_eq!(p.interval(), Duration::ZERO);
        assert_eq!(p.retry_of, None);
        // What is stored reads back the same.
        let stored = p.to_value();
        assert!(stored.get("retry_of").is_none());
        assert_eq!(BatchParams::deserialize_stored(&stored).unwrap(), p);
        let mut retry = p.clone();
        retry.retry_of = Some("job-1".into());
        assert_eq!(retry.to_value()["retry_of"], "job-1");
        assert_eq!(BatchParams::deserialize_stored(&retry.to_value()).unwrap(), retry);
        assert_eq!(BatchParams::deserialize_stored(&json!({"target": "crm"})).unwrap_err().field, "params");
    }

    #[test]
    fn parse_takes_every_field() {
        let p = params(json!({
            "target": "crm",
            "items": {"bucket": "my-bucket", "key": "in/items.csv", "format": "csv"},
            "items_per_request": 100, "max_concurrency": 100, "rate_per_second": 3, "timeout_ms": 100,
            "max_attempts": 10, "tolerated_failure_count": 0, "tolerated_failure_percent": 12.5, "output": "csv",
            "min_interval_ms": null
        }))
        .unwrap();
        assert_eq!(
            p.items,
            Items::Object {
                bucket: "my-bucket".into(),
                key: "in/items.csv".into(),
                format: ItemFormat::Csv,
                etag: None,
                size: None,
                count: None
            }
        );
        assert_eq!((p.items_per_request, p.max_concurrency, p.rate_per_second, p.timeout_ms, p.max_attempts), (100, 100, Some(3), 100, 10));
        assert_eq!(p.tolerance(), Tolerance { count: Some(0), percent: Some(12.5) });
        assert_eq!(p.output, OutputFormat::Csv);
        let stored = serde_json::to_value(&p).unwrap();
        assert_eq!(stored["items"], json!({"bucket": "my-bucket", "key": "in/items.csv", "format": "csv"}));
        assert_eq!(serde_json::from_value::<BatchParams>(stored).unwrap(), p);
    }

    #[test]
    fn parse_refusals_name_their_field() {
        let check = |extra: Value, field: &str, says: &str| {
            let (f, m) = refused(extra.clone());
            assert_eq!(f, field, "{extra}: {m}");
            assert!(m.contains(says), "{extra}: {m:?} lacks {says:?}");
        };
        check(json!({"target": "a b"}), "params.target", "target name");
        check(json!({"target": "x".repeat(65)}), "params.target", "target name");
        check(json!({"target": ""}), "params.target", "target name");
        check(json!({"target": 5}), "params.target", "string");
        check(json!({"items": []}), "params.items", "at least one");
        check(json!({"items": vec![json!(1); MAX_INLINE_ITEMS + 1]}), "params.items", "5001");
        check(json!({"items": "s3://x"}), "params.items", "array");
        check(json!({"items_per_request": 0}), "params.items_per_request", "from 1 to 100, got 0");
        check(json!({"items_per_request": 101}), "params.items_per_request", "from 1 to 100, got 101");
        check(json!({"max_concurrency": 101}), "params.max_concurrency", "from 1 to 100, got 101");
        check(json!({"max_concurrency": 1.5}), "params.max_concurrency", "got 1.5");
        check(json!({"max_concurrency": "5"}), "params.max_concurrency", "got \"5\"");
        check(json!({"min_interval_ms": 60_001}), "params.min_interval_ms", "from 0 to 60000, got 60001");
        check(json!({"rate_per_second": 0}), "params.rate_per_second", "from 1 to 10000, got 0");
        check(json!({"rate_per_second": 10_001}), "params.rate_per_second", "got 10001");
        check(json!({"rate_per_second": 5, "min_interval_ms": 10}), "params.rate_per_second", "not both");
        check(json!({"timeout_ms": 99}), "params.timeout_ms", "from 100 to 120000, got 99");
        check(json!({"timeout_ms": 120_001}), "params.timeout_ms", "got 120001");
        check(json!({"max_attempts": 0}), "params.max_attempts", "from 1 to 10, got 0");
        check(json!({"max_attempts": 11}), "params.max_attempts", "got 11");
        check(json!({"tolerated_failure_count": -1}), "params.tolerated_failure_count", "0 or more, got -1");
        check(json!({"tolerated_failure_percent": 100.5}), "params.tolerated_failure_percent", "from 0 to 100, got 100.5");
        check(json!({"tolerated_failure_percent": -0.1}), "params.tolerated_failure_percent", "got -0.1");
        check(json!({"tolerated_failure_percent": "5"}), "params.tolerated_failure_percent", "got \"5\"");
        check(json!({"output": "xlsx"}), "params.output", "\"xlsx\"");
        check(json!({"colour": 1}), "params.colour", "unknown field");
        check(json!({"retry_of": "job-1"}), "params.retry_of", "set by the server");
        let file = |extra: Value| {
            let mut items = json!({"bucket": "my-bucket", "key": "a.jsonl", "format": "jsonl"});
            if let (Value::Object(b), Value::Object(e)) = (&mut items, extra) {
                b.extend(e);
            }
            json!({ "items": items })
        };
        check(file(json!({"etag": "\"abc\""})), "params.items.etag", "set by the server");
        check(file(json!({"size": 5})), "params.items.size", "set by the server");
        check(file(json!({"count": 5})), "params.items.count", "set by the server");
        check(file(json!({"prefix": "a/"})), "params.items.prefix", "unknown field");
        check(file(json!({"key": ""})), "params.items.key", "not empty");
        check(file(json!({"key": "dir/"})), "params.items.key", "ending in '/'");
        check(file(json!({"key": "k".repeat(1025)})), "params.items.key", "1025 bytes");
        check(file(json!({"bucket": "My_Bucket"})), "params.items.bucket", "not a valid bucket name");
        check(file(json!({"format": "xml"})), "params.items.format", "\"xml\"");
        check(json!({"items": {"bucket": "my-bucket", "key": "a"}}), "params.items.format", "missing");
        assert_eq!(params(json!({"items": [1]})).unwrap_err().field, "params.target");
        assert_eq!(params(json!({"target": "crm"})).unwrap_err().field, "params.items");
        assert_eq!(params(json!([1])).unwrap_err().field, "params");
    }

    #[test]
    fn interval_from_rate_and_min_interval() {
        let p = |extra: Value| {
            let mut v = json!({"target": "crm", "items": [1]});
            if let (Value::Object(b), Value::Object(e)) = (&mut v, extra) {
                b.extend(e);
            }
            params(v).unwrap()
        };
        assert_eq!(p(json!({"rate_per_second": 4})).interval(), Duration::from_millis(250));
        // Rounded up: 3 a second is never exceeded.
        assert_eq!(p(json!({"rate_per_second": 3})).interval(), Duration::from_micros(333_334));
        assert_eq!(p(json!({"rate_per_second": 10_000})).interval(), Duration::from_micros(100));
        assert_eq!(p(json!({"min_interval_ms": 1_500})).interval(), Duration::from_millis(1_500));
        assert_eq!(p(json!({"min_interval_ms": 0})).interval(), Duration::ZERO);
        // Built in code with both, the larger wins.
        let mut both = p(json!({"rate_per_second": 2}));
        both.min_interval_ms = Some(100);
        assert_eq!(both.interval(), Duration::from_millis(500));
        both.min_interval_ms = Some(900);
        assert_eq!(both.interval(), Duration::from_millis(900));
    }

    #[test]
    fn item_ids_and_inline_items() {
        assert_eq!(item_id(&json!({"id": "a-1"})), Some("a-1".into()));
        assert_eq!(item_id(&json!({"id": 42})), Some("42".into()));
        assert_eq!(item_id(&json!({"id": -7})), Some("-7".into()));
        assert_eq!(item_id(&json!({"id": 1.5})), None);
        assert_eq!(item_id(&json!({"id": null})), None);
        assert_eq!(item_id(&json!({"id": [1]})), None);
        assert_eq!(item_id(&json!({"ID": 1})), None);
        assert_eq!(item_id(&json!("id")), None);
        let values = [json!({"id": "a"}), json!(2), json!({"id": 3})];
        let items = inline_items(&values);
        assert_eq!(
            items,
            vec![
                Item { seq: 0, id: Some("a".into()), value: json!({"id": "a"}) },
                Item { seq: 1, id: None, value: json!(2) },
                Item { seq: 2, id: Some("3".into()), value: json!({"id": 3}) },
            ]
        );
        assert_eq!(inline_items_from(&values, 2), items[2..].to_vec());
        assert_eq!(inline_items_from(&values, 9), vec![]);
    }

    /// Every item (or error) of `bytes` fed in chunks of `chunk` bytes, then `finish`.
    fn read_all(format: ItemFormat, from: ReadCursor, bytes: &[u8], chunk: usize) -> Vec<Result<Item, ItemError>> {
        let mut reader = ItemReader::new(format, from);
        let mut out = Vec::new();
        for piece in bytes.chunks(chunk.max(1)) {
            reader.push(piece);
            while let Some(r) = reader.next_item() {
                out.push(r);
            }
        }
        while let Some(r) = reader.finish() {
            out.push(r);
        }
        out
    }

    fn ok_items(results: Vec<Result<Item, ItemError>>) -> Vec<Item> {
        results.into_iter().map(|r| r.unwrap()).collect()
    }

    const JSONL: &str = "{\"id\":\"a\",\"n\":1}\n\n  \n[1,2]\n\"text\"\r\n{\"id\":7}\n42";

    #[test]
    fn jsonl_byte_by_byte_is_the_same_as_whole() {
        let whole = ok_items(read_all(ItemFormat::Jsonl, ReadCursor::default(), JSONL.as_bytes(), usize::MAX));
        assert_eq!(
            whole,
            vec![
                Item { seq: 0, id: Some("a".into()), value: json!({"id": "a", "n": 1}) },
                Item { seq: 1, id: None, value: json!([1, 2]) },
                Item { seq: 2, id: None, value: json!("text") },
                Item { seq: 3, id: Some("7".into()), value: json!({"id": 7}) },
                Item { seq: 4, id: None, value: json!(42) },
            ]
        );
        for chunk in [1, 2, 3, 7] {
            assert_eq!(ok_items(read_all(ItemFormat::Jsonl, ReadCursor::default(), JSONL.as_bytes(), chunk)), whole, "chunk {chunk}");
        }
    }

    #[test]
    fn jsonl_bom_crlf_and_last_line_via_finish() {
        let bytes = b"\xEF\xBB\xBF{\"a\":1}\r\n{\"a\":2}";
        for chunk in [1, 2, 100] {
            let mut reader = ItemReader::new(ItemFormat::Jsonl, ReadCursor::default());
            let mut got = Vec::new();
            for piece in bytes.chunks(chunk) {
                reader.push(piece);
                while let Some(r) = reader.next_item() {
                    got.push(r.unwrap().value);
                }
            }
            assert_eq!(got, vec![json!({"a": 1})], "the last line waits for finish (chunk {chunk})");
            assert_eq!(reader.cursor(), ReadCursor { offset: 12, seq: 1, line: 2, header: None });
            assert_eq!(reader.finish().unwrap().unwrap(), Item { seq: 1, id: None, value: json!({"a": 2}) });
            assert_eq!(reader.finish(), None);
            assert_eq!(reader.next_item(), None);
            assert_eq!(reader.cursor().offset, bytes.len() as u64);
        }
        // A BOM anywhere but offset 0 is data, and makes bad JSON.
        let got = read_all(ItemFormat::Jsonl, ReadCursor::default(), b"1\n\xEF\xBB\xBF2\n", 1);
        assert_eq!(got[0], Ok(Item { seq: 0, id: None, value: json!(1) }));
        assert_eq!(got[1].as_ref().unwrap_err().line, 2);
        // A file that is only part of a BOM is not silently dropped.
        assert_eq!(read_all(ItemFormat::Jsonl, ReadCursor::default(), b"\xEF\xBB", 1)[0].as_ref().unwrap_err().line, 1);
        assert!(read_all(ItemFormat::Jsonl, ReadCursor::default(), b"\xEF\xBB\xBF", 1).is_empty());
        assert!(read_all(ItemFormat::Jsonl, ReadCursor::default(), b"", 1).is_empty());
    }

    #[test]
    fn malformed_json_names_its_line_and_reading_goes_on() {
        let bytes = b"{\"a\":1}\n\n{\"a\": tru\n{\"a\":3}\n";
        for chunk in [1, 64] {
            let got = read_all(ItemFormat::Jsonl, ReadCursor::default(), bytes, chunk);
            assert_eq!(got.len(), 3);
            let err = got[1].as_ref().unwrap_err();
            assert_eq!(err.line, 3);
            assert!(err.message.starts_with("not valid JSON: "), "{err}");
            assert!(err.message.contains("column"), "{err}");
            assert!(!err.message.contains("line 1"), "{err}");
            assert!(err.to_string().starts_with("line 3: "), "{err}");
            // The bad line takes no seq.
            assert_eq!(got[2], Ok(Item { seq: 1, id: None, value: json!({"a": 3}) }));
        }
        // The message never carries the line along.
        let long = format!("{{\"a\": \"{}\" oops}}\n", "x".repeat(5_000));
        let err = read_all(ItemFormat::Jsonl, ReadCursor::default(), long.as_bytes(), 4096).remove(0).unwrap_err();
        assert!(err.message.chars().count() <= MAX_ERROR_CHARS + 3, "{}", err.message.len());
        assert!(!err.message.contains("xxxxxxxxxx"));
    }

    #[test]
    fn a_line_over_a_mebibyte_is_refused_as_soon_as_it_passes_the_limit() {
        let limit = MAX_LINE_BYTES as usize;
        let mut reader = ItemReader::new(ItemFormat::Jsonl, ReadCursor::default());
        reader.push(b"1\n");
        assert_eq!(reader.next_item(), Some(Ok(Item { seq: 0, id: None, value: json!(1) })));
        reader.push(&vec![b' '; limit]);
        assert_eq!(reader.next_item(), None, "exactly the limit is still fine");
        reader.push(b"x");
        let err = reader.next_item().unwrap().unwrap_err();
        assert_eq!(err, ItemError { line: 2, message: "line longer than 1048576 bytes".into() });
        assert_eq!(reader.cursor().offset, 2, "until its end is seen, the cursor stays at its start");
        // The rest of it is dropped as it comes: memory stays bounded.
        for _ in 0..3 {
            reader.push(&vec![b'y'; 1 << 20]);
            assert_eq!(reader.next_item(), None);
            assert!(reader.buf.len() <= 1 << 20);
        }
        reader.push(b"\n2\n");
        assert_eq!(reader.next_item(), Some(Ok(Item { seq: 1, id: None, value: json!(2) })));
        assert_eq!(reader.cursor().line, 4);
        assert_eq!(reader.cursor().offset, 2 + limit as u64 + 1 + 3 * (1 << 20) + 1 + 2);
        assert_eq!(reader.finish(), None);

        // Pushed whole with its newline: the same error, and then the next line.
        let mut bytes = vec![b'z'; limit + 1];
        bytes.extend_from_slice(b"\n3");
        let got = read_all(ItemFormat::Jsonl, ReadCursor::default(), &bytes, usize::MAX);
        assert_eq!(got, vec![Err(ItemError { line: 1, message: too_long() }), Ok(Item { seq: 0, id: None, value: json!(3) })]);
        // At the end of the file without a newline: reported once.
        let got = read_all(ItemFormat::Jsonl, ReadCursor::default(), &bytes[..limit + 1], 1 << 16);
        assert_eq!(got, vec![Err(ItemError { line: 1, message: too_long() })]);
    }

    const CSV: &str = "id,name,note\r\n1,Ann,\"said \"\"hi\"\"\"\n\n2,Bob,\"two\nlines\"\n3,\"Cy, Jr\",\n";

    #[test]
    fn csv_rows_become_objects() {
        let row =
            |seq, id: &str, name: &str, note: &str| Item { seq, id: Some(id.into()), value: json!({"id": id, "name": name, "note": note}) };
        let want = vec![row(0, "1", "Ann", "said \"hi\""), row(1, "2", "Bob", "two\nlines"), row(2, "3", "Cy, Jr", "")];
        for chunk in [1, 2, 5, usize::MAX] {
            assert_eq!(ok_items(read_all(ItemFormat::Csv, ReadCursor::default(), CSV.as_bytes(), chunk)), want, "chunk {chunk}");
        }
        let mut reader = ItemReader::new(ItemFormat::Csv, ReadCursor::default());
        reader.push(CSV.as_bytes());
        let mut lines = Vec::new();
        while let Some(r) = reader.next_item() {
            r.unwrap();
            lines.push(reader.cursor().line);
        }
        // Row 2 starts on line 4 and spans two lines: row 3 starts on line 6.
        assert_eq!(lines, vec![3, 6, 7]);
        assert_eq!(reader.cursor().header, Some(vec!["id".to_owned(), "name".to_owned(), "note".to_owned()]));
        // With a BOM, no trailing newline.
        let bytes = b"\xEF\xBB\xBFa,b\n1,2";
        assert_eq!(
            ok_items(read_all(ItemFormat::Csv, ReadCursor::default(), bytes, 1)),
            vec![Item { seq: 0, id: None, value: json!({"a": "1", "b": "2"}) }]
        );
    }

    #[test]
    fn csv_errors_name_their_line() {
        let first_err =
            |text: &str| read_all(ItemFormat::Csv, ReadCursor::default(), text.as_bytes(), 1).into_iter().find_map(Result::err).unwrap();
        for bad in ["a,,c\n1,2,3\n", "a,b,a\n1,2,3\n", ",\n1,2\n"] {
            let err = first_err(bad);
            assert_eq!(err.line, 1, "{bad:?}");
            assert!(err.message.starts_with("header: "), "{err}");
        }
        // After a bad header, every row is an error (not an item), and so it stays after a resume.
        let got = read_all(ItemFormat::Csv, ReadCursor::default(), b"a,a\n1,2\n3,4\n", 1);
        assert_eq!(got.iter().map(|r| r.as_ref().unwrap_err().line).collect::<Vec<_>>(), vec![1, 2, 3]);
        let got = read_all(ItemFormat::Csv, ReadCursor { offset: 4, seq: 0, line: 2, header: Some(vec![]) }, b"1,2\n", 1);
        assert_eq!(got[0].as_ref().unwrap_err().line, 2);

        let err = first_err("a,b\n1,2\n\n1,2,3\n");
        assert_eq!(err, ItemError { line: 4, message: "has 3 fields, the header has 2".into() });
        let err = first_err("a,b\n1,2\n\"x\ny\"\n5\n");
        assert_eq!((err.line, err.message.as_str()), (3, "has 1 fields, the header has 2"));
        let err = first_err("a,b\n1,\"open\n");
        assert_eq!(err.line, 2);
        assert!(err.message.contains("not closed"), "{err}");
        let err = first_err("a,b\n1,2\r3\n");
        assert_eq!(err.line, 2);
    }

    /// Reads `bytes` up to `k` items, resumes from the cursor with a fresh reader, and checks the
    /// two halves make exactly the whole.
    fn check_resume(format: ItemFormat, bytes: &[u8]) {
        let whole = read_all(format, ReadCursor::default(), bytes, usize::MAX);
        let items = whole.iter().filter(|r| r.is_ok()).count();
        assert!(items >= 3);
        for k in 0..=items {
            for chunk in [1, 3, usize::MAX] {
                let mut reader = ItemReader::new(format, ReadCursor::default());
                let mut first = Vec::new();
                let mut fed = 0;
                'outer: for piece in bytes.chunks(chunk.min(bytes.len())) {
                    reader.push(piece);
                    fed += piece.len();
                    while first.iter().filter(|r: &&Result<Item, ItemError>| r.is_ok()).count() < k {
                        match reader.next_item() {
                            Some(r) => first.push(r),
                            None => continue 'outer,
                        }
                    }
                    break;
                }
                if first.iter().filter(|r| r.is_ok()).count() < k {
                    while let Some(r) = reader.finish() {
                        first.push(r);
                    }
                }
                let cursor = reader.cursor();
                // A checkpoint is stored as JSON.
                let cursor: ReadCursor = serde_json::from_str(&serde_json::to_string(&cursor).unwrap()).unwrap();
                assert!(cursor.offset as usize <= fed.max(bytes.len()));
                let rest = read_all(format, cursor.clone(), &bytes[cursor.offset as usize..], chunk);
                let mut both = first.clone();
                both.extend(rest);
                assert_eq!(both, whole, "{format:?} k {k} chunk {chunk} cursor {cursor:?}");
            }
        }
    }

    #[test]
    fn resume_from_a_cursor_reads_exactly_the_rest() {
        check_resume(ItemFormat::Jsonl, JSONL.as_bytes());
        check_resume(ItemFormat::Jsonl, b"\xEF\xBB\xBF{\"id\":1}\n\nnot json\n{\"id\":2}\r\n3\n\n");
        check_resume(ItemFormat::Csv, CSV.as_bytes());
        check_resume(ItemFormat::Csv, b"\xEF\xBB\xBF\n\nk,v\n1,2\n1,2,3\n\"a\"\"\nb\",c\n\nx,y");
    }

    #[test]
    fn targets_parse_and_refuse() {
        let good = r#"{
            "crm": {"url": "https://api.example.com/v1/items?x=1", "headers": {"X-Api-Version": "2"},
                    "secret_headers": {"Authorization": "/ferry/crm/token"}, "body": {"data": "{{item}}"}, "max_concurrency": 5},
            "local_test": {"url": "http://127.0.0.1:8080/hook", "method": "PUT"},
            "loop6": {"url": "http://[::1]/x", "method": "PATCH"},
            "loop6b": {"url": "http://[0:0:0:0:0:0:0:1]:9000/x"},
            "v6": {"url": "https://[2001:db8::1]/x"},
            "lh": {"url": "http://localhost:3000"}
        }"#;
        let targets = parse_targets(good).unwrap();
        assert_eq!(targets.len(), 6);
        let crm = &targets["crm"];
        assert_eq!(crm.method, "POST");
        assert_eq!(crm.headers["X-Api-Version"], "2");
        assert_eq!(crm.secret_headers["Authorization"], "/ferry/crm/token");
        assert_eq!(crm.body, Some(json!({"data": "{{item}}"})));
        assert_eq!(crm.max_concurrency, Some(5));
        assert_eq!(targets["local_test"].method, "PUT");
        assert!(targets["lh"].headers.is_empty() && targets["lh"].body.is_none());
        assert!(parse_targets("{}").unwrap().is_empty());

        let refused = |target: &str| parse_targets(&format!(r#"{{"crm": {target}}}"#)).unwrap_err();
        let check = |target: &str, starts: &str| {
            let e = refused(target);
            assert!(e.starts_with(starts), "{target}: {e}");
        };
        check(r#"{"url": "http://api.example.com/x"}"#, "targets.crm.url: must be https://");
        check(r#"{"url": "http://localhost.evil.com/x"}"#, "targets.crm.url: must be https://");
        check(r#"{"url": "http://127.0.0.1.nip.io/x"}"#, "targets.crm.url: must be https://");
        check(r#"{"url": "http://10.0.0.1/x"}"#, "targets.crm.url: must be https://");
        check(r#"{"url": "http://[2001:db8::1]/x"}"#, "targets.crm.url: must be https://");
        check(r#"{"url": "http://[127.0.0.1]/x"}"#, "targets.crm.url: must be https://");
        check(r#"{"url": "ftp://example.com/x"}"#, "targets.crm.url: must be https://");
        check(r#"{"url": "https://user:pw@example.com/x"}"#, "targets.crm.url: must not have user info");
        check(r#"{"url": "http://evil.com@127.0.0.1/x"}"#, "targets.crm.url: must not have user info");
        check(r#"{"url": "https://example.com/x#frag"}"#, "targets.crm.url: must not have a fragment");
        check(r#"{"url": "https://exa mple.com/"}"#, "targets.crm.url: must not hold whitespace");
        check(r#"{"url": "https:///x"}"#, "targets.crm.url: has no host");
        check(r#"{"url": "https://example.com:99999/"}"#, "targets.crm.url: has an invalid port");
        check(r#"{"url": "https://example.com", "method": "GET"}"#, "targets.crm.method: must be POST, PUT or PATCH");
        check(r#"{"url": "https://example.com", "method": "post"}"#, "targets.crm.method:");
        check(
            r#"{"url": "https://example.com", "headers": {"Idempotency-Key": "x"}}"#,
            "targets.crm.headers.Idempotency-Key: is set by the runner",
        );
        check(r#"{"url": "https://example.com", "headers": {"content-type": "text/plain"}}"#, "targets.crm.headers.content-type:");
        check(r#"{"url": "https://example.com", "headers": {"HOST": "x"}}"#, "targets.crm.headers.HOST:");
        check(
            r#"{"url": "https://example.com", "secret_headers": {"Content-Length": "/p"}}"#,
            "targets.crm.secret_headers.Content-Length:",
        );
        check(
            r#"{"url": "https://example.com", "headers": {"Bad Name": "x"}}"#,
            "targets.crm.headers.Bad Name: is not a valid HTTP header name",
        );
        check(r#"{"url": "https://example.com", "headers": {"X-A": "a\r\nX-B: b"}}"#, "targets.crm.headers.X-A: value holds a CR");
        check(
            r#"{"url": "https://example.com", "headers": {"X-A": "1"}, "secret_headers": {"x-a": "/p"}}"#,
            "targets.crm.secret_headers.x-a: is set twice",
        );
        check(r#"{"url": "https://example.com", "secret_headers": {"X-A": "not an ssm name"}}"#, "targets.crm.secret_headers.X-A:");
        check(r#"{"url": "https://example.com", "max_concurrency": 0}"#, "targets.crm.max_concurrency:");
        check(r#"{"url": "https://example.com", "max_concurrency": 101}"#, "targets.crm.max_concurrency:");
        check(r#"{"url": "https://example.com", "timeout": 1}"#, "targets.crm: unknown field `timeout`");
        check(r#"{"method": "POST"}"#, "targets.crm: missing field `url`");
        assert!(
            parse_targets(r#"{"bad name": {"url": "https://example.com"}}"#)
                .unwrap_err()
                .starts_with("targets.\"bad name\": not a target name")
        );
        assert!(parse_targets("[1]").unwrap_err().starts_with("targets: "));
    }

    fn item(seq: u64, value: Value) -> Item {
        Item::new(seq, value)
    }

    #[test]
    fn render_body_replaces_whole_string_placeholders_in_the_template_only() {
        let group = [item(7, json!({"id": "a", "note": "{{job_id}}"})), item(8, json!({"id": 2}))];
        let template = json!({
            "one": "{{item}}", "all": "{{items}}", "seq": "{{seq}}", "id": "{{id}}", "job": "{{job_id}}",
            "nested": [{"deep": ["{{seq}}", "x {{id}}", "{{ID}}"]}], "n": 5, "t": true, "{{item}}": "key stays"
        });
        let body = render_body(Some(&template), &group, "job-1");
        assert_eq!(
            body,
            json!({
                "one": {"id": "a", "note": "{{job_id}}"},
                "all": [{"id": "a", "note": "{{job_id}}"}, {"id": 2}],
                "seq": 7, "id": "a", "job": "job-1",
                "nested": [{"deep": [7, "x {{id}}", "{{ID}}"]}], "n": 5, "t": true, "{{item}}": "key stays"
            })
        );
        // The item's own "{{job_id}}" text is placed as it is, not expanded.
        assert_eq!(body["one"]["note"], "{{job_id}}");
        // An item without an id gives null.
        let anon = [item(0, json!([1]))];
        assert_eq!(render_body(Some(&json!({"id": "{{id}}"})), &anon, "j"), json!({"id": null}));
        // No template: the value itself for one item, else the array.
        assert_eq!(render_body(None, &group[..1], "j"), json!({"id": "a", "note": "{{job_id}}"}));
        assert_eq!(render_body(None, &group, "j"), json!([{"id": "a", "note": "{{job_id}}"}, {"id": 2}]));
        assert_eq!(render_body(Some(&json!("{{item}}")), &group[1..], "j"), json!({"id": 2}));
        assert_eq!(idempotency_key("job-1", 7), "job-1:7");
    }

    #[test]
    fn classify_table() {
        use CallOutcome::*;
        let table = [
            (Status(200), Verdict::Succeeded),
            (Status(201), Verdict::Succeeded),
            (Status(204), Verdict::Succeeded),
            (Status(299), Verdict::Succeeded),
            (Status(100), Verdict::Failed),
            (Status(301), Verdict::Failed),
            (Status(400), Verdict::Failed),
            (Status(401), Verdict::Failed),
            (Status(404), Verdict::Failed),
            (Status(408), Verdict::Retry),
            (Status(409), Verdict::Failed),
            (Status(422), Verdict::Failed),
            (Status(425), Verdict::Retry),
            (Status(429), Verdict::Retry),
            (Status(500), Verdict::Retry),
            (Status(503), Verdict::Retry),
            (Status(599), Verdict::Retry),
            (Status(600), Verdict::Failed),
            (Timeout, Verdict::Retry),
            (Transport, Verdict::Retry),
        ];
        for (outcome, verdict) in table {
            assert_eq!(classify(outcome), verdict, "{outcome:?}");
        }
    }

    #[test]
    fn retry_delay_bounds() {
        let ms = Duration::from_millis;
        assert_eq!(retry_delay(1, None, 0.0), Duration::ZERO);
        assert_eq!(retry_delay(1, Some(ms(1_500)), 0.0), ms(1_500));
        assert_eq!(retry_delay(1, None, 0.5), ms(100));
        assert_eq!(retry_delay(2, None, 0.5), ms(200));
        assert_eq!(retry_delay(3, None, 0.5), ms(400));
        assert_eq!(retry_delay(4, None, 0.5), ms(800));
        // The ceiling stops at the cap, however many tries.
        assert_eq!(retry_delay(20, None, 0.5), ms(10_000));
        assert_eq!(retry_delay(u32::MAX, None, 0.5), ms(10_000));
        let near = retry_delay(30, None, 0.999);
        assert!(near >= ms(19_900) && near < ms(BACKOFF_CAP_MS), "{near:?}");
        assert!(retry_delay(1, None, 0.999) < ms(BACKOFF_BASE_MS));
        // Never below Retry-After, which is capped.
        assert_eq!(retry_delay(5, Some(ms(100)), 0.5), ms(1_600));
        assert_eq!(retry_delay(1, Some(ms(5_000)), 0.999), ms(5_000));
        assert_eq!(retry_delay(1, Some(Duration::from_secs(3_600)), 0.1), ms(MAX_RETRY_AFTER_MS));
        // Out-of-range jitter cannot go past the ceiling or below zero.
        assert_eq!(retry_delay(1, None, 7.0), ms(200));
        assert_eq!(retry_delay(1, None, -1.0), Duration::ZERO);
        assert_eq!(retry_delay(1, None, f64::NAN), Duration::ZERO);
        assert_eq!(retry_delay(0, None, 0.5), ms(100));
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        // 2015-10-21T07:28:00Z
        let at = 1_445_412_480_000i64;
        assert_eq!(parse_retry_after("120", at), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after(" 0 ", at), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("99999999999999999999999", at), Some(Duration::from_secs(u64::MAX)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", at), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", at), Some(Duration::from_secs(30)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", at + 250), Some(Duration::from_millis(29_750)));
        assert_eq!(parse_retry_after("Tue, 20 Oct 2015 07:28:00 GMT", at), Some(Duration::ZERO), "the past is zero");
        for garbage in ["", "soon", "-5", "1.5", "Wed, 21 Oct 2015 07:28:00", "21 Oct 2015 07:28:00 GMT", "Wed, 32 Oct 2015 07:28:00 GMT"] {
            assert_eq!(parse_retry_after(garbage, at), None, "{garbage:?}");
        }
    }

    #[test]
    fn tolerance_cases() {
        let t = |count, percent| Tolerance { count, percent };
        assert!(!t(Some(0), None).exceeded(0, 10));
        assert!(t(Some(0), None).exceeded(1, 10));
        assert!(!t(Some(2), None).exceeded(2, 10));
        assert!(t(Some(2), None).exceeded(3, 10));
        assert!(!t(None, Some(10.0)).exceeded(1, 10));
        assert!(t(None, Some(10.0)).exceeded(2, 10));
        assert!(!t(None, Some(100.0)).exceeded(10, 10));
        assert!(t(None, Some(0.0)).exceeded(1, 1_000_000));
        // Either threshold suffices.
        assert!(t(Some(5), Some(10.0)).exceeded(2, 10));
        assert!(t(Some(1), Some(50.0)).exceeded(2, 10));
        assert!(!t(Some(5), Some(50.0)).exceeded(2, 10));
        // NaN cannot come from JSON; made in code, it tolerates nothing rather than everything.
        assert!(!t(None, Some(f64::NAN)).exceeded(0, 10));
        assert!(t(None, Some(f64::NAN)).exceeded(1, 10));
        // Neither set: nothing is tolerated.
        assert!(!t(None, None).exceeded(0, 10));
        assert!(t(None, None).exceeded(1, 10));
    }

    #[test]
    fn results_as_json_lines_and_csv() {
        let r = ItemResult {
            seq: 3,
            id: Some("a\"1".into()),
            status: ItemStatus::Failed,
            http_status: Some(422),
            attempts: 2,
            response: Some("=HYPERLINK(\"x\")".into()),
            error: None,
        };
        let mut out = Vec::new();
        write_result(OutputFormat::Jsonl, &r, &mut out);
        let line = String::from_utf8(out).unwrap();
        assert_eq!(
            line,
            "{\"seq\":3,\"id\":\"a\\\"1\",\"status\":\"failed\",\"http_status\":422,\"attempts\":2,\"response\":\"=HYPERLINK(\\\"x\\\")\",\"error\":null}\n"
        );
        assert_eq!(serde_json::from_str::<ItemResult>(&line).unwrap(), r);
        let skipped =
            ItemResult { seq: 9, id: None, status: ItemStatus::Skipped, http_status: None, attempts: 0, response: None, error: None };
        let mut out = Vec::new();
        write_result(OutputFormat::Jsonl, &skipped, &mut out);
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v.as_object().unwrap().len(), 7);
        assert_eq!(v["id"], Value::Null);

        let mut out = results_csv_header().to_vec();
        write_result(OutputFormat::Csv, &r, &mut out);
        write_result(OutputFormat::Csv, &skipped, &mut out);
        let error = ItemResult { error: Some("-timeout, 3 tries".into()), response: Some("line1\nline2".into()), ..skipped.clone() };
        write_result(OutputFormat::Csv, &error, &mut out);
        assert_eq!(
            String::from_utf8(out.clone()).unwrap(),
            "seq,id,status,http_status,attempts,response,error\n\
             3,\"a\"\"1\",failed,422,2,\"'=HYPERLINK(\"\"x\"\")\",\n\
             9,,skipped,,0,,\n\
             9,,skipped,,0,\"line1\nline2\",\"'-timeout, 3 tries\"\n"
        );
        let rows: Vec<csv::StringRecord> = csv::Reader::from_reader(&out[..]).records().map(|r| r.unwrap()).collect();
        assert_eq!(rows.len(), 3);
        assert_eq!(&rows[0][5], "'=HYPERLINK(\"x\")");
    }

    #[test]
    fn bounded_responses() {
        assert_eq!(bounded_response(b"ok"), "ok");
        assert_eq!(bounded_response(b"bad \xFF byte"), "bad \u{FFFD} byte");
        let long = "é".repeat(MAX_RESPONSE_CHARS + 10);
        let kept = bounded_response(long.as_bytes());
        assert_eq!(kept.chars().count(), MAX_RESPONSE_CHARS);
        assert!(long.starts_with(&kept));
        let exact = "x".repeat(MAX_RESPONSE_CHARS);
        assert_eq!(bounded_response(exact.as_bytes()), exact);
        let emoji = "😀".repeat(MAX_RESPONSE_CHARS * 2);
        assert_eq!(bounded_response(emoji.as_bytes()).chars().count(), MAX_RESPONSE_CHARS);
    }

    #[test]
    fn failed_file_is_an_item_file() {
        let mut items = inline_items(&[json!({"id": 1, "x": [1, {"y": null}]}), json!("plain"), json!(2.5)]);
        items.extend(ok_items(read_all(ItemFormat::Csv, ReadCursor::default(), b"id,v\nq,\"=a\nb\"\n", 3)));
        let mut out = Vec::new();
        for it in &items {
            write_failed(it, &mut out);
        }
        assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), items.len(), "one line each");
        let again = ok_items(read_all(ItemFormat::Jsonl, ReadCursor::default(), &out, 7));
        let values = |v: &[Item]| v.iter().map(|i| (i.id.clone(), i.value.clone())).collect::<Vec<_>>();
        assert_eq!(values(&again), values(&items));
        assert_eq!(again.iter().map(|i| i.seq).collect::<Vec<_>>(), vec![0, 1, 2, 3]);
    }

    #[test]
    fn reorder_releases_in_seq_order() {
        let mut r = Reorder::new(5);
        assert_eq!(r.next(), 5);
        assert!(r.insert(7, "seven"));
        assert!(r.insert(6, "six"));
        assert!(!r.insert(7, "again"), "duplicate ignored");
        assert!(!r.insert(4, "old"), "below next ignored");
        assert_eq!(r.pop_ready(), None, "5 is not in");
        assert_eq!(r.waiting(), 2);
        assert!(r.insert(5, "five"));
        assert_eq!(r.pop_ready(), Some("five"));
        assert!(!r.insert(5, "late duplicate"));
        assert_eq!(r.pop_ready(), Some("six"));
        assert_eq!(r.pop_ready(), Some("seven"));
        assert_eq!(r.pop_ready(), None);
        assert_eq!(r.next(), 8);
        assert!(r.insert(10, "ten"));
        assert!(r.insert(9, "nine"));
        assert_eq!(r.drain_waiting(), vec![(9, "nine"), (10, "ten")]);
        assert_eq!(r.waiting(), 0);
        assert_eq!(r.next(), 8);
        let counts = Counts { pending: 1, running: 2, succeeded: 3, failed: 4, retrying: 5 };
        assert_eq!(serde_json::to_value(counts).unwrap(), json!({"pending": 1, "running": 2, "succeeded": 3, "failed": 4, "retrying": 5}));
    }
}
