//! SQS: the generic operations ferry's queues are built on. Sending with string attributes (one or a
//! batch), receiving with every attribute, deleting and releasing by receipt handle, and a queue's
//! attributes. What a notification's attributes mean is [`crate::notify`]'s.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry, MessageAttributeValue, MessageSystemAttributeName,
    QueueAttributeName, SendMessageBatchRequestEntry,
};

use crate::Error;
use crate::error::SdkError;

/// The SDK's SQS client, named here so callers hold one without depending on the SDK.
pub use aws_sdk_sqs::Client as SqsClient;

/// SQS's most entries per batch request (and messages per receive).
const BATCH: usize = 10;
/// The longest string attribute value sent; longer ones are cut (at a character boundary).
const MAX_ATTR_BYTES: usize = 1024;

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
}

/// One message of [`send_batch`].
#[derive(Debug, Clone, Copy)]
pub struct Outgoing<'a> {
    pub body: &'a str,
    pub attributes: &'a BTreeMap<String, String>,
}

/// What [`send_batch`] did with each message, by its index in the slice sent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchSent {
    pub sent: Vec<usize>,
    /// Refused messages: index, SQS's code and message.
    pub refused: Vec<(usize, String, String)>,
}

/// The failure of an SQS call on `queue`.
pub(crate) fn error<E, R>(operation: &'static str, queue: &str, e: SdkError<E, R>) -> Error
where
    E: aws_sdk_sqs::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    Error::sdk("SQS", operation, queue, e)
}

/// `s` cut to at most `max` bytes, at a character boundary.
pub(crate) fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// `attrs` as SQS string attributes, empty values left out, long ones cut.
fn attr_values(
    queue: &str,
    operation: &'static str,
    attrs: &BTreeMap<String, String>,
) -> Result<HashMap<String, MessageAttributeValue>, Error> {
    attrs
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| {
            let value = MessageAttributeValue::builder()
                .data_type("String")
                .string_value(truncate(v, MAX_ATTR_BYTES))
                .build()
                .map_err(|e| Error::other("SQS", operation, queue, e.to_string()))?;
            Ok((k.clone(), value))
        })
        .collect()
}

/// Sends `body` to `queue_url` with the string attributes `attrs` (empty values left out). Returns
/// the SQS message id.
pub async fn send(sqs: &SqsClient, queue_url: &str, body: &str, attrs: &BTreeMap<String, String>) -> Result<String, Error> {
    let out = sqs
        .send_message()
        .queue_url(queue_url)
        .message_body(body)
        .set_message_attributes(Some(attr_values(queue_url, "SendMessage", attrs)?))
        .send()
        .await
        .map_err(|e| error("SendMessage", queue_url, e))?;
    Ok(out.message_id().unwrap_or_default().to_owned())
}

/// Sends `messages` (at most ten) in one request. SQS may refuse single messages of a request that
/// succeeds: the answer says which went and which did not.
pub async fn send_batch(sqs: &SqsClient, queue_url: &str, messages: &[Outgoing<'_>]) -> Result<BatchSent, Error> {
    const OP: &str = "SendMessageBatch";
    if messages.len() > BATCH {
        return Err(Error::other("SQS", OP, queue_url, format!("{} messages, over the {BATCH} of one request", messages.len())));
    }
    let entries = messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            SendMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .message_body(m.body)
                .set_message_attributes(Some(attr_values(queue_url, OP, m.attributes)?))
                .build()
                .map_err(|e| Error::other("SQS", OP, queue_url, e.to_string()))
        })
        .collect::<Result<Vec<_>, Error>>()?;
    let out = sqs.send_message_batch().queue_url(queue_url).set_entries(Some(entries)).send().await.map_err(|e| error(OP, queue_url, e))?;
    let index = |id: &str| id.parse::<usize>().ok();
    Ok(BatchSent {
        sent: out.successful().iter().filter_map(|s| index(s.id())).collect(),
        refused: out
            .failed()
            .iter()
            .filter_map(|f| Some((index(f.id())?, f.code().to_owned(), f.message().unwrap_or_default().to_owned())))
            .collect(),
    })
}

