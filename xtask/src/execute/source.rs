//! The steps on the SQLite side: preflight, the verified backup, the value scan and fit, and
//! what each engine will load, checked against SQLite's rows.

use std::{
    collections::BTreeMap,
    fs,
    io::Write,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};
use xshell::cmd;

use super::{with_remedy, Outputs, StepRunner};
use crate::{
    config::Config,
    dumps,
    flags::DbKind,
    journal::Backup,
    pg,
    plan::{self, StepId},
    sentry, settings, sqlite, util, values,
    verify::{self, TableCheck},
    zone,
};

impl StepRunner<'_> {
    pub(super) fn preflight(&mut self, limits: &plan::Limits) -> Result<()> {
        let config = self.config;
        let mut problems = missing_files(config);
        problems.extend(self.settings_syntax()?);
        let db = &config.sqlite_path;
        // A missing db is named by `missing_files`.
        if db.exists() {
            match sqlite::check_integrity(db, false)
                .and_then(|()| sqlite::check_sentry4(db, limits.last_sentry4_migration))
            {
                Ok(info) => {
                    let _ = writeln!(
                        self.log()?,
                        "sqlite: {} tables, sentry migration {:04}",
                        info.tables,
                        info.latest_migration
                    );
                }
                Err(err) => problems.push(format!("{err:#}")),
            }
        }
        for suffix in ["-journal", "-wal"] {
            let hot = util::sibling(db, suffix);
            if hot.exists() {
                problems.push(format!(
                    "{} exists: a writer crashed or is still running; stop Sentry, then open the db once with `sqlite3 {}` and `.quit` to roll it back",
                    hot.display(),
                    db.display()
                ));
            }
        }
        for (pid, cmdline) in sentry::running_sentry(&config.root, db) {
            problems.push(format!(
                "Sentry is running or holds the db (pid {pid}: {cmdline}): stop it first"
            ));
        }
        if let Some(per_event) = limits.memory_per_event {
            if let (Ok(events), Some(available)) =
                (sqlite::event_count(db), util::available_memory())
            {
                let need = events * per_event;
                if need > available {
                    problems.push(format!(
                        "the loaddata engine needs about {} of memory for {events} events (Django's dumpdata holds every object: \
                         ~{} KiB per event, measured), and this machine has {} available: use `--engine copy` (flat memory)",
                        util::human_bytes(need),
                        per_event / 1024,
                        util::human_bytes(available)
                    ));
                }
            }
        }
        if let Ok(meta) = fs::metadata(db) {
            let size = meta.len();
            for (dir, need, what) in [
                (
                    config.dumps_dir(),
                    size * limits.dump_space_factor,
                    "the dumps",
                ),
                (
                    db.parent().unwrap_or(Path::new(".")).to_path_buf(),
                    size,
                    "the backup",
                ),
            ] {
                match util::free_bytes(&dir) {
                    Ok(free) if free < need => problems.push(format!(
                        "{} has {} free, {what} need about {}: free some space",
                        dir.display(),
                        util::human_bytes(free),
                        util::human_bytes(need)
                    )),
                    Ok(_) => {}
                    Err(err) => problems.push(format!(
                        "cannot tell free space in {}: {err:#}",
                        dir.display()
                    )),
                }
            }
        }
        match pg::privilege_problem(&config.pg) {
            Ok(Some(problem)) => problems.push(problem),
            Ok(None) => {}
            Err(err) => problems.push(format!("{err:#}")),
        }
        match config.time_zone.problem() {
            Some(problem) => problems.push(problem),
            None => {
                let zone = config.time_zone.describe();
                self.notes
                    .push(format!("dates in SQLite are read as {zone}"));
                self.journal.time_zone = Some(zone);
            }
        }
        // Only a hint, never a reason to stop: an install may run long after its last event.
        if let Ok(Some(hint)) = zone::hint(db) {
            let said = zone::judge(&config.time_zone, &hint);
            self.notes.push(format!("hint: {said}"));
            self.journal.zone_hint = Some(said);
        }
        if !problems.is_empty() {
            bail!(
                "preflight found {} problem(s), nothing was touched:\n  - {}",
                problems.len(),
                problems.join("\n  - ")
            );
        }
        Ok(())
    }

    pub(super) fn backup(&mut self) -> Result<Outputs> {
        let source = &self.config.sqlite_path;
        // A run killed in the middle of this step left its copy under a partial name: never
        // a backup's. It is ours (the name says so) and incomplete: gone.
        remove_partial_backups(source)?;
        let stamp = util::utc_timestamp(util::unix_now()).replace([':', '-'], "");
        let mut backup = util::sibling(source, &format!(".backup-{stamp}"));
        let mut n = 2;
        while backup.exists() {
            backup = util::sibling(source, &format!(".backup-{stamp}-{n}"));
            n += 1;
        }
        // Written, synced and checked under a partial name, then renamed: a file under a
        // backup's name is always a whole, verified copy, even after a SIGKILL or a power cut.
        let partial = util::sibling(&backup, PARTIAL_BACKUP);
        // Private while it is written, then the source's mode: never readable by more people
        // than the db itself.
        let source_mode = util::copy_synced(source, &partial, &backup)?;
        fs::set_permissions(&partial, fs::Permissions::from_mode(source_mode))?;
        if let Err(err) = sqlite::check_integrity(&partial, true) {
            let _ = fs::remove_file(&partial);
            return Err(err.context("the backup copy fails its integrity check"));
        }
        let source_hash = util::sha256_file(source)?;
        let backup_hash = util::sha256_file(&partial)?;
        if source_hash != backup_hash {
            let _ = fs::remove_file(&partial);
            bail!("the backup differs from the source (was the db written during the copy?)");
        }
        fs::rename(&partial, &backup).with_context(|| {
            format!(
                "cannot rename {} to {}",
                partial.display(),
                backup.display()
            )
        })?;
        if let Some(dir) = backup.parent() {
            // The rename itself made durable.
            let _ = fs::File::open(dir).and_then(|dir| dir.sync_all());
        }
        let path = self.config.display_path(&backup);
        self.journal.source_sha256 = Some(source_hash.clone());
        self.journal.backup = Some(Backup {
            path: path.clone(),
            sha256: backup_hash.clone(),
            bytes: fs::metadata(&backup)?.len(),
        });
        let _ = writeln!(self.log()?, "backup {path} sha256 {backup_hash}");
        Ok(Outputs::from([(path, backup_hash)]))
    }

    pub(super) fn write_settings(&mut self, kind: DbKind) -> Result<Outputs> {
        let changes = settings::switch(kind, self.config)?;
        let mut log = self.log()?;
        for line in changes {
            let _ = writeln!(log, "{line}");
        }
        Ok(Outputs::new())
    }

    /// The settings files Sentry will execute, compiled by the install's own Python 2.7
    /// (`bin/py`, there on an installed Sentry 4): a syntax error is known before anything is
    /// touched, not at `sqlite-upgrade` after the backup. Without bin/py yet, the check is
    /// left to Sentry's first step, and the log says so.
    fn settings_syntax(&self) -> Result<Vec<String>> {
        let config = self.config;
        let py = config.bin("py");
        let files: Vec<PathBuf> = [
            config.settings_py(),
            config.root.join("settings/sentry_conf.py"),
            config.settings_local(),
        ]
        .into_iter()
        .filter(|path| path.exists())
        .collect();
        if !py.exists() || !config.helper_py().exists() || files.is_empty() {
            writeln!(
                self.log()?,
                "settings syntax: not checked here (no bin/py yet); Sentry's first step reads them"
            )?;
            return Ok(Vec::new());
        }
        let helper = config.helper_py();
        let count = files.len();
        let output = cmd!(self.sh, "{py} {helper} check-syntax {files...}")
            .quiet()
            .ignore_status()
            .output()
            .with_context(|| {
                format!("cannot run {} to check the settings' syntax", py.display())
            })?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        let root = format!("{}/", config.root.display());
        let bad: Vec<String> = stdout
            .lines()
            .filter(|line| !line.trim().is_empty())
            .map(|line| {
                format!(
                    "{}: fix it (Sentry would stop on it at its first step)",
                    line.replace(&root, "")
                )
            })
            .collect();
        if !output.status.success() && bad.is_empty() {
            return Ok(vec![format!(
                "bin/py could not check the settings' syntax ({}): {}",
                output.status,
                util::text_tail(&String::from_utf8_lossy(&output.stderr), 3)
            )]);
        }
        writeln!(
            self.log()?,
            "settings syntax: {} files compile",
            count - bad.len()
        )?;
        Ok(bad)
    }

    /// Every table the dumps (or a load engine) carry over: the models' and their m2m tables.
    pub(super) fn model_tables(&self) -> Result<Vec<String>> {
        let models = with_remedy(
            dumps::read_models(&self.config.models_json()),
            self.resume.redo(StepId::InspectModels),
        )?;
        Ok(dumps::model_tables(&models))
    }

    pub(super) fn scan_values(&mut self, fit: bool) -> Result<()> {
        let tables = self.model_tables()?;
        let scan = values::scan(&self.config.sqlite_path, &tables)?;
        let summary = values::summary(&scan);
        let mut log = self.log()?;
        writeln!(log, "scanned {}", values::rate(&scan))?;
        writeln!(log, "{summary}")?;
        // The report shows a few ids; the fit scans the working copy again for all of them.
        self.journal.value_scan = Some(scan.with_examples(20));
        if scan.findings.is_empty() || fit {
            return Ok(());
        }
        let unfittable = scan.findings.iter().any(|f| !f.kind.fittable());
        let columns: std::collections::BTreeSet<(&str, &str)> = scan
            .findings
            .iter()
            .map(|f| (f.table.as_str(), f.column.as_str()))
            .collect();
        bail!(
            "{} column(s) hold values PostgreSQL rejects; nothing was written to PostgreSQL:\n    {}\n  {}",
            columns.len(),
            summary.replace('\n', "\n    "),
            if unfittable {
                "some cannot be fitted automatically (integers, dates): fix those rows in the db with Sentry 4 stopped; \
                 `--fit-values` fits the rest (text) in a working copy"
                    .to_string()
            } else {
                format!(
                    "to fit them in a working copy (the source stays as it is; every change is reported), resume with `{} --fit-values`",
                    self.resume.command()
                )
            }
        )
    }

    pub(super) fn fit_values(&mut self, working_copy: &Path) -> Result<Outputs> {
        let config = self.config;
        let working = config.root.join(working_copy);
        let partial = util::sibling(&working, ".partial");
        let _ = fs::remove_file(&partial);
        util::copy_synced(&config.sqlite_path, &partial, &partial)?;
        let tables = self.model_tables()?;
        let scan = values::scan(&partial, &tables)?;
        let fit = values::fit(&partial, &scan)?;
        fs::rename(&partial, &working).with_context(|| {
            format!(
                "cannot rename {} to {}",
                partial.display(),
                working.display()
            )
        })?;
        let mut log = self.log()?;
        writeln!(
            log,
            "fitted {} value(s), merged {} row(s) into their twins",
            fit.changes.len(),
            fit.merges.iter().map(|m| m.removed.len()).sum::<usize>()
        )?;
        for change in &fit.changes {
            writeln!(
                log,
                "{}.{} id {}: {}",
                change.table, change.column, change.id, change.detail
            )?;
        }
        self.journal.fit = Some(fit);
        // The dumps read the working copy from here on.
        let mut fitted = config.clone();
        fitted.sqlite_path = working.clone();
        for line in settings::switch(DbKind::Sqlite, &fitted)? {
            writeln!(log, "{line}")?;
        }
        let path = config.display_path(&working);
        let hash = util::sha256_file(&working)?;
        Ok(Outputs::from([(path, hash)]))
    }

    /// Records what an engine will load (rows per table, objects) against SQLite's rows, and
    /// compares them: a table may lack only the rows `--fit-values` merged; tables without a
    /// model are not carried over.
    pub(super) fn record_what_loads(
        &mut self,
        rows: BTreeMap<String, u64>,
        objects: u64,
        sqlite_counts: BTreeMap<String, u64>,
    ) -> Vec<TableCheck> {
        let merged = self
            .journal
            .fit
            .as_ref()
            .map(|fit| fit.merged.clone())
            .unwrap_or_default();
        let checks = verify::dumps_vs_sqlite(&rows, &sqlite_counts, &merged);
        self.journal.leftover_tables = checks
            .iter()
            .filter(|c| c.verdict == verify::Verdict::NotCarriedOver)
            .map(|c| (c.table.clone(), c.expected.unwrap_or(0)))
            .collect();
        self.journal.sqlite_counts = sqlite_counts;
        self.journal.dump_rows = rows;
        self.journal.dump_objects = objects;
        checks
    }

    /// The db the copy engine reads: the fitted working copy with `--fit-values`, else the source.
    pub(super) fn engine_source(&self) -> PathBuf {
        if self.config.fit_values {
            self.config.fitted_db()
        } else {
            self.config.sqlite_path.clone()
        }
    }

    pub(super) fn count_source(&mut self) -> Result<()> {
        let tables = self.model_tables()?;
        let source = self.engine_source();
        let counts = sqlite::table_counts(&source)?;
        let rows: BTreeMap<String, u64> = tables
            .iter()
            .filter_map(|table| counts.get(table).map(|n| (table.clone(), *n)))
            .collect();
        let sqlite_counts = if source == self.config.sqlite_path {
            counts
        } else {
            sqlite::table_counts(&self.config.sqlite_path)?
        };
        let objects = rows.values().sum();
        let checks = self.record_what_loads(rows, objects, sqlite_counts);
        self.finish_check(
            "source-vs-sqlite",
            checks,
            self.resume.redo(StepId::SqliteUpgrade),
        )
    }

    pub(super) fn verify_dumps(&mut self) -> Result<()> {
        let config = self.config;
        let redo = |step| self.resume.redo(step);
        let models = with_remedy(
            dumps::read_models(&config.models_json()),
            redo(StepId::InspectModels),
        )?;
        let fields = dumps::m2m_fields(&models);
        let auth = with_remedy(
            dumps::count_fixture(&config.dump_auth(), &fields),
            redo(StepId::DumpAuth),
        )?;
        let rest = with_remedy(
            dumps::count_fixture(&config.dump_rest(), &fields),
            redo(StepId::DumpRest),
        )?;
        if let Some(model) = auth.objects.keys().find(|m| !m.starts_with("auth.")) {
            bail!(
                "the auth dump holds `{model}` objects: it should hold only the auth app; {}",
                self.resume.redo(StepId::DumpAuth)
            );
        }
        if let Some(model) = rest.objects.keys().find(|m| m.starts_with("auth.")) {
            bail!(
                "the main dump holds `{model}` objects, which belong in the auth dump; {}",
                self.resume.redo(StepId::DumpRest)
            );
        }
        let mut all = auth.clone();
        all.merge(&rest);
        let dump_rows = all.rows_per_table(&models)?;
        let sqlite_counts = sqlite::table_counts(&config.sqlite_path)?;
        let checks = self.record_what_loads(dump_rows, all.total_objects(), sqlite_counts);
        let _ = writeln!(
            self.log()?,
            "auth dump: {} objects; main dump: {} objects",
            auth.total_objects(),
            rest.total_objects()
        );
        self.finish_check(
            "dumps-vs-sqlite",
            checks,
            self.resume.redo(StepId::SqliteUpgrade),
        )
    }

    /// Stores a comparison in the journal and fails on any table that differs.
    pub(super) fn finish_check(
        &mut self,
        name: &str,
        checks: Vec<TableCheck>,
        remedy: String,
    ) -> Result<()> {
        let failures: Vec<String> = verify::failures(&checks)
            .iter()
            .map(|c| {
                format!(
                    "{}: expected {}, found {} ({})",
                    c.table,
                    verify::cell(c.expected),
                    verify::cell(c.actual),
                    c.note
                )
            })
            .collect();
        self.journal.checks.insert(name.to_string(), checks);
        if !failures.is_empty() {
            bail!(
                "{} table(s) differ:\n    {}\n  {remedy}",
                failures.len(),
                failures.join("\n    ")
            );
        }
        Ok(())
    }
}

