//! Pull: the global result replaces a region's live ranking, all at once or not at all.
//!
//! Keys beside the live ranking `KEY`:
//! - `KEY:load:{uuid}`: the temporary key being loaded (expires after an hour if a pull dies);
//! - `KEY:prev`: the ranking the last pull replaced (`RENAME KEY:prev KEY` rolls back);
//! - `KEY:meta`: a hash of what was loaded: `etag`, `source`, `last_modified`, `members`, `loaded_at`.

use std::time::Duration;

use ferry_aws::s3::{Fetched, Store};
use ferry_core::csv::{TallyError, TallyErrorKind};
use ferry_core::key::GlobalKey;
use ferry_core::ranking::{self, RankingError, TopChanges};
use redis::aio::MultiplexedConnection;

use crate::chat::Webhook;
use crate::{ChatError, EdgeError, connect};

/// What to pull, and where to load it.
#[derive(Debug, Clone)]
pub struct PullConfig<'a> {
    /// The live sorted set the API servers read.
    pub key: &'a str,
    pub evno: u64,
    pub stage: &'a str,
    /// Global results larger than this are refused unread.
    pub max_input_bytes: u64,
    /// Members per `ZADD` while loading.
    pub batch: usize,
    /// How many places the chat notice compares.
    pub top: usize,
    /// Load even when the global result is the one loaded last.
    pub force: bool,
}

impl PullConfig<'_> {
    pub fn prev_key(&self) -> String {
        format!("{}:prev", self.key)
    }
    pub fn meta_key(&self) -> String {
        format!("{}:meta", self.key)
    }
}

/// What [`pull`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum PullOutcome {
    /// The live key now holds the global result `source`.
    Loaded { source: String, etag: String, members: usize, first: bool, changes: TopChanges, summary: String },
    /// The live key already holds this global result (same ETag); nothing was read or written.
    UpToDate { source: String, etag: String },
    /// A newer global result was loaded meanwhile by another pull; this one was discarded.
    Superseded { source: String, etag: String },
}

/// Whether the chat heard about a pull.
#[derive(Debug)]
pub enum ChatStatus {
    /// No webhook is configured.
    NotConfigured,
    /// Nothing worth a notice happened (up to date, superseded).
    NotNeeded,
    Sent,
    /// The notice was not delivered. Logged; the pull's own outcome stands.
    Failed(ChatError),
}

/// A pull and its notice.
#[derive(Debug)]
pub struct PullReport {
    pub result: Result<PullOutcome, EdgeError>,
    pub chat: ChatStatus,
}

/// Moves the temporary key over the live one in one step, keeping the replaced ranking as `KEY:prev`.
/// Refuses (and drops the temporary key) when a newer global result was loaded meanwhile. `UNLINK`
/// frees the old ranking off the main thread, so the swap does not stall readers of a large set.
const SWAP: &str = r"
local loaded = tonumber(redis.call('HGET', KEYS[4], 'last_modified') or '-1')
if loaded > tonumber(ARGV[1]) then
  redis.call('UNLINK', KEYS[1])
  return 0
end
if redis.call('EXISTS', KEYS[1]) == 0 then
  return redis.error_reply('the temporary key is gone')
end
redis.call('UNLINK', KEYS[3])
if redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('RENAME', KEYS[2], KEYS[3])
end
redis.call('RENAME', KEYS[1], KEYS[2])
redis.call('PERSIST', KEYS[2])
redis.call('HSET', KEYS[4], 'etag', ARGV[2], 'source', ARGV[3], 'last_modified', ARGV[1], 'members', ARGV[4], 'loaded_at', ARGV[5])
return 1
";

/// How long an abandoned temporary key lives.
const TMP_TTL: Duration = Duration::from_secs(3600);

