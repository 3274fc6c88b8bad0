//! The regional edge against a real redis-server and moto: push a sorted set to S3 as a regional
//! upload, pull the global result back into Redis atomically, and tell a (local) chat webhook.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_aws::Store;
use ferry_aws::votes::{self, VoteSettings};
use ferry_core::csv::{self, GlobalRow};
use ferry_core::key::Stamp;
use ferry_core::ranking::Movement;
use ferry_edge::{ChatError, ChatStatus, EdgeError, PullConfig, PullOutcome, PushConfig, Webhook};
use ferry_testkit::redis::redis_url;
use ferry_testkit::{bucket, unique};
use redis::aio::MultiplexedConnection;

struct Env {
    s3: aws_sdk_s3::Client,
    bucket: String,
    conn: MultiplexedConnection,
}

async fn env() -> Env {
    let (s3, bucket) = bucket("edge").await;
    let conn = ferry_edge::connect(&redis_url()).await.expect("connecting to the test redis-server");
    Env { s3, bucket, conn }
}

fn no_progress(_: u64, _: u64) {}

fn now_stamp() -> Stamp {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs();
    Stamp::from_unix_seconds(secs as i64)
}

fn pairs(rows: &[(&str, f64)]) -> Vec<(String, f64)> {
    rows.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
}

/// A global result in the contract's own writer, one locale column.
fn global_csv(rows: &[(String, f64)]) -> Vec<u8> {
    let rows: Vec<GlobalRow<'_>> =
        rows.iter().map(|(k, v)| GlobalRow { kseq: k, score: *v, contributions: std::slice::from_ref(v) }).collect();
    csv::write_global_result(&["jp".to_owned()], rows)
}

fn pull_cfg(key: &str) -> PullConfig<'_> {
    PullConfig { key, evno: 4, stage: "prod", max_input_bytes: 1 << 30, batch: 1000, top: 5, force: false }
}

impl Env {
    fn store(&self) -> Store {
        Store::new(self.s3.clone(), self.bucket.clone())
    }

    async fn put(&self, key: &str, body: impl Into<Vec<u8>>) {
        ferry_testkit::put_object(&self.s3, &self.bucket, key, body).await;
    }

    async fn get(&self, key: &str) -> (Vec<u8>, String) {
        let o = self.s3.get_object().bucket(&self.bucket).key(key).send().await.expect("get");
        let etag = o.e_tag().unwrap_or_default().to_owned();
        (o.body.collect().await.expect("body").into_bytes().to_vec(), etag)
    }

    async fn keys(&self, prefix: &str) -> Vec<String> {
        ferry_testkit::list_keys(&self.s3, &self.bucket, prefix).await
    }

    async fn put_global(&self, rows: &[(String, f64)]) {
        self.put("global/4/prod/result-global.csv", global_csv(rows)).await;
    }

    /// Adds members in pipelined batches.
    async fn fill(&self, key: &str, rows: &[(String, f64)]) {
        let mut conn = self.conn.clone();
        for chunk in rows.chunks(10_000) {
            let mut pipe = redis::pipe();
            let cmd = pipe.cmd("ZADD").arg(key);
            for (k, v) in chunk {
                cmd.arg(*v).arg(k.as_str());
            }
            pipe.query_async::<()>(&mut conn).await.expect("ZADD");
        }
    }

    /// The whole (small) sorted set in one reply, sorted by member.
    async fn zset(&self, key: &str) -> Vec<(String, f64)> {
        let mut conn = self.conn.clone();
        let mut rows: Vec<(String, f64)> =
            redis::cmd("ZRANGE").arg(key).arg(0).arg(-1).arg("WITHSCORES").query_async(&mut conn).await.expect("ZRANGE");
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        rows
    }

    async fn meta(&self, key: &str, field: &str) -> Option<String> {
        let mut conn = self.conn.clone();
        redis::cmd("HGET").arg(format!("{key}:meta")).arg(field).query_async(&mut conn).await.expect("HGET")
    }

    /// Temporary load keys left behind under `key`.
    async fn leftovers(&self, key: &str) -> Vec<String> {
        let mut conn = self.conn.clone();
        redis::cmd("KEYS").arg(format!("{key}:load:*")).query_async(&mut conn).await.expect("KEYS")
    }

    async fn push(&self, key: &str, stamp: Stamp) -> Result<ferry_edge::PushOutcome, EdgeError> {
        let cfg = PushConfig { key, evno: 4, locale: "jp", stage: "prod", stamp, page: 100 };
        ferry_edge::push(&self.store(), &mut self.conn.clone(), &cfg, &no_progress).await
    }

