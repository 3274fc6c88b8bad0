//! The items of a batch, in input order, from where the checkpoint left off: inline in the params,
//! or an item file read by ranges pinned to the ETag recorded at submit.

use ferry_aws::s3::{Fetched, Pinned, Store};
use ferry_core::batch::{BatchParams, Item, ItemReader, Items, ReadCursor};
use ferry_core::public::{ErrorCode, PublicError};

use crate::batch::CHUNK_BYTES;
use crate::kind::{RunError, Step};

/// The items, in input order, from where the checkpoint left off.
pub(super) enum Source {
    Inline {
        values: Vec<serde_json::Value>,
        next: u64,
    },
    File {
        store: Store,
        key: String,
        etag: String,
        size: u64,
        reader: ItemReader,
        /// Bytes of the object requested so far (pushed, or on their way in `next_range`).
        fetched: u64,
        /// The next range, read in the background while the items before it are sent: the
        /// dispatch loop never waits on S3 between two ranges.
        next_range: Option<tokio::task::JoinHandle<Result<Pinned, ferry_aws::S3Error>>>,
        finished: bool,
    },
}

/// Starts reading the range after `fetched`, if any is left.
fn read_ahead(
    store: &Store,
    key: &str,
    etag: &str,
    size: u64,
    fetched: &mut u64,
) -> Option<tokio::task::JoinHandle<Result<Pinned, ferry_aws::S3Error>>> {
    if *fetched >= size {
        return None;
    }
    let (start, end) = (*fetched, (*fetched + CHUNK_BYTES).min(size));
    *fetched = end;
    let (store, key, etag) = (store.clone(), key.to_owned(), etag.to_owned());
    Some(tokio::spawn(async move { store.get_range_if_match(&key, start, end, &etag).await }))
}

impl Source {
    pub(super) fn open(step: &Step<'_>, params: &BatchParams, cursor: &ReadCursor) -> Result<Source, RunError> {
        Ok(match &params.items {
            Items::Inline(values) => Source::Inline { values: values.clone(), next: cursor.seq },
            Items::Object { bucket, key, format, etag, size, .. } => {
                let (Some(etag), Some(size)) = (etag.clone(), *size) else {
                    return Err(RunError::internal("BadParams", "an item file without its recorded ETag and size"));
                };
                let store = Store::new(step.env.s3.clone(), bucket.clone());
                let mut fetched = cursor.offset;
                let next_range = read_ahead(&store, key, &etag, size, &mut fetched);
                Source::File {
                    store,
                    key: key.clone(),
                    etag,
                    size,
                    reader: ItemReader::new(*format, cursor.clone()),
                    fetched,
                    next_range,
                    finished: false,
                }
            }
        })
    }

    pub(super) async fn next(&mut self) -> Result<Option<Item>, RunError> {
        match self {
            Source::Inline { values, next } => {
                let item = usize::try_from(*next).ok().and_then(|i| values.get(i)).map(|v| Item::new(*next, v.clone()));
                if item.is_some() {
                    *next += 1;
                }
                Ok(item)
            }
            Source::File { store, key, etag, size, reader, fetched, next_range, finished } => loop {
                let bad = |e: ferry_core::batch::ItemError| {
                    RunError::new("BadItem", PublicError::new(ErrorCode::BadSourceData, format!("the item file: {e}")), e)
                };
                if let Some(item) = reader.next_item() {
                    return item.map(Some).map_err(bad);
                }
                if let Some(range) = next_range.take() {
                    let read = range.await.map_err(|e| RunError::internal("S3Error", e))?;
                    *next_range = read_ahead(store, key, etag, *size, fetched);
                    let body = match read {
                        Ok(Pinned::Read(Fetched::Object(o))) => o.body,
                        Ok(_) => {
                            let public = PublicError::new(
                                ErrorCode::BadSourceData,
                                "the item file changed or was removed since the job was submitted; submit it again",
                            );
                            return Err(RunError::new(
                                "ItemFileChanged",
                                public,
                                format!("s3://{}/{key}: not ETag {etag} any more", store.bucket()),
                            ));
                        }
                        Err(e) => return Err(RunError::new("S3Error", PublicError::code(ErrorCode::SourceUnavailable), e)),
                    };
                    reader.push(&body);
                    continue;
                }
                if !*finished {
                    *finished = true;
                    if let Some(item) = reader.finish() {
                        return item.map(Some).map_err(bad);
                    }
                }
                return Ok(None);
            },
        }
    }

    pub(super) fn cursor(&self) -> ReadCursor {
        match self {
            Source::Inline { next, .. } => ReadCursor { seq: *next, ..ReadCursor::default() },
            Source::File { reader, .. } => reader.cursor(),
        }
    }
}
