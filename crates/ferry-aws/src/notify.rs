//! Notifications on AWS: the delivery table in DynamoDB, the dead-letter queue in SQS, and both
//! ways of redriving it.
//!
//! - [`DeliveryTable`]: one item per (sender, notification id). [`DeliveryTable::claim`] is the
//!   conditional write that makes sending idempotent; [`DeliveryTable::advance`] never lets a status
//!   go back (the condition is on [`Status::rank`]). [`DeliveryTable::begin_dead_letter`] makes
//!   dead-lettering happen once per message (and per notification).
//!   [`DeliveryTable::admit`] is the intake's per-caller fixed-window throttle, in the same table.
//! - [`keys`]: how those three kinds of item share the table's one key.
//! - [`send_notification`]: a submitted notification onto the queue with its sender.
//! - [`send_dead_letter`]: a message to the DLQ with attributes saying why ([`ferry_core::notify::attr`]).
//! - [`start_move_task`] / [`list_move_tasks`]: SQS's own redrive (`StartMessageMoveTask`).
//! - [`selective_redrive`]: moves only the dead letters a [`RedriveFilter`] selects; sends to the
//!   source queue first and deletes from the DLQ only after the send succeeded.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType, ReturnValue, ScalarAttributeType,
};
use aws_sdk_sqs::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry, MessageAttributeValue, MessageSystemAttributeName,
    QueueAttributeName, SendMessageBatchRequestEntry,
};
use ferry_core::notify::{Channel, DeadLetter, FixedWindow, RedriveFilter, Sender, Status, attr};

use crate::sdk_message;

pub use aws_sdk_dynamodb::Client as DynamoClient;
pub use aws_sdk_sqs::Client as SqsClient;

/// An AWS call that failed. Names the queue or table (and notification) and the operation.
#[derive(Debug, thiserror::Error)]
pub enum NotifyAwsError {
    #[error("SQS {op} on {queue}: {message}")]
    Sqs { queue: String, op: &'static str, message: String },
    #[error("DynamoDB {op} on table {table}, item {id}: {message}")]
    Dynamo { table: String, id: String, op: &'static str, message: String },
    #[error("table {table}, item {id}: unreadable: {message}")]
    BadItem { table: String, id: String, message: String },
}

fn sqs_err<E, R>(queue: &str, op: &'static str) -> impl FnOnce(SdkError<E, R>) -> NotifyAwsError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    move |e| NotifyAwsError::Sqs { queue: queue.to_owned(), op, message: sdk_message(&e) }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

// ---------------------------------------------------------------------------------------------
// Delivery records

/// The deliveries table's partition key values. The table holds three kinds of item under one key
/// attribute (`notification_id`, kept from when ids were global so the deployed table stays);
/// each kind has its own prefix, so a role can be limited to its kind with `dynamodb:LeadingKeys`.
/// A notification id never holds `#`, so `{sender}#{id}` reads back unambiguously from the right.
pub mod keys {
    use ferry_core::notify::Sender;

    /// A delivery record: `delivery#{sender}#{notification_id}`.
    pub const DELIVERY: &str = "delivery#";
    /// A throttle counter of the intake: `throttle#{sender}#{window}`.
    pub const THROTTLE: &str = "throttle#";
    /// A dead-letter marker: `deadletter#n#{sender}#{notification_id}` or `deadletter#m#{message_id}`.
    pub const DEAD_LETTER: &str = "deadletter#";

    pub fn delivery(sender: &Sender, notification_id: &str) -> String {
        format!("{DELIVERY}{sender}#{notification_id}")
    }

    pub fn throttle(sender: &Sender, window: u64) -> String {
        format!("{THROTTLE}{sender}#{window}")
    }

    pub fn dead_letter(scope: &super::LetterScope<'_>) -> String {
        match scope {
            super::LetterScope::Notification { sender, notification_id } => format!("{DEAD_LETTER}n#{sender}#{notification_id}"),
            super::LetterScope::Message { message_id } => format!("{DEAD_LETTER}m#{message_id}"),
        }
    }
}

const K_ID: &str = "notification_id";
const K_SENDER: &str = "sender";
const K_NOTIFICATION: &str = "notification";
const K_STATUS: &str = "delivery_status";
const K_RANK: &str = "status_rank";
const K_TOKEN: &str = "claim_token";
const K_LEASE: &str = "lease_until_ms";
const K_ATTEMPTS: &str = "attempts";
const K_PRIMARY_REJECTED: &str = "primary_rejected";
const K_CHANNEL: &str = "channel";
const K_PROVIDER_ID: &str = "provider_message_id";
const K_ERROR: &str = "last_error";
const K_UPDATED: &str = "updated_at_ms";
/// DynamoDB TTL (Unix seconds). Far beyond how long SQS can hold a message (14 days in a queue, then
/// as long again in the DLQ), so a record never expires while a duplicate of it may still arrive.
const K_EXPIRES: &str = "expires_at";
const RETENTION_SECS: i64 = 90 * 86_400;
// Dead-letter markers.
const K_DL_STATE: &str = "dead_letter_state";
const K_DL_MESSAGE: &str = "dead_letter_message_id";
const K_DL_KIND: &str = "dead_letter_kind";
const DL_PENDING: &str = "pending";
const DL_DONE: &str = "done";
/// As long as the DLQ keeps a message: while its copy may be there, a repeat is not sent again.
const MARKER_RETENTION_SECS: i64 = 14 * 86_400;
// Throttle counters.
const K_COUNT: &str = "request_count";

/// A notification's delivery record as stored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DeliveryRecord {
    pub sender: Sender,
    pub notification_id: String,
    pub status: Status,
    /// How many times a consumer claimed it.
    pub attempts: u32,
    /// The channel that accepted it.
    pub channel: Option<Channel>,
    pub provider_message_id: Option<String>,
    pub last_error: Option<String>,
    /// While `sending`: when the claim lapses (Unix ms).
    pub lease_until_ms: Option<i64>,
    /// The primary channel refused it permanently; a retry goes straight to the fallback.
    pub primary_rejected: bool,
}

/// The outcome of [`DeliveryTable::claim`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// This consumer may send; it must finish with `advance`, `release` or `mark_failed`.
    Claimed { token: String, primary_rejected: bool },
    /// Already handed to the provider: acknowledge without sending.
    Done(Status),
    /// Another consumer holds a live claim (a duplicate delivery in flight): retry later.
    InFlight { lease_until_ms: i64 },
}

/// Whether a conditional write took effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    Applied,
    /// The record was already at or past this state, or the claim was no longer ours.
    Skipped,
}

