//! The vote pipeline's steps over a bucket: normalise one region's newest upload into its locale
//! result, and merge every locale result of a stage into the global result.
//!
//! Both steps are safe under at-least-once, out-of-order and concurrent delivery: writes are
//! conditional on what was read (S3 `If-Match` / `If-None-Match`), and each output records in its
//! metadata which inputs it was built from, so a step that finds its work already done writes nothing.
//! What to read and whether to write are decided by [`ferry_core::pipeline`]; this module reads,
//! follows the plan, and writes, in the one retry loop of `retry`.

use ferry_core::budget::{self, BudgetError};
use ferry_core::config::Defaults;
use ferry_core::csv::{self, TallyError, TallyErrorKind};
use ferry_core::key::{self, StoredUpload, UploadKey};
use ferry_core::merge::{self, LocaleScores, MergeError};
use ferry_core::pipeline::{self, MergePlan, NormalizePlan, ReadPlan};
use ferry_core::{ConfigError, EventConfig, KeyError};

use crate::s3::{Fetched, NewObject, Object, Precondition, S3Error, Store};

mod retry;

use retry::Step;

/// The metadata names of the pipeline's outputs; see [`ferry_core::pipeline`].
pub use ferry_core::pipeline::{META_INPUTS, META_METHOD, META_ROWS, META_SOURCE_ETAG, META_SOURCE_KEY, META_SOURCE_STAMP, META_WEIGHTS};

/// Settings of the pipeline (from the environment in the Lambdas, from flags in the CLI).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VoteSettings {
    pub defaults: Defaults,
    /// Uploads larger than this are refused unread.
    pub max_input_bytes: u64,
    /// A stage whose locale results total more than this is refused unread by the merger.
    pub max_merge_bytes: u64,
    /// Uploads stamped more than this many seconds after S3 stored them are skipped.
    pub max_clock_skew_secs: u64,
    /// The function's memory in MB (`AWS_LAMBDA_FUNCTION_MEMORY_SIZE`); `None` off Lambda.
    pub memory_mb: Option<u64>,
}

impl Default for VoteSettings {
    fn default() -> VoteSettings {
        VoteSettings {
            defaults: Defaults::default(),
            max_input_bytes: 512 * budget::MIB,
            max_merge_bytes: 1536 * budget::MIB,
            max_clock_skew_secs: 3600,
            memory_mb: None,
        }
    }
}

impl VoteSettings {
    /// Reads `FERRY_DEFAULT_METHOD`, `FERRY_DEFAULT_WEIGHT`, `FERRY_MAX_INPUT_BYTES`,
    /// `FERRY_MAX_MERGE_BYTES`, `FERRY_MAX_CLOCK_SKEW` and Lambda's `AWS_LAMBDA_FUNCTION_MEMORY_SIZE`
    /// from the environment (see [`VoteSettings::from_vars`]).
    pub fn from_env() -> Result<VoteSettings, String> {
        // Lossy, as the functions read it: a value that is not UTF-8 fails to parse under its name.
        VoteSettings::from_vars(|name| std::env::var_os(name).map(|v| v.to_string_lossy().into_owned()))
    }

