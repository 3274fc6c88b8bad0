//! The global merge: score = sum over locales of weight x normalised value, a key missing in a
//! locale contributing 0. Locales are combined in alphabetical order, so the result does not depend
//! on the order inputs arrive in.

use hashbrown::HashMap;

use crate::normalize::by_score_then_key;
use crate::tally::GlobalRow;

/// A merge that cannot be done.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MergeError {
    #[error("locale {0:?} is given more than once")]
    DuplicateLocale(String),
    #[error("weight of locale {locale:?} must be a finite number >= 0, got {weight}")]
    BadWeight { locale: String, weight: f64 },
}

/// One locale's normalised scores.
#[derive(Debug, Clone, Copy)]
pub struct LocaleScores<'a> {
    pub locale: &'a str,
    pub weight: f64,
    pub rows: &'a [(String, f64)],
}

/// The merged ranking with one contribution column per locale.
#[derive(Debug, Clone, PartialEq)]
pub struct Global {
    /// Alphabetical.
    pub locales: Vec<String>,
    /// Sorted by score descending, then key ascending.
    pub rows: Vec<GlobalRow>,
}

pub fn merge(inputs: &[LocaleScores<'_>]) -> Result<Global, MergeError> {
    let mut inputs: Vec<LocaleScores<'_>> = inputs.to_vec();
    inputs.sort_by(|a, b| a.locale.cmp(b.locale));
    for pair in inputs.windows(2) {
        if pair[0].locale == pair[1].locale {
            return Err(MergeError::DuplicateLocale(pair[0].locale.to_owned()));
        }
    }
    for input in &inputs {
        if !input.weight.is_finite() || input.weight < 0.0 {
            return Err(MergeError::BadWeight { locale: input.locale.to_owned(), weight: input.weight });
        }
    }
    let n = inputs.len();
    let capacity = inputs.iter().map(|i| i.rows.len()).max().unwrap_or(0);
    let mut index: HashMap<&str, usize> = HashMap::with_capacity(capacity);
    let mut keys: Vec<&str> = Vec::with_capacity(capacity);
    let mut contributions: Vec<f64> = Vec::with_capacity(capacity * n);
    for (col, input) in inputs.iter().enumerate() {
        for (kseq, score) in input.rows {
            let row = *index.entry(kseq.as_str()).or_insert_with(|| {
                keys.push(kseq.as_str());
                contributions.extend(std::iter::repeat_n(0.0, n));
                keys.len() - 1
            });
            contributions[row * n + col] += input.weight * score;
        }
    }
    let mut rows: Vec<GlobalRow> = keys
        .iter()
        .enumerate()
        .map(|(row, kseq)| {
            let parts = contributions[row * n..(row + 1) * n].to_vec();
            // Summed in locale order, so every input order gives the same bits.
            let score = parts.iter().fold(0.0, |acc, c| acc + c);
            GlobalRow { kseq: (*kseq).to_owned(), score, contributions: parts }
        })
        .collect();
    rows.sort_unstable_by(|a, b| by_score_then_key(a.score, &a.kseq, b.score, &b.kseq));
    Ok(Global { locales: inputs.iter().map(|i| i.locale.to_owned()).collect(), rows })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rows(pairs: &[(&str, f64)]) -> Vec<(String, f64)> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
    }

    #[test]
    fn weighted_sum_with_missing_keys() {
        let jp = rows(&[("a", 0.5), ("b", 0.5)]);
        let kr = rows(&[("b", 0.25), ("c", 0.75)]);
        let g = merge(&[
            LocaleScores { locale: "kr", weight: 2.0, rows: &kr },
            LocaleScores { locale: "jp", weight: 1.0, rows: &jp },
        ])
        .unwrap();
        assert_eq!(g.locales, ["jp", "kr"]);
        let got: Vec<(&str, f64, Vec<f64>)> =
            g.rows.iter().map(|r| (r.kseq.as_str(), r.score, r.contributions.clone())).collect();
        assert_eq!(
            got,
            vec![("c", 1.5, vec![0.0, 1.5]), ("b", 1.0, vec![0.5, 0.5]), ("a", 0.5, vec![0.5, 0.0])]
        );
    }

    #[test]
    fn ties_break_by_key() {
        let jp = rows(&[("z", 1.0), ("m", 1.0), ("a", 1.0)]);
        let g = merge(&[LocaleScores { locale: "jp", weight: 1.0, rows: &jp }]).unwrap();
        let keys: Vec<&str> = g.rows.iter().map(|r| r.kseq.as_str()).collect();
        assert_eq!(keys, ["a", "m", "z"]);
    }

    #[test]
    fn rejects_duplicate_locale_and_bad_weight() {
        let r = rows(&[("a", 1.0)]);
        let jp = LocaleScores { locale: "jp", weight: 1.0, rows: &r };
        assert_eq!(merge(&[jp, jp]), Err(MergeError::DuplicateLocale("jp".into())));
        let bad = LocaleScores { locale: "kr", weight: -1.0, rows: &r };
        assert!(matches!(merge(&[jp, bad]), Err(MergeError::BadWeight { .. })));
        assert_eq!(merge(&[]).unwrap().rows, vec![]);
    }

    fn locale_rows() -> impl Strategy<Value = Vec<(String, f64)>> {
        prop::collection::hash_map("[a-e]{1,2}", -3.0f64..3.0, 0..20).prop_map(|m| m.into_iter().collect())
    }

    proptest! {
        #[test]
        fn independent_of_input_order(a in locale_rows(), b in locale_rows(), c in locale_rows(), wa in 0.0f64..5.0) {
            let la = LocaleScores { locale: "jp", weight: wa, rows: &a };
            let lb = LocaleScores { locale: "kr", weight: 1.0, rows: &b };
            let lc = LocaleScores { locale: "na", weight: 0.5, rows: &c };
            let one = merge(&[la, lb, lc]).unwrap();
            let two = merge(&[lc, la, lb]).unwrap();
            prop_assert_eq!(one, two);
        }

        #[test]
        fn score_is_sum_of_contributions(a in locale_rows(), b in locale_rows()) {
            let g = merge(&[
                LocaleScores { locale: "jp", weight: 1.5, rows: &a },
                LocaleScores { locale: "tw", weight: 1.0, rows: &b },
            ]).unwrap();
            for r in &g.rows {
                let expect_jp = a.iter().find(|(k, _)| *k == r.kseq).map_or(0.0, |(_, v)| 1.5 * v);
                prop_assert_eq!(r.contributions[0], expect_jp);
                prop_assert!((r.score - r.contributions.iter().sum::<f64>()).abs() < 1e-12);
            }
            for w in g.rows.windows(2) {
                prop_assert!(by_score_then_key(w[0].score, &w[0].kseq, w[1].score, &w[1].kseq).is_lt());
            }
        }
    }
}
