//! The vote pipeline's decisions, apart from the reads and writes that carry them out.
//!
//! - The normalizer: which uploads belong to a series ([`series_upload`]), which source a result
//!   names that a listing may have missed ([`unlisted_source`]), and what to do about the result
//!   ([`normalize_plan`]: write it from an upload, or leave it as it is and say why).
//! - The merger: which locale results to read and whether they fit the memory ([`merge_reads`]),
//!   and whether the global result already reflects what was read ([`merge_plan`]).
//! - What each output records of the inputs it was built from: the `META_*` metadata names,
//!   [`built_from`], [`locale_result_metadata`] and [`Manifest`].

use std::collections::HashMap;

use crate::config::EventConfig;
use crate::key::{self, BuiltFrom, Current, ResultKey, StoredUpload, UploadKey};
use crate::normalize::Method;

/// Metadata written on a locale result: which upload it came from.
pub const META_SOURCE_KEY: &str = "ferry-source-key";
pub const META_SOURCE_ETAG: &str = "ferry-source-etag";
pub const META_SOURCE_STAMP: &str = "ferry-source-stamp";
pub const META_METHOD: &str = "ferry-method";
pub const META_ROWS: &str = "ferry-rows";
/// Metadata written on a global result: `locale=etag` of every locale result it merged, `;`-separated.
pub const META_INPUTS: &str = "ferry-inputs";
/// Metadata written on a global result: the weight it applied to each locale, `locale=weight`, `;`-separated.
pub const META_WEIGHTS: &str = "ferry-weights";

/// An object's user metadata, by name.
pub type Metadata = HashMap<String, String>;

/// The object `object_key` as an upload of the same series (evno, locale, stage) as `series`, if it
/// is one.
pub fn series_upload(series: &UploadKey, object_key: String, etag: String, stored_at: i64) -> Option<StoredUpload> {
    let k = UploadKey::parse(&object_key).ok()?;
    let same_series = k.evno == series.evno && k.locale == series.locale && k.stage == series.stage;
    same_series.then_some(StoredUpload { object_key, upload: k, etag, stored_at })
}

/// What a locale result's metadata says it was built from.
pub fn built_from(result: &Metadata) -> Option<BuiltFrom<'_>> {
    Some(BuiltFrom {
        object_key: result.get(META_SOURCE_KEY)?,
        etag: result.get(META_SOURCE_ETAG)?,
        method: result.get(META_METHOD).and_then(|m| m.parse().ok()),
    })
}

/// The source the current result names when the listing of its series did not find it: it may have
/// arrived after the listing began, so it must be looked up and counted, or the result would go back
/// to an older upload.
pub fn unlisted_source<'m>(uploads: &[StoredUpload], result: Option<&'m Metadata>) -> Option<&'m str> {
    let built = result.and_then(built_from)?;
    (!uploads.iter().any(|u| u.object_key == built.object_key)).then_some(built.object_key)
}

/// What the normalizer does with a series' locale result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NormalizePlan<'a> {
    /// No upload of the series exists any more (deleted after the event was sent).
    Missing,
    /// Every upload of the series is stamped more than the allowed clock skew after it was stored.
    StampedAhead,
    /// The result already reflects this upload, the current one, with the wanted method.
    UpToDate(&'a StoredUpload),
    /// The result must be (re)written from this upload.
    Write(&'a StoredUpload),
}

/// Decides the normalizer's step: `uploads` is every upload of the series known to exist (the
/// listing, plus the result's own source if [`unlisted_source`] named one and it exists), `result`
/// the current locale result's metadata (`None`: there is none). The current upload is the newest
/// not stamped ahead ([`key::current_upload`]), so a late or repeated event never moves the result
/// to an older upload while a newer one exists.
pub fn normalize_plan<'a>(uploads: &'a [StoredUpload], result: Option<&Metadata>, method: Method, max_skew_secs: u64) -> NormalizePlan<'a> {
    match key::current_upload(uploads, result.and_then(built_from), method, max_skew_secs) {
        Current::Nothing if uploads.is_empty() => NormalizePlan::Missing,
        Current::Nothing => NormalizePlan::StampedAhead,
        Current::UpToDate(u) => NormalizePlan::UpToDate(u),
        Current::Build(u) => NormalizePlan::Write(u),
    }
}

