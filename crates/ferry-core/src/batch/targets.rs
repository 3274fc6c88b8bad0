//! Where calls go and what they carry: the configured [`Target`]s ([`parse_targets`] checks each
//! url, method and header), the body of each call ([`render_body`]) and its [`idempotency_key`].

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::MAX_CONCURRENCY;
use super::items::Item;
use super::params::is_name;

/// Headers the runner sets itself: a target may not override them.
const RESERVED_HEADERS: [&str; 4] = ["idempotency-key", "host", "content-length", "content-type"];

/// An outside HTTP API batch items are sent to, configured per deployment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// Where calls go: https:// (plain http only to a loopback host).
    pub url: String,
    /// POST, PUT or PATCH.
    #[serde(default = "default_method")]
    pub method: String,
    /// Headers sent with every call.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// header name -> SSM parameter name holding its value (read once at start; never logged)
    #[serde(default)]
    pub secret_headers: BTreeMap<String, String>,
    /// JSON body template; None: the item value itself (items_per_request 1) or the array of values.
    #[serde(default)]
    pub body: Option<Value>,
    /// most concurrency a job may ask of this target (default MAX_CONCURRENCY)
    #[serde(default)]
    pub max_concurrency: Option<u32>,
}

fn default_method() -> String {
    "POST".to_owned()
}

/// Parses the configured targets, `{"name": Target, ...}`; errors name the target and field
/// (`targets.crm.url: ...`).
pub fn parse_targets(json: &str) -> Result<BTreeMap<String, Target>, String> {
    let raw: BTreeMap<String, Value> = serde_json::from_str(json).map_err(|e| format!("targets: not a JSON object of targets: {e}"))?;
    let mut targets = BTreeMap::new();
    for (name, value) in raw {
        if !is_name(&name) {
            return Err(format!("targets.{name:?}: not a target name (1 to 64 of A-Z a-z 0-9 _ -)"));
        }
        let target: Target = serde_json::from_value(value).map_err(|e| format!("targets.{name}: {e}"))?;
        check_target(&target).map_err(|(field, message)| format!("targets.{name}.{field}: {message}"))?;
        targets.insert(name, target);
    }
    Ok(targets)
}

/// The field at fault and why.
fn check_target(t: &Target) -> Result<(), (String, String)> {
    check_url(&t.url).map_err(|m| ("url".to_owned(), m))?;
    if !matches!(t.method.as_str(), "POST" | "PUT" | "PATCH") {
        return Err(("method".into(), format!("must be POST, PUT or PATCH, got {:?}", t.method)));
    }
    let mut seen = std::collections::BTreeSet::new();
    for (group, map) in [("headers", &t.headers), ("secret_headers", &t.secret_headers)] {
        for (name, value) in map {
            let field = format!("{group}.{name}");
            let lower = name.to_ascii_lowercase();
            if name.is_empty() || !name.bytes().all(is_tchar) {
                return Err((field, "is not a valid HTTP header name".into()));
            }
            if RESERVED_HEADERS.contains(&lower.as_str()) {
                return Err((field, "is set by the runner; a target may not set it".into()));
            }
            if !seen.insert(lower) {
                return Err((field, "is set twice (header names ignore case)".into()));
            }
            if group == "headers" && value.bytes().any(|b| matches!(b, b'\r' | b'\n' | 0)) {
                return Err((field, "value holds a CR, LF or NUL".into()));
            }
            if group == "secret_headers" && !is_ssm_name(value) {
                return Err((field, "is not an SSM parameter name".into()));
            }
        }
    }
    if let Some(c) = t.max_concurrency
        && !(1..=MAX_CONCURRENCY).contains(&c)
    {
        return Err(("max_concurrency".into(), format!("must be 1 to {MAX_CONCURRENCY}, got {c}")));
    }
    Ok(())
}

/// A `tchar` of RFC 9110: what an HTTP header name is made of.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_ssm_name(s: &str) -> bool {
    (1..=2048).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-/".contains(&b))
}

/// Why `url` may not be a target's url. Strict on purpose: what passes here reads the same in any
/// URL parser (no user info, backslash, whitespace or fragment to disagree about).
fn check_url(url: &str) -> Result<(), String> {
    const HTTPS: &str = "must be https://host[:port][/path] (plain http only to localhost, 127.0.0.0/8 or [::1])";
    if url.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control() || b == b'\\') {
        return Err("must not hold whitespace, control characters or '\\'".into());
    }
    if url.contains('#') {
        return Err("must not have a fragment ('#')".into());
    }
    let lower = url.to_ascii_lowercase();
    let (secure, rest) = if lower.starts_with("https://") {
        (true, &url["https://".len()..])
    } else if lower.starts_with("http://") {
        (false, &url["http://".len()..])
    } else {
        return Err(HTTPS.into());
    };
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    if authority.contains('@') {
        return Err("must not have user info ('user@')".into());
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        match v6.split_once(']') {
            Some((h, p)) => (h, p),
            None => return Err("has an unclosed '[' in its host".into()),
        }
    } else {
        authority.split_at(authority.find(':').unwrap_or(authority.len()))
    };
    if host.is_empty() {
        return Err("has no host".into());
    }
    if !port.is_empty() {
        let valid = port.strip_prefix(':').and_then(|p| p.parse::<u16>().ok()).is_some_and(|p| p > 0);
        if !valid {
            return Err("has an invalid port".into());
        }
    }
    let loopback = if authority.starts_with('[') {
        host.parse::<Ipv6Addr>().is_ok_and(|ip| ip.is_loopback())
    } else {
        host.eq_ignore_ascii_case("localhost") || host.parse::<Ipv4Addr>().is_ok_and(|ip| ip.is_loopback())
    };
    if !secure && !loopback {
        return Err(HTTPS.into());
    }
    Ok(())
}

