//! The job seam: what a kind of job implements, and the registry the API and the worker share.
//!
//! The worker owns everything around a kind's work: the claim of an attempt, the lease and its
//! background heartbeat, cancel, the hand-over to a continuation, the final status, the lock and
//! the slot, and the lifecycle events. A kind owns only its params and its work:
//!
//! - [`Kind::admit`] checks and normalises the params of a submit (errors name the field; nothing is
//!   written before it passes). What it returns is stored with the job and hashed into the lock, so
//!   two requests that mean the same work share one job.
//! - [`Kind::run`] does the work of one attempt from its checkpoint. It reports progress and hands
//!   over through [`Step`], and returns an [`Outcome`]: finished with a result, continued (the
//!   checkpoint is stored), or stopped because the job was cancelled or is no longer this attempt's.
//!
//! What an attempt begins that only a finished job keeps (open multipart uploads, staging objects)
//! it names in [`Step::leftovers`]; when the job ends failed or cancelled the worker aborts and
//! deletes them, whichever kind it is and wherever the attempt stopped.
//!
//! Adding a kind is one file implementing [`Kind`] and one line in `shipped`, which both
//! [`Registry::standard`] (the worker's) and [`Registry::admitting`] (the API's) list.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_aws::exports::{Multipart, MultipartState};
use ferry_aws::jobs::{Beat, DynamoClient, JobStoreError, JobTable, Refused};
use ferry_aws::s3::{S3Client, Store};
use ferry_core::jobs::{JobRecord, JobResult, Progress, SubmitError};
use ferry_core::public::{ErrorCode, PublicError};
use futures::future::BoxFuture;
use serde_json::Value;

use crate::settings::{JobSettings, ms, now_ms};

/// What every job run needs: the jobs table, the output bucket, clients for sources, the settings,
/// and the kinds. Built once per execution environment.
#[derive(Debug, Clone)]
pub struct JobEnv {
    pub table: JobTable,
    /// The bucket outputs go to.
    pub store: Store,
    /// For reading sources in any bucket.
    pub s3: S3Client,
    pub dynamo: DynamoClient,
    pub settings: Arc<JobSettings>,
    pub kinds: Arc<Registry>,
    /// Where lifecycle events go (`None`: not published).
    pub events: Option<ferry_aws::events::EventBus>,
    /// The batch kind's HTTP client and resolved target headers.
    pub batch: Arc<crate::batch::BatchEnv>,
}

impl JobEnv {
    /// The environment over one SDK configuration, with the standard kinds and no secret headers
    /// resolved (see [`crate::batch::BatchEnv::load`]).
    pub fn new(conf: &ferry_aws::SdkConfig, settings: Arc<JobSettings>) -> JobEnv {
        JobEnv::with_kinds(conf, settings, Registry::standard())
    }

    /// [`JobEnv::new`] with the kinds of `kinds` (`job-api` passes [`Registry::admitting`]).
    pub fn with_kinds(conf: &ferry_aws::SdkConfig, settings: Arc<JobSettings>, kinds: Registry) -> JobEnv {
        let s3 = ferry_aws::clients::s3(conf);
        let dynamo = ferry_aws::clients::dynamodb(conf);
        let events =
            settings.event_bus.as_ref().map(|bus| ferry_aws::events::EventBus::new(ferry_aws::clients::eventbridge(conf), bus.clone()));
        JobEnv {
            table: JobTable::new(dynamo.clone(), settings.table.clone()),
            store: Store::new(s3.clone(), settings.bucket.clone()),
            s3,
            dynamo,
            batch: Arc::new(crate::batch::BatchEnv::new(&settings, BTreeMap::new())),
            settings,
            kinds: Arc::new(kinds),
            events,
        }
    }
}

/// Who submits, and what the API knows, when a kind admits params.
#[derive(Debug, Clone, Copy)]
pub struct Admission<'a> {
    pub env: &'a JobEnv,
    /// The verified owner (JWT `sub`).
    pub owner: &'a str,
    /// For the log.
    pub request_id: Option<&'a str>,
}

