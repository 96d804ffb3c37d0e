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

/// What the copy of one table did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableCopy {
    pub table: String,
    pub rows: u64,
    /// SQLite columns the target has no column for (loaddata drops them too: no model field).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped_columns: Vec<String>,
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

/// How a column's values are written for COPY's text format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    /// As Django 1.4 reads a SQLite `bool`: only `1` is true.
    Boolean,
    /// The PostgreSQL column's range: a value outside it is refused, never saturated.
    Integer {
        min: i64,
        max: i64,
    },
    Bytea,
    /// Parsed as Django 1.4 parses them (`values::django_datetime`, `django_date`).
    Datetime,
    Date,
    /// Text, numbers as text, times (read by PostgreSQL in the session's zone).
    Text,
}

fn target_of(data_type: &str) -> Target {
    let range = |min: i64, max: i64| Target::Integer { min, max };
    match data_type {
        "boolean" => Target::Boolean,
        "smallint" => range(i16::MIN.into(), i16::MAX.into()),
        "integer" => range(i32::MIN.into(), i32::MAX.into()),
        "bigint" => range(i64::MIN, i64::MAX),
        "bytea" => Target::Bytea,
        "timestamp with time zone" | "timestamp without time zone" => Target::Datetime,
        "date" => Target::Date,
        _ => Target::Text,
    }
}