/// Which dead letter a marker stands for: a notification that parsed (one dead letter per
/// sender and id), or else the SQS message itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LetterScope<'a> {
    Notification { sender: &'a Sender, notification_id: &'a str },
    Message { message_id: &'a str },
}

/// The outcome of [`DeliveryTable::begin_dead_letter`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LetterSlot {
    /// Send it to the DLQ, then [`DeliveryTable::confirm_dead_letter`] (or, if the send failed,
    /// [`DeliveryTable::release_dead_letter`]).
    Take,
    /// Already in the DLQ (sent from the SQS message `message_id`): acknowledge without a copy.
    Done { message_id: String },
    /// Another attempt is sending it now: retry later.
    InFlight { lease_until_ms: i64 },
}

/// The delivery table: partition key `notification_id` (string), holding the items of [`keys`].
#[derive(Debug, Clone)]
pub struct DeliveryTable {
    client: DynamoClient,
    table: String,
}

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

impl DeliveryTable {
    pub fn new(client: DynamoClient, table: impl Into<String>) -> DeliveryTable {
        DeliveryTable { client, table: table.into() }
    }

    pub fn name(&self) -> &str {
        &self.table
    }

    fn err<E, R>(&self, id: &str, op: &'static str) -> impl FnOnce(SdkError<E, R>) -> NotifyAwsError + use<'_, E, R>
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug,
    {
        let (table, id) = (self.table.clone(), id.to_owned());
        move |e| NotifyAwsError::Dynamo { table, id, op, message: sdk_message(&e) }
    }

    /// Creates the table (on-demand billing) unless it exists. For local runs and tests; the
    /// deployed table comes from the template.
    pub async fn create_if_missing(&self) -> Result<(), NotifyAwsError> {
        let res = self
            .client
            .create_table()
            .table_name(&self.table)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name(K_ID)
                    .attribute_type(ScalarAttributeType::S)
                    .build()
                    .map_err(|e| NotifyAwsError::BadItem { table: self.table.clone(), id: String::new(), message: e.to_string() })?,
            )
            .key_schema(
                KeySchemaElement::builder().attribute_name(K_ID).key_type(KeyType::Hash).build().map_err(|e| NotifyAwsError::BadItem {
                    table: self.table.clone(),
                    id: String::new(),
                    message: e.to_string(),
                })?,
            )
            .send()
            .await;
        match res {
            Ok(_) => Ok(()),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_resource_in_use_exception()) => Ok(()),
            Err(e) => Err(self.err("-", "CreateTable")(e)),
        }
    }

    /// Takes the right to send `sender`'s notification `id` for `lease`. Succeeds when there is no
    /// record, when the last attempt failed permanently (a redrive), or when a previous claim lapsed
    /// (its consumer died).
    pub async fn claim(&self, sender: &Sender, id: &str, lease: Duration) -> Result<Claim, NotifyAwsError> {
        let now = now_ms();
        let token = format!("{now:x}-{:x}", rand_u64());
        let key = keys::delivery(sender, id);
        let res = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(K_ID, s(&key))
            .update_expression(
                "SET #st = :sending, #rank = :one, #tok = :tok, #lease = :lease, #upd = :now, #exp = :exp, #snd = :snd, #nid = :nid ADD #att :one",
            )
            .condition_expression("attribute_not_exists(#id) OR (#rank = :one AND (#st = :failed OR #lease < :now))")
            .expression_attribute_names("#id", K_ID)
            .expression_attribute_names("#snd", K_SENDER)
            .expression_attribute_names("#nid", K_NOTIFICATION)
            .expression_attribute_values(":snd", s(sender.as_str()))
            .expression_attribute_values(":nid", s(id))
            .expression_attribute_names("#st", K_STATUS)
            .expression_attribute_names("#rank", K_RANK)
            .expression_attribute_names("#tok", K_TOKEN)
            .expression_attribute_names("#lease", K_LEASE)
            .expression_attribute_names("#upd", K_UPDATED)
            .expression_attribute_names("#att", K_ATTEMPTS)
            .expression_attribute_names("#exp", K_EXPIRES)
            .expression_attribute_values(":exp", n(now / 1000 + RETENTION_SECS))
            .expression_attribute_values(":sending", s(Status::Sending.as_str()))
            .expression_attribute_values(":failed", s(Status::Failed.as_str()))
            .expression_attribute_values(":one", n(Status::Sending.rank()))
            .expression_attribute_values(":tok", s(&token))
            .expression_attribute_values(":lease", n(now + lease.as_millis() as i64))
            .expression_attribute_values(":now", n(now))
            .return_values(ReturnValue::AllNew)
            .send()
            .await;
        match res {
            Ok(out) => {
                let primary_rejected = matches!(out.attributes().and_then(|a| a.get(K_PRIMARY_REJECTED)), Some(AttributeValue::Bool(true)));
                Ok(Claim::Claimed { token, primary_rejected })
            }
            Err(e) if e.as_service_error().is_some_and(|s| s.is_conditional_check_failed_exception()) => {
                let Some(current) = self.get(sender, id).await? else {
                    // Deleted between the write and the read: let the retry claim it afresh.
                    return Ok(Claim::InFlight { lease_until_ms: now });
                };
                if current.status.is_done() {
                    Ok(Claim::Done(current.status))
                } else {
                    Ok(Claim::InFlight { lease_until_ms: current.lease_until_ms.unwrap_or(now) })
                }
            }
            Err(e) => Err(self.err(&key, "UpdateItem (claim)")(e)),
        }
    }

    /// Records that the provider accepted (`sent`) or delivered it. Never moves a record back: a
    /// late `sent` leaves `delivered` as it is.
    pub async fn advance(
        &self,
        sender: &Sender,
        id: &str,
        status: Status,
        channel: Channel,
        provider_message_id: Option<&str>,
    ) -> Result<Written, NotifyAwsError> {
        let key = keys::delivery(sender, id);
        let mut req = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(K_ID, s(&key))
            .condition_expression("attribute_not_exists(#id) OR #rank < :rank")
            .expression_attribute_names("#id", K_ID)
            .expression_attribute_names("#st", K_STATUS)
            .expression_attribute_names("#rank", K_RANK)
            .expression_attribute_names("#ch", K_CHANNEL)
            .expression_attribute_names("#upd", K_UPDATED)
            .expression_attribute_names("#tok", K_TOKEN)
            .expression_attribute_names("#lease", K_LEASE)
            .expression_attribute_values(":st", s(status.as_str()))
            .expression_attribute_values(":rank", n(status.rank()))
            .expression_attribute_values(":ch", s(channel.as_str()))
            .expression_attribute_values(":now", n(now_ms()));
        req = match provider_message_id {
            Some(pm) => req
                .update_expression("SET #st = :st, #rank = :rank, #ch = :ch, #upd = :now, #pm = :pm REMOVE #tok, #lease")
                .expression_attribute_names("#pm", K_PROVIDER_ID)
                .expression_attribute_values(":pm", s(pm)),
            None => req.update_expression("SET #st = :st, #rank = :rank, #ch = :ch, #upd = :now REMOVE #tok, #lease"),
        };
        match req.send().await {
            Ok(_) => Ok(Written::Applied),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_conditional_check_failed_exception()) => Ok(Written::Skipped),
            Err(e) => Err(self.err(&key, "UpdateItem (advance)")(e)),
        }
    }

    /// Gives a claim back after a transient failure, so the retry need not wait for the lease.
    pub async fn release(&self, sender: &Sender, id: &str, token: &str, primary_rejected: bool) -> Result<Written, NotifyAwsError> {
        let key = keys::delivery(sender, id);
        let res = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(K_ID, s(&key))
            .update_expression("SET #lease = :zero, #pr = :pr, #upd = :now")
            .condition_expression("#tok = :tok AND #st = :sending")
            .expression_attribute_names("#lease", K_LEASE)
            .expression_attribute_names("#pr", K_PRIMARY_REJECTED)
            .expression_attribute_names("#upd", K_UPDATED)
            .expression_attribute_names("#tok", K_TOKEN)
            .expression_attribute_names("#st", K_STATUS)
            .expression_attribute_values(":zero", n(0))
            .expression_attribute_values(":pr", AttributeValue::Bool(primary_rejected))
            .expression_attribute_values(":now", n(now_ms()))
            .expression_attribute_values(":tok", s(token))
            .expression_attribute_values(":sending", s(Status::Sending.as_str()))
            .send()
            .await;
        match res {
            Ok(_) => Ok(Written::Applied),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_conditional_check_failed_exception()) => Ok(Written::Skipped),
            Err(e) => Err(self.err(&key, "UpdateItem (release)")(e)),
        }
    }

    /// Records a permanent failure on every channel. A later redrive may claim it again.
    pub async fn mark_failed(&self, sender: &Sender, id: &str, token: &str, error: &str) -> Result<Written, NotifyAwsError> {
        let key = keys::delivery(sender, id);
        let res = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(K_ID, s(&key))
            .update_expression("SET #st = :failed, #err = :err, #upd = :now REMOVE #tok, #lease, #pr")
            .condition_expression("#tok = :tok AND #st = :sending")
            .expression_attribute_names("#st", K_STATUS)
            .expression_attribute_names("#err", K_ERROR)
            .expression_attribute_names("#upd", K_UPDATED)
            .expression_attribute_names("#tok", K_TOKEN)
            .expression_attribute_names("#lease", K_LEASE)
            .expression_attribute_names("#pr", K_PRIMARY_REJECTED)
            .expression_attribute_values(":failed", s(Status::Failed.as_str()))
            .expression_attribute_values(":err", s(truncate(error, 1024)))
            .expression_attribute_values(":now", n(now_ms()))
            .expression_attribute_values(":tok", s(token))
            .expression_attribute_values(":sending", s(Status::Sending.as_str()))
            .send()
            .await;
        match res {
            Ok(_) => Ok(Written::Applied),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_conditional_check_failed_exception()) => Ok(Written::Skipped),
            Err(e) => Err(self.err(&key, "UpdateItem (failed)")(e)),
        }
    }

    /// Reads `sender`'s record of notification `id` (strongly consistent).
    pub async fn get(&self, sender: &Sender, id: &str) -> Result<Option<DeliveryRecord>, NotifyAwsError> {
        let key = keys::delivery(sender, id);
        let Some(item) = self.get_item(&key).await? else { return Ok(None) };
        let bad = |message: String| NotifyAwsError::BadItem { table: self.table.clone(), id: key.clone(), message };
        let text = |k: &str| item.get(k).and_then(|v| v.as_s().ok()).cloned();
        let num = |k: &str| item.get(k).and_then(|v| v.as_n().ok()).and_then(|v| v.parse::<i64>().ok());
        let status = text(K_STATUS).ok_or_else(|| bad(format!("no {K_STATUS}")))?.parse::<Status>().map_err(bad)?;
        // As stored by the claim, not as asked for: the record says whose it is.
        let stored_sender =
            Sender::parse(&text(K_SENDER).ok_or_else(|| bad(format!("no {K_SENDER}")))?).map_err(|e| bad(format!("{K_SENDER}: {e}")))?;
        Ok(Some(DeliveryRecord {
            sender: stored_sender,
            notification_id: id.to_owned(),
            status,
            attempts: num(K_ATTEMPTS).unwrap_or(0).max(0) as u32,
            channel: text(K_CHANNEL).and_then(|c| c.parse().ok()),
            provider_message_id: text(K_PROVIDER_ID),
            last_error: text(K_ERROR),
            lease_until_ms: num(K_LEASE),
            primary_rejected: matches!(item.get(K_PRIMARY_REJECTED), Some(AttributeValue::Bool(true))),
        }))
    }

    async fn get_item(&self, key: &str) -> Result<Option<HashMap<String, AttributeValue>>, NotifyAwsError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(K_ID, s(key))
            .consistent_read(true)
            .send()
            .await
            .map_err(self.err(key, "GetItem"))?;
        Ok(out.item)
    }

    /// Takes the right to dead-letter what `scope` names, from the SQS message `message_id`, for
    /// `lease`. The marker makes dead-lettering idempotent: a redelivered copy of a message that is
    /// already in the DLQ (and a second message of a notification that is) finds it `done` and is
    /// acknowledged without another copy.
    ///
    /// Order: mark pending (this), send to the DLQ, confirm. A copy arriving while the first is
    /// between the mark and the confirm waits (`InFlight`, retried later) instead of sending too.
    /// The one duplicate window left here: an attempt that sent and then died (or could not
    /// confirm) before confirming; once its lease lapses, a redelivered copy sends again. Dying
    /// between the mark and the send only delays the copy by the lease. Outside the consumer's
    /// reach: SQS's own redrive policy moving a message the consumer already dead-lettered (every
    /// delete of it lost until `maxReceiveCount`) leaves a second copy.
    ///
    /// `redriven`: the message came back from the DLQ (it carries
    /// [`attr::FIRST_SENT_AT`](ferry_core::notify::attr::FIRST_SENT_AT)); it left the DLQ, so
    /// failing again it is dead-lettered again even though an earlier message was.
    pub async fn begin_dead_letter(
        &self,
        scope: LetterScope<'_>,
        message_id: &str,
        redriven: bool,
        kind: &str,
        lease: Duration,
    ) -> Result<LetterSlot, NotifyAwsError> {
        let key = keys::dead_letter(&scope);
        let now = now_ms();
        let mut condition = "attribute_not_exists(#id) OR #exp < :now_s OR (#dls = :pending AND #lease < :now)".to_owned();
        if redriven {
            condition.push_str(" OR (#dls = :done AND #dlm <> :mid)");
        }
        let res = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(K_ID, s(&key))
            .update_expression("SET #dls = :pending, #dlm = :mid, #kind = :kind, #lease = :lease, #upd = :now, #exp = :exp")
            .condition_expression(condition)
            .expression_attribute_names("#id", K_ID)
            .expression_attribute_names("#dls", K_DL_STATE)
            .expression_attribute_names("#dlm", K_DL_MESSAGE)
            .expression_attribute_names("#kind", K_DL_KIND)
            .expression_attribute_names("#lease", K_LEASE)
            .expression_attribute_names("#upd", K_UPDATED)
            .expression_attribute_names("#exp", K_EXPIRES)
            .expression_attribute_values(":pending", s(DL_PENDING))
            .expression_attribute_values(":mid", s(message_id))
            .expression_attribute_values(":kind", s(kind))
            .expression_attribute_values(":lease", n(now + lease.as_millis() as i64))
            .expression_attribute_values(":now", n(now))
            .expression_attribute_values(":now_s", n(now / 1000))
            .expression_attribute_values(":exp", n(now / 1000 + MARKER_RETENTION_SECS));
        let res = if redriven { res.expression_attribute_values(":done", s(DL_DONE)) } else { res };
        match res.send().await {
            Ok(_) => Ok(LetterSlot::Take),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_conditional_check_failed_exception()) => {
                let Some(item) = self.get_item(&key).await? else {
                    return Ok(LetterSlot::InFlight { lease_until_ms: now });
                };
                let text = |k: &str| item.get(k).and_then(|v| v.as_s().ok()).cloned();
                let lease_until_ms = item.get(K_LEASE).and_then(|v| v.as_n().ok()).and_then(|v| v.parse().ok()).unwrap_or(now);
                match text(K_DL_STATE).as_deref() {
                    Some(DL_DONE) => Ok(LetterSlot::Done { message_id: text(K_DL_MESSAGE).unwrap_or_default() }),
                    _ => Ok(LetterSlot::InFlight { lease_until_ms }),
                }
            }
            Err(e) => Err(self.err(&key, "UpdateItem (dead-letter marker)")(e)),
        }
    }

    /// Records that the DLQ holds the copy [`DeliveryTable::begin_dead_letter`] allowed.
    pub async fn confirm_dead_letter(&self, scope: LetterScope<'_>, message_id: &str) -> Result<Written, NotifyAwsError> {
        self.settle_marker(scope, message_id, true).await
    }

    /// Gives a marker back after the DLQ refused the send, so the retry need not wait for the lease.
    pub async fn release_dead_letter(&self, scope: LetterScope<'_>, message_id: &str) -> Result<Written, NotifyAwsError> {
        self.settle_marker(scope, message_id, false).await
    }

    async fn settle_marker(&self, scope: LetterScope<'_>, message_id: &str, sent: bool) -> Result<Written, NotifyAwsError> {
        let key = keys::dead_letter(&scope);
        let req = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(K_ID, s(&key))
            .condition_expression("#dls = :pending AND #dlm = :mid")
            .expression_attribute_names("#dls", K_DL_STATE)
            .expression_attribute_names("#dlm", K_DL_MESSAGE)
            .expression_attribute_names("#upd", K_UPDATED)
            .expression_attribute_names("#lease", K_LEASE)
            .expression_attribute_values(":pending", s(DL_PENDING))
            .expression_attribute_values(":mid", s(message_id))
            .expression_attribute_values(":now", n(now_ms()));
        let (req, op) = if sent {
            let req = req.update_expression("SET #dls = :done, #upd = :now REMOVE #lease").expression_attribute_values(":done", s(DL_DONE));
            (req, "UpdateItem (dead-letter confirm)")
        } else {
            (
                req.update_expression("SET #lease = :zero, #upd = :now").expression_attribute_values(":zero", n(0)),
                "UpdateItem (dead-letter release)",
            )
        };
        match req.send().await {
            Ok(_) => Ok(Written::Applied),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_conditional_check_failed_exception()) => Ok(Written::Skipped),
            Err(e) => Err(self.err(&key, op)(e)),
        }
    }
}

