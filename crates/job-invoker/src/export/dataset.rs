//! An S3 dataset object (CSV or Parquet) read with polars: columns selected, rows filtered, cells
//! turned into JSON values. Each object is one partition of the export.

use std::io::Cursor;

use ferry_core::jobs::{DatasetFormat, Filter, FilterOp};
use polars::prelude::*;
use serde_json::Value;

/// An object that cannot be exported. Names the object and what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("s3://{bucket}/{key}: {message}")]
pub struct DatasetError {
    pub bucket: String,
    pub key: String,
    pub message: String,
}

/// The rows of one object, after selection and filtering.
#[derive(Debug)]
pub struct Frame {
    pub columns: Vec<String>,
    df: DataFrame,
}

impl Frame {
    pub fn height(&self) -> usize {
        self.df.height()
    }

    /// Rows `offset .. offset + len` as cells in column order.
    pub fn rows(&self, offset: usize, len: usize) -> Vec<Vec<Value>> {
        let slice = self.df.slice(offset as i64, len);
        let columns = slice.columns();
        (0..slice.height()).map(|i| columns.iter().map(|c| c.get(i).map_or(Value::Null, cell)).collect()).collect()
    }
}

/// What `body` takes once decoded, as far as can be told before decoding it: for CSV, its bytes
/// weighted by how narrow its cells are ([`ferry_core::budget::csv_weight`]; a cell is counted per
/// separator and line end, so a quoted comma only overcounts); for Parquet, from the footer alone, each column chunk's decompressed size or its values at
/// their decoded width, whichever is larger (a column of one repeated value compresses, and
/// dictionary- or run-length-encodes, to almost nothing). The worker refuses an object over its cap
/// by this size, and `ferry_core::budget::DATASET_PEAK_FACTOR` is its peak per byte of it.
pub fn decoded_bytes(bucket: &str, key: &str, body: &[u8], format: DatasetFormat) -> Result<u64, DatasetError> {
    match format {
        DatasetFormat::Csv => {
            let cells = body.iter().filter(|&&b| b == b',' || b == b'\n').count() as u64;
            Ok(ferry_core::budget::csv_weight(body.len() as u64, cells))
        }
        DatasetFormat::Parquet => {
            let mut reader = ParquetReader::new(Cursor::new(body));
            let meta = reader.get_metadata().map_err(|e| DatasetError {
                bucket: bucket.to_owned(),
                key: key.to_owned(),
                message: format!("not readable as {format:?}: {e}"),
            })?;
            Ok(parquet_decoded_bytes(meta))
        }
    }
}

fn parquet_decoded_bytes(meta: &FileMetadata) -> u64 {
    use polars_parquet::parquet::schema::types::PhysicalType;
    let chunks = meta.row_groups.iter().flat_map(|g| g.parquet_columns());
    chunks
        .map(|c| {
            // Per value once decoded: Arrow's primitives, 16-byte views for (fixed-length) binary
            // and decimals, INT96 as 8-byte timestamps.
            let width: u64 = match c.physical_type() {
                PhysicalType::Boolean => 1,
                PhysicalType::Int32 | PhysicalType::Float => 4,
                PhysicalType::Int64 | PhysicalType::Double | PhysicalType::Int96 => 8,
                PhysicalType::ByteArray => 16,
                PhysicalType::FixedLenByteArray(n) => (n as u64).max(16),
            };
            let values = u64::try_from(c.num_values()).unwrap_or(0).saturating_mul(width);
            values.max(u64::try_from(c.uncompressed_size()).unwrap_or(0))
        })
        .fold(0u64, u64::saturating_add)
}

/// Parses `body` and applies the export's column selection and filter.
pub fn read(
    bucket: &str,
    key: &str,
    body: Vec<u8>,
    format: DatasetFormat,
    columns: Option<&[String]>,
    filter: Option<&Filter>,
) -> Result<Frame, DatasetError> {
    let err = |message: String| DatasetError { bucket: bucket.to_owned(), key: key.to_owned(), message };
    let cursor = Cursor::new(body);
    let mut df = match format {
        DatasetFormat::Csv => CsvReadOptions::default()
            .with_has_header(true)
            .with_infer_schema_length(Some(10_000))
            .into_reader_with_file_handle(cursor)
            .finish(),
        DatasetFormat::Parquet => ParquetReader::new(cursor).finish(),
    }
    .map_err(|e| err(format!("not readable as {format:?}: {e}")))?;
    if let Some(f) = filter {
        let column = df.column(&f.column).map_err(|_| err(format!("filter column {:?} does not exist", f.column)))?;
        let mask = compare(column.as_materialized_series(), f).map_err(|e| err(format!("filter on {:?}: {e}", f.column)))?;
        df = df.filter(&mask).map_err(|e| err(e.to_string()))?;
    }
    if let Some(cols) = columns {
        if let Some(missing) = cols.iter().find(|c| df.column(c.as_str()).is_err()) {
            return Err(err(format!("column {missing:?} does not exist")));
        }
        df = df.select(cols.iter().map(String::as_str)).map_err(|e| err(e.to_string()))?;
    }
    let columns = df.get_column_names().iter().map(|c| c.to_string()).collect();
    Ok(Frame { columns, df })
}