/// Reads the global result of (`evno`, `stage`), validates it whole, and replaces the live sorted set
/// `cfg.key` with it atomically: readers see the old ranking or the new one, never a mix. A missing,
/// malformed or empty global result leaves Redis untouched. `progress(done, total)` follows the load.
pub async fn pull(
    store: &Store,
    conn: &mut MultiplexedConnection,
    cfg: &PullConfig<'_>,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<PullOutcome, EdgeError> {
    let global = GlobalKey { evno: cfg.evno, stage: cfg.stage.to_owned() }.to_string();
    let source = format!("s3://{}/{global}", store.bucket());
    let missing = || EdgeError::MissingGlobal { bucket: store.bucket().to_owned(), key: global.clone() };
    let meta = cfg.meta_key();

    // A HEAD first, so a cron rerun with nothing new costs one request and no download.
    let head = store.head(&global).await?.ok_or_else(missing)?;
    if !cfg.force {
        let (loaded, live): (Option<String>, bool) = redis::pipe()
            .cmd("HGET")
            .arg(&meta)
            .arg("etag")
            .cmd("EXISTS")
            .arg(cfg.key)
            .query_async(conn)
            .await
            .map_err(EdgeError::redis(&meta, "HGET"))?;
        if live && loaded.as_deref() == Some(head.etag.as_str()) {
            return Ok(PullOutcome::UpToDate { source, etag: head.etag });
        }
    }

    let object = match store.get_capped(&global, cfg.max_input_bytes).await? {
        Fetched::Object(o) => o,
        Fetched::Missing => return Err(missing()),
        Fetched::TooLarge { size } => {
            let kind = TallyErrorKind::TooLarge { size, limit: cfg.max_input_bytes };
            return Err(RankingError::from(TallyError::new(&global, None, kind)).into());
        }
    };
    // Everything is checked before Redis is touched.
    let rows = ranking::read_global(&global, &object.body)?;

    let tmp = format!("{}:load:{}", cfg.key, uuid::Uuid::new_v4());
    let loaded = load(conn, &tmp, &rows, cfg.batch, progress).await;
    let swapped = match loaded {
        Ok(()) => swap(conn, cfg, &tmp, &object.head, &source, rows.len()).await,
        Err(e) => Err(e),
    };
    let swapped = match swapped {
        Ok(swapped) => swapped,
        Err(e) => {
            // Best effort: the TTL removes it anyway.
            let _: Result<i64, _> = redis::cmd("UNLINK").arg(&tmp).query_async(conn).await;
            return Err(e);
        }
    };
    if !swapped {
        return Ok(PullOutcome::Superseded { source, etag: object.head.etag });
    }

    // From here on the live ranking has changed: nothing below may fail the pull.
    let last = match top_of(conn, &cfg.prev_key(), cfg.top).await {
        Ok(last) => last,
        Err(e) => {
            tracing::warn!(error = %e, "could not read the replaced ranking; the notice lists the top without movements");
            Vec::new()
        }
    };
    let first = last.is_empty();
    let changes = ranking::top_changes(&last, &ranking::top_n(&rows, cfg.top));
    let headline = format!(
        "Ranking `{}` loaded from {} ({} members{}).",
        ranking::chat_inert(cfg.key),
        ranking::chat_inert(&source),
        rows.len(),
        if first { ", first load" } else { "" }
    );
    let summary = ranking::summary_text(&headline, &changes);
    Ok(PullOutcome::Loaded { source, etag: object.head.etag, members: rows.len(), first, changes, summary })
}

