//! Redriving the DLQ: SQS's own move tasks, and the selective redrive that moves only what a
//! filter selects.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use ferry_api::sqs::attr;
use ferry_core::notify::{DeadLetter, RedriveFilter};

use super::{NotifyAwsError, QueuePair, now_ms};
use crate::sqs::{self, Outgoing, Received, SqsClient, delete_all, receive, release_all};

/// A message move task as `ListMessageMoveTasks` reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MoveTask {
    /// Present only while the task runs.
    pub task_handle: Option<String>,
    /// RUNNING, COMPLETED, CANCELLING, CANCELLED or FAILED.
    pub status: String,
    pub source_arn: String,
    pub destination_arn: Option<String>,
    pub max_messages_per_second: Option<i32>,
    pub moved: i64,
    pub to_move: Option<i64>,
    pub failure_reason: Option<String>,
    pub started_at_ms: i64,
}

/// Starts SQS's own redrive from the DLQ `dlq_arn` to `destination_arn` (by default, back to
/// the queue each message came from), at most `rate` messages per second. Returns the task handle.
pub async fn start_move_task(
    sqs: &SqsClient,
    dlq_arn: &str,
    destination_arn: Option<&str>,
    rate: Option<i32>,
) -> Result<String, NotifyAwsError> {
    let out = sqs
        .start_message_move_task()
        .source_arn(dlq_arn)
        .set_destination_arn(destination_arn.map(str::to_owned))
        .set_max_number_of_messages_per_second(rate)
        .send()
        .await
        .map_err(|e| sqs::error("StartMessageMoveTask", dlq_arn, e))?;
    Ok(out.task_handle().unwrap_or_default().to_owned())
}

/// The most recent move tasks of the DLQ `dlq_arn` (SQS keeps the last ten), newest first.
pub async fn list_move_tasks(sqs: &SqsClient, dlq_arn: &str) -> Result<Vec<MoveTask>, NotifyAwsError> {
    let out = sqs
        .list_message_move_tasks()
        .source_arn(dlq_arn)
        .max_results(10)
        .send()
        .await
        .map_err(|e| sqs::error("ListMessageMoveTasks", dlq_arn, e))?;
    Ok(out
        .results()
        .iter()
        .map(|t| MoveTask {
            task_handle: t.task_handle().map(str::to_owned),
            status: t.status().unwrap_or("UNKNOWN").to_owned(),
            source_arn: t.source_arn().unwrap_or(dlq_arn).to_owned(),
            destination_arn: t.destination_arn().map(str::to_owned),
            max_messages_per_second: t.max_number_of_messages_per_second(),
            moved: t.approximate_number_of_messages_moved(),
            to_move: t.approximate_number_of_messages_to_move(),
            failure_reason: t.failure_reason().map(str::to_owned),
            started_at_ms: t.started_timestamp(),
        })
        .collect())
}

/// How a selective redrive runs.
#[derive(Debug, Clone, PartialEq)]
pub struct RedriveOptions {
    /// List what would move; move nothing.
    pub dry_run: bool,
    /// At most this many messages per second.
    pub rate: Option<f64>,
    /// Stop after moving (or, in a dry run, matching) this many.
    pub max_messages: Option<usize>,
    /// Stop starting new batches after this long (a Lambda behind API Gateway has ~29 s).
    pub time_budget: Option<Duration>,
    /// How long received dead letters stay hidden. A message whose move was interrupted between
    /// send and delete reappears in the DLQ after this and is moved again by the next run.
    pub visibility_timeout: Duration,
}

impl Default for RedriveOptions {
    fn default() -> RedriveOptions {
        RedriveOptions { dry_run: false, rate: None, max_messages: None, time_budget: None, visibility_timeout: Duration::from_secs(300) }
    }
}

/// One dead letter a selective redrive matched.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Matched {
    pub message_id: String,
    pub kind: String,
    pub channel: Option<String>,
    pub notification_id: Option<String>,
    pub sender: Option<String>,
    pub age_secs: i64,
}

/// Progress of a selective redrive, reported after every batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct RedriveProgress {
    /// Distinct dead letters looked at.
    pub examined: usize,
    pub matched: usize,
    pub moved: usize,
}

/// What a selective redrive did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct RedriveReport {
    pub dry_run: bool,
    pub examined: usize,
    /// Matched the filter (in a dry run: would have moved).
    pub matched: usize,
    /// Sent to the source queue and deleted from the DLQ.
    pub moved: usize,
    /// Matched, but SQS refused the send: still in the DLQ.
    pub send_failures: usize,
    /// Sent, but SQS refused the delete: they reappear in the DLQ and may be moved twice.
    pub delete_failures: usize,
    /// Matched per error kind.
    pub by_kind: BTreeMap<String, usize>,
    /// The matched messages (in a dry run, what would move).
    pub messages: Vec<Matched>,
    /// Stopped by `max_messages` or `time_budget` with dead letters possibly left to look at.
    pub stopped_early: bool,
}

