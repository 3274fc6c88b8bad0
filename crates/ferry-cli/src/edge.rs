//! `ferry votes push|pull`: the regional edge, between a region's Redis and the bucket.
//!
//! Exit codes, so cron and its alerting can tell what happened:
//! 0 pushed / loaded / already up to date; 65 bad data (a member of the set, or the global result,
//! that the contract cannot carry; the message names it); 66 nothing to carry yet (an empty set, no
//! global result); 2 usage; 1 anything else (Redis or S3 unreachable...). On every failure the live
//! ranking is left as it was.

use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use ferry_aws::Store;
use ferry_core::key::Stamp;
use ferry_edge::chat::WEBHOOK_ENV;
use ferry_edge::{ChatStatus, EdgeError, PullConfig, PullOutcome, PushConfig, Webhook};
use indicatif::{ProgressBar, ProgressStyle};

use crate::output::BadInput;

/// Nothing to carry yet (EX_NOINPUT): an empty sorted set, or no global result.
pub const EXIT_NO_INPUT: u8 = 66;

/// A push or pull that found nothing to carry.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NoInput(pub String);

/// The exit code for edge errors that [`crate::output::exit_code`] does not know.
pub fn exit_code(e: &anyhow::Error) -> Option<u8> {
    e.chain().any(|c| c.is::<NoInput>()).then_some(EXIT_NO_INPUT)
}

#[derive(Debug, Args)]
pub struct PushArgs {
    /// Redis to read, as redis://[:password@]host:port[/db].
    #[arg(long, env = "FERRY_REDIS_URL", hide_env_values = true)]
    redis: String,
    /// The sorted set: members are kseq, scores are votes.
    #[arg(long)]
    key: String,
    /// The bucket the regional CSVs go to.
    #[arg(long, env = "FERRY_BUCKET")]
    bucket: String,
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    evno: u64,
    /// This region's locale (lowercase letters), e.g. jp.
    #[arg(long, value_parser = lowercase)]
    locale: String,
    /// The stage (lowercase letters or digits), e.g. prod.
    #[arg(long, value_parser = stage)]
    stage: String,
    /// Members asked for per ZSCAN call.
    #[arg(long, default_value_t = 10_000)]
    page: usize,
}

#[derive(Debug, Args)]
pub struct PullArgs {
    /// The bucket holding global/{evno}/{stage}/result-global.csv.
    #[arg(long, env = "FERRY_BUCKET")]
    bucket: String,
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    evno: u64,
    /// The stage (lowercase letters or digits), e.g. prod.
    #[arg(long, value_parser = stage)]
    stage: String,
    /// Redis to load, as redis://[:password@]host:port[/db].
    #[arg(long, env = "FERRY_REDIS_URL", hide_env_values = true)]
    redis: String,
    /// The live sorted set the API servers read. KEY:prev keeps the ranking it replaced, KEY:meta what was loaded.
    #[arg(long)]
    key: String,
    /// Load even when the global result is the one loaded last.
    #[arg(long)]
    force: bool,
    /// Places compared in the chat notice.
    #[arg(long, default_value_t = 10)]
    top: usize,
    /// Members per ZADD while loading.
    #[arg(long, default_value_t = 5_000)]
    batch: usize,
    /// Largest global result accepted, in bytes.
    #[arg(long, default_value_t = 512 * 1024 * 1024)]
    max_input_bytes: u64,
    /// Slack-compatible incoming webhook for the notice after a load or a failure. Optional.
    #[arg(long, env = WEBHOOK_ENV, hide_env_values = true)]
    webhook_url: Option<String>,
    /// How long the webhook may take before the notice is given up (the pull is unaffected).
    #[arg(long, default_value_t = 5)]
    webhook_timeout_secs: u64,
}

fn lowercase(s: &str) -> Result<String, String> {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase()) {
        Ok(s.to_owned())
    } else {
        Err(format!("{s:?} is not lowercase letters"))
    }
}

fn stage(s: &str) -> Result<String, String> {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()) {
        Ok(s.to_owned())
    } else {
        Err(format!("{s:?} is not lowercase letters or digits"))
    }
}

/// The CLI is synchronous; the edge commands run their own runtime.
fn block_on<F: std::future::Future>(f: F) -> anyhow::Result<F::Output> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")?;
    Ok(rt.block_on(f))
}

