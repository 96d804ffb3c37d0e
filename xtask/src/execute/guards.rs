//! The executor's guards and the one way it runs a program: preconditions every Sentry step
//! checks (Sentry stopped, settings and version for the phase, an empty target before a load),
//! and `run_command` with its log and progress.

use std::{
    fs,
    io::{BufRead, IsTerminal, Read, Write},
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, ensure, Context, Result};

use super::{Outputs, StepRunner};
use crate::{
    flags::DbKind,
    pg,
    plan::{Command, Phase, Step, StepId},
    sentry, settings, sqlite, util,
};

impl StepRunner<'_> {
    pub(super) fn log(&self) -> Result<fs::File> {
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

    pub(super) fn ensure_sentry_stopped(&self) -> Result<()> {
        let running = sentry::running_sentry(&self.config.root, &self.config.sqlite_path);
        if let Some((pid, cmdline)) = running.first() {
            bail!("Sentry is running (pid {pid}: {cmdline}): stop it, then resume");
        }
        Ok(())
    }

    /// Sentry commands of a phase must run against that phase's database.
    pub(super) fn ensure_settings_for(&self, phase: Phase) -> Result<()> {
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
    pub(super) fn ensure_tag_installs(&self, step: &Step, command: &Command) -> Result<()> {
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

    /// `migrate --prepare` runs tag 1's buildout beside a running Sentry 4 only when bin/sentry
    /// already runs the Sentry version the config pins: the buildout then adds psycopg2 and
    /// rewrites the same scripts, and a running (or restarted) Sentry 4 runs the same code.
    pub(super) fn ensure_same_sentry_as(&self, command: &Command) -> Result<()> {
        let cfg = command
            .args
            .get(1)
            .map(|it| self.config.root.join(it))
            .context("the buildout command names no config")?;
        let text =
            fs::read_to_string(&cfg).with_context(|| format!("cannot read {}", cfg.display()))?;
        let pinned = sentry::pinned_version(&text).with_context(|| {
            format!(
                "{} pins no `sentry = <version>` under [versions]: --prepare cannot tell whether \
                 installing it under the running Sentry is safe; run `cargo xtask migrate` with Sentry stopped",
                self.config.display_path(&cfg)
            )
        })?;
        let installed = sentry::installed_version(&self.config.bin("sentry"));
        ensure!(
            installed.as_deref() == Some(pinned.as_str()),
            "bin/sentry runs Sentry {}, but {} installs Sentry {pinned}: installing it under the running \
             Sentry is not safe (a restart would run other code on an un-upgraded db); skip --prepare and \
             run `cargo xtask migrate` with Sentry stopped",
            installed.as_deref().unwrap_or("of no version this tool can read (no bin/sentry, or a develop egg)"),
            self.config.display_path(&cfg)
        );
        Ok(())
    }

    /// Tag 1 steps need Sentry 4 in bin/, tag 2 steps Sentry 6 (a `--from` after tag 2 was
    /// installed must not run Sentry 6 where Sentry 4 belongs).
    pub(super) fn ensure_sentry_version_for(&self, phase: Phase) -> Result<()> {
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

    /// Runs a program from the root with stdin closed, stderr (and stdout unless redirected)
    /// into the step's log; shows progress while it runs. Stdout goes through a pipe either way:
    /// into a dump (a failed write, a full disk, is ours to name), or line by line, unchanged,
    /// into the log, each South migration line (` > app:migration`) noted with its arrival, so
    /// the log ends with every migration's time and the step's record gets them
    /// (`self.migrations`). Stderr is written by the program itself, so between the two streams
    /// the log's order may differ slightly from the program's.
    pub(super) fn run_command(&mut self, command: &Command) -> Result<Outputs> {
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
        writeln!(log, "$ {}", command.render())
            .map_err(|err| util::write_error(self.log_path, err))?;
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
        process
            .stdin(Stdio::null())
            .stderr(log.try_clone()?)
            .stdout(Stdio::piped());
        let partial = command
            .stdout_to
            .as_ref()
            .map(|path| util::sibling(&config.root.join(path), ".partial"));
        let stdout_file = match &partial {
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
                file
            }
            None => log.try_clone()?,
        };
        let started = Instant::now();
        let started_unix = util::unix_now();
        let mut child = process
            .spawn()
            .with_context(|| format!("cannot start {}", command.program.display()))?;
        let stdout = child
            .stdout
            .take()
            .context("the program's stdout is not a pipe")?;
        let copier = match &partial {
            Some(partial) => {
                let partial = partial.clone();
                std::thread::spawn(move || {
                    copy_output(stdout, stdout_file, &partial).map(|_| (Vec::new(), Instant::now()))
                })
            }
            None => {
                let log_path = self.log_path.to_path_buf();
                std::thread::spawn(move || copy_lines(stdout, stdout_file, &log_path))
            }
        };
        let mut copier = Some(copier);
        let join = |copier: std::thread::JoinHandle<Result<SouthLines>>| {
            copier
                .join()
                .unwrap_or_else(|_| Err(anyhow!("the copy of the program's output panicked")))
        };
        let mut copied = None;
        let mut reported = 0;
        let status = loop {
            if let Some(done) = copier.take_if(|it| it.is_finished()) {
                let result = join(done);
                if result.is_err() {
                    // The output cannot be kept (a full disk): the program stops here.
                    let _ = child.kill();
                }
                copied = Some(result);
            }
            if let Some(status) = child.try_wait()? {
                break status;
            }
            self.progress(partial.as_deref(), &mut reported);
            std::thread::sleep(Duration::from_millis(250));
        };
        let exited = Instant::now();
        if let Some(copier) = copier {
            if partial.is_some() {
                // A dump is complete or the step fails: wait for all of it.
                copied = Some(join(copier));
            } else {
                // A process the program left behind may hold its stdout open: the log's copy
                // gets a few seconds after the exit, then the step goes on without it.
                let deadline = exited + Duration::from_secs(10);
                while !copier.is_finished() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
                if copier.is_finished() {
                    copied = Some(join(copier));
                } else {
                    let _ = writeln!(
                        log,
                        "(stdout still open 10 s after the program exited: its copy into this log goes on; no migration times)"
                    );
                }
            }
        }
        if std::io::stdout().is_terminal() {
            // Clear the live line and write the step's name again for `ok`/`FAILED`.
            print!("\r\x1b[K{} … ", self.label);
        } else if reported > 0 {
            print!("{} … ", self.label);
        }
        // A failed write is the cause, whatever the program made of it.
        let (south_lines, ended) = match copied {
            Some(Err(err)) => return Err(err.context(format!("`{}` stopped", command.render()))),
            Some(Ok(copied)) => copied,
            None => (Vec::new(), exited),
        };
        // Quoted before the migration times are appended: the program's own last lines.
        let tail = (!status.success()).then(|| util::log_tail(self.log_path, 15));
        // The last migration ends with the program's output (its exit, or its kill).
        let migrations = sentry::south_migration_times(&south_lines, started, ended.min(exited));
        if !migrations.is_empty() {
            write!(log, "{}", migration_block(&migrations, started_unix))
                .map_err(|err| util::write_error(self.log_path, err))?;
        }
        self.migrations.extend(migrations);
        if let Some(tail) = tail {
            bail!(
                "`{}` exited with {status}; last lines of its log:\n{tail}",
                command.render(),
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
    pub(super) fn progress(&self, output: Option<&Path>, reported: &mut u64) {
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

    /// What both engines need before they write: an empty target, settings on PostgreSQL,
    /// Sentry 4 in bin/, no Sentry running. Returns the target's client.
    /// The target must be empty, or hold this migration's own load of `input` by this step (its
    /// marker says so; a run stopped after the load's commit, before its journal) while still at
    /// Sentry 4's migrations: then `true`, the load clears it first in its own transaction.
    /// Anything else is refused as someone else's data.
    pub(super) fn ready_to_load(
        &self,
        step: &Step,
        what: &str,
        input: &str,
    ) -> Result<(postgres::Client, bool)> {
        let mut client = self.target_client()?;
        let filled: Vec<String> = pg::table_counts(&mut client)?
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .map(|(t, n)| format!("{t} ({n})"))
            .collect();
        let again = !filled.is_empty()
            && pg::load_marker(&mut client)?
                == Some((step.id.name().to_string(), input.to_string()))
            && pg::latest_sentry_migration(&mut client)?
                .is_none_or(|it| it <= sqlite::SENTRY4_LAST_MIGRATION);
        ensure!(
            filled.is_empty() || again,
            "the target is not empty before the {what}: {}; {}",
            filled.join(", "),
            self.resume.redo(StepId::PgClearGeneratedRows)
        );
        self.ensure_settings_for(step.phase)?;
        self.ensure_sentry_version_for(step.phase)?;
        self.ensure_sentry_stopped()?;
        if again {
            writeln!(
                self.log()?,
                "the target holds this migration's own earlier {what} of the same input ({input}): \
                 it is cleared and loaded again in one transaction"
            )?;
        }
        Ok((client, again))
    }
}

/// South's lines of a program's stdout (`sentry::south_line`) with their arrival, and when the
/// output ended.
type SouthLines = (Vec<(String, Instant)>, Instant);

/// Copies a program's stdout into the log `file` (at `path`) line by line, unchanged, noting
/// when each of South's lines arrived.
fn copy_lines(
    from: std::process::ChildStdout,
    mut file: fs::File,
    path: &Path,
) -> Result<SouthLines> {
    let mut from = std::io::BufReader::new(from);
    let mut line = Vec::new();
    let mut south = Vec::new();
    loop {
        line.clear();
        let n = match from.read_until(b'\n', &mut line) {
            Ok(0) => break,
            Ok(n) => n,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err).context("cannot read the program's output"),
        };
        let at = Instant::now();
        file.write_all(&line[..n])
            .map_err(|err| util::write_error(path, err))?;
        let text = String::from_utf8_lossy(&line[..n]);
        if sentry::south_line(&text) {
            south.push((text.into_owned(), at));
        }
    }
    Ok((south, Instant::now()))
}

/// The log's record of each migration: when its line came (UTC and seconds after the start)
/// and how long it ran.
fn migration_block(migrations: &[sentry::MigrationTime], started_unix: u64) -> String {
    let mut out = String::from(
        "migration times (each from its ` > app:migration` line to South's next line or the exit; \
         UTC, seconds after the start, seconds):\n",
    );
    for migration in migrations {
        out.push_str(&format!(
            "  {}  +{:.3}  {:.3} s  {}\n",
            util::utc_timestamp(started_unix + migration.at_secs as u64),
            migration.at_secs,
            migration.secs,
            migration.label()
        ));
    }
    let total: f64 = migrations.iter().map(|it| it.secs).sum();
    out.push_str(&format!(
        "  {} migration(s), {total:.3} s in all\n",
        migrations.len()
    ));
    out
}

/// Copies a program's output into `file` (at `path`), then syncs it: a dump is complete on disk
/// or the step fails, naming the file.
fn copy_output(
    mut from: std::process::ChildStdout,
    mut file: fs::File,
    path: &Path,
) -> Result<u64> {
    let mut buf = vec![0u8; 1 << 16];
    let mut written = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err).context("cannot read the program's output"),
        };
        file.write_all(&buf[..n])
            .map_err(|err| util::write_error(path, err))?;
        written += n as u64;
    }
    file.sync_all()
        .map_err(|err| util::write_error(path, err))?;
    Ok(written)
}
