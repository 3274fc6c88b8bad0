//! Settings read from the environment, with one policy for every function.
//!
//! [`Vars`] reads variables through a lookup: the process environment in a `main.rs`
//! ([`Vars::env`]), a list of pairs in a unit test ([`Vars::from_pairs`]).
//!
//! - A variable that is unset, empty or only whitespace is unset; a value is read trimmed.
//! - A setting without which a function cannot do its job is [`Vars::required`]: left unset, the
//!   function refuses to start, naming the variable.
//! - A setting with a safe default is [`Vars::optional`] (or [`Vars::or_default`]); the caller
//!   applies the default, and every default is listed in the settings table of the README.
//! - A value that does not parse is an error naming the variable, the value and what it should be.
//!
//! Every failure is a [`SettingsError`].

use std::fmt::Display;
use std::ops::RangeInclusive;
use std::str::FromStr;
use std::time::Duration;

/// Why the settings could not be read. Every variant names the variable at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    /// A required variable is unset (or blank).
    #[error("{name}: not set")]
    Missing { name: String },
    /// The value is not of the expected form (`expected` reads "a whole number", "`a` or `b`", ...).
    #[error("{name}: {value:?} is not {expected}")]
    Malformed { name: String, value: String, expected: String },
    /// A number outside the bounds the function works within; `why` explains the bounds, if needed.
    #[error("{name}: must be {min} to {max}{why}")]
    OutOfRange { name: String, min: u64, max: u64, why: String },
    /// The value parses but is refused: `problem` says why.
    #[error("{name}: {problem}")]
    Invalid { name: String, problem: String },
    /// One of two variables that only work together is set without the other.
    #[error("{name} is set but {other} is not")]
    Incomplete { name: String, other: String },
}

impl SettingsError {
    /// The variable at fault.
    pub fn name(&self) -> &str {
        match self {
            SettingsError::Missing { name }
            | SettingsError::Malformed { name, .. }
            | SettingsError::OutOfRange { name, .. }
            | SettingsError::Invalid { name, .. }
            | SettingsError::Incomplete { name, .. } => name,
        }
    }

    /// `problem` with the value of `name`, for a check the caller makes after parsing.
    pub fn invalid(name: &str, problem: impl Display) -> SettingsError {
        SettingsError::Invalid { name: name.to_owned(), problem: problem.to_string() }
    }
}

/// A lookup of a variable's raw value.
type Lookup<'a> = Box<dyn Fn(&str) -> Option<String> + Send + Sync + 'a>;

/// A source of variables, read under the policy of this module.
pub struct Vars<'a> {
    lookup: Lookup<'a>,
}

impl std::fmt::Debug for Vars<'_> {
    // Values may be secrets: never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Vars(..)")
    }
}

impl Vars<'static> {
    /// The process environment. A value that is not UTF-8 is read lossily, so that it fails to
    /// parse under its name instead of reading as unset.
    pub fn env() -> Vars<'static> {
        Vars::from_fn(|name| std::env::var_os(name).map(|v| v.to_string_lossy().into_owned()))
    }
}

impl<'a> Vars<'a> {
    /// Variables from any lookup.
    pub fn from_fn(lookup: impl Fn(&str) -> Option<String> + Send + Sync + 'a) -> Vars<'a> {
        Vars { lookup: Box::new(lookup) }
    }

    /// Variables from `(name, value)` pairs; the first pair of a name wins.
    pub fn from_pairs(pairs: &'a [(&'a str, &'a str)]) -> Vars<'a> {
        Vars::from_fn(move |name| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| (*v).to_owned()))
    }

    /// The trimmed value of `name`; `None` when it is unset, empty or only whitespace.
    pub fn optional(&self, name: &str) -> Option<String> {
        (self.lookup)(name).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty())
    }

    /// The value of `name`, which the function cannot do without.
    pub fn required(&self, name: &str) -> Result<String, SettingsError> {
        self.optional(name).ok_or_else(|| SettingsError::Missing { name: name.to_owned() })
    }

    /// The value of `name`, or `default` when it is unset.
    pub fn or_default(&self, name: &str, default: &str) -> String {
        self.optional(name).unwrap_or_else(|| default.to_owned())
    }

    /// The value of `name` through `parse`; a parse error `e` reads `{name}: {e}`.
    pub fn parsed<T, E: Display>(&self, name: &str, parse: impl FnOnce(&str) -> Result<T, E>) -> Result<Option<T>, SettingsError> {
        self.optional(name).map(|v| parse(&v).map_err(|e| SettingsError::invalid(name, e))).transpose()
    }

