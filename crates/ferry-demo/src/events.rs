//! Lambda events as AWS sends them, built from the fixtures under `events/` so that the fixtures
//! used with `cargo lambda invoke` and the events the tests and the demo send are one shape.

/// The `events/s3-put.json` fixture.
pub const S3_PUT: &str = include_str!("../../../events/s3-put.json");

/// An S3 `ObjectCreated:Put` notification with one record per key. Keys are form-url-encoded as S3
/// encodes them (a space becomes `+`).
pub fn s3_put_event(bucket: &str, keys: &[&str]) -> serde_json::Value {
    let mut event: serde_json::Value = serde_json::from_str(S3_PUT).expect("events/s3-put.json is valid JSON");
    let template = event["Records"][0].clone();
    let records: Vec<serde_json::Value> = keys
        .iter()
        .map(|key| {
            let mut r = template.clone();
            r["s3"]["bucket"]["name"] = bucket.into();
            r["s3"]["bucket"]["arn"] = format!("arn:aws:s3:::{bucket}").into();
            r["s3"]["object"]["key"] = form_encode(key).into();
            r
        })
        .collect();
    event["Records"] = records.into();
    event
}

/// Encodes a key the way S3 event notifications do: URL-encoded, spaces as `+`.
pub fn form_encode(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'*' | b'/' => out.push(b as char),
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn keys_are_encoded_as_s3_does() {
        assert_eq!(super::form_encode("/data/1/a b+c,d.csv"), "/data/1/a+b%2Bc%2Cd.csv");
        let e = super::s3_put_event("b", &["x y", "z"]);
        assert_eq!(e["Records"][0]["s3"]["object"]["key"], "x+y");
        assert_eq!(e["Records"][1]["s3"]["bucket"]["name"], "b");
    }
}
