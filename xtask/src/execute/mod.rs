//! The executor: the only code that runs steps. It takes the lock, keeps the journal and the
//! report, writes one log per step, prints progress, and says how to resume after a failure.

mod guards;
mod source;
mod summary;
mod target;

use std::{
    collections::BTreeMap,
    fs,
    io::Write,
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

pub use crate::lock::Lock;
use anyhow::{anyhow, bail, ensure, Context, Result};
use summary::print_summary;
use xshell::Shell;

use crate::{
    config::Config,
    flags,
    journal::{Journal, StepRecord},
    pg,
    plan::{self, Action, Step, StepId},
    report, sentry, sqlite, util,
};

pub struct Options {
    pub dry_run: bool,
    pub from: Option<String>,
    pub until: Option<String>,
    /// The command that resumes this migration (same source, target and configs).
    pub resume: Resume,
}

/// `cargo xtask migrate` with the flags that name this migration's source, target and buildout
/// configs, quoted so that every hint built from it works when pasted into a shell.
#[derive(Debug, Clone, Default)]
pub struct Resume {
    flags: Vec<String>,
}

impl Resume {
    pub fn new(flags: &[(&str, Option<String>)]) -> Resume {
        let flags = flags
            .iter()
            .filter_map(|(flag, value)| {
                Some(format!("{flag} {}", plan::shell_quote(value.as_ref()?)))
            })
            .collect();
        Resume { flags }
    }

    /// Adds a flag without a value when `on`.
    pub fn switch(mut self, flag: &str, on: bool) -> Resume {
        if on {
            self.flags.push(flag.to_string());
        }
        self
    }

    /// The command that continues where the journal left off.
    pub fn command(&self) -> String {
        let mut out = String::from("cargo xtask migrate");
        for flag in &self.flags {
            out.push(' ');
            out.push_str(flag);
        }
        out
    }

    /// The command that redoes everything from `step`.
    pub fn from(&self, step: StepId) -> String {
        format!("{} --from {step}", self.command())
    }

    /// "redo with `…--from step`", the remedy most checks name.
    pub fn redo(&self, step: StepId) -> String {
        format!("redo with `{}`", self.from(step))
    }
}

impl flags::Migrate {
    pub fn run(self, sh: &Shell) -> Result<()> {
        let mut config = Config::for_flags(
            &sh.current_dir(),
            self.sqlite.as_deref(),
            self.database_url.as_deref(),
            self.tag1.as_deref(),
            self.tag2.as_deref(),
        )?;
        // A plain re-run resumes with the engine and `--fit-values` the run was started with; a
        // flag given now wins (and the journal records it).
        let journal = Journal::load(&config.dumps_dir().join("journal.json"))
            .ok()
            .flatten();
        let journaled = journal
            .as_ref()
            .and_then(|it| it.engine.as_deref())
            .and_then(|it| it.parse::<flags::Engine>().ok());
        config.engine = self.engine.or(journaled).unwrap_or_default();
        // Journals older than the field: fitted when `fit-values` ran.
        let journaled_fit = journal.as_ref().is_some_and(|it| {
            it.fit_values
                .unwrap_or_else(|| it.is_done(StepId::FitValues))
        });
        config.fit_values = self.fit_values || journaled_fit;
        config.sentry_own_upgrade = self.sentry_own_upgrade;
        config.prepare = self.prepare;
        let path = |it: &Option<PathBuf>| it.as_ref().map(|it| it.display().to_string());
        let resume = Resume::new(&[
            ("--sqlite", path(&self.sqlite)),
            ("--database-url", self.database_url.clone()),
            ("--tag1", path(&self.tag1)),
            ("--tag2", path(&self.tag2)),
        ])
        .switch("--fit-values", config.fit_values)
        .switch(
            "--engine loaddata",
            config.engine == flags::Engine::Loaddata,
        )
        .switch("--prepare", config.prepare);
        let options = Options {
            dry_run: self.dry_run,
            from: self.from,
            until: self.until,
            resume,
        };
        execute(sh, &config, &options)
    }
}

/// Runs (or, with `dry_run`, prints) the plan for `config`.
pub fn execute(sh: &Shell, config: &Config, options: &Options) -> Result<()> {
    let steps = plan::plan(config);
    let journal_path = config.dumps_dir().join("journal.json");
    let existing = Journal::load(&journal_path)?;
    let from = options
        .from
        .as_deref()
        .map(|name| plan::find(&steps, name))
        .transpose()?;
    let until = options
        .until
        .as_deref()
        .map(|name| plan::find(&steps, name))
        .transpose()?;
    let sqlite_id = config.sqlite_path.display().to_string();
    let target_id = config.pg.to_string();

    if options.dry_run {
        println!(
            "dry run: {} -> {} with the {} engine{}; nothing is touched\n",
            sqlite_id,
            target_id,
            config.engine,
            match config.engine {
                flags::Engine::Copy => " (--engine loaddata: the runbook's dumpdata/loaddata)",
                flags::Engine::Loaddata => "",
            }
        );
        print!("{}", plan::render(&steps, config));
        let missing = source::missing_files(config);
        if !missing.is_empty() {
            println!("\nwarning: preflight will stop on:");
            for problem in &missing {
                println!("  - {problem}");
            }
        }
        if let Some(journal) = &existing {
            let done: Vec<_> = steps
                .iter()
                .enumerate()
                .filter(|(index, step)| {
                    journal.is_done(step.id) && from.is_none_or(|from| *index < from)
                })
                .map(|(_, step)| step.id.name())
                .collect();
            if !done.is_empty() {
                println!(
                    "\njournal: done already, would be re-checked and skipped: {}",
                    done.join(", ")
                );
            }
        }
        return Ok(());
    }

    // Before anything is written: every file of the run goes into dumps/.
    ensure_dumps_writable(config)?;
    // The dumps hold every password hash and DSN secret key: dumps/ and logs/ are the owner's
    // only, even when an earlier run (or a checkout) made them wider.
    fs::create_dir_all(config.dumps_dir().join("logs")).context("cannot create dumps/logs")?;
    for dir in [config.dumps_dir(), config.dumps_dir().join("logs")] {
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot make {} private (mode 0700)", dir.display()))?;
    }
    let _lock = Lock::acquire(&config.dumps_dir().join("migrate.lock"))?;
    let mut journal = match existing {
        Some(journal) => {
            journal.check_same_migration(&sqlite_id, &target_id, &journal_path)?;
            check_same_source(config, &journal, &steps, &options.resume)?;
            journal
        }
        None => Journal {
            sqlite: sqlite_id,
            target: target_id,
            ..Journal::default()
        },
    };
    if config.prepare {
        let begun: Vec<&str> = journal
            .steps
            .iter()
            .filter(|it| !it.prepared)
            .map(|it| it.name.as_str())
            .collect();
        ensure!(
            begun.is_empty(),
            "--prepare is for before the cut-over, but the cut-over has begun (done: {}): go on with `{}`",
            begun.join(", "),
            options.resume.command().replace(" --prepare", "")
        );
    }
    journal.engine = Some(config.engine.name().to_string());
    journal.fit_values = Some(config.fit_values);
    if let Some(from) = from {
        let ids: Vec<StepId> = steps[from..].iter().map(|it| it.id).collect();
        journal.forget(&ids);
        journal.save(&journal_path)?;
    }

    let total = steps.len();
    for (index, step) in steps.iter().enumerate() {
        let label = format!("[{}/{total}] {}", index + 1, step.id);
        if journal.is_done(step.id) {
            recheck_outputs(config, &journal, step.id, &options.resume)?;
            println!("{label} … done earlier (journal)");
            continue;
        }
        print!("{label} … ");
        let _ = std::io::stdout().flush();
        let started = Instant::now();
        let log_path =
            config
                .dumps_dir()
                .join("logs")
                .join(format!("{:02}-{}.log", index + 1, step.id));
        let mut runner = StepRunner {
            sh,
            config,
            journal: &mut journal,
            resume: &options.resume,
            log_path: &log_path,
            label: &label,
            started,
            notes: Vec::new(),
            migrations: Vec::new(),
        };
        let result = runner.run(step);
        if result.is_ok() {
            hold_before_journal(step.id, &log_path);
        }
        let notes = std::mem::take(&mut runner.notes);
        let migrations = std::mem::take(&mut runner.migrations);
        let elapsed = started.elapsed();
        match result {
            Ok(outputs) => {
                journal.tool_peak_rss_kib = util::peak_rss_kib();
                journal.record(StepRecord {
                    name: step.id.name().to_string(),
                    finished_at: util::utc_timestamp(util::unix_now()),
                    elapsed_secs: (elapsed.as_secs_f64() * 10.0).round() / 10.0,
                    outputs,
                    migrations,
                    prepared: config.prepare,
                });
                journal.save(&journal_path)?;
                report::write(&journal, &config.dumps_dir())?;
                println!("ok ({})", util::human_duration(elapsed));
                for note in notes {
                    println!("      {note}");
                }
            }
            Err(err) => {
                println!("FAILED ({})", util::human_duration(elapsed));
                let log = if log_path.exists() {
                    config.display_path(&log_path)
                } else {
                    "(none: the step ran no program)".into()
                };
                // The step's cause comes first, whatever else fails while we record it.
                let mut message = format!(
                    "step `{}` failed: {err:#}\n  log:    {log}\n  report: dumps/report.md\n  resume: {} (starts again at `{}`; finished steps are kept)",
                    step.id,
                    options.resume.command(),
                    step.id
                );
                let saved = journal
                    .save(&journal_path)
                    .and_then(|()| report::write(&journal, &config.dumps_dir()));
                if let Err(also) = saved {
                    message.push_str(&format!(
                        "\n  also:   the journal or report could not be saved ({also:#}); the step will run again on resume"
                    ));
                }
                bail!(message);
            }
        }
        if until == Some(index) {
            println!(
                "stopped after `{}` (--until); resume: {}",
                step.id,
                options.resume.command()
            );
            return Ok(());
        }
    }
    if config.prepare {
        let secs: f64 = journal.prepared().map_or(0.0, |(_, secs)| secs);
        println!(
            "\nprepared in {secs:.1}s while Sentry 4 served; settings/settings_local.py untouched.\n\
             next:   stop Sentry 4, then `{}` (the cut-over: it skips what is prepared)",
            options.resume.command().replace(" --prepare", "")
        );
        return Ok(());
    }
    print_summary(config, &steps, &journal);
    Ok(())
}

/// The variable that holds a run between a step's work and its journal entry: for the fault
/// matrix only (`xtask/tests/faults.rs` kills the run there), off unless a test sets it.
pub const TEST_HOLD_BEFORE_JOURNAL: &str = crate::util::TEST_HOLD;

/// With [`TEST_HOLD_BEFORE_JOURNAL`] set to `step`'s name: says so in the step's log, then waits
/// a minute (the test kills the run in that time) before the journal records the step.
fn hold_before_journal(step: StepId, log_path: &Path) {
    if std::env::var(TEST_HOLD_BEFORE_JOURNAL).as_deref() != Ok(step.name()) {
        return;
    }
    if let Ok(mut log) = fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(log_path)
    {
        let _ = writeln!(log, "held before the journal ({TEST_HOLD_BEFORE_JOURNAL})");
    }
    std::thread::sleep(Duration::from_secs(60));
}

/// dumps/ (and dumps/logs/ when it exists) must take new files: refused before anything is
/// written, with the reason (a read-only file system, a folder this user may not write).
fn ensure_dumps_writable(config: &Config) -> Result<()> {
    let dumps = config.dumps_dir();
    let shown = config.display_path(&dumps);
    let hint = "the dumps, journal, report, logs and lock go there: make it writable for this user \
                (or remount its file system read-write), then run the same command again; nothing was touched";
    let explain = |what: &Path, err: std::io::Error| {
        let why = match err.raw_os_error() {
            Some(nix::libc::EROFS) => "it is on a read-only file system".to_string(),
            Some(nix::libc::EACCES | nix::libc::EPERM) => format!(
                "this user (uid {}) may not write there ({err})",
                nix::unistd::geteuid()
            ),
            _ => err.to_string(),
        };
        anyhow!(
            "cannot write in {}: {why}; {hint}",
            config.display_path(what)
        )
    };
    if !dumps.exists() {
        return fs::create_dir_all(&dumps).map_err(|err| explain(&dumps, err));
    }
    ensure!(
        dumps.is_dir(),
        "{shown} is not a folder: move it away, then run the same command again; nothing was touched"
    );
    for dir in [dumps.clone(), dumps.join("logs")] {
        if !dir.is_dir() {
            continue;
        }
        let probe = dir.join(format!(".write-test-{}", std::process::id()));
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&probe)
            .map_err(|err| explain(&dir, err))?;
        fs::remove_file(&probe).map_err(|err| explain(&dir, err))?;
    }
    Ok(())
}

