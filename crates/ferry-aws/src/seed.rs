//! Filling a DynamoDB table in bulk: the orders the demo and the tests export. Local runs only;
//! deployed tables come from the template.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::{AttributeDefinition, BillingMode, KeySchemaElement, KeyType, PutRequest, ScalarAttributeType, WriteRequest};
use futures::StreamExt;

/// The SDK's attribute value, named here so callers build items without depending on the SDK.
pub use aws_sdk_dynamodb::types::AttributeValue;

use crate::jobs::DynamoClient;

/// One item: attribute name -> value.
pub type Item = HashMap<String, AttributeValue>;

/// The most items one `BatchWriteItem` takes.
const PER_BATCH: usize = 25;
/// Batches written at once.
const IN_FLIGHT: usize = 8;

/// A DynamoDB call that failed. Names the table and the operation.
#[derive(Debug, thiserror::Error)]
#[error("dynamodb table {table}: {op} failed: {message}")]
pub struct SeedError {
    pub table: String,
    pub op: &'static str,
    pub message: String,
}

/// Creates `table` (on-demand billing) with the string hash key `hash_key`, unless it exists.
pub async fn create_table(client: &DynamoClient, table: &str, hash_key: &str) -> Result<(), SeedError> {
    let err = |message: String| SeedError { table: table.to_owned(), op: "CreateTable", message };
    let created = client
        .create_table()
        .table_name(table)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name(hash_key)
                .attribute_type(ScalarAttributeType::S)
                .build()
                .map_err(|e| err(e.to_string()))?,
        )
        .key_schema(KeySchemaElement::builder().attribute_name(hash_key).key_type(KeyType::Hash).build().map_err(|e| err(e.to_string()))?)
        .send()
        .await;
    match created {
        Ok(_) => Ok(()),
        Err(e) if e.as_service_error().is_some_and(|s| s.is_resource_in_use_exception()) => Ok(()),
        Err(e) => Err(err(crate::sdk_message(&e))),
    }
}

/// Writes `items` into `table`, 25 per `BatchWriteItem`, several batches at once, sending again
/// whatever DynamoDB leaves unprocessed until every item is written.
pub async fn put_items(client: &DynamoClient, table: &str, items: impl IntoIterator<Item = Item>) -> Result<(), SeedError> {
    let err = |message: String| SeedError { table: table.to_owned(), op: "BatchWriteItem", message };
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
                let out = client.batch_write_item().request_items(table, pending).send().await.map_err(|e| err(crate::sdk_message(&e)))?;
                pending = out.unprocessed_items.and_then(|mut u| u.remove(table)).unwrap_or_default();
            }
            Ok::<(), SeedError>(())
        })
        .buffer_unordered(IN_FLIGHT);
    while let Some(r) = writes.next().await {
        r?;
    }
    Ok(())
}
