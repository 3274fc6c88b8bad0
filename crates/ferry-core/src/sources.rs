//! Which sources an export may read: an allowlist in code, mirrored by the worker's IAM role.
//!
//! - [`normalize_prefix`]: an S3 prefix as S3 will read it, with percent-encoding, `//`, `./`, `..`
//!   and a leading `/` resolved, or refused when it climbs above the bucket.
//! - [`DatasetLocation`]: a bucket and a prefix under which datasets may be read.
//! - [`TablePattern`]: a DynamoDB table name or an IAM-style pattern (`ferry-src-*`).
//! - [`SourcePolicy`]: the allowlist, plus the stack's own resources that are never a source
//!   whatever the allowlist says ([`RESERVED_PREFIXES`] of its bucket, its jobs and deliveries
//!   tables). [`SourcePolicy::admit`] checks a [`Source`] and returns it in the normalised form the
//!   worker must read.

use std::fmt;

use crate::jobs::{Source, SubmitError};

/// Prefixes of the stack's own bucket that are never a source: other owners' exports and the vote
/// pipeline's uploads and results.
pub const RESERVED_PREFIXES: [&str; 4] = ["exports/", "data/", "result/", "global/"];
/// S3's longest key, so also its longest useful prefix.
pub const MAX_PREFIX_BYTES: usize = 1024;

/// The message of every refused dataset prefix: the caller learns the rule, not the allowlist.
const PREFIX_REFUSED: &str = "is not under a dataset location exports may read";
const BUCKET_REFUSED: &str = "is not a bucket exports may read";
const TABLE_REFUSED: &str = "is not a table exports may read";

/// Why a prefix has no normal form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PrefixError {
    /// Not valid percent-encoding of UTF-8, or encoded twice.
    #[error("is not valid percent-encoding of UTF-8 (or is encoded twice)")]
    Encoding,
    /// A control character or a backslash, which some tools read as a separator.
    #[error("holds a control character or a backslash")]
    Character,
    /// More `..` than segments before them.
    #[error("climbs above the bucket's root with `..`")]
    Escapes,
    #[error("is longer than {MAX_PREFIX_BYTES} bytes")]
    TooLong,
}

/// `raw` as the prefix S3 lists: percent-decoded once, empty and `.` segments dropped (so `//`, `./`
/// and a leading `/` go), each `..` taking back the segment before it. A trailing `/` is kept, and
/// added when the last segment was `.` or `..` (they name a folder). The empty prefix is the root.
pub fn normalize_prefix(raw: &str) -> Result<String, PrefixError> {
    let decoded = percent_encoding::percent_decode_str(raw).decode_utf8().map_err(|_| PrefixError::Encoding)?;
    // A `%` left after one decoding is a second layer (or a stray): refuse rather than guess.
    if decoded.contains('%') {
        return Err(PrefixError::Encoding);
    }
    if decoded.chars().any(|c| c.is_control() || c == '\\') {
        return Err(PrefixError::Character);
    }
    let mut segments: Vec<&str> = Vec::new();
    let mut folder = decoded.ends_with('/');
    for segment in decoded.split('/') {
        match segment {
            "" => {}
            "." => folder = true,
            ".." => {
                segments.pop().ok_or(PrefixError::Escapes)?;
                folder = true;
            }
            s => {
                segments.push(s);
                folder = decoded.ends_with('/');
            }
        }
    }
    let mut out = segments.join("/");
    if !out.is_empty() && folder {
        out.push('/');
    }
    if out.len() > MAX_PREFIX_BYTES {
        return Err(PrefixError::TooLong);
    }
    Ok(out)
}

