//! The vote pipeline against moto: the real SDK, the real handlers, S3 events as S3 sends them.

use std::collections::HashMap;
use std::sync::Arc;

use aws_sdk_s3::primitives::ByteStream;
use ferry_aws::Store;
use ferry_aws::votes::{self, MergeOutcome, NormalizeOutcome, VoteSettings};
use ferry_core::merge::LocaleScores;
use ferry_core::{Method, csv};
use ferry_testkit::events::s3_put_event;
use ferry_testkit::{bucket, event_fixture};
use global_merger::Merger;
use lambda_runtime::{Context, LambdaEvent};
use regional_normalizer::Normalizer;

struct Env {
    s3: aws_sdk_s3::Client,
    bucket: String,
    normalizer: Normalizer,
    merger: Merger,
}

async fn env() -> Env {
    env_with(VoteSettings::default()).await
}

async fn env_with(settings: VoteSettings) -> Env {
    let (s3, bucket) = bucket("votes").await;
    Env { normalizer: Normalizer { s3: s3.clone(), settings }, merger: Merger { s3: s3.clone(), settings }, s3, bucket }
}

impl Env {
    fn store(&self) -> Store {
        Store::new(self.s3.clone(), self.bucket.clone())
    }

    async fn put(&self, key: &str, body: impl Into<Vec<u8>>) {
        ferry_testkit::put_object(&self.s3, &self.bucket, key, body).await;
    }

    async fn get(&self, key: &str) -> Option<(String, String, HashMap<String, String>)> {
        let o = self.s3.get_object().bucket(&self.bucket).key(key).send().await.ok()?;
        let etag = o.e_tag().unwrap_or_default().to_owned();
        let meta = o.metadata().cloned().unwrap_or_default();
        let body = o.body.collect().await.expect("body").into_bytes();
        Some((String::from_utf8(body.to_vec()).expect("utf8"), etag, meta))
    }

    async fn keys(&self, prefix: &str) -> Vec<String> {
        ferry_testkit::list_keys(&self.s3, &self.bucket, prefix).await
    }

    /// The ETag of `key` as a listing gives it (unquoted).
    async fn keys_etag(&self, key: &str) -> String {
        let heads = self.store().list(key).await.expect("list");
        heads.into_iter().find(|h| h.key == key).expect("listed").etag
    }

    async fn normalize_event(&self, keys: &[&str]) -> Result<serde_json::Value, String> {
        let event = LambdaEvent::new(s3_put_event(&self.bucket, keys), Context::default());
        regional_normalizer::handle(&self.normalizer, event)
            .await
            .map(|r| serde_json::to_value(r).expect("report"))
            .map_err(|e| e.to_string())
    }

    async fn merge_event(&self, keys: &[&str]) -> Result<serde_json::Value, String> {
        let event = LambdaEvent::new(s3_put_event(&self.bucket, keys), Context::default());
        global_merger::handle(&self.merger, event).await.map(|r| serde_json::to_value(r).expect("report")).map_err(|e| e.to_string())
    }
}

/// The locale result the offline contract gives for `csv`.
fn expected_locale(csv: &str, method: Method) -> String {
    let t = csv::read_tally("x", csv.as_bytes()).expect("valid test input");
    String::from_utf8(csv::write_locale_result(&ferry_core::normalize::normalize(method, &t))).expect("utf8")
}

const JP: &str = "kseq,score\n\"(1,2,3)\",5\nb,3\nc,2\n";
const JP_QUOTED: &str = "\u{feff}\"SCORE\",\"KSEQ\"\n\"5\",\"(1,2,3)\"\n\"3\",\"b\"\n\"2\",\"c\"\n";

