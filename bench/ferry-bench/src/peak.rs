//! Peak memory of the vote functions' work per byte of input: how the factors in
//! `ferry_core::budget` are measured. Each driver makes the same `ferry-core` calls, in the same
//! order and letting go of the same buffers, as `ferry_aws::votes` does on a Lambda.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use ferry_core::merge::{self, LocaleScores};
use ferry_core::{Method, csv};

#[derive(Debug, Args)]
pub struct NormalizeArgs {
    #[arg(long, default_value = "share")]
    method: Method,
    /// Also write the locale result here (an input for `merge-peak`).
    #[arg(long, short)]
    output: Option<PathBuf>,
    /// A regional upload.
    file: PathBuf,
}

/// The normalizer on one upload: body, `read_tally`, `locale_result`.
pub fn normalize(a: &NormalizeArgs) -> anyhow::Result<()> {
    let start = status_kb("VmRSS")?;
    let name = a.file.display().to_string();
    let body = read_whole(&a.file)?;
    let size = body.len() as u64;
    let tally = csv::read_tally(&name, &body)?;
    drop(body);
    let csv = ferry_core::normalize::locale_result(a.method, &tally);
    let keys = tally.len();
    drop(tally);
    let peak = status_kb("VmHWM")?;
    if let Some(out) = &a.output {
        std::fs::write(out, &csv).with_context(|| format!("writing {}", out.display()))?;
    }
    report("normalize", size, keys, start, peak);
    Ok(())
}

/// The merger on one stage's locale results (LOCALE=FILE...): each read and parsed in turn, then
/// merged and written.
pub fn merge(inputs: &[String]) -> anyhow::Result<()> {
    let start = status_kb("VmRSS")?;
    let mut size = 0;
    let mut read = Vec::new();
    for input in inputs {
        let (locale, file) = input.split_once('=').context("inputs are LOCALE=FILE")?;
        let body = read_whole(Path::new(file))?;
        size += body.len() as u64;
        read.push((locale.to_owned(), csv::read_locale_result(file, &body)?));
    }
    let scores: Vec<LocaleScores<'_>> = read.iter().map(|(l, t)| LocaleScores { locale: l, weight: 1.0, scores: t }).collect();
    let global = merge::merge(&scores)?;
    let csv = global.to_csv();
    let peak = status_kb("VmHWM")?;
    report("merge", size, global.len(), start, peak);
    drop(csv);
    Ok(())
}

/// Into one buffer of the file's size, as `Store::get_capped` reads a body.
pub fn read_whole(path: &Path) -> anyhow::Result<Vec<u8>> {
    let mut file = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut body = Vec::with_capacity(file.metadata()?.len() as usize);
    file.read_to_end(&mut body)?;
    Ok(body)
}

fn report(what: &str, size: u64, rows: usize, start_kb: u64, peak_kb: u64) {
    let grew = (peak_kb.saturating_sub(start_kb)) * 1024;
    println!(
        "{what}: input {size} bytes, {rows} rows; peak RSS {} MiB, {} MiB over the {} MiB at start: {:.2}x the input",
        peak_kb / 1024,
        grew >> 20,
        start_kb / 1024,
        grew as f64 / size.max(1) as f64
    );
}

/// A `kB` field of /proc/self/status (Linux), such as `VmRSS` or `VmHWM`.
pub fn status_kb(field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let value = status.lines().find_map(|l| l.strip_prefix(field)?.strip_prefix(':')).with_context(|| format!("no {field}"))?;
    Ok(value.trim().trim_end_matches("kB").trim().parse()?)
}