/// Why a submit was not admitted.
#[derive(Debug, thiserror::Error)]
pub enum AdmitError {
    /// The caller must fix the request: 400 naming the field.
    #[error(transparent)]
    Bad(#[from] SubmitError),
    /// A dependency failed (the caller sees `unavailable`); the cause is for the log.
    #[error("{0}")]
    Unavailable(String),
}

/// One attempt of a claimed job, as its kind sees it.
#[derive(Debug, Clone, Copy)]
pub struct Step<'a> {
    pub env: &'a JobEnv,
    pub job: &'a JobRecord,
    /// Where the previous attempt stopped (what it passed to [`Step::hand_over`]).
    pub checkpoint: Option<&'a str>,
    /// When the invocation ends, in ms since the epoch.
    pub deadline: i64,
    /// What this job has open or staged so far; the worker cleans it up if the job ends failed or
    /// cancelled.
    pub leftovers: &'a Leftovers,
}

impl Step<'_> {
    /// Time left before the invocation ends.
    pub fn time_left(&self) -> Duration {
        Duration::from_millis((self.deadline - now_ms()).max(0) as u64)
    }

    /// Whether the kind should hand over now: less than the continue margin is left.
    pub fn out_of_time(&self) -> bool {
        self.deadline - now_ms() < ms(self.env.settings.continue_margin)
    }

    fn beat<'p>(&'p self, progress: &'p Progress) -> Beat<'p> {
        Beat { id: &self.job.id, attempt: self.job.attempt, progress, now: now_ms(), lease_ms: ms(self.env.settings.lease) }
    }

    /// Records progress (and extends the lease). `Err(Refused)`: stop, the job is cancelled or no
    /// longer this attempt's.
    pub async fn report(&self, progress: &Progress) -> Result<Result<(), Refused>, JobStoreError> {
        Ok(self.env.table.heartbeat(self.beat(progress)).await?.map(|_| ()))
    }

    /// Stores `checkpoint` and hands the job to the next attempt, which the worker then invokes.
    /// Return [`Outcome::Continued`] after it.
    pub async fn hand_over(&self, progress: &Progress, checkpoint: &str) -> Result<Result<(), Refused>, JobStoreError> {
        Ok(self.env.table.checkpoint(self.beat(progress), checkpoint).await?.map(|_| ()))
    }
}

/// The multipart uploads and staging objects of one job that only its success uses: a kind names
/// each when it begins or resumes it ([`Leftovers::upload`], [`Leftovers::object`]). An upload
/// completed since reads as already gone when cleaned. Shared, so what a run named survives the run
/// being dropped (a cancel noticed by the heartbeat).
#[derive(Debug, Clone, Default)]
pub struct Leftovers(Arc<Mutex<Named>>);

#[derive(Debug, Default)]
struct Named {
    /// Open uploads: key -> upload id.
    uploads: BTreeMap<String, String>,
    objects: BTreeSet<String>,
}