/// Receives up to `max` (at most 10) messages with every attribute, hiding them for `visibility`.
pub async fn receive(sqs: &SqsClient, queue_url: &str, max: i32, visibility: Duration, wait: Duration) -> Result<Vec<Received>, Error> {
    let out = sqs
        .receive_message()
        .queue_url(queue_url)
        .max_number_of_messages(max.clamp(1, BATCH as i32))
        .visibility_timeout(visibility.as_secs() as i32)
        .wait_time_seconds(wait.as_secs().min(20) as i32)
        .message_attribute_names("All")
        .message_system_attribute_names(MessageSystemAttributeName::All)
        .send()
        .await
        .map_err(|e| error("ReceiveMessage", queue_url, e))?;
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
pub async fn delete_all(sqs: &SqsClient, queue_url: &str, receipts: &[&str]) -> Result<usize, Error> {
    const OP: &str = "DeleteMessageBatch";
    let mut failed = 0;
    for chunk in receipts.chunks(BATCH) {
        let entries = chunk
            .iter()
            .enumerate()
            .map(|(i, r)| DeleteMessageBatchRequestEntry::builder().id(i.to_string()).receipt_handle(*r).build())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Error::other("SQS", OP, queue_url, e.to_string()))?;
        let out =
            sqs.delete_message_batch().queue_url(queue_url).set_entries(Some(entries)).send().await.map_err(|e| error(OP, queue_url, e))?;
        failed += out.failed().len();
    }
    Ok(failed)
}

/// Makes received messages visible again at once. Best effort: a failed request (a lapsed handle)
/// is logged, and those messages reappear when their visibility timeout ends.
pub async fn release_all(sqs: &SqsClient, queue_url: &str, receipts: &[String]) {
    for chunk in receipts.chunks(BATCH) {
        let entries: Result<Vec<_>, _> = chunk
            .iter()
            .enumerate()
            .map(|(i, r)| {
                ChangeMessageVisibilityBatchRequestEntry::builder().id(i.to_string()).receipt_handle(r).visibility_timeout(0).build()
            })
            .collect();
        let Ok(entries) = entries else { continue };
        if let Err(e) = sqs.change_message_visibility_batch().queue_url(queue_url).set_entries(Some(entries)).send().await {
            let e = error("ChangeMessageVisibilityBatch", queue_url, e);
            tracing::warn!(queue = queue_url, error = %e, "could not make messages visible again; they reappear when their visibility timeout ends");
        }
    }
}

/// Approximate counts of a queue: (visible, in flight).
pub async fn queue_depth(sqs: &SqsClient, queue_url: &str) -> Result<(u64, u64), Error> {
    let out = sqs
        .get_queue_attributes()
        .queue_url(queue_url)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .map_err(|e| error("GetQueueAttributes", queue_url, e))?;
    let get = |k: QueueAttributeName| out.attributes().and_then(|a| a.get(&k)).and_then(|v| v.parse().ok()).unwrap_or(0);
    Ok((get(QueueAttributeName::ApproximateNumberOfMessages), get(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)))
}

/// A queue's ARN.
pub async fn queue_arn(sqs: &SqsClient, queue_url: &str) -> Result<String, Error> {
    let out = sqs
        .get_queue_attributes()
        .queue_url(queue_url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .map_err(|e| error("GetQueueAttributes", queue_url, e))?;
    out.attributes()
        .and_then(|a| a.get(&QueueAttributeName::QueueArn))
        .cloned()
        .ok_or_else(|| Error::other("SQS", "GetQueueAttributes", queue_url, "no QueueArn returned"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_values_are_cut_at_a_character_boundary() {
        assert_eq!(truncate("abc", 5), "abc");
        assert_eq!(truncate("abcdef", 3), "abc");
        assert_eq!(truncate("aé", 2), "a");
    }
}
