//! Reading the source: its partitions (scan segments, or the dataset snapshot's objects in key
//! order), each read page by page by a task of its own into a small channel.

use std::sync::Arc;

use ferry_aws::exports::{self, TableRead};
use ferry_aws::s3::{Fetched, Pinned, Store};
use ferry_core::jobs::{DatasetFormat, DatasetObject, ExportParams, Filter, Snapshot, Source};
use serde_json::Value;
use tokio::sync::mpsc;

use super::error::dataset_error;
use super::{Checkpoint, ExportError, dataset};
use crate::kind::JobEnv;

/// One partition of the source.
#[derive(Debug, Clone)]
pub(super) enum Partition {
    Scan { table: String, segment: u32, total: u32 },
    Query { table: String, key: String, value: Value },
    Object { bucket: String, object: DatasetObject, format: DatasetFormat },
}

/// A page of rows from one partition.
#[derive(Debug)]
pub(super) struct Batch {
    /// The columns of `rows` when they are not already the export's (a dataset without a selection).
    pub(super) columns: Option<Arc<Vec<String>>>,
    pub(super) rows: Vec<Vec<Value>>,
    pub(super) next: Option<String>,
}

/// The objects under `prefix` now, in key order.
async fn list_dataset(env: &JobEnv, bucket: &str, prefix: &str) -> Result<Vec<DatasetObject>, ExportError> {
    let store = Store::new(env.s3.clone(), bucket);
    let listed = store.list(prefix).await.map_err(|e| dataset_error(bucket, prefix, e))?;
    let mut objects: Vec<DatasetObject> =
        listed.into_iter().filter(|h| !h.key.ends_with('/')).map(|h| DatasetObject { key: h.key, size: h.size, etag: h.etag }).collect();
    if objects.is_empty() {
        // S3 has no empty folders: nothing under the prefix is a dataset that does not exist.
        let message = "no objects under the prefix".into();
        return Err(ExportError::DatasetUnavailable { bucket: bucket.into(), prefix: prefix.into(), message });
    }
    objects.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(objects)
}

/// The dataset objects this run reads (S3 sources): the checkpoint's snapshot; on a first run, or
/// resuming a checkpoint written before snapshots were recorded, a listing made now.
pub(super) async fn dataset_snapshot(
    env: &JobEnv,
    params: &ExportParams,
    cp: Option<&Checkpoint>,
) -> Result<Option<Vec<DatasetObject>>, ExportError> {
    let Source::S3 { bucket, prefix, .. } = &params.source else { return Ok(None) };
    Ok(Some(match cp.and_then(|c| c.snapshot.as_ref()) {
        Some(Snapshot::Inline(objects)) => objects.clone(),
        Some(Snapshot::Staged(key)) => match env.store.get_capped(key, u64::MAX).await? {
            Fetched::Object(o) => ferry_core::jobs::parse_snapshot(&o.body)
                .map_err(|e| ExportError::Checkpoint(format!("the dataset snapshot {key}: {e}")))?,
            _ => return Err(ExportError::Checkpoint(format!("the dataset snapshot {key} is gone"))),
        },
        None => list_dataset(env, bucket, prefix).await?,
    }))
}

pub(super) fn partitions(params: &ExportParams, snapshot: Option<&[DatasetObject]>) -> Vec<Partition> {
    match &params.source {
        Source::DynamodbScan { table, segments } => {
            (0..*segments).map(|segment| Partition::Scan { table: table.clone(), segment, total: *segments }).collect()
        }
        Source::DynamodbQuery { table, key, value } => {
            vec![Partition::Query { table: table.clone(), key: key.clone(), value: value.clone() }]
        }
        Source::S3 { bucket, format, .. } => snapshot
            .unwrap_or_default()
            .iter()
            .map(|object| Partition::Object { bucket: bucket.clone(), object: object.clone(), format: *format })
            .collect(),
    }
}

/// Reads `part` from `start`, page by page, into a small channel: readers run ahead of the writer by
/// at most two pages each.
pub(super) fn spawn_reader(
    env: &JobEnv,
    part: Partition,
    start: Option<String>,
    columns: Option<Vec<String>>,
    filter: Option<Filter>,
) -> mpsc::Receiver<Result<Batch, ExportError>> {
    let (tx, rx) = mpsc::channel(2);
    let env = env.clone();
    tokio::spawn(async move {
        let result = match part {
            Partition::Scan { table, segment, total } => {
                read_table(&env, &table, TableRead::Scan { segment, total }, start, &columns.unwrap_or_default(), &tx).await
            }
            Partition::Query { table, key, value } => {
                read_table(&env, &table, TableRead::Query { key: &key, value: &value }, start, &columns.unwrap_or_default(), &tx).await
            }
            Partition::Object { bucket, object, format } => read_object(&env, &bucket, &object, format, start, columns, filter, &tx).await,
        };
        if let Err(e) = result {
            let _ = tx.send(Err(e)).await;
        }
    });
    rx
}

