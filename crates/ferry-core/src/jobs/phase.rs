//! [`Phase`]: what a job is doing, as its progress shows it. The phases the store and the shipped
//! kinds write are variants; a kind of a deployment's own may name its own ([`Phase::Other`]).

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// What a job is doing. Stored and shown as its text (`queued`, `reading`, ...), the same text
/// whichever variant holds it, so that `Phase::from("done")` is [`Phase::Done`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Submitted; no worker has claimed it yet.
    Queued,
    /// Claimed; the export reads its source.
    Reading,
    /// An export writing its xlsx workbook.
    BuildingXlsx,
    /// A batch calling its target.
    Calling,
    /// Handing over to the next run.
    Continuing,
    Done,
    Failed,
    Cancelled,
    /// A phase named by a kind itself (or none: the empty text).
    Other(String),
}

impl Phase {
    const NAMED: [Phase; 8] = [
        Phase::Queued,
        Phase::Reading,
        Phase::BuildingXlsx,
        Phase::Calling,
        Phase::Continuing,
        Phase::Done,
        Phase::Failed,
        Phase::Cancelled,
    ];

    pub fn as_str(&self) -> &str {
        match self {
            Phase::Queued => "queued",
            Phase::Reading => "reading",
            Phase::BuildingXlsx => "building xlsx",
            Phase::Calling => "calling",
            Phase::Continuing => "continuing",
            Phase::Done => "done",
            Phase::Failed => "failed",
            Phase::Cancelled => "cancelled",
            Phase::Other(s) => s,
        }
    }
}

/// No phase reported yet: the empty text.
impl Default for Phase {
    fn default() -> Phase {
        Phase::Other(String::new())
    }
}

impl From<&str> for Phase {
    fn from(s: &str) -> Phase {
        Phase::NAMED.into_iter().find(|p| p.as_str() == s).unwrap_or_else(|| Phase::Other(s.to_owned()))
    }
}

impl From<String> for Phase {
    fn from(s: String) -> Phase {
        match Phase::from(s.as_str()) {
            Phase::Other(_) => Phase::Other(s),
            named => named,
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Phase {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Phase {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Phase, D::Error> {
        String::deserialize(d).map(Phase::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_phase_is_its_text_whichever_way_it_was_made() {
        let check = |text: &str, expect: Phase| {
            assert_eq!(Phase::from(text), expect, "{text:?}");
            assert_eq!(Phase::from(text.to_owned()), expect, "{text:?}");
            assert_eq!(expect.as_str(), text);
            assert_eq!(serde_json::to_string(&expect).unwrap(), serde_json::to_string(text).unwrap());
            assert_eq!(serde_json::from_str::<Phase>(&serde_json::to_string(text).unwrap()).unwrap(), expect);
        };
        check("queued", Phase::Queued);
        check("reading", Phase::Reading);
        check("building xlsx", Phase::BuildingXlsx);
        check("calling", Phase::Calling);
        check("continuing", Phase::Continuing);
        check("done", Phase::Done);
        check("failed", Phase::Failed);
        check("cancelled", Phase::Cancelled);
        check("counting", Phase::Other("counting".into()));
        check("", Phase::default());
        for p in Phase::NAMED {
            assert_eq!(Phase::from(p.as_str()), p, "every named phase reads back as itself");
        }
    }
}