/// Attributes that describe a failure; they do not travel back to the source queue.
const FAILURE_ATTRS: [&str; 5] = [attr::ERROR_KIND, attr::ERROR, attr::CHANNEL, attr::NOTIFICATION_ID, attr::FAILED_AT];

/// Moves the dead letters `filter` selects from `queues.dlq_url` back to `queues.source_url`.
/// Each batch is sent to the source first and deleted from the DLQ only after its send succeeded,
/// so an interruption can duplicate a message (the consumer is idempotent) but never lose one.
/// Dead letters left alone are made visible again when the run ends.
pub async fn selective_redrive(
    sqs: &SqsClient,
    queues: &QueuePair,
    filter: &RedriveFilter,
    options: &RedriveOptions,
    progress: &mut (dyn FnMut(RedriveProgress) + Send),
) -> Result<RedriveReport, NotifyAwsError> {
    let started = Instant::now();
    let mut report = RedriveReport { dry_run: options.dry_run, ..RedriveReport::default() };
    let mut seen: HashSet<String> = HashSet::new();
    let mut left_alone: Vec<String> = Vec::new();
    let result = async {
        loop {
            let budget_spent = options.time_budget.is_some_and(|b| started.elapsed() >= b);
            let max_reached = options.max_messages.is_some_and(|m| report.matched >= m);
            if budget_spent || max_reached {
                report.stopped_early = true;
                break;
            }
            let batch = receive(sqs, &queues.dlq_url, 10, options.visibility_timeout, Duration::from_secs(1)).await?;
            if batch.is_empty() {
                break;
            }
            let now = now_ms();
            let mut fresh = 0;
            let mut to_move: Vec<(Received, DeadLetter)> = Vec::new();
            for m in batch {
                if !seen.insert(m.message_id.clone()) {
                    // Seen earlier in this run and visible again: its hiding lapsed.
                    left_alone.push(m.receipt_handle);
                    continue;
                }
                fresh += 1;
                report.examined += 1;
                let letter = m.dead_letter();
                let room = options.max_messages.is_none_or(|max| report.matched < max);
                if !room || !filter.matches(&letter, now) {
                    left_alone.push(m.receipt_handle);
                    continue;
                }
                report.matched += 1;
                *report.by_kind.entry(letter.kind.as_str().to_owned()).or_default() += 1;
                report.messages.push(Matched {
                    message_id: m.message_id.clone(),
                    kind: letter.kind.as_str().to_owned(),
                    channel: letter.channel.map(|c| c.as_str().to_owned()),
                    notification_id: letter.notification_id.clone(),
                    sender: letter.sender.clone(),
                    age_secs: (now - letter.first_sent_at).max(0) / 1000,
                });
                if options.dry_run {
                    left_alone.push(m.receipt_handle);
                } else {
                    to_move.push((m, letter));
                }
            }
            if fresh == 0 {
                // Everything this receive returned was seen already: the DLQ has been gone through.
                break;
            }
            if !to_move.is_empty() {
                move_batch(sqs, queues, &to_move, &mut report).await?;
            }
            progress(RedriveProgress { examined: report.examined, matched: report.matched, moved: report.moved });
            if let Some(rate) = options.rate.filter(|r| *r > 0.0) {
                let due = Duration::from_secs_f64(report.moved as f64 / rate);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    tokio::time::sleep(wait).await;
                }
            }
        }
        Ok(())
    }
    .await;
    // Best effort: what stays hidden reappears when its visibility timeout ends.
    release_all(sqs, &queues.dlq_url, &left_alone).await;
    result.map(|()| report)
}

async fn move_batch(
    sqs: &SqsClient,
    queues: &QueuePair,
    batch: &[(Received, DeadLetter)],
    report: &mut RedriveReport,
) -> Result<(), NotifyAwsError> {
    let attrs: Vec<BTreeMap<String, String>> = batch
        .iter()
        .map(|(m, letter)| {
            let mut attrs: BTreeMap<String, String> =
                m.attributes.iter().filter(|(k, _)| !FAILURE_ATTRS.contains(&k.as_str())).map(|(k, v)| (k.clone(), v.clone())).collect();
            attrs.insert(attr::FIRST_SENT_AT.to_owned(), letter.first_sent_at.to_string());
            attrs
        })
        .collect();
    let messages: Vec<Outgoing<'_>> = batch.iter().zip(&attrs).map(|((m, _), a)| Outgoing { body: &m.body, attributes: a }).collect();
    let out = sqs::send_batch(sqs, &queues.source_url, &messages).await?;
    for (entry, code, message) in &out.refused {
        tracing::warn!(queue = queues.source_url, entry, code, message, "send refused; the dead letter stays in the DLQ");
    }
    report.send_failures += out.refused.len();
    // Only what the source queue now holds leaves the DLQ.
    let sent: Vec<&str> = out.sent.iter().filter_map(|&i| batch.get(i)).map(|(m, _)| m.receipt_handle.as_str()).collect();
    let refused = delete_all(sqs, &queues.dlq_url, &sent).await?;
    report.delete_failures += refused;
    report.moved += sent.len() - refused;
    Ok(())
}
