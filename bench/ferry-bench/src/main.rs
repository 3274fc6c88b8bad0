//! `ferry-bench`: the Rust drivers `bench/run.py` times. Each subcommand does one measured thing
//! and prints a one-line summary, so the harness can check that the work was really done.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

mod floor;
mod gen_votes;

#[derive(Debug, Parser)]
#[command(name = "ferry-bench", about = "Benchmark drivers for ferry (see bench/run.py).")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Writes one regional CSV per locale, deterministically from the seed.
    GenVotes(gen_votes::GenArgs),
    /// The floor: parses each CSV and sums its `score` column, one thread per file, nothing else.
    ParseSum { files: Vec<PathBuf> },
    /// `ferry_core::tally::read_tally` alone on each file, one thread per file.
    ReadTally { files: Vec<PathBuf> },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::GenVotes(a) => gen_votes::run(&a),
        Command::ParseSum { files } => floor::parse_sum(&files),
        Command::ReadTally { files } => floor::read_tally(&files),
    }
}