/// The steps that write the SQLite source (as the runbook's phase 1 does).
fn writes_source(step: StepId) -> bool {
    matches!(step, StepId::SqliteUpgrade | StepId::SqliteRepair)
}

/// The db at the source's path must be the one this journal's migration started from: its
/// sha256 as the journal last recorded it. Only a step that writes the source, interrupted
/// halfway, may leave other bytes: then the events must still be the backup's (Sentry 4's
/// `upgrade` and `repair` never touch them). Anything else (another install's journal, a db
/// replaced since) is refused before anything is touched.
fn check_same_source(
    config: &Config,
    journal: &Journal,
    steps: &[Step],
    resume: &Resume,
) -> Result<()> {
    let (Some(backup), Some(recorded)) = (&journal.backup, &journal.source_sha256) else {
        return Ok(());
    };
    let db = &config.sqlite_path;
    let shown = config.display_path(db);
    let start_over = format!(
        "to migrate this db instead, start over: move dumps/ aside (`mv dumps dumps.{}`) and run `{}` \
         (a target database that migration created must be dropped first)",
        util::utc_timestamp(util::unix_now()).replace([':', '-'], ""),
        resume.command()
    );
    let current = util::sha256_file(db).with_context(|| {
        format!(
            "dumps/journal.json records a migration of {shown}, which cannot be read: put it back; {start_over}"
        )
    })?;
    if current == *recorded {
        return Ok(());
    }
    let interrupted_write = steps
        .iter()
        .find(|step| !journal.is_done(step.id))
        .is_some_and(|step| writes_source(step.id));
    if interrupted_write {
        let backup_path = config.root.join(&backup.path);
        let same_events = util::sha256_file(&backup_path).ok().as_deref()
            == Some(backup.sha256.as_str())
            && matches!(
                (sqlite::event_fingerprint(db), sqlite::event_fingerprint(&backup_path)),
                (Ok(now), Ok(then)) if now == then
            );
        if same_events {
            return Ok(());
        }
    }
    bail!(
        "{shown} is not the db dumps/journal.json is migrating: its sha256 is {current}, the journal recorded {recorded} \
         (backup {}, sha256 {}); nothing was touched. If the db was replaced by mistake, put that one back; {start_over}",
        backup.path,
        backup.sha256
    )
}

