//! The copy engine: SQLite rows streamed straight into the schema `sentry upgrade` built, with
//! COPY, over two sessions (both cores: one PostgreSQL backend parses while the other does, and
//! each session's thread reads SQLite while its backend parses). Three transactions: the clear
//! and the drop of foreign keys and plain indexes, committed with the load's marker, which keeps
//! the statements that re-create them; the rows, one transaction per session, committed only
//! when both sessions succeeded; the indexes (over both sessions), the keys, the sequences and
//! the marker's "done". A run stopped anywhere leaves its marker: a re-run clears the rows,
//! re-creates nothing twice and loads again. Memory stays flat: one row at a time through a
//! bounded buffer per session.
//!
//! Values are converted by the target column's type. Naive datetime text goes in as it is, with
//! the session's `TimeZone` set to Sentry 4's `TIME_ZONE`: PostgreSQL then reads it exactly as it
//! reads what Django 1.4's PostgreSQL backend sends (`USE_TZ` off), daylight saving included.

use std::{
    collections::{BTreeMap, VecDeque},
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering},
        Barrier, Mutex,
    },
};

use anyhow::{anyhow, bail, Context, Result};
use postgres::Client;
use serde::{Deserialize, Serialize};

use crate::{
    ident::Ident,
    progress::{Bars, Progress},
    sqlite::{open_read_only, quote_ident},
};

mod encode;
mod table;

pub use table::NotWhole;
use table::{copy_with_early_types, Work};

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

/// What makes the copy safe to repeat (the plan carries the SQL).
pub struct Repeatable<'a> {
    /// `TRUNCATE_SQL` when the target holds this migration's own earlier load, run first.
    pub truncate_sql: Option<&'a str>,
    /// Run per id sequence before the commit.
    pub reset_sequence_sql: &'a str,
    /// Records `(step, input)` in the target with the clear (none: the bench's copy, which
    /// then keeps no statements to re-create what it dropped).
    pub marker_sql: &'a [&'a str],
    pub step: &'a str,
    pub input: &'a str,
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

/// Sessions the copy runs over: this machine's two cores (`bench` measured one against two).
pub const SESSIONS: usize = 2;

/// What the last transaction runs after the keys: the marker's pending statements are done.
pub const REBUILT_SQL: &str = "UPDATE sentry_migrate_load SET rebuild = NULL, loaded_at = now()";

