//! `ferry redrive`: push dead-lettered notifications back to their queue, as the admin route does.
//!
//! Without a filter it starts SQS's own move task (`StartMessageMoveTask`); with `--kind`,
//! `--channel`, `--older-than`, `--newer-than`, `--max`, `--selective` or `--dry-run` it moves (or
//! lists) only the matching dead letters, sending each to the source queue before deleting it from
//! the DLQ. `--status` shows the DLQ's recent move tasks.

use std::io::IsTerminal;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use ferry_api::redrive::{Mode, NativeStarted};
use ferry_aws::notify::{self, QueuePair, RedriveOptions, RedriveReport};
use ferry_core::notify::{Channel, ErrorKind, RedriveFilter, parse_age};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

#[derive(Debug, Args)]
pub struct RedriveArgs {
    /// The notification queue messages go back to.
    #[arg(long, env = "FERRY_NOTIFY_QUEUE_URL")]
    queue_url: String,
    /// Its dead-letter queue.
    #[arg(long, env = "FERRY_NOTIFY_DLQ_URL")]
    dlq_url: String,
    /// Show the DLQ's recent move tasks and exit.
    #[arg(long, conflicts_with_all = ["dry_run", "selective", "kinds", "channels", "older_than", "newer_than", "max"])]
    status: bool,
    /// Only dead letters of this kind (repeatable): malformed_json, invalid_message, provider_rejected, retries_exhausted.
    #[arg(long = "kind", value_parser = parse_kind)]
    kinds: Vec<ErrorKind>,
    /// Only dead letters for this channel (repeatable): alimtalk, sms, email, push.
    #[arg(long = "channel", value_parser = parse_channel)]
    channels: Vec<Channel>,
    /// Only dead letters first queued at least this long ago (90s, 15m, 2h, 7d).
    #[arg(long, value_parser = parse_age)]
    older_than: Option<u64>,
    /// Only dead letters first queued at most this long ago.
    #[arg(long, value_parser = parse_age)]
    newer_than: Option<u64>,
    /// List what would move; move nothing.
    #[arg(long)]
    dry_run: bool,
    /// Move selectively (send, then delete) even without a filter.
    #[arg(long)]
    selective: bool,
    /// Stop after this many messages (selective).
    #[arg(long)]
    max: Option<usize>,
    /// At most this many messages per second.
    #[arg(long)]
    rate: Option<u32>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

fn parse_kind(s: &str) -> Result<ErrorKind, String> {
    s.parse()
}

fn parse_channel(s: &str) -> Result<Channel, String> {
    s.parse()
}

pub fn run(args: RedriveArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")?;
    runtime.block_on(redrive(args))
}

async fn redrive(a: RedriveArgs) -> anyhow::Result<()> {
    let conf = ferry_aws::load_config().await;
    let sqs = ferry_aws::clients::sqs(&conf);
    let queues = QueuePair { source_url: a.queue_url.clone(), dlq_url: a.dlq_url.clone() };
    let dlq_arn = notify::queue_arn(&sqs, &queues.dlq_url).await?;
    if a.status {
        let tasks = notify::list_move_tasks(&sqs, &dlq_arn).await?;
        if a.json {
            println!("{}", serde_json::to_string_pretty(&tasks)?);
        } else if tasks.is_empty() {
            println!("no move tasks for {dlq_arn}");
        } else {
            for t in tasks {
                let to_move = t.to_move.map_or("?".to_owned(), |n| n.to_string());
                let why = t.failure_reason.map(|r| format!(" ({r})")).unwrap_or_default();
                println!("{:<10} moved {}/{to_move} started {} ms{why}", t.status, t.moved, t.started_at_ms);
            }
        }
        return Ok(());
    }
    let filter = RedriveFilter { kinds: a.kinds, channels: a.channels, min_age_secs: a.older_than, max_age_secs: a.newer_than };
    let selective = a.selective || a.dry_run || a.max.is_some() || !filter.is_everything();
    if !selective {
        let source_arn = notify::queue_arn(&sqs, &queues.source_url).await?;
        let rate = a.rate.map(|r| r.clamp(1, 500) as i32);
        let handle = notify::start_move_task(&sqs, &dlq_arn, Some(&source_arn), rate).await?;
        if a.json {
            // The admin route's answer, member for member (through a `Value`, as the route writes it).
            let started = NativeStarted { mode: Mode::Native, task_handle: handle, source: dlq_arn, destination: source_arn, rate };
            println!("{}", serde_json::to_value(&started)?);
        } else {
            println!("move task started: {handle}\n  from {dlq_arn}\n  to   {source_arn}\nfollow it with `ferry redrive --status`");
        }
        return Ok(());
    }

    let (visible, _) = notify::queue_depth(&sqs, &queues.dlq_url).await?;
    let bar = progress_bar(visible, a.dry_run);
    let options = RedriveOptions { dry_run: a.dry_run, rate: a.rate.map(f64::from), max_messages: a.max, ..RedriveOptions::default() };
    let report = notify::selective_redrive(&sqs, &queues, &filter, &options, &mut |p| {
        bar.set_position(p.examined as u64);
        bar.set_message(if a.dry_run { format!("{} would move", p.matched) } else { format!("{} moved", p.moved) });
    })
    .await;
    bar.finish_and_clear();
    let report = report?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", summary(&report));
    }
    anyhow::ensure!(
        report.send_failures == 0,
        "{} matching dead letters could not be sent back; they are still in the DLQ",
        report.send_failures
    );
    Ok(())
}

fn progress_bar(len: u64, dry_run: bool) -> ProgressBar {
    let bar = ProgressBar::new(len.max(1));
    if !std::io::stderr().is_terminal() {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    let template = if dry_run {
        "{bar:30} {pos}/{len} dead letters looked at, {msg} [{elapsed}]"
    } else {
        "{bar:30} {pos}/{len} dead letters, {msg} [{elapsed}]"
    };
    bar.set_style(ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()));
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

fn summary(r: &RedriveReport) -> String {
    let mut out = String::new();
    if r.dry_run {
        out.push_str(&format!("dry run: {} of {} dead letters would move\n", r.matched, r.examined));
        for m in &r.messages {
            out.push_str(&format!(
                "  {}  {:<17} {:<8} {:>8}s  {}\n",
                m.message_id,
                m.kind,
                m.channel.as_deref().unwrap_or("-"),
                m.age_secs,
                m.notification_id.as_deref().unwrap_or("-")
            ));
        }
    } else {
        out.push_str(&format!("moved {} of {} dead letters looked at ({} matched)\n", r.moved, r.examined, r.matched));
        if r.delete_failures > 0 {
            out.push_str(&format!("  {} were sent back but stay in the DLQ too (delete refused); a later run moves them again, the consumer ignores the repeat\n", r.delete_failures));
        }
    }
    for (kind, n) in &r.by_kind {
        out.push_str(&format!("  {kind}: {n}\n"));
    }
    if r.stopped_early {
        out.push_str("stopped at --max; run again for the rest\n");
    }
    out
}
