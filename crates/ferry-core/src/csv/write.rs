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
    let mut out = header([KSEQ, SCORE], tally.len() * 24);
    let mut buf = zmij::Buffer::new();
    for (kseq, score) in tally.iter() {
        push_field(&mut out, kseq.as_bytes());
        push_number(&mut out, &mut buf, score);
        out.push(b'\n');
    }
    out
}

/// Writes a locale result, `kseq,score,raw`, in the order given.
pub fn write_locale_result(rows: &[NormRow]) -> Vec<u8> {
    locale_rows_csv(rows.len(), rows.iter().map(|r| (r.kseq.as_str(), r.score, r.raw)))
}

/// The one writer of locale results: `len` rows of (kseq, score, raw) after the header.
pub(crate) fn locale_rows_csv<'a>(len: usize, rows: impl Iterator<Item = (&'a str, f64, f64)>) -> Vec<u8> {
    let mut out = header([KSEQ, SCORE, RAW], len * 48);
    let mut buf = zmij::Buffer::new();
    for (kseq, score, raw) in rows {
        push_field(&mut out, kseq.as_bytes());
        push_number(&mut out, &mut buf, score);
        push_number(&mut out, &mut buf, raw);
        out.push(b'\n');
    }
    out
}

/// The global result's header line.
pub(crate) fn global_header(locales: &[String]) -> Vec<u8> {
    header([KSEQ, SCORE].into_iter().chain(locales.iter().map(String::as_str)), 0)
}

/// Global result rows as CSV lines, without the header, appended to `into`.
pub(crate) fn global_rows_csv<'a>(mut out: Vec<u8>, rows: impl IntoIterator<Item = GlobalRow<'a>>) -> Vec<u8> {
    let rows = rows.into_iter();
    out.reserve(rows.size_hint().0 * 110);
    let mut buf = zmij::Buffer::new();
    for r in rows {
        push_field(&mut out, r.kseq.as_bytes());
        push_number(&mut out, &mut buf, r.score);
        for &c in r.contributions {
            push_number(&mut out, &mut buf, c);
        }
        out.push(b'\n');
    }
    out
}

/// Writes the global result, `kseq,score,{locale}...`, into memory, in the order given.
pub fn write_global_result<'a>(locales: &[String], rows: impl IntoIterator<Item = GlobalRow<'a>>) -> Vec<u8> {
    global_rows_csv(global_header(locales), rows)
}

/// A header line through the csv writer, with room for `rows_bytes` more.
fn header<'a>(fields: impl IntoIterator<Item = &'a str>, rows_bytes: usize) -> Vec<u8> {
    let mut out = ::csv::Writer::from_writer(Vec::with_capacity(rows_bytes + 64));
    // Writing into a Vec cannot fail.
    out.write_record(fields).expect("writing CSV into memory");
    out.into_inner().expect("flushing CSV into memory")
}

/// Appends a row's first field as the csv writer writes it: quoted, with quotes doubled, when it
/// holds a comma, a quote or a line break; as it is otherwise. Rows are written by hand because
/// the writer's general machinery was most of the time of writing a result.
fn push_field(out: &mut Vec<u8>, field: &[u8]) {
    if !field.iter().any(|&b| matches!(b, b',' | b'"' | b'\n' | b'\r')) {
        out.extend_from_slice(field);
        return;
    }
    out.push(b'"');
    for part in field.split_inclusive(|&b| b == b'"') {
        out.extend_from_slice(part);
        if part.ends_with(b"\"") {
            out.push(b'"');
        }
    }
    out.push(b'"');
}

/// Appends `,` and a number as [`format_number`] writes it: digits, a point, a sign and an
/// exponent never need quotes. Formatted by `zmij`, which is quicker and writes the same digits;
/// only its positive exponents differ (`1e+16` for `1e16`).
fn push_number(out: &mut Vec<u8>, buf: &mut zmij::Buffer, value: f64) {
    debug_assert!(value.is_finite(), "non-finite value {value} reached a writer");
    out.push(b',');
    // Adding 0.0 turns -0.0 into 0.0.
    let text = buf.format_finite(value + 0.0).as_bytes();
    match text.iter().position(|&b| b == b'+') {
        Some(plus) => {
            out.extend_from_slice(&text[..plus]);
            out.extend_from_slice(&text[plus + 1..]);
        }
        None => out.extend_from_slice(text),
    }
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

    proptest::proptest! {
        /// Rows written by hand are the bytes the csv writer writes for them.
        #[test]
        fn rows_are_what_the_csv_writer_writes(
            keys in proptest::collection::vec("[ab,\"\r\n (0-9\u{e9}]{1,8}", 1..20),
            values in proptest::collection::vec(-1e6f64..1e6, 20),
        ) {
            let mut expect = ::csv::Writer::from_writer(Vec::new());
            let mut buf = ryu::Buffer::new();
            expect.write_record(["kseq", "score", "raw"]).unwrap();
            for (k, v) in keys.iter().zip(&values) {
                expect.write_record([k.as_str(), format_number(&mut buf, *v), format_number(&mut ryu::Buffer::new(), v * 2.0)]).unwrap();
            }
            let expect = expect.into_inner().unwrap();
            let got = locale_rows_csv(keys.len(), keys.iter().zip(&values).map(|(k, v)| (k.as_str(), *v, v * 2.0)));
            proptest::prop_assert_eq!(String::from_utf8_lossy(&got), String::from_utf8_lossy(&expect));
        }
    }

    #[test]
    fn numbers_are_written_as_format_number_writes_them() {
        let mut ryu = ryu::Buffer::new();
        let mut zmij = zmij::Buffer::new();
        let mut check = |v: f64| {
            let mut out = Vec::new();
            push_number(&mut out, &mut zmij, v);
            assert_eq!(String::from_utf8(out).unwrap(), format!(",{}", format_number(&mut ryu, v)), "{v:e}");
        };
        for v in
            [0.0, -0.0, 1.0, 0.1, 76.0, 1e-5, 1e-7, 1e15, 1e16, 1.2345678901234568e17, 5e-324, f64::MAX, -f64::MAX, 0.0009081925645072779]
        {
            check(v);
        }
        // Bit patterns of every magnitude, from a fixed-seed xorshift.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for i in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let v = if i % 2 == 0 { f64::from_bits(x) } else { (x % 10_000_000) as f64 / 8_388_608.0 };
            if v.is_finite() {
                check(v);
            }
        }
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
