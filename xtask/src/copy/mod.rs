//! The copy engine: SQLite rows streamed straight into the schema `sentry upgrade` built, with
//! COPY, in one transaction (Django's foreign keys are deferred: PostgreSQL checks them once, at
//! commit; a failure rolls everything back). Memory stays flat: one row at a time through a
//! bounded buffer.
//!
//! Values are converted by the target column's type. Naive datetime text goes in as it is, with
//! the session's `TimeZone` set to Sentry 4's `TIME_ZONE`: PostgreSQL then reads it exactly as it
//! reads what Django 1.4's PostgreSQL backend sends (`USE_TZ` off), daylight saving included.

use std::{
    collections::BTreeMap,
    io::{BufWriter, Write},
    path::Path,
    time::Instant,
};

use anyhow::{bail, Context, Result};
use postgres::Client;
use rusqlite::types::ValueRef;
use serde::{Deserialize, Serialize};

use crate::{
    ident::Ident,
    progress::Progress,
    sqlite::{open_read_only, quote_ident},
    values,
};

mod encode;

use encode::{encode, target_of, Target};

/// What the copy of one table did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableCopy {
    pub table: String,
    pub rows: u64,
    /// SQLite columns the target has no column for (loaddata drops them too: no model field).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped_columns: Vec<String>,
    /// Columns loaded as `integer`, the type Sentry 6's 0105 gives them (`SENTRY6_INTEGER_COLUMNS`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub integer_columns: Vec<String>,
    /// Why this table's columns of `SENTRY6_INTEGER_COLUMNS` kept `double precision`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kept_double_precision: Option<NotWhole>,
    pub secs: f64,
}

/// What makes the copy safe to repeat, run in its own transaction (the plan carries the SQL).
pub struct Repeatable<'a> {
    /// `TRUNCATE_SQL` when the target holds this migration's own earlier load, run first.
    pub truncate_sql: Option<&'a str>,
    /// Run per id sequence before the commit.
    pub reset_sequence_sql: &'a str,
    /// Records `(step, input)` in the target before the commit (none: the bench's copy).
    pub marker_sql: &'a [&'a str],
    pub step: &'a str,
    pub input: &'a str,
}