/// A finished step's files must still be what it produced.
fn recheck_outputs(
    config: &Config,
    journal: &Journal,
    step: StepId,
    resume: &Resume,
) -> Result<()> {
    let Some(record) = journal.record_of(step) else {
        return Ok(());
    };
    for (path, hash) in &record.outputs {
        let full = config.root.join(path);
        let actual = util::sha256_file(&full).ok();
        if actual.as_deref() != Some(hash.as_str()) {
            bail!(
                "{path}, produced by step `{step}`, is {} since: {}",
                if actual.is_none() {
                    "missing"
                } else {
                    "changed"
                },
                resume.redo(step)
            );
        }
    }
    Ok(())
}

struct StepRunner<'a> {
    sh: &'a Shell,
    config: &'a Config,
    journal: &'a mut Journal,
    resume: &'a Resume,
    log_path: &'a Path,
    label: &'a str,
    started: Instant,
    /// Lines to show under the step's `ok`.
    notes: Vec<String>,
    /// The South migrations the step's programs ran, with their times (`run_command`).
    migrations: Vec<sentry::MigrationTime>,
}

type Outputs = BTreeMap<String, String>;

impl StepRunner<'_> {
    /// `bin/sentry` or the helper under `bin/py`, once Sentry is stopped and the settings and
    /// the installed Sentry are the ones `step`'s phase needs.
    fn run_sentry(&mut self, step: &Step, command: &plan::Command) -> Result<Outputs> {
        self.ensure_sentry_stopped()?;
        self.ensure_settings_for(step.phase)?;
        self.ensure_sentry_version_for(step.phase)?;
        self.run_command(command)
    }

    fn run(&mut self, step: &Step) -> Result<Outputs> {
        match &step.action {
            Action::Preflight(limits) => self.preflight(limits).map(|()| Outputs::new()),
            Action::BackupSqlite => self.backup(),
            Action::Buildout(command) => {
                self.ensure_sentry_stopped()?;
                self.run_command(command)?;
                self.ensure_tag_installs(step, command)?;
                Ok(Outputs::new())
            }
            Action::WriteSettings(kind) => self.write_settings(*kind),
            Action::Run(command) => {
                let outputs = self.run_sentry(step, command)?;
                if writes_source(step.id) {
                    // Recorded with the step: the source as this step left it.
                    self.journal.source_sha256 = Some(util::sha256_file(&self.config.sqlite_path)?);
                }
                Ok(outputs)
            }
            Action::Sentry6Upgrade {
                command,
                set_based_0083,
            } => {
                let outputs = self.run_sentry(step, command)?;
                if *set_based_0083 {
                    self.notes
                        .extend(sentry::set_based_0083_lines(&fs::read_to_string(
                            self.log_path,
                        )?));
                }
                Ok(outputs)
            }
            Action::ScanValues { fit } => self.scan_values(*fit).map(|()| Outputs::new()),
            Action::FitValues { working_copy } => {
                self.ensure_sentry_stopped()?;
                self.fit_values(working_copy)
            }
            Action::VerifyDumps => self.verify_dumps().map(|()| Outputs::new()),
            Action::CountSource => self.count_source().map(|()| Outputs::new()),
            Action::PgCopy {
                time_zone,
                integer_early,
                reset_sequence_sql,
                truncate_sql,
                marker_sql,
            } => self
                .pg_copy(
                    step,
                    time_zone.as_deref(),
                    integer_early,
                    target::LoadSql {
                        reset_sequence_sql,
                        truncate_sql,
                        marker_sql,
                    },
                )
                .map(|()| Outputs::new()),
            Action::PgCreateDatabase { create_sql } => {
                self.create_database(create_sql).map(|()| Outputs::new())
            }
            Action::PgCreateDatabaseChecked { create_sql } => {
                if let Some(problem) = pg::privilege_problem(&self.config.pg)? {
                    bail!("{problem}");
                }
                self.create_database(create_sql).map(|()| Outputs::new())
            }
            Action::BuildoutWhileRunning(command) => {
                self.ensure_same_sentry_as(command)?;
                self.run_command(command)?;
                self.ensure_tag_installs(step, command)?;
                Ok(Outputs::new())
            }
            Action::RunPrepared {
                command,
                settings_dir,
            } => {
                self.ensure_sentry_version_for(step.phase)?;
                let written = crate::settings::write_prepared(
                    self.config,
                    &self.config.root.join(settings_dir),
                )?;
                writeln!(
                    self.log()?,
                    "settings for PostgreSQL written to {} (settings/settings_local.py left as it is)",
                    self.config.display_path(&written)
                )?;
                self.run_command(command)
            }
            Action::PgClearGeneratedRows {
                demo_project,
                truncate_sql,
            } => {
                let mut client = self.target_client()?;
                self.journal.cleared_rows =
                    pg::clear_generated_rows(&mut client, demo_project, truncate_sql)?;
                Ok(Outputs::new())
            }
            Action::PgAbstimeShim { sql } => {
                let mut client = self.target_client()?;
                let outcome = pg::install_abstime_shim(&mut client, sql)?;
                self.journal.shim = Some(match outcome {
                    pg::ShimOutcome::NotNeeded { version } => {
                        format!("not needed (server_version_num {version} < 120000)")
                    }
                    pg::ShimOutcome::AlreadyInstalled => "already installed".into(),
                    pg::ShimOutcome::Installed => "installed".into(),
                });
                Ok(Outputs::new())
            }
            Action::PgLoad {
                command,
                reset_sequence_sql,
                truncate_sql,
                marker_sql,
            } => self
                .load(
                    step,
                    command,
                    target::LoadSql {
                        reset_sequence_sql,
                        truncate_sql,
                        marker_sql,
                    },
                )
                .map(|()| Outputs::new()),
            Action::VerifyPostgres => self.verify_postgres().map(|()| Outputs::new()),
            Action::VerifySentry6 { drop_marker_sql } => self
                .verify_sentry6(drop_marker_sql)
                .map(|()| Outputs::new()),
        }
    }
}

/// The cause first, then what to do about it.
fn with_remedy<T>(result: Result<T>, remedy: String) -> Result<T> {
    result.map_err(|cause| anyhow!("{cause:#}; {remedy}"))
}
