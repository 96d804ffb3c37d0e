//! The executor's guards and the one way it runs a program: preconditions every Sentry step
//! checks (Sentry stopped, settings and version for the phase, an empty target before a load),
//! and `run_command` with its log and progress.

use super::*;

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
    /// into the step's log; shows progress while it runs.
    pub(super) fn run_command(&self, command: &Command) -> Result<Outputs> {
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
        process.stdin(Stdio::null()).stderr(log.try_clone()?);
        let partial = command
            .stdout_to
            .as_ref()
            .map(|path| util::sibling(&config.root.join(path), ".partial"));
        let dump_file = match &partial {
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
                // Through a pipe, so that a failed write (a full disk) is ours to name: the
                // program's own complaint would go to a log on the same full disk.
                process.stdout(Stdio::piped());
                Some(file)
            }
            None => {
                process.stdout(log.try_clone()?);
                None
            }
        };
        let mut child = process
            .spawn()
            .with_context(|| format!("cannot start {}", command.program.display()))?;
        let mut copier = match (dump_file, child.stdout.take(), &partial) {
            (Some(file), Some(stdout), Some(partial)) => {
                let partial = partial.clone();
                Some(std::thread::spawn(move || {
                    copy_output(stdout, file, &partial)
                }))
            }
            _ => None,
        };
        let join = |copier: std::thread::JoinHandle<Result<u64>>| {
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
        if let Some(copier) = copier {
            copied = Some(join(copier));
        }
        if std::io::stdout().is_terminal() {
            // Clear the live line and write the step's name again for `ok`/`FAILED`.
            print!("\r\x1b[K{} … ", self.label);
        } else if reported > 0 {
            print!("{} … ", self.label);
        }
        // A failed write is the cause, whatever the program made of it.
        if let Some(Err(err)) = copied {
            return Err(err.context(format!("`{}` stopped", command.render())));
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
