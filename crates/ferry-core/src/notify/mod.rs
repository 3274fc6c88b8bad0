//! Notifications: the message contract, the delivery state machine, what counts as a transient
//! failure, and which dead letters a selective redrive moves.
//!
//! - [`Notification::parse`]: strict validation of a queued message; a [`MessageError`] names the field.
//! - [`Status`]: `sending` -> `sent` -> `delivered` (and `failed`); [`Status::rank`] never goes down.
//! - [`classify_status`]: a provider's HTTP status as [`Attempt`] (accepted, transient, permanent).
//! - [`DeadLetter`] and [`RedriveFilter`]: what a dead letter says about itself, and the selection.
//! - [`AdminRule`]: which JWT claim makes a caller an admin who may redrive ([`claim_items`]: a
//!   claim as the list API Gateway hands over); [`has_scope`]: an OAuth scope, item by item.
//! - [`Sender`]: who submitted a notification; a notification id is unique per sender only.
//! - [`FixedWindow`]: the per-caller submit throttle's windows.
//! - [`mask_recipient`]: a recipient as logs may show it.
//!
//! One file per part, each public name re-exported here (`ferry_core::notify::X` is the path to use):
//! `message` (channels, the notification, recipients), `delivery` (status and provider attempts),
//! `dead_letters` (error kinds, dead letters, the redrive filter) and `callers` (admin rule, scope,
//! sender, throttle window); [`attr`] is here.

mod callers;
mod dead_letters;
mod delivery;
mod message;

pub use callers::{AdminRule, FixedWindow, MAX_SENDER_BYTES, Sender, claim_items, has_scope};
pub use dead_letters::{DeadLetter, ErrorKind, RedriveFilter, parse_age};
pub use delivery::{Attempt, Status, classify_status};
pub use message::{Channel, MessageError, Notification, mask_recipient};

/// Message attributes the consumer puts on what it dead-letters.
pub mod attr {
    /// An [`super::ErrorKind`].
    pub const ERROR_KIND: &str = "ferry-error-kind";
    /// The error, as text.
    pub const ERROR: &str = "ferry-error";
    /// The primary channel, when the message got that far.
    pub const CHANNEL: &str = "ferry-channel";
    pub const NOTIFICATION_ID: &str = "ferry-notification-id";
    /// When the message first entered the source queue, in Unix milliseconds.
    pub const FIRST_SENT_AT: &str = "ferry-first-sent-at";
    /// When it was dead-lettered, in Unix milliseconds.
    pub const FAILED_AT: &str = "ferry-failed-at";
    /// The [`super::Sender`] who submitted it. Set by the intake on every queued message and kept
    /// through the DLQ and both redrives; a message without it is refused.
    pub const SENDER: &str = "ferry-sender";
}