/// The metadata of a locale result built from `source` (whose body read had ETag `etag`).
pub fn locale_result_metadata(source: &StoredUpload, etag: &str, method: Method, rows: usize) -> Metadata {
    HashMap::from([
        (META_SOURCE_KEY.to_owned(), source.object_key.clone()),
        (META_SOURCE_ETAG.to_owned(), etag.to_owned()),
        (META_SOURCE_STAMP.to_owned(), source.upload.stamp.to_string()),
        (META_METHOD.to_owned(), method.as_str().to_owned()),
        (META_ROWS.to_owned(), rows.to_string()),
    ])
}

/// One locale result a merge reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergeRead {
    pub locale: String,
    pub object_key: String,
}

/// Which locale results a merge reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadPlan {
    /// These, by locale.
    Read(Vec<MergeRead>),
    /// Together they are over the limit: every one is held at once, so nothing is read.
    TooLarge { total: u64 },
}

/// Decides what a merge of (evno, stage) reads from a listing of `(object key, size)` under
/// [`ResultKey::stage_prefix`]: the locale results of that stage, by locale, unless their sizes
/// total more than `limit`.
pub fn merge_reads(evno: u64, stage: &str, listed: impl IntoIterator<Item = (String, u64)>, limit: u64) -> ReadPlan {
    let mut total = 0u64;
    let mut reads: Vec<MergeRead> = listed
        .into_iter()
        .filter_map(|(object_key, size)| {
            let k = ResultKey::parse(&object_key).ok().filter(|k| k.evno == evno && k.stage == stage)?;
            total += size;
            Some(MergeRead { locale: k.locale, object_key })
        })
        .collect();
    if total > limit {
        return ReadPlan::TooLarge { total };
    }
    reads.sort_by(|a, b| a.locale.cmp(&b.locale));
    ReadPlan::Read(reads)
}

/// What a global result records of its inputs: `locale=etag` of each locale result merged, and the
/// weight applied to each, both `;`-separated in the order merged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub inputs: String,
    pub weights: String,
}

impl Manifest {
    /// The manifest of `(locale, etag)` inputs merged with the weights of `config`.
    pub fn new<'a>(inputs: impl IntoIterator<Item = (&'a str, &'a str)> + Clone, config: &EventConfig) -> Manifest {
        let join = |parts: Vec<String>| parts.join(";");
        Manifest {
            inputs: join(inputs.clone().into_iter().map(|(l, etag)| format!("{l}={etag}")).collect()),
            weights: join(inputs.into_iter().map(|(l, _)| format!("{l}={}", config.weight(l))).collect()),
        }
    }

    /// Whether a global result with `metadata` was built from exactly these inputs and weights.
    pub fn is_recorded_in(&self, metadata: &Metadata) -> bool {
        metadata.get(META_INPUTS) == Some(&self.inputs) && metadata.get(META_WEIGHTS) == Some(&self.weights)
    }

    /// The metadata of a global result of `rows` rows built from these inputs with `method`.
    pub fn metadata(&self, method: Method, rows: usize) -> Metadata {
        HashMap::from([
            (META_INPUTS.to_owned(), self.inputs.clone()),
            (META_WEIGHTS.to_owned(), self.weights.clone()),
            (META_METHOD.to_owned(), method.as_str().to_owned()),
            (META_ROWS.to_owned(), rows.to_string()),
        ])
    }
}

/// What the merger does with the global result once it has read its inputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MergePlan {
    /// The global result was already built from exactly these inputs and weights.
    UpToDate(Manifest),
    /// The global result must be (re)written from the inputs.
    Write(Manifest),
}