/// Whether a request may pass [`DeliveryTable::admit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Counted in the caller's window.
    Admitted,
    /// The caller's window is full until `retry_after` has passed.
    Limited { retry_after: Duration },
}

impl DeliveryTable {
    /// The intake's per-caller fixed-window throttle: counts one request of `sender` unless its
    /// current window of `rule` is full. One counter item per caller and window ([`keys::THROTTLE`]),
    /// incremented by a conditional update, so concurrent intakes share one count. Items expire
    /// (TTL) shortly after their window.
    pub async fn admit(&self, sender: &Sender, rule: FixedWindow) -> Result<Admission, NotifyAwsError> {
        let now_s = u64::try_from(now_ms() / 1000).unwrap_or(0);
        let (window, retry_after) = rule.window(now_s);
        let key = keys::throttle(sender, window);
        let res = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(K_ID, s(&key))
            .update_expression("SET #exp = :exp ADD #count :one")
            .condition_expression("attribute_not_exists(#id) OR #count < :limit")
            .expression_attribute_names("#id", K_ID)
            .expression_attribute_names("#exp", K_EXPIRES)
            .expression_attribute_names("#count", K_COUNT)
            .expression_attribute_values(":exp", n(now_s + retry_after + 3600))
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":limit", n(rule.limit))
            .send()
            .await;
        match res {
            Ok(_) => Ok(Admission::Admitted),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_conditional_check_failed_exception()) => {
                Ok(Admission::Limited { retry_after: Duration::from_secs(retry_after) })
            }
            Err(e) => Err(self.err(&key, "UpdateItem (throttle)")(e)),
        }
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Enough randomness for claim tokens, without a dependency: the std hasher is randomly keyed.
fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    h.finish()
}

