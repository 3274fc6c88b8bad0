//! The S3 key grammar. One place decides what an upload, a locale result and a global result are named.
//!
//! - upload: `data/{evno}/{locale}-{stage}-{yyyyMMddHHmm}.csv` (a leading `/` is tolerated)
//! - locale result: `result/{evno}/{stage}/result-{locale}.csv`
//! - global result: `global/{evno}/{stage}/result-global.csv`

use std::fmt;

use crate::normalize::Method;

/// Why a key is not part of the grammar.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("key {key:?} is not {expected}: {reason}")]
pub struct KeyError {
    pub key: String,
    pub expected: &'static str,
    pub reason: &'static str,
}

/// A minute timestamp `yyyyMMddHHmm`, ordered chronologically.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Stamp(u64);

impl Stamp {
    pub fn parse(s: &str) -> Option<Stamp> {
        if s.len() != 12 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let n = |r: std::ops::Range<usize>| s[r].parse::<u32>().ok();
        let (year, month, day, hour, minute) = (n(0..4)?, n(4..6)?, n(6..8)?, n(8..10)?, n(10..12)?);
        let valid = (1..=days_in_month(year, month)).contains(&day) && hour < 24 && minute < 60;
        valid.then(|| Stamp(s.parse().unwrap_or(0)))
    }
}

/// Days of `month` (1 to 12) in `year` of the proleptic Gregorian calendar; 0 for any other month.
fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400)) => 29,
        2 => 28,
        _ => 0,
    }
}

impl Stamp {
    /// The minute (UTC) that `secs` since the Unix epoch falls in.
    pub fn from_unix_seconds(secs: i64) -> Stamp {
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400);
        // Days to civil date (proleptic Gregorian), after H. Hinnant's `civil_from_days`.
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + i64::from(month <= 2);
        let (hour, minute) = (rem / 3600, (rem % 3600) / 60);
        let n = (((year * 100 + month) * 100 + day) * 100 + hour) * 100 + minute;
        Stamp(n.max(0) as u64)
    }

    /// Seconds since the Unix epoch at the start of this minute (UTC).
    pub fn to_unix_seconds(self) -> i64 {
        let n = self.0 as i64;
        let (year, month, day) = (n / 100_000_000, n / 1_000_000 % 100, n / 10_000 % 100);
        let (hour, minute) = (n / 100 % 100, n % 100);
        // Civil date to days, after H. Hinnant's `days_from_civil`.
        let y = if month <= 2 { year - 1 } else { year };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let doy = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        let days = era * 146_097 + doe - 719_468;
        days * 86_400 + hour * 3600 + minute * 60
    }
}

impl fmt::Display for Stamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:012}", self.0)
    }
}

fn is_locale(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase())
}

fn is_stage(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

fn parse_evno(s: &str) -> Option<u64> {
    if s.is_empty() || s.starts_with('0') || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok().filter(|&n| n > 0)
}

/// A regional upload: `data/{evno}/{locale}-{stage}-{yyyyMMddHHmm}.csv`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UploadKey {
    pub evno: u64,
    pub locale: String,
    pub stage: String,
    pub stamp: Stamp,
}

impl UploadKey {
    const EXPECTED: &'static str = "an upload key data/{evno}/{locale}-{stage}-{yyyyMMddHHmm}.csv";

