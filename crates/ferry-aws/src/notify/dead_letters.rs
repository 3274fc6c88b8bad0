//! Dead-letter markers in the deliveries table: a dead letter is sent to the DLQ once per message
//! (and per notification).

use std::time::Duration;

use ferry_core::notify::Sender;

use super::deliveries::{K_EXPIRES, K_ID, K_LEASE, K_UPDATED, Written};
use super::{DeliveryTable, NotifyAwsError, keys, now_ms};
use crate::dynamo::{self, n, num, s, text};

// A marker's attributes, besides the shared key, lease, update time and expiry.
const K_DL_STATE: &str = "dead_letter_state";
const K_DL_MESSAGE: &str = "dead_letter_message_id";
const K_DL_KIND: &str = "dead_letter_kind";
const DL_PENDING: &str = "pending";
const DL_DONE: &str = "done";
/// As long as the DLQ keeps a message: while its copy may be there, a repeat is not sent again.
const MARKER_RETENTION_SECS: i64 = 14 * 86_400;

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

impl DeliveryTable {
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
    /// [`attr::FIRST_SENT_AT`](ferry_api::sqs::attr::FIRST_SENT_AT)); it left the DLQ, so
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
        if let dynamo::Written::Done(_) = self.written(&key, "UpdateItem (dead-letter marker)", res.send().await)? {
            return Ok(LetterSlot::Take);
        }
        let Some(item) = self.get_item(&key).await? else {
            return Ok(LetterSlot::InFlight { lease_until_ms: now });
        };
        let lease_until_ms = num(&item, K_LEASE).unwrap_or(now);
        match text(&item, K_DL_STATE).as_deref() {
            Some(DL_DONE) => Ok(LetterSlot::Done { message_id: text(&item, K_DL_MESSAGE).unwrap_or_default() }),
            _ => Ok(LetterSlot::InFlight { lease_until_ms }),
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
        Ok(Written::of(self.written(&key, op, req.send().await)?))
    }
}
