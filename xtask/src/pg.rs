//! All PostgreSQL access: connecting with clear errors, creating the target, clearing, the
//! abstime shim, counting rows and checking sequences. SQL values are `$1` parameters.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use postgres::{Client, NoTls};

use crate::config::{quote_identifier, PgTarget};

pub const DEMO_PROJECT_NAME: &str = "Sentry (Internal)";

pub const CLEAR_SQL_TEMPLATE: &str =
    "BEGIN; TRUNCATE TABLE <every table in schema public> RESTART IDENTITY CASCADE; COMMIT";

pub const RESET_SEQUENCE_SQL: &str =
    "SELECT setval(pg_get_serial_sequence($1, 'id'), COALESCE(MAX(id), 1), MAX(id) IS NOT NULL) FROM <table> (every table with a serial id)";

/// PostgreSQL 12 removed `abstime`; Sentry 4.10 and 6.4 compute a group's score with
/// `last_seen::abstime::int`. These make that expression work again (epoch seconds).
pub const ABSTIME_SHIM_SQL: &[&str] = &[
    "CREATE FUNCTION sentry_migrate_timestamptz_to_int(timestamptz) RETURNS integer AS \
     'SELECT extract(epoch FROM $1)::integer' LANGUAGE SQL IMMUTABLE STRICT",
    "CREATE CAST (timestamptz AS integer) WITH FUNCTION sentry_migrate_timestamptz_to_int(timestamptz)",
    "CREATE DOMAIN abstime AS integer",
];

pub fn create_database_sql(dbname: &str) -> String {
    format!(
        "CREATE DATABASE {} ENCODING 'UTF8' TEMPLATE template0",
        quote_identifier(dbname)
    )
}

/// Connects to `dbname` on `target`, retrying for up to `wait` while the server is starting.
pub fn connect(target: &PgTarget, dbname: &str, wait: Duration) -> Result<Client> {
    let mut pg_config = postgres::Config::new();
    pg_config
        .host(&target.host)
        .port(target.port)
        .user(&target.user)
        .dbname(dbname)
        .application_name("sentry-migrate")
        .connect_timeout(Duration::from_secs(10));
    if let Some(password) = &target.password {
        pg_config.password(password.expose());
    }
    let deadline = Instant::now() + wait;
    loop {
        match pg_config.connect(NoTls) {
            Ok(client) => return Ok(client),
            Err(err) => {
                let retry = err
                    .as_db_error()
                    .map(|db| db.code().code() == "57P03")
                    .unwrap_or(true)
                    && Instant::now() < deadline;
                if retry {
                    std::thread::sleep(Duration::from_millis(200));
                    continue;
                }
                return Err(explain_connect_error(target, dbname, err));
            }
        }
    }
}

fn explain_connect_error(target: &PgTarget, dbname: &str, err: postgres::Error) -> anyhow::Error {
    let at = format!("{}:{}", target.host, target.port);
    let hint = match err.as_db_error().map(|db| db.code().code()) {
        Some("28P01") => format!("password authentication failed for role `{}`: check PGPASSWORD", target.user),
        Some("28000") => format!("role `{}` may not connect to `{dbname}` (pg_hba.conf or a missing role): check PGUSER and the server's pg_hba.conf", target.user),
        Some("3D000") => format!("database `{dbname}` does not exist on {at}"),
        Some(code) => format!("the server refused the connection (SQLSTATE {code})"),
        None if err.to_string().contains("password missing") => {
            format!("the server at {at} wants a password for role `{}`: set PGPASSWORD", target.user)
        }
        None => format!("PostgreSQL is not reachable at {at}: is the server running? check PGHOST and PGPORT"),
    };
    anyhow::Error::new(err).context(format!("cannot connect to {target}: {hint}"))
}

/// Server version as `server_version_num` (150004 for 15.4).
pub fn server_version_num(client: &mut Client) -> Result<i32> {
    let row = client.query_one("SELECT current_setting('server_version_num')::int", &[])?;
    Ok(row.get(0))
}

