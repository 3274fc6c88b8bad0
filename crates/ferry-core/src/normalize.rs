//! Per-locale normalisation, so that a region's size or taste does not decide the global ranking.
//!
//! Every method maps finite inputs to finite outputs; degenerate inputs (all equal, all zero, empty)
//! have a defined answer instead of a division by zero.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use rayon::slice::ParallelSliceMut;

use crate::csv::NormRow;
use crate::tally::{Head, Tally};

/// How one locale's summed scores are made comparable with another's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// `v / sum` (sum 0: all 0). Each locale's shares add up to 1.
    #[default]
    Share,
    /// `(v - min) / (max - min)` (max = min: all 1).
    Minmax,
    /// `(v - mean) / population std` (std 0: all 0).
    Zscore,
    /// `(n - r + 1) / n`, `r` the average rank by score descending (ties share it).
    Rank,
}

impl Method {
    pub const ALL: [Method; 4] = [Method::Share, Method::Minmax, Method::Zscore, Method::Rank];

    pub fn as_str(self) -> &'static str {
        match self {
            Method::Share => "share",
            Method::Minmax => "minmax",
            Method::Zscore => "zscore",
            Method::Rank => "rank",
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Method {
    type Err = String;
    fn from_str(s: &str) -> Result<Method, String> {
        Method::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| format!("unknown method {s:?}: expected one of share, minmax, zscore, rank"))
    }
}

/// Normalises `values` with `method`. Inputs must be finite; outputs always are.
pub fn normalize_values(method: Method, values: &[f64]) -> Vec<f64> {
    let mut out = values.to_vec();
    normalize_in_place(method, &mut out);
    out
}

/// [`normalize_values`] over the values themselves: no second copy of a million numbers.
pub fn normalize_in_place(method: Method, values: &mut [f64]) {
    if values.is_empty() {
        return;
    }
    // Every method is scale-invariant, so huge inputs are scaled down first: sums and spreads of
    // values near f64::MAX would otherwise overflow to infinity.
    let max = values.iter().fold(0.0_f64, |m, v| m.max(v.abs()));
    if max > 1e150 {
        values.iter_mut().for_each(|v| *v /= max);
    }
    let n = values.len() as f64;
    match method {
        Method::Share => {
            let sum: f64 = values.iter().sum();
            values.iter_mut().for_each(|v| *v = if sum == 0.0 { 0.0 } else { *v / sum });
        }
        Method::Minmax => {
            let (min, max) = values.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)));
            let span = max - min;
            values.iter_mut().for_each(|v| *v = if span == 0.0 { 1.0 } else { (*v - min) / span });
        }
        Method::Zscore => {
            let mean = values.iter().sum::<f64>() / n;
            let var = values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
            let std = var.sqrt();
            // A spread lost to rounding (all values equal but for the last bit) counts as none.
            let none = std <= f64::EPSILON * mean.abs() || std == 0.0;
            values.iter_mut().for_each(|v| *v = if none { 0.0 } else { (*v - mean) / std });
        }
        Method::Rank => {
            let mut order: Vec<usize> = (0..values.len()).collect();
            order.sort_unstable_by(|&a, &b| values[b].total_cmp(&values[a]));
            let mut out = vec![0.0; values.len()];
            let mut start = 0;
            while start < order.len() {
                let mut end = start + 1;
                while end < order.len() && values[order[end]] == values[order[start]] {
                    end += 1;
                }
                // Ranks start..end (1-based: start+1 ..= end) share their average.
                let avg_rank = (start + 1 + end) as f64 / 2.0;
                for &i in &order[start..end] {
                    out[i] = (n - avg_rank + 1.0) / n;
                }
                start = end;
            }
            values.copy_from_slice(&out);
        }
    }
    debug_assert!(values.iter().all(|v| v.is_finite()));
}

/// Normalises a tally into a locale result, sorted by score descending, then key ascending.
pub fn normalize(method: Method, tally: &Tally) -> Vec<NormRow> {
    let scores = normalize_values(method, tally.values());
    let mut rows: Vec<NormRow> =
        tally.iter().zip(scores).map(|((kseq, raw), score)| NormRow { kseq: kseq.to_owned(), score, raw }).collect();
    rows.sort_unstable_by(|a, b| by_score_then_key(a.score, &a.kseq, b.score, &b.kseq));
    rows
}

