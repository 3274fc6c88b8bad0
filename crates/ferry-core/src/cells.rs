//! Cells as a spreadsheet reads them: text that must not run as a formula, Excel's limit on text,
//! and numbers carried with every digit.
//!
//! - [`needs_formula_escape`] / [`formula_escaped`]: a spreadsheet opening a CSV runs text that starts
//!   with `=`, `+`, `-` or `@` as a formula, and some skip a leading TAB or CR first (OWASP "CSV
//!   injection"). Such text gets a leading `'`, which spreadsheets read as "this cell is text".
//! - [`truncate_utf16`]: Excel keeps at most [`XLSX_MAX_TEXT`] UTF-16 code units in a cell.
//! - [`number_cell`] / [`number_text`] / [`number_f64`]: DynamoDB numbers have up to 38 digits, more
//!   than `i64` or `f64` hold. A row cell is a JSON value; a number serde_json cannot write back with
//!   the same characters travels as `{"$number": "<decimal text>"}` (no other cell is an object),
//!   and [`exact_f64`] says whether a spreadsheet number cell would show the same value.

use std::borrow::Cow;

use serde_json::{Number, Value};

/// The key of the one-key object that carries an exact number in a row.
const NUMBER_KEY: &str = "$number";

/// The most UTF-16 code units Excel keeps in one cell ("32,767 characters" in its documentation).
pub const XLSX_MAX_TEXT: usize = 32_767;

/// The most columns an Excel worksheet holds (A to XFD).
pub const XLSX_MAX_COLUMNS: usize = 16_384;

/// Whether a spreadsheet could take `text` for a formula: it starts with `=`, `+`, `-`, `@`, TAB or CR.
pub fn needs_formula_escape(text: &str) -> bool {
    matches!(text.as_bytes().first(), Some(b'=' | b'+' | b'-' | b'@' | b'\t' | b'\r'))
}

/// `text` with a leading `'` when [`needs_formula_escape`] says so; otherwise `text` itself.
pub fn formula_escaped(text: &str) -> Cow<'_, str> {
    if needs_formula_escape(text) { Cow::Owned(format!("'{text}")) } else { Cow::Borrowed(text) }
}

/// The longest prefix of `text` that ends on a char boundary and holds at most `max` UTF-16 code
/// units (the unit Excel counts), or `None` when all of `text` fits.
pub fn truncate_utf16(text: &str, max: usize) -> Option<&str> {
    // Every UTF-8 byte sequence is at least as long as its UTF-16 encoding.
    if text.len() <= max {
        return None;
    }
    let mut units = 0;
    for (i, c) in text.char_indices() {
        units += c.len_utf16();
        if units > max {
            return Some(&text[..i]);
        }
    }
    None
}

/// The parts of a decimal number's text: `[+-] digits [. digits] [(e|E) [+-] digits]`, with at
/// least one digit before the exponent. Rejects everything else (`inf`, `NaN`, hex, spaces).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Parts<'a> {
    negative: bool,
    plus: bool,
    int: &'a str,
    /// `Some` when there is a `.`, even with no digits after it.
    frac: Option<&'a str>,
    /// What follows `e` or `E`, sign included.
    exp: Option<&'a str>,
}

fn digits_len(s: &str) -> usize {
    s.bytes().take_while(u8::is_ascii_digit).count()
}

fn lex(text: &str) -> Option<Parts<'_>> {
    let (negative, plus, rest) = match text.as_bytes().first() {
        Some(b'-') => (true, false, &text[1..]),
        Some(b'+') => (false, true, &text[1..]),
        _ => (false, false, text),
    };
    let (int, mut rest) = rest.split_at(digits_len(rest));
    let mut frac = None;
    if let Some(after) = rest.strip_prefix('.') {
        let (f, r) = after.split_at(digits_len(after));
        frac = Some(f);
        rest = r;
    }
    if int.is_empty() && frac.is_none_or(str::is_empty) {
        return None;
    }
    let exp = match rest.strip_prefix(['e', 'E']) {
        Some(e) => {
            let unsigned = e.strip_prefix(['+', '-']).unwrap_or(e);
            if unsigned.is_empty() || digits_len(unsigned) != unsigned.len() {
                return None;
            }
            Some(e)
        }
        None if rest.is_empty() => None,
        None => return None,
    };
    Some(Parts { negative, plus, int, frac, exp })
}

