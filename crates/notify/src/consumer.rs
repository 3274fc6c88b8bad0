//! The SQS consumer: one event is a batch of queued notifications; each record succeeds or fails
//! alone, and only transient failures come back (`ReportBatchItemFailures`).
//!
//! Every record must carry its sender ([`attr::SENDER`], set by the intake); one without is
//! dead-lettered as invalid, so nothing reaches the provider except through `POST /notifications`.
//! Claims are keyed on (sender, notification id), and a message is dead-lettered at most once.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use aws_lambda_events::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use ferry_api::sqs::attr;
use ferry_aws::notify::{Claim, DeliveryTable, LetterScope, LetterSlot, NotifyAwsError, SqsClient, now_ms, send_dead_letter};
use ferry_core::notify::{Channel, ErrorKind, Notification, Sender, Status, mask_recipient};
use ferry_lambda::metrics::{Function, Line, Metric};
use ferry_lambda::settings::{SettingsError, Vars};
use futures::StreamExt;
use lambda_runtime::{Diagnostic, LambdaEvent};

use crate::provider::{Provider, Reply};

/// Settings of the consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerSettings {
    /// Where permanent failures go at once.
    pub dlq_url: String,
    /// Records of one batch processed at the same time.
    pub concurrency: usize,
    /// How long a claim keeps other consumers off a notification. Longer than the function's
    /// timeout, so that a live consumer never loses its claim.
    pub lease: Duration,
}

impl ConsumerSettings {
    /// The settings of a consumer dead-lettering to `dlq_url`, every other one at its default.
    pub fn new(dlq_url: impl Into<String>) -> ConsumerSettings {
        ConsumerSettings { dlq_url: dlq_url.into(), concurrency: 8, lease: Duration::from_secs(120) }
    }

    /// Reads `FERRY_NOTIFY_DLQ_URL` (required), `FERRY_NOTIFY_CONCURRENCY` (default 8) and
    /// `FERRY_NOTIFY_LEASE_SECS` (default 120).
    pub fn from_vars(vars: &Vars) -> Result<ConsumerSettings, SettingsError> {
        let mut s = ConsumerSettings::new(vars.required("FERRY_NOTIFY_DLQ_URL")?);
        if let Some(c) = vars.positive("FERRY_NOTIFY_CONCURRENCY")? {
            s.concurrency = usize::try_from(c).unwrap_or(usize::MAX);
        }
        if let Some(lease) = vars.secs("FERRY_NOTIFY_LEASE_SECS")? {
            s.lease = lease;
        }
        Ok(s)
    }

    /// [`ConsumerSettings::from_vars`] over the process environment.
    pub fn from_env() -> Result<ConsumerSettings, SettingsError> {
        ConsumerSettings::from_vars(&Vars::env())
    }
}

/// State built once per execution environment.
#[derive(Debug, Clone)]
pub struct Consumer {
    pub sqs: SqsClient,
    pub table: DeliveryTable,
    pub provider: Provider,
    pub settings: ConsumerSettings,
}

/// What happened to one record.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum RecordOutcome {
    /// The provider accepted it now.
    Sent { notification_id: String, channel: Channel, status: Status },
    /// A duplicate of a notification already handed to the provider: acknowledged, not sent.
    AlreadyDone { notification_id: String, status: Status },
    /// Failed permanently: now in the DLQ with attributes saying why, and acknowledged.
    DeadLettered { notification_id: Option<String>, kind: ErrorKind, error: String },
    /// Failed permanently, and the DLQ already holds it (a redelivered copy, or another message of
    /// the same notification): acknowledged without a second dead letter.
    AlreadyDeadLettered { notification_id: Option<String>, kind: ErrorKind },
    /// Failed transiently: reported in `batchItemFailures`, so SQS delivers it again.
    Retry { notification_id: Option<String>, reason: String },
}

impl RecordOutcome {
    pub fn is_retry(&self) -> bool {
        matches!(self, RecordOutcome::Retry { .. })
    }
}

/// A record's result within a batch.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RecordReport {
    pub message_id: String,
    #[serde(flatten)]
    pub outcome: RecordOutcome,
}