/// The locale result of a tally as CSV: the bytes [`crate::csv::write_locale_result`] writes for
/// [`normalize`]'s rows, without copying a key into a row of its own. What the normalizer runs; its
/// peak memory is budgeted in [`crate::budget::NORMALIZE_PEAK_FACTOR`].
pub fn locale_result(method: Method, tally: &Tally) -> Vec<u8> {
    // Sorted by key, then stably by score: the one result order, with sort entries of at most 24
    // bytes a key. Keys compare by their first sixteen bytes, the rest read only where those tie;
    // keys are distinct, so a parallel unstable sort gives the one order.
    let mut by_key: Vec<(Head, u32)> = (0..tally.len()).map(|i| (Head::of(tally.key_bytes(i)), i as u32)).collect();
    let key = |i: u32| tally.key_bytes(i as usize);
    by_key.par_sort_unstable_by(|a, b| a.0.cmp_keys(&b.0).unwrap_or_else(|| key(a.1).cmp(key(b.1))));
    let scores = normalize_values(method, tally.values());
    let mut order: Vec<(f64, u32)> = by_key.iter().map(|&(_, i)| (scores[i as usize], i)).collect();
    drop((by_key, scores));
    order.par_sort_by(|a, b| b.0.total_cmp(&a.0));
    crate::csv::locale_rows_csv(
        order.len(),
        order.chunks(256).flat_map(|rows| {
            // Rows in score order sit anywhere in the tally: touched first, in a loop of nothing
            // else, their cache misses overlap instead of waiting in turn.
            for &(_, i) in rows {
                std::hint::black_box((key(i).first().copied(), tally.value(i as usize)));
            }
            rows.iter().map(|&(score, i)| (tally.key(i as usize), score, tally.value(i as usize)))
        }),
    )
}

/// The tally's normalised scores, in the tally's order, keeping its keys where they are: what the
/// merge needs, without a locale result's sort and raw column.
pub fn normalize_tally(method: Method, mut tally: Tally) -> Tally {
    normalize_in_place(method, tally.values_mut());
    tally
}

