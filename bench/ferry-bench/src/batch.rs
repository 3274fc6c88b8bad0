//! Case 7: one `batch` job end to end, and the target it calls.
//!
//! - `gen-items`: seeded items as JSON lines, the item file a large batch is submitted with.
//! - `batch-target`: the outside API, in a process of its own so that its CPU is not the worker's:
//!   axum on 127.0.0.1 answering every call 200 after a fixed delay, counting calls, items, repeated
//!   idempotency keys and calls in flight (`GET /stats`).
//! - `batch`: the real `job-api` handler admits the job (reading the item file whole, as it does),
//!   and the real `job-worker` handler runs it through a local Lambda `Invoke` endpoint, both in this
//!   process, against a local AWS for S3 and DynamoDB. The process's CPU from the submit to
//!   the end of the last worker run is the handlers' work, their SDK calls to S3 and DynamoDB
//!   included. Before printing anything it checks the job: succeeded, the results file has one line
//!   per item in input order, and the target saw every item exactly once.

use std::collections::HashSet;
use std::io::{BufRead, BufWriter, Read, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use ferry_aws::Store;
use ferry_aws::exports::Multipart;
use ferry_testkit::jobs::{api_and_worker, call, start_worker};
use job_invoker::JobSettings;
use serde_json::{Value, json};

use crate::gen_votes::Rng;

const OWNER: Option<&str> = Some("bench-owner");
/// The target's name in the deployment's settings (a job names a target, never a URL).
const TARGET: &str = "bench";
/// Read and uploaded at a time: a multipart part (at least 5 MiB), and what the worker reads per range.
const UPLOAD_CHUNK: usize = 8 * 1024 * 1024;

#[derive(Debug, clap::Args)]
pub struct GenItemsArgs {
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[arg(long)]
    items: u64,
    #[arg(long)]
    out: PathBuf,
}

/// Writes `items` JSON lines: an id in input order and a few fields of the sizes a CRM update has.
pub fn gen_items(a: &GenItemsArgs) -> anyhow::Result<()> {
    if let Some(dir) = a.out.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let file = std::fs::File::create(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    let mut rng = Rng::new(a.seed);
    let plans = ["free", "starter", "pro", "enterprise"];
    let mut bytes = 0u64;
    for i in 0..a.items {
        let line = format!(
            "{{\"id\":\"item-{i:08}\",\"email\":\"user{}@example.com\",\"plan\":\"{}\",\"amount\":{}.{:02},\"n\":{i}}}\n",
            rng.below(10_000_000),
            plans[rng.below(plans.len())],
            rng.below(5_000),
            rng.below(100)
        );
        bytes += line.len() as u64;
        w.write_all(line.as_bytes())?;
    }
    w.flush()?;
    println!("wrote {} items ({bytes} bytes) to {}", a.items, a.out.display());
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct TargetArgs {
    /// Milliseconds each call waits before its answer.
    #[arg(long, default_value_t = 20)]
    delay_ms: u64,
    /// Port on 127.0.0.1; 0 takes a free one. The base URL is printed on the first line.
    #[arg(long, default_value_t = 0)]
    port: u16,
}

/// What the target has seen since it started (`max_in_flight`: since the last `GET /stats`).
#[derive(Debug, Default)]
struct Seen {
    calls: AtomicU64,
    items: AtomicU64,
    repeated_keys: AtomicU64,
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
    keys: Mutex<HashSet<String>>,
}

/// Counts a call in flight until its answer is built, or until a client that gave up drops it.
struct InFlight<'a>(&'a Seen);

impl<'a> InFlight<'a> {
    fn enter(seen: &'a Seen) -> InFlight<'a> {
        let now = seen.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        seen.max_in_flight.fetch_max(now, Ordering::SeqCst);
        InFlight(seen)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Serves until killed.
pub fn serve_target(a: &TargetArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", a.port)).await.context("binding the target")?;
        let addr = listener.local_addr()?;
        let seen = Arc::new(Seen::default());
        let delay = Duration::from_millis(a.delay_ms);
        let app = axum::Router::new()
            .route("/stats", axum::routing::get(stats))
            .fallback(move |state: State<Arc<Seen>>, headers: HeaderMap, body: axum::body::Bytes| answer(state, headers, body, delay))
            .with_state(seen);
        println!("http://{addr}");
        std::io::stdout().flush()?;
        axum::serve(listener, app).await.context("serving the target")
    })
}

async fn answer(State(seen): State<Arc<Seen>>, headers: HeaderMap, body: axum::body::Bytes, delay: Duration) -> Response {
    let _in_flight = InFlight::enter(&seen);
    let items = match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Array(a)) => a.len() as u64,
        Ok(_) => 1,
        Err(e) => return (StatusCode::BAD_REQUEST, axum::Json(json!({"error": e.to_string()}))).into_response(),
    };
    seen.calls.fetch_add(1, Ordering::SeqCst);
    seen.items.fetch_add(items, Ordering::SeqCst);
    if let Some(key) = headers.get("idempotency-key").map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()) {
        let fresh = seen.keys.lock().unwrap_or_else(PoisonError::into_inner).insert(key);
        if !fresh {
            seen.repeated_keys.fetch_add(1, Ordering::SeqCst);
        }
    }
    tokio::time::sleep(delay).await;
    axum::Json(json!({"ok": true})).into_response()
}

