//! Async jobs against moto: the real job API and worker handlers, the real SDK calls (DynamoDB, S3,
//! and Lambda `Invoke` served by a loopback endpoint that runs the worker in the background).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::{AttributeValue, PutRequest, WriteRequest};
use ferry_aws::jobs::{JobTable, WorkerPayload};
use ferry_demo::jobs::{LocalLambda, api_and_worker, call, count_xlsx_rows, seed_orders};
use ferry_tests::{sdk_config, unique};
use job_invoker::worker::{self, WorkerReport};
use job_invoker::{Api, JobSettings};
use lambda_runtime::{Context, LambdaEvent};
use serde_json::{Value, json};

const OWNER: Option<&str> = Some("seller-0001");

struct Env {
    api: Api,
    lambda: LocalLambda,
    settings: Arc<JobSettings>,
    dynamo: aws_sdk_dynamodb::Client,
    s3: aws_sdk_s3::Client,
}

/// A fresh jobs table and export bucket, the API, and a local Lambda endpoint running the worker
/// with a deadline `run_for` after each start.
async fn env_with(run_for: Duration, tweak: impl FnOnce(&mut JobSettings)) -> Env {
    let conf = sdk_config();
    let mut settings = JobSettings { table: unique("jobs"), bucket: unique("exports"), ..JobSettings::default() };
    tweak(&mut settings);
    let settings = Arc::new(settings);
    let dynamo = ferry_aws::clients::dynamodb(&conf);
    let s3 = ferry_aws::clients::s3(&conf);
    JobTable::new(dynamo.clone(), settings.table.clone()).create().await.expect("creating the jobs table");
    s3.create_bucket().bucket(&settings.bucket).send().await.expect("creating the export bucket");
    let (_, make) = api_and_worker(&conf, settings.clone(), ferry_aws::clients::lambda(&conf));
    let lambda = LocalLambda::start(&conf, run_for, make).await.expect("starting the local Lambda endpoint");
    let (api, _) = api_and_worker(&conf, settings.clone(), lambda.client(&conf));
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
    assert!(v["error"].as_str().unwrap().contains("stopped reporting progress"), "{v}");
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
    seed_orders(dynamo, &table, 0).await.unwrap();
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
                WriteRequest::builder().put_request(PutRequest::builder().set_item(Some(item)).build().unwrap()).build()
            })
            .collect();
        dynamo.batch_write_item().request_items(&table, writes).send().await.unwrap();
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
    let big = format!(r#"{{"kind":"export","params":{{"pad":"{}"}}}}"#, "x".repeat(20_000));
    let cases = [
        ("{not json", "body"),
        (r#"{"kind":"report","params":{}}"#, "kind"),
        (r#"{"kind":"export","params":{"source":{"type":"dynamodb_scan","table":"orders","segments":500},"format":"csv","columns":["a"]}}"#, "params.source.segments"),
        (r#"{"kind":"export","params":{"source":{"type":"dynamodb_scan","table":"orders"},"format":"csv"}}"#, "params.columns"),
        (r#"{"kind":"export","params":{"source":{"type":"dynamodb_scan","table":"orders"},"format":"pdf","columns":["a"]}}"#, "params"),
        (big.as_str(), "body"),
    ];
    for (body, field) in cases {
        let (code, v) = e.post(body, OWNER).await;
        assert_eq!(code, 400, "{body:.80}: {v}");
        assert_eq!(v["error"]["field"], field, "{v}");
        assert!(!v["error"]["message"].as_str().unwrap().is_empty());
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
    assert!(v["error"].as_str().unwrap().contains("could not be started"), "{v}");
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
    let expires: u64 = url.split("X-Amz-Expires=").nth(1).and_then(|s| s.split('&').next()).and_then(|s| s.parse().ok()).expect("an expiry");
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
    let e = env_with(Duration::from_secs(900), |s| s.page_size = 2).await;
    let data = unique("lake");
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
    let (code, v) = e.post(&body.to_string(), OWNER).await;
    assert_eq!(code, 202, "{v}");
    let id = v["job"]["id"].as_str().unwrap().to_owned();
    let reports = e.lambda.invocations.settle().await;
    assert!(matches!(&reports[..], [Ok(WorkerReport::Succeeded { rows: 4, .. })]), "{reports:?}");
    let key = ferry_core::jobs::export_key("seller-0001", &id, ferry_core::jobs::Format::Jsonl);
    let text = String::from_utf8(e.object(&key).await.unwrap()).unwrap();
    assert_eq!(text, "{\"id\":1,\"amount\":10}\n{\"id\":3,\"amount\":30}\n{\"id\":4,\"amount\":40.0}\n{\"id\":6,\"amount\":60.5}\n");
}
