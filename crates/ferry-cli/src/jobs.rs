//! `ferry jobs`: the job API from a terminal. Requests go to the deployed API (`--api`, or
//! `FERRY_API_URL`) with the caller's bearer token (`--token`, or `FERRY_API_TOKEN`), so the API
//! sees the same identity a browser would give it. Bodies are read and written as
//! `ferry_api`'s shapes; a job is printed as the API sent it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use ferry_api::error::{ErrorBody, GatewayMessage};
use ferry_api::jobs::{Cancelled, Envelope, JobList, JobView, Submitted};
use ferry_core::jobs::Status;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::output::BadInput;

#[derive(Debug, Args)]
pub struct JobsArgs {
    /// Base URL of the job API (`https://{api-id}.execute-api.{region}.amazonaws.com`).
    #[arg(long, env = "FERRY_API_URL", global = true, default_value = "")]
    api: String,
    /// Bearer token the API's JWT authorizer accepts.
    #[arg(long, env = "FERRY_API_TOKEN", global = true, default_value = "", hide_env_values = true)]
    token: String,
    #[command(subcommand)]
    command: JobsCommand,
}

#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// Submit a job from a JSON file `{"kind": "export" | "batch", "params": {...}}` (`-` reads stdin).
    Submit {
        file: PathBuf,
        /// Wait for the job to end, with a progress bar.
        #[arg(long)]
        wait: bool,
        /// After a successful wait, download the file here.
        #[arg(long, short, requires = "wait")]
        output: Option<PathBuf>,
    },
    /// Show a job's status.
    Status {
        id: String,
        /// Wait for the job to end, with a progress bar.
        #[arg(long)]
        wait: bool,
    },
    /// List your jobs, newest first.
    List {
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Follow every page instead of the first.
        #[arg(long)]
        all: bool,
    },
    /// Run again the failed items of an ended batch job, as a new job.
    Retry {
        id: String,
        /// Wait for the new job to end, with a progress bar.
        #[arg(long)]
        wait: bool,
    },
    /// Cancel a queued or running job.
    Cancel { id: String },
    /// Download a finished job's file.
    Download {
        id: String,
        /// Where to write it (default: the job id and the format's extension).
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
}

struct Client {
    http: reqwest::Client,
    api: String,
    token: String,
}

impl Client {
    async fn send(&self, method: reqwest::Method, path: &str, body: Option<Vec<u8>>) -> anyhow::Result<(u16, Value)> {
        let url = format!("{}{path}", self.api.trim_end_matches('/'));
        let mut req = self.http.request(method.clone(), &url).bearer_auth(&self.token).header("accept", "application/json");
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        let resp = req.send().await.with_context(|| format!("{method} {url}"))?;
        let status = resp.status().as_u16();
        let text = resp.text().await.with_context(|| format!("{method} {url}: reading the answer"))?;
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        match status {
            400 => Err(BadInput(format!("{method} {path}: {}", describe_error(&value))).into()),
            401 | 403 => bail!("{method} {path}: {status}: not authorised (check --token / FERRY_API_TOKEN)"),
            404 => bail!("{method} {path}: no such job (or not yours)"),
            s if s >= 500 => bail!("{method} {path}: the API failed with {s}: {}", describe_error(&value)),
            _ => Ok((status, value)),
        }
    }
}

/// An error answer as `code (field): message [request id ...]`. Only the API's error object is
/// shown; anything else in an error answer (a gateway's own text) is summarised, not echoed.
fn describe_error(v: &Value) -> String {
    match (ErrorBody::deserialize(v), GatewayMessage::deserialize(v)) {
        (Ok(body), _) => body.error.to_string(),
        // API Gateway's own answers (`{"message": "Internal Server Error"}`).
        (Err(_), Ok(gateway)) => gateway.message,
        (Err(_), Err(_)) => "no error details".to_owned(),
    }
}

/// A successful answer as the shape it should have.
fn read<T: DeserializeOwned>(v: &Value, what: &str) -> anyhow::Result<T> {
    T::deserialize(v).with_context(|| format!("the API answered without {what}"))
}