// ---------------------------------------------------------------------------------------------
// Queues

/// A message as received from a queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub message_id: String,
    pub receipt_handle: String,
    pub body: String,
    /// String message attributes.
    pub attributes: BTreeMap<String, String>,
    /// SQS system attributes (`SentTimestamp`, `ApproximateReceiveCount`, ...).
    pub system: BTreeMap<String, String>,
}

impl Received {
    pub fn sent_timestamp(&self) -> i64 {
        self.system.get("SentTimestamp").and_then(|t| t.parse().ok()).unwrap_or(0)
    }

    pub fn dead_letter(&self) -> DeadLetter {
        DeadLetter::describe(&self.attributes, &self.body, self.sent_timestamp())
    }
}

fn string_attr(v: &str) -> Result<MessageAttributeValue, String> {
    MessageAttributeValue::builder().data_type("String").string_value(v).build().map_err(|e| e.to_string())
}

fn attr_values(queue: &str, attrs: &BTreeMap<String, String>) -> Result<HashMap<String, MessageAttributeValue>, NotifyAwsError> {
    attrs
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| {
            let v = string_attr(truncate(v, 1024)).map_err(|message| NotifyAwsError::Sqs {
                queue: queue.to_owned(),
                op: "SendMessage",
                message,
            })?;
            Ok((k.clone(), v))
        })
        .collect()
}