/// Whether `name` is a valid S3 bucket name (the subset ferry accepts: 3 to 63 of `a-z0-9.-`).
pub fn is_bucket_name(name: &str) -> bool {
    (3..=63).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

/// Whether `name` is a valid DynamoDB table name.
pub fn is_table_name(name: &str) -> bool {
    (3..=255).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// A configured setting that cannot be used. Names the entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{entry:?}: {message}")]
pub struct SettingError {
    pub entry: String,
    pub message: String,
}

/// A bucket and the prefix under which its objects may be exported. The prefix is normalised and
/// names a folder: empty or ending in `/`, so `datasets/` does not also allow `datasets-private/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatasetLocation {
    bucket: String,
    prefix: String,
}

impl DatasetLocation {
    pub fn new(bucket: &str, prefix: &str) -> Result<DatasetLocation, SettingError> {
        let err = |message: String| SettingError { entry: format!("{bucket}/{prefix}"), message };
        if !is_bucket_name(bucket) {
            return Err(err("not a valid bucket name".into()));
        }
        let mut prefix = normalize_prefix(prefix).map_err(|e| err(format!("prefix {e}")))?;
        if !prefix.is_empty() && !prefix.ends_with('/') {
            prefix.push('/');
        }
        Ok(DatasetLocation { bucket: bucket.to_owned(), prefix })
    }

    /// `bucket/prefix` (or `bucket` alone: the whole bucket).
    pub fn parse(entry: &str) -> Result<DatasetLocation, SettingError> {
        let entry = entry.trim();
        let (bucket, prefix) = entry.split_once('/').unwrap_or((entry, ""));
        DatasetLocation::new(bucket, prefix)
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn holds(&self, bucket: &str, prefix: &str) -> bool {
        self.bucket == bucket && prefix.starts_with(&self.prefix)
    }
}

impl fmt::Display for DatasetLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.bucket, self.prefix)
    }
}

/// A table name, or a pattern in IAM's syntax: `*` any run of characters, `?` any one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TablePattern(String);

impl TablePattern {
    pub fn parse(pattern: &str) -> Result<TablePattern, SettingError> {
        let pattern = pattern.trim();
        let ok = (1..=255).contains(&pattern.len())
            && pattern.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'*' | b'?'));
        if ok {
            Ok(TablePattern(pattern.to_owned()))
        } else {
            Err(SettingError { entry: pattern.to_owned(), message: "not a table name or pattern (`a-zA-Z0-9_.-` and `*`, `?`)".into() })
        }
    }

    /// Whether `name` matches, as IAM matches a resource: the whole name, case-sensitively.
    pub fn matches(&self, name: &str) -> bool {
        let (p, n) = (self.0.as_bytes(), name.as_bytes());
        let (mut i, mut j) = (0, 0);
        // Where the last `*` was, and how much of the name it has taken so far.
        let mut star: Option<(usize, usize)> = None;
        while j < n.len() {
            match p.get(i) {
                Some(b'*') => {
                    star = Some((i, j));
                    i += 1;
                }
                Some(&c) if c == b'?' || c == n[j] => {
                    i += 1;
                    j += 1;
                }
                _ => match star {
                    Some((si, sj)) => {
                        i = si + 1;
                        j = sj + 1;
                        star = Some((si, sj + 1));
                    }
                    None => return false,
                },
            }
        }
        p[i..].iter().all(|&c| c == b'*')
    }
}

impl fmt::Display for TablePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What an export may read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourcePolicy {
    /// The stack's own bucket, whose [`RESERVED_PREFIXES`] are never a source.
    pub own_bucket: String,
    /// The stack's own tables (jobs, deliveries), never a source.
    pub own_tables: Vec<String>,
    /// Where S3 datasets may be read.
    pub datasets: Vec<DatasetLocation>,
    /// Which DynamoDB tables may be read.
    pub tables: Vec<TablePattern>,
}

impl SourcePolicy {
    /// `source` in the form the worker reads (its prefix normalised), or why it may not be read,
    /// naming the field at fault.
    pub fn admit(&self, source: &Source) -> Result<Source, SubmitError> {
        match source {
            Source::S3 { bucket, prefix, format } => {
                let prefix = normalize_prefix(prefix).map_err(|e| SubmitError::new("params.source.prefix", e.to_string()))?;
                if !self.datasets.iter().any(|l| l.bucket == *bucket) {
                    return Err(SubmitError::new("params.source.bucket", BUCKET_REFUSED));
                }
                if *bucket == self.own_bucket && RESERVED_PREFIXES.iter().any(|r| overlaps(r, &prefix)) {
                    return Err(SubmitError::new("params.source.prefix", PREFIX_REFUSED));
                }
                if !self.datasets.iter().any(|l| l.holds(bucket, &prefix)) {
                    return Err(SubmitError::new("params.source.prefix", PREFIX_REFUSED));
                }
                Ok(Source::S3 { bucket: bucket.clone(), prefix, format: *format })
            }
            Source::DynamodbQuery { table, .. } | Source::DynamodbScan { table, .. } => {
                let own = self.own_tables.iter().any(|t| t == table);
                if own || !self.tables.iter().any(|p| p.matches(table)) {
                    return Err(SubmitError::new("params.source.table", TABLE_REFUSED));
                }
                Ok(source.clone())
            }
        }
    }
}

/// Whether listing `prefix` can return a key under `reserved` (either is a prefix of the other).
fn overlaps(reserved: &str, prefix: &str) -> bool {
    reserved.starts_with(prefix) || prefix.starts_with(reserved)
}

