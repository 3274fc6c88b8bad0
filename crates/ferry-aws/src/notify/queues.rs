//! The notification queue and its DLQ over [`crate::sqs`]: a notification sent with its sender, a
//! dead letter with the attributes saying why.

use std::collections::BTreeMap;

use ferry_api::sqs::{self as wire, attr};
use ferry_core::notify::{DeadLetter, Sender};

use super::NotifyAwsError;
use crate::sqs::{self, Outgoing, Received, SqsClient};

impl Received {
    /// The dead letter this message is, as its attributes describe it.
    pub fn dead_letter(&self) -> DeadLetter {
        wire::dead_letter(&self.attributes, &self.body, self.sent_timestamp())
    }
}

/// Sends `body` unchanged to the dead-letter queue with `attrs` (see [`attr`]) saying why.
pub async fn send_dead_letter(sqs: &SqsClient, dlq_url: &str, body: &str, attrs: &BTreeMap<String, String>) -> Result<(), NotifyAwsError> {
    sqs::send(sqs, dlq_url, body, attrs).await?;
    Ok(())
}

fn sender_attrs(sender: &Sender) -> BTreeMap<String, String> {
    BTreeMap::from([(attr::SENDER.to_owned(), sender.as_str().to_owned())])
}

/// Queues a submitted notification `body` (validated by the caller) with its sender
/// ([`attr::SENDER`]), which the consumer keys its claim on. Returns the SQS message id.
pub async fn send_notification(sqs: &SqsClient, queue_url: &str, sender: &Sender, body: &str) -> Result<String, NotifyAwsError> {
    Ok(sqs::send(sqs, queue_url, body, &sender_attrs(sender)).await?)
}

/// Sends many bodies as `sender`'s notifications, ten per request, as the intake would queue them
/// (without its checks: for local runs and tests). Returns how many were sent.
pub async fn send_all_as(sqs: &SqsClient, queue_url: &str, sender: &Sender, bodies: &[String]) -> Result<usize, NotifyAwsError> {
    let attrs = sender_attrs(sender);
    let mut sent = 0;
    for chunk in bodies.chunks(10) {
        let messages: Vec<Outgoing<'_>> = chunk.iter().map(|b| Outgoing { body: b, attributes: &attrs }).collect();
        let out = sqs::send_batch(sqs, queue_url, &messages).await?;
        if let Some((_, code, message)) = out.refused.first() {
            let first = if message.is_empty() { code } else { message };
            let message = format!("{} entries failed, first: {first}", out.refused.len());
            return Err(crate::Error::other("SQS", "SendMessageBatch", queue_url, message).into());
        }
        sent += out.sent.len();
    }
    Ok(sent)
}

/// The URLs of a source queue and its dead-letter queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuePair {
    pub source_url: String,
    pub dlq_url: String,
}
