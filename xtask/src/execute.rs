//! The executor: the only code that runs steps. It takes the lock, keeps the journal and the
//! report, writes one log per step, prints progress, and says how to resume after a failure.

use std::{
    collections::BTreeMap,
    fs,
    io::{IsTerminal, Read, Seek, SeekFrom, Write},
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, ensure, Context, Result};
use xshell::Shell;

use crate::{
    config::Config,
    dumps,
    flags::{self, DbKind},
    journal::{Backup, Journal, StepRecord},
    merge, pg,
    plan::{self, Action, Command, Phase, Step, StepId},
    report, sentry, settings, sqlite, util, values,
    verify::{self, TableCheck},
    zone,
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
        let mut config = Config::new(
            &sh.current_dir(),
            self.sqlite.as_deref(),
            self.database_url.as_deref(),
            |key| std::env::var(key).ok(),
        )?;
        if let Some(tag1) = &self.tag1 {
            config.tag1_cfg = config.root.join(tag1);
        }
        if let Some(tag2) = &self.tag2 {
            config.tag2_cfg = config.root.join(tag2);
        }
        config.fit_values = self.fit_values;
        config.engine = self.engine.unwrap_or_default();
        let path = |it: &Option<PathBuf>| it.as_ref().map(|it| it.display().to_string());
        let resume = Resume::new(&[
            ("--sqlite", path(&self.sqlite)),
            ("--database-url", self.database_url.clone()),
            ("--tag1", path(&self.tag1)),
            ("--tag2", path(&self.tag2)),
        ])
        .switch("--fit-values", self.fit_values)
        .switch("--engine copy", self.engine == Some(flags::Engine::Copy));
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
            "dry run: {} -> {}; nothing is touched\n",
            sqlite_id, target_id
        );
        print!("{}", plan::render(&steps, config));
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
            journal
        }
        None => Journal {
            sqlite: sqlite_id,
            target: target_id,
            ..Journal::default()
        },
    };
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
        };
        let result = runner.run(step);
        let notes = std::mem::take(&mut runner.notes);
        let elapsed = started.elapsed();
        match result {
            Ok(outputs) => {
                journal.tool_peak_rss_kib = util::peak_rss_kib();
                journal.record(StepRecord {
                    name: step.id.name().to_string(),
                    finished_at: util::utc_timestamp(util::unix_now()),
                    elapsed_secs: (elapsed.as_secs_f64() * 10.0).round() / 10.0,
                    outputs,
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
    print_summary(config, &steps, &journal);
    Ok(())
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
}

type Outputs = BTreeMap<String, String>;

impl StepRunner<'_> {
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
                self.ensure_sentry_stopped()?;
                self.ensure_settings_for(step.phase)?;
                self.ensure_sentry_version_for(step.phase)?;
                self.run_command(command)
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
                reset_sequence_sql,
            } => self
                .pg_copy(step, time_zone.as_deref(), reset_sequence_sql)
                .map(|()| Outputs::new()),
            Action::PgCreateDatabase { create_sql } => {
                self.create_database(create_sql).map(|()| Outputs::new())
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
            } => self
                .load(step, command, reset_sequence_sql)
                .map(|()| Outputs::new()),
            Action::VerifyPostgres => self.verify_postgres().map(|()| Outputs::new()),
            Action::VerifySentry6 => self.verify_sentry6().map(|()| Outputs::new()),
        }
    }

    fn target_client(&self) -> Result<postgres::Client> {
        pg::connect(
            &self.config.pg,
            &self.config.pg.dbname,
            Duration::from_secs(5),
        )
    }

    fn preflight(&mut self, limits: &plan::Limits) -> Result<()> {
        let config = self.config;
        let mut problems: Vec<String> = Vec::new();
        if !config.bin("buildout").exists() {
            problems.push(
                "bin/buildout is missing: bootstrap buildout in this repo first (README, `Setup`)"
                    .into(),
            );
        }
        for (path, what) in [
            (&config.tag1_cfg, "tag 1 buildout config (--tag1)"),
            (&config.tag2_cfg, "tag 2 buildout config (--tag2)"),
            (&config.settings_py(), "Sentry settings"),
            (&config.helper_py(), "load helper"),
        ] {
            if !path.exists() {
                problems.push(format!(
                    "{} is missing: the {what}",
                    config.display_path(path)
                ));
            }
        }
        let db = &config.sqlite_path;
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

    fn log(&self) -> Result<fs::File> {
        let file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(self.log_path)
            .with_context(|| format!("cannot open {}", self.log_path.display()))?;
        // A log from an older run may be wider.
        file.set_permissions(fs::Permissions::from_mode(0o600))?;
        Ok(file)
    }

    fn ensure_sentry_stopped(&self) -> Result<()> {
        let running = sentry::running_sentry(&self.config.root, &self.config.sqlite_path);
        if let Some((pid, cmdline)) = running.first() {
            bail!("Sentry is running (pid {pid}: {cmdline}): stop it, then resume");
        }
        Ok(())
    }

    /// Sentry commands of a phase must run against that phase's database.
    fn ensure_settings_for(&self, phase: Phase) -> Result<()> {
        let want = if phase == Phase::Sqlite {
            DbKind::Sqlite
        } else {
            DbKind::Postgres
        };
        let current = settings::current(self.config);
        let step = match want {
            DbKind::Sqlite => StepId::SettingsSqlite,
            DbKind::Postgres => StepId::SettingsPostgres,
        };
        ensure!(
            current == Some(want),
            "settings/settings_local.py points at {}, but this step needs {want}: was it switched by hand? \
             resume with `{}`",
            current.map_or("no database".to_string(), |it| it.to_string()),
            self.resume.from(step)
        );
        Ok(())
    }

    /// A tag's config must install the Sentry of its tag: 4.x for tag 1, 6.x for tag 2 (a
    /// script without a version, such as a develop egg's, is taken as it is).
    fn ensure_tag_installs(&self, step: &Step, command: &Command) -> Result<()> {
        let Some(version) = sentry::installed_version(&self.config.bin("sentry")) else {
            return Ok(());
        };
        let (want, flag) = if step.phase == Phase::Sentry6 {
            ("6.", "--tag2")
        } else {
            ("4.", "--tag1")
        };
        let cfg = command
            .args
            .get(1)
            .map(String::as_str)
            .unwrap_or("the config");
        ensure!(
            version.starts_with(want),
            "{cfg} ({flag}) installed Sentry {version}, not Sentry {want}x: {flag} must name your Sentry {} buildout{}",
            &want[..1],
            if want == "4." { " plus the psycopg2 egg" } else { "" }
        );
        Ok(())
    }

    /// Tag 1 steps need Sentry 4 in bin/, tag 2 steps Sentry 6 (a `--from` after tag 2 was
    /// installed must not run Sentry 6 where Sentry 4 belongs).
    fn ensure_sentry_version_for(&self, phase: Phase) -> Result<()> {
        let Some(version) = sentry::installed_version(&self.config.bin("sentry")) else {
            return Ok(());
        };
        let (want, tag) = if phase == Phase::Sentry6 {
            ("6.", StepId::BuildoutTag2)
        } else {
            ("4.", StepId::BuildoutTag1)
        };
        ensure!(
            version.starts_with(want),
            "bin/sentry runs Sentry {version}, but this step needs Sentry {want}x: resume with `{}`",
            self.resume.from(tag)
        );
        Ok(())
    }

    fn backup(&mut self) -> Result<Outputs> {
        let source = &self.config.sqlite_path;
        let stamp = util::utc_timestamp(util::unix_now()).replace([':', '-'], "");
        let mut backup = util::sibling(source, &format!(".backup-{stamp}"));
        let mut n = 2;
        while backup.exists() {
            backup = util::sibling(source, &format!(".backup-{stamp}-{n}"));
            n += 1;
        }
        {
            let mut input = fs::File::open(source)
                .with_context(|| format!("cannot read {}", source.display()))?;
            // Private while it is written, then the source's mode: never readable by more
            // people than the db itself.
            let source_mode = input.metadata()?.permissions().mode() & 0o777;
            let mut output = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&backup)
                .with_context(|| format!("cannot create the backup {}", backup.display()))?;
            std::io::copy(&mut input, &mut output)?;
            output.set_permissions(fs::Permissions::from_mode(source_mode))?;
            output.sync_all()?;
        }
        sqlite::check_integrity(&backup, true)
            .context("the backup copy fails its integrity check")?;
        let source_hash = util::sha256_file(source)?;
        let backup_hash = util::sha256_file(&backup)?;
        ensure!(
            source_hash == backup_hash,
            "the backup differs from the source (was the db written during the copy?)"
        );
        let path = self.config.display_path(&backup);
        self.journal.backup = Some(Backup {
            path: path.clone(),
            sha256: backup_hash.clone(),
            bytes: fs::metadata(&backup)?.len(),
        });
        let _ = writeln!(self.log()?, "backup {path} sha256 {backup_hash}");
        Ok(Outputs::from([(path, backup_hash)]))
    }

    fn write_settings(&mut self, kind: DbKind) -> Result<Outputs> {
        let changes = settings::switch(kind, self.config)?;
        let mut log = self.log()?;
        for line in changes {
            let _ = writeln!(log, "{line}");
        }
        Ok(Outputs::new())
    }

    /// Runs a program from the root with stdin closed, stderr (and stdout unless redirected)
    /// into the step's log; shows progress while it runs.
    fn run_command(&self, command: &Command) -> Result<Outputs> {
        let config = self.config;
        let program = config.root.join(&command.program);
        if !program.exists() {
            let hint = match command.program.to_str() {
                Some("bin/buildout") => {
                    "bootstrap buildout in this repo first (README, `Setup`)".to_string()
                }
                _ => format!(
                    "it is made by bin/buildout: resume with `{}`",
                    self.resume.from(StepId::BuildoutTag1)
                ),
            };
            bail!("{} is missing: {hint}", command.program.display());
        }
        let mut log = self.log()?;
        writeln!(log, "$ {}", command.render())?;
        let mut cmd = self
            .sh
            .cmd(&program)
            .args(&command.args)
            .env("PYTHONUNBUFFERED", "1");
        if let Some(password) = &config.pg.password {
            // For libpq in the child; never on its command line, never in a log.
            cmd = cmd.env("PGPASSWORD", password.expose());
        }
        let mut process: std::process::Command = cmd.into();
        process.stdin(Stdio::null()).stderr(log.try_clone()?);
        let partial = command
            .stdout_to
            .as_ref()
            .map(|path| util::sibling(&config.root.join(path), ".partial"));
        match &partial {
            Some(partial) => {
                // A dump holds password hashes and DSN keys: the owner's only, from creation.
                let file = fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(partial)
                    .with_context(|| format!("cannot create {}", partial.display()))?;
                file.set_permissions(fs::Permissions::from_mode(0o600))?;
                process.stdout(file);
            }
            None => {
                process.stdout(log.try_clone()?);
            }
        }
        let mut child = process
            .spawn()
            .with_context(|| format!("cannot start {}", command.program.display()))?;
        let mut reported = 0;
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            self.progress(partial.as_deref(), &mut reported);
            std::thread::sleep(Duration::from_millis(250));
        };
        if std::io::stdout().is_terminal() {
            // Clear the live line and write the step's name again for `ok`/`FAILED`.
            print!("\r\x1b[K{} … ", self.label);
        } else if reported > 0 {
            print!("{} … ", self.label);
        }
        if !status.success() {
            bail!(
                "`{}` exited with {status}; last lines of its log:\n{}",
                command.render(),
                util::log_tail(self.log_path, 15)
            );
        }
        let mut outputs = Outputs::new();
        if let (Some(partial), Some(path)) = (partial, &command.stdout_to) {
            let full = config.root.join(path);
            fs::rename(&partial, &full)?;
            outputs.insert(config.display_path(&full), util::sha256_file(&full)?);
        }
        Ok(outputs)
    }

    /// On a terminal, a live line with elapsed time (and bytes written); elsewhere a line a
    /// minute. `reported` counts the minutes already reported.
    fn progress(&self, output: Option<&Path>, reported: &mut u64) {
        let elapsed = self.started.elapsed();
        let written = output
            .and_then(|path| fs::metadata(path).ok())
            .map(|meta| format!(", {} written", util::human_bytes(meta.len())))
            .unwrap_or_default();
        if std::io::stdout().is_terminal() {
            print!(
                "\r\x1b[K{} … running {}{written}",
                self.label,
                util::human_duration(elapsed)
            );
            let _ = std::io::stdout().flush();
        } else if elapsed.as_secs() / 60 > *reported {
            *reported = elapsed.as_secs() / 60;
            if *reported == 1 {
                println!();
            }
            println!(
                "    … still running after {}{written}",
                util::human_duration(elapsed)
            );
        }
    }

    /// Every table the dumps (or a load engine) carry over: the models' and their m2m tables.
    fn model_tables(&self) -> Result<Vec<String>> {
        let models = with_remedy(
            dumps::read_models(&self.config.models_json()),
            self.resume.redo(StepId::InspectModels),
        )?;
        let mut tables: Vec<String> = models
            .iter()
            .flat_map(|m| std::iter::once(m.table.clone()).chain(m.m2m.values().cloned()))
            .collect();
        tables.sort();
        tables.dedup();
        Ok(tables)
    }

    fn scan_values(&mut self, fit: bool) -> Result<()> {
        let tables = self.model_tables()?;
        let scan = values::scan(&self.config.sqlite_path, &tables)?;
        let summary = values::summary(&scan);
        let mut log = self.log()?;
        writeln!(log, "scanned {}", values::rate(&scan))?;
        writeln!(log, "{summary}")?;
        self.journal.value_scan = Some(values::Scan {
            // The report shows a few ids; the fit scans the working copy again for all of them.
            findings: scan
                .findings
                .iter()
                .map(|f| values::Finding {
                    ids: f.ids.iter().take(20).copied().collect(),
                    ..f.clone()
                })
                .collect(),
            ..scan.clone()
        });
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

    fn fit_values(&mut self, working_copy: &Path) -> Result<Outputs> {
        let config = self.config;
        let working = config.root.join(working_copy);
        let partial = util::sibling(&working, ".partial");
        let _ = fs::remove_file(&partial);
        {
            let mut input = fs::File::open(&config.sqlite_path)
                .with_context(|| format!("cannot read {}", config.sqlite_path.display()))?;
            let mut output = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&partial)
                .with_context(|| format!("cannot create the working copy {}", partial.display()))?;
            std::io::copy(&mut input, &mut output)
                .with_context(|| format!("cannot copy the db to {}", partial.display()))?;
            output.sync_all()?;
        }
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
    fn record_what_loads(
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
    fn engine_source(&self) -> PathBuf {
        if self.config.fit_values {
            self.config.fitted_db()
        } else {
            self.config.sqlite_path.clone()
        }
    }

    fn count_source(&mut self) -> Result<()> {
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

    fn pg_copy(
        &mut self,
        step: &Step,
        time_zone: Option<&str>,
        reset_sequence_sql: &str,
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
        let mut client = self.ready_to_load(step, "copy")?;
        let tables = self.model_tables()?;
        let source = self.engine_source();
        let copies = crate::copy::copy(&source, &mut client, &tables, zone)?;
        let mut log = self.log()?;
        for copy in &copies {
            writeln!(
                log,
                "{}: {} rows in {:.1}s",
                copy.table, copy.rows, copy.secs
            )?;
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
        let sequences = pg::reset_sequences(&mut client, reset_sequence_sql)?;
        writeln!(log, "sequences reset: {}", sequences.len())?;
        Ok(())
    }

    fn verify_dumps(&mut self) -> Result<()> {
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
    fn finish_check(&mut self, name: &str, checks: Vec<TableCheck>, remedy: String) -> Result<()> {
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

    fn create_database(&mut self, create_sql: &str) -> Result<()> {
        let target = &self.config.pg;
        let mut admin = pg::connect_admin(target, Duration::from_secs(5))?;
        let mut log = self.log()?;
        if !pg::database_exists(&mut admin, &target.dbname)? {
            pg::create_database(&mut admin, create_sql, &target.dbname)?;
            self.journal.created_database = true;
            writeln!(log, "created database {}", target.dbname)?;
            return Ok(());
        }
        let tables = pg::public_tables(&mut self.target_client()?)?;
        if tables.is_empty() {
            writeln!(
                log,
                "database {} exists and is empty: using it",
                target.dbname
            )?;
            return Ok(());
        }
        if self.journal.created_database {
            writeln!(log, "database {} was created by an earlier run of this migration and is not empty: recreating it", target.dbname)?;
            pg::drop_database(&mut admin, &target.dbname)?;
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

    fn load(&mut self, step: &Step, command: &Command, reset_sequence_sql: &str) -> Result<()> {
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
        let mut client = self.ready_to_load(step, "load")?;
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
        let sequences = pg::reset_sequences(&mut client, reset_sequence_sql)?;
        let _ = writeln!(self.log()?, "sequences reset: {}", sequences.len());
        Ok(())
    }

    /// What both engines need before they write: an empty target, settings on PostgreSQL,
    /// Sentry 4 in bin/, no Sentry running. Returns the target's client.
    fn ready_to_load(&self, step: &Step, what: &str) -> Result<postgres::Client> {
        let mut client = self.target_client()?;
        let filled: Vec<String> = pg::table_counts(&mut client)?
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .map(|(t, n)| format!("{t} ({n})"))
            .collect();
        ensure!(
            filled.is_empty(),
            "the target is not empty before the {what}: {}; {}",
            filled.join(", "),
            self.resume.redo(StepId::PgClearGeneratedRows)
        );
        self.ensure_settings_for(step.phase)?;
        self.ensure_sentry_version_for(step.phase)?;
        self.ensure_sentry_stopped()?;
        Ok(client)
    }

    fn verify_postgres(&mut self) -> Result<()> {
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

    fn verify_sentry6(&mut self) -> Result<()> {
        let mut client = self.target_client()?;
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
        self.journal.sentry6_counts = counts;
        self.finish_check(
            "sentry6-vs-postgres",
            checks,
            "inspect dumps/report.md; the Sentry 4 data is still in the backup and the dumps"
                .into(),
        )
    }
}

/// The cause first, then what to do about it.
fn with_remedy<T>(result: Result<T>, remedy: String) -> Result<T> {
    result.map_err(|cause| anyhow!("{cause:#}; {remedy}"))
}

fn print_summary(config: &Config, steps: &[Step], journal: &Journal) {
    println!("\nSummary ({} -> {})", journal.sqlite, journal.target);
    println!(
        "  {:<22} {:>7} {:>7} {:>9} {:>10} {:>8}",
        "check", "tables", "equal", "intended", "different", ""
    );
    for (name, checks) in &journal.checks {
        let tally = verify::tally(checks);
        println!(
            "  {:<22} {:>7} {:>7} {:>9} {:>10}",
            name,
            tally.tables,
            tally.equal,
            tally.intended + tally.not_carried_over,
            tally.differs
        );
    }
    for phase in [Phase::Sqlite, Phase::Postgres, Phase::Sentry6] {
        let secs: f64 = steps
            .iter()
            .filter(|s| s.phase == phase)
            .filter_map(|s| journal.record_of(s.id))
            .map(|r| r.elapsed_secs)
            .sum();
        println!("  {:<40} {:>8.1}s", phase.title(), secs);
    }
    if !journal.leftover_tables.is_empty() {
        let tables: Vec<String> = journal
            .leftover_tables
            .iter()
            .map(|(table, rows)| format!("{table} ({rows} rows)"))
            .collect();
        println!(
            "  not carried over (SQLite-only tables): {}",
            tables.join(", ")
        );
    }
    if let Some(backup) = &journal.backup {
        // The journal is a file a user can edit: never slice what it says.
        let short: String = backup.sha256.chars().take(16).collect();
        println!("  backup: {} (sha256 {short}…)", backup.path);
    }
    println!(
        "\nreport: {}",
        config.display_path(&config.dumps_dir().join("report.md"))
    );
    println!("next:   bin/sentry --config=settings/settings.py start --noupgrade   (Sentry 6 on PostgreSQL)");
}

/// `dumps/migrate.lock`: one `migrate` at a time per repo. An OS file lock (flock) on the file
/// decides, held as long as the file is open: the kernel releases it when the process ends,
/// however it ends, so a lock file left behind never blocks. The pid written into the file only
/// names the holder in the message.
pub struct Lock {
    _file: fs::File,
}

impl Lock {
    pub fn acquire(path: &Path) -> Result<Lock> {
        let mut file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("cannot open the lock {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = match holder.trim().parse::<u32>() {
                    Ok(pid) => format!(" (pid {pid})"),
                    Err(_) => String::new(),
                };
                bail!(
                    "another `cargo xtask migrate`{holder} is running on this repo (it holds {}): wait for it to finish",
                    path.display()
                )
            }
            Err(fs::TryLockError::Error(err)) => {
                return Err(err).with_context(|| format!("cannot lock {}", path.display()))
            }
        }
        // Ours now: say who holds it (a file from an older run may be wider than 0600).
        fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
        file.set_len(0)?;
        file.seek(SeekFrom::Start(0))?;
        writeln!(file, "{}", std::process::id())?;
        file.sync_all()?;
        Ok(Lock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lock_is_exclusive_and_released_with_its_holder() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("migrate.lock");
        let held = Lock::acquire(&path).unwrap();
        // flock conflicts between open files, even in one process.
        let err = format!("{:#}", Lock::acquire(&path).err().unwrap());
        assert!(
            err.contains(&format!(
                "another `cargo xtask migrate` (pid {}) is running",
                std::process::id()
            )),
            "{err}"
        );
        drop(held);
        // A child another test forks in this moment shares the open file until it execs (the
        // descriptor is close-on-exec): give the lock that long to go.
        let again = (0..100).find_map(|_| {
            Lock::acquire(&path).ok().or_else(|| {
                std::thread::sleep(std::time::Duration::from_millis(20));
                None
            })
        });
        assert!(again.is_some(), "the lock is released with its holder");
        assert!(path.exists(), "the file may stay");
    }
}
