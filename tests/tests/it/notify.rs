//! Notifications against moto and a local provider: the intake route, the real consumer handler
//! on SQS events as Lambda sends them, delivery records in DynamoDB, the DLQ and both redrives,
//! the provider client against hostile servers. moto does not implement `StartMessageMoveTask` /
//! `ListMessageMoveTasks`; those calls run against aws-smithy-mocks.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use aws_smithy_mocks::{MockResponseInterceptor, Rule, RuleMode, mock};
use ferry_api::sqs::attr;
use ferry_aws::notify::{
    self as aws, Claim, DeliveryTable, LetterScope, LetterSlot, QueuePair, Received, RedriveOptions, SqsClient, Written,
};
use ferry_core::notify::{Channel, ErrorKind, FixedWindow, Notification, RedriveFilter, Sender, Status};
use ferry_testkit::events::{notification, notify_request, sqs_event};
use ferry_testkit::provider::{Failure, LocalProvider};
use ferry_testkit::provision::{self, QueueSettings};
use ferry_testkit::sqs::{PumpSettings, PumpStats, peek_and_release, pump};
use ferry_testkit::{event_fixture, sdk_config, unique};
use lambda_runtime::{Context, LambdaEvent};
use notify::consumer::{Consumer, RecordOutcome};
use notify::provider::Reply;
use notify::{ConsumerSettings, Intake, IntakeSettings, Provider, ProviderAuth, ProviderSettings, Redriver};

/// The sender of the fixtures' messages.
const FIXTURE_SENDER: &str = "5f0c-shop-backend";

fn sender(s: &str) -> Sender {
    Sender::parse(s).expect("a valid sender")
}

struct Env {
    sqs: SqsClient,
    dynamodb: aws::DynamoClient,
    table: DeliveryTable,
    queues: QueuePair,
    provider: LocalProvider,
    consumer: Consumer,
}

async fn env(queue: QueueSettings) -> Env {
    let conf = sdk_config();
    let sqs = ferry_aws::clients::sqs(&conf);
    let dynamodb = ferry_aws::clients::dynamodb(&conf);
    let table = DeliveryTable::new(dynamodb.clone(), unique("notifications"));
    provision::deliveries_table(&dynamodb, table.name()).await.expect("creating the table on moto");
    let queues = provision::queue_pair(&sqs, &unique("notify"), queue).await.expect("creating queues on moto");
    let provider = LocalProvider::start(Duration::from_millis(800)).await.expect("local provider");
    let consumer = Consumer {
        sqs: sqs.clone(),
        table: table.clone(),
        provider: Provider::new(&ProviderSettings { base_url: provider.url.clone(), timeout: Duration::from_millis(300) }).expect("client"),
        settings: ConsumerSettings { concurrency: 8, lease: Duration::from_secs(30), ..ConsumerSettings::new(&queues.dlq_url) },
    };
    Env { sqs, dynamodb, table, queues, provider, consumer }
}

fn fast_queue() -> QueueSettings {
    QueueSettings { max_receive_count: 5, visibility_timeout: Duration::from_secs(1) }
}

impl Env {
    // Read with a long visibility timeout, then released: with a short one, a long queue's first
    // messages come back before the read reaches its end and the read never sees it empty.
    async fn dlq(&self) -> Vec<Received> {
        peek_and_release(&self.sqs, &self.queues.dlq_url).await.expect("reading the DLQ")
    }

    async fn source(&self) -> Vec<Received> {
        peek_and_release(&self.sqs, &self.queues.source_url).await.expect("reading the queue")
    }

    async fn drain(&self) -> PumpStats {
        pump(&self.consumer, &self.sqs, &self.queues.source_url, PumpSettings::default()).await.expect("pumping the queue")
    }
}

fn plain(id: &str) -> String {
    notification(id, Channel::Email, &format!("{id}@example.com"), "welcome", None)
}