/// Decides the merger's step from the `(locale, etag)` of the inputs read, the event's config and
/// the current global result's metadata (`None`: there is none).
pub fn merge_plan<'a>(
    inputs: impl IntoIterator<Item = (&'a str, &'a str)> + Clone,
    config: &EventConfig,
    current: Option<&Metadata>,
) -> MergePlan {
    let manifest = Manifest::new(inputs, config);
    if current.is_some_and(|m| manifest.is_recorded_in(m)) { MergePlan::UpToDate(manifest) } else { MergePlan::Write(manifest) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Defaults;

    const HOUR: u64 = 3600;
    /// 2026-11-22 15:30 UTC.
    const NOW: i64 = 1_795_361_400;

    fn stored(key: &str, etag: &str, stored_at: i64) -> StoredUpload {
        StoredUpload { object_key: key.to_owned(), upload: UploadKey::parse(key).unwrap(), etag: etag.to_owned(), stored_at }
    }

    fn result_meta(key: &str, etag: &str, method: &str) -> Metadata {
        Metadata::from([
            (META_SOURCE_KEY.to_owned(), key.to_owned()),
            (META_SOURCE_ETAG.to_owned(), etag.to_owned()),
            (META_METHOD.to_owned(), method.to_owned()),
        ])
    }

    #[track_caller]
    fn check_normalize(uploads: &[StoredUpload], result: Option<Metadata>, expect: &str) {
        let got = match normalize_plan(uploads, result.as_ref(), Method::Share, HOUR) {
            NormalizePlan::Missing => "missing".to_owned(),
            NormalizePlan::StampedAhead => "stamped ahead".to_owned(),
            NormalizePlan::UpToDate(u) => format!("up to date {}@{}", u.object_key, u.etag),
            NormalizePlan::Write(u) => format!("write {}@{}", u.object_key, u.etag),
        };
        assert_eq!(got, expect);
    }

    #[test]
    fn normalizer_plan() {
        let old = stored("data/7/jp-prod-202611221500.csv", "o", NOW - 1800);
        let new = stored("/data/7/jp-prod-202611221530.csv", "n", NOW);
        let future = stored("data/7/jp-prod-209901010000.csv", "f", NOW);
        let both = [old.clone(), new.clone()];
        check_normalize(&[], None, "missing");
        check_normalize(&[], Some(result_meta("data/7/jp-prod-202611221500.csv", "o", "share")), "missing");
        check_normalize(std::slice::from_ref(&future), None, "stamped ahead");
        check_normalize(&both, None, "write /data/7/jp-prod-202611221530.csv@n");
        check_normalize(
            &both,
            Some(result_meta("/data/7/jp-prod-202611221530.csv", "n", "share")),
            "up to date /data/7/jp-prod-202611221530.csv@n",
        );
        // Overwritten in place, built with another method, or from an older upload: written again.
        check_normalize(
            &both,
            Some(result_meta("/data/7/jp-prod-202611221530.csv", "x", "share")),
            "write /data/7/jp-prod-202611221530.csv@n",
        );
        check_normalize(
            &both,
            Some(result_meta("/data/7/jp-prod-202611221530.csv", "n", "rank")),
            "write /data/7/jp-prod-202611221530.csv@n",
        );
        check_normalize(
            &both,
            Some(result_meta("/data/7/jp-prod-202611221530.csv", "n", "future")),
            "write /data/7/jp-prod-202611221530.csv@n",
        );
        check_normalize(&[old, future], Some(Metadata::new()), "write data/7/jp-prod-202611221500.csv@o");
    }

    #[test]
    fn series_membership_and_unlisted_sources() {
        let series = UploadKey::parse("data/7/jp-prod-202611221530.csv").unwrap();
        let member = |key: &str| series_upload(&series, key.to_owned(), "e".to_owned(), NOW).map(|u| u.upload.stamp.to_string());
        assert_eq!(member("/data/7/jp-prod-202611221500.csv").as_deref(), Some("202611221500"));
        assert_eq!(member("data/7/kr-prod-202611221500.csv"), None);
        assert_eq!(member("data/7/jp-test-202611221500.csv"), None);
        assert_eq!(member("data/8/jp-prod-202611221500.csv"), None);
        assert_eq!(member("data/7/jp-prod-notastamp.csv"), None);

        let listed = [stored("data/7/jp-prod-202611221500.csv", "o", NOW)];
        let named = |key: &str| result_meta(key, "e", "share");
        assert_eq!(unlisted_source(&listed, None), None);
        assert_eq!(unlisted_source(&listed, Some(&Metadata::new())), None);
        assert_eq!(unlisted_source(&listed, Some(&named("data/7/jp-prod-202611221500.csv"))), None);
        let late = named("data/7/jp-prod-202611221530.csv");
        assert_eq!(unlisted_source(&listed, Some(&late)), Some("data/7/jp-prod-202611221530.csv"));
    }

    #[test]
    fn locale_result_records_its_source() {
        let source = stored("data/7/jp-prod-202611221530.csv", "listed", NOW);
        let meta = locale_result_metadata(&source, "read", Method::Rank, 3);
        assert_eq!(
            built_from(&meta),
            Some(BuiltFrom { object_key: "data/7/jp-prod-202611221530.csv", etag: "read", method: Some(Method::Rank) })
        );
        assert_eq!((meta[META_SOURCE_STAMP].as_str(), meta[META_ROWS].as_str()), ("202611221530", "3"));
    }

    #[test]
    fn merger_reads_its_stage_by_locale_within_the_limit() {
        let listed = || {
            [
                ("result/7/prod/result-kr.csv", 5),
                ("result/7/prod/result-jp.csv", 5),
                ("result/7/prod/junk.csv", 100),
                ("result/7/prodx/result-na.csv", 100),
            ]
            .map(|(k, s)| (k.to_owned(), s))
        };
        let read = |limit| match merge_reads(7, "prod", listed(), limit) {
            ReadPlan::Read(r) => Ok(r.into_iter().map(|r| format!("{}:{}", r.locale, r.object_key)).collect::<Vec<_>>()),
            ReadPlan::TooLarge { total } => Err(total),
        };
        assert_eq!(read(10), Ok(vec!["jp:result/7/prod/result-jp.csv".to_owned(), "kr:result/7/prod/result-kr.csv".to_owned()]));
        assert_eq!(read(9), Err(10));
        assert_eq!(merge_reads(7, "prod", [], 0), ReadPlan::Read(vec![]));
    }

    #[test]
    fn merger_plan_compares_inputs_and_weights() {
        let mut config = EventConfig::from_defaults(Defaults::default());
        config.weights.insert("kr".to_owned(), 0.0);
        let inputs = [("jp", "a"), ("kr", "b")];
        let manifest = Manifest::new(inputs, &config);
        assert_eq!((manifest.inputs.as_str(), manifest.weights.as_str()), ("jp=a;kr=b", "jp=1;kr=0"));
        let meta = manifest.metadata(Method::Share, 4);
        assert_eq!((meta[META_METHOD].as_str(), meta[META_ROWS].as_str()), ("share", "4"));
        assert_eq!(merge_plan(inputs, &config, None), MergePlan::Write(manifest.clone()));
        assert_eq!(merge_plan(inputs, &config, Some(&meta)), MergePlan::UpToDate(manifest.clone()));
        assert_eq!(
            merge_plan([("jp", "a"), ("kr", "c")], &config, Some(&meta)),
            MergePlan::Write(Manifest::new([("jp", "a"), ("kr", "c")], &config))
        );
        config.weights.insert("kr".to_owned(), 2.0);
        assert!(matches!(merge_plan(inputs, &config, Some(&meta)), MergePlan::Write(_)));
        let mut inputs_only = meta.clone();
        inputs_only.remove(META_WEIGHTS);
        assert!(matches!(merge_plan(inputs, &EventConfig::from_defaults(Defaults::default()), Some(&inputs_only)), MergePlan::Write(_)));
    }
}
