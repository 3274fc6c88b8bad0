//! The batch scenario: a few thousand orders pushed to a partner's API through the job API and a
//! background worker, as the write-up's browser tool did by hand (10 calls in flight, spaced out).
//!
//! The partner is a [`LocalTarget`] behaving like the write-up's outside API: slow (20–40 ms a
//! call), throttling the first call of some items with 429 and `Retry-After: 1`, and rejecting some
//! orders for good (422). The run is watched by its counts by state; then its ordered results and
//! its failed items are read back, the partner is made healthy, and `{"retry_of": id}` sends exactly
//! the failed orders again.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use aws_config::SdkConfig;
use ferry_api::jobs::{Envelope, JobView};
use ferry_core::jobs::Status;
use job_invoker::{Api, JobSettings};
use serde_json::{Value, json};

use ferry_testkit::jobs::{api_and_worker, start_worker};
use ferry_testkit::target::{Answer, Behaviour, Call, LocalTarget, outside_api};

use crate::jobs::{get_job, is_pending, submit, why};

const OWNER: Option<&str> = Some("seller-0001");
/// The partner's limiter trips once every this many items, answering the first call of the next
/// `THROTTLE_BURST` items 429 with `Retry-After: 1`. In bursts, as a real limiter trips: results are
/// written in input order from a bounded window, so each throttle holds the run for its
/// Retry-After, and a lone 429 every few dozen items would make the demo crawl.
const THROTTLE_EVERY: u64 = 500;
const THROTTLE_BURST: u64 = 10;
/// Orders whose number is `REJECT_AT` past a multiple of `REJECT_EVERY` are rejected (422): 1%.
const REJECT_EVERY: u64 = 100;
const REJECT_AT: u64 = 37;
/// As the write-up: never more than 10 calls in flight.
const MAX_CONCURRENCY: u64 = 10;
/// The browser's 100 ms apart would take 5 minutes for 3,000 orders; 250 a second keeps the demo
/// short while the latency still fills the 10 slots.
const RATE_PER_SECOND: u64 = 250;

fn order_id(i: u64) -> String {
    format!("order-{i:05}")
}

/// The seq of a call's first item: the number after the last `:` of its idempotency key.
fn seq_of(call: &Call) -> Option<u64> {
    call.key.as_deref().and_then(|k| k.rsplit(':').next()).and_then(|s| s.parse().ok())
}

/// The write-up's outside API: 20 to 40 ms a call (varying with the item, so calls finish out of
/// order), `reject` refused for good, and with `throttle` the bursts of 429 described above.
fn partner(throttle: bool, reject: HashSet<String>) -> Behaviour {
    let api = outside_api(Duration::ZERO, None, reject);
    Arc::new(move |call: &Call| {
        let seq = seq_of(call);
        let throttled = throttle && call.repeat == 0 && seq.is_some_and(|s| s % THROTTLE_EVERY < THROTTLE_BURST);
        let answer =
            if throttled { Answer { body: json!({ "error": "rate limited" }), ..Answer::status(429) }.retry_after(1) } else { api(call) };
        answer.after(Duration::from_millis(20 + (seq.unwrap_or(0) * 37) % 21))
    })
}

/// Counts by state in a fixed order, `running 10 · succeeded 1,234 · ...`.
fn counts_text(counts: &BTreeMap<String, u64>) -> String {
    ["running", "succeeded", "failed", "retrying", "pending", "skipped"]
        .iter()
        .filter_map(|state| counts.get(*state).map(|n| format!("{state} {}", thousands(*n))))
        .collect::<Vec<_>>()
        .join(" · ")
}

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn lines(body: &[u8]) -> anyhow::Result<Vec<Value>> {
    body.split(|b| *b == b'\n').filter(|l| !l.is_empty()).map(|l| serde_json::from_slice(l).context("a JSON line")).collect()
}

async fn get_lines(url: &str) -> anyhow::Result<Vec<Value>> {
    let bytes = reqwest::get(url).await?.error_for_status()?.bytes().await?;
    lines(&bytes)
}