/// The whole batch could not be judged record by record.
#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    /// Without an id a failure cannot be reported alone; failing the invocation retries the batch
    /// (duplicates are harmless, the consumer is idempotent).
    #[error("record {index} has no messageId, so its failure cannot be reported alone: {reason}")]
    NoMessageId { index: usize, reason: String },
}

impl From<ConsumerError> for Diagnostic {
    fn from(e: ConsumerError) -> Diagnostic {
        let error_type = match &e {
            ConsumerError::NoMessageId { .. } => "NoMessageId",
        };
        Diagnostic { error_type: error_type.to_owned(), error_message: e.to_string() }
    }
}

/// The Lambda handler: processes every record and names exactly the transient failures.
pub async fn handle(consumer: &Consumer, event: LambdaEvent<SqsEvent>) -> Result<SqsBatchResponse, ConsumerError> {
    let reports = process(consumer, &event.payload).await;
    let mut response = SqsBatchResponse::default();
    for (index, r) in reports.iter().enumerate() {
        if let RecordOutcome::Retry { reason, .. } = &r.outcome {
            if r.message_id.is_empty() {
                return Err(ConsumerError::NoMessageId { index, reason: reason.clone() });
            }
            response.add_failure(r.message_id.clone());
        }
    }
    Ok(response)
}

/// Processes a batch, at most `settings.concurrency` records at a time, and reports on each (in
/// the order of the event).
pub async fn process(consumer: &Consumer, event: &SqsEvent) -> Vec<RecordReport> {
    // Copies of one notification in one batch run one after the other: the second then finds the
    // first's record and is acknowledged, instead of racing it for the claim and coming back later.
    let keys: Vec<Option<(String, String)>> = event.records.iter().map(lock_key).collect();
    let locks: HashMap<&(String, String), tokio::sync::Mutex<()>> =
        keys.iter().flatten().map(|k| (k, tokio::sync::Mutex::new(()))).collect();
    let locks = &locks;
    let mut reports: Vec<(usize, RecordReport)> = futures::stream::iter(event.records.iter().zip(&keys).enumerate())
        .map(|(i, (record, key))| async move {
            let lock = key.as_ref().and_then(|k| locks.get(k));
            let _turn = match lock {
                Some(l) => Some(l.lock().await),
                None => None,
            };
            let outcome = process_record(consumer, record).await;
            let message_id = record.message_id.clone().unwrap_or_default();
            outcome_metrics(&outcome).emit();
            match &outcome {
                RecordOutcome::Retry { notification_id, reason } => {
                    tracing::warn!(message_id, notification_id, reason, "transient failure; SQS will deliver it again")
                }
                RecordOutcome::DeadLettered { notification_id, kind, error } => {
                    tracing::warn!(message_id, notification_id, %kind, error, "dead-lettered")
                }
                other => tracing::info!(message_id, outcome = ?other, "done"),
            }
            (i, RecordReport { message_id, outcome })
        })
        .buffer_unordered(consumer.settings.concurrency.max(1))
        .collect()
        .await;
    reports.sort_by_key(|(i, _)| *i);
    reports.into_iter().map(|(_, r)| r).collect()
}

/// The metrics line of one record's outcome; a duplicate acknowledged counts nothing.
fn outcome_metrics(outcome: &RecordOutcome) -> Line {
    let line = Line::new(Function::NotifyConsumer);
    let (line, id) = match outcome {
        RecordOutcome::Sent { notification_id, .. } => (line.count(Metric::NotificationsSent, 1), Some(notification_id)),
        RecordOutcome::DeadLettered { notification_id, .. } => (line.count(Metric::NotificationsDeadLettered, 1), notification_id.as_ref()),
        RecordOutcome::Retry { notification_id, .. } => (line.count(Metric::NotificationsRetried, 1), notification_id.as_ref()),
        RecordOutcome::AlreadyDone { .. } | RecordOutcome::AlreadyDeadLettered { .. } => (line, None),
    };
    match id {
        Some(id) => line.property("notification_id", id.clone()),
        None => line,
    }
}

