//! All PostgreSQL access: connecting with clear errors, creating the target, clearing, the
//! abstime shim, counting rows and checking sequences. SQL values are `$1` parameters.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
use postgres::{Client, GenericClient, NoTls};
use postgres_openssl::MakeTlsConnector;

use crate::{
    config::{quote_identifier, PgTarget, SslMode},
    pgpass,
};

pub const DEMO_PROJECT_NAME: &str = "Sentry (Internal)";

/// What `pg-clear-generated-rows` runs, in one transaction; `{tables}` is every table in
/// schema public, quoted.
pub const TRUNCATE_SQL: &str = "TRUNCATE TABLE {tables} RESTART IDENTITY CASCADE";

/// What `pg-load` runs after the load for every table with an `id` sequence; `{table}` and `$1`
/// are the table's quoted name.
pub const RESET_SEQUENCE_SQL: &str =
    "SELECT setval(pg_get_serial_sequence($1, 'id'), COALESCE(MAX(id), 1), MAX(id) IS NOT NULL) FROM {table}";

/// The tool's own table in the target: the load a step committed there (`step`, and `input`:
/// the sha256 of what it read). Written in the load's transaction (`pg-copy`; `pg-load` in the
/// transaction before Django's), so a run that stopped after the commit and before its journal
/// can tell its own load of the same input from data of someone else. Left out of every table
/// list this tool counts, compares or clears ([`public_tables`]); dropped by `verify-sentry6`.
pub const LOAD_MARKER_TABLE: &str = "sentry_migrate_load";

/// What a load runs to record itself; `$1` = the step, `$2` = its input.
pub const LOAD_MARKER_SQL: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS sentry_migrate_load (step text NOT NULL, input text NOT NULL, loaded_at timestamptz NOT NULL DEFAULT now())",
    "DELETE FROM sentry_migrate_load",
    "INSERT INTO sentry_migrate_load (step, input) VALUES ($1, $2)",
];

/// What `verify-sentry6` runs first: the load is Sentry 6's data now, never to be loaded again.
pub const DROP_LOAD_MARKER_SQL: &str = "DROP TABLE IF EXISTS sentry_migrate_load";

/// Asked in the maintenance database before creating the target.
pub const DATABASE_EXISTS_SQL: &str = "SELECT 1 FROM pg_database WHERE datname = $1";

/// PostgreSQL 12 removed `abstime`; Sentry 4.10 and 6.4 compute a group's score with
/// `last_seen::abstime::int`. These make that expression work again (epoch seconds).
pub const ABSTIME_SHIM_SQL: &[&str] = &[
    "CREATE OR REPLACE FUNCTION sentry_migrate_timestamptz_to_int(timestamptz) RETURNS integer AS \
     'SELECT extract(epoch FROM $1)::integer' LANGUAGE SQL IMMUTABLE STRICT",
    "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_cast WHERE castsource = 'timestamptz'::regtype \
     AND casttarget = 'integer'::regtype) THEN CREATE CAST (timestamptz AS integer) \
     WITH FUNCTION sentry_migrate_timestamptz_to_int(timestamptz); END IF; END $$",
    "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_type WHERE typname = 'abstime') THEN \
     CREATE DOMAIN abstime AS integer; END IF; END $$",
];

/// The shim as a script for a DBA: one transaction, and every statement safe to run again (a
/// function the app role created already is replaced, the cast and domain made only if missing).
pub fn abstime_shim_script(shim_sql: &[&str]) -> String {
    let mut out = String::from("BEGIN;\n");
    for sql in shim_sql {
        out.push_str(sql);
        out.push_str(";\n");
    }
    out.push_str("COMMIT;\n");
    out
}

pub fn create_database_sql(dbname: &str) -> String {
    format!(
        "CREATE DATABASE {} ENCODING 'UTF8' TEMPLATE template0",
        quote_identifier(dbname)
    )
}

/// Connects to `dbname` on `target`, retrying for up to `wait` only while the server refuses
/// connections or says it is starting; any other failure (a password asked for, refused, TLS,
/// a missing database or role) is reported at once.
pub fn connect(target: &PgTarget, dbname: &str, wait: Duration) -> Result<Client> {
    let mut pg_config = postgres::Config::new();
    pg_config
        .host(&target.host)
        .port(target.port)
        .user(&target.user)
        .dbname(dbname)
        .application_name("sentry-migrate")
        .connect_timeout(Duration::from_secs(10));
    if let Some(addr) = target.hostaddr {
        pg_config.hostaddr(addr);
    }
    // PGPASSWORD, else the password file, as libpq reads it (its note, if it was ignored).
    let mut passfile_note = None;
    match (&target.password, &target.passfile) {
        (Some(password), _) => {
            pg_config.password(password.expose());
        }
        (None, Some(file)) => {
            match pgpass::lookup(file, &target.host, target.port, dbname, &target.user) {
                pgpass::Lookup::Found { password, .. } => {
                    pg_config.password(password);
                }
                pgpass::Lookup::IgnoredPermissions(path) => {
                    passfile_note = Some(format!(
                    "{} is ignored, as libpq ignores it: it is readable by group or others (chmod 0600 it)",
                    path.display()
                ));
                }
                pgpass::Lookup::NotFound => {}
            }
        }
        (None, None) => {}
    }
    // libpq ignores sslmode on a Unix socket (no TLS there), whatever the mode.
    let tls = match target.is_socket() {
        true => None,
        false => tls_connector(target)?,
    };
    pg_config.ssl_mode(match (target.is_socket(), target.sslmode) {
        (true, _) | (_, SslMode::Disable) => postgres::config::SslMode::Disable,
        (_, SslMode::Allow | SslMode::Prefer) => postgres::config::SslMode::Prefer,
        (_, SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull) => {
            postgres::config::SslMode::Require
        }
    });
    let deadline = Instant::now() + wait;
    loop {
        let attempt = match &tls {
            None => pg_config.connect(NoTls),
            Some(connector) => pg_config.connect(connector.clone()),
        };
        match attempt {
            Ok(client) => return Ok(client),
            Err(err) => {
                let failure = ConnectFailure::of(&err);
                if failure.may_be_starting() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(200));
                    continue;
                }
                let err = explain_connect_error(target, dbname, err, failure);
                return Err(match &passfile_note {
                    Some(note) => err.context(note.clone()),
                    None => err,
                });
            }
        }
    }
}