/// Submits `envelope` and polls the job until it ends, logging its counts every `every`.
async fn submit_and_watch(api: &Api, envelope: &Envelope, every: Duration, log: &mut String) -> anyhow::Result<JobView> {
    let (status, submitted) = submit(api, envelope, OWNER).await?;
    anyhow::ensure!(status == 202, "POST /jobs answered {status}: job {} already running", submitted.job.id);
    let id = submitted.job.id;
    log.push_str(&format!("POST /jobs -> {status}, job {id}, status {}\n", submitted.job.status));
    let started = Instant::now();
    loop {
        let view = get_job(api, &id, OWNER).await?;
        let p = &view.progress;
        log.push_str(&format!(
            "  {:>5.1} s  {:<9} {:<10} {:>5} / {:<5}  {}\n",
            started.elapsed().as_secs_f64(),
            view.status.as_str(),
            p.phase.as_str(),
            thousands(p.done),
            // A job that ends before its first progress report records no total.
            p.total.map_or_else(|| "?".to_owned(), thousands),
            counts_text(&p.counts)
        ));
        if !is_pending(&view) {
            return Ok(view);
        }
        tokio::time::sleep(every).await;
    }
}

/// The scenario `make demo` runs.
pub async fn run(conf: &SdkConfig, items: u64) -> anyhow::Result<String> {
    // Fewer would leave no order rejected, and nothing to retry.
    anyhow::ensure!(items >= REJECT_EVERY, "the scenario needs at least {REJECT_EVERY} items");
    let mut log = String::new();
    let dynamo = ferry_aws::clients::dynamodb(conf);
    let s3 = ferry_aws::clients::s3(conf);
    let suffix = std::process::id();

    let reject: HashSet<String> = (0..items).filter(|i| i % REJECT_EVERY == REJECT_AT).map(order_id).collect();
    let target = LocalTarget::start(partner(true, reject.clone())).await?;
    let targets = json!({ "partner-api": { "url": target.url("orders"), "headers": {"x-partner": "ferry-demo"} } }).to_string();
    let settings = Arc::new(JobSettings {
        table: format!("ferry-demo-batch-jobs-{suffix}"),
        bucket: format!("ferry-demo-batches-{suffix}"),
        worker_function: "job-worker".into(),
        batch_targets: ferry_core::batch::parse_targets(&targets).map_err(anyhow::Error::msg)?,
        ..JobSettings::default()
    });
    ferry_testkit::provision::jobs_table(&dynamo, &settings.table).await?;
    ferry_testkit::provision::create_bucket(&s3, &settings.bucket).await?;

    // The orders to push, as an item file in the bucket's datasets/ (where item files may be read).
    let key = "datasets/partner-push/orders.jsonl";
    let mut file = Vec::new();
    for i in 0..items {
        let order = json!({
            "id": order_id(i),
            "seller_id": format!("s-{:03}", i % 40),
            "amount": format!("{}.{:02}", 5 + (i * 7919) % 500, i % 100),
            "currency": "EUR",
        });
        file.extend_from_slice(order.to_string().as_bytes());
        file.push(b'\n');
    }
    let file_bytes = file.len();
    s3.put_object().bucket(&settings.bucket).key(key).body(file.into()).send().await.context("writing the item file")?;
    log.push_str(&format!(
        "wrote {} orders ({} bytes) to s3://{}/{key}\n\
         partner-api at {}: 20-40 ms a call, the first call of {THROTTLE_BURST} in every {THROTTLE_EVERY} orders throttled (429, Retry-After: 1), {} orders rejected (422)\n",
        thousands(items),
        thousands(file_bytes as u64),
        settings.bucket,
        target.url("orders"),
        reject.len()
    ));

    // moto cannot run Lambda functions: the worker runs in this process behind a local Invoke endpoint.
    let (_, make) = api_and_worker(conf, settings.clone(), ferry_aws::lambda::Invoker::new(conf));
    let lambda = start_worker(conf, Duration::from_secs(900), make).await?;
    let (api, _) = api_and_worker(conf, settings.clone(), lambda.client(conf));

    let envelope = Envelope::new(
        "batch",
        json!({
            "target": "partner-api",
            "items": {"bucket": settings.bucket, "key": key, "format": "jsonl"},
            "max_concurrency": MAX_CONCURRENCY,
            "rate_per_second": RATE_PER_SECOND,
            "timeout_ms": 5_000,
            "tolerated_failure_percent": 5,
        }),
    );
    log.push_str(&format!(
        "batch to partner-api: max_concurrency {MAX_CONCURRENCY}, rate_per_second {RATE_PER_SECOND}, tolerated_failure_percent 5\n"
    ));
    let started = Instant::now();
    let view = submit_and_watch(&api, &envelope, Duration::from_secs(2), &mut log).await?;
    let took = started.elapsed();
    anyhow::ensure!(view.status == Status::Succeeded, "the batch ended {}: {}", view.status, why(&view));
    let id = &view.id;
    log.push_str(&format!("ended {} in {:.1} s: {}\n", view.status, took.as_secs_f64(), counts_text(&view.counts)));

    // The results, one line per order in input order, whatever order the calls finished in.
    let download = view.download.as_ref().context("the succeeded batch has no download link")?;
    let results = get_lines(&download.url).await?;
    log.push_str(&format!("results file: {} lines, first and last:\n", thousands(results.len() as u64)));
    let shown = results.iter().take(2).chain(results.iter().skip(results.len().saturating_sub(2).max(2)));
    for line in shown {
        log.push_str(&format!("  {line}\n"));
    }
    if let Some(rejected) = results.iter().find(|r| r["status"] == "failed") {
        log.push_str(&format!("  first failed: {rejected}\n"));
    }
    anyhow::ensure!(results.len() as u64 == items, "{} results for {items} orders", results.len());
    for (i, r) in (0..items).zip(&results) {
        let expected = if reject.contains(&order_id(i)) { "failed" } else { "succeeded" };
        anyhow::ensure!(
            r["seq"] == i && r["id"] == order_id(i) && r["status"] == expected,
            "result {i} is out of order or wrong: {r} (expected {} {expected})",
            order_id(i)
        );
    }

    let calls = target.calls();
    let throttled = calls.iter().filter(|(_, status)| *status == 429).count();
    let max_in_flight = target.max_in_flight();
    log.push_str(&format!(
        "partner-api saw {} calls ({} orders, {throttled} answered 429 and sent again after Retry-After), at most {max_in_flight} in flight\n",
        thousands(calls.len() as u64),
        thousands(items)
    ));
    anyhow::ensure!(max_in_flight as u64 <= MAX_CONCURRENCY, "{max_in_flight} calls in flight, more than {MAX_CONCURRENCY}");
    anyhow::ensure!(target.succeeded_keys().values().all(|n| *n == 1), "an order was accepted twice");

    let failed_count = *view.counts.get("failed").context("the batch has no failed count")?;
    let failed_file = view.files.get("failed").context("the batch has no link to the failed items")?;
    let failed = get_lines(&failed_file.url).await?;
    log.push_str(&format!("failed: {failed_count}; the failed items file ({} lines) starts:\n", failed.len()));
    for line in failed.iter().take(3) {
        log.push_str(&format!("  {line}\n"));
    }
    anyhow::ensure!(
        failed_count == reject.len() as u64 && failed.len() == reject.len(),
        "{failed_count} failed, {} rejected",
        reject.len()
    );

    // The partner fixed its side: send the failed orders again, and only those.
    target.set_behaviour(partner(false, HashSet::new()));
    let before = calls.len();
    log.push_str(&format!("partner-api healthy again; retrying job {id}\n"));
    let retried = submit_and_watch(&api, &Envelope::retry(id), Duration::from_millis(500), &mut log).await?;
    anyhow::ensure!(retried.status == Status::Succeeded, "the retry ended {}: {}", retried.status, why(&retried));
    let retry_download = retried.download.as_ref().context("the succeeded retry has no download link")?;
    let again = get_lines(&retry_download.url).await?;
    let sent: Vec<Value> = target.calls()[before..].iter().map(|(c, _)| c.body.clone()).collect();
    let mut sent_text: Vec<String> = sent.iter().map(Value::to_string).collect();
    let mut failed_text: Vec<String> = failed.iter().map(Value::to_string).collect();
    sent_text.sort();
    failed_text.sort();
    anyhow::ensure!(sent_text == failed_text, "the retry sent {} calls, not exactly the {} failed orders", sent.len(), failed.len());
    let ids: Vec<&Value> = again.iter().map(|r| &r["id"]).collect();
    let failed_ids: Vec<&Value> = failed.iter().map(|f| &f["id"]).collect();
    anyhow::ensure!(ids == failed_ids, "the retry's results are not the failed orders in order");
    anyhow::ensure!(again.iter().all(|r| r["status"] == "succeeded"), "a retried order failed again");
    log.push_str(&format!(
        "retry {}: {} ({} calls, one per failed order); first result: {}\n",
        retried.id,
        counts_text(&retried.counts),
        sent.len(),
        again.first().map_or_else(String::new, Value::to_string)
    ));
    lambda.invocations.settle().await;
    log.push_str(&format!("worker invocations: {}\n", lambda.invocations.count()));
    Ok(log)
}
