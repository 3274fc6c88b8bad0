//! A bucket and the operations ferry performs on it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::operation::get_object::GetObjectOutput;

use crate::Error;
use aws_sdk_s3::primitives::ByteStream;

/// The SDK's S3 client, named here so callers hold one without depending on the SDK.
pub use aws_sdk_s3::Client as S3Client;

/// An S3 call that failed. The [`crate::Error`] names the bucket, key (`s3://bucket/key`) and
/// operation, and holds S3's error code (`NoSuchBucket`, `AccessDenied`...) when it answered with one.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct S3Error(#[from] pub Error);

/// Why [`Store::download_to_file`] failed: the read, or the local file it was written to (kept apart
/// so that a full disk is not reported as a failure of S3).
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error(transparent)]
    S3(#[from] S3Error),
    #[error("local file {}: {source}", .path.display())]
    Io { path: PathBuf, source: std::io::Error },
}

fn resource(bucket: &str, key: &str) -> String {
    format!("s3://{bucket}/{key}")
}

impl S3Error {
    /// A failure of `op` on `key` in `bucket` that S3 did not report itself (a write it accepted but
    /// that lost a race), with the code it stands for, if any.
    pub fn new(bucket: &str, key: &str, op: &'static str, code: Option<&str>, message: impl Into<String>) -> S3Error {
        let e = Error::other("S3", op, resource(bucket, key), message);
        S3Error(match code {
            Some(c) => e.with_code(c),
            None => e,
        })
    }

    /// S3's error code, when it answered with one.
    pub fn code(&self) -> Option<&str> {
        self.0.code()
    }

    /// Whether S3 said the bucket or object is missing or may not be read (the two a caller is never
    /// told apart), rather than that the service failed. Decided by S3's code, never by the text.
    pub fn is_missing_or_denied(&self) -> bool {
        matches!(
            self.code(),
            Some(
                "NoSuchBucket"
                    | "NoSuchKey"
                    | "NotFound"
                    | "AccessDenied"
                    | "Forbidden"
                    | "AllAccessDisabled"
                    | "PermanentRedirect"
                    | "InvalidBucketName"
            )
        )
    }
}

/// A bucket.
#[derive(Debug, Clone)]
pub struct Store {
    client: aws_sdk_s3::Client,
    bucket: String,
}

/// What a HEAD or a listing tells about an object.
#[derive(Debug, Clone, PartialEq)]
pub struct Head {
    pub key: String,
    /// Without surrounding quotes.
    pub etag: String,
    pub size: u64,
    /// Seconds since the epoch.
    pub last_modified: i64,
    /// User metadata (empty from listings).
    pub metadata: HashMap<String, String>,
}

/// An object read whole.
#[derive(Debug, Clone)]
pub struct Object {
    pub head: Head,
    pub body: Vec<u8>,
}

/// The outcome of [`Store::get_capped`].
#[derive(Debug)]
pub enum Fetched {
    Object(Object),
    /// The object does not exist (deleted between the event and the read).
    Missing,
    /// The object is larger than the cap; its body was not read.
    TooLarge {
        size: u64,
    },
}

/// The outcome of [`Store::get_capped_if_match`].
#[derive(Debug)]
pub enum Pinned {
    /// The object with the ETag asked for, or none at all ([`Fetched::Missing`]), or one over the cap.
    Read(Fetched),
    /// The object exists but no longer has the ETag asked for (412): it was overwritten.
    Changed,
}

/// A condition on a put, so that concurrent writers cannot overwrite each other unseen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Precondition {
    /// Write only if the object still has this ETag.
    IfMatch(String),
    /// Write only if no object exists under the key.
    IfAbsent,
}

impl Precondition {
    /// Write only over the object that was read (`None`: only if there still is none).
    pub fn replacing(read: Option<Head>) -> Precondition {
        match read {
            Some(h) => Precondition::IfMatch(h.etag),
            None => Precondition::IfAbsent,
        }
    }
}

/// The outcome of [`Store::put`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Put {
    Written {
        etag: String,
    },
    /// The precondition did not hold: someone else wrote first.
    Conflict,
}

/// An object to write.
#[derive(Debug, Clone, Default)]
pub struct NewObject<'a> {
    pub body: Vec<u8>,
    pub content_type: &'a str,
    pub metadata: HashMap<String, String>,
    pub precondition: Option<Precondition>,
}