/// Copies `tables` of `sqlite` into the target over `clients` (one session each), reading
/// naive datetimes in `time_zone` in every session. The first transaction clears an earlier load
/// (`repeat`), drops the foreign keys and plain indexes and records, with the marker, the
/// statements that re-create them (with those an interrupted earlier run recorded); the rows go
/// in one transaction per session, committed when every session succeeded; then the indexes are
/// re-created over the sessions, and the keys, the id sequences and the marker's "done" in one
/// transaction. Columns of `integer_early` go in as `integer` when every value is whole
/// (`table::copy_with_early_types`). Returns what each table got (in `tables`' order) and the
/// sequences; fails on the first problem, naming the table, column and row.
pub fn copy(
    sqlite: &Path,
    clients: &mut [Client],
    tables: &[String],
    time_zone: &str,
    repeat: &Repeatable<'_>,
    integer_early: &[(&str, &str)],
) -> Result<(Vec<TableCopy>, Vec<crate::pg::SequenceState>)> {
    let source = open_read_only(sqlite)?;
    let (first, _) = clients
        .split_first_mut()
        .context("the copy needs a session")?;
    let target_tables: std::collections::BTreeSet<String> = first
        .query(
            "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public'",
            &[],
        )?
        .iter()
        .map(|row| row.get(0))
        .collect();
    let mut work = Vec::new();
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
        let rows = source
            .query_row(
                &format!("SELECT count(*) FROM {}", quote_ident(table)),
                [],
                |row| row.get::<_, i64>(0),
            )
            .with_context(|| format!("cannot count {table} in {}", sqlite.display()))?
            as u64;
        work.push(Work {
            table: table.clone(),
            sqlite_columns,
            rows,
        });
    }
    drop(source);

    // 1. The clear and the drops, committed with the marker and what re-creates the drops.
    let rebuild = {
        let mut tx = first.transaction()?;
        if let Some(truncate_sql) = repeat.truncate_sql {
            crate::pg::truncate_tables(&mut tx, truncate_sql)?;
        }
        let mut rebuild = crate::pg::pending_rebuild(&mut tx)?;
        for statement in drop_keys_and_indexes(&mut tx)? {
            if !rebuild.contains(&statement) {
                rebuild.push(statement);
            }
        }
        // Indexes first, foreign keys (ALTER TABLE … ADD CONSTRAINT) last.
        rebuild.sort_by_key(|it| it.starts_with("ALTER TABLE"));
        if !repeat.marker_sql.is_empty() {
            crate::pg::write_load_marker(&mut tx, repeat.marker_sql, repeat.step, repeat.input)?;
            crate::pg::record_pending_rebuild(&mut tx, &rebuild)?;
        }
        tx.commit()
            .context("cannot commit the clear before the copy")?;
        rebuild
    };

    match rows_and_rebuild(
        sqlite,
        clients,
        tables,
        work,
        time_zone,
        repeat,
        integer_early,
        &rebuild,
    ) {
        Ok(done) => Ok(done),
        Err(err) => {
            let (first, _) = clients
                .split_first_mut()
                .context("the copy needs a session")?;
            match undo(first, &rebuild, repeat, integer_early) {
                Ok(()) => Err(anyhow!(
                    "{err:#}; all of it rolled back: the target is as before (empty, its indexes and foreign keys back)"
                )),
                Err(undo_err) => Err(anyhow!(
                    "{err:#}; the target could not be emptied again ({undo_err:#}): its load marker keeps what re-creates \
                     the dropped indexes and keys, and the step run again clears the rows and loads again"
                )),
            }
        }
    }
}

/// After a failed copy: the rows cleared, the early integer columns back to Sentry 4's type and
/// every dropped index and key re-created on the empty tables, in one transaction, the marker
/// left saying nothing is pending.
fn undo(
    client: &mut Client,
    rebuild: &[String],
    repeat: &Repeatable<'_>,
    integer_early: &[(&str, &str)],
) -> Result<()> {
    let mut tx = client.transaction()?;
    crate::pg::truncate_tables(&mut tx, crate::pg::TRUNCATE_SQL)?;
    restore_sentry4_types(&mut tx, integer_early)?;
    drop_keys_and_indexes(&mut tx)?;
    for statement in rebuild {
        tx.batch_execute(statement)
            .with_context(|| format!("re-creating `{statement}` on the emptied tables"))?;
    }
    if !repeat.marker_sql.is_empty() {
        tx.batch_execute(REBUILT_SQL)?;
    }
    tx.commit()?;
    Ok(())
}

/// What a copy stopped before its end left pending, put back on the (cleared) target before
/// another kind of load (`pg-load` after `--engine loaddata`): every plain index and foreign key
/// dropped and each recorded statement run, in the caller's transaction, and the early integer
/// columns back to Sentry 4's type. Returns how many statements ran.
pub fn recreate_pending(
    tx: &mut postgres::Transaction<'_>,
    integer_early: &[(&str, &str)],
) -> Result<usize> {
    let pending = crate::pg::pending_rebuild(tx)?;
    if pending.is_empty() {
        return Ok(0);
    }
    restore_sentry4_types(tx, integer_early)?;
    drop_keys_and_indexes(tx)?;
    for statement in &pending {
        tx.batch_execute(statement).map_err(|err| {
            crate::pg::explain_sql_error(
                err,
                &format!("re-creating `{statement}`, left pending by an interrupted copy"),
            )
        })?;
    }
    Ok(pending.len())
}