/// The raw sender attribute of a record, if any.
fn sender_attr(record: &SqsMessage) -> Option<&str> {
    record.message_attributes.get(attr::SENDER).and_then(|a| a.string_value.as_deref()).filter(|s| !s.is_empty())
}

/// (sender, notification id) of a record whose body may not be valid.
fn lock_key(record: &SqsMessage) -> Option<(String, String)> {
    Some((sender_attr(record)?.to_owned(), peek_id(record.body.as_deref()?)?))
}

/// The `notification_id` of a body that may not be valid.
fn peek_id(body: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    v.get("notification_id")?.as_str().map(str::to_owned)
}

async fn process_record(consumer: &Consumer, record: &SqsMessage) -> RecordOutcome {
    let body = record.body.as_deref().unwrap_or_default();
    let message_scope = LetterScope::Message { message_id: record.message_id.as_deref().unwrap_or_default() };
    let error = match sender_attr(record).map(Sender::parse) {
        Some(Ok(sender)) => {
            return match Notification::parse(body) {
                Ok(n) => deliver(consumer, record, &sender, &n).await,
                Err(e) => dead_letter(consumer, record, e.kind(), &e.to_string(), None, peek_id(body), message_scope).await,
            };
        }
        Some(Err(e)) => format!("attribute `{}`: {e}", attr::SENDER),
        // Only the intake queues notifications, and it always names the sender.
        None => format!("attribute `{}`: missing (notifications are accepted only through POST /notifications)", attr::SENDER),
    };
    dead_letter(consumer, record, ErrorKind::InvalidMessage, &error, None, peek_id(body), message_scope).await
}

async fn deliver(consumer: &Consumer, record: &SqsMessage, sender: &Sender, n: &Notification) -> RecordOutcome {
    let id = &n.notification_id;
    let retry = |reason: String| RecordOutcome::Retry { notification_id: Some(id.clone()), reason };
    let aws = |e: NotifyAwsError| retry(e.to_string());
    let (token, primary_rejected) = match consumer.table.claim(sender, id, consumer.settings.lease).await {
        Ok(Claim::Claimed { token, primary_rejected }) => (token, primary_rejected),
        Ok(Claim::Done(status)) => return RecordOutcome::AlreadyDone { notification_id: id.clone(), status },
        Ok(Claim::InFlight { lease_until_ms }) => {
            return retry(format!("another consumer holds the claim until {lease_until_ms} (Unix ms)"));
        }
        Err(e) => return aws(e),
    };
    let channels: Vec<Channel> = match (primary_rejected, n.fallback) {
        // An earlier attempt already had the primary refused: go straight to the fallback.
        (true, Some(fb)) => vec![fb],
        _ => n.channels().collect(),
    };
    let mut refusals = Vec::new();
    for channel in channels {
        match consumer.provider.send(sender, n, channel).await {
            Reply::Accepted { status, provider_message_id } => {
                return match consumer.table.advance(sender, id, status, channel, provider_message_id.as_deref()).await {
                    Ok(_) => {
                        tracing::info!(%sender, notification_id = id, %channel, recipient = mask_recipient(&n.recipient), "accepted by the provider");
                        if channel != n.channel {
                            Line::new(Function::NotifyConsumer)
                                .count(Metric::NotificationsFellBack, 1)
                                .property("notification_id", id.clone())
                                .emit();
                        }
                        RecordOutcome::Sent { notification_id: id.clone(), channel, status }
                    }
                    // The provider has it but the record does not say so: the retry finds the claim
                    // and, once the lease lapses, sends again with the same idempotency key.
                    Err(e) => aws(e),
                };
            }
            Reply::Transient(reason) => {
                let primary_refused = channel != n.channel;
                if let Err(e) = consumer.table.release(sender, id, &token, primary_refused).await {
                    tracing::warn!(notification_id = id, error = %e, "could not release the claim; the retry waits for the lease");
                }
                return retry(reason);
            }
            Reply::Permanent(reason) => refusals.push(reason),
        }
    }
    let error = refusals.join("; ");
    if let Err(e) = consumer.table.mark_failed(sender, id, &token, &error).await {
        return aws(e);
    }
    let scope = LetterScope::Notification { sender, notification_id: id };
    dead_letter(consumer, record, ErrorKind::ProviderRejected, &error, Some(n.channel), Some(id.clone()), scope).await
}