/// Why a connection failed, by the error's kind: the server's SQLSTATE, the socket's
/// `io::ErrorKind`, or (tokio-postgres keeps its kind private, and its `Display` is the kind's
/// fixed text and nothing else) the kind read from that text, with the cause beneath it.
#[derive(Debug, PartialEq, Eq)]
enum ConnectFailure {
    /// The server answered with an error (SQLSTATE).
    Server(String),
    /// The server asked for a password and none was given (not sent to the server at all).
    PasswordMissing,
    /// The TCP connection or the socket file: refused, missing, unreachable, not resolved.
    Unreachable(std::io::ErrorKind, String),
    /// No answer within the connect timeout.
    Timeout,
    /// The TLS handshake (or the server refusing TLS that the mode requires).
    Tls(String),
    /// Anything else, in the library's words.
    Other(String),
}

impl ConnectFailure {
    fn of(err: &postgres::Error) -> ConnectFailure {
        use std::error::Error as _;
        if let Some(db) = err.as_db_error() {
            return ConnectFailure::Server(db.code().code().to_string());
        }
        let cause = err.source().map(|it| it.to_string()).unwrap_or_default();
        if let Some(io) = err
            .source()
            .and_then(|it| it.downcast_ref::<std::io::Error>())
        {
            return ConnectFailure::Unreachable(io.kind(), io.to_string());
        }
        match err.to_string().as_str() {
            "invalid configuration" if cause == "password missing" => {
                ConnectFailure::PasswordMissing
            }
            "timeout waiting for server" => ConnectFailure::Timeout,
            "error performing TLS handshake" => ConnectFailure::Tls(cause),
            kind => ConnectFailure::Other(match cause.is_empty() {
                true => kind.to_string(),
                false => format!("{kind}: {cause}"),
            }),
        }
    }

    /// A server that is starting (or restarting) refuses connections, has no socket file yet,
    /// or says so (57P03): worth another try. Nothing else is.
    fn may_be_starting(&self) -> bool {
        use std::io::ErrorKind::*;
        match self {
            ConnectFailure::Server(code) => code == "57P03",
            ConnectFailure::Unreachable(kind, _) => {
                matches!(kind, ConnectionRefused | NotFound | ConnectionReset)
            }
            _ => false,
        }
    }
}

/// A field of a password-file line: `:` and `\` escaped.
fn pgpass_field(text: &str) -> String {
    text.replace('\\', "\\\\").replace(':', "\\:")
}

/// The TLS side of `target.sslmode`, as libpq means it: `prefer`/`require` encrypt without
/// verifying (unless a root certificate is given: then `require` verifies as `verify-ca`),
/// `verify-ca` checks the chain against `sslrootcert` (default `~/.postgresql/root.crt`;
/// `system`: the system's CAs), `verify-full` also the host name. `None`: no TLS.
fn tls_connector(target: &PgTarget) -> Result<Option<MakeTlsConnector>> {
    let default_root = std::env::var_os("HOME")
        .map(|home| std::path::PathBuf::from(home).join(".postgresql/root.crt"))
        .filter(|path| path.exists());
    let root = target.sslrootcert.clone().or(default_root);
    let verify = match (target.sslmode, &root) {
        (SslMode::Disable, _) => return Ok(None),
        (SslMode::Allow | SslMode::Prefer, _) | (SslMode::Require, None) => None,
        (SslMode::Require | SslMode::VerifyCa, _) => Some(false),
        (SslMode::VerifyFull, _) => Some(true),
    };
    let mut builder = SslConnector::builder(SslMethod::tls())
        .context("cannot set up TLS (OpenSSL) for the PostgreSQL connection")?;
    let Some(check_host) = verify else {
        builder.set_verify(SslVerifyMode::NONE);
        return Ok(Some(MakeTlsConnector::new(builder.build())));
    };
    let mode = target.sslmode.name();
    match root.as_deref() {
        Some(path) if path == std::path::Path::new("system") => builder
            .set_default_verify_paths()
            .context("cannot load the system's CA certificates")?,
        Some(path) => builder.set_ca_file(path).with_context(|| {
            format!(
                "sslmode={mode}: cannot read the root certificate {} (PGSSLROOTCERT or sslrootcert)",
                path.display()
            )
        })?,
        None => bail!(
            "sslmode={mode} checks the server's certificate against a root certificate, and none is given: \
             set PGSSLROOTCERT (or sslrootcert in --database-url) to the CA that signed the server's, or `system`"
        ),
    }
    let mut connector = MakeTlsConnector::new(builder.build());
    if !check_host {
        connector.set_callback(|config, _| {
            config.set_verify_hostname(false);
            Ok(())
        });
    }
    Ok(Some(connector))
}

fn explain_connect_error(
    target: &PgTarget,
    dbname: &str,
    err: postgres::Error,
    failure: ConnectFailure,
) -> anyhow::Error {
    let at = format!("{}:{}", target.host, target.port);
    let user = &target.user;
    let hint = match failure {
        ConnectFailure::Server(code) => match code.as_str() {
            "28P01" => format!("password authentication failed for role `{user}`: check PGPASSWORD (or the password file, ~/.pgpass or PGPASSFILE); the password tried came from {}", target.password_source(dbname)),
            "28000" => format!("role `{user}` may not connect to `{dbname}` (pg_hba.conf or a missing role): check PGUSER and the server's pg_hba.conf"),
            "3D000" => format!("database `{dbname}` does not exist on {at}"),
            "57P03" => format!("the server at {at} is starting or shutting down and did not accept connections in time"),
            code => format!("the server refused the connection (SQLSTATE {code})"),
        },
        ConnectFailure::PasswordMissing => {
            let host = match target.host.as_str() {
                crate::config::DEFAULT_SOCKET_DIR => "localhost".to_string(),
                host => pgpass_field(host),
            };
            let line = format!("{host}:{}:{}:{}:PASSWORD", target.port, pgpass_field(dbname), pgpass_field(user));
            let searched = match &target.passfile {
                Some(file) => format!(" ({} has no line for it)", file.display()),
                None => String::new(),
            };
            format!("the server at {at} asks for a password for role `{user}` and none is given{searched}: add the line `{line}` to ~/.pgpass (mode 0600; or the file PGPASSFILE names), or set PGPASSWORD")
        }
        ConnectFailure::Unreachable(kind, cause) => match kind {
            std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotFound => format!(
                "PostgreSQL is not reachable at {at} ({cause}): is the server running? check PGHOST and PGPORT"
            ),
            _ => format!("PostgreSQL is not reachable at {at} ({cause}): check PGHOST (and PGHOSTADDR) and PGPORT"),
        },
        ConnectFailure::Timeout => format!("no answer from {at} within 10 s: check PGHOST, PGPORT and the network (a firewall?)"),
        ConnectFailure::Tls(cause) => format!(
            "the TLS handshake with {at} failed (sslmode={}): {cause}; check PGSSLMODE, PGSSLROOTCERT and that the server's certificate names the host",
            target.sslmode.name(),
        ),
        ConnectFailure::Other(what) => what,
    };
    anyhow::Error::new(err).context(format!(
        "cannot connect to {}: {hint}",
        target.with_dbname(dbname)
    ))
}

