//! Notifications: the message contract, the delivery state machine, what counts as a transient
//! failure, and which dead letters a selective redrive moves.
//!
//! - [`Notification::parse`]: strict validation of a queued message; a [`MessageError`] names the field.
//! - [`Status`]: `sending` -> `sent` -> `delivered` (and `failed`); [`Status::rank`] never goes down.
//! - [`classify_status`]: a provider's HTTP status as [`Attempt`] (accepted, transient, permanent).
//! - [`DeadLetter`] and [`RedriveFilter`]: what a dead letter says about itself, and the selection.
//! - [`AdminRule`]: which JWT claim makes a caller an admin who may redrive, over the claim's
//!   items; [`has_scope`]: an OAuth scope, item by item.
//! - [`Sender`]: who submitted a notification; a notification id is unique per sender only.
//! - [`FixedWindow`]: the per-caller submit throttle's windows.
//! - [`mask_recipient`]: a recipient as logs may show it.
//!
//! One file per part, each public name re-exported here (`ferry_core::notify::X` is the path to use):
//! `message` (channels, the notification, recipients), `delivery` (status and provider attempts),
//! `dead_letters` (error kinds, dead letters, the redrive filter) and `callers` (admin rule, scope,
//! sender, throttle window). The SQS attribute names that carry these values are `ferry_api::sqs`'s.

mod callers;
mod dead_letters;
mod delivery;
mod message;

pub use callers::{AdminRule, FixedWindow, MAX_SENDER_BYTES, Sender, has_scope};
pub use dead_letters::{DeadLetter, ErrorKind, Marks, RedriveFilter, parse_age};
pub use delivery::{Attempt, Status, classify_status};
pub use message::{Channel, MessageError, Notification, mask_recipient};
