//! How one call ended and what follows: [`classify`] (succeeded, retry or failed), [`retry_delay`]
//! (full-jitter backoff, never below a `Retry-After` read by [`parse_retry_after`]), and
//! [`Tolerance`]: when the whole batch gives up.

use std::time::Duration;

use super::{BACKOFF_BASE_MS, BACKOFF_CAP_MS, MAX_RETRY_AFTER_MS};

/// How one call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallOutcome {
    /// A response with this status.
    Status(u16),
    /// No response within the timeout.
    Timeout,
    /// No response: connection, TLS or protocol failure.
    Transport,
}

/// What to do about a call's items.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Succeeded,
    Retry,
    Failed,
}

/// 2xx succeeded; 408, 425, 429, 500..=599, Timeout, Transport retry; every other status failed (permanent).
pub fn classify(o: CallOutcome) -> Verdict {
    match o {
        CallOutcome::Status(200..=299) => Verdict::Succeeded,
        CallOutcome::Status(408 | 425 | 429 | 500..=599) | CallOutcome::Timeout | CallOutcome::Transport => Verdict::Retry,
        CallOutcome::Status(_) => Verdict::Failed,
    }
}

/// How long to wait before try `tries + 1` after `tries` tries: full jitter, `jitter` in [0,1) times
/// min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2^(tries-1)), but never less than `retry_after` (capped at
/// MAX_RETRY_AFTER_MS).
pub fn retry_delay(tries: u32, retry_after: Option<Duration>, jitter: f64) -> Duration {
    // Past 2^20 the ceiling is the cap anyway; the bound keeps the shift in range.
    let doublings = tries.saturating_sub(1).min(20);
    let ceiling = BACKOFF_BASE_MS.saturating_mul(1 << doublings).min(BACKOFF_CAP_MS);
    let jitter = if jitter.is_finite() { jitter.clamp(0.0, 1.0) } else { 0.0 };
    // Truncation, not rounding: jitter below 1 must stay below the ceiling.
    let backoff = Duration::from_micros((jitter * (ceiling * 1_000) as f64) as u64);
    let floor = retry_after.unwrap_or(Duration::ZERO).min(Duration::from_millis(MAX_RETRY_AFTER_MS));
    backoff.max(floor)
}

/// A Retry-After header: delay-seconds or an HTTP-date (IMF-fixdate, e.g. "Wed, 21 Oct 2015
/// 07:28:00 GMT") relative to `now_ms`; None when unparseable; a date in the past is zero.
pub fn parse_retry_after(header: &str, now_ms: i64) -> Option<Duration> {
    let header = header.trim();
    if !header.is_empty() && header.bytes().all(|b| b.is_ascii_digit()) {
        // All digits: only overflow can fail, and a delay that long is "as long as allowed".
        return Some(Duration::from_secs(header.parse().unwrap_or(u64::MAX)));
    }
    let format = time::macros::format_description!("[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT");
    let at = time::PrimitiveDateTime::parse(header, format).ok()?.assume_utc();
    let at_ms = at.unix_timestamp_nanos() / 1_000_000;
    let wait_ms = at_ms - i128::from(now_ms);
    Some(Duration::from_millis(u64::try_from(wait_ms).unwrap_or(if wait_ms < 0 { 0 } else { u64::MAX })))
}

/// When a batch fails early (Step Functions' ToleratedFailureCount/Percentage semantics).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tolerance {
    pub count: Option<u64>,
    pub percent: Option<f64>,
}

