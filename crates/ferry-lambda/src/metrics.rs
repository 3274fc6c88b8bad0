//! Metrics as CloudWatch embedded metric format (EMF) lines: one JSON object per line on stdout,
//! which CloudWatch Logs turns into metrics. No API call and no wait: the function's log is the
//! transport, so a metric costs one line and never slows or fails an invocation.
//!
//! Every name lives here: the namespace [`NAMESPACE`], the dimension keys [`FUNCTION`] and
//! [`KIND`], the emitting functions ([`Function`]) and the metrics with their units ([`Metric`]).
//! A call site builds a [`Line`] and [`Line::emit`]s it. [`verify`] holds a line to what CloudWatch
//! requires of it, and [`Capture`] lets a test read the lines a process emits.
//!
//! Dimension sets: every line carries `function`; a line about a job kind also carries `kind`
//! and is aggregated both ways (`[function]` and `[function, kind]`), so an alarm can watch the
//! total while a graph splits it by kind.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, Mutex, PoisonError};

use serde_json::{Map, Value, json};

mod verify;

pub use verify::{Emitted, verify};

/// The CloudWatch namespace of every ferry metric.
pub const NAMESPACE: &str = "ferry";
/// The dimension naming the function that emitted a line ([`Function::as_str`]).
pub const FUNCTION: &str = "function";
/// The dimension naming a job's kind (`export`, `batch`, ...).
pub const KIND: &str = "kind";

/// A function that emits metrics, named as in the workspace (the same in every stack, so alarms
/// and dashboards need no stack-specific value).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Function {
    RegionalNormalizer,
    GlobalMerger,
    JobApi,
    JobWorker,
    NotifyIntake,
    NotifyConsumer,
    DlqRedrive,
}

impl Function {
    pub const ALL: [Function; 7] = [
        Function::RegionalNormalizer,
        Function::GlobalMerger,
        Function::JobApi,
        Function::JobWorker,
        Function::NotifyIntake,
        Function::NotifyConsumer,
        Function::DlqRedrive,
    ];

    /// The value of the [`FUNCTION`] dimension.
    pub fn as_str(self) -> &'static str {
        match self {
            Function::RegionalNormalizer => "regional-normalizer",
            Function::GlobalMerger => "global-merger",
            Function::JobApi => "job-api",
            Function::JobWorker => "job-worker",
            Function::NotifyIntake => "notify-intake",
            Function::NotifyConsumer => "notify-consumer",
            Function::DlqRedrive => "dlq-redrive",
        }
    }
}

/// A CloudWatch unit, as EMF spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Count,
    Bytes,
    Milliseconds,
    Percent,
}

impl Unit {
    pub fn as_str(self) -> &'static str {
        match self {
            Unit::Count => "Count",
            Unit::Bytes => "Bytes",
            Unit::Milliseconds => "Milliseconds",
            Unit::Percent => "Percent",
        }
    }
}

/// Every metric ferry emits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Metric {
    /// Rows of a locale result written (regional-normalizer).
    RowsNormalized,
    /// Rows of a global result written (global-merger).
    RowsMerged,
    /// Bytes of the upload a written locale result was built from (regional-normalizer).
    InputBytesNormalized,
    /// Bytes of the locale results a written global result was built from (global-merger).
    InputBytesMerged,
    /// Notifications queued by `POST /notifications` (notify-intake).
    NotificationsAccepted,
    /// Submissions refused by the per-sender throttle (notify-intake).
    NotificationsThrottled,
    /// Notifications the provider accepted (notify-consumer).
    NotificationsSent,
    /// Of those, sent on the fallback channel after the primary was refused (notify-consumer).
    NotificationsFellBack,
    /// Notifications that failed for good and went to the DLQ (notify-consumer).
    NotificationsDeadLettered,
    /// Records that failed transiently and return to the queue (notify-consumer).
    NotificationsRetried,
    /// Dead letters moved back to the source queue by a selective redrive (dlq-redrive).
    NotificationsRedriven,
    /// A job's first attempt started (job-worker).
    JobsStarted,
    /// A job succeeded (job-worker).
    JobsSucceeded,
    /// A job failed: its run failed (job-worker) or its worker could not be started (job-api).
    JobsFailed,
    /// A job was cancelled by its owner (job-api).
    JobsCancelled,
    /// A job's lease passed without a heartbeat, seen on a status read (job-api).
    JobsLost,
    /// A job handed over to a new invocation (job-worker).
    JobsContinued,
    /// From submit to the end of a job that succeeded or failed.
    JobDuration,
    /// Rows (or items) in a succeeded job's result.
    JobRows,
    /// Items of a job that counts them (a batch), at its end, by final state.
    ItemsSucceeded,
    ItemsFailed,
    ItemsSkipped,
    /// Of a job's items that succeeded or failed, the share that failed, at its end.
    ItemsFailedPercent,
}

