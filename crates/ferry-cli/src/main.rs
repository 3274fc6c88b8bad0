//! `ferry`, the operator's tool. Each subcommand lives in its own module; this file only parses
//! arguments and turns errors into messages and exit codes.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod edge;
mod jobs;
mod output;
mod redrive;
mod votes;

#[derive(Debug, Parser)]
#[command(name = "ferry", version, about = "Operate ferry: the vote pipeline, async jobs and notification redrive.")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Cross-region votes: normalise and merge tallies offline, exactly as the Lambdas do.
    #[command(subcommand)]
    Votes(votes::VotesCommand),
    /// Async jobs through the job API: submit, status, list, cancel, retry, download.
    Jobs(jobs::JobsArgs),
    /// Notifications: push dead letters back to the queue (SQS move task, or selectively by filter).
    Redrive(redrive::RedriveArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Votes(cmd) => votes::run(cmd),
        Command::Jobs(args) => jobs::run(args),
        Command::Redrive(args) => redrive::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferry: error: {e:#}");
            ExitCode::from(edge::exit_code(&e).unwrap_or_else(|| output::exit_code(&e)))
        }
    }
}
