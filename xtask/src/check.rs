//! A comparison's result per table: the verdict, the counts and why, and the tally of
//! verdicts the summary, the report and the rehearsal print. Made by `verify.rs` (and the
//! merge's invariants in `merge.rs`), kept in the journal.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    Equal,
    /// A change Sentry 6's migrations make on purpose.
    Intended,
    /// Only in SQLite, no model maps to it: reported, not carried over.
    NotCarriedOver,
    /// Rows missing or added: the check fails.
    Differs,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableCheck {
    pub table: String,
    pub expected: Option<u64>,
    pub actual: Option<u64>,
    pub verdict: Verdict,
    pub note: String,
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Verdict::Equal => "equal",
            Verdict::Intended => "intended",
            Verdict::NotCarriedOver => "not carried over",
            Verdict::Differs => "differs",
        })
    }
}

/// How many tables of one comparison got each verdict.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    pub tables: usize,
    pub equal: usize,
    pub intended: usize,
    pub not_carried_over: usize,
    pub differs: usize,
}

/// The verdicts of one comparison, counted.
pub fn tally(checks: &[TableCheck]) -> Tally {
    let mut out = Tally {
        tables: checks.len(),
        ..Tally::default()
    };
    for check in checks {
        *match check.verdict {
            Verdict::Equal => &mut out.equal,
            Verdict::Intended => &mut out.intended,
            Verdict::NotCarriedOver => &mut out.not_carried_over,
            Verdict::Differs => &mut out.differs,
        } += 1;
    }
    out
}

/// A count for a table cell or message: `-` where there is none (no such table).
pub fn cell(value: Option<u64>) -> String {
    value.map(|it| it.to_string()).unwrap_or_else(|| "-".into())
}

/// The tables whose check failed.
pub fn failures(checks: &[TableCheck]) -> Vec<&TableCheck> {
    checks
        .iter()
        .filter(|it| it.verdict == Verdict::Differs)
        .collect()
}
