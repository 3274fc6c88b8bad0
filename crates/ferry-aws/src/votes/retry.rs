//! The loop both pipeline steps run: read, decide, write conditionally on what was read, and when
//! another writer got there first, back off and do it all again from the reads.

use std::future::Future;
use std::time::Duration;

use super::VoteError;
use crate::s3::{NewObject, Put, Store};

/// How many times a step re-reads and retries after losing a conditional write.
const MAX_ATTEMPTS: u32 = 12;

/// What one attempt of a step found to do.
pub(super) enum Step<'a, T> {
    /// Nothing to write; the step is over with this outcome.
    Done(T),
    /// Write `object` (conditional on what the attempt read); once it lands, the outcome is `written`.
    Write { object: NewObject<'a>, written: T },
    /// An input vanished between listing and reading: read again at once.
    Again,
}

/// Runs `attempt` until it is done or its write lands, writing to `key` in `store`. A lost
/// conditional write means someone else wrote `key` after this attempt read it, so the next attempt
/// starts from the reads, after a jittered backoff that spreads racing writers out. `writer` names
/// the step in the log. Gives up with [`VoteError::Contention`] after [`MAX_ATTEMPTS`].
pub(super) async fn until_written<'a, T, F, Fut>(store: &Store, key: &str, writer: &str, mut attempt: F) -> Result<T, VoteError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Step<'a, T>, VoteError>>,
{
    for n in 1..=MAX_ATTEMPTS {
        let (object, written) = match attempt().await? {
            Step::Done(outcome) => return Ok(outcome),
            Step::Again => continue,
            Step::Write { object, written } => (object, written),
        };
        match store.put(key, object).await? {
            Put::Written { .. } => return Ok(written),
            Put::Conflict => {
                tracing::info!(key, attempt = n, "another {writer} wrote first; re-reading");
                backoff(n).await;
            }
        }
    }
    Err(VoteError::Contention { key: key.to_owned(), attempts: MAX_ATTEMPTS })
}

/// Jittered exponential backoff, capped at about a second, so that racing writers spread out.
async fn backoff(attempt: u32) {
    let base = 20u64 << attempt.min(6);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos() as u64);
    let jitter = nanos % base.max(1);
    tokio::time::sleep(Duration::from_millis((base + jitter).min(1500))).await;
}
