//! Case 5: the notification consumer's own cost per 10-record batch.
//!
//! The real `notify::consumer::process` runs with real SDK clients and the real provider client,
//! against endpoints that answer at once: an in-process DynamoDB stand-in that accepts every
//! `UpdateItem` (every claim and every status write succeeds) and a provider that accepts every
//! message. Both run on their own runtime thread, so what is timed is the handler: parsing and
//! validating each record, building, signing and sending its three HTTP calls (claim, provider,
//! status), and reading the replies. moto would be the only other local endpoint, and its own
//! milliseconds per request would be most of the number.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_lambda_events::sqs::{SqsEvent, SqsMessage};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use ferry_aws::notify::DeliveryTable;
use notify::{Consumer, ConsumerSettings, Provider, ProviderSettings};

#[derive(Debug, clap::Args)]
pub struct ConsumerArgs {
    /// Timed batches (after 100 untimed warm-up batches).
    #[arg(long, default_value_t = 2000)]
    batches: usize,
    /// Records per batch (the SQS event source's batch size).
    #[arg(long, default_value_t = 10)]
    size: usize,
}

#[derive(Default)]
struct Served {
    update_item: AtomicU64,
    provider: AtomicU64,
    other: AtomicU64,
}

pub fn run(a: &ConsumerArgs) -> anyhow::Result<()> {
    let served = Arc::new(Served::default());
    let (aws, provider) = serve(served.clone())?;
    // One runtime like the Lambda binary's (`#[tokio::main]`, multi-threaded).
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let conf = SdkConfig::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .endpoint_url(format!("http://{aws}"))
            .credentials_provider(aws_sdk_sqs::config::SharedCredentialsProvider::new(aws_sdk_sqs::config::Credentials::new(
                "bench", "bench", None, None, "ferry-bench",
            )))
            .build();
        let consumer = Consumer {
            sqs: ferry_aws::clients::sqs(&conf),
            table: DeliveryTable::new(ferry_aws::clients::dynamodb(&conf), "notifications"),
            provider: Provider::new(&ProviderSettings { base_url: format!("http://{provider}"), timeout: Duration::from_secs(5) })?,
            settings: ConsumerSettings::new(format!("http://{aws}/000000000000/notifications-dlq")),
        };
        let mut n = 0u64;
        let mut batch = |size: usize| {
            let records = (0..size)
                .map(|_| {
                    n += 1;
                    record(n)
                })
                .collect();
            let mut event = SqsEvent::default();
            event.records = records;
            event
        };
        for _ in 0..100 {
            check(&notify::consumer::process(&consumer, &batch(a.size)).await)?;
        }
        let before = (served.update_item.load(Ordering::Relaxed), served.provider.load(Ordering::Relaxed));
        let cpu0 = cpu_seconds();
        let mut times = Vec::with_capacity(a.batches);
        for _ in 0..a.batches {
            let event = batch(a.size);
            let t = Instant::now();
            let reports = notify::consumer::process(&consumer, &event).await;
            times.push(t.elapsed().as_secs_f64());
            check(&reports)?;
        }
        let cpu = cpu_seconds() - cpu0;
        let records = (a.batches * a.size) as u64;
        let calls = (served.update_item.load(Ordering::Relaxed) - before.0, served.provider.load(Ordering::Relaxed) - before.1);
        anyhow::ensure!(calls == (2 * records, records), "expected {} status writes and {records} sends, saw {calls:?}", 2 * records);
        anyhow::ensure!(served.other.load(Ordering::Relaxed) == 0, "the consumer made calls other than UpdateItem");
        times.sort_by(f64::total_cmp);
        let q = |p: f64| times[((times.len() - 1) as f64 * p).round() as usize] * 1000.0;
        println!(
            "{} batches of {} records: median {:.3} ms, p90 {:.3} ms, p99 {:.3} ms per batch; process CPU {:.3} ms per batch; {} UpdateItem and {} provider calls",
            a.batches,
            a.size,
            q(0.5),
            q(0.9),
            q(0.99),
            cpu * 1000.0 / a.batches as f64,
            calls.0,
            calls.1
        );
        Ok(())
    })
}

