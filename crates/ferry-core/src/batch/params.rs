//! The `params` of a batch submit: [`BatchParams::parse`] validates them (every error names its
//! field) and fills in the defaults; the params say where the items are ([`Items`]), how fast calls
//! may start ([`BatchParams::interval`]) and when the batch gives up ([`BatchParams::tolerance`]).

use std::ops::RangeInclusive;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::calls::Tolerance;
use super::{DEFAULT_ATTEMPTS, DEFAULT_TIMEOUT_MS, MAX_ATTEMPTS, MAX_CONCURRENCY, MAX_INLINE_ITEMS, MAX_ITEMS_PER_REQUEST, MAX_TIMEOUT_MS};
use crate::jobs::SubmitError;
use crate::sources::is_bucket_name;

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
    /// The name of a configured [`Target`](super::Target).
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
pub(super) fn is_name(s: &str) -> bool {
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
}
