//! The `batch` job kind against moto and a local HTTP target: the real job API and worker handlers,
//! the real SDK, real HTTP calls on loopback. Every claim about concurrency, rate, retries and
//! idempotency is measured at the target.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_testkit::jobs::{WorkerLambda, call, start_local};
use ferry_testkit::target::{Answer, Behaviour, LocalTarget, outside_api};
use ferry_testkit::{sdk_config, unique};
use job_invoker::worker::WorkerReport;
use job_invoker::{Api, JobSettings};
use serde_json::{Value, json};

const OWNER: Option<&str> = Some("seller-0001");

struct Env {
    api: Api,
    lambda: WorkerLambda,
    settings: Arc<JobSettings>,
    s3: aws_sdk_s3::Client,
    target: LocalTarget,
}

/// A fresh jobs table and bucket, a local target serving `behaviour` configured as target `crm`,
/// the API, and a local Lambda endpoint running the worker with a deadline `run_for` after each start.
async fn env_with(run_for: Duration, behaviour: Behaviour, tweak: impl FnOnce(&mut JobSettings)) -> Env {
    let conf = sdk_config();
    let target = LocalTarget::start(behaviour).await.expect("starting the local target");
    let targets = json!({ "crm": { "url": target.url("items"), "headers": {"x-team": "ferry-tests"} } }).to_string();
    let mut settings = JobSettings {
        table: unique("jobs"),
        bucket: unique("batches"),
        batch_targets: ferry_core::batch::parse_targets(&targets).expect("targets"),
        max_running_per_owner: 50,
        ..JobSettings::default()
    };
    tweak(&mut settings);
    let settings = Arc::new(settings);
    let s3 = ferry_aws::clients::s3(&conf);
    let kinds = Arc::new(job_invoker::Registry::standard());
    let (api, lambda) =
        start_local(&conf, settings.clone(), run_for, kinds).await.expect("starting the jobs table, bucket and local Lambda");
    Env { api, lambda, settings, s3, target }
}

async fn env(behaviour: Behaviour) -> Env {
    env_with(Duration::from_secs(900), behaviour, |_| {}).await
}

fn items(n: u64) -> Vec<Value> {
    (0..n).map(|i| json!({"id": format!("item-{i:05}"), "n": i})).collect()
}

fn batch(items: Vec<Value>, extra: Value) -> String {
    let mut params = json!({ "target": "crm", "items": items });
    if let (Some(p), Some(e)) = (params.as_object_mut(), extra.as_object()) {
        p.extend(e.clone());
    }
    json!({ "kind": "batch", "params": params }).to_string()
}

/// The number after the last `:` of an idempotency key: the seq of the call's first item.
fn seq_of(key: &str) -> u64 {
    key.rsplit(':').next().and_then(|s| s.parse().ok()).unwrap_or(u64::MAX)
}

impl Env {
    async fn post(&self, body: &str) -> (u16, Value) {
        call(&self.api, "POST", "/jobs", Some(body), OWNER).await.expect("POST /jobs")
    }

    async fn status(&self, id: &str) -> Value {
        let (code, v) = call(&self.api, "GET", &format!("/jobs/{id}"), None, OWNER).await.expect("GET");
        assert_eq!(code, 200, "{v}");
        v
    }

    /// Submits `body` (202 expected), lets the worker runs settle, and returns the job's view.
    async fn run(&self, body: &str) -> Value {
        let (code, v) = self.post(body).await;
        assert_eq!(code, 202, "{v}");
        let id = v["job"]["id"].as_str().expect("an id").to_owned();
        let reports = self.lambda.invocations.settle().await;
        assert!(reports.iter().all(|r| r.is_ok() || r.as_ref().is_err_and(|e| e.contains("failed"))), "{reports:?}");
        self.status(&id).await
    }

    async fn object(&self, key: &str) -> Vec<u8> {
        let o = self.s3.get_object().bucket(&self.settings.bucket).key(key).send().await.expect("GetObject");
        o.body.collect().await.expect("body").into_bytes().to_vec()
    }