async fn read_table(
    env: &JobEnv,
    table: &str,
    read: TableRead<'_>,
    mut start: Option<String>,
    columns: &[String],
    tx: &mpsc::Sender<Result<Batch, ExportError>>,
) -> Result<(), ExportError> {
    loop {
        let page = exports::read_page(&env.dynamo, table, read, start.as_deref(), env.settings.page_size, columns).await?;
        let done = page.next.is_none();
        start = page.next.clone();
        if tx.send(Ok(Batch { columns: None, rows: page.rows, next: page.next })).await.is_err() || done {
            return Ok(());
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn read_object(
    env: &JobEnv,
    bucket: &str,
    object: &DatasetObject,
    format: DatasetFormat,
    start: Option<String>,
    columns: Option<Vec<String>>,
    filter: Option<Filter>,
    tx: &mpsc::Sender<Result<Batch, ExportError>>,
) -> Result<(), ExportError> {
    let (key, limit) = (object.key.as_str(), env.settings.max_object_bytes);
    // Exactly the version in the snapshot, or nothing.
    let fetched = Store::new(env.s3.clone(), bucket)
        .get_capped_if_match(key, limit, &object.etag)
        .await
        .map_err(|e| dataset_error(bucket, key, e))?;
    let changed = |removed| ExportError::DatasetChanged { bucket: bucket.into(), key: key.into(), etag: object.etag.clone(), removed };
    let body = match fetched {
        Pinned::Read(Fetched::Object(o)) => o.body,
        Pinned::Read(Fetched::Missing) => return Err(changed(true)),
        Pinned::Changed => return Err(changed(false)),
        Pinned::Read(Fetched::TooLarge { size }) => {
            return Err(ExportError::ObjectTooLarge { bucket: bucket.into(), key: key.into(), size, limit });
        }
    };
    let (b, k) = (bucket.to_owned(), key.to_owned());
    let selected = columns.is_some();
    let frame = if body.is_empty() {
        None
    } else {
        // The cap bounds what the object decodes to, not only its bytes: a small Parquet object can
        // hold gigabytes. Its footer tells, before anything is decoded.
        let parsed = tokio::task::spawn_blocking(move || -> Result<dataset::Frame, ExportError> {
            let decoded = dataset::decoded_bytes(&b, &k, &body, format)?;
            if decoded > limit {
                return Err(ExportError::DecodesTooLarge { bucket: b, key: k, decoded, limit });
            }
            Ok(dataset::read(&b, &k, body, format, columns.as_deref(), filter.as_ref())?)
        })
        .await
        .map_err(|e| dataset::DatasetError { bucket: bucket.into(), key: key.into(), message: e.to_string() })??;
        Some(parsed)
    };
    let Some(frame) = frame else {
        let _ = tx.send(Ok(Batch { columns: None, rows: Vec::new(), next: None })).await;
        return Ok(());
    };
    let header = (!selected).then(|| Arc::new(frame.columns.clone()));
    let page = env.settings.page_size as usize;
    let mut offset: usize = start.and_then(|s| s.parse().ok()).unwrap_or(0);
    loop {
        let rows = frame.rows(offset, page);
        offset += rows.len();
        let next = (offset < frame.height()).then(|| offset.to_string());
        let done = next.is_none();
        if tx.send(Ok(Batch { columns: header.clone(), rows, next })).await.is_err() || done {
            return Ok(());
        }
    }
}

/// Cells of `row` (named by `from`) in the order of `to`; absent columns are null.
pub(super) fn align(row: Vec<Value>, from: &[String], to: &[String]) -> Vec<Value> {
    to.iter().map(|c| from.iter().position(|f| f == c).and_then(|i| row.get(i).cloned()).unwrap_or(Value::Null)).collect()
}

pub(super) async fn estimate(env: &JobEnv, params: &ExportParams) -> Result<Option<u64>, ExportError> {
    Ok(match &params.source {
        Source::DynamodbScan { table, segments } => {
            exports::estimate_rows(&env.dynamo, table, TableRead::Scan { segment: 0, total: *segments }).await?
        }
        Source::DynamodbQuery { table, key, value } => exports::estimate_rows(&env.dynamo, table, TableRead::Query { key, value }).await?,
        Source::S3 { .. } => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_align_by_column_name() {
        let from = ["b".to_owned(), "a".to_owned()];
        let to = ["a".to_owned(), "b".to_owned(), "c".to_owned()];
        assert_eq!(align(vec![Value::from(2), Value::from(1)], &from, &to), vec![Value::from(1), Value::from(2), Value::Null]);
    }
}