/// The decimal number `text` in JSON's number grammar (no `+`, no leading zeros, digits on both
/// sides of a `.`), or `None` when `text` is not a decimal number. Text already in that grammar
/// comes back unchanged, digit for digit.
pub fn json_number(text: &str) -> Option<Cow<'_, str>> {
    let p = lex(text)?;
    let int = p.int.trim_start_matches('0');
    let canonical = !p.plus && (p.int == "0" || !int.is_empty() && int.len() == p.int.len());
    if canonical && p.frac.is_none_or(|f| !f.is_empty()) {
        return Some(Cow::Borrowed(text));
    }
    let mut out = String::with_capacity(text.len() + 1);
    if p.negative {
        out.push('-');
    }
    out.push_str(if int.is_empty() { "0" } else { int });
    if let Some(f) = p.frac.filter(|f| !f.is_empty()) {
        out.push('.');
        out.push_str(f);
    }
    if let Some(e) = p.exp {
        out.push('e');
        out.push_str(e);
    }
    Some(Cow::Owned(out))
}

/// Whether `text` is a number in JSON's grammar (so it can be written into JSON as it is).
fn is_json_number(text: &str) -> bool {
    matches!(json_number(text), Some(Cow::Borrowed(_)))
}

/// A decimal's value as `digits × 10^exponent`, `digits` without leading or trailing zeros (empty
/// for zero, whose sign is dropped), so equal values have equal forms.
#[derive(Debug, PartialEq, Eq)]
struct Decimal {
    negative: bool,
    digits: String,
    exponent: i64,
}

impl Decimal {
    fn parse(text: &str) -> Option<Decimal> {
        let p = lex(text)?;
        let frac = p.frac.unwrap_or("");
        let exp: i64 = match p.exp {
            Some(e) => e.strip_prefix('+').unwrap_or(e).parse().ok()?,
            None => 0,
        };
        let all = format!("{}{frac}", p.int);
        let trimmed = all.trim_start_matches('0');
        let digits = trimmed.trim_end_matches('0');
        let trailing = (trimmed.len() - digits.len()) as i64;
        let exponent = exp.checked_sub(frac.len() as i64)?.checked_add(trailing)?;
        if digits.is_empty() {
            return Some(Decimal { negative: false, digits: String::new(), exponent: 0 });
        }
        Some(Decimal { negative: p.negative, digits: digits.to_owned(), exponent })
    }
}

/// The `f64` of the decimal `text` when that `f64`, written back in its shortest form, is the same
/// number: `0.1` and `9007199254740992` are, `9007199254740993` (it reads back as ...992) and
/// `123456789012345678901234567890` are not. `None` also for text that is not a decimal, or is out
/// of `f64`'s range.
pub fn exact_f64(text: &str) -> Option<f64> {
    let want = Decimal::parse(text)?;
    let f: f64 = text.parse().ok()?;
    if !f.is_finite() {
        return None;
    }
    // `{:e}` is the shortest text that reads back as `f`.
    (Decimal::parse(&format!("{f:e}"))? == want).then_some(f)
}

/// The number a spreadsheet number cell should hold for `n`, or `None` when no `f64` shows it
/// exactly (see [`exact_f64`]).
pub fn number_f64(n: &Number) -> Option<f64> {
    const EXACT_INT: u64 = 1 << 53;
    if n.is_f64() {
        return n.as_f64();
    }
    match n.as_i64() {
        // Every integer up to 2^53 is an f64, and its shortest form is its own digits.
        Some(i) if i.unsigned_abs() <= EXACT_INT => Some(i as f64),
        _ => exact_f64(&n.to_string()),
    }
}

/// A row cell for the decimal number `text` (as DynamoDB returns it): a JSON number when serde_json
/// writes that number back as exactly `text` (cheap to carry), `{"$number": text}` otherwise (the
/// text in JSON's grammar), and a text cell when `text` is not a number at all.
pub fn number_cell(text: &str) -> Value {
    if let Some(n) = plain_number(text) {
        return Value::Number(n);
    }
    match json_number(text) {
        Some(token) => Value::Object(serde_json::Map::from_iter([(NUMBER_KEY.to_owned(), Value::String(token.into_owned()))])),
        None => Value::String(text.to_owned()),
    }
}