/// Sends `body` to `queue_url` with the string attributes `attrs` (empty values left out). Returns
/// the SQS message id.
async fn send_with_attrs(sqs: &SqsClient, queue_url: &str, body: &str, attrs: &BTreeMap<String, String>) -> Result<String, NotifyAwsError> {
    let out = sqs
        .send_message()
        .queue_url(queue_url)
        .message_body(body)
        .set_message_attributes(Some(attr_values(queue_url, attrs)?))
        .send()
        .await
        .map_err(sqs_err(queue_url, "SendMessage"))?;
    Ok(out.message_id().unwrap_or_default().to_owned())
}

/// Sends `body` unchanged to the dead-letter queue with `attrs` (see [`attr`]) saying why.
pub async fn send_dead_letter(sqs: &SqsClient, dlq_url: &str, body: &str, attrs: &BTreeMap<String, String>) -> Result<(), NotifyAwsError> {
    send_with_attrs(sqs, dlq_url, body, attrs).await?;
    Ok(())
}

/// Sends a message to a queue.
pub async fn send(sqs: &SqsClient, queue_url: &str, body: &str) -> Result<(), NotifyAwsError> {
    sqs.send_message().queue_url(queue_url).message_body(body).send().await.map_err(sqs_err(queue_url, "SendMessage"))?;
    Ok(())
}