/// One value in COPY's text format (`\N` for NULL; backslash, tab, newline, CR escaped).
fn encode(out: &mut Vec<u8>, target: Target, value: ValueRef<'_>) -> Result<(), String> {
    match (target, value) {
        (_, ValueRef::Null) => out.extend_from_slice(b"\\N"),
        (Target::Boolean, value) => {
            out.push(if values::django_bool(value) == Some(true) {
                b't'
            } else {
                b'f'
            })
        }
        (Target::Datetime | Target::Date, value) => {
            let text = values::sqlite_text(value).unwrap_or_default();
            let read = if target == Target::Datetime {
                values::django_datetime(&text)
            } else {
                values::django_date(&text)
            };
            match read {
                values::DjangoRead::Value(value) => out.extend_from_slice(value.as_bytes()),
                // Django reads None: loaddata loads NULL (scan-values reports it).
                values::DjangoRead::None => out.extend_from_slice(b"\\N"),
                values::DjangoRead::Error(why) => {
                    return Err(format!(
                        "Django 1.4 cannot read `{}` as a date ({why}; scan-values reports it)",
                        String::from_utf8_lossy(&text).escape_debug()
                    ))
                }
            }
        }
        (Target::Integer { min, max }, ValueRef::Integer(n)) => {
            if !(min..=max).contains(&n) {
                return Err(format!(
                    "{n} is outside the column's range {min}..={max} (scan-values reports it)"
                ));
            }
            out.extend_from_slice(n.to_string().as_bytes())
        }
        (Target::Integer { min, max }, ValueRef::Real(x)) => match values::whole_i64(x) {
            Some(n) if (min..=max).contains(&n) => out.extend_from_slice(n.to_string().as_bytes()),
            _ => {
                return Err(format!(
                    "{x:?} is not an integer in the column's range {min}..={max} (scan-values reports it)"
                ))
            }
        },
        (Target::Bytea, ValueRef::Integer(_) | ValueRef::Real(_)) => {
            return Err("a number in a bytea column: no Sentry 4 model writes one".into())
        }
        (_, ValueRef::Integer(n)) => out.extend_from_slice(n.to_string().as_bytes()),
        (_, ValueRef::Real(x)) => out.extend_from_slice(format!("{x:?}").as_bytes()),
        (Target::Bytea, ValueRef::Blob(bytes) | ValueRef::Text(bytes)) => {
            out.extend_from_slice(b"\\\\x");
            for byte in bytes {
                out.extend_from_slice(format!("{byte:02x}").as_bytes());
            }
        }
        (_, ValueRef::Text(bytes) | ValueRef::Blob(bytes)) => {
            if std::str::from_utf8(bytes).is_err() {
                return Err(
                    "text that is not valid UTF-8 (scan-values finds it; --fit-values fits it)"
                        .into(),
                );
            }
            for &byte in bytes {
                match byte {
                    0 => {
                        return Err(
                            "a NUL character (scan-values finds it; --fit-values fits it)".into(),
                        )
                    }
                    b'\\' => out.extend_from_slice(b"\\\\"),
                    b'\t' => out.extend_from_slice(b"\\t"),
                    b'\n' => out.extend_from_slice(b"\\n"),
                    b'\r' => out.extend_from_slice(b"\\r"),
                    _ => out.push(byte),
                }
            }
        }
    }
    Ok(())
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

/// Copies `tables` of `sqlite` into the target in one transaction, reading naive datetimes in
/// `time_zone`; the same transaction clears an earlier load first and sets the id sequences and
/// the marker last (`repeat`), so a copy that committed is repeated with the same end. Returns
/// what each table got and the sequences; fails (and rolls back) on the first problem, naming
/// the table, column and row.
pub fn copy(
    sqlite: &Path,
    client: &mut Client,
    tables: &[String],
    time_zone: &str,
    repeat: &Repeatable<'_>,
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
        let shared: Vec<(&str, Target)> = columns
            .iter()
            .filter(|(name, _, _)| sqlite_columns.contains(name))
            .map(|(name, data_type, _)| (name.as_str(), target_of(data_type)))
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
                .map(|(name, _)| quote_ident(name))
                .collect::<Vec<_>>()
                .join(", "),
            quote_ident(table)
        );
        let copy_sql = format!(
            "COPY {} ({}) FROM STDIN",
            table_ident,
            shared
                .iter()
                .map(|(name, _)| Ident::column(name).map(|it| it.quoted()))
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
            for (index, (column, target)) in shared.iter().enumerate() {
                if index > 0 {
                    line.push(b'\t');
                }
                if let Err(why) = encode(&mut line, *target, row.get_ref(index + 1)?) {
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
        out.push(TableCopy {
            table: table.clone(),
            rows: copied,
            skipped_columns: skipped,
            secs: (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
        });
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

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(target: Target, value: ValueRef<'_>) -> String {
        let mut out = Vec::new();
        encode(&mut out, target, value).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn values_are_written_as_copy_text_reads_them() {
        const INT: Target = Target::Integer {
            min: i32::MIN as i64,
            max: i32::MAX as i64,
        };
        assert_eq!(enc(Target::Boolean, ValueRef::Integer(1)), "t");
        assert_eq!(enc(Target::Boolean, ValueRef::Integer(0)), "f");
        assert_eq!(enc(INT, ValueRef::Integer(-42)), "-42");
        assert_eq!(enc(INT, ValueRef::Real(3.0)), "3");
        assert_eq!(enc(Target::Text, ValueRef::Real(0.25)), "0.25");
        assert_eq!(enc(Target::Text, ValueRef::Null), "\\N");
        assert_eq!(
            enc(Target::Text, ValueRef::Text("a\tb\nc\\d\re ✓".as_bytes())),
            "a\\tb\\nc\\\\d\\re ✓"
        );
        assert_eq!(
            enc(Target::Datetime, ValueRef::Text(b"2012-03-04 05:06:07.5")),
            "2012-03-04 05:06:07.500000"
        );
        assert_eq!(enc(Target::Bytea, ValueRef::Blob(&[0, 255])), "\\\\x00ff");
        let mut out = Vec::new();
        assert!(encode(&mut out, Target::Text, ValueRef::Text(b"a\0b"))
            .unwrap_err()
            .contains("NUL"));
        assert!(encode(&mut out, Target::Text, ValueRef::Text(b"\xff"))
            .unwrap_err()
            .contains("UTF-8"));
    }

    /// The copy reads what Django 1.4 reads (cases checked against Django 1.4.22 under Python
    /// 2.7.18; see `values::tests`), never saturates, never writes a number as bytea.
    #[test]
    fn values_are_read_as_django_1_4_reads_them() {
        const INT: Target = Target::Integer {
            min: i32::MIN as i64,
            max: i32::MAX as i64,
        };
        const BIG: Target = Target::Integer {
            min: i64::MIN,
            max: i64::MAX,
        };
        for (value, expected) in [
            (ValueRef::Integer(2), "f"),
            (ValueRef::Integer(-1), "f"),
            (ValueRef::Text(b"t"), "f"),
            (ValueRef::Text(b"true"), "f"),
            (ValueRef::Text(b"1"), "t"),
            (ValueRef::Real(1.5), "f"),
            (ValueRef::Text(b"maybe"), "f"),
        ] {
            assert_eq!(enc(Target::Boolean, value), expected, "{value:?}");
        }
        for (text, expected) in [
            ("2012-4-9 4:8:16", "2012-04-09 04:08:16.000000"),
            ("2012-04-23 10:20:30+0100", "\\N"),
            ("2012-04-23 10:20:30\n", "2012-04-23 10:20:30.000000"),
            (
                "2012-04-23T10:20:30.400+02:30",
                "2012-04-23 10:20:30.400000+02:30",
            ),
            ("yesterday", "\\N"),
        ] {
            assert_eq!(
                enc(Target::Datetime, ValueRef::Text(text.as_bytes())),
                expected,
                "{text:?}"
            );
        }
        assert_eq!(
            enc(Target::Date, ValueRef::Text(b"2012-4-9\n")),
            "2012-04-09"
        );
        let mut out = Vec::new();
        assert!(encode(
            &mut out,
            Target::Datetime,
            ValueRef::Text(b"2012-04-23 10:20:30+1:0")
        )
        .is_err());
        assert!(encode(
            &mut out,
            Target::Datetime,
            ValueRef::Text(b"2012-13-01 00:00")
        )
        .is_err());
        assert!(encode(&mut out, BIG, ValueRef::Real(9_223_372_036_854_775_808.0)).is_err());
        assert!(encode(&mut out, INT, ValueRef::Integer(1 << 31)).is_err());
        assert!(encode(&mut out, INT, ValueRef::Real(2.5)).is_err());
        assert!(encode(&mut out, Target::Bytea, ValueRef::Integer(7)).is_err());
        assert_eq!(enc(BIG, ValueRef::Integer(i64::MAX)), i64::MAX.to_string());
    }
}