/// A failed statement, PostgreSQL's own words first: message, detail, and where.
pub fn explain_sql_error(err: postgres::Error, what: &str) -> anyhow::Error {
    match err.as_db_error() {
        Some(db) => {
            let mut text = format!("{what} failed: {}", db.message());
            if let Some(detail) = db.detail() {
                text.push_str(&format!(" ({detail})"));
            }
            if let Some(context) = db.where_() {
                text.push_str(&format!(
                    "; at {}",
                    context.lines().next().unwrap_or(context)
                ));
            }
            anyhow::anyhow!("{text} [SQLSTATE {}]", db.code().code())
        }
        None => anyhow::Error::new(err).context(format!("{what} failed")),
    }
}

/// Server version as `server_version_num` (150004 for 15.4).
pub fn server_version_num(client: &mut Client) -> Result<i32> {
    let row = client.query_one("SELECT current_setting('server_version_num')::int", &[])?;
    Ok(row.get(0))
}

pub fn database_exists(admin: &mut Client, dbname: &str) -> Result<bool> {
    let rows = admin.query(DATABASE_EXISTS_SQL, &[&dbname])?;
    Ok(!rows.is_empty())
}

/// Runs `create_sql` (from [`create_database_sql`], carried by the plan) for `dbname`.
pub fn create_database(admin: &mut Client, create_sql: &str, dbname: &str) -> Result<()> {
    admin
        .batch_execute(create_sql)
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

/// Tables of schema `public`, sorted, but this tool's [`LOAD_MARKER_TABLE`].
pub fn public_tables(client: &mut impl GenericClient) -> Result<Vec<String>> {
    let rows = client.query(
        "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' AND tablename <> $1 ORDER BY 1",
        &[&LOAD_MARKER_TABLE],
    )?;
    rows.iter()
        .map(|row| checked_table_name(row.get(0)))
        .collect()
}

/// Table names from the catalog go into SQL quoted; we also refuse odd ones outright.
pub(crate) fn checked_table_name(name: String) -> Result<String> {
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
pub fn table_counts(client: &mut impl GenericClient) -> Result<BTreeMap<String, u64>> {
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
pub fn clear_generated_rows(
    client: &mut Client,
    demo_project: &str,
    truncate_sql: &str,
) -> Result<BTreeMap<String, u64>> {
    let before = table_counts(client)?;
    let projects: Vec<String> = client
        .query("SELECT name::text FROM sentry_project ORDER BY id", &[])
        .context("cannot read sentry_project: did `sentry upgrade` run on this database?")?
        .iter()
        .map(|row| row.get(0))
        .collect();
    let others: Vec<_> = projects
        .iter()
        .filter(|name| *name != demo_project)
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
    let mut tx = client.transaction()?;
    truncate_tables(&mut tx, truncate_sql)?;
    tx.commit()?;
    Ok(before.into_iter().filter(|(_, rows)| *rows > 0).collect())
}

/// `truncate_sql` (the plan carries [`TRUNCATE_SQL`]) with every table of [`public_tables`]:
/// what `pg-clear-generated-rows` runs, and what a load runs in its own transaction before it
/// loads again over its own earlier load.
pub fn truncate_tables(client: &mut impl GenericClient, truncate_sql: &str) -> Result<()> {
    let tables: Vec<String> = public_tables(client)?
        .iter()
        .map(|it| quote_identifier(it))
        .collect();
    if tables.is_empty() {
        return Ok(());
    }
    client
        .batch_execute(&truncate_sql.replace("{tables}", &tables.join(", ")))
        .context("cannot clear the target's tables")
}

/// The load recorded in [`LOAD_MARKER_TABLE`]: `(step, input)`, if any.
pub fn load_marker(client: &mut impl GenericClient) -> Result<Option<(String, String)>> {
    if !has_table(client, LOAD_MARKER_TABLE)? {
        return Ok(None);
    }
    let rows = client
        .query("SELECT step, input FROM sentry_migrate_load", &[])
        .context("cannot read this tool's load marker (sentry_migrate_load)")?;
    Ok(match rows.as_slice() {
        [row] => Some((row.get(0), row.get(1))),
        _ => None,
    })
}

/// Runs `marker_sql` (the plan carries [`LOAD_MARKER_SQL`]): `step` loaded `input` here.
pub fn write_load_marker(
    client: &mut impl GenericClient,
    marker_sql: &[&str],
    step: &str,
    input: &str,
) -> Result<()> {
    for sql in marker_sql {
        let result = if sql.contains("$1") {
            client.execute(*sql, &[&step, &input]).map(|_| ())
        } else {
            client.batch_execute(sql)
        };
        result.with_context(|| format!("cannot record the load in the target: `{sql}` failed"))?;
    }
    Ok(())
}

/// What the shim step did.
#[derive(Debug, PartialEq, Eq)]
pub enum ShimOutcome {
    NotNeeded { version: i32 },
    AlreadyInstalled,
    Installed,
}

/// Runs `shim_sql` (the plan carries [`ABSTIME_SHIM_SQL`]) in one transaction as a superuser.
pub fn install_abstime_shim(client: &mut Client, shim_sql: &[&str]) -> Result<ShimOutcome> {
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
             ask a DBA to run, as a superuser in database `{dbname}` (one transaction, safe to run twice):\n\n{}\nthen resume",
            version / 10000,
            abstime_shim_script(shim_sql)
        );
    }
    let mut tx = client.transaction()?;
    for sql in shim_sql {
        tx.batch_execute(sql)
            .with_context(|| format!("abstime shim: `{sql}` failed"))?;
    }
    tx.commit()?;
    Ok(ShimOutcome::Installed)
}

/// The highest event id (`sentry_message.id`) in the target, if it has events.
pub fn max_event_id(client: &mut Client) -> Result<Option<i64>> {
    if !has_table(client, "sentry_message")? {
        return Ok(None);
    }
    let row = client
        .query_one("SELECT max(id)::bigint FROM sentry_message", &[])
        .context("cannot read the highest event id (sentry_message)")?;
    Ok(row.get(0))
}

/// Events (`sentry_message` rows) stored after the one with id `last` (0 without the table).
pub fn events_after(client: &mut Client, last: i64) -> Result<u64> {
    if !has_table(client, "sentry_message")? {
        return Ok(0);
    }
    let row = client
        .query_one(
            "SELECT count(*) FROM sentry_message WHERE id::bigint > $1",
            &[&last],
        )
        .context("cannot count the events in sentry_message")?;
    Ok(row.get::<_, i64>(0) as u64)
}

fn has_table(client: &mut impl GenericClient, table: &str) -> Result<bool> {
    let row = client.query_one("SELECT to_regclass(quote_ident($1)) IS NOT NULL", &[&table])?;
    Ok(row.get(0))
}

/// One id sequence compared with its table.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SequenceState {
    pub table: String,
    pub max_id: i64,
    pub next_value: i64,
}

