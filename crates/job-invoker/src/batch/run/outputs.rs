//! The two output files (results, failed items): buffered, and uploaded part by part in the
//! background.

use ferry_aws::exports::Multipart;
use ferry_aws::s3::Store;
use ferry_core::batch::OutputFormat;

use super::{Done, s3_failed};
use crate::kind::RunError;

/// A multipart upload whose parts go up in the background, one at a time and in order, while the
/// dispatch loop goes on sending items.
pub(super) struct Uploader {
    idle: Option<Multipart>,
    busy: Option<tokio::task::JoinHandle<(Multipart, Result<(), ferry_aws::S3Error>)>>,
}

impl Uploader {
    pub(super) fn new(upload: Multipart) -> Uploader {
        Uploader { idle: Some(upload), busy: None }
    }

    /// The upload once its part in flight (if any) is up.
    pub(super) async fn settle(&mut self) -> Result<&mut Multipart, RunError> {
        if let Some(task) = self.busy.take() {
            let (upload, sent) = task.await.map_err(|e| RunError::internal("S3Error", e))?;
            self.idle = Some(upload);
            sent.map_err(s3_failed)?;
        }
        self.idle.as_mut().ok_or_else(|| RunError::internal("S3Error", "an upload was lost with its part"))
    }

    /// Sends `body` as the next part, after the one in flight.
    async fn send(&mut self, body: Vec<u8>) -> Result<(), RunError> {
        self.settle().await?;
        if let Some(mut upload) = self.idle.take() {
            self.busy = Some(tokio::spawn(async move {
                let sent = upload.upload_part(body).await;
                (upload, sent)
            }));
        }
        Ok(())
    }

    pub(super) async fn finish(mut self) -> Result<Multipart, RunError> {
        self.settle().await?;
        self.idle.take().ok_or_else(|| RunError::internal("S3Error", "an upload was lost with its part"))
    }
}

/// Both output files and what is buffered for them.
pub(super) struct Outputs {
    pub(super) format: OutputFormat,
    pub(super) results: Uploader,
    pub(super) results_buf: Vec<u8>,
    pub(super) failed: Uploader,
    pub(super) failed_buf: Vec<u8>,
    pub(super) failed_rows: u64,
    pub(super) part_bytes: usize,
}

impl Outputs {
    pub(super) async fn write(&mut self, done: &Done) -> Result<(), RunError> {
        ferry_core::batch::write_result(self.format, &done.result, &mut self.results_buf);
        if let Some(item) = &done.item {
            ferry_core::batch::write_failed(item, &mut self.failed_buf);
            self.failed_rows += 1;
        }
        if self.results_buf.len() >= self.part_bytes {
            self.results.send(std::mem::take(&mut self.results_buf)).await?;
        }
        if self.failed_buf.len() >= self.part_bytes {
            self.failed.send(std::mem::take(&mut self.failed_buf)).await?;
        }
        Ok(())
    }

    pub(super) async fn abandon(self, store: &Store, carry_key: &str) {
        for upload in [self.results, self.failed] {
            let Ok(upload) = upload.finish().await else { continue };
            if let Err(e) = upload.abort().await {
                tracing::warn!(error = %e, "abandoning a multipart upload failed; the bucket's lifecycle rule cleans it up");
            }
        }
        if let Err(e) = store.delete(carry_key).await {
            tracing::warn!(key = carry_key, error = %e, "deleting the carried state failed");
        }
    }
}