#[tokio::test(flavor = "multi_thread")]
async fn normalizer_writes_the_locale_result() {
    let e = env().await;
    e.put("data/7/jp-prod-202611221530.csv", JP_QUOTED).await;
    let report = e.normalize_event(&["data/7/jp-prod-202611221530.csv"]).await.unwrap();
    assert_eq!(report["records"][0]["outcome"], "written", "{report}");
    let (body, _, meta) = e.get("result/7/prod/result-jp.csv").await.expect("result written");
    assert_eq!(body, "kseq,score,raw\n\"(1,2,3)\",0.5,5.0\nb,0.3,3.0\nc,0.2,2.0\n");
    assert_eq!(meta[votes::META_SOURCE_KEY], "data/7/jp-prod-202611221530.csv");
    assert_eq!(meta[votes::META_METHOD], "share");
    // Nothing is ever written under data/.
    assert_eq!(e.keys("data/").await, ["data/7/jp-prod-202611221530.csv"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn leading_slash_and_encoded_keys() {
    let e = env().await;
    e.put("/data/1/kr-prod-202611221530.csv", JP).await;
    // The fixture carries the key as S3 encodes it: %2Fdata%2F...
    let mut event = event_fixture("s3-put-leading-slash.json");
    event["Records"][0]["s3"]["bucket"]["name"] = e.bucket.clone().into();
    let report = regional_normalizer::handle(&e.normalizer, LambdaEvent::new(event, Context::default())).await.unwrap();
    let report = serde_json::to_value(report).unwrap();
    assert_eq!(report["records"][0]["outcome"], "written", "{report}");
    let (body, _, meta) = e.get("result/1/prod/result-kr.csv").await.expect("result written");
    assert_eq!(meta[votes::META_SOURCE_KEY], "/data/1/kr-prod-202611221530.csv");
    assert_eq!(body, expected_locale(JP, Method::Share));

    // A key with a space arrives as `+` and is decoded before parsing: it is outside the grammar.
    e.put("data/7/my file.csv", JP).await;
    let report = e.normalize_event(&["data/7/my file.csv"]).await.unwrap();
    assert_eq!(report["records"][0]["key"], "data/7/my file.csv");
    assert_eq!(report["records"][0]["status"], "skipped");
}

#[tokio::test(flavor = "multi_thread")]
async fn test_events_and_foreign_keys_are_skipped_without_writes() {
    let e = env().await;
    let report = regional_normalizer::handle(&e.normalizer, LambdaEvent::new(event_fixture("s3-test-event.json"), Context::default()))
        .await
        .unwrap();
    assert!(report.records.is_empty());
    e.put("data/7/notes.txt", "x").await;
    e.put("data/7/jp-prod-2026.csv", JP).await;
    let report = e.normalize_event(&["data/7/notes.txt", "data/7/jp-prod-2026.csv", "result/7/prod/result-jp.csv"]).await.unwrap();
    let statuses: Vec<&str> = report["records"].as_array().unwrap().iter().map(|r| r["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["skipped", "skipped", "skipped"]);
    assert!(e.keys("result/").await.is_empty());
    assert!(e.keys("global/").await.is_empty());
    // The merger ignores its own output and anything outside result/.
    let report = e.merge_event(&["global/7/prod/result-global.csv", "data/7/jp-prod-202611221530.csv"]).await.unwrap();
    assert_eq!(report["skipped"].as_array().unwrap().len(), 2);
    assert!(e.keys("global/").await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn out_of_order_and_duplicate_events_never_go_backwards() {
    let e = env().await;
    let old = "kseq,score\na,1\n";
    let new = "kseq,score\na,1\nb,3\n";
    e.put("data/7/tw-prod-202611221500.csv", old).await;
    e.put("data/7/tw-prod-202611221600.csv", new).await;
    // The event of the older upload arrives first: the newest is normalised anyway.
    let r = e.normalize_event(&["data/7/tw-prod-202611221500.csv"]).await.unwrap();
    assert_eq!(r["records"][0]["source"], "data/7/tw-prod-202611221600.csv", "{r}");
    let (body, etag, _) = e.get("result/7/prod/result-tw.csv").await.unwrap();
    assert_eq!(body, expected_locale(new, Method::Share));
    // The newer event, a duplicate, and the late older one change nothing.
    for key in ["data/7/tw-prod-202611221600.csv", "data/7/tw-prod-202611221600.csv", "data/7/tw-prod-202611221500.csv"] {
        let r = e.normalize_event(&[key]).await.unwrap();
        assert_eq!(r["records"][0]["outcome"], "up_to_date", "{r}");
    }
    let (_, etag2, _) = e.get("result/7/prod/result-tw.csv").await.unwrap();
    assert_eq!(etag, etag2, "an up-to-date result is not rewritten");
    // The newest upload deleted: the next event rebuilds from the newest that remains.
    e.s3.delete_object().bucket(&e.bucket).key("data/7/tw-prod-202611221600.csv").send().await.unwrap();
    let r = e.normalize_event(&["data/7/tw-prod-202611221500.csv"]).await.unwrap();
    assert_eq!(
        (&r["records"][0]["outcome"], &r["records"][0]["source"]),
        (&"written".into(), &"data/7/tw-prod-202611221500.csv".into()),
        "{r}"
    );
    assert_eq!(e.get("result/7/prod/result-tw.csv").await.unwrap().0, expected_locale(old, Method::Share));
}

/// The minute `secs` from now, as an uploader with that clock would stamp it.
fn stamp_in(secs: i64) -> ferry_core::key::Stamp {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() as i64;
    ferry_core::key::Stamp::from_unix_seconds(now + secs)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_future_stamped_upload_never_freezes_the_locale() {
    let e = env().await;
    let future = "data/7/jp-prod-999912312359.csv";
    e.put(future, "kseq,score\nfuture,1\n").await;
    let r = e.normalize_event(&[future]).await.unwrap();
    assert_eq!(r["records"][0]["outcome"], "stamped_ahead", "{r}");
    assert_eq!(r["records"][0]["skipped"], serde_json::json!([future]), "{r}");
    assert!(e.keys("result/").await.is_empty());
    // A result an older version built from it, as the newest upload it then took it for.
    let frozen = HashMap::from([
        (votes::META_SOURCE_KEY.to_owned(), future.to_owned()),
        (votes::META_SOURCE_ETAG.to_owned(), e.keys_etag(future).await),
        (votes::META_SOURCE_STAMP.to_owned(), "999912312359".to_owned()),
        (votes::META_METHOD.to_owned(), "share".to_owned()),
    ]);
    e.s3.put_object()
        .bucket(&e.bucket)
        .key("result/7/prod/result-jp.csv")
        .set_metadata(Some(frozen))
        .body(ByteStream::from_static(b"kseq,score,raw\nfuture,1.0,1.0\n"))
        .send()
        .await
        .unwrap();

    // A current upload, then its event: the result follows it.
    let current = format!("data/7/jp-prod-{}.csv", stamp_in(0));
    e.put(&current, JP).await;
    let r = e.normalize_event(&[&current]).await.unwrap();
    assert_eq!((&r["records"][0]["outcome"], &r["records"][0]["source"]), (&"written".into(), &current.clone().into()), "{r}");
    let (body, etag, _) = e.get("result/7/prod/result-jp.csv").await.unwrap();
    assert_eq!(body, expected_locale(JP, Method::Share));
    // A late event of the future upload changes nothing.
    let r = e.normalize_event(&[future]).await.unwrap();
    assert_eq!(r["records"][0]["outcome"], "up_to_date", "{r}");
    // An uploader whose clock runs two hours ahead is skipped too; half an hour is within the skew.
    let skewed = format!("data/7/jp-prod-{}.csv", stamp_in(2 * 3600));
    e.put(&skewed, "kseq,score\nskewed,1\n").await;
    let r = e.normalize_event(&[&skewed]).await.unwrap();
    assert_eq!((&r["records"][0]["outcome"], &r["records"][0]["source"]), (&"up_to_date".into(), &current.clone().into()), "{r}");
    assert_eq!(e.get("result/7/prod/result-jp.csv").await.unwrap().1, etag);
    // The future upload deleted (as lifecycle would): the result still follows the current one.
    e.s3.delete_object().bucket(&e.bucket).key(future).send().await.unwrap();
    e.s3.delete_object().bucket(&e.bucket).key(&skewed).send().await.unwrap();
    let r = e.normalize_event(&[&current]).await.unwrap();
    assert_eq!((&r["records"][0]["outcome"], &r["records"][0]["source"]), (&"up_to_date".into(), &current.clone().into()), "{r}");
    let ahead = format!("data/7/jp-prod-{}.csv", stamp_in(30 * 60));
    e.put(&ahead, "kseq,score\nahead,1\n").await;
    let r = e.normalize_event(&[&ahead]).await.unwrap();
    assert_eq!((&r["records"][0]["outcome"], &r["records"][0]["source"]), (&"written".into(), &ahead.clone().into()), "{r}");
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_normalizers_settle_on_the_newest_upload() {
    let e = Arc::new(env().await);
    let mut keys = Vec::new();
    for minute in 0..8 {
        let key = format!("data/7/na-prod-2026112216{minute:02}.csv");
        e.put(&key, format!("kseq,score\na,1\nm{minute},{}\n", minute + 1)).await;
        keys.push(key);
    }
    let tasks: Vec<_> = keys
        .iter()
        .rev()
        .cycle()
        .take(24)
        .map(|k| {
            let e = e.clone();
            let k = k.clone();
            tokio::spawn(async move { e.normalize_event(&[&k]).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let (body, _, meta) = e.get("result/7/prod/result-na.csv").await.unwrap();
    assert_eq!(meta[votes::META_SOURCE_KEY], "data/7/na-prod-202611221607.csv");
    assert_eq!(body, expected_locale("kseq,score\na,1\nm7,8\n", Method::Share));
}

#[tokio::test(flavor = "multi_thread")]
async fn stages_never_mix() {
    let e = env().await;
    e.put("data/7/jp-prod-202611221530.csv", JP).await;
    e.put("data/7/jp-qa-202611221531.csv", "kseq,score\nqa-only,1\n").await;
    e.normalize_event(&["data/7/jp-prod-202611221530.csv", "data/7/jp-qa-202611221531.csv"]).await.unwrap();
    e.merge_event(&["result/7/prod/result-jp.csv", "result/7/qa/result-jp.csv"]).await.unwrap();
    let (prod, _, _) = e.get("global/7/prod/result-global.csv").await.unwrap();
    let (qa, _, _) = e.get("global/7/qa/result-global.csv").await.unwrap();
    assert!(!prod.contains("qa-only"));
    assert_eq!(qa, "kseq,score,jp\nqa-only,1.0,1.0\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_leaves_the_previous_result_untouched() {
    let settings = VoteSettings { max_input_bytes: 200, ..VoteSettings::default() };
    let e = env_with(settings).await;
    e.put("data/7/jp-prod-202611221500.csv", JP).await;
    e.normalize_event(&["data/7/jp-prod-202611221500.csv"]).await.unwrap();
    let (before, etag, _) = e.get("result/7/prod/result-jp.csv").await.unwrap();

    let big = format!("kseq,score\n{}", "k,1\n".repeat(60));
    let cases: [(&[u8], &str); 6] = [
        (b"key,votes\na,1\n", "line 1: the header has no `kseq` column"),
        (b"kseq,score\na,1\nb,many\n", "line 3: field `score` is not a number: \"many\""),
        (b"kseq,score\na,1\nb,-4\n", "line 3: field `score` is negative"),
        (b"kseq,score\na,1\n\"\",4\n", "line 3: field `kseq` is empty"),
        (b"kseq,score\na,1\nb\xff,4\n", "line 3: field `kseq` is not valid UTF-8"),
        (big.as_bytes(), "over the limit of 200 bytes"),
    ];
    for (minute, (body, expect)) in (1..).zip(cases) {
        let key = format!("data/7/jp-prod-2026112216{minute:02}.csv");
        e.put(&key, body).await;
        let err = e.normalize_event(&[&key]).await.unwrap_err();
        assert!(err.contains(&key), "{err:?} does not name {key}");
        assert!(err.contains(expect), "{err:?} does not say {expect:?}");
        let (after, etag2, _) = e.get("result/7/prod/result-jp.csv").await.unwrap();
        assert_eq!((&after, &etag2), (&before, &etag), "a bad upload changed the result");
        e.s3.delete_object().bucket(&e.bucket).key(&key).send().await.unwrap();
    }
}

const NEWLINES_KEY: &str = "data/7/jp-prod-202611221530.csv";
/// Names the bucket for [`normalizer_in_a_child_process`], and says it is the child.
const CHILD_BUCKET: &str = "FERRY_TEST_CHILD_BUCKET";
const CHILD_ENDPOINT: &str = "FERRY_TEST_CHILD_ENDPOINT";

/// A header and 50 M newlines: refused as bad input, having cost about the body once. Before, the
/// key table was sized by counting newlines (a table for 50 M keys), and the body was copied twice.
#[tokio::test(flavor = "multi_thread")]
async fn a_body_of_newlines_is_bad_input_in_bounded_memory() {
    let e = env().await;
    let mut body = b"kseq,score\n".to_vec();
    body.resize(body.len() + 50_000_000, b'\n');
    let size = body.len() as u64;
    e.put(NEWLINES_KEY, body).await;
    // Peak memory is a property of a process: the normalizer runs alone in a child.
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["votes::normalizer_in_a_child_process", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_BUCKET, &e.bucket)
        .env(CHILD_ENDPOINT, ferry_testkit::moto_endpoint())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    // libtest prints the report after the test's name, on the same line.
    let line = stdout
        .lines()
        .find_map(|l| Some(l.split_once("child report: ")?.1))
        .unwrap_or_else(|| panic!("no report from the child: {stdout}"));
    let report: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(report["error_type"], "BadInput", "{report}");
    let message = report["message"].as_str().unwrap();
    assert!(message.contains(&format!("{NEWLINES_KEY}: line 2: the line is blank")), "{message}");
    let grew = (report["peak_kb"].as_u64().unwrap() - report["before_kb"].as_u64().unwrap()) * 1024;
    assert!(grew < size + size / 2, "the normalizer grew by {grew} bytes on a {size}-byte upload");
    assert!(e.keys("result/").await.is_empty());
}

/// Does nothing unless started by [`a_body_of_newlines_is_bad_input_in_bounded_memory`].
#[tokio::test(flavor = "multi_thread")]
async fn normalizer_in_a_child_process() {
    let (Ok(bucket), Ok(endpoint)) = (std::env::var(CHILD_BUCKET), std::env::var(CHILD_ENDPOINT)) else { return };
    let creds = aws_sdk_s3::config::Credentials::new("testing", "testing", None, None, "ferry-tests");
    let conf = aws_config::SdkConfig::builder()
        .behavior_version(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(aws_sdk_s3::config::SharedCredentialsProvider::new(creds))
        .build();
    let normalizer = Normalizer { s3: ferry_aws::clients::s3(&conf), settings: VoteSettings::default() };
    let status_kb = |field: &str| -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find_map(|l| l.strip_prefix(field)).unwrap();
        line.trim_start_matches(':').trim().trim_end_matches("kB").trim().parse().unwrap()
    };
    let before_kb = status_kb("VmRSS");
    let event = LambdaEvent::new(s3_put_event(&bucket, &[NEWLINES_KEY]), Context::default());
    let result = regional_normalizer::handle(&normalizer, event).await;
    let peak_kb = status_kb("VmHWM");
    let d = result.err().map(lambda_runtime::Diagnostic::from);
    let report = serde_json::json!({
        "error_type": d.as_ref().map(|d| d.error_type.clone()),
        "message": d.as_ref().map(|d| d.error_message.clone()),
        "before_kb": before_kb,
        "peak_kb": peak_kb,
    });
    println!("child report: {report}");
}

fn settings(vars: &[(&str, &str)]) -> VoteSettings {
    let vars: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    VoteSettings::from_vars(|name| vars.get(name).cloned()).expect("valid settings")
}

/// A cap set larger than the function's memory holds refuses to start, naming both; a cap left
/// unset is lowered to what the memory holds.
#[test]
fn a_cap_over_the_memory_refuses_to_start() {
    let memory = ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "1024");
    let s = settings(&[memory, ("FERRY_MAX_INPUT_BYTES", "419430400"), ("FERRY_MAX_MERGE_BYTES", "419430400")]);
    for e in [s.check_normalizer_memory().unwrap_err(), s.check_merger_memory().unwrap_err()] {
        let e = e.to_string();
        assert!(e.contains(" = 419430400 bytes does not fit in the function's 1024 MB"), "{e}");
    }
    let unset = settings(&[memory]);
    assert!(unset.check_normalizer_memory().is_ok() && unset.check_merger_memory().is_ok());
    let fits = ferry_core::budget::NORMALIZE.max_input(1024);
    assert!(unset.max_input_bytes == fits && fits < 400 << 20, "{unset:?}");
    // The template's memory holds the default caps.
    let deployed = settings(&[("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "2496"), ("FERRY_MAX_INPUT_BYTES", "536870912")]);
    assert!(deployed.check_normalizer_memory().is_ok(), "{deployed:?}");
    // Off Lambda there is no memory to check against.
    let local = settings(&[("FERRY_MAX_INPUT_BYTES", "999999999999"), ("FERRY_MAX_CLOCK_SKEW", "90m")]);
    assert!(local.check_normalizer_memory().is_ok());
    assert_eq!((local.max_merge_bytes, local.max_clock_skew_secs), (VoteSettings::default().max_merge_bytes, 5400));
    let bad = VoteSettings::from_vars(|name| (name == "FERRY_MAX_CLOCK_SKEW").then(|| "1 day".to_owned())).unwrap_err();
    assert!(bad.starts_with("FERRY_MAX_CLOCK_SKEW: "), "{bad}");
}

/// Short distinct keys pack more keys into a byte than the size cap assumes: an upload under the cap
/// that the function's memory cannot normalise is refused as bad input where its keys outgrow the
/// memory, and the locale result it would have replaced stays as it was.
#[tokio::test(flavor = "multi_thread")]
async fn an_upload_under_the_cap_with_more_keys_than_the_memory_holds_is_refused() {
    // 65 MB: 1 MiB to spend past the reserve; the cap left unset, so lowered to what that holds.
    let settings = settings(&[("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "65")]);
    assert_eq!(settings.memory_mb, Some(65));
    assert!(settings.check_normalizer_memory().is_ok(), "{settings:?}");
    let e = env_with(settings).await;
    e.put("data/7/jp-prod-202611221500.csv", JP).await;
    let first = votes::normalize_upload(&e.store(), &settings, "data/7/jp-prod-202611221500.csv").await.unwrap();
    assert!(matches!(first, NormalizeOutcome::Written { .. }), "{first:?}");
    let (before, etag, _) = e.get("result/7/prod/result-jp.csv").await.unwrap();

    let key = "data/7/jp-prod-202611221600.csv";
    let mut body = String::from("kseq,score\n");
    for i in 0..20_000 {
        body.push_str(&format!("k{i:05},1\n"));
    }
    assert!((body.len() as u64) < settings.max_input_bytes, "{} bytes is under the cap of {}", body.len(), settings.max_input_bytes);
    e.put(key, body).await;
    let err = votes::normalize_upload(&e.store(), &settings, key).await.unwrap_err();
    assert_eq!(err.kind(), "BadInput", "{err}");
    let votes::VoteError::Tally(t) = &err else { panic!("not a tally error: {err:?}") };
    assert_eq!(t.source_name, key);
    let csv::TallyErrorKind::OverMemory { keys, memory } = t.kind else { panic!("not OverMemory: {t:?}") };
    assert_eq!(memory, ferry_core::budget::usable_bytes(Some(65)));
    assert!(keys > 1000 && keys < 20_000, "refused where the keys outgrew the memory, not at the end: {keys}");
    assert!(err.to_string().contains("need more than the 1048576 bytes of memory"), "{err}");
    // Through the handler as well: a failed invocation naming the upload.
    let handled = e.normalize_event(&[key]).await.unwrap_err();
    assert!(handled.contains(key) && handled.contains("distinct keys"), "{handled}");
    let (after, etag2, meta) = e.get("result/7/prod/result-jp.csv").await.unwrap();
    assert_eq!((&after, &etag2), (&before, &etag), "a refused upload changed the result");
    assert_eq!(meta[votes::META_SOURCE_KEY], "data/7/jp-prod-202611221500.csv");
    assert_eq!(e.keys("result/").await, ["result/7/prod/result-jp.csv"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stage_over_the_merge_cap_is_refused_unread() {
    let settings = VoteSettings { max_merge_bytes: 50, ..VoteSettings::default() };
    let e = env_with(settings).await;
    e.put("result/6/prod/result-jp.csv", "kseq,score,raw\na,0.5,1.0\nb,0.5,1.0\n").await;
    e.merge_event(&["result/6/prod/result-jp.csv"]).await.unwrap();
    let (before, etag, _) = e.get("global/6/prod/result-global.csv").await.unwrap();
    e.put("result/6/prod/result-kr.csv", "kseq,score,raw\nc,1.0,1.0\n").await;
    let err = e.merge_event(&["result/6/prod/result-kr.csv"]).await.unwrap_err();
    assert!(err.contains("global/6/prod/result-global.csv: its inputs total 60 bytes, over FERRY_MAX_MERGE_BYTES = 50 bytes"), "{err}");
    let (after, etag2, _) = e.get("global/6/prod/result-global.csv").await.unwrap();
    assert_eq!((after, etag2), (before, etag), "a refused merge changed the global result");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_object_is_skipped_not_retried() {
    let e = env().await;
    let report = e.normalize_event(&["data/7/jp-prod-202611221530.csv"]).await.unwrap();
    assert_eq!(report["records"][0]["outcome"], "missing", "{report}");
    assert!(e.keys("result/").await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn merger_applies_config_and_records_its_inputs() {
    let e = env().await;
    e.put("config/8.json", r#"{"method":"rank","weights":{"kr":2.0}}"#).await;
    e.put("data/8/jp-prod-202611221530.csv", "kseq,score\na,10\nb,5\n").await;
    e.put("data/8/kr-prod-202611221530.csv", "kseq,score\nb,7\nc,1\n").await;
    e.normalize_event(&["data/8/jp-prod-202611221530.csv", "data/8/kr-prod-202611221530.csv"]).await.unwrap();
    let (jp, _, meta) = e.get("result/8/prod/result-jp.csv").await.unwrap();
    assert_eq!(meta[votes::META_METHOD], "rank");
    assert_eq!(jp, "kseq,score,raw\na,1.0,10.0\nb,0.5,5.0\n");
    let report = e.merge_event(&["result/8/prod/result-jp.csv", "result/8/prod/result-kr.csv"]).await.unwrap();
    assert_eq!(report["merges"].as_array().unwrap().len(), 1, "one merge per stage: {report}");
    let (global, _, meta) = e.get("global/8/prod/result-global.csv").await.unwrap();
    // b: jp 0.5 + kr 2 x 1.0; a: jp 1.0; c: kr 2 x 0.5
    assert_eq!(global, "kseq,score,jp,kr\nb,2.5,0.5,2.0\na,1.0,1.0,0.0\nc,1.0,0.0,1.0\n");
    let inputs = &meta[votes::META_INPUTS];
    let jp_etag = e.get("result/8/prod/result-jp.csv").await.unwrap().1.trim_matches('"').to_owned();
    assert!(inputs.starts_with(&format!("jp={jp_etag};kr=")), "{inputs}");
    // A duplicate event finds the global already built from these inputs.
    let report = e.merge_event(&["result/8/prod/result-kr.csv"]).await.unwrap();
    assert_eq!(report["merges"][0]["outcome"], "up_to_date", "{report}");
    // New weights with the same inputs are a new global.
    e.put("config/8.json", r#"{"method":"rank","weights":{"kr":0.0}}"#).await;
    let report = e.merge_event(&["result/8/prod/result-kr.csv"]).await.unwrap();
    assert_eq!(report["merges"][0]["outcome"], "written", "{report}");
    let (global, _, meta) = e.get("global/8/prod/result-global.csv").await.unwrap();
    assert_eq!(
        global,
        "kseq,score,jp,kr
a,1.0,1.0,0.0
b,0.5,0.5,0.0
c,0.0,0.0,0.0
"
    );
    assert_eq!(meta[votes::META_WEIGHTS], "jp=1;kr=0");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_config_names_itself() {
    let e = env().await;
    e.put("config/9.json", r#"{"method":"median"}"#).await;
    e.put("data/9/jp-prod-202611221530.csv", JP).await;
    let err = e.normalize_event(&["data/9/jp-prod-202611221530.csv"]).await.unwrap_err();
    assert!(err.contains("config/9.json") && err.contains("median"), "{err}");
    assert!(e.keys("result/").await.is_empty());
}

/// Many merges race while locale results keep changing: the global that remains is always the merge
/// of the locale results that remain, never a slower merge's stale view.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_merges_never_leave_a_stale_global() {
    let e = Arc::new(env().await);
    let locales = ["jp", "kr", "na", "tw"];
    let mut tasks = Vec::new();
    for round in 0..6 {
        for (i, l) in locales.iter().enumerate() {
            let key = format!("result/5/prod/result-{l}.csv");
            let rows = format!("kseq,score,raw\nk{round},{}.0,1\nshared,{}.0,1\n", i + 1, round + 1);
            e.put(&key, rows).await;
            for _ in 0..3 {
                let e = e.clone();
                let key = key.clone();
                tasks.push(tokio::spawn(async move { e.merge_event(&[&key]).await }));
            }
        }
    }
    for t in tasks {
        let r = t.await.unwrap();
        assert!(r.is_ok(), "{r:?}");
    }
    // Whatever order they finished in, the last write reflects the final inputs.
    let (global, _, meta) = e.get("global/5/prod/result-global.csv").await.unwrap();
    let mut inputs = Vec::new();
    let mut manifest = Vec::new();
    for l in locales {
        let (body, etag, _) = e.get(&format!("result/5/prod/result-{l}.csv")).await.unwrap();
        manifest.push(format!("{l}={}", etag.trim_matches('"')));
        inputs.push((l, csv::read_locale_result(l, body.as_bytes()).unwrap()));
    }
    assert_eq!(meta[votes::META_INPUTS], manifest.join(";"));
    let scores: Vec<LocaleScores<'_>> = inputs.iter().map(|(l, r)| LocaleScores { locale: l, weight: 1.0, scores: r }).collect();
    let expect = ferry_core::merge::merge(&scores).unwrap();
    assert_eq!(global, String::from_utf8(csv::write_global_result(&expect.locales, expect.rows())).unwrap());
    // And a merge now has nothing to do.
    let out = votes::merge_stage(&e.store(), &VoteSettings::default(), 5, "prod").await.unwrap();
    assert!(matches!(out, MergeOutcome::UpToDate { .. }), "{out:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn paginated_listing_finds_the_newest_upload() {
    let e = env().await;
    // More uploads than one ListObjectsV2 page (1,000) holds.
    let mut puts = Vec::new();
    for i in 0..1100u32 {
        let (d, h, m) = (1 + i / 1440, (i / 60) % 24, i % 60);
        let key = format!("data/3/jp-prod-202510{d:02}{h:02}{m:02}.csv");
        let s3 = e.s3.clone();
        let b = e.bucket.clone();
        puts.push(async move { s3.put_object().bucket(b).key(key).body(ByteStream::from_static(b"kseq,score\na,1\n")).send().await });
        if puts.len() == 50 {
            for r in futures::future::join_all(std::mem::take(&mut puts)).await {
                r.unwrap();
            }
        }
    }
    for r in futures::future::join_all(puts).await {
        r.unwrap();
    }
    e.put("data/3/jp-prod-202511010000.csv", "kseq,score\nnewest,1\n").await;
    let out = votes::normalize_upload(&e.store(), &VoteSettings::default(), "data/3/jp-prod-202510010000.csv").await.unwrap();
    assert!(matches!(&out, NormalizeOutcome::Written { source, .. } if source == "data/3/jp-prod-202511010000.csv"), "{out:?}");
}

/// The S3 semantics the merger's race safety rests on: a write conditional on an ETag that has
/// since changed, or on absence when the object exists, is refused.
#[tokio::test(flavor = "multi_thread")]
async fn conditional_writes_refuse_stale_writers() {
    use ferry_aws::s3::{NewObject, Precondition, Put};
    let e = env().await;
    let store = e.store();
    let put = |body: &'static str, precondition| NewObject {
        body: body.into(),
        content_type: "text/csv",
        metadata: HashMap::new(),
        precondition: Some(precondition),
    };
    let Put::Written { etag: first } = store.put("global/1/prod/result-global.csv", put("a", Precondition::IfAbsent)).await.unwrap() else {
        panic!("first write refused");
    };
    assert_eq!(store.put("global/1/prod/result-global.csv", put("b", Precondition::IfAbsent)).await.unwrap(), Put::Conflict);
    let Put::Written { etag: second } =
        store.put("global/1/prod/result-global.csv", put("c", Precondition::IfMatch(first.clone()))).await.unwrap()
    else {
        panic!("write on the current ETag refused");
    };
    // A slow writer still holding the first ETag loses, and the newer object stays.
    assert_eq!(store.put("global/1/prod/result-global.csv", put("stale", Precondition::IfMatch(first))).await.unwrap(), Put::Conflict);
    let (body, etag, _) = e.get("global/1/prod/result-global.csv").await.unwrap();
    assert_eq!((body.as_str(), etag.trim_matches('"')), ("c", second.as_str()));
}
