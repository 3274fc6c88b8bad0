//! What Lambda's SQS event source mapping does ([`pump_with`] any handler; [`pump`] the
//! notification consumer, feature `notify`), and reading a queue without consuming it
//! ([`peek_all`], [`peek_and_release`]).

use std::collections::HashSet;
use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use anyhow::Context as _;
use aws_lambda_events::sqs::{SqsBatchResponse, SqsEvent};
use ferry_aws::notify::{self as aws, Received, SqsClient};
use lambda_runtime::{Context, LambdaEvent};

use crate::events::sqs_event;

/// How [`pump_with`] polls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PumpSettings {
    /// Concurrent pollers (Lambda runs several batches at once).
    pub pollers: usize,
    pub batch_size: i32,
    /// The source queue's visibility timeout.
    pub visibility: Duration,
}

impl Default for PumpSettings {
    fn default() -> PumpSettings {
        PumpSettings { pollers: 4, batch_size: 10, visibility: Duration::from_secs(1) }
    }
}

/// What [`pump_with`] saw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PumpStats {
    pub invocations: usize,
    pub records: usize,
    /// Records reported in `batchItemFailures`.
    pub reported_failures: usize,
}

/// A receive that, like Lambda's own pollers, tries again after a failed poll (moto answers a
/// burst of concurrent receives with an occasional 500).
async fn receive_retrying(sqs: &SqsClient, queue_url: &str, settings: PumpSettings) -> anyhow::Result<Vec<Received>> {
    let mut attempt = 0;
    loop {
        match aws::receive(sqs, queue_url, settings.batch_size, settings.visibility, Duration::from_secs(1)).await {
            Ok(batch) => return Ok(batch),
            Err(e) if attempt < 5 => {
                attempt += 1;
                tracing::warn!(error = %e, attempt, "receive failed; polling again");
                tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// [`pump_with`] the notification consumer's handler (feature `notify`).
#[cfg(feature = "notify")]
pub async fn pump(
    consumer: &notify::consumer::Consumer,
    sqs: &SqsClient,
    queue_url: &str,
    settings: PumpSettings,
) -> anyhow::Result<PumpStats> {
    pump_with(|event| notify::consumer::handle(consumer, event), sqs, queue_url, settings).await
}

/// Does what Lambda's SQS event source mapping does, until `queue_url` is empty: receive a batch,
/// invoke `handler` with it, delete every record not named in `batchItemFailures`.
pub async fn pump_with<H, F, E>(handler: H, sqs: &SqsClient, queue_url: &str, settings: PumpSettings) -> anyhow::Result<PumpStats>
where
    H: Fn(LambdaEvent<SqsEvent>) -> F,
    F: Future<Output = Result<SqsBatchResponse, E>>,
    E: Display,
{
    let handler = &handler;
    let arn = aws::queue_arn(sqs, queue_url).await?;
    let pollers = (0..settings.pollers.max(1)).map(|_| async {
        let mut stats = PumpStats::default();
        loop {
            let batch = receive_retrying(sqs, queue_url, settings).await?;
            if batch.is_empty() {
                let (visible, in_flight) = aws::queue_depth(sqs, queue_url).await?;
                if visible + in_flight == 0 {
                    return anyhow::Ok(stats);
                }
                continue;
            }
            let event: SqsEvent = serde_json::from_value(sqs_event(&arn, &batch)).context("building the SQS event")?;
            let response = handler(LambdaEvent::new(event, Context::default()))
                .await
                .map_err(|e| anyhow::anyhow!("consumer failed the whole batch: {e}"))?;
            let failed: HashSet<&str> = response.batch_item_failures.iter().map(|f| f.item_identifier.as_str()).collect();
            let done: Vec<&str> =
                batch.iter().filter(|m| !failed.contains(m.message_id.as_str())).map(|m| m.receipt_handle.as_str()).collect();
            aws::delete_all(sqs, queue_url, &done).await?;
            stats.invocations += 1;
            stats.records += batch.len();
            stats.reported_failures += failed.len();
        }
    });
    let mut total = PumpStats::default();
    for s in futures::future::try_join_all(pollers).await? {
        total.invocations += s.invocations;
        total.records += s.records;
        total.reported_failures += s.reported_failures;
    }
    Ok(total)
}

/// Every message left in `queue_url`, received and kept hidden for `hide` (then visible again).
pub async fn peek_all(sqs: &SqsClient, queue_url: &str, hide: Duration) -> anyhow::Result<Vec<Received>> {
    let mut out: Vec<Received> = Vec::new();
    let mut seen = HashSet::new();
    loop {
        let batch = aws::receive(sqs, queue_url, 10, hide, Duration::from_secs(1)).await?;
        if batch.is_empty() {
            return Ok(out);
        }
        out.extend(batch.into_iter().filter(|m| seen.insert(m.message_id.clone())));
    }
}

/// Reads every message of a queue, then makes each visible again at once. A short visibility
/// timeout would let a long queue's first messages come back before the read reaches its end, and
/// the read would never see the queue empty.
pub async fn peek_and_release(sqs: &SqsClient, queue_url: &str) -> anyhow::Result<Vec<Received>> {
    let messages = peek_all(sqs, queue_url, Duration::from_secs(60)).await?;
    for m in &messages {
        sqs.change_message_visibility().queue_url(queue_url).receipt_handle(&m.receipt_handle).visibility_timeout(0).send().await?;
    }
    Ok(messages)
}
