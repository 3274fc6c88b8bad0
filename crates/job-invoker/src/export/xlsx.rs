//! Staged rows to an xlsx workbook. rust_xlsxwriter's constant-memory mode flushes each row to a
//! temporary file as it is written, so memory stays flat however many rows there are; a new
//! worksheet starts when one holds `sheet_rows` rows (header included).
//!
//! Every text is a string cell (`write_string`: never a formula, whatever it starts with). Text a
//! spreadsheet would take for a formula also gets Excel's quote prefix, so that editing the cell
//! keeps it text. A number is a number cell only when an `f64` shows it exactly
//! ([`cells::number_f64`]); otherwise it is its decimal text, quote-prefixed too so that an edit does
//! not turn it into a rounded number. Text over Excel's limit is cut ([`Built::truncated`]). Control
//! characters need nothing here: rust_xlsxwriter writes them as `_xHHHH_`, the escape Excel itself
//! writes and reads back as the same character (XML 1.0 cannot hold most of them literally).

use std::io::BufRead;
use std::path::Path;

use ferry_core::cells;
use rust_xlsxwriter::{Format, Workbook, Worksheet, XlsxError};
use serde_json::Value;

/// What [`build`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Built {
    pub rows: u64,
    pub sheets: u32,
    /// Text cells cut to Excel's limit of [`cells::XLSX_MAX_TEXT`] characters.
    pub truncated: u64,
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

/// Writes cells, counting the texts it had to cut.
struct Cells {
    quoted: Format,
    truncated: u64,
}

impl Cells {
    fn text(&mut self, sheet: &mut Worksheet, row: u32, col: u16, text: &str, quote: bool) -> Result<(), XlsxError> {
        let text = match cells::truncate_utf16(text, cells::XLSX_MAX_TEXT) {
            Some(cut) => {
                self.truncated += 1;
                cut
            }
            None => text,
        };
        if quote {
            sheet.write_string_with_format(row, col, text, &self.quoted)?;
        } else {
            sheet.write_string(row, col, text)?;
        }
        Ok(())
    }

    /// Writes `values` as row `row`, from the first column; [`check_width`] has held them to a sheet's width.
    fn row(&mut self, sheet: &mut Worksheet, row: u32, values: &[Value]) -> Result<(), XlsxError> {
        for (col, v) in (0..=u16::MAX).zip(values) {
            self.write(sheet, row, col, v)?;
        }
        Ok(())
    }

    fn write(&mut self, sheet: &mut Worksheet, row: u32, col: u16, v: &Value) -> Result<(), XlsxError> {
        match v {
            Value::Null => {}
            Value::Bool(b) => {
                sheet.write_boolean(row, col, *b)?;
            }
            Value::Number(n) => match cells::number_f64(n) {
                Some(f) => {
                    sheet.write_number(row, col, f)?;
                }
                None => self.text(sheet, row, col, &n.to_string(), true)?,
            },
            Value::String(s) => self.text(sheet, row, col, s, cells::needs_formula_escape(s))?,
            other => match cells::number_text(other) {
                Some(number) => match cells::exact_f64(number) {
                    Some(f) => {
                        sheet.write_number(row, col, f)?;
                    }
                    None => self.text(sheet, row, col, number, true)?,
                },
                None => {
                    let text = other.to_string();
                    self.text(sheet, row, col, &text, cells::needs_formula_escape(&text))?;
                }
            },
        }
        Ok(())
    }
}

/// Refuses a staged line wider than a sheet: its cells past the last column would be lost.
fn check_width(line: u64, values: &[Value]) -> Result<(), XlsxBuildError> {
    if values.len() > cells::XLSX_MAX_COLUMNS {
        let message = format!("{} cells, over xlsx's limit of {} columns", values.len(), cells::XLSX_MAX_COLUMNS);
        return Err(XlsxBuildError::BadLine { line, message });
    }
    Ok(())
}

/// Starts a worksheet with the header as its first row.
fn new_sheet(workbook: &mut Workbook, cells: &mut Cells, header: &[Value]) -> Result<(), XlsxError> {
    let sheet = workbook.add_worksheet_with_constant_memory()?;
    cells.row(sheet, 0, header)
}

