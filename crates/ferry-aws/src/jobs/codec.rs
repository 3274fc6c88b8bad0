//! Job items <-> [`JobRecord`], the item keys, and the stored error values.

use std::collections::HashMap;

use ferry_core::jobs::{JobRecord, JobResult, ListCursor, Phase, Progress, Status, Transition, canonical_json};
use ferry_core::public::{ErrorCode, PublicError};

use crate::dynamo::{AttributeValue, Item, n, num, s, text};

pub(super) fn job_pk(id: &str) -> String {
    format!("JOB#{id}")
}

/// `:s0, :s1, ...` and their values for `#status IN (...)`.
pub(super) fn status_in(statuses: &[Status]) -> (String, Vec<(String, AttributeValue)>) {
    let names: Vec<String> = (0..statuses.len()).map(|i| format!(":s{i}")).collect();
    let values = names.iter().zip(statuses).map(|(k, st)| (k.clone(), s(st.as_str()))).collect();
    (format!("#status IN ({})", names.join(", ")), values)
}

/// What a write making transition `t` is conditional on and sets: `#status IN (...)` over the
/// statuses `t` may start from, with their values, and `:to` (the status it sets) and `:phase` (the
/// phase, if `t` sets one), both `t`'s own.
pub(super) fn transition(t: Transition) -> (String, Item) {
    let (cond, values) = status_in(t.allowed_from());
    let mut values: Item = values.into_iter().collect();
    values.insert(":to".to_owned(), s(t.target().as_str()));
    if let Some(phase) = t.phase() {
        values.insert(":phase".to_owned(), s(phase.as_str()));
    }
    (cond, values)
}

pub(super) fn to_item(r: &JobRecord) -> Item {
    let mut item = HashMap::from([
        ("pk".to_owned(), s(job_pk(&r.id))),
        ("id".to_owned(), s(&r.id)),
        ("owner".to_owned(), s(&r.owner)),
        ("created_key".to_owned(), s(ListCursor::sort_key(r.created_at, &r.id))),
        ("kind".to_owned(), s(&r.kind)),
        ("params".to_owned(), s(canonical_json(&r.params))),
        ("params_hash".to_owned(), s(&r.params_hash)),
        ("status".to_owned(), s(r.status.as_str())),
        ("attempt".to_owned(), n(r.attempt)),
        ("claimed".to_owned(), AttributeValue::Bool(false)),
        ("phase".to_owned(), s(r.progress.phase.as_str())),
        ("done".to_owned(), n(r.progress.done)),
        ("lease_expires_at".to_owned(), n(r.lease_expires_at)),
        ("created_at".to_owned(), n(r.created_at)),
        ("updated_at".to_owned(), n(r.updated_at)),
        ("retain_until".to_owned(), n(r.retain_until)),
        ("expires_at".to_owned(), n(r.retain_until / 1000)),
    ]);
    if let Some(t) = r.progress.total {
        item.insert("total".into(), n(t));
    }
    item
}

/// The longest stored error message.
const MAX_ERROR_CHARS: usize = 2000;

pub(super) fn error_value(e: &PublicError) -> AttributeValue {
    let mut m = HashMap::from([
        ("code".to_owned(), s(e.code.as_str())),
        ("message".to_owned(), s(e.message.chars().take(MAX_ERROR_CHARS).collect::<String>())),
    ]);
    if let Some(id) = &e.request_id {
        m.insert("request_id".into(), s(id));
    }
    AttributeValue::M(m)
}

/// A stored error. Items written before errors had codes hold free text that may name anything,
/// so they read as `internal` with its default message.
fn error_of(v: &AttributeValue) -> PublicError {
    let Ok(m) = v.as_m() else { return PublicError::code(ErrorCode::Internal) };
    let code = text(m, "code").and_then(|c| ErrorCode::parse(&c));
    let mut e = match (code, text(m, "message")) {
        (Some(code), Some(message)) => PublicError::new(code, message),
        _ => PublicError::code(ErrorCode::Internal),
    };
    e.request_id = text(m, "request_id");
    e
}

