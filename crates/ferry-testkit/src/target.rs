//! A local stand-in for the outside API the `batch` job kind calls, built to be measured.
//!
//! - [`LocalTarget`]: an HTTP server on 127.0.0.1 (axum) answering every path and method with what
//!   a [`Behaviour`] decides, and recording what it saw: each [`Call`] with its idempotency key, body
//!   and arrival time, how many were in flight at once, which keys succeeded how often.
//! - [`Answer`]: what the behaviour answers one call (status, body, `Retry-After`, delay).
//! - [`outside_api`]: the behaviour of the outside API in the write-up: latency, a rate limit that
//!   throttles some items once, and items that always fail.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt as _;

/// The largest request body the target reads; a bigger one is answered 413.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// What the target answers to one call.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    /// Sent as JSON (`null` included).
    pub body: serde_json::Value,
    /// Seconds, sent as `Retry-After`.
    pub retry_after: Option<u64>,
    /// How long to wait before answering.
    pub delay: Duration,
}

impl Answer {
    /// 200 with `body`, at once.
    pub fn ok(body: serde_json::Value) -> Answer {
        Answer { status: 200, body, retry_after: None, delay: Duration::ZERO }
    }

    /// `code` with a `null` body, at once.
    pub fn status(code: u16) -> Answer {
        Answer { status: code, body: serde_json::Value::Null, retry_after: None, delay: Duration::ZERO }
    }

    /// The same answer, given after `d`.
    pub fn after(self, d: Duration) -> Answer {
        Answer { delay: d, ..self }
    }

    /// The same answer, with `Retry-After: secs`.
    pub fn retry_after(self, secs: u64) -> Answer {
        Answer { retry_after: Some(secs), ..self }
    }

    /// The same answer, with the body `{"error": message}`.
    fn with_error(self, message: &str) -> Answer {
        Answer { body: serde_json::json!({ "error": message }), ..self }
    }
}

/// One call as the target saw it.
#[derive(Debug, Clone)]
pub struct Call {
    /// The `Idempotency-Key` header.
    pub key: Option<String>,
    /// The body parsed as JSON; `Null` when empty, not JSON, or over [`MAX_BODY_BYTES`].
    pub body: serde_json::Value,
    /// Every header (names in lower case), in the order received.
    pub headers: Vec<(String, String)>,
    /// How many earlier calls carried the same key (0 for the first, and for calls without a key).
    pub repeat: u32,
    /// When it arrived, relative to the target's start.
    pub at: Duration,
    /// The request path as received, with its leading `/` and without the query (`/items`).
    pub path: String,
    /// `GET`, `POST`, ...
    pub method: String,
}

/// Decides the answer to a call. It runs on the server's tasks, outside the target's locks.
pub type Behaviour = Arc<dyn Fn(&Call) -> Answer + Send + Sync>;

/// What the handlers share with the [`LocalTarget`].
struct Shared {
    started: Instant,
    behaviour: RwLock<Behaviour>,
    log: Mutex<Log>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

#[derive(Default)]
struct Log {
    /// Ordered by `Call::at`.
    calls: Vec<(Call, u16)>,
    /// Calls so far per idempotency key.
    seen: HashMap<String, u32>,
}

impl Shared {
    fn log<T>(&self, f: impl FnOnce(&mut Log) -> T) -> T {
        // A behaviour that panicked poisons nothing we rely on: the log is only ever appended to.
        f(&mut self.log.lock().unwrap_or_else(PoisonError::into_inner))
    }

