//! One table streamed from SQLite with COPY, and Sentry 6's integer columns loaded early: a
//! savepoint, the columns made `integer`, the table copied; a value that is not a whole int4
//! rolls it back to Sentry 4's `double precision` and the table is copied again.

use std::{
    io::{BufWriter, Write},
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
    time::Instant,
};

use anyhow::{bail, Context, Result};
use rusqlite::types::ValueRef;
use serde::{Deserialize, Serialize};

use super::{
    encode::{encode, target_of, Target},
    TableCopy,
};
use crate::{ident::Ident, progress::Progress, sqlite::quote_ident, values};

/// A table to copy: its name, its SQLite columns and rows (counted once, for the order of the
/// work and the progress).
pub(super) struct Work {
    pub table: String,
    pub sqlite_columns: Vec<String>,
    pub rows: u64,
}

/// Copies one table; its columns of `integer_early` (those the target has as `integer` or
/// `double precision`) go in as `integer` when every value is whole, else as `double precision`
/// with the reason recorded. `stop` set by the other session ends the copy with an error.
pub(super) fn copy_with_early_types(
    source: &rusqlite::Connection,
    sqlite: &Path,
    tx: &mut postgres::Transaction<'_>,
    work: &Work,
    integer_early: &[(&str, &str)],
    progress: &Progress,
    stop: &AtomicBool,
) -> Result<TableCopy> {
    let table = work.table.as_str();
    let table_ident = Ident::table(table.to_string())?;
    let columns = target_columns(tx, table)?;
    let early: Vec<&str> = integer_early
        .iter()
        .filter(|(t, column)| {
            *t == table
                && work.sqlite_columns.iter().any(|c| c == column)
                && columns.iter().any(|(c, data_type, _)| {
                    c == column && matches!(data_type.as_str(), "integer" | "double precision")
                })
        })
        .map(|(_, column)| *column)
        .collect();
    let plain = |tx: &mut postgres::Transaction<'_>| -> Result<TableCopy> {
        match copy_table(source, sqlite, tx, work, &[], progress, stop)? {
            Ok(copied) => Ok(copied),
            Err(not_whole) => bail!("{table}: {not_whole}, with no column loaded early"),
        }
    };
    if early.is_empty() {
        return plain(tx);
    }
    tx.batch_execute("SAVEPOINT sentry_migrate_early_types")?;
    set_types(tx, &table_ident, &early, "integer")?;
    match copy_table(source, sqlite, tx, work, &early, progress, stop)? {
        Ok(mut copied) => {
            tx.batch_execute("RELEASE SAVEPOINT sentry_migrate_early_types")?;
            copied.integer_columns = early.iter().map(|it| it.to_string()).collect();
            Ok(copied)
        }
        Err(not_whole) => {
            // The aborted COPY and the type change go; Sentry 4's type comes back (explicitly:
            // an earlier load of this migration may have left integer).
            tx.batch_execute("ROLLBACK TO SAVEPOINT sentry_migrate_early_types")?;
            set_types(tx, &table_ident, &early, "double precision")?;
            progress.println(&format!(
                "    {table}: {not_whole}: kept double precision (Sentry 6's migration 0105 converts it)"
            ));
            let mut copied = plain(tx)?;
            copied.kept_double_precision = Some(not_whole);
            Ok(copied)
        }
    }
}

/// `(column, data type, NOT NULL without a default)` of a target table, in table order.
pub(super) fn target_columns(
    client: &mut postgres::Transaction<'_>,
    table: &str,
) -> Result<Vec<(String, String, bool)>> {
    let rows = client
        .query(
            "SELECT column_name::text, data_type::text, is_nullable = 'NO' AND column_default IS NULL \
             FROM information_schema.columns WHERE table_schema = 'public' AND table_name = $1 \
             ORDER BY ordinal_position",
            &[&table],
        )
        .with_context(|| format!("cannot read the columns of {table} in the target"))?;
    Ok(rows
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .collect())
}

/// `ALTER TABLE … ALTER COLUMN … TYPE <data_type>` for each of `columns` (on the empty table of
/// the load: no rewrite worth the name).
fn set_types(
    tx: &mut postgres::Transaction<'_>,
    table: &Ident,
    columns: &[&str],
    data_type: &str,
) -> Result<()> {
    for column in columns {
        let column = Ident::column(column)?;
        tx.batch_execute(&format!(
            "ALTER TABLE {table} ALTER COLUMN {} TYPE {data_type}",
            column.quoted()
        ))
        .map_err(|err| {
            crate::pg::explain_sql_error(
                err,
                &format!(
                    "making {table}.{} {data_type} for the load",
                    column.quoted()
                ),
            )
        })?;
    }
    Ok(())
}

/// Why an early integer column cannot take a table's values: the first one that is not a
/// whole number within int4.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NotWhole {
    pub column: String,
    pub rowid: i64,
    pub value: String,
}

impl std::fmt::Display for NotWhole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} of row {} is {}, not a whole number within integer's range",
            self.column, self.rowid, self.value
        )
    }
}

