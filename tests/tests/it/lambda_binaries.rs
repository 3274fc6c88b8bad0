//! The vote Lambdas as Lambda runs them: the release wiring in `main.rs` (env settings, clients,
//! JSON logs) served by a local Lambda Runtime API, talking to moto.

use std::collections::VecDeque;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use ferry_testkit::events::s3_put_event;
use ferry_testkit::{binary, bucket, moto_endpoint};
use tokio::sync::mpsc;

/// What the function posted back for one invocation.
#[derive(Debug)]
struct Posted {
    request_id: String,
    kind: &'static str,
    body: serde_json::Value,
}

#[derive(Clone)]
struct Runtime {
    queue: Arc<Mutex<VecDeque<(String, serde_json::Value)>>>,
    posted: mpsc::UnboundedSender<Posted>,
}

async fn next(State(rt): State<Runtime>) -> impl IntoResponse {
    loop {
        let item = rt.queue.lock().expect("queue").pop_front();
        if let Some((id, event)) = item {
            let deadline = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis() + 60_000;
            let mut h = HeaderMap::new();
            h.insert("lambda-runtime-aws-request-id", HeaderValue::from_str(&id).expect("id"));
            h.insert("lambda-runtime-deadline-ms", HeaderValue::from_str(&deadline.to_string()).expect("deadline"));
            h.insert(
                "lambda-runtime-invoked-function-arn",
                HeaderValue::from_static("arn:aws:lambda:us-east-1:000000000000:function:test"),
            );
            return (h, event.to_string());
        }
        // No more work: hold the long poll, as the real Runtime API does between invocations.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn respond(State(rt): State<Runtime>, Path(id): Path<String>, body: String) -> StatusCode {
    let _ = rt.posted.send(Posted { request_id: id, kind: "response", body: serde_json::from_str(&body).unwrap_or(body.into()) });
    StatusCode::ACCEPTED
}

async fn error(State(rt): State<Runtime>, Path(id): Path<String>, body: String) -> StatusCode {
    let _ = rt.posted.send(Posted { request_id: id, kind: "error", body: serde_json::from_str(&body).unwrap_or(body.into()) });
    StatusCode::ACCEPTED
}

struct Function {
    child: Child,
}

impl Drop for Function {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `name` against a Runtime API serving `events`; returns what it posted back, in order.
async fn run_function(name: &str, env: &[(&str, &str)], events: Vec<serde_json::Value>) -> (Vec<Posted>, String) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let count = events.len();
    let queue = events.into_iter().enumerate().map(|(i, e)| (format!("req-{i}"), e)).collect();
    let rt = Runtime { queue: Arc::new(Mutex::new(queue)), posted: tx };
    let app = Router::new()
        .route("/2018-06-01/runtime/invocation/next", get(next))
        .route("/2018-06-01/runtime/invocation/{id}/response", post(respond))
        .route("/2018-06-01/runtime/invocation/{id}/error", post(error))
        .with_state(rt);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });

    let log = std::env::temp_dir().join(format!("ferry-{name}-{}.log", addr.port()));
    let mut cmd = Command::new(binary(name));
    cmd.env_clear()
        .env("AWS_LAMBDA_RUNTIME_API", addr.to_string())
        .env("AWS_LAMBDA_FUNCTION_NAME", name)
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "1024")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        .env("AWS_LAMBDA_LOG_FORMAT", "JSON")
        .env("AWS_ENDPOINT_URL", moto_endpoint())
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).expect("log"))
        .stderr(Stdio::inherit());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let function = Function { child: cmd.spawn().expect("starting the function") };
    let mut posted = Vec::new();
    while posted.len() < count {
        let p = tokio::time::timeout(Duration::from_secs(60), rx.recv()).await.expect("the function answered in time").expect("open");
        posted.push(p);
    }
    drop(function);
    (posted, std::fs::read_to_string(&log).unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread")]
async fn normalizer_and_merger_binaries_serve_s3_events() {
    let (s3, b) = bucket("binaries").await;
    let put = |key: &'static str, body: &'static str| s3.put_object().bucket(&b).key(key).body(body.as_bytes().to_vec().into()).send();
    put("data/4/jp-prod-202611221530.csv", "kseq,score\na,3\nb,1\n").await.unwrap();
    put("data/4/kr-prod-202611221530.csv", "kseq,score\na,1\nc,\n").await.unwrap();
    put("data/4/tw-prod-202611221530.csv", "kseq,score\nb,2\n").await.unwrap();

    let events = vec![
        s3_put_event(&b, &["data/4/jp-prod-202611221530.csv"]),
        s3_put_event(&b, &["data/4/kr-prod-202611221530.csv"]),
        s3_put_event(&b, &["data/4/tw-prod-202611221530.csv"]),
    ];
    let (posted, log) = run_function("regional-normalizer", &[("FERRY_DEFAULT_METHOD", "minmax")], events).await;
    assert_eq!(posted[0].kind, "response", "{:?}", posted[0]);
    assert_eq!(posted[0].body["records"][0]["outcome"], "written");
    // The bad upload fails its invocation with the key and line, typed for the logs.
    assert_eq!((posted[1].request_id.as_str(), posted[1].kind), ("req-1", "error"));
    assert_eq!(posted[1].body["errorType"], "BadInput");
    let message = posted[1].body["errorMessage"].as_str().unwrap_or_default();
    assert!(message.contains("data/4/kr-prod-202611221530.csv: line 3: field `score` is not a number"), "{message}");
    assert_eq!(posted[2].kind, "response");
    // JSON logs: every line parses and the failure is logged with its key.
    let lines: Vec<serde_json::Value> =
        log.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect();
    assert!(lines.iter().any(|l| l["level"] == "ERROR" && l["fields"]["key"] == "data/4/kr-prod-202611221530.csv"), "{log}");

    let (posted, _) =
        run_function("global-merger", &[], vec![s3_put_event(&b, &["result/4/prod/result-jp.csv", "result/4/prod/result-tw.csv"])]).await;
    assert_eq!(posted[0].body["merges"][0]["outcome"], "written", "{:?}", posted[0]);
    let global = s3.get_object().bucket(&b).key("global/4/prod/result-global.csv").send().await.unwrap();
    let body = global.body.collect().await.unwrap().into_bytes();
    // minmax from the environment default: jp a 1, b 0; tw b 1 (max = min)
    assert_eq!(std::str::from_utf8(&body).unwrap(), "kseq,score,jp,tw\na,1.0,1.0,0.0\nb,1.0,0.0,1.0\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_malformed_setting_stops_the_function_at_start() {
    let out = Command::new(binary("regional-normalizer"))
        .env("FERRY_DEFAULT_METHOD", "median")
        .env("AWS_LAMBDA_RUNTIME_API", "127.0.0.1:9")
        .output()
        .expect("running the function");
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("FERRY_DEFAULT_METHOD") && text.contains("median"), "{text}");
}

/// The EMF lines of a function's stdout, each checked as CloudWatch reads it.
fn emf_lines(log: &str) -> Vec<ferry_lambda::metrics::Emitted> {
    log.lines()
        .filter(|l| l.contains("\"_aws\""))
        .map(|l| ferry_lambda::metrics::verify(l).unwrap_or_else(|e| panic!("not an EMF line CloudWatch reads ({e}): {l}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn normalizer_and_merger_binaries_print_emf_lines_on_stdout() {
    use ferry_lambda::metrics::Metric;
    let (s3, b) = bucket("binaries-emf").await;
    let put = |key: &'static str, body: &'static str| s3.put_object().bucket(&b).key(key).body(body.as_bytes().to_vec().into()).send();
    put("data/5/jp-prod-202611221530.csv", "kseq,score\na,3\nb,1\nc,2\n").await.unwrap();
    put("data/5/tw-prod-202611221530.csv", "kseq,score\nb,2\nd,4\n").await.unwrap();
    let events = vec![s3_put_event(&b, &["data/5/jp-prod-202611221530.csv"]), s3_put_event(&b, &["data/5/tw-prod-202611221530.csv"])];
    let (posted, log) = run_function("regional-normalizer", &[], events).await;
    assert!(posted.iter().all(|p| p.kind == "response"), "{posted:?}");
    let lines = emf_lines(&log);
    let rows: Vec<(Option<&str>, Option<f64>)> = lines.iter().map(|l| (l.get("function"), l.value(Metric::RowsNormalized))).collect();
    assert_eq!(rows, [(Some("regional-normalizer"), Some(3.0)), (Some("regional-normalizer"), Some(2.0))], "{log}");
    let bytes: Vec<Option<f64>> = lines.iter().map(|l| l.value(Metric::InputBytesNormalized)).collect();
    assert_eq!(bytes, [Some(23.0), Some(19.0)], "the uploads' sizes: {log}");

    let (posted, log) =
        run_function("global-merger", &[], vec![s3_put_event(&b, &["result/5/prod/result-jp.csv", "result/5/prod/result-tw.csv"])]).await;
    assert_eq!(posted[0].body["merges"][0]["outcome"], "written", "{:?}", posted[0]);
    let lines = emf_lines(&log);
    let rows: Vec<(Option<&str>, Option<f64>)> = lines.iter().map(|l| (l.get("function"), l.value(Metric::RowsMerged))).collect();
    assert_eq!(rows, [(Some("global-merger"), Some(4.0))], "{log}");
    let results: u64 = futures::future::join_all(["result/5/prod/result-jp.csv", "result/5/prod/result-tw.csv"].map(|k| {
        let (s3, b) = (&s3, &b);
        async move { s3.head_object().bucket(b).key(k).send().await.unwrap().content_length().unwrap() as u64 }
    }))
    .await
    .into_iter()
    .sum();
    assert_eq!(lines[0].value(Metric::InputBytesMerged), Some(results as f64), "the locale results' sizes: {log}");
}