/// The rows over the sessions, then the indexes, keys and sequences (see [`copy`]).
#[allow(clippy::too_many_arguments)]
fn rows_and_rebuild(
    sqlite: &Path,
    clients: &mut [Client],
    tables: &[String],
    mut work: Vec<Work>,
    time_zone: &str,
    repeat: &Repeatable<'_>,
    integer_early: &[(&str, &str)],
    rebuild: &[String],
) -> Result<(Vec<TableCopy>, Vec<crate::pg::SequenceState>)> {
    // 2. The rows: the largest tables first, each session taking the next table when it is free.
    work.sort_by_key(|it| std::cmp::Reverse(it.rows * it.sqlite_columns.len() as u64));
    let queue = Mutex::new(work.iter().collect::<VecDeque<_>>());
    let (failed, barrier, bars) = (
        AtomicBool::new(false),
        Barrier::new(clients.len()),
        Bars::new(),
    );
    let results = over_sessions(clients, |client| {
        session(
            sqlite,
            client,
            time_zone,
            integer_early,
            &queue,
            (&failed, &barrier, &bars),
        )
    });
    let mut copies = Vec::new();
    let mut errors = Vec::new();
    for result in results {
        match result {
            Ok(mut done) => copies.append(&mut done),
            Err(err) => errors.push(err),
        }
    }
    if let Some(err) = errors
        .iter()
        .position(|err| !err.to_string().contains(OTHER_SESSION_FAILED))
        .map(|at| errors.swap_remove(at))
        .or_else(|| errors.pop())
    {
        return Err(err);
    }
    copies.sort_by_key(|copy| tables.iter().position(|t| *t == copy.table));

    crate::util::test_hold("pg-copy:rows");
    // 3. Indexes over the sessions, then keys, sequences and the marker's "done" in one.
    let (indexes, keys): (Vec<&String>, Vec<&String>) = rebuild
        .iter()
        .partition(|it| !it.starts_with("ALTER TABLE"));
    let queue = Mutex::new(indexes.into_iter().collect::<VecDeque<_>>());
    let built = over_sessions(clients, |client| -> Result<()> {
        while let Some(statement) = queue
            .lock()
            .map_err(|_| anyhow!("an index session panicked"))?
            .pop_front()
        {
            client.batch_execute(statement).map_err(|err| {
                crate::pg::explain_sql_error(
                    err,
                    &format!("re-creating `{statement}` after the copy"),
                )
            })?;
        }
        Ok(())
    });
    built.into_iter().collect::<Result<Vec<()>>>()?;
    let (first, _) = clients
        .split_first_mut()
        .context("the copy needs a session")?;
    let mut tx = first.transaction()?;
    for statement in keys {
        tx.batch_execute(statement).map_err(|err| {
            crate::pg::explain_sql_error(
                err,
                &format!("re-creating `{statement}` after the copy (PostgreSQL checks the foreign key here)"),
            )
        })?;
    }
    let sequences = crate::pg::reset_sequences(&mut tx, repeat.reset_sequence_sql)?;
    if !repeat.marker_sql.is_empty() {
        tx.batch_execute(REBUILT_SQL)
            .context("cannot record the copy as done in its marker")?;
    }
    tx.commit().map_err(|err| {
        crate::pg::explain_sql_error(err, "the copy's last commit (the keys and sequences)")
    })?;
    Ok((copies, sequences))
}