fn sender_attrs(sender: &Sender) -> BTreeMap<String, String> {
    BTreeMap::from([(attr::SENDER.to_owned(), sender.as_str().to_owned())])
}

/// Queues a submitted notification `body` (validated by the caller) with its sender
/// ([`attr::SENDER`]), which the consumer keys its claim on. Returns the SQS message id.
pub async fn send_notification(sqs: &SqsClient, queue_url: &str, sender: &Sender, body: &str) -> Result<String, NotifyAwsError> {
    send_with_attrs(sqs, queue_url, body, &sender_attrs(sender)).await
}

/// Sends many bodies as `sender`'s notifications, ten per request, as the intake would queue them
/// (without its checks: for local runs and tests). Returns how many were sent.
pub async fn send_all_as(sqs: &SqsClient, queue_url: &str, sender: &Sender, bodies: &[String]) -> Result<usize, NotifyAwsError> {
    let attrs = attr_values(queue_url, &sender_attrs(sender))?;
    let mut sent = 0;
    for chunk in bodies.chunks(10) {
        let entries = chunk
            .iter()
            .enumerate()
            .map(|(i, b)| {
                SendMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .message_body(b)
                    .set_message_attributes(Some(attrs.clone()))
                    .build()
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| NotifyAwsError::Sqs { queue: queue_url.to_owned(), op: "SendMessageBatch", message: e.to_string() })?;
        let out = sqs
            .send_message_batch()
            .queue_url(queue_url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(sqs_err(queue_url, "SendMessageBatch"))?;
        if let Some(f) = out.failed().first() {
            return Err(NotifyAwsError::Sqs {
                queue: queue_url.to_owned(),
                op: "SendMessageBatch",
                message: format!("{} entries failed, first: {}", out.failed().len(), f.message().unwrap_or(f.code())),
            });
        }
        sent += out.successful().len();
    }
    Ok(sent)
}

/// Receives up to `max` (at most 10) messages with every attribute, hiding them for `visibility`.
pub async fn receive(
    sqs: &SqsClient,
    queue_url: &str,
    max: i32,
    visibility: Duration,
    wait: Duration,
) -> Result<Vec<Received>, NotifyAwsError> {
    let out = sqs
        .receive_message()
        .queue_url(queue_url)
        .max_number_of_messages(max.clamp(1, 10))
        .visibility_timeout(visibility.as_secs() as i32)
        .wait_time_seconds(wait.as_secs().min(20) as i32)
        .message_attribute_names("All")
        .message_system_attribute_names(MessageSystemAttributeName::All)
        .send()
        .await
        .map_err(sqs_err(queue_url, "ReceiveMessage"))?;
    Ok(out
        .messages()
        .iter()
        .map(|m| Received {
            message_id: m.message_id().unwrap_or_default().to_owned(),
            receipt_handle: m.receipt_handle().unwrap_or_default().to_owned(),
            body: m.body().unwrap_or_default().to_owned(),
            attributes: m
                .message_attributes()
                .map(|a| a.iter().filter_map(|(k, v)| Some((k.clone(), v.string_value()?.to_owned()))).collect())
                .unwrap_or_default(),
            system: m.attributes().map(|a| a.iter().map(|(k, v)| (k.as_str().to_owned(), v.clone())).collect()).unwrap_or_default(),
        })
        .collect())
}

/// Deletes messages by receipt handle, ten per request. Returns how many deletions SQS refused.
pub async fn delete_all(sqs: &SqsClient, queue_url: &str, receipts: &[&str]) -> Result<usize, NotifyAwsError> {
    let mut failed = 0;
    for chunk in receipts.chunks(10) {
        let entries = chunk
            .iter()
            .enumerate()
            .map(|(i, r)| DeleteMessageBatchRequestEntry::builder().id(i.to_string()).receipt_handle(*r).build())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| NotifyAwsError::Sqs { queue: queue_url.to_owned(), op: "DeleteMessageBatch", message: e.to_string() })?;
        let out = sqs
            .delete_message_batch()
            .queue_url(queue_url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(sqs_err(queue_url, "DeleteMessageBatch"))?;
        failed += out.failed().len();
    }
    Ok(failed)
}

/// Makes hidden messages visible again at once (best effort: a lapsed handle is ignored).
async fn reveal(sqs: &SqsClient, queue_url: &str, receipts: &[String]) {
    for chunk in receipts.chunks(10) {
        let entries: Result<Vec<_>, _> = chunk
            .iter()
            .enumerate()
            .map(|(i, r)| {
                ChangeMessageVisibilityBatchRequestEntry::builder().id(i.to_string()).receipt_handle(r).visibility_timeout(0).build()
            })
            .collect();
        let Ok(entries) = entries else { continue };
        if let Err(e) = sqs.change_message_visibility_batch().queue_url(queue_url).set_entries(Some(entries)).send().await {
            tracing::warn!(queue = queue_url, error = %sdk_message(&e), "could not make skipped dead letters visible again; they reappear when their visibility timeout ends");
        }
    }
}

/// Approximate counts of a queue: (visible, in flight).
pub async fn queue_depth(sqs: &SqsClient, queue_url: &str) -> Result<(u64, u64), NotifyAwsError> {
    let out = sqs
        .get_queue_attributes()
        .queue_url(queue_url)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .map_err(sqs_err(queue_url, "GetQueueAttributes"))?;
    let get = |k: QueueAttributeName| out.attributes().and_then(|a| a.get(&k)).and_then(|v| v.parse().ok()).unwrap_or(0);
    Ok((get(QueueAttributeName::ApproximateNumberOfMessages), get(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)))
}

/// A queue's ARN.
pub async fn queue_arn(sqs: &SqsClient, queue_url: &str) -> Result<String, NotifyAwsError> {
    let out = sqs
        .get_queue_attributes()
        .queue_url(queue_url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .map_err(sqs_err(queue_url, "GetQueueAttributes"))?;
    out.attributes().and_then(|a| a.get(&QueueAttributeName::QueueArn)).cloned().ok_or_else(|| NotifyAwsError::Sqs {
        queue: queue_url.to_owned(),
        op: "GetQueueAttributes",
        message: "no QueueArn returned".into(),
    })
}

/// The URLs of a source queue and its dead-letter queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuePair {
    pub source_url: String,
    pub dlq_url: String,
}

/// Settings of [`create_queue_pair`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueSettings {
    /// Receives after which SQS moves a message to the DLQ.
    pub max_receive_count: u32,
    pub visibility_timeout: Duration,
}

impl Default for QueueSettings {
    fn default() -> QueueSettings {
        QueueSettings { max_receive_count: 5, visibility_timeout: Duration::from_secs(60) }
    }
}

/// Creates `{name}` with a RedrivePolicy to `{name}-dlq`. For local runs and tests; deployed
/// queues come from the template.
pub async fn create_queue_pair(sqs: &SqsClient, name: &str, settings: QueueSettings) -> Result<QueuePair, NotifyAwsError> {
    let dlq_name = format!("{name}-dlq");
    let dlq_url = sqs
        .create_queue()
        .queue_name(&dlq_name)
        .attributes(QueueAttributeName::MessageRetentionPeriod, "1209600")
        .send()
        .await
        .map_err(sqs_err(&dlq_name, "CreateQueue"))?
        .queue_url()
        .unwrap_or_default()
        .to_owned();
    let dlq_arn = queue_arn(sqs, &dlq_url).await?;
    let policy = serde_json::json!({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": settings.max_receive_count.to_string()});
    let source_url = sqs
        .create_queue()
        .queue_name(name)
        .attributes(QueueAttributeName::VisibilityTimeout, settings.visibility_timeout.as_secs().to_string())
        .attributes(QueueAttributeName::RedrivePolicy, policy.to_string())
        .send()
        .await
        .map_err(sqs_err(name, "CreateQueue"))?
        .queue_url()
        .unwrap_or_default()
        .to_owned();
    Ok(QueuePair { source_url, dlq_url })
}

// ---------------------------------------------------------------------------------------------
// Redrive

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
        .map_err(sqs_err(dlq_arn, "StartMessageMoveTask"))?;
    Ok(out.task_handle().unwrap_or_default().to_owned())
}

/// The most recent move tasks of the DLQ `dlq_arn` (SQS keeps the last ten), newest first.
pub async fn list_move_tasks(sqs: &SqsClient, dlq_arn: &str) -> Result<Vec<MoveTask>, NotifyAwsError> {
    let out =
        sqs.list_message_move_tasks().source_arn(dlq_arn).max_results(10).send().await.map_err(sqs_err(dlq_arn, "ListMessageMoveTasks"))?;
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
    reveal(sqs, &queues.dlq_url, &left_alone).await;
    result.map(|()| report)
}

async fn move_batch(
    sqs: &SqsClient,
    queues: &QueuePair,
    batch: &[(Received, DeadLetter)],
    report: &mut RedriveReport,
) -> Result<(), NotifyAwsError> {
    let mut entries = Vec::with_capacity(batch.len());
    for (i, (m, letter)) in batch.iter().enumerate() {
        let mut attrs: BTreeMap<String, String> =
            m.attributes.iter().filter(|(k, _)| !FAILURE_ATTRS.contains(&k.as_str())).map(|(k, v)| (k.clone(), v.clone())).collect();
        attrs.insert(attr::FIRST_SENT_AT.to_owned(), letter.first_sent_at.to_string());
        let entry = SendMessageBatchRequestEntry::builder()
            .id(i.to_string())
            .message_body(&m.body)
            .set_message_attributes(Some(attr_values(&queues.source_url, &attrs)?))
            .build()
            .map_err(|e| NotifyAwsError::Sqs { queue: queues.source_url.clone(), op: "SendMessageBatch", message: e.to_string() })?;
        entries.push(entry);
    }
    let out = sqs
        .send_message_batch()
        .queue_url(&queues.source_url)
        .set_entries(Some(entries))
        .send()
        .await
        .map_err(sqs_err(&queues.source_url, "SendMessageBatch"))?;
    for f in out.failed() {
        tracing::warn!(
            queue = queues.source_url,
            entry = f.id(),
            code = f.code(),
            message = f.message(),
            "send refused; the dead letter stays in the DLQ"
        );
    }
    report.send_failures += out.failed().len();
    // Only what the source queue now holds leaves the DLQ.
    let sent: Vec<&str> = out
        .successful()
        .iter()
        .filter_map(|s| s.id().parse::<usize>().ok())
        .filter_map(|i| batch.get(i))
        .map(|(m, _)| m.receipt_handle.as_str())
        .collect();
    let refused = delete_all(sqs, &queues.dlq_url, &sent).await?;
    report.delete_failures += refused;
    report.moved += sent.len() - refused;
    Ok(())
}
