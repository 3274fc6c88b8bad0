//! Settings of the job API and worker, read once from the environment.

use std::time::Duration;

use ferry_core::jobs::XLSX_MAX_ROWS;

/// How the API starts a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvokeMode {
    /// Await Lambda's 202 before answering, and fail the job if the invoke failed. Lambda's `Event`
    /// invoke only queues the event, so this takes milliseconds.
    Await,
    /// Answer at once and invoke from a background task. For a long-running local process
    /// (`cargo lambda watch` answers an `Event` invoke only when the worker has finished).
    Detached,
}

/// Everything tunable about jobs.
#[derive(Debug, Clone, PartialEq)]
pub struct JobSettings {
    /// The DynamoDB table of status records and locks (`FERRY_JOBS_TABLE`).
    pub table: String,
    /// The bucket exports are written to (`FERRY_EXPORT_BUCKET`).
    pub bucket: String,
    /// The worker Lambda's name or ARN (`FERRY_JOB_WORKER_FUNCTION`).
    pub worker_function: String,
    pub invoke_mode: InvokeMode,
    /// How long a queued job may wait for its worker before it reads `lost`.
    pub start_lease: Duration,
    /// How long a running job may go without a heartbeat before it reads `lost`.
    pub lease: Duration,
    /// How long a job's record and file are kept (`FERRY_JOB_RETENTION_HOURS`).
    pub retention: Duration,
    /// Lifetime of a download link (at most 15 minutes).
    pub link_lifetime: Duration,
    /// Rows read per DynamoDB page; the worker heartbeats and checks for cancellation after each.
    pub page_size: u32,
    /// When less than this is left of the invocation, the worker checkpoints and continues in a new one.
    pub continue_margin: Duration,
    /// Most continuations of one job (each up to the Lambda timeout).
    pub max_continuations: u32,
    /// Rows per xlsx worksheet, header included; a new sheet starts when one is full.
    pub sheet_rows: u32,
    /// Size of the multipart upload's parts (at least 5 MiB).
    pub part_bytes: usize,
    /// How many partitions are read ahead in parallel.
    pub read_ahead: usize,
    /// Largest S3 dataset object read (it is parsed whole).
    pub max_object_bytes: u64,
}

impl Default for JobSettings {
    fn default() -> JobSettings {
        JobSettings {
            table: "ferry-jobs".into(),
            bucket: "ferry-exports".into(),
            worker_function: "job-worker".into(),
            invoke_mode: InvokeMode::Await,
            start_lease: Duration::from_secs(120),
            lease: Duration::from_secs(60),
            retention: Duration::from_secs(7 * 24 * 3600),
            link_lifetime: Duration::from_secs(15 * 60),
            page_size: 1000,
            continue_margin: Duration::from_secs(60),
            max_continuations: 16,
            sheet_rows: XLSX_MAX_ROWS,
            part_bytes: ferry_aws::exports::MIN_PART_BYTES,
            read_ahead: 4,
            max_object_bytes: 512 * 1024 * 1024,
        }
    }
}

impl JobSettings {
    /// Reads `FERRY_JOBS_TABLE`, `FERRY_EXPORT_BUCKET`, `FERRY_JOB_WORKER_FUNCTION`, `FERRY_JOB_INVOKE`
    /// (`await` or `detached`), `FERRY_JOB_RETENTION_HOURS`, `FERRY_JOB_PAGE_SIZE` and
    /// `FERRY_JOB_CONTINUE_MARGIN_SECS`; unset ones keep their defaults, malformed ones are an error
    /// naming the variable.
    pub fn from_env() -> Result<JobSettings, String> {
        let mut s = JobSettings::default();
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let number = |name: &str, v: String| v.parse::<u64>().map_err(|_| format!("{name}: {v:?} is not a whole number"));
        if let Some(v) = var("FERRY_JOBS_TABLE") {
            s.table = v;
        }
        if let Some(v) = var("FERRY_EXPORT_BUCKET") {
            s.bucket = v;
        }
        if let Some(v) = var("FERRY_JOB_WORKER_FUNCTION") {
            s.worker_function = v;
        }
        if let Some(v) = var("FERRY_JOB_INVOKE") {
            s.invoke_mode = match v.as_str() {
                "await" => InvokeMode::Await,
                "detached" => InvokeMode::Detached,
                _ => return Err(format!("FERRY_JOB_INVOKE: {v:?} is not `await` or `detached`")),
            };
        }
        if let Some(v) = var("FERRY_JOB_RETENTION_HOURS") {
            s.retention = Duration::from_secs(number("FERRY_JOB_RETENTION_HOURS", v)? * 3600);
        }
        if let Some(v) = var("FERRY_JOB_PAGE_SIZE") {
            let n = number("FERRY_JOB_PAGE_SIZE", v)?;
            s.page_size = u32::try_from(n).ok().filter(|n| (1..=10_000).contains(n)).ok_or("FERRY_JOB_PAGE_SIZE: must be 1 to 10000")?;
        }
        if let Some(v) = var("FERRY_JOB_CONTINUE_MARGIN_SECS") {
            s.continue_margin = Duration::from_secs(number("FERRY_JOB_CONTINUE_MARGIN_SECS", v)?);
        }
        Ok(s)
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

pub(crate) fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}