    /// The value of `name` as a whole number.
    pub fn whole<T: FromStr>(&self, name: &str) -> Result<Option<T>, SettingsError> {
        self.whole_of(name, None)
    }

    /// The value of `name` as a whole number of `unit` (`"MB"`, `"bytes"`): an error names the unit.
    pub fn whole_in<T: FromStr>(&self, name: &str, unit: &str) -> Result<Option<T>, SettingsError> {
        self.whole_of(name, Some(unit))
    }

    fn whole_of<T: FromStr>(&self, name: &str, unit: Option<&str>) -> Result<Option<T>, SettingsError> {
        let expected = || unit.map_or_else(|| "a whole number".to_owned(), |u| format!("a whole number of {u}"));
        self.optional(name).map(|v| v.parse().map_err(|_| malformed(name, &v, expected()))).transpose()
    }

    /// The value of `name` as a whole number greater than zero.
    pub fn positive(&self, name: &str) -> Result<Option<u64>, SettingsError> {
        self.optional(name)
            .map(|v| v.parse().ok().filter(|&n: &u64| n > 0).ok_or_else(|| malformed(name, &v, "a positive whole number")))
            .transpose()
    }

    /// The value of `name` as a whole number within `range`; `why` (empty, or starting with a
    /// space) follows the bounds in the error.
    pub fn within(&self, name: &str, range: RangeInclusive<u64>, why: &str) -> Result<Option<u64>, SettingsError> {
        let Some(n) = self.whole::<u64>(name)? else { return Ok(None) };
        if range.contains(&n) {
            Ok(Some(n))
        } else {
            Err(SettingsError::OutOfRange { name: name.to_owned(), min: *range.start(), max: *range.end(), why: why.to_owned() })
        }
    }

    /// The value of `name` as a whole number of milliseconds.
    pub fn millis(&self, name: &str) -> Result<Option<Duration>, SettingsError> {
        Ok(self.whole_in(name, "milliseconds")?.map(Duration::from_millis))
    }

    /// The value of `name` as a whole number of seconds.
    pub fn secs(&self, name: &str) -> Result<Option<Duration>, SettingsError> {
        Ok(self.whole_in(name, "seconds")?.map(Duration::from_secs))
    }

    /// The value of `name` as a boolean: `true`/`false`, `1`/`0`, `yes`/`no`, in any case.
    pub fn flag(&self, name: &str) -> Result<Option<bool>, SettingsError> {
        self.optional(name)
            .map(|v| match v.to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" => Ok(true),
                "false" | "0" | "no" => Ok(false),
                _ => Err(malformed(name, &v, "`true` or `false`")),
            })
            .transpose()
    }

    /// The value of `name` as one of `choices`, by its exact name.
    pub fn choice<T: Copy>(&self, name: &str, choices: &[(&str, T)]) -> Result<Option<T>, SettingsError> {
        let Some(v) = self.optional(name) else { return Ok(None) };
        match choices.iter().find(|(k, _)| *k == v) {
            Some((_, t)) => Ok(Some(*t)),
            None => {
                let names: Vec<String> = choices.iter().map(|(k, _)| format!("`{k}`")).collect();
                Err(malformed(name, &v, names.join(" or ")))
            }
        }
    }

    /// The value of `name` as a comma-separated list, each item trimmed, blank items dropped.
    pub fn list(&self, name: &str) -> Option<Vec<String>> {
        let v = self.optional(name)?;
        Some(v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect())
    }

    /// Both of two variables that only work together, or neither.
    pub fn pair(&self, first: &str, second: &str) -> Result<Option<(String, String)>, SettingsError> {
        let incomplete = |name: &str, other: &str| SettingsError::Incomplete { name: name.to_owned(), other: other.to_owned() };
        match (self.optional(first), self.optional(second)) {
            (None, None) => Ok(None),
            (Some(a), Some(b)) => Ok(Some((a, b))),
            (Some(_), None) => Err(incomplete(first, second)),
            (None, Some(_)) => Err(incomplete(second, first)),
        }
    }
}

