//! `ferry-bench`: the Rust drivers `bench/run.py` times. Each subcommand does one measured thing
//! and prints a one-line summary, so the harness can check that the work was really done.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[cfg(feature = "batch")]
mod batch;
#[cfg(feature = "consumer")]
mod consumer;
#[cfg(feature = "xlsx")]
mod dataset;
mod floor;
mod gen_votes;
mod lambda_paths;
// Only the export drivers use the order rows.
#[cfg(feature = "xlsx")]
mod orders;
mod peak;
mod phases;
#[cfg(feature = "xlsx")]
mod xlsx;

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
    /// `ferry_core::csv::read_tally` alone on each file, one thread per file.
    ReadTally { files: Vec<PathBuf> },
    /// `ferry votes merge --method share` phase by phase, each timed (LOCALE=FILE...).
    MergePhases { inputs: Vec<String> },
    /// The regional normalizer's work on one upload, and its peak RSS per byte of input.
    NormalizePeak(peak::NormalizeArgs),
    /// The global merger's work on locale results (LOCALE=FILE...), and its peak RSS per byte of input.
    MergePeak { inputs: Vec<String> },
    /// The regional normalizer on one upload and the global merger on locale results (LOCALE=FILE...),
    /// each phase timed over several runs; one line of JSON.
    LambdaPaths(lambda_paths::LambdaPathsArgs),
    /// Writes a seeded CSV dataset object of at least `--bytes`, and the same rows as Parquet.
    #[cfg(feature = "xlsx")]
    GenDataset(dataset::GenDatasetArgs),
    /// The export worker's dataset reads of objects read ahead at once, and their peak RSS per decoded byte.
    #[cfg(feature = "xlsx")]
    DatasetPeak(dataset::DatasetPeakArgs),
    /// Writes seeded staged export rows (10 columns) as JSON lines.
    #[cfg(feature = "xlsx")]
    GenRows(xlsx::GenRowsArgs),
    /// The export worker's xlsx writer on staged rows.
    #[cfg(feature = "xlsx")]
    Xlsx(xlsx::XlsxArgs),
    /// Reads a built workbook back (calamine): rows, first and last id per sheet.
    #[cfg(feature = "xlsx")]
    XlsxReadBack(xlsx::ReadBackArgs),
    /// The notification consumer's handler on 10-record batches, against endpoints that answer at once.
    #[cfg(feature = "consumer")]
    Consumer(consumer::ConsumerArgs),
    /// Writes seeded batch items as JSON lines.
    #[cfg(feature = "batch")]
    GenItems(batch::GenItemsArgs),
    /// Serves the batch target in this process until killed: every call answered 200 after a delay.
    #[cfg(feature = "batch")]
    BatchTarget(batch::TargetArgs),
    /// One batch job through the job API and worker handlers against a local AWS and the target.
    #[cfg(feature = "batch")]
    Batch(batch::BatchArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::GenVotes(a) => gen_votes::run(&a),
        Command::ParseSum { files } => floor::parse_sum(&files),
        Command::ReadTally { files } => floor::read_tally(&files),
        Command::MergePhases { inputs } => phases::run(&inputs),
        Command::NormalizePeak(a) => peak::normalize(&a),
        Command::MergePeak { inputs } => peak::merge(&inputs),
        Command::LambdaPaths(a) => lambda_paths::run(&a),
        #[cfg(feature = "xlsx")]
        Command::GenDataset(a) => dataset::generate(&a),
        #[cfg(feature = "xlsx")]
        Command::DatasetPeak(a) => dataset::peak(&a),
        #[cfg(feature = "xlsx")]
        Command::GenRows(a) => xlsx::gen_rows(&a),
        #[cfg(feature = "xlsx")]
        Command::Xlsx(a) => xlsx::build(&a),
        #[cfg(feature = "xlsx")]
        Command::XlsxReadBack(a) => xlsx::read_back(&a),
        #[cfg(feature = "consumer")]
        Command::Consumer(a) => consumer::run(&a),
        #[cfg(feature = "batch")]
        Command::GenItems(a) => batch::gen_items(&a),
        #[cfg(feature = "batch")]
        Command::BatchTarget(a) => batch::serve_target(&a),
        #[cfg(feature = "batch")]
        Command::Batch(a) => batch::run(&a),
    }
}
