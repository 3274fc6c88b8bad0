//! Rankings as a region's Redis holds them: a sorted set of `kseq` members scored by votes.
//!
//! - [`TallyBuilder`] turns pages of a sorted set (as `ZSCAN` returns them) into a [`Tally`], which
//!   [`crate::csv::write_tally`] writes as a regional upload.
//! - [`read_global`] reads the global result into `(kseq, score)` pairs through the CSV contract,
//!   refusing anything that should not replace a live ranking.
//! - [`top_n`], [`top_changes`] and [`summary_text`] say how the top of a ranking moved since the last.

use std::fmt::Write as _;

use hashbrown::HashMap;

use crate::csv::{self, TallyError};
use crate::normalize::by_score_then_key;
use crate::tally::Tally;

/// Why a ranking cannot be carried. Names the sorted set or file, and the member or line at fault.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RankingError {
    /// A member of a sorted set that the regional CSV contract cannot carry.
    #[error("sorted set {set}: member {member:?}: {fault}")]
    BadMember { set: String, member: String, fault: MemberFault },
    /// The global result is not a valid `kseq,score,...` file.
    #[error(transparent)]
    Global(#[from] TallyError),
    /// The global result has a header but no rows: loading it would empty the live ranking.
    #[error("{source_name}: the global result has no rows")]
    EmptyGlobal { source_name: String },
}

/// What is wrong with one member of a sorted set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MemberFault {
    #[error("the member is empty")]
    Empty,
    #[error("the member is not valid UTF-8")]
    NotUtf8,
    #[error("the score {0:?} is not a number")]
    NotANumber(String),
    #[error("the score {0:?} is not finite")]
    NotFinite(String),
    #[error("the score {0:?} is negative")]
    Negative(String),
}

/// Collects the pages of one sorted set into a tally.
///
/// `ZSCAN` returns every member present for the whole scan at least once, but may return one twice,
/// so a member seen again replaces its earlier score instead of adding to it.
#[derive(Debug, Default)]
pub struct TallyBuilder {
    index: HashMap<String, usize>,
    rows: Vec<(String, f64)>,
}

impl TallyBuilder {
    pub fn with_capacity(members: usize) -> TallyBuilder {
        TallyBuilder { index: HashMap::with_capacity(members), rows: Vec::with_capacity(members) }
    }

    /// Adds one page of `(member, score)` as Redis sends them (bytes; scores as Redis prints them,
    /// `inf` included). `set` names the sorted set in errors.
    pub fn add_page<M: AsRef<[u8]>, S: AsRef<[u8]>>(&mut self, set: &str, page: &[(M, S)]) -> Result<(), RankingError> {
        for (member, score) in page {
            let (kseq, score) = tally_row(set, member.as_ref(), score.as_ref())?;
            match self.index.get(&kseq) {
                Some(&i) => self.rows[i].1 = score,
                None => {
                    self.index.insert(kseq.clone(), self.rows.len());
                    self.rows.push((kseq, score));
                }
            }
        }
        Ok(())
    }

    /// Distinct members so far.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The tally, sorted by score descending, then key ascending, so the same set always gives the
    /// same bytes whatever order the pages came in.
    pub fn finish(self) -> Tally {
        let mut rows = self.rows;
        rows.sort_unstable_by(|a, b| by_score_then_key(a.1, &a.0, b.1, &b.0));
        rows.into_iter().collect()
    }
}

/// One member of a sorted set as a tally row, if the regional contract can carry it.
fn tally_row(set: &str, member: &[u8], score: &[u8]) -> Result<(String, f64), RankingError> {
    let fail = |fault| RankingError::BadMember { set: set.to_owned(), member: String::from_utf8_lossy(member).into_owned(), fault };
    let kseq = std::str::from_utf8(member).map_err(|_| fail(MemberFault::NotUtf8))?;
    if kseq.is_empty() {
        return Err(fail(MemberFault::Empty));
    }
    let text = String::from_utf8_lossy(score);
    let value: f64 = text.trim().parse().map_err(|_| fail(MemberFault::NotANumber(text.to_string())))?;
    if !value.is_finite() {
        return Err(fail(MemberFault::NotFinite(text.to_string())));
    }
    if value < 0.0 {
        return Err(fail(MemberFault::Negative(text.to_string())));
    }
    // -0 is a valid zero; store it as +0 so it never prints as "-0".
    Ok((kseq.to_owned(), value + 0.0))
}