async fn stats(State(seen): State<Arc<Seen>>) -> axum::Json<Value> {
    let max = seen.max_in_flight.swap(seen.in_flight.load(Ordering::SeqCst), Ordering::SeqCst);
    axum::Json(json!({
        "calls": seen.calls.load(Ordering::SeqCst),
        "items": seen.items.load(Ordering::SeqCst),
        "repeated_keys": seen.repeated_keys.load(Ordering::SeqCst),
        "max_in_flight": max,
    }))
}

#[derive(Debug, clap::Args)]
pub struct BatchArgs {
    /// The target's base URL, as `batch-target` printed it; calls go to `{target}/items`.
    #[arg(long)]
    target: String,
    /// The items, JSON lines (`gen-items`); uploaded under `datasets/` of the job bucket first.
    #[arg(long)]
    items_file: PathBuf,
    #[arg(long, default_value_t = 10)]
    concurrency: u32,
    #[arg(long, default_value_t = 1)]
    items_per_request: u32,
    /// Time each worker run gets before its deadline, as the Lambda timeout gives it (at most 900).
    #[arg(long, default_value_t = 900)]
    run_for_secs: u64,
}

pub fn run(a: &BatchArgs) -> anyhow::Result<()> {
    let endpoint = std::env::var("AWS_ENDPOINT_URL").unwrap_or_default();
    // Never a real account: the run creates a table and a bucket and writes to them.
    anyhow::ensure!(
        endpoint.starts_with("http://127.0.0.1:") || endpoint.starts_with("http://localhost:"),
        "AWS_ENDPOINT_URL must name a local AWS on loopback, got {endpoint:?}"
    );
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(run_batch(a, &endpoint))
}

