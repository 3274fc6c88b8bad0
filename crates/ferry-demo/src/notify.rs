//! The notification scenario: two senders sharing a notification id through the intake; then
//! 1,000 notifications, some malformed, some hitting a failing provider; fix it, redrive, and check
//! that every valid one was delivered exactly once and every failed one is in the DLQ exactly once.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use anyhow::ensure;
use ferry_aws::notify::{self as aws, DeliveryTable, DynamoClient, QueuePair, RedriveOptions, SqsClient};
use ferry_core::notify::{Channel, ErrorKind, FixedWindow, RedriveFilter, Sender, Status};
use ferry_testkit::events::{notification, notify_request};
use ferry_testkit::provider::{Failure, LocalProvider};
use ferry_testkit::provision::{self, QueueSettings};
use ferry_testkit::sqs::{PumpSettings, peek_and_release, pump};
use notify::consumer::Consumer;
use notify::{ConsumerSettings, Intake, IntakeSettings, Provider, ProviderSettings};

use crate::votes::Rng;

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
    let table_name = format!("notifications-demo-{run_id}");
    provision::deliveries_table(&dynamodb, &table_name).await?;
    let table = DeliveryTable::new(dynamodb.clone(), table_name);
    // A short visibility timeout brings transient failures back quickly; under moto's load it also
    // redelivers messages still being handled, which the consumer must absorb (claims, dead-letter
    // markers). Eight receives before SQS moves a message keep SQS's own move for what keeps
    // failing (the push outage). Lambda's real visibility timeout, six times the function's, never
    // lapses mid-batch; here a message whose every receive outlasted it would be moved by SQS
    // after the consumer dead-lettered it, a second copy no consumer can prevent.
    let visibility = Duration::from_secs(2);
    let queues = provision::queue_pair(
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