impl Leftovers {
    fn with<T>(&self, f: impl FnOnce(&mut Named) -> T) -> T {
        f(&mut self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// An upload begun or resumed: aborted unless it is settled.
    pub fn upload(&self, state: &MultipartState) {
        self.with(|n| n.uploads.insert(state.key.clone(), state.upload_id.clone()));
    }

    /// A staging object written (or that may have been, by an earlier attempt): deleted unless settled.
    pub fn object(&self, key: &str) {
        self.with(|n| n.objects.insert(key.to_owned()));
    }

    /// Aborts every upload and deletes every object still named, in `store`. Best effort: what
    /// fails is logged, and the bucket's lifecycle rule removes it later.
    pub async fn clean(&self, store: &Store) {
        let (uploads, objects) = self.with(|n| (std::mem::take(&mut n.uploads), std::mem::take(&mut n.objects)));
        for (key, upload_id) in uploads {
            let state = MultipartState { key: key.clone(), upload_id, parts: Vec::new(), bytes: 0 };
            match Multipart::resume(store, state).abort().await {
                Ok(()) => tracing::info!(key, "multipart upload of an ended job aborted"),
                // Completed or aborted already, by a run that did not get to say so.
                Err(e) if e.code() == Some("NoSuchUpload") => {}
                Err(e) => tracing::warn!(key, error = %e, "aborting the upload failed; the bucket's lifecycle rule cleans it up"),
            }
        }
        for key in objects {
            if let Err(e) = store.delete(&key).await {
                tracing::warn!(key, error = %e, "deleting a staging object failed");
            }
        }
    }
}

/// How an attempt ended.
#[derive(Debug)]
pub enum Outcome {
    /// Done: the worker records the result (and `progress` with it).
    Finished { result: JobResult, progress: Progress },
    /// Out of time: the checkpoint is stored ([`Step::hand_over`]); the worker invokes the next attempt.
    Continued { done: u64 },
    /// Cancelled, or no longer this attempt's: nothing more is written.
    Stopped(Refused),
}

/// A failed attempt: what the job's owner sees, and the cause for the log.
#[derive(Debug, thiserror::Error)]
#[error("{cause}")]
pub struct RunError {
    /// A short name of the failure for logs and `Diagnostic` (`SourceError`, `TargetFailed`, ...).
    pub kind: &'static str,
    pub public: Box<PublicError>,
    pub cause: Box<dyn std::error::Error + Send + Sync>,
    /// Progress to record with the failure (a batch's counts when it failed early).
    pub progress: Option<Box<Progress>>,
    /// Output written before the failure that the owner may download (a batch's results and
    /// failed items when it failed early).
    pub result: Option<Box<JobResult>>,
}

impl RunError {
    pub fn new(kind: &'static str, public: PublicError, cause: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> RunError {
        RunError { kind, public: Box::new(public), cause: cause.into(), progress: None, result: None }
    }

    /// A failure of the service, not of the job's input: the owner sees `internal`.
    pub fn internal(kind: &'static str, cause: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> RunError {
        RunError::new(kind, PublicError::code(ErrorCode::Internal), cause)
    }
}

impl From<JobStoreError> for RunError {
    fn from(e: JobStoreError) -> RunError {
        RunError::internal("StoreError", e)
    }
}

/// A kind of job.
pub trait Kind: Send + Sync + std::fmt::Debug {
    /// The name callers give as `kind` ([`ferry_core::jobs::is_kind_name`]).
    fn name(&self) -> &'static str;

    /// Checks and normalises the `params` of a submit. What it returns is stored and hashed.
    fn admit<'a>(&'a self, at: Admission<'a>, params: Value) -> BoxFuture<'a, Result<Value, AdmitError>>;

    /// The params of a job that runs again what `first` (the caller's, ended) left undone
    /// (`{"retry_of": id}`). Kinds that cannot are refused naming `retry_of`.
    fn retry<'a>(&'a self, _at: Admission<'a>, first: &'a JobRecord) -> BoxFuture<'a, Result<Value, AdmitError>> {
        let message = format!("jobs of kind {:?} cannot be retried; submit the request again", first.kind);
        Box::pin(async move { Err(SubmitError::new("retry_of", message).into()) })
    }

    /// Runs one attempt of a claimed job.
    fn run<'a>(&'a self, step: Step<'a>) -> BoxFuture<'a, Result<Outcome, RunError>>;

    /// The file name a download of output `file` (`None`: the main result) is offered under.
    fn download_name(&self, job: &JobRecord, file: Option<&str>) -> String {
        let ext = job.result.as_ref().and_then(|r| r.key.rsplit_once('.')).map_or("out", |(_, e)| e);
        match file {
            None => format!("{}.{ext}", job.id),
            Some(name) => format!("{}.{name}.jsonl", job.id),
        }
    }

