//! Local AWS resources as the template creates them (for local runs: the deployed ones come from
//! `infra/template.yaml`), and reads behind the code under test.
//!
//! - [`bucket`] / [`create_bucket`], [`put_object`], [`list_keys`]: S3.
//! - [`jobs_table`]: the jobs table with its `by-owner` index and TTL attribute; [`lock_holder`]
//!   reads a job lock item as the tests check it.
//! - [`deliveries_table`]: the notification deliveries table.
//! - [`queue_pair`]: a queue with a RedrivePolicy to its dead-letter queue.

use std::time::Duration;

use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection, ProjectionType,
    ScalarAttributeType, TimeToLiveSpecification,
};
use aws_sdk_sqs::types::QueueAttributeName;
use ferry_aws::jobs::DynamoClient;
use ferry_aws::notify::{QueuePair, SqsClient};
use ferry_core::jobs::{canonical_json, params_hash};

use crate::{SetupError, sdk_config, sdk_message, unique};

/// A fresh bucket on moto, and an S3 client for it.
pub async fn bucket(prefix: &str) -> (aws_sdk_s3::Client, String) {
    let client = ferry_aws::clients::s3(&sdk_config());
    let name = unique(prefix);
    client.create_bucket().bucket(&name).send().await.expect("creating a bucket on moto");
    (client, name)
}

/// Creates `bucket`.
pub async fn create_bucket(s3: &aws_sdk_s3::Client, bucket: &str) -> Result<(), SetupError> {
    s3.create_bucket().bucket(bucket).send().await.map(|_| ()).map_err(|e| SetupError::new(bucket, "CreateBucket", sdk_message(&e)))
}

/// Puts `body` at `key`, as an upload arrives.
pub async fn put_object(s3: &aws_sdk_s3::Client, bucket: &str, key: &str, body: impl Into<Vec<u8>>) {
    let body: Vec<u8> = body.into();
    s3.put_object().bucket(bucket).key(key).body(body.into()).send().await.expect("put");
}

/// The keys under `prefix`, through the same paginated listing the functions use.
pub async fn list_keys(s3: &aws_sdk_s3::Client, bucket: &str, prefix: &str) -> Vec<String> {
    let store = ferry_aws::s3::Store::new(s3.clone(), bucket.to_owned());
    store.list(prefix).await.expect("list").into_iter().map(|h| h.key).collect()
}

fn key(name: &str, t: KeyType) -> Result<KeySchemaElement, SetupError> {
    KeySchemaElement::builder()
        .attribute_name(name)
        .key_type(t)
        .build()
        .map_err(|e| SetupError::new(name, "KeySchemaElement", e.to_string()))
}

fn string_attr(name: &str) -> Result<AttributeDefinition, SetupError> {
    AttributeDefinition::builder()
        .attribute_name(name)
        .attribute_type(ScalarAttributeType::S)
        .build()
        .map_err(|e| SetupError::new(name, "AttributeDefinition", e.to_string()))
}

/// Creates `table` (on-demand billing) with the string hash key `hash_key`, unless it exists.
pub async fn simple_table(dynamo: &DynamoClient, table: &str, hash_key: &str) -> Result<(), SetupError> {
    let created = dynamo
        .create_table()
        .table_name(table)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(string_attr(hash_key)?)
        .key_schema(key(hash_key, KeyType::Hash)?)
        .send()
        .await;
    match created {
        Ok(_) => Ok(()),
        Err(e) if e.as_service_error().is_some_and(|s| s.is_resource_in_use_exception()) => Ok(()),
        Err(e) => Err(SetupError::new(table, "CreateTable", sdk_message(&e))),
    }
}

/// The jobs table's owner index.
const BY_OWNER: &str = "by-owner";

/// Creates the jobs table `table` unless it exists: key `pk`, the `by-owner` index (`owner`,
/// `created_key`, all attributes) and the TTL attribute `expires_at`.
pub async fn jobs_table(dynamo: &DynamoClient, table: &str) -> Result<(), SetupError> {
    let gsi = GlobalSecondaryIndex::builder()
        .index_name(BY_OWNER)
        .key_schema(key("owner", KeyType::Hash)?)
        .key_schema(key("created_key", KeyType::Range)?)
        .projection(Projection::builder().projection_type(ProjectionType::All).build())
        .build()
        .map_err(|e| SetupError::new(table, "GlobalSecondaryIndex", e.to_string()))?;
    let created = dynamo
        .create_table()
        .table_name(table)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(string_attr("pk")?)
        .attribute_definitions(string_attr("owner")?)
        .attribute_definitions(string_attr("created_key")?)
        .key_schema(key("pk", KeyType::Hash)?)
        .global_secondary_indexes(gsi)
        .send()
        .await;
    match created {
        Ok(_) => {}
        Err(e) if e.as_service_error().is_some_and(|s| s.is_resource_in_use_exception()) => {}
        Err(e) => return Err(SetupError::new(table, "CreateTable", sdk_message(&e))),
    }
    let ttl = TimeToLiveSpecification::builder()
        .enabled(true)
        .attribute_name("expires_at")
        .build()
        .map_err(|e| SetupError::new(table, "TimeToLiveSpecification", e.to_string()))?;
    match dynamo.update_time_to_live().table_name(table).time_to_live_specification(ttl).send().await {
        Ok(_) => Ok(()),
        // Already enabled: the table existed.
        Err(e)
            if e.as_service_error().and_then(|s| aws_sdk_dynamodb::error::ProvideErrorMetadata::code(s)) == Some("ValidationException") =>
        {
            Ok(())
        }
        Err(e) => Err(SetupError::new(table, "UpdateTimeToLive", sdk_message(&e))),
    }
}