/// `(column, data type, NOT NULL without a default)` of a target table, in table order.
fn target_columns(
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

/// The columns Sentry 6.4.4's migration 0105 changes from `double precision` to `integer`
/// (`db.alter_column`: South's `ALTER COLUMN … TYPE integer`, no `USING`). Loaded straight into
/// integer columns when every value is whole, PostgreSQL finds the type already there and 0105
/// rewrites no table: at 1M events 0105 took 24.4 s, most of it rewriting `sentry_message`.
pub const SENTRY6_INTEGER_COLUMNS: &[(&str, &str)] = &[
    ("sentry_projectcountbyminute", "time_spent_total"),
    ("sentry_groupedmessage", "time_spent_total"),
    ("sentry_messagecountbyminute", "time_spent_total"),
    ("sentry_message", "time_spent"),
];

/// Copies `tables` of `sqlite` into the target in one transaction, reading naive datetimes in
/// `time_zone`; the same transaction clears an earlier load first and sets the id sequences and
/// the marker last (`repeat`), so a copy that committed is repeated with the same end. Columns
/// of `integer_early` (table, column) go in as `integer` when every value is whole (their table
/// is copied in a savepoint; a fraction, a value out of range or text rolls it back and the
/// table is copied again into `double precision`, as Sentry 4's schema has it). Returns what
/// each table got and the sequences; fails (and rolls back) on the first problem, naming the
/// table, column and row.
pub fn copy(
    sqlite: &Path,
    client: &mut Client,
    tables: &[String],
    time_zone: &str,
    repeat: &Repeatable<'_>,
    integer_early: &[(&str, &str)],
) -> Result<(Vec<TableCopy>, Vec<crate::pg::SequenceState>)> {
    let source = open_read_only(sqlite)?;
    let target_tables: std::collections::BTreeSet<String> = client
        .query(
            "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public'",
            &[],
        )?
        .iter()
        .map(|row| row.get(0))
        .collect();
    let mut tx = client.transaction()?;
    // As Django's backend does per connection: the session reads naive times in TIME_ZONE.
    tx.query_one("SELECT set_config('TimeZone', $1, true)", &[&time_zone])
        .with_context(|| format!("PostgreSQL does not know the time zone `{time_zone}`"))?;
    tx.batch_execute("SET CONSTRAINTS ALL DEFERRED")?;
    if let Some(truncate_sql) = repeat.truncate_sql {
        crate::pg::truncate_tables(&mut tx, truncate_sql)?;
    }
    // Foreign keys and plain indexes go for the load and come back before the commit, in the
    // same transaction: one validating query per key and one sorted build per index instead of
    // a check and an index entry per row. A failure rolls the drops back too: the target is
    // never left without them.
    let rebuild = drop_keys_and_indexes(&mut tx)?;
    let mut out = Vec::new();
    for table in tables {
        let sqlite_columns: Vec<String> = source
            .prepare(&format!("PRAGMA table_info({})", quote_ident(table)))?
            .query_map([], |row| row.get(1))?
            .collect::<rusqlite::Result<_>>()
            .with_context(|| {
                format!("cannot read the columns of {table} in {}", sqlite.display())
            })?;
        if sqlite_columns.is_empty() {
            continue;
        }
        if !target_tables.contains(table) {
            bail!(
                "the target has no table {table}, which Sentry 4's models use: did `sentry upgrade` run on it? \
                 redo from pg-upgrade"
            );
        }
        let table_ident = Ident::table(table.clone())?;
        let columns = target_columns(&mut tx, table)?;
        let early: Vec<&str> = integer_early
            .iter()
            .filter(|(t, column)| {
                t == table
                    && sqlite_columns.iter().any(|c| c == column)
                    && columns.iter().any(|(c, data_type, _)| {
                        c == column && matches!(data_type.as_str(), "integer" | "double precision")
                    })
            })
            .map(|(_, column)| *column)
            .collect();
        let copied = if early.is_empty() {
            copy_table(&source, sqlite, &mut tx, table, &sqlite_columns, &[])?
                .map_err(|_| anyhow::anyhow!("{table}: no column is loaded early"))?
        } else {
            tx.batch_execute("SAVEPOINT sentry_migrate_early_types")?;
            set_types(&mut tx, &table_ident, &early, "integer")?;
            match copy_table(&source, sqlite, &mut tx, table, &sqlite_columns, &early)? {
                Ok(mut copied) => {
                    tx.batch_execute("RELEASE SAVEPOINT sentry_migrate_early_types")?;
                    copied.integer_columns = early.iter().map(|it| it.to_string()).collect();
                    copied
                }
                Err(not_whole) => {
                    // The aborted COPY and the type change go; Sentry 4's type comes back
                    // (explicitly: an earlier load of this migration may have left integer).
                    tx.batch_execute("ROLLBACK TO SAVEPOINT sentry_migrate_early_types")?;
                    set_types(&mut tx, &table_ident, &early, "double precision")?;
                    println!(
                        "    {table}: {not_whole}: kept double precision (Sentry 6's migration 0105 converts it)"
                    );
                    let mut copied =
                        copy_table(&source, sqlite, &mut tx, table, &sqlite_columns, &[])?
                            .map_err(|_| anyhow::anyhow!("{table}: no column is loaded early"))?;
                    copied.kept_double_precision = Some(not_whole);
                    copied
                }
            }
        };
        out.push(copied);
    }
    for statement in &rebuild {
        tx.batch_execute(statement).map_err(|err| {
            crate::pg::explain_sql_error(
                err,
                &format!("re-creating `{statement}` after the copy (all of it rolled back: the target is as before)"),
            )
        })?;
    }
    let sequences = crate::pg::reset_sequences(&mut tx, repeat.reset_sequence_sql)?;
    if !repeat.marker_sql.is_empty() {
        crate::pg::write_load_marker(&mut tx, repeat.marker_sql, repeat.step, repeat.input)?;
    }
    tx.commit()
        .map_err(|err| crate::pg::explain_sql_error(err, "the copy's commit (PostgreSQL checks the foreign keys here; everything was rolled back)"))?;
    Ok((out, sequences))
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

/// Turns the columns of `integer_early` the copy loaded as `integer` back into Sentry 4's
/// `double precision` (exact: every value is whole and within int4): the load as Sentry 4's
/// schema holds it, for running Sentry's unmodified upgrade on a clone. Returns the columns.
pub fn restore_sentry4_types(
    client: &mut Client,
    integer_early: &[(&str, &str)],
) -> Result<Vec<String>> {
    let mut restored = Vec::new();
    for (table, column) in integer_early {
        let data_type: Option<String> = client
            .query_opt(
                "SELECT data_type::text FROM information_schema.columns \
                 WHERE table_schema = 'public' AND table_name = $1 AND column_name = $2",
                &[table, column],
            )?
            .map(|row| row.get(0));
        if data_type.as_deref() == Some("integer") {
            client.batch_execute(&format!(
                "ALTER TABLE {} ALTER COLUMN {} TYPE double precision",
                Ident::table(table.to_string())?,
                Ident::column(column)?.quoted()
            ))?;
            restored.push(format!("{table}.{column}"));
        }
    }
    Ok(restored)
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
    table: &str,
    sqlite_columns: &[String],
    early: &[&str],
) -> Result<Result<TableCopy, NotWhole>> {
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
    let total: u64 = source
        .query_row(
            &format!("SELECT count(*) FROM {}", quote_ident(table)),
            [],
            |row| row.get::<_, i64>(0),
        )
        .with_context(|| format!("cannot count {table} in {}", sqlite.display()))?
        as u64;
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
    let mut progress = Progress::new(table, total);
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
                progress.finish();
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
        }
    }
    drop(rows);
    drop(stmt);
    let copied = writer
        .into_inner()
        .map_err(|err| anyhow::anyhow!("COPY into {table} failed: {}", err.error()))?
        .finish()
        .map_err(|err| crate::pg::explain_sql_error(err, &format!("COPY into {table}")))?;
    progress.finish();
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

/// Asks the catalog for every foreign key and every plain (not unique, not primary key) index
/// of schema public, drops them, and returns the statements that re-create them (foreign keys
/// last). PostgreSQL quotes the names itself (`format('%I')`, `regclass`).
pub const KEYS_AND_INDEXES_SQL: &str = "SELECT format('ALTER TABLE %s DROP CONSTRAINT %I', c.conrelid::regclass, c.conname), \
     format('ALTER TABLE %s ADD CONSTRAINT %I %s', c.conrelid::regclass, c.conname, pg_get_constraintdef(c.oid)), 1 \
     FROM pg_constraint c WHERE c.contype = 'f' AND c.connamespace = 'public'::regnamespace \
     UNION ALL \
     SELECT format('DROP INDEX %s', i.indexrelid::regclass), pg_get_indexdef(i.indexrelid), 0 \
     FROM pg_index i JOIN pg_class t ON t.oid = i.indrelid \
     WHERE t.relnamespace = 'public'::regnamespace AND NOT i.indisprimary AND NOT i.indisunique \
     AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid) \
     ORDER BY 3 DESC, 1";

fn drop_keys_and_indexes(tx: &mut postgres::Transaction<'_>) -> Result<Vec<String>> {
    let rows = tx
        .query(KEYS_AND_INDEXES_SQL, &[])
        .context("cannot list the target's foreign keys and indexes")?;
    let mut rebuild_indexes = Vec::new();
    let mut rebuild_keys = Vec::new();
    for row in rows {
        let (drop, create, is_key): (String, String, i32) = (row.get(0), row.get(1), row.get(2));
        tx.batch_execute(&drop)
            .map_err(|err| crate::pg::explain_sql_error(err, &format!("`{drop}`")))?;
        if is_key == 1 {
            rebuild_keys.push(create);
        } else {
            rebuild_indexes.push(create);
        }
    }
    rebuild_indexes.extend(rebuild_keys);
    Ok(rebuild_indexes)
}

/// Rows per table the copy wrote, for the report.
pub fn rows(copies: &[TableCopy]) -> BTreeMap<String, u64> {
    copies.iter().map(|c| (c.table.clone(), c.rows)).collect()
}