/// The one result order: score descending, then key ascending.
pub fn by_score_then_key(sa: f64, ka: &str, sb: f64, kb: &str) -> Ordering {
    sb.total_cmp(&sa).then_with(|| ka.cmp(kb))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[track_caller]
    fn check(method: Method, input: &[f64], expect: &[f64]) {
        let got = normalize_values(method, input);
        assert_eq!(got.len(), expect.len());
        for (g, e) in got.iter().zip(expect) {
            assert!((g - e).abs() < 1e-12, "{method} {input:?}: got {got:?}, expected {expect:?}");
        }
    }

    /// Keys that tie past their first sixteen bytes, and keys longer than a head's length counts,
    /// sort into the result as the reference order sorts them.
    #[test]
    fn locale_result_orders_keys_past_their_head() {
        let keys = crate::tally::keys_past_their_head();
        let tally: Tally = keys.iter().map(|k| (k.as_str(), 1.0)).collect();
        for m in Method::ALL {
            assert_eq!(locale_result(m, &tally), crate::csv::write_locale_result(&normalize(m, &tally)), "{m}");
        }
    }

    #[test]
    fn share() {
        check(Method::Share, &[1.0, 3.0], &[0.25, 0.75]);
        check(Method::Share, &[2.0, 2.0, 4.0], &[0.25, 0.25, 0.5]);
        check(Method::Share, &[0.0, 0.0], &[0.0, 0.0]);
        check(Method::Share, &[7.0], &[1.0]);
        check(Method::Share, &[], &[]);
    }

    #[test]
    fn minmax() {
        check(Method::Minmax, &[1.0, 3.0, 2.0], &[0.0, 1.0, 0.5]);
        check(Method::Minmax, &[5.0, 5.0], &[1.0, 1.0]);
        check(Method::Minmax, &[5.0], &[1.0]);
        check(Method::Minmax, &[0.0, 10.0, 2.5], &[0.0, 1.0, 0.25]);
    }

    #[test]
    fn zscore() {
        // mean 5, population std 2
        check(Method::Zscore, &[2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0], &[-1.5, -0.5, -0.5, -0.5, 0.0, 0.0, 1.0, 2.0]);
        check(Method::Zscore, &[3.0, 3.0, 3.0], &[0.0, 0.0, 0.0]);
        check(Method::Zscore, &[3.0], &[0.0]);
        check(Method::Zscore, &[0.1, 0.1, 0.1], &[0.0, 0.0, 0.0]);
    }

    #[test]
    fn rank_with_ties() {
        // Descending: 30 (r=1), 20,20 (r=2.5), 10 (r=4); n=4 -> (4-r+1)/4
        check(Method::Rank, &[10.0, 20.0, 30.0, 20.0], &[0.25, 0.625, 1.0, 0.625]);
        check(Method::Rank, &[1.0, 1.0, 1.0], &[2.0 / 3.0, 2.0 / 3.0, 2.0 / 3.0]);
        check(Method::Rank, &[4.0], &[1.0]);
    }

    #[test]
    fn huge_values_stay_finite() {
        let big = [f64::MAX, f64::MAX / 2.0, 0.0];
        for m in Method::ALL {
            assert!(normalize_values(m, &big).iter().all(|v| v.is_finite()), "{m}");
        }
        check(Method::Share, &[f64::MAX / 2.0, f64::MAX / 2.0], &[0.5, 0.5]);
    }

    #[test]
    fn rows_sort_by_score_then_key() {
        let tally: Tally = [("b", 1.0), ("c", 3.0), ("a", 1.0)].into_iter().collect();
        let unsorted = normalize_tally(Method::Share, tally.clone());
        assert_eq!(unsorted.iter().collect::<Vec<_>>(), vec![("b", 0.2), ("c", 0.6), ("a", 0.2)]);
        let rows = normalize(Method::Share, &tally);
        let keys: Vec<&str> = rows.iter().map(|r| r.kseq.as_str()).collect();
        assert_eq!(keys, ["c", "a", "b"]);
        assert_eq!(rows[0].raw, 3.0);
        assert!((rows[0].score - 0.6).abs() < 1e-12);
    }

    #[test]
    fn method_names() {
        for m in Method::ALL {
            assert_eq!(m.as_str().parse::<Method>(), Ok(m));
        }
        assert!("Share".parse::<Method>().unwrap_err().contains("expected one of"));
    }

    proptest! {
        #[test]
        fn locale_result_writes_what_normalize_writes(pairs in prop::collection::vec(("[a-c,\"]{1,3}", prop_oneof![0.0f64..1e3, Just(1.0), Just(0.0)]), 0..60)) {
            let tally: Tally = pairs.into_iter().collect();
            for m in Method::ALL {
                prop_assert_eq!(locale_result(m, &tally), crate::csv::write_locale_result(&normalize(m, &tally)));
            }
        }

        #[test]
        fn share_sums_to_one(values in prop::collection::vec(0.0f64..1e12, 1..200)) {
            let out = normalize_values(Method::Share, &values);
            let sum: f64 = out.iter().sum();
            if values.iter().sum::<f64>() > 0.0 {
                prop_assert!((sum - 1.0).abs() < 1e-9, "sum {}", sum);
            } else {
                prop_assert_eq!(sum, 0.0);
            }
        }

        #[test]
        fn every_method_is_finite_and_bounded(values in prop::collection::vec(prop_oneof![0.0f64..1e6, 0.0f64..f64::MAX, Just(0.0)], 0..100)) {
            for m in Method::ALL {
                let out = normalize_values(m, &values);
                prop_assert_eq!(out.len(), values.len());
                for v in &out {
                    prop_assert!(v.is_finite());
                    if m != Method::Zscore {
                        prop_assert!((0.0..=1.0 + 1e-12).contains(v), "{} gave {}", m, v);
                    }
                }
            }
        }

        #[test]
        fn order_preserving(values in prop::collection::vec(0.0f64..1e9, 1..100)) {
            for m in Method::ALL {
                let out = normalize_values(m, &values);
                for i in 0..values.len() {
                    for j in 0..values.len() {
                        if values[i] < values[j] {
                            prop_assert!(out[i] <= out[j], "{} not monotone", m);
                        }
                    }
                }
            }
        }
    }
}