/// Sends the record's body to the DLQ with the reason, once: a marker in the deliveries table
/// (see [`DeliveryTable::begin_dead_letter`]) turns a second attempt for the same `scope` into an
/// acknowledgement. If the send fails the record is retried, so a permanent failure is never
/// dropped.
async fn dead_letter(
    consumer: &Consumer,
    record: &SqsMessage,
    kind: ErrorKind,
    error: &str,
    channel: Option<Channel>,
    notification_id: Option<String>,
    scope: LetterScope<'_>,
) -> RecordOutcome {
    let message_id = record.message_id.as_deref().unwrap_or_default();
    let retry = |reason: String| RecordOutcome::Retry { notification_id: notification_id.clone(), reason };
    let previous_first_sent = record.message_attributes.get(attr::FIRST_SENT_AT).and_then(|a| a.string_value.clone());
    // Without a message id there is nothing to key the marker on (and the failure could not be
    // reported alone either): send without one.
    let marked = !message_id.is_empty();
    if marked {
        let redriven = previous_first_sent.is_some();
        match consumer.table.begin_dead_letter(scope, message_id, redriven, kind.as_str(), consumer.settings.lease).await {
            Ok(LetterSlot::Take) => {}
            Ok(LetterSlot::Done { message_id: by }) => {
                tracing::info!(message_id, dead_lettered_from = by, %kind, "already in the DLQ; acknowledged without another copy");
                return RecordOutcome::AlreadyDeadLettered { notification_id, kind };
            }
            Ok(LetterSlot::InFlight { lease_until_ms }) => {
                return retry(format!("another attempt is dead-lettering it until {lease_until_ms} (Unix ms)"));
            }
            Err(e) => return retry(format!("could not mark the dead letter ({kind}: {error}): {e}")),
        }
    }
    let first_sent_at =
        previous_first_sent.or_else(|| record.attributes.get("SentTimestamp").cloned()).unwrap_or_else(|| now_ms().to_string());
    let mut attrs = BTreeMap::from([
        (attr::ERROR_KIND.to_owned(), kind.as_str().to_owned()),
        (attr::ERROR.to_owned(), error.to_owned()),
        (attr::FIRST_SENT_AT.to_owned(), first_sent_at),
        (attr::FAILED_AT.to_owned(), now_ms().to_string()),
    ]);
    if let Some(c) = channel {
        attrs.insert(attr::CHANNEL.to_owned(), c.as_str().to_owned());
    }
    if let Some(id) = notification_id.as_ref().filter(|id| !id.is_empty() && id.len() <= 256) {
        attrs.insert(attr::NOTIFICATION_ID.to_owned(), id.clone());
    }
    // The sender travels with the dead letter, so that a redriven copy is still the sender's.
    if let Some(sender) = sender_attr(record) {
        attrs.insert(attr::SENDER.to_owned(), sender.to_owned());
    }
    let body = record.body.as_deref().unwrap_or_default();
    match send_dead_letter(&consumer.sqs, &consumer.settings.dlq_url, body, &attrs).await {
        Ok(()) => {
            if marked {
                // Failing here leaves the marker pending: the DLQ has the copy and this record is
                // acknowledged; only a redelivery after the lease lapses would send a second one.
                if let Err(e) = consumer.table.confirm_dead_letter(scope, message_id).await {
                    tracing::warn!(message_id, error = %e, "dead-lettered, but the marker could not be confirmed");
                }
            }
            RecordOutcome::DeadLettered { notification_id, kind, error: error.to_owned() }
        }
        Err(e) => {
            if marked && let Err(e) = consumer.table.release_dead_letter(scope, message_id).await {
                tracing::warn!(message_id, error = %e, "could not release the dead-letter marker; the retry waits for its lease");
            }
            retry(format!("could not dead-letter ({kind}: {error}): {e}"))
        }
    }
}
