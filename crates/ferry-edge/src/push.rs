//! Push: a region's sorted set becomes a regional upload.

use std::collections::HashMap;

use ferry_aws::s3::{NewObject, Put, S3Error, Store};
use ferry_core::csv;
use ferry_core::key::{Stamp, UploadKey};
use ferry_core::ranking::TallyBuilder;
use redis::aio::MultiplexedConnection;

use crate::EdgeError;

/// What to push, and where.
#[derive(Debug, Clone)]
pub struct PushConfig<'a> {
    /// The sorted set: members are `kseq`, scores are votes.
    pub key: &'a str,
    pub evno: u64,
    pub locale: &'a str,
    pub stage: &'a str,
    /// The minute the upload is named after (the current UTC minute on cron). Pushing twice in one
    /// minute overwrites the same object.
    pub stamp: Stamp,
    /// Members asked for per `ZSCAN` call.
    pub page: usize,
}

/// What [`push`] uploaded.
#[derive(Debug, Clone, PartialEq)]
pub struct PushOutcome {
    /// The object key of the upload.
    pub upload: String,
    pub etag: String,
    /// Distinct members uploaded.
    pub members: usize,
    /// Sum of their scores.
    pub sum: f64,
}

/// Metadata on an upload: the sorted set it was read from.
pub const META_SOURCE: &str = "ferry-source";
pub const META_ROWS: &str = "ferry-rows";

/// Reads the sorted set `cfg.key` with `ZSCAN` (never the whole set in one reply), checks every member
/// against the regional contract, and uploads it whole. Nothing is uploaded when a member is bad or
/// the set is empty. `progress(done, total)` is called after each page.
///
/// `ZSCAN` does not block Redis while the API servers read it; votes that arrive during the scan may
/// or may not be in this upload, and the next push carries them.
pub async fn push(
    store: &Store,
    conn: &mut MultiplexedConnection,
    cfg: &PushConfig<'_>,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<PushOutcome, EdgeError> {
    let upload = UploadKey { evno: cfg.evno, locale: cfg.locale.to_owned(), stage: cfg.stage.to_owned(), stamp: cfg.stamp };
    // Built from parts, so parse it back: a locale or stage outside the grammar is refused here,
    // before the normalizer would skip the upload.
    let upload = UploadKey::parse(&upload.to_string()).map_err(EdgeError::BadKey)?.to_string();

    let total: u64 = redis::cmd("ZCARD").arg(cfg.key).query_async(conn).await.map_err(EdgeError::redis(cfg.key, "ZCARD"))?;
    if total == 0 {
        return Err(EdgeError::EmptySet { key: cfg.key.to_owned() });
    }
    let mut builder = TallyBuilder::with_capacity(usize::try_from(total).unwrap_or(0));
    let mut cursor = String::from("0");
    let mut page: Vec<(Vec<u8>, Vec<u8>)> = Vec::with_capacity(cfg.page);
    loop {
        let (next, flat): (String, Vec<Vec<u8>>) = redis::cmd("ZSCAN")
            .arg(cfg.key)
            .arg(&cursor)
            .arg("COUNT")
            .arg(cfg.page.max(1))
            .query_async(conn)
            .await
            .map_err(EdgeError::redis(cfg.key, "ZSCAN"))?;
        page.clear();
        let mut it = flat.into_iter();
        while let (Some(member), Some(score)) = (it.next(), it.next()) {
            page.push((member, score));
        }
        builder.add_page(cfg.key, &page)?;
        progress(builder.len() as u64, total.max(builder.len() as u64));
        if next == "0" {
            break;
        }
        cursor = next;
    }
    if builder.is_empty() {
        return Err(EdgeError::EmptySet { key: cfg.key.to_owned() });
    }
    let tally = builder.finish();
    let sum: f64 = tally.values().iter().sum();
    let body = csv::write_tally(&tally);
    let metadata = HashMap::from([(META_SOURCE.to_owned(), format!("redis:{}", cfg.key)), (META_ROWS.to_owned(), tally.len().to_string())]);
    // Unconditional: the key names the minute, and a rerun in the same minute means to replace it.
    let object = NewObject { body, content_type: "text/csv", metadata, precondition: None };
    let etag = match store.put(&upload, object).await? {
        Put::Written { etag } => etag,
        // Without a precondition only a concurrent conditional writer can cause this; the next run retries.
        Put::Conflict => {
            return Err(EdgeError::S3(S3Error::new(store.bucket(), &upload, "PutObject", None, "a concurrent conditional write won")));
        }
    };
    Ok(PushOutcome { upload, etag, members: tally.len(), sum })
}
