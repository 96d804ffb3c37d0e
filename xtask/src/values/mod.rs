//! Values SQLite kept and PostgreSQL rejects: what the scan finds and the fit works on (the
//! kinds, the column types, the findings), and the parts: the scan (`scan`), the fit of a
//! working copy (`fit`), Django 1.4's readers of stored values (`django`).
//!
//! SQLite enforces neither `varchar(n)` nor what a text holds, and Sentry 4.10 stores what
//! clients send. The column types come from SQLite's declared types, which the same South
//! migrations wrote that build the PostgreSQL schema (`sentry_projectoptions.key` is
//! varchar(32) there even where the model says 64).

mod django;
mod fit;
mod scan;

use std::fmt;

use rusqlite::Connection;
use serde::{Deserialize, Serialize};

use crate::sqlite::quote_ident;

pub use django::{django_bool, django_date, django_datetime, sqlite_text, whole_i64, DjangoRead};
pub use fit::{cut, fit, fit_text, Change, Fit, Merge};
pub use scan::{rate, scan, summary};

/// What kind of value PostgreSQL (or Django reading SQLite) would reject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// Longer than the column's `varchar(n)`, in characters as PostgreSQL counts them.
    TooLong,
    /// A NUL character: PostgreSQL text cannot hold one.
    Nul,
    /// Not valid UTF-8: Django cannot even read it from SQLite (`Could not decode to UTF-8`).
    InvalidUtf8,
    /// An integer outside the PostgreSQL column's range (or negative in an unsigned one).
    IntegerOutOfRange,
    /// Something other than an integer in an integer column.
    NotAnInteger,
    /// A date or datetime Django 1.4's `dateparse` reads as None (loaddata loads NULL, or fails
    /// on a NOT NULL column) or raises on (dumpdata fails).
    BadDate,
}

impl Kind {
    /// Whether `--fit-values` fits it.
    pub fn fittable(self) -> bool {
        matches!(self, Kind::TooLong | Kind::Nul | Kind::InvalidUtf8)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::TooLong => "longer than the column allows",
            Kind::Nul => "with NUL characters",
            Kind::InvalidUtf8 => "that are not valid UTF-8",
            Kind::IntegerOutOfRange => "outside the column's integer range",
            Kind::NotAnInteger => "that are not integers",
            Kind::BadDate => "that Django 1.4 reads as None (NULL) or cannot read as dates",
        })
    }
}

/// A column's type as far as the checks go, from SQLite's declared type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    /// `varchar(n)` / `char(n)`: at most `n` characters.
    Varchar(u64),
    Text,
    Integer {
        min: i64,
        max: i64,
    },
    Datetime,
    Date,
    /// Floats, blobs, booleans: nothing PostgreSQL rejects that SQLite keeps.
    Other,
}

/// Django 1.4's SQLite types (and South's `INTEGER` for keys) to what PostgreSQL will hold.
pub fn column_type(declared: &str) -> ColumnType {
    let lower = declared.trim().to_ascii_lowercase();
    let unsigned = lower.ends_with(" unsigned");
    let base = lower.trim_end_matches(" unsigned");
    if let Some(rest) = base
        .strip_prefix("varchar(")
        .or_else(|| base.strip_prefix("char("))
    {
        if let Some(n) = rest.strip_suffix(')').and_then(|n| n.trim().parse().ok()) {
            return ColumnType::Varchar(n);
        }
    }
    let min = |min: i64| if unsigned { 0 } else { min };
    match base {
        "text" => ColumnType::Text,
        "integer" => ColumnType::Integer {
            min: min(i32::MIN.into()),
            max: i32::MAX.into(),
        },
        "smallint" => ColumnType::Integer {
            min: min(i16::MIN.into()),
            max: i16::MAX.into(),
        },
        "bigint" => ColumnType::Integer {
            min: min(i64::MIN),
            max: i64::MAX,
        },
        "datetime" => ColumnType::Datetime,
        "date" => ColumnType::Date,
        _ => ColumnType::Other,
    }
}

/// All values of one kind in one column.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    pub table: String,
    pub column: String,
    pub kind: Kind,
    /// The column's limit in characters, for `TooLong`.
    pub limit: Option<u64>,
    /// The longest value seen, in characters, for `TooLong`.
    pub longest: Option<u64>,
    /// Every row's id (the rowid where the table has no `id`); the journal keeps the first
    /// few as examples, so `count` is the number of values.
    pub ids: Vec<i64>,
    /// How many values (journals written before it existed: 0, read as `ids.len()`).
    #[serde(default)]
    pub count: u64,
}

