//! Staged rows to an xlsx workbook. rust_xlsxwriter's constant-memory mode flushes each row to a
//! temporary file as it is written, so memory stays flat however many rows there are; a new
//! worksheet starts when one holds `sheet_rows` rows (header included).

use std::io::BufRead;
use std::path::Path;

use rust_xlsxwriter::{Workbook, Worksheet, XlsxError};
use serde_json::Value;

/// Largest text Excel keeps in a cell.
const MAX_CELL_CHARS: usize = 32_767;
/// Integers beyond this lose digits as an Excel number, so they are written as text.
const MAX_EXACT_INT: i64 = 1 << 53;

/// What [`build`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Built {
    pub rows: u64,
    pub sheets: u32,
}

/// Why the workbook could not be built. Names the staged line at fault.
#[derive(Debug, thiserror::Error)]
pub enum XlsxBuildError {
    #[error("staged rows, line {line}: {message}")]
    BadLine { line: u64, message: String },
    #[error("reading staged rows: {0}")]
    Io(#[from] std::io::Error),
    #[error("writing xlsx: {0}")]
    Xlsx(#[from] XlsxError),
}

fn write_cell(sheet: &mut Worksheet, row: u32, col: u16, v: &Value) -> Result<(), XlsxError> {
    match v {
        Value::Null => {}
        Value::Bool(b) => {
            sheet.write_boolean(row, col, *b)?;
        }
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) if i.abs() > MAX_EXACT_INT => {
                sheet.write_string(row, col, i.to_string())?;
            }
            (_, Some(f)) => {
                sheet.write_number(row, col, f)?;
            }
            _ => {
                sheet.write_string(row, col, n.to_string())?;
            }
        },
        Value::String(s) if s.chars().count() > MAX_CELL_CHARS => {
            sheet.write_string(row, col, s.chars().take(MAX_CELL_CHARS).collect::<String>())?;
        }
        Value::String(s) => {
            sheet.write_string(row, col, s)?;
        }
        other => {
            sheet.write_string(row, col, other.to_string())?;
        }
    }
    Ok(())
}

/// Reads staged rows (a JSON array per line, the header first) from `staged` and writes the
/// workbook to `out`. Temporary sheet data goes to `tmp`.
pub fn build(staged: &Path, out: &Path, tmp: &Path, sheet_rows: u32) -> Result<Built, XlsxBuildError> {
    let sheet_rows = sheet_rows.max(2);
    let reader = std::io::BufReader::new(std::fs::File::open(staged)?);
    let mut workbook = Workbook::new();
    workbook.set_tempdir(tmp)?;
    let mut lines = reader.lines();
    let parse = |line: u64, text: std::io::Result<String>| -> Result<Vec<Value>, XlsxBuildError> {
        serde_json::from_str::<Vec<Value>>(&text?).map_err(|e| XlsxBuildError::BadLine { line, message: e.to_string() })
    };
    let header = match lines.next() {
        Some(first) => parse(1, first)?,
        None => Vec::new(),
    };
    let mut rows = 0u64;
    let mut sheets = 0u32;
    let mut row_in_sheet = sheet_rows;
    for (n, text) in (2..).zip(lines) {
        let cells = parse(n, text)?;
        if row_in_sheet == sheet_rows {
            let sheet = workbook.add_worksheet_with_constant_memory()?;
            for (c, h) in header.iter().enumerate() {
                write_cell(sheet, 0, c as u16, h)?;
            }
            sheets += 1;
            row_in_sheet = 1;
        }
        let sheet = workbook.worksheet_from_index(sheets as usize - 1)?;
        for (c, v) in cells.iter().enumerate().take(16_384) {
            write_cell(sheet, row_in_sheet, c as u16, v)?;
        }
        row_in_sheet += 1;
        rows += 1;
    }
    if sheets == 0 {
        // No rows: one sheet with the header, so the file still opens.
        let sheet = workbook.add_worksheet_with_constant_memory()?;
        for (c, h) in header.iter().enumerate() {
            write_cell(sheet, 0, c as u16, h)?;
        }
        sheets = 1;
    }
    workbook.save(out)?;
    Ok(Built { rows, sheets })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_roll_over_to_new_sheets() {
        let dir = std::env::temp_dir().join(format!("ferry-xlsx-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let staged = dir.join("rows.jsonl");
        let mut text = String::from("[\"id\",\"name\"]\n");
        for i in 0..7 {
            text.push_str(&format!("[{i},\"n{i}\"]\n"));
        }
        std::fs::write(&staged, text).unwrap();
        let out = dir.join("out.xlsx");
        // 3 rows per sheet with the header: 2 data rows each, so 7 rows take 4 sheets.
        assert_eq!(build(&staged, &out, &dir, 3).unwrap(), Built { rows: 7, sheets: 4 });
        assert!(std::fs::metadata(&out).unwrap().len() > 0);
        std::fs::write(&staged, "[\"id\"]\n[1]\nnot json\n").unwrap();
        let err = build(&staged, &out, &dir, 3).unwrap_err().to_string();
        assert!(err.contains("line 3"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
