//! The async-jobs scenario, and the local pieces it shares with the tests:
//!
//! - [`api_request`]: an API Gateway HTTP API (payload v2) request, built from
//!   `events/apigw-http-jobs.json`, as the `job-api` handler receives it.
//! - [`LocalLambda`]: a loopback server speaking Lambda's `Invoke` REST API
//!   (`POST /2015-03-31/functions/{name}/invocations`). An `Event` invocation is answered 202 at once
//!   and the worker handler runs in a background task, as Lambda runs it; the real SDK call is
//!   exercised end to end. (moto cannot run functions.)
//! - [`run`]: seed 100,000 orders, export them to xlsx through the API handler, poll the status with
//!   progress, download the file and count its rows.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::Context as _;
use aws_config::SdkConfig;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use ferry_aws::jobs::DynamoClient;
use ferry_aws::lambda::Invoker;
use ferry_aws::seed::{self, AttributeValue};
use job_invoker::worker::{self, WorkerReport};
use job_invoker::{Api, JobEnv, JobSettings, Worker};
use lambda_runtime::{Context, LambdaEvent};
use tokio::task::JoinHandle;

/// The `events/apigw-http-jobs.json` fixture.
pub const APIGW_HTTP_JOBS: &str = include_str!("../../../events/apigw-http-jobs.json");

/// A `job-api` request: `method` on `path` (with an optional query string), `body`, from the caller
/// whose JWT `sub` is `owner` (`None`: no verified identity). Each request gets its own request id,
/// as API Gateway gives it.
pub fn api_request(method: &str, path_and_query: &str, body: Option<&str>, owner: Option<&str>) -> lambda_http::Request {
    let mut event: serde_json::Value = serde_json::from_str(APIGW_HTTP_JOBS).expect("events/apigw-http-jobs.json is valid JSON");
    event["requestContext"]["requestId"] = next_request_id().into();
    let (path, query) = path_and_query.split_once('?').unwrap_or((path_and_query, ""));
    event["rawPath"] = path.into();
    event["rawQueryString"] = query.into();
    event["routeKey"] = format!("{method} {path}").into();
    event["requestContext"]["routeKey"] = event["routeKey"].clone();
    event["requestContext"]["http"]["method"] = method.into();
    event["requestContext"]["http"]["path"] = path.into();
    if !query.is_empty() {
        let params: serde_json::Map<String, serde_json::Value> = query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), serde_json::Value::String(v.to_owned())))
            .collect();
        event["queryStringParameters"] = params.into();
    }
    match body {
        Some(b) => event["body"] = b.into(),
        None => {
            event.as_object_mut().map(|o| o.remove("body"));
        }
    }
    match owner {
        Some(o) => event["requestContext"]["authorizer"]["jwt"]["claims"]["sub"] = o.into(),
        None => {
            event["requestContext"].as_object_mut().map(|o| o.remove("authorizer"));
        }
    }
    lambda_http::request::from_str(&event.to_string()).expect("a valid API Gateway v2 event")
}