/// The suffix a backup has while it is written.
const PARTIAL_BACKUP: &str = ".partial";

/// Removes `<db>.backup-*.partial`: copies an interrupted `backup-sqlite` left.
fn remove_partial_backups(source: &Path) -> Result<()> {
    let (Some(dir), Some(name)) = (source.parent(), source.file_name()) else {
        return Ok(());
    };
    let prefix = format!("{}.backup-", name.to_string_lossy());
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    for entry in fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let path = entry?.path();
        let file = path.file_name().unwrap_or_default().to_string_lossy();
        if file.starts_with(&prefix) && file.ends_with(PARTIAL_BACKUP) {
            fs::remove_file(&path).with_context(|| {
                format!("cannot remove the interrupted backup {}", path.display())
            })?;
        }
    }
    Ok(())
}

/// The files preflight needs that are not there, each in words: preflight stops on them, and
/// the dry run warns of them.
pub(super) fn missing_files(config: &Config) -> Vec<String> {
    let mut problems = Vec::new();
    if !config.bin("buildout").exists() {
        problems.push(
            "bin/buildout is missing: bootstrap buildout in this repo first (README, `Setup`)"
                .into(),
        );
    }
    if !config.sqlite_path.exists() {
        problems.push(format!(
            "SQLite database {} does not exist: pass its path with --sqlite PATH",
            config.sqlite_path.display()
        ));
    }
    for (path, what) in [
        (&config.tag1_cfg, "tag 1 buildout config (--tag1)"),
        (&config.tag2_cfg, "tag 2 buildout config (--tag2)"),
        (&config.settings_py(), "Sentry settings"),
        (&config.helper_py(), "load helper"),
        (
            &config.root.join(crate::plan::MERGE_DUPE_GROUPS_SQL),
            "set-based migration 0083 the helper runs",
        ),
    ] {
        if !path.exists() {
            problems.push(format!(
                "{} is missing: the {what}",
                config.display_path(path)
            ));
        }
    }
    problems
}