/// Reads staged rows (a JSON array per line, the header first) from `staged` and writes the
/// workbook to `out`. Temporary sheet data goes to `tmp`.
pub fn build(staged: &Path, out: &Path, tmp: &Path, sheet_rows: u32) -> Result<Built, XlsxBuildError> {
    let sheet_rows = sheet_rows.max(2);
    let reader = std::io::BufReader::new(std::fs::File::open(staged)?);
    let mut workbook = Workbook::new();
    workbook.set_tempdir(tmp)?;
    let mut cells = Cells { quoted: Format::new().set_quote_prefix(), truncated: 0 };
    let mut lines = reader.lines();
    let parse = |line: u64, text: std::io::Result<String>| -> Result<Vec<Value>, XlsxBuildError> {
        serde_json::from_str::<Vec<Value>>(&text?).map_err(|e| XlsxBuildError::BadLine { line, message: e.to_string() })
    };
    let header = match lines.next() {
        Some(first) => parse(1, first)?,
        None => Vec::new(),
    };
    check_width(1, &header)?;
    let mut rows = 0u64;
    let mut sheets = 0u32;
    let mut row_in_sheet = sheet_rows;
    for (n, text) in (2..).zip(lines) {
        let values = parse(n, text)?;
        check_width(n, &values)?;
        if row_in_sheet == sheet_rows {
            new_sheet(&mut workbook, &mut cells, &header)?;
            sheets += 1;
            row_in_sheet = 1;
        }
        let sheet = workbook.worksheet_from_index(sheets as usize - 1)?;
        cells.row(sheet, row_in_sheet, &values)?;
        row_in_sheet += 1;
        rows += 1;
    }
    if sheets == 0 {
        // No rows: one sheet with the header, so the file still opens.
        new_sheet(&mut workbook, &mut cells, &header)?;
        sheets = 1;
    }
    workbook.save(out)?;
    Ok(Built { rows, sheets, truncated: cells.truncated })
}

#[cfg(test)]
mod tests {
    use super::*;
    use calamine::{Data, Reader};
    use serde_json::json;

