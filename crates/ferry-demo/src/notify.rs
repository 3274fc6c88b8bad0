//! The notification scenario, and the pieces the tests share with it:
//!
//! - [`LocalProvider`]: a delivery provider on loopback (axum) that can be told to fail or to
//!   demand an auth header, and that counts every message it accepted per notification id.
//! - [`sqs_event`]: an SQS event as Lambda sends it, built from `events/sqs-notification.json`.
//! - [`notify_request`]: a `POST /notifications` request as API Gateway hands it to the intake,
//!   built from `events/apigw-notify.json`.
//! - [`pump`]: what Lambda's SQS event source mapping does: receive batches, invoke the consumer,
//!   delete what it did not report as failed, until the queue is empty.
//! - [`run`]: two senders sharing a notification id through the intake; then 1,000 notifications,
//!   some malformed, some hitting a failing provider; fix it, redrive, and check that every valid
//!   one was delivered exactly once and every failed one is in the DLQ exactly once.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, ensure};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use ferry_aws::notify::{self as aws, DeliveryTable, DynamoClient, QueuePair, QueueSettings, Received, RedriveOptions, SqsClient};
use ferry_core::notify::{Channel, ErrorKind, FixedWindow, RedriveFilter, Sender, Status};
use lambda_runtime::{Context, LambdaEvent};
use notify::consumer::Consumer;
use notify::{ConsumerSettings, Intake, IntakeSettings, Provider, ProviderSettings};

use crate::votes::Rng;

/// The `events/sqs-notification.json` fixture.
pub const SQS_NOTIFICATION: &str = include_str!("../../../events/sqs-notification.json");

/// The `events/apigw-notify.json` fixture: `POST /notifications` with a user's access token.
pub const APIGW_NOTIFY: &str = include_str!("../../../events/apigw-notify.json");

/// A `POST /notifications` request as API Gateway's HTTP API hands it over, carrying `body`. The
/// fixture's verified JWT claims are replaced by `claims`; `None` removes the authorizer (a route
/// without one).
pub fn notify_request(claims: Option<&[(&str, &str)]>, body: &str) -> lambda_http::Request {
    let mut v: serde_json::Value = serde_json::from_str(APIGW_NOTIFY).expect("events/apigw-notify.json is valid JSON");
    match claims {
        Some(claims) => {
            let map: serde_json::Map<String, serde_json::Value> = claims.iter().map(|(k, v)| ((*k).to_owned(), (*v).into())).collect();
            v["requestContext"]["authorizer"]["jwt"]["claims"] = map.into();
        }
        None => {
            if let Some(ctx) = v["requestContext"].as_object_mut() {
                ctx.remove("authorizer");
            }
        }
    }
    v["body"] = body.into();
    lambda_http::request::from_str(&v.to_string()).expect("an HTTP API v2 request")
}

/// An SQS event carrying `messages` as Lambda's event source mapping delivers them.
pub fn sqs_event(queue_arn: &str, messages: &[Received]) -> serde_json::Value {
    let mut event: serde_json::Value = serde_json::from_str(SQS_NOTIFICATION).expect("events/sqs-notification.json is valid JSON");
    let template = event["Records"][0].clone();
    let records: Vec<serde_json::Value> = messages
        .iter()
        .map(|m| {
            let mut r = template.clone();
            r["messageId"] = m.message_id.clone().into();
            r["receiptHandle"] = m.receipt_handle.clone().into();
            r["body"] = m.body.clone().into();
            r["eventSourceARN"] = queue_arn.into();
            r["attributes"] = serde_json::to_value(&m.system).unwrap_or_default();
            r["messageAttributes"] = m
                .attributes
                .iter()
                .map(|(k, v)| {
                    (k.clone(), serde_json::json!({"stringValue": v, "stringListValues": [], "binaryListValues": [], "dataType": "String"}))
                })
                .collect::<serde_json::Map<_, _>>()
                .into();
            r
        })
        .collect();
    event["Records"] = records.into();
    event
}

/// How a [`LocalProvider`] fails one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// 503.
    Unavailable,
    /// 429.
    Throttled,
    /// Answers (503) only after the client's timeout; the message is not taken.
    Hang,
}

