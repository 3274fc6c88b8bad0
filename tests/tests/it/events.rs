//! Job lifecycle events against moto: published to a bus, routed by a `ferry.jobs` rule to an SQS
//! queue, read back as EventBridge envelopes. An entry EventBridge refuses (which moto cannot be made
//! to do for a well-formed event) runs against aws-smithy-mocks.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::QueueAttributeName;
use aws_smithy_mocks::{MockResponseInterceptor, mock};
use ferry_aws::events::{EventBus, EventsClient};
use ferry_core::events::{JobEvent, JobEventDetail, JobEventType, ResultLocation, SOURCE};
use ferry_testkit::{sdk_config, unique};
use serde_json::{Value, json};

const AT: &str = "2026-03-01T12:00:00Z";

/// One event of each type, the optional fields spread over them.
fn events(job_id: &str) -> Vec<JobEvent> {
    let ev = |t: JobEventType, status: &str| JobEvent::new(t, job_id, "alice", "batch", status, 1, AT.into());
    let files = BTreeMap::from([("failed".to_owned(), format!("exports/{job_id}.failed.jsonl"))]);
    vec![
        ev(JobEventType::Started, "running"),
        ev(JobEventType::Succeeded, "succeeded").with_counts(json!({"ok": 98, "failed": 2})).with_result(ResultLocation {
            bucket: "ferry-results".into(),
            key: format!("exports/{job_id}.jsonl"),
            size: 4096,
            files,
        }),
        ev(JobEventType::Failed, "failed").with_error_code("internal"),
        ev(JobEventType::Cancelled, "cancelled"),
        ev(JobEventType::Lost, "lost"),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn published_events_reach_a_queue_as_eventbridge_envelopes() {
    let conf = sdk_config();
    let sqs = ferry_aws::clients::sqs(&conf);
    let queue_url = sqs.create_queue().queue_name(unique("job-events")).send().await.unwrap().queue_url.unwrap();
    let attrs = sqs.get_queue_attributes().queue_url(&queue_url).attribute_names(QueueAttributeName::QueueArn).send().await.unwrap();
    let queue_arn = attrs.attributes().and_then(|a| a.get(&QueueAttributeName::QueueArn)).cloned().unwrap();

    let bus = EventBus::new(ferry_aws::clients::eventbridge(&conf), unique("jobs"));
    bus.create_with_queue_target("job-events-to-queue", &queue_arn).await.unwrap();
    // Creating again is harmless: local runs set up at every start.
    bus.create_with_queue_target("job-events-to-queue", &queue_arn).await.unwrap();

    let job_id = unique("job");
    let sent = events(&job_id);
    for e in &sent {
        bus.publish(e).await.unwrap();
    }

    let mut bodies: Vec<Value> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while bodies.len() < sent.len() && Instant::now() < deadline {
        let out = sqs.receive_message().queue_url(&queue_url).max_number_of_messages(10).wait_time_seconds(2).send().await.unwrap();
        for m in out.messages() {
            bodies.push(serde_json::from_str(m.body().unwrap()).unwrap());
            sqs.delete_message().queue_url(&queue_url).receipt_handle(m.receipt_handle().unwrap()).send().await.unwrap();
        }
    }
    assert_eq!(bodies.len(), sent.len(), "{bodies:#?}");

    for e in &sent {
        let envelope = bodies
            .iter()
            .find(|b| b["detail-type"] == e.event_type.detail_type())
            .unwrap_or_else(|| panic!("no {} envelope in {bodies:#?}", e.event_type.detail_type()));
        assert_eq!(envelope["source"], SOURCE);
        // The envelope's time is when it happened, not when it was published.
        assert_eq!(envelope["time"], AT);
        let detail: JobEventDetail = serde_json::from_value(envelope["detail"].clone()).unwrap();
        assert_eq!(detail, e.detail);
        // Optional fields that were not set are absent, not null.
        assert_eq!(envelope["detail"], serde_json::from_str::<Value>(&e.detail_json()).unwrap());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn publishing_to_a_missing_bus_names_it() {
    let name = unique("no-such-bus");
    let bus = EventBus::new(ferry_aws::clients::eventbridge(&sdk_config()), name.clone());
    let e = bus.publish(&events("j-missing")[0]).await.unwrap_err();
    assert_eq!((e.bus.as_str(), e.op), (name.as_str(), "PutEvents"));
    assert!(e.to_string().contains(&name), "{e}");
}

#[tokio::test]
async fn a_refused_entry_is_an_error_naming_its_code() {
    use aws_sdk_eventbridge::operation::put_events::PutEventsOutput;
    use aws_sdk_eventbridge::types::PutEventsResultEntry;
    let refuse = mock!(aws_sdk_eventbridge::Client::put_events)
        .match_requests(|r| {
            let entry = &r.entries()[0];
            entry.source() == Some(SOURCE) && entry.detail_type() == Some("JobStarted") && entry.event_bus_name() == Some("jobs")
        })
        .then_output(|| {
            PutEventsOutput::builder()
                .failed_entry_count(1)
                .entries(PutEventsResultEntry::builder().error_code("ThrottlingException").error_message("Rate exceeded").build())
                .build()
        });
    let client: EventsClient = ferry_testkit::mocked_client!(aws_sdk_eventbridge, MockResponseInterceptor::new().with_rule(&refuse));
    let bus = EventBus::new(client, "jobs");
    let e = bus.publish(&events("j-1")[0]).await.unwrap_err();
    assert_eq!(e.to_string(), "eventbridge bus jobs: PutEvents failed: event j-1:JobStarted:1 refused: ThrottlingException: Rate exceeded");
    assert_eq!(refuse.num_calls(), 1);
}