/// The job id holding the lock of (`owner`, `kind`, `params`) in the jobs table `table`, if any
/// and unexpired at `now` (ms). Reads the lock item `LOCK#{owner}#{kind}#{params_hash}` directly.
pub async fn lock_holder(
    dynamo: &DynamoClient,
    table: &str,
    owner: &str,
    kind: &str,
    params: &serde_json::Value,
    now: i64,
) -> Result<Option<String>, SetupError> {
    let pk = format!("LOCK#{owner}#{kind}#{}", params_hash(&canonical_json(params)));
    let out = dynamo
        .get_item()
        .table_name(table)
        .key("pk", AttributeValue::S(pk.clone()))
        .consistent_read(true)
        .send()
        .await
        .map_err(|e| SetupError::new(&format!("{table} {pk}"), "GetItem", sdk_message(&e)))?;
    let Some(lock) = out.item else { return Ok(None) };
    let lease = lock.get("lease_expires_at").and_then(|v| v.as_n().ok()).and_then(|n| n.parse::<i64>().ok()).unwrap_or(0);
    Ok((lease >= now).then(|| lock.get("job_id").and_then(|v| v.as_s().ok()).cloned()).flatten())
}

/// Creates the deliveries table `table` (key `notification_id`) unless it exists.
pub async fn deliveries_table(dynamo: &DynamoClient, table: &str) -> Result<(), SetupError> {
    simple_table(dynamo, table, "notification_id").await
}

/// Settings of [`queue_pair`].
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

/// Creates `{name}` with a RedrivePolicy to `{name}-dlq` (retention 14 days, as the template's).
pub async fn queue_pair(sqs: &SqsClient, name: &str, settings: QueueSettings) -> Result<QueuePair, SetupError> {
    let dlq_name = format!("{name}-dlq");
    let dlq_url = sqs
        .create_queue()
        .queue_name(&dlq_name)
        .attributes(QueueAttributeName::MessageRetentionPeriod, "1209600")
        .send()
        .await
        .map_err(|e| SetupError::new(&dlq_name, "CreateQueue", sdk_message(&e)))?
        .queue_url()
        .unwrap_or_default()
        .to_owned();
    let dlq_arn =
        ferry_aws::notify::queue_arn(sqs, &dlq_url).await.map_err(|e| SetupError::new(&dlq_name, "GetQueueAttributes", e.to_string()))?;
    let policy = serde_json::json!({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": settings.max_receive_count.to_string()});
    let source_url = sqs
        .create_queue()
        .queue_name(name)
        .attributes(QueueAttributeName::VisibilityTimeout, settings.visibility_timeout.as_secs().to_string())
        .attributes(QueueAttributeName::RedrivePolicy, policy.to_string())
        .send()
        .await
        .map_err(|e| SetupError::new(name, "CreateQueue", sdk_message(&e)))?
        .queue_url()
        .unwrap_or_default()
        .to_owned();
    Ok(QueuePair { source_url, dlq_url })
}

/// The names of what [`local_stack`] creates, as the functions' settings name them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalStack {
    /// The bucket the vote fixtures under `events/` name (`ferry-demo`), holding their uploads.
    pub votes_bucket: String,
    /// `FERRY_EXPORT_BUCKET`.
    pub export_bucket: String,
    /// `FERRY_JOBS_TABLE`.
    pub jobs_table: String,
    /// `FERRY_NOTIFY_TABLE`.
    pub deliveries_table: String,
    /// `FERRY_NOTIFY_QUEUE_URL` and `FERRY_NOTIFY_DLQ_URL`.
    pub queues: QueuePair,
    /// The table the job fixture exports (`orders`), seeded.
    pub orders_table: String,
}

/// Creates, on the endpoint `conf` names, every resource the functions read and write, under the
/// names the fixtures in `events/` use: both buckets (with the regional uploads `events/s3-put.json`
/// and `events/s3-put-leading-slash.json` announce), the jobs and deliveries tables, the notify queue
/// and its DLQ, and an `orders` table of `orders` rows. Safe to run again on the same endpoint.
pub async fn local_stack(conf: &aws_config::SdkConfig, orders: u64) -> Result<LocalStack, SetupError> {
    let s3 = ferry_aws::clients::s3(conf);
    let dynamo = ferry_aws::clients::dynamodb(conf);
    let sqs = ferry_aws::clients::sqs(conf);
    let stack = LocalStack {
        votes_bucket: "ferry-demo".into(),
        export_bucket: "ferry-exports".into(),
        jobs_table: "ferry-jobs".into(),
        deliveries_table: "ferry-notify-deliveries".into(),
        queues: queue_pair(&sqs, "ferry-notify", QueueSettings::default()).await?,
        orders_table: "orders".into(),
    };
    for bucket in [&stack.votes_bucket, &stack.export_bucket] {
        match create_bucket(&s3, bucket).await {
            // moto answers a second create of a bucket it holds with this.
            Err(e) if e.message.contains("BucketAlreadyOwnedByYou") => {}
            other => other?,
        }
    }
    let tally = "kseq,score\nk-001,120\nk-002,80\nk-003,40\nk-004,5\n";
    for key in ["data/1/jp-prod-202611221530.csv", "/data/1/kr-prod-202611221530.csv"] {
        s3.put_object()
            .bucket(&stack.votes_bucket)
            .key(key)
            .body(tally.as_bytes().to_vec().into())
            .send()
            .await
            .map_err(|e| SetupError::new(key, "PutObject", sdk_message(&e)))?;
    }
    jobs_table(&dynamo, &stack.jobs_table).await?;
    deliveries_table(&dynamo, &stack.deliveries_table).await?;
    crate::seed::seed_orders(&dynamo, &stack.orders_table, orders).await?;
    Ok(stack)
}