    /// Reads the settings through `var` (the vote functions pass the environment as
    /// `ferry_lambda::settings::Vars` reads it). Unset ones keep their defaults, except that a size cap
    /// left unset is lowered to what the function's memory holds; a cap set explicitly is kept as set,
    /// for [`VoteSettings::check_normalizer_memory`] to refuse. Malformed ones are an error naming the
    /// variable.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<VoteSettings, String> {
        let mut s = VoteSettings::default();
        // The policy every function reads its settings under: blank is unset, values are trimmed.
        let var = |name: &str| var(name).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
        let bytes = |name: &str, v: String| v.parse::<u64>().map_err(|_| format!("{name}: {v:?} is not a whole number of bytes"));
        if let Some(v) = var("FERRY_DEFAULT_METHOD") {
            s.defaults.method = v.parse().map_err(|e| format!("FERRY_DEFAULT_METHOD: {e}"))?;
        }
        if let Some(v) = var("FERRY_DEFAULT_WEIGHT") {
            let w: f64 = v.parse().map_err(|_| format!("FERRY_DEFAULT_WEIGHT: {v:?} is not a number"))?;
            if !w.is_finite() || w < 0.0 {
                return Err(format!("FERRY_DEFAULT_WEIGHT: must be a finite number >= 0, got {v}"));
            }
            s.defaults.weight = w;
        }
        if let Some(v) = var("AWS_LAMBDA_FUNCTION_MEMORY_SIZE") {
            let mb = v.parse().map_err(|_| format!("AWS_LAMBDA_FUNCTION_MEMORY_SIZE: {v:?} is not a whole number of MB"))?;
            s.memory_mb = Some(mb);
        }
        let fits = |work: budget::Work| s.memory_mb.map_or(u64::MAX, |mb| work.max_input(mb));
        s.max_input_bytes = match var("FERRY_MAX_INPUT_BYTES") {
            Some(v) => bytes("FERRY_MAX_INPUT_BYTES", v)?,
            None => s.max_input_bytes.min(fits(budget::NORMALIZE)),
        };
        s.max_merge_bytes = match var("FERRY_MAX_MERGE_BYTES") {
            Some(v) => bytes("FERRY_MAX_MERGE_BYTES", v)?,
            None => s.max_merge_bytes.min(fits(budget::MERGE)),
        };
        if let Some(v) = var("FERRY_MAX_CLOCK_SKEW") {
            s.max_clock_skew_secs = ferry_core::config::parse_duration_secs(&v).map_err(|e| format!("FERRY_MAX_CLOCK_SKEW: {e}"))?;
        }
        Ok(s)
    }

    /// Refuses a `FERRY_MAX_INPUT_BYTES` whose upload the normalizer's memory cannot hold: better
    /// not to start than to be killed on the first large upload.
    pub fn check_normalizer_memory(&self) -> Result<(), BudgetError> {
        budget::NORMALIZE.check(self.max_input_bytes, self.memory_mb)
    }

    /// Refuses a `FERRY_MAX_MERGE_BYTES` whose locale results the merger's memory cannot hold.
    pub fn check_merger_memory(&self) -> Result<(), BudgetError> {
        budget::MERGE.check(self.max_merge_bytes, self.memory_mb)
    }
}

/// Why a step failed. Each names the object at fault.
#[derive(Debug, thiserror::Error)]
pub enum VoteError {
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Tally(#[from] TallyError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{key}: {source}")]
    Merge { key: String, source: MergeError },
    #[error(transparent)]
    S3(#[from] S3Error),
    #[error("{key}: gave up after {attempts} conflicting concurrent writes")]
    Contention { key: String, attempts: u32 },
    /// The inputs of one step together exceed what its memory is budgeted for.
    #[error("{key}: its inputs total {size} bytes, over {setting} = {limit} bytes; nothing was read")]
    TooLarge { key: String, size: u64, limit: u64, setting: &'static str },
}

impl VoteError {
    /// A short machine-readable name for logs and Lambda error types.
    pub fn kind(&self) -> &'static str {
        match self {
            VoteError::Key(_) => "BadKey",
            VoteError::Tally(_) => "BadInput",
            VoteError::Config(_) => "BadConfig",
            VoteError::Merge { .. } => "BadMerge",
            VoteError::S3(_) => "S3Error",
            VoteError::Contention { .. } => "Contention",
            VoteError::TooLarge { .. } => "TooLarge",
        }
    }
}

/// What [`normalize_upload`] did.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum NormalizeOutcome {
    /// The locale result was (re)written from `source`.
    /// `input_bytes`: the size of the upload it was built from.
    Written { result: String, source: String, rows: usize, input_bytes: u64 },
    /// The locale result already reflects `source`, the current upload.
    UpToDate { result: String, source: String },
    /// No upload of the series exists any more (deleted after the event was sent).
    Missing { key: String },
    /// Every upload of the series is stamped more than the allowed clock skew after S3 stored it.
    StampedAhead { key: String, skipped: Vec<String> },
}

/// What [`merge_stage`] did.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum MergeOutcome {
    /// `input_bytes`: the bytes of the locale results it was built from.
    Written { global: String, inputs: String, rows: usize, input_bytes: u64 },
    /// The global result was already built from exactly these inputs.
    UpToDate { global: String, inputs: String },
    /// No locale result exists for this stage.
    NoInputs { global: String },
}

