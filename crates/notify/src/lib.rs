//! The notification Lambdas and their handlers, callable from tests as ordinary async functions.
//!
//! - [`intake`]: `notify-intake`, `POST /notifications` ([`intake::handle`]): the caller's
//!   identity, scope, body limit, validation and throttle, then onto the queue with the sender.
//! - [`consumer`]: `notify-consumer`, the SQS consumer ([`consumer::handle`]): validate, claim per
//!   (sender, notification id), send through the [`provider`], record; transient failures in
//!   `batchItemFailures`, permanent ones to the DLQ at once (once per message).
//! - [`redrive`]: `dlq-redrive`, the admin HTTP route ([`redrive::handle`]) that pushes dead
//!   letters back, natively or selectively.
//! - [`provider`]: the provider's HTTP API ([`provider::Provider`]).
//!
//! The rules (schema, state machine, classification, filters, claims) live in `ferry_core::notify`;
//! the AWS calls in `ferry_aws::notify` and `ferry_aws::secrets`; the HTTP routes' claims and error
//! bodies in `ferry_lambda::http`.

pub mod consumer;
pub mod intake;
pub mod provider;
pub mod redrive;

pub use consumer::{Consumer, ConsumerSettings};
pub use intake::{Intake, IntakeSettings};
pub use provider::{Provider, ProviderAuth, ProviderSettings};
pub use redrive::Redriver;