pub fn database_exists(admin: &mut Client, dbname: &str) -> Result<bool> {
    let rows = admin.query("SELECT 1 FROM pg_database WHERE datname = $1", &[&dbname])?;
    Ok(!rows.is_empty())
}

pub fn create_database(admin: &mut Client, dbname: &str) -> Result<()> {
    admin
        .batch_execute(&create_database_sql(dbname))
        .with_context(|| format!("cannot create database `{dbname}`: the role needs CREATEDB, or create it as a DBA and re-run"))
}

pub fn drop_database(admin: &mut Client, dbname: &str) -> Result<()> {
    admin
        .batch_execute(&format!(
            "DROP DATABASE IF EXISTS {}",
            quote_identifier(dbname)
        ))
        .with_context(|| format!("cannot drop database `{dbname}`"))
}

/// Tables of schema `public`, sorted.
pub fn public_tables(client: &mut Client) -> Result<Vec<String>> {
    let rows = client.query(
        "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' ORDER BY 1",
        &[],
    )?;
    rows.iter()
        .map(|row| checked_table_name(row.get(0)))
        .collect()
}

/// Table names from the catalog go into SQL quoted; we also refuse odd ones outright.
fn checked_table_name(name: String) -> Result<String> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        bail!("unexpected table name {name:?} in schema public: this tool only handles Sentry's own tables");
    }
    Ok(name)
}

/// `SELECT count(*)` of each table.
pub fn table_counts(client: &mut Client) -> Result<BTreeMap<String, u64>> {
    let mut counts = BTreeMap::new();
    for table in public_tables(client)? {
        let row = client.query_one(
            &format!("SELECT count(*) FROM {}", quote_identifier(&table)),
            &[],
        )?;
        counts.insert(table, row.get::<_, i64>(0) as u64);
    }
    Ok(counts)
}

pub fn is_superuser(client: &mut Client) -> Result<bool> {
    let row = client.query_one(
        "SELECT rolsuper FROM pg_roles WHERE rolname = current_user",
        &[],
    )?;
    Ok(row.get(0))
}

/// Rows `sentry upgrade` put into a fresh database; refuses anything that looks like real data.
pub fn clear_generated_rows(client: &mut Client) -> Result<BTreeMap<String, u64>> {
    let before = table_counts(client)?;
    let projects: Vec<String> = client
        .query("SELECT name::text FROM sentry_project ORDER BY id", &[])
        .context("cannot read sentry_project: did `sentry upgrade` run on this database?")?
        .iter()
        .map(|row| row.get(0))
        .collect();
    let others: Vec<_> = projects
        .iter()
        .filter(|name| *name != DEMO_PROJECT_NAME)
        .collect();
    if !others.is_empty() {
        bail!(
            "sentry_project holds projects that `sentry upgrade` does not create ({others:?}): \
             this database has data of its own; use an empty target database"
        );
    }
    for table in ["sentry_message", "sentry_groupedmessage", "sentry_team"] {
        if before.get(table).copied().unwrap_or(0) > 0 {
            bail!("{table} is not empty: this database has data of its own; use an empty target database");
        }
    }
    let tables: Vec<String> = before.keys().map(|it| quote_identifier(it)).collect();
    let mut tx = client.transaction()?;
    tx.batch_execute(&format!(
        "TRUNCATE TABLE {} RESTART IDENTITY CASCADE",
        tables.join(", ")
    ))?;
    tx.commit()?;
    Ok(before.into_iter().filter(|(_, rows)| *rows > 0).collect())
}

/// What the shim step did.
#[derive(Debug, PartialEq, Eq)]
pub enum ShimOutcome {
    NotNeeded { version: i32 },
    AlreadyInstalled,
    Installed,
}