/// Reads the global result (`kseq,score,{locale}...`) as `(kseq, score)` pairs in file order.
/// Keys must be unique and scores finite (they may be negative: z-scores are). A file without rows
/// is refused, since loading it would empty the live ranking.
pub fn read_global(source_name: &str, bytes: &[u8]) -> Result<Vec<(String, f64)>, RankingError> {
    let rows = csv::read_global_scores(source_name, bytes)?;
    if rows.is_empty() {
        return Err(RankingError::EmptyGlobal { source_name: source_name.to_owned() });
    }
    Ok(rows)
}

/// The first `n` rows in ranking order (score descending, then key ascending).
pub fn top_n(rows: &[(String, f64)], n: usize) -> Vec<(String, f64)> {
    let order = |a: &(String, f64), b: &(String, f64)| by_score_then_key(a.1, &a.0, b.1, &b.0);
    let mut top: Vec<(String, f64)> = if rows.len() > n && n > 0 {
        // Only the top is sorted: a full sort of a million rows for ten lines is waste.
        let mut refs: Vec<&(String, f64)> = rows.iter().collect();
        refs.select_nth_unstable_by(n - 1, |a, b| order(a, b));
        refs.truncate(n);
        refs.into_iter().cloned().collect()
    } else {
        rows.iter().take(n).cloned().collect()
    };
    top.sort_unstable_by(order);
    top
}

/// How a member's place in the top moved since the last ranking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Movement {
    /// Not in the last top.
    New,
    Up(usize),
    Down(usize),
    Same,
}

/// One line of the new top.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// 1-based.
    pub rank: usize,
    pub kseq: String,
    pub score: f64,
    pub movement: Movement,
}

/// The new top against the last one.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TopChanges {
    pub top: Vec<Change>,
    /// Members of the last top that are not in the new one, with their last 1-based rank.
    pub left: Vec<(String, usize)>,
}

impl TopChanges {
    /// True when the top is the same members in the same places.
    pub fn is_unchanged(&self) -> bool {
        self.left.is_empty() && self.top.iter().all(|c| c.movement == Movement::Same)
    }
}

/// Compares two tops, each in ranking order (as [`top_n`] gives them).
pub fn top_changes(last: &[(String, f64)], next: &[(String, f64)]) -> TopChanges {
    let last_rank: HashMap<&str, usize> = last.iter().enumerate().map(|(i, (k, _))| (k.as_str(), i + 1)).collect();
    let top = next
        .iter()
        .enumerate()
        .map(|(i, (kseq, score))| {
            let rank = i + 1;
            let movement = match last_rank.get(kseq.as_str()) {
                None => Movement::New,
                Some(&was) if was > rank => Movement::Up(was - rank),
                Some(&was) if was < rank => Movement::Down(rank - was),
                Some(_) => Movement::Same,
            };
            Change { rank, kseq: kseq.clone(), score: *score, movement }
        })
        .collect();
    let next_keys: hashbrown::HashSet<&str> = next.iter().map(|(k, _)| k.as_str()).collect();
    let left =
        last.iter().enumerate().filter(|(_, (k, _))| !next_keys.contains(k.as_str())).map(|(i, (k, _))| (k.clone(), i + 1)).collect();
    TopChanges { top, left }
}