/// A request id unique in this process (`req-{pid}-{n}`).
pub fn next_request_id() -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!("req-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// Calls the API handler like API Gateway does, and returns the status and JSON body.
pub async fn call(
    api: &Api,
    method: &str,
    path: &str,
    body: Option<&str>,
    owner: Option<&str>,
) -> anyhow::Result<(u16, serde_json::Value)> {
    let resp = job_invoker::api::handle(api, api_request(method, path, body, owner)).await.map_err(|e| anyhow::anyhow!("job-api: {e}"))?;
    let status = resp.status().as_u16();
    let body = match resp.body() {
        lambda_http::Body::Text(t) => serde_json::from_str(t)?,
        lambda_http::Body::Binary(b) => serde_json::from_slice(b)?,
        _ => serde_json::Value::Null,
    };
    Ok((status, body))
}

/// What the local Lambda endpoint has seen and is running.
#[derive(Debug, Default)]
pub struct Invocations {
    /// Every invoke request received, in order (payloads).
    pub received: Mutex<Vec<serde_json::Value>>,
    /// The background worker runs.
    pub tasks: Mutex<Vec<JoinHandle<Result<WorkerReport, String>>>>,
    /// Answer every invoke with an error (a Lambda outage).
    pub refuse: AtomicBool,
    /// Accept invokes but do not run the worker (a worker that never starts).
    pub hold: AtomicBool,
    /// Run each accepted invoke only after this many milliseconds, as Lambda does with an event it
    /// keeps in its retry queue while the function is throttled.
    pub delay_ms: std::sync::atomic::AtomicU64,
}

impl Invocations {
    pub fn count(&self) -> usize {
        self.received.lock().map_or(0, |r| r.len())
    }

    /// Waits for every worker run started so far (and any they start) to end; returns their reports.
    pub async fn settle(&self) -> Vec<Result<WorkerReport, String>> {
        let mut reports = Vec::new();
        loop {
            let batch: Vec<_> = self.tasks.lock().map(|mut t| t.drain(..).collect()).unwrap_or_default();
            if batch.is_empty() {
                return reports;
            }
            for t in batch {
                reports.push(t.await.unwrap_or_else(|e| Err(format!("worker task ended abnormally: {e}"))));
            }
        }
    }

    /// Kills every running worker, as a crash or a timeout would.
    pub fn kill_all(&self) {
        if let Ok(tasks) = self.tasks.lock() {
            tasks.iter().for_each(JoinHandle::abort);
        }
    }
}

#[derive(Debug, Clone)]
struct Server {
    worker: Arc<OnceLock<Worker>>,
    invocations: Arc<Invocations>,
    run_for: Duration,
}

/// Lambda's `Invoke` API on a loopback port, running the worker handler in-process.
#[derive(Debug, Clone)]
pub struct LocalLambda {
    pub endpoint: String,
    pub invocations: Arc<Invocations>,
}

impl LocalLambda {
    /// Starts the endpoint. Each worker run gets a deadline `run_for` from its start, as a Lambda
    /// timeout would give it. `make_worker` receives an invoker of this endpoint (the worker
    /// invokes itself to continue).
    pub async fn start(conf: &SdkConfig, run_for: Duration, make_worker: impl FnOnce(Invoker) -> Worker) -> std::io::Result<LocalLambda> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        let worker = Arc::new(OnceLock::new());
        let _ = worker.set(make_worker(Invoker::at(conf, &endpoint)));
        let invocations = Arc::new(Invocations::default());
        let server = Server { worker, invocations: invocations.clone(), run_for };
        let app = axum::Router::new().route("/2015-03-31/functions/{name}/invocations", post(invoke)).with_state(server);
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(LocalLambda { endpoint, invocations })
    }

    /// An invoker of the functions here: what [`Api`] and [`Worker`] hold.
    pub fn client(&self, conf: &SdkConfig) -> Invoker {
        Invoker::at(conf, &self.endpoint)
    }
}

