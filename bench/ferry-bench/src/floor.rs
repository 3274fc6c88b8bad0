//! The floor under `ferry votes merge`: what reading the bytes costs, with nothing else done.

use std::path::{Path, PathBuf};

use anyhow::Context;

fn each_file<T: Send>(files: &[PathBuf], work: impl Fn(&Path) -> anyhow::Result<T> + Sync) -> anyhow::Result<Vec<T>> {
    // One thread per file, as `ferry votes merge` reads them.
    std::thread::scope(|s| {
        let handles: Vec<_> = files.iter().map(|f| s.spawn(|| work(f))).collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("a reader panicked")))).collect()
    })
}

/// Parses every record and sums the score column: the CSV reader and float parsing, no keys kept.
pub fn parse_sum(files: &[PathBuf]) -> anyhow::Result<()> {
    let sums = each_file(files, |path| {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&bytes);
        let mut reader = csv::ReaderBuilder::new().has_headers(false).from_reader(bytes);
        let mut record = csv::ByteRecord::new();
        reader.read_byte_record(&mut record)?;
        let col =
            record.iter().position(|h| h.eq_ignore_ascii_case(b"score")).with_context(|| format!("{}: no score column", path.display()))?;
        let (mut rows, mut sum) = (0u64, 0.0f64);
        while reader.read_byte_record(&mut record)? {
            let field = std::str::from_utf8(record.get(col).unwrap_or_default())?;
            sum += field.trim().parse::<f64>().with_context(|| format!("{}: bad score {field:?}", path.display()))?;
            rows += 1;
        }
        Ok((rows, sum))
    })?;
    let rows: u64 = sums.iter().map(|s| s.0).sum();
    let sum: f64 = sums.iter().map(|s| s.1).sum();
    println!("rows {rows} sum {sum}");
    Ok(())
}

/// The contract's reader (header resolution, validation, duplicate summing) without normalising.
pub fn read_tally(files: &[PathBuf]) -> anyhow::Result<()> {
    let keys = each_file(files, |path| {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let name = path.display().to_string();
        Ok(ferry_core::csv::read_tally(&name, &bytes)?.len())
    })?;
    println!("keys {}", keys.iter().sum::<usize>());
    Ok(())
}
