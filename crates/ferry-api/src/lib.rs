//! The wire shapes of ferry's APIs, written once for the routes and their clients.
//!
//! - [`jobs`]: `/jobs`: the submit body ([`jobs::Envelope`], parsed strictly by
//!   [`jobs::parse_envelope`]), the job as the API shows it ([`jobs::JobView`]) and the answers
//!   that carry it ([`jobs::Submitted`], [`jobs::JobList`], [`jobs::Cancelled`]).
//! - [`error`]: the one error body, `{"error": PublicError}` ([`error::ErrorBody`]).
//! - [`notifications`]: `/notifications`: the request ([`notifications::NotificationRequest`])
//!   and the answer ([`notifications::Queued`]).
//! - [`redrive`]: `/admin/redrive`: the request ([`redrive::RedriveRequest`]) and the answers.
//! - [`claims`]: a JWT claim in the list forms API Gateway's authorizer hands over
//!   ([`claims::claim_items`]), and the admin check over them ([`claims::is_admin`]).
//! - [`s3`]: an object key as S3 event notifications carry it ([`s3::decode_event_key`]).
//! - [`sqs`]: the message attributes notifications travel with ([`sqs::attr`]) and a dead letter
//!   read back from them ([`sqs::dead_letter`]).
//!
//! **Invariant:** shapes only. Every decision these shapes feed (what a submit may ask for, who is
//! an admin, which filter a redrive applies) is `ferry_core`'s; this crate turns bytes and strings
//! into its values and back, byte for byte as the routes have always answered. It names no
//! Lambda, AWS or HTTP-client crate.

pub mod claims;
pub mod error;
pub mod jobs;
pub mod notifications;
pub mod redrive;
pub mod s3;
pub mod sqs;
