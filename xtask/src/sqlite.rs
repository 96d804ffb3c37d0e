//! Reading the SQLite source: open read-only, integrity checks, "is this Sentry 4?", row counts.
//! Nothing here writes to the source.

use std::{collections::BTreeMap, path::Path};

use anyhow::{bail, Context, Result};
use rusqlite::{Connection, OpenFlags};

/// Sentry 4.10.0's last South migration of the `sentry` app.
pub const SENTRY4_LAST_MIGRATION: u32 = 62;

fn open_read_only(path: &Path) -> Result<Connection> {
    if !path.exists() {
        bail!(
            "SQLite database {} does not exist: pass its path with --sqlite PATH",
            path.display()
        );
    }
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("cannot open {} as a SQLite database", path.display()))?;
    Ok(conn)
}

/// `PRAGMA quick_check` (`full`: `integrity_check`) must answer `ok`.
pub fn check_integrity(path: &Path, full: bool) -> Result<()> {
    let conn = open_read_only(path)?;
    let pragma = if full {
        "PRAGMA integrity_check"
    } else {
        "PRAGMA quick_check"
    };
    let mut stmt = conn
        .prepare(pragma)
        .map_err(|err| not_a_database(path, err))?;
    let lines: Vec<String> = stmt
        .query_map([], |row| row.get(0))
        .map_err(|err| not_a_database(path, err))?
        .collect::<Result<_, _>>()
        .map_err(|err| not_a_database(path, err))?;
    if lines != ["ok"] {
        bail!(
            "{} is corrupt ({pragma} says: {}): restore it from a backup before migrating",
            path.display(),
            lines.iter().take(5).cloned().collect::<Vec<_>>().join("; ")
        );
    }
    Ok(())
}

fn not_a_database(path: &Path, err: rusqlite::Error) -> anyhow::Error {
    anyhow::anyhow!(
        "{} is not a readable SQLite database ({err}): check --sqlite",
        path.display()
    )
}

/// What preflight learned about the source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentryDb {
    pub latest_migration: u32,
    pub tables: usize,
}

/// Refuses anything but a Sentry 4 database: sentry tables and South history up to 0062.
pub fn check_sentry4(path: &Path) -> Result<SentryDb> {
    let conn = open_read_only(path)?;
    let tables = table_names(&conn).map_err(|err| not_a_database(path, err))?;
    for required in [
        "sentry_project",
        "sentry_groupedmessage",
        "sentry_message",
        "south_migrationhistory",
    ] {
        if !tables.iter().any(|it| it == required) {
            bail!(
                "{} is not a Sentry database: it has no `{required}` table ({} tables in all); check --sqlite",
                path.display(),
                tables.len()
            );
        }
    }
    let migrations: Vec<String> = conn
        .prepare("SELECT migration FROM south_migrationhistory WHERE app_name = 'sentry'")?
        .query_map([], |row| row.get(0))?
        .collect::<Result<_, _>>()?;
    let latest = migrations
        .iter()
        .filter_map(|name| name.get(..4).and_then(|num| num.parse::<u32>().ok()))
        .max()
        .with_context(|| format!("{} has no South history for the sentry app: was it ever upgraded with `sentry upgrade`?", path.display()))?;
    if latest > SENTRY4_LAST_MIGRATION {
        bail!(
            "{} is at Sentry migration {latest:04}, newer than Sentry 4.10 ({SENTRY4_LAST_MIGRATION:04}): \
             this is not a Sentry 4 database, and this tool migrates only from Sentry 4",
            path.display()
        );
    }
    Ok(SentryDb {
        latest_migration: latest,
        tables: tables.len(),
    })
}

fn table_names(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    conn.prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")?
        .query_map([], |row| row.get(0))?
        .collect()
}

/// Rows of every table.
pub fn table_counts(path: &Path) -> Result<BTreeMap<String, u64>> {
    let conn = open_read_only(path)?;
    let mut counts = BTreeMap::new();
    for table in table_names(&conn)? {
        let quoted = format!("\"{}\"", table.replace('"', "\"\""));
        let rows: i64 = conn.query_row(&format!("SELECT count(*) FROM {quoted}"), [], |row| {
            row.get(0)
        })?;
        counts.insert(table, rows as u64);
    }
    Ok(counts)
}
