//! Lambda's `Invoke` API on loopback (`POST /2015-03-31/functions/{name}/invocations`), running a
//! handler in-process: an `Event` invocation is answered 202 at once and the handler runs in a
//! background task with a deadline, as Lambda runs it, so the real SDK call is exercised end to
//! end. (moto cannot run functions.) The handler is any function of a [`LambdaEvent`]; the job
//! worker behind it is [`crate::jobs`] (feature `jobs`).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_config::SdkConfig;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use ferry_aws::lambda::Invoker;
use lambda_runtime::{Context, LambdaEvent};
use tokio::task::JoinHandle;

use crate::events::next_request_id;

/// What one run of the handler reported, or its error as text.
pub type Outcome<R> = Result<R, String>;

type Handler<R> = Arc<dyn Fn(LambdaEvent<serde_json::Value>) -> Pin<Box<dyn Future<Output = Outcome<R>> + Send>> + Send + Sync>;

/// What the local Lambda endpoint has seen and is running.
#[derive(Debug)]
pub struct Invocations<R> {
    /// Every invoke request received, in order (payloads).
    pub received: Mutex<Vec<serde_json::Value>>,
    /// The background handler runs.
    pub tasks: Mutex<Vec<JoinHandle<Outcome<R>>>>,
    /// Answer every invoke with an error (a Lambda outage).
    pub refuse: AtomicBool,
    /// Accept invokes but do not run the handler (a function that never starts).
    pub hold: AtomicBool,
    /// Run each accepted invoke only after this many milliseconds, as Lambda does with an event it
    /// keeps in its retry queue while the function is throttled.
    pub delay_ms: AtomicU64,
}

impl<R> Default for Invocations<R> {
    fn default() -> Invocations<R> {
        Invocations {
            received: Mutex::default(),
            tasks: Mutex::default(),
            refuse: AtomicBool::default(),
            hold: AtomicBool::default(),
            delay_ms: AtomicU64::default(),
        }
    }
}

impl<R> Invocations<R> {
    /// Invoke requests received so far.
    pub fn count(&self) -> usize {
        self.received.lock().map_or(0, |r| r.len())
    }

    /// Waits for every run started so far (and any they start) to end; returns their outcomes.
    pub async fn settle(&self) -> Vec<Outcome<R>> {
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

    /// Kills every running handler, as a crash or a timeout would.
    pub fn kill_all(&self) {
        if let Ok(tasks) = self.tasks.lock() {
            tasks.iter().for_each(JoinHandle::abort);
        }
    }
}

struct Server<R> {
    handler: Handler<R>,
    invocations: Arc<Invocations<R>>,
    run_for: Duration,
}

impl<R> Clone for Server<R> {
    fn clone(&self) -> Server<R> {
        Server { handler: self.handler.clone(), invocations: self.invocations.clone(), run_for: self.run_for }
    }
}

/// Lambda's `Invoke` API on a loopback port, running a handler in-process.
#[derive(Debug)]
pub struct LocalLambda<R> {
    pub endpoint: String,
    pub invocations: Arc<Invocations<R>>,
}

impl<R> Clone for LocalLambda<R> {
    fn clone(&self) -> LocalLambda<R> {
        LocalLambda { endpoint: self.endpoint.clone(), invocations: self.invocations.clone() }
    }
}

impl<R: Send + 'static> LocalLambda<R> {
    /// Starts the endpoint. Each run gets a deadline `run_for` from its start, as a Lambda timeout
    /// would give it. `make_handler` receives an invoker of this endpoint (a function may invoke
    /// itself to continue).
    pub async fn start<H, F>(
        conf: &SdkConfig,
        run_for: Duration,
        make_handler: impl FnOnce(Invoker) -> H,
    ) -> std::io::Result<LocalLambda<R>>
    where
        H: Fn(LambdaEvent<serde_json::Value>) -> F + Send + Sync + 'static,
        F: Future<Output = Outcome<R>> + Send + 'static,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        let handler = make_handler(Invoker::at(conf, &endpoint));
        let handler: Handler<R> = Arc::new(move |event| Box::pin(handler(event)));
        let invocations = Arc::new(Invocations::default());
        let server = Server { handler, invocations: invocations.clone(), run_for };
        let app = axum::Router::new().route("/2015-03-31/functions/{name}/invocations", post(invoke::<R>)).with_state(server);
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(LocalLambda { endpoint, invocations })
    }

    /// An invoker of the functions here: what the code under test holds.
    pub fn client(&self, conf: &SdkConfig) -> Invoker {
        Invoker::at(conf, &self.endpoint)
    }
}

async fn invoke<R: Send + 'static>(
    State(server): State<Server<R>>,
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
    let delay = Duration::from_millis(server.invocations.delay_ms.load(Ordering::SeqCst));
    let (handler, run_for) = (server.handler.clone(), server.run_for);
    let task = tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        handler(LambdaEvent::new(payload, context(run_for, &name))).await
    });
    if let Ok(mut t) = server.invocations.tasks.lock() {
        t.push(task);
    }
    (StatusCode::ACCEPTED, String::new())
}

/// The context of one run of function `name`: a deadline `run_for` from now, as a Lambda timeout
/// would give it, the function's ARN and a fresh request id.
pub fn context(run_for: Duration, name: &str) -> Context {
    let mut ctx = Context::default();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    ctx.deadline = now + run_for.as_millis() as u64;
    ctx.invoked_function_arn = format!("arn:aws:lambda:us-east-1:123456789012:function:{name}");
    ctx.request_id = next_request_id();
    ctx
}
