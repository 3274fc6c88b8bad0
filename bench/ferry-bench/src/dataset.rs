//! Peak memory of the export worker's dataset reads: how `ferry_core::budget::DATASET_PEAK_FACTOR`
//! is measured. Each object goes through `job_invoker::export::dataset` as the worker's
//! `read_object` takes it: the whole body in one buffer, its decoded size from the footer, parsed
//! into a frame, then turned into pages of JSON cells. Several objects are read at once, each on
//! its own thread, as the worker reads `read_ahead` partitions ahead; every frame is held until all
//! are parsed, the worst case of the read-ahead.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use ferry_core::jobs::DatasetFormat;
use job_invoker::export::dataset;

use crate::orders::{COLUMNS, Order};

#[derive(Debug, Args)]
pub struct GenDatasetArgs {
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Stop once the CSV object is at least this many bytes.
    #[arg(long)]
    bytes: u64,
    /// Writes `<name>.csv`, and `<name>.parquet` of the same rows (polars' default writer: zstd).
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value = "orders")]
    name: String,
}

/// Order rows of 10 columns (as `gen-rows` stages them) as a CSV dataset object, and the same rows
/// as Parquet.
pub fn generate(a: &GenDatasetArgs) -> anyhow::Result<()> {
    use polars::prelude::*;
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let csv_path = a.out.join(format!("{}.csv", a.name));
    let file = std::fs::File::create(&csv_path).with_context(|| format!("creating {}", csv_path.display()))?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
    let header = format!("{}\n", COLUMNS.join(","));
    w.write_all(header.as_bytes())?;
    let (mut written, mut id) = (header.len() as u64, 0u64);
    let mut rng = crate::gen_votes::Rng::new(a.seed);
    let mut line = String::new();
    while written < a.bytes {
        id += 1;
        line.clear();
        Order::random(&mut rng, id).csv_line(&mut line);
        w.write_all(line.as_bytes())?;
        written += line.len() as u64;
    }
    w.flush()?;
    drop(w);
    let mut df = CsvReadOptions::default().with_has_header(true).try_into_reader_with_file_path(Some(csv_path.clone()))?.finish()?;
    let pq_path = a.out.join(format!("{}.parquet", a.name));
    let file = std::fs::File::create(&pq_path).with_context(|| format!("creating {}", pq_path.display()))?;
    ParquetWriter::new(file).finish(&mut df)?;
    println!(
        "wrote {id} rows: {} ({written} bytes), {} ({} bytes)",
        csv_path.display(),
        pq_path.display(),
        std::fs::metadata(&pq_path)?.len()
    );
    Ok(())
}

#[derive(Debug, Args)]
pub struct DatasetPeakArgs {
    /// `csv` or `parquet`.
    #[arg(long)]
    format: String,
    /// Rows per page turned into JSON cells (the worker's `FERRY_JOB_PAGE_SIZE`).
    #[arg(long, default_value_t = 1000)]
    page: usize,
    /// Dataset objects, read at once as the worker reads ahead (one file per partition; a file may
    /// be named more than once).
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

pub fn peak(a: &DatasetPeakArgs) -> anyhow::Result<()> {
    let format = match a.format.as_str() {
        "csv" => DatasetFormat::Csv,
        "parquet" => DatasetFormat::Parquet,
        other => anyhow::bail!("--format {other:?}: csv or parquet"),
    };
    let start = crate::peak::status_kb("VmRSS")?;
    let barrier = std::sync::Barrier::new(a.files.len());
    let read = std::thread::scope(|s| {
        let barrier = &barrier;
        let handles: Vec<_> = a
            .files
            .iter()
            .map(|path| {
                s.spawn(move || -> anyhow::Result<(u64, u64, usize, usize)> {
                    let key = path.display().to_string();
                    let body = crate::peak::read_whole(path)?;
                    let size = body.len() as u64;
                    let decoded = dataset::decoded_bytes("bench", &key, &body, format)?;
                    let frame = dataset::read("bench", &key, body, format, None, None)?;
                    // Every frame is held at once before any is written out.
                    barrier.wait();
                    let mut cells = 0;
                    let mut offset = 0;
                    while offset < frame.height() {
                        let rows = frame.rows(offset, a.page);
                        offset += rows.len();
                        cells += rows.iter().map(Vec::len).sum::<usize>();
                    }
                    Ok((size, decoded, frame.height(), cells))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("a reader panicked"))))
            .collect::<anyhow::Result<Vec<_>>>()
    })?;
    let peak = crate::peak::status_kb("VmHWM")?;
    let (size, decoded): (u64, u64) = (read.iter().map(|r| r.0).sum(), read.iter().map(|r| r.1).sum());
    let (rows, cells): (usize, usize) = (read.iter().map(|r| r.2).sum(), read.iter().map(|r| r.3).sum());
    let grew = peak.saturating_sub(start) * 1024;
    println!(
        "dataset-peak {}: {} objects at once, input {size} bytes, decoded {decoded} bytes, {rows} rows, {cells} cells; peak RSS {} MiB, \
         {} MiB over the {} MiB at start: {:.2}x the decoded bytes",
        a.format,
        a.files.len(),
        peak / 1024,
        grew >> 20,
        start / 1024,
        grew as f64 / decoded.max(1) as f64
    );
    Ok(())
}
