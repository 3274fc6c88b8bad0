//! Per-event settings, `config/{evno}.json`: `{"method": "share", "weights": {"jp": 1.0}}`.

use std::collections::BTreeMap;

use crate::normalize::Method;

/// Settings that apply when an event has no config file, or leaves a field out.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Defaults {
    pub method: Method,
    pub weight: f64,
}

impl Default for Defaults {
    fn default() -> Defaults {
        Defaults { method: Method::Share, weight: 1.0 }
    }
}

/// A config file that cannot be used. Names the file and the field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{source_name}: {message}")]
pub struct ConfigError {
    pub source_name: String,
    pub message: String,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    method: Option<Method>,
    #[serde(default)]
    weights: BTreeMap<String, f64>,
}

/// The settings of one event.
#[derive(Debug, Clone, PartialEq)]
pub struct EventConfig {
    pub method: Method,
    pub weights: BTreeMap<String, f64>,
    pub default_weight: f64,
}

impl EventConfig {
    pub fn from_defaults(defaults: Defaults) -> EventConfig {
        EventConfig { method: defaults.method, weights: BTreeMap::new(), default_weight: defaults.weight }
    }

    /// Parses a config file; fields left out take `defaults`.
    pub fn parse(source_name: &str, bytes: &[u8], defaults: Defaults) -> Result<EventConfig, ConfigError> {
        let err = |message: String| ConfigError { source_name: source_name.to_owned(), message };
        let raw: RawConfig = serde_json::from_slice(bytes).map_err(|e| err(e.to_string()))?;
        for (locale, &w) in &raw.weights {
            if locale.is_empty() || !locale.bytes().all(|b| b.is_ascii_lowercase()) {
                return Err(err(format!("weights: locale {locale:?} is not lowercase letters")));
            }
            if !w.is_finite() || w < 0.0 {
                return Err(err(format!("weights.{locale}: must be a finite number >= 0, got {w}")));
            }
        }
        Ok(EventConfig { method: raw.method.unwrap_or(defaults.method), weights: raw.weights, default_weight: defaults.weight })
    }

    pub fn weight(&self, locale: &str) -> f64 {
        self.weights.get(locale).copied().unwrap_or(self.default_weight)
    }
}

/// Parses a duration setting such as `FERRY_MAX_CLOCK_SKEW`: whole seconds, or a whole number
/// followed by `s`, `m` or `h` (`3600`, `90m`, `1h`).
pub fn parse_duration_secs(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (digits, unit) = match text.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => text.split_at(i),
        None => (text, "s"),
    };
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => return Err(format!("{text:?} is not a duration: expected whole seconds, or a number with s, m or h")),
    };
    let n: u64 = digits.parse().map_err(|_| format!("{text:?} is not a duration: expected whole seconds, or a number with s, m or h"))?;
    n.checked_mul(scale).ok_or_else(|| format!("{text:?} is too long a duration"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_defaults() {
        let c = EventConfig::parse("config/1.json", br#"{"method":"rank","weights":{"jp":2.0}}"#, Defaults::default()).unwrap();
        assert_eq!(c.method, Method::Rank);
        assert_eq!(c.weight("jp"), 2.0);
        assert_eq!(c.weight("kr"), 1.0);
        let d = Defaults { method: Method::Zscore, weight: 0.5 };
        let c = EventConfig::parse("config/1.json", b"{}", d).unwrap();
        assert_eq!((c.method, c.weight("na")), (Method::Zscore, 0.5));
    }

    #[test]
    fn durations() {
        for (text, secs) in [("3600", 3600), ("1h", 3600), ("90m", 5400), ("45s", 45), ("0", 0), (" 2h ", 7200)] {
            assert_eq!(parse_duration_secs(text), Ok(secs), "{text}");
        }
        for bad in ["", "h", "1.5h", "-1h", "1d", "1 h", "99999999999999999999"] {
            assert!(parse_duration_secs(bad).is_err(), "{bad}");
        }
    }

    #[track_caller]
    fn check_err(input: &str, expect: &str) {
        let e = EventConfig::parse("config/9.json", input.as_bytes(), Defaults::default()).unwrap_err();
        let text = e.to_string();
        assert!(text.starts_with("config/9.json: "), "{text}");
        assert!(text.contains(expect), "{text:?} does not mention {expect:?}");
    }

    #[test]
    fn errors_name_the_field() {
        check_err(r#"{"method":"median"}"#, "unknown variant `median`");
        check_err(r#"{"weights":{"jp":-1}}"#, "weights.jp");
        check_err(r#"{"weights":{"JP":1}}"#, "\"JP\"");
        check_err(r#"{"weight":{}}"#, "unknown field `weight`");
        check_err(r#"{"method":"#, "EOF");
    }
}
