//! The async-jobs scenario: seed 100,000 orders, export them to xlsx through the API handler, poll
//! the status with progress, download the file and count its rows. Also the job-API calls the batch
//! scenario shares ([`submit`], [`get_job`]), reading the answers as `ferry_api`'s typed shapes.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use aws_config::SdkConfig;
use ferry_api::error::ErrorBody;
use ferry_api::jobs::{Envelope, JobView, Submitted};
use ferry_core::jobs::Status;
use ferry_testkit::jobs::{api_and_worker, call, start_worker};
use ferry_testkit::seed::seed_orders;
use ferry_testkit::workbook::count_xlsx_rows;
use job_invoker::{Api, JobSettings};
use serde_json::{Value, json};

/// `POST /jobs` of `envelope` as `owner`: the answer's status (202 new, 200 a duplicate) and what
/// it carries. Any other status is an error naming the API's error body.
pub(crate) async fn submit(api: &Api, envelope: &Envelope, owner: Option<&str>) -> anyhow::Result<(u16, Submitted)> {
    let body = serde_json::to_string(envelope).context("writing the POST /jobs body")?;
    let (status, answer) = call(api, "POST", "/jobs", Some(&body), owner).await?;
    anyhow::ensure!(matches!(status, 200 | 202), "POST /jobs answered {status}: {}", describe_error(&answer));
    let submitted = serde_json::from_value(answer).with_context(|| format!("reading the job from the POST /jobs answer ({status})"))?;
    Ok((status, submitted))
}

/// `GET /jobs/{id}` as `owner`: the job as the API shows it.
pub(crate) async fn get_job(api: &Api, id: &str, owner: Option<&str>) -> anyhow::Result<JobView> {
    let path = format!("/jobs/{id}");
    let (status, answer) = call(api, "GET", &path, None, owner).await?;
    anyhow::ensure!(status == 200, "GET {path} answered {status}: {}", describe_error(&answer));
    serde_json::from_value(answer).with_context(|| format!("reading the job view from the GET {path} answer"))
}

/// Whether the job still has a worker on it, so polling should go on.
pub(crate) fn is_pending(view: &JobView) -> bool {
    matches!(view.status, Status::Queued | Status::Running)
}

/// Why a job ended as it did: its public error, if it has one.
pub(crate) fn why(view: &JobView) -> String {
    view.error.as_ref().map_or_else(|| "no error given".to_owned(), ToString::to_string)
}

/// An error answer as `code (field): message [request id ...]`; anything else as it came.
fn describe_error(answer: &Value) -> String {
    match serde_json::from_value::<ErrorBody>(answer.clone()) {
        Ok(body) => body.error.to_string(),
        Err(_) => answer.to_string(),
    }
}

/// The scenario `make demo` runs.
pub async fn run(conf: &SdkConfig, orders: u64) -> anyhow::Result<String> {
    let mut log = String::new();
    let dynamo = ferry_aws::clients::dynamodb(conf);
    let s3 = ferry_aws::clients::s3(conf);
    let suffix = std::process::id();
    let settings = Arc::new(JobSettings {
        table: format!("ferry-demo-jobs-{suffix}"),
        bucket: format!("ferry-demo-exports-{suffix}"),
        worker_function: "job-worker".into(),
        page_size: 2_000,
        source_tables: vec![ferry_core::sources::TablePattern::parse("ferry-demo-orders-*")?],
        ..JobSettings::default()
    });
    let orders_table = format!("ferry-demo-orders-{suffix}");
    let started = std::time::Instant::now();
    seed_orders(&dynamo, &orders_table, orders).await?;
    log.push_str(&format!("seeded {orders} orders into {orders_table} in {:.1} s\n", started.elapsed().as_secs_f64()));
    ferry_testkit::provision::jobs_table(&dynamo, &settings.table).await?;
    ferry_testkit::provision::create_bucket(&s3, &settings.bucket).await?;

    // moto cannot run Lambda functions: the worker runs in this process behind a local Invoke endpoint.
    let placeholder = ferry_aws::lambda::Invoker::new(conf);
    let (_, make) = api_and_worker(conf, settings.clone(), placeholder);
    let lambda = start_worker(conf, Duration::from_secs(900), make).await?;
    let (api, _) = api_and_worker(conf, settings.clone(), lambda.client(conf));

    let envelope = Envelope::new(
        "export",
        json!({
            "source": {"type": "dynamodb_scan", "table": orders_table, "segments": 4},
            "format": "xlsx",
            "columns": ["order_id", "seller_id", "amount", "status"],
        }),
    );
    let owner = Some("seller-0001");
    let (status, submitted) = submit(&api, &envelope, owner).await?;
    anyhow::ensure!(status == 202, "POST /jobs answered {status}: job {} already running", submitted.job.id);
    let id = submitted.job.id;
    log.push_str(&format!("POST /jobs -> {status}, job {id}, status {}\n", submitted.job.status));
    let (status, again) = submit(&api, &envelope, owner).await?;
    log.push_str(&format!("POST /jobs again -> {status}, the same job: {}\n", again.job.id == id));

    let export_started = std::time::Instant::now();
    let view = loop {
        let view = get_job(&api, &id, owner).await?;
        let p = &view.progress;
        log.push_str(&format!(
            "  {:>5.1} s  {:<9} {:<14} {:>7} / {}\n",
            export_started.elapsed().as_secs_f64(),
            view.status.as_str(),
            p.phase.as_str(),
            p.done,
            p.total.map_or_else(|| "?".to_owned(), |t| t.to_string())
        ));
        if !is_pending(&view) {
            break view;
        }
        tokio::time::sleep(Duration::from_millis(1000)).await;
    };
    anyhow::ensure!(view.status == Status::Succeeded, "the export ended {}: {}", view.status, why(&view));
    let download = view.download.context("the succeeded export has no download link")?;
    let bytes = reqwest::get(&download.url).await?.error_for_status()?.bytes().await?;
    let (rows, sheets) = count_xlsx_rows(&bytes)?;
    log.push_str(&format!(
        "downloaded {} bytes (link expires {}): {sheets} sheet(s), {rows} data rows (the job reported {})\n",
        bytes.len(),
        download.expires_at.as_deref().unwrap_or("?"),
        download.rows
    ));
    lambda.invocations.settle().await;
    log.push_str(&format!("worker invocations: {}\n", lambda.invocations.count()));
    Ok(log)
}
