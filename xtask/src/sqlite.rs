//! Reading the SQLite source: open read-only, quote identifiers, integrity checks, "is this
//! Sentry 4?", row counts. Nothing here writes to the source. The one read-only opener and the
//! one identifier quoter of SQLite for the whole tool.

use std::{collections::BTreeMap, path::Path};

use anyhow::{bail, Context, Result};
use rusqlite::{Connection, OpenFlags};

/// Sentry 4.10.0's last South migration of the `sentry` app.
pub const SENTRY4_LAST_MIGRATION: u32 = 62;

/// Opens an existing SQLite database read-only (a missing path is refused, never created).
pub fn open_read_only(path: &Path) -> Result<Connection> {
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

/// An identifier (a table, a column, an index, from the db's own catalog) quoted for SQLite.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `PRAGMA quick_check` (`full`: `integrity_check`) must answer `ok`.
pub fn check_integrity(path: &Path, full: bool) -> Result<()> {
    let conn = open_read_only(path)?;
    let pragma = if full {
        "PRAGMA integrity_check"
    } else {
        "PRAGMA quick_check"
    };
    let lines: Vec<String> = conn
        .prepare(pragma)
        .and_then(|mut stmt| stmt.query_map([], |row| row.get(0))?.collect())
        .with_context(|| not_a_database(path))?;
    if lines != ["ok"] {
        bail!(
            "{} is corrupt ({pragma} says: {}): restore it from a backup before migrating",
            path.display(),
            lines.iter().take(5).cloned().collect::<Vec<_>>().join("; ")
        );
    }
    Ok(())
}

fn not_a_database(path: &Path) -> String {
    format!(
        "{} is not a readable SQLite database: check --sqlite",
        path.display()
    )
}

/// What preflight learned about the source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentryDb {
    pub latest_migration: u32,
    pub tables: usize,
}

/// Rows of `sentry_message` (the events).
pub fn event_count(path: &Path) -> Result<u64> {
    let conn = open_read_only(path)?;
    let n: i64 = conn
        .query_row("SELECT count(*) FROM sentry_message", [], |row| row.get(0))
        .with_context(|| format!("cannot count the events in {}", path.display()))?;
    Ok(n as u64)
}

/// What identifies a Sentry 4 db across the writes Sentry 4's own `upgrade` and `repair` make
/// (they never touch events): the sha256 of every event's id, group and date, in id order.
pub fn event_fingerprint(path: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    let conn = open_read_only(path)?;
    let mut hasher = Sha256::new();
    let mut stmt = conn
        .prepare("SELECT id, group_id, CAST(datetime AS TEXT) FROM sentry_message ORDER BY id")
        .with_context(|| format!("cannot read the events of {}", path.display()))?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows
        .next()
        .with_context(|| format!("cannot read the events of {}", path.display()))?
    {
        let (id, group, date): (i64, Option<i64>, Option<String>) =
            (row.get(0)?, row.get(1)?, row.get(2)?);
        hasher.update(format!("{id}\t{group:?}\t{date:?}\n"));
    }
    Ok(format!("{:x}", hasher.finalize()))
}

/// Refuses anything but a Sentry 4 database: sentry tables and South history up to 0062.
/// A Sentry 4 db: its sentry tables exist and its South history is at most `last_migration`.
pub fn check_sentry4(path: &Path, last_migration: u32) -> Result<SentryDb> {
    let conn = open_read_only(path)?;
    let tables = table_names(&conn).with_context(|| not_a_database(path))?;
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
        .prepare("SELECT migration FROM south_migrationhistory WHERE app_name = 'sentry'")
        .and_then(|mut stmt| stmt.query_map([], |row| row.get(0))?.collect())
        .with_context(|| {
            format!(
                "cannot read table south_migrationhistory of {}: is it a Sentry 4 database? check --sqlite",
                path.display()
            )
        })?;
    let latest = migrations
        .iter()
        .filter_map(|name| name.get(..4).and_then(|num| num.parse::<u32>().ok()))
        .max()
        .with_context(|| format!("{} has no South history for the sentry app: was it ever upgraded with `sentry upgrade`?", path.display()))?;
    if latest > last_migration {
        bail!(
            "{} is at Sentry migration {latest:04}, newer than Sentry 4.10 ({last_migration:04}): \
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
    for table in table_names(&conn).with_context(|| not_a_database(path))? {
        let quoted = quote_ident(&table);
        let rows: i64 = conn
            .query_row(&format!("SELECT count(*) FROM {quoted}"), [], |row| {
                row.get(0)
            })
            .with_context(|| {
                format!(
                    "cannot count the rows of table {table} in {}: check the database with `PRAGMA integrity_check` (sqlite3)",
                    path.display()
                )
            })?;
        counts.insert(table, rows as u64);
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use rusqlite::Connection;

    use super::{check_integrity, check_sentry4, table_counts, SENTRY4_LAST_MIGRATION};

    #[test]
    fn errors_name_the_database_and_the_table() {
        let dir = tempfile::tempdir().unwrap();
        let garbage = dir.path().join("garbage.db");
        std::fs::write(&garbage, vec![7u8; 8192]).unwrap();
        for err in [
            table_counts(&garbage).unwrap_err(),
            check_sentry4(&garbage, SENTRY4_LAST_MIGRATION).unwrap_err(),
            check_integrity(&garbage, false).unwrap_err(),
        ] {
            let err = format!("{err:#}");
            assert!(
                err.contains(&garbage.display().to_string()) && err.contains("not a database"),
                "{err}"
            );
        }

        // A table SQLite lists but cannot read: a virtual table of a module this build lacks.
        let broken = dir.path().join("broken.db");
        let conn = Connection::open(&broken).unwrap();
        conn.execute_batch(
            "CREATE TABLE sentry_project (id integer PRIMARY KEY);
             PRAGMA writable_schema = ON;
             INSERT INTO sqlite_master (type, name, tbl_name, rootpage, sql)
             VALUES ('table', 'sentry_lost', 'sentry_lost', 0,
                     'CREATE VIRTUAL TABLE sentry_lost USING no_such_module(x)');",
        )
        .unwrap();
        drop(conn);
        let err = format!("{:#}", table_counts(&broken).unwrap_err());
        assert!(
            err.contains("table sentry_lost") && err.contains(&broken.display().to_string()),
            "{err}"
        );
    }
}