impl SequenceState {
    /// The next id it hands out would collide with a loaded row.
    pub fn is_behind(&self) -> bool {
        self.next_value <= self.max_id
    }
}

/// Sets every `id` sequence past its table's max(id), then reads them back.
pub fn reset_sequences(
    client: &mut impl GenericClient,
    reset_sql: &str,
) -> Result<Vec<SequenceState>> {
    let tables = serial_tables(client)?;
    for (table, _) in &tables {
        let quoted = quote_identifier(table);
        client
            .query_one(
                &reset_sql.replace("{table}", &quoted),
                &[&quoted],
            )
            .with_context(|| format!("cannot reset the id sequence of table {table}: check the connection and that the role owns the table"))?;
    }
    sequence_states(client, tables)
}

/// Tables of schema `public` with an `id` column backed by a sequence, with that sequence.
/// Tables without an `id` column are left out by the catalog query itself, so any error here is
/// a real one (connection, privileges) and is reported.
fn serial_tables(client: &mut impl GenericClient) -> Result<Vec<(String, String)>> {
    let rows = client
        .query(
            "SELECT c.relname::text, pg_get_serial_sequence(format('public.%I', c.relname), 'id') \
             FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'id' AND NOT a.attisdropped \
             WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') ORDER BY 1",
            &[],
        )
        .context("cannot list the id sequences of the tables in schema public: check the connection and that the role may call pg_get_serial_sequence")?;
    let mut out = Vec::new();
    for row in rows {
        // NULL: an `id` column without a sequence (nothing to check or reset).
        if let Some(seq) = row.get::<_, Option<String>>(1) {
            out.push((checked_table_name(row.get(0))?, seq));
        }
    }
    Ok(out)
}

/// Every `id` sequence with the next value it would hand out.
pub fn sequences(client: &mut impl GenericClient) -> Result<Vec<SequenceState>> {
    let tables = serial_tables(client)?;
    sequence_states(client, tables)
}

