//! The steps on the PostgreSQL side: the target database, both engines' loads, and the checks
//! after the load and after Sentry 6's upgrade.

use std::{
    fs,
    io::{Read, Seek, SeekFrom, Write},
    time::Duration,
};

use anyhow::{anyhow, bail, ensure, Context, Result};

use super::{recheck_outputs, StepRunner};
use crate::{
    merge, pg,
    plan::{Command, Step, StepId},
    sentry, sqlite, verify,
};

/// The SQL that makes a load safe to repeat, as the plan carries it.
pub(super) struct LoadSql<'a> {
    pub reset_sequence_sql: &'a str,
    pub truncate_sql: &'a str,
    pub marker_sql: &'a [&'a str],
}

impl StepRunner<'_> {
    pub(super) fn target_client(&self) -> Result<postgres::Client> {
        pg::connect(
            &self.config.pg,
            &self.config.pg.dbname,
            Duration::from_secs(5),
        )
    }

    pub(super) fn pg_copy(
        &mut self,
        step: &Step,
        time_zone: Option<&str>,
        integer_early: &[(&str, &str)],
        sql: LoadSql<'_>,
    ) -> Result<()> {
        let zone = time_zone.with_context(|| {
            format!(
                "the settings say no TIME_ZONE, so the dates cannot be read: set it (README, step 2), then `{}`",
                self.resume.from(StepId::Preflight)
            )
        })?;
        ensure!(
            self.journal.is_done(StepId::CountSource),
            "the copy's source was not counted: resume with `{}`",
            self.resume.from(StepId::CountSource)
        );
        let input = self.load_input(step.id);
        let (client, again) = self.ready_to_load(step, "copy", &input)?;
        let mut clients = vec![client];
        while clients.len() < crate::copy::SESSIONS {
            clients.push(self.target_client()?);
        }
        let tables = self.model_tables()?;
        let source = self.engine_source();
        let repeat = crate::copy::Repeatable {
            truncate_sql: again.then_some(sql.truncate_sql),
            reset_sequence_sql: sql.reset_sequence_sql,
            marker_sql: sql.marker_sql,
            step: step.id.name(),
            input: &input,
        };
        let (copies, sequences) =
            crate::copy::copy(&source, &mut clients, &tables, zone, &repeat, integer_early)?;
        let mut log = self.log()?;
        for copy in &copies {
            writeln!(
                log,
                "{}: {} rows in {:.1}s",
                copy.table, copy.rows, copy.secs
            )?;
            if !copy.integer_columns.is_empty() {
                writeln!(
                    log,
                    "{}: loaded as integer, Sentry 6's type (its migration 0105 rewrites nothing): {}",
                    copy.table,
                    copy.integer_columns.join(", ")
                )?;
            }
            if let Some(why) = &copy.kept_double_precision {
                writeln!(
                    log,
                    "{}: kept double precision ({why}): Sentry 6's migration 0105 rewrites the table",
                    copy.table
                )?;
            }
            if !copy.skipped_columns.is_empty() {
                writeln!(
                    log,
                    "{}: SQLite-only columns not carried over (no model field, as with loaddata): {}",
                    copy.table,
                    copy.skipped_columns.join(", ")
                )?;
            }
        }
        let total: u64 = copies.iter().map(|c| c.rows).sum();
        self.journal.loaddata_summary = Some(format!(
            "copy engine: {total} rows into {} tables, dates read in {zone}",
            copies.len()
        ));
        self.journal.copied = copies;
        writeln!(log, "sequences reset: {}", sequences.len())?;
        Ok(())
    }

    /// What a load reads, as the journal knows it (rechecked on every run): the dumps' sha256
    /// for `pg-load`, the db's for `pg-copy` (the working copy's with `--fit-values`). The load
    /// records it in the target, so a run can recognise its own load of the same input.
    fn load_input(&self, step: StepId) -> String {
        let producers: &[StepId] = match step {
            StepId::PgLoad => &[StepId::DumpAuth, StepId::DumpRest],
            _ if self.config.fit_values => &[StepId::FitValues],
            _ => &[],
        };
        let mut parts: Vec<String> = producers
            .iter()
            .filter_map(|producer| self.journal.record_of(*producer))
            .flat_map(|record| record.outputs.iter())
            .map(|(path, sha256)| format!("{path} sha256 {sha256}"))
            .collect();
        if parts.is_empty() {
            parts.push(format!(
                "{} sha256 {}",
                self.config.display_path(&self.config.sqlite_path),
                self.journal.source_sha256.as_deref().unwrap_or("unknown")
            ));
        }
        parts.join(", ")
    }

    pub(super) fn create_database(&mut self, create_sql: &str) -> Result<()> {
        let target = &self.config.pg;
        // The target first (a password file may have a line for it only); the maintenance
        // database only to create it, or to recreate the one an earlier run created.
        let mut client = match self.target_client() {
            Ok(client) => client,
            Err(err) if pg::is_missing_database(&err) => {
                let mut admin = pg::connect_admin(target, Duration::from_secs(5))?;
                pg::create_database(&mut admin, create_sql, &target.dbname)?;
                self.journal.created_database = true;
                writeln!(self.log()?, "created database {}", target.dbname)?;
                return Ok(());
            }
            Err(err) => return Err(err),
        };
        let mut log = self.log()?;
        let tables = pg::public_tables(&mut client)?;
        if tables.is_empty() {
            if let Some(problem) = pg::encoding_problem(&mut client, target)? {
                bail!("{problem}");
            }
            writeln!(
                log,
                "database {} exists and is empty: using it",
                target.dbname
            )?;
            return Ok(());
        }
        if self.journal.created_database {
            drop(client);
            writeln!(log, "database {} was created by an earlier run of this migration and is not empty: recreating it", target.dbname)?;
            let mut admin = pg::connect_admin(target, Duration::from_secs(5))?;
            pg::drop_database(&mut admin, &target.database()?)?;
            pg::create_database(&mut admin, create_sql, &target.dbname)?;
            return Ok(());
        }
        bail!(
            "database `{}` on {}:{} is not empty ({} tables, e.g. {}): refusing to load into it; \
             point PGDATABASE or --database-url at a new or empty database, or drop this one yourself",
            target.dbname,
            target.host,
            target.port,
            tables.len(),
            tables.iter().take(3).cloned().collect::<Vec<_>>().join(", ")
        )
    }

    pub(super) fn load(&mut self, step: &Step, command: &Command, sql: LoadSql<'_>) -> Result<()> {
        let expected = self.journal.dump_objects;
        ensure!(
            self.journal.is_done(StepId::VerifyDumps),
            "no verified dumps: resume with `{}`",
            self.resume.from(StepId::VerifyDumps)
        );
        let config = self.config;
        for producer in [StepId::DumpAuth, StepId::DumpRest] {
            recheck_outputs(config, self.journal, producer, self.resume)?;
        }
        let input = self.load_input(step.id);
        let (mut client, again) = self.ready_to_load(step, "load", &input)?;
        // Django's loaddata commits its own transaction, so the marker goes in before it (with
        // the clearing of an earlier load): whatever stops the step from here on, the target
        // holds this load's marker and nothing or this load, and the step can be repeated.
        let mut tx = client.transaction()?;
        if again {
            pg::truncate_tables(&mut tx, sql.truncate_sql)?;
        }
        // An interrupted copy (before a switch to this engine) left its dropped indexes and
        // keys in the marker this rewrites: they come back first.
        let pending = crate::copy::recreate_pending(&mut tx, crate::copy::SENTRY6_INTEGER_COLUMNS)?;
        if pending > 0 {
            writeln!(
                self.log()?,
                "re-created {pending} index(es) and foreign key(s) an interrupted copy had dropped"
            )?;
        }
        pg::write_load_marker(&mut tx, sql.marker_sql, step.id.name(), &input)?;
        tx.commit()
            .context("cannot record the load in the target")?;
        let start = fs::metadata(self.log_path).map(|m| m.len()).unwrap_or(0);
        let ran = self.run_command(command);
        let mut output = String::new();
        let mut log = fs::File::open(self.log_path)?;
        log.seek(SeekFrom::Start(start))?;
        log.read_to_string(&mut output)?;
        if let Err(err) = ran {
            // The cause (with the model and pk Django names) first, then the rest.
            return Err(match sentry::python_cause(&output) {
                Some(cause) => anyhow!("{cause}\n  (the load rolled back; {err:#})"),
                None => err,
            });
        }
        let summary = sentry::check_loaddata_output(&output, expected, 2)?;
        self.journal.loaddata_summary = Some(summary);
        let sequences = pg::reset_sequences(&mut client, sql.reset_sequence_sql)?;
        let _ = writeln!(self.log()?, "sequences reset: {}", sequences.len());
        Ok(())
    }

    pub(super) fn verify_postgres(&mut self) -> Result<()> {
        let mut client = self.target_client()?;
        // This compares the Sentry 4 state; after Sentry 6's upgrade it cannot be redone.
        if let Some(migration) = pg::latest_sentry_migration(&mut client)? {
            ensure!(
                migration <= sqlite::SENTRY4_LAST_MIGRATION,
                "the target is already at Sentry migration {migration:04} (Sentry 6): the Sentry 4 state this step checks is gone; \
                 to redo the load and its check, resume with `{}`",
                self.resume.from(StepId::BuildoutTag1)
            );
        }
        let pending = pg::pending_rebuild(&mut client)?;
        ensure!(
            pending.is_empty(),
            "the load did not finish: {} foreign key(s) and index(es) it dropped are not re-created yet (e.g. `{}`); {}",
            pending.len(),
            pending[0],
            self.resume.redo(StepId::PgCopy)
        );
        let counts = pg::table_counts(&mut client)?;
        let checks = verify::postgres_vs_dumps(&self.journal.dump_rows, &counts);
        self.journal.postgres_counts = counts;
        self.journal.max_event_id = pg::max_event_id(&mut client)?;
        let sequences = pg::sequences(&mut client)?;
        let behind: Vec<String> = sequences
            .iter()
            .filter(|s| s.is_behind())
            .map(|s| format!("{} (next {}, max(id) {})", s.table, s.next_value, s.max_id))
            .collect();
        self.journal.sequences = sequences;
        // Before Sentry 6 touches it: the duplicate groups its migration 0083 may merge.
        self.journal.merge_candidates = merge::candidates(&mut client)?;
        self.finish_check(
            "postgres-vs-sqlite",
            checks,
            self.resume.redo(StepId::PgClearGeneratedRows),
        )?;
        ensure!(
            behind.is_empty(),
            "id sequences behind their tables: {}; {}",
            behind.join(", "),
            self.resume.redo(StepId::PgLoad)
        );
        Ok(())
    }

    pub(super) fn verify_sentry6(&mut self, drop_marker_sql: &str) -> Result<()> {
        let mut client = self.target_client()?;
        client
            .batch_execute(drop_marker_sql)
            .context("cannot drop this tool's load marker (sentry_migrate_load)")?;
        let counts = pg::table_counts(&mut client)?;
        let candidates = &self.journal.merge_candidates;
        let outcome = merge::outcome(&mut client, candidates)?;
        let facts = verify::Sentry6Facts {
            projects: counts.get("sentry_project").copied().unwrap_or(0),
            orphan_events: pg::orphan_events(&mut client)?,
            merge: merge::Merge::new(candidates, &outcome),
        };
        let checks = verify::sentry6_vs_loaded(&self.journal.postgres_counts, &counts, &facts);
        self.journal.merged_groups = outcome.merged;
        self.journal.streams = crate::streams::read(&mut client)?;
        self.journal.sentry6_counts = counts;
        self.finish_check(
            "sentry6-vs-postgres",
            checks,
            "inspect dumps/report.md; the Sentry 4 data is still in the backup and the dumps"
                .into(),
        )
    }
}
