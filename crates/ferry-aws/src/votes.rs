//! The vote pipeline's steps over a bucket: normalise one region's newest upload into its locale
//! result, and merge every locale result of a stage into the global result.
//!
//! Both steps are safe under at-least-once, out-of-order and concurrent delivery: writes are
//! conditional on what was read (S3 `If-Match` / `If-None-Match`), and each output records in its
//! metadata which inputs it was built from, so a step that finds its work already done writes nothing.

use std::collections::HashMap;
use std::time::Duration;

use ferry_core::config::Defaults;
use ferry_core::key::{self, ResultKey, Stamp, UploadKey};
use ferry_core::merge::{self, LocaleScores, MergeError};
use ferry_core::tally::{self, TallyError, TallyErrorKind};
use ferry_core::{ConfigError, EventConfig, KeyError};

use crate::s3::{Fetched, Head, NewObject, Precondition, Put, S3Error, Store};

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
}

impl Default for VoteSettings {
    fn default() -> VoteSettings {
        VoteSettings { defaults: Defaults::default(), max_input_bytes: 512 * 1024 * 1024 }
    }
}

impl VoteSettings {
    /// Reads `FERRY_DEFAULT_METHOD`, `FERRY_DEFAULT_WEIGHT` and `FERRY_MAX_INPUT_BYTES`; unset ones keep
    /// their defaults, malformed ones are an error naming the variable.
    pub fn from_env() -> Result<VoteSettings, String> {
        let mut s = VoteSettings::default();
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
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
        if let Some(v) = var("FERRY_MAX_INPUT_BYTES") {
            s.max_input_bytes = v.parse().map_err(|_| format!("FERRY_MAX_INPUT_BYTES: {v:?} is not a whole number of bytes"))?;
        }
        Ok(s)
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
        }
    }
}

/// What [`normalize_upload`] did.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum NormalizeOutcome {
    /// The locale result was (re)written from `source`.
    Written { result: String, source: String, rows: usize },
    /// The locale result already reflects `source`, the newest upload.
    UpToDate { result: String, source: String },
    /// The locale result already reflects an upload newer than any listed now.
    Superseded { result: String, source: String },
    /// No upload of the series exists any more (deleted after the event was sent).
    Missing { key: String },
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

/// The newest upload of the series `upload` belongs to, looking under `data/` and `/data/` alike.
async fn newest_upload(store: &Store, upload: &UploadKey) -> Result<Option<(UploadKey, Head)>, VoteError> {
    let prefix = upload.series_prefix();
    let mut best: Option<(UploadKey, Head)> = None;
    for p in [prefix.clone(), format!("/{prefix}")] {
        for head in store.list(&p).await? {
            let Ok(k) = UploadKey::parse(&head.key) else { continue };
            if k.locale != upload.locale || k.stage != upload.stage || k.evno != upload.evno {
                continue;
            }
            let newer = match &best {
                None => true,
                Some((bk, bh)) => (k.stamp, head.last_modified, &head.key) > (bk.stamp, bh.last_modified, &bh.key),
            };
            if newer {
                best = Some((k, head));
            }
        }
    }
    Ok(best)
}

fn stamp_of(head: &Head) -> Option<Stamp> {
    head.metadata.get(META_SOURCE_STAMP).and_then(|s| Stamp::parse(s))
}

/// Normalises the newest upload of the series that `object_key` (decoded) belongs to into its locale
/// result. An event for an older upload, or a repeated one, never makes the result go backwards.
pub async fn normalize_upload(store: &Store, settings: &VoteSettings, object_key: &str) -> Result<NormalizeOutcome, VoteError> {
    let upload = UploadKey::parse(object_key)?;
    let result_key = upload.result_key().to_string();
    for attempt in 1..=MAX_ATTEMPTS {
        let Some((newest, source)) = newest_upload(store, &upload).await? else {
            tracing::warn!(key = object_key, "no upload of this series exists any more; skipping");
            return Ok(NormalizeOutcome::Missing { key: object_key.to_owned() });
        };
        let current = store.head(&result_key).await?;
        let config = load_config(store, upload.evno, settings.defaults).await?;
        if let Some(cur) = &current {
            let cur_stamp = stamp_of(cur);
            if cur_stamp.is_some_and(|s| s > newest.stamp) {
                let src = cur.metadata.get(META_SOURCE_KEY).cloned().unwrap_or_default();
                return Ok(NormalizeOutcome::Superseded { result: result_key, source: src });
            }
            let same_source = cur.metadata.get(META_SOURCE_ETAG) == Some(&source.etag)
                && cur.metadata.get(META_SOURCE_KEY) == Some(&source.key)
                && cur.metadata.get(META_METHOD).map(String::as_str) == Some(config.method.as_str());
            if same_source {
                return Ok(NormalizeOutcome::UpToDate { result: result_key, source: source.key });
            }
        }
        let object = match store.get_capped(&source.key, settings.max_input_bytes).await? {
            Fetched::Object(o) => o,
            Fetched::Missing => {
                tracing::warn!(key = source.key, "upload vanished between listing and reading; looking again");
                continue;
            }
            Fetched::TooLarge { size } => {
                return Err(TallyError::new(&source.key, None, TallyErrorKind::TooLarge { size, limit: settings.max_input_bytes }).into());
            }
        };
        let tally = tally::read_tally(&source.key, &object.body)?;
        let rows = ferry_core::normalize::normalize(config.method, &tally);
        let metadata = HashMap::from([
            (META_SOURCE_KEY.to_owned(), source.key.clone()),
            (META_SOURCE_ETAG.to_owned(), object.head.etag.clone()),
            (META_SOURCE_STAMP.to_owned(), newest.stamp.to_string()),
            (META_METHOD.to_owned(), config.method.as_str().to_owned()),
            (META_ROWS.to_owned(), rows.len().to_string()),
        ]);
        let put = store
            .put(
                &result_key,
                NewObject {
                    body: tally::write_locale_result(&rows),
                    content_type: "text/csv",
                    metadata,
                    precondition: Some(Precondition::replacing(current)),
                },
            )
            .await?;
        match put {
            Put::Written { .. } => {
                tracing::info!(result = result_key, source = source.key, rows = rows.len(), method = %config.method, "locale result written");
                return Ok(NormalizeOutcome::Written { result: result_key, source: source.key, rows: rows.len() });
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
        let reads = listed.iter().map(|(_, h)| store.get_capped(&h.key, settings.max_input_bytes));
        let fetched = futures::future::join_all(reads).await;
        let mut inputs: Vec<(String, String, ferry_core::Tally)> = Vec::with_capacity(listed.len());
        for ((k, h), f) in listed.iter().zip(fetched) {
            match f? {
                Fetched::Object(o) => {
                    let rows = tally::read_locale_result(&h.key, &o.body)?;
                    inputs.push((k.locale.clone(), o.head.etag, rows));
                }
                Fetched::Missing => tracing::warn!(key = h.key, "locale result vanished while merging; leaving it out"),
                Fetched::TooLarge { size } => {
                    return Err(TallyError::new(&h.key, None, TallyErrorKind::TooLarge { size, limit: settings.max_input_bytes }).into());
                }
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
