//! What every DynamoDB adapter of this crate shares: the conditional write's outcome
//! ([`Written`], [`written`]) and the item codec (attribute values to and from our types, cells,
//! start keys as checkpoint text). How a table's items map to its records stays with the table.

use std::collections::HashMap;

pub use aws_sdk_dynamodb::Client as DynamoClient;
pub use aws_sdk_dynamodb::types::AttributeValue;

use crate::Error;
use crate::error::SdkError;

/// An item: attribute name to value.
pub type Item = HashMap<String, AttributeValue>;

/// The service's code for a condition that did not hold.
const CONDITION_FAILED: &str = "ConditionalCheckFailedException";

/// The outcome of a conditional write (a put, update or delete with a condition expression).
#[derive(Debug, Clone, PartialEq)]
pub enum Written<T> {
    /// The write went through; its output.
    Done(T),
    /// Its condition did not hold. What that means (a refusal, a lock held elsewhere, a record
    /// already further on) is the caller's to say.
    ConditionFailed,
}

impl<T> Written<T> {
    pub fn is_done(&self) -> bool {
        matches!(self, Written::Done(_))
    }
}

/// The answer `out` to the conditional `operation` on `resource`: [`Written::ConditionFailed`] when
/// its condition did not hold, any other failure as an [`Error`].
pub(crate) fn written<T, E, R>(operation: &'static str, resource: &str, out: Result<T, SdkError<E, R>>) -> Result<Written<T>, Error>
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    match out {
        Ok(o) => Ok(Written::Done(o)),
        Err(e) => {
            let e = error(operation, resource, e);
            if e.code() == Some(CONDITION_FAILED) { Ok(Written::ConditionFailed) } else { Err(e) }
        }
    }
}

/// The failure of a DynamoDB call.
pub(crate) fn error<E, R>(operation: &'static str, resource: &str, e: SdkError<E, R>) -> Error
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    Error::sdk("DynamoDB", operation, resource, e)
}

/// `table T, item I`: how an [`Error`] names an item.
pub(crate) fn item_resource(table: &str, item: &str) -> String {
    format!("table {table}, item {item}")
}

// ---- the codec -----------------------------------------------------------------------------------

/// A string value.
pub(crate) fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

/// A number value.
pub(crate) fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

/// The string attribute `name`, if present and a string.
pub(crate) fn text(item: &Item, name: &str) -> Option<String> {
    item.get(name).and_then(|v| v.as_s().ok()).cloned()
}

/// The number attribute `name` as an `i64`, if present and one.
pub(crate) fn num(item: &Item, name: &str) -> Option<i64> {
    item.get(name).and_then(|v| v.as_n().ok()).and_then(|v| v.parse().ok())
}

/// Whether the boolean attribute `name` is present and true.
pub(crate) fn is_true(item: &Item, name: &str) -> bool {
    matches!(item.get(name), Some(AttributeValue::Bool(true)))
}

/// A JSON key value (a string or number) as an attribute.
pub(crate) fn key_value(v: &serde_json::Value) -> AttributeValue {
    match v {
        serde_json::Value::Number(n) => AttributeValue::N(n.to_string()),
        serde_json::Value::String(s) => AttributeValue::S(s.clone()),
        other => AttributeValue::S(other.to_string()),
    }
}

/// An attribute as a cell: strings, booleans and nulls as themselves; a number with every digit
/// DynamoDB returned (up to 38, more than `i64` or `f64` hold: [`ferry_core::cells::number_cell`]);
/// binary as base64; sets, lists and maps as their JSON text, with the same exact numbers and
/// base64, and map keys sorted so that the text is the same on every run.
pub fn to_json(v: &AttributeValue) -> serde_json::Value {
    use serde_json::Value;
    match v {
        AttributeValue::S(s) => Value::String(s.clone()),
        AttributeValue::N(n) => ferry_core::cells::number_cell(n),
        AttributeValue::B(b) => Value::String(aws_smithy_types::base64::encode(b.as_ref())),
        AttributeValue::Bool(b) => Value::Bool(*b),
        AttributeValue::Null(_) => Value::Null,
        other => {
            let mut text = Vec::new();
            write_nested(&mut text, other);
            Value::String(String::from_utf8(text).unwrap_or_default())
        }
    }
}