fn sequence_states(
    client: &mut impl GenericClient,
    tables: Vec<(String, String)>,
) -> Result<Vec<SequenceState>> {
    let mut out = Vec::new();
    for (table, seq) in tables {
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

/// The newest South migration of the `sentry` app in the target (62 for Sentry 4.10).
pub fn latest_sentry_migration(client: &mut Client) -> Result<Option<u32>> {
    let rows = client.query(
        "SELECT migration::text FROM south_migrationhistory WHERE app_name = 'sentry'",
        &[],
    )?;
    Ok(rows
        .iter()
        .filter_map(|row| {
            row.get::<_, String>(0)
                .get(..4)
                .and_then(|n| n.parse().ok())
        })
        .max())
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

/// What would stop the migration on the target for lack of a privilege or a wrong encoding, as
/// a message with the exact SQL a DBA runs; `None` when the role can go on. Asked in preflight,
/// before the dumps, so a missing privilege does not fail an hour later. The target is
/// connected to first (a password file may have a line for it only); the maintenance database
/// only when the target does not exist yet.
pub fn privilege_problem(target: &PgTarget) -> Result<Option<String>> {
    let wait = Duration::from_secs(5);
    let (db, user) = (
        quote_identifier(&target.dbname),
        quote_identifier(&target.user),
    );
    let mut client = match connect(target, &target.dbname, wait) {
        Ok(client) => client,
        Err(err) if is_missing_database(&err) => {
            let mut admin = connect_admin(target, wait).with_context(|| {
                format!(
                    "database `{}` does not exist yet, and creating it needs a connection to the maintenance database",
                    target.dbname
                )
            })?;
            let row = admin.query_one(
                "SELECT rolcreatedb OR rolsuper FROM pg_roles WHERE rolname = current_user",
                &[],
            )?;
            let may_create: bool = row.get(0);
            return Ok((!may_create).then(|| {
                format!(
                    "database `{}` does not exist and role `{}` may not create databases (no CREATEDB): ask a DBA to run\n    \
                     CREATE DATABASE {db} OWNER {user} ENCODING 'UTF8' TEMPLATE template0;\n  then run again",
                    target.dbname, target.user
                )
            }));
        }
        Err(err) => return Err(err),
    };
    if let Some(problem) = encoding_problem(&mut client, target)? {
        return Ok(Some(problem));
    }
    let may_create: bool = client
        .query_one("SELECT has_schema_privilege('public', 'CREATE')", &[])?
        .get(0);
    Ok((!may_create).then(|| {
        format!(
            "role `{}` may not create tables in schema public of database `{}` (PostgreSQL 15 no longer lets every role do that), \
             and `sentry upgrade` must: ask a DBA to run, in database `{}`,\n    GRANT CREATE ON SCHEMA public TO {user};\n  \
             or to make the role the database's owner (on PostgreSQL 15 the owner may create in public):\n    \
             ALTER DATABASE {db} OWNER TO {user};\n  then run again",
            target.user, target.dbname, target.dbname
        )
    }))
}

/// The encoding of the database `client` is connected to (`UTF8`, `SQL_ASCII`, `LATIN1`, …).
pub fn database_encoding(client: &mut Client) -> Result<String> {
    let row = client
        .query_one(
            "SELECT pg_encoding_to_char(encoding)::text FROM pg_database WHERE datname = current_database()",
            &[],
        )
        .context("cannot read the target database's encoding")?;
    Ok(row.get(0))
}

/// An existing target database in another encoding than UTF8, as a message with the SQL that
/// makes it right: in `SQL_ASCII` a `varchar(n)` counts bytes (`ééé` overflows varchar(3)),
/// `LATIN1` and the like cannot store what Sentry stores (an emoji), both found only at the
/// load, after Sentry's upgrade.
pub fn encoding_problem(client: &mut Client, target: &PgTarget) -> Result<Option<String>> {
    let encoding = database_encoding(client)?;
    if encoding == "UTF8" {
        return Ok(None);
    }
    let (db, user) = (
        quote_identifier(&target.dbname),
        quote_identifier(&target.user),
    );
    Ok(Some(format!(
        "database `{}` has encoding {encoding}, and Sentry's data needs UTF8 ({}): \
         the tool creates a missing database in UTF8, so drop this one (it must be empty anyway) or ask a DBA to run\n    \
         DROP DATABASE {db};\n    CREATE DATABASE {db} OWNER {user} ENCODING 'UTF8' TEMPLATE template0;\n  then run again",
        target.dbname,
        match encoding.as_str() {
            "SQL_ASCII" => "in SQL_ASCII a varchar(n) counts bytes, so text the scan counted as fitting fails the load",
            _ => "it cannot store every character Sentry 4 stored, an emoji for one, and the load would fail",
        }
    )))
}

/// Connects to a maintenance database (`postgres`, else `template1`) to create or drop others.
pub fn connect_admin(target: &PgTarget, wait: Duration) -> Result<Client> {
    match connect(target, "postgres", wait) {
        Ok(client) => Ok(client),
        Err(err) if is_missing_database(&err) => {
            connect(target, "template1", wait).with_context(|| {
                format!("there is no database `postgres` on {target}, and template1 failed too")
            })
        }
        Err(err) => Err(err),
    }
}

/// Whether `err` (from [`connect`]) is the server saying the database does not exist
/// (SQLSTATE 3D000), not a missing role or anything else whose message reads alike.
pub fn is_missing_database(err: &anyhow::Error) -> bool {
    err.downcast_ref::<postgres::Error>()
        .and_then(|err| err.code())
        == Some(&postgres::error::SqlState::INVALID_CATALOG_NAME)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pgcluster::testing::{skip, TestDb};

    fn target(db: &TestDb, user: &str, password: &str) -> PgTarget {
        let env = db.cluster.env(user, password, &db.name);
        PgTarget::from_env_or_url(None, |key| {
            env.iter().find(|(k, _)| *k == key).map(|(_, v)| v.clone())
        })
        .unwrap()
    }

    fn superuser(db: &TestDb) -> PgTarget {
        target(
            db,
            &db.cluster.superuser.clone(),
            &db.cluster.password.clone(),
        )
    }

    /// The rows a fresh `sentry upgrade` leaves, in a cut-down Sentry schema.
    const FRESH_UPGRADE: &str = "
        CREATE TABLE sentry_project (id serial PRIMARY KEY, name varchar(200) NOT NULL);
        CREATE TABLE sentry_projectkey (id serial PRIMARY KEY, project_id integer NOT NULL REFERENCES sentry_project (id) DEFERRABLE INITIALLY DEFERRED);
        CREATE TABLE sentry_team (id serial PRIMARY KEY, name varchar(64));
        CREATE TABLE sentry_groupedmessage (id serial PRIMARY KEY, project_id integer REFERENCES sentry_project (id) DEFERRABLE INITIALLY DEFERRED);
        CREATE TABLE sentry_message (id serial PRIMARY KEY, group_id integer REFERENCES sentry_groupedmessage (id) DEFERRABLE INITIALLY DEFERRED);
        CREATE TABLE django_content_type (id serial PRIMARY KEY, app_label varchar(100), model varchar(100), UNIQUE (app_label, model));
        CREATE TABLE south_migrationhistory (id serial PRIMARY KEY, app_name varchar(255), migration varchar(255));
        INSERT INTO sentry_project (name) VALUES ('Sentry (Internal)');
        INSERT INTO django_content_type (app_label, model) VALUES ('sentry', 'project'), ('auth', 'user');
        INSERT INTO south_migrationhistory (app_name, migration) VALUES ('sentry', '0062_x');";

    #[test]
    fn creates_a_database_once_and_sees_its_tables() {
        if skip() {
            return;
        }
        let db = TestDb::new("create");
        let target = superuser(&db);
        let mut admin = connect_admin(&target, Duration::from_secs(5)).unwrap();
        let name = format!("{}_new", db.name);
        assert!(!database_exists(&mut admin, &name).unwrap());
        create_database(&mut admin, &create_database_sql(&name), &name).unwrap();
        assert!(database_exists(&mut admin, &name).unwrap());
        let err = create_database(&mut admin, &create_database_sql(&name), &name).unwrap_err();
        assert!(format!("{err:#}").contains("already exists"), "{err:#}");
        drop_database(&mut admin, &name).unwrap();
        assert!(!database_exists(&mut admin, &name).unwrap());

        let mut client = db.client();
        assert!(public_tables(&mut client).unwrap().is_empty());
        client.batch_execute(FRESH_UPGRADE).unwrap();
        assert_eq!(public_tables(&mut client).unwrap().len(), 7);
        let counts = table_counts(&mut client).unwrap();
        assert_eq!(counts["sentry_project"], 1);
        assert_eq!(counts["django_content_type"], 2);
    }

    #[test]
    fn clears_the_demo_project_and_generated_rows_but_refuses_real_data() {
        if skip() {
            return;
        }
        let db = TestDb::new("clear");
        let mut client = db.client();
        client.batch_execute(FRESH_UPGRADE).unwrap();
        let cleared = clear_generated_rows(&mut client, DEMO_PROJECT_NAME, TRUNCATE_SQL).unwrap();
        assert_eq!(
            cleared.keys().collect::<Vec<_>>(),
            [
                "django_content_type",
                "sentry_project",
                "south_migrationhistory"
            ]
        );
        assert!(table_counts(&mut client)
            .unwrap()
            .values()
            .all(|rows| *rows == 0));
        // RESTART IDENTITY: the loaded ids start from the dump, not after the demo project.
        let id: i32 = client
            .query_one(
                "INSERT INTO sentry_project (name) VALUES ('x') RETURNING id",
                &[],
            )
            .unwrap()
            .get(0);
        assert_eq!(id, 1);

        client
            .batch_execute("INSERT INTO sentry_project (name) VALUES ('Sentry (Internal)')")
            .unwrap();
        let err = clear_generated_rows(&mut client, DEMO_PROJECT_NAME, TRUNCATE_SQL).unwrap_err();
        assert!(err.to_string().contains("has data of its own"), "{err}");
        assert_eq!(
            table_counts(&mut client).unwrap()["sentry_project"],
            2,
            "nothing was removed"
        );
    }

    #[test]
    fn abstime_shim_as_superuser_and_the_sql_for_a_dba_otherwise() {
        if skip() {
            return;
        }
        let db = TestDb::new("shim");
        let mut client = connect(&superuser(&db), &db.name, Duration::from_secs(5)).unwrap();
        let err = client
            .query_one("SELECT now()::abstime::int", &[])
            .unwrap_err();
        let message = err
            .as_db_error()
            .map(|db| db.message().to_string())
            .unwrap_or_default();
        assert!(
            message.contains("type \"abstime\" does not exist"),
            "PostgreSQL >= 12 has no abstime: {message}"
        );

        let mut admin = db.client();
        admin
            .batch_execute("CREATE ROLE plain LOGIN PASSWORD 'plainpw'")
            .ok();
        admin
            .batch_execute(&format!(
                "GRANT ALL ON DATABASE \"{}\" TO plain; GRANT ALL ON SCHEMA public TO plain",
                db.name
            ))
            .unwrap();
        let mut plain = connect(
            &target(&db, "plain", "plainpw"),
            &db.name,
            Duration::from_secs(5),
        )
        .unwrap();
        let err = install_abstime_shim(&mut plain, ABSTIME_SHIM_SQL)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("needs a superuser")
                && err.contains("CREATE CAST (timestamptz AS integer)"),
            "{err}"
        );
        assert!(err.contains(&format!("in database `{}`", db.name)), "{err}");

        assert_eq!(
            install_abstime_shim(&mut client, ABSTIME_SHIM_SQL).unwrap(),
            ShimOutcome::Installed
        );
        assert_eq!(
            install_abstime_shim(&mut client, ABSTIME_SHIM_SQL).unwrap(),
            ShimOutcome::AlreadyInstalled
        );
        // Sentry's score expression now works, for the plain role too.
        let row = client
            .query_one("SELECT '2020-01-01 00:00:00+00'::timestamptz::abstime::int, extract(epoch FROM now())::int - now()::abstime::int", &[])
            .unwrap();
        assert_eq!(row.get::<_, i32>(0), 1_577_836_800);
        assert!(row.get::<_, i32>(1).abs() <= 1);
        plain.query_one("SELECT now()::abstime::int", &[]).unwrap();
    }

    /// The SQL printed for a DBA is one transaction and safe to run twice, also after the app
    /// role already created the function (tried as a new user would: the DBA's first attempt
    /// as the app role fails at the cast, then the superuser runs the same text).
    #[test]
    fn the_abstime_script_for_a_dba_is_one_transaction_and_runs_twice() {
        if skip() {
            return;
        }
        let script = abstime_shim_script(ABSTIME_SHIM_SQL);
        assert!(
            script.starts_with("BEGIN;\n") && script.ends_with("COMMIT;\n"),
            "{script}"
        );

        // Twice as a superuser.
        let db = TestDb::new("shimtwice");
        let mut admin = db.client();
        admin.batch_execute(&script).unwrap();
        admin.batch_execute(&script).unwrap();
        admin.query_one("SELECT now()::abstime::int", &[]).unwrap();

        // After the app role created the function itself.
        let db = TestDb::new("shimowned");
        let mut admin = db.client();
        admin
            .batch_execute("CREATE ROLE shimapp LOGIN PASSWORD 'shimapppw'")
            .ok();
        admin
            .batch_execute(&format!(
                "GRANT ALL ON DATABASE \"{}\" TO shimapp; GRANT ALL ON SCHEMA public TO shimapp",
                db.name
            ))
            .unwrap();
        let mut app = connect(
            &target(&db, "shimapp", "shimapppw"),
            &db.name,
            Duration::from_secs(5),
        )
        .unwrap();
        let err = install_abstime_shim(&mut app, ABSTIME_SHIM_SQL)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&script),
            "the message prints the script: {err}"
        );
        // The DBA pastes it as the app role: the cast needs a superuser, the whole text rolls back.
        assert!(app.batch_execute(&script).is_err());
        // (psql ends the failed transaction at COMMIT; this session must say ROLLBACK.)
        app.batch_execute("ROLLBACK").unwrap();
        let functions = |client: &mut Client| -> i64 {
            client
                .query_one(
                    "SELECT count(*) FROM pg_proc WHERE proname = 'sentry_migrate_timestamptz_to_int'",
                    &[],
                )
                .unwrap()
                .get(0)
        };
        assert_eq!(
            functions(&mut admin),
            0,
            "one transaction: nothing left halfway"
        );
        // The reported case: the app role created the function by itself.
        app.batch_execute(ABSTIME_SHIM_SQL[0]).unwrap();
        assert_eq!(functions(&mut admin), 1);
        admin.batch_execute(&script).unwrap();
        admin.batch_execute(&script).unwrap();
        app.query_one("SELECT now()::abstime::int", &[]).unwrap();
        assert_eq!(
            install_abstime_shim(&mut app, ABSTIME_SHIM_SQL).unwrap(),
            ShimOutcome::AlreadyInstalled
        );
    }

    #[test]
    fn sequences_behind_explicit_ids_are_found_and_reset() {
        if skip() {
            return;
        }
        let db = TestDb::new("seq");
        let mut client = db.client();
        client.batch_execute(FRESH_UPGRADE).unwrap();
        clear_generated_rows(&mut client, DEMO_PROJECT_NAME, TRUNCATE_SQL).unwrap();
        // loaddata inserts explicit ids; the sequence does not move.
        client.batch_execute("INSERT INTO sentry_project (id, name) VALUES (3, 'a'), (17, 'b'); INSERT INTO sentry_team (id) VALUES (4)").unwrap();
        let behind: Vec<_> = sequences(&mut client)
            .unwrap()
            .into_iter()
            .filter(|s| s.is_behind())
            .map(|s| s.table)
            .collect();
        assert_eq!(behind, ["sentry_project", "sentry_team"]);
        let after = reset_sequences(&mut client, RESET_SEQUENCE_SQL).unwrap();
        assert!(after.iter().all(|s| s.next_value > s.max_id), "{after:?}");
        let project = after.iter().find(|s| s.table == "sentry_project").unwrap();
        assert_eq!((project.max_id, project.next_value), (17, 18));
        let empty = after.iter().find(|s| s.table == "sentry_message").unwrap();
        assert_eq!((empty.max_id, empty.next_value), (0, 1));
        let id: i32 = client
            .query_one(
                "INSERT INTO sentry_project (name) VALUES ('c') RETURNING id",
                &[],
            )
            .unwrap()
            .get(0);
        assert_eq!(id, 18);
    }

    #[test]
    fn tables_without_an_id_are_skipped_and_other_errors_are_reported() {
        if skip() {
            return;
        }
        let db = TestDb::new("seqerr");
        let mut client = db.client();
        client.batch_execute(FRESH_UPGRADE).unwrap();
        client
            .batch_execute(
                "CREATE TABLE sentry_noid (key text); CREATE TABLE sentry_idnoseq (id integer)",
            )
            .unwrap();
        let tables: Vec<_> = sequences(&mut client)
            .unwrap()
            .into_iter()
            .map(|s| s.table)
            .collect();
        assert_eq!(tables.len(), 7, "{tables:?}");
        assert!(
            !tables
                .iter()
                .any(|t| t == "sentry_noid" || t == "sentry_idnoseq"),
            "{tables:?}"
        );

        // A role that may not look up sequences: an error, not an empty (passing) check.
        let role = format!("{}_r", db.name);
        client
            .batch_execute(&format!(
                "REVOKE EXECUTE ON FUNCTION pg_get_serial_sequence(text, text) FROM PUBLIC; \
                 CREATE ROLE \"{role}\"; SET ROLE \"{role}\""
            ))
            .unwrap();
        for result in [
            sequences(&mut client),
            reset_sequences(&mut client, RESET_SEQUENCE_SQL),
        ] {
            let err = format!(
                "{:#}",
                result.expect_err("a permission error must be reported")
            );
            assert!(
                err.contains("cannot list the id sequences")
                    && err.contains("permission denied for function pg_get_serial_sequence"),
                "{err}"
            );
        }
        client
            .batch_execute(&format!("RESET ROLE; DROP ROLE \"{role}\""))
            .unwrap();
    }

    #[test]
    fn only_a_missing_database_means_try_template1() {
        if skip() {
            return;
        }
        let db = TestDb::new("missing");
        let fails = |target: &PgTarget, dbname: &str| {
            connect(target, dbname, Duration::from_millis(300))
                .err()
                .expect("must fail")
        };
        assert!(is_missing_database(&fails(&superuser(&db), "no_such_db")));
        // Over the unix socket (scram, as over TCP): a role that does not exist fails the
        // password check (SQLSTATE 28P01), and is no missing database either.
        let mut no_role = superuser(&db);
        no_role.host = db.cluster.dir.display().to_string();
        no_role.user = "no_such_role".into();
        let err = fails(&no_role, &db.name);
        assert!(format!("{err:#}").contains("no_such_role"), "{err:#}");
        assert!(!is_missing_database(&err), "{err:#}");
        let wrong_password = target(&db, "postgres", "not-the-password");
        assert!(!is_missing_database(&fails(&wrong_password, &db.name)));
        let mut down = superuser(&db);
        down.port = crate::util::free_port().unwrap();
        assert!(!is_missing_database(&fails(&down, &db.name)));
    }

    #[test]
    fn without_a_postgres_database_admin_connects_to_template1() {
        if skip() {
            return;
        }
        // A cluster of its own: the shared one keeps its `postgres` database.
        let scratch = tempfile::tempdir().unwrap();
        let sh = xshell::Shell::new().unwrap();
        let cluster = crate::pgcluster::PgCluster::start(&sh, scratch.path()).unwrap();
        let env = cluster.env(&cluster.superuser, &cluster.password, "postgres");
        let target = PgTarget::from_env_or_url(None, |key| {
            env.iter().find(|(k, _)| *k == key).map(|(_, v)| v.clone())
        })
        .unwrap();
        let current = |client: &mut Client| -> String {
            client
                .query_one("SELECT current_database()::text", &[])
                .unwrap()
                .get(0)
        };
        let mut admin = connect_admin(&target, Duration::from_secs(5)).unwrap();
        assert_eq!(current(&mut admin), "postgres");
        drop(admin);
        cluster
            .client("template1")
            .unwrap()
            .batch_execute("DROP DATABASE postgres")
            .unwrap();
        let mut admin = connect_admin(&target, Duration::from_secs(5)).unwrap();
        assert_eq!(current(&mut admin), "template1");
    }

    #[test]
    fn orphan_events_are_counted() {
        if skip() {
            return;
        }
        let db = TestDb::new("orphans");
        let mut client = db.client();
        client.batch_execute(FRESH_UPGRADE).unwrap();
        client.batch_execute("BEGIN; INSERT INTO sentry_groupedmessage (id) VALUES (1); INSERT INTO sentry_message (group_id) VALUES (1), (1); COMMIT;").unwrap();
        assert_eq!(orphan_events(&mut client).unwrap(), 0);
        client.batch_execute("SET session_replication_role = replica; INSERT INTO sentry_message (group_id) VALUES (9);").unwrap();
        assert_eq!(orphan_events(&mut client).unwrap(), 1);
    }

    /// A CA, a server certificate for 127.0.0.1 signed by it, and another CA, made with the
    /// `openssl` program in a folder the `postgres` user can read.
    fn make_certificates(dir: &std::path::Path) {
        use std::os::unix::fs::PermissionsExt;
        let run = |args: &[&str]| {
            let out = std::process::Command::new("openssl")
                .args(args)
                .current_dir(dir)
                .output()
                .expect("the openssl program (apt-get install openssl)");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        for ca in ["ca", "other-ca"] {
            run(&[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &format!("{ca}.key"),
                "-out",
                &format!("{ca}.crt"),
                "-subj",
                &format!("/CN={ca}"),
                "-days",
                "2",
            ]);
        }
        run(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ]);
        std::fs::write(dir.join("san.cnf"), "subjectAltName=IP:127.0.0.1\n").unwrap();
        run(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "san.cnf",
        ]);
        std::fs::set_permissions(
            dir.join("server.key"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        if std::fs::metadata("/proc/self")
            .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
            .unwrap_or(1)
            == 0
        {
            let (uid, gid) = crate::pgcluster::server_user("postgres").unwrap();
            for file in ["server.key", "server.crt"] {
                std::os::unix::fs::chown(dir.join(file), Some(uid), Some(gid)).unwrap();
            }
        }
    }

    #[test]
    fn tls_modes_as_libpq_means_them() {
        if skip() {
            return;
        }
        let certs = tempfile::tempdir().unwrap();
        make_certificates(certs.path());
        let scratch = tempfile::tempdir().unwrap();
        let sh = xshell::Shell::new().unwrap();
        let c = certs.path().display();
        let cluster = crate::pgcluster::PgCluster::start_with_options(
            &sh,
            scratch.path(),
            &format!("-c ssl=on -c ssl_cert_file={c}/server.crt -c ssl_key_file={c}/server.key"),
        )
        .unwrap();
        let base = PgTarget::from_env_or_url(None, |key| {
            cluster
                .env(&cluster.superuser, &cluster.password, "postgres")
                .into_iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v)
        })
        .unwrap();
        let with = |mode: SslMode, root: Option<&str>| PgTarget {
            sslmode: mode,
            sslrootcert: root.map(|it| certs.path().join(it)),
            ..base.clone()
        };
        let encrypted = |target: &PgTarget| -> Result<bool> {
            let mut client = connect(target, "postgres", Duration::from_secs(2))?;
            Ok(client
                .query_one(
                    "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                    &[],
                )?
                .get(0))
        };
        assert!(!encrypted(&with(SslMode::Disable, None)).unwrap());
        assert!(encrypted(&with(SslMode::Prefer, None)).unwrap());
        assert!(encrypted(&with(SslMode::Require, None)).unwrap());
        assert!(encrypted(&with(SslMode::VerifyCa, Some("ca.crt"))).unwrap());
        assert!(encrypted(&with(SslMode::VerifyFull, Some("ca.crt"))).unwrap());

        let err = format!(
            "{:#}",
            encrypted(&with(SslMode::VerifyFull, Some("other-ca.crt"))).unwrap_err()
        );
        assert!(
            err.contains("the TLS handshake with 127.0.0.1") && err.contains("sslmode=verify-full"),
            "{err}"
        );
        assert!(!err.contains(&cluster.password), "{err}");
        // `require` with a root certificate verifies, as libpq does.
        assert!(encrypted(&with(SslMode::Require, Some("other-ca.crt"))).is_err());
        let err = format!(
            "{:#}",
            encrypted(&with(SslMode::VerifyCa, Some("missing.crt"))).unwrap_err()
        );
        assert!(err.contains("cannot read the root certificate"), "{err}");
    }

    #[test]
    fn the_password_file_and_a_socket_folder_work_as_in_libpq() {
        use std::os::unix::fs::PermissionsExt;
        if skip() {
            return;
        }
        let db = TestDb::new("pgpass");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pgpass");
        std::fs::write(
            &file,
            format!(
                "127.0.0.1:{}:*:postgres:{}\n",
                db.cluster.port, db.cluster.password
            ),
        )
        .unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let mut target = superuser(&db);
        target.password = None;
        target.passfile = Some(file.clone());
        connect(&target, &db.name, Duration::from_secs(2)).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = format!(
            "{:#}",
            connect(&target, &db.name, Duration::from_secs(1))
                .err()
                .expect("ignored file")
        );
        assert!(
            err.contains("is ignored, as libpq ignores it: it is readable by group or others"),
            "{err}"
        );
        assert!(!err.contains(&db.cluster.password), "{err}");

        // A socket folder as the host (local connections ask for the password too).
        let mut socket = superuser(&db);
        socket.host = db.cluster.dir.display().to_string();
        socket.passfile = None;
        let mut client = connect(&socket, &db.name, Duration::from_secs(2)).unwrap();
        let over_socket: bool = client
            .query_one("SELECT inet_server_addr() IS NULL", &[])
            .unwrap()
            .get(0);
        assert!(over_socket);
    }

    #[test]
    fn missing_privileges_are_named_with_the_sql_for_a_dba() {
        if skip() {
            return;
        }
        let db = TestDb::new("privs");
        let mut admin = db.client();
        if server_version_num(&mut admin).unwrap() < 150000 {
            return; // before 15 every role may create in public
        }
        let role = format!("app_{}", db.name);
        admin
            .batch_execute(&format!("CREATE ROLE \"{role}\" LOGIN PASSWORD 'apppw'"))
            .unwrap();
        let mut app = target(&db, &role, "apppw");
        // A database the app role owns nothing in: a DBA made it.
        let problem = privilege_problem(&app)
            .unwrap()
            .expect("no CREATE on public");
        assert!(
            problem.contains(&format!("GRANT CREATE ON SCHEMA public TO \"{role}\";")),
            "{problem}"
        );
        assert!(
            problem.contains(&format!("ALTER DATABASE \"{}\" OWNER TO", db.name)),
            "{problem}"
        );
        admin
            .batch_execute(&format!("GRANT CREATE ON SCHEMA public TO \"{role}\""))
            .unwrap();
        assert_eq!(privilege_problem(&app).unwrap(), None);
        // No database yet, and no CREATEDB.
        app.dbname = format!("{}_new", db.name);
        let problem = privilege_problem(&app).unwrap().expect("no CREATEDB");
        assert!(
            problem.contains("may not create databases (no CREATEDB)")
                && problem.contains(&format!(
                    "CREATE DATABASE \"{}\" OWNER \"{role}\"",
                    app.dbname
                )),
            "{problem}"
        );
        admin
            .batch_execute(&format!("ALTER ROLE \"{role}\" CREATEDB"))
            .unwrap();
        assert_eq!(privilege_problem(&app).unwrap(), None);
        admin
            .batch_execute(&format!("DROP OWNED BY \"{role}\"; DROP ROLE \"{role}\""))
            .unwrap();
    }

    #[test]
    fn connection_errors_name_the_cause_and_the_fix() {
        if skip() {
            return;
        }
        let db = TestDb::new("conn");
        let wrong = target(&db, "postgres", "not-the-password");
        let err = format!(
            "{:#}",
            connect(&wrong, &db.name, Duration::from_secs(1))
                .err()
                .expect("must fail")
        );
        assert!(
            err.contains("password authentication failed for role `postgres`: check PGPASSWORD"),
            "{err}"
        );
        assert!(!err.contains("not-the-password"), "password leaked: {err}");

        let mut missing = superuser(&db);
        missing.dbname = "no_such_db".into();
        let err = format!(
            "{:#}",
            connect(&missing, "no_such_db", Duration::from_secs(1))
                .err()
                .expect("must fail")
        );
        assert!(
            err.contains("database `no_such_db` does not exist"),
            "{err}"
        );

        let mut down = superuser(&db);
        down.port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let err = format!(
            "{:#}",
            connect(&down, &db.name, Duration::from_millis(300))
                .err()
                .expect("must fail")
        );
        assert!(
            err.contains("is not reachable") && err.contains("is the server running?"),
            "{err}"
        );
    }
}
