//! Notifications on AWS: the delivery table in DynamoDB, the dead-letter queue in SQS, and both
//! ways of redriving it.
//!
//! - [`DeliveryTable`] (`deliveries`): one item per (sender, notification id).
//!   [`DeliveryTable::claim`] is the conditional write that makes sending idempotent;
//!   [`DeliveryTable::advance`] never lets a status go back (the condition is on [`Status::rank`]).
//!   [`DeliveryTable::admit`] is the intake's per-caller fixed-window throttle, in the same table.
//! - `dead_letters`: [`DeliveryTable::begin_dead_letter`] makes dead-lettering happen once per
//!   message (and per notification).
//! - [`keys`]: how those three kinds of item share the table's one key.
//! - `queues`: [`send_notification`] (a submitted notification onto the queue with its sender),
//!   [`send_dead_letter`] (a message to the DLQ with attributes saying why, [`attr`]) and the local
//!   queue pair, over [`crate::sqs`] (receiving, deleting, queue attributes: re-exported here).
//! - `redrive`: [`start_move_task`] / [`list_move_tasks`] (SQS's own redrive,
//!   `StartMessageMoveTask`), and [`selective_redrive`], which moves only the dead letters a
//!   [`RedriveFilter`] selects: it sends to the source queue first and deletes from the DLQ only
//!   after the send succeeded.
//!
//! [`Status::rank`]: ferry_core::notify::Status::rank
//! [`attr`]: ferry_api::sqs::attr
//! [`RedriveFilter`]: ferry_core::notify::RedriveFilter

mod dead_letters;
mod deliveries;
mod queues;
mod redrive;

pub use crate::dynamo::DynamoClient;
pub use crate::sqs::{Received, SqsClient, delete_all, queue_arn, queue_depth, receive};
pub use dead_letters::{LetterScope, LetterSlot};
pub use deliveries::{Admission, Claim, DeliveryRecord, DeliveryTable, Written};
pub use queues::{QueuePair, send_all_as, send_dead_letter, send_notification};
pub use redrive::{Matched, MoveTask, RedriveOptions, RedriveProgress, RedriveReport, list_move_tasks, selective_redrive, start_move_task};

/// An AWS call of the notification adapters that failed, or an item they could not read. The
/// [`crate::Error`] names the queue or table (and item) and the operation.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct NotifyAwsError(#[from] pub crate::Error);

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

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