/// `text` as a serde_json number when serde_json writes it back with the same characters.
fn plain_number(text: &str) -> Option<Number> {
    if text.contains(['.', 'e', 'E']) {
        let n = Number::from_f64(text.parse().ok()?)?;
        return (n.to_string() == text).then_some(n);
    }
    let unsigned = text.strip_prefix('-').unwrap_or(text);
    // Integers: serde_json writes no `+`, no leading zero and no `-0`.
    if text.starts_with('+') || unsigned.starts_with('0') && text != "0" {
        return None;
    }
    if text.starts_with('-') { text.parse::<i64>().ok().map(Number::from) } else { text.parse::<u64>().ok().map(Number::from) }
}

/// The decimal text of a cell made by [`number_cell`] that is not a plain JSON number; always in
/// JSON's number grammar, so it can be written into JSON as a number token.
pub fn number_text(v: &Value) -> Option<&str> {
    match v {
        Value::Object(m) if m.len() == 1 => match m.get(NUMBER_KEY) {
            Some(Value::String(s)) if is_json_number(s) => Some(s),
            _ => None,
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formula_like_text() {
        let check = |text: &str, expect: &str| assert_eq!(formula_escaped(text), expect, "{text:?}");
        check("=1+1", "'=1+1");
        check("+SUM(A1)", "'+SUM(A1)");
        check("-5", "'-5");
        check("@cmd", "'@cmd");
        check("\t=1", "'\t=1");
        check("\r=1", "'\r=1");
        check("plain", "plain");
        check("a=b", "a=b");
        check(" =1", " =1");
        check("\n=1", "\n=1");
        check("'already", "'already");
        check("", "");
        check("é=", "é=");
    }

    #[test]
    fn truncation_counts_utf16_units_and_keeps_chars_whole() {
        let check = |text: &str, max: usize, expect: Option<&str>| assert_eq!(truncate_utf16(text, max), expect, "{text:?} to {max}");
        check("abc", 3, None);
        check("abcd", 3, Some("abc"));
        // é is 2 bytes but 1 unit: fits.
        check("ééé", 3, None);
        check("éééé", 3, Some("ééé"));
        // 😀 is 2 units: the second does not fit in 3.
        check("😀😀", 3, Some("😀"));
        check("😀😀", 4, None);
        check("a😀", 2, Some("a"));
        check("", 0, None);
        let long = "x".repeat(40_000);
        assert_eq!(truncate_utf16(&long, XLSX_MAX_TEXT).map(str::len), Some(XLSX_MAX_TEXT));
    }

    #[test]
    fn json_numbers() {
        let check = |text: &str, expect: Option<&str>| assert_eq!(json_number(text).as_deref(), expect, "{text:?}");
        check("0", Some("0"));
        check("-0", Some("-0"));
        check("12.50", Some("12.50"));
        check("123456789012345678901234567890", Some("123456789012345678901234567890"));
        check("1E+2", Some("1E+2"));
        check("-1.5e-130", Some("-1.5e-130"));
        check("+5", Some("5"));
        check("+0", Some("0"));
        check("00", Some("0"));
        check("007", Some("7"));
        check("-00.5", Some("-0.5"));
        check(".5", Some("0.5"));
        check("5.", Some("5"));
        check("5.e3", Some("5e3"));
        check("", None);
        check("-", None);
        check(".", None);
        check("1e", None);
        check("1e+", None);
        check("NaN", None);
        check("inf", None);
        check("0x10", None);
        check(" 1", None);
        check("1 ", None);
        check("1.2.3", None);
        assert!(is_json_number("-9223372036854775808"));
        assert!(!is_json_number("+1"));
    }

    #[test]
    fn exact_in_f64() {
        let check = |text: &str, expect: Option<f64>| assert_eq!(exact_f64(text), expect, "{text:?}");
        check("0", Some(0.0));
        check("-0", Some(0.0));
        check("42", Some(42.0));
        check("-5", Some(-5.0));
        check("0.1", Some(0.1));
        check("12.50", Some(12.5));
        check("1E+2", Some(100.0));
        check("9007199254740992", Some(9_007_199_254_740_992.0));
        check("9007199254740993", None);
        check("123456789012345678901234567890", None);
        // -2^63 is an f64, but its shortest form is -9.223372036854776e18: a spreadsheet shows other digits.
        check("-9223372036854775808", None);
        check("18446744073709551615", None);
        check("10000000000000000000", Some(1e19));
        check("0.30000000000000004", Some(0.1 + 0.2));
        check("0.3000000000000000444", None);
        check("1e400", None);
        check("1e-400", None);
        check("1e99999999999999999999", None);
        check("abc", None);
    }

    #[test]
    fn numbers_for_spreadsheets() {
        let check = |v: Value, expect: Option<f64>| match &v {
            Value::Number(n) => assert_eq!(number_f64(n), expect, "{v}"),
            _ => unreachable!(),
        };
        check(Value::from(-5), Some(-5.0));
        check(Value::from(1.5), Some(1.5));
        check(Value::from(1i64 << 53), Some(9_007_199_254_740_992.0));
        check(Value::from((1i64 << 53) + 1), None);
        check(Value::from(i64::MIN), None);
        check(Value::from(i64::MAX), None);
        check(Value::from(u64::MAX), None);
        check(Value::from(10_000_000_000_000_000_000u64), Some(1e19));
    }

    #[test]
    fn number_cells_keep_their_text() {
        let check = |text: &str, expect: Value| {
            let cell = number_cell(text);
            assert_eq!(cell, expect, "{text:?}");
            // Whatever the carrier, the text written out is the one DynamoDB gave (in JSON's grammar).
            let written = number_text(&cell).map_or_else(|| cell.to_string(), str::to_owned);
            assert_eq!(written, json_number(text).map_or_else(|| Value::from(text).to_string(), Cow::into_owned), "{text:?}");
        };
        let exact = |t: &str| serde_json::json!({ "$number": t });
        check("42", Value::from(42));
        check("-5", Value::from(-5));
        check("-9223372036854775808", Value::from(i64::MIN));
        check("18446744073709551615", Value::from(u64::MAX));
        check("5.07", Value::from(5.07));
        check("0.1", Value::from(0.1));
        check("123456789012345678901234567890", exact("123456789012345678901234567890"));
        check("18446744073709551616", exact("18446744073709551616"));
        check("12.50", exact("12.50"));
        check("1E+2", exact("1E+2"));
        check("0.00000015", exact("0.00000015"));
        check("+7", exact("7"));
        check("-0", exact("-0"));
        check("not a number", Value::from("not a number"));
        assert_eq!(number_text(&exact("1.5")), Some("1.5"));
        assert_eq!(number_text(&exact("+1")), None, "not JSON's grammar: never written raw");
        assert_eq!(number_text(&serde_json::json!({ "$number": "1", "x": 1 })), None);
        assert_eq!(number_text(&Value::from("1")), None);
    }

    /// The job parameter that turns CSV escaping off: on when left out, and the same request then.
    #[test]
    fn formula_escape_is_on_unless_a_request_turns_it_off() {
        use crate::jobs::ExportParams;
        let params = |extra: &str| {
            let body = format!(
                r#"{{"kind":"export","params":{{"source":{{"type":"dynamodb_scan","table":"orders"}},"format":"csv","columns":["a"]{extra}}}}}"#
            );
            ExportParams::parse(serde_json::from_str::<serde_json::Value>(&body).unwrap()["params"].take()).unwrap()
        };
        let (omitted, on, off) = (params(""), params(r#","formula_escape":true"#), params(r#","formula_escape":false"#));
        assert!(omitted.formula_escape && on.formula_escape && !off.formula_escape);
        assert_eq!(omitted.canonical(), on.canonical());
        assert!(!omitted.canonical().contains("formula_escape"), "{}", omitted.canonical());
        assert_eq!(omitted.hash(), on.hash());
        assert_ne!(omitted.hash(), off.hash());
        assert_eq!(ExportParams::from_canonical(&off.canonical()).unwrap(), off);
        assert_eq!(ExportParams::from_canonical(&omitted.canonical()).unwrap(), omitted);
    }
}