/// Every record must have been sent: a benchmark of failures would time the wrong path.
fn check(reports: &[notify::consumer::RecordReport]) -> anyhow::Result<()> {
    for r in reports {
        let outcome = serde_json::to_value(r)?;
        anyhow::ensure!(outcome["outcome"] == "sent", "record {} was not sent: {outcome}", r.message_id);
    }
    Ok(())
}

fn record(n: u64) -> SqsMessage {
    let body = serde_json::json!({
        "notification_id": format!("n-bench-{n:08}"),
        "channel": "alimtalk",
        "recipient": "+821012345678",
        "template": "order.shipped",
        "variables": {"name": "Kim", "order": format!("A-{n}")},
        "fallback": "sms",
        "requested_at": "2026-11-22T15:30:00Z",
    });
    let mut m = SqsMessage::default();
    m.message_id = Some(format!("m-{n}"));
    m.receipt_handle = Some(format!("r-{n}"));
    m.body = Some(body.to_string());
    // The sender the intake names on every message it queues; the consumer dead-letters one without.
    let mut sender = aws_lambda_events::sqs::SqsMessageAttribute::default();
    sender.string_value = Some("shop-bench".into());
    sender.data_type = Some("String".into());
    m.message_attributes.insert(ferry_api::sqs::attr::SENDER.into(), sender);
    m.attributes.insert("ApproximateReceiveCount".into(), "1".into());
    m.attributes.insert("SentTimestamp".into(), "1795361400000".into());
    m.event_source = Some("aws:sqs".into());
    m.event_source_arn = Some("arn:aws:sqs:us-east-1:000000000000:notifications".into());
    m.aws_region = Some("us-east-1".into());
    m
}

/// Starts the two stand-ins on their own thread and runtime; returns their addresses.
fn serve(served: Arc<Served>) -> anyhow::Result<(SocketAddr, SocketAddr)> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => return drop(tx.send(Err(anyhow::Error::from(e)))),
        };
        rt.block_on(async move {
            let bind = || tokio::net::TcpListener::bind("127.0.0.1:0");
            let (aws, provider) = match (bind().await, bind().await) {
                (Ok(a), Ok(p)) => (a, p),
                (Err(e), _) | (_, Err(e)) => return drop(tx.send(Err(e.into()))),
            };
            let addrs = (aws.local_addr(), provider.local_addr());
            let s1 = served.clone();
            let aws_app = axum::Router::new().fallback(move |headers: HeaderMap| {
                let served = s1.clone();
                async move { dynamodb(&served, &headers) }
            });
            let s2 = served.clone();
            let provider_app = axum::Router::new().route(
                "/v1/messages",
                axum::routing::post(move || {
                    let served = s2.clone();
                    async move {
                        served.provider.fetch_add(1, Ordering::Relaxed);
                        axum::Json(serde_json::json!({"status": "sent", "provider_message_id": "p-1"}))
                    }
                }),
            );
            match addrs {
                (Ok(a), Ok(p)) => drop(tx.send(Ok((a, p)))),
                (Err(e), _) | (_, Err(e)) => return drop(tx.send(Err(e.into()))),
            }
            let _ = tokio::join!(axum::serve(aws, aws_app), axum::serve(provider, provider_app));
        });
    });
    rx.recv().context("the stand-in thread ended before it started")?
}

fn dynamodb(served: &Served, headers: &HeaderMap) -> axum::response::Response {
    let target = headers.get("x-amz-target").and_then(|v| v.to_str().ok()).unwrap_or_default();
    if target == "DynamoDB_20120810.UpdateItem" {
        served.update_item.fetch_add(1, Ordering::Relaxed);
        ([("content-type", "application/x-amz-json-1.0")], r#"{"Attributes":{}}"#).into_response()
    } else {
        served.other.fetch_add(1, Ordering::Relaxed);
        (
            StatusCode::BAD_REQUEST,
            [("content-type", "application/x-amz-json-1.0")],
            format!(r#"{{"__type":"UnknownOperationException","message":"{target}"}}"#),
        )
            .into_response()
    }
}

/// User plus system CPU time of this process so far.
fn cpu_seconds() -> f64 {
    // /proc/self/stat fields 14 and 15 are utime and stime in clock ticks (100 per second on Linux).
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}