impl Tolerance {
    /// Whether `failed` failures out of `total` items exceed what is tolerated: failed > count, or
    /// failed*100 > percent*total (either threshold suffices). Neither set: any failure exceeds.
    pub fn exceeded(&self, failed: u64, total: u64) -> bool {
        if self.count.is_none() && self.percent.is_none() {
            return failed > 0;
        }
        // A NaN percent compares false with everything: read it as 0, not as "tolerate all".
        let percent = self.percent.map(|p| if p.is_nan() { 0.0 } else { p });
        self.count.is_some_and(|c| failed > c) || percent.is_some_and(|p| failed as f64 * 100.0 > p * total as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_table() {
        use CallOutcome::*;
        let table = [
            (Status(200), Verdict::Succeeded),
            (Status(201), Verdict::Succeeded),
            (Status(204), Verdict::Succeeded),
            (Status(299), Verdict::Succeeded),
            (Status(100), Verdict::Failed),
            (Status(301), Verdict::Failed),
            (Status(400), Verdict::Failed),
            (Status(401), Verdict::Failed),
            (Status(404), Verdict::Failed),
            (Status(408), Verdict::Retry),
            (Status(409), Verdict::Failed),
            (Status(422), Verdict::Failed),
            (Status(425), Verdict::Retry),
            (Status(429), Verdict::Retry),
            (Status(500), Verdict::Retry),
            (Status(503), Verdict::Retry),
            (Status(599), Verdict::Retry),
            (Status(600), Verdict::Failed),
            (Timeout, Verdict::Retry),
            (Transport, Verdict::Retry),
        ];
        for (outcome, verdict) in table {
            assert_eq!(classify(outcome), verdict, "{outcome:?}");
        }
    }

    #[test]
    fn retry_delay_bounds() {
        let ms = Duration::from_millis;
        assert_eq!(retry_delay(1, None, 0.0), Duration::ZERO);
        assert_eq!(retry_delay(1, Some(ms(1_500)), 0.0), ms(1_500));
        assert_eq!(retry_delay(1, None, 0.5), ms(100));
        assert_eq!(retry_delay(2, None, 0.5), ms(200));
        assert_eq!(retry_delay(3, None, 0.5), ms(400));
        assert_eq!(retry_delay(4, None, 0.5), ms(800));
        // The ceiling stops at the cap, however many tries.
        assert_eq!(retry_delay(20, None, 0.5), ms(10_000));
        assert_eq!(retry_delay(u32::MAX, None, 0.5), ms(10_000));
        let near = retry_delay(30, None, 0.999);
        assert!(near >= ms(19_900) && near < ms(BACKOFF_CAP_MS), "{near:?}");
        assert!(retry_delay(1, None, 0.999) < ms(BACKOFF_BASE_MS));
        // Never below Retry-After, which is capped.
        assert_eq!(retry_delay(5, Some(ms(100)), 0.5), ms(1_600));
        assert_eq!(retry_delay(1, Some(ms(5_000)), 0.999), ms(5_000));
        assert_eq!(retry_delay(1, Some(Duration::from_secs(3_600)), 0.1), ms(MAX_RETRY_AFTER_MS));
        // Out-of-range jitter cannot go past the ceiling or below zero.
        assert_eq!(retry_delay(1, None, 7.0), ms(200));
        assert_eq!(retry_delay(1, None, -1.0), Duration::ZERO);
        assert_eq!(retry_delay(1, None, f64::NAN), Duration::ZERO);
        assert_eq!(retry_delay(0, None, 0.5), ms(100));
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        // 2015-10-21T07:28:00Z
        let at = 1_445_412_480_000i64;
        assert_eq!(parse_retry_after("120", at), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after(" 0 ", at), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("99999999999999999999999", at), Some(Duration::from_secs(u64::MAX)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", at), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", at), Some(Duration::from_secs(30)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", at + 250), Some(Duration::from_millis(29_750)));
        assert_eq!(parse_retry_after("Tue, 20 Oct 2015 07:28:00 GMT", at), Some(Duration::ZERO), "the past is zero");
        for garbage in ["", "soon", "-5", "1.5", "Wed, 21 Oct 2015 07:28:00", "21 Oct 2015 07:28:00 GMT", "Wed, 32 Oct 2015 07:28:00 GMT"] {
            assert_eq!(parse_retry_after(garbage, at), None, "{garbage:?}");
        }
    }

    #[test]
    fn tolerance_cases() {
        let t = |count, percent| Tolerance { count, percent };
        assert!(!t(Some(0), None).exceeded(0, 10));
        assert!(t(Some(0), None).exceeded(1, 10));
        assert!(!t(Some(2), None).exceeded(2, 10));
        assert!(t(Some(2), None).exceeded(3, 10));
        assert!(!t(None, Some(10.0)).exceeded(1, 10));
        assert!(t(None, Some(10.0)).exceeded(2, 10));
        assert!(!t(None, Some(100.0)).exceeded(10, 10));
        assert!(t(None, Some(0.0)).exceeded(1, 1_000_000));
        // Either threshold suffices.
        assert!(t(Some(5), Some(10.0)).exceeded(2, 10));
        assert!(t(Some(1), Some(50.0)).exceeded(2, 10));
        assert!(!t(Some(5), Some(50.0)).exceeded(2, 10));
        // NaN cannot come from JSON; made in code, it tolerates nothing rather than everything.
        assert!(!t(None, Some(f64::NAN)).exceeded(0, 10));
        assert!(t(None, Some(f64::NAN)).exceeded(1, 10));
        // Neither set: nothing is tolerated.
        assert!(!t(None, None).exceeded(0, 10));
        assert!(t(None, None).exceeded(1, 10));
    }
}