fn malformed(name: &str, value: &str, expected: impl Into<String>) -> SettingsError {
    SettingsError::Malformed { name: name.to_owned(), value: value.to_owned(), expected: expected.into() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blank_is_unset_and_values_are_trimmed() {
        let pairs = [("EMPTY", ""), ("SPACES", "  \t"), ("PADDED", " x "), ("SET", "y")];
        let v = Vars::from_pairs(&pairs);
        for name in ["EMPTY", "SPACES", "ABSENT"] {
            assert_eq!(v.optional(name), None, "{name}");
            assert_eq!(v.required(name).unwrap_err().to_string(), format!("{name}: not set"));
            assert_eq!(v.or_default(name, "d"), "d");
            assert_eq!(v.whole::<u32>(name), Ok(None));
            assert_eq!(v.list(name), None);
        }
        assert_eq!(v.optional("PADDED").as_deref(), Some("x"));
        assert_eq!(v.required("SET").as_deref(), Ok("y"));
        assert_eq!(v.or_default("SET", "d"), "y");
    }

    #[test]
    fn typed_reads_name_the_variable_and_the_problem() {
        let check = |value: &'static str, read: &dyn Fn(&Vars) -> Result<String, SettingsError>, expect: &str| {
            let pairs = [("V", value)];
            let got = read(&Vars::from_pairs(&pairs)).unwrap_or_else(|e| format!("error {e}"));
            assert_eq!(got, expect, "V={value:?}");
        };
        let whole = |v: &Vars| v.whole::<u32>("V").map(|n| format!("{n:?}"));
        check("42", &whole, "Some(42)");
        check("4x", &whole, "error V: \"4x\" is not a whole number");
        check("-1", &whole, "error V: \"-1\" is not a whole number");
        check("4294967296", &whole, "error V: \"4294967296\" is not a whole number");
        let mb = |v: &Vars| v.whole_in::<u64>("V", "MB").map(|n| format!("{n:?}"));
        check("lots", &mb, "error V: \"lots\" is not a whole number of MB");
        let positive = |v: &Vars| v.positive("V").map(|n| format!("{n:?}"));
        check("1", &positive, "Some(1)");
        check("0", &positive, "error V: \"0\" is not a positive whole number");
        let within = |v: &Vars| v.within("V", 3..=900, " (why)").map(|n| format!("{n:?}"));
        check("3", &within, "Some(3)");
        check("900", &within, "Some(900)");
        check("2", &within, "error V: must be 3 to 900 (why)");
        check("1h", &within, "error V: \"1h\" is not a whole number");
        let millis = |v: &Vars| v.millis("V").map(|d| format!("{d:?}"));
        check("1500", &millis, "Some(1.5s)");
        check("1.5s", &millis, "error V: \"1.5s\" is not a whole number of milliseconds");
        let secs = |v: &Vars| v.secs("V").map(|d| format!("{d:?}"));
        check("90", &secs, "Some(90s)");
        check("90s", &secs, "error V: \"90s\" is not a whole number of seconds");
        let flag = |v: &Vars| v.flag("V").map(|b| format!("{b:?}"));
        check("TRUE", &flag, "Some(true)");
        check("0", &flag, "Some(false)");
        check("maybe", &flag, "error V: \"maybe\" is not `true` or `false`");
        let choice = |v: &Vars| v.choice("V", &[("await", 1), ("detached", 2)]).map(|n| format!("{n:?}"));
        check("detached", &choice, "Some(2)");
        check("later", &choice, "error V: \"later\" is not `await` or `detached`");
        let list = |v: &Vars| Ok(format!("{:?}", v.list("V")));
        check(" a, b ,,c ", &list, "Some([\"a\", \"b\", \"c\"])");
        check(",", &list, "Some([])");
        let parsed = |v: &Vars| v.parsed("V", |s| if s == "ok" { Ok(s.len()) } else { Err("must be ok") }).map(|n| format!("{n:?}"));
        check("ok", &parsed, "Some(2)");
        check("no", &parsed, "error V: must be ok");
    }

    #[test]
    fn a_pair_is_both_or_neither() {
        let read = |pairs: &[(&str, &str)]| Vars::from_pairs(pairs).pair("A", "B").map_err(|e| e.to_string());
        assert_eq!(read(&[]), Ok(None));
        assert_eq!(read(&[("A", "a"), ("B", "b")]), Ok(Some(("a".into(), "b".into()))));
        assert_eq!(read(&[("A", "a"), ("B", " ")]), Err("A is set but B is not".into()));
        assert_eq!(read(&[("B", "b")]), Err("B is set but A is not".into()));
    }

    #[test]
    fn every_error_names_its_variable() {
        let pairs = [("N", "x")];
        let v = Vars::from_pairs(&pairs);
        let errors = [
            v.required("M").unwrap_err(),
            v.whole::<u8>("N").unwrap_err(),
            v.within("N", 1..=2, "").unwrap_err(),
            v.parsed("N", |_| Err::<(), _>("bad")).unwrap_err(),
            Vars::from_pairs(&[("P", "p")]).pair("P", "Q").unwrap_err(),
        ];
        let names: Vec<&str> = errors.iter().map(SettingsError::name).collect();
        assert_eq!(names, ["M", "N", "N", "N", "P"]);
        assert!(errors.iter().all(|e| e.to_string().starts_with(e.name())));
    }
}