/// A value an early integer column takes as it is: NULL, or a whole number within int4.
fn whole_int4(value: ValueRef<'_>) -> bool {
    let int4 = i64::from(i32::MIN)..=i64::from(i32::MAX);
    match value {
        ValueRef::Null => true,
        ValueRef::Integer(n) => int4.contains(&n),
        ValueRef::Real(x) => values::whole_i64(x).is_some_and(|n| int4.contains(&n)),
        ValueRef::Text(_) | ValueRef::Blob(_) => false,
    }
}

/// Streams one table (its columns the target has, of `sqlite_columns`) with COPY. A value of an
/// `early` column that is not a whole int4 ends it with `Ok(Err(..))`, the COPY aborted (the
/// caller rolls back to its savepoint); any other problem is an error naming table, column, row.
fn copy_table(
    source: &rusqlite::Connection,
    sqlite: &Path,
    tx: &mut postgres::Transaction<'_>,
    work: &Work,
    early: &[&str],
    progress: &Progress,
    stop: &AtomicBool,
) -> Result<Result<TableCopy, NotWhole>> {
    let (table, sqlite_columns, total) = (work.table.as_str(), &work.sqlite_columns, work.rows);
    let table_ident = Ident::table(table.to_string())?;
    let columns = target_columns(tx, table)?;
    let missing: Vec<&str> = columns
        .iter()
        .filter(|(name, _, required)| *required && !sqlite_columns.contains(name))
        .map(|(name, _, _)| name.as_str())
        .collect();
    if !missing.is_empty() {
        bail!(
            "{table}: the target requires column(s) {} that the SQLite table lacks: the SQLite schema is not Sentry 4.10's; \
             redo from sqlite-upgrade",
            missing.join(", ")
        );
    }
    let shared: Vec<(&str, Target, bool)> = columns
        .iter()
        .filter(|(name, _, _)| sqlite_columns.contains(name))
        .map(|(name, data_type, _)| {
            (
                name.as_str(),
                target_of(data_type),
                early.contains(&name.as_str()),
            )
        })
        .collect();
    let skipped: Vec<String> = sqlite_columns
        .iter()
        .filter(|name| !columns.iter().any(|(c, _, _)| c == *name))
        .cloned()
        .collect();
    let started = Instant::now();
    let select = format!(
        "SELECT rowid, {} FROM {}",
        shared
            .iter()
            .map(|(name, _, _)| quote_ident(name))
            .collect::<Vec<_>>()
            .join(", "),
        quote_ident(table)
    );
    let copy_sql = format!(
        "COPY {} ({}) FROM STDIN",
        table_ident,
        shared
            .iter()
            .map(|(name, _, _)| Ident::column(name).map(|it| it.quoted()))
            .collect::<Result<Vec<_>>>()?
            .join(", ")
    );
    progress.start(total);
    let mut writer = BufWriter::with_capacity(
        1 << 20,
        tx.copy_in(&copy_sql)
            .with_context(|| format!("cannot start COPY into {table}"))?,
    );
    let mut stmt = source.prepare(&select)?;
    let mut rows = stmt.query([])?;
    let mut line = Vec::with_capacity(4096);
    let mut done = 0u64;
    while let Some(row) = rows
        .next()
        .with_context(|| format!("cannot read {table} in {}", sqlite.display()))?
    {
        line.clear();
        for (index, (column, target, is_early)) in shared.iter().enumerate() {
            if index > 0 {
                line.push(b'\t');
            }
            let value = row.get_ref(index + 1)?;
            if *is_early && !whole_int4(value) {
                // Dropping the writer unfinished aborts the COPY.
                return Ok(Err(NotWhole {
                    column: column.to_string(),
                    rowid: row.get(0)?,
                    value: match value {
                        ValueRef::Real(x) => format!("{x:?}"),
                        ValueRef::Integer(n) => n.to_string(),
                        _ => "text".into(),
                    },
                }));
            }
            if let Err(why) = encode(&mut line, *target, value) {
                let rowid: i64 = row.get(0)?;
                bail!("{table}.{column} of row {rowid}: {why}");
            }
        }
        line.push(b'\n');
        writer
            .write_all(&line)
            .with_context(|| format!("COPY into {table} failed"))?;
        done += 1;
        if done.is_multiple_of(4096) {
            progress.tick(done, total);
            if stop.load(Ordering::Relaxed) {
                bail!("{table}: stopped, {}", super::OTHER_SESSION_FAILED);
            }
        }
    }
    drop(rows);
    drop(stmt);
    let copied = writer
        .into_inner()
        .map_err(|err| anyhow::anyhow!("COPY into {table} failed: {}", err.error()))?
        .finish()
        .map_err(|err| crate::pg::explain_sql_error(err, &format!("COPY into {table}")))?;
    if copied != done {
        bail!("COPY into {table} took {copied} rows of {done} sent");
    }
    Ok(Ok(TableCopy {
        table: table.to_string(),
        rows: copied,
        skipped_columns: skipped,
        integer_columns: Vec::new(),
        kept_double_precision: None,
        secs: (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
    }))
}
