//! The vote pipeline's steps over a bucket: normalise one region's newest upload into its locale
//! result, and merge every locale result of a stage into the global result.
//!
//! Both steps are safe under at-least-once, out-of-order and concurrent delivery: writes are
//! conditional on what was read (S3 `If-Match` / `If-None-Match`), and each output records in its
//! metadata which inputs it was built from, so a step that finds its work already done writes nothing.

use std::collections::HashMap;
use std::time::Duration;

use ferry_core::budget::{self, BudgetError};
use ferry_core::config::Defaults;
use ferry_core::key::{self, BuiltFrom, Current, ResultKey, StoredUpload, UploadKey};
use ferry_core::merge::{self, LocaleScores, MergeError};
use ferry_core::tally::{self, TallyError, TallyErrorKind};
use ferry_core::{ConfigError, EventConfig, KeyError};

use crate::s3::{Fetched, Head, NewObject, Object, Precondition, Put, S3Error, Store};

/// Metadata written on a locale result: which upload it came from.
pub const META_SOURCE_KEY: &str = "ferry-source-key";
pub const META_SOURCE_ETAG: &str = "ferry-source-etag";
pub const META_SOURCE_STAMP: &str = "ferry-source-stamp";
pub const META_METHOD: &str = "ferry-method";
pub const META_ROWS: &str = "ferry-rows";
/// Metadata written on a global result: `locale=etag` of every locale result it merged, `;`-separated.
pub const META_INPUTS: &str = "ferry-inputs";
/// Metadata written on a global result: the weights it applied, `locale=weight` and `*=default`.
pub const META_WEIGHTS: &str = "ferry-weights";

/// How many times a step re-reads and retries after losing a conditional write.
const MAX_ATTEMPTS: u32 = 12;

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
        VoteSettings::from_vars(|name| std::env::var(name).ok())
    }

    /// Reads the settings through `var`. Unset ones keep their defaults, except that a size cap left
    /// unset is lowered to what the function's memory holds; a cap set explicitly is kept as set, for
    /// [`VoteSettings::check_normalizer_memory`] to refuse. Malformed ones are an error naming the variable.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<VoteSettings, String> {
        let mut s = VoteSettings::default();
        let var = |name: &str| var(name).filter(|v| !v.is_empty());
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
    Written { result: String, source: String, rows: usize },
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
    Written {
        global: String,
        inputs: String,
        rows: usize,
    },
    /// The global result was already built from exactly these inputs.
    UpToDate {
        global: String,
        inputs: String,
    },
    /// No locale result exists for this stage.
    NoInputs {
        global: String,
    },
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
            if let Some(u) = stored_upload(upload, head) {
                out.push(u);
            }
        }
    }
    Ok(out)
}

/// `head` as an upload of the same series as `upload`, if it is one.
fn stored_upload(upload: &UploadKey, head: Head) -> Option<StoredUpload> {
    let k = UploadKey::parse(&head.key).ok()?;
    let same_series = k.evno == upload.evno && k.locale == upload.locale && k.stage == upload.stage;
    same_series.then_some(StoredUpload { object_key: head.key, upload: k, etag: head.etag, stored_at: head.last_modified })
}

/// What a locale result's metadata says it was built from.
fn built_from(result: &Head) -> Option<BuiltFrom<'_>> {
    Some(BuiltFrom {
        object_key: result.metadata.get(META_SOURCE_KEY)?,
        etag: result.metadata.get(META_SOURCE_ETAG)?,
        method: result.metadata.get(META_METHOD).and_then(|m| m.parse().ok()),
    })
}