/// Loads `rows` into the fresh key `tmp` in pipelined batches of `ZADD`s.
async fn load(
    conn: &mut MultiplexedConnection,
    tmp: &str,
    rows: &[(String, f64)],
    batch: usize,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<(), EdgeError> {
    const ZADDS_PER_ROUND_TRIP: usize = 8;
    let batch = batch.max(1);
    let total = rows.len() as u64;
    let mut done = 0u64;
    for (round, chunk) in rows.chunks(batch * ZADDS_PER_ROUND_TRIP).enumerate() {
        let mut pipe = redis::pipe();
        for part in chunk.chunks(batch) {
            let cmd = pipe.cmd("ZADD").arg(tmp);
            for (kseq, score) in part {
                cmd.arg(*score).arg(kseq.as_str());
            }
            cmd.ignore();
        }
        if round == 0 {
            pipe.cmd("PEXPIRE").arg(tmp).arg(TMP_TTL.as_millis() as u64).ignore();
        }
        pipe.query_async::<()>(conn).await.map_err(EdgeError::redis(tmp, "ZADD"))?;
        done += chunk.len() as u64;
        progress(done, total);
    }
    let found: usize = redis::cmd("ZCARD").arg(tmp).query_async(conn).await.map_err(EdgeError::redis(tmp, "ZCARD"))?;
    if found != rows.len() {
        return Err(EdgeError::LoadMismatch { key: tmp.to_owned(), expected: rows.len(), found });
    }
    Ok(())
}

/// Runs [`SWAP`]; false when a newer global result was loaded meanwhile.
async fn swap(
    conn: &mut MultiplexedConnection,
    cfg: &PullConfig<'_>,
    tmp: &str,
    head: &ferry_aws::s3::Head,
    source: &str,
    members: usize,
) -> Result<bool, EdgeError> {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let swapped: i64 = redis::cmd("EVAL")
        .arg(SWAP)
        .arg(4)
        .arg(tmp)
        .arg(cfg.key)
        .arg(cfg.prev_key())
        .arg(cfg.meta_key())
        .arg(head.last_modified)
        .arg(&head.etag)
        .arg(source)
        .arg(members)
        .arg(now)
        .query_async(conn)
        .await
        .map_err(EdgeError::redis(cfg.key, "RENAME"))?;
    Ok(swapped == 1)
}

/// The first `n` members of a sorted set in ranking order (score descending, then key ascending).
async fn top_of(conn: &mut MultiplexedConnection, key: &str, n: usize) -> Result<Vec<(String, f64)>, EdgeError> {
    if n == 0 {
        return Ok(Vec::new());
    }
    let raw: Vec<(Vec<u8>, f64)> = redis::cmd("ZRANGE")
        .arg(key)
        .arg(0)
        .arg(n - 1)
        .arg("REV")
        .arg("WITHSCORES")
        .query_async(conn)
        .await
        .map_err(EdgeError::redis(key, "ZRANGE"))?;
    let rows: Vec<(String, f64)> = raw.into_iter().map(|(m, s)| (String::from_utf8_lossy(&m).into_owned(), s)).collect();
    // Redis orders ties by member descending; the ranking orders them ascending.
    Ok(ranking::top_n(&rows, n))
}

/// Connects, pulls, and tells the chat: the summary after a load, the error after a failure. A notice
/// that cannot be delivered is logged and reported in [`PullReport::chat`]; it never fails the pull.
pub async fn pull_and_notify(
    store: &Store,
    redis_url: &str,
    cfg: &PullConfig<'_>,
    chat: Option<&Webhook>,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> PullReport {
    let result = match connect(redis_url).await {
        Ok(mut conn) => pull(store, &mut conn, cfg, progress).await,
        Err(e) => Err(e),
    };
    let Some(webhook) = chat else {
        return PullReport { result, chat: ChatStatus::NotConfigured };
    };
    let text = match &result {
        Ok(PullOutcome::Loaded { summary, .. }) => summary.clone(),
        Ok(PullOutcome::UpToDate { .. } | PullOutcome::Superseded { .. }) => {
            return PullReport { result, chat: ChatStatus::NotNeeded };
        }
        Err(e) => format!(
            "Pull of ranking `{}` from global/{}/{}/result-global.csv FAILED ({}): {}\nThe ranking in Redis is unchanged.",
            ranking::chat_inert(cfg.key),
            cfg.evno,
            ranking::chat_inert(cfg.stage),
            e.kind(),
            ranking::chat_inert(&e.to_string())
        ),
    };
    let chat = match webhook.post(&text).await {
        Ok(()) => ChatStatus::Sent,
        Err(e) => {
            tracing::warn!(error = %e, "chat notice not delivered; the pull itself is unaffected");
            ChatStatus::Failed(e)
        }
    };
    PullReport { result, chat }
}