fn id_of(body: &str) -> Option<String> {
    serde_json::from_str::<serde_json::Value>(body).ok()?.get("notification_id")?.as_str().map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread")]
async fn partial_batch_response_names_exactly_the_transient_failures() {
    let e = env(fast_queue()).await;
    // The fixture's six records: valid e-mail, broken JSON, unknown channel, push, alimtalk with sms
    // fallback, and a valid e-mail without a sender (it did not come through the intake).
    e.provider.fail_next("n-batch-4", &[Failure::Unavailable]);
    e.provider.reject("n-batch-5", Channel::Alimtalk);
    let event = event_fixture("sqs-notification-batch.json");
    let ids: Vec<String> = event["Records"].as_array().unwrap().iter().map(|r| r["messageId"].as_str().unwrap().to_owned()).collect();
    let payload = serde_json::from_value(event.clone()).unwrap();
    let reports = notify::consumer::process(&e.consumer, &payload).await;
    let outcomes: Vec<&str> = reports
        .iter()
        .map(|r| match &r.outcome {
            RecordOutcome::Sent { .. } => "sent",
            RecordOutcome::AlreadyDone { .. } => "already_done",
            RecordOutcome::DeadLettered { kind, .. } => kind.as_str(),
            RecordOutcome::AlreadyDeadLettered { .. } => "already_dead_lettered",
            RecordOutcome::Retry { .. } => "retry",
        })
        .collect();
    assert_eq!(outcomes, ["sent", "malformed_json", "invalid_message", "retry", "sent", "invalid_message"], "{reports:#?}");
    assert_eq!(e.provider.accepted("n-batch-5"), ["sms"], "the permanent alimtalk refusal falls back to sms");

    assert_eq!(e.provider.accepted("n-batch-6"), Vec::<String>::new(), "nothing without a sender reaches the provider");

    // The handler itself, on the same event again (SQS redelivering every record): only the push
    // record is still failing... once more.
    e.provider.fail_next("n-batch-4", &[Failure::Throttled]);
    let response =
        notify::consumer::handle(&e.consumer, LambdaEvent::new(serde_json::from_value(event).unwrap(), Context::default())).await.unwrap();
    let failed: Vec<&str> = response.batch_item_failures.iter().map(|f| f.item_identifier.as_str()).collect();
    assert_eq!(failed, [ids[3].as_str()]);
    // Valid ones were acknowledged as done without sending again; each bad one is in the DLQ once,
    // though it was delivered twice.
    assert_eq!(e.provider.accepted("n-batch-1"), ["email"]);
    assert_eq!(e.provider.repeats(), 0);
    let dlq = e.dlq().await;
    let kinds: Vec<String> = dlq.iter().map(|m| m.attributes[attr::ERROR_KIND].clone()).collect();
    assert_eq!(kinds.iter().filter(|k| *k == "malformed_json").count(), 1, "{kinds:?}");
    assert_eq!(kinds.iter().filter(|k| *k == "invalid_message").count(), 2, "{kinds:?}");
    assert_eq!(dlq.len(), 3, "{kinds:?}");
    let letter = dlq.iter().find(|m| m.attributes.get(attr::NOTIFICATION_ID).map(String::as_str) == Some("n-batch-3")).unwrap();
    assert!(letter.attributes[attr::ERROR].contains("field `channel`"), "{:?}", letter.attributes);
    assert_eq!(letter.attributes[attr::ERROR_KIND], "invalid_message");
    assert_eq!(letter.attributes[attr::FIRST_SENT_AT], "1795361400000");
    assert_eq!(letter.attributes[attr::SENDER], FIXTURE_SENDER, "the sender travels with the dead letter");
    let unsent = dlq.iter().find(|m| m.attributes.get(attr::NOTIFICATION_ID).map(String::as_str) == Some("n-batch-6")).unwrap();
    assert!(unsent.attributes[attr::ERROR].contains(attr::SENDER), "{:?}", unsent.attributes);
    assert!(!unsent.attributes.contains_key(attr::SENDER));
}

#[tokio::test(flavor = "multi_thread")]
async fn thousands_of_messages_nothing_lost_none_sent_twice() {
    // A 1 s visibility timeout: under load, messages come back while their batch still runs, as
    // at-least-once delivery allows. Eight receives keep SQS's own move (which no consumer can
    // deduplicate) for messages that really keep failing.
    let queue = QueueSettings { max_receive_count: 8, visibility_timeout: Duration::from_secs(1) };
    let e = env(queue).await;
    let run = unique("bulk");
    let shop = sender("bulk-sender");
    let total = 3000;
    let mut bodies = Vec::new();
    let mut valid = HashSet::new();
    let mut malformed = HashSet::new();
    for i in 0..total {
        let id = format!("{run}-{i}");
        let body = match i % 10 {
            // 10% malformed: half broken JSON, half schema errors.
            0 if i % 20 == 0 => format!("{{\"notification_id\":\"{id}\",\"channel\""),
            0 => notification(&id, Channel::Sms, "not-a-number", "welcome", None),
            // 10% hit transient provider failures first.
            1 => {
                let failures = [
                    [Failure::Unavailable, Failure::Throttled],
                    [Failure::Throttled, Failure::Unavailable],
                    [Failure::Hang, Failure::Unavailable],
                ];
                e.provider.fail_next(&id, &failures[i / 10 % 3][..1 + (i / 10) % 2]);
                plain(&id)
            }
            _ => plain(&id),
        };
        if i % 10 == 0 {
            malformed.insert(body.clone());
        } else {
            valid.insert(id);
        }
        bodies.push(body);
    }
    // SQS delivers at least once: 150 valid messages arrive twice.
    let duplicates: Vec<String> =
        bodies.iter().filter(|b| id_of(b).is_some_and(|id| valid.contains(&id))).step_by(17).take(150).cloned().collect();
    assert_eq!(duplicates.len(), 150);
    bodies.extend(duplicates);

    // Ten queues of about three hundred, drained one after another by the same consumer, table and
    // provider: moto's SQS recounts a whole queue for each message it sends or receives, so one
    // queue of thousands takes many minutes. A duplicate lands in a later queue than its first
    // copy, as a redrive's would.
    let mut queues = vec![e.queues.clone()];
    for _ in 0..9 {
        queues.push(provision::queue_pair(&e.sqs, &unique("notify"), queue).await.expect("creating queues on moto"));
    }
    let chunk = bodies.len().div_ceil(queues.len());
    let mut reported_failures = 0;
    for (q, part) in queues.iter().zip(bodies.chunks(chunk)) {
        aws::send_all_as(&e.sqs, &q.source_url, &shop, part).await.unwrap();
        let stats = pump(&e.consumer, &e.sqs, &q.source_url, PumpSettings::default()).await.expect("pumping the queue");
        reported_failures += stats.reported_failures;
    }
    assert!(reported_failures >= total / 10, "every transient failure was reported for retry: {reported_failures}");

    let counts = e.provider.accepted_counts();
    let lost: Vec<&String> = valid.iter().filter(|id| !counts.contains_key(*id)).collect();
    assert!(lost.is_empty(), "{} valid notifications never delivered, e.g. {:?}", lost.len(), lost.first());
    let twice: Vec<(&String, &usize)> = counts.iter().filter(|(_, n)| **n != 1).collect();
    assert!(twice.is_empty(), "sent more than once: {twice:?}");
    assert_eq!(e.provider.repeats(), 0, "no request repeated an accepted idempotency key");
    assert_eq!(counts.len(), valid.len(), "nothing but the valid ones was sent");

    // Every malformed message is in the DLQ exactly once (none lost, none twice, nothing else
    // there), though under load with a 1 s visibility timeout some come back before their delete
    // lands; and the queue is empty.
    let dlq = e.dlq().await;
    let dead: HashSet<String> = dlq.iter().map(|m| m.body.clone()).collect();
    assert_eq!(dead, malformed);
    assert_eq!(dlq.len(), malformed.len(), "one dead letter per failed notification");
    for q in &queues {
        assert!(peek_and_release(&e.sqs, &q.source_url).await.unwrap().is_empty(), "{} drained", q.source_url);
        if q.dlq_url != e.queues.dlq_url {
            // Nothing ran out of receives: a valid message only ever waits out a transient failure.
            assert!(peek_and_release(&e.sqs, &q.dlq_url).await.unwrap().is_empty(), "{} empty", q.dlq_url);
        }
    }
    for id in valid.iter().step_by(97) {
        let rec = e.table.get(&shop, id).await.unwrap().expect("a delivery record");
        assert_eq!((rec.status, rec.channel), (Status::Sent, Some(Channel::Email)), "{id}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn status_never_goes_backwards_and_done_is_never_resent() {
    let e = env(fast_queue()).await;
    let id = unique("n");
    let shop = sender("status-sender");
    let Claim::Claimed { .. } = e.table.claim(&shop, &id, Duration::from_secs(30)).await.unwrap() else { panic!("first claim") };
    assert_eq!(e.table.advance(&shop, &id, Status::Delivered, Channel::Sms, Some("pm-1")).await.unwrap(), Written::Applied);
    // A late `sent` (a slow duplicate) never overwrites `delivered`.
    assert_eq!(e.table.advance(&shop, &id, Status::Sent, Channel::Sms, Some("pm-2")).await.unwrap(), Written::Skipped);
    let rec = e.table.get(&shop, &id).await.unwrap().unwrap();
    assert_eq!((rec.status, rec.provider_message_id.as_deref(), &rec.sender), (Status::Delivered, Some("pm-1"), &shop));
    assert_eq!(e.table.claim(&shop, &id, Duration::from_secs(30)).await.unwrap(), Claim::Done(Status::Delivered));
    // Another sender's notification of the same id is another record.
    assert!(matches!(e.table.claim(&sender("other-sender"), &id, Duration::from_secs(30)).await.unwrap(), Claim::Claimed { .. }));

    // The consumer acknowledges a redelivery of it without calling the provider.
    let body = notification(&id, Channel::Sms, "01012345678", "welcome", None);
    aws::send_all_as(&e.sqs, &e.queues.source_url, &shop, &[body]).await.unwrap();
    let batch = aws::receive(&e.sqs, &e.queues.source_url, 10, Duration::from_secs(5), Duration::from_secs(1)).await.unwrap();
    let event = serde_json::from_value(sqs_event("arn:aws:sqs:us-east-1:123456789012:q", &batch)).unwrap();
    let reports = notify::consumer::process(&e.consumer, &event).await;
    assert_eq!(reports[0].outcome, RecordOutcome::AlreadyDone { notification_id: id.clone(), status: Status::Delivered });
    assert_eq!(e.provider.requests(), 0);

    // The provider may report `delivered` at once; that is recorded as is.
    e.provider.reply_delivered(true);
    let other = unique("n");
    let event = serde_json::from_value(sqs_event(
        "arn:aws:sqs:us-east-1:123456789012:q",
        &[Received {
            message_id: "m-1".into(),
            receipt_handle: "r-1".into(),
            body: plain(&other),
            attributes: BTreeMap::from([(attr::SENDER.to_owned(), shop.to_string())]),
            system: BTreeMap::new(),
        }],
    ))
    .unwrap();
    notify::consumer::process(&e.consumer, &event).await;
    assert_eq!(e.table.get(&shop, &other).await.unwrap().unwrap().status, Status::Delivered);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lapsed_claim_is_taken_over_and_a_live_one_is_not() {
    let e = env(fast_queue()).await;
    let id = unique("n");
    let shop = sender("lapse-sender");
    // A consumer claims, then dies between sending and recording.
    let Claim::Claimed { .. } = e.table.claim(&shop, &id, Duration::from_millis(1500)).await.unwrap() else { panic!("claim") };
    assert!(matches!(e.table.claim(&shop, &id, Duration::from_secs(30)).await.unwrap(), Claim::InFlight { .. }));
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let Claim::Claimed { token, .. } = e.table.claim(&shop, &id, Duration::from_secs(30)).await.unwrap() else { panic!("takeover") };
    // A permanent failure can be claimed again (a redrive after the cause is fixed).
    assert_eq!(e.table.mark_failed(&shop, &id, &token, "sms: 400").await.unwrap(), Written::Applied);
    assert_eq!(e.table.mark_failed(&shop, &id, &token, "again").await.unwrap(), Written::Skipped);
    assert!(matches!(e.table.claim(&shop, &id, Duration::from_secs(30)).await.unwrap(), Claim::Claimed { .. }));
    let rec = e.table.get(&shop, &id).await.unwrap().unwrap();
    assert_eq!((rec.status, rec.attempts), (Status::Sending, 3));
}

/// Puts dead letters of several kinds into the DLQ; returns notification id -> (kind, channel).
async fn seed_dlq(e: &Env, prefix: &str) -> BTreeMap<String, (ErrorKind, Channel)> {
    let mut seeded = BTreeMap::new();
    let kinds = [ErrorKind::ProviderRejected, ErrorKind::InvalidMessage, ErrorKind::RetriesExhausted];
    let channels = [Channel::Sms, Channel::Email, Channel::Push];
    for i in 0..18 {
        let (kind, channel) = (kinds[i % 3], channels[(i / 3) % 3]);
        let id = format!("{prefix}-{i}");
        let recipient = match channel {
            Channel::Email => format!("{id}@example.com"),
            Channel::Push => format!("fcm:{id}"),
            _ => "01012345678".to_owned(),
        };
        let body = notification(&id, channel, &recipient, "welcome", None);
        // What SQS's redrive policy moves carries no attributes; what the consumer sends does.
        let mut attrs = if kind == ErrorKind::RetriesExhausted {
            BTreeMap::new()
        } else {
            BTreeMap::from([
                (attr::ERROR_KIND.to_owned(), kind.as_str().to_owned()),
                (attr::CHANNEL.to_owned(), channel.as_str().to_owned()),
            ])
        };
        attrs.insert(attr::SENDER.to_owned(), FIXTURE_SENDER.to_owned());
        aws::send_dead_letter(&e.sqs, &e.queues.dlq_url, &body, &attrs).await.expect("seeding the DLQ");
        seeded.insert(id, (kind, channel));
    }
    seeded
}

#[tokio::test(flavor = "multi_thread")]
async fn selective_redrive_moves_only_what_matches() {
    let e = env(fast_queue()).await;
    let seeded = seed_dlq(&e, &unique("sel")).await;
    let filter = RedriveFilter {
        kinds: vec![ErrorKind::ProviderRejected, ErrorKind::RetriesExhausted],
        channels: vec![Channel::Sms, Channel::Push],
        ..RedriveFilter::default()
    };
    let expect: BTreeSet<String> =
        seeded.iter().filter(|(_, (k, c))| filter.kinds.contains(k) && filter.channels.contains(c)).map(|(id, _)| id.clone()).collect();
    assert_eq!(expect.len(), 8);

    // A dry run lists exactly those and moves nothing.
    let dry =
        aws::selective_redrive(&e.sqs, &e.queues, &filter, &RedriveOptions { dry_run: true, ..RedriveOptions::default() }, &mut |_| {})
            .await
            .unwrap();
    let listed: BTreeSet<String> = dry.messages.iter().filter_map(|m| m.notification_id.clone()).collect();
    assert_eq!((listed, dry.examined, dry.moved), (expect.clone(), 18, 0));
    assert!(e.source().await.is_empty());
    // What the run looked at is visible again at once, not after the visibility timeout.
    assert_eq!(e.dlq().await.len(), 18);

    let mut seen_progress = Vec::new();
    let report =
        aws::selective_redrive(&e.sqs, &e.queues, &filter, &RedriveOptions::default(), &mut |p| seen_progress.push(p)).await.unwrap();
    assert_eq!((report.matched, report.moved, report.send_failures), (8, 8, 0));
    assert_eq!(seen_progress.last().map(|p| p.moved), Some(8));
    let moved: BTreeSet<String> = e.source().await.iter().filter_map(|m| id_of(&m.body)).collect();
    assert_eq!(moved, expect);
    let left: BTreeSet<String> = e.dlq().await.iter().filter_map(|m| id_of(&m.body)).collect();
    assert_eq!(left, seeded.keys().filter(|id| !expect.contains(*id)).cloned().collect::<BTreeSet<_>>());
    // The failure attributes stay behind; the first-queued time travels with the message.
    let back = e.source().await;
    assert!(back.iter().all(|m| !m.attributes.contains_key(attr::ERROR_KIND) && m.attributes.contains_key(attr::FIRST_SENT_AT)));
    assert!(back.iter().all(|m| m.attributes.get(attr::SENDER).map(String::as_str) == Some(FIXTURE_SENDER)), "the sender comes back too");

    // Age: nothing in the DLQ is an hour old.
    let old = RedriveFilter { min_age_secs: Some(3600), ..RedriveFilter::default() };
    let r = aws::selective_redrive(&e.sqs, &e.queues, &old, &RedriveOptions::default(), &mut |_| {}).await.unwrap();
    assert_eq!((r.examined, r.moved), (10, 0));
}

/// Runs the `ferry` binary against moto, as an operator would with the queue URLs in the environment.
fn ferry_redrive(e: &Env, args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(ferry_testkit::binary("ferry"))
        .arg("redrive")
        .args(args)
        .env("FERRY_NOTIFY_QUEUE_URL", &e.queues.source_url)
        .env("FERRY_NOTIFY_DLQ_URL", &e.queues.dlq_url)
        .env("AWS_ENDPOINT_URL", ferry_testkit::moto_endpoint())
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-east-1")
        .env_remove("AWS_PROFILE")
        .output()
        .expect("running ferry");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_redrive_command_lists_then_moves_only_what_matches() {
    let e = env(fast_queue()).await;
    let seeded = seed_dlq(&e, &unique("cli")).await;
    let expect: BTreeSet<String> =
        seeded.iter().filter(|(_, (k, c))| *k == ErrorKind::ProviderRejected && *c != Channel::Push).map(|(id, _)| id.clone()).collect();
    assert_eq!(expect.len(), 4);
    let filter = ["--kind", "provider_rejected", "--channel", "sms", "--channel", "email"];

    let (code, stdout, stderr) = ferry_redrive(&e, &[&filter[..], &["--dry-run", "--json"]].concat());
    assert_eq!(code, 0, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("--json prints the report");
    let listed: BTreeSet<String> =
        report["messages"].as_array().expect("messages").iter().filter_map(|m| m["notification_id"].as_str().map(str::to_owned)).collect();
    assert_eq!((listed, report["examined"].as_u64(), report["moved"].as_u64()), (expect.clone(), Some(18), Some(0)));
    assert!(e.source().await.is_empty(), "a dry run moves nothing");

    let (code, stdout, stderr) = ferry_redrive(&e, &filter);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.starts_with("moved 4 of 18 dead letters looked at (4 matched)"), "{stdout}");
    let moved: BTreeSet<String> = e.source().await.iter().filter_map(|m| id_of(&m.body)).collect();
    assert_eq!(moved, expect);
    assert_eq!(e.dlq().await.len(), 14);

    // Bad input names itself and changes nothing.
    let (code, _, stderr) = ferry_redrive(&e, &["--kind", "exploded"]);
    assert_eq!(code, 2, "an unknown kind is a usage error");
    assert!(stderr.contains("exploded"), "{stderr}");
    let missing = format!("{}-missing", e.queues.dlq_url);
    let (code, _, stderr) = ferry_redrive(&e, &["--dlq-url", &missing, "--dry-run"]);
    assert_ne!(code, 0);
    assert!(stderr.contains(&missing), "the error names the queue: {stderr}");
    assert_eq!(e.dlq().await.len(), 14);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_interrupted_redrive_run_again_loses_nothing() {
    let e = env(fast_queue()).await;
    let run = unique("crash");
    let ids: Vec<String> = (0..300).map(|i| format!("{run}-{i}")).collect();
    for chunk in ids.chunks(10) {
        let bodies: Vec<String> = chunk.iter().map(|id| plain(id)).collect();
        // Moved by SQS's redrive policy: only the intake's sender attribute.
        let attrs = BTreeMap::from([(attr::SENDER.to_owned(), FIXTURE_SENDER.to_owned())]);
        for b in &bodies {
            aws::send_dead_letter(&e.sqs, &e.queues.dlq_url, b, &attrs).await.unwrap();
        }
    }
    let options = RedriveOptions { rate: Some(150.0), visibility_timeout: Duration::from_secs(2), ..RedriveOptions::default() };
    // Interrupted half-way: the future is dropped wherever it is, between a send and its delete too.
    let interrupted = tokio::time::timeout(
        Duration::from_millis(1000),
        aws::selective_redrive(&e.sqs, &e.queues, &RedriveFilter::default(), &options, &mut |_| {}),
    )
    .await;
    assert!(interrupted.is_err(), "the first run was meant to be cut short");
    let moved_so_far: BTreeSet<String> = e.source().await.iter().filter_map(|m| id_of(&m.body)).collect();
    assert!(!moved_so_far.is_empty() && moved_so_far.len() < ids.len(), "interrupted half-way: {} moved", moved_so_far.len());

    // Once the interrupted run's hidden messages reappear, run it again to the end.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let report =
        aws::selective_redrive(&e.sqs, &e.queues, &RedriveFilter::default(), &RedriveOptions::default(), &mut |_| {}).await.unwrap();
    assert_eq!(report.send_failures, 0);
    assert!(e.dlq().await.is_empty(), "the DLQ is empty after the second run");
    let in_source: Vec<String> = e.source().await.iter().filter_map(|m| id_of(&m.body)).collect();
    let distinct: BTreeSet<&String> = in_source.iter().collect();
    assert_eq!(distinct.len(), ids.len(), "every message is back in the source queue");

    // Possible duplicates from the interruption are harmless: each is delivered exactly once. One
    // poller: moto's conditional writes are not atomic under concurrent requests (DynamoDB's are), so
    // copies claimed at the same instant by two pollers could both win there.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    pump(&e.consumer, &e.sqs, &e.queues.source_url, PumpSettings { pollers: 1, ..PumpSettings::default() }).await.unwrap();
    let counts = e.provider.accepted_counts();
    assert!(ids.iter().all(|id| counts.get(id) == Some(&1)), "each delivered exactly once");
    assert_eq!(e.provider.repeats(), 0);
}

// ---- The admin route ---------------------------------------------------------------------------

fn request(fixture: &str, method: &str, body: Option<&str>) -> lambda_http::Request {
    let mut v = event_fixture(fixture);
    v["requestContext"]["http"]["method"] = method.into();
    v["routeKey"] = format!("{method} /admin/redrive").into();
    match body {
        Some(b) => v["body"] = b.into(),
        None => {
            v.as_object_mut().expect("an event object").remove("body");
        }
    }
    lambda_http::request::from_str(&v.to_string()).expect("an HTTP API v2 request")
}

fn body_json(res: &lambda_http::Response<lambda_http::Body>) -> serde_json::Value {
    serde_json::from_slice(res.body().as_ref()).expect("JSON body")
}

fn redriver(e: &Env) -> Redriver {
    Redriver { sqs: e.sqs.clone(), queues: e.queues.clone(), admin: Default::default(), time_budget: Duration::from_secs(20) }
}

/// The admin fixture with its `cognito:groups` claim set to `groups` (`None`: no authorizer).
fn with_groups(groups: Option<&str>, method: &str, body: Option<&str>) -> lambda_http::Request {
    let mut v = event_fixture("apigw-redrive.json");
    v["requestContext"]["http"]["method"] = method.into();
    v["routeKey"] = format!("{method} /admin/redrive").into();
    match groups {
        Some(g) => v["requestContext"]["authorizer"]["jwt"]["claims"]["cognito:groups"] = g.into(),
        None => {
            v["requestContext"].as_object_mut().expect("a request context").remove("authorizer");
        }
    }
    match body {
        Some(b) => v["body"] = b.into(),
        None => {
            v.as_object_mut().expect("an event object").remove("body");
        }
    }
    lambda_http::request::from_str(&v.to_string()).expect("an HTTP API v2 request")
}

/// A 403 says "forbidden" and nothing else: no claim, group or scope to forge.
#[track_caller]
fn assert_forbidden_says_nothing(res: &lambda_http::Response<lambda_http::Body>) {
    assert_eq!(res.status(), 403);
    let body = body_json(res);
    assert_eq!((body["error"]["code"].as_str(), body["error"]["message"].as_str()), (Some("forbidden"), Some("forbidden")), "{body}");
    let text = body.to_string();
    for leak in ["cognito", "groups", "ferry-admin", "claim", "scope", "ferry/notify"] {
        assert!(!text.contains(leak), "the 403 names {leak:?}: {text}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn only_admins_may_redrive() {
    let e = env(fast_queue()).await;
    let seeded = seed_dlq(&e, &unique("adm")).await;
    let state = redriver(&e);
    let everything = r#"{"mode":"selective"}"#;
    for req in [request("apigw-redrive-non-admin.json", "POST", Some(everything)), request("apigw-redrive-non-admin.json", "GET", None)] {
        let res = notify::redrive::handle(&state, req).await.unwrap();
        assert_forbidden_says_nothing(&res);
        assert_eq!(body_json(&res)["error"]["request_id"], "c6af9ac6-7b61-11e6-9a41-93e8deadbeef");
    }
    // Near misses of the group, and no authorizer at all (a misconfigured route), are refused.
    for groups in
        [Some("x ferry-admin"), Some("user ferry-admin"), Some("ferry-admins"), Some("x,ferry-admin"), Some("[x,ferry-admin]"), None]
    {
        let res = notify::redrive::handle(&state, with_groups(groups, "POST", Some(everything))).await.unwrap();
        assert_forbidden_says_nothing(&res);
    }
    assert!(e.source().await.is_empty(), "nothing moved for non-admins");
    assert_eq!(e.dlq().await.len(), seeded.len());
    // The forms API Gateway produces for a member pass: a JSON array, a flattened list, a scalar.
    for groups in [r#"["support","ferry-admin"]"#, "[support ferry-admin]", "ferry-admin"] {
        let res = notify::redrive::handle(&state, with_groups(Some(groups), "POST", Some(r#"{"dry_run":true}"#))).await.unwrap();
        assert_eq!(res.status(), 200, "{groups}: {}", body_json(&res));
    }

    // The admin's fixture asks for a dry run of two kinds.
    let res = notify::redrive::handle(
        &state,
        request("apigw-redrive.json", "POST", Some(r#"{"filter":{"kinds":["provider_rejected","retries_exhausted"]},"dry_run":true}"#)),
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 200);
    let body = body_json(&res);
    assert_eq!((body["matched"].as_u64(), body["moved"].as_u64(), body["mode"].as_str()), (Some(12), Some(0), Some("selective")), "{body}");
    // A bad filter is refused, naming the field.
    let res = notify::redrive::handle(&state, request("apigw-redrive.json", "POST", Some(r#"{"filter":{"channels":["sms","fax"]}}"#)))
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let error = &body_json(&res)["error"];
    assert_eq!((error["code"].as_str(), error["field"].as_str()), (Some("bad_request"), Some("filter.channels[1]")), "{error}");
    assert!(error["message"].as_str().unwrap().contains("fax"), "{error}");
    let res = notify::redrive::handle(&state, request("apigw-redrive.json", "POST", Some(r#"{"filtre":{}}"#))).await.unwrap();
    assert_eq!(res.status(), 400);
    assert_eq!(body_json(&res)["error"]["code"], "bad_request");
    // The admin redrives the SMS ones for real.
    let res =
        notify::redrive::handle(&state, request("apigw-redrive.json", "POST", Some(r#"{"filter":{"channels":["sms"]}}"#))).await.unwrap();
    assert_eq!(body_json(&res)["moved"], 6);
    assert_eq!(e.source().await.len(), 6);
}

// ---- SQS's own move task, on recorded responses --------------------------------------------------

const DLQ_URL: &str = "https://sqs.us-east-1.amazonaws.com/123456789012/notify-dlq";
const SRC_URL: &str = "https://sqs.us-east-1.amazonaws.com/123456789012/notify";
const DLQ_ARN: &str = "arn:aws:sqs:us-east-1:123456789012:notify-dlq";
const SRC_ARN: &str = "arn:aws:sqs:us-east-1:123456789012:notify";

fn mocked_sqs(rules: &[&Rule]) -> SqsClient {
    let mut interceptor = MockResponseInterceptor::new().rule_mode(RuleMode::MatchAny);
    for r in rules {
        interceptor = interceptor.with_rule(r);
    }
    ferry_testkit::mocked_client!(aws_sdk_sqs, interceptor)
}

fn queue_arn_rule() -> Rule {
    use aws_sdk_sqs::operation::get_queue_attributes::GetQueueAttributesOutput;
    use aws_sdk_sqs::types::QueueAttributeName;
    mock!(aws_sdk_sqs::Client::get_queue_attributes).then_compute_output(|req| {
        let arn = if req.queue_url() == Some(DLQ_URL) { DLQ_ARN } else { SRC_ARN };
        GetQueueAttributesOutput::builder().attributes(QueueAttributeName::QueueArn, arn).build()
    })
}

#[tokio::test]
async fn native_redrive_starts_a_move_task_back_to_the_source() {
    use aws_sdk_sqs::operation::start_message_move_task::StartMessageMoveTaskOutput;
    let start = mock!(aws_sdk_sqs::Client::start_message_move_task)
        .match_requests(|r| {
            r.source_arn() == Some(DLQ_ARN) && r.destination_arn() == Some(SRC_ARN) && r.max_number_of_messages_per_second() == Some(25)
        })
        .then_output(|| StartMessageMoveTaskOutput::builder().task_handle("eyJ0YXNrSWQiOiIxIn0=").build());
    let arns = queue_arn_rule();
    let sqs = mocked_sqs(&[&start, &arns]);
    let handle = aws::start_move_task(&sqs, DLQ_ARN, Some(SRC_ARN), Some(25)).await.unwrap();
    assert_eq!(handle, "eyJ0YXNrSWQiOiIxIn0=");

    // The admin route: a POST without a filter starts the native task at the requested rate.
    let state = Redriver {
        sqs,
        queues: QueuePair { source_url: SRC_URL.into(), dlq_url: DLQ_URL.into() },
        admin: Default::default(),
        time_budget: Duration::from_secs(5),
    };
    let res = notify::redrive::handle(&state, request("apigw-redrive.json", "POST", Some(r#"{"rate":25}"#))).await.unwrap();
    assert_eq!(res.status(), 202);
    let body = body_json(&res);
    assert_eq!(
        (body["mode"].as_str(), body["task_handle"].as_str(), body["destination"].as_str()),
        (Some("native"), Some("eyJ0YXNrSWQiOiIxIn0="), Some(SRC_ARN))
    );
    assert_eq!(start.num_calls(), 2);
    // Native mode moves everything: combining it with a filter is refused before any call.
    let res =
        notify::redrive::handle(&state, request("apigw-redrive.json", "POST", Some(r#"{"mode":"native","dry_run":true}"#))).await.unwrap();
    assert_eq!(res.status(), 400);
    assert_eq!(start.num_calls(), 2);
}

#[tokio::test]
async fn redrive_status_lists_move_tasks() {
    use aws_sdk_sqs::operation::list_message_move_tasks::ListMessageMoveTasksOutput;
    use aws_sdk_sqs::types::ListMessageMoveTasksResultEntry;
    let list = mock!(aws_sdk_sqs::Client::list_message_move_tasks).match_requests(|r| r.source_arn() == Some(DLQ_ARN)).then_output(|| {
        ListMessageMoveTasksOutput::builder()
            .results(
                ListMessageMoveTasksResultEntry::builder()
                    .task_handle("h-1")
                    .status("RUNNING")
                    .source_arn(DLQ_ARN)
                    .max_number_of_messages_per_second(25)
                    .approximate_number_of_messages_moved(40)
                    .approximate_number_of_messages_to_move(100)
                    .started_timestamp(1_795_361_400_000)
                    .build(),
            )
            .results(
                ListMessageMoveTasksResultEntry::builder()
                    .status("FAILED")
                    .source_arn(DLQ_ARN)
                    .approximate_number_of_messages_moved(3)
                    .failure_reason("AWS.SimpleQueueService.NonExistentQueue")
                    .started_timestamp(1_795_300_000_000)
                    .build(),
            )
            .build()
    });
    let arns = queue_arn_rule();
    let sqs = mocked_sqs(&[&list, &arns]);
    let tasks = aws::list_move_tasks(&sqs, DLQ_ARN).await.unwrap();
    assert_eq!(tasks.len(), 2);
    assert_eq!(
        (tasks[0].status.as_str(), tasks[0].moved, tasks[0].to_move, tasks[0].task_handle.as_deref()),
        ("RUNNING", 40, Some(100), Some("h-1"))
    );
    assert_eq!(
        (tasks[1].status.as_str(), tasks[1].failure_reason.as_deref(), tasks[1].destination_arn.as_deref()),
        ("FAILED", Some("AWS.SimpleQueueService.NonExistentQueue"), None)
    );

    let state = Redriver {
        sqs,
        queues: QueuePair { source_url: SRC_URL.into(), dlq_url: DLQ_URL.into() },
        admin: Default::default(),
        time_budget: Duration::from_secs(5),
    };
    let res = notify::redrive::handle(&state, request("apigw-redrive.json", "GET", None)).await.unwrap();
    assert_eq!(res.status(), 200);
    let body = body_json(&res);
    assert_eq!(body["dead_letter_queue"], DLQ_ARN);
    assert_eq!(body["tasks"][0]["moved"], 40);
    assert_eq!(body["tasks"][1]["status"], "FAILED");
}

#[tokio::test(flavor = "multi_thread")]
async fn fallback_is_remembered_across_a_transient_failure() {
    let e = env(fast_queue()).await;
    let id = unique("fb");
    let shop = sender("fallback-sender");
    e.provider.reject(&id, Channel::Alimtalk);
    // The SMS fallback is down the first time: the retry goes straight to SMS.
    e.provider.set_channel_down(Channel::Sms, true);
    let body = notification(&id, Channel::Alimtalk, "01012345678", "welcome", Some(Channel::Sms));
    aws::send_all_as(&e.sqs, &e.queues.source_url, &shop, &[body]).await.unwrap();
    let batch = aws::receive(&e.sqs, &e.queues.source_url, 10, Duration::from_secs(1), Duration::from_secs(1)).await.unwrap();
    let event = serde_json::from_value(sqs_event("arn:aws:sqs:us-east-1:123456789012:q", &batch)).unwrap();
    assert!(notify::consumer::process(&e.consumer, &event).await[0].outcome.is_retry());
    assert!(e.table.get(&shop, &id).await.unwrap().unwrap().primary_rejected);
    e.provider.set_channel_down(Channel::Sms, false);
    let before = e.provider.requests();
    e.drain().await;
    assert_eq!(e.provider.requests() - before, 1, "only the fallback was asked again");
    assert_eq!(e.provider.accepted(&id), ["sms"]);

    // Refused on every channel: dead-lettered at once with the reason, and counted as handled.
    let id2 = unique("fb");
    e.provider.reject(&id2, Channel::Alimtalk);
    e.provider.reject(&id2, Channel::Sms);
    aws::send_all_as(
        &e.sqs,
        &e.queues.source_url,
        &shop,
        &[notification(&id2, Channel::Alimtalk, "01012345678", "welcome", Some(Channel::Sms))],
    )
    .await
    .unwrap();
    let stats = e.drain().await;
    assert_eq!(stats.reported_failures, 0);
    let dlq = e.dlq().await;
    assert_eq!(dlq.len(), 1);
    assert_eq!(dlq[0].attributes[attr::ERROR_KIND], "provider_rejected");
    assert_eq!(dlq[0].attributes[attr::CHANNEL], "alimtalk");
    assert!(
        dlq[0].attributes[attr::ERROR].contains("alimtalk: provider answered 422")
            && dlq[0].attributes[attr::ERROR].contains("sms: provider answered 422")
    );
    assert_eq!(e.table.get(&shop, &id2).await.unwrap().unwrap().status, Status::Failed);
}

// ---- The intake: sender-scoped ids, scope, limits, throttle ------------------------------------

fn intake(e: &Env, scope: Option<&str>, rate: Option<FixedWindow>) -> Intake {
    let settings = IntakeSettings {
        scope: scope.map(str::to_owned),
        max_body_bytes: 2048,
        rate,
        ..IntakeSettings::new(&e.queues.source_url, e.table.name())
    };
    Intake::new(e.sqs.clone(), e.dynamodb.clone(), settings)
}

async fn submit(intake: &Intake, claims: Option<&[(&str, &str)]>, body: &str) -> lambda_http::Response<lambda_http::Body> {
    notify::intake::handle(intake, notify_request(claims, body)).await.unwrap_or_else(|e| match e {})
}

#[tokio::test(flavor = "multi_thread")]
async fn two_senders_may_use_one_notification_id_and_a_repeat_is_sent_once() {
    let e = env(fast_queue()).await;
    let intake = intake(&e, Some("ferry/notify"), Some(FixedWindow { limit: 100, window_secs: 3600 }));
    // The attack the old global key allowed: another caller sends the id to its own number first.
    let id = unique("order-123-shipped");
    let sms = |phone: &str| notification(&id, Channel::Sms, phone, "order.shipped", None);
    let attacker: &[(&str, &str)] = &[("sub", "attacker"), ("scope", "ferry/notify")];
    let shop: &[(&str, &str)] = &[("client_id", "shop-backend"), ("scope", "openid ferry/notify")];
    for (claims, phone) in [(attacker, "01099990000"), (shop, "01011112222"), (shop, "01011112222"), (attacker, "01099990000")] {
        let res = submit(&intake, Some(claims), &sms(phone)).await;
        assert_eq!(res.status(), 202, "{}", body_json(&res));
        assert_eq!(body_json(&res)["notification_id"], id.as_str());
    }
    let queued = e.source().await;
    assert_eq!(queued.len(), 4);
    let senders: BTreeSet<&str> = queued.iter().map(|m| m.attributes[attr::SENDER].as_str()).collect();
    assert_eq!(senders, BTreeSet::from(["attacker", "shop-backend"]));

    e.drain().await;
    // Both delivered, each to its own recipient; each sender's repeat was not sent again.
    let mut recipients = e.provider.accepted_recipients(&id);
    recipients.sort();
    assert_eq!(recipients, ["01011112222", "01099990000"]);
    assert_eq!(e.provider.repeats(), 0);
    // Each delivery records its sender.
    for (who, phone_tail) in [("attacker", "0000"), ("shop-backend", "2222")] {
        let rec = e.table.get(&sender(who), &id).await.unwrap().expect("a delivery record");
        assert_eq!((rec.status, rec.sender.as_str(), rec.attempts), (Status::Sent, who, 1), "{phone_tail}");
    }
    assert!(e.dlq().await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_intake_refuses_what_it_must_and_queues_nothing_then() {
    let e = env(fast_queue()).await;
    let intake = intake(&e, Some("ferry/notify"), Some(FixedWindow { limit: 1, window_secs: 3600 }));
    let user = unique("user");
    let ok_claims: &[(&str, &str)] = &[("sub", &user), ("scope", "openid ferry/notify")];
    let valid = notification(&unique("n"), Channel::Sms, "01012345678", "order.shipped", None);

    let oversized = valid.replace("\"Kim\"", &format!("\"{}\"", "K".repeat(2100)));
    let bad_recipient = notification(&unique("n"), Channel::Sms, "call me", "order.shipped", None);
    type Case<'a> = (&'a str, Option<&'a [(&'a str, &'a str)]>, &'a str, u16, &'a str, Option<&'a str>);
    let cases: [Case; 7] = [
        ("no scope claim", Some(&[("sub", "u-1")]), &valid, 403, "forbidden", None),
        (
            "a scope that only contains it",
            Some(&[("sub", "u-1"), ("scope", "ferry/notify2 ferry/notifyx")]),
            &valid,
            403,
            "forbidden",
            None,
        ),
        ("the scope in a comma list", Some(&[("sub", "u-1"), ("scope", "openid,ferry/notify")]), &valid, 403, "forbidden", None),
        ("no authorizer", None, &valid, 401, "unauthorized", None),
        ("a body over the limit", Some(ok_claims), &oversized, 413, "payload_too_large", None),
        ("a bad field", Some(ok_claims), &bad_recipient, 400, "bad_request", Some("recipient")),
        ("broken JSON", Some(ok_claims), "{\"notification_id\":", 400, "bad_request", None),
    ];
    for (what, claims, body, status, code, field) in cases {
        let res = submit(&intake, claims, body).await;
        let json = body_json(&res);
        assert_eq!(res.status(), status, "{what}: {json}");
        assert_eq!(json["error"]["code"], code, "{what}: {json}");
        assert_eq!(json["error"]["field"].as_str(), field, "{what}: {json}");
        assert_eq!(json["error"]["request_id"], "d1b2f3a4-7b61-11e6-9a41-93e8deadbeef", "{what}");
        if status == 403 {
            assert_forbidden_says_nothing(&res);
        }
        assert!(e.source().await.is_empty(), "{what}: nothing queued");
    }
    // The limit is one request per hour: the first is queued, the second refused with Retry-After.
    assert_eq!(submit(&intake, Some(ok_claims), &valid).await.status(), 202);
    assert_eq!(e.source().await.len(), 1);
    let res = submit(&intake, Some(ok_claims), &valid).await;
    assert_eq!(res.status(), 429, "{}", body_json(&res));
    assert_eq!(body_json(&res)["error"]["code"], "too_many_requests");
    let retry_after: u64 = res.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=3600).contains(&retry_after), "{retry_after}");
    assert_eq!(e.source().await.len(), 1, "the throttled request queued nothing");
    // The throttle is per caller: another sender still gets through.
    let other: &[(&str, &str)] = &[("sub", "someone-else"), ("scope", "ferry/notify")];
    assert_eq!(submit(&intake, Some(other), &valid).await.status(), 202);
    // Without a configured scope, any verified caller may submit (the route's own scope check aside).
    let open = self::intake(&e, None, None);
    assert_eq!(submit(&open, Some(&[("sub", "no-scope-user")]), &valid).await.status(), 202);
    assert_eq!(e.source().await.len(), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_intake_fixture_for_client_credentials_names_the_client() {
    let e = env(fast_queue()).await;
    let intake = intake(&e, Some("ferry/notify"), None);
    let v = event_fixture("apigw-notify-client-credentials.json");
    let res = notify::intake::handle(&intake, lambda_http::request::from_str(&v.to_string()).unwrap()).await.unwrap_or_else(|e| match e {});
    assert_eq!(res.status(), 202, "{}", body_json(&res));
    let queued = e.source().await;
    assert_eq!(queued[0].attributes[attr::SENDER], "3n4b5urk1ft4fl3mg5e0example");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_intake_refuses_a_body_that_is_not_utf8_and_queues_nothing() {
    let e = env(fast_queue()).await;
    let intake = intake(&e, Some("ferry/notify"), None);
    // API Gateway hands over a body that is not text base64-encoded: here `{"notification_id":"`,
    // the bytes 0xff 0xfe, then `"}`.
    let mut v: serde_json::Value = serde_json::from_str(ferry_testkit::events::APIGW_NOTIFY).expect("the fixture");
    v["requestContext"]["authorizer"]["jwt"]["claims"] = serde_json::json!({"sub": unique("user"), "scope": "ferry/notify"});
    v["body"] = "eyJub3RpZmljYXRpb25faWQiOiL//iJ9".into();
    v["isBase64Encoded"] = true.into();
    let req = lambda_http::request::from_str(&v.to_string()).expect("an HTTP API v2 request");
    assert_eq!(req.body().as_ref(), b"{\"notification_id\":\"\xff\xfe\"}", "the body reaches the handler decoded");
    let res = notify::intake::handle(&intake, req).await.unwrap_or_else(|e| match e {});
    let json = body_json(&res);
    assert_eq!((res.status().as_u16(), json["error"]["code"].as_str()), (400, Some("bad_request")), "{json}");
    let message = json["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("body") && message.contains("UTF-8"), "the error names the body: {json}");
    assert!(json["error"]["field"].is_null(), "{json}");
    assert!(e.source().await.is_empty(), "nothing queued");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_intake_accepts_a_body_of_exactly_the_limit_and_refuses_one_byte_more() {
    let e = env(fast_queue()).await;
    let intake = intake(&e, Some("ferry/notify"), None);
    let limit = intake.settings.max_body_bytes;
    let user = unique("user");
    let claims: &[(&str, &str)] = &[("sub", &user), ("scope", "ferry/notify")];
    // A valid notification padded (in a variable) to `len` bytes.
    let valid = notification(&unique("n"), Channel::Sms, "01012345678", "order.shipped", None);
    let padded = |len: usize| valid.replace("\"Kim\"", &format!("\"Kim{}\"", "K".repeat(len - valid.len())));
    let (at_limit, over) = (padded(limit), padded(limit + 1));
    assert_eq!((at_limit.len(), over.len()), (limit, limit + 1));

    let res = submit(&intake, Some(claims), &at_limit).await;
    assert_eq!(res.status(), 202, "a body of exactly the limit: {}", body_json(&res));
    assert_eq!(e.source().await.len(), 1);
    let res = submit(&intake, Some(claims), &over).await;
    let json = body_json(&res);
    assert_eq!((res.status().as_u16(), json["error"]["code"].as_str()), (413, Some("payload_too_large")), "one byte over: {json}");
    assert_eq!(e.source().await.len(), 1, "the oversized request queued nothing");
}

// ---- Dead letters: once per message, once per notification ----------------------------------------

fn received(message_id: &str, body: &str, attrs: &[(&str, &str)]) -> Received {
    Received {
        message_id: message_id.into(),
        receipt_handle: format!("r-{message_id}"),
        body: body.into(),
        attributes: attrs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
        system: BTreeMap::from([
            ("ApproximateReceiveCount".to_owned(), "1".to_owned()),
            ("SentTimestamp".to_owned(), "1795361400000".to_owned()),
        ]),
    }
}

async fn process(e: &Env, messages: &[Received]) -> Vec<RecordOutcome> {
    let event = serde_json::from_value(sqs_event("arn:aws:sqs:us-east-1:123456789012:q", messages)).expect("an SQS event");
    notify::consumer::process(&e.consumer, &event).await.into_iter().map(|r| r.outcome).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_message_is_dead_lettered_once_however_often_it_comes_back() {
    let e = env(fast_queue()).await;
    let shop = FIXTURE_SENDER;
    // A malformed message delivered three times (its delete never landed): one dead letter.
    let broken = received(&unique("m"), "{\"notification_id\":\"x\",", &[(attr::SENDER, shop)]);
    for round in 0..3 {
        let outcome = &process(&e, std::slice::from_ref(&broken)).await[0];
        let expect_first = round == 0;
        assert_eq!(matches!(outcome, RecordOutcome::DeadLettered { .. }), expect_first, "round {round}: {outcome:?}");
        assert_eq!(matches!(outcome, RecordOutcome::AlreadyDeadLettered { .. }), !expect_first, "round {round}: {outcome:?}");
    }
    assert_eq!(e.dlq().await.len(), 1);

    // A notification the provider refuses, queued twice (two messages) and each redelivered: one
    // dead letter for the notification.
    let id = unique("rej");
    e.provider.reject(&id, Channel::Sms);
    let body = notification(&id, Channel::Sms, "01012345678", "welcome", None);
    let (first, second) = (received(&unique("m"), &body, &[(attr::SENDER, shop)]), received(&unique("m"), &body, &[(attr::SENDER, shop)]));
    let outcomes = process(&e, &[first.clone(), second.clone(), first.clone()]).await;
    assert_eq!(outcomes.iter().filter(|o| matches!(o, RecordOutcome::DeadLettered { .. })).count(), 1, "{outcomes:?}");
    assert_eq!(outcomes.iter().filter(|o| matches!(o, RecordOutcome::AlreadyDeadLettered { .. })).count(), 2, "{outcomes:?}");
    let letters: Vec<Received> = e.dlq().await.into_iter().filter(|m| m.body == body).collect();
    assert_eq!(letters.len(), 1);
    // Another sender's notification of the same id is its own failure, with its own dead letter.
    let theirs = received(&unique("m"), &body, &[(attr::SENDER, "another-shop")]);
    assert!(matches!(process(&e, &[theirs]).await[0], RecordOutcome::DeadLettered { .. }));

    // Redriven (it carries the first-sent time a dead letter keeps) and refused again: it left the
    // DLQ, so it goes back once more; a redelivery of that copy does not.
    let first_sent = letters[0].attributes[attr::FIRST_SENT_AT].clone();
    let redriven = received(&unique("m"), &body, &[(attr::SENDER, shop), (attr::FIRST_SENT_AT, &first_sent)]);
    assert!(matches!(process(&e, std::slice::from_ref(&redriven)).await[0], RecordOutcome::DeadLettered { .. }));
    assert!(matches!(process(&e, std::slice::from_ref(&redriven)).await[0], RecordOutcome::AlreadyDeadLettered { .. }));
    assert_eq!(e.dlq().await.iter().filter(|m| m.body == body).count(), 3, "the first letter, the other sender's, the redriven one");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_letter_marker_blocks_a_second_sender_until_it_lapses() {
    let e = env(fast_queue()).await;
    let scope = LetterScope::Message { message_id: "m-marker" };
    let lease = Duration::from_millis(1500);
    assert_eq!(e.table.begin_dead_letter(scope, "m-marker", false, "malformed_json", lease).await.unwrap(), LetterSlot::Take);
    // A copy arriving while the first attempt is between its mark and its send waits.
    assert!(matches!(
        e.table.begin_dead_letter(scope, "m-marker", false, "malformed_json", lease).await.unwrap(),
        LetterSlot::InFlight { .. }
    ));
    // The first attempt died before confirming: after the lease the copy takes over.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert_eq!(e.table.begin_dead_letter(scope, "m-marker", false, "malformed_json", lease).await.unwrap(), LetterSlot::Take);
    assert_eq!(e.table.confirm_dead_letter(scope, "m-marker").await.unwrap(), Written::Applied);
    assert_eq!(
        e.table.begin_dead_letter(scope, "m-marker", false, "malformed_json", lease).await.unwrap(),
        LetterSlot::Done { message_id: "m-marker".into() }
    );
    // A refused send gives the marker back at once.
    let other = LetterScope::Message { message_id: "m-released" };
    assert_eq!(e.table.begin_dead_letter(other, "m-released", false, "malformed_json", lease).await.unwrap(), LetterSlot::Take);
    assert_eq!(e.table.release_dead_letter(other, "m-released").await.unwrap(), Written::Applied);
    assert_eq!(e.table.begin_dead_letter(other, "m-released", false, "malformed_json", lease).await.unwrap(), LetterSlot::Take);
}

/// The keys of the delivery records in the table (not the dead-letter markers).
async fn delivery_keys(e: &Env) -> Vec<String> {
    let out = e.dynamodb.scan().table_name(e.table.name()).send().await.expect("scanning the table");
    out.items()
        .iter()
        .filter_map(|item| item.get("notification_id")?.as_s().ok().cloned())
        .filter(|k| k.starts_with(aws::keys::DELIVERY))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_present_but_invalid_sender_is_dead_lettered_never_sent_nor_claimed() {
    let e = env(fast_queue()).await;
    let (spaced, too_long, longest) = (unique("spaced"), unique("too-long"), unique("longest"));
    let (longest_sender, too_long_sender) = ("s".repeat(256), "s".repeat(257));
    let outcomes = process(
        &e,
        &[
            received(&unique("m"), &plain(&spaced), &[(attr::SENDER, "shop backend")]),
            received(&unique("m"), &plain(&too_long), &[(attr::SENDER, &too_long_sender)]),
            // The longest sender allowed, for contrast: it is sent.
            received(&unique("m"), &plain(&longest), &[(attr::SENDER, &longest_sender)]),
        ],
    )
    .await;
    for (outcome, id) in outcomes[..2].iter().zip([&spaced, &too_long]) {
        match outcome {
            RecordOutcome::DeadLettered { notification_id, kind, error } => {
                assert_eq!((notification_id.as_deref(), *kind), (Some(id.as_str()), ErrorKind::InvalidMessage), "{outcome:?}");
                assert!(error.contains(attr::SENDER), "the error names the attribute: {error}");
            }
            other => panic!("{id}: {other:?}"),
        }
        assert!(e.provider.accepted(id).is_empty(), "{id} never reached the provider");
    }
    assert!(matches!(&outcomes[2], RecordOutcome::Sent { notification_id, .. } if *notification_id == longest), "{:?}", outcomes[2]);
    assert_eq!(e.provider.requests(), 1, "only the valid sender's notification was sent");
    // Nothing was claimed for the invalid ones: the only delivery record is the valid sender's.
    assert_eq!(delivery_keys(&e).await, [aws::keys::delivery(&sender(&longest_sender), &longest)]);
    let dlq = e.dlq().await;
    let mut dead: Vec<(String, String)> =
        dlq.iter().map(|m| (m.attributes[attr::NOTIFICATION_ID].clone(), m.attributes[attr::ERROR_KIND].clone())).collect();
    dead.sort();
    let mut expect = vec![(spaced.clone(), "invalid_message".to_owned()), (too_long.clone(), "invalid_message".to_owned())];
    expect.sort();
    assert_eq!(dead, expect);
}

// ---- The provider client against hostile servers ------------------------------------------------

/// A server on loopback that answers every connection with `respond`, given the socket.
async fn raw_server<F, Fut>(respond: F) -> String
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binding a loopback port");
    let url = format!("http://{}", listener.local_addr().expect("its address"));
    let respond = Arc::new(respond);
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let respond = respond.clone();
            tokio::spawn(async move { respond(socket).await });
        }
    });
    url
}

/// Reads the request head (and whatever body came with it) so the client is not reset early.
async fn read_request(socket: &mut tokio::net::TcpStream) {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; 16 * 1024];
    let _ = tokio::time::timeout(Duration::from_millis(200), socket.read(&mut buf)).await;
}

fn client(url: &str, timeout_ms: u64) -> Provider {
    Provider::new(&ProviderSettings { base_url: url.to_owned(), timeout: Duration::from_millis(timeout_ms) }).expect("a provider client")
}

fn sms(id: &str) -> Notification {
    Notification::parse(&notification(id, Channel::Sms, "01012345678", "welcome", None)).expect("a valid notification")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_provider_client_follows_no_redirect_reads_a_bounded_body_and_gives_up_on_a_drip() {
    use tokio::io::AsyncWriteExt;
    let shop = sender("hostile-test");
    // A redirect elsewhere is not followed: the other server never sees the message.
    let elsewhere = LocalProvider::start(Duration::from_millis(100)).await.unwrap();
    let target = format!("{}/v1/messages", elsewhere.url);
    let redirecting = raw_server(move |mut socket| {
        let target = target.clone();
        async move {
            read_request(&mut socket).await;
            let head = format!("HTTP/1.1 307 Temporary Redirect\r\nLocation: {target}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            let _ = socket.write_all(head.as_bytes()).await;
        }
    })
    .await;
    let reply = client(&redirecting, 2000).send(&shop, &sms("n-redirect"), Channel::Sms).await;
    assert!(matches!(&reply, Reply::Transient(r) if r.contains("307") && r.contains("redirect")), "{reply:?}");
    assert_eq!(elsewhere.requests(), 0, "the redirect was not followed");

    // A huge body (a refusal that never ends): the client reads at most MAX_REPLY_BYTES and stops.
    let written = Arc::new(AtomicUsize::new(0));
    let counter = written.clone();
    let huge = raw_server(move |mut socket| {
        let counter = counter.clone();
        async move {
            read_request(&mut socket).await;
            let _ = socket.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n").await;
            let chunk = vec![b'x'; 64 * 1024];
            // Up to 1 GiB, or until the client hangs up.
            for _ in 0..16 * 1024 {
                if socket.write_all(&chunk).await.is_err() {
                    return;
                }
                counter.fetch_add(chunk.len(), Ordering::Relaxed);
            }
        }
    })
    .await;
    let started = Instant::now();
    let reply = client(&huge, 5000).send(&shop, &sms("n-huge"), Channel::Sms).await;
    assert!(matches!(&reply, Reply::Permanent(r) if r.contains("400") && r.len() < 400), "{:?}", reply);
    assert!(started.elapsed() < Duration::from_secs(4), "bounded: {:?}", started.elapsed());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(written.load(Ordering::Relaxed) < 64 * 1024 * 1024, "the client stopped reading: {} bytes", written.load(Ordering::Relaxed));
    // A 2xx with a huge body is still accepted: the status line is the answer.
    let huge_ok = raw_server(|mut socket| async move {
        read_request(&mut socket).await;
        let _ = socket.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n").await;
        let chunk = vec![b' '; 64 * 1024];
        for _ in 0..1024 {
            if socket.write_all(&chunk).await.is_err() {
                return;
            }
        }
    })
    .await;
    let reply = client(&huge_ok, 5000).send(&shop, &sms("n-huge-ok"), Channel::Sms).await;
    assert_eq!(reply, Reply::Accepted { status: Status::Sent, provider_message_id: None });

    // A server that drips its answer a byte at a time: the client's timeout ends it, transiently.
    let drip = raw_server(|mut socket| async move {
        read_request(&mut socket).await;
        for b in b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Slow: ".iter().chain(std::iter::repeat(&b'z')) {
            if socket.write_all(&[*b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    let started = Instant::now();
    let reply = client(&drip, 500).send(&shop, &sms("n-drip"), Channel::Sms).await;
    assert!(matches!(&reply, Reply::Transient(_)), "{reply:?}");
    assert!(started.elapsed() < Duration::from_secs(2), "bounded by the timeout: {:?}", started.elapsed());

    // Failures never carry the URL (its query may hold a token) or the full recipient.
    let closed = format!("http://127.0.0.1:{}/api?token=s3cret", ferry_testkit::free_port());
    let reply = client(&closed, 500).send(&shop, &sms("n-closed"), Channel::Sms).await;
    assert!(matches!(&reply, Reply::Transient(r) if !r.contains("s3cret") && !r.contains("127.0.0.1")), "{reply:?}");
    let echo = raw_server(|mut socket| async move {
        read_request(&mut socket).await;
        let body = "recipient 01012345678 is blocked";
        let head = format!("HTTP/1.1 422 Unprocessable Entity\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
        let _ = socket.write_all(head.as_bytes()).await;
    })
    .await;
    let reply = client(&echo, 2000).send(&shop, &sms("n-echo"), Channel::Sms).await;
    assert!(matches!(&reply, Reply::Permanent(r) if r.contains("*******5678") && !r.contains("01012345678")), "{reply:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_provider_auth_header_comes_from_ssm_parameter_store() {
    let e = env(fast_queue()).await;
    let ssm = ferry_aws::secrets::ssm(&sdk_config());
    let name = format!("/ferry/test/{}", unique("provider-key"));
    ferry_aws::secrets::put_secure_parameter(&ssm, &name, "k-secret-123").await.unwrap();
    let secret = ferry_aws::secrets::read_parameter(&ssm, &name).await.unwrap();
    assert_eq!(format!("{secret:?}"), "Secret(<redacted>)");
    let missing = ferry_aws::secrets::read_parameter(&ssm, &format!("{name}-missing")).await.unwrap_err();
    assert!(missing.to_string().contains(&format!("{name}-missing")), "{missing}");

    e.provider.require_auth("X-Api-Key", "k-secret-123");
    let settings = ProviderSettings { base_url: e.provider.url.clone(), timeout: Duration::from_secs(2) };
    let with_key = Provider::with_auth(&settings, Some(ProviderAuth::new("X-Api-Key", secret.expose()).unwrap())).unwrap();
    assert!(!format!("{with_key:?}").contains("k-secret-123"));
    let shop = sender("auth-test");
    assert!(matches!(with_key.send(&shop, &sms("n-auth"), Channel::Sms).await, Reply::Accepted { .. }));
    let without = Provider::new(&settings).unwrap();
    assert!(matches!(without.send(&shop, &sms("n-noauth"), Channel::Sms).await, Reply::Permanent(r) if r.contains("401")));
}

#[test]
fn the_consumer_refuses_to_start_with_a_plain_http_provider() {
    let out = std::process::Command::new(ferry_testkit::binary("notify-consumer"))
        .env_clear()
        .env("FERRY_NOTIFY_DLQ_URL", "https://sqs.us-east-1.amazonaws.com/123456789012/notify-dlq")
        .env("FERRY_PROVIDER_URL", "http://provider.example.com")
        .env("AWS_LAMBDA_RUNTIME_API", "127.0.0.1:9")
        .output()
        .expect("running notify-consumer");
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("FERRY_PROVIDER_URL") && text.contains("https://"), "{text}");
}

// ---- Metrics ------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn intake_consumer_and_redrive_emit_emf_lines_a_team_can_alarm_on() {
    use ferry_lambda::metrics::{Capture, Emitted, Metric, verify};
    let capture = Capture::start();
    let e = env(fast_queue()).await;
    let intake = intake(&e, None, Some(FixedWindow { limit: 1, window_secs: 3600 }));
    let who = unique("metrics-sender");
    let claims: &[(&str, &str)] = &[("sub", &who)];
    let (ok, throttled, fell_back, dead) = (unique("em-ok"), unique("em-429"), unique("em-fb"), unique("em-dl"));
    assert_eq!(submit(&intake, Some(claims), &plain(&ok)).await.status(), 202);
    assert_eq!(submit(&intake, Some(claims), &plain(&throttled)).await.status(), 429);
    e.provider.reject(&fell_back, Channel::Alimtalk);
    e.provider.reject(&dead, Channel::Sms);
    let bodies = [
        notification(&fell_back, Channel::Alimtalk, "01012345678", "welcome", Some(Channel::Sms)),
        notification(&dead, Channel::Sms, "01012345678", "welcome", None),
    ];
    aws::send_all_as(&e.sqs, &e.queues.source_url, &sender(&who), &bodies).await.unwrap();
    e.drain().await;
    let res = notify::redrive::handle(&redriver(&e), request("apigw-redrive.json", "POST", Some(r#"{"mode":"selective"}"#))).await.unwrap();
    assert_eq!(body_json(&res)["moved"], 1, "{}", body_json(&res));

    // Every line of the process while captured reads as CloudWatch reads it.
    let lines: Vec<Emitted> = capture.lines().iter().map(|l| verify(l).unwrap_or_else(|err| panic!("{err}: {l}"))).collect();
    let of = |id: &str, function: &str| -> Vec<&Emitted> {
        lines.iter().filter(|l| l.get("notification_id") == Some(id) && l.get("function") == Some(function)).collect()
    };
    let value = |ls: Vec<&Emitted>, m: Metric| -> f64 { ls.iter().filter_map(|l| l.value(m)).sum() };
    assert_eq!(value(of(&ok, "notify-intake"), Metric::NotificationsAccepted), 1.0);
    assert_eq!(value(of(&throttled, "notify-intake"), Metric::NotificationsThrottled), 1.0);
    assert_eq!(value(of(&ok, "notify-consumer"), Metric::NotificationsSent), 1.0);
    assert_eq!(value(of(&ok, "notify-consumer"), Metric::NotificationsFellBack), 0.0);
    assert_eq!(value(of(&fell_back, "notify-consumer"), Metric::NotificationsSent), 1.0);
    assert_eq!(value(of(&fell_back, "notify-consumer"), Metric::NotificationsFellBack), 1.0);
    assert_eq!(value(of(&dead, "notify-consumer"), Metric::NotificationsDeadLettered), 1.0);
    assert_eq!(value(of(&dead, "notify-consumer"), Metric::NotificationsSent), 0.0);
    let redriven = lines.iter().filter(|l| l.get("function") == Some("dlq-redrive")).filter_map(|l| l.value(Metric::NotificationsRedriven));
    assert!(redriven.clone().any(|n| n == 1.0), "{:?}", redriven.collect::<Vec<_>>());
}
