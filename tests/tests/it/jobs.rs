//! Async jobs against moto: the real job API and worker handlers, the real SDK calls (DynamoDB, S3,
//! and Lambda `Invoke` served by a loopback endpoint that runs the worker in the background).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::{AttributeValue, PutRequest, WriteRequest};
use ferry_aws::jobs::{JobTable, WorkerPayload};
use ferry_core::sources::{DatasetLocation, TablePattern};
use ferry_testkit::events::api_request;
use ferry_testkit::jobs::{WorkerLambda, api_and_worker, call, start_local};
use ferry_testkit::provision;
use ferry_testkit::seed::seed_orders;
use ferry_testkit::workbook::count_xlsx_rows;
use ferry_testkit::{sdk_config, unique};
use job_invoker::worker::{self, WorkerReport};
use job_invoker::{Api, JobSettings};
use lambda_runtime::{Context, LambdaEvent};
use serde_json::{Value, json};

const OWNER: Option<&str> = Some("seller-0001");

struct Env {
    api: Api,
    lambda: WorkerLambda,
    settings: Arc<JobSettings>,
    dynamo: aws_sdk_dynamodb::Client,
    s3: aws_sdk_s3::Client,
}

/// A fresh jobs table and export bucket, the API, and a local Lambda endpoint running the worker
/// with a deadline `run_for` after each start. Exports may read the tables the tests seed
/// (`orders-*`, `wide-*`) and `datasets/` of the export bucket.
async fn env_with(run_for: Duration, tweak: impl FnOnce(&mut JobSettings)) -> Env {
    logs();
    let conf = sdk_config();
    let mut settings = JobSettings {
        table: unique("jobs"),
        bucket: unique("exports"),
        notify_table: Some(unique("notify-deliveries")),
        source_tables: ["orders*", "wide-*"].iter().map(|p| TablePattern::parse(p).expect("a pattern")).collect(),
        // Tests that are not about fairness submit many jobs as one owner.
        max_running_per_owner: 50,
        ..JobSettings::default()
    };
    tweak(&mut settings);
    let settings = Arc::new(settings);
    let dynamo = ferry_aws::clients::dynamodb(&conf);
    let s3 = ferry_aws::clients::s3(&conf);
    let kinds = Arc::new(job_invoker::Registry::standard());
    let (api, lambda) =
        start_local(&conf, settings.clone(), run_for, kinds).await.expect("starting the jobs table, bucket and local Lambda");
    // The API holds the kinds as `job-api` does: without their work.
    let api = job_invoker::Api {
        env: job_invoker::JobEnv { kinds: Arc::new(job_invoker::Registry::admitting()), ..api.env },
        lambda: api.lambda,
    };
    Env { api, lambda, settings, dynamo, s3 }
}

async fn env() -> Env {
    env_with(Duration::from_secs(900), |_| {}).await
}

fn export(table: &str, format: &str, segments: u32) -> String {
    json!({
        "kind": "export",
        "params": {
            "source": {"type": "dynamodb_scan", "table": table, "segments": segments},
            "format": format,
            "columns": ["order_id", "seller_id", "amount", "status"],
        }
    })
    .to_string()
}

impl Env {
    async fn orders(&self, n: u64) -> String {
        let table = unique("orders");
        seed_orders(&self.dynamo, &table, n).await.expect("seeding orders");
        table
    }

    async fn post(&self, body: &str, owner: Option<&str>) -> (u16, Value) {
        call(&self.api, "POST", "/jobs", Some(body), owner).await.expect("POST /jobs")
    }

    async fn get(&self, path: &str, owner: Option<&str>) -> (u16, Value) {
        call(&self.api, "GET", path, None, owner).await.expect("GET")
    }

    async fn status(&self, id: &str) -> Value {
        let (code, v) = self.get(&format!("/jobs/{id}"), OWNER).await;
        assert_eq!(code, 200, "{v}");
        v
    }

