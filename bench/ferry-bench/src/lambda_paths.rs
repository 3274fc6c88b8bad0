//! The vote Lambdas' work, timed phase by phase: the regional normalizer on one upload and the
//! global merger on one stage's locale results, through the same public `ferry-core` calls, in the
//! same order, as `ferry_aws::votes` makes them. The bodies are read before timing, as S3 hands
//! them over whole; what is timed is what the function does with them.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, ensure};
use clap::Args;
use ferry_core::merge::{self, LocaleScores};
use ferry_core::{Method, budget, csv, normalize};

use crate::peak::read_whole;

#[derive(Debug, Args)]
pub struct LambdaPathsArgs {
    /// A regional upload, for the normalizer.
    #[arg(long)]
    upload: PathBuf,
    /// The stage config's method, which the normalizer applies.
    #[arg(long, default_value = "share")]
    method: Method,
    /// The function's configured memory: the normalizer's read is held within what the budget leaves of it.
    #[arg(long, default_value_t = 1024)]
    memory_mb: u64,
    /// Timed runs of each path; each phase reports its median.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// The locale results the merger reads (LOCALE=FILE...).
    results: Vec<String>,
}

/// Times both paths `--runs` times each and prints one line of JSON.
pub fn run(a: &LambdaPathsArgs) -> anyhow::Result<()> {
    ensure!(a.runs > 0, "--runs must be at least 1");
    ensure!(!a.results.is_empty(), "no locale results (LOCALE=FILE) for the merger");
    let upload = read_whole(&a.upload)?;
    let results: Vec<(String, String, Vec<u8>)> = a
        .results
        .iter()
        .map(|s| {
            let (locale, file) = s.split_once('=').context("locale results are LOCALE=FILE")?;
            Ok((locale.to_owned(), file.to_owned(), read_whole(Path::new(file))?))
        })
        .collect::<anyhow::Result<_>>()?;
    let normalizer = normalizer(a, &upload)?;
    let merger = merger(a.runs, &results)?;
    println!(
        r#"{{"runs":{},"threads":{},"memory_mb":{},"normalizer":{},"merger":{}}}"#,
        a.runs,
        threads(),
        a.memory_mb,
        normalizer.json(),
        merger.json()
    );
    Ok(())
}

/// The normalizer, as `normalize_attempt` runs once the body is fetched.
fn normalizer(a: &LambdaPathsArgs, body: &[u8]) -> anyhow::Result<PathRuns> {
    let name = a.upload.display().to_string();
    let memory = budget::usable_bytes(Some(a.memory_mb));
    let mut path = PathRuns::new(&["read_tally_within", "locale_result"], body.len(), a.runs);
    let cpu = cpu_ms()?;
    for _ in 0..a.runs {
        let start = Instant::now();
        let tally = csv::read_tally_within(&name, body, memory)?;
        let read = start.elapsed();
        let result = normalize::locale_result(a.method, &tally);
        let written = start.elapsed();
        let rows = tally.len();
        drop(tally);
        let output = result.len();
        drop(result);
        path.record(&[read, written - read], start.elapsed(), rows, output)?;
    }
    path.cpu_ms = (cpu_ms()? - cpu) / a.runs as f64;
    Ok(path)
}

/// The merger, as `merge_attempt` runs once the stage is listed: each locale result read and parsed
/// in turn (the handler fetches them one at a time), then merged and written.
fn merger(runs: usize, inputs: &[(String, String, Vec<u8>)]) -> anyhow::Result<PathRuns> {
    let size = inputs.iter().map(|(_, _, b)| b.len()).sum();
    let mut path = PathRuns::new(&["read_locale_result", "merge", "to_csv"], size, runs);
    let cpu = cpu_ms()?;
    for _ in 0..runs {
        let start = Instant::now();
        let mut read = Vec::with_capacity(inputs.len());
        for (locale, file, body) in inputs {
            read.push((locale.as_str(), csv::read_locale_result(file, body)?));
        }
        let parsed = start.elapsed();
        // The stage config's default weight.
        let scores: Vec<LocaleScores<'_>> = read.iter().map(|(l, t)| LocaleScores { locale: l, weight: 1.0, scores: t }).collect();
        let global = merge::merge(&scores)?;
        let merged = start.elapsed();
        let result = global.to_csv();
        let written = start.elapsed();
        let rows = global.len();
        let output = result.len();
        drop(result);
        drop(global);
        drop(read);
        path.record(&[parsed, merged - parsed, written - merged], start.elapsed(), rows, output)?;
    }
    path.cpu_ms = (cpu_ms()? - cpu) / runs as f64;
    Ok(path)
}