    fn behaviour(&self) -> Behaviour {
        self.behaviour.read().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

/// Counts one call in flight from its creation to its drop, so a call whose client gave up (axum
/// drops the handler) leaves the count too.
struct InFlight<'a>(&'a AtomicUsize);

impl<'a> InFlight<'a> {
    fn enter(shared: &'a Shared) -> InFlight<'a> {
        let now = shared.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        shared.max_in_flight.fetch_max(now, Ordering::SeqCst);
        InFlight(&shared.in_flight)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A loopback HTTP server standing in for an outside API.
pub struct LocalTarget {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: tokio::sync::watch::Sender<bool>,
}

impl std::fmt::Debug for LocalTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalTarget")
            .field("addr", &self.addr)
            .field("calls", &self.shared.log(|l| l.calls.len()))
            .field("in_flight", &self.in_flight())
            .field("max_in_flight", &self.max_in_flight())
            .finish_non_exhaustive()
    }
}

impl LocalTarget {
    /// Serves `behaviour` on 127.0.0.1 at a free port, every path, every method.
    pub async fn start(behaviour: Behaviour) -> anyhow::Result<LocalTarget> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.context("binding the local target")?;
        let addr = listener.local_addr().context("the local target's address")?;
        let shared = Arc::new(Shared {
            started: Instant::now(),
            behaviour: RwLock::new(behaviour),
            log: Mutex::default(),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
        });
        let (shutdown, mut stopped) = tokio::sync::watch::channel(false);
        let app = axum::Router::new().fallback(serve_call).with_state(shared.clone());
        tokio::spawn(async move {
            // Graceful: calls already in flight get their answer, idle keep-alive connections close,
            // so a pooled client cannot reach a stopped target.
            let signal = async move {
                // An error means the target was dropped: stop too.
                let _ = stopped.wait_for(|s| *s).await;
            };
            if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(signal).await {
                tracing::error!(error = %e, "local target stopped");
            }
        });
        Ok(LocalTarget { addr, shared, shutdown })
    }

    /// `http://127.0.0.1:{port}/` + `path` (e.g. `"items"`).
    pub fn url(&self, path: &str) -> String {
        format!("http://{}/{}", self.addr, path.trim_start_matches('/'))
    }

    /// Every call so far (in arrival order), with its answer's status. A call shows once its
    /// behaviour has decided, before the answer's delay.
    pub fn calls(&self) -> Vec<(Call, u16)> {
        self.shared.log(|l| l.calls.clone())
    }

    /// Most calls that were in flight at once (from arrival to the end of the answer's delay).
    pub fn max_in_flight(&self) -> usize {
        self.shared.max_in_flight.load(Ordering::SeqCst)
    }

    /// Calls in flight now.
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.load(Ordering::SeqCst)
    }

    /// Smallest gap between the arrivals of two consecutive calls (`None` with fewer than 2 calls).
    pub fn min_gap(&self) -> Option<Duration> {
        self.shared.log(|l| l.calls.windows(2).map(|w| w[1].0.at.saturating_sub(w[0].0.at)).min())
    }

    /// Distinct idempotency keys that got a 2xx answer, with how many 2xx answers each got.
    pub fn succeeded_keys(&self) -> BTreeMap<String, u32> {
        self.shared.log(|l| {
            let mut keys = BTreeMap::new();
            for (call, status) in &l.calls {
                if let Some(key) = &call.key
                    && (200..300).contains(status)
                {
                    *keys.entry(key.clone()).or_default() += 1;
                }
            }
            keys
        })
    }

    /// Replaces the behaviour (for a test that changes what the target does mid-run). Calls already
    /// decided keep their answer.
    pub fn set_behaviour(&self, behaviour: Behaviour) {
        *self.shared.behaviour.write().unwrap_or_else(PoisonError::into_inner) = behaviour;
    }