impl Metric {
    pub const ALL: [Metric; 23] = [
        Metric::RowsNormalized,
        Metric::RowsMerged,
        Metric::InputBytesNormalized,
        Metric::InputBytesMerged,
        Metric::NotificationsAccepted,
        Metric::NotificationsThrottled,
        Metric::NotificationsSent,
        Metric::NotificationsFellBack,
        Metric::NotificationsDeadLettered,
        Metric::NotificationsRetried,
        Metric::NotificationsRedriven,
        Metric::JobsStarted,
        Metric::JobsSucceeded,
        Metric::JobsFailed,
        Metric::JobsCancelled,
        Metric::JobsLost,
        Metric::JobsContinued,
        Metric::JobDuration,
        Metric::JobRows,
        Metric::ItemsSucceeded,
        Metric::ItemsFailed,
        Metric::ItemsSkipped,
        Metric::ItemsFailedPercent,
    ];

    /// The metric's name in CloudWatch.
    pub fn name(self) -> &'static str {
        match self {
            Metric::RowsNormalized => "RowsNormalized",
            Metric::RowsMerged => "RowsMerged",
            Metric::InputBytesNormalized => "InputBytesNormalized",
            Metric::InputBytesMerged => "InputBytesMerged",
            Metric::NotificationsAccepted => "NotificationsAccepted",
            Metric::NotificationsThrottled => "NotificationsThrottled",
            Metric::NotificationsSent => "NotificationsSent",
            Metric::NotificationsFellBack => "NotificationsFellBack",
            Metric::NotificationsDeadLettered => "NotificationsDeadLettered",
            Metric::NotificationsRetried => "NotificationsRetried",
            Metric::NotificationsRedriven => "NotificationsRedriven",
            Metric::JobsStarted => "JobsStarted",
            Metric::JobsSucceeded => "JobsSucceeded",
            Metric::JobsFailed => "JobsFailed",
            Metric::JobsCancelled => "JobsCancelled",
            Metric::JobsLost => "JobsLost",
            Metric::JobsContinued => "JobsContinued",
            Metric::JobDuration => "JobDuration",
            Metric::JobRows => "JobRows",
            Metric::ItemsSucceeded => "ItemsSucceeded",
            Metric::ItemsFailed => "ItemsFailed",
            Metric::ItemsSkipped => "ItemsSkipped",
            Metric::ItemsFailedPercent => "ItemsFailedPercent",
        }
    }

    pub fn unit(self) -> Unit {
        match self {
            Metric::JobDuration => Unit::Milliseconds,
            Metric::InputBytesNormalized | Metric::InputBytesMerged => Unit::Bytes,
            Metric::ItemsFailedPercent => Unit::Percent,
            _ => Unit::Count,
        }
    }

    /// The metric counting items that ended in `state` (a job's final counts), if ferry emits one.
    pub fn items(state: &str) -> Option<Metric> {
        match state {
            "succeeded" => Some(Metric::ItemsSucceeded),
            "failed" => Some(Metric::ItemsFailed),
            "skipped" => Some(Metric::ItemsSkipped),
            _ => None,
        }
    }
}

/// One EMF line: the emitting function, an optional job kind, the values, and properties that
/// are searchable in the log but are not dimensions (each dimension value is a metric of its own).
#[derive(Debug, Clone, PartialEq)]
#[must_use = "a line is only written by emit"]
pub struct Line {
    function: Function,
    kind: Option<String>,
    values: BTreeMap<Metric, f64>,
    properties: BTreeMap<&'static str, String>,
}

impl Line {
    pub fn new(function: Function) -> Line {
        Line { function, kind: None, values: BTreeMap::new(), properties: BTreeMap::new() }
    }

    /// Adds the [`KIND`] dimension. A kind CloudWatch would refuse as a dimension value (blank,
    /// not ASCII, a control character, over 1024 bytes) is left out, so the line stays valid.
    pub fn kind(mut self, kind: &str) -> Line {
        self.kind = dimension_value_ok(kind).then(|| kind.to_owned());
        self
    }

    /// Adds `value` to `metric` (a metric appears once in a line).
    pub fn count(mut self, metric: Metric, value: u64) -> Line {
        *self.values.entry(metric).or_default() += value as f64;
        self
    }

    /// Sets `metric` to `value`; a value JSON cannot hold (NaN, infinite) is left out.
    pub fn value(mut self, metric: Metric, value: f64) -> Line {
        if value.is_finite() {
            self.values.insert(metric, value);
        }
        self
    }