    /// A scratch directory of its own for each test.
    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("ferry-xlsx-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Builds a workbook of `rows` under the header `columns`, on sheets of `sheet_rows`.
    fn build_rows(dir: &Path, columns: &[&str], rows: &[Vec<Value>], sheet_rows: u32) -> Result<Built, XlsxBuildError> {
        let mut text = format!("{}\n", json!(columns));
        for row in rows {
            text.push_str(&format!("{}\n", Value::from(row.clone())));
        }
        std::fs::write(dir.join("rows.jsonl"), text).unwrap();
        build(&dir.join("rows.jsonl"), &dir.join("out.xlsx"), dir, sheet_rows)
    }

    fn first_sheet(dir: &Path) -> (calamine::Range<Data>, calamine::Range<String>) {
        let mut book = calamine::open_workbook::<calamine::Xlsx<_>, _>(dir.join("out.xlsx")).unwrap();
        let name = book.sheet_names()[0].clone();
        (book.worksheet_range(&name).unwrap(), book.worksheet_formula(&name).unwrap())
    }

    /// One part of the xlsx (a zip of XML files) as text.
    fn part(dir: &Path, name: &str) -> String {
        let mut zip = zip::ZipArchive::new(std::fs::File::open(dir.join("out.xlsx")).unwrap()).unwrap();
        std::io::read_to_string(zip.by_name(name).unwrap()).unwrap()
    }

    #[test]
    fn rows_roll_over_to_new_sheets() {
        let dir = scratch("sheets");
        let rows: Vec<Vec<Value>> = (0..7).map(|i| vec![json!(i), json!(format!("n{i}"))]).collect();
        // 3 rows per sheet with the header: 2 data rows each, so 7 rows take 4 sheets.
        assert_eq!(build_rows(&dir, &["id", "name"], &rows, 3).unwrap(), Built { rows: 7, sheets: 4, truncated: 0 });
        std::fs::write(dir.join("rows.jsonl"), "[\"id\"]\n[1]\nnot json\n").unwrap();
        let err = build(&dir.join("rows.jsonl"), &dir.join("out.xlsx"), &dir, 3).unwrap_err().to_string();
        assert!(err.contains("line 3"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn formula_like_text_is_a_quoted_string_and_numbers_stay_numbers() {
        let dir = scratch("formulas");
        let texts = ["=1+1", "+SUM(A1)", "-5", "@cmd", "\t=1", "\r=1", "=HYPERLINK(\"http://x\",\"y\")"];
        let mut rows: Vec<Vec<Value>> = texts.iter().map(|t| vec![json!(t), json!(-5)]).collect();
        rows.push(vec![json!("plain"), json!(-1.5)]);
        build_rows(&dir, &["=text", "number"], &rows, 1000).unwrap();
        let (cells, formulas) = first_sheet(&dir);
        assert_eq!(cells.get((0, 0)), Some(&Data::String("=text".into())));
        for (i, t) in texts.iter().enumerate() {
            assert_eq!(cells.get((i + 1, 0)), Some(&Data::String((*t).into())), "{t:?} is a string cell, unchanged");
            assert_eq!(cells.get((i + 1, 1)), Some(&Data::Float(-5.0)), "-5 stays a number");
        }
        assert_eq!(cells.get((texts.len() + 1, 1)), Some(&Data::Float(-1.5)));
        assert!(formulas.used_cells().all(|(_, _, f)| f.is_empty()), "no formulas: {formulas:?}");
        // The quote prefix: one extra cell format holding it, on exactly the formula-like texts.
        let styles = part(&dir, "xl/styles.xml");
        assert!(styles.contains("quotePrefix=\"1\""), "{styles}");
        let sheet = part(&dir, "xl/worksheets/sheet1.xml");
        let styled = sheet.matches(" s=\"1\"").count();
        assert_eq!(styled, texts.len() + 1, "the header and each formula-like text: {sheet}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn numbers_are_number_cells_only_when_exact() {
        let dir = scratch("numbers");
        let row = vec![
            json!({ "$number": "123456789012345678901234567890" }),
            json!(9_007_199_254_740_993i64),
            json!(i64::MIN),
            json!(u64::MAX),
            json!(9_007_199_254_740_992i64),
            json!(0.1),
            json!({ "$number": "12.50" }),
            json!(42),
        ];
        build_rows(&dir, &["a", "b", "c", "d", "e", "f", "g", "h"], &[row], 1000).unwrap();
        let (cells, _) = first_sheet(&dir);
        let got: Vec<Data> = (0..8).map(|c| cells.get((1, c)).cloned().unwrap_or(Data::Empty)).collect();
        assert_eq!(
            got,
            [
                Data::String("123456789012345678901234567890".into()),
                Data::String("9007199254740993".into()),
                Data::String("-9223372036854775808".into()),
                Data::String("18446744073709551615".into()),
                Data::Float(9_007_199_254_740_992.0),
                Data::Float(0.1),
                Data::Float(12.5),
                Data::Float(42.0),
            ]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn long_text_is_cut_to_excels_limit_and_counted() {
        let dir = scratch("long");
        let long = "x".repeat(40_000);
        // 20,000 emoji are 40,000 UTF-16 units: Excel's limit counts those.
        let emoji = "😀".repeat(20_000);
        let rows = vec![vec![json!(long)], vec![json!(emoji)], vec![json!("short")]];
        let built = build_rows(&dir, &["t"], &rows, 1000).unwrap();
        assert_eq!(built.truncated, 2);
        let (cells, _) = first_sheet(&dir);
        assert_eq!(cells.get((1, 0)), Some(&Data::String("x".repeat(32_767))));
        assert_eq!(cells.get((2, 0)), Some(&Data::String("😀".repeat(16_383))));
        assert_eq!(cells.get((3, 0)), Some(&Data::String("short".into())));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_line_wider_than_a_sheet_is_refused_not_cut() {
        let dir = scratch("wide");
        let names: Vec<String> = (0..=cells::XLSX_MAX_COLUMNS).map(|i| format!("c{i}")).collect();
        let columns: Vec<&str> = names.iter().map(String::as_str).collect();
        let err = build_rows(&dir, &columns, &[], 1000).unwrap_err().to_string();
        assert!(err.contains("line 1: 16385 cells, over xlsx's limit of 16384 columns"), "{err}");
        let row = vec![vec![json!(1); cells::XLSX_MAX_COLUMNS + 1]];
        let err = build_rows(&dir, &columns[..2], &row, 1000).unwrap_err().to_string();
        assert!(err.contains("line 2: 16385 cells"), "{err}");
        // A sheet's full width is written whole.
        let row = vec![(0..cells::XLSX_MAX_COLUMNS).map(|i| json!(i)).collect::<Vec<_>>()];
        build_rows(&dir, &columns[..cells::XLSX_MAX_COLUMNS], &row, 1000).unwrap();
        let (sheet, _) = first_sheet(&dir);
        assert_eq!(sheet.get((0, cells::XLSX_MAX_COLUMNS - 1)), Some(&Data::String("c16383".into())));
        assert_eq!(sheet.get((1, cells::XLSX_MAX_COLUMNS - 1)), Some(&Data::Float(16_383.0)));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn control_characters_open_and_read_back() {
        let dir = scratch("control");
        let texts = ["a\u{0001}b\u{0008}c", "\u{001f}\u{000b}\u{000c}", "tab\tlf\ncr\r", "_x0041_ stays literal", "\u{fffe}"];
        let rows: Vec<Vec<Value>> = texts.iter().map(|t| vec![json!(t)]).collect();
        build_rows(&dir, &["t"], &rows, 1000).unwrap();
        let (cells, _) = first_sheet(&dir);
        for (i, t) in texts.iter().enumerate() {
            assert_eq!(cells.get((i + 1, 0)), Some(&Data::String((*t).into())), "{t:?}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