/// One session's share of the rows: its own SQLite reader and transaction; tables taken from
/// `queue` until it is empty or another session failed; committed only when every session is
/// through (`barrier`) and none failed.
fn session(
    sqlite: &Path,
    client: &mut Client,
    time_zone: &str,
    integer_early: &[(&str, &str)],
    queue: &Mutex<VecDeque<&Work>>,
    (failed, barrier, bars): (&AtomicBool, &Barrier, &Bars),
) -> Result<Vec<TableCopy>> {
    // Every session reaches the barrier, a panicking one too (as a failure, from the guard's
    // drop while it unwinds), or the other would wait there for ever.
    let mut arrival = Arrival {
        barrier,
        failed,
        arrived: false,
    };
    let result = session_rows(
        sqlite,
        client,
        time_zone,
        integer_early,
        queue,
        failed,
        bars,
    );
    if result.is_err() {
        failed.store(true, Ordering::Relaxed);
    }
    arrival.arrived = true;
    barrier.wait();
    let (tx, copies) = result?;
    if failed.load(Ordering::Relaxed) {
        drop(tx);
        bail!("rolled back: {OTHER_SESSION_FAILED}");
    }
    tx.commit()
        .map_err(|err| crate::pg::explain_sql_error(err, "a copy session's commit"))?;
    Ok(copies)
}

/// What a session says that rolled back because another failed (the copy reports the other's
/// error instead).
const OTHER_SESSION_FAILED: &str = "the other session failed";

/// `work` on each of `clients` in a thread of its own, all at once; a thread that panicked
/// gives an error.
fn over_sessions<T: Send>(
    clients: &mut [Client],
    work: impl Fn(&mut Client) -> Result<T> + Sync,
) -> Vec<Result<T>> {
    std::thread::scope(|scope| {
        let work = &work;
        let handles: Vec<_> = clients
            .iter_mut()
            .map(|client| scope.spawn(move || work(client)))
            .collect();
        handles
            .into_iter()
            .map(|handle| {
                handle
                    .join()
                    .unwrap_or_else(|_| Err(anyhow!("a copy session panicked")))
            })
            .collect()
    })
}

/// Makes a session that unwinds (a panic) reach the barrier as a failed one.
struct Arrival<'a> {
    barrier: &'a Barrier,
    failed: &'a AtomicBool,
    arrived: bool,
}

impl Drop for Arrival<'_> {
    fn drop(&mut self) {
        if !self.arrived {
            self.failed.store(true, Ordering::Relaxed);
            self.barrier.wait();
        }
    }
}

/// A session's transaction and the tables it copied in it (not committed).
fn session_rows<'c>(
    sqlite: &Path,
    client: &'c mut Client,
    time_zone: &str,
    integer_early: &[(&str, &str)],
    queue: &Mutex<VecDeque<&Work>>,
    failed: &AtomicBool,
    bars: &Bars,
) -> Result<(postgres::Transaction<'c>, Vec<TableCopy>)> {
    let source = open_read_only(sqlite)?;
    let mut tx = client.transaction()?;
    // As Django's backend does per connection: the session reads naive times in TIME_ZONE.
    tx.query_one("SELECT set_config('TimeZone', $1, true)", &[&time_zone])
        .with_context(|| format!("PostgreSQL does not know the time zone `{time_zone}`"))?;
    tx.batch_execute("SET CONSTRAINTS ALL DEFERRED")?;
    let mut copies = Vec::new();
    while !failed.load(Ordering::Relaxed) {
        let Some(next) = queue
            .lock()
            .map_err(|_| anyhow!("another copy session panicked"))?
            .pop_front()
        else {
            break;
        };
        let progress = Progress::within(bars, &next.table);
        let copied = copy_with_early_types(
            &source,
            sqlite,
            &mut tx,
            next,
            integer_early,
            &progress,
            failed,
        );
        progress.finish();
        copies.push(copied?);
    }
    Ok((tx, copies))
}

/// Turns the columns of `integer_early` the copy loaded as `integer` back into Sentry 4's
/// `double precision` (exact: every value is whole and within int4): the load as Sentry 4's
/// schema holds it, for running Sentry's unmodified upgrade on a clone. Returns the columns.
pub fn restore_sentry4_types(
    client: &mut impl postgres::GenericClient,
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