    /// A member for finding the line in the log (a job id, a notification id). Keys that the EMF
    /// structure uses are ignored.
    pub fn property(mut self, key: &'static str, value: impl Into<String>) -> Line {
        let reserved = key == "_aws" || key == FUNCTION || key == KIND || Metric::ALL.iter().any(|m| m.name() == key);
        if !reserved {
            self.properties.insert(key, value.into());
        }
        self
    }

    /// The EMF document of this line at `timestamp_ms` (Unix ms).
    pub fn to_json(&self, timestamp_ms: i64) -> Value {
        let mut dimensions = vec![json!([FUNCTION])];
        if self.kind.is_some() {
            dimensions.push(json!([FUNCTION, KIND]));
        }
        let metrics: Vec<Value> = self.values.keys().map(|m| json!({"Name": m.name(), "Unit": m.unit().as_str()})).collect();
        let mut root = Map::new();
        root.insert(
            "_aws".into(),
            json!({
                "Timestamp": timestamp_ms,
                "CloudWatchMetrics": [{"Namespace": NAMESPACE, "Dimensions": dimensions, "Metrics": metrics}],
            }),
        );
        for (k, v) in &self.properties {
            root.insert((*k).into(), Value::String(v.clone()));
        }
        root.insert(FUNCTION.into(), Value::String(self.function.as_str().into()));
        if let Some(kind) = &self.kind {
            root.insert(KIND.into(), Value::String(kind.clone()));
        }
        for (m, v) in &self.values {
            // Whole numbers print as integers (`3`, not `3.0`); both are JSON numbers.
            let n = if v.fract() == 0.0 && v.abs() < 9e15 { json!(*v as i64) } else { json!(v) };
            root.insert(m.name().into(), n);
        }
        Value::Object(root)
    }

    /// Writes the line to stdout, or, while a [`Capture`] lives, to every live capture instead.
    /// A line without values writes nothing: CloudWatch would drop it.
    pub fn emit(self) {
        if self.values.is_empty() {
            return;
        }
        let text = self.to_json(now_ms()).to_string();
        {
            let taps = taps();
            if !taps.is_empty() {
                for tap in taps.iter() {
                    tap.lock().unwrap_or_else(PoisonError::into_inner).push(text.clone());
                }
                return;
            }
        }
        // Only Lambda (or a local runtime standing in for it) collects stdout as metrics; handlers
        // run in-process by the demo and the tests would only flood their output.
        if !in_lambda() {
            return;
        }
        // One write under stdout's lock, so no other writer's output lands inside the line; a
        // failed write is dropped, never a panic (`println!` would panic).
        let _ = writeln!(std::io::stdout().lock(), "{text}");
    }
}

/// Whether this process runs as a Lambda function: Lambda, `cargo lambda` and the local runtimes of
/// the tests all set `AWS_LAMBDA_FUNCTION_NAME`.
fn in_lambda() -> bool {
    static IN_LAMBDA: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *IN_LAMBDA.get_or_init(|| std::env::var_os("AWS_LAMBDA_FUNCTION_NAME").is_some_and(|v| !v.is_empty()))
}

/// Whether CloudWatch accepts `v` as a dimension value: ASCII, no control character, not blank,
/// at most 1024 bytes.
fn dimension_value_ok(v: &str) -> bool {
    !v.trim().is_empty() && v.len() <= 1024 && v.bytes().all(|b| b.is_ascii() && !b.is_ascii_control())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or_default()
}

type Tap = Arc<Mutex<Vec<String>>>;

static TAPS: Mutex<Vec<Tap>> = Mutex::new(Vec::new());

fn taps() -> std::sync::MutexGuard<'static, Vec<Tap>> {
    TAPS.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Every line the process emits while it lives, from any thread or task, instead of stdout: what
/// an in-process test reads (the real binaries' tests read their stdout). Tests of one process run
/// at the same time, so a test picks its own lines by a property (`job_id`, `notification_id`) or
/// a dimension.
#[derive(Debug)]
pub struct Capture {
    lines: Tap,
}

impl Capture {
    pub fn start() -> Capture {
        let lines = Tap::default();
        taps().push(Arc::clone(&lines));
        Capture { lines }
    }