/// `v` as JSON, written by hand so that a number keeps its digits (serde_json's `Value` would
/// round it to an `f64`).
fn write_nested(out: &mut Vec<u8>, v: &AttributeValue) {
    fn string(out: &mut Vec<u8>, s: &str) {
        let _ = serde_json::to_writer(&mut *out, s);
    }
    fn number(out: &mut Vec<u8>, n: &str) {
        match ferry_core::cells::json_number(n) {
            Some(token) => out.extend_from_slice(token.as_bytes()),
            None => string(out, n),
        }
    }
    fn binary(out: &mut Vec<u8>, b: &aws_sdk_dynamodb::primitives::Blob) {
        string(out, &aws_smithy_types::base64::encode(b.as_ref()));
    }
    fn list<T>(out: &mut Vec<u8>, items: &[T], each: fn(&mut Vec<u8>, &T)) {
        out.push(b'[');
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            each(out, item);
        }
        out.push(b']');
    }
    match v {
        AttributeValue::S(s) => string(out, s),
        AttributeValue::N(n) => number(out, n),
        AttributeValue::B(b) => binary(out, b),
        AttributeValue::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        AttributeValue::L(l) => list(out, l, write_nested),
        AttributeValue::M(m) => {
            let mut entries: Vec<(&String, &AttributeValue)> = m.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push(b'{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                string(out, k);
                out.push(b':');
                write_nested(out, v);
            }
            out.push(b'}');
        }
        AttributeValue::Ss(s) => list(out, s, |out, s| string(out, s)),
        AttributeValue::Ns(s) => list(out, s, |out, n| number(out, n)),
        AttributeValue::Bs(s) => list(out, s, binary),
        // `Null`, and a type newer than this SDK.
        _ => out.extend_from_slice(b"null"),
    }
}

/// A start key as text for a checkpoint, each attribute in DynamoDB's typed form: `{"N": "12.5"}`,
/// `{"S": "a"}`, `{"B": "<base64>"}` (key attributes have no other type).
pub(crate) fn encode_key(key: &Item) -> String {
    let map: serde_json::Map<String, serde_json::Value> = key
        .iter()
        .map(|(k, v)| {
            let typed = match v {
                AttributeValue::N(n) => serde_json::json!({ "N": n }),
                AttributeValue::S(s) => serde_json::json!({ "S": s }),
                AttributeValue::B(b) => serde_json::json!({ "B": aws_smithy_types::base64::encode(b.as_ref()) }),
                // Not a key type: [`decode_key`] refuses it, so the resume fails naming the attribute.
                other => serde_json::json!({ "unsupported": format!("{other:?}") }),
            };
            (k.clone(), typed)
        })
        .collect();
    serde_json::Value::Object(map).to_string()
}

