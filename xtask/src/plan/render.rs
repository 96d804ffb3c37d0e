//! What `--dry-run` prints: each step's commands, shell-quoted, and its SQL, in words.

use std::fmt::Write;

use super::{Action, Command, Step};
use crate::{
    config::{Config, PasswordSource},
    copy,
    flags::{DbKind, Engine},
    pg,
};

/// `word` as one POSIX shell word: unchanged when it holds only characters no shell treats
/// specially, else in single quotes (a `'` inside becomes `'\''`).
pub fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_@%+=:,./-".contains(c));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

impl Command {
    /// The command as a human would type it into a POSIX shell (quoted where needed).
    pub fn render(&self) -> String {
        let mut out = shell_quote(&self.program.display().to_string());
        for arg in &self.args {
            let _ = write!(out, " {}", shell_quote(arg));
        }
        if let Some(path) = &self.stdout_to {
            let _ = write!(out, " > {}", shell_quote(&path.display().to_string()));
        }
        out
    }
}

/// What a step will do, line by line: commands with all arguments and every SQL statement.
pub fn describe(step: &Step, config: &Config) -> Vec<String> {
    let db = config.display_path(&config.sqlite_path);
    let target = &config.pg;
    match &step.action {
        Action::Preflight(limits) => vec![
            "check: bin/buildout, both buildout configs, settings/settings.py and the load helper exist".into(),
            format!("check: {db} exists, opens, passes PRAGMA quick_check, is a Sentry 4 db (sentry tables, South history <= {:04})", limits.last_sentry4_migration),
            format!("check: no process has {db} open, no bin/sentry process is running"),
            match (config.engine, limits.dump_space_factor) {
                (Engine::Copy, 0) => "check: free disk next to the db for the backup (the copy engine writes no dumps)".to_string(),
                (Engine::Copy, factor) => format!("check: free disk in dumps/ for the working copy ({factor}x the db) and next to the db for the backup"),
                (_, factor) => format!("check: free disk in dumps/ for the dumps ({factor}x the db) and next to the db for the backup"),
            },
            format!("check: the settings say which zone Sentry 4 wrote its dates in: {}", config.time_zone.describe()),
            match limits.memory_per_event {
                Some(bytes) => format!("check: memory for dumpdata/loaddata: about {} KiB per event must fit in the machine's available memory (else: --engine copy)", bytes / 1024),
                None => "check: (copy engine: memory stays flat, no estimate needed)".into(),
            },
            format!("check: PostgreSQL {target} answers (password: {}), is UTF8, and the role may create what Sentry's upgrade creates", config.pg_password_source),
        ],
        Action::BackupSqlite => vec![
            format!("copy {db} -> {db}.backup-<UTC time> (never overwrites an earlier backup)"),
            "check: PRAGMA integrity_check on the copy; sha256 of the copy equals the source's; record it in the journal".into(),
        ],
        Action::Buildout(cmd) | Action::Run(cmd) => vec![format!("run: {}", cmd.render())],
        Action::BuildoutWhileRunning(cmd) => vec![
            "check: bin/sentry already runs the Sentry version this config pins (then it adds psycopg2 and rewrites the same scripts: the running Sentry 4 is not touched); refused otherwise".into(),
            format!("run: {}", cmd.render()),
        ],
        Action::RunPrepared { command, settings_dir } => vec![
            format!(
                "write: {}/settings_local.py (0600) as `switch-settings postgres` would write it, and copies of settings/settings.py and settings/sentry_conf.py beside it; settings/settings_local.py is left as it is",
                settings_dir.display()
            ),
            format!("run: {} (Sentry 4 may keep running: this touches only the target)", command.render()),
        ],
        Action::Sentry6Upgrade { command, set_based_0083 } => {
            let mut lines = vec![format!("run: {}", command.render())];
            if *set_based_0083 {
                lines.push("what `sentry upgrade --noinput` runs (syncdb --migrate), every South migration in its order and process, but".into());
                lines.push(format!("0083_migrate_dupe_groups set-based: {} (Sentry's walk over every group, its merges), then the merged", super::MERGE_DUPE_GROUPS_SQL));
                lines.push("groups deleted by that migration's own ORM, in South's transaction of 0083, which records it (--sentry-own-upgrade: as shipped)".into());
            } else {
                lines.push("Sentry's own upgrade as shipped (--sentry-own-upgrade): 0083_migrate_dupe_groups walks every group in Python".into());
            }
            lines
        }
        Action::WriteSettings(kind) => vec![match kind {
            DbKind::Sqlite => format!("write settings/settings_local.py (0600, atomically; the file it replaces is kept): sqlite3 {db}"),
            DbKind::Postgres => format!("write settings/settings_local.py (0600, atomically; the file it replaces is kept): postgresql_psycopg2 {target}, password {}", match &config.pg_password_source {
                PasswordSource::Env => "from PGPASSWORD (written into the file)".to_string(),
                PasswordSource::File(path, _) => format!("from {} (psycopg2 reads it; none in the file)", path.display()),
                other => format!("{other}"),
            }),
        }],
        Action::ScanValues { fit } => vec![
            format!("scan: every column of every model table of {db}, one pass per table: varchar(n) values over n characters, NUL characters, invalid UTF-8, integers outside the column's range, dates Django cannot parse"),
            if *fit {
                "then: fit-values fits what it found (--fit-values)".to_string()
            } else {
                "stop on any finding with a summary per table.column (nothing written to PostgreSQL); --fit-values fits them".to_string()
            },
        ],
        Action::FitValues { working_copy } => vec![
            format!("copy {db} -> {} (mode 0600)", working_copy.display()),
            "fit, in one transaction: NUL characters removed, invalid UTF-8 replaced with U+FFFD, over-long text cut to its limit on a character boundary (first n-3 characters and `...`, as Sentry 6 truncates)".into(),
            "merge tag values a cut made equal on PostgreSQL's unique key (times_seen summed, earliest first_seen, latest last_seen); any other collision stops".into(),
            format!("write settings/settings_local.py (0600): sqlite3 {} (the dumps read the working copy)", working_copy.display()),
            "report: every changed row (table, id, column, what was done) and every merge".into(),
        ],
        Action::CountSource => vec![
            format!("count: rows of every model table in {} (the working copy with --fit-values)", db),
            "check: they equal SQLite's rows per table, less exactly the rows --fit-values merged".into(),
        ],
        Action::PgCopy { time_zone, integer_early, reset_sequence_sql, truncate_sql, marker_sql } => [
            vec![
                "check: the target is empty, or holds this migration's own load of the same source (sentry_migrate_load says so: a run stopped before its journal)".to_string(),
                format!("transaction 1: (only over its own earlier load) {truncate_sql}"),
                format!("      where {{tables}} = every table in schema public but {}, quoted", pg::LOAD_MARKER_TABLE),
                format!("sql: {}", copy::KEYS_AND_INDEXES_SQL),
                "      then each DROP it lists".into(),
            ],
            marker_lines(marker_sql, "pg-copy", "the source's sha256 (the working copy's with --fit-values)", "then"),
            vec![
                "sql: UPDATE sentry_migrate_load SET rebuild = $1".into(),
                "      where $1 = the statements that re-create what was dropped (and any an interrupted run left there), as JSON; then COMMIT".into(),
                format!("transaction 2, in each of {} sessions: SELECT set_config('TimeZone', $1, true)", copy::SESSIONS),
                format!(
                    "      where $1 = {}: naive datetimes are read in it, as Django's PostgreSQL backend reads them",
                    time_zone.as_deref().map_or("TIME_ZONE (not set: preflight stops)".to_string(), |zone| format!("'{zone}'"))
                ),
                "sql: SET CONSTRAINTS ALL DEFERRED".into(),
                "sql (each model table, the largest first, the next one to the session that is free; its columns that SQLite has): COPY {table} ({columns}) FROM STDIN".into(),
                "      rows streamed from SQLite one at a time: booleans 0/1 -> f/t, text escaped for COPY, NULL as \\N".into(),
                format!(
                    "      in a savepoint first, Sentry 6's integer columns as integer ({}): sql: ALTER TABLE {{table}} ALTER COLUMN {{column}} TYPE integer",
                    integer_early.iter().map(|(t, c)| format!("{t}.{c}")).collect::<Vec<_>>().join(", ")
                ),
                "      (its migration 0105 then finds the type and rewrites nothing); a value not whole within integer's range: ROLLBACK TO SAVEPOINT, TYPE double precision, the table copied again".into(),
                "check: rows copied = rows read, per table; COMMIT in every session once all of them are through, none if one failed".into(),
                "then: each CREATE INDEX recorded, over the sessions".into(),
                "transaction 3: each ADD CONSTRAINT … FOREIGN KEY recorded (PostgreSQL validates it)".into(),
                format!("sql (each table with an id sequence): {reset_sequence_sql}"),
                "      where {table} and $1 = the table's quoted name".into(),
                format!("sql: {}, then COMMIT", copy::REBUILT_SQL),
                format!("on a failure: {} and every recorded statement again on the emptied tables, in one transaction (the target as before)", pg::TRUNCATE_SQL),
            ],
        ].concat(),
        Action::VerifyDumps => vec![
            "check: both dumps parse as JSON fixtures; objects per model (and m2m entries) equal the SQLite rows of its table".into(),
            "report: SQLite-only tables (no model) with their rows, as not carried over".into(),
        ],
        Action::PgCreateDatabaseChecked { create_sql } => vec![
            format!("check: PostgreSQL {target} answers (password: {}), and the role may create what Sentry's upgrade creates", config.pg_password_source),
            format!("then as pg-create-database: {create_sql} (only if the target does not exist), UTF8, no tables"),
        ],
        Action::PgCreateDatabase { create_sql } => vec![
            "connect: the target database (only if it does not exist: the maintenance db `postgres`, else template1)".to_string(),
            format!("sql (maintenance db, only if the target does not exist): {create_sql}"),
            "check: an existing database is in UTF8".into(),
            "check: an existing database must have no tables in schema public (unless this tool created it, per the journal)".into(),
        ],
        Action::PgClearGeneratedRows { demo_project, truncate_sql } => vec![
            format!("check: sentry_project holds only the demo project upgrade made ({demo_project:?})"),
            format!("sql (one transaction): {truncate_sql}"),
            format!("      where {{tables}} = every table in schema public but {}, quoted", pg::LOAD_MARKER_TABLE),
        ],
        Action::PgAbstimeShim { sql } => sql.iter().map(|sql| format!("sql (PostgreSQL >= 12, as superuser, one transaction): {sql}")).collect(),
        Action::PgLoad { command, reset_sequence_sql, truncate_sql, marker_sql } => [vec![
            "check: the target is empty, or holds this migration's own load of the same dumps (sentry_migrate_load says so: a run stopped before its journal)".to_string(),
            format!("sql (one transaction, only over its own earlier load): {truncate_sql}"),
            format!("      where {{tables}} = every table in schema public but {}, quoted", pg::LOAD_MARKER_TABLE),
        ], marker_lines(marker_sql, "pg-load", "both dumps' sha256", "then COMMIT, before the load"), vec![
            format!("run: {}", command.render()),
            "check: output says `Installed N object(s) from 2 fixture(s)` with N = objects in both dumps, and no `Problem installing fixture`".into(),
            format!("sql (each table with an id sequence): {reset_sequence_sql}"),
            "      where {table} and $1 = the table's quoted name".into(),
        ]].concat(),
        Action::VerifyPostgres => vec![
            "check: rows of every table equal SQLite's (report: dumps/report.md)".into(),
            "check: every id sequence's next value is past max(id)".into(),
        ],
        Action::VerifySentry6 { drop_marker_sql } => vec![
            format!("sql: {drop_marker_sql} (the load's marker: Sentry 6's data now, never loaded again)"),
            "check: events, users, projects, team members, options unchanged; only Sentry 6's intended deltas elsewhere".into(),
            "check: every event points at an existing group".into(),
        ],
    }
}

