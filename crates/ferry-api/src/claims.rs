//! A JWT claim as API Gateway's JWT authorizer (HTTP API) hands it over: every claim is a
//! string, and a list claim comes in one of the forms [`claim_items`] reads. [`is_admin`] applies
//! `ferry_core`'s admin rule to a caller's claims.

use ferry_core::notify::AdminRule;
use serde_json::Value;

/// A claim's items, in the forms API Gateway's JWT authorizer produces: a JSON array string
/// (`["a","b"]`), an array it flattened (`[a b]`), or a single value (one item, never split).
/// A JSON array holding anything but strings yields no items.
pub fn claim_items(raw: &str) -> Vec<String> {
    let trimmed = raw.trim();
    let Some(inner) = trimmed.strip_prefix('[').and_then(|r| r.strip_suffix(']')) else {
        return if raw.is_empty() { Vec::new() } else { vec![raw.to_owned()] };
    };
    if inner.trim_start().starts_with('"') {
        return match serde_json::from_str::<Vec<Value>>(trimmed) {
            Ok(values) if values.iter().all(Value::is_string) => {
                values.into_iter().filter_map(|v| v.as_str().map(str::to_owned)).filter(|v| !v.is_empty()).collect()
            }
            _ => Vec::new(),
        };
    }
    // Flattened by API Gateway: items separated by single spaces. Group names cannot hold spaces.
    inner.split(' ').filter(|v| !v.is_empty()).map(str::to_owned).collect()
}

/// Whether the caller with these verified JWT claims (`claim`: a claim's raw value by name) is
/// an admin under `rule`: the rule's claim, read as its items, holds the rule's value.
pub fn is_admin<'a>(rule: &AdminRule, mut claim: impl FnMut(&str) -> Option<&'a str>) -> bool {
    claim(&rule.claim).is_some_and(|raw| rule.allows(&claim_items(raw)))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn admin_claims_match_whole_items() {
        let rule = AdminRule::default();
        let check = |claims: &[(&str, &str)], expect: bool| {
            let map: BTreeMap<String, String> = claims.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            assert_eq!(is_admin(&rule, |k| map.get(k).map(String::as_str)), expect, "{claims:?}");
        };
        // The forms API Gateway produces, holding the group.
        check(&[("cognito:groups", "ferry-admin")], true);
        check(&[("cognito:groups", "[support ferry-admin]")], true);
        check(&[("cognito:groups", "[ferry-admin]")], true);
        check(&[("cognito:groups", "[\"support\",\"ferry-admin\"]")], true);
        check(&[("cognito:groups", "[\"ferry-admin\"]")], true);
        // A scalar is one item: never split on spaces or commas.
        check(&[("cognito:groups", "x ferry-admin")], false);
        check(&[("cognito:groups", "user ferry-admin")], false);
        check(&[("cognito:groups", "x,ferry-admin")], false);
        check(&[("cognito:groups", "[x,ferry-admin]")], false);
        check(&[("cognito:groups", "[\"x,ferry-admin\"]")], false);
        check(&[("cognito:groups", "[\"x ferry-admin\"]")], false);
        check(&[("cognito:groups", " ferry-admin")], false);
        check(&[("cognito:groups", "ferry-admins")], false);
        check(&[("cognito:groups", "[ferry-admins]")], false);
        check(&[("cognito:groups", "[\"ferry-admin\", 1]")], false);
        check(&[("cognito:groups", "[support]")], false);
        check(&[("cognito:groups", "")], false);
        check(&[("cognito:groups", "[]")], false);
        // Another claim holding the value, or no claims at all (a missing authorizer).
        check(&[("scope", "ferry-admin")], false);
        check(&[], false);
        // An empty required value never matches.
        let empty = AdminRule { claim: "cognito:groups".into(), value: String::new() };
        assert!(!is_admin(&empty, |_| Some("")));
    }

    #[test]
    fn claim_lists() {
        let cases: [(&str, &[&str]); 7] = [
            ("a", &["a"]),
            ("a b", &["a b"]),
            ("[a b]", &["a", "b"]),
            ("[\"a\",\"b c\"]", &["a", "b c"]),
            ("[\"a\",2]", &[]),
            ("[\"a\"", &["[\"a\""]),
            ("", &[]),
        ];
        for (raw, expect) in cases {
            assert_eq!(claim_items(raw), expect, "{raw:?}");
        }
    }
}