/// Normalises the current upload of the series that `object_key` (decoded) belongs to into its
/// locale result: the newest upload that exists and is not stamped ahead of when S3 stored it
/// ([`key::current_upload`]). A late or repeated event never moves the result to an older upload
/// while a newer one exists; deleting the newest moves it back to the newest that remains.
pub async fn normalize_upload(store: &Store, settings: &VoteSettings, object_key: &str) -> Result<NormalizeOutcome, VoteError> {
    let upload = UploadKey::parse(object_key)?;
    let result_key = upload.result_key().to_string();
    let skew = settings.max_clock_skew_secs;
    for attempt in 1..=MAX_ATTEMPTS {
        let mut uploads = series_uploads(store, &upload).await?;
        let current = store.head(&result_key).await?;
        let config = load_config(store, upload.evno, settings.defaults).await?;
        let built = current.as_ref().and_then(built_from);
        // The result's own source exists but was not listed: it arrived after the listing began.
        // It counts, or the result would go back to an older upload.
        if let Some(b) = built.filter(|b| !uploads.iter().any(|u| u.object_key == b.object_key))
            && let Some(head) = store.head(b.object_key).await?
        {
            uploads.extend(stored_upload(&upload, head));
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
        let source = match key::current_upload(&uploads, built, config.method, skew) {
            Current::Nothing if uploads.is_empty() => {
                tracing::warn!(key = object_key, "no upload of this series exists any more; skipping");
                return Ok(NormalizeOutcome::Missing { key: object_key.to_owned() });
            }
            Current::Nothing => {
                let skipped = uploads.into_iter().map(|u| u.object_key).collect();
                return Ok(NormalizeOutcome::StampedAhead { key: object_key.to_owned(), skipped });
            }
            Current::UpToDate(u) => return Ok(NormalizeOutcome::UpToDate { result: result_key, source: u.object_key.clone() }),
            Current::Build(u) => u.clone(),
        };
        let Object { head, body } = match store.get_capped(&source.object_key, settings.max_input_bytes).await? {
            Fetched::Object(o) => o,
            Fetched::Missing => {
                tracing::warn!(key = source.object_key, "upload vanished between listing and reading; looking again");
                continue;
            }
            Fetched::TooLarge { size } => {
                let kind = TallyErrorKind::TooLarge { size, limit: settings.max_input_bytes };
                return Err(TallyError::new(&source.object_key, None, kind).into());
            }
        };
        let tally = tally::read_tally_within(&source.object_key, &body, budget::usable_bytes(settings.memory_mb))?;
        // Each input is let go once what follows is built from it: the peak is what is budgeted.
        drop(body);
        let csv = ferry_core::normalize::locale_result(config.method, &tally);
        let rows = tally.len();
        drop(tally);
        let metadata = HashMap::from([
            (META_SOURCE_KEY.to_owned(), source.object_key.clone()),
            (META_SOURCE_ETAG.to_owned(), head.etag),
            (META_SOURCE_STAMP.to_owned(), source.upload.stamp.to_string()),
            (META_METHOD.to_owned(), config.method.as_str().to_owned()),
            (META_ROWS.to_owned(), rows.to_string()),
        ]);
        let object = NewObject { body: csv, content_type: "text/csv", metadata, precondition: Some(Precondition::replacing(current)) };
        match store.put(&result_key, object).await? {
            Put::Written { .. } => {
                let source = source.object_key;
                tracing::info!(result = result_key, source, rows, method = %config.method, "locale result written");
                return Ok(NormalizeOutcome::Written { result: result_key, source, rows });
            }
            Put::Conflict => {
                tracing::info!(result = result_key, attempt, "another normalizer wrote first; re-reading");
                backoff(attempt).await;
            }
        }
    }
    Err(VoteError::Contention { key: result_key, attempts: MAX_ATTEMPTS })
}

/// Merges every locale result of (evno, stage) into the global result.
pub async fn merge_stage(store: &Store, settings: &VoteSettings, evno: u64, stage: &str) -> Result<MergeOutcome, VoteError> {
    let global_key = ferry_core::GlobalKey { evno, stage: stage.to_owned() }.to_string();
    for attempt in 1..=MAX_ATTEMPTS {
        // The global's ETag is read before any input: a write conditional on it then fails if anyone
        // wrote a global after this merge started, so stale inputs can never land last.
        let current = store.head(&global_key).await?;
        let mut listed: Vec<(ResultKey, Head)> = store
            .list(&ResultKey::stage_prefix(evno, stage))
            .await?
            .into_iter()
            .filter_map(|h| ResultKey::parse(&h.key).ok().filter(|k| k.evno == evno && k.stage == stage).map(|k| (k, h)))
            .collect();
        listed.sort_by(|a, b| a.0.locale.cmp(&b.0.locale));
        // Every locale result is held at once, so their total is what the memory is budgeted for.
        let limit = settings.max_merge_bytes;
        let too_large = |size| VoteError::TooLarge { key: global_key.clone(), size, limit, setting: budget::MERGE.setting };
        let total: u64 = listed.iter().map(|(_, h)| h.size).sum();
        if total > limit {
            return Err(too_large(total));
        }
        // One at a time, each body let go once parsed; each may take what the others left of the
        // limit, in case one grew since the listing.
        let mut read = 0;
        let mut inputs: Vec<(String, String, ferry_core::Tally)> = Vec::with_capacity(listed.len());
        for (k, h) in &listed {
            match store.get_capped(&h.key, limit - read).await? {
                Fetched::Object(o) => {
                    // What is held, not what Content-Length claimed (absent, it reads 0).
                    read += o.body.len() as u64;
                    let rows = tally::read_locale_result(&h.key, &o.body)?;
                    inputs.push((k.locale.clone(), o.head.etag, rows));
                }
                Fetched::Missing => tracing::warn!(key = h.key, "locale result vanished while merging; leaving it out"),
                Fetched::TooLarge { size } => return Err(too_large(read + size)),
            }
        }
        if inputs.is_empty() {
            return Ok(MergeOutcome::NoInputs { global: global_key });
        }
        let manifest = inputs.iter().map(|(l, etag, _)| format!("{l}={etag}")).collect::<Vec<_>>().join(";");
        let config = load_config(store, evno, settings.defaults).await?;
        let weights = inputs.iter().map(|(l, _, _)| format!("{l}={}", config.weight(l))).collect::<Vec<_>>().join(";");
        let unchanged = current
            .as_ref()
            .is_some_and(|c| c.metadata.get(META_INPUTS) == Some(&manifest) && c.metadata.get(META_WEIGHTS) == Some(&weights));
        if unchanged {
            return Ok(MergeOutcome::UpToDate { global: global_key, inputs: manifest });
        }
        let scores: Vec<LocaleScores<'_>> =
            inputs.iter().map(|(l, _, scores)| LocaleScores { locale: l, weight: config.weight(l), scores }).collect();
        let global = merge::merge(&scores).map_err(|source| VoteError::Merge { key: global_key.clone(), source })?;
        let metadata = HashMap::from([
            (META_INPUTS.to_owned(), manifest.clone()),
            (META_WEIGHTS.to_owned(), weights),
            (META_METHOD.to_owned(), config.method.as_str().to_owned()),
            (META_ROWS.to_owned(), global.len().to_string()),
        ]);
        let put = store
            .put(
                &global_key,
                NewObject {
                    body: tally::write_global_result(&global.locales, global.rows()),
                    content_type: "text/csv",
                    metadata,
                    precondition: Some(Precondition::replacing(current)),
                },
            )
            .await?;
        match put {
            Put::Written { .. } => {
                tracing::info!(global = global_key, inputs = manifest, rows = global.len(), "global result written");
                return Ok(MergeOutcome::Written { global: global_key, inputs: manifest, rows: global.len() });
            }
            Put::Conflict => {
                tracing::info!(global = global_key, attempt, "another merge wrote first; re-reading");
                backoff(attempt).await;
            }
        }
    }
    Err(VoteError::Contention { key: global_key, attempts: MAX_ATTEMPTS })
}

/// Jittered exponential backoff, capped at about a second, so that racing writers spread out.
async fn backoff(attempt: u32) {
    let base = 20u64 << attempt.min(6);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos() as u64);
    let jitter = nanos % base.max(1);
    tokio::time::sleep(Duration::from_millis((base + jitter).min(1500))).await;
}