    /// Stops accepting calls; those in flight still get their answer. Also done on drop.
    pub fn stop(&self) {
        self.shutdown.send_replace(true);
    }
}

impl Drop for LocalTarget {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Every call: count it in flight, read the body, let the behaviour decide, record, wait, answer.
async fn serve_call(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let at = shared.started.elapsed();
    let _in_flight = InFlight::enter(&shared);
    let (parts, body) = request.into_parts();
    let key = parts.headers.get("idempotency-key").map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let headers = parts.headers.iter().map(|(k, v)| (k.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned())).collect();

    // Reads past the cap are drained, not kept: answering before the client finished sending could
    // reach it as a broken connection instead of a 413.
    let mut bytes = Vec::new();
    let mut refused = None;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(chunk) if refused.is_none() && bytes.len() + chunk.len() <= MAX_BODY_BYTES => bytes.extend_from_slice(&chunk),
            Ok(_) => {
                bytes = Vec::new();
                refused = Some(Answer::status(413).with_error(&format!("body over {MAX_BODY_BYTES} bytes")));
            }
            Err(e) => {
                bytes = Vec::new();
                refused = Some(Answer::status(400).with_error(&format!("reading the body: {e}")));
                break;
            }
        }
    }
    let body = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);

    let repeat = shared.log(|l| {
        key.as_ref().map_or(0, |k| {
            let seen = l.seen.entry(k.clone()).or_default();
            *seen += 1;
            *seen - 1
        })
    });
    let call = Call { key, body, headers, repeat, at, path: parts.uri.path().to_owned(), method: parts.method.as_str().to_owned() };
    let answer = refused.unwrap_or_else(|| (shared.behaviour())(&call));
    // A status no HTTP response can carry is the behaviour's mistake; answer 500 and record that.
    let (status, body) = match StatusCode::from_u16(answer.status) {
        Ok(s) => (s, answer.body),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, serde_json::json!({ "error": format!("invalid status {}", answer.status) })),
    };
    shared.log(|l| {
        // Concurrent calls can get here out of order; keep the log in arrival order.
        let i = l.calls.partition_point(|(c, _)| c.at <= call.at);
        l.calls.insert(i, (call, status.as_u16()));
    });

    if !answer.delay.is_zero() {
        tokio::time::sleep(answer.delay).await;
    }
    let mut response = (status, axum::Json(body)).into_response();
    if let Some(secs) = answer.retry_after {
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}

/// The item id of a call's body: its `"id"` member, or for an array body the first element's.
fn item_id(body: &serde_json::Value) -> Option<&serde_json::Value> {
    match body {
        serde_json::Value::Array(items) => items.first().and_then(|first| first.get("id")),
        other => other.get("id"),
    }
}

/// `"a1"` and `17` alike, for comparing with the ids a test lists as strings.
fn id_text(id: &serde_json::Value) -> String {
    id.as_str().map_or_else(|| id.to_string(), str::to_owned)
}