fn compare(s: &Series, f: &Filter) -> PolarsResult<BooleanChunked> {
    use FilterOp::*;
    match &f.value {
        Value::String(v) => {
            let s = s.cast(&DataType::String)?;
            let rhs = Series::new("rhs".into(), [v.as_str()]);
            match f.op {
                Eq => s.equal(&rhs),
                Ne => s.not_equal(&rhs),
                Lt => s.lt(&rhs),
                Le => s.lt_eq(&rhs),
                Gt => s.gt(&rhs),
                Ge => s.gt_eq(&rhs),
            }
        }
        Value::Bool(v) => {
            let s = s.cast(&DataType::Boolean)?;
            let rhs = Series::new("rhs".into(), [*v]);
            match f.op {
                Eq => s.equal(&rhs),
                Ne => s.not_equal(&rhs),
                _ => polars_bail!(InvalidOperation: "booleans only compare with eq or ne"),
            }
        }
        v => {
            let v = v.as_f64().unwrap_or(f64::NAN);
            let s = s.cast(&DataType::Float64)?;
            let rhs = Series::new("rhs".into(), [v]);
            match f.op {
                Eq => s.equal(&rhs),
                Ne => s.not_equal(&rhs),
                Lt => s.lt(&rhs),
                Le => s.lt_eq(&rhs),
                Gt => s.gt(&rhs),
                Ge => s.gt_eq(&rhs),
            }
        }
    }
}

fn cell(v: AnyValue<'_>) -> Value {
    match v {
        AnyValue::Null => Value::Null,
        AnyValue::Boolean(b) => Value::Bool(b),
        AnyValue::String(s) => Value::String(s.to_owned()),
        AnyValue::StringOwned(s) => Value::String(s.to_string()),
        AnyValue::Int8(i) => i.into(),
        AnyValue::Int16(i) => i.into(),
        AnyValue::Int32(i) => i.into(),
        AnyValue::Int64(i) => i.into(),
        AnyValue::UInt8(i) => i.into(),
        AnyValue::UInt16(i) => i.into(),
        AnyValue::UInt32(i) => i.into(),
        AnyValue::UInt64(i) => i.into(),
        AnyValue::Float32(f) => serde_json::Number::from_f64(f64::from(f)).map_or(Value::Null, Value::Number),
        AnyValue::Float64(f) => serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number),
        other => Value::String(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(column: &str, op: FilterOp, value: Value) -> Filter {
        Filter { column: column.into(), op, value }
    }

    #[test]
    fn csv_with_selection_and_filter() {
        let body = b"id,status,amount\n1,paid,10.5\n2,open,3\n3,paid,7\n".to_vec();
        let cols = ["amount".to_owned(), "id".to_owned()];
        let f = read("b", "k.csv", body.clone(), DatasetFormat::Csv, Some(&cols), Some(&filter("status", FilterOp::Eq, "paid".into())))
            .unwrap();
        assert_eq!(f.columns, ["amount", "id"]);
        assert_eq!(f.rows(0, 10), vec![vec![Value::from(10.5), Value::from(1)], vec![Value::from(7.0), Value::from(3)]]);
        assert_eq!(f.rows(1, 10).len(), 1);
        let f = read("b", "k.csv", body.clone(), DatasetFormat::Csv, None, Some(&filter("amount", FilterOp::Gt, 5.into()))).unwrap();
        assert_eq!(f.height(), 2);
        let err = read("b", "k.csv", body, DatasetFormat::Csv, Some(&["nope".to_owned()]), None).unwrap_err();
        assert_eq!(err.to_string(), "s3://b/k.csv: column \"nope\" does not exist");
        // Cells of ten bytes, like order rows: the bytes themselves.
        assert_eq!(decoded_bytes("b", "k.csv", b"customer_a,order_no_b\nKim_Minji_,ORD-000001\n", DatasetFormat::Csv).unwrap(), 44);
        // Cells of one digit: a body of 2 bytes a cell weighs as bytes + 16 a cell over the factor.
        let narrow = "1,".repeat(5_000) + "1\n";
        let weight = decoded_bytes("b", "k.csv", narrow.as_bytes(), DatasetFormat::Csv).unwrap();
        assert_eq!(weight, ferry_core::budget::csv_weight(10_001, 5_001));
        assert!(weight > 3 * 10_001, "{weight}");
    }

    fn parquet(df: &mut DataFrame) -> Vec<u8> {
        let mut body = Vec::new();
        ParquetWriter::new(&mut body).finish(df).unwrap();
        body
    }

    #[test]
    fn parquet_is_sized_by_what_it_decodes_to_not_by_its_bytes() {
        // A million rows of one value: a few KB on disk, 8 MB of i64 and 16 MB of string views decoded.
        let n = 1_000_000;
        let body = parquet(&mut df!("id" => vec![7i64; n], "s" => vec!["same"; n]).unwrap());
        assert!(body.len() < 64 * 1024, "{}", body.len());
        let decoded = decoded_bytes("b", "k.parquet", &body, DatasetFormat::Parquet).unwrap();
        assert!(decoded >= 24 * n as u64, "{decoded}");
        // Varied data: at least its decompressed size, and what the frame holds.
        let ids: Vec<i64> = (0..n as i64).collect();
        let names: Vec<String> = (0..n).map(|i| format!("customer-{i:012}")).collect();
        let mut df = df!("id" => &ids, "name" => &names).unwrap();
        let body = parquet(&mut df);
        let decoded = decoded_bytes("b", "k.parquet", &body, DatasetFormat::Parquet).unwrap();
        assert!(decoded as usize >= df.estimated_size() && decoded < 3 * df.estimated_size() as u64, "{decoded} {}", df.estimated_size());
        let err = decoded_bytes("b", "k.parquet", b"not parquet", DatasetFormat::Parquet).unwrap_err();
        assert!(err.message.starts_with("not readable as Parquet"), "{err}");
    }
}