/// The body of one call: `template` with every JSON string exactly equal to a placeholder replaced
/// (`{{item}}`, `{{items}}`, `{{seq}}`, `{{id}}`, `{{job_id}}`), recursively; no template: the item
/// value when the group has one item, else the array of values.
pub fn render_body(template: Option<&Value>, group: &[Item], job_id: &str) -> Value {
    let values = || Value::Array(group.iter().map(|i| i.value.clone()).collect());
    match template {
        None => match group {
            [one] => one.value.clone(),
            _ => values(),
        },
        Some(t) => fill(t, group, job_id, &values),
    }
}

/// Only whole-string placeholders are replaced, and only in the template: an item's text is never
/// interpolated into a string, nor searched for placeholders itself.
fn fill(t: &Value, group: &[Item], job_id: &str, values: &dyn Fn() -> Value) -> Value {
    let first = group.first();
    match t {
        Value::String(s) => match s.as_str() {
            "{{item}}" => first.map_or(Value::Null, |i| i.value.clone()),
            "{{items}}" => values(),
            "{{seq}}" => first.map_or(Value::Null, |i| Value::from(i.seq)),
            "{{id}}" => first.and_then(|i| i.id.clone()).map_or(Value::Null, Value::String),
            "{{job_id}}" => Value::String(job_id.to_owned()),
            _ => t.clone(),
        },
        Value::Array(a) => Value::Array(a.iter().map(|v| fill(v, group, job_id, values)).collect()),
        Value::Object(m) => Value::Object(m.iter().map(|(k, v)| (k.clone(), fill(v, group, job_id, values))).collect()),
        _ => t.clone(),
    }
}