/// A behaviour like the write-up's outside API. Every answer comes after `latency`:
///
/// - the first call (`repeat == 0`) of every `rate_limit_every`-th item gets 429 with
///   `Retry-After: 1`. The item is the number in its `Idempotency-Key` after the last `:` (its seq);
///   every seq that is a multiple of `rate_limit_every` counts, 0 included. Calls without such a
///   number, and `Some(0)`, are never throttled;
/// - calls whose item id (the body's `"id"` member, or for an array body the first element's; a
///   number compares by its text) is in `fail_ids` get 422 every time, a permanent failure;
/// - every other call gets 200 with `{"ok": true, "echo": <that id, or null>}`.
///
/// The throttle comes first, as a real API limits before it validates.
pub fn outside_api(latency: Duration, rate_limit_every: Option<u64>, fail_ids: HashSet<String>) -> Behaviour {
    Arc::new(move |call: &Call| {
        let seq = call.key.as_deref().and_then(|k| k.rsplit(':').next()).and_then(|s| s.parse::<u64>().ok());
        let throttled = match (rate_limit_every, seq) {
            (Some(every), Some(seq)) if every > 0 => call.repeat == 0 && seq % every == 0,
            _ => false,
        };
        let id = item_id(&call.body);
        let answer = if throttled {
            Answer::status(429).with_error("rate limited").retry_after(1)
        } else if id.is_some_and(|id| fail_ids.contains(&id_text(id))) {
            Answer { body: serde_json::json!({ "error": "item rejected", "id": id }), ..Answer::status(422) }
        } else {
            Answer::ok(serde_json::json!({ "ok": true, "echo": id }))
        };
        answer.after(latency)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fixed(answer: Answer) -> Behaviour {
        Arc::new(move |_: &Call| answer.clone())
    }

    async fn post(client: &reqwest::Client, url: &str, key: Option<&str>, body: serde_json::Value) -> reqwest::Response {
        let mut req = client.post(url).json(&body);
        if let Some(k) = key {
            req = req.header("Idempotency-Key", k);
        }
        req.send().await.unwrap()
    }

    #[tokio::test]
    async fn counts_five_concurrent_calls_in_flight() {
        let target = LocalTarget::start(fixed(Answer::ok(json!({})).after(Duration::from_millis(200)))).await.unwrap();
        let client = reqwest::Client::new();
        let url = target.url("items");
        let keys: Vec<String> = (0..5).map(|i| format!("job:{i}")).collect();
        let calls = keys.iter().enumerate().map(|(i, k)| post(&client, &url, Some(k), json!({ "id": i })));
        for res in futures::future::join_all(calls).await {
            assert_eq!(res.status(), 200);
        }
        assert_eq!(target.max_in_flight(), 5);
        assert_eq!(target.in_flight(), 0, "every call was answered");
        assert_eq!(target.calls().len(), 5);
        assert!(target.calls().windows(2).all(|w| w[0].0.at <= w[1].0.at), "calls in arrival order");
    }

    #[tokio::test]
    async fn sequential_calls_are_never_in_flight_together() {
        let target = LocalTarget::start(fixed(Answer::ok(json!({})).after(Duration::from_millis(50)))).await.unwrap();
        let client = reqwest::Client::new();
        for i in 0..4 {
            assert_eq!(post(&client, &target.url("items"), None, json!({ "id": i })).await.status(), 200);
        }
        assert_eq!(target.max_in_flight(), 1);
        assert_eq!(target.in_flight(), 0);
    }

    #[tokio::test]
    async fn records_keys_repeats_bodies_and_paths() {
        let target = LocalTarget::start(fixed(Answer::ok(json!({})))).await.unwrap();
        let client = reqwest::Client::new();
        for key in [Some("a"), Some("a"), Some("b"), None, Some("a")] {
            post(&client, &target.url("items"), key, json!({ "id": "x" })).await;
        }
        let sent = client.put(target.url("/other?q=1")).body("not json").send().await.unwrap();
        assert_eq!(sent.status(), 200);

        let calls = target.calls();
        let seen: Vec<(Option<&str>, u32)> = calls.iter().map(|(c, _)| (c.key.as_deref(), c.repeat)).collect();
        assert_eq!(seen, [(Some("a"), 0), (Some("a"), 1), (Some("b"), 0), (None, 0), (Some("a"), 2), (None, 0)]);
        assert_eq!(calls[0].0.body, json!({ "id": "x" }));
        assert_eq!((calls[0].0.method.as_str(), calls[0].0.path.as_str()), ("POST", "/items"));
        assert!(calls[0].0.headers.iter().any(|(k, v)| k == "idempotency-key" && v == "a"));
        let last = &calls[5].0;
        assert_eq!((last.method.as_str(), last.path.as_str(), &last.body), ("PUT", "/other", &serde_json::Value::Null));
        assert_eq!(target.succeeded_keys(), BTreeMap::from([("a".to_owned(), 3), ("b".to_owned(), 1)]));
    }

    #[tokio::test]
    async fn outside_api_throttles_once_and_fails_listed_ids_every_time() {
        let fail = HashSet::from(["bad".to_owned(), "7".to_owned()]);
        let target = LocalTarget::start(outside_api(Duration::from_millis(10), Some(3), fail)).await.unwrap();
        let client = reqwest::Client::new();
        let url = target.url("items");

        // seq 3: throttled on its first call only.
        let first = post(&client, &url, Some("job-1:3"), json!({ "id": "i3" })).await;
        assert_eq!(first.status(), 429);
        assert_eq!(first.headers().get("retry-after").unwrap(), "1");
        let again = post(&client, &url, Some("job-1:3"), json!({ "id": "i3" })).await;
        assert_eq!(again.status(), 200);
        assert!(again.headers().get("retry-after").is_none());
        assert_eq!(again.json::<serde_json::Value>().await.unwrap(), json!({ "ok": true, "echo": "i3" }));

        // seq 4: not throttled; a failing id, every time.
        for _ in 0..2 {
            assert_eq!(post(&client, &url, Some("job-1:4"), json!({ "id": "bad" })).await.status(), 422);
        }
        // An array body is identified by its first element; a numeric id compares by its text.
        assert_eq!(post(&client, &url, Some("job-1:5"), json!([{ "id": 7 }, { "id": "ok" }])).await.status(), 422);
        let echoed = post(&client, &url, Some("job-1:8"), json!([{ "id": 8 }])).await;
        assert_eq!(echoed.json::<serde_json::Value>().await.unwrap(), json!({ "ok": true, "echo": 8 }));
        // Without a numbered key nothing is throttled, and without an id the echo is null.
        let plain = post(&client, &url, None, json!({})).await;
        assert_eq!(plain.json::<serde_json::Value>().await.unwrap(), json!({ "ok": true, "echo": null }));

        let statuses: Vec<u16> = target.calls().iter().map(|(_, s)| *s).collect();
        assert_eq!(statuses, [429, 200, 422, 422, 422, 200, 200]);
        assert_eq!(target.succeeded_keys(), BTreeMap::from([("job-1:3".to_owned(), 1), ("job-1:8".to_owned(), 1)]));
    }

    #[tokio::test]
    async fn measures_the_smallest_gap_between_arrivals() {
        let target = LocalTarget::start(fixed(Answer::status(204))).await.unwrap();
        let client = reqwest::Client::new();
        assert_eq!(target.min_gap(), None);
        post(&client, &target.url("a"), None, json!(1)).await;
        assert_eq!(target.min_gap(), None, "one call has no gap");
        for _ in 0..2 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            post(&client, &target.url("a"), None, json!(1)).await;
        }
        let gap = target.min_gap().unwrap();
        assert!(gap >= Duration::from_millis(100), "{gap:?}");
    }

    #[tokio::test]
    async fn refuses_bodies_over_the_cap() {
        let target = LocalTarget::start(fixed(Answer::ok(json!({})))).await.unwrap();
        let res = reqwest::Client::new().post(target.url("big")).body(vec![b'x'; MAX_BODY_BYTES + 1]).send().await.unwrap();
        assert_eq!(res.status(), 413);
        let calls = target.calls();
        assert_eq!((calls.len(), calls[0].1, &calls[0].0.body), (1, 413, &serde_json::Value::Null));
    }

    #[tokio::test]
    async fn changes_behaviour_and_stops() {
        let target = LocalTarget::start(fixed(Answer::status(503).retry_after(2))).await.unwrap();
        let client = reqwest::Client::new();
        let res = post(&client, &target.url(""), Some("k"), json!({})).await;
        assert_eq!((res.status().as_u16(), res.headers().get("retry-after").unwrap().to_str().unwrap()), (503, "2"));
        target.set_behaviour(fixed(Answer::ok(json!({ "ok": true }))));
        assert_eq!(post(&client, &target.url(""), Some("k"), json!({})).await.status(), 200);
        assert_eq!(target.calls()[1].0.repeat, 1);

        target.stop();
        let mut refused = false;
        // The shutdown is asynchronous; the next connections are refused once it has run.
        for _ in 0..50 {
            if reqwest::Client::new().get(target.url("")).send().await.is_err() {
                refused = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(refused, "a stopped target still answers");
    }
}