/// The lines that show how a load records itself in the target.
fn marker_lines(marker_sql: &[&str], step: &str, input: &str, then: &str) -> Vec<String> {
    let mut lines: Vec<String> = marker_sql.iter().map(|sql| format!("sql: {sql}")).collect();
    lines.push(format!("      where $1 = '{step}', $2 = {input}; {then}"));
    lines
}

/// The plan as text, as `--dry-run` prints it.
pub fn render(steps: &[Step], config: &Config) -> String {
    let mut out = String::new();
    let mut phase = None;
    for (index, step) in steps.iter().enumerate() {
        if phase != Some(step.phase) {
            phase = Some(step.phase);
            let _ = writeln!(out, "== {} ==", step.phase.title());
        }
        let _ = writeln!(
            out,
            "[{}/{}] {}: {}",
            index + 1,
            steps.len(),
            step.id,
            step.summary
        );
        for line in describe(step, config) {
            let _ = writeln!(out, "      {line}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{render, shell_quote};
    use crate::{
        flags::Engine,
        plan::{plan, tests::config},
    };

    #[test]
    fn default_plan_is_the_copy_engine_as_text() {
        let config = config(None, None);
        let text = render(&plan(&config), &config);
        let expected = include_str!("../../tests/plans/default-copy.txt");
        assert_eq!(text, expected);
        assert!(!text.contains("s3cret"));
    }

    #[test]
    fn loaddata_plan_as_text() {
        let mut config = config(None, None);
        config.engine = Engine::Loaddata;
        let text = render(&plan(&config), &config);
        let expected = r#"== tag 1 (Sentry 4), SQLite ==
[1/21] preflight: check the repo, the SQLite db, disk space and PostgreSQL before touching anything
      check: bin/buildout, both buildout configs, settings/settings.py and the load helper exist
      check: var/sentry.db exists, opens, passes PRAGMA quick_check, is a Sentry 4 db (sentry tables, South history <= 0062)
      check: no process has var/sentry.db open, no bin/sentry process is running
      check: free disk in dumps/ for the dumps (3x the db) and next to the db for the backup
      check: the settings say which zone Sentry 4 wrote its dates in: TIME_ZONE is not set in the settings: migrate stops in preflight
      check: memory for dumpdata/loaddata: about 68 KiB per event must fit in the machine's available memory (else: --engine copy)
      check: PostgreSQL postgres://sentry@db.internal:5432/sentry answers (password: PGPASSWORD), is UTF8, and the role may create what Sentry's upgrade creates
[2/21] backup-sqlite: copy the SQLite db next to itself, check the copy, record its sha256
      copy var/sentry.db -> var/sentry.db.backup-<UTC time> (never overwrites an earlier backup)
      check: PRAGMA integrity_check on the copy; sha256 of the copy equals the source's; record it in the journal
[3/21] buildout-tag1: install tag 1: Sentry 4.10 and the psycopg2 egg
      run: bin/buildout -c buildout/tag1-sentry4.cfg buildout:directory=/srv/central_sentry
[4/21] settings-sqlite: point settings_local.py at the SQLite db
      write settings/settings_local.py (0600, atomically; the file it replaces is kept): sqlite3 var/sentry.db
[5/21] sqlite-upgrade: bring the SQLite schema to Sentry 4.10's latest migration
      run: bin/sentry --config=settings/settings.py upgrade --noinput
[6/21] sqlite-repair: let Sentry repair what it knows to repair
      run: bin/sentry --config=settings/settings.py repair
[7/21] inspect-models: list every model's table (and m2m tables) as Sentry 4 sees them
      run: bin/py xtask/python/sentry_helper.py --config=settings/settings.py models > dumps/models.json
[8/21] scan-values: find values PostgreSQL rejects (too long, NUL, invalid UTF-8, integers, dates) before anything is dumped
      scan: every column of every model table of var/sentry.db, one pass per table: varchar(n) values over n characters, NUL characters, invalid UTF-8, integers outside the column's range, dates Django cannot parse
      stop on any finding with a summary per table.column (nothing written to PostgreSQL); --fit-values fits them
[9/21] dump-auth: dump the auth app first (users, groups, permissions)
      run: bin/sentry --config=settings/settings.py dumpdata auth > dumps/dumpdata-auth.json
[10/21] dump-rest: dump everything else
      run: bin/sentry --config=settings/settings.py dumpdata --exclude auth > dumps/dumpdata.json
[11/21] verify-dumps: parse both dumps; objects per model must equal SQLite's rows per table
      check: both dumps parse as JSON fixtures; objects per model (and m2m entries) equal the SQLite rows of its table
      report: SQLite-only tables (no model) with their rows, as not carried over
== tag 1 (Sentry 4), PostgreSQL ==
[12/21] pg-create-database: create the target database, or accept an empty one
      connect: the target database (only if it does not exist: the maintenance db `postgres`, else template1)
      sql (maintenance db, only if the target does not exist): CREATE DATABASE "sentry" ENCODING 'UTF8' TEMPLATE template0
      check: an existing database is in UTF8
      check: an existing database must have no tables in schema public (unless this tool created it, per the journal)
[13/21] settings-postgres: point settings_local.py at PostgreSQL (mode 0600)
      write settings/settings_local.py (0600, atomically; the file it replaces is kept): postgresql_psycopg2 postgres://sentry@db.internal:5432/sentry, password from PGPASSWORD (written into the file)
[14/21] pg-upgrade: build Sentry 4.10's schema on PostgreSQL, no superuser prompt
      run: bin/sentry --config=settings/settings.py upgrade --noinput
[15/21] pg-clear-generated-rows: remove the demo project and every row upgrade generated, in one transaction
      check: sentry_project holds only the demo project upgrade made ("Sentry (Internal)")
      sql (one transaction): TRUNCATE TABLE {tables} RESTART IDENTITY CASCADE
            where {tables} = every table in schema public but sentry_migrate_load, quoted
[16/21] pg-abstime-shim: install the abstime compatibility shim (PostgreSQL 12+ removed abstime)
      sql (PostgreSQL >= 12, as superuser, one transaction): CREATE OR REPLACE FUNCTION sentry_migrate_timestamptz_to_int(timestamptz) RETURNS integer AS 'SELECT extract(epoch FROM $1)::integer' LANGUAGE SQL IMMUTABLE STRICT
      sql (PostgreSQL >= 12, as superuser, one transaction): DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_cast WHERE castsource = 'timestamptz'::regtype AND casttarget = 'integer'::regtype) THEN CREATE CAST (timestamptz AS integer) WITH FUNCTION sentry_migrate_timestamptz_to_int(timestamptz); END IF; END $$
      sql (PostgreSQL >= 12, as superuser, one transaction): DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_type WHERE typname = 'abstime') THEN CREATE DOMAIN abstime AS integer; END IF; END $$
[17/21] pg-load: load auth then the rest in one transaction, side-effect handlers disconnected
      check: the target is empty, or holds this migration's own load of the same dumps (sentry_migrate_load says so: a run stopped before its journal)
      sql (one transaction, only over its own earlier load): TRUNCATE TABLE {tables} RESTART IDENTITY CASCADE
            where {tables} = every table in schema public but sentry_migrate_load, quoted
      sql: CREATE TABLE IF NOT EXISTS sentry_migrate_load (step text NOT NULL, input text NOT NULL, loaded_at timestamptz NOT NULL DEFAULT now(), rebuild text)
      sql: ALTER TABLE sentry_migrate_load ADD COLUMN IF NOT EXISTS rebuild text
      sql: DELETE FROM sentry_migrate_load
      sql: INSERT INTO sentry_migrate_load (step, input) VALUES ($1, $2)
            where $1 = 'pg-load', $2 = both dumps' sha256; then COMMIT, before the load
      run: bin/py xtask/python/sentry_helper.py --config=settings/settings.py load dumps/dumpdata-auth.json dumps/dumpdata.json
      check: output says `Installed N object(s) from 2 fixture(s)` with N = objects in both dumps, and no `Problem installing fixture`
      sql (each table with an id sequence): SELECT setval(pg_get_serial_sequence($1, 'id'), COALESCE(MAX(id), 1), MAX(id) IS NOT NULL) FROM {table}
            where {table} and $1 = the table's quoted name
[18/21] verify-postgres: every table's rows equal SQLite's; every id sequence past max(id)
      check: rows of every table equal SQLite's (report: dumps/report.md)
      check: every id sequence's next value is past max(id)
== tag 2 (Sentry 6), PostgreSQL ==
[19/21] buildout-tag2: install tag 2: Sentry 6.4
      run: bin/buildout -c buildout/tag2-sentry6.cfg buildout:directory=/srv/central_sentry
[20/21] sentry6-upgrade: apply Sentry 6's migrations
      run: bin/py xtask/python/sentry_helper.py --config=settings/settings.py upgrade
      what `sentry upgrade --noinput` runs (syncdb --migrate), every South migration in its order and process, but
      0083_migrate_dupe_groups set-based: xtask/python/merge_dupe_groups.sql (Sentry's walk over every group, its merges), then the merged
      groups deleted by that migration's own ORM, in South's transaction of 0083, which records it (--sentry-own-upgrade: as shipped)
[21/21] verify-sentry6: compare with the loaded counts: only Sentry 6's intended changes
      sql: DROP TABLE IF EXISTS sentry_migrate_load (the load's marker: Sentry 6's data now, never loaded again)
      check: events, users, projects, team members, options unchanged; only Sentry 6's intended deltas elsewhere
      check: every event points at an existing group
"#;
        assert_eq!(text, expected);
        assert!(
            !text.contains("s3cret"),
            "the password is never in the plan"
        );
    }

    #[test]
    fn custom_paths_and_target_show_in_the_plan() {
        let config = config(
            Some("data/central sentry.db"),
            Some("postgres://migrator@127.0.0.1:5433/sentry6"),
        );
        let text = render(&plan(&config), &config);
        for line in [
            "check: data/central sentry.db exists, opens",
            "copy data/central sentry.db -> data/central sentry.db.backup-<UTC time>",
            "only if the target does not exist): CREATE DATABASE \"sentry6\" ENCODING 'UTF8' TEMPLATE template0",
            "postgresql_psycopg2 postgres://migrator@127.0.0.1:5433/sentry6, password from PGPASSWORD (written into the file)",
        ] {
            assert!(text.contains(line), "{line}\n{text}");
        }
    }

    #[test]
    fn words_are_quoted_as_one_shell_word() {
        for word in [
            "plain/path-1.db",
            "my db",
            "it's",
            "a\\b",
            "$HOME",
            "",
            "ünï",
        ] {
            let quoted = shell_quote(word);
            assert_eq!(
                shlex::split(&quoted),
                Some(vec![word.to_string()]),
                "{word:?} quoted as {quoted}"
            );
        }
        assert_eq!(
            shell_quote("--config=settings/settings.py"),
            "--config=settings/settings.py"
        );
    }
}
