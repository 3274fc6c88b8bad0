//! The notification queue and its DLQ: sending with attributes, receiving, deleting, queue
//! attributes, and the queue pair local runs create.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use aws_sdk_sqs::types::{
    DeleteMessageBatchRequestEntry, MessageAttributeValue, MessageSystemAttributeName, QueueAttributeName, SendMessageBatchRequestEntry,
};
use ferry_core::notify::{DeadLetter, Sender, attr};

use super::{NotifyAwsError, SqsClient, sqs_err, truncate};

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

    pub fn dead_letter(&self) -> DeadLetter {
        DeadLetter::describe(&self.attributes, &self.body, self.sent_timestamp())
    }
}

fn string_attr(v: &str) -> Result<MessageAttributeValue, String> {
    MessageAttributeValue::builder().data_type("String").string_value(v).build().map_err(|e| e.to_string())
}

pub(super) fn attr_values(queue: &str, attrs: &BTreeMap<String, String>) -> Result<HashMap<String, MessageAttributeValue>, NotifyAwsError> {
    attrs
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| {
            let v = string_attr(truncate(v, 1024)).map_err(|message| NotifyAwsError::Sqs {
                queue: queue.to_owned(),
                op: "SendMessage",
                message,
            })?;
            Ok((k.clone(), v))
        })
        .collect()
}

/// Sends `body` to `queue_url` with the string attributes `attrs` (empty values left out). Returns
/// the SQS message id.
async fn send_with_attrs(sqs: &SqsClient, queue_url: &str, body: &str, attrs: &BTreeMap<String, String>) -> Result<String, NotifyAwsError> {
    let out = sqs
        .send_message()
        .queue_url(queue_url)
        .message_body(body)
        .set_message_attributes(Some(attr_values(queue_url, attrs)?))
        .send()
        .await
        .map_err(sqs_err(queue_url, "SendMessage"))?;
    Ok(out.message_id().unwrap_or_default().to_owned())
}

/// Sends `body` unchanged to the dead-letter queue with `attrs` (see [`attr`]) saying why.
pub async fn send_dead_letter(sqs: &SqsClient, dlq_url: &str, body: &str, attrs: &BTreeMap<String, String>) -> Result<(), NotifyAwsError> {
    send_with_attrs(sqs, dlq_url, body, attrs).await?;
    Ok(())
}

fn sender_attrs(sender: &Sender) -> BTreeMap<String, String> {
    BTreeMap::from([(attr::SENDER.to_owned(), sender.as_str().to_owned())])
}

/// Queues a submitted notification `body` (validated by the caller) with its sender
/// ([`attr::SENDER`]), which the consumer keys its claim on. Returns the SQS message id.
pub async fn send_notification(sqs: &SqsClient, queue_url: &str, sender: &Sender, body: &str) -> Result<String, NotifyAwsError> {
    send_with_attrs(sqs, queue_url, body, &sender_attrs(sender)).await
}