#[derive(Debug, Default)]
struct ProviderState {
    down_channels: HashSet<String>,
    rejected_templates: HashSet<String>,
    rejected: HashSet<(String, String)>,
    fail_next: HashMap<String, VecDeque<Failure>>,
    /// Channels each notification id was accepted on, one entry per accepted request.
    accepted: HashMap<String, Vec<String>>,
    /// The recipient of each accepted request, per notification id.
    recipients: HashMap<String, Vec<String>>,
    /// A header every request must carry (name, value); others are refused with 401.
    auth: Option<(String, String)>,
    /// Idempotency keys already accepted, with the provider's message id.
    keys: HashMap<String, String>,
    /// Requests repeating an accepted idempotency key (the consumer sent twice).
    repeats: usize,
    requests: usize,
    reply: Option<&'static str>,
}

/// A delivery provider on 127.0.0.1 that can be told to fail.
#[derive(Debug, Clone)]
pub struct LocalProvider {
    pub url: String,
    state: Arc<Mutex<ProviderState>>,
    hang_for: Duration,
}

impl LocalProvider {
    /// Starts the provider on a free loopback port. A [`Failure::Hang`] holds the answer for `hang_for`.
    pub async fn start(hang_for: Duration) -> anyhow::Result<LocalProvider> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.context("binding the local provider")?;
        let url = format!("http://{}", listener.local_addr()?);
        let provider = LocalProvider { url, state: Arc::default(), hang_for };
        let app = axum::Router::new().route("/v1/messages", axum::routing::post(accept)).with_state(provider.clone());
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "local provider stopped");
            }
        });
        Ok(provider)
    }

    fn with<T>(&self, f: impl FnOnce(&mut ProviderState) -> T) -> T {
        f(&mut self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// Every request on `channel` answers 503 while `down`.
    pub fn set_channel_down(&self, channel: Channel, down: bool) {
        self.with(|s| if down { s.down_channels.insert(channel.to_string()) } else { s.down_channels.remove(channel.as_str()) });
    }

    /// Every request for `template` answers 400 ("template not registered") while `rejected`.
    pub fn set_template_rejected(&self, template: &str, rejected: bool) {
        self.with(|s| if rejected { s.rejected_templates.insert(template.to_owned()) } else { s.rejected_templates.remove(template) });
    }

    /// Requests for `id` on `channel` answer 400 (e.g. the number has no KakaoTalk account).
    pub fn reject(&self, id: &str, channel: Channel) {
        self.with(|s| s.rejected.insert((id.to_owned(), channel.to_string())));
    }

    /// The next requests for `id` fail this way, in order.
    pub fn fail_next(&self, id: &str, failures: &[Failure]) {
        self.with(|s| s.fail_next.entry(id.to_owned()).or_default().extend(failures));
    }

    /// Every request must carry header `name` with `value`, as a real provider's API key.
    pub fn require_auth(&self, name: &str, value: &str) {
        self.with(|s| s.auth = Some((name.to_ascii_lowercase(), value.to_owned())));
    }

    /// The recipients `id` was accepted for, one per accepted request.
    pub fn accepted_recipients(&self, id: &str) -> Vec<String> {
        self.with(|s| s.recipients.get(id).cloned().unwrap_or_default())
    }

    /// Accepted messages answer `{"status": "delivered"}` instead of `sent`.
    pub fn reply_delivered(&self, yes: bool) {
        self.with(|s| s.reply = yes.then_some("delivered"));
    }

    /// The channels `id` was accepted on, one per accepted request.
    pub fn accepted(&self, id: &str) -> Vec<String> {
        self.with(|s| s.accepted.get(id).cloned().unwrap_or_default())
    }

    /// Accepted requests per notification id.
    pub fn accepted_counts(&self) -> HashMap<String, usize> {
        self.with(|s| s.accepted.iter().map(|(k, v)| (k.clone(), v.len())).collect())
    }

    pub fn repeats(&self) -> usize {
        self.with(|s| s.repeats)
    }

    pub fn requests(&self) -> usize {
        self.with(|s| s.requests)
    }
}

async fn accept(State(p): State<LocalProvider>, headers: HeaderMap, axum::Json(body): axum::Json<serde_json::Value>) -> Response {
    let field = |k: &str| body.get(k).and_then(|v| v.as_str()).unwrap_or_default().to_owned();
    let (id, channel, template, recipient) = (field("notification_id"), field("channel"), field("template"), field("recipient"));
    let key = headers.get("idempotency-key").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    enum Answer {
        Fail(StatusCode, &'static str),
        Hang,
        Ok(String, &'static str),
    }
    let answer = p.with(|s| {
        s.requests += 1;
        if let Some((name, value)) = &s.auth
            && headers.get(name.as_str()).and_then(|v| v.to_str().ok()) != Some(value.as_str())
        {
            return Answer::Fail(StatusCode::UNAUTHORIZED, "missing or wrong API key");
        }
        if key.is_empty() {
            return Answer::Fail(StatusCode::BAD_REQUEST, "Idempotency-Key header missing");
        }
        if let Some(f) = s.fail_next.get_mut(&id).and_then(VecDeque::pop_front) {
            return match f {
                Failure::Unavailable => Answer::Fail(StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
                Failure::Throttled => Answer::Fail(StatusCode::TOO_MANY_REQUESTS, "slow down"),
                Failure::Hang => Answer::Hang,
            };
        }
        if s.down_channels.contains(&channel) {
            return Answer::Fail(StatusCode::SERVICE_UNAVAILABLE, "channel gateway down");
        }
        if s.rejected_templates.contains(&template) {
            return Answer::Fail(StatusCode::BAD_REQUEST, "template not registered");
        }
        if s.rejected.contains(&(id.clone(), channel.clone())) {
            return Answer::Fail(StatusCode::UNPROCESSABLE_ENTITY, "recipient cannot be reached on this channel");
        }
        let reply = s.reply.unwrap_or("sent");
        if let Some(pm) = s.keys.get(&key) {
            // A real provider deduplicates by key; counting the repeat shows a consumer sent twice.
            s.repeats += 1;
            return Answer::Ok(pm.clone(), reply);
        }
        let pm = format!("pm-{}", s.keys.len() + 1);
        s.keys.insert(key.clone(), pm.clone());
        s.accepted.entry(id.clone()).or_default().push(channel.clone());
        s.recipients.entry(id.clone()).or_default().push(recipient.clone());
        Answer::Ok(pm, reply)
    });
    match answer {
        Answer::Fail(status, message) => (status, axum::Json(serde_json::json!({ "error": message }))).into_response(),
        Answer::Hang => {
            tokio::time::sleep(p.hang_for).await;
            (StatusCode::SERVICE_UNAVAILABLE, "late").into_response()
        }
        Answer::Ok(pm, status) => axum::Json(serde_json::json!({ "status": status, "provider_message_id": pm })).into_response(),
    }
}

/// How [`pump`] polls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PumpSettings {
    /// Concurrent pollers (Lambda runs several batches at once).
    pub pollers: usize,
    pub batch_size: i32,
    /// The source queue's visibility timeout.
    pub visibility: Duration,
}

impl Default for PumpSettings {
    fn default() -> PumpSettings {
        PumpSettings { pollers: 4, batch_size: 10, visibility: Duration::from_secs(1) }
    }
}

/// What [`pump`] saw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PumpStats {
    pub invocations: usize,
    pub records: usize,
    /// Records reported in `batchItemFailures`.
    pub reported_failures: usize,
}

/// A receive that, like Lambda's own pollers, tries again after a failed poll (moto answers a
/// burst of concurrent receives with an occasional 500).
async fn receive_retrying(sqs: &SqsClient, queue_url: &str, settings: PumpSettings) -> anyhow::Result<Vec<Received>> {
    let mut attempt = 0;
    loop {
        match aws::receive(sqs, queue_url, settings.batch_size, settings.visibility, Duration::from_secs(1)).await {
            Ok(batch) => return Ok(batch),
            Err(e) if attempt < 5 => {
                attempt += 1;
                tracing::warn!(error = %e, attempt, "receive failed; polling again");
                tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Does what Lambda's SQS event source mapping does, until `queue_url` is empty: receive a batch,
/// invoke the consumer's handler with it, delete every record not named in `batchItemFailures`.
pub async fn pump(consumer: &Consumer, sqs: &SqsClient, queue_url: &str, settings: PumpSettings) -> anyhow::Result<PumpStats> {
    let arn = aws::queue_arn(sqs, queue_url).await?;
    let pollers = (0..settings.pollers.max(1)).map(|_| async {
        let mut stats = PumpStats::default();
        loop {
            let batch = receive_retrying(sqs, queue_url, settings).await?;
            if batch.is_empty() {
                let (visible, in_flight) = aws::queue_depth(sqs, queue_url).await?;
                if visible + in_flight == 0 {
                    return anyhow::Ok(stats);
                }
                continue;
            }
            let event = serde_json::from_value(sqs_event(&arn, &batch)).context("building the SQS event")?;
            let response = notify::consumer::handle(consumer, LambdaEvent::new(event, Context::default()))
                .await
                .map_err(|e| anyhow::anyhow!("consumer failed the whole batch: {e}"))?;
            let failed: HashSet<&str> = response.batch_item_failures.iter().map(|f| f.item_identifier.as_str()).collect();
            let done: Vec<&str> =
                batch.iter().filter(|m| !failed.contains(m.message_id.as_str())).map(|m| m.receipt_handle.as_str()).collect();
            aws::delete_all(sqs, queue_url, &done).await?;
            stats.invocations += 1;
            stats.records += batch.len();
            stats.reported_failures += failed.len();
        }
    });
    let mut total = PumpStats::default();
    for s in futures::future::try_join_all(pollers).await? {
        total.invocations += s.invocations;
        total.records += s.records;
        total.reported_failures += s.reported_failures;
    }
    Ok(total)
}

/// Every message left in `queue_url`, received and kept hidden for `hide` (then visible again).
pub async fn peek_all(sqs: &SqsClient, queue_url: &str, hide: Duration) -> anyhow::Result<Vec<Received>> {
    let mut out: Vec<Received> = Vec::new();
    let mut seen = HashSet::new();
    loop {
        let batch = aws::receive(sqs, queue_url, 10, hide, Duration::from_secs(1)).await?;
        if batch.is_empty() {
            return Ok(out);
        }
        out.extend(batch.into_iter().filter(|m| seen.insert(m.message_id.clone())));
    }
}

/// Reads every message of a queue, then makes each visible again at once. A short visibility
/// timeout would let a long queue's first messages come back before the read reaches its end, and
/// the read would never see the queue empty.
pub async fn peek_and_release(sqs: &SqsClient, queue_url: &str) -> anyhow::Result<Vec<Received>> {
    let messages = peek_all(sqs, queue_url, Duration::from_secs(60)).await?;
    for m in &messages {
        sqs.change_message_visibility().queue_url(queue_url).receipt_handle(&m.receipt_handle).visibility_timeout(0).send().await?;
    }
    Ok(messages)
}

/// A notification body of the scenario.
pub fn notification(id: &str, channel: Channel, recipient: &str, template: &str, fallback: Option<Channel>) -> String {
    let mut v = serde_json::json!({
        "notification_id": id,
        "channel": channel.as_str(),
        "recipient": recipient,
        "template": template,
        "variables": {"name": "Kim", "order": format!("A-{}", id.len())},
        "requested_at": "2026-11-22T15:30:00Z",
    });
    if let Some(fb) = fallback {
        v["fallback"] = fb.as_str().into();
    }
    v.to_string()
}

/// What a generated message is meant to exercise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Plan {
    Plain,
    /// Not JSON, or JSON that breaks the schema: dead-lettered at once, never sent.
    Malformed,
    /// Push, whose gateway is down until the provider is fixed.
    PushOutage,
    /// A template the provider does not know until it is fixed.
    UnknownTemplate,
    /// Alimtalk refused for this number; the SMS fallback delivers it.
    Fallback,
}

/// The sender the scenario's bulk notifications come from.
pub const DEMO_SENDER: &str = "demo-shop-backend";

/// Runs the scenario against the SQS and DynamoDB endpoints the clients point at.
pub async fn run(sqs: SqsClient, dynamodb: DynamoClient) -> anyhow::Result<String> {
    let run_id = aws::now_ms() % 1_000_000_000;
    let mut log = String::new();
    let table = DeliveryTable::new(dynamodb.clone(), format!("notifications-demo-{run_id}"));
    table.create_if_missing().await?;
    // A short visibility timeout brings transient failures back quickly; under moto's load it also
    // redelivers messages still being handled, which the consumer must absorb (claims, dead-letter
    // markers). Eight receives before SQS moves a message keep SQS's own move for what keeps
    // failing (the push outage). Lambda's real visibility timeout, six times the function's, never
    // lapses mid-batch; here a message whose every receive outlasted it would be moved by SQS
    // after the consumer dead-lettered it, a second copy no consumer can prevent.
    let visibility = Duration::from_secs(2);
    let queues = aws::create_queue_pair(
        &sqs,
        &format!("notifications-demo-{run_id}"),
        QueueSettings { max_receive_count: 8, visibility_timeout: visibility },
    )
    .await?;
    let provider = LocalProvider::start(Duration::from_millis(1500)).await?;
    let consumer = Consumer {
        sqs: sqs.clone(),
        table: table.clone(),
        provider: Provider::new(&ProviderSettings { base_url: provider.url.clone(), timeout: Duration::from_millis(500) })?,
        settings: ConsumerSettings { concurrency: 10, lease: Duration::from_secs(30), ..ConsumerSettings::new(&queues.dlq_url) },
    };
    let pump_settings = PumpSettings { visibility, ..PumpSettings::default() };

    log.push_str(&intake_scenario(&sqs, dynamodb, &table, &queues, &provider, &consumer, pump_settings).await?);

    // 1,000 notifications: 10% malformed, 8% push (gateway down), 5% on an unregistered template,
    // 5% alimtalk to numbers without KakaoTalk (fallback sms), some transient hiccups. They are
    // queued as the intake queues them, malformed ones included (as an older intake or another
    // producer might have), to show what the consumer does with them.
    let sender = Sender::parse(DEMO_SENDER).map_err(anyhow::Error::msg)?;
    let mut rng = Rng::new(2);
    let mut plans: BTreeMap<String, Plan> = BTreeMap::new();
    let mut bodies = Vec::with_capacity(1000);
    let mut malformed_bodies = HashSet::new();
    for i in 0..1000 {
        let id = format!("demo-{run_id}-{i:04}");
        let phone = format!("0101{:07}", i);
        let roll = rng.unit();
        let (plan, body) = if roll < 0.05 {
            (Plan::Malformed, format!("{{\"notification_id\":\"{id}\",\"channel\":\"sms\",\"recipient\":"))
        } else if roll < 0.10 {
            let bad = notification(&id, Channel::Email, &phone, "welcome", None);
            (Plan::Malformed, bad)
        } else if roll < 0.18 {
            (Plan::PushOutage, notification(&id, Channel::Push, &format!("fcm:device-{i}"), "order.shipped", None))
        } else if roll < 0.23 {
            (Plan::UnknownTemplate, notification(&id, Channel::Sms, &phone, "promo.winter", None))
        } else if roll < 0.28 {
            provider.reject(&id, Channel::Alimtalk);
            (Plan::Fallback, notification(&id, Channel::Alimtalk, &phone, "order.shipped", Some(Channel::Sms)))
        } else {
            let channel = [Channel::Alimtalk, Channel::Sms, Channel::Email][i % 3];
            let recipient = if channel == Channel::Email { format!("user{i}@example.com") } else { phone };
            if roll > 0.95 {
                provider.fail_next(&id, &[Failure::Unavailable, Failure::Throttled][..1 + i % 2]);
            }
            let fallback = (channel == Channel::Alimtalk).then_some(Channel::Sms);
            (Plan::Plain, notification(&id, channel, &recipient, "order.shipped", fallback))
        };
        if plan == Plan::Malformed {
            malformed_bodies.insert(body.clone());
        }
        plans.insert(id, plan);
        bodies.push(body);
    }
    provider.set_channel_down(Channel::Push, true);
    provider.set_template_rejected("promo.winter", true);
    let count = |p: Plan| plans.values().filter(|&&x| x == p).count();
    log.push_str(&format!(
        "\nsent 1000 notifications to {}: {} plain, {} malformed, {} push (gateway down), {} on an unregistered template, {} alimtalk without KakaoTalk (sms fallback)\n",
        queues.source_url,
        count(Plan::Plain),
        count(Plan::Malformed),
        count(Plan::PushOutage),
        count(Plan::UnknownTemplate),
        count(Plan::Fallback)
    ));
    aws::send_all_as(&sqs, &queues.source_url, &sender, &bodies).await?;

    let stats = pump(&consumer, &sqs, &queues.source_url, pump_settings).await?;
    log.push_str(&format!(
        "consumer: {} invocations, {} records, {} reported as transient failures\n",
        stats.invocations, stats.records, stats.reported_failures
    ));
    log.push_str(&where_they_are(&table, &sqs, &queues, &provider, &sender, &plans).await?);

    log.push_str("\nprovider fixed: push gateway up, template promo.winter registered\n");
    provider.set_channel_down(Channel::Push, false);
    provider.set_template_rejected("promo.winter", false);

    let filter = RedriveFilter { kinds: vec![ErrorKind::ProviderRejected, ErrorKind::RetriesExhausted], ..RedriveFilter::default() };
    let dry =
        aws::selective_redrive(&sqs, &queues, &filter, &RedriveOptions { dry_run: true, ..RedriveOptions::default() }, &mut |_| {}).await?;
    log.push_str(&format!(
        "redrive --dry-run --kind provider_rejected --kind retries_exhausted: would move {} of {} ({:?})\n",
        dry.matched, dry.examined, dry.by_kind
    ));
    let report = aws::selective_redrive(&sqs, &queues, &filter, &RedriveOptions::default(), &mut |_| {}).await?;
    log.push_str(&format!(
        "redrive: moved {} (send failures {}, delete failures {}); malformed ones stay in the DLQ\n",
        report.moved, report.send_failures, report.delete_failures
    ));
    let stats = pump(&consumer, &sqs, &queues.source_url, pump_settings).await?;
    log.push_str(&format!("consumer: {} invocations, {} records\n", stats.invocations, stats.records));
    log.push_str(&where_they_are(&table, &sqs, &queues, &provider, &sender, &plans).await?);

    // Every valid notification delivered exactly once, nothing else sent.
    let counts = provider.accepted_counts();
    let valid: Vec<&String> = plans.iter().filter(|(_, p)| **p != Plan::Malformed).map(|(id, _)| id).collect();
    let once = valid.iter().filter(|id| counts.get(id.as_str()) == Some(&1)).count();
    let malformed_sent = plans.iter().filter(|(id, p)| **p == Plan::Malformed && counts.contains_key(id.as_str())).count();
    log.push_str(&format!(
        "\nvalid notifications delivered exactly once: {once} of {}; sent twice: {}; malformed sent: {malformed_sent}\n",
        valid.len(),
        valid.iter().filter(|id| counts.get(id.as_str()).is_some_and(|&c| c > 1)).count() + provider.repeats()
    ));
    ensure!(
        once == valid.len() && malformed_sent == 0 && provider.repeats() == 0,
        "not every valid notification was delivered exactly once"
    );
    // Every failed notification is in the DLQ exactly once: the DLQ alarm and counts tell the truth.
    let letters = peek_and_release(&sqs, &queues.dlq_url).await?;
    let dead: HashSet<&str> = letters.iter().map(|m| m.body.as_str()).collect();
    log.push_str(&format!(
        "dead-letter queue: {} messages for {} malformed notifications, {} distinct\n",
        letters.len(),
        malformed_bodies.len(),
        dead.len()
    ));
    let mut by_kind: BTreeMap<String, usize> = BTreeMap::new();
    let mut copies: HashMap<&str, Vec<String>> = HashMap::new();
    for m in &letters {
        *by_kind.entry(m.dead_letter().kind.to_string()).or_default() += 1;
        copies.entry(m.body.as_str()).or_default().push(format!("{} (message {})", m.dead_letter().kind, m.message_id));
    }
    let repeated: Vec<&Vec<String>> = copies.values().filter(|c| c.len() > 1).take(5).collect();
    ensure!(
        letters.len() == malformed_bodies.len() && dead == malformed_bodies.iter().map(String::as_str).collect::<HashSet<_>>(),
        "the DLQ does not hold exactly one dead letter per malformed notification: {} letters ({} distinct, {by_kind:?}) for {} malformed; repeated: {repeated:?}\n{log}",
        letters.len(),
        dead.len(),
        malformed_bodies.len()
    );
    Ok(log)
}

/// The intake: two senders submit the same `notification_id` to their own numbers and both are
/// delivered; one of them repeats it and it is sent once; a request without the scope, an
/// oversized one, an invalid one and a throttled one are refused and queue nothing.
async fn intake_scenario(
    sqs: &SqsClient,
    dynamodb: DynamoClient,
    table: &DeliveryTable,
    queues: &QueuePair,
    provider: &LocalProvider,
    consumer: &Consumer,
    pump_settings: PumpSettings,
) -> anyhow::Result<String> {
    let mut log = String::from("intake (POST /notifications, scope ferry/notify, 2 requests per caller an hour):\n");
    let settings = IntakeSettings {
        scope: Some("ferry/notify".into()),
        max_body_bytes: 4096,
        rate: Some(FixedWindow { limit: 2, window_secs: 3600 }),
        ..IntakeSettings::new(&queues.source_url, table.name())
    };
    let intake = Intake::new(sqs.clone(), dynamodb, settings);
    let id = "order-123-shipped";
    let body = |phone: &str| notification(id, Channel::Sms, phone, "order.shipped", None);
    let shop_a: &[(&str, &str)] = &[("sub", "shop-a"), ("scope", "openid ferry/notify")];
    let shop_b: &[(&str, &str)] = &[("client_id", "shop-b-client"), ("scope", "ferry/notify")];
    let oversized =
        notification(id, Channel::Sms, "01012345678", "order.shipped", None).replace("\"Kim\"", &format!("\"{}\"", "K".repeat(5000)));
    let requests = [
        ("shop-a sends", notify_request(Some(shop_a), &body("01011110000"))),
        ("shop-b (client credentials) sends the same id", notify_request(Some(shop_b), &body("01022220000"))),
        ("shop-a repeats it", notify_request(Some(shop_a), &body("01011110000"))),
        ("without the scope", notify_request(Some(&[("sub", "shop-c")]), &body("01033330000"))),
        ("a body over 4 KiB", notify_request(Some(shop_a), &oversized)),
        ("a bad recipient", notify_request(Some(shop_a), &notification(id, Channel::Sms, "call me", "order.shipped", None))),
        ("shop-a's third request this hour", notify_request(Some(shop_a), &body("01011110000"))),
    ];
    for (what, req) in requests {
        let res = notify::intake::handle(&intake, req).await.unwrap_or_else(|e| match e {});
        let answer = String::from_utf8_lossy(res.body().as_ref()).into_owned();
        log.push_str(&format!("  {what}: {} {answer}\n", res.status().as_u16()));
    }
    pump(consumer, sqs, &queues.source_url, pump_settings).await?;
    let recipients = provider.accepted_recipients(id);
    log.push_str(&format!("  delivered {id} to {recipients:?} (one per sender; the repeat was not sent)\n"));
    ensure!(recipients.len() == 2, "each sender's {id} was to be delivered once, got {recipients:?}");
    Ok(log)
}

/// Where each notification ended up: delivery records, the DLQ by reason, the provider's count.
async fn where_they_are(
    table: &DeliveryTable,
    sqs: &SqsClient,
    queues: &QueuePair,
    provider: &LocalProvider,
    sender: &Sender,
    plans: &BTreeMap<String, Plan>,
) -> anyhow::Result<String> {
    let mut by_status: BTreeMap<String, usize> = BTreeMap::new();
    let mut by_channel: BTreeMap<String, usize> = BTreeMap::new();
    for id in plans.keys() {
        match table.get(sender, id).await? {
            Some(r) => {
                *by_status.entry(r.status.to_string()).or_default() += 1;
                if r.status.is_done() {
                    *by_channel.entry(r.channel.map_or("?".into(), |c| c.to_string())).or_default() += 1;
                }
            }
            None => *by_status.entry("no record".into()).or_default() += 1,
        }
    }
    let letters = peek_and_release(sqs, &queues.dlq_url).await?;
    let mut by_kind: BTreeMap<String, usize> = BTreeMap::new();
    for m in &letters {
        *by_kind.entry(m.dead_letter().kind.to_string()).or_default() += 1;
    }
    let (visible, in_flight) = aws::queue_depth(sqs, &queues.source_url).await?;
    let accepted: usize = provider.accepted_counts().values().sum();
    let delivered =
        by_status.get(Status::Sent.as_str()).copied().unwrap_or(0) + by_status.get(Status::Delivered.as_str()).copied().unwrap_or(0);
    let mut out = format!("  delivery records: {by_status:?}\n  delivered by channel: {by_channel:?}\n");
    let distinct: HashSet<&str> = letters.iter().map(|m| m.body.as_str()).collect();
    out.push_str(&format!("  dead-letter queue: {} messages for {} notifications {by_kind:?}\n", letters.len(), distinct.len()));
    out.push_str(&format!("  source queue: {visible} visible, {in_flight} in flight\n"));
    out.push_str(&format!("  provider: {accepted} accepted for {delivered} delivered records, {} requests in all\n", provider.requests()));
    // The DLQ peek hid its messages for a moment; let them reappear before anyone reads the DLQ.
    tokio::time::sleep(Duration::from_secs(2)).await;
    Ok(out)
}