/// Maps an edge error onto the CLI's exit codes.
fn cli_error(e: EdgeError) -> anyhow::Error {
    if e.is_bad_data() {
        BadInput(e.to_string()).into()
    } else if e.is_missing_input() {
        NoInput(e.to_string()).into()
    } else {
        anyhow::Error::new(e)
    }
}

fn bar(message: &str) -> ProgressBar {
    let bar = ProgressBar::new(0);
    let style =
        ProgressStyle::with_template("{msg} {bar:30} {pos}/{len} members [{elapsed}]").unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_message(message.to_owned());
    bar
}

pub fn push(a: PushArgs) -> anyhow::Result<()> {
    block_on(async {
        let conf = ferry_aws::load_config().await;
        let store = Store::new(ferry_aws::clients::s3(&conf), &a.bucket);
        let mut conn = ferry_edge::connect(&a.redis).await.map_err(cli_error)?;
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).context("reading the clock")?;
        let cfg = PushConfig {
            key: &a.key,
            evno: a.evno,
            locale: &a.locale,
            stage: &a.stage,
            stamp: Stamp::from_unix_seconds(now.as_secs() as i64),
            page: a.page,
        };
        let progress = bar(&format!("reading {}", a.key));
        let out = ferry_edge::push(&store, &mut conn, &cfg, &|done, total| {
            progress.set_length(total);
            progress.set_position(done);
        })
        .await;
        progress.finish_and_clear();
        let out = out.map_err(cli_error)?;
        println!("pushed {} members of {} (sum {}) to s3://{}/{}", out.members, a.key, out.sum, a.bucket, out.upload);
        Ok(())
    })?
}

pub fn pull(a: PullArgs) -> anyhow::Result<()> {
    let webhook = match a.webhook_url.as_deref().filter(|u| !u.is_empty()) {
        Some(url) => match Webhook::new(url, Duration::from_secs(a.webhook_timeout_secs)) {
            Ok(w) => Some(w),
            Err(e) => {
                // A broken notice setting must not stop the ranking from loading.
                eprintln!("ferry: warning: {e}; pulling without chat notices");
                None
            }
        },
        None => None,
    };
    block_on(async {
        let conf = ferry_aws::load_config().await;
        let store = Store::new(ferry_aws::clients::s3(&conf), &a.bucket);
        let cfg = PullConfig {
            key: &a.key,
            evno: a.evno,
            stage: &a.stage,
            max_input_bytes: a.max_input_bytes,
            batch: a.batch,
            top: a.top,
            force: a.force,
        };
        let progress = bar(&format!("loading {}", a.key));
        let report = ferry_edge::pull_and_notify(&store, &a.redis, &cfg, webhook.as_ref(), &|done, total| {
            progress.set_length(total);
            progress.set_position(done);
        })
        .await;
        progress.finish_and_clear();
        if let ChatStatus::Failed(e) = &report.chat {
            eprintln!("ferry: warning: {e}; the pull itself is unaffected");
        }
        match report.result.map_err(cli_error)? {
            PullOutcome::Loaded { source, members, summary, .. } => {
                println!("loaded {members} members from {source} into {}", a.key);
                println!("{summary}");
            }
            PullOutcome::UpToDate { source, etag } => {
                println!("{} already holds {source} (etag {etag}); nothing loaded", a.key);
            }
            PullOutcome::Superseded { source, .. } => {
                println!("a newer global result was loaded into {} meanwhile; {source} was discarded", a.key);
            }
        }
        Ok(())
    })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(e: EdgeError, expect: u8) {
        let e = cli_error(e);
        assert_eq!(exit_code(&e).unwrap_or_else(|| crate::output::exit_code(&e)), expect, "{e}");
    }

    #[test]
    fn exit_codes_say_what_happened() {
        let bad = ferry_core::ranking::read_global("global/1/prod/result-global.csv", b"kseq,score\n").unwrap_err();
        check(EdgeError::BadData(bad), 65);
        check(EdgeError::EmptySet { key: "rank:1".into() }, 66);
        check(EdgeError::MissingGlobal { bucket: "b".into(), key: "global/1/prod/result-global.csv".into() }, 66);
        check(EdgeError::LoadMismatch { key: "k".into(), expected: 2, found: 1 }, 1);
    }

    #[test]
    fn locale_and_stage_are_checked_before_anything_runs() {
        assert!(lowercase("jp").is_ok());
        assert!(lowercase("JP").is_err());
        assert!(stage("prod2").is_ok());
        assert!(stage("pr-od").is_err());
    }
}