/// Loads `config/{evno}.json`, or the defaults when there is none.
pub async fn load_config(store: &Store, evno: u64, defaults: Defaults) -> Result<EventConfig, VoteError> {
    let key = key::config_key(evno);
    match store.get_capped(&key, 1024 * 1024).await? {
        Fetched::Object(o) => Ok(EventConfig::parse(&key, &o.body, defaults)?),
        Fetched::Missing => Ok(EventConfig::from_defaults(defaults)),
        Fetched::TooLarge { size } => {
            Err(ConfigError { source_name: key, message: format!("{size} bytes is too large for a config file") }.into())
        }
    }
}

/// Every upload of the series `upload` belongs to, looking under `data/` and `/data/` alike.
async fn series_uploads(store: &Store, upload: &UploadKey) -> Result<Vec<StoredUpload>, VoteError> {
    let prefix = upload.series_prefix();
    let mut out = Vec::new();
    for p in [prefix.clone(), format!("/{prefix}")] {
        for head in store.list(&p).await? {
            out.extend(pipeline::series_upload(upload, head.key, head.etag, head.last_modified));
        }
    }
    Ok(out)
}

/// Normalises the current upload of the series that `object_key` (decoded) belongs to into its
/// locale result, as [`pipeline::normalize_plan`] decides: a late or repeated event never moves the
/// result to an older upload while a newer one exists; deleting the newest moves it back to the
/// newest that remains.
pub async fn normalize_upload(store: &Store, settings: &VoteSettings, object_key: &str) -> Result<NormalizeOutcome, VoteError> {
    let upload = UploadKey::parse(object_key)?;
    let result_key = upload.result_key().to_string();
    let outcome =
        retry::until_written(store, &result_key, "normalizer", || normalize_attempt(store, settings, &upload, object_key, &result_key))
            .await?;
    if let NormalizeOutcome::Written { result, source, rows, .. } = &outcome {
        tracing::info!(result, source, rows, "locale result written");
    }
    Ok(outcome)
}

/// One read and decision of [`normalize_upload`], with the write it calls for.
async fn normalize_attempt(
    store: &Store,
    settings: &VoteSettings,
    upload: &UploadKey,
    object_key: &str,
    result_key: &str,
) -> Result<Step<'static, NormalizeOutcome>, VoteError> {
    let skew = settings.max_clock_skew_secs;
    let mut uploads = series_uploads(store, upload).await?;
    let current = store.head(result_key).await?;
    let config = load_config(store, upload.evno, settings.defaults).await?;
    let result = current.as_ref().map(|c| &c.metadata);
    if let Some(source) = pipeline::unlisted_source(&uploads, result)
        && let Some(head) = store.head(source).await?
    {
        uploads.extend(pipeline::series_upload(upload, head.key, head.etag, head.last_modified));
    }
    for u in uploads.iter().filter(|u| u.stamped_ahead(skew)) {
        tracing::warn!(
            key = u.object_key,
            stamp = %u.upload.stamp,
            stored_at = u.stored_at,
            max_clock_skew_secs = skew,
            "upload stamped ahead of when S3 stored it; skipped"
        );
    }
    let source = match pipeline::normalize_plan(&uploads, result, config.method, skew) {
        NormalizePlan::Missing => {
            tracing::warn!(key = object_key, "no upload of this series exists any more; skipping");
            return Ok(Step::Done(NormalizeOutcome::Missing { key: object_key.to_owned() }));
        }
        NormalizePlan::StampedAhead => {
            let skipped = uploads.into_iter().map(|u| u.object_key).collect();
            return Ok(Step::Done(NormalizeOutcome::StampedAhead { key: object_key.to_owned(), skipped }));
        }
        NormalizePlan::UpToDate(u) => {
            return Ok(Step::Done(NormalizeOutcome::UpToDate { result: result_key.to_owned(), source: u.object_key.clone() }));
        }
        NormalizePlan::Write(u) => u,
    };
    let Object { head, body } = match store.get_capped(&source.object_key, settings.max_input_bytes).await? {
        Fetched::Object(o) => o,
        Fetched::Missing => {
            tracing::warn!(key = source.object_key, "upload vanished between listing and reading; looking again");
            return Ok(Step::Again);
        }
        Fetched::TooLarge { size } => {
            let kind = TallyErrorKind::TooLarge { size, limit: settings.max_input_bytes };
            return Err(TallyError::new(&source.object_key, None, kind).into());
        }
    };
    let input_bytes = body.len() as u64;
    let tally = csv::read_tally_within(&source.object_key, &body, budget::usable_bytes(settings.memory_mb))?;
    // Each input is let go once what follows is built from it: the peak is what is budgeted.
    drop(body);
    let body = ferry_core::normalize::locale_result(config.method, &tally);
    let rows = tally.len();
    drop(tally);
    let metadata = pipeline::locale_result_metadata(source, &head.etag, config.method, rows);
    let object = NewObject { body, content_type: "text/csv", metadata, precondition: Some(Precondition::replacing(current)) };
    let written = NormalizeOutcome::Written { result: result_key.to_owned(), source: source.object_key.clone(), rows, input_bytes };
    Ok(Step::Write { object, written })
}