fn unquote(etag: Option<&str>) -> String {
    etag.unwrap_or_default().trim_matches('"').to_owned()
}

fn status<E>(e: &SdkError<E, aws_sdk_s3::config::http::HttpResponse>) -> Option<u16> {
    e.raw_response().map(|r| r.status().as_u16())
}

impl Store {
    pub fn new(client: aws_sdk_s3::Client, bucket: impl Into<String>) -> Store {
        Store { client, bucket: bucket.into() }
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The SDK client, for the other adapters of this crate (multipart uploads, presigning).
    pub(crate) fn client(&self) -> &aws_sdk_s3::Client {
        &self.client
    }

    /// The same client over another bucket (a job's output may lie in a bucket other than the
    /// default one).
    pub fn in_bucket(&self, bucket: impl Into<String>) -> Store {
        Store { client: self.client.clone(), bucket: bucket.into() }
    }

    pub(crate) fn error<E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static>(
        &self,
        key: &str,
        op: &'static str,
        e: SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
    ) -> S3Error {
        // A HEAD answer has no body to carry a code: name a denial by its status.
        let denied = e.as_service_error().and_then(|s| s.code()).is_none() && status(&e) == Some(403);
        let error = Error::sdk("S3", op, resource(&self.bucket, key), e);
        S3Error(if denied { error.with_code("Forbidden") } else { error })
    }

    /// A failure of `op` on `key` without an SDK error (a body that broke off, a link not signed).
    pub(crate) fn failure(&self, key: &str, op: &'static str, message: impl Into<String>) -> S3Error {
        S3Error::new(&self.bucket, key, op, None, message)
    }

    /// HEAD; `None` when the object does not exist.
    pub async fn head(&self, key: &str) -> Result<Option<Head>, S3Error> {
        match self.client.head_object().bucket(&self.bucket).key(key).send().await {
            Ok(o) => Ok(Some(Head {
                key: key.to_owned(),
                etag: unquote(o.e_tag()),
                size: o.content_length().unwrap_or(0).max(0) as u64,
                last_modified: o.last_modified().map_or(0, |t| t.secs()),
                metadata: o.metadata().cloned().unwrap_or_default(),
            })),
            Err(e) if status(&e) == Some(404) => Ok(None),
            Err(e) => Err(self.error(key, "HeadObject", e)),
        }
    }

    /// Reads a whole object unless it is larger than `cap` bytes. The body goes straight into one
    /// buffer of its size, so reading an object costs its size in memory once, not twice.
    pub async fn get_capped(&self, key: &str, cap: u64) -> Result<Fetched, S3Error> {
        match self.client.get_object().bucket(&self.bucket).key(key).send().await {
            Ok(out) => self.read_capped(key, cap, out).await,
            Err(e) if status(&e) == Some(404) => Ok(Fetched::Missing),
            Err(e) => Err(self.error(key, "GetObject", e)),
        }
    }

    /// [`Store::get_capped`] of the object only while it has ETag `etag` (`If-Match`): a read of
    /// exactly the version that was listed or read before, never of one written since.
    pub async fn get_capped_if_match(&self, key: &str, cap: u64, etag: &str) -> Result<Pinned, S3Error> {
        match self.client.get_object().bucket(&self.bucket).key(key).if_match(format!("\"{etag}\"")).send().await {
            Ok(out) => Ok(Pinned::Read(self.read_capped(key, cap, out).await?)),
            Err(e) if status(&e) == Some(404) => Ok(Pinned::Read(Fetched::Missing)),
            Err(e) if status(&e) == Some(412) => Ok(Pinned::Changed),
            Err(e) => Err(self.error(key, "GetObject", e)),
        }
    }

    /// Bytes `start..end` of the object while it has ETag `etag`: an object read piece by piece,
    /// every piece from the same version. `end` past the object's end reads to its end.
    pub async fn get_range_if_match(&self, key: &str, start: u64, end: u64, etag: &str) -> Result<Pinned, S3Error> {
        if end <= start {
            let head = Head { key: key.to_owned(), etag: etag.to_owned(), size: 0, last_modified: 0, metadata: HashMap::new() };
            return Ok(Pinned::Read(Fetched::Object(Object { head, body: Vec::new() })));
        }
        let range = format!("bytes={start}-{}", end - 1);
        match self.client.get_object().bucket(&self.bucket).key(key).range(range).if_match(format!("\"{etag}\"")).send().await {
            Ok(out) => Ok(Pinned::Read(self.read_capped(key, end - start, out).await?)),
            Err(e) if status(&e) == Some(404) => Ok(Pinned::Read(Fetched::Missing)),
            Err(e) if status(&e) == Some(412) => Ok(Pinned::Changed),
            Err(e) => Err(self.error(key, "GetObject", e)),
        }
    }

    async fn read_capped(&self, key: &str, cap: u64, mut out: GetObjectOutput) -> Result<Fetched, S3Error> {
        let size = out.content_length().unwrap_or(0).max(0) as u64;
        if size > cap {
            return Ok(Fetched::TooLarge { size });
        }
        let head = Head {
            key: key.to_owned(),
            etag: unquote(out.e_tag()),
            size,
            last_modified: out.last_modified().map_or(0, |t| t.secs()),
            metadata: out.metadata().cloned().unwrap_or_default(),
        };
        let body_error = |e: aws_smithy_types::byte_stream::error::Error| self.failure(key, "GetObject (body)", e.to_string());
        let mut body = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        while let Some(chunk) = out.body.try_next().await.map_err(body_error)? {
            // A body longer than its Content-Length said is held to the cap all the same.
            if (body.len() + chunk.len()) as u64 > cap {
                return Ok(Fetched::TooLarge { size: (body.len() + chunk.len()) as u64 });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Fetched::Object(Object { head, body }))
    }

    /// Streams an object into a new local file at `path` (replacing one there), chunk by chunk: an
    /// object of any size costs a chunk of memory, not its size. Returns the bytes written.
    pub async fn download_to_file(&self, key: &str, path: &Path) -> Result<u64, DownloadError> {
        use tokio::io::AsyncWriteExt;

        let mut out = self.client.get_object().bucket(&self.bucket).key(key).send().await.map_err(|e| self.error(key, "GetObject", e))?;
        let io = |source| DownloadError::Io { path: path.to_owned(), source };
        let mut file = tokio::fs::File::create(path).await.map_err(io)?;
        let mut written = 0u64;
        while let Some(chunk) = out.body.try_next().await.map_err(|e| self.failure(key, "GetObject (body)", e.to_string()))? {
            file.write_all(&chunk).await.map_err(io)?;
            written += chunk.len() as u64;
        }
        file.flush().await.map_err(io)?;
        Ok(written)
    }

    /// Deletes an object (absent is fine: S3 answers a delete of a missing key with success).
    pub async fn delete(&self, key: &str) -> Result<(), S3Error> {
        self.client.delete_object().bucket(&self.bucket).key(key).send().await.map(|_| ()).map_err(|e| self.error(key, "DeleteObject", e))
    }

    /// Writes an object whole, honouring its precondition.
    pub async fn put(&self, key: &str, object: NewObject<'_>) -> Result<Put, S3Error> {
        let mut req = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type(object.content_type)
            .set_metadata(Some(object.metadata))
            .body(ByteStream::from(object.body));
        req = match object.precondition {
            Some(Precondition::IfMatch(etag)) => req.if_match(format!("\"{etag}\"")),
            Some(Precondition::IfAbsent) => req.if_none_match("*"),
            None => req,
        };
        match req.send().await {
            Ok(o) => Ok(Put::Written { etag: unquote(o.e_tag()) }),
            // 412: the condition failed; 409: a concurrent conditional write is in flight;
            // 404: If-Match on an object deleted meanwhile. Each means "someone else changed it".
            Err(e) if matches!(status(&e), Some(412 | 409 | 404)) => Ok(Put::Conflict),
            Err(e) => Err(self.error(key, "PutObject", e)),
        }
    }

    /// Lists every object under `prefix`, following continuation tokens.
    pub async fn list(&self, prefix: &str) -> Result<Vec<Head>, S3Error> {
        let mut pages = self.client.list_objects_v2().bucket(&self.bucket).prefix(prefix).into_paginator().send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.error(prefix, "ListObjectsV2", e))?;
            for o in page.contents() {
                out.push(Head {
                    key: o.key().unwrap_or_default().to_owned(),
                    etag: unquote(o.e_tag()),
                    size: o.size().unwrap_or(0).max(0) as u64,
                    last_modified: o.last_modified().map_or(0, |t| t.secs()),
                    metadata: HashMap::new(),
                });
            }
        }
        Ok(out)
    }
}