async fn invoke(
    State(server): State<Server>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> (StatusCode, String) {
    let payload: serde_json::Value = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    if let Ok(mut r) = server.invocations.received.lock() {
        r.push(payload.clone());
    }
    if server.invocations.refuse.load(Ordering::SeqCst) {
        return (StatusCode::INTERNAL_SERVER_ERROR, r#"{"Type":"Service","message":"local Lambda refuses invocations"}"#.into());
    }
    let event_type = headers.get("x-amz-invocation-type").and_then(|v| v.to_str().ok()) == Some("Event");
    if !event_type {
        return (StatusCode::BAD_REQUEST, r#"{"Type":"User","message":"only Event invocations are served here"}"#.into());
    }
    if server.invocations.hold.load(Ordering::SeqCst) {
        return (StatusCode::ACCEPTED, String::new());
    }
    let Some(worker) = server.worker.get().cloned() else {
        return (StatusCode::SERVICE_UNAVAILABLE, r#"{"Type":"Service","message":"no worker"}"#.into());
    };
    let delay = Duration::from_millis(server.invocations.delay_ms.load(Ordering::SeqCst));
    let run_for = server.run_for;
    let task = tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        run_worker(run_for, &worker, payload, &name).await
    });
    if let Ok(mut t) = server.invocations.tasks.lock() {
        t.push(task);
    }
    (StatusCode::ACCEPTED, String::new())
}

/// One worker run, with a deadline `run_for` from its start, as a Lambda timeout would give it.
async fn run_worker(run_for: Duration, worker: &Worker, payload: serde_json::Value, name: &str) -> Result<WorkerReport, String> {
    let mut ctx = Context::default();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    ctx.deadline = now + run_for.as_millis() as u64;
    ctx.invoked_function_arn = format!("arn:aws:lambda:us-east-1:123456789012:function:{name}");
    ctx.request_id = next_request_id();
    worker::handle(worker, LambdaEvent::new(payload, ctx)).await.map_err(|e| e.to_string())
}

/// The API and worker state for one jobs table and export bucket, with the worker behind `lambda`
/// (an [`Invoker`], or a Lambda client from `ferry_aws::clients::lambda`).
pub fn api_and_worker(conf: &SdkConfig, settings: Arc<JobSettings>, lambda: impl Into<Invoker>) -> (Api, impl FnOnce(Invoker) -> Worker) {
    api_and_worker_with(conf, settings, lambda, Arc::new(job_invoker::Registry::standard()))
}

/// A fresh jobs table and bucket (created here), the API, and a local Lambda endpoint running the
/// worker over `kinds` with a deadline `run_for` after each start: what the tests and the demo run.
pub async fn start_local(
    conf: &SdkConfig,
    settings: Arc<JobSettings>,
    run_for: Duration,
    kinds: Arc<job_invoker::Registry>,
) -> anyhow::Result<(Api, LocalLambda)> {
    ferry_aws::jobs::JobTable::new(ferry_aws::clients::dynamodb(conf), settings.table.clone()).create().await?;
    ferry_aws::clients::s3(conf).create_bucket().bucket(&settings.bucket).send().await.context("creating the bucket")?;
    let (_, make) = api_and_worker_with(conf, settings.clone(), Invoker::new(conf), kinds.clone());
    let lambda = LocalLambda::start(conf, run_for, make).await?;
    let (api, _) = api_and_worker_with(conf, settings, lambda.client(conf), kinds);
    Ok((api, lambda))
}

/// [`api_and_worker`] running the kinds of `kinds` (a registry with a kind of your own).
pub fn api_and_worker_with(
    conf: &SdkConfig,
    settings: Arc<JobSettings>,
    lambda: impl Into<Invoker>,
    kinds: Arc<job_invoker::Registry>,
) -> (Api, impl FnOnce(Invoker) -> Worker) {
    let env = JobEnv { kinds, ..JobEnv::new(conf, settings) };
    let api = Api { env: env.clone(), lambda: lambda.into() };
    let make = move |lambda| Worker { env, lambda };
    (api, make)
}

/// Writes `count` orders into `table` (created if missing), 25 per batch, several batches at once.
pub async fn seed_orders(dynamo: &DynamoClient, table: &str, count: u64) -> anyhow::Result<()> {
    seed::create_table(dynamo, table, "order_id").await?;
    let statuses = ["paid", "shipped", "delivered", "refunded"];
    let orders = (0..count).map(|i| {
        seed::Item::from([
            ("order_id".to_owned(), AttributeValue::S(format!("o-{i:07}"))),
            ("seller_id".to_owned(), AttributeValue::S(format!("s-{:03}", i % 40))),
            ("amount".to_owned(), AttributeValue::N(format!("{}.{:02}", 5 + (i * 7919) % 500, i % 100))),
            ("status".to_owned(), AttributeValue::S(statuses[(i % 4) as usize].into())),
        ])
    });
    seed::put_items(dynamo, table, orders).await.context("seeding orders")
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
    ferry_aws::jobs::JobTable::new(dynamo.clone(), settings.table.clone()).create().await?;
    s3.create_bucket().bucket(&settings.bucket).send().await.context("creating the export bucket")?;

    // moto cannot run Lambda functions: the worker runs in this process behind a local Invoke endpoint.
    let placeholder = Invoker::new(conf);
    let (_, make) = api_and_worker(conf, settings.clone(), placeholder);
    let lambda = LocalLambda::start(conf, Duration::from_secs(900), make).await?;
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

/// Data rows (header rows excluded) and sheets of an xlsx, read with calamine.
pub fn count_xlsx_rows(bytes: &[u8]) -> anyhow::Result<(usize, usize)> {
    use calamine::Reader;
    let mut book = calamine::Xlsx::new(std::io::Cursor::new(bytes.to_vec()))?;
    let names = book.sheet_names().to_vec();
    let mut rows = 0;
    for name in &names {
        let range = book.worksheet_range(name)?;
        rows += range.height().saturating_sub(1);
    }
    Ok((rows, names.len()))
}