/// Sends many bodies as `sender`'s notifications, ten per request, as the intake would queue them
/// (without its checks: for local runs and tests). Returns how many were sent.
pub async fn send_all_as(sqs: &SqsClient, queue_url: &str, sender: &Sender, bodies: &[String]) -> Result<usize, NotifyAwsError> {
    let attrs = attr_values(queue_url, &sender_attrs(sender))?;
    let mut sent = 0;
    for chunk in bodies.chunks(10) {
        let entries = chunk
            .iter()
            .enumerate()
            .map(|(i, b)| {
                SendMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .message_body(b)
                    .set_message_attributes(Some(attrs.clone()))
                    .build()
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| NotifyAwsError::Sqs { queue: queue_url.to_owned(), op: "SendMessageBatch", message: e.to_string() })?;
        let out = sqs
            .send_message_batch()
            .queue_url(queue_url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(sqs_err(queue_url, "SendMessageBatch"))?;
        if let Some(f) = out.failed().first() {
            return Err(NotifyAwsError::Sqs {
                queue: queue_url.to_owned(),
                op: "SendMessageBatch",
                message: format!("{} entries failed, first: {}", out.failed().len(), f.message().unwrap_or(f.code())),
            });
        }
        sent += out.successful().len();
    }
    Ok(sent)
}

/// Receives up to `max` (at most 10) messages with every attribute, hiding them for `visibility`.
pub async fn receive(
    sqs: &SqsClient,
    queue_url: &str,
    max: i32,
    visibility: Duration,
    wait: Duration,
) -> Result<Vec<Received>, NotifyAwsError> {
    let out = sqs
        .receive_message()
        .queue_url(queue_url)
        .max_number_of_messages(max.clamp(1, 10))
        .visibility_timeout(visibility.as_secs() as i32)
        .wait_time_seconds(wait.as_secs().min(20) as i32)
        .message_attribute_names("All")
        .message_system_attribute_names(MessageSystemAttributeName::All)
        .send()
        .await
        .map_err(sqs_err(queue_url, "ReceiveMessage"))?;
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
pub async fn delete_all(sqs: &SqsClient, queue_url: &str, receipts: &[&str]) -> Result<usize, NotifyAwsError> {
    let mut failed = 0;
    for chunk in receipts.chunks(10) {
        let entries = chunk
            .iter()
            .enumerate()
            .map(|(i, r)| DeleteMessageBatchRequestEntry::builder().id(i.to_string()).receipt_handle(*r).build())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| NotifyAwsError::Sqs { queue: queue_url.to_owned(), op: "DeleteMessageBatch", message: e.to_string() })?;
        let out = sqs
            .delete_message_batch()
            .queue_url(queue_url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(sqs_err(queue_url, "DeleteMessageBatch"))?;
        failed += out.failed().len();
    }
    Ok(failed)
}

/// Approximate counts of a queue: (visible, in flight).
pub async fn queue_depth(sqs: &SqsClient, queue_url: &str) -> Result<(u64, u64), NotifyAwsError> {
    let out = sqs
        .get_queue_attributes()
        .queue_url(queue_url)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .map_err(sqs_err(queue_url, "GetQueueAttributes"))?;
    let get = |k: QueueAttributeName| out.attributes().and_then(|a| a.get(&k)).and_then(|v| v.parse().ok()).unwrap_or(0);
    Ok((get(QueueAttributeName::ApproximateNumberOfMessages), get(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)))
}

/// A queue's ARN.
pub async fn queue_arn(sqs: &SqsClient, queue_url: &str) -> Result<String, NotifyAwsError> {
    let out = sqs
        .get_queue_attributes()
        .queue_url(queue_url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .map_err(sqs_err(queue_url, "GetQueueAttributes"))?;
    out.attributes().and_then(|a| a.get(&QueueAttributeName::QueueArn)).cloned().ok_or_else(|| NotifyAwsError::Sqs {
        queue: queue_url.to_owned(),
        op: "GetQueueAttributes",
        message: "no QueueArn returned".into(),
    })
}

/// The URLs of a source queue and its dead-letter queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuePair {
    pub source_url: String,
    pub dlq_url: String,
}

/// Settings of [`create_queue_pair`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueSettings {
    /// Receives after which SQS moves a message to the DLQ.
    pub max_receive_count: u32,
    pub visibility_timeout: Duration,
}

impl Default for QueueSettings {
    fn default() -> QueueSettings {
        QueueSettings { max_receive_count: 5, visibility_timeout: Duration::from_secs(60) }
    }
}

/// Creates `{name}` with a RedrivePolicy to `{name}-dlq`. For local runs and tests; deployed
/// queues come from the template.
pub async fn create_queue_pair(sqs: &SqsClient, name: &str, settings: QueueSettings) -> Result<QueuePair, NotifyAwsError> {
    let dlq_name = format!("{name}-dlq");
    let dlq_url = sqs
        .create_queue()
        .queue_name(&dlq_name)
        .attributes(QueueAttributeName::MessageRetentionPeriod, "1209600")
        .send()
        .await
        .map_err(sqs_err(&dlq_name, "CreateQueue"))?
        .queue_url()
        .unwrap_or_default()
        .to_owned();
    let dlq_arn = queue_arn(sqs, &dlq_url).await?;
    let policy = serde_json::json!({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": settings.max_receive_count.to_string()});
    let source_url = sqs
        .create_queue()
        .queue_name(name)
        .attributes(QueueAttributeName::VisibilityTimeout, settings.visibility_timeout.as_secs().to_string())
        .attributes(QueueAttributeName::RedrivePolicy, policy.to_string())
        .send()
        .await
        .map_err(sqs_err(name, "CreateQueue"))?
        .queue_url()
        .unwrap_or_default()
        .to_owned();
    Ok(QueuePair { source_url, dlq_url })
}
