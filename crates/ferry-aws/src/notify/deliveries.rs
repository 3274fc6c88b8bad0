//! Delivery records and throttle counters in the deliveries table.

use std::time::Duration;

use aws_sdk_dynamodb::types::ReturnValue;
use ferry_core::notify::{Channel, FixedWindow, Sender, Status};

use super::{DynamoClient, NotifyAwsError, keys, now_ms};
use crate::dynamo::{self, AttributeValue, Item, is_true, n, num, s, text};
use crate::error::SdkError;
use crate::sqs::truncate;

pub(super) const K_ID: &str = "notification_id";
const K_SENDER: &str = "sender";
const K_NOTIFICATION: &str = "notification";
const K_STATUS: &str = "delivery_status";
const K_RANK: &str = "status_rank";
const K_TOKEN: &str = "claim_token";
pub(super) const K_LEASE: &str = "lease_until_ms";
const K_ATTEMPTS: &str = "attempts";
const K_PRIMARY_REJECTED: &str = "primary_rejected";
const K_CHANNEL: &str = "channel";
const K_PROVIDER_ID: &str = "provider_message_id";
const K_ERROR: &str = "last_error";
pub(super) const K_UPDATED: &str = "updated_at_ms";
/// DynamoDB TTL (Unix seconds). Far beyond how long SQS can hold a message (14 days in a queue, then
/// as long again in the DLQ), so a record never expires while a duplicate of it may still arrive.
pub(super) const K_EXPIRES: &str = "expires_at";
const RETENTION_SECS: i64 = 90 * 86_400;
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

impl Written {
    pub(super) fn of<T>(w: dynamo::Written<T>) -> Written {
        if w.is_done() { Written::Applied } else { Written::Skipped }
    }
}

/// The delivery table: partition key `notification_id` (string), holding the items of [`keys`].
#[derive(Debug, Clone)]
pub struct DeliveryTable {
    pub(super) client: DynamoClient,
    pub(super) table: String,
}

impl DeliveryTable {
    pub fn new(client: DynamoClient, table: impl Into<String>) -> DeliveryTable {
        DeliveryTable { client, table: table.into() }
    }

    pub fn name(&self) -> &str {
        &self.table
    }

    pub(super) fn err<E, R>(&self, id: &str, op: &'static str) -> impl FnOnce(SdkError<E, R>) -> NotifyAwsError + use<'_, E, R>
    where
        E: aws_sdk_dynamodb::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
        R: std::fmt::Debug + Send + Sync + 'static,
    {
        let resource = dynamo::item_resource(&self.table, id);
        move |e| NotifyAwsError(dynamo::error(op, &resource, e))
    }

    /// A conditional write's outcome; any failure but its condition as the error of `op` on `id`.
    pub(super) fn written<T, E, R>(
        &self,
        id: &str,
        op: &'static str,
        out: Result<T, SdkError<E, R>>,
    ) -> Result<dynamo::Written<T>, NotifyAwsError>
    where
        E: aws_sdk_dynamodb::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
        R: std::fmt::Debug + Send + Sync + 'static,
    {
        Ok(dynamo::written(op, &dynamo::item_resource(&self.table, id), out)?)
    }

    /// The item `id` could not be read as what it should be.
    pub(super) fn bad_item(&self, id: &str, message: String) -> NotifyAwsError {
        NotifyAwsError(crate::Error::other("DynamoDB", "decode", dynamo::item_resource(&self.table, id), message))
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
        match self.written(&key, "UpdateItem (claim)", res)? {
            dynamo::Written::Done(out) => {
                let primary_rejected = out.attributes().is_some_and(|a| is_true(a, K_PRIMARY_REJECTED));
                Ok(Claim::Claimed { token, primary_rejected })
            }
            dynamo::Written::ConditionFailed => {
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
        Ok(Written::of(self.written(&key, "UpdateItem (advance)", req.send().await)?))
    }

    /// Gives a claim back after a transient failure, so the retry need not wait for the lease.
    pub async fn release(&self, sender: &Sender, id: &str, token: &str, primary_rejected: bool) -> Result<Written, NotifyAwsError> {
        let key = keys::delivery(sender, id);
        let res = self
            .held(&key, token)
            .update_expression("SET #lease = :zero, #pr = :pr, #upd = :now")
            .expression_attribute_names("#lease", K_LEASE)
            .expression_attribute_names("#pr", K_PRIMARY_REJECTED)
            .expression_attribute_names("#upd", K_UPDATED)
            .expression_attribute_values(":zero", n(0))
            .expression_attribute_values(":pr", AttributeValue::Bool(primary_rejected))
            .expression_attribute_values(":now", n(now_ms()))
            .send()
            .await;
        Ok(Written::of(self.written(&key, "UpdateItem (release)", res)?))
    }

    /// Records a permanent failure on every channel. A later redrive may claim it again.
    pub async fn mark_failed(&self, sender: &Sender, id: &str, token: &str, error: &str) -> Result<Written, NotifyAwsError> {
        let key = keys::delivery(sender, id);
        let res = self
            .held(&key, token)
            .update_expression("SET #st = :failed, #err = :err, #upd = :now REMOVE #tok, #lease, #pr")
            .expression_attribute_names("#err", K_ERROR)
            .expression_attribute_names("#upd", K_UPDATED)
            .expression_attribute_names("#lease", K_LEASE)
            .expression_attribute_names("#pr", K_PRIMARY_REJECTED)
            .expression_attribute_values(":failed", s(Status::Failed.as_str()))
            .expression_attribute_values(":err", s(truncate(error, 1024)))
            .expression_attribute_values(":now", n(now_ms()))
            .send()
            .await;
        Ok(Written::of(self.written(&key, "UpdateItem (failed)", res)?))
    }

    /// An update of `key` that lands only while `token`'s claim holds it (still `sending`): the
    /// condition every write of a claim's holder carries.
    fn held(&self, key: &str, token: &str) -> aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder {
        self.client
            .update_item()
            .table_name(&self.table)
            .key(K_ID, s(key))
            .condition_expression("#tok = :tok AND #st = :sending")
            .expression_attribute_names("#tok", K_TOKEN)
            .expression_attribute_names("#st", K_STATUS)
            .expression_attribute_values(":tok", s(token))
            .expression_attribute_values(":sending", s(Status::Sending.as_str()))
    }

    /// Reads `sender`'s record of notification `id` (strongly consistent).
    pub async fn get(&self, sender: &Sender, id: &str) -> Result<Option<DeliveryRecord>, NotifyAwsError> {
        let key = keys::delivery(sender, id);
        let Some(item) = self.get_item(&key).await? else { return Ok(None) };
        let bad = |message: String| self.bad_item(&key, message);
        let text = |k: &str| text(&item, k);
        let num = |k: &str| num(&item, k);
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
            primary_rejected: is_true(&item, K_PRIMARY_REJECTED),
        }))
    }

    pub(super) async fn get_item(&self, key: &str) -> Result<Option<Item>, NotifyAwsError> {
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
        Ok(match self.written(&key, "UpdateItem (throttle)", res)? {
            dynamo::Written::Done(_) => Admission::Admitted,
            dynamo::Written::ConditionFailed => Admission::Limited { retry_after: Duration::from_secs(retry_after) },
        })
    }
}

/// Enough randomness for claim tokens, without a dependency: the std hasher is randomly keyed.
fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    h.finish()
}