    /// A short description of the params for the job's summary (`format` of an export).
    fn describe(&self, _params: &Value) -> BTreeMap<&'static str, Value> {
        BTreeMap::new()
    }
}

/// The kinds a deployment runs, by name.
#[derive(Debug, Default)]
pub struct Registry {
    kinds: BTreeMap<&'static str, Arc<dyn Kind>>,
}

impl Registry {
    /// The kinds ferry ships (`shipped`), whole: what the worker runs.
    pub fn standard() -> Registry {
        shipped(Registry::default())
    }

    /// The same kinds as the API uses them: admission, description and download names, without
    /// their work. The API never runs a job, and a registry of whole kinds would link every kind's
    /// run (the xlsx writer, the dataset readers) into `job-api` through their vtables.
    pub fn admitting() -> Registry {
        shipped(AdmitOnly(Registry::default())).0
    }

    /// This registry with `kind` added (replacing one of the same name).
    pub fn with(mut self, kind: impl Kind + 'static) -> Registry {
        self.kinds.insert(kind.name(), Arc::new(kind));
        self
    }

    pub fn get(&self, name: &str) -> Option<Arc<dyn Kind>> {
        self.kinds.get(name).cloned()
    }

    /// The names, sorted (for the "known kinds" of an error).
    pub fn names(&self) -> Vec<&'static str> {
        self.kinds.keys().copied().collect()
    }

    /// The kind named `name`, or the 400 naming the known ones.
    pub fn require(&self, name: &str) -> Result<Arc<dyn Kind>, SubmitError> {
        self.get(name).ok_or_else(|| SubmitError::new("kind", format!("unknown job kind {name:?}; known: {}", self.names().join(", "))))
    }
}

/// The kinds ferry ships, listed once for both registries. Register a kind of your own here.
fn shipped<R: AddKind>(registry: R) -> R {
    registry.add(crate::export::Export).add(crate::batch::Batch)
}

/// What [`shipped`] adds its kinds to.
trait AddKind {
    fn add(self, kind: impl Kind + 'static) -> Self;
}

impl AddKind for Registry {
    fn add(self, kind: impl Kind + 'static) -> Registry {
        self.with(kind)
    }
}

/// A registry that takes each kind without its run.
struct AdmitOnly(Registry);

impl AddKind for AdmitOnly {
    fn add(self, kind: impl Kind + 'static) -> AdmitOnly {
        AdmitOnly(self.0.with(Admitting(kind)))
    }
}

/// A kind without its run: everything else is `K`'s, called directly, so `K::run` is not linked.
#[derive(Debug)]
struct Admitting<K>(K);

impl<K: Kind> Kind for Admitting<K> {
    fn name(&self) -> &'static str {
        self.0.name()
    }

    fn admit<'a>(&'a self, at: Admission<'a>, params: Value) -> BoxFuture<'a, Result<Value, AdmitError>> {
        self.0.admit(at, params)
    }

    fn retry<'a>(&'a self, at: Admission<'a>, first: &'a JobRecord) -> BoxFuture<'a, Result<Value, AdmitError>> {
        self.0.retry(at, first)
    }

    fn run<'a>(&'a self, step: Step<'a>) -> BoxFuture<'a, Result<Outcome, RunError>> {
        let kind = self.0.name();
        let job_id = step.job.id.clone();
        Box::pin(async move {
            tracing::error!(job_id, kind, "a registry built for the API was asked to run a job");
            Err(RunError::internal("NotAWorker", format!("this registry admits jobs of kind {kind:?} but does not run them")))
        })
    }

    fn download_name(&self, job: &JobRecord, file: Option<&str>) -> String {
        self.0.download_name(job, file)
    }

    fn describe(&self, params: &Value) -> BTreeMap<&'static str, Value> {
        self.0.describe(params)
    }
}
