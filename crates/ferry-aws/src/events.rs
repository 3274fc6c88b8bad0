//! Job lifecycle events on an EventBridge bus ([`EventBus`]): publishing one
//! [`ferry_core::events::JobEvent`], and for local runs the bus with a rule that sends every job
//! event to an SQS queue.

use aws_sdk_eventbridge::types::{PutEventsRequestEntry, Target};
use aws_smithy_types::date_time::{DateTime, Format};
use ferry_core::events::{JobEvent, SOURCE};

/// The SDK's EventBridge client, named here so callers hold one without depending on the SDK.
pub use aws_sdk_eventbridge::Client as EventsClient;

/// An EventBridge call that failed, or an event it refused. Names the bus and the operation; the
/// SDK error, when there is one, is its source.
#[derive(Debug)]
pub struct EventsError {
    pub bus: String,
    pub op: &'static str,
    cause: crate::Error,
}

impl EventsError {
    /// EventBridge's error code, when it answered with one.
    pub fn code(&self) -> Option<&str> {
        self.cause.code()
    }
}

impl std::fmt::Display for EventsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "eventbridge bus {}: {} failed: {}", self.bus, self.op, self.cause.message())
    }
}

// The cause's own source: its message is already in this one's text.
impl std::error::Error for EventsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(&self.cause)
    }
}

/// The bus job events go to.
#[derive(Debug, Clone)]
pub struct EventBus {
    client: EventsClient,
    name: String,
}

impl EventBus {
    pub fn new(client: EventsClient, name: impl Into<String>) -> EventBus {
        EventBus { client, name: name.into() }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn error(&self, op: &'static str, message: String) -> EventsError {
        EventsError { bus: self.name.clone(), op, cause: crate::Error::other("EventBridge", op, format!("bus {}", self.name), message) }
    }

    fn sdk_error<E, R>(&self, op: &'static str, e: crate::error::SdkError<E, R>) -> EventsError
    where
        E: aws_sdk_eventbridge::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
        R: std::fmt::Debug + Send + Sync + 'static,
    {
        EventsError { bus: self.name.clone(), op, cause: crate::Error::sdk("EventBridge", op, format!("bus {}", self.name), e) }
    }

    /// Publishes one event. EventBridge answers a call whose entries it refuses with 200 and a
    /// `FailedEntryCount`, so a refused entry is turned into an error here, naming its code.
    pub async fn publish(&self, event: &JobEvent) -> Result<(), EventsError> {
        // The envelope's `time` is when it happened, not when it was published (a retry publishes
        // late); left to EventBridge (arrival) when `at` is not RFC 3339.
        let time = DateTime::from_str(&event.detail.at, Format::DateTimeWithOffset).ok();
        let entry = PutEventsRequestEntry::builder()
            .source(SOURCE)
            .detail_type(event.event_type.detail_type())
            .detail(event.detail_json())
            .event_bus_name(&self.name)
            .set_time(time)
            .build();
        let out = self.client.put_events().entries(entry).send().await.map_err(|e| self.sdk_error("PutEvents", e))?;
        if out.failed_entry_count() > 0 {
            let refused = out.entries().iter().find(|e| e.error_code().is_some());
            let message = match refused {
                Some(e) => format!(
                    "event {} refused: {}: {}",
                    event.detail.event_id,
                    e.error_code().unwrap_or("error"),
                    e.error_message().unwrap_or("no message")
                ),
                None => format!("event {} refused without an error code", event.detail.event_id),
            };
            return Err(self.error("PutEvents", message));
        }
        Ok(())
    }

    /// For local runs and tests: creates the bus (if missing) and a rule `rule` on it matching
    /// source `ferry.jobs` that targets the SQS queue `queue_arn`. The deployed bus and rules come
    /// from the template. On AWS the queue's policy must also let `events.amazonaws.com` send.
    pub async fn create_with_queue_target(&self, rule: &str, queue_arn: &str) -> Result<(), EventsError> {
        if let Err(e) = self.client.create_event_bus().name(&self.name).send().await.map_err(|e| self.sdk_error("CreateEventBus", e))
            && e.code() != Some("ResourceAlreadyExistsException")
        {
            return Err(e);
        }
        let pattern = serde_json::json!({ "source": [SOURCE] }).to_string();
        self.client
            .put_rule()
            .name(rule)
            .event_bus_name(&self.name)
            .event_pattern(pattern)
            .send()
            .await
            .map_err(|e| self.sdk_error("PutRule", e))?;
        let target = Target::builder().id("queue").arn(queue_arn).build().map_err(|e| self.error("PutTargets", e.to_string()))?;
        let out = self
            .client
            .put_targets()
            .rule(rule)
            .event_bus_name(&self.name)
            .targets(target)
            .send()
            .await
            .map_err(|e| self.sdk_error("PutTargets", e))?;
        if out.failed_entry_count() > 0 {
            let message = out
                .failed_entries()
                .iter()
                .map(|f| format!("{}: {}", f.error_code().unwrap_or("error"), f.error_message().unwrap_or("no message")))
                .collect::<Vec<_>>()
                .join("; ");
            return Err(self.error("PutTargets", format!("rule {rule}, target {queue_arn} refused: {message}")));
        }
        Ok(())
    }
}