    /// The job's results file as JSON lines.
    async fn results(&self, view: &Value) -> Vec<Value> {
        let url = view["download"]["url"].as_str().unwrap_or_else(|| panic!("no download in {view}"));
        lines(&reqwest::get(url).await.expect("download").bytes().await.expect("body"))
    }

    async fn put(&self, key: &str, body: Vec<u8>) {
        self.s3.put_object().bucket(&self.settings.bucket).key(key).body(body.into()).send().await.expect("PutObject");
    }

    async fn open_uploads(&self) -> usize {
        let out = self.s3.list_multipart_uploads().bucket(&self.settings.bucket).send().await.expect("ListMultipartUploads");
        out.uploads().len()
    }
}

fn lines(body: &[u8]) -> Vec<Value> {
    body.split(|b| *b == b'\n').filter(|l| !l.is_empty()).map(|l| serde_json::from_slice(l).expect("a JSON line")).collect()
}

/// Seqs of the results, in file order, and each status.
fn seqs_and_statuses(results: &[Value]) -> Vec<(u64, String)> {
    results.iter().map(|r| (r["seq"].as_u64().expect("seq"), r["status"].as_str().expect("status").to_owned())).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn never_more_calls_in_flight_than_asked_and_results_in_input_order() {
    // Each item answers after a time that does not follow its position, so calls finish out of order.
    let behaviour: Behaviour = Arc::new(|c| {
        let seq = c.key.as_deref().map_or(0, seq_of);
        Answer::ok(json!({"ok": true})).after(Duration::from_millis(5 + (seq * 37) % 60))
    });
    let e = env(behaviour).await;
    let view = e.run(&batch(items(120), json!({"max_concurrency": 6}))).await;
    assert_eq!(view["status"], "succeeded", "{view}");
    assert_eq!(e.target.max_in_flight(), 6, "six calls in flight at most, and the run used them");
    let results = e.results(&view).await;
    let expected: Vec<(u64, String)> = (0..120).map(|i| (i, "succeeded".to_owned())).collect();
    assert_eq!(seqs_and_statuses(&results), expected);
    assert_eq!(results[7]["id"], "item-00007");
    assert_eq!(results[7]["http_status"], 200);
    // Every item sent once, under its own idempotency key, with the target's configured header.
    let calls = e.target.calls();
    assert_eq!(calls.len(), 120);
    let keys: HashSet<String> = calls.iter().filter_map(|(c, _)| c.key.clone()).collect();
    let id = view["id"].as_str().unwrap();
    assert_eq!(keys, (0..120).map(|i| format!("{id}:{i}")).collect::<HashSet<_>>());
    assert!(calls.iter().all(|(c, _)| c.headers.iter().any(|(k, v)| k == "x-team" && v == "ferry-tests")));
    let first = calls.iter().find(|(c, _)| c.key.as_deref().map(seq_of) == Some(0)).expect("item 0 was sent");
    assert_eq!(first.0.body, json!({"id": "item-00000", "n": 0}), "the item itself is the body");
    assert_eq!(view["progress"]["counts"]["succeeded"], 120, "{view}");
    assert_eq!(e.open_uploads().await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn calls_start_no_faster_than_the_rate() {
    let e = env(outside_api(Duration::ZERO, None, HashSet::new())).await;
    let view = e.run(&batch(items(30), json!({"max_concurrency": 10, "rate_per_second": 20}))).await;
    assert_eq!(view["status"], "succeeded", "{view}");
    let at: Vec<Duration> = e.target.calls().iter().map(|(c, _)| c.at).collect();
    assert_eq!(at.len(), 30);
    // 20 a second is one every 50 ms: any 10 consecutive calls span at least 9 intervals, less
    // a little for the connection each call may or may not have to open.
    for w in at.windows(10) {
        let span = w[9] - w[0];
        assert!(span >= Duration::from_millis(9 * 50 - 20), "10 calls within {span:?}");
    }
    let e = env(outside_api(Duration::ZERO, None, HashSet::new())).await;
    let view = e.run(&batch(items(12), json!({"max_concurrency": 4, "min_interval_ms": 100}))).await;
    assert_eq!(view["status"], "succeeded", "{view}");
    let at: Vec<Duration> = e.target.calls().iter().map(|(c, _)| c.at).collect();
    assert!(at[11] - at[0] >= Duration::from_millis(11 * 100 - 20), "12 calls within {:?}", at[11] - at[0]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_429_is_retried_no_sooner_than_its_retry_after() {
    // Every 4th item's first call is answered 429 with Retry-After: 1.
    let e = env(outside_api(Duration::from_millis(5), Some(4), HashSet::new())).await;
    let view = e.run(&batch(items(12), json!({"max_concurrency": 4}))).await;
    assert_eq!(view["status"], "succeeded", "{view}");
    let calls = e.target.calls();
    for seq in [0u64, 4, 8] {
        let tries: Vec<&(ferry_testkit::target::Call, u16)> =
            calls.iter().filter(|(c, _)| c.key.as_deref().map(seq_of) == Some(seq)).collect();
        assert_eq!(tries.iter().map(|(_, s)| *s).collect::<Vec<_>>(), [429, 200], "item {seq}");
        let waited = tries[1].0.at - tries[0].0.at;
        assert!(waited >= Duration::from_millis(1000), "item {seq} retried after {waited:?}");
    }
    let results = e.results(&view).await;
    assert_eq!(results[4]["attempts"], 2);
    assert_eq!(results[5]["attempts"], 1);
    assert!(results.iter().all(|r| r["status"] == "succeeded"));
}

#[tokio::test(flavor = "multi_thread")]
async fn failures_past_the_tolerance_stop_the_job_and_the_rest_are_not_sent() {
    let fail: HashSet<String> = ["item-00002", "item-00004", "item-00006"].iter().map(|s| s.to_string()).collect();
    let e = env(outside_api(Duration::ZERO, None, fail)).await;
    let body = batch(items(50), json!({"max_concurrency": 1, "tolerated_failure_count": 1}));
    let view = e.run(&body).await;
    assert_eq!(view["status"], "failed", "{view}");
    assert_eq!(view["error"]["code"], "too_many_failures", "{view}");
    // One at a time: the second failure (item 4) is the last call made.
    let calls = e.target.calls();
    assert_eq!(calls.len(), 5, "items 0..=4 sent, nothing after the threshold");
    let failed = e.object(&format!("exports/seller-0001/{}.failed.jsonl", view["id"].as_str().unwrap())).await;
    let failed = lines(&failed);
    assert_eq!(failed.len(), 2 + 45, "the two failed items and the 45 never sent");
    assert_eq!(failed[0], json!({"id": "item-00002", "n": 2}), "as it was in the input");
    let results = e.object(&format!("exports/seller-0001/{}.results.jsonl", view["id"].as_str().unwrap())).await;
    let statuses = seqs_and_statuses(&lines(&results));
    assert_eq!(statuses.len(), 50);
    assert_eq!(statuses[2].1, "failed");
    assert_eq!(statuses[3].1, "succeeded");
    assert_eq!(statuses[5].1, "skipped");
    assert_eq!(view["progress"]["counts"]["failed"], 2, "{view}");
    // The failed job keeps its output, with links.
    assert_eq!(view["files"]["failed"]["rows"], 47, "{view}");
    assert_eq!(e.results(&view).await.len(), 50);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_continuation_mid_batch_sends_no_item_twice_and_skips_none() {
    // Each worker run gets 3 s, hands over when 2 s are left (1 s margin + 1 s call timeout): the
    // batch of 400 items at 5 in flight and 40 ms a call needs about 3.2 s, so several runs.
    let e = env_with(Duration::from_secs(3), outside_api(Duration::from_millis(40), Some(25), HashSet::new()), |s| {
        s.continue_margin = Duration::from_secs(1);
    })
    .await;
    let view = e.run(&batch(items(400), json!({"max_concurrency": 5, "timeout_ms": 1000}))).await;
    assert_eq!(view["status"], "succeeded", "{view}");
    assert!(view["attempt"].as_u64().unwrap() >= 2, "it took several runs: {view}");
    let ok = e.target.succeeded_keys();
    assert_eq!(ok.len(), 400, "every item done");
    assert!(ok.values().all(|n| *n == 1), "no item done twice: {:?}", ok.iter().filter(|(_, n)| **n > 1).collect::<Vec<_>>());
    let results = e.results(&view).await;
    let expected: Vec<(u64, String)> = (0..400).map(|i| (i, "succeeded".to_owned())).collect();
    assert_eq!(seqs_and_statuses(&results), expected);
    assert_eq!(e.open_uploads().await, 0, "both uploads completed or aborted");
    let staged = e.s3.list_objects_v2().bucket(&e.settings.bucket).prefix("exports/.staging/").send().await.unwrap();
    assert_eq!(staged.contents().len(), 0, "the carried state is deleted");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_item_file_is_read_by_ranges_across_continuations() {
    // 120,000 items (over 8 MiB, so more than one range), 100 a call.
    let e = env_with(Duration::from_secs(3), outside_api(Duration::from_millis(2), None, HashSet::new()), |s| {
        s.continue_margin = Duration::from_secs(1);
    })
    .await;
    let mut file = Vec::new();
    for i in 0..120_000u64 {
        file.extend_from_slice(format!("{{\"id\":\"row-{i:06}\",\"payload\":\"{}\"}}\n", "x".repeat(40)).as_bytes());
    }
    assert!(file.len() > 8 * 1024 * 1024);
    e.put("datasets/items/big.jsonl", file).await;
    let body = json!({"kind": "batch", "params": {
        "target": "crm",
        "items": {"bucket": e.settings.bucket, "key": "datasets/items/big.jsonl", "format": "jsonl"},
        "items_per_request": 100, "max_concurrency": 20, "timeout_ms": 1000,
    }})
    .to_string();
    let view = e.run(&body).await;
    assert_eq!(view["status"], "succeeded", "{view}");
    assert_eq!(view["counts"]["succeeded"], 120_000, "{view}");
    let calls = e.target.calls();
    assert_eq!(calls.len(), 1200);
    assert_eq!(calls.iter().map(|(c, _)| c.body.as_array().map_or(0, Vec::len)).sum::<usize>(), 120_000);
    let results = e.results(&view).await;
    assert_eq!(results.len(), 120_000);
    assert!(results.iter().enumerate().all(|(i, r)| r["seq"] == i as u64 && r["id"] == format!("row-{i:06}")));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancel_stops_the_calls_within_one_call_timeout() {
    let e = env(outside_api(Duration::from_millis(300), None, HashSet::new())).await;
    let (code, v) = e.post(&batch(items(500), json!({"max_concurrency": 2, "timeout_ms": 1000}))).await;
    assert_eq!(code, 202, "{v}");
    let id = v["job"]["id"].as_str().unwrap().to_owned();
    let start = Instant::now();
    while e.target.calls().len() < 4 {
        assert!(start.elapsed() < Duration::from_secs(20), "the batch never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (code, v) = call(&e.api, "DELETE", &format!("/jobs/{id}"), None, OWNER).await.unwrap();
    assert_eq!((code, v["job"]["status"].as_str()), (200, Some("cancelled")), "{v}");
    let reports = e.lambda.invocations.settle().await;
    assert!(start.elapsed() < Duration::from_secs(20));
    assert!(matches!(&reports[..], [Ok(WorkerReport::Cancelled { .. })]), "{reports:?}");
    // The worker has stopped: nothing more arrives within another call's timeout.
    let sent = e.target.calls().len();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(e.target.calls().len(), sent, "calls went on after the cancel");
    assert!(sent < 500);
}

#[tokio::test(flavor = "multi_thread")]
async fn retry_of_runs_exactly_the_failed_items() {
    let fail: HashSet<String> = ["item-00003", "item-00011"].iter().map(|s| s.to_string()).collect();
    let e = env(outside_api(Duration::ZERO, None, fail)).await;
    let first = e.run(&batch(items(20), json!({"tolerated_failure_count": 5, "max_attempts": 2}))).await;
    assert_eq!(first["status"], "succeeded", "within the tolerance: {first}");
    assert_eq!(first["counts"]["failed"], 2, "{first}");
    let url = first["files"]["failed"]["url"].as_str().expect("a link to the failed items");
    let failed = lines(&reqwest::get(url).await.unwrap().bytes().await.unwrap());
    assert_eq!(failed, vec![json!({"id": "item-00003", "n": 3}), json!({"id": "item-00011", "n": 11})]);
    // Permanent failures (422) are not retried.
    assert_eq!(e.target.calls().len(), 20);

    e.target.set_behaviour(outside_api(Duration::ZERO, None, HashSet::new()));
    let id = first["id"].as_str().unwrap();
    let again = e.run(&json!({ "retry_of": id }).to_string()).await;
    assert_eq!(again["status"], "succeeded", "{again}");
    let calls = e.target.calls();
    let mut retried: Vec<String> = calls[20..].iter().map(|(c, _)| c.body.to_string()).collect();
    retried.sort();
    assert_eq!(retried, [json!({"id": "item-00003", "n": 3}).to_string(), json!({"id": "item-00011", "n": 11}).to_string()]);
    let results = e.results(&again).await;
    assert_eq!(results.iter().map(|r| r["id"].as_str().unwrap()).collect::<Vec<_>>(), ["item-00003", "item-00011"]);
    // Nothing left to retry now.
    let (code, v) = e.post(&json!({ "retry_of": again["id"] }).to_string()).await;
    assert_eq!((code, v["error"]["field"].as_str()), (400, Some("retry_of")), "{v}");
    // Another owner cannot retry this owner's job.
    let (code, v) = call(&e.api, "POST", "/jobs", Some(&json!({ "retry_of": id }).to_string()), Some("intruder")).await.unwrap();
    assert_eq!((code, v["error"]["message"].as_str()), (400, Some("no such job")), "{v}");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_are_refused_at_submit_naming_the_field() {
    let e = env(outside_api(Duration::ZERO, None, HashSet::new())).await;
    e.put("datasets/items/bad.jsonl", b"{\"id\":1}\n\n{\"id\":2,}\n{\"id\":3}\n".to_vec()).await;
    e.put("datasets/items/bad.csv", b"id,name\n1,a\n2,b,extra\n".to_vec()).await;
    e.put("elsewhere/items.jsonl", b"{\"id\":1}\n".to_vec()).await;
    let file = |bucket: &str, key: &str, format: &str| {
        json!({"kind": "batch", "params": {"target": "crm", "items": {"bucket": bucket, "key": key, "format": format}}}).to_string()
    };
    let own = e.settings.bucket.clone();
    let cases = [
        (batch(items(2), json!({"target": "http://169.254.169.254/"})), "params.target", "target name"),
        (batch(items(2), json!({"target": "billing"})), "params.target", "known: crm"),
        (file(&own, "elsewhere/items.jsonl", "jsonl"), "params.items.key", ""),
        (file(&own, "exports/seller-0002/x.failed.jsonl", "jsonl"), "params.items.key", ""),
        (file("another-bucket", "datasets/items/x.jsonl", "jsonl"), "params.items.bucket", ""),
        (file(&own, "datasets/items/../../elsewhere/items.jsonl", "jsonl"), "params.items.key", ""),
        (file(&own, "datasets/items/bad.jsonl", "jsonl"), "params.items", "line 3"),
        (file(&own, "datasets/items/bad.csv", "csv"), "params.items", "line 3"),
        (file(&own, "datasets/items/missing.jsonl", "jsonl"), "params.items.key", "no such item file"),
        (batch(items(2), json!({"max_concurrency": 0})), "params.max_concurrency", "1 to 100"),
        (batch(items(2), json!({"max_concurrency": 101})), "params.max_concurrency", "101"),
        (batch(items(2), json!({"items_per_request": 0})), "params.items_per_request", ""),
        (batch(items(2), json!({"timeout_ms": 10})), "params.timeout_ms", ""),
        (batch(items(2), json!({"max_attempts": 11})), "params.max_attempts", ""),
        (batch(items(2), json!({"rate_per_second": 5, "min_interval_ms": 10})), "params", ""),
        (batch(items(2), json!({"tolerated_failure_percent": 150})), "params.tolerated_failure_percent", ""),
        (batch(Vec::new(), json!({})), "params.items", ""),
        (batch(items(2), json!({"retry_of": "x"})), "params.retry_of", ""),
        (json!({"kind": "batch", "params": {"target": "crm", "items": [1], "url": "http://evil"}}).to_string(), "params.url", ""),
    ];
    for (body, field, needle) in cases {
        let (code, v) = e.post(&body).await;
        assert_eq!(code, 400, "{body}: {v}");
        let got = v["error"]["field"].as_str().unwrap_or_default();
        assert!(got == field || (field == "params" && got.starts_with("params")), "{body}: field {got:?}, expected {field:?}: {v}");
        assert!(v["error"]["message"].as_str().unwrap_or_default().contains(needle), "{body}: {v} does not say {needle:?}");
    }
    assert!(e.target.calls().is_empty(), "nothing was sent");
    assert!(e.lambda.invocations.received.lock().unwrap().is_empty(), "no job was started");
    let (_, listed) = call(&e.api, "GET", "/jobs", None, OWNER).await.unwrap();
    assert_eq!(listed["jobs"].as_array().map(Vec::len), Some(0), "no job was written: {listed}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_csv_item_file_runs_and_the_results_can_be_csv() {
    let e = env(outside_api(Duration::ZERO, None, ["b-2".to_owned()].into_iter().collect())).await;
    e.put("datasets/items/contacts.csv", b"id,email\na-1,a@example.com\nb-2,\"b@example.com\"\nc-3,=cmd\n".to_vec()).await;
    let body = json!({"kind": "batch", "params": {
        "target": "crm",
        "items": {"bucket": e.settings.bucket, "key": "datasets/items/contacts.csv", "format": "csv"},
        "output": "csv", "tolerated_failure_percent": 50,
    }})
    .to_string();
    let view = e.run(&body).await;
    assert_eq!(view["status"], "succeeded", "{view}");
    let bodies: HashSet<String> = e.target.calls().into_iter().map(|(c, _)| c.body.to_string()).collect();
    assert!(bodies.contains(&json!({"id": "a-1", "email": "a@example.com"}).to_string()), "each row is an object: {bodies:?}");
    assert!(bodies.contains(&json!({"id": "c-3", "email": "=cmd"}).to_string()), "sent as it is: {bodies:?}");
    let url = view["download"]["url"].as_str().unwrap();
    let csv = String::from_utf8(reqwest::get(url).await.unwrap().bytes().await.unwrap().to_vec()).unwrap();
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(rows[0], "seq,id,status,http_status,attempts,response,error");
    assert!(rows[1].starts_with("0,a-1,succeeded,200,1,"), "{csv}");
    assert!(rows[2].starts_with("1,b-2,failed,422,1,"), "{csv}");
    assert_eq!(rows.len(), 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn lifecycle_events_land_on_a_queue_with_the_detail_of_each_end() {
    let conf = sdk_config();
    let sqs = ferry_aws::clients::sqs(&conf);
    let queue = sqs.create_queue().queue_name(unique("job-events")).send().await.unwrap();
    let queue_url = queue.queue_url().unwrap().to_owned();
    let attrs = sqs
        .get_queue_attributes()
        .queue_url(&queue_url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap();
    let queue_arn = attrs.attributes().unwrap()[&aws_sdk_sqs::types::QueueAttributeName::QueueArn].clone();
    let bus = unique("job-bus");
    ferry_aws::events::EventBus::new(ferry_aws::clients::eventbridge(&conf), bus.clone())
        .create_with_queue_target(&unique("to-queue"), &queue_arn)
        .await
        .unwrap();
    let fail: HashSet<String> = ["item-00001".to_owned()].into_iter().collect();
    let e = env_with(Duration::from_secs(900), outside_api(Duration::from_millis(100), None, fail), |s| {
        s.event_bus = Some(bus);
        // A job whose worker never starts reads lost 2 s after its submit.
        s.start_lease = Duration::from_secs(2);
    })
    .await;

    let ok = e.run(&batch(items(3), json!({"tolerated_failure_count": 1}))).await;
    let failed = e.run(&batch(items(3), json!({"max_attempts": 1}))).await;
    let (_, v) = e.post(&batch(items(200), json!({"max_concurrency": 1}))).await;
    let cancelled = v["job"]["id"].as_str().unwrap().to_owned();
    while e.target.calls().len() < 8 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    call(&e.api, "DELETE", &format!("/jobs/{cancelled}"), None, OWNER).await.unwrap();
    e.lambda.invocations.settle().await;
    assert_eq!((ok["status"].as_str(), failed["status"].as_str()), (Some("succeeded"), Some("failed")));
    e.lambda.invocations.hold.store(true, std::sync::atomic::Ordering::SeqCst);
    let (_, v) = e.post(&batch(items(2), json!({"max_concurrency": 2}))).await;
    let lost = v["job"]["id"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    // Read twice: the first read that sees it lost announces it, once.
    assert_eq!(e.status(&lost).await["status"], "lost");
    assert_eq!(e.status(&lost).await["status"], "lost");

    let mut events: Vec<Value> = Vec::new();
    let start = Instant::now();
    while events.len() < 7 && start.elapsed() < Duration::from_secs(20) {
        let got = sqs.receive_message().queue_url(&queue_url).max_number_of_messages(10).wait_time_seconds(1).send().await.unwrap();
        for m in got.messages() {
            events.push(serde_json::from_str(m.body().unwrap()).unwrap());
        }
    }
    let late = sqs.receive_message().queue_url(&queue_url).max_number_of_messages(10).wait_time_seconds(1).send().await.unwrap();
    assert!(late.messages().is_empty(), "an event more than expected: {:?}", late.messages());
    let of = |id: &str, t: &str| {
        events
            .iter()
            .find(|ev| ev["detail"]["job_id"] == id && ev["detail-type"] == t)
            .cloned()
            .unwrap_or_else(|| panic!("no {t} of {id} in {events:#?}"))
    };
    let (ok_id, failed_id) = (ok["id"].as_str().unwrap(), failed["id"].as_str().unwrap());
    for id in [ok_id, failed_id, cancelled.as_str()] {
        let started = of(id, "JobStarted");
        assert_eq!((started["source"].as_str(), started["detail"]["status"].as_str()), (Some("ferry.jobs"), Some("running")));
    }
    let succeeded = of(ok_id, "JobSucceeded");
    let d = &succeeded["detail"];
    assert_eq!((d["owner"].as_str(), d["kind"].as_str(), d["status"].as_str()), (Some("seller-0001"), Some("batch"), Some("succeeded")));
    assert_eq!((d["counts"]["succeeded"].as_u64(), d["counts"]["failed"].as_u64()), (Some(2), Some(1)), "{d}");
    assert_eq!(d["result"]["key"], format!("exports/seller-0001/{ok_id}.results.jsonl"));
    assert_eq!(d["result"]["files"]["failed"], format!("exports/seller-0001/{ok_id}.failed.jsonl"));
    let failed_event = of(failed_id, "JobFailed");
    assert_eq!(failed_event["detail"]["error_code"], "too_many_failures", "{failed_event}");
    let l = of(&lost, "JobLost");
    assert_eq!((l["detail"]["status"].as_str(), l["detail"]["error_code"].as_str()), (Some("lost"), Some("worker_unavailable")), "{l}");
    assert_eq!(events.len(), 7, "nothing announced twice: {events:#?}");
    let c = of(&cancelled, "JobCancelled");
    assert_eq!(c["detail"]["status"], "cancelled");
    assert!(
        events
            .iter()
            .all(|ev| ev["detail"]["event_id"].as_str().is_some_and(|id| id.starts_with(ev["detail"]["job_id"].as_str().unwrap())))
    );
}

// ---- A kind of your own: the README's example, through the same seam ----------------------------

/// Counts down from `from`, five a run, handing over to a continuation between runs, and writes
/// "liftoff" when it reaches zero. One file and one registration line, as the README shows.
mod countdown {
    use ferry_core::jobs::{JobResult, Progress, SubmitError};
    use futures::future::BoxFuture;
    use job_invoker::kind::{Admission, AdmitError, Kind, Outcome, RunError, Step};
    use serde_json::{Value, json};

    #[derive(Debug)]
    pub struct Countdown;

    impl Kind for Countdown {
        fn name(&self) -> &'static str {
            "countdown"
        }

        fn admit<'a>(&'a self, _at: Admission<'a>, params: Value) -> BoxFuture<'a, Result<Value, AdmitError>> {
            Box::pin(async move {
                match params.get("from").and_then(Value::as_u64) {
                    Some(from @ 1..=100) => Ok(json!({ "from": from })),
                    _ => Err(SubmitError::new("params.from", "must be a whole number from 1 to 100").into()),
                }
            })
        }

        fn run<'a>(&'a self, step: Step<'a>) -> BoxFuture<'a, Result<Outcome, RunError>> {
            Box::pin(async move {
                let from = step.job.params["from"].as_u64().unwrap_or(0);
                let mut left: u64 = step.checkpoint.and_then(|c| c.parse().ok()).unwrap_or(from);
                for _ in 0..5 {
                    if left == 0 {
                        break;
                    }
                    left -= 1;
                    let progress = Progress { phase: "counting".into(), done: from - left, total: Some(from), ..Progress::default() };
                    if let Err(refused) = step.report(&progress).await? {
                        return Ok(Outcome::Stopped(refused));
                    }
                }
                let progress = Progress { phase: "counting".into(), done: from - left, total: Some(from), ..Progress::default() };
                if left > 0 {
                    return match step.hand_over(&progress, &left.to_string()).await? {
                        Ok(()) => Ok(Outcome::Continued { done: from - left }),
                        Err(refused) => Ok(Outcome::Stopped(refused)),
                    };
                }
                let key = ferry_core::jobs::output_key(&step.job.owner, &step.job.id, "txt");
                let body = b"liftoff\n".to_vec();
                let object = ferry_aws::s3::NewObject { body, content_type: "text/plain", ..Default::default() };
                step.env.store.put(&key, object).await.map_err(|e| RunError::internal("S3Error", e))?;
                let result = JobResult { bucket: step.env.store.bucket().to_owned(), key, size: 8, rows: 1, ..JobResult::default() };
                Ok(Outcome::Finished { result, progress })
            })
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kind_of_your_own_runs_through_the_same_seam() {
    let conf = sdk_config();
    let settings = Arc::new(JobSettings { table: unique("jobs"), bucket: unique("kinds"), ..JobSettings::default() });
    let kinds = Arc::new(job_invoker::Registry::standard().with(countdown::Countdown));
    let (api, lambda) = start_local(&conf, settings, Duration::from_secs(900), kinds).await.unwrap();

    let (code, v) = call(&api, "POST", "/jobs", Some(r#"{"kind":"countdown","params":{"from":0}}"#), OWNER).await.unwrap();
    assert_eq!((code, v["error"]["field"].as_str()), (400, Some("params.from")), "{v}");
    let (code, v) = call(&api, "POST", "/jobs", Some(r#"{"kind":"countdown","params":{"from":12}}"#), OWNER).await.unwrap();
    assert_eq!(code, 202, "{v}");
    let id = v["job"]["id"].as_str().unwrap().to_owned();
    let reports = lambda.invocations.settle().await;
    assert_eq!(reports.len(), 3, "12 at five a run is three runs: {reports:?}");
    let (_, v) = call(&api, "GET", &format!("/jobs/{id}"), None, OWNER).await.unwrap();
    assert_eq!(
        (v["status"].as_str(), v["attempt"].as_u64(), v["progress"]["done"].as_u64()),
        (Some("succeeded"), Some(2), Some(12)),
        "{v}"
    );
    let body = reqwest::get(v["download"]["url"].as_str().unwrap()).await.unwrap().text().await.unwrap();
    assert_eq!(body, "liftoff\n");
    // The same request again while it runs would be the same job; once it ended it is a new one.
    let (code, _) = call(&api, "POST", "/jobs", Some(r#"{"kind":"countdown","params":{"from":12}}"#), OWNER).await.unwrap();
    assert_eq!(code, 202);
    lambda.invocations.settle().await;
}
