//! Settings of the job API and worker, read once from the environment.

use std::collections::BTreeMap;
use std::time::Duration;

use ferry_core::batch::Target;
use ferry_core::jobs::XLSX_MAX_ROWS;
use ferry_core::sources::{self, DatasetLocation, SourcePolicy, TablePattern};
use ferry_lambda::settings::{SettingsError, Vars};

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
    /// How long a worker run may take when the invocation's deadline cannot be believed (none, past,
    /// or not a time in the next 15 minutes: a local runtime) (`FERRY_JOB_RUN_BUDGET_MS`).
    pub run_budget: Duration,
    /// Most continuations of one job (each up to the Lambda timeout).
    pub max_continuations: u32,
    /// Rows per xlsx worksheet, header included; a new sheet starts when one is full.
    pub sheet_rows: u32,
    /// Size of the multipart upload's parts (at least 5 MiB).
    pub part_bytes: usize,
    /// How many partitions are read ahead in parallel (`FERRY_JOB_READ_AHEAD`). Each dataset object
    /// read ahead is held whole, parsed, until its rows are written.
    pub read_ahead: usize,
    /// Largest S3 dataset object read (`FERRY_JOB_MAX_OBJECT_BYTES`): its bytes, and for Parquet
    /// also what it decodes to (it is parsed whole).
    pub max_object_bytes: u64,
    /// The function's memory in MB (`AWS_LAMBDA_FUNCTION_MEMORY_SIZE`); `None` off Lambda.
    pub memory_mb: Option<u64>,
    /// Largest dataset snapshot (its JSON) a checkpoint holds inline; a longer one is written to a
    /// staging object and the checkpoint names it.
    pub snapshot_inline_bytes: usize,
    /// Where S3 datasets may be read (`FERRY_EXPORT_DATASETS`); `None`: `datasets/` of `bucket`.
    pub dataset_locations: Option<Vec<DatasetLocation>>,
    /// DynamoDB tables exports may read (`FERRY_EXPORT_SOURCE_TABLES`); none by default.
    pub source_tables: Vec<TablePattern>,
    /// The stack's deliveries table (`FERRY_NOTIFY_TABLE`), never a source.
    pub notify_table: Option<String>,
    /// Most queued or running jobs one owner may have at once (`FERRY_JOB_MAX_RUNNING_PER_OWNER`);
    /// the next submit is `429` until one ends.
    pub max_running_per_owner: u32,
    /// The EventBridge bus lifecycle events go to (`FERRY_JOB_EVENT_BUS`); `None`: none are published.
    pub event_bus: Option<String>,
    /// The outside APIs `batch` jobs may call, by name (`FERRY_BATCH_TARGETS`, JSON); a caller
    /// names one, never a URL.
    pub batch_targets: BTreeMap<String, Target>,
    /// Where the targets' `secret_headers` parameters live in SSM (`FERRY_BATCH_SECRETS_PATH`); a
    /// secret header naming a parameter outside it refuses to start.
    pub batch_secrets_path: String,
    /// Largest item file a `batch` job reads (`FERRY_BATCH_MAX_ITEM_FILE_BYTES`): the API reads it
    /// whole at submit to check every line.
    pub batch_max_item_file_bytes: u64,
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
            run_budget: Duration::from_secs(15 * 60),
            max_continuations: 16,
            sheet_rows: XLSX_MAX_ROWS,
            part_bytes: ferry_aws::exports::MIN_PART_BYTES,
            read_ahead: 4,
            max_object_bytes: 512 * 1024 * 1024,
            memory_mb: None,
            snapshot_inline_bytes: ferry_core::jobs::SNAPSHOT_INLINE_MAX_BYTES,
            dataset_locations: None,
            source_tables: Vec::new(),
            notify_table: None,
            max_running_per_owner: 2,
            event_bus: None,
            batch_targets: BTreeMap::new(),
            batch_secrets_path: "/ferry/batch/".into(),
            batch_max_item_file_bytes: 256 * 1024 * 1024,
        }
    }
}

impl JobSettings {
    /// [`JobSettings::from_vars`] over the process environment.
    pub fn from_env() -> Result<JobSettings, SettingsError> {
        JobSettings::from_vars(&Vars::env())
    }

