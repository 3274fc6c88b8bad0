//! The vote pipeline against moto: the real SDK, the real handlers, S3 events as S3 sends them.

use std::collections::HashMap;
use std::sync::Arc;

use aws_sdk_s3::primitives::ByteStream;
use ferry_aws::Store;
use ferry_aws::votes::{self, MergeOutcome, NormalizeOutcome, VoteSettings};
use ferry_core::merge::LocaleScores;
use ferry_core::{Method, tally};
use ferry_tests::{bucket, event_fixture, s3_put_event};
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
        ferry_tests::put_object(&self.s3, &self.bucket, key, body).await;
    }

    async fn get(&self, key: &str) -> Option<(String, String, HashMap<String, String>)> {
        let o = self.s3.get_object().bucket(&self.bucket).key(key).send().await.ok()?;
        let etag = o.e_tag().unwrap_or_default().to_owned();
        let meta = o.metadata().cloned().unwrap_or_default();
        let body = o.body.collect().await.expect("body").into_bytes();
        Some((String::from_utf8(body.to_vec()).expect("utf8"), etag, meta))
    }

    async fn keys(&self, prefix: &str) -> Vec<String> {
        ferry_tests::list_keys(&self.s3, &self.bucket, prefix).await
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
    let t = tally::read_tally("x", csv.as_bytes()).expect("valid test input");
    String::from_utf8(tally::write_locale_result(&ferry_core::normalize::normalize(method, &t))).expect("utf8")
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
    // The newest upload deleted: the result stays at what it was built from, never older.
    e.s3.delete_object().bucket(&e.bucket).key("data/7/tw-prod-202611221600.csv").send().await.unwrap();
    let r = e.normalize_event(&["data/7/tw-prod-202611221500.csv"]).await.unwrap();
    assert_eq!(r["records"][0]["outcome"], "superseded", "{r}");
    assert_eq!(e.get("result/7/prod/result-tw.csv").await.unwrap().0, expected_locale(new, Method::Share));
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
        inputs.push((l, tally::read_locale_result(l, body.as_bytes()).unwrap()));
    }
    assert_eq!(meta[votes::META_INPUTS], manifest.join(";"));
    let scores: Vec<LocaleScores<'_>> = inputs.iter().map(|(l, r)| LocaleScores { locale: l, weight: 1.0, scores: r }).collect();
    let expect = ferry_core::merge::merge(&scores).unwrap();
    assert_eq!(global, String::from_utf8(tally::write_global_result(&expect.locales, expect.rows())).unwrap());
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
        let key = format!("data/3/jp-prod-202611{d:02}{h:02}{m:02}.csv");
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
    e.put("data/3/jp-prod-202612010000.csv", "kseq,score\nnewest,1\n").await;
    let out = votes::normalize_upload(&e.store(), &VoteSettings::default(), "data/3/jp-prod-202611010000.csv").await.unwrap();
    assert!(matches!(&out, NormalizeOutcome::Written { source, .. } if source == "data/3/jp-prod-202612010000.csv"), "{out:?}");
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