    /// Parses an object key (already decoded). A leading `/` is accepted, as older uploaders wrote one.
    pub fn parse(key: &str) -> Result<UploadKey, KeyError> {
        let err = |reason| KeyError { key: key.to_owned(), expected: Self::EXPECTED, reason };
        let rest = key.strip_prefix('/').unwrap_or(key);
        let rest = rest.strip_prefix("data/").ok_or_else(|| err("it is not under data/"))?;
        let (evno, file) = rest.split_once('/').ok_or_else(|| err("it has no event folder"))?;
        let evno = parse_evno(evno).ok_or_else(|| err("the event number is not a positive integer"))?;
        let stem = file.strip_suffix(".csv").ok_or_else(|| err("it does not end in .csv"))?;
        let mut parts = stem.split('-');
        let (Some(locale), Some(stage), Some(stamp), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            return Err(err("the file name is not {locale}-{stage}-{yyyyMMddHHmm}"));
        };
        if !is_locale(locale) {
            return Err(err("the locale is not lowercase letters"));
        }
        if !is_stage(stage) {
            return Err(err("the stage is not lowercase letters or digits"));
        }
        let stamp = Stamp::parse(stamp).ok_or_else(|| err("the timestamp is not a valid yyyyMMddHHmm"))?;
        Ok(UploadKey { evno, locale: locale.to_owned(), stage: stage.to_owned(), stamp })
    }

    /// The listing prefix (without any leading `/`) under which every upload of this
    /// (evno, locale, stage) lives, and nothing else.
    pub fn series_prefix(&self) -> String {
        format!("data/{}/{}-{}-", self.evno, self.locale, self.stage)
    }

    /// Where the normalised result of this upload goes.
    pub fn result_key(&self) -> ResultKey {
        ResultKey { evno: self.evno, stage: self.stage.clone(), locale: self.locale.clone() }
    }
}

impl fmt::Display for UploadKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "data/{}/{}-{}-{}.csv", self.evno, self.locale, self.stage, self.stamp)
    }
}

/// A locale result: `result/{evno}/{stage}/result-{locale}.csv`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ResultKey {
    pub evno: u64,
    pub stage: String,
    pub locale: String,
}

impl ResultKey {
    const EXPECTED: &'static str = "a locale result key result/{evno}/{stage}/result-{locale}.csv";

    pub fn parse(key: &str) -> Result<ResultKey, KeyError> {
        let err = |reason| KeyError { key: key.to_owned(), expected: Self::EXPECTED, reason };
        let rest = key.strip_prefix("result/").ok_or_else(|| err("it is not under result/"))?;
        let mut parts = rest.split('/');
        let (Some(evno), Some(stage), Some(file), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            return Err(err("it is not result/{evno}/{stage}/{file}"));
        };
        let evno = parse_evno(evno).ok_or_else(|| err("the event number is not a positive integer"))?;
        if !is_stage(stage) {
            return Err(err("the stage is not lowercase letters or digits"));
        }
        let locale = file
            .strip_prefix("result-")
            .and_then(|f| f.strip_suffix(".csv"))
            .ok_or_else(|| err("the file name is not result-{locale}.csv"))?;
        if !is_locale(locale) {
            return Err(err("the locale is not lowercase letters"));
        }
        Ok(ResultKey { evno, stage: stage.to_owned(), locale: locale.to_owned() })
    }

    /// The listing prefix holding every locale result of this (evno, stage).
    pub fn stage_prefix(evno: u64, stage: &str) -> String {
        format!("result/{evno}/{stage}/result-")
    }

    pub fn global_key(&self) -> GlobalKey {
        GlobalKey { evno: self.evno, stage: self.stage.clone() }
    }
}

impl fmt::Display for ResultKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "result/{}/{}/result-{}.csv", self.evno, self.stage, self.locale)
    }
}

/// The global result: `global/{evno}/{stage}/result-global.csv`. It lives outside `result/` so that
/// writing it can never trigger the merger again.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GlobalKey {
    pub evno: u64,
    pub stage: String,
}

impl fmt::Display for GlobalKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "global/{}/{}/result-global.csv", self.evno, self.stage)
    }
}

/// Where the optional per-event settings live.
pub fn config_key(evno: u64) -> String {
    format!("config/{evno}.json")
}

/// One upload of a series as the bucket holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredUpload {
    /// The object key as stored (a leading `/` kept).
    pub object_key: String,
    pub upload: UploadKey,
    pub etag: String,
    /// When the bucket stored it (S3's `LastModified`), in seconds since the epoch.
    pub stored_at: i64,
}