pub(super) fn from_item(item: &Item) -> Result<JobRecord, String> {
    let need = |name: &str| text(item, name).ok_or_else(|| format!("attribute {name} is missing or not a string"));
    let need_n = |name: &str| num(item, name).ok_or_else(|| format!("attribute {name} is missing or not a number"));
    let kind = need("kind")?;
    let status = need("status")?;
    let params: serde_json::Value = serde_json::from_str(&need("params")?).map_err(|e| format!("attribute params: {e}"))?;
    let result = match text(item, "result") {
        Some(r) => Some(serde_json::from_str::<JobResult>(&r).map_err(|e| format!("attribute result: {e}"))?),
        None => None,
    };
    Ok(JobRecord {
        id: need("id")?,
        owner: need("owner")?,
        kind,
        params,
        params_hash: need("params_hash")?,
        status: Status::parse(&status).filter(|s| *s != Status::Lost).ok_or_else(|| format!("attribute status: unknown {status:?}"))?,
        attempt: u32::try_from(need_n("attempt")?).map_err(|e| format!("attribute attempt: {e}"))?,
        progress: Progress {
            phase: text(item, "phase").map(Phase::from).unwrap_or_default(),
            done: num(item, "done").unwrap_or(0).max(0) as u64,
            total: num(item, "total").map(|t| t.max(0) as u64),
            counts: match text(item, "counts") {
                Some(c) => serde_json::from_str(&c).map_err(|e| format!("attribute counts: {e}"))?,
                None => Default::default(),
            },
        },
        lease_expires_at: need_n("lease_expires_at")?,
        result,
        error: item.get("error").map(error_of),
        created_at: need_n("created_at")?,
        updated_at: need_n("updated_at")?,
        retain_until: need_n("retain_until")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transition_writes_its_own_status_and_phase() {
        let check = |t: Transition, cond: &str, expect: &[(&str, &str)]| {
            let (c, values) = transition(t);
            assert_eq!(c, cond, "{t:?}");
            let expect: Item = expect.iter().map(|(k, v)| ((*k).to_owned(), s(*v))).collect();
            assert_eq!(values, expect, "{t:?}");
        };
        check(
            Transition::Claim,
            "#status IN (:s0, :s1)",
            &[(":s0", "queued"), (":s1", "running"), (":to", "running"), (":phase", "reading")],
        );
        check(Transition::Succeed, "#status IN (:s0)", &[(":s0", "running"), (":to", "succeeded"), (":phase", "done")]);
        check(Transition::Fail, "#status IN (:s0, :s1)", &[(":s0", "queued"), (":s1", "running"), (":to", "failed"), (":phase", "failed")]);
        check(
            Transition::Cancel,
            "#status IN (:s0, :s1)",
            &[(":s0", "queued"), (":s1", "running"), (":to", "cancelled"), (":phase", "cancelled")],
        );
        check(Transition::Heartbeat, "#status IN (:s0)", &[(":s0", "running"), (":to", "running")]);
    }

    #[test]
    fn stored_errors_round_trip_and_old_text_reads_as_internal() {
        let e = PublicError::new(ErrorCode::BadSourceData, "a.csv: line 3: not a number").with_request_id("r-1");
        assert_eq!(error_of(&error_value(&e)), e);
        let bare = PublicError::code(ErrorCode::SourceUnavailable);
        assert_eq!(error_of(&error_value(&bare)), bare);
        let long = PublicError::new(ErrorCode::Internal, "x".repeat(5000));
        assert_eq!(error_of(&error_value(&long)).message.len(), MAX_ERROR_CHARS);
        // An item from before error codes: its text may carry an SDK error, so it is not shown.
        let old = s("dynamodb table t: Scan failed: AccessDeniedException: User: arn:aws:sts::123456789012:assumed-role/x");
        assert_eq!(error_of(&old), PublicError::code(ErrorCode::Internal));
        let unknown = AttributeValue::M(HashMap::from([("code".into(), s("AccessDenied")), ("message".into(), s("arn:..."))]));
        assert_eq!(error_of(&unknown), PublicError::code(ErrorCode::Internal));
    }
}
