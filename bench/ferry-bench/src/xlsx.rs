//! The export worker's xlsx writer (`job_invoker::export::xlsx::build`) on staged rows, and a
//! seeded generator of those rows: a JSON array per line, the header first, as the worker stages them.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use crate::orders::{COLUMNS, Order};

#[derive(Debug, Args)]
pub struct GenRowsArgs {
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[arg(long, default_value_t = 1_000_000)]
    rows: u64,
    #[arg(long)]
    out: PathBuf,
}

pub fn gen_rows(a: &GenRowsArgs) -> anyhow::Result<()> {
    let file = std::fs::File::create(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
    writeln!(w, "[{}]", COLUMNS.map(|c| format!("\"{c}\"")).join(","))?;
    let mut rng = crate::gen_votes::Rng::new(a.seed);
    let mut line = String::new();
    for id in 1..=a.rows {
        line.clear();
        Order::random(&mut rng, id).json_line(&mut line);
        w.write_all(line.as_bytes())?;
    }
    w.flush()?;
    println!("wrote {} rows to {}", a.rows, a.out.display());
    Ok(())
}

#[derive(Debug, Args)]
pub struct XlsxArgs {
    /// Staged rows (JSON array per line, header first).
    staged: PathBuf,
    out: PathBuf,
}

pub fn build(a: &XlsxArgs) -> anyhow::Result<()> {
    let tmp = std::env::temp_dir().join(format!("ferry-bench-xlsx-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    // Excel's row limit per sheet, header included: a million rows fit on one sheet.
    let built = job_invoker::export::xlsx::build(&a.staged, &a.out, &tmp, 1_048_576);
    std::fs::remove_dir_all(&tmp)?;
    let built = built?;
    println!("rows {} sheets {}", built.rows, built.sheets);
    Ok(())
}

#[derive(Debug, Args)]
pub struct ReadBackArgs {
    /// A workbook the worker's writer built from `gen-rows` output.
    file: PathBuf,
}

/// Reads a workbook back with calamine and prints, per sheet, its row count (header included) and
/// the first and last `id`: proof that rows rolled over to a new sheet at the limit, none lost or
/// repeated.
pub fn read_back(a: &ReadBackArgs) -> anyhow::Result<()> {
    use calamine::{Data, Reader, Xlsx, open_workbook};
    let mut book: Xlsx<_> = open_workbook(&a.file).with_context(|| format!("opening {}", a.file.display()))?;
    let id = |row: &[Data]| match row.first() {
        Some(Data::Float(f)) => Some(*f as u64),
        Some(Data::Int(i)) => u64::try_from(*i).ok(),
        _ => None,
    };
    let mut out = Vec::new();
    for name in book.sheet_names() {
        let range = book.worksheet_range(&name).with_context(|| format!("reading sheet {name}"))?;
        let rows: Vec<&[Data]> = range.rows().collect();
        let header = rows.first().and_then(|r| r.first()).map(|c| c.to_string()).unwrap_or_default();
        let first = rows.get(1).and_then(|r| id(r)).context("a sheet without data rows")?;
        let last = rows.last().and_then(|r| id(r)).context("a last row without an id")?;
        // Contiguous ids: every data row of the sheet is first..=last, in order.
        let contiguous = rows[1..].iter().zip(first..).all(|(r, want)| id(r) == Some(want));
        out.push(format!("{name} rows {} header {header} first {first} last {last} contiguous {contiguous}", rows.len()));
    }
    println!("{}", out.join("; "));
    Ok(())
}