/// Merges every locale result of (evno, stage) into the global result.
pub async fn merge_stage(store: &Store, settings: &VoteSettings, evno: u64, stage: &str) -> Result<MergeOutcome, VoteError> {
    let global_key = ferry_core::GlobalKey { evno, stage: stage.to_owned() }.to_string();
    let outcome = retry::until_written(store, &global_key, "merge", || merge_attempt(store, settings, evno, stage, &global_key)).await?;
    if let MergeOutcome::Written { global, inputs, rows, .. } = &outcome {
        tracing::info!(global, inputs, rows, "global result written");
    }
    Ok(outcome)
}

/// One read and decision of [`merge_stage`], with the write it calls for.
async fn merge_attempt(
    store: &Store,
    settings: &VoteSettings,
    evno: u64,
    stage: &str,
    global_key: &str,
) -> Result<Step<'static, MergeOutcome>, VoteError> {
    // The global's ETag is read before any input: a write conditional on it then fails if anyone
    // wrote a global after this merge started, so stale inputs can never land last.
    let current = store.head(global_key).await?;
    let listed = store.list(&key::ResultKey::stage_prefix(evno, stage)).await?;
    let limit = settings.max_merge_bytes;
    let too_large = |size| VoteError::TooLarge { key: global_key.to_owned(), size, limit, setting: budget::MERGE.setting };
    let reads = match pipeline::merge_reads(evno, stage, listed.into_iter().map(|h| (h.key, h.size)), limit) {
        ReadPlan::Read(reads) => reads,
        ReadPlan::TooLarge { total } => return Err(too_large(total)),
    };
    // One at a time, each body let go once parsed; each may take what the others left of the
    // limit, in case one grew since the listing.
    let mut read = 0;
    let mut inputs: Vec<(String, String, ferry_core::Tally)> = Vec::with_capacity(reads.len());
    for r in reads {
        match store.get_capped(&r.object_key, limit - read).await? {
            Fetched::Object(o) => {
                // What is held, not what Content-Length claimed (absent, it reads 0).
                read += o.body.len() as u64;
                let rows = csv::read_locale_result(&r.object_key, &o.body)?;
                inputs.push((r.locale, o.head.etag, rows));
            }
            Fetched::Missing => tracing::warn!(key = r.object_key, "locale result vanished while merging; leaving it out"),
            Fetched::TooLarge { size } => return Err(too_large(read + size)),
        }
    }
    if inputs.is_empty() {
        return Ok(Step::Done(MergeOutcome::NoInputs { global: global_key.to_owned() }));
    }
    let config = load_config(store, evno, settings.defaults).await?;
    let manifest = match pipeline::merge_plan(
        inputs.iter().map(|(l, etag, _)| (l.as_str(), etag.as_str())),
        &config,
        current.as_ref().map(|c| &c.metadata),
    ) {
        MergePlan::UpToDate(m) => return Ok(Step::Done(MergeOutcome::UpToDate { global: global_key.to_owned(), inputs: m.inputs })),
        MergePlan::Write(m) => m,
    };
    let scores: Vec<LocaleScores<'_>> =
        inputs.iter().map(|(l, _, scores)| LocaleScores { locale: l, weight: config.weight(l), scores }).collect();
    let global = merge::merge(&scores).map_err(|source| VoteError::Merge { key: global_key.to_owned(), source })?;
    let object = NewObject {
        body: global.to_csv(),
        content_type: "text/csv",
        metadata: manifest.metadata(config.method, global.len()),
        precondition: Some(Precondition::replacing(current)),
    };
    let written = MergeOutcome::Written { global: global_key.to_owned(), inputs: manifest.inputs, rows: global.len(), input_bytes: read };
    Ok(Step::Write { object, written })
}
