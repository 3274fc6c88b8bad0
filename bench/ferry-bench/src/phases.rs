//! `ferry votes merge` taken apart: the same `ferry-core` calls in the same order, each phase timed,
//! to find where the time of the whole goes.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use ferry_core::Method;
use ferry_core::csv;
use ferry_core::merge::{self, LocaleScores};
use ferry_core::normalize::normalize_tally;

pub fn run(inputs: &[String]) -> anyhow::Result<()> {
    let inputs: Vec<(String, PathBuf)> = inputs
        .iter()
        .map(|s| s.split_once('=').map(|(l, f)| (l.to_owned(), PathBuf::from(f))).context("inputs are LOCALE=FILE"))
        .collect::<anyhow::Result<_>>()?;
    let mut report = Vec::new();
    reset_peak_rss();
    let mut lap = {
        let mut t = Instant::now();
        move |what: &'static str, report: &mut Vec<(&'static str, f64, u64)>| {
            report.push((what, t.elapsed().as_secs_f64() * 1000.0, peak_rss_mib()));
            reset_peak_rss();
            t = Instant::now();
        }
    };
    let bytes: Vec<Vec<u8>> = inputs.iter().map(|(_, p)| std::fs::read(p)).collect::<Result<_, _>>()?;
    lap("read files", &mut report);
    let tallies = parallel(&inputs, |i| csv::read_tally(&inputs[i].0, &bytes[i]).map_err(anyhow::Error::from))?;
    lap("read_tally", &mut report);
    drop(bytes);
    lap("drop file bytes", &mut report);
    let scores: Vec<ferry_core::Tally> = tallies.into_iter().map(|t| normalize_tally(Method::Share, t)).collect();
    lap("normalize", &mut report);
    let locale_scores: Vec<LocaleScores<'_>> =
        inputs.iter().zip(&scores).map(|((l, _), scores)| LocaleScores { locale: l, weight: 1.0, scores }).collect();
    let global = merge::merge(&locale_scores)?;
    lap("merge", &mut report);
    let mut out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create("/dev/null")?);
    global.write_csv(&mut out)?;
    lap("write_csv (to /dev/null)", &mut report);
    let line: Vec<String> = report.iter().map(|(w, ms, rss)| format!("{w} {ms:.0} ms (peak RSS {rss} MiB)")).collect();
    println!("{} rows: {}", global.len(), line.join(", "));
    Ok(())
}

fn parallel<T: Send>(inputs: &[(String, PathBuf)], work: impl Fn(usize) -> anyhow::Result<T> + Sync) -> anyhow::Result<Vec<T>> {
    std::thread::scope(|s| {
        let work = &work;
        let handles: Vec<_> = (0..inputs.len()).map(|i| s.spawn(move || work(i))).collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("a worker panicked")))).collect()
    })
}

/// The process's peak RSS since the last reset (`VmHWM`), in MiB; 0 where /proc is not there.
fn peak_rss_mib() -> u64 {
    crate::peak::status_kb("VmHWM").map_or(0, |kb| kb / 1024)
}

/// Starts a new peak: writing 5 to clear_refs resets `VmHWM` to the current RSS (Linux).
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}
