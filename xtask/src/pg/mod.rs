//! All PostgreSQL access, by job: `connect` (libpq's configuration, TLS, errors by kind,
//! retry), `catalog` (creating, clearing, counting, the load marker, the abstime shim),
//! `sequences`, `preflight` (privileges, encoding) and `sameness` (two upgraded databases
//! compared); names go into SQL as a checked
//! [`crate::ident::Ident`]. Callers name everything as `crate::pg::name`.

mod catalog;
mod connect;
mod preflight;
pub mod sameness;
mod sequences;

pub use catalog::{
    abstime_shim_script, clear_generated_rows, create_database, create_database_sql,
    database_exists, drop_database, events_after, install_abstime_shim, is_superuser,
    latest_sentry_migration, load_marker, max_event_id, orphan_events, pending_rebuild,
    public_tables, record_pending_rebuild, server_version_num, table_counts, truncate_tables,
    write_load_marker, ShimOutcome, ABSTIME_SHIM_SQL, DATABASE_EXISTS_SQL, DEMO_PROJECT_NAME,
    DROP_LOAD_MARKER_SQL, LOAD_MARKER_SQL, LOAD_MARKER_TABLE, TRUNCATE_SQL,
};
pub use connect::{connect, connect_admin, explain_sql_error, is_missing_database};
pub use preflight::{database_encoding, encoding_problem, privilege_problem};
pub use sequences::{reset_sequences, sequences, SequenceState, RESET_SEQUENCE_SQL};

/// What the unit tests of every part share: targets on the test cluster, a cut-down schema.
#[cfg(test)]
mod tests {
    use crate::{config::PgTarget, pgcluster::testing::TestDb};

    pub(crate) fn target(db: &TestDb, user: &str, password: &str) -> PgTarget {
        let env = db.cluster.env(user, password, &db.name);
        PgTarget::from_env_or_url(None, |key| {
            env.iter().find(|(k, _)| *k == key).map(|(_, v)| v.clone())
        })
        .unwrap()
    }

    pub(crate) fn superuser(db: &TestDb) -> PgTarget {
        target(
            db,
            &db.cluster.superuser.clone(),
            &db.cluster.password.clone(),
        )
    }

    /// The rows a fresh `sentry upgrade` leaves, in a cut-down Sentry schema.
    pub(crate) const FRESH_UPGRADE: &str = "
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
}