/// One path's runs: each phase's wall times, the totals (the phases and letting go of what they
/// built), and what it produced, which must not change from run to run.
struct PathRuns {
    phases: &'static [&'static str],
    ms: Vec<Vec<f64>>,
    total_ms: Vec<f64>,
    input_bytes: usize,
    rows: usize,
    output_bytes: usize,
    cpu_ms: f64,
}

impl PathRuns {
    fn new(phases: &'static [&'static str], input_bytes: usize, runs: usize) -> PathRuns {
        let ms = vec![Vec::with_capacity(runs); phases.len()];
        PathRuns { phases, ms, total_ms: Vec::with_capacity(runs), input_bytes, rows: 0, output_bytes: 0, cpu_ms: 0.0 }
    }

    fn record(&mut self, phases: &[std::time::Duration], total: std::time::Duration, rows: usize, output: usize) -> anyhow::Result<()> {
        // A path that quietly produced nothing must not pass for a fast one.
        ensure!(rows > 0 && output > 0, "{} produced {rows} rows, {output} bytes", self.phases.join(" + "));
        if !self.total_ms.is_empty() {
            ensure!(
                (rows, output) == (self.rows, self.output_bytes),
                "{} produced a different result on a later run",
                self.phases.join(" + ")
            );
        }
        (self.rows, self.output_bytes) = (rows, output);
        for (ms, d) in self.ms.iter_mut().zip(phases) {
            ms.push(d.as_secs_f64() * 1000.0);
        }
        self.total_ms.push(total.as_secs_f64() * 1000.0);
        Ok(())
    }

    fn json(&self) -> String {
        let total = median(&self.total_ms);
        let mb = self.input_bytes as f64 / 1e6;
        let (min, max) = self.total_ms.iter().fold((f64::INFINITY, 0.0_f64), |(lo, hi), &t| (lo.min(t), hi.max(t)));
        let phases: Vec<String> = self.phases.iter().zip(&self.ms).map(|(p, ms)| format!(r#""{p}":{:.1}"#, median(ms))).collect();
        format!(
            concat!(
                r#"{{"input_mb":{:.3},"rows":{},"output_bytes":{},"phase_ms":{{{}}},"#,
                r#""total_ms":{:.1},"total_range_ms":[{:.1},{:.1}],"cpu_ms":{:.0},"mb_s":{:.1}}}"#
            ),
            mb,
            self.rows,
            self.output_bytes,
            phases.join(","),
            total,
            min,
            max,
            self.cpu_ms,
            mb / (total / 1000.0)
        )
    }
}

fn median(xs: &[f64]) -> f64 {
    let mut xs = xs.to_vec();
    xs.sort_by(f64::total_cmp);
    let mid = xs.len() / 2;
    if xs.len() % 2 == 1 { xs[mid] } else { (xs[mid - 1] + xs[mid]) / 2.0 }
}

/// The threads rayon starts by its own rule: `RAYON_NUM_THREADS` when set above 0, else every core.
fn threads() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n: &usize| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// CPU time (user + system) of the whole process so far, every thread counted, in ms: fields 14
/// and 15 of /proc/self/stat (Linux), in clock ticks of 1/100 s (`USER_HZ`, fixed for user space).
fn cpu_ms() -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").context("reading /proc/self/stat")?;
    // The command name (field 2) may hold spaces and parentheses; the fields after it do not.
    let rest = stat.rsplit_once(')').context("no command name in /proc/self/stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> anyhow::Result<u64> { Ok(fields.get(i).context("/proc/self/stat is short")?.parse()?) };
    // `rest` starts at field 3.
    Ok((ticks(14 - 3)? + ticks(15 - 3)?) as f64 * 10.0)
}