/// The start key [`encode_key`] wrote. The error names the attribute at fault.
pub(crate) fn decode_key(s: &str) -> Result<Item, String> {
    let map: HashMap<String, HashMap<String, String>> = serde_json::from_str(s).map_err(|e| format!("bad start key: {e}"))?;
    map.into_iter()
        .map(|(k, typed)| match typed.into_iter().next() {
            Some((t, v)) if t == "N" => Ok((k, AttributeValue::N(v))),
            Some((t, v)) if t == "S" => Ok((k, AttributeValue::S(v))),
            Some((t, v)) if t == "B" => match aws_smithy_types::base64::decode(&v) {
                Ok(bytes) => Ok((k, AttributeValue::B(aws_sdk_dynamodb::primitives::Blob::new(bytes)))),
                Err(e) => Err(format!("bad start key attribute {k}: {e}")),
            },
            _ => Err(format!("bad start key attribute {k}")),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_keys_round_trip() {
        use aws_sdk_dynamodb::primitives::Blob;
        let key = HashMap::from([("pk".to_owned(), AttributeValue::S("a#1".into())), ("n".to_owned(), AttributeValue::N("12.5".into()))]);
        assert_eq!(decode_key(&encode_key(&key)).unwrap(), key);
        // Binary keys, with bytes that are not UTF-8, and numbers beyond f64.
        let key = HashMap::from([
            ("pk".to_owned(), AttributeValue::B(Blob::new(vec![0, 0xff, 0xfe, b'+', 0x80]))),
            ("sk".to_owned(), AttributeValue::N("123456789012345678901234567890".into())),
        ]);
        let text = encode_key(&key);
        assert!(text.contains(r#"{"B":"AP/+K4A="}"#), "{text}");
        assert_eq!(decode_key(&text).unwrap(), key);
        assert!(decode_key(r#"{"pk":{"B":"not base64!"}}"#).unwrap_err().contains("pk"));
        assert!(decode_key(r#"{"pk":{"BOOL":"true"}}"#).is_err());
        let not_a_key = HashMap::from([("pk".to_owned(), AttributeValue::Bool(true))]);
        assert!(decode_key(&encode_key(&not_a_key)).is_err());
    }

    #[test]
    fn attributes_as_cells() {
        use aws_sdk_dynamodb::primitives::Blob;
        use serde_json::json;
        let check = |v: AttributeValue, expect: serde_json::Value| assert_eq!(to_json(&v), expect, "{v:?}");
        let n = |s: &str| AttributeValue::N(s.into());
        check(AttributeValue::S("x".into()), json!("x"));
        check(n("42"), json!(42));
        check(n("1.5"), json!(1.5));
        check(n("-9223372036854775808"), json!(i64::MIN));
        check(n("18446744073709551615"), json!(u64::MAX));
        check(n("9007199254740993"), json!(9_007_199_254_740_993i64));
        check(n("123456789012345678901234567890"), json!({ "$number": "123456789012345678901234567890" }));
        check(n("-1.5E-130"), json!({ "$number": "-1.5E-130" }));
        check(AttributeValue::B(Blob::new(vec![0, 0xff, b'a'])), json!("AP9h"));
        check(AttributeValue::Bool(true), json!(true));
        check(AttributeValue::Null(true), json!(null));
        check(AttributeValue::L(vec![n("1")]), json!("[1]"));
        check(
            AttributeValue::M(HashMap::from([
                ("z".to_owned(), n("123456789012345678901234567890")),
                ("a".to_owned(), AttributeValue::L(vec![AttributeValue::B(Blob::new(vec![1])), AttributeValue::Null(true)])),
                ("m".to_owned(), AttributeValue::Ns(vec!["0.1".into(), "9007199254740993".into()])),
            ])),
            json!(r#"{"a":["AQ==",null],"m":[0.1,9007199254740993],"z":123456789012345678901234567890}"#),
        );
        check(AttributeValue::Ss(vec!["a\"b".into()]), json!(r#"["a\"b"]"#));
        check(AttributeValue::Bs(vec![Blob::new(vec![0xff])]), json!(r#"["/w=="]"#));
    }

    #[test]
    fn a_failed_condition_is_an_outcome_and_anything_else_an_error() {
        use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
        use aws_sdk_dynamodb::types::error::ConditionalCheckFailedException;
        use aws_smithy_types::error::ErrorMetadata;
        let failed = UpdateItemError::ConditionalCheckFailedException(
            ConditionalCheckFailedException::builder()
                .message("The conditional request failed")
                .meta(ErrorMetadata::builder().code(CONDITION_FAILED).build())
                .build(),
        );
        let out: Result<(), _> = Err(SdkError::service_error(failed, ()));
        assert_eq!(written("UpdateItem", "t", out).unwrap(), Written::ConditionFailed);
        let denied = UpdateItemError::generic(ErrorMetadata::builder().code("AccessDeniedException").message("not authorized").build());
        let out: Result<(), _> = Err(SdkError::service_error(denied, ()));
        let e = written("UpdateItem", "table t, item x", out).unwrap_err();
        assert_eq!(e.code(), Some("AccessDeniedException"));
        assert_eq!(e.to_string(), "DynamoDB UpdateItem on table t, item x: AccessDeniedException: not authorized");
        assert!(std::error::Error::source(&e).is_some(), "the SDK error is kept");
        assert_eq!(written("UpdateItem", "t", Ok::<_, SdkError<UpdateItemError, ()>>(7)).unwrap(), Written::Done(7));
    }
}