/// `Idempotency-Key` of the call carrying a group: `{job_id}:{seq}` of its first item (a group is
/// always the same items for the same first seq, so a retry carries the same key).
pub fn idempotency_key(job_id: &str, first_seq: u64) -> String {
    format!("{job_id}:{first_seq}")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn targets_parse_and_refuse() {
        let good = r#"{
            "crm": {"url": "https://api.example.com/v1/items?x=1", "headers": {"X-Api-Version": "2"},
                    "secret_headers": {"Authorization": "/ferry/crm/token"}, "body": {"data": "{{item}}"}, "max_concurrency": 5},
            "local_test": {"url": "http://127.0.0.1:8080/hook", "method": "PUT"},
            "loop6": {"url": "http://[::1]/x", "method": "PATCH"},
            "loop6b": {"url": "http://[0:0:0:0:0:0:0:1]:9000/x"},
            "v6": {"url": "https://[2001:db8::1]/x"},
            "lh": {"url": "http://localhost:3000"}
        }"#;
        let targets = parse_targets(good).unwrap();
        assert_eq!(targets.len(), 6);
        let crm = &targets["crm"];
        assert_eq!(crm.method, "POST");
        assert_eq!(crm.headers["X-Api-Version"], "2");
        assert_eq!(crm.secret_headers["Authorization"], "/ferry/crm/token");
        assert_eq!(crm.body, Some(json!({"data": "{{item}}"})));
        assert_eq!(crm.max_concurrency, Some(5));
        assert_eq!(targets["local_test"].method, "PUT");
        assert!(targets["lh"].headers.is_empty() && targets["lh"].body.is_none());
        assert!(parse_targets("{}").unwrap().is_empty());

        let refused = |target: &str| parse_targets(&format!(r#"{{"crm": {target}}}"#)).unwrap_err();
        let check = |target: &str, starts: &str| {
            let e = refused(target);
            assert!(e.starts_with(starts), "{target}: {e}");
        };
        check(r#"{"url": "http://api.example.com/x"}"#, "targets.crm.url: must be https://");
        check(r#"{"url": "http://localhost.evil.com/x"}"#, "targets.crm.url: must be https://");
        check(r#"{"url": "http://127.0.0.1.nip.io/x"}"#, "targets.crm.url: must be https://");
        check(r#"{"url": "http://10.0.0.1/x"}"#, "targets.crm.url: must be https://");
        check(r#"{"url": "http://[2001:db8::1]/x"}"#, "targets.crm.url: must be https://");
        check(r#"{"url": "http://[127.0.0.1]/x"}"#, "targets.crm.url: must be https://");
        check(r#"{"url": "ftp://example.com/x"}"#, "targets.crm.url: must be https://");
        check(r#"{"url": "https://user:pw@example.com/x"}"#, "targets.crm.url: must not have user info");
        check(r#"{"url": "http://evil.com@127.0.0.1/x"}"#, "targets.crm.url: must not have user info");
        check(r#"{"url": "https://example.com/x#frag"}"#, "targets.crm.url: must not have a fragment");
        check(r#"{"url": "https://exa mple.com/"}"#, "targets.crm.url: must not hold whitespace");
        check(r#"{"url": "https:///x"}"#, "targets.crm.url: has no host");
        check(r#"{"url": "https://example.com:99999/"}"#, "targets.crm.url: has an invalid port");
        check(r#"{"url": "https://example.com", "method": "GET"}"#, "targets.crm.method: must be POST, PUT or PATCH");
        check(r#"{"url": "https://example.com", "method": "post"}"#, "targets.crm.method:");
        check(
            r#"{"url": "https://example.com", "headers": {"Idempotency-Key": "x"}}"#,
            "targets.crm.headers.Idempotency-Key: is set by the runner",
        );
        check(r#"{"url": "https://example.com", "headers": {"content-type": "text/plain"}}"#, "targets.crm.headers.content-type:");
        check(r#"{"url": "https://example.com", "headers": {"HOST": "x"}}"#, "targets.crm.headers.HOST:");
        check(
            r#"{"url": "https://example.com", "secret_headers": {"Content-Length": "/p"}}"#,
            "targets.crm.secret_headers.Content-Length:",
        );
        check(
            r#"{"url": "https://example.com", "headers": {"Bad Name": "x"}}"#,
            "targets.crm.headers.Bad Name: is not a valid HTTP header name",
        );
        check(r#"{"url": "https://example.com", "headers": {"X-A": "a\r\nX-B: b"}}"#, "targets.crm.headers.X-A: value holds a CR");
        check(
            r#"{"url": "https://example.com", "headers": {"X-A": "1"}, "secret_headers": {"x-a": "/p"}}"#,
            "targets.crm.secret_headers.x-a: is set twice",
        );
        check(r#"{"url": "https://example.com", "secret_headers": {"X-A": "not an ssm name"}}"#, "targets.crm.secret_headers.X-A:");
        check(r#"{"url": "https://example.com", "max_concurrency": 0}"#, "targets.crm.max_concurrency:");
        check(r#"{"url": "https://example.com", "max_concurrency": 101}"#, "targets.crm.max_concurrency:");
        check(r#"{"url": "https://example.com", "timeout": 1}"#, "targets.crm: unknown field `timeout`");
        check(r#"{"method": "POST"}"#, "targets.crm: missing field `url`");
        assert!(
            parse_targets(r#"{"bad name": {"url": "https://example.com"}}"#)
                .unwrap_err()
                .starts_with("targets.\"bad name\": not a target name")
        );
        assert!(parse_targets("[1]").unwrap_err().starts_with("targets: "));
    }

    fn item(seq: u64, value: Value) -> Item {
        Item::new(seq, value)
    }

    #[test]
    fn render_body_replaces_whole_string_placeholders_in_the_template_only() {
        let group = [item(7, json!({"id": "a", "note": "{{job_id}}"})), item(8, json!({"id": 2}))];
        let template = json!({
            "one": "{{item}}", "all": "{{items}}", "seq": "{{seq}}", "id": "{{id}}", "job": "{{job_id}}",
            "nested": [{"deep": ["{{seq}}", "x {{id}}", "{{ID}}"]}], "n": 5, "t": true, "{{item}}": "key stays"
        });
        let body = render_body(Some(&template), &group, "job-1");
        assert_eq!(
            body,
            json!({
                "one": {"id": "a", "note": "{{job_id}}"},
                "all": [{"id": "a", "note": "{{job_id}}"}, {"id": 2}],
                "seq": 7, "id": "a", "job": "job-1",
                "nested": [{"deep": [7, "x {{id}}", "{{ID}}"]}], "n": 5, "t": true, "{{item}}": "key stays"
            })
        );
        // The item's own "{{job_id}}" text is placed as it is, not expanded.
        assert_eq!(body["one"]["note"], "{{job_id}}");
        // An item without an id gives null.
        let anon = [item(0, json!([1]))];
        assert_eq!(render_body(Some(&json!({"id": "{{id}}"})), &anon, "j"), json!({"id": null}));
        // No template: the value itself for one item, else the array.
        assert_eq!(render_body(None, &group[..1], "j"), json!({"id": "a", "note": "{{job_id}}"}));
        assert_eq!(render_body(None, &group, "j"), json!([{"id": "a", "note": "{{job_id}}"}, {"id": 2}]));
        assert_eq!(render_body(Some(&json!("{{item}}")), &group[1..], "j"), json!({"id": 2}));
        assert_eq!(idempotency_key("job-1", 7), "job-1:7");
    }
}