    /// Polls the job until `done` holds of its view.
    async fn wait_until(&self, id: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let start = Instant::now();
        loop {
            let v = self.status(id).await;
            if done(&v) {
                return v;
            }
            assert!(start.elapsed() < Duration::from_secs(120), "job {id} never got {what}: {v}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn object(&self, key: &str) -> Option<Vec<u8>> {
        let o = self.s3.get_object().bucket(&self.settings.bucket).key(key).send().await.ok()?;
        Some(o.body.collect().await.expect("body").into_bytes().to_vec())
    }

    async fn open_uploads(&self) -> usize {
        let out = self.s3.list_multipart_uploads().bucket(&self.settings.bucket).send().await.expect("ListMultipartUploads");
        out.uploads().len()
    }

    /// Every `order_id` of `table` in export order: segment by segment, each in scan order.
    async fn source_ids(&self, table: &str, segments: i32) -> Vec<String> {
        let mut ids = Vec::new();
        for segment in 0..segments {
            let mut pages = self.dynamo.scan().table_name(table).segment(segment).total_segments(segments).into_paginator().send();
            while let Some(page) = pages.next().await {
                for item in page.expect("scan").items() {
                    ids.push(item["order_id"].as_s().expect("order_id").clone());
                }
            }
        }
        ids
    }
}

fn csv_ids(body: &[u8]) -> Vec<String> {
    let mut r = csv::Reader::from_reader(body);
    assert_eq!(r.headers().expect("header").iter().collect::<Vec<_>>(), ["order_id", "seller_id", "amount", "status"]);
    r.records().map(|rec| rec.expect("record")[0].to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_duplicate_submits_start_one_worker() {
    let e = Arc::new(env().await);
    let table = e.orders(300).await;
    let body = export(&table, "csv", 2);
    let posts: Vec<_> = (0..50)
        .map(|_| {
            let (e, body) = (e.clone(), body.clone());
            tokio::spawn(async move { e.post(&body, OWNER).await })
        })
        .collect();
    let mut created = Vec::new();
    let mut ids = Vec::new();
    for p in posts {
        let (code, v) = p.await.expect("task");
        assert!(code == 202 || code == 200, "{code} {v}");
        if code == 202 {
            created.push(v["job"]["id"].clone());
        }
        ids.push(v["job"]["id"].as_str().expect("id").to_owned());
    }
    assert_eq!(created.len(), 1, "exactly one submit creates the job");
    assert!(ids.iter().all(|id| *id == ids[0]), "every submit names the one job");
    let reports = e.lambda.invocations.settle().await;
    assert_eq!(e.lambda.invocations.count(), 1, "exactly one worker invocation");
    assert!(matches!(&reports[..], [Ok(WorkerReport::Succeeded { rows: 300, .. })]), "{reports:?}");
    let v = e.status(&ids[0]).await;
    assert_eq!(v["status"], "succeeded", "{v}");
    // Finished, the lock is free: the same request is a new job.
    let (code, again) = e.post(&body, OWNER).await;
    assert_eq!(code, 202, "{again}");
    assert_ne!(again["job"]["id"].as_str(), Some(ids[0].as_str()));
    e.lambda.invocations.settle().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_worker_reads_lost_after_its_lease_and_can_be_submitted_again() {
    let e = env_with(Duration::from_secs(900), |s| {
        s.lease = Duration::from_secs(3);
        s.page_size = 5;
    })
    .await;
    let table = e.orders(1500).await;
    let body = export(&table, "jsonl", 1);
    let (code, v) = e.post(&body, OWNER).await;
    assert_eq!(code, 202, "{v}");
    let id = v["job"]["id"].as_str().unwrap().to_owned();
    e.wait_until(&id, "progress", |v| v["progress"]["done"].as_u64().unwrap_or(0) > 0).await;
    e.lambda.invocations.kill_all();
    let reports = e.lambda.invocations.settle().await;
    assert!(reports.iter().all(|r| r.as_ref().is_err_and(|m| m.contains("cancelled"))), "the worker was killed: {reports:?}");
    // Still `running` until the lease passes, then `lost`: nobody heartbeats any more.
    let v = e.status(&id).await;
    assert_eq!(v["status"], "running", "{v}");
    let v = e.wait_until(&id, "lost", |v| v["status"] == "lost").await;
    assert_eq!(v["error"]["code"], "worker_unavailable", "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("stopped reporting progress"), "{v}");
    let (code, again) = e.post(&body, OWNER).await;
    assert_eq!(code, 202, "a lost job's lock is free: {again}");
    let new_id = again["job"]["id"].as_str().unwrap().to_owned();
    assert_ne!(new_id, id);
    let reports = e.lambda.invocations.settle().await;
    assert!(matches!(&reports[..], [Ok(WorkerReport::Succeeded { rows: 1500, .. })]), "{reports:?}");
    assert_eq!(e.status(&id).await["status"], "lost", "the dead run stays lost");
    let key = ferry_core::jobs::export_key("seller-0001", &new_id, ferry_core::jobs::Format::Jsonl);
    let body = e.object(&key).await.expect("the new export");
    assert_eq!(body.split(|b| *b == b'\n').filter(|l| !l.is_empty()).count(), 1500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_duplicate_async_delivery_runs_once() {
    let e = env().await;
    e.lambda.invocations.hold.store(true, Ordering::SeqCst);
    let table = e.orders(400).await;
    let (code, v) = e.post(&export(&table, "csv", 1), OWNER).await;
    assert_eq!(code, 202, "{v}");
    let id = v["job"]["id"].as_str().unwrap().to_owned();
    let payload = e.lambda.invocations.received.lock().unwrap()[0].clone();
    assert_eq!(serde_json::from_value::<WorkerPayload>(payload.clone()).unwrap(), WorkerPayload { job_id: id.clone(), attempt: 0 });
    // Lambda delivers the same event twice, at the same time.
    let conf = sdk_config();
    let (_, make) = api_and_worker(&conf, e.settings.clone(), e.lambda.client(&conf));
    let w = Arc::new(make(e.lambda.client(&conf)));
    let deliveries: Vec<_> = (0..2)
        .map(|_| {
            let (w, payload) = (w.clone(), payload.clone());
            tokio::spawn(async move {
                let mut ctx = Context::default();
                ctx.deadline = (job_invoker::settings::now_ms() + 600_000) as u64;
                worker::handle(&w, LambdaEvent::new(payload, ctx)).await.map_err(|e| e.to_string())
            })
        })
        .collect();
    let mut reports = Vec::new();
    for d in deliveries {
        reports.push(d.await.unwrap().unwrap());
    }
    let ran = reports.iter().filter(|r| matches!(r, WorkerReport::Succeeded { rows: 400, .. })).count();
    let skipped = reports.iter().filter(|r| matches!(r, WorkerReport::Skipped { .. })).count();
    assert_eq!((ran, skipped), (1, 1), "{reports:?}");
    // A late third delivery finds the job finished and changes nothing.
    let mut ctx = Context::default();
    ctx.deadline = (job_invoker::settings::now_ms() + 600_000) as u64;
    let late = worker::handle(&w, LambdaEvent::new(payload, ctx)).await.unwrap();
    assert!(matches!(late, WorkerReport::Skipped { .. }), "{late:?}");
    let v = e.status(&id).await;
    assert_eq!((v["status"].as_str(), v["download"]["rows"].as_u64()), (Some("succeeded"), Some(400)), "{v}");
    let key = ferry_core::jobs::export_key("seller-0001", &id, ferry_core::jobs::Format::Csv);
    assert_eq!(csv_ids(&e.object(&key).await.unwrap()), e.source_ids(&table, 1).await);
}

/// Rows of about 1.6 KB, so that the export crosses S3's 5 MiB part size.
async fn wide_orders(dynamo: &aws_sdk_dynamodb::Client, n: u64) -> String {
    let table = unique("wide");
    seed_orders(dynamo, &table, 0).await.expect("creating the table");
    let pad = "x".repeat(1600);
    for chunk in (0..n).collect::<Vec<_>>().chunks(25) {
        let writes: Vec<WriteRequest> = chunk
            .iter()
            .map(|i| {
                let item = HashMap::from([
                    ("order_id".to_owned(), AttributeValue::S(format!("w-{i:06}"))),
                    ("seller_id".to_owned(), AttributeValue::S(format!("{pad}{i}"))),
                    ("amount".to_owned(), AttributeValue::N(i.to_string())),
                    ("status".to_owned(), AttributeValue::S("paid".into())),
                ]);
                WriteRequest::builder().put_request(PutRequest::builder().set_item(Some(item)).build().expect("an item")).build()
            })
            .collect();
        dynamo.batch_write_item().request_items(&table, writes).send().await.expect("writing rows");
    }
    table
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_continuation_resumes_from_its_checkpoint_without_repeating_or_skipping_rows() {
    // Each run has 2 s and hands over when fewer than 1.8 s are left: many continuations.
    let e = env_with(Duration::from_secs(2), |s| {
        s.continue_margin = Duration::from_millis(1800);
        s.page_size = 100;
        s.max_continuations = 1000;
    })
    .await;
    let n = 4000;
    let table = wide_orders(&e.dynamo, n).await;
    let (code, v) = e.post(&export(&table, "csv", 3), OWNER).await;
    assert_eq!(code, 202, "{v}");
    let id = v["job"]["id"].as_str().unwrap().to_owned();
    let reports = e.lambda.invocations.settle().await;
    let continued = reports.iter().filter(|r| matches!(r, Ok(WorkerReport::Continued { .. }))).count();
    assert!(continued >= 3, "the export should have continued several times: {reports:?}");
    assert!(matches!(reports.last(), Some(Ok(WorkerReport::Succeeded { .. }))), "{reports:?}");
    let attempts: Vec<u64> = e.lambda.invocations.received.lock().unwrap().iter().map(|p| p["attempt"].as_u64().unwrap()).collect();
    assert_eq!(attempts, (0..attempts.len() as u64).collect::<Vec<_>>(), "each continuation is the next attempt");
    let v = e.status(&id).await;
    assert_eq!(v["status"], "succeeded", "{v}");
    let key = ferry_core::jobs::export_key("seller-0001", &id, ferry_core::jobs::Format::Csv);
    let body = e.object(&key).await.expect("export");
    assert!(body.len() > ferry_aws::exports::MIN_PART_BYTES, "the export spans more than one part");
    assert_eq!(csv_ids(&body), e.source_ids(&table, 3).await, "every row once, in source order");
    assert_eq!(e.open_uploads().await, 0);
    let leftovers = e.s3.list_objects_v2().bucket(&e.settings.bucket).send().await.unwrap();
    assert_eq!(leftovers.contents().len(), 1, "no staged or carried bytes are left: {:?}", leftovers.contents());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancel_stops_the_worker_at_its_next_page() {
    let e = env_with(Duration::from_secs(900), |s| s.page_size = 5).await;
    let table = e.orders(2000).await;
    let body = export(&table, "csv", 1);
    let (_, v) = e.post(&body, OWNER).await;
    let id = v["job"]["id"].as_str().unwrap().to_owned();
    e.wait_until(&id, "progress", |v| v["progress"]["done"].as_u64().unwrap_or(0) > 0).await;
    let (code, v) = call(&e.api, "DELETE", &format!("/jobs/{id}"), None, OWNER).await.unwrap();
    assert_eq!((code, v["job"]["status"].as_str()), (200, Some("cancelled")), "{v}");
    let reports = e.lambda.invocations.settle().await;
    assert!(matches!(&reports[..], [Ok(WorkerReport::Cancelled { .. })]), "{reports:?}");
    let v = e.status(&id).await;
    assert_eq!(v["status"], "cancelled");
    assert!(v["progress"]["done"].as_u64().unwrap() < 2000, "{v}");
    assert!(v.get("download").is_none());
    let key = ferry_core::jobs::export_key("seller-0001", &id, ferry_core::jobs::Format::Csv);
    assert!(e.object(&key).await.is_none(), "a cancelled export leaves no file");
    assert_eq!(e.open_uploads().await, 0, "its multipart upload was aborted");
    // Cancelling again is a conflict; submitting again starts afresh.
    let (code, _) = call(&e.api, "DELETE", &format!("/jobs/{id}"), None, OWNER).await.unwrap();
    assert_eq!(code, 409);
    let (code, _) = e.post(&body, OWNER).await;
    assert_eq!(code, 202);
    e.lambda.invocations.kill_all();
}

#[tokio::test(flavor = "multi_thread")]
async fn cross_owner_access_is_refused() {
    let e = env().await;
    e.lambda.invocations.hold.store(true, Ordering::SeqCst);
    let (code, v) = e.post(&export("orders-of-a", "csv", 1), Some("owner-a")).await;
    assert_eq!(code, 202, "{v}");
    let id = v["job"]["id"].as_str().unwrap().to_owned();
    let path = format!("/jobs/{id}");
    assert_eq!(e.get(&path, Some("owner-a")).await.0, 200);
    let (code, v) = e.get(&path, Some("owner-b")).await;
    assert_eq!(code, 404, "{v}");
    assert_eq!(call(&e.api, "DELETE", &path, None, Some("owner-b")).await.unwrap().0, 404);
    let (code, v) = e.get("/jobs", Some("owner-b")).await;
    assert_eq!((code, v["jobs"].as_array().map(Vec::len)), (200, Some(0)), "{v}");
    // No identity at all.
    for (method, p) in [("GET", path.as_str()), ("GET", "/jobs"), ("POST", "/jobs"), ("DELETE", path.as_str())] {
        let (code, v) = call(&e.api, method, p, Some("{}"), None).await.unwrap();
        assert_eq!(code, 401, "{method} {p}: {v}");
    }
    // The same params from another owner are another job, not a duplicate.
    let (code, other) = e.post(&export("orders-of-a", "csv", 1), Some("owner-b")).await;
    assert_eq!(code, 202);
    assert_ne!(other["job"]["id"].as_str(), Some(id.as_str()));
    assert_eq!(e.get(&path, Some("owner-a")).await.1["status"], "queued");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_are_400_and_name_the_problem() {
    let e = env().await;
    let big = format!(r#"{{"kind":"export","params":{{"pad":"{}"}}}}"#, "x".repeat(ferry_core::jobs::MAX_SUBMIT_BYTES));
    let cases = [
        ("{not json", "body"),
        (r#"{"kind":"report","params":{}}"#, "kind"),
        (
            r#"{"kind":"export","params":{"source":{"type":"dynamodb_scan","table":"orders","segments":500},"format":"csv","columns":["a"]}}"#,
            "params.source.segments",
        ),
        (r#"{"kind":"export","params":{"source":{"type":"dynamodb_scan","table":"orders"},"format":"csv"}}"#, "params.columns"),
        (r#"{"kind":"export","params":{"source":{"type":"dynamodb_scan","table":"orders"},"format":"pdf","columns":["a"]}}"#, "params"),
        (big.as_str(), "body"),
    ];
    for (body, field) in cases {
        let (code, v) = e.post(body, OWNER).await;
        assert_eq!(code, 400, "{body:.80}: {v}");
        assert_eq!((&v["error"]["code"], &v["error"]["field"]), (&json!("bad_request"), &json!(field)), "{v}");
        assert!(!v["error"]["message"].as_str().unwrap().is_empty());
        assert!(v["error"]["request_id"].as_str().is_some_and(|id| !id.is_empty()), "a request id to quote: {v}");
    }
    for (path, field) in [("/jobs?limit=0", "limit"), ("/jobs?limit=1000", "limit"), ("/jobs?cursor=zz", "cursor")] {
        let (code, v) = e.get(path, OWNER).await;
        assert_eq!((code, &v["error"]["field"]), (400, &json!(field)), "{path}: {v}");
    }
    assert_eq!(e.get("/jobs/not-a-job", OWNER).await.0, 404);
    assert_eq!(e.get("/elsewhere", OWNER).await.0, 404);
    assert_eq!(call(&e.api, "PUT", "/jobs", None, OWNER).await.unwrap().0, 405);
    assert_eq!(e.get("/jobs", OWNER).await.1["jobs"], json!([]), "no job was created");
    assert_eq!(e.lambda.invocations.count(), 0, "no worker was invoked");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_invoke_fails_the_job_and_frees_the_lock() {
    let e = env().await;
    e.lambda.invocations.refuse.store(true, Ordering::SeqCst);
    let body = export("orders", "csv", 1);
    let (code, v) = e.post(&body, OWNER).await;
    assert_eq!(code, 503, "{v}");
    assert_eq!(v["job"]["status"], "failed");
    let id = v["job"]["id"].as_str().unwrap().to_owned();
    let v = e.status(&id).await;
    assert_eq!(v["status"], "failed");
    assert_eq!(v["error"]["code"], "worker_unavailable", "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("could not be started"), "{v}");
    e.lambda.invocations.refuse.store(false, Ordering::SeqCst);
    e.lambda.invocations.hold.store(true, Ordering::SeqCst);
    let (code, v) = e.post(&body, OWNER).await;
    assert_eq!(code, 202, "no orphan lock: {v}");
}

#[tokio::test(flavor = "multi_thread")]
async fn listing_is_newest_first_and_paginated() {
    let e = env().await;
    e.lambda.invocations.hold.store(true, Ordering::SeqCst);
    let mut ids = Vec::new();
    for segments in 1..=5 {
        let (code, v) = e.post(&export("orders", "csv", segments), OWNER).await;
        assert_eq!(code, 202);
        ids.push(v["job"]["id"].as_str().unwrap().to_owned());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut listed = Vec::new();
    let mut path = "/jobs?limit=2".to_owned();
    let mut pages = 0;
    loop {
        let (code, v) = e.get(&path, OWNER).await;
        assert_eq!(code, 200, "{v}");
        let jobs = v["jobs"].as_array().unwrap();
        assert!(jobs.len() <= 2);
        listed.extend(jobs.iter().map(|j| j["id"].as_str().unwrap().to_owned()));
        pages += 1;
        match v["next_cursor"].as_str() {
            Some(c) => path = format!("/jobs?limit=2&cursor={c}"),
            None => break,
        }
    }
    ids.reverse();
    assert_eq!(listed, ids, "newest first, each once");
    assert!(pages >= 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_xlsx_over_several_sheets_opens_with_every_row() {
    // 1,000 rows per sheet (header included) stands in for Excel's 1,048,576.
    let e = env_with(Duration::from_secs(900), |s| {
        s.sheet_rows = 1000;
        s.page_size = 500;
    })
    .await;
    let table = e.orders(2500).await;
    let (_, v) = e.post(&export(&table, "xlsx", 2), OWNER).await;
    let id = v["job"]["id"].as_str().unwrap().to_owned();
    let reports = e.lambda.invocations.settle().await;
    assert!(matches!(&reports[..], [Ok(WorkerReport::Succeeded { rows: 2500, .. })]), "{reports:?}");
    let v = e.status(&id).await;
    let download = &v["download"];
    assert_eq!((download["rows"].as_u64(), download["sheets"].as_u64()), (Some(2500), Some(3)), "{v}");
    let url = download["url"].as_str().unwrap();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    let expires: u64 =
        url.split("X-Amz-Expires=").nth(1).and_then(|s| s.split('&').next()).and_then(|s| s.parse().ok()).expect("an expiry");
    assert!(expires <= 900, "the link lives at most 15 minutes: {expires}");
    let bytes = reqwest::get(url).await.unwrap().error_for_status().unwrap().bytes().await.unwrap();
    assert_eq!(count_xlsx_rows(&bytes).unwrap(), (2500, 3));
    // The cells are the source's, in export order.
    use calamine::Reader;
    let mut book = calamine::Xlsx::new(std::io::Cursor::new(bytes.to_vec())).unwrap();
    let mut ids = Vec::new();
    for name in book.sheet_names().to_vec() {
        let range = book.worksheet_range(&name).unwrap();
        let mut rows = range.rows();
        assert_eq!(rows.next().unwrap()[0].to_string(), "order_id", "each sheet has the header");
        ids.extend(rows.map(|r| r[0].to_string()));
    }
    assert_eq!(ids, e.source_ids(&table, 2).await);
    // Downloadable again later: a new status read gives a new link to the same file.
    let again = e.status(&id).await;
    let bytes2 = reqwest::get(again["download"]["url"].as_str().unwrap()).await.unwrap().bytes().await.unwrap();
    assert_eq!(bytes, bytes2);
    let leftovers = e.s3.list_objects_v2().bucket(&e.settings.bucket).send().await.unwrap();
    assert_eq!(leftovers.contents().len(), 1, "staged rows are removed: {:?}", leftovers.contents());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_s3_csv_dataset_exports_selected_and_filtered_rows_in_key_order() {
    let data = unique("lake");
    let e = env_with(Duration::from_secs(900), |s| {
        s.page_size = 2;
        s.dataset_locations = Some(vec![DatasetLocation::new(&data, "orders/").unwrap()]);
    })
    .await;
    e.s3.create_bucket().bucket(&data).send().await.unwrap();
    let files = [
        ("orders/2026-11-02.csv", "id,status,amount\n4,paid,40\n5,open,50\n6,paid,60.5\n"),
        ("orders/2026-11-01.csv", "id,status,amount\n1,paid,10\n2,refunded,20\n3,paid,30\n"),
        ("other/2026-11-01.csv", "id,status,amount\n9,paid,90\n"),
    ];
    for (key, body) in files {
        e.s3.put_object().bucket(&data).key(key).body(body.as_bytes().to_vec().into()).send().await.unwrap();
    }
    let body = json!({
        "kind": "export",
        "params": {
            "source": {"type": "s3", "bucket": data, "prefix": "orders/", "format": "csv"},
            "format": "jsonl",
            "columns": ["id", "amount"],
            "filter": {"column": "status", "op": "eq", "value": "paid"},
        }
    });
    let (_, text) = export_jsonl(&e, &body, 4).await;
    assert_eq!(text, "{\"id\":1,\"amount\":10}\n{\"id\":3,\"amount\":30}\n{\"id\":4,\"amount\":40.0}\n{\"id\":6,\"amount\":60.5}\n");
}

/// Submits `body` as the owner, runs the worker to the end, checks that it succeeded with `rows`
/// rows and returns the job id and the JSON lines export.
async fn export_jsonl(e: &Env, body: &serde_json::Value, rows: u64) -> (String, String) {
    let (code, v) = e.post(&body.to_string(), OWNER).await;
    assert_eq!(code, 202, "{v}");
    let id = v["job"]["id"].as_str().expect("a job id").to_owned();
    let reports = e.lambda.invocations.settle().await;
    assert!(matches!(&reports[..], [Ok(WorkerReport::Succeeded { rows: r, .. })] if *r == rows), "{reports:?}");
    let key = ferry_core::jobs::export_key("seller-0001", &id, ferry_core::jobs::Format::Jsonl);
    (id, String::from_utf8(e.object(&key).await.expect("the export")).expect("UTF-8"))
}

/// The rows as a Parquet file, columns `id` (i64), `status` and `amount` (f64).
fn parquet(ids: &[i64], statuses: &[&str], amounts: &[f64]) -> Vec<u8> {
    use polars::prelude::*;
    let mut df = df!("id" => ids, "status" => statuses, "amount" => amounts).expect("a frame");
    let mut body = Vec::new();
    ParquetWriter::new(&mut body).finish(&mut df).expect("writing parquet");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_s3_parquet_dataset_exports_selected_and_filtered_rows_in_key_order() {
    let data = unique("lake");
    let e = env_with(Duration::from_secs(900), |s| {
        s.page_size = 2;
        s.dataset_locations = Some(vec![DatasetLocation::new(&data, "orders/").unwrap()]);
    })
    .await;
    e.s3.create_bucket().bucket(&data).send().await.unwrap();
    let files = [
        ("orders/part-0001.parquet", parquet(&[4, 5, 6, 7], &["paid", "open", "paid", "paid"], &[40.0, 50.0, 60.5, 29.99])),
        ("orders/part-0000.parquet", parquet(&[1, 2, 3], &["paid", "refunded", "paid"], &[10.0, 20.0, 30.0])),
        ("other/part-0000.parquet", parquet(&[9], &["paid"], &[90.0])),
    ];
    for (key, body) in files {
        e.s3.put_object().bucket(&data).key(key).body(body.into()).send().await.unwrap();
    }
    let body = json!({
        "kind": "export",
        "params": {
            "source": {"type": "s3", "bucket": data, "prefix": "orders/", "format": "parquet"},
            "format": "jsonl",
            "columns": ["status", "id", "amount"],
            "filter": {"column": "amount", "op": "ge", "value": 30},
        }
    });
    let (id, text) = export_jsonl(&e, &body, 4).await;
    // Objects in key order, rows in file order; the columns in the order asked for, with the
    // file's types (integer ids, float amounts); 29.99 and everything outside the prefix left out.
    assert_eq!(
        text,
        concat!(
            "{\"status\":\"paid\",\"id\":3,\"amount\":30.0}\n",
            "{\"status\":\"paid\",\"id\":4,\"amount\":40.0}\n",
            "{\"status\":\"open\",\"id\":5,\"amount\":50.0}\n",
            "{\"status\":\"paid\",\"id\":6,\"amount\":60.5}\n",
        )
    );
    let v = e.status(&id).await;
    assert_eq!((v["status"].as_str(), v["download"]["rows"].as_u64()), (Some("succeeded"), Some(4)), "{v}");
}

/// A Parquet "bomb": a few KB that decode to tens of MB. Refused by its footer, before decoding,
/// as too large, the object named only under the caller's prefix; nothing is exported.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_parquet_object_that_decodes_past_the_cap_fails_too_large_before_decoding() {
    use polars::prelude::*;
    let n = 2_000_000;
    let mut df = df!("id" => vec![7i64; n], "status" => vec!["paid"; n], "amount" => vec![1.5f64; n]).expect("a frame");
    let mut bomb = Vec::new();
    ParquetWriter::new(&mut bomb).finish(&mut df).expect("writing parquet");
    assert!(bomb.len() < 64 * 1024, "the bomb is small: {} bytes", bomb.len());
    let files = vec![("orders/part-0000.parquet", parquet(&[1, 2], &["paid", "open"], &[1.0, 2.0])), ("orders/part-0001.parquet", bomb)];
    let (e, data, v) = export_under_a_1_mib_cap("parquet", files).await;
    assert_eq!(v["error"]["code"], "too_large", "{v}");
    let message = v["error"]["message"].as_str().expect("a message");
    assert!(
        message.starts_with("object \"part-0001.parquet\" under the prefix: decodes to ")
            && message.ends_with(" bytes, over the limit of 1048576 for one dataset object"),
        "{v}"
    );
    assert_safe("a parquet bomb", &v["error"], &["orders/", &data]);
    let id = v["id"].as_str().expect("the job id");
    assert!(e.object(&ferry_core::jobs::export_key("seller-0001", id, ferry_core::jobs::Format::Csv)).await.is_none(), "nothing exported");
}

/// Exports the dataset `files` (under `orders/` of a bucket of their own) as CSV with a 1 MiB object
/// cap, and waits for the job to fail: the env, the dataset bucket and the failed job.
async fn export_under_a_1_mib_cap(format: &str, files: Vec<(&str, Vec<u8>)>) -> (Env, String, Value) {
    let data = unique("lake");
    let e = env_with(Duration::from_secs(900), |s| {
        s.max_object_bytes = 1 << 20;
        s.dataset_locations = Some(vec![DatasetLocation::new(&data, "orders/").expect("a location")]);
    })
    .await;
    e.s3.create_bucket().bucket(&data).send().await.expect("creating the dataset bucket");
    for (key, body) in files {
        e.s3.put_object().bucket(&data).key(key).body(body.into()).send().await.expect("putting a dataset object");
    }
    let body = json!({
        "kind": "export",
        "params": {"source": {"type": "s3", "bucket": data, "prefix": "orders/", "format": format}, "format": "csv"}
    });
    let v = failed_job(&e, &body.to_string()).await;
    (e, data, v)
}

/// A CSV dataset object of rows `id, name`.
fn id_rows(ids: &[i64]) -> Vec<u8> {
    let rows: String = ids.iter().map(|i| format!("{i},n{i}\n")).collect();
    format!("id,name\n{rows}").into_bytes()
}

/// An env whose worker runs only when the test delivers an attempt ([`Env::deliver`]), and then
/// hands over after every object but the last. `staged`: the dataset snapshot goes to a staging
/// object however short it is.
async fn snapshot_env(staged: bool) -> (Env, job_invoker::Worker) {
    let e = env_with(Duration::from_secs(900), |s| {
        // More margin than any run has: every run reads one page (one object here) and hands over.
        s.continue_margin = Duration::from_secs(3600);
        s.max_continuations = 100;
        if staged {
            s.snapshot_inline_bytes = 0;
        }
    })
    .await;
    e.lambda.invocations.hold.store(true, Ordering::SeqCst);
    let conf = sdk_config();
    let (_, make) = api_and_worker(&conf, e.settings.clone(), e.lambda.client(&conf));
    let w = make(e.lambda.client(&conf));
    (e, w)
}

impl Env {
    /// Runs the held delivery of `attempt` (of the env's only job) through `w`; the job's view after.
    async fn deliver(&self, w: &job_invoker::Worker, attempt: usize) -> Value {
        let payload =
            self.lambda.invocations.received.lock().expect("the deliveries").get(attempt).cloned().expect("a delivery of that attempt");
        assert_eq!(payload["attempt"], attempt as u64, "{payload}");
        self.run_worker(w, payload).await
    }

    /// The checkpoint stored with job `id`.
    async fn checkpoint(&self, id: &str) -> Value {
        let item = self
            .dynamo
            .get_item()
            .table_name(&self.settings.table)
            .key("pk", AttributeValue::S(format!("JOB#{id}")))
            .send()
            .await
            .expect("GetItem");
        let text = item.item().and_then(|i| i.get("checkpoint")).and_then(|c| c.as_s().ok()).expect("a checkpoint");
        serde_json::from_str(text).expect("checkpoint JSON")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn objects_added_under_the_prefix_between_continuations_are_not_exported() {
    for staged in [false, true] {
        let (e, w) = snapshot_env(staged).await;
        let own = e.settings.bucket.clone();
        let prefix = format!("datasets/{}/", unique("snap"));
        for (name, ids) in [("b.csv", [3, 4]), ("d.csv", [5, 6]), ("f.csv", [7, 8])] {
            e.put(&format!("{prefix}{name}"), &id_rows(&ids)).await;
        }
        let (code, v) = e.post(&s3_export(&own, &prefix), OWNER).await;
        assert_eq!(code, 202, "{v}");
        let id = v["job"]["id"].as_str().unwrap().to_owned();
        let v = e.deliver(&w, 0).await;
        assert_eq!(e.lambda.invocations.count(), 2, "the first run handed over after one object: {v}");
        let snapshot_key = ferry_core::jobs::staging_key("seller-0001", &id, ferry_core::jobs::Format::Csv, "snapshot");
        let cp = e.checkpoint(&id).await;
        if staged {
            assert_eq!(cp["snapshot"], json!({"staged": snapshot_key}), "{cp}");
            assert!(e.object(&snapshot_key).await.is_some(), "the staged snapshot is written");
        } else {
            let keys: Vec<&str> =
                cp["snapshot"]["inline"].as_array().expect("an inline snapshot").iter().map(|o| o["key"].as_str().unwrap()).collect();
            assert_eq!(keys, [format!("{prefix}b.csv"), format!("{prefix}d.csv"), format!("{prefix}f.csv")], "{cp}");
        }
        // Objects added before, between and after those listed, while the job waits to continue.
        for (name, ids) in [("a.csv", [1, 2]), ("c.csv", [90, 91]), ("z.csv", [92, 93])] {
            e.put(&format!("{prefix}{name}"), &id_rows(&ids)).await;
        }
        let mut attempt = 1;
        while attempt < e.lambda.invocations.count() {
            e.deliver(&w, attempt).await;
            attempt += 1;
        }
        assert_eq!(attempt, 3, "one continuation for each listed object left");
        let v = e.status(&id).await;
        assert_eq!((v["status"].as_str(), v["download"]["rows"].as_u64()), (Some("succeeded"), Some(6)), "{v}");
        let body = e.object(&ferry_core::jobs::export_key("seller-0001", &id, ferry_core::jobs::Format::Csv)).await.expect("the export");
        let ids: Vec<String> = csv::Reader::from_reader(&body[..]).records().map(|r| r.expect("a record")[0].to_owned()).collect();
        assert_eq!(ids, ["3", "4", "5", "6", "7", "8"], "exactly the listed objects' rows, once each (staged: {staged})");
        assert_eq!(ferry_testkit::list_keys(&e.s3, &own, ferry_core::jobs::STAGING_PREFIX).await, Vec::<String>::new(), "staged: {staged}");
        assert_eq!(e.open_uploads().await, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_object_removed_or_overwritten_after_the_listing_fails_the_job_naming_it() {
    for (removed, staged) in [(true, false), (false, true)] {
        let (e, w) = snapshot_env(staged).await;
        let own = e.settings.bucket.clone();
        let prefix = format!("datasets/{}/", unique("snap"));
        for (name, ids) in [("b.csv", [3, 4]), ("c.csv", [5, 6]), ("d.csv", [7, 8])] {
            e.put(&format!("{prefix}{name}"), &id_rows(&ids)).await;
        }
        let (code, v) = e.post(&s3_export(&own, &prefix), OWNER).await;
        assert_eq!(code, 202, "{v}");
        let id = v["job"]["id"].as_str().unwrap().to_owned();
        let v = e.deliver(&w, 0).await;
        assert_eq!(e.lambda.invocations.count(), 2, "the first run handed over after b.csv: {v}");
        let snapshot_key = ferry_core::jobs::staging_key("seller-0001", &id, ferry_core::jobs::Format::Csv, "snapshot");
        assert_eq!(e.object(&snapshot_key).await.is_some(), staged);
        // c.csv, listed but not read yet, goes away or is replaced before the continuation reads it.
        let c = format!("{prefix}c.csv");
        if removed {
            e.s3.delete_object().bucket(&own).key(&c).send().await.expect("DeleteObject");
        } else {
            e.put(&c, &id_rows(&[50, 60, 70])).await;
        }
        let v = e.deliver(&w, 1).await;
        assert_eq!(v["status"], "failed", "{v}");
        let what = if removed { "was removed" } else { "changed" };
        assert_eq!(v["error"]["code"], "bad_source_data", "{v}");
        assert_eq!(
            v["error"]["message"],
            format!("object \"c.csv\" under the prefix {what} during the export; submit the job again to export the dataset as it is now"),
            "{v}"
        );
        assert_safe(what, &v["error"], &["datasets/", &own]);
        assert!(v.get("download").is_none(), "{v}");
        assert!(e.object(&ferry_core::jobs::export_key("seller-0001", &id, ferry_core::jobs::Format::Csv)).await.is_none(), "no export");
        assert_eq!(e.lambda.invocations.count(), 2, "no further continuation");
        // The upload is abandoned, and the carried bytes and the staged snapshot deleted.
        assert_eq!(ferry_testkit::list_keys(&e.s3, &own, ferry_core::jobs::STAGING_PREFIX).await, Vec::<String>::new(), "{what}");
        assert_eq!(e.open_uploads().await, 0, "{what}");
    }
}

/// Turns the first answer its client receives into a 500 (DynamoDB applied the request, the answer
/// was lost), so that the SDK sends the same request again; and records what was sent.
#[derive(Debug, Default)]
struct LoseFirstAnswer {
    /// `X-Amz-Target` and body of each request sent, retries included.
    sent: std::sync::Mutex<Vec<(String, Vec<u8>)>>,
    lost: std::sync::atomic::AtomicBool,
}

#[derive(Debug, Clone)]
struct Lossy(Arc<LoseFirstAnswer>);

impl aws_sdk_dynamodb::config::Intercept for Lossy {
    fn name(&self) -> &'static str {
        "LoseFirstAnswer"
    }

    fn read_before_transmit(
        &self,
        ctx: &aws_sdk_dynamodb::config::interceptors::BeforeTransmitInterceptorContextRef<'_>,
        _: &aws_sdk_dynamodb::config::RuntimeComponents,
        _: &mut aws_sdk_dynamodb::config::ConfigBag,
    ) -> Result<(), aws_sdk_dynamodb::error::BoxError> {
        let req = ctx.request();
        let target = req.headers().get("x-amz-target").unwrap_or_default().to_owned();
        self.0.sent.lock().expect("lock").push((target, req.body().bytes().unwrap_or_default().to_vec()));
        Ok(())
    }

    fn modify_before_deserialization(
        &self,
        ctx: &mut aws_sdk_dynamodb::config::interceptors::BeforeDeserializationInterceptorContextMut<'_>,
        _: &aws_sdk_dynamodb::config::RuntimeComponents,
        _: &mut aws_sdk_dynamodb::config::ConfigBag,
    ) -> Result<(), aws_sdk_dynamodb::error::BoxError> {
        if ctx.response().status().is_success() && !self.0.lost.swap(true, Ordering::SeqCst) {
            *ctx.response_mut().status_mut() = 500u16.try_into()?;
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_claim_the_sdk_resends_after_it_landed_is_still_this_workers() {
    use ferry_aws::jobs::{Beat, NewJob, Refused};
    use ferry_core::jobs::{Progress, Status};
    let conf = sdk_config();
    let name = unique("jobs");
    let plain = JobTable::new(ferry_aws::clients::dynamodb(&conf), name.clone());
    provision::jobs_table(&ferry_aws::clients::dynamodb(&conf), &name).await.unwrap();
    let params = ferry_api::jobs::parse_submit(export("orders", "csv", 1).as_bytes()).unwrap().params.to_value();
    let id = unique("job");
    let now = job_invoker::settings::now_ms();
    let new = NewJob {
        id: &id,
        owner: "seller-0001",
        kind: "export",
        params: &params,
        now,
        start_lease_ms: 60_000,
        retention_ms: 3_600_000,
        max_running: 10,
    };
    plain.submit(new).await.unwrap();

    let lossy = Arc::new(LoseFirstAnswer::default());
    let retry =
        aws_sdk_dynamodb::config::retry::RetryConfig::standard().with_max_attempts(3).with_initial_backoff(Duration::from_millis(10));
    let client = aws_sdk_dynamodb::Client::from_conf(
        aws_sdk_dynamodb::config::Builder::from(&conf).retry_config(retry).interceptor(Lossy(lossy.clone())).build(),
    );
    let table = JobTable::new(client, name.clone());
    let claimed = table.claim(&id, 0, now, 30_000).await.unwrap();

    let sent = lossy.sent.lock().unwrap().clone();
    let targets: Vec<&str> = sent.iter().map(|(t, _)| t.trim_start_matches("DynamoDB_20120810.")).collect();
    assert_eq!(targets[..2], ["UpdateItem", "UpdateItem"], "the claim was sent twice: {targets:?}");
    assert_eq!(sent[0].1, sent[1].1, "the resend is the same request, token included");
    let claimed = claimed.expect("the resent claim is recognised as this call's own");
    assert_eq!((claimed.record.status, claimed.record.attempt, claimed.checkpoint), (Status::Running, 0, None));
    let dynamo = ferry_aws::clients::dynamodb(&conf);
    let holder = provision::lock_holder(&dynamo, &name, "seller-0001", "export", &params, now).await.unwrap();
    assert_eq!(holder.as_deref(), Some(id.as_str()));

    // Another delivery of the same attempt is still refused, and the claim stays with this worker.
    let other = plain.claim(&id, 0, job_invoker::settings::now_ms(), 30_000).await.unwrap();
    assert!(matches!(&other, Err(Refused::NotOurs(r)) if r.status == Status::Running), "{other:?}");
    let progress = Progress { phase: "reading".into(), done: 1, total: None, ..Progress::default() };
    let beat = Beat { id: &id, attempt: 0, progress: &progress, now: job_invoker::settings::now_ms(), lease_ms: 30_000 };
    assert!(table.heartbeat(beat).await.unwrap().is_ok(), "the worker holding the claim runs on");
}

// ---- Sources an export may read, and what a caller sees of a failure ---------------------------

/// Everything the tests' tracing events write, from every task: log lines are how a failure's cause
/// is found under the request id a caller quotes.
fn logs() -> String {
    static SINK: std::sync::OnceLock<Arc<std::sync::Mutex<Vec<u8>>>> = std::sync::OnceLock::new();
    let sink = SINK.get_or_init(|| {
        let buf = Arc::new(std::sync::Mutex::new(Vec::new()));
        let writer = LogWriter(buf.clone());
        let _ = lambda_runtime::tracing::subscriber::fmt()
            .with_max_level(lambda_runtime::tracing::Level::INFO)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .try_init();
        buf
    });
    String::from_utf8_lossy(&sink.lock().expect("log lock")).into_owned()
}

#[derive(Debug, Clone)]
struct LogWriter(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log lock").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Asserts that a caller-visible error names nothing internal: no ARN, no account id, no endpoint,
/// no SDK error name, none of `secrets` (other owners' keys, the stack's table names).
#[track_caller]
fn assert_safe(what: &str, error: &Value, secrets: &[&str]) {
    assert!(error.is_object(), "{what}: no error object: {error}");
    let text = error.to_string();
    assert!(!ferry_core::public::leaks_internals(&text), "{what}: leaks internals: {text}");
    assert!(!text.contains("arn:") && !text.contains("123456789012") && !text.contains("127.0.0.1"), "{what}: {text}");
    for s in secrets {
        assert!(!text.contains(s), "{what}: names {s:?}: {text}");
    }
    let code = error["code"].as_str().unwrap_or_default();
    assert!(ferry_core::public::ErrorCode::parse(code).is_some(), "{what}: {code:?} is not a known code: {text}");
    assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()), "{what}: {text}");
}

fn s3_export(bucket: &str, prefix: &str) -> String {
    json!({
        "kind": "export",
        "params": {"source": {"type": "s3", "bucket": bucket, "prefix": prefix, "format": "csv"}, "format": "csv"}
    })
    .to_string()
}

fn query_export(table: &str) -> String {
    json!({
        "kind": "export",
        "params": {"source": {"type": "dynamodb_query", "table": table, "key": "pk", "value": "JOB#x"}, "format": "csv", "columns": ["pk"]}
    })
    .to_string()
}

impl Env {
    async fn put(&self, key: &str, body: &[u8]) {
        self.s3.put_object().bucket(&self.settings.bucket).key(key).body(body.to_vec().into()).send().await.expect("PutObject");
    }

    /// Items of the jobs table that belong to `owner` (jobs and locks).
    async fn items_of(&self, owner: &str) -> usize {
        let out = self.dynamo.scan().table_name(&self.settings.table).send().await.expect("scanning the jobs table");
        out.items()
            .iter()
            .filter(|i| {
                i.get("owner").and_then(|o| o.as_s().ok()).is_some_and(|o| o == owner)
                    || i.get("pk").and_then(|p| p.as_s().ok()).is_some_and(|p| p.starts_with(&format!("LOCK#{owner}#")))
            })
            .count()
    }

    /// Runs `payload` through a worker built over `env` (as Lambda would deliver it) and returns
    /// the job's view afterwards.
    async fn run_worker(&self, worker: &job_invoker::Worker, payload: Value) -> Value {
        let mut ctx = Context::default();
        ctx.deadline = (job_invoker::settings::now_ms() + 600_000) as u64;
        ctx.request_id = ferry_testkit::events::next_request_id();
        let id = payload["job_id"].as_str().expect("a job id").to_owned();
        let _ = worker::handle(worker, LambdaEvent::new(payload, ctx)).await;
        self.status(&id).await
    }
}

const VICTIM: &str = "victim-0002";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_sources_are_refused_at_submit_and_never_become_jobs() {
    // Patterns wide enough to take in the stack's own tables: only the never-a-source rule stands
    // between a caller and them.
    let e = env_with(Duration::from_secs(900), |s| {
        s.source_tables = ["*", "jobs-*", "notify-*"].iter().map(|p| TablePattern::parse(p).unwrap()).collect();
    })
    .await;
    let own = e.settings.bucket.clone();

    // The victim's finished export, of rows nobody else holds.
    let table = e.orders(0).await;
    for i in 0..20 {
        let item = HashMap::from([
            ("order_id".to_owned(), AttributeValue::S(format!("v-{i:04}"))),
            ("seller_id".to_owned(), AttributeValue::S("VICTIM-SELLER".into())),
            ("amount".to_owned(), AttributeValue::N(format!("{}", 1000 + i))),
            ("status".to_owned(), AttributeValue::S(format!("VICTIM-SECRET-{i:04}"))),
        ]);
        e.dynamo.put_item().table_name(&table).set_item(Some(item)).send().await.unwrap();
    }
    let (code, v) = e.post(&export(&table, "csv", 1), Some(VICTIM)).await;
    assert_eq!(code, 202, "{v}");
    let victim_id = v["job"]["id"].as_str().unwrap().to_owned();
    let reports = e.lambda.invocations.settle().await;
    assert!(matches!(&reports[..], [Ok(WorkerReport::Succeeded { rows: 20, .. })]), "{reports:?}");
    let victim_key = ferry_core::jobs::export_key(VICTIM, &victim_id, ferry_core::jobs::Format::Csv);
    let victim_rows = e.object(&victim_key).await.expect("the victim's export");
    assert!(String::from_utf8_lossy(&victim_rows).contains("VICTIM-SECRET-0007"));
    // The same rows where the vote pipeline keeps its data, and the attacker's own dataset.
    for key in ["data/1/kr/2026/up.csv", "/data/legacy.csv", "result/1/kr/r.csv", "global/1/g.csv"] {
        e.put(key, &victim_rows).await;
    }
    e.put("datasets/attacker/mine.csv", b"id,note\n1,mine\n2,also mine\n").await;
    let invoked = e.lambda.invocations.count();

    let mut cases: Vec<(String, &str)> = [
        "exports/",
        "exports",
        "exports/victim-0002/",
        "/exports/",
        "./exports/",
        "datasets/../exports/",
        "datasets//../exports",
        "datasets/./../exports/victim-0002",
        "%65xports/",
        "%65%78%70%6F%72%74%73%2F",
        "datasets/%2E%2E/exports/",
        "datasets%2F..%2Fexports/",
        "%252E%252E/exports/",
        "../exports/",
        "datasets/../../exports/",
        "",
        "/",
        "e",
        "data/",
        "/data/",
        "result/",
        "datasets/../result/",
        "global/",
        "%67lobal/",
        "datasets",
        "datasets-private/",
    ]
    .iter()
    .map(|p| (s3_export(&own, p), "params.source.prefix"))
    .collect();
    cases.push((s3_export("not-allowlisted-bucket", "datasets/"), "params.source.bucket"));
    cases.push((s3_export("not-allowlisted-bucket", "exports/"), "params.source.bucket"));
    let deliveries = e.settings.notify_table.clone().unwrap();
    for t in [e.settings.table.as_str(), deliveries.as_str()] {
        cases.push((export(t, "csv", 1), "params.source.table"));
        cases.push((query_export(t), "params.source.table"));
    }
    for (body, field) in &cases {
        let (code, v) = e.post(body, OWNER).await;
        assert_eq!(code, 400, "{body}: {v}");
        assert_eq!((&v["error"]["code"], &v["error"]["field"]), (&json!("bad_request"), &json!(field)), "{body}: {v}");
        assert_safe(body, &v["error"], &[VICTIM, &victim_key, &victim_id, "VICTIM-SECRET"]);
        let request_id = v["error"]["request_id"].as_str().expect("a request id to quote");
        let logged = logs();
        let line = logged.lines().find(|l| l.contains(request_id) && l.contains("request refused"));
        assert!(line.is_some_and(|l| l.contains("seller-0001")), "the attempt is logged with the caller and the request id {request_id}");
    }
    assert_eq!(e.items_of("seller-0001").await, 0, "no job or lock was written for a refused source");
    assert_eq!(e.get("/jobs", OWNER).await.1["jobs"], json!([]));
    assert_eq!(e.lambda.invocations.count(), invoked, "no worker was invoked");

    // What the attacker may read they get, in the normal form of the prefix they gave, and not a
    // byte of the victim's rows.
    let (code, v) = e.post(&s3_export(&own, "/datasets//attacker/./"), OWNER).await;
    assert_eq!(code, 202, "{v}");
    let id = v["job"]["id"].as_str().unwrap().to_owned();
    let reports = e.lambda.invocations.settle().await;
    assert!(matches!(&reports[..], [Ok(WorkerReport::Succeeded { rows: 2, .. })]), "{reports:?}");
    let stored = JobTable::new(e.dynamo.clone(), e.settings.table.clone()).get(&id, job_invoker::settings::now_ms()).await.unwrap();
    let source = ferry_core::jobs::ExportParams::from_value(&stored.expect("the job").params).expect("export params").source;
    assert!(matches!(&source, ferry_core::jobs::Source::S3 { prefix, .. } if prefix == "datasets/attacker/"), "{source:?}");
    let listed = e.s3.list_objects_v2().bucket(&own).prefix("exports/seller-0001/").send().await.unwrap();
    assert_eq!(listed.contents().len(), 1, "{listed:?}");
    let mine = e.object(listed.contents()[0].key().unwrap()).await.unwrap();
    assert_eq!(mine, b"id,note\n1,mine\n2,also mine\n");
    for row in String::from_utf8_lossy(&victim_rows).lines().skip(1) {
        assert!(!mine.windows(row.len()).any(|w| w == row.as_bytes()), "the attacker's export holds a victim row: {row}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_worker_checks_the_allowlist_again_before_reading() {
    let e = env().await;
    let own = e.settings.bucket.clone();
    e.put("exports/victim-0002/0000.csv", b"id,secret\n1,VICTIM-SECRET\n").await;
    e.put("datasets/attacker/mine.csv", b"id,note\n1,mine\n").await;
    let conf = sdk_config();
    let (_, make) = api_and_worker(&conf, e.settings.clone(), e.lambda.client(&conf));
    let w = make(e.lambda.client(&conf));
    let table = JobTable::new(e.dynamo.clone(), e.settings.table.clone());
    // Jobs that did not come through the API (a tampered item, or one accepted under older settings).
    let hostile = [
        ferry_core::jobs::Source::S3 { bucket: own.clone(), prefix: "exports/".into(), format: ferry_core::jobs::DatasetFormat::Csv },
        ferry_core::jobs::Source::S3 {
            bucket: own.clone(),
            prefix: "datasets/../exports/".into(),
            format: ferry_core::jobs::DatasetFormat::Csv,
        },
        // Allowed once normalised, but the API stores only the normal form: this one is not its.
        ferry_core::jobs::Source::S3 {
            bucket: own.clone(),
            prefix: "datasets//attacker/".into(),
            format: ferry_core::jobs::DatasetFormat::Csv,
        },
        ferry_core::jobs::Source::DynamodbScan { table: e.settings.table.clone(), segments: 1 },
    ];
    for source in hostile {
        let columns = matches!(source, ferry_core::jobs::Source::DynamodbScan { .. }).then(|| vec!["pk".to_owned()]);
        let params: ferry_core::jobs::ExportParams =
            serde_json::from_value(json!({"source": source, "format": "csv", "columns": columns})).expect("params");
        let id = uuid_like();
        let now = job_invoker::settings::now_ms();
        let new = ferry_aws::jobs::NewJob {
            id: &id,
            owner: "seller-0001",
            kind: "export",
            params: &params.to_value(),
            now,
            start_lease_ms: 60_000,
            retention_ms: 3_600_000,
            max_running: 10,
        };
        table.submit(new).await.unwrap();
        let v = e.run_worker(&w, json!({"job_id": id, "attempt": 0})).await;
        assert_eq!((v["status"].as_str(), v["error"]["code"].as_str()), (Some("failed"), Some("source_unavailable")), "{source:?}: {v}");
        assert_safe(&format!("{source:?}"), &v["error"], &["exports/", VICTIM, &e.settings.table]);
        assert!(e.object(&ferry_core::jobs::export_key("seller-0001", &id, ferry_core::jobs::Format::Csv)).await.is_none());
    }
    assert_eq!(e.open_uploads().await, 0, "nothing was even begun");
    let listed = e.s3.list_objects_v2().bucket(&own).prefix("exports/seller-0001/").send().await.unwrap();
    assert_eq!(listed.contents().len(), 0, "{listed:?}");
}

/// A job id of the API's shape.
fn uuid_like() -> String {
    let n = unique("x").bytes().fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
    format!("{:08x}-0000-4000-8000-{:012x}", n >> 32, n & 0xffff_ffff_ffff)
}

/// The view of the owner's job made from `body`, after its worker ran.
async fn failed_job(e: &Env, body: &str) -> Value {
    let (code, v) = e.post(body, OWNER).await;
    assert_eq!(code, 202, "{body}: {v}");
    let id = v["job"]["id"].as_str().expect("a job id").to_owned();
    e.lambda.invocations.settle().await;
    let v = e.status(&id).await;
    assert_eq!(v["status"], "failed", "{body}: {v}");
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn missing_sources_fail_the_same_way_and_name_nothing_internal() {
    let lake = unique("lake");
    let gone = unique("no-such-bucket");
    let e = env_with(Duration::from_secs(900), |s| {
        s.max_object_bytes = 64;
        s.dataset_locations = Some(vec![
            DatasetLocation::new(&s.bucket, "datasets/").unwrap(),
            DatasetLocation::new(&lake, "shared/").unwrap(),
            DatasetLocation::new(&gone, "datasets/").unwrap(),
        ]);
    })
    .await;
    let own = e.settings.bucket.clone();
    e.s3.create_bucket().bucket(&lake).send().await.unwrap();
    let missing_table = unique("orders-missing");
    let cases = [
        ("a table that does not exist", export(&missing_table, "csv", 2)),
        ("a query of a table that does not exist", query_export(&missing_table)),
        ("a bucket that does not exist", s3_export(&gone, "datasets/x/")),
        ("a prefix with no objects", s3_export(&own, "datasets/nothing-here/")),
        ("a prefix with no objects in another bucket", s3_export(&lake, "shared/nothing/")),
    ];
    let mut seen = Vec::new();
    for (what, body) in &cases {
        let v = failed_job(&e, body).await;
        let error = &v["error"];
        assert_eq!(error["code"], "source_unavailable", "{what}: {v}");
        assert_safe(what, error, &[&gone, &e.settings.table, "ResourceNotFound", "NoSuchBucket"]);
        // The caller quotes the worker's request id; the log holds the cause under it.
        let request_id = error["request_id"].as_str().expect("a request id");
        let logged = logs();
        assert!(
            logged.lines().any(|l| l.contains(request_id) && l.contains("job failed")),
            "{what}: the cause is logged under {request_id}"
        );
        seen.push(error["message"].clone());
    }
    assert!(seen.windows(2).all(|w| w[0] == w[1]), "one message for every missing source: {seen:?}");

    // Data that is there but wrong names the object only by its key under the caller's prefix.
    e.put("datasets/bad/part-1.csv", b"id,amount\n1,2\n").await;
    e.put("datasets/big/part-1.csv", &[b'x'; 100]).await;
    let body = json!({
        "kind": "export",
        "params": {"source": {"type": "s3", "bucket": own, "prefix": "datasets/bad/", "format": "csv"}, "format": "csv", "columns": ["nope"]}
    });
    let v = failed_job(&e, &body.to_string()).await;
    assert_eq!(v["error"]["code"], "bad_source_data", "{v}");
    assert_eq!(v["error"]["message"], "object \"part-1.csv\" under the prefix: column \"nope\" does not exist", "{v}");
    assert_safe("bad data", &v["error"], &["datasets/", &own]);
    let v = failed_job(&e, &s3_export(&own, "datasets/big/")).await;
    assert_eq!(v["error"]["code"], "too_large", "{v}");
    assert_safe("too large", &v["error"], &["datasets/", &own]);
}

const DENIED: &str = "User: arn:aws:sts::123456789012:assumed-role/ferry-dev-job-worker/x is not authorized to perform: \
                      read on resource: arn:aws:dynamodb:us-east-1:123456789012:table/ferry-dev-jobs";

fn denied_dynamo() -> aws_sdk_dynamodb::Client {
    use aws_sdk_dynamodb::error::ErrorMetadata;
    use aws_sdk_dynamodb::operation::describe_table::DescribeTableError;
    use aws_sdk_dynamodb::operation::scan::ScanError;
    use aws_smithy_mocks::{MockResponseInterceptor, RuleMode, mock};
    fn meta() -> ErrorMetadata {
        ErrorMetadata::builder().code("AccessDeniedException").message(DENIED).build()
    }
    let describe = mock!(aws_sdk_dynamodb::Client::describe_table).then_error(|| DescribeTableError::generic(meta()));
    let scan = mock!(aws_sdk_dynamodb::Client::scan).then_error(|| ScanError::generic(meta()));
    let interceptor = MockResponseInterceptor::new().rule_mode(RuleMode::MatchAny).with_rule(&describe).with_rule(&scan);
    ferry_testkit::mocked_client!(aws_sdk_dynamodb, interceptor)
}

fn denied_s3() -> aws_sdk_s3::Client {
    use aws_sdk_s3::error::ErrorMetadata;
    use aws_sdk_s3::operation::list_objects_v2::ListObjectsV2Error;
    use aws_smithy_mocks::{MockResponseInterceptor, RuleMode, mock};
    let list = mock!(aws_sdk_s3::Client::list_objects_v2)
        .then_error(|| ListObjectsV2Error::generic(ErrorMetadata::builder().code("AccessDenied").message(DENIED).build()));
    let interceptor = MockResponseInterceptor::new().rule_mode(RuleMode::MatchAny).with_rule(&list);
    ferry_testkit::mocked_client!(aws_sdk_s3, interceptor)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_denied_source_reads_exactly_like_a_missing_one() {
    let e = env().await;
    let own = e.settings.bucket.clone();
    let missing_table = unique("orders-missing");
    let missing_view = failed_job(&e, &export(&missing_table, "csv", 1)).await;
    let missing_prefix = failed_job(&e, &s3_export(&own, "datasets/nothing/")).await;
    e.lambda.invocations.hold.store(true, Ordering::SeqCst);
    let conf = sdk_config();
    for (what, body, dynamo, s3) in [
        ("a denied table", export(&unique("orders-denied"), "csv", 1), denied_dynamo(), e.s3.clone()),
        ("a denied bucket", s3_export(&own, "datasets/denied/"), e.dynamo.clone(), denied_s3()),
    ] {
        let (code, v) = e.post(&body, OWNER).await;
        assert_eq!(code, 202, "{v}");
        let payload = e.lambda.invocations.received.lock().unwrap().last().cloned().unwrap();
        let env = job_invoker::JobEnv {
            table: JobTable::new(e.dynamo.clone(), e.settings.table.clone()),
            store: ferry_aws::Store::new(e.s3.clone(), own.clone()),
            s3,
            dynamo,
            ..job_invoker::JobEnv::new(&conf, e.settings.clone())
        };
        let w = job_invoker::Worker { env, lambda: e.lambda.client(&conf) };
        let v = e.run_worker(&w, payload).await;
        assert_eq!(v["status"], "failed", "{what}: {v}");
        assert_safe(what, &v["error"], &["ferry-dev-jobs", "AccessDenied", "not authorized"]);
        let expected = if what.contains("table") { &missing_view } else { &missing_prefix };
        let strip = |v: &Value| json!({"code": v["error"]["code"], "message": v["error"]["message"]});
        assert_eq!(strip(&v), strip(expected), "{what}: denied and missing must not be told apart");
        let request_id = v["error"]["request_id"].as_str().unwrap();
        assert!(logs().lines().any(|l| l.contains(request_id) && l.contains("AccessDenied")), "{what}: the log has the cause");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_that_cannot_be_invoked_and_a_missing_jobs_table_answer_without_internals() {
    logs();
    let conf = sdk_config();
    // moto's Lambda answers a missing function with its ARN (and the account id) in the message.
    let missing_worker = unique("no-such-worker");
    let settings = JobSettings {
        table: unique("jobs"),
        bucket: unique("exports"),
        worker_function: missing_worker.clone(),
        source_tables: vec![TablePattern::parse("orders*").unwrap()],
        ..JobSettings::default()
    };
    provision::jobs_table(&ferry_aws::clients::dynamodb(&conf), &settings.table).await.unwrap();
    let (api, _) = api_and_worker(&conf, Arc::new(settings.clone()), ferry_aws::clients::lambda(&conf));
    let (code, v) = call(&api, "POST", "/jobs", Some(&export("orders", "csv", 1)), OWNER).await.unwrap();
    assert_eq!(code, 503, "{v}");
    assert_eq!(v["error"]["code"], "worker_unavailable", "{v}");
    assert_safe("503", &v["error"], &[&missing_worker, "Function not found"]);
    assert!(!v.to_string().contains("arn:") && !v.to_string().contains(&missing_worker), "{v}");
    let request_id = v["error"]["request_id"].as_str().unwrap().to_owned();
    assert!(logs().lines().any(|l| l.contains(&request_id) && l.contains(&missing_worker)), "the log names the function");
    let id = v["job"]["id"].as_str().unwrap();
    let (_, view) = call(&api, "GET", &format!("/jobs/{id}"), None, OWNER).await.unwrap();
    assert_eq!((view["status"].as_str(), view["error"]["code"].as_str()), (Some("failed"), Some("worker_unavailable")), "{view}");
    assert_eq!(view["error"]["request_id"].as_str(), Some(request_id.as_str()), "the job quotes the submit's request id");
    assert_safe("job error", &view["error"], &[&missing_worker]);

    // No jobs table at all: every route answers `unavailable`, never the SDK's words.
    let broken = JobSettings { table: unique("no-such-jobs"), ..settings };
    let (api, _) = api_and_worker(&conf, Arc::new(broken.clone()), ferry_aws::clients::lambda(&conf));
    for (method, path, body) in [
        ("POST", "/jobs".to_owned(), Some(export("orders", "csv", 1))),
        ("GET", "/jobs".to_owned(), None),
        ("GET", format!("/jobs/{}", uuid_like()), None),
        ("DELETE", format!("/jobs/{}", uuid_like()), None),
    ] {
        let (code, v) = call(&api, method, &path, body.as_deref(), OWNER).await.unwrap();
        assert_eq!((code, v["error"]["code"].as_str()), (503, Some("unavailable")), "{method} {path}: {v}");
        assert_safe(&format!("{method} {path}"), &v["error"], &[&broken.table]);
    }
}

// ---- `ferry jobs`: the real binary against the API over HTTP ----------------------------------

/// The job API on a loopback HTTP port, fronted as API Gateway fronts it: each request becomes a
/// payload v2 event for the real handler. The bearer token stands in for a JWT the authorizer has
/// verified: its text is the `sub`; without one the gateway answers 401 itself.
async fn serve_api(api: Api) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binding the API port");
    let url = format!("http://{}", listener.local_addr().expect("local addr"));
    let app = axum::Router::new().fallback(gateway).with_state(Arc::new(api));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    url
}

async fn gateway(
    axum::extract::State(api): axum::extract::State<Arc<Api>>,
    method: axum::http::Method,
    uri: axum::http::Uri,
    headers: axum::http::HeaderMap,
    body: String,
) -> axum::response::Response<axum::body::Body> {
    let answer = |status: u16, body: Vec<u8>| {
        axum::response::Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(axum::body::Body::from(body))
            .expect("a response")
    };
    let sub = headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer ")).filter(|t| !t.is_empty());
    let Some(sub) = sub else { return answer(401, br#"{"message":"Unauthorized"}"#.to_vec()) };
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let req = api_request(method.as_str(), path, (!body.is_empty()).then_some(body.as_str()), Some(sub));
    match job_invoker::api::handle(&api, req).await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let body = match resp.into_body() {
                lambda_http::Body::Text(t) => t.into_bytes(),
                lambda_http::Body::Binary(b) => b,
                _ => Vec::new(),
            };
            answer(status, body)
        }
        // API Gateway's answer when the function fails.
        Err(_) => answer(500, br#"{"message":"Internal Server Error"}"#.to_vec()),
    }
}

/// What one run of `ferry jobs ...` did.
#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn ok(&self) -> &str {
        assert_eq!(self.code, Some(0), "{self:?}");
        &self.stdout
    }

    /// Asserts the run failed with `code` and that its message says each of `says`.
    fn fails(&self, code: i32, says: &[&str]) {
        assert_eq!(self.code, Some(code), "{self:?}");
        for s in says {
            assert!(self.stderr.contains(s), "the message lacks {s:?}: {self:?}");
        }
    }
}

/// Runs `ferry jobs args...` in `dir` with `FERRY_API_URL` and `FERRY_API_TOKEN` set (when given).
async fn ferry_jobs(dir: &std::path::Path, api: Option<&str>, token: Option<&str>, args: &[&str]) -> Run {
    let mut cmd = tokio::process::Command::new(ferry_testkit::binary("ferry"));
    cmd.arg("jobs").args(args).current_dir(dir).env_remove("FERRY_API_URL").env_remove("FERRY_API_TOKEN");
    if let Some(a) = api {
        cmd.env("FERRY_API_URL", a);
    }
    if let Some(t) = token {
        cmd.env("FERRY_API_TOKEN", t);
    }
    let out = cmd.output().await.expect("running ferry");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn tempdir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(unique(name));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// `ferry jobs list` rows: id, status, phase, rows.
fn listed(stdout: &str) -> Vec<[String; 4]> {
    let mut lines = stdout.lines();
    assert_eq!(
        lines.next().map(|h| h.split_whitespace().collect::<Vec<_>>()),
        Some(vec!["id", "status", "phase", "rows", "created"]),
        "{stdout}"
    );
    lines
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(f.len(), 5, "{l}");
            [f[0], f[1], f[2], f[3]].map(str::to_owned)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_ferry_jobs_cli_submits_watches_lists_cancels_and_downloads() {
    let e = env().await;
    let api = serve_api(e.api.clone()).await;
    let (url, me) = (Some(api.as_str()), Some("seller-0001"));
    let dir = tempdir("ferry-jobs-cli");
    let table = e.orders(30).await;
    let source = e.source_ids(&table, 1).await;

    // submit: the id on stdout, what happened on stderr.
    std::fs::write(dir.join("csv.json"), export(&table, "csv", 1)).unwrap();
    let run = ferry_jobs(&dir, url, me, &["submit", "csv.json"]).await;
    let id = run.ok().trim().to_owned();
    assert!(ferry_core::jobs::is_job_id(&id), "{run:?}");
    assert!(run.stderr.contains(&format!("job {id}: queued")), "{run:?}");
    let reports = e.lambda.invocations.settle().await;
    assert!(matches!(&reports[..], [Ok(WorkerReport::Succeeded { rows: 30, .. })]), "{reports:?}");

    // status: the API's view as JSON.
    let v: Value = serde_json::from_str(ferry_jobs(&dir, url, me, &["status", &id]).await.ok()).expect("status prints JSON");
    assert_eq!((v["id"].as_str(), v["status"].as_str(), v["format"].as_str()), (Some(id.as_str()), Some("succeeded"), Some("csv")), "{v}");
    assert_eq!(v["download"]["rows"], 30, "{v}");

    // download: by default `{id}.csv` in the working directory; `-o` elsewhere. The bytes are the export's.
    let key = ferry_core::jobs::export_key("seller-0001", &id, ferry_core::jobs::Format::Csv);
    let exported = e.object(&key).await.expect("the export");
    let run = ferry_jobs(&dir, url, me, &["download", &id]).await;
    run.ok();
    assert!(run.stderr.contains("30 rows"), "{run:?}");
    let file = std::fs::read(dir.join(format!("{id}.csv"))).expect("the downloaded file");
    assert_eq!(file, exported);
    assert_eq!(csv_ids(&file), source);
    let out = dir.join("copy.csv");
    ferry_jobs(&dir, url, me, &["download", &id, "-o", out.to_str().unwrap()]).await.ok();
    assert_eq!(std::fs::read(&out).unwrap(), exported);

    // submit --wait -o: polls to the end, prints the final view and writes the file.
    std::fs::write(dir.join("jsonl.json"), export(&table, "jsonl", 1)).unwrap();
    let run = ferry_jobs(&dir, url, me, &["submit", "jsonl.json", "--wait", "-o", "waited.jsonl"]).await;
    let waited: Value = serde_json::from_str(run.ok()).expect("the final view as JSON");
    assert_eq!((waited["status"].as_str(), waited["download"]["rows"].as_u64()), (Some("succeeded"), Some(30)), "{waited}");
    let lines = std::fs::read_to_string(dir.join("waited.jsonl")).expect("the waited-for file");
    let ids: Vec<String> =
        lines.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()["order_id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(ids, source);
    e.lambda.invocations.settle().await;

    // cancel: a job whose worker has not started. The same request again is the same job.
    e.lambda.invocations.hold.store(true, Ordering::SeqCst);
    std::fs::write(dir.join("queued.json"), export(&table, "xlsx", 1)).unwrap();
    let queued = ferry_jobs(&dir, url, me, &["submit", "queued.json"]).await.ok().trim().to_owned();
    let run = ferry_jobs(&dir, url, me, &["submit", "queued.json"]).await;
    assert_eq!(run.ok().trim(), queued);
    assert!(run.stderr.contains("already running: not started twice"), "{run:?}");
    assert_eq!(ferry_jobs(&dir, url, me, &["cancel", &queued]).await.ok(), format!("{queued}: cancelled\n"));
    ferry_jobs(&dir, url, me, &["cancel", &queued]).await.fails(1, &[queued.as_str(), "the job is already cancelled"]);
    ferry_jobs(&dir, url, me, &["download", &queued]).await.fails(1, &[queued.as_str(), "is cancelled: nothing to download"]);

    // list: newest first, one line per job; --all follows the pages.
    let mine = [
        [queued.clone(), "cancelled".into(), "cancelled".into(), "0".into()],
        [waited["id"].as_str().unwrap().to_owned(), "succeeded".into(), "done".into(), "30".into()],
        [id.clone(), "succeeded".into(), "done".into(), "30".into()],
    ];
    assert_eq!(listed(ferry_jobs(&dir, url, me, &["list"]).await.ok()), mine);
    assert_eq!(listed(ferry_jobs(&dir, url, me, &["list", "--limit", "1"]).await.ok()), mine[..1]);
    assert_eq!(listed(ferry_jobs(&dir, url, me, &["list", "--limit", "1", "--all"]).await.ok()), mine);

    // Another owner sees none of it.
    let other = Some("seller-0002");
    for command in ["status", "cancel", "download"] {
        ferry_jobs(&dir, url, other, &[command, &id]).await.fails(1, &[format!("/jobs/{id}").as_str(), "no such job (or not yours)"]);
    }
    assert_eq!(listed(ferry_jobs(&dir, url, other, &["list"]).await.ok()), Vec::<[String; 4]>::new());
    let unknown = "00000000-0000-4000-8000-000000000000";
    ferry_jobs(&dir, url, me, &["status", unknown]).await.fails(1, &[format!("/jobs/{unknown}").as_str(), "no such job"]);

    // Bad input exits 65 naming the file and the field; nothing reaches the API.
    let received = e.lambda.invocations.count();
    let bad = [
        (
            "segments.json",
            r#"{"kind":"export","params":{"source":{"type":"dynamodb_scan","table":"orders","segments":500},"format":"csv","columns":["a"]}}"#,
            "params.source.segments",
        ),
        (
            "columns.json",
            r#"{"kind":"export","params":{"source":{"type":"dynamodb_scan","table":"orders"},"format":"csv"}}"#,
            "params.columns",
        ),
        ("kind.json", r#"{"kind":"report","params":{}}"#, "kind"),
        ("broken.json", "{not json", "body: not valid JSON"),
    ];
    for (name, body, field) in bad {
        std::fs::write(dir.join(name), body).unwrap();
        ferry_jobs(&dir, url, me, &["submit", name]).await.fails(65, &[name, field]);
    }
    ferry_jobs(&dir, url, me, &["submit", "absent.json"]).await.fails(1, &["reading absent.json"]);
    // The API's own 400 is bad input too.
    ferry_jobs(&dir, url, me, &["list", "--limit", "0"]).await.fails(65, &["GET /jobs?limit=0", "limit"]);
    // No identity, no API.
    ferry_jobs(&dir, url, None, &["list"]).await.fails(1, &["401", "not authorised"]);
    ferry_jobs(&dir, None, me, &["list"]).await.fails(1, &["no API URL"]);
    // --api and --token as flags instead of the environment.
    let run = ferry_jobs(&dir, None, None, &["list", "--api", &api, "--token", "seller-0001"]).await;
    assert_eq!(listed(run.ok()), mine);
    assert_eq!(e.lambda.invocations.count(), received, "no worker was invoked by the bad requests");
    let _ = std::fs::remove_dir_all(&dir);
}

// ---- Exact values -------------------------------------------------------------------------------
// Numbers beyond i64 and f64 and binary keys, end to end through every format, and text cells a
// spreadsheet would run as formulas.

/// One number per item: beyond f64 and i64, beyond i64 (u64::MAX), past f64's exact integers, and
/// ordinary ones.
const EXACT_NUMBERS: [&str; 8] = [
    "123456789012345678901234567890",
    "9007199254740993",
    "-9223372036854775808",
    "18446744073709551615",
    "9007199254740992",
    "-5",
    "0.1",
    "42",
];

/// The `i`th binary key: bytes that are not UTF-8.
fn binary_key(i: usize) -> Vec<u8> {
    vec![0xff, 0xfe, i as u8, 0x00]
}

/// Standard base64 with padding, written here so the test does not trust the code under test.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    bytes
        .chunks(3)
        .flat_map(|c| {
            let n = c.iter().enumerate().fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
            (0..4).map(move |i| if i <= c.len() { ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char } else { '=' })
        })
        .collect()
}

/// A table keyed by the binary attribute `id`, holding `items` (`id` set to [`binary_key`] of each's
/// position). Returns its name.
async fn binary_keyed_table(dynamo: &aws_sdk_dynamodb::Client, items: Vec<HashMap<String, AttributeValue>>) -> String {
    use aws_sdk_dynamodb::types::{AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType};
    let table = unique("orders-binary");
    dynamo
        .create_table()
        .table_name(&table)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(
            AttributeDefinition::builder().attribute_name("id").attribute_type(ScalarAttributeType::B).build().expect("a key attribute"),
        )
        .key_schema(KeySchemaElement::builder().attribute_name("id").key_type(KeyType::Hash).build().expect("a key schema"))
        .send()
        .await
        .expect("creating the table");
    for (i, mut item) in items.into_iter().enumerate() {
        item.insert("id".into(), AttributeValue::B(aws_sdk_dynamodb::primitives::Blob::new(binary_key(i))));
        dynamo.put_item().table_name(&table).set_item(Some(item)).send().await.expect("writing an item");
    }
    table
}

/// Every item of `table` in scan order, as (base64 of `id`, the item).
async fn scanned(dynamo: &aws_sdk_dynamodb::Client, table: &str) -> Vec<(String, HashMap<String, AttributeValue>)> {
    let mut items = Vec::new();
    let mut pages = dynamo.scan().table_name(table).into_paginator().send();
    while let Some(page) = pages.next().await {
        for item in page.expect("scan").items() {
            items.push((base64(item["id"].as_b().expect("a binary id").as_ref()), item.clone()));
        }
    }
    items
}

/// Submits an export, waits for it to succeed, and returns its id and bytes.
async fn exported(e: &Env, params: Value) -> (String, Vec<u8>) {
    let format: ferry_core::jobs::Format = serde_json::from_value(params["format"].clone()).expect("a format");
    let (code, v) = e.post(&json!({"kind": "export", "params": params}).to_string(), OWNER).await;
    assert_eq!(code, 202, "{v}");
    let id = v["job"]["id"].as_str().expect("a job id").to_owned();
    let reports = e.lambda.invocations.settle().await;
    assert!(matches!(reports.last(), Some(Ok(WorkerReport::Succeeded { .. }))), "{reports:?}");
    let key = ferry_core::jobs::export_key("seller-0001", &id, format);
    (id, e.object(&key).await.expect("the export"))
}

fn first_sheet(bytes: &[u8]) -> (calamine::Range<calamine::Data>, calamine::Range<String>) {
    use calamine::Reader;
    let mut book = calamine::Xlsx::new(std::io::Cursor::new(bytes.to_vec())).expect("the workbook opens");
    let name = book.sheet_names()[0].clone();
    (book.worksheet_range(&name).expect("cells"), book.worksheet_formula(&name).expect("formulas"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn numbers_keep_every_digit_and_binary_keys_resume_across_pages() {
    use calamine::Data;
    // Two rows a page, and every run hands over after its first page: each next page starts from a
    // binary start key stored in a checkpoint.
    let e = env_with(Duration::from_secs(2), |s| {
        s.page_size = 2;
        s.continue_margin = Duration::from_secs(2);
        s.max_continuations = 100;
    })
    .await;
    let items = EXACT_NUMBERS.iter().map(|n| HashMap::from([("n".to_owned(), AttributeValue::N((*n).into()))])).collect();
    let table = binary_keyed_table(&e.dynamo, items).await;
    let source: Vec<(String, String)> =
        scanned(&e.dynamo, &table).await.into_iter().map(|(id, item)| (id, item["n"].as_n().expect("a number").clone())).collect();
    let mut numbers: Vec<&str> = source.iter().map(|(_, n)| n.as_str()).collect();
    numbers.sort_unstable();
    let mut expected_numbers = EXACT_NUMBERS.to_vec();
    expected_numbers.sort_unstable();
    assert_eq!(numbers, expected_numbers, "the source holds the numbers as written");
    let params = |format: &str| json!({"source": {"type": "dynamodb_scan", "table": table}, "format": format, "columns": ["id", "n"]});

    let (_, csv) = exported(&e, params("csv")).await;
    let continued = e.lambda.invocations.received.lock().unwrap().len();
    assert!(continued >= 4, "the export ran page by page over {continued} invocations");
    let mut r = csv::Reader::from_reader(csv.as_slice());
    let rows: Vec<(String, String)> =
        r.records().map(|rec| rec.expect("a record")).map(|rec| (rec[0].to_owned(), rec[1].to_owned())).collect();
    assert_eq!(rows, source, "CSV: every id as base64, every number digit for digit");

    let (_, jsonl) = exported(&e, params("jsonl")).await;
    let lines: Vec<&str> = std::str::from_utf8(&jsonl).expect("UTF-8").lines().collect();
    let expected: Vec<String> = source.iter().map(|(id, n)| format!(r#"{{"id":"{id}","n":{n}}}"#)).collect();
    assert_eq!(lines, expected, "JSON lines: numbers as number tokens with every digit");
    assert!(lines.iter().all(|l| serde_json::from_str::<Value>(l).is_ok()), "each line is JSON");

    let (_, xlsx) = exported(&e, params("xlsx")).await;
    let (cells, formulas) = first_sheet(&xlsx);
    let cell = |n: &str| match n {
        // No f64 shows these digits: text, exactly.
        "123456789012345678901234567890" | "9007199254740993" | "-9223372036854775808" | "18446744073709551615" => Data::String(n.into()),
        exact => Data::Float(exact.parse().expect("a number")),
    };
    let rows: Vec<(Data, Data)> = cells.rows().skip(1).map(|r| (r[0].clone(), r[1].clone())).collect();
    let expected: Vec<(Data, Data)> = source.iter().map(|(id, n)| (Data::String(id.clone()), cell(n))).collect();
    assert_eq!(rows, expected, "xlsx: number cells where an f64 is exact, text elsewhere");
    assert!(formulas.used_cells().all(|(_, _, f)| f.is_empty()));
    assert_eq!(e.open_uploads().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn formula_like_text_is_neutralised_in_csv_and_is_never_a_formula_in_xlsx() {
    use calamine::Data;
    let e = env().await;
    let long = "x".repeat(40_000);
    let texts =
        ["=1+1", "+SUM(A1)", "-cmd", "@x", "\t=1", "\r=1", "=HYPERLINK(\"http://x\",\"y\")", "plain", "a\u{1}b\u{8}c", long.as_str()];
    let items = texts
        .iter()
        .map(|t| HashMap::from([("t".to_owned(), AttributeValue::S((*t).into())), ("n".to_owned(), AttributeValue::N("-5".into()))]))
        .collect();
    let table = binary_keyed_table(&e.dynamo, items).await;
    let source: Vec<String> =
        scanned(&e.dynamo, &table).await.into_iter().map(|(_, item)| item["t"].as_s().expect("text").clone()).collect();
    let escaped = |t: &str| if t.starts_with(['=', '+', '-', '@', '\t', '\r']) { format!("'{t}") } else { t.to_owned() };
    let params = |format: &str| json!({"source": {"type": "dynamodb_scan", "table": table}, "format": format, "columns": ["t", "n"]});
    let csv_rows = |body: &[u8]| -> Vec<(String, String)> {
        csv::Reader::from_reader(body).records().map(|r| r.expect("a record")).map(|r| (r[0].to_owned(), r[1].to_owned())).collect()
    };

    let (csv_id, csv) = exported(&e, params("csv")).await;
    let expected: Vec<(String, String)> = source.iter().map(|t| (escaped(t), "-5".to_owned())).collect();
    assert_eq!(csv_rows(&csv), expected, "text escaped, the number -5 not");

    let mut plain = params("csv");
    plain["formula_escape"] = json!(false);
    let (_, csv) = exported(&e, plain).await;
    let expected: Vec<(String, String)> = source.iter().map(|t| (t.clone(), "-5".to_owned())).collect();
    assert_eq!(csv_rows(&csv), expected, "formula_escape false: text as it is");

    let (id, xlsx) = exported(&e, params("xlsx")).await;
    let (cells, formulas) = first_sheet(&xlsx);
    let rows: Vec<(Data, Data)> = cells.rows().skip(1).map(|r| (r[0].clone(), r[1].clone())).collect();
    let expected: Vec<(Data, Data)> = source.iter().map(|t| (Data::String(t.chars().take(32_767).collect()), Data::Float(-5.0))).collect();
    assert_eq!(rows, expected, "string cells holding the text, cut at Excel's limit; -5 a number");
    assert!(formulas.used_cells().all(|(_, _, f)| f.is_empty()), "no formulas: {formulas:?}");
    let job = JobTable::new(e.dynamo.clone(), e.settings.table.clone()).get(&id, job_invoker::settings::now_ms()).await.unwrap().unwrap();
    assert_eq!(job.result.map(|r| r.truncated_cells), Some(1), "the cut cell is noted in the result");
    let view = e.status(&id).await;
    assert_eq!(view["download"]["truncated_cells"], 1, "and shown with the download: {view}");
    assert_eq!(e.status(&csv_id).await["download"]["truncated_cells"], 0, "nothing is cut in CSV");
}

/// A CSV dataset of `columns` columns `c0, c1...` and one row `0, 1...`.
fn wide_csv(columns: usize) -> Vec<u8> {
    let header: Vec<String> = (0..columns).map(|i| format!("c{i}")).collect();
    let row: Vec<String> = (0..columns).map(|i| i.to_string()).collect();
    format!("{}\n{}\n", header.join(","), row.join(",")).into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_xlsx_wider_than_a_sheet_fails_before_writing_instead_of_dropping_columns() {
    use calamine::Data;
    let e = env().await;
    let limit = ferry_core::cells::XLSX_MAX_COLUMNS;
    let own = e.settings.bucket.clone();
    let xlsx_of = |prefix: &str| json!({"source": {"type": "s3", "bucket": own, "prefix": prefix, "format": "csv"}, "format": "xlsx"});

    // A sheet's full width: every column arrives.
    e.put("datasets/full/part-1.csv", &wide_csv(limit)).await;
    let (_, bytes) = exported(&e, xlsx_of("datasets/full/")).await;
    let (cells, _) = first_sheet(&bytes);
    assert_eq!(cells.width(), limit);
    assert_eq!(cells.get((0, limit - 1)), Some(&Data::String(format!("c{}", limit - 1))));
    assert_eq!(cells.get((1, limit - 1)), Some(&Data::Float((limit - 1) as f64)));

    // One column more: the job fails naming the limit, and nothing is written.
    e.put("datasets/wide/part-1.csv", &wide_csv(limit + 1)).await;
    let before = ferry_testkit::list_keys(&e.s3, &own, "exports/").await;
    let v = failed_job(&e, &json!({"kind": "export", "params": xlsx_of("datasets/wide/")}).to_string()).await;
    assert_eq!(v["error"]["code"], "too_large", "{v}");
    let message = v["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("16385 columns, over xlsx's limit of 16384 columns"), "{message}");
    assert_safe("too many columns", &v["error"], &["datasets/", &own]);
    assert!(v.get("download").is_none(), "{v}");
    assert_eq!(ferry_testkit::list_keys(&e.s3, &own, "exports/").await, before, "no export or staged rows left behind");
    assert_eq!(e.open_uploads().await, 0, "the multipart upload is abandoned");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_long_xlsx_build_outlives_many_leases_and_the_job_succeeds() {
    // A 1 s lease, and one page of reading: the page, the workbook build and the upload report no
    // progress for longer than that. The background heartbeat alone keeps the job alive.
    let e = env_with(Duration::from_secs(900), |s| {
        s.lease = Duration::from_secs(1);
        s.page_size = 10_000;
    })
    .await;
    let n = 8000;
    let table = e.orders(n).await;
    let (code, v) = e.post(&export(&table, "xlsx", 1), OWNER).await;
    assert_eq!(code, 202, "{v}");
    let id = v["job"]["id"].as_str().unwrap().to_owned();
    let started = Instant::now();
    let reports = e.lambda.invocations.settle().await;
    let took = started.elapsed();
    assert!(matches!(&reports[..], [Ok(WorkerReport::Succeeded { .. })]), "{reports:?}");
    assert!(took > Duration::from_millis(1500), "the run must outlast its lease to prove anything; it took {took:?}");
    let v = e.status(&id).await;
    assert_eq!(v["status"], "succeeded", "{v}");
    let key = ferry_core::jobs::export_key("seller-0001", &id, ferry_core::jobs::Format::Xlsx);
    let (rows, _) = count_xlsx_rows(&e.object(&key).await.expect("the workbook")).expect("an xlsx that opens");
    assert_eq!(rows as u64, n, "every row is in the workbook");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_delivery_held_back_past_the_start_lease_still_runs_its_job() {
    let e = env_with(Duration::from_secs(900), |s| {
        s.start_lease = Duration::from_millis(500);
    })
    .await;
    // Lambda keeps the event in its retry queue (the worker is throttled) longer than the lease.
    e.lambda.invocations.delay_ms.store(1500, Ordering::SeqCst);
    let table = e.orders(200).await;
    let (code, v) = e.post(&export(&table, "csv", 1), OWNER).await;
    assert_eq!(code, 202, "{v}");
    let id = v["job"]["id"].as_str().unwrap().to_owned();
    let v = e.wait_until(&id, "lost", |v| v["status"] == "lost").await;
    assert_eq!(v["error"]["code"], "worker_unavailable", "readers see it lost while it waits: {v}");
    let reports = e.lambda.invocations.settle().await;
    assert!(matches!(&reports[..], [Ok(WorkerReport::Succeeded { rows: 200, .. })]), "the late delivery ran it: {reports:?}");
    assert_eq!(e.status(&id).await["status"], "succeeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_continuation_held_back_past_its_lease_still_resumes() {
    let e = env_with(Duration::from_secs(2), |s| {
        s.continue_margin = Duration::from_millis(1800);
        s.page_size = 100;
        s.max_continuations = 1000;
        // Long enough that a slow store call on a loaded machine does not lose a running attempt;
        // each delivery below still waits past it.
        s.lease = Duration::from_secs(2);
    })
    .await;
    let n = 1500;
    let table = wide_orders(&e.dynamo, n).await;
    e.lambda.invocations.delay_ms.store(3000, Ordering::SeqCst);
    let (code, v) = e.post(&export(&table, "csv", 1), OWNER).await;
    assert_eq!(code, 202, "{v}");
    let id = v["job"]["id"].as_str().unwrap().to_owned();
    let reports = e.lambda.invocations.settle().await;
    let continued = reports.iter().filter(|r| matches!(r, Ok(WorkerReport::Continued { .. }))).count();
    assert!(continued >= 1, "the export should have continued: {reports:?}");
    assert!(matches!(reports.last(), Some(Ok(WorkerReport::Succeeded { .. }))), "{reports:?}");
    let key = ferry_core::jobs::export_key("seller-0001", &id, ferry_core::jobs::Format::Csv);
    assert_eq!(csv_ids(&e.object(&key).await.expect("export")), e.source_ids(&table, 1).await, "every row once");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_owner_over_the_running_limit_gets_429_and_others_are_unaffected() {
    let e = env_with(Duration::from_secs(900), |s| s.max_running_per_owner = 2).await;
    e.lambda.invocations.hold.store(true, Ordering::SeqCst);
    let mut ids = Vec::new();
    for segments in 1..=2 {
        let (code, v) = e.post(&export("orders", "csv", segments), OWNER).await;
        assert_eq!(code, 202, "{v}");
        ids.push(v["job"]["id"].as_str().unwrap().to_owned());
    }
    let third = export("orders", "csv", 3);
    let res = job_invoker::api::handle(&e.api, api_request("POST", "/jobs", Some(&third), OWNER)).await.expect("job-api");
    assert_eq!(res.status().as_u16(), 429);
    assert_eq!(res.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("30"));
    let body: Value = match res.body() {
        lambda_http::Body::Text(t) => serde_json::from_str(t).unwrap(),
        other => panic!("a JSON body: {other:?}"),
    };
    assert_eq!(body["error"]["code"], "too_many_requests", "{body}");
    // Repeating a running request is still the duplicate, not a refusal.
    let (code, v) = e.post(&export("orders", "csv", 1), OWNER).await;
    assert_eq!((code, v["job"]["id"].as_str()), (200, Some(ids[0].as_str())), "{v}");
    // Another owner has slots of their own.
    let (code, v) = e.post(&third, Some("seller-0002")).await;
    assert_eq!(code, 202, "{v}");
    // Ending one job frees its slot.
    let (code, _) = call(&e.api, "DELETE", &format!("/jobs/{}", ids[0]), None, OWNER).await.unwrap();
    assert_eq!(code, 200);
    let (code, v) = e.post(&third, OWNER).await;
    assert_eq!(code, 202, "{v}");
    // Concurrent distinct submits cannot pass the limit together.
    let e = env_with(Duration::from_secs(900), |s| s.max_running_per_owner = 2).await;
    e.lambda.invocations.hold.store(true, Ordering::SeqCst);
    let api = Arc::new(e.api.clone());
    let racers: Vec<_> = (1..=8)
        .map(|segments| {
            let api = api.clone();
            tokio::spawn(async move { call(&api, "POST", "/jobs", Some(&export("orders", "csv", segments)), OWNER).await.unwrap().0 })
        })
        .collect();
    let mut codes = Vec::new();
    for r in racers {
        codes.push(r.await.unwrap());
    }
    codes.sort();
    assert_eq!(codes, [202, 202, 429, 429, 429, 429, 429, 429], "exactly the limit is admitted");
}

/// What Lambda writes to the worker's on-failure destination queue, as the SQS event the worker
/// then receives.
fn undelivered_batch(records: &[(&str, Value)]) -> Value {
    let records: Vec<Value> = records
        .iter()
        .map(|(message_id, body)| {
            json!({
                "messageId": message_id,
                "receiptHandle": "handle",
                "body": body.to_string(),
                "attributes": {},
                "messageAttributes": {},
                "md5OfBody": "",
                "eventSource": "aws:sqs",
                "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:ferry-dev-job-failures",
                "awsRegion": "us-east-1"
            })
        })
        .collect();
    json!({ "Records": records })
}

fn invocation_record(job_id: &str, attempt: u32, condition: &str) -> Value {
    json!({
        "version": "1.0",
        "timestamp": "2026-11-30T05:00:00.000Z",
        "requestContext": {
            "requestId": "e4b46cbf-b738-4c6b-a9b2-3a1b2a0d7a11",
            "functionArn": "arn:aws:lambda:us-east-1:123456789012:function:ferry-dev-job-worker:$LATEST",
            "condition": condition,
            "approximateInvokeCount": 0
        },
        "requestPayload": { "job_id": job_id, "attempt": attempt },
        "responseContext": { "statusCode": 429, "executedVersion": "$LATEST" }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_delivery_lambda_gave_up_on_fails_its_job_and_frees_the_lock() {
    let e = env().await;
    e.lambda.invocations.hold.store(true, Ordering::SeqCst);
    let table = e.orders(50).await;
    let body = export(&table, "csv", 1);
    let (code, v) = e.post(&body, OWNER).await;
    assert_eq!(code, 202, "{v}");
    let id = v["job"]["id"].as_str().unwrap().to_owned();
    let conf = sdk_config();
    let (_, make) = api_and_worker(&conf, e.settings.clone(), e.lambda.client(&conf));
    let w = make(e.lambda.client(&conf));
    let deliver = |event: Value| {
        let w = w.clone();
        async move { worker::handle_any(&w, LambdaEvent::new(event, Context::default())).await.expect("the batch is handled") }
    };
    // Garbage is dropped (logged), a record for a job that does not exist changes nothing, and the
    // real one fails its job: no record goes back to the queue.
    let out = deliver(undelivered_batch(&[
        ("m-1", json!({"not": "a record"})),
        ("m-2", invocation_record(&uuid_like(), 0, "EventAgeExceeded")),
        ("m-3", invocation_record(&id, 0, "EventAgeExceeded")),
    ]))
    .await;
    assert_eq!(out["batchItemFailures"], json!([]), "{out}");
    let v = e.status(&id).await;
    assert_eq!((v["status"].as_str(), v["error"]["code"].as_str()), (Some("failed"), Some("worker_unavailable")), "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("never started"), "{v}");
    assert!(!ferry_core::public::leaks_internals(&v["error"].to_string()), "{v}");
    // Its lock is free: the same request is a new job.
    let (code, again) = e.post(&body, OWNER).await;
    assert_eq!(code, 202, "{again}");
    let new_id = again["job"]["id"].as_str().unwrap().to_owned();
    // A record about a delivery whose duplicate runs the job does not touch it.
    let claimed = JobTable::new(e.dynamo.clone(), e.settings.table.clone())
        .claim(&new_id, 0, job_invoker::settings::now_ms(), 60_000)
        .await
        .expect("claim")
        .expect("the job is claimable");
    assert_eq!(claimed.record.id, new_id);
    let out = deliver(undelivered_batch(&[("m-4", invocation_record(&new_id, 0, "RetriesExhausted"))])).await;
    assert_eq!(out["batchItemFailures"], json!([]), "{out}");
    assert_eq!(e.status(&new_id).await["status"], "running", "a live run is left alone");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_submit_that_died_between_its_writes_blocks_nothing_once_the_grace_passed() {
    let e = env_with(Duration::from_secs(900), |s| {
        s.max_running_per_owner = 1;
        // Queued jobs wait as long as the template lets Lambda keep their events.
        s.start_lease = Duration::from_secs(3600);
    })
    .await;
    e.lambda.invocations.hold.store(true, Ordering::SeqCst);
    let body = export("orders", "csv", 1);
    let (code, v) = e.post(&body, OWNER).await;
    assert_eq!(code, 202, "{v}");
    let id = v["job"]["id"].as_str().unwrap().to_owned();
    // What a crash between the lock (and slot) and the job item leaves: no job item, and the lock
    // and slot written longer ago than the grace a submit has for its second write.
    let t = &e.settings.table;
    e.dynamo.delete_item().table_name(t).key("pk", AttributeValue::S(format!("JOB#{id}"))).send().await.expect("DeleteItem");
    let long_ago = (job_invoker::settings::now_ms() - ferry_aws::jobs::WRITE_GRACE_MS - 1_000).to_string();
    let items = e.dynamo.scan().table_name(t).send().await.expect("Scan");
    let left: Vec<String> = items.items().iter().filter_map(|i| i.get("pk").and_then(|p| p.as_s().ok()).cloned()).collect();
    assert_eq!(left.len(), 2, "a lock and a slot: {left:?}");
    for pk in &left {
        let field = if pk.starts_with("LOCK#") { "written_at" } else { "held_until" };
        e.dynamo
            .update_item()
            .table_name(t)
            .key("pk", AttributeValue::S(pk.clone()))
            .update_expression("SET #f = :t")
            .expression_attribute_names("#f", field)
            .expression_attribute_values(":t", AttributeValue::N(long_ago.clone()))
            .send()
            .await
            .expect("UpdateItem");
    }
    // The same request is a new job (the stale lock is freed) within the owner's one slot.
    let (code, v) = e.post(&body, OWNER).await;
    assert_eq!(code, 202, "{v}");
    assert_ne!(v["job"]["id"].as_str(), Some(id.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_csv_object_of_narrow_cells_under_the_byte_cap_weighs_over_it() {
    // 600 KB of one-digit cells: under the 1 MiB cap in bytes, but holding it decoded takes about
    // nine times its bytes, past what the cap budgets for.
    let narrow = format!("a,b,c,d,e\n{}", "1,2,3,4,5\n".repeat(60_000));
    assert!(narrow.len() < 1 << 20);
    let files = vec![("orders/part-0000.csv", id_rows(&[1, 2])), ("orders/part-0001.csv", narrow.into_bytes())];
    let (e, _, v) = export_under_a_1_mib_cap("csv", files).await;
    assert_eq!(v["error"]["code"], "too_large", "{v}");
    let message = v["error"]["message"].as_str().expect("a message");
    assert!(message.starts_with("object \"part-0001.csv\" under the prefix: decodes to "), "{v}");
    let id = v["id"].as_str().expect("the job id");
    assert!(e.object(&ferry_core::jobs::export_key("seller-0001", id, ferry_core::jobs::Format::Csv)).await.is_none(), "nothing exported");
}

// ---- Metrics ------------------------------------------------------------------------------------

/// Every line `capture` holds, each checked as CloudWatch reads it, that is about job `id`.
fn job_metrics(capture: &ferry_lambda::metrics::Capture, id: &str) -> Vec<ferry_lambda::metrics::Emitted> {
    let lines = capture.lines();
    let all =
        lines.iter().map(|l| ferry_lambda::metrics::verify(l).unwrap_or_else(|e| panic!("not an EMF line CloudWatch reads ({e}): {l}")));
    all.filter(|e| e.get("job_id") == Some(id)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn job_worker_and_job_api_emit_emf_lines_a_team_can_alarm_on() {
    use ferry_lambda::metrics::{Capture, Metric};
    let capture = Capture::start();
    let e = env().await;
    let table = e.orders(30).await;
    let (code, v) = e.post(&export(&table, "csv", 1), OWNER).await;
    assert_eq!(code, 202, "{v}");
    let id = v["job"]["id"].as_str().unwrap().to_owned();
    let reports = e.lambda.invocations.settle().await;
    assert!(matches!(&reports[..], [Ok(WorkerReport::Succeeded { rows: 30, .. })]), "{reports:?}");
    let lines = job_metrics(&capture, &id);
    let started = lines.iter().find(|l| l.value(Metric::JobsStarted).is_some()).unwrap_or_else(|| panic!("no start: {lines:?}"));
    assert_eq!(
        (started.get("function"), started.get("kind"), started.value(Metric::JobsStarted)),
        (Some("job-worker"), Some("export"), Some(1.0))
    );
    let done = lines.iter().find(|l| l.value(Metric::JobsSucceeded).is_some()).unwrap_or_else(|| panic!("no end: {lines:?}"));
    assert_eq!(
        (done.get("function"), done.value(Metric::JobsSucceeded), done.value(Metric::JobRows)),
        (Some("job-worker"), Some(1.0), Some(30.0))
    );
    assert!(done.value(Metric::JobDuration).is_some_and(|ms| ms >= 0.0), "{done:?}");
    assert_eq!(lines.len(), 2, "one line per event: {lines:?}");

    // A worker that cannot be started: the API fails the job, and says so as job-api.
    e.lambda.invocations.refuse.store(true, Ordering::SeqCst);
    let (code, v) = e.post(&export(&table, "jsonl", 1), OWNER).await;
    assert_eq!(code, 503, "{v}");
    let id = v["job"]["id"].as_str().unwrap().to_owned();
    let lines = job_metrics(&capture, &id);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!((lines[0].get("function"), lines[0].value(Metric::JobsFailed)), (Some("job-api"), Some(1.0)), "{lines:?}");
}

/// A worker whose context carries no believable deadline: a local runtime's duration instead of a
/// time, none at all, one already past, or a placeholder ARN.
fn unbelievable_contexts() -> Vec<Context> {
    let now = job_invoker::settings::now_ms() as u64;
    [600_000, 0, now - 1000, u64::MAX]
        .into_iter()
        .map(|deadline| {
            let mut ctx = Context::default();
            ctx.deadline = deadline;
            ctx.invoked_function_arn = "function-arn".into();
            ctx
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_handed_an_unbelievable_deadline_finishes_within_its_budget() {
    let budget = Duration::from_secs(30);
    let e = env_with(Duration::from_secs(900), |s| {
        s.run_budget = budget;
        s.continue_margin = Duration::from_secs(5);
        s.page_size = 50;
    })
    .await;
    e.lambda.invocations.hold.store(true, Ordering::SeqCst);
    let table = e.orders(300).await;
    let conf = sdk_config();
    let (_, make) = api_and_worker(&conf, e.settings.clone(), e.lambda.client(&conf));
    let w = make(e.lambda.client(&conf));
    for ctx in unbelievable_contexts() {
        let deadline = ctx.deadline;
        // The same request again once the previous one ended: a new job.
        let (code, v) = e.post(&export(&table, "csv", 1), OWNER).await;
        assert_eq!(code, 202, "{v}");
        let id = v["job"]["id"].as_str().unwrap().to_owned();
        let start = Instant::now();
        let report = worker::handle(&w, LambdaEvent::new(json!({"job_id": id, "attempt": 0}), ctx)).await.unwrap();
        assert!(matches!(report, WorkerReport::Succeeded { rows: 300, .. }), "deadline {deadline}: {report:?}");
        assert!(start.elapsed() < budget, "deadline {deadline}: took {:?}", start.elapsed());
        assert_eq!(e.status(&id).await["status"], "succeeded");
    }
    let continued = e.lambda.invocations.received.lock().unwrap().iter().filter(|p| p["attempt"].as_u64() != Some(0)).count();
    assert_eq!(continued, 0, "no run handed over");
}

impl Env {
    /// Keys under the staging prefix of the export bucket.
    async fn staged(&self) -> Vec<String> {
        provision::list_keys(&self.s3, &self.settings.bucket, ferry_core::jobs::STAGING_PREFIX).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_export_leaves_no_staging_object_and_no_open_upload() {
    // Every run hands over after its first page with bytes carried; the second is out of continuations.
    let e = env_with(Duration::from_secs(2), |s| {
        s.continue_margin = Duration::from_millis(1990);
        s.page_size = 100;
        s.max_continuations = 1;
    })
    .await;
    let table = e.orders(1000).await;
    let (code, v) = e.post(&export(&table, "csv", 1), OWNER).await;
    assert_eq!(code, 202, "{v}");
    let id = v["job"]["id"].as_str().unwrap().to_owned();
    let reports = e.lambda.invocations.settle().await;
    assert!(matches!(reports.last(), Some(Ok(WorkerReport::Failed { .. }))), "{reports:?}");
    let v = e.status(&id).await;
    assert_eq!((v["status"].as_str(), v["error"]["code"].as_str()), (Some("failed"), Some("too_large")), "{v}");
    assert_eq!(e.staged().await, Vec::<String>::new(), "the carried bytes are deleted");
    assert_eq!(e.open_uploads().await, 0, "the export's multipart upload is aborted");
}

/// A bucket, table and API whose batch target `crm` is a local API answering after `delay`.
async fn batch_env(run_for: Duration, delay: Duration, tweak: impl FnOnce(&mut JobSettings)) -> (Env, ferry_testkit::target::LocalTarget) {
    let target = ferry_testkit::target::LocalTarget::start(ferry_testkit::target::outside_api(delay, None, Default::default()))
        .await
        .expect("starting the local target");
    let targets = json!({ "crm": { "url": target.url("items") } }).to_string();
    let e = env_with(run_for, |s| {
        s.batch_targets = ferry_core::batch::parse_targets(&targets).expect("targets");
        tweak(s);
    })
    .await;
    (e, target)
}

fn batch_of(n: u64) -> String {
    let items: Vec<Value> = (0..n).map(|i| json!({"id": format!("item-{i:05}")})).collect();
    json!({"kind": "batch", "params": {"target": "crm", "items": items, "max_concurrency": 2, "timeout_ms": 1000}}).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_batch_leaves_no_staging_object_and_no_open_upload() {
    // Every run hands over at once; the second is out of continuations.
    let (e, _target) = batch_env(Duration::from_secs(3), Duration::from_millis(50), |s| {
        s.continue_margin = Duration::from_millis(1990);
        s.max_continuations = 1;
    })
    .await;
    let (code, v) = e.post(&batch_of(200), OWNER).await;
    assert_eq!(code, 202, "{v}");
    let id = v["job"]["id"].as_str().unwrap().to_owned();
    let reports = e.lambda.invocations.settle().await;
    assert!(matches!(reports.last(), Some(Ok(WorkerReport::Failed { .. }))), "{reports:?}");
    assert_eq!(e.status(&id).await["status"], "failed");
    assert_eq!(e.staged().await, Vec::<String>::new(), "the carried state is deleted");
    assert_eq!(e.open_uploads().await, 0, "the results and failed-items uploads are aborted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cancelled_batch_leaves_no_staging_object_and_no_open_upload() {
    // Slow calls and a short lease: the cancel may reach the run through its heartbeat while a call
    // is in flight, and the run is dropped mid-call.
    let (e, target) = batch_env(Duration::from_secs(900), Duration::from_millis(800), |s| s.lease = Duration::from_secs(3)).await;
    let (code, v) = e.post(&batch_of(200), OWNER).await;
    assert_eq!(code, 202, "{v}");
    let id = v["job"]["id"].as_str().unwrap().to_owned();
    let start = Instant::now();
    while target.calls().len() < 2 {
        assert!(start.elapsed() < Duration::from_secs(20), "the batch never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (code, v) = call(&e.api, "DELETE", &format!("/jobs/{id}"), None, OWNER).await.unwrap();
    assert_eq!((code, v["job"]["status"].as_str()), (200, Some("cancelled")), "{v}");
    let reports = e.lambda.invocations.settle().await;
    assert!(matches!(&reports[..], [Ok(WorkerReport::Cancelled { .. })]), "{reports:?}");
    assert_eq!(e.staged().await, Vec::<String>::new());
    assert_eq!(e.open_uploads().await, 0, "the results and failed-items uploads are aborted");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_apis_kinds_are_the_workers_and_run_nothing() {
    let e = env().await;
    let (api, worker) = (&e.api.env.kinds, job_invoker::Registry::standard());
    assert_eq!(api.names(), worker.names());
    assert!(!api.names().is_empty());
    let params: Value = serde_json::from_str::<Value>(&export("orders", "csv", 1)).unwrap()["params"].clone();
    let job = ferry_core::jobs::JobRecord::queued("job-admitting", "seller-0001", "export", &params, 0, 60_000, 60_000);
    let leftovers = job_invoker::kind::Leftovers::default();
    for name in api.names() {
        assert_eq!(api.get(name).unwrap().describe(&params), worker.get(name).unwrap().describe(&params), "{name}");
        let step = job_invoker::kind::Step {
            env: &e.api.env,
            job: &job,
            checkpoint: None,
            deadline: job_invoker::settings::now_ms() + 60_000,
            leftovers: &leftovers,
        };
        let err = api.get(name).unwrap().run(step).await.expect_err("the API's kinds must not run");
        assert_eq!((err.kind, err.public.code), ("NotAWorker", ferry_core::public::ErrorCode::Internal), "{name}");
    }
    assert!(ferry_testkit::list_keys(&e.s3, &e.settings.bucket, "").await.is_empty(), "nothing was written");
}