    async fn pull(&self, cfg: &PullConfig<'_>) -> Result<PullOutcome, EdgeError> {
        ferry_edge::pull(&self.store(), &mut self.conn.clone(), cfg, &no_progress).await
    }
}

fn sorted(mut rows: Vec<(String, f64)>) -> Vec<(String, f64)> {
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    rows
}

#[tokio::test(flavor = "multi_thread")]
async fn push_uploads_the_set_in_the_regional_contract_and_reruns_are_idempotent() {
    let e = env().await;
    let key = unique("rank");
    let members = pairs(&[("(1,2,3)", 5.0), ("say \"hi\"", 2.0), ("plain", 0.0), ("half", 1.5)]);
    // More members than one ZSCAN page of 100, so paging is exercised past the listpack encoding.
    let mut all = members.clone();
    all.extend((0..450).map(|i| (format!("m{i}"), f64::from(i % 7))));
    e.fill(&key, &all).await;

    let stamp = now_stamp();
    let out = e.push(&key, stamp).await.expect("push");
    assert_eq!(out.upload, format!("data/4/jp-prod-{stamp}.csv"));
    assert_eq!(out.members, all.len());
    assert_eq!(out.sum, all.iter().map(|(_, v)| v).sum::<f64>());
    let (body, etag) = e.get(&out.upload).await;
    let t = csv::read_tally(&out.upload, &body).expect("the upload reads back through the contract");
    assert_eq!(sorted(t.iter().map(|(k, v)| (k.to_owned(), v)).collect()), sorted(all.clone()));

    // A cron rerun in the same minute writes the same key with the same bytes.
    let again = e.push(&key, stamp).await.expect("push again");
    assert_eq!(again.upload, out.upload);
    assert_eq!(e.get(&out.upload).await, (body, etag));
    assert_eq!(e.keys("data/").await, std::slice::from_ref(&out.upload));

    // And the normalizer takes it as any regional upload.
    let n = votes::normalize_upload(&e.store(), &VoteSettings::default(), &out.upload).await.expect("normalize");
    assert!(matches!(n, votes::NormalizeOutcome::Written { rows, .. } if rows == all.len()), "{n:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn push_of_a_million_members() {
    let e = env().await;
    let key = unique("rank-1m");
    let n = 1_000_000u32;
    let rows: Vec<(String, f64)> =
        (0..n).map(|i| (format!("({},{},{})", i / 10_000, (i / 100) % 100, i % 100), f64::from(i.wrapping_mul(7919) % 1000))).collect();
    let expected_sum: f64 = rows.iter().map(|(_, v)| v).sum();
    e.fill(&key, &rows).await;

    let pages = AtomicUsize::new(0);
    let cfg = PushConfig { key: &key, evno: 4, locale: "kr", stage: "prod", stamp: now_stamp(), page: 10_000 };
    let out = ferry_edge::push(&e.store(), &mut e.conn.clone(), &cfg, &|_, _| {
        pages.fetch_add(1, Ordering::Relaxed);
    })
    .await
    .expect("push");
    assert!(pages.load(Ordering::Relaxed) >= 50, "the set was read in pages, got {}", pages.load(Ordering::Relaxed));
    assert_eq!(out.members, n as usize);

    let (body, _) = e.get(&out.upload).await;
    let t = csv::read_tally(&out.upload, &body).expect("contract");
    assert_eq!(t.len(), n as usize);
    assert_eq!(t.values().iter().sum::<f64>(), expected_sum);
    assert_eq!(out.sum, expected_sum);
}

#[tokio::test(flavor = "multi_thread")]
async fn push_refuses_members_the_contract_cannot_carry_and_empty_sets() {
    let e = env().await;
    let cases: [(&str, f64, &str); 2] = [("negative", -3.0, "the score \"-3\" is negative"), ("infinite", f64::INFINITY, "is not finite")];
    for (member, score, expect) in cases {
        let key = unique("rank-bad");
        let mut conn = e.conn.clone();
        let _: () = redis::cmd("ZADD").arg(&key).arg(1).arg("fine").arg(score).arg(member).query_async(&mut conn).await.expect("ZADD");
        let err = e.push(&key, now_stamp()).await.expect_err("a bad member is refused");
        assert!(err.is_bad_data(), "{err:?}");
        let text = err.to_string();
        assert!(text.contains(&key) && text.contains(&format!("member \"{member}\"")) && text.contains(expect), "{text}");
    }
    let err = e.push(&unique("rank-none"), now_stamp()).await.expect_err("an empty set is refused");
    assert!(err.is_missing_input(), "{err:?}");
    assert!(e.keys("data/").await.is_empty(), "nothing was uploaded");
}

#[tokio::test(flavor = "multi_thread")]
async fn pull_replaces_the_set_keeps_the_previous_and_skips_an_unchanged_global() {
    let e = env().await;
    let key = unique("rank-live");
    let first = pairs(&[("a", 3.0), ("b", 2.0), ("c", 1.0), ("z", -0.5)]);
    e.put_global(&first).await;
    let out = e.pull(&pull_cfg(&key)).await.expect("pull");
    let PullOutcome::Loaded { members, first: was_first, etag, .. } = &out else { panic!("{out:?}") };
    assert_eq!((*members, *was_first), (4, true));
    assert_eq!(e.zset(&key).await, sorted(first.clone()));
    assert_eq!(e.meta(&key, "etag").await.as_deref(), Some(etag.as_str()));

    // A cron rerun with the same global reads nothing and changes nothing.
    let again = e.pull(&pull_cfg(&key)).await.expect("pull again");
    assert!(matches!(again, PullOutcome::UpToDate { .. }), "{again:?}");

    let second = pairs(&[("c", 9.0), ("a", 3.0), ("new", 2.5), ("b", 0.1)]);
    e.put_global(&second).await;
    let out = e.pull(&pull_cfg(&key)).await.expect("pull the new global");
    let PullOutcome::Loaded { changes, first: was_first, summary, .. } = &out else { panic!("{out:?}") };
    assert!(!was_first);
    assert_eq!(e.zset(&key).await, sorted(second.clone()));
    assert_eq!(e.zset(&format!("{key}:prev")).await, sorted(first.clone()), "the replaced ranking is kept");
    let moves: Vec<(&str, Movement)> = changes.top.iter().map(|c| (c.kseq.as_str(), c.movement)).collect();
    assert_eq!(moves, [("c", Movement::Up(2)), ("a", Movement::Down(1)), ("new", Movement::New), ("b", Movement::Down(2))]);
    assert_eq!(changes.left, [("z".to_owned(), 4)]);
    assert!(summary.contains(&key) && summary.contains("Left the top 4: z (was 4)"), "{summary}");

    // --force reloads the same global; a deleted live key is reloaded without it.
    let forced = e.pull(&PullConfig { force: true, ..pull_cfg(&key) }).await.expect("forced");
    assert!(matches!(forced, PullOutcome::Loaded { .. }), "{forced:?}");
    let mut conn = e.conn.clone();
    let _: () = redis::cmd("DEL").arg(&key).query_async(&mut conn).await.expect("DEL");
    let reloaded = e.pull(&pull_cfg(&key)).await.expect("reload");
    assert!(matches!(reloaded, PullOutcome::Loaded { .. }), "{reloaded:?}");
    assert_eq!(e.zset(&key).await, sorted(second));
    assert!(e.leftovers(&key).await.is_empty());
    let ttl: i64 = redis::cmd("TTL").arg(&key).query_async(&mut conn).await.expect("TTL");
    assert_eq!(ttl, -1, "the live ranking does not inherit the temporary key's expiry");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_or_malformed_global_leaves_the_set_untouched() {
    let e = env().await;
    let key = unique("rank-keep");
    let live = pairs(&[("keep", 7.0), ("me", 6.0)]);
    e.fill(&key, &live).await;

    let err = e.pull(&pull_cfg(&key)).await.expect_err("no global yet");
    assert!(err.is_missing_input(), "{err:?}");
    assert!(err.to_string().contains("global/4/prod/result-global.csv"), "{err}");
    assert_eq!(e.zset(&key).await, sorted(live.clone()));

    let big = format!("kseq,score\n{}", "k,1\n".repeat(100));
    let cases: [(&[u8], &str); 6] = [
        (b"kseq,score,jp\n", "has no rows"),
        (b"kseq,votes\na,1\n", "line 1: the header has no `score` column"),
        (b"kseq,score\na,1\nb,lots\n", "line 3: field `score` is not a number"),
        (b"kseq,score\na,1\na,2\n", "line 3: kseq \"a\" appears more than once"),
        (b"kseq,score\na,1\nb,2,3\n", "line 3: malformed CSV"),
        (big.as_bytes(), "over the limit of 300 bytes"),
    ];
    for (body, expect) in cases {
        e.put("global/4/prod/result-global.csv", body).await;
        let cfg = PullConfig { max_input_bytes: 300, ..pull_cfg(&key) };
        let err = e.pull(&cfg).await.expect_err("a malformed global is refused");
        let text = err.to_string();
        assert!(err.is_bad_data(), "{err:?}");
        assert!(text.contains("global/4/prod/result-global.csv") && text.contains(expect), "{text:?} does not say {expect:?}");
        assert_eq!(e.zset(&key).await, sorted(live.clone()), "{expect}: the live set changed");
        assert!(e.leftovers(&key).await.is_empty());
        assert_eq!(e.meta(&key, "etag").await, None);
    }
}

/// Readers that read the whole ranking in one reply while pulls swap it back and forth: each sees
/// the complete old ranking or the complete new one, never a mix or a partial load.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readers_during_a_pull_see_the_old_or_the_new_ranking_in_full() {
    let e = Arc::new(env().await);
    let key = unique("rank-swap");
    let n = 20_000;
    let old: Vec<(String, f64)> = (0..n).map(|i| (format!("old-{i}"), f64::from(i))).collect();
    let new: Vec<(String, f64)> = (0..n).map(|i| (format!("new-{i}"), f64::from(n - i))).collect();
    e.fill(&key, &old).await;

    let done = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new((0usize, 0usize)));
    let mut readers = Vec::new();
    for _ in 0..3 {
        let (done, seen, key) = (done.clone(), seen.clone(), key.clone());
        let mut conn = ferry_edge::connect(&redis_url()).await.expect("reader connection");
        readers.push(tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                let members: Vec<(String, f64)> =
                    redis::cmd("ZRANGE").arg(&key).arg(0).arg(-1).arg("WITHSCORES").query_async(&mut conn).await.expect("ZRANGE");
                let olds = members.iter().filter(|(m, _)| m.starts_with("old-")).count();
                let news = members.iter().filter(|(m, _)| m.starts_with("new-")).count();
                let sum: f64 = members.iter().map(|(_, s)| s).sum();
                let full = f64::from(n) * f64::from(n - 1) / 2.0;
                let mut seen = seen.lock().expect("lock");
                if (olds, news) == (n as usize, 0) && sum == full {
                    seen.0 += 1;
                } else if (olds, news) == (0, n as usize) && sum == full + f64::from(n) {
                    seen.1 += 1;
                } else {
                    panic!("a reader saw {olds} old and {news} new members (sum {sum}): a mixed or partial ranking");
                }
            }
        }));
    }
    for round in 0..6 {
        e.put_global(if round % 2 == 0 { &new } else { &old }).await;
        // Small batches: the load takes many round trips, so readers run while it is under way.
        let cfg = PullConfig { batch: 500, ..pull_cfg(&key) };
        let out = e.pull(&cfg).await.expect("pull");
        assert!(matches!(out, PullOutcome::Loaded { .. }), "{out:?}");
    }
    done.store(true, Ordering::Relaxed);
    for r in readers {
        r.await.expect("a reader failed");
    }
    let (olds, news) = *seen.lock().expect("lock");
    assert!(olds > 0 && news > 0, "readers saw {olds} old and {news} new rankings: they did not span the swaps");
    assert_eq!(e.zset(&key).await, sorted(old));
}