impl StoredUpload {
    /// Whether its stamp (UTC) is more than `max_skew_secs` after the bucket stored it: a future-dated
    /// name or an uploader whose clock runs ahead. Such an upload never becomes the current one, or
    /// it would stay "newest" for as long as its stamp is in the future.
    pub fn stamped_ahead(&self, max_skew_secs: u64) -> bool {
        let skew = i64::try_from(max_skew_secs).unwrap_or(i64::MAX);
        self.upload.stamp.to_unix_seconds() > self.stored_at.saturating_add(skew)
    }
}

/// What a locale result records about the upload it was built from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BuiltFrom<'a> {
    pub object_key: &'a str,
    pub etag: &'a str,
    /// `None` when the result names no method this version knows.
    pub method: Option<Method>,
}

/// Which upload of a series its locale result should reflect, and whether it already does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Current<'a> {
    /// No upload can be used: none exists, or every one is stamped ahead.
    Nothing,
    /// The result was built from this upload (same object, same ETag) with the wanted method.
    UpToDate(&'a StoredUpload),
    /// The result must be (re)built from this upload.
    Build(&'a StoredUpload),
}

/// Chooses the current upload of a series: the newest by (stamp, stored time, key) of those not
/// stamped ahead. `uploads` is every upload known to exist, including the one the result was built
/// from if that still exists, so a result is never replaced by an older upload while its own source
/// stands. A result built from an upload that is gone, was overwritten or is stamped ahead is rebuilt
/// from the newest one that remains: no single upload can freeze a locale.
pub fn current_upload<'a>(uploads: &'a [StoredUpload], built: Option<BuiltFrom<'_>>, method: Method, max_skew_secs: u64) -> Current<'a> {
    let newest = uploads
        .iter()
        .filter(|u| !u.stamped_ahead(max_skew_secs))
        .max_by(|a, b| (a.upload.stamp, a.stored_at, &a.object_key).cmp(&(b.upload.stamp, b.stored_at, &b.object_key)));
    let Some(newest) = newest else { return Current::Nothing };
    let built_from_it = built.is_some_and(|b| b.object_key == newest.object_key && b.etag == newest.etag && b.method == Some(method));
    if built_from_it { Current::UpToDate(newest) } else { Current::Build(newest) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check_upload(key: &str, expect: Option<(u64, &str, &str, &str)>) {
        let got = UploadKey::parse(key).ok().map(|k| (k.evno, k.locale.clone(), k.stage.clone(), k.stamp.to_string()));
        let expect = expect.map(|(e, l, s, t)| (e, l.to_owned(), s.to_owned(), t.to_owned()));
        assert_eq!(got, expect, "{key}");
    }

    #[test]
    fn upload_keys() {
        check_upload("data/7/jp-prod-202611221530.csv", Some((7, "jp", "prod", "202611221530")));
        check_upload("/data/7/jp-prod-202611221530.csv", Some((7, "jp", "prod", "202611221530")));
        check_upload("data/12/na-qa-202601010000.csv", Some((12, "na", "qa", "202601010000")));
        check_upload("data/0/jp-prod-202611221530.csv", None);
        check_upload("data/07/jp-prod-202611221530.csv", None);
        check_upload("data/x/jp-prod-202611221530.csv", None);
        check_upload("data/7/JP-prod-202611221530.csv", None);
        check_upload("data/7/jp-prod-202613221530.csv", None);
        check_upload("data/7/jp-prod-202602310000.csv", None);
        check_upload("data/7/jp-prod-20261122153.csv", None);
        check_upload("data/7/jp-prod-202611221530.txt", None);
        check_upload("data/7/jp-prod-x-202611221530.csv", None);
        check_upload("data/7/sub/jp-prod-202611221530.csv", None);
        check_upload("result/7/prod/result-jp.csv", None);
        check_upload("data/7/jp prod-202611221530.csv", None);
    }

    #[test]
    fn result_keys_round_trip() {
        let k = ResultKey::parse("result/7/prod/result-jp.csv").unwrap();
        assert_eq!(k.to_string(), "result/7/prod/result-jp.csv");
        assert_eq!(k.global_key().to_string(), "global/7/prod/result-global.csv");
        assert!(ResultKey::parse("result/7/prod/result-global.csv.tmp").is_err());
        assert!(ResultKey::parse("global/7/prod/result-global.csv").is_err());
        assert!(ResultKey::parse("result/7/prod/extra/result-jp.csv").is_err());
        let u = UploadKey::parse("data/7/kr-qa-202611221530.csv").unwrap();
        assert_eq!(u.result_key().to_string(), "result/7/qa/result-kr.csv");
        assert_eq!(u.series_prefix(), "data/7/kr-qa-");
        assert_eq!(u.to_string(), "data/7/kr-qa-202611221530.csv");
    }

    #[test]
    fn stamps_from_unix_time() {
        assert_eq!(Stamp::from_unix_seconds(0).to_string(), "197001010000");
        assert_eq!(Stamp::from_unix_seconds(1_795_361_459).to_string(), "202611221530");
        assert_eq!(Stamp::from_unix_seconds(951_782_400).to_string(), "200002290000");
    }

    #[test]
    fn stamps_to_unix_time_and_back() {
        for secs in [0, 951_782_400, 1_795_361_400, 4_102_444_800, 253_402_300_740] {
            let stamp = Stamp::from_unix_seconds(secs);
            assert_eq!(stamp.to_unix_seconds(), secs, "{stamp}");
        }
        assert_eq!(Stamp::parse("202611221530").unwrap().to_unix_seconds(), 1_795_361_400);
        assert_eq!(Stamp::parse("999912312359").unwrap().to_unix_seconds(), 253_402_300_740);
    }

    const NOW: i64 = 1_795_361_459; // 2026-11-22 15:30:59 UTC
    const HOUR: u64 = 3600;

    fn stored(key: &str, etag: &str, stored_at: i64) -> StoredUpload {
        StoredUpload { object_key: key.to_owned(), upload: UploadKey::parse(key).unwrap(), etag: etag.to_owned(), stored_at }
    }

    fn built<'a>(key: &'a str, etag: &'a str) -> Option<BuiltFrom<'a>> {
        Some(BuiltFrom { object_key: key, etag, method: Some(Method::Share) })
    }

    #[track_caller]
    fn check_current(uploads: &[StoredUpload], built: Option<BuiltFrom<'_>>, expect: &str) {
        let got = match current_upload(uploads, built, Method::Share, HOUR) {
            Current::Nothing => "nothing".to_owned(),
            Current::UpToDate(u) => format!("up to date {}@{}", u.object_key, u.etag),
            Current::Build(u) => format!("build {}@{}", u.object_key, u.etag),
        };
        assert_eq!(got, expect);
    }

    #[test]
    fn uploads_stamped_ahead_of_their_storing_never_become_current() {
        let future = stored("data/7/jp-prod-999912312359.csv", "f", NOW);
        let skewed = stored("data/7/jp-prod-202611221731.csv", "s", NOW); // stamped 2 h ahead
        let slightly = stored("data/7/jp-prod-202611221600.csv", "l", NOW); // 29 min ahead: within the skew
        let current = stored("data/7/jp-prod-202611221530.csv", "c", NOW);
        let older = stored("data/7/jp-prod-202611221500.csv", "o", NOW - 1800);
        assert!(future.stamped_ahead(HOUR) && skewed.stamped_ahead(HOUR));
        assert!(!slightly.stamped_ahead(HOUR) && !current.stamped_ahead(HOUR) && !current.stamped_ahead(0));
        assert!(!skewed.stamped_ahead(3 * HOUR));

        check_current(std::slice::from_ref(&future), None, "nothing");
        check_current(&[], built("data/7/jp-prod-202611221530.csv", "c"), "nothing");
        check_current(&[future.clone(), current.clone(), older.clone()], None, "build data/7/jp-prod-202611221530.csv@c");
        check_current(
            &[future.clone(), skewed.clone(), slightly.clone(), current.clone()],
            None,
            "build data/7/jp-prod-202611221600.csv@l",
        );
        // A result built from the future upload (as older versions did) does not block the current one.
        let from_future = built("data/7/jp-prod-999912312359.csv", "f");
        check_current(&[future.clone(), current.clone()], from_future, "build data/7/jp-prod-202611221530.csv@c");
        check_current(std::slice::from_ref(&current), from_future, "build data/7/jp-prod-202611221530.csv@c");
        check_current(
            &[future, current.clone()],
            built("data/7/jp-prod-202611221530.csv", "c"),
            "up to date data/7/jp-prod-202611221530.csv@c",
        );
    }

    #[test]
    fn the_result_follows_the_newest_upload_that_exists() {
        let new = stored("data/7/tw-prod-202611221600.csv", "n", NOW + 1800);
        let old = stored("/data/7/tw-prod-202611221500.csv", "o", NOW - 1800);
        let from_new = built("data/7/tw-prod-202611221600.csv", "n");
        check_current(&[old.clone(), new.clone()], from_new, "up to date data/7/tw-prod-202611221600.csv@n");
        // The newest deleted: rebuilt from the newest that remains.
        check_current(std::slice::from_ref(&old), from_new, "build /data/7/tw-prod-202611221500.csv@o");
        // The same key overwritten: a new ETag is a new upload.
        check_current(
            &[old.clone(), stored("data/7/tw-prod-202611221600.csv", "n2", NOW + 1900)],
            from_new,
            "build data/7/tw-prod-202611221600.csv@n2",
        );
        // Another method configured since.
        let other_method = Some(BuiltFrom { object_key: "data/7/tw-prod-202611221600.csv", etag: "n", method: Some(Method::Rank) });
        check_current(std::slice::from_ref(&new), other_method, "build data/7/tw-prod-202611221600.csv@n");
        // Equal stamps: the later stored, then the greater key.
        let same_minute = stored("data/7/tw-prod-202611221600.csv", "x", NOW + 1700);
        let slashed = stored("/data/7/tw-prod-202611221600.csv", "y", NOW + 1700);
        check_current(&[same_minute.clone(), new.clone()], None, "build data/7/tw-prod-202611221600.csv@n");
        check_current(&[same_minute, slashed], None, "build data/7/tw-prod-202611221600.csv@x");
    }

    #[test]
    fn stamps_are_real_dates_and_times() {
        for ok in ["202601310000", "202602280000", "202402290000", "200002290000", "202604302359", "202612312359", "000002290000"] {
            assert_eq!(Stamp::parse(ok).map(|s| s.to_string()).as_deref(), Some(ok));
        }
        for bad in [
            "202602310000", // 31 February
            "202602300000",
            "202602290000", // 2026 is not a leap year
            "190002290000", // nor is 1900
            "202604310000", // 31 April
            "202611310000",
            "202613010000", // month 13
            "202600010000", // month 0
            "202601000000", // day 0
            "202601320000",
            "202601012400",
            "202601010060",
        ] {
            assert_eq!(Stamp::parse(bad), None, "{bad}");
        }
        // Such a name is not an upload key: it is skipped like any other malformed one.
        let e = UploadKey::parse("data/7/jp-prod-202602310000.csv").unwrap_err();
        assert_eq!(e.reason, "the timestamp is not a valid yyyyMMddHHmm");
    }

    #[test]
    fn stamps_order_chronologically() {
        let a = Stamp::parse("202611221530").unwrap();
        let b = Stamp::parse("202611221531").unwrap();
        let c = Stamp::parse("202701010000").unwrap();
        assert!(a < b && b < c);
    }
}
