//! Lambda: the asynchronous invoke that starts (or continues) the job worker.

use aws_config::SdkConfig;
use aws_sdk_lambda::primitives::Blob;
use aws_sdk_lambda::types::InvocationType;

/// The payload the worker is invoked with: only the job id and which attempt to run.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WorkerPayload {
    pub job_id: String,
    #[serde(default)]
    pub attempt: u32,
}

/// The asynchronous invoke did not go through. The [`crate::Error`] names the function.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct InvokeError(#[from] pub crate::Error);

/// Invokes the worker with `InvocationType=Event`: Lambda queues the event and answers 202 at once.
/// Any other success status counts as delivered too: a local runtime (`cargo lambda watch`) runs the
/// function before it answers, with 200.
pub async fn invoke_worker(client: &aws_sdk_lambda::Client, function: &str, payload: &WorkerPayload) -> Result<(), InvokeError> {
    let err = |message: String| InvokeError(crate::Error::other("Lambda", "Invoke (Event)", function, message));
    let body = serde_json::to_vec(payload).map_err(|e| err(e.to_string()))?;
    let out = client
        .invoke()
        .function_name(function)
        .invocation_type(InvocationType::Event)
        .payload(Blob::new(body))
        .send()
        .await
        .map_err(|e| InvokeError(crate::Error::sdk("Lambda", "Invoke (Event)", function, e)))?;
    match out.status_code() {
        200..=299 => Ok(()),
        code => Err(err(format!("Lambda answered {code}, not 202"))),
    }
}

/// What the job API and worker hold to start a worker run, so that they need no Lambda SDK.
#[derive(Debug, Clone)]
pub struct Invoker {
    client: aws_sdk_lambda::Client,
}

impl Invoker {
    /// Invokes through the endpoint `conf` names (Lambda's own, or `AWS_ENDPOINT_URL`'s).
    pub fn new(conf: &SdkConfig) -> Invoker {
        Invoker { client: aws_sdk_lambda::Client::new(conf) }
    }

    /// Invokes through `endpoint` instead: a local `Invoke` API (moto cannot run functions).
    pub fn at(conf: &SdkConfig, endpoint: &str) -> Invoker {
        Invoker { client: aws_sdk_lambda::Client::from_conf(aws_sdk_lambda::config::Builder::from(conf).endpoint_url(endpoint).build()) }
    }

    /// [`invoke_worker`] of `function` with `payload`.
    pub async fn invoke_event(&self, function: &str, payload: &WorkerPayload) -> Result<(), InvokeError> {
        invoke_worker(&self.client, function, payload).await
    }
}

/// A client built elsewhere ([`crate::clients::lambda`]).
impl From<aws_sdk_lambda::Client> for Invoker {
    fn from(client: aws_sdk_lambda::Client) -> Invoker {
        Invoker { client }
    }
}
