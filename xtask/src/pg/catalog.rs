//! The target's catalog and the load's bookkeeping: creating and dropping the database,
//! listing and counting tables, clearing what `sentry upgrade` generated, the load marker, the
//! abstime shim, and the events and migrations the steps read. SQL values are `$1` parameters.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use postgres::{Client, GenericClient};

use crate::ident::Ident;

pub const DEMO_PROJECT_NAME: &str = "Sentry (Internal)";

/// What `pg-clear-generated-rows` runs, in one transaction; `{tables}` is every table in
/// schema public, quoted.
pub const TRUNCATE_SQL: &str = "TRUNCATE TABLE {tables} RESTART IDENTITY CASCADE";

/// The tool's own table in the target: the load a step committed there (`step`, and `input`:
/// the sha256 of what it read). Written in the load's transaction (`pg-copy`; `pg-load` in the
/// transaction before Django's), so a run that stopped after the commit and before its journal
/// can tell its own load of the same input from data of someone else. Left out of every table
/// list this tool counts, compares or clears ([`public_tables`]); dropped by `verify-sentry6`.
pub const LOAD_MARKER_TABLE: &str = "sentry_migrate_load";

/// What a load runs to record itself; `$1` = the step, `$2` = its input.
pub const LOAD_MARKER_SQL: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS sentry_migrate_load (step text NOT NULL, input text NOT NULL, loaded_at timestamptz NOT NULL DEFAULT now(), rebuild text)",
    "ALTER TABLE sentry_migrate_load ADD COLUMN IF NOT EXISTS rebuild text",
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

pub fn create_database_sql(dbname: &Ident) -> String {
    format!("CREATE DATABASE {dbname} ENCODING 'UTF8' TEMPLATE template0")
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

pub fn drop_database(admin: &mut Client, dbname: &Ident) -> Result<()> {
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {dbname}"))
        .with_context(|| format!("cannot drop database `{}`", dbname.as_str()))
}

/// Tables of schema `public`, sorted, but this tool's [`LOAD_MARKER_TABLE`].
pub fn public_tables(client: &mut impl GenericClient) -> Result<Vec<String>> {
    Ok(public_idents(client)?
        .into_iter()
        .map(Ident::into_string)
        .collect())
}

/// [`public_tables`], each checked as [`Ident::table`], for the helpers that put them into SQL.
fn public_idents(client: &mut impl GenericClient) -> Result<Vec<Ident>> {
    let rows = client.query(
        "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' AND tablename <> $1 ORDER BY 1",
        &[&LOAD_MARKER_TABLE],
    )?;
    rows.iter().map(|row| Ident::table(row.get(0))).collect()
}

/// `SELECT count(*)` of each table.
pub fn table_counts(client: &mut impl GenericClient) -> Result<BTreeMap<String, u64>> {
    let mut counts = BTreeMap::new();
    for table in public_idents(client)? {
        let row = client.query_one(&format!("SELECT count(*) FROM {table}"), &[])?;
        counts.insert(table.into_string(), row.get::<_, i64>(0) as u64);
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
    let tables: Vec<String> = public_idents(client)?.iter().map(Ident::quoted).collect();
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

/// The statements a copy recorded in its marker to re-create the foreign keys and indexes it
/// dropped, when it did not get to re-create them (empty: none pending, or no marker).
pub fn pending_rebuild(client: &mut impl GenericClient) -> Result<Vec<String>> {
    // A marker of an earlier version of this tool has no such column: nothing pending.
    let has_column = !client
        .query(
            "SELECT 1 FROM information_schema.columns WHERE table_schema = 'public' \
             AND table_name = 'sentry_migrate_load' AND column_name = 'rebuild'",
            &[],
        )
        .context("cannot read the columns of this tool's load marker")?
        .is_empty();
    if !has_column {
        return Ok(Vec::new());
    }
    let rows = client
        .query(
            "SELECT rebuild FROM sentry_migrate_load WHERE rebuild IS NOT NULL",
            &[],
        )
        .context(
            "cannot read the statements pending in this tool's load marker (sentry_migrate_load)",
        )?;
    let mut out: Vec<String> = Vec::new();
    for row in rows {
        let text: String = row.get(0);
        let statements: Vec<String> = serde_json::from_str(&text)
            .context("the load marker's pending statements are not a JSON list: drop the target database and run again")?;
        for statement in statements {
            if !out.contains(&statement) {
                out.push(statement);
            }
        }
    }
    Ok(out)
}

/// Records in the marker (just written) the statements that re-create what the copy dropped.
pub fn record_pending_rebuild(
    client: &mut impl GenericClient,
    statements: &[String],
) -> Result<()> {
    let json = serde_json::to_string(statements)?;
    client
        .execute("UPDATE sentry_migrate_load SET rebuild = $1", &[&json])
        .context("cannot record the copy's pending statements in its marker")?;
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use postgres::Client;

    use super::{
        abstime_shim_script, clear_generated_rows, create_database, create_database_sql,
        database_exists, drop_database, install_abstime_shim, orphan_events, public_tables,
        table_counts, ShimOutcome, ABSTIME_SHIM_SQL, DEMO_PROJECT_NAME, TRUNCATE_SQL,
    };
    use crate::{
        ident::Ident,
        pg::{
            connect::{connect, connect_admin},
            tests::{superuser, target, FRESH_UPGRADE},
        },
        pgcluster::testing::{skip, TestDb},
    };

    /// A marker an earlier version of the tool wrote has no `rebuild` column: nothing is
    /// pending, and the next load's marker statements add the column.
    #[test]
    fn a_marker_without_pending_statements_is_read_and_rewritten() {
        if skip() {
            return;
        }
        let db = TestDb::new("oldmarker");
        let mut client = db.client();
        client
            .batch_execute(
                "CREATE TABLE sentry_migrate_load (step text NOT NULL, input text NOT NULL, loaded_at timestamptz NOT NULL DEFAULT now()); \
                 INSERT INTO sentry_migrate_load (step, input) VALUES ('pg-copy', 'x')",
            )
            .unwrap();
        assert!(super::pending_rebuild(&mut client).unwrap().is_empty());
        super::write_load_marker(&mut client, super::LOAD_MARKER_SQL, "pg-copy", "y").unwrap();
        let statements = vec!["CREATE INDEX i ON t (c)".to_string()];
        super::record_pending_rebuild(&mut client, &statements).unwrap();
        assert_eq!(super::pending_rebuild(&mut client).unwrap(), statements);
    }

    #[test]
    fn creates_a_database_once_and_sees_its_tables() {
        if skip() {
            return;
        }
        let db = TestDb::new("create");
        let target = superuser(&db);
        let mut admin = connect_admin(&target, Duration::from_secs(5)).unwrap();
        let name = format!("{}_new", db.name);
        let ident = Ident::new("database name", &name).unwrap();
        assert!(!database_exists(&mut admin, &name).unwrap());
        create_database(&mut admin, &create_database_sql(&ident), &name).unwrap();
        assert!(database_exists(&mut admin, &name).unwrap());
        let err = create_database(&mut admin, &create_database_sql(&ident), &name).unwrap_err();
        assert!(format!("{err:#}").contains("already exists"), "{err:#}");
        drop_database(&mut admin, &ident).unwrap();
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
}
