//! The write side of the CSV contract: regional uploads (`kseq,score`, [`write_tally`]), locale
//! results (`kseq,score,raw`, [`write_locale_result`]) and the global result
//! (`kseq,score,{locale}...`, [`write_global_result`]), numbers in the shortest form that reads back
//! the same ([`format_number`]).

use super::{KSEQ, RAW, SCORE};
use crate::tally::Tally;

/// One row of a locale result.
#[derive(Debug, Clone, PartialEq)]
pub struct NormRow {
    pub kseq: String,
    pub score: f64,
    pub raw: f64,
}

/// One row of the global result: the total and each locale's weighted contribution.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GlobalRow<'a> {
    pub kseq: &'a str,
    pub score: f64,
    pub contributions: &'a [f64],
}

/// Formats a finite number in the shortest form that reads back to the same value.
pub fn format_number(buf: &mut ryu::Buffer, value: f64) -> &str {
    debug_assert!(value.is_finite(), "non-finite value {value} reached a writer");
    // Adding 0.0 turns -0.0 into 0.0.
    buf.format_finite(value + 0.0)
}

/// Writes a tally as a regional upload: `kseq,score`, one row per key, in the order given.
pub fn write_tally(tally: &Tally) -> Vec<u8> {
    let mut out = ::csv::Writer::from_writer(Vec::with_capacity(tally.len() * 24 + 16));
    let mut buf = ryu::Buffer::new();
    write_row(&mut out, [KSEQ, SCORE]);
    for (kseq, score) in tally.iter() {
        write_row(&mut out, [kseq, format_number(&mut buf, score)]);
    }
    finish(out)
}

/// Writes a locale result, `kseq,score,raw`, in the order given.
pub fn write_locale_result(rows: &[NormRow]) -> Vec<u8> {
    locale_rows_csv(rows.len(), rows.iter().map(|r| (r.kseq.as_str(), r.score, r.raw)))
}

/// The one writer of locale results: `len` rows of (kseq, score, raw) after the header.
pub(crate) fn locale_rows_csv<'a>(len: usize, rows: impl Iterator<Item = (&'a str, f64, f64)>) -> Vec<u8> {
    let mut out = ::csv::Writer::from_writer(Vec::with_capacity(len * 32 + 16));
    let mut a = ryu::Buffer::new();
    let mut b = ryu::Buffer::new();
    write_row(&mut out, [KSEQ, SCORE, RAW]);
    for (kseq, score, raw) in rows {
        write_row(&mut out, [kseq, format_number(&mut a, score), format_number(&mut b, raw)]);
    }
    finish(out)
}

/// The global result's header line.
pub(crate) fn global_header(locales: &[String]) -> Vec<u8> {
    let mut out = ::csv::Writer::from_writer(Vec::new());
    write_row(&mut out, [KSEQ, SCORE].into_iter().chain(locales.iter().map(String::as_str)));
    finish(out)
}

/// Global result rows as CSV lines, without the header, appended to `into`.
pub(crate) fn global_rows_csv<'a>(mut into: Vec<u8>, rows: impl IntoIterator<Item = GlobalRow<'a>>) -> Vec<u8> {
    let rows = rows.into_iter();
    into.reserve(rows.size_hint().0 * 110);
    let mut out = ::csv::Writer::from_writer(into);
    let mut buf = ryu::Buffer::new();
    for r in rows {
        // Writing into a Vec cannot fail.
        out.write_field(r.kseq).expect("writing CSV into memory");
        out.write_field(format_number(&mut buf, r.score)).expect("writing CSV into memory");
        for &c in r.contributions {
            out.write_field(format_number(&mut buf, c)).expect("writing CSV into memory");
        }
        // An empty record ends the one written field by field.
        write_row(&mut out, None::<&str>);
    }
    finish(out)
}

/// Writes the global result, `kseq,score,{locale}...`, into memory, in the order given.
pub fn write_global_result<'a>(locales: &[String], rows: impl IntoIterator<Item = GlobalRow<'a>>) -> Vec<u8> {
    global_rows_csv(global_header(locales), rows)
}

fn write_row<'a>(out: &mut ::csv::Writer<Vec<u8>>, fields: impl IntoIterator<Item = &'a str>) {
    // Writing into a Vec cannot fail.
    out.write_record(fields).expect("writing CSV into memory");
}

fn finish(out: ::csv::Writer<Vec<u8>>) -> Vec<u8> {
    out.into_inner().expect("flushing CSV into memory")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::csv::{read_locale_result, read_tally};

    fn rows(t: &Tally) -> Vec<(&str, f64)> {
        t.iter().collect()
    }

    #[test]
    fn writers_quote_keys_and_round_trip() {
        let out = write_locale_result(&[
            NormRow { kseq: "(1,2,3)".into(), score: 0.75, raw: 3.0 },
            NormRow { kseq: "x".into(), score: -0.0, raw: 0.0 },
        ]);
        assert_eq!(String::from_utf8(out.clone()).unwrap(), "kseq,score,raw\n\"(1,2,3)\",0.75,3.0\nx,0.0,0.0\n");
        let back = read_locale_result("r", &out).unwrap();
        assert_eq!(rows(&back), vec![("(1,2,3)", 0.75), ("x", 0.0)]);

        let g = write_global_result(&["jp".into(), "kr".into()], [GlobalRow { kseq: "a", score: 1.5, contributions: &[1.0, 0.5] }]);
        assert_eq!(String::from_utf8(g).unwrap(), "kseq,score,jp,kr\na,1.5,1.0,0.5\n");
    }

    #[test]
    fn written_tally_reads_back_through_the_contract() {
        let t: Tally = [("(1,2,3)", 5.0), ("say \"hi\"", 0.5), ("x", 0.0)].into_iter().collect();
        let bytes = write_tally(&t);
        assert_eq!(String::from_utf8(bytes.clone()).unwrap(), "kseq,score\n\"(1,2,3)\",5.0\n\"say \"\"hi\"\"\",0.5\nx,0.0\n");
        assert_eq!(read_tally("data/1/jp-prod-202611221530.csv", &bytes).unwrap(), t);
        assert_eq!(write_tally(&Tally::default()), b"kseq,score\n");
    }
}
