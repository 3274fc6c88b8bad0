//! Why an export failed, and what of it the job's owner sees ([`ExportError::public`]).

use ferry_aws::exports::{self, SourceErrorKind};
use ferry_aws::jobs::JobStoreError;
use ferry_aws::s3::S3Error;
use ferry_core::jobs::{ExportParams, Source, SubmitError};
use ferry_core::public::{ErrorCode, PublicError, leaks_internals};

use super::{dataset, xlsx};

/// Why an export failed. Names the object, table or line at fault: this is for the log; the job's
/// owner sees [`ExportError::public`].
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The source is not one exports may read (any more).
    #[error("source refused by the allowlist: {0}")]
    Refused(SubmitError),
    /// The dataset's bucket or objects do not exist or may not be read.
    #[error("s3://{bucket}/{prefix}: {message}")]
    DatasetUnavailable { bucket: String, prefix: String, message: String },
    #[error(transparent)]
    Source(#[from] exports::SourceError),
    #[error(transparent)]
    Dataset(#[from] dataset::DatasetError),
    #[error(transparent)]
    S3(#[from] S3Error),
    #[error(transparent)]
    Store(#[from] JobStoreError),
    #[error(transparent)]
    Xlsx(#[from] xlsx::XlsxBuildError),
    /// A dataset object was overwritten or removed after the export listed it.
    #[error("s3://{bucket}/{key}: {} since the export listed it (ETag {etag})", if *.removed { "removed" } else { "changed" })]
    DatasetChanged { bucket: String, key: String, etag: String, removed: bool },
    #[error("s3://{bucket}/{key}: {size} bytes is over the limit of {limit} for one dataset object")]
    ObjectTooLarge { bucket: String, key: String, size: u64, limit: u64 },
    /// A dataset object under the cap whose footer says it decodes to more (a Parquet "bomb").
    #[error("s3://{bucket}/{key}: decodes to {decoded} bytes, over the limit of {limit} for one dataset object")]
    DecodesTooLarge { bucket: String, key: String, decoded: u64, limit: u64 },
    /// More output columns than an xlsx sheet holds.
    #[error("{columns} columns, over xlsx's limit of {limit} columns a sheet")]
    TooManyColumns { columns: usize, limit: usize },
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    #[error("local file {path}: {message}")]
    Io { path: String, message: String },
}

impl ExportError {
    pub fn kind(&self) -> &'static str {
        match self {
            ExportError::Refused(_) => "SourceRefused",
            ExportError::DatasetUnavailable { .. } => "SourceUnavailable",
            ExportError::Source(_) => "SourceError",
            ExportError::Dataset(_) | ExportError::ObjectTooLarge { .. } | ExportError::DecodesTooLarge { .. } => "BadDataset",
            ExportError::DatasetChanged { .. } => "DatasetChanged",
            ExportError::TooManyColumns { .. } => "TooManyColumns",
            ExportError::S3(_) => "S3Error",
            ExportError::Store(_) => "StoreError",
            ExportError::Xlsx(_) => "XlsxError",
            ExportError::Checkpoint(_) => "BadCheckpoint",
            ExportError::Io { .. } => "IoError",
        }
    }

    /// What the job's owner sees. Built from the error's kind and from what the owner named, never
    /// from a cause's text: a missing and a forbidden source read the same, and an object is named
    /// only by its key under the prefix the owner gave.
    pub fn public(&self, params: &ExportParams) -> PublicError {
        match self {
            ExportError::Refused(_) | ExportError::DatasetUnavailable { .. } => PublicError::code(ErrorCode::SourceUnavailable),
            ExportError::Source(e) => match e.kind() {
                SourceErrorKind::Unavailable => PublicError::code(ErrorCode::SourceUnavailable),
                SourceErrorKind::Invalid => PublicError::new(
                    ErrorCode::BadSourceData,
                    "the table cannot be read as asked; check params.source.key against its partition key",
                ),
                SourceErrorKind::Other => PublicError::code(ErrorCode::Internal),
            },
            ExportError::Dataset(e) => guarded(ErrorCode::BadSourceData, format!("{}: {}", object_name(params, &e.key), e.message)),
            // Not `source_unavailable`: that one message stands for every missing or forbidden source
            // and names nothing, while this object was there when the export began.
            ExportError::DatasetChanged { key, removed, .. } => guarded(
                ErrorCode::BadSourceData,
                format!(
                    "{} {} during the export; submit the job again to export the dataset as it is now",
                    object_name(params, key),
                    if *removed { "was removed" } else { "changed" }
                ),
            ),
            ExportError::ObjectTooLarge { key, size, limit, .. } => guarded(
                ErrorCode::TooLarge,
                format!("{}: {size} bytes is over the limit of {limit} for one dataset object", object_name(params, key)),
            ),
            ExportError::DecodesTooLarge { key, decoded, limit, .. } => guarded(
                ErrorCode::TooLarge,
                format!("{}: decodes to {decoded} bytes, over the limit of {limit} for one dataset object", object_name(params, key)),
            ),
            ExportError::TooManyColumns { columns, limit } => PublicError::new(
                ErrorCode::TooLarge,
                format!(
                    "the export has {columns} columns, over xlsx's limit of {limit} columns a sheet; \
                     name at most {limit} in params.columns, or export as csv or jsonl"
                ),
            ),
            ExportError::S3(_) | ExportError::Store(_) | ExportError::Xlsx(_) | ExportError::Checkpoint(_) | ExportError::Io { .. } => {
                PublicError::code(ErrorCode::Internal)
            }
        }
    }
}

/// `message` under `code`, unless it looks like it carries an internal detail (a parser quoting
/// something unexpected): then the code's default message.
fn guarded(code: ErrorCode, message: String) -> PublicError {
    if leaks_internals(&message) { PublicError::code(code) } else { PublicError::new(code, message) }
}

/// A dataset object as its owner may see it named: its key relative to the prefix they gave.
fn object_name(params: &ExportParams, key: &str) -> String {
    match &params.source {
        Source::S3 { prefix, .. } => match key.strip_prefix(prefix.as_str()) {
            Some(rest) if !rest.is_empty() => format!("object {rest:?} under the prefix"),
            Some(_) => "the object at the prefix".into(),
            None => "an object under the prefix".into(),
        },
        _ => "an object under the prefix".into(),
    }
}

pub(super) fn dataset_error(bucket: &str, prefix: &str, e: S3Error) -> ExportError {
    if e.is_missing_or_denied() {
        ExportError::DatasetUnavailable { bucket: bucket.into(), prefix: prefix.into(), message: e.to_string() }
    } else {
        ExportError::S3(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_reach_the_owner_as_codes_naming_only_their_own_objects() {
        let params: ExportParams = serde_json::from_value(serde_json::json!({
            "source": {"type": "s3", "bucket": "lake", "prefix": "datasets/shop/", "format": "csv"},
            "format": "csv",
        }))
        .unwrap();
        let dataset = |key: &str, message: &str| {
            ExportError::Dataset(dataset::DatasetError { bucket: "lake".into(), key: key.into(), message: message.into() })
        };
        let check = |e: ExportError, code: ErrorCode, message: &str| assert_eq!(e.public(&params), PublicError::new(code, message), "{e}");
        check(
            dataset("datasets/shop/2026/a.csv", "column \"x\" does not exist"),
            ErrorCode::BadSourceData,
            "object \"2026/a.csv\" under the prefix: column \"x\" does not exist",
        );
        check(dataset("elsewhere/b.csv", "bad"), ErrorCode::BadSourceData, "an object under the prefix: bad");
        // A parser quoting something that looks internal: the code's own message instead.
        check(dataset("datasets/shop/a.csv", "near arn:aws:s3:::x"), ErrorCode::BadSourceData, ErrorCode::BadSourceData.default_message());
        let too_large = ExportError::ObjectTooLarge { bucket: "lake".into(), key: "datasets/shop/big.csv".into(), size: 9, limit: 8 };
        check(too_large, ErrorCode::TooLarge, "object \"big.csv\" under the prefix: 9 bytes is over the limit of 8 for one dataset object");
        let bomb = ExportError::DecodesTooLarge { bucket: "lake".into(), key: "datasets/shop/bomb.parquet".into(), decoded: 90, limit: 8 };
        check(
            bomb,
            ErrorCode::TooLarge,
            "object \"bomb.parquet\" under the prefix: decodes to 90 bytes, over the limit of 8 for one dataset object",
        );
        let changed =
            |key: &str, removed| ExportError::DatasetChanged { bucket: "lake".into(), key: key.into(), etag: "e1".into(), removed };
        let again = "during the export; submit the job again to export the dataset as it is now";
        check(
            changed("datasets/shop/2026/b.csv", true),
            ErrorCode::BadSourceData,
            &format!("object \"2026/b.csv\" under the prefix was removed {again}"),
        );
        check(
            changed("datasets/shop/c.csv", false),
            ErrorCode::BadSourceData,
            &format!("object \"c.csv\" under the prefix changed {again}"),
        );
        let s3 =
            |code: &str, message: &str| S3Error::new("lake", "datasets/shop/", "ListObjectsV2", Some(code), format!("{code}: {message}"));
        let unavailable = ErrorCode::SourceUnavailable.default_message();
        for (code, m) in
            [("AccessDenied", "User: arn:aws:sts::123456789012:assumed-role/w"), ("NoSuchBucket", "The specified bucket does not exist")]
        {
            check(dataset_error("lake", "datasets/shop/", s3(code, m)), ErrorCode::SourceUnavailable, unavailable);
        }
        // The code decides, not the text: a message that merely starts like a code is a service failure.
        let lookalike = S3Error::new("lake", "datasets/shop/", "ListObjectsV2", None, "NoSuchBucket: but S3 sent no code");
        check(dataset_error("lake", "datasets/shop/", lookalike), ErrorCode::Internal, ErrorCode::Internal.default_message());
        check(
            dataset_error("lake", "datasets/shop/", s3("SlowDown", "reduce your rate")),
            ErrorCode::Internal,
            ErrorCode::Internal.default_message(),
        );
        check(ExportError::Refused(SubmitError::new("params.source.prefix", "x")), ErrorCode::SourceUnavailable, unavailable);
        check(ExportError::Checkpoint("arn:aws:...".into()), ErrorCode::Internal, ErrorCode::Internal.default_message());
    }
}