async fn run_batch(a: &BatchArgs, endpoint: &str) -> anyhow::Result<()> {
    let creds = aws_sdk_s3::config::Credentials::new("testing", "testing", None, None, "ferry-bench");
    let conf = SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(aws_sdk_s3::config::SharedCredentialsProvider::new(creds))
        .build();
    let pid = std::process::id();
    let base = a.target.trim_end_matches('/');
    let targets = json!({ TARGET: { "url": format!("{base}/items") } }).to_string();
    let settings = Arc::new(JobSettings {
        table: format!("ferry-bench-jobs-{pid}"),
        bucket: format!("ferry-bench-batch-{pid}"),
        batch_targets: ferry_core::batch::parse_targets(&targets).map_err(anyhow::Error::msg)?,
        ..JobSettings::default()
    });
    let s3 = ferry_aws::clients::s3(&conf);
    ferry_testkit::provision::jobs_table(&ferry_aws::clients::dynamodb(&conf), &settings.table).await?;
    ferry_testkit::provision::create_bucket(&s3, &settings.bucket).await?;
    let store = Store::new(s3.clone(), settings.bucket.clone());
    let key = "datasets/bench/items.jsonl";
    let count = upload(&store, key, &a.items_file).await?;
    anyhow::ensure!(count > 0, "{} holds no items", a.items_file.display());

    let (_, make) = api_and_worker(&conf, settings.clone(), ferry_aws::lambda::Invoker::new(&conf));
    let lambda = start_worker(&conf, Duration::from_secs(a.run_for_secs), make).await?;
    let (api, _) = api_and_worker(&conf, settings.clone(), lambda.client(&conf));
    let http = reqwest::Client::new();
    let before = target_stats(&http, base).await?;

    let body = json!({"kind": "batch", "params": {
        "target": TARGET,
        "items": {"bucket": settings.bucket, "key": key, "format": "jsonl"},
        "max_concurrency": a.concurrency,
        "items_per_request": a.items_per_request,
    }})
    .to_string();
    let (cpu0, t0) = (usage()?.cpu, Instant::now());
    let (code, submitted) = call(&api, "POST", "/jobs", Some(&body), OWNER).await?;
    let (cpu_submit, submit_s) = (usage()?.cpu - cpu0, t0.elapsed().as_secs_f64());
    anyhow::ensure!(code == 202, "POST /jobs answered {code}: {submitted}");
    let reports = lambda.invocations.settle().await;
    let (cpu, wall) = (usage()?.cpu - cpu0, t0.elapsed().as_secs_f64());

    // Checked before anything is printed: a run that did not do the work has no numbers.
    for r in &reports {
        anyhow::ensure!(r.is_ok(), "a worker run failed: {r:?}");
    }
    let id = submitted["job"]["id"].as_str().context("no job id in the answer")?.to_owned();
    let (_, view) = call(&api, "GET", &format!("/jobs/{id}"), None, OWNER).await?;
    anyhow::ensure!(view["status"] == "succeeded", "the job ended {}: {view}", view["status"]);
    anyhow::ensure!(view["counts"]["succeeded"].as_u64() == Some(count), "{count} items, yet {view}");
    let after = target_stats(&http, base).await?;
    let seen = |k: &str| after[k].as_u64().unwrap_or(0).saturating_sub(before[k].as_u64().unwrap_or(0));
    let calls = count.div_ceil(u64::from(a.items_per_request));
    anyhow::ensure!(seen("calls") == calls, "the target saw {} calls, expected {calls}", seen("calls"));
    anyhow::ensure!(seen("items") == count, "the target saw {} items, expected {count}", seen("items"));
    anyhow::ensure!(seen("repeated_keys") == 0, "{} calls repeated an idempotency key", seen("repeated_keys"));
    let max_in_flight = after["max_in_flight"].as_u64().unwrap_or(0);
    anyhow::ensure!(max_in_flight <= u64::from(a.concurrency), "{max_in_flight} calls in flight, above {}", a.concurrency);
    let results_key = ferry_core::jobs::output_key(OWNER.unwrap_or_default(), &id, "results.jsonl");
    check_results(&store, &results_key, &a.items_file, count).await?;

    let end = usage()?;
    let summary = json!({
        "items": count,
        "concurrency": a.concurrency,
        "items_per_request": a.items_per_request,
        "calls": calls,
        "worker_runs": reports.len(),
        "wall_s": wall,
        "submit_wall_s": submit_s,
        "items_per_s": count as f64 / wall,
        "cpu_s": cpu,
        "cpu_submit_s": cpu_submit,
        "cpu_us_per_item": cpu * 1e6 / count as f64,
        "worker_cpu_us_per_item": (cpu - cpu_submit) * 1e6 / count as f64,
        "target_max_in_flight": max_in_flight,
        "peak_rss_bytes": end.max_rss_bytes,
        "verified": format!("job succeeded; {count} result lines, seq 0..{count} with the input's ids in input order, all succeeded; the target saw {calls} calls carrying {count} items, no idempotency key twice"),
        "notes": "wall and CPU run from the POST /jobs to the end of the last worker run; CPU is getrusage(RUSAGE_SELF) user+sys of this process, which runs the job-api and job-worker handlers and so includes their AWS SDK calls to the local S3 and DynamoDB (the handlers' real work), not the local AWS's or the target's CPU; cpu_submit_s is the API's share (it reads the item file whole to check it)",
    });
    println!("{summary}");
    Ok(())
}