pub fn run(args: JobsArgs) -> anyhow::Result<()> {
    if args.api.is_empty() {
        bail!("no API URL: pass --api or set FERRY_API_URL");
    }
    let client = Client { http: reqwest::Client::builder().timeout(Duration::from_secs(60)).build()?, api: args.api, token: args.token };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async move {
        match args.command {
            JobsCommand::Submit { file, wait, output } => submit(&client, &file, wait, output.as_deref()).await,
            JobsCommand::Status { id, wait } => {
                let v = if wait {
                    wait_for(&client, &id).await?.0
                } else {
                    client.send(reqwest::Method::GET, &format!("/jobs/{id}"), None).await?.1
                };
                println!("{}", serde_json::to_string_pretty(&v)?);
                Ok(())
            }
            JobsCommand::Retry { id, wait } => {
                // As a bad submit file is: refused before any request.
                if !ferry_core::jobs::is_job_id(&id) {
                    return Err(BadInput(format!("{id:?} is not a job id")).into());
                }
                let body = serde_json::to_vec(&Envelope::retry(id))?;
                start(&client, body, wait, None).await
            }
            JobsCommand::List { limit, all } => list(&client, limit, all).await,
            JobsCommand::Cancel { id } => {
                let (status, v) = client.send(reqwest::Method::DELETE, &format!("/jobs/{id}"), None).await?;
                if status == 409 {
                    bail!("{id}: {}", describe_error(&v));
                }
                let cancelled: Cancelled = read(&v, "the cancelled job")?;
                println!("{id}: {}", cancelled.job.status);
                Ok(())
            }
            JobsCommand::Download { id, output } => download(&client, &id, output.as_deref()).await,
        }
    })
}

/// Reads and checks a submit body locally, so a bad file is reported with its name before any request.
fn read_body(file: &Path) -> anyhow::Result<Vec<u8>> {
    let bytes = if file == Path::new("-") {
        let mut b = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut b).context("reading stdin")?;
        b
    } else {
        std::fs::read(file).with_context(|| format!("reading {}", file.display()))?
    };
    check_body(&bytes).map_err(|e| BadInput(format!("{}: {e}", file.display())))?;
    Ok(bytes)
}

/// The checks the API makes on a submit body that need nothing but the body.
fn check_body(bytes: &[u8]) -> Result<(), ferry_core::jobs::SubmitError> {
    let envelope = ferry_api::jobs::parse_envelope(bytes)?;
    match (envelope.kind.as_deref(), envelope.params) {
        // A retry names a job: only the API can tell whether it may be retried.
        (_, None) if envelope.retry_of.is_some() => Ok(()),
        (Some(ferry_core::batch::KIND), Some(params)) => ferry_core::batch::BatchParams::parse(params).map(drop),
        (Some(ferry_core::batch::KIND), None) => Err(ferry_core::jobs::SubmitError::new("params", "is missing")),
        (Some(kind), _) if kind != "export" => Err(ferry_core::jobs::SubmitError::new(
            "kind",
            format!("unknown job kind {kind:?}; known: export, {}", ferry_core::batch::KIND),
        )),
        _ => ferry_api::jobs::parse_submit(bytes).map(drop),
    }
}

async fn submit(client: &Client, file: &Path, wait: bool, output: Option<&Path>) -> anyhow::Result<()> {
    start(client, read_body(file)?, wait, output).await
}

/// Posts a submit body; prints the new job's id, or with `wait` its final view.
async fn start(client: &Client, body: Vec<u8>, wait: bool, output: Option<&Path>) -> anyhow::Result<()> {
    let (status, v) = client.send(reqwest::Method::POST, "/jobs", Some(body)).await?;
    let submitted: Submitted = read(&v, "a job id")?;
    let id = submitted.job.id;
    let note = if status == 200 { " (already running: not started twice)" } else { "" };
    eprintln!("job {id}: {}{note}", submitted.job.status);
    if !wait {
        println!("{id}");
        return Ok(());
    }
    let (printed, done) = wait_for(client, &id).await?;
    println!("{}", serde_json::to_string_pretty(&printed)?);
    if done.status != Status::Succeeded {
        let error = done.error.as_ref().map_or_else(|| "no error recorded".to_owned(), |e| e.to_string());
        bail!("job {id} ended {}: {error}", done.status);
    }
    if let Some(out) = output {
        fetch(client, &done, out).await?;
    }
    Ok(())
}