    /// Reads `FERRY_JOBS_TABLE`, `FERRY_EXPORT_BUCKET`, `FERRY_JOB_WORKER_FUNCTION`, `FERRY_JOB_INVOKE`
    /// (`await` or `detached`), `FERRY_JOB_RETENTION_HOURS`, `FERRY_JOB_PAGE_SIZE`,
    /// `FERRY_JOB_CONTINUE_MARGIN_SECS`, `FERRY_JOB_RUN_BUDGET_MS`, `FERRY_JOB_LEASE_SECS`, `FERRY_JOB_START_LEASE_SECS`,
    /// `FERRY_JOB_MAX_RUNNING_PER_OWNER`, `FERRY_JOB_READ_AHEAD`, `FERRY_JOB_MAX_OBJECT_BYTES`,
    /// Lambda's `AWS_LAMBDA_FUNCTION_MEMORY_SIZE`, `FERRY_EXPORT_DATASETS` (comma-separated `bucket/prefix`),
    /// `FERRY_EXPORT_SOURCE_TABLES` (comma-separated names or patterns), `FERRY_NOTIFY_TABLE`,
    /// `FERRY_JOB_EVENT_BUS`, `FERRY_BATCH_TARGETS`, `FERRY_BATCH_SECRETS_PATH` and `FERRY_BATCH_MAX_ITEM_FILE_BYTES`.
    /// Every one has a default (the README's settings table): the table, bucket and worker names
    /// default to the names a local run uses. Malformed ones are an error naming the variable.
    pub fn from_vars(vars: &Vars) -> Result<JobSettings, SettingsError> {
        let mut s = JobSettings::default();
        if let Some(v) = vars.optional("FERRY_JOBS_TABLE") {
            s.table = v;
        }
        if let Some(v) = vars.optional("FERRY_EXPORT_BUCKET") {
            s.bucket = v;
        }
        if let Some(v) = vars.optional("FERRY_JOB_WORKER_FUNCTION") {
            s.worker_function = v;
        }
        let modes = [("await", InvokeMode::Await), ("detached", InvokeMode::Detached)];
        if let Some(m) = vars.choice("FERRY_JOB_INVOKE", &modes)? {
            s.invoke_mode = m;
        }
        if let Some(h) = vars.whole::<u64>("FERRY_JOB_RETENTION_HOURS")? {
            s.retention = Duration::from_secs(h.saturating_mul(3600));
        }
        // Every bound below fits in a u32.
        let small = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
        if let Some(n) = vars.within("FERRY_JOB_PAGE_SIZE", 1..=10_000, "")? {
            s.page_size = small(n);
        }
        // The worker heartbeats every third of the lease; below 3 s a slow DynamoDB call loses it.
        if let Some(n) = vars.within("FERRY_JOB_LEASE_SECS", 3..=900, "")? {
            s.lease = Duration::from_secs(n);
        }
        let why = " (Lambda keeps an async event at most 6 hours)";
        if let Some(n) = vars.within("FERRY_JOB_START_LEASE_SECS", 10..=6 * 3600, why)? {
            s.start_lease = Duration::from_secs(n);
        }
        if let Some(n) = vars.within("FERRY_JOB_MAX_RUNNING_PER_OWNER", 1..=1000, "")? {
            s.max_running_per_owner = small(n);
        }
        if let Some(n) = vars.within("FERRY_JOB_READ_AHEAD", 1..=64, "")? {
            s.read_ahead = small(n) as usize;
        }
        if let Some(n) = vars.within("FERRY_JOB_MAX_OBJECT_BYTES", 1..=u64::MAX, "")? {
            s.max_object_bytes = n;
        }
        s.memory_mb = vars.whole_in("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "MB")?;
        if let Some(n) = vars.whole::<u64>("FERRY_JOB_CONTINUE_MARGIN_SECS")? {
            s.continue_margin = Duration::from_secs(n);
        }
        let why = " (ms; Lambda's longest timeout is 15 minutes)";
        if let Some(n) = vars.within("FERRY_JOB_RUN_BUDGET_MS", 1000..=900_000, why)? {
            s.run_budget = Duration::from_millis(n);
        }
        s.dataset_locations = vars.parsed("FERRY_EXPORT_DATASETS", |v| sources::parse_list(v, DatasetLocation::parse))?;
        if let Some(list) = vars.parsed("FERRY_EXPORT_SOURCE_TABLES", |v| sources::parse_list(v, TablePattern::parse))? {
            s.source_tables = list;
        }
        s.notify_table = vars.optional("FERRY_NOTIFY_TABLE");
        s.event_bus = vars.optional("FERRY_JOB_EVENT_BUS");
        if let Some(targets) = vars.parsed("FERRY_BATCH_TARGETS", ferry_core::batch::parse_targets)? {
            s.batch_targets = targets;
        }
        if let Some(v) = vars.optional("FERRY_BATCH_SECRETS_PATH") {
            if !(v.starts_with('/') && v.ends_with('/')) {
                return Err(SettingsError::invalid("FERRY_BATCH_SECRETS_PATH", format!("{v:?} must start and end with `/`")));
            }
            s.batch_secrets_path = v;
        }
        for (name, target) in &s.batch_targets {
            if let Some(p) = target.secret_headers.values().find(|p| !p.starts_with(&s.batch_secrets_path)) {
                let problem = format!("targets.{name}.secret_headers: {p:?} is not under {}", s.batch_secrets_path);
                return Err(SettingsError::invalid("FERRY_BATCH_TARGETS", problem));
            }
        }
        if let Some(n) = vars.within("FERRY_BATCH_MAX_ITEM_FILE_BYTES", 1..=u64::MAX, "")? {
            s.batch_max_item_file_bytes = n;
        }
        Ok(s)
    }

    /// Refuses a read-ahead and object cap whose objects the worker's memory cannot hold at once:
    /// better not to start than to be killed reading a large dataset.
    pub fn check_worker_memory(&self) -> Result<(), ferry_core::budget::ReadAheadError> {
        ferry_core::budget::check_read_ahead(self.read_ahead as u64, self.max_object_bytes, self.memory_mb)
    }

    /// What exports may read: the allowlist, minus the stack's own bucket prefixes and tables.
    pub fn source_policy(&self) -> SourcePolicy {
        let datasets = match &self.dataset_locations {
            Some(list) => list.clone(),
            None => DatasetLocation::new(&self.bucket, "datasets/").map(|l| vec![l]).unwrap_or_default(),
        };
        SourcePolicy {
            own_bucket: self.bucket.clone(),
            own_tables: [Some(self.table.clone()), self.notify_table.clone()].into_iter().flatten().collect(),
            datasets,
            tables: self.source_tables.clone(),
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

pub(crate) fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from(vars: &[(&str, &str)]) -> Result<JobSettings, String> {
        JobSettings::from_vars(&Vars::from_pairs(vars)).map_err(|e| e.to_string())
    }

    #[test]
    fn the_allowlist_comes_from_the_environment() {
        let s = from(&[
            ("FERRY_JOBS_TABLE", "ferry-dev-jobs"),
            ("FERRY_EXPORT_BUCKET", "ferry-dev-1"),
            ("FERRY_NOTIFY_TABLE", "ferry-dev-notify-deliveries"),
            ("FERRY_EXPORT_DATASETS", "ferry-dev-1/datasets/, lake/shop/orders"),
            ("FERRY_EXPORT_SOURCE_TABLES", "orders,ferry-*"),
        ])
        .unwrap();
        let p = s.source_policy();
        assert_eq!(p.own_bucket, "ferry-dev-1");
        assert_eq!(p.own_tables, ["ferry-dev-jobs", "ferry-dev-notify-deliveries"]);
        assert_eq!(p.datasets.iter().map(ToString::to_string).collect::<Vec<_>>(), ["ferry-dev-1/datasets/", "lake/shop/orders/"]);
        assert_eq!(p.tables.iter().map(ToString::to_string).collect::<Vec<_>>(), ["orders", "ferry-*"]);
        // The pattern covers the stack's own tables; they are refused all the same.
        let scan = |t: &str| ferry_core::jobs::Source::DynamodbScan { table: t.into(), segments: 1 };
        assert!(p.admit(&scan("ferry-src-orders")).is_ok());
        assert_eq!(p.admit(&scan("ferry-dev-jobs")).unwrap_err().field, "params.source.table");
        assert_eq!(p.admit(&scan("ferry-dev-notify-deliveries")).unwrap_err().field, "params.source.table");
    }

    #[test]
    fn defaults_read_datasets_of_the_own_bucket_and_no_table() {
        let p = from(&[("FERRY_EXPORT_BUCKET", "ferry-dev-1"), ("FERRY_EXPORT_SOURCE_TABLES", " ")]).unwrap().source_policy();
        assert_eq!(p.datasets.iter().map(ToString::to_string).collect::<Vec<_>>(), ["ferry-dev-1/datasets/"]);
        assert!(p.tables.is_empty());
        assert_eq!(p.own_tables, ["ferry-jobs"]);
    }

    #[test]
    fn leases_and_the_per_owner_limit_are_settings_within_bounds() {
        let s = from(&[("FERRY_JOB_LEASE_SECS", "20"), ("FERRY_JOB_START_LEASE_SECS", "3600"), ("FERRY_JOB_MAX_RUNNING_PER_OWNER", "3")])
            .unwrap();
        assert_eq!((s.lease, s.start_lease, s.max_running_per_owner), (Duration::from_secs(20), Duration::from_secs(3600), 3));
        let d = from(&[]).unwrap();
        assert_eq!((d.lease, d.start_lease, d.max_running_per_owner), (Duration::from_secs(60), Duration::from_secs(120), 2));
        for (name, bad) in [
            ("FERRY_JOB_LEASE_SECS", "2"),
            ("FERRY_JOB_LEASE_SECS", "1h"),
            ("FERRY_JOB_START_LEASE_SECS", "30000"),
            ("FERRY_JOB_MAX_RUNNING_PER_OWNER", "0"),
        ] {
            let e = from(&[(name, bad)]).unwrap_err();
            assert!(e.starts_with(name), "{name}={bad}: {e}");
        }
        // The messages, word for word.
        for (name, bad, message) in [
            ("FERRY_JOB_PAGE_SIZE", "0", "FERRY_JOB_PAGE_SIZE: must be 1 to 10000"),
            ("FERRY_JOB_PAGE_SIZE", "x", "FERRY_JOB_PAGE_SIZE: \"x\" is not a whole number"),
            ("FERRY_JOB_LEASE_SECS", "901", "FERRY_JOB_LEASE_SECS: must be 3 to 900"),
            (
                "FERRY_JOB_START_LEASE_SECS",
                "9",
                "FERRY_JOB_START_LEASE_SECS: must be 10 to 21600 (Lambda keeps an async event at most 6 hours)",
            ),
            ("FERRY_JOB_MAX_RUNNING_PER_OWNER", "1001", "FERRY_JOB_MAX_RUNNING_PER_OWNER: must be 1 to 1000"),
        ] {
            assert_eq!(from(&[(name, bad)]).unwrap_err(), message);
        }
        let s = from(&[("FERRY_JOB_PAGE_SIZE", "10000"), ("FERRY_JOB_LEASE_SECS", "3"), ("FERRY_JOB_START_LEASE_SECS", "21600")]).unwrap();
        assert_eq!((s.page_size, s.lease, s.start_lease), (10_000, Duration::from_secs(3), Duration::from_secs(21_600)));
    }

    #[test]
    fn the_read_ahead_and_object_cap_are_checked_against_the_memory() {
        let d = from(&[]).unwrap();
        assert_eq!((d.read_ahead, d.max_object_bytes, d.memory_mb), (4, 512 << 20, None));
        assert!(d.check_worker_memory().is_ok(), "off Lambda nothing is checked");
        let s = from(&[
            ("FERRY_JOB_READ_AHEAD", "2"),
            ("FERRY_JOB_MAX_OBJECT_BYTES", "268435456"),
            ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "2048"),
        ])
        .unwrap();
        assert_eq!((s.read_ahead, s.max_object_bytes, s.memory_mb), (2, 256 << 20, Some(2048)));
        assert!(s.check_worker_memory().is_ok());
        // The defaults in 2048 MB: refused, naming both numbers.
        let e = from(&[("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "2048")]).unwrap().check_worker_memory().unwrap_err().to_string();
        assert!(e.contains("FERRY_JOB_MAX_OBJECT_BYTES = 536870912 bytes") && e.contains("2048 MB"), "{e}");
        for (name, bad, message) in [
            ("FERRY_JOB_READ_AHEAD", "0", "FERRY_JOB_READ_AHEAD: must be 1 to 64"),
            ("FERRY_JOB_MAX_OBJECT_BYTES", "0", "FERRY_JOB_MAX_OBJECT_BYTES: must be 1 to 18446744073709551615"),
            ("FERRY_JOB_MAX_OBJECT_BYTES", "512MiB", "FERRY_JOB_MAX_OBJECT_BYTES: \"512MiB\" is not a whole number"),
            ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "lots", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE: \"lots\" is not a whole number of MB"),
        ] {
            assert_eq!(from(&[(name, bad)]).unwrap_err(), message);
        }
    }

    #[test]
    fn the_run_budget_is_a_setting_within_lambdas_timeout() {
        assert_eq!(from(&[]).unwrap().run_budget, Duration::from_secs(900));
        assert_eq!(from(&[("FERRY_JOB_RUN_BUDGET_MS", "30000")]).unwrap().run_budget, Duration::from_secs(30));
        for bad in ["999", "900001", "30s"] {
            let e = from(&[("FERRY_JOB_RUN_BUDGET_MS", bad)]).unwrap_err();
            assert!(e.starts_with("FERRY_JOB_RUN_BUDGET_MS: "), "{bad}: {e}");
        }
    }

    #[test]
    fn malformed_allowlists_name_the_variable() {
        let e = from(&[("FERRY_EXPORT_DATASETS", "lake/../x")]).unwrap_err();
        assert!(e.starts_with("FERRY_EXPORT_DATASETS: \"lake/../x\""), "{e}");
        let e = from(&[("FERRY_EXPORT_SOURCE_TABLES", "orders,arn:aws:dynamodb:x")]).unwrap_err();
        assert!(e.starts_with("FERRY_EXPORT_SOURCE_TABLES:"), "{e}");
    }
}