/// `text` made inert for a Slack-compatible chat: it cannot mention anyone (`<!channel>`, `<@U..>`,
/// `@here`), link, or break out of code formatting, and stays on one line. Keys come from whoever
/// wrote the sorted set or the upload, so every key and error text goes through this before a post.
pub fn chat_inert(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            // Slack's own escapes: `<...>` is its syntax for mentions and links.
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            // A backtick could close the code block; the look-alike modifier letter cannot.
            '`' => out.push('\u{02CB}'),
            // `@here` without link parsing is plain text, but a word joiner keeps it so even where
            // a workspace turns link names on.
            '@' => out.push_str("@\u{2060}"),
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// The chat text for a newly loaded ranking: a headline, then the top with its movements. Keys are
/// passed through [`chat_inert`]; the headline is the caller's and is written as given.
pub fn summary_text(headline: &str, changes: &TopChanges) -> String {
    let mut out = String::from(headline);
    if changes.top.is_empty() {
        return out;
    }
    out.push_str(if changes.is_unchanged() { "\nTop unchanged:\n```\n" } else { "\n```\n" });
    let keys: Vec<String> = changes.top.iter().map(|c| chat_inert(&c.kseq)).collect();
    let width = keys.iter().map(|k| k.chars().count()).max().unwrap_or(0);
    for (c, kseq) in changes.top.iter().zip(&keys) {
        let movement = match c.movement {
            Movement::New => "new".to_owned(),
            Movement::Up(n) => format!("▲{n}"),
            Movement::Down(n) => format!("▼{n}"),
            Movement::Same => "-".to_owned(),
        };
        let _ = writeln!(out, "{:>3}. {:<width$}  {:>12.6}  {movement}", c.rank, kseq, c.score);
    }
    out.push_str("```");
    if !changes.left.is_empty() {
        let left: Vec<String> = changes.left.iter().map(|(k, was)| format!("{} (was {was})", chat_inert(k))).collect();
        let _ = write!(out, "\nLeft the top {}: {}", changes.top.len(), left.join(", "));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::csv::TallyErrorKind;

    fn pairs(rows: &[(&str, f64)]) -> Vec<(String, f64)> {
        rows.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
    }

    #[track_caller]
    fn check_member(member: &[u8], score: &str, expect: Result<(&str, f64), &str>) {
        let got = tally_row("rank:1", member, score.as_bytes());
        match (got, expect) {
            (Ok(row), Ok((k, v))) => assert_eq!(row, (k.to_owned(), v)),
            (Err(e), Err(text)) => {
                let e = e.to_string();
                assert!(e.starts_with("sorted set rank:1: member "), "{e}");
                assert!(e.contains(text), "{e:?} does not say {text:?}");
            }
            (got, expect) => panic!("{member:?} {score:?}: got {got:?}, expected {expect:?}"),
        }
    }

    #[test]
    fn members_the_contract_can_carry() {
        check_member(b"(1,2,3)", "3", Ok(("(1,2,3)", 3.0)));
        check_member(b"a\"b", "1.5", Ok(("a\"b", 1.5)));
        check_member(b"z", "-0", Ok(("z", 0.0)));
        check_member(b"z", "1e3", Ok(("z", 1000.0)));
        check_member(b"", "1", Err("the member is empty"));
        check_member(b"\xff", "1", Err("not valid UTF-8"));
        check_member(b"a", "inf", Err("\"inf\" is not finite"));
        check_member(b"a", "-inf", Err("not finite"));
        check_member(b"a", "-2", Err("\"-2\" is negative"));
        check_member(b"a", "x", Err("\"x\" is not a number"));
    }

    #[test]
    fn pages_become_one_sorted_tally_and_repeats_replace() {
        let mut b = TallyBuilder::default();
        b.add_page("s", &[("b", "2"), ("a", "2"), ("c", "9")]).unwrap();
        // ZSCAN may hand a member out twice; the later score wins, it is not added.
        b.add_page("s", &[("b", "3"), ("d", "0")]).unwrap();
        assert_eq!(b.len(), 4);
        let t = b.finish();
        assert_eq!(t.iter().collect::<Vec<_>>(), vec![("c", 9.0), ("b", 3.0), ("a", 2.0), ("d", 0.0)]);
        let err = TallyBuilder::default().add_page("s", &[("ok", "1"), ("bad", "nan")]).unwrap_err();
        assert!(err.to_string().contains("member \"bad\""), "{err}");
    }

    #[track_caller]
    fn check_global(input: &str, expect: Result<&[(&str, f64)], &str>) {
        let got = read_global("global/1/prod/result-global.csv", input.as_bytes());
        match (got, expect) {
            (Ok(rows), Ok(e)) => assert_eq!(rows, pairs(e)),
            (Err(e), Err(text)) => {
                let e = e.to_string();
                assert!(e.starts_with("global/1/prod/result-global.csv"), "{e}");
                assert!(e.contains(text), "{e:?} does not say {text:?}");
            }
            (got, expect) => panic!("{input:?}: got {got:?}, expected {expect:?}"),
        }
    }

    #[test]
    fn global_results() {
        check_global("kseq,score,jp,kr\nb,2.5,0.5,2.0\na,-1.0,1.0,0.0\n", Ok(&[("b", 2.5), ("a", -1.0)]));
        check_global("\u{feff}\"SCORE\",\"KSEQ\"\n1,\"(1,2,3)\"\n", Ok(&[("(1,2,3)", 1.0)]));
        check_global("kseq,score,jp\n", Err("the global result has no rows"));
        check_global("", Err("empty"));
        check_global("kseq,jp\na,1\n", Err("no `score` column"));
        check_global("kseq,score\na,1\na,2\n", Err("line 3: kseq \"a\" appears more than once"));
        check_global("kseq,score\na,1\nb,NaN\n", Err("line 3: field `score` is not finite"));
        check_global("kseq,score\na,1\nb\n", Err("line 3: malformed CSV"));
        let e = read_global("g", b"kseq,score\n,1\n").unwrap_err();
        assert!(matches!(e, RankingError::Global(TallyError { kind: TallyErrorKind::EmptyKey, .. })), "{e:?}");
    }

    #[test]
    fn top_n_is_ranking_order() {
        let rows = pairs(&[("d", 1.0), ("b", 5.0), ("a", 5.0), ("c", 3.0), ("e", -1.0)]);
        let keys = |n| top_n(&rows, n).into_iter().map(|(k, _)| k).collect::<Vec<_>>();
        assert_eq!(keys(3), ["a", "b", "c"]);
        assert_eq!(keys(10), ["a", "b", "c", "d", "e"]);
        assert!(keys(0).is_empty());
    }

    #[test]
    fn changes_against_the_last_top() {
        let last = pairs(&[("a", 9.0), ("b", 8.0), ("c", 7.0), ("d", 6.0)]);
        let next = pairs(&[("c", 9.5), ("a", 9.0), ("x", 8.5), ("b", 1.0)]);
        let ch = top_changes(&last, &next);
        let moves: Vec<(&str, Movement)> = ch.top.iter().map(|c| (c.kseq.as_str(), c.movement)).collect();
        assert_eq!(moves, [("c", Movement::Up(2)), ("a", Movement::Down(1)), ("x", Movement::New), ("b", Movement::Down(2))]);
        assert_eq!(ch.left, [("d".to_owned(), 4)]);
        assert!(!ch.is_unchanged());
        assert!(top_changes(&last, &last).is_unchanged());
        // The first load: everything is new.
        assert!(top_changes(&[], &next).top.iter().all(|c| c.movement == Movement::New));
    }

    #[test]
    fn summary_lists_the_top_and_who_left() {
        let last = pairs(&[("a", 2.0), ("gone", 1.0)]);
        let next = pairs(&[("new", 3.0), ("a", 2.5)]);
        let text = summary_text("ranking r loaded", &top_changes(&last, &next));
        assert_eq!(
            text,
            "ranking r loaded\n```\n  1. new      3.000000  new\n  2. a        2.500000  ▼1\n```\nLeft the top 2: gone (was 2)"
        );
        let same = summary_text("h", &top_changes(&next, &next));
        assert!(same.starts_with("h\nTop unchanged:\n```\n  1. new"), "{same}");
        assert_eq!(summary_text("h", &TopChanges::default()), "h");
    }

    #[track_caller]
    fn check_inert(raw: &str, expect: &str) {
        assert_eq!(chat_inert(raw), expect, "{raw:?}");
    }

    #[test]
    fn chat_text_cannot_mention_or_break_out() {
        check_inert("plain key 1", "plain key 1");
        check_inert("<!channel>", "&lt;!channel&gt;");
        check_inert("<@U123ABC>", "&lt;@\u{2060}U123ABC&gt;");
        check_inert("@here", "@\u{2060}here");
        check_inert("<https://evil.example|click>", "&lt;https://evil.example|click&gt;");
        check_inert("a&lt;b", "a&amp;lt;b");
        check_inert("x```\n<!here>", "x\u{02CB}\u{02CB}\u{02CB} &lt;!here&gt;");
        check_inert("tab\there\r", "tab here ");
        // In a summary, a hostile key stays inside the code block and on its own line.
        let hostile = pairs(&[("```\n<!channel> hi", 2.0), ("ok", 1.0)]);
        let gone = pairs(&[("<@U1>", 3.0)]);
        let text = summary_text("h", &top_changes(&gone, &hostile));
        assert_eq!(text.matches("```").count(), 2, "{text}");
        assert!(!text.contains('<') && !text.contains('>'), "{text}");
        assert_eq!(text.lines().count(), 6, "{text}");
        assert!(text.ends_with("Left the top 2: &lt;@\u{2060}U1&gt; (was 1)"), "{text}");
    }
}
