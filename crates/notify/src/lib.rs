//! The notification Lambdas and their handlers, callable from tests as ordinary async functions.
//!
//! - [`consumer`]: `notify-consumer`, the SQS consumer ([`consumer::handle`]): validate, claim,
//!   send through the [`provider`], record; transient failures in `batchItemFailures`, permanent
//!   ones to the DLQ at once.
//! - [`redrive`]: `dlq-redrive`, the admin HTTP route ([`redrive::handle`]) that pushes dead
//!   letters back, natively or selectively.
//! - [`provider`]: the provider's HTTP API ([`provider::Provider`]).
//!
//! The rules (schema, state machine, classification, filters) live in `ferry_core::notify`; the AWS
//! calls in `ferry_aws::notify`.

pub mod consumer;
pub mod provider;
pub mod redrive;

pub use consumer::{Consumer, ConsumerSettings};
pub use provider::{Provider, ProviderSettings};
pub use redrive::Redriver;
