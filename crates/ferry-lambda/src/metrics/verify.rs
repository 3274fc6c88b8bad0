//! A line read back as CloudWatch reads it, checked against the embedded metric format
//! specification: what the tests hold every emitted line to.

use std::collections::BTreeMap;

use serde_json::Value;

use super::{Metric, dimension_value_ok};

/// A line read back by [`verify`]: its dimensions and properties (string members) and its
/// metric values.
#[derive(Debug, Clone, PartialEq)]
pub struct Emitted {
    pub strings: BTreeMap<String, String>,
    pub values: BTreeMap<String, f64>,
}

impl Emitted {
    /// The value of metric `m`, if the line has it.
    pub fn value(&self, m: Metric) -> Option<f64> {
        self.values.get(m.name()).copied()
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.strings.get(key).map(String::as_str)
    }
}

/// Reads `line` as CloudWatch does and checks what the EMF specification requires: one JSON
/// object; `_aws.Timestamp` a number of Unix milliseconds; `_aws.CloudWatchMetrics` an array of
/// directives, each with a `Namespace` of 1 to 255 characters, `Dimensions` (arrays of at most 30
/// keys, each a string member of the root that CloudWatch accepts as a dimension value) and
/// `Metrics` (at most 100, each `Name` a number member of the root, `Unit` a CloudWatch unit).
pub fn verify(line: &str) -> Result<Emitted, String> {
    let root: Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    let root = root.as_object().ok_or("not a JSON object")?;
    let aws = root.get("_aws").and_then(Value::as_object).ok_or("no `_aws` object")?;
    let ts = aws.get("Timestamp").and_then(Value::as_i64).ok_or("`_aws.Timestamp` is not an integer")?;
    // Milliseconds, not seconds: any time since 2001 in seconds is below 10^10.
    if ts < 10_000_000_000 {
        return Err(format!("`_aws.Timestamp` {ts} is not in Unix milliseconds"));
    }
    let directives = aws.get("CloudWatchMetrics").and_then(Value::as_array).ok_or("`_aws.CloudWatchMetrics` is not an array")?;
    if directives.is_empty() {
        return Err("`_aws.CloudWatchMetrics` is empty".into());
    }
    let mut out = Emitted { strings: BTreeMap::new(), values: BTreeMap::new() };
    for d in directives {
        let ns = d.get("Namespace").and_then(Value::as_str).ok_or("a directive has no string `Namespace`")?;
        if ns.is_empty() || ns.chars().count() > 255 {
            return Err(format!("namespace {ns:?} is not 1 to 255 characters"));
        }
        let sets = d.get("Dimensions").and_then(Value::as_array).ok_or("a directive has no `Dimensions` array")?;
        for set in sets {
            let keys = set.as_array().ok_or("a dimension set is not an array")?;
            if keys.len() > 30 {
                return Err(format!("a dimension set has {} keys, at most 30", keys.len()));
            }
            for key in keys {
                let key = key.as_str().ok_or("a dimension key is not a string")?;
                let value = root.get(key).and_then(Value::as_str).ok_or(format!("dimension `{key}` is not a string member"))?;
                if !dimension_value_ok(value) {
                    return Err(format!("dimension `{key}` has a value CloudWatch refuses: {value:?}"));
                }
                out.strings.insert(key.into(), value.into());
            }
        }
        let metrics = d.get("Metrics").and_then(Value::as_array).ok_or("a directive has no `Metrics` array")?;
        if metrics.is_empty() || metrics.len() > 100 {
            return Err(format!("a directive has {} metrics, 1 to 100 allowed", metrics.len()));
        }
        for m in metrics {
            let name = m.get("Name").and_then(Value::as_str).ok_or("a metric has no string `Name`")?;
            if name.is_empty() || name.chars().count() > 255 {
                return Err(format!("metric name {name:?} is not 1 to 255 characters"));
            }
            if let Some(unit) = m.get("Unit") {
                let unit = unit.as_str().ok_or("a `Unit` is not a string")?;
                if !UNITS.contains(&unit) {
                    return Err(format!("metric `{name}`: {unit:?} is not a CloudWatch unit"));
                }
            }
            let value = root.get(name).and_then(Value::as_f64).ok_or(format!("metric `{name}` has no number member"))?;
            out.values.insert(name.into(), value);
        }
    }
    for (k, v) in root {
        if let Some(s) = v.as_str() {
            out.strings.insert(k.clone(), s.into());
        }
    }
    Ok(out)
}

/// The units CloudWatch accepts.
pub(super) const UNITS: [&str; 27] = [
    "Seconds",
    "Microseconds",
    "Milliseconds",
    "Bytes",
    "Kilobytes",
    "Megabytes",
    "Gigabytes",
    "Terabytes",
    "Bits",
    "Kilobits",
    "Megabits",
    "Gigabits",
    "Terabits",
    "Percent",
    "Count",
    "Bytes/Second",
    "Kilobytes/Second",
    "Megabytes/Second",
    "Gigabytes/Second",
    "Terabytes/Second",
    "Bits/Second",
    "Kilobits/Second",
    "Megabits/Second",
    "Gigabits/Second",
    "Terabits/Second",
    "Count/Second",
    "None",
];

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::metrics::{Function, Line};

    #[test]
    fn verify_refuses_what_cloudwatch_refuses() {
        let line = Line::new(Function::GlobalMerger).count(Metric::RowsMerged, 5);
        let good: Value = serde_json::from_str(&line.to_json(1_764_500_000_000).to_string()).expect("JSON");
        let check = |edit: &dyn Fn(&mut Value), expect: &str| {
            let mut v = good.clone();
            edit(&mut v);
            let e = verify(&v.to_string()).expect_err(expect);
            assert!(e.contains(expect), "{e} should say {expect}");
        };
        check(&|v| v["_aws"]["Timestamp"] = json!(1_764_500_000), "Unix milliseconds");
        check(&|v| v["_aws"]["Timestamp"] = json!("now"), "Timestamp");
        check(&|v| v["RowsMerged"] = json!("5"), "no number member");
        check(&|v| v["function"] = json!(1), "not a string member");
        check(&|v| v["function"] = json!(""), "refuses");
        check(&|v| v["_aws"]["CloudWatchMetrics"][0]["Metrics"][0]["Unit"] = json!("Rows"), "not a CloudWatch unit");
        check(&|v| v["_aws"]["CloudWatchMetrics"][0]["Namespace"] = json!(""), "namespace");
        check(&|v| v["_aws"]["CloudWatchMetrics"] = json!([]), "empty");
        assert!(verify("{} trailing").is_err());
        assert!(verify("[]").is_err());
    }
}