/// Parses a comma-separated list, skipping empty entries.
pub fn parse_list<T>(text: &str, parse: impl Fn(&str) -> Result<T, SettingError>) -> Result<Vec<T>, SettingError> {
    text.split(',').map(str::trim).filter(|e| !e.is_empty()).map(parse).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::DatasetFormat;

    #[track_caller]
    fn check_prefix(raw: &str, expect: Result<&str, PrefixError>) {
        assert_eq!(normalize_prefix(raw).as_deref().map_err(|e| *e), expect, "{raw:?}");
    }

    #[test]
    fn prefixes_normalise_as_s3_would_read_them() {
        use PrefixError::*;
        check_prefix("", Ok(""));
        check_prefix("/", Ok(""));
        check_prefix("datasets/", Ok("datasets/"));
        check_prefix("datasets/orders", Ok("datasets/orders"));
        check_prefix("/datasets/orders/", Ok("datasets/orders/"));
        check_prefix("datasets//orders//", Ok("datasets/orders/"));
        check_prefix("./datasets/./orders/", Ok("datasets/orders/"));
        check_prefix("datasets/.", Ok("datasets/"));
        check_prefix("datasets/a/../b/", Ok("datasets/b/"));
        check_prefix("datasets/a/..", Ok("datasets/"));
        check_prefix("exports/", Ok("exports/"));
        check_prefix("/exports/", Ok("exports/"));
        check_prefix("./exports/", Ok("exports/"));
        check_prefix("datasets/../exports/", Ok("exports/"));
        check_prefix("datasets//../exports", Ok("exports"));
        check_prefix("%65xports/", Ok("exports/"));
        check_prefix("datasets/%2E%2E/exports/", Ok("exports/"));
        check_prefix("datasets%2F..%2Fresult/", Ok("result/"));
        check_prefix("datasets/..", Ok(""));
        check_prefix("..", Err(Escapes));
        check_prefix("../exports/", Err(Escapes));
        check_prefix("datasets/../../exports/", Err(Escapes));
        check_prefix("%2E%2E/x", Err(Escapes));
        check_prefix("%252E%252E/x", Err(Encoding));
        check_prefix("datasets/%zz", Err(Encoding));
        check_prefix("datasets/%FF/", Err(Encoding));
        check_prefix("datasets\\..\\exports", Err(Character));
        check_prefix("datasets/\n", Err(Character));
        check_prefix(&"a/".repeat(600), Err(TooLong));
        check_prefix("datasets/ünï cödé/", Ok("datasets/ünï cödé/"));
    }

    #[track_caller]
    fn check_table(pattern: &str, name: &str, expect: bool) {
        assert_eq!(TablePattern::parse(pattern).unwrap().matches(name), expect, "{pattern} ~ {name}");
    }

    #[test]
    fn table_patterns_match_whole_names() {
        check_table("orders", "orders", true);
        check_table("orders", "orders2", false);
        check_table("orders", "Orders", false);
        check_table("ferry-src-*", "ferry-src-orders", true);
        check_table("ferry-src-*", "ferry-src-", true);
        check_table("ferry-src-*", "ferry-dev-jobs", false);
        check_table("ferry-*", "ferry-dev-jobs", true);
        check_table("*", "anything", true);
        check_table("*-orders", "eu-orders", true);
        check_table("*-orders", "eu-orders-old", false);
        check_table("a*b*c", "aXbYc", true);
        check_table("a*b*c", "abcbc", true);
        check_table("a*b*c", "acb", false);
        check_table("shop-??", "shop-eu", true);
        check_table("shop-??", "shop-eur", false);
        assert!(TablePattern::parse("arn:aws:dynamodb:x").is_err());
        assert!(TablePattern::parse("").is_err());
    }

    #[test]
    fn dataset_locations_name_folders() {
        let l = DatasetLocation::parse("lake/datasets").unwrap();
        assert_eq!((l.bucket(), l.prefix()), ("lake", "datasets/"));
        assert_eq!(DatasetLocation::parse("lake").unwrap().prefix(), "");
        assert_eq!(DatasetLocation::parse(" lake//a/./b ").unwrap().to_string(), "lake/a/b/");
        assert!(DatasetLocation::parse("Lake/x/").is_err());
        assert!(DatasetLocation::parse("lake/../x").is_err());
        let list = parse_list("lake/a/, ,other/b", DatasetLocation::parse).unwrap();
        assert_eq!(list.iter().map(ToString::to_string).collect::<Vec<_>>(), ["lake/a/", "other/b/"]);
    }

    fn policy(datasets: &[&str], tables: &[&str]) -> SourcePolicy {
        SourcePolicy {
            own_bucket: "ferry-dev-1".into(),
            own_tables: vec!["ferry-dev-jobs".into(), "ferry-dev-notify-deliveries".into()],
            datasets: datasets.iter().map(|d| DatasetLocation::parse(d).unwrap()).collect(),
            tables: tables.iter().map(|t| TablePattern::parse(t).unwrap()).collect(),
        }
    }

    fn s3(bucket: &str, prefix: &str) -> Source {
        Source::S3 { bucket: bucket.into(), prefix: prefix.into(), format: DatasetFormat::Csv }
    }

    #[track_caller]
    fn check_admit(p: &SourcePolicy, source: Source, expect: Result<&str, &str>) {
        let got = p.admit(&source);
        match (got, expect) {
            (Ok(Source::S3 { prefix, .. }), Ok(want)) => assert_eq!(prefix, want, "{source:?}"),
            (Ok(other), Ok(want)) => assert_eq!(format!("{other:?}"), want, "{source:?}"),
            (Err(e), Err(field)) => assert_eq!(e.field, field, "{source:?}: {e}"),
            (got, expect) => panic!("{source:?}: got {got:?}, expected {expect:?}"),
        }
    }

    #[test]
    fn the_stacks_own_data_is_never_a_source() {
        let default = policy(&["ferry-dev-1/datasets/"], &[]);
        check_admit(&default, s3("ferry-dev-1", "datasets/orders/"), Ok("datasets/orders/"));
        check_admit(&default, s3("ferry-dev-1", "/datasets//orders/"), Ok("datasets/orders/"));
        check_admit(&default, s3("ferry-dev-1", "datasets/a/../orders/"), Ok("datasets/orders/"));
        check_admit(&default, s3("ferry-dev-1", "datasets/"), Ok("datasets/"));
        check_admit(&default, s3("ferry-dev-1", "datasets"), Err("params.source.prefix"));
        check_admit(&default, s3("ferry-dev-1", "datasets-private/"), Err("params.source.prefix"));
        check_admit(&default, s3("other-bucket", "datasets/"), Err("params.source.bucket"));
        // Every spelling that reaches a reserved prefix, under a default and under a careless allowlist.
        let careless = policy(&["ferry-dev-1", "ferry-dev-1/exports/", "ferry-dev-1/data/"], &[]);
        for p in [&default, &careless] {
            for prefix in [
                "",
                "/",
                "e",
                "exports",
                "exports/",
                "exports/victim/",
                "/exports/",
                "./exports/",
                "datasets/../exports/",
                "datasets//../exports",
                "%65xports/",
                "datasets/%2E%2E/exports/",
                "data/",
                "/data/",
                "dat",
                "result/",
                "datasets/../result/x",
                "global/",
                "%67lobal/",
            ] {
                check_admit(p, s3("ferry-dev-1", prefix), Err("params.source.prefix"));
            }
            check_admit(p, s3("ferry-dev-1", "../exports/"), Err("params.source.prefix"));
        }
        // The careless allowlist does open the rest of the bucket.
        check_admit(&careless, s3("ferry-dev-1", "reports/"), Ok("reports/"));
        // Another bucket's `exports/` is just a prefix.
        let lake = policy(&["lake"], &[]);
        check_admit(&lake, s3("lake", "exports/"), Ok("exports/"));
        check_admit(&lake, s3("lake", ""), Ok(""));
    }

    #[test]
    fn tables_are_allowlisted_and_the_stacks_own_never_are() {
        let p = policy(&[], &["orders", "ferry-*"]);
        let scan = |t: &str| Source::DynamodbScan { table: t.into(), segments: 1 };
        let query = |t: &str| Source::DynamodbQuery { table: t.into(), key: "k".into(), value: "v".into() };
        check_admit(&p, scan("orders"), Ok(r#"DynamodbScan { table: "orders", segments: 1 }"#));
        check_admit(&p, scan("ferry-src-orders"), Ok(r#"DynamodbScan { table: "ferry-src-orders", segments: 1 }"#));
        for t in ["ferry-dev-jobs", "ferry-dev-notify-deliveries"] {
            check_admit(&p, scan(t), Err("params.source.table"));
            check_admit(&p, query(t), Err("params.source.table"));
        }
        check_admit(&p, scan("payments"), Err("params.source.table"));
        check_admit(&policy(&[], &[]), scan("orders"), Err("params.source.table"));
    }
}