/// A local chat webhook: records every JSON body, answers with `status` after `delay`.
async fn webhook_server(status: u16, delay: Duration) -> (String, Arc<Mutex<Vec<serde_json::Value>>>) {
    use axum::http::StatusCode;
    let got = Arc::new(Mutex::new(Vec::new()));
    let record = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |axum::Json(body): axum::Json<serde_json::Value>| {
            let record = record.clone();
            async move {
                record.lock().expect("lock").push(body);
                tokio::time::sleep(delay).await;
                StatusCode::from_u16(status).expect("status")
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/hook"), got)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_chat_hears_of_a_load_and_of_a_failure() {
    let e = env().await;
    let key = unique("rank-chat");
    let (url, got) = webhook_server(200, Duration::ZERO).await;
    let hook = Webhook::new(&url, Duration::from_secs(5)).expect("webhook");
    e.put_global(&pairs(&[("winner", 2.0), ("runner-up", 1.0)])).await;

    let report = ferry_edge::pull_and_notify(&e.store(), &redis_url(), &pull_cfg(&key), Some(&hook), &no_progress).await;
    assert!(matches!(report.result, Ok(PullOutcome::Loaded { .. })), "{:?}", report.result);
    assert!(matches!(report.chat, ChatStatus::Sent), "{:?}", report.chat);
    let text = got.lock().expect("lock")[0]["text"].as_str().expect("a text field").to_owned();
    assert!(text.contains(&key) && text.contains("winner") && text.contains("first load"), "{text}");

    // An unchanged global is not news.
    let report = ferry_edge::pull_and_notify(&e.store(), &redis_url(), &pull_cfg(&key), Some(&hook), &no_progress).await;
    assert!(matches!(report.chat, ChatStatus::NotNeeded), "{:?}", report.chat);

    // A failed pull is.
    e.put("global/4/prod/result-global.csv", "kseq,score\nwinner,oops\n").await;
    let report = ferry_edge::pull_and_notify(&e.store(), &redis_url(), &pull_cfg(&key), Some(&hook), &no_progress).await;
    assert!(report.result.is_err());
    assert!(matches!(report.chat, ChatStatus::Sent), "{:?}", report.chat);
    let got = got.lock().expect("lock").clone();
    assert_eq!(got.len(), 2);
    let text = got[1]["text"].as_str().expect("text");
    assert!(text.contains("FAILED") && text.contains("line 2") && text.contains("unchanged"), "{text}");
    assert_eq!(e.zset(&key).await.len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_webhook_never_fails_the_pull() {
    let e = env().await;
    let (err500, _) = webhook_server(500, Duration::ZERO).await;
    let (slow, _) = webhook_server(200, Duration::from_secs(10)).await;
    let closed = format!("http://127.0.0.1:{}/hook", ferry_testkit::free_port());
    for (i, url) in [err500, slow, closed].iter().enumerate() {
        let key = unique("rank-hook");
        e.put_global(&pairs(&[("a", 1.0 + i as f64), ("b", 1.0)])).await;
        let hook = Webhook::new(url, Duration::from_millis(500)).expect("webhook");
        let report = ferry_edge::pull_and_notify(&e.store(), &redis_url(), &pull_cfg(&key), Some(&hook), &no_progress).await;
        assert!(matches!(report.result, Ok(PullOutcome::Loaded { .. })), "{url}: {:?}", report.result);
        assert!(matches!(report.chat, ChatStatus::Failed(_)), "{url}: {:?}", report.chat);
        if let ChatStatus::Failed(ChatError::Status { status, .. }) = report.chat {
            assert_eq!(status, 500);
        }
        assert_eq!(e.zset(&key).await.len(), 2);
    }
}

/// The whole edge: two regions push from their Redis, the pipeline normalises and merges, and the
/// global result is pulled back into each region's ranking.
#[tokio::test(flavor = "multi_thread")]
async fn push_normalize_merge_pull_round_trip() {
    let e = env().await;
    let stamp = now_stamp();
    let regions = [("jp", pairs(&[("a", 10.0), ("b", 30.0)])), ("kr", pairs(&[("a", 3.0), ("c", 1.0)]))];
    let mut live_keys = Vec::new();
    for (locale, rows) in &regions {
        let key = unique(&format!("votes-{locale}"));
        e.fill(&key, rows).await;
        let cfg = PushConfig { key: &key, evno: 4, locale, stage: "prod", stamp, page: 10 };
        let out = ferry_edge::push(&e.store(), &mut e.conn.clone(), &cfg, &no_progress).await.expect("push");
        votes::normalize_upload(&e.store(), &VoteSettings::default(), &out.upload).await.expect("normalize");
        live_keys.push(unique(&format!("global-{locale}")));
    }
    votes::merge_stage(&e.store(), &VoteSettings::default(), 4, "prod").await.expect("merge");
    let (global, _) = e.get("global/4/prod/result-global.csv").await;
    let expect = ferry_core::ranking::read_global("g", &global).expect("global");
    for key in &live_keys {
        let out = e.pull(&pull_cfg(key)).await.expect("pull");
        assert!(matches!(out, PullOutcome::Loaded { members: 3, .. }), "{out:?}");
        assert_eq!(e.zset(key).await, sorted(expect.clone()));
    }
    // a: jp 0.25 + kr 0.75; b: jp 0.75; c: kr 0.25 (share)
    assert_eq!(sorted(expect), pairs(&[("a", 1.0), ("b", 0.75), ("c", 0.25)]));
}
