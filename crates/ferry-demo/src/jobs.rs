//! The async-jobs scenario: seed 100,000 orders, export them to xlsx through the API handler, poll
//! the status with progress, download the file and count its rows.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use aws_config::SdkConfig;
use ferry_testkit::jobs::{api_and_worker, call, start_worker};
use ferry_testkit::seed::seed_orders;
use ferry_testkit::workbook::count_xlsx_rows;
use job_invoker::JobSettings;

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

    let body = serde_json::json!({
        "kind": "export",
        "params": {
            "source": {"type": "dynamodb_scan", "table": orders_table, "segments": 4},
            "format": "xlsx",
            "columns": ["order_id", "seller_id", "amount", "status"],
        }
    })
    .to_string();
    let owner = Some("seller-0001");
    let (status, submitted) = call(&api, "POST", "/jobs", Some(&body), owner).await?;
    anyhow::ensure!(status == 202, "POST /jobs answered {status}: {submitted}");
    let id = submitted["job"]["id"].as_str().context("no job id")?.to_owned();
    log.push_str(&format!("POST /jobs -> {status}, job {id}, status {}\n", submitted["job"]["status"]));
    let (status, again) = call(&api, "POST", "/jobs", Some(&body), owner).await?;
    log.push_str(&format!("POST /jobs again -> {status}, the same job: {}\n", again["job"]["id"] == submitted["job"]["id"]));

    let export_started = std::time::Instant::now();
    let view = loop {
        let (_, view) = call(&api, "GET", &format!("/jobs/{id}"), None, owner).await?;
        let p = &view["progress"];
        log.push_str(&format!(
            "  {:>5.1} s  {:<9} {:<14} {:>7} / {}\n",
            export_started.elapsed().as_secs_f64(),
            view["status"].as_str().unwrap_or("?"),
            p["phase"].as_str().unwrap_or(""),
            p["done"],
            p["total"]
        ));
        match view["status"].as_str() {
            Some("queued" | "running") => tokio::time::sleep(Duration::from_millis(1000)).await,
            _ => break view,
        }
    };
    anyhow::ensure!(view["status"] == "succeeded", "the export ended {}: {}", view["status"], view["error"]);
    let url = view["download"]["url"].as_str().context("no download link")?;
    let bytes = reqwest::get(url).await?.error_for_status()?.bytes().await?;
    let (rows, sheets) = count_xlsx_rows(&bytes)?;
    log.push_str(&format!(
        "downloaded {} bytes (link expires {}): {sheets} sheet(s), {rows} data rows (the job reported {})\n",
        bytes.len(),
        view["download"]["expires_at"].as_str().unwrap_or("?"),
        view["download"]["rows"]
    ));
    lambda.invocations.settle().await;
    log.push_str(&format!("worker invocations: {}\n", lambda.invocations.count()));
    Ok(log)
}
