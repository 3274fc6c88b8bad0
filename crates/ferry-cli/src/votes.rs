//! `ferry votes`: the vote pipeline's contract, offline.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use ferry_core::csv;
use ferry_core::merge::{self, LocaleScores};
use ferry_core::normalize::{locale_result, normalize_tally};
use ferry_core::{Method, Tally};
use indicatif::{ProgressBar, ProgressStyle};
use rayon::iter::{IntoParallelRefIterator, ParallelIterator};

use crate::output::{BadInput, Usage, write_output, write_output_with};

#[derive(Debug, Subcommand)]
pub enum VotesCommand {
    /// Normalise one regional CSV into a locale result (`kseq,score,raw`).
    Normalize(NormalizeArgs),
    /// Normalise several regional CSVs and merge them into the global result (`kseq,score,{locale}...`).
    Merge(MergeArgs),
    /// Upload a region's Redis sorted set as data/{evno}/{locale}-{stage}-{yyyyMMddHHmm}.csv.
    Push(crate::edge::PushArgs),
    /// Load the global result into a region's Redis sorted set, atomically; notify the chat.
    Pull(crate::edge::PullArgs),
}

#[derive(Debug, Args)]
pub struct NormalizeArgs {
    /// How scores are made comparable: share (v/sum), minmax, zscore or rank.
    #[arg(long, short, default_value = "share")]
    method: Method,
    /// Largest input file accepted, in bytes.
    #[arg(long, default_value_t = 512 * 1024 * 1024)]
    max_input_bytes: u64,
    /// The regional CSV: a header naming `kseq` and `score`, any case and column order.
    file: PathBuf,
    /// Where to write the result (written whole, then renamed into place). Default: stdout.
    #[arg(long, short)]
    output: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct MergeArgs {
    /// How each locale's scores are made comparable: share (v/sum), minmax, zscore or rank.
    #[arg(long, short, default_value = "share")]
    method: Method,
    /// Weight of a locale in the global score, as LOCALE=W (repeatable). Unnamed locales weigh --default-weight.
    #[arg(long = "weight", short, value_parser = parse_weight)]
    weights: Vec<(String, f64)>,
    /// Weight of every locale not named by --weight.
    #[arg(long, default_value_t = 1.0)]
    default_weight: f64,
    /// Largest input file accepted, in bytes.
    #[arg(long, default_value_t = 512 * 1024 * 1024)]
    max_input_bytes: u64,
    /// Regional CSVs as LOCALE=FILE, one per locale.
    #[arg(required = true, value_parser = parse_input)]
    inputs: Vec<(String, PathBuf)>,
    /// Where to write the result (written whole, then renamed into place). Default: stdout.
    #[arg(long, short)]
    output: Option<PathBuf>,
}

fn parse_locale(s: &str) -> Result<String, String> {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase()) {
        Ok(s.to_owned())
    } else {
        Err(format!("locale {s:?} is not lowercase letters"))
    }
}

fn parse_weight(s: &str) -> Result<(String, f64), String> {
    let (l, w) = s.split_once('=').ok_or_else(|| format!("{s:?} is not LOCALE=WEIGHT"))?;
    let w: f64 = w.parse().map_err(|_| format!("weight {w:?} of {l} is not a number"))?;
    if !w.is_finite() || w < 0.0 {
        return Err(format!("weight of {l} must be a finite number >= 0, got {w}"));
    }
    Ok((parse_locale(l)?, w))
}

fn parse_input(s: &str) -> Result<(String, PathBuf), String> {
    let (l, f) = s.split_once('=').ok_or_else(|| format!("{s:?} is not LOCALE=FILE"))?;
    Ok((parse_locale(l)?, PathBuf::from(f)))
}

pub fn run(cmd: VotesCommand) -> anyhow::Result<()> {
    match cmd {
        VotesCommand::Normalize(a) => {
            let tally = read_tally(&a.file, a.max_input_bytes)?;
            write_output(a.output.as_deref(), &locale_result(a.method, &tally))
        }
        VotesCommand::Merge(a) => merge_files(a),
        VotesCommand::Push(a) => crate::edge::push(a),
        VotesCommand::Pull(a) => crate::edge::pull(a),
    }
}

fn read_tally(path: &std::path::Path, cap: u64) -> anyhow::Result<Tally> {
    thread_local! {
        /// One file's bytes at a time per thread: the next file read on it reuses the memory.
        static BYTES: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    let name = path.display().to_string();
    let size = std::fs::metadata(path).with_context(|| format!("reading {name}"))?.len();
    csv::check_size(&name, size, cap).map_err(|e| BadInput(e.to_string()))?;
    BYTES
        .with_borrow_mut(|bytes| {
            bytes.clear();
            std::io::Read::read_to_end(&mut std::fs::File::open(path)?, bytes)?;
            Ok::<_, std::io::Error>(())
        })
        .with_context(|| format!("reading {name}"))?;
    BYTES.with_borrow(|bytes| csv::read_tally(&name, bytes)).map_err(|e| BadInput(e.to_string()).into())
}

fn merge_files(a: MergeArgs) -> anyhow::Result<()> {
    for (i, (locale, _)) in a.inputs.iter().enumerate() {
        if a.inputs[..i].iter().any(|(l, _)| l == locale) {
            return Err(Usage(format!("locale {locale} is given more than once")).into());
        }
    }
    let bar = spinner(format!("normalising {} regional files", a.inputs.len()));
    // The files are independent: read and normalised on every core the merge may use (one with
    // RAYON_NUM_THREADS=1), each normalised where it was read: the keys read are the keys merged and
    // written, never copied.
    let normalised: Vec<anyhow::Result<Tally>> =
        a.inputs.par_iter().map(|(_, path)| Ok(normalize_tally(a.method, read_tally(path, a.max_input_bytes)?))).collect();
    let mut scores = Vec::with_capacity(normalised.len());
    for r in normalised {
        scores.push(r?);
    }
    bar.set_message("merging");
    let weight = |locale: &str| a.weights.iter().rev().find(|(l, _)| l == locale).map_or(a.default_weight, |(_, w)| *w);
    let inputs: Vec<LocaleScores<'_>> =
        a.inputs.iter().zip(&scores).map(|((locale, _), scores)| LocaleScores { locale, weight: weight(locale), scores }).collect();
    let global = merge::merge(&inputs).map_err(|e| BadInput(e.to_string()))?;
    bar.set_message("writing");
    write_output_with(a.output.as_deref(), |w| global.write_csv(w))?;
    bar.finish_and_clear();
    Ok(())
}

/// A spinner on stderr; invisible when stderr is not a terminal.
pub fn spinner(message: String) -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    bar.set_style(ProgressStyle::with_template("{spinner} {msg} [{elapsed}]").unwrap_or_else(|_| ProgressStyle::default_spinner()));
    bar.set_message(message);
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}