    /// The lines emitted so far, in order.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        taps().retain(|t| !Arc::ptr_eq(t, &self.lines));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(line: &Line) -> Value {
        serde_json::from_str(&line.to_json(1_764_500_000_000).to_string()).expect("JSON")
    }

    #[test]
    fn a_line_is_the_emf_document_cloudwatch_reads() {
        let line = Line::new(Function::JobWorker)
            .kind("batch")
            .count(Metric::JobsSucceeded, 1)
            .count(Metric::JobDuration, 2500)
            .property("job_id", "j-1");
        let v = parsed(&line);
        assert_eq!(
            v["_aws"],
            json!({
                "Timestamp": 1_764_500_000_000_i64,
                "CloudWatchMetrics": [{
                    "Namespace": "ferry",
                    "Dimensions": [["function"], ["function", "kind"]],
                    "Metrics": [{"Name": "JobsSucceeded", "Unit": "Count"}, {"Name": "JobDuration", "Unit": "Milliseconds"}],
                }],
            })
        );
        assert_eq!((v["function"].as_str(), v["kind"].as_str(), v["job_id"].as_str()), (Some("job-worker"), Some("batch"), Some("j-1")));
        assert_eq!((v["JobsSucceeded"].as_u64(), v["JobDuration"].as_u64()), (Some(1), Some(2500)));
        let read = verify(&v.to_string()).expect("valid");
        assert_eq!(read.value(Metric::JobDuration), Some(2500.0));
        assert_eq!(read.get("kind"), Some("batch"));
    }

    #[test]
    fn every_metric_of_every_function_makes_a_valid_line() {
        for f in Function::ALL {
            for m in Metric::ALL {
                for kind in [None, Some("export")] {
                    let mut line = Line::new(f).count(m, 3);
                    if let Some(k) = kind {
                        line = line.kind(k);
                    }
                    let text = line.to_json(now_ms()).to_string();
                    let read = verify(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
                    assert_eq!(read.value(m), Some(3.0), "{text}");
                    assert_eq!(read.get(FUNCTION), Some(f.as_str()));
                    assert_eq!(read.get(KIND), kind);
                }
            }
        }
    }

    #[test]
    fn names_are_distinct_and_units_are_cloudwatch_units() {
        let names: std::collections::BTreeSet<_> = Metric::ALL.iter().map(|m| m.name()).collect();
        assert_eq!(names.len(), Metric::ALL.len());
        let functions: std::collections::BTreeSet<_> = Function::ALL.iter().map(|f| f.as_str()).collect();
        assert_eq!(functions.len(), Function::ALL.len());
        assert!(Metric::ALL.iter().all(|m| verify::UNITS.contains(&m.unit().as_str())));
    }

    #[test]
    fn a_kind_cloudwatch_would_refuse_is_left_out() {
        for bad in ["", "  ", "bätch", "a\nb", &"k".repeat(1025)] {
            let line = Line::new(Function::JobApi).kind(bad).count(Metric::JobsLost, 1);
            let v = parsed(&line);
            assert_eq!(v["_aws"]["CloudWatchMetrics"][0]["Dimensions"], json!([["function"]]), "{bad:?}");
            assert!(v.get("kind").is_none());
            verify(&v.to_string()).expect("valid");
        }
    }

    #[test]
    fn whole_values_print_as_integers_and_others_as_they_are() {
        let line = Line::new(Function::JobWorker)
            .count(Metric::ItemsFailed, 2)
            .value(Metric::ItemsFailedPercent, 12.5)
            .value(Metric::JobRows, f64::NAN);
        let v = parsed(&line);
        assert_eq!((v["ItemsFailed"].as_u64(), v["ItemsFailedPercent"].as_f64()), (Some(2), Some(12.5)));
        assert!(v.get("JobRows").is_none(), "NaN is no JSON number: {v}");
        verify(&v.to_string()).expect("valid");
    }

    #[test]
    fn counts_add_up_and_reserved_properties_are_ignored() {
        let line = Line::new(Function::NotifyConsumer)
            .count(Metric::NotificationsSent, 1)
            .count(Metric::NotificationsSent, 2)
            .property("function", "spoofed")
            .property("NotificationsSent", "x")
            .property("_aws", "x");
        let v = parsed(&line);
        assert_eq!(v["NotificationsSent"], json!(3));
        assert_eq!(v["function"], "notify-consumer");
        verify(&v.to_string()).expect("valid");
    }

    #[test]
    fn a_capture_sees_emitted_lines_and_an_empty_line_writes_nothing() {
        let capture = Capture::start();
        Line::new(Function::DlqRedrive).property("test", "metrics-capture").emit();
        Line::new(Function::DlqRedrive).count(Metric::NotificationsRedriven, 4).property("test", "metrics-capture").emit();
        let mine: Vec<Emitted> =
            capture.lines().iter().map(|l| verify(l).expect("valid")).filter(|e| e.get("test") == Some("metrics-capture")).collect();
        assert_eq!(mine.len(), 1);
        assert_eq!(mine[0].value(Metric::NotificationsRedriven), Some(4.0));
        drop(capture);
        assert!(taps().iter().all(|t| t.lock().map(|l| l.iter().all(|l| !l.contains("metrics-capture"))).unwrap_or(true)));
    }
}