impl Finding {
    /// How many values of this kind the column holds.
    pub fn count(&self) -> u64 {
        self.count.max(self.ids.len() as u64)
    }
}

/// What the scan of one database found.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Scan {
    pub tables: usize,
    pub rows: u64,
    pub secs: f64,
    pub findings: Vec<Finding>,
}

impl Scan {
    /// The scan with at most `n` ids per finding kept as examples (the counts stay whole).
    pub fn with_examples(&self, n: usize) -> Scan {
        let findings = self
            .findings
            .iter()
            .map(|f| Finding {
                ids: f.ids.iter().take(n).copied().collect(),
                count: f.count(),
                ..f.clone()
            })
            .collect();
        Scan {
            findings,
            ..self.clone()
        }
    }
}

/// `(name, declared type)` of each column of `table`.
fn columns(conn: &Connection, table: &str) -> rusqlite::Result<Vec<(String, String)>> {
    let mut stmt = conn.prepare(&format!("PRAGMA table_info({})", quote_ident(table)))?;
    let rows = stmt.query_map([], |row| Ok((row.get(1)?, row.get(2)?)))?;
    rows.collect()
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use rusqlite::Connection;

    use super::{column_type, ColumnType};

    #[test]
    fn declared_types_map_to_postgres_limits() {
        assert_eq!(column_type("varchar(128)"), ColumnType::Varchar(128));
        assert_eq!(column_type("TEXT"), ColumnType::Text);
        assert_eq!(
            column_type("integer unsigned"),
            ColumnType::Integer {
                min: 0,
                max: i32::MAX.into()
            }
        );
        assert_eq!(
            column_type("INTEGER"),
            ColumnType::Integer {
                min: i32::MIN.into(),
                max: i32::MAX.into()
            }
        );
        assert_eq!(column_type("datetime"), ColumnType::Datetime);
        assert_eq!(column_type("bool"), ColumnType::Other);
        assert_eq!(column_type("REAL"), ColumnType::Other);
    }

    /// A tiny Sentry-like db with one bad value of each kind.
    pub(super) fn sample_db(dir: &Path) -> PathBuf {
        let path = dir.join("sample.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE sentry_message (id integer PRIMARY KEY, server_name varchar(8), message TEXT, level integer unsigned, datetime datetime, time_spent REAL);
             CREATE TABLE sentry_messagefiltervalue (id integer PRIMARY KEY, project_id INTEGER, group_id INTEGER, key varchar(32), value varchar(8), times_seen integer unsigned, first_seen datetime, last_seen datetime);
             CREATE UNIQUE INDEX mfv_key ON sentry_messagefiltervalue (project_id, group_id, value, key);
             CREATE TABLE sentry_pointer (id integer PRIMARY KEY, mfv_id INTEGER REFERENCES sentry_messagefiltervalue (id));
             INSERT INTO sentry_message VALUES (1, 'short', 'fine', 40, '2012-01-01 10:00:00', 0.5);
             INSERT INTO sentry_message VALUES (2, 'much-too-long', 'fine', 40, '2012-01-01 10:00:00', 1);
             INSERT INTO sentry_message VALUES (3, 'ok', 'a' || char(0) || 'b', -1, 'yesterday', 1);
             INSERT INTO sentry_message VALUES (4, 'ok', CAST(X'636166e9' AS TEXT), 99999999999, '2012-01-01 10:00:00', 1);
             INSERT INTO sentry_messagefiltervalue VALUES (10, 1, 7, 'url', 'http://a/one', 2, '2012-01-02 00:00:00', '2012-01-05 00:00:00');
             INSERT INTO sentry_messagefiltervalue VALUES (11, 1, 7, 'url', 'http://a/two', 3, '2012-01-01 00:00:00', '2012-01-03 00:00:00');
             INSERT INTO sentry_messagefiltervalue VALUES (12, 1, 8, 'url', 'http://a/three', 4, '2012-01-01 00:00:00', '2012-01-09 00:00:00');
             INSERT INTO sentry_pointer VALUES (1, 11);",
        )
        .unwrap();
        path
    }
}