/// Polls the job until it ends, showing its progress; then, for a job that counts items, says on
/// stderr how they ended and where the failed ones are (stdout stays the job's JSON). Returns the
/// job as the API sent it (to print) and as read.
async fn wait_for(client: &Client, id: &str) -> anyhow::Result<(Value, JobView)> {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg} [{bar:30}] {pos}/{len} {prefix} [{elapsed}]")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_prefix("rows");
    bar.enable_steady_tick(Duration::from_millis(120));
    loop {
        let (_, v) = client.send(reqwest::Method::GET, &format!("/jobs/{id}"), None).await?;
        let job: JobView = read(&v, "a job")?;
        let p = &job.progress;
        bar.set_length(p.total.unwrap_or(p.done).max(p.done));
        bar.set_position(p.done);
        match format_counts(&serde_json::to_value(&p.counts)?, false) {
            Some(counts) => {
                bar.set_prefix("items");
                bar.set_message(format!("{}: {counts}", p.phase));
            }
            None => bar.set_message(format!("{} {}", job.status, p.phase)),
        }
        if !matches!(job.status, Status::Queued | Status::Running) {
            bar.finish_and_clear();
            for line in ending(&v) {
                eprintln!("{line}");
            }
            return Ok((v, job));
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// The states of an item, in the order they are shown; any other state follows, by name.
const STATES: [&str; 6] = ["running", "succeeded", "failed", "retrying", "pending", "skipped"];

/// Counts by state as `running 10 · succeeded 1,234 · failed 3`, known states first; `None` when
/// there are none. At the `end` the states an ended job cannot be in are left out when zero.
fn format_counts(counts: &Value, end: bool) -> Option<String> {
    let map = counts.as_object().filter(|m| !m.is_empty())?;
    let mut names: Vec<&String> = map.keys().collect();
    names.sort_by_key(|k| (STATES.iter().position(|s| s == k).unwrap_or(STATES.len()), k.as_str()));
    let parts: Vec<String> = names
        .into_iter()
        .filter_map(|name| {
            let n = map[name].as_u64()?;
            let transient = matches!(name.as_str(), "running" | "retrying" | "pending");
            (!(end && transient && n == 0)).then(|| format!("{name} {}", thousands(n)))
        })
        .collect();
    (!parts.is_empty()).then(|| parts.join(" · "))
}

/// `1234567` as `1,234,567`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// What an ended job's counts and failed-items link say, one line each (nothing for a job that
/// counts no items).
fn ending(v: &Value) -> Vec<String> {
    let id = v["id"].as_str().unwrap_or("?");
    let status = v["status"].as_str().unwrap_or("?");
    // Final counts come with a succeeded job; a failed or cancelled one has only its last progress.
    let counts = if v["counts"].is_object() { &v["counts"] } else { &v["progress"]["counts"] };
    let mut lines = Vec::new();
    if let Some(c) = format_counts(counts, true) {
        lines.push(format!("job {id} {status}: {c}"));
    }
    if let Some(url) = v["files"]["failed"]["url"].as_str() {
        let rows = v["files"]["failed"]["rows"].as_u64().map_or_else(String::new, |n| format!(" ({})", thousands(n)));
        lines.push(format!("failed items{rows}: {url}"));
        lines.push(format!("run them again with: ferry jobs retry {id}"));
    }
    lines
}

async fn list(client: &Client, limit: u32, all: bool) -> anyhow::Result<()> {
    let mut path = format!("/jobs?limit={limit}");
    let mut out = std::io::stdout().lock();
    writeln!(out, "{:<36}  {:<9}  {:<14}  {:>9}  created", "id", "status", "phase", "rows")?;
    loop {
        let (_, v) = client.send(reqwest::Method::GET, &path, None).await?;
        let page: JobList = read(&v, "a list of jobs")?;
        for j in &page.jobs {
            // The rows column is written as it always was: not padded under its heading.
            writeln!(
                out,
                "{:<36}  {:<9}  {:<14}  {}  {}",
                j.id,
                j.status.as_str(),
                j.progress.phase.as_str(),
                j.progress.done,
                j.created_at.as_deref().unwrap_or("")
            )?;
        }
        match page.next_cursor {
            Some(c) if all => path = format!("/jobs?limit={limit}&cursor={c}"),
            _ => return Ok(()),
        }
    }
}

async fn download(client: &Client, id: &str, output: Option<&Path>) -> anyhow::Result<()> {
    let (_, v) = client.send(reqwest::Method::GET, &format!("/jobs/{id}"), None).await?;
    let job: JobView = read(&v, "a job")?;
    if job.status != Status::Succeeded {
        bail!("job {id} is {}: nothing to download", job.status);
    }
    let format = job.details.get("format").and_then(Value::as_str).unwrap_or("out");
    let default = PathBuf::from(format!("{id}.{format}"));
    fetch(client, &job, output.unwrap_or(&default)).await
}

/// Streams the file behind the job's download link to `out` (beside it, then renamed into place).
async fn fetch(client: &Client, job: &JobView, out: &Path) -> anyhow::Result<()> {
    let download = job.download.as_ref().context("the job has no download link")?;
    let mut resp =
        client.http.get(&download.url).timeout(Duration::from_secs(3600)).send().await?.error_for_status().context("downloading")?;
    let bar = ProgressBar::new(resp.content_length().unwrap_or(0));
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} [{elapsed}]").unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message(format!("downloading {}", out.display()));
    let dir = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let tmp = dir.join(format!(".{}.{}.tmp", out.file_name().map(|n| n.to_string_lossy()).unwrap_or_default(), std::process::id()));
    let result = async {
        let mut f = std::fs::File::create(&tmp)?;
        while let Some(chunk) = resp.chunk().await? {
            f.write_all(&chunk)?;
            bar.inc(chunk.len() as u64);
        }
        f.sync_all()?;
        std::fs::rename(&tmp, out)?;
        anyhow::Ok(())
    }
    .await;
    bar.finish_and_clear();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.with_context(|| format!("writing {}", out.display()))?;
    eprintln!("{}: {} rows, {} bytes", out.display(), download.rows, download.size);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn counts_read_in_state_order_with_thousands_grouped() {
        let live = json!({"pending": 8751, "retrying": 2, "failed": 3, "succeeded": 1234, "running": 10});
        assert_eq!(format_counts(&live, false).as_deref(), Some("running 10 · succeeded 1,234 · failed 3 · retrying 2 · pending 8,751"));
        // At the end, states a finished job cannot be in are dropped when zero; unknown ones follow.
        let end = json!({"pending": 0, "running": 0, "retrying": 0, "skipped": 0, "failed": 12, "succeeded": 1_234_567, "other": 4});
        assert_eq!(format_counts(&end, true).as_deref(), Some("succeeded 1,234,567 · failed 12 · skipped 0 · other 4"));
        assert_eq!(
            format_counts(&end, false).as_deref(),
            Some("running 0 · succeeded 1,234,567 · failed 12 · retrying 0 · pending 0 · skipped 0 · other 4")
        );
        assert_eq!(format_counts(&json!({}), false), None);
        assert_eq!(format_counts(&Value::Null, false), None);
        assert_eq!(format_counts(&json!({"pending": 0}), true), None);
        for (n, text) in [(0, "0"), (999, "999"), (1_000, "1,000"), (12_345, "12,345"), (u64::MAX, "18,446,744,073,709,551,615")] {
            assert_eq!(thousands(n), text);
        }
    }

    #[test]
    fn an_ended_batch_names_its_counts_and_failed_file() {
        let v = json!({
            "id": "j-1", "status": "succeeded",
            "progress": {"counts": {"succeeded": 1, "failed": 1}},
            "counts": {"succeeded": 2990, "failed": 10, "skipped": 0, "pending": 0},
            "files": {"failed": {"url": "https://example.com/f", "rows": 10}},
        });
        assert_eq!(
            ending(&v),
            [
                "job j-1 succeeded: succeeded 2,990 · failed 10 · skipped 0",
                "failed items (10): https://example.com/f",
                "run them again with: ferry jobs retry j-1",
            ]
        );
        // A failed batch has no final counts: its last progress stands in.
        let failed = json!({"id": "j-2", "status": "failed", "progress": {"counts": {"succeeded": 3, "failed": 2, "pending": 0}}});
        assert_eq!(ending(&failed), ["job j-2 failed: succeeded 3 · failed 2"]);
        // An export counts no items.
        assert!(ending(&json!({"id": "j-3", "status": "succeeded", "progress": {"phase": "done"}})).is_empty());
    }

    #[test]
    fn submit_bodies_of_either_kind_are_checked_locally() {
        let ok = |b: &str| check_body(b.as_bytes()).map_err(|e| e.to_string());
        assert!(ok(r#"{"kind": "batch", "params": {"target": "crm", "items": [{"id": 1}]}}"#).is_ok());
        assert!(ok(r#"{"retry_of": "00000000-0000-4000-8000-000000000000"}"#).is_ok());
        assert!(
            ok(r#"{"kind": "batch", "params": {"target": "crm", "items": [], "max_concurrency": 5}}"#)
                .unwrap_err()
                .contains("params.items")
        );
        assert!(ok(r#"{"kind": "batch"}"#).unwrap_err().contains("params"));
        assert!(ok(r#"{"kind": "report", "params": {}}"#).unwrap_err().contains("known: export, batch"));
        assert!(ok(r#"{"kind": "export", "params": {"format": "csv"}}"#).is_err());
    }
}
