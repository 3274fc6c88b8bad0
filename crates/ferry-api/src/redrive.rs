//! `/admin/redrive`: the request ([`RedriveRequest`], its [`FilterRequest`] read into a
//! `ferry_core::notify::RedriveFilter`) and the answers: the DLQ's move tasks ([`RedriveStatus`]),
//! a started move task ([`NativeStarted`]) and a selective redrive's report ([`SelectiveDone`]).
//!
//! The rows of a status and a report are as the SQS adapter reports them (the type parameter):
//! this crate names no AWS type.

use ferry_core::notify::{Channel, ErrorKind, RedriveFilter, parse_age};
use ferry_core::public::{ErrorCode, PublicError};
use serde::{Deserialize, Serialize};

/// The body of `POST /admin/redrive`. Every field is optional.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedriveRequest {
    /// `native` or `selective`; by default selective when a filter or `dry_run` is given.
    pub mode: Option<Mode>,
    /// Messages per second.
    pub rate: Option<u32>,
    #[serde(default)]
    pub dry_run: bool,
    #[serde(default)]
    pub filter: FilterRequest,
    /// Selective mode: stop after this many.
    pub max_messages: Option<usize>,
}

/// How dead letters go back: SQS's own move task, or one by one by filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Native,
    Selective,
}

/// A [`RedriveFilter`] as JSON: `{"kinds": ["provider_rejected"], "channels": ["sms"], "min_age": "1h", "max_age": "7d"}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterRequest {
    #[serde(default)]
    pub kinds: Vec<String>,
    #[serde(default)]
    pub channels: Vec<String>,
    pub min_age: Option<String>,
    pub max_age: Option<String>,
}

impl FilterRequest {
    /// The filter, or a 400 naming the field at fault and why.
    pub fn to_filter(&self) -> Result<RedriveFilter, PublicError> {
        let bad = |field: String, message: String| PublicError::new(ErrorCode::BadRequest, message).with_field(field);
        let kinds = self
            .kinds
            .iter()
            .enumerate()
            .map(|(i, k)| k.parse::<ErrorKind>().map_err(|e| bad(format!("filter.kinds[{i}]"), e)))
            .collect::<Result<_, _>>()?;
        let channels = self
            .channels
            .iter()
            .enumerate()
            .map(|(i, c)| c.parse::<Channel>().map_err(|e| bad(format!("filter.channels[{i}]"), e)))
            .collect::<Result<_, _>>()?;
        let age = |field: &str, v: &Option<String>| v.as_deref().map(parse_age).transpose().map_err(|e| bad(format!("filter.{field}"), e));
        Ok(RedriveFilter { kinds, channels, min_age_secs: age("min_age", &self.min_age)?, max_age_secs: age("max_age", &self.max_age)? })
    }
}

/// The answer to `GET /admin/redrive`: the DLQ and its recent move tasks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RedriveStatus<T> {
    pub dead_letter_queue: String,
    pub tasks: Vec<T>,
}

/// The answer to a native `POST /admin/redrive` (202), and what `ferry redrive --json` prints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NativeStarted {
    /// Always [`Mode::Native`].
    pub mode: Mode,
    pub task_handle: String,
    /// The DLQ's ARN.
    pub source: String,
    /// The source queue's ARN.
    pub destination: String,
    /// Messages per second; `null`: SQS's own pace.
    pub rate: Option<i32>,
}

/// The answer to a selective `POST /admin/redrive`: the report's members, then `"mode": "selective"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SelectiveDone<R> {
    #[serde(flatten)]
    pub report: R,
    /// Always [`Mode::Selective`].
    pub mode: Mode,
}

impl<R> SelectiveDone<R> {
    pub fn new(report: R) -> SelectiveDone<R> {
        SelectiveDone { report, mode: Mode::Selective }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn filters_name_the_field_at_fault() {
        let f: FilterRequest =
            serde_json::from_value(json!({"kinds": ["provider_rejected"], "channels": ["sms"], "min_age": "1h"})).unwrap();
        let filter = f.to_filter().unwrap();
        assert_eq!(
            (filter.kinds, filter.channels, filter.min_age_secs),
            (vec![ErrorKind::ProviderRejected], vec![Channel::Sms], Some(3600))
        );
        let bad: FilterRequest = serde_json::from_value(json!({"channels": ["sms", "fax"]})).unwrap();
        assert_eq!(bad.to_filter().unwrap_err().field.as_deref(), Some("filter.channels[1]"));
        assert!(serde_json::from_value::<RedriveRequest>(json!({"filtr": {}})).is_err(), "unknown members are refused");
    }

    #[test]
    fn answers_read_as_they_always_did() {
        let native = NativeStarted { mode: Mode::Native, task_handle: "h".into(), source: "d".into(), destination: "s".into(), rate: None };
        assert_eq!(
            serde_json::to_value(&native).unwrap().to_string(),
            json!({"mode": "native", "task_handle": "h", "source": "d", "destination": "s", "rate": null}).to_string()
        );
        let report = json!({"dry_run": true, "moved": 0});
        let mut expect = report.clone();
        expect["mode"] = "selective".into();
        assert_eq!(serde_json::to_value(SelectiveDone::new(report)).unwrap().to_string(), expect.to_string());
        let status = RedriveStatus { dead_letter_queue: "d".into(), tasks: vec![json!({"status": "RUNNING"})] };
        assert_eq!(
            serde_json::to_value(&status).unwrap().to_string(),
            json!({"dead_letter_queue": "d", "tasks": [{"status": "RUNNING"}]}).to_string()
        );
    }
}
