//! Workbooks read back, as the person who downloads one would open it.

/// Data rows (header rows excluded) and sheets of an xlsx, read with calamine.
pub fn count_xlsx_rows(bytes: &[u8]) -> anyhow::Result<(usize, usize)> {
    use calamine::Reader;
    let mut book = calamine::Xlsx::new(std::io::Cursor::new(bytes.to_vec()))?;
    let names = book.sheet_names().to_vec();
    let mut rows = 0;
    for name in &names {
        let range = book.worksheet_range(name)?;
        rows += range.height().saturating_sub(1);
    }
    Ok((rows, names.len()))
}