pub fn install_abstime_shim(client: &mut Client) -> Result<ShimOutcome> {
    let version = server_version_num(client)?;
    if version < 120000 {
        return Ok(ShimOutcome::NotNeeded { version });
    }
    let exists = client.query("SELECT 1 FROM pg_type WHERE typname = 'abstime'", &[])?;
    if !exists.is_empty() {
        return Ok(ShimOutcome::AlreadyInstalled);
    }
    if !is_superuser(client)? {
        let dbname: String = client
            .query_one("SELECT current_database()::text", &[])?
            .get(0);
        bail!(
            "PostgreSQL {} removed the type `abstime`, which Sentry 4 and 6 use to score every new \
             event (without it new events are silently dropped). Creating a cast needs a superuser: \
             ask a DBA to run, in database `{dbname}`:\n  {};\nthen re-run `cargo xtask migrate`",
            version / 10000,
            ABSTIME_SHIM_SQL.join(";\n  ")
        );
    }
    let mut tx = client.transaction()?;
    for sql in ABSTIME_SHIM_SQL {
        tx.batch_execute(sql)
            .with_context(|| format!("abstime shim: `{sql}` failed"))?;
    }
    tx.commit()?;
    Ok(ShimOutcome::Installed)
}

/// One id sequence compared with its table.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SequenceState {
    pub table: String,
    pub max_id: i64,
    pub next_value: i64,
}

/// Sets every `id` sequence past its table's max(id), then reads them back.
pub fn reset_sequences(client: &mut Client) -> Result<Vec<SequenceState>> {
    for (table, _) in serial_tables(client)? {
        let quoted = quote_identifier(&table);
        client.query_one(
            &format!("SELECT setval(pg_get_serial_sequence($1, 'id'), COALESCE(MAX(id), 1), MAX(id) IS NOT NULL) FROM {quoted}"),
            &[&quoted],
        )?;
    }
    sequences(client)
}

fn serial_tables(client: &mut Client) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for table in public_tables(client)? {
        let row = client.query_one(
            "SELECT pg_get_serial_sequence($1, 'id')",
            &[&quote_identifier(&table)],
        );
        // Tables without an `id` column raise an error; they have no sequence to check.
        if let Ok(row) = row {
            if let Some(seq) = row.get::<_, Option<String>>(0) {
                out.push((table, seq));
            }
        }
    }
    Ok(out)
}

/// Every `id` sequence with the next value it would hand out.
pub fn sequences(client: &mut Client) -> Result<Vec<SequenceState>> {
    let mut out = Vec::new();
    for (table, seq) in serial_tables(client)? {
        let max_id: Option<i64> = client
            .query_one(
                &format!("SELECT MAX(id)::bigint FROM {}", quote_identifier(&table)),
                &[],
            )?
            .get(0);
        // pg_sequences.last_value is NULL until the sequence hands out (or is set to) a value.
        let row = client.query_one(
            "SELECT last_value, start_value FROM pg_sequences \
             WHERE (quote_ident(schemaname) || '.' || quote_ident(sequencename)) = $1",
            &[&seq],
        )?;
        let next_value = match row.get::<_, Option<i64>>(0) {
            Some(last_value) => last_value + 1,
            None => row.get::<_, i64>(1),
        };
        out.push(SequenceState {
            table,
            max_id: max_id.unwrap_or(0),
            next_value,
        });
    }
    Ok(out)
}

/// Events whose group is missing (Sentry 6's merge of duplicate groups must repoint them).
pub fn orphan_events(client: &mut Client) -> Result<u64> {
    let row = client.query_one(
        "SELECT count(*) FROM sentry_message m WHERE m.group_id IS NOT NULL \
         AND NOT EXISTS (SELECT 1 FROM sentry_groupedmessage g WHERE g.id = m.group_id)",
        &[],
    )?;
    Ok(row.get::<_, i64>(0) as u64)
}

/// Connects to a maintenance database (`postgres`, else `template1`) to create or drop others.
pub fn connect_admin(target: &PgTarget, wait: Duration) -> Result<Client> {
    match connect(target, "postgres", wait) {
        Ok(client) => Ok(client),
        Err(err) if format!("{err:#}").contains("does not exist") => {
            connect(target, "template1", wait)
        }
        Err(err) => Err(err),
    }
}
