//! Filling a DynamoDB table in bulk: the orders the demo, the tests and the benchmarks export.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::{PutRequest, WriteRequest};
use ferry_aws::jobs::DynamoClient;
use futures::StreamExt;

pub use aws_sdk_dynamodb::types::AttributeValue;

use crate::{SetupError, sdk_message};

/// One item: attribute name -> value.
pub type Item = HashMap<String, AttributeValue>;

/// The most items one `BatchWriteItem` takes.
const PER_BATCH: usize = 25;
/// Batches written at once.
const IN_FLIGHT: usize = 8;

/// Creates `table` (on-demand billing) with the string hash key `hash_key`, unless it exists.
pub async fn create_table(client: &DynamoClient, table: &str, hash_key: &str) -> Result<(), SetupError> {
    crate::provision::simple_table(client, table, hash_key).await
}

/// Writes `items` into `table`, 25 per `BatchWriteItem`, several batches at once, sending again
/// whatever DynamoDB leaves unprocessed until every item is written.
pub async fn put_items(client: &DynamoClient, table: &str, items: impl IntoIterator<Item = Item>) -> Result<(), SetupError> {
    let err = |message: String| SetupError::new(table, "BatchWriteItem", message);
    let (mut batches, mut batch) = (Vec::new(), Vec::with_capacity(PER_BATCH));
    for item in items {
        let put = PutRequest::builder().set_item(Some(item)).build().map_err(|e| err(e.to_string()))?;
        batch.push(WriteRequest::builder().put_request(put).build());
        if batch.len() == PER_BATCH {
            batches.push(std::mem::replace(&mut batch, Vec::with_capacity(PER_BATCH)));
        }
    }
    if !batch.is_empty() {
        batches.push(batch);
    }
    let mut writes = futures::stream::iter(batches)
        .map(|batch| async move {
            let mut pending = batch;
            while !pending.is_empty() {
                let out = client.batch_write_item().request_items(table, pending).send().await.map_err(|e| err(sdk_message(&e)))?;
                pending = out.unprocessed_items.and_then(|mut u| u.remove(table)).unwrap_or_default();
            }
            Ok::<(), SetupError>(())
        })
        .buffer_unordered(IN_FLIGHT);
    while let Some(r) = writes.next().await {
        r?;
    }
    Ok(())
}

/// Writes `count` orders into `table` (created if missing): `order_id` `o-0000000`.., `seller_id`
/// one of 40, an `amount` with cents, a `status`.
pub async fn seed_orders(dynamo: &DynamoClient, table: &str, count: u64) -> Result<(), SetupError> {
    create_table(dynamo, table, "order_id").await?;
    let statuses = ["paid", "shipped", "delivered", "refunded"];
    let orders = (0..count).map(|i| {
        Item::from([
            ("order_id".to_owned(), AttributeValue::S(format!("o-{i:07}"))),
            ("seller_id".to_owned(), AttributeValue::S(format!("s-{:03}", i % 40))),
            ("amount".to_owned(), AttributeValue::N(format!("{}.{:02}", 5 + (i * 7919) % 500, i % 100))),
            ("status".to_owned(), AttributeValue::S(statuses[(i % 4) as usize].into())),
        ])
    });
    put_items(dynamo, table, orders).await
}