/// Uploads the item file part by part (the process never holds it whole); returns its line count.
async fn upload(store: &Store, key: &str, path: &PathBuf) -> anyhow::Result<u64> {
    let mut file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut upload = Multipart::begin(store, key, "application/x-ndjson").await?;
    let mut lines = 0u64;
    loop {
        let mut chunk = Vec::with_capacity(UPLOAD_CHUNK);
        (&mut file).take(UPLOAD_CHUNK as u64).read_to_end(&mut chunk)?;
        lines += chunk.iter().filter(|b| **b == b'\n').count() as u64;
        if chunk.len() < UPLOAD_CHUNK {
            upload.complete(chunk).await?;
            return Ok(lines);
        }
        upload.upload_part(chunk).await?;
    }
}

/// Downloads the results file to disk and checks it line by line against the item file: memory
/// stays flat whatever the count.
async fn check_results(store: &Store, key: &str, items_file: &PathBuf, count: u64) -> anyhow::Result<()> {
    let mut expected = std::io::BufReader::new(std::fs::File::open(items_file)?).lines();
    let local = items_file.with_extension("results.jsonl");
    store.download_to_file(key, &local).await.with_context(|| format!("reading {key}"))?;
    let mut seq = 0u64;
    for line in std::io::BufReader::new(std::fs::File::open(&local)?).split(b'\n') {
        let line = line.context("reading the results")?;
        if line.is_empty() {
            continue;
        }
        check_line(&line, seq, &mut expected)?;
        seq += 1;
    }
    let _ = std::fs::remove_file(&local);
    anyhow::ensure!(seq == count, "{seq} result lines for {count} items");
    Ok(())
}

/// Result `seq` is that item's, and it succeeded.
fn check_line(line: &[u8], seq: u64, expected: &mut impl Iterator<Item = std::io::Result<String>>) -> anyhow::Result<()> {
    let r: Value = serde_json::from_slice(line).with_context(|| format!("results line {}", seq + 1))?;
    let input: Value = serde_json::from_str(&expected.next().context("more results than items")??)?;
    anyhow::ensure!(r["seq"].as_u64() == Some(seq), "results line {} has seq {}", seq + 1, r["seq"]);
    anyhow::ensure!(r["id"] == input["id"], "results line {}: id {} where the input has {}", seq + 1, r["id"], input["id"]);
    anyhow::ensure!(r["status"] == "succeeded" && r["http_status"] == 200, "results line {}: {r}", seq + 1);
    Ok(())
}

async fn target_stats(http: &reqwest::Client, base: &str) -> anyhow::Result<Value> {
    let stats = http.get(format!("{base}/stats")).send().await.context("asking the target for its stats")?;
    Ok(stats.error_for_status()?.json().await?)
}

struct Usage {
    /// User plus system CPU seconds of this process so far, all threads.
    cpu: f64,
    max_rss_bytes: u64,
}

/// CPU time and peak RSS of this process, from /proc (Linux): utime + stime in clock ticks
/// (100 a second, so a 10 ms resolution: the runs measured last seconds), and `VmHWM`.
fn usage() -> anyhow::Result<Usage> {
    let stat = std::fs::read_to_string("/proc/self/stat").context("reading /proc/self/stat")?;
    // The command name (field 2) may hold spaces; the fields after its closing parenthesis do not.
    let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    let status = std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let hwm_kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0);
    Ok(Usage { cpu: (ticks(11) + ticks(12)) / 100.0, max_rss_bytes: hwm_kb * 1024 })
}
