//! `cargo xtask rehearse`: the whole migration on the real stack, end to end. Provisions Python
//! 2.7 + buildout (cached) and a throwaway PostgreSQL, makes a real Sentry 4 install with real
//! events sent over HTTP, runs `cargo xtask migrate` on it exactly as a user would, and proves
//! Sentry 6 works on the result. Nothing here is used by `migrate`.
//!
//! Among the events are a few with values Sentry 4 stores in SQLite but PostgreSQL refuses
//! (too long for their varchar, a NUL character): `migrate` must stop at `scan-values` before
//! touching PostgreSQL, and `migrate --fit-values` must fit them and migrate.

mod forecast;
mod own_db;
mod provision;
mod server;

use std::{
    collections::BTreeMap,
    fs,
    io::Write,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use xshell::{cmd, Cmd, Shell};

use crate::{
    config::Config, flags, journal::Journal, pgcluster::PgCluster, settings, util, verify,
};
use server::Server;

/// Runs `cmd` with stdin closed, appending the command line, its stdout and its stderr to `log`.
fn run_into_log(cmd: Cmd<'_>, log: &Path) -> Result<(String, std::process::Output)> {
    let shown = cmd.to_string();
    let mut command: std::process::Command = cmd.into();
    command.stdin(std::process::Stdio::null());
    let output = command
        .output()
        .with_context(|| format!("cannot run `{shown}`"))?;
    let mut file = fs::OpenOptions::new().create(true).append(true).open(log)?;
    writeln!(file, "$ {shown}")?;
    file.write_all(&output.stdout)?;
    file.write_all(&output.stderr)?;
    Ok((shown, output))
}

/// Runs `cmd` with stdin closed, appending its stdout and stderr to `log`; returns stdout.
/// On failure the error names the command and the log, with its last lines.
pub(crate) fn log_run(cmd: Cmd<'_>, log: &Path) -> Result<String> {
    let (shown, output) = run_into_log(cmd, log)?;
    if !output.status.success() {
        let tail = util::log_tail(log, 15);
        bail!(
            "`{shown}` failed ({}); log {}:\n{tail}",
            output.status,
            log.display()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn default_cache() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("sentry-migrate");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    home.join(".cache/sentry-migrate")
}

/// The scratch folder: removed at the end unless `--keep`, kept after a failure for its logs.
pub struct Scratch {
    pub path: PathBuf,
    pub keep: bool,
}

impl Scratch {
    /// A new scratch folder in the temp folder under an unpredictable name (`tempfile`), mode
    /// 0700: it holds a copy of data, DSN keys and password hashes. Run as root, it is 0750 with
    /// PostgreSQL's group, so that the throwaway server (running as `postgres`) reaches its own
    /// 0700 folder inside. With `logs/` made.
    pub fn new(prefix: &str, keep: bool) -> Result<Scratch> {
        let path = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir()
            .context("cannot make a scratch folder in the temp folder (TMPDIR)")?
            .keep();
        let scratch = Scratch { path, keep };
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        if fs::metadata("/proc/self")?.uid() == 0 {
            if let Ok((_, gid)) = crate::pgcluster::server_user("postgres") {
                std::os::unix::fs::chown(&scratch.path, None, Some(gid))?;
                fs::set_permissions(&scratch.path, fs::Permissions::from_mode(0o750))?;
            }
        }
        fs::create_dir_all(scratch.path.join("logs"))?;
        Ok(scratch)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !self.keep {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// Times each phase and prints `[n/N] phase … ok (1.2s)`.
struct Phases {
    total: usize,
    done: Vec<(&'static str, Duration)>,
}

impl Phases {
    fn run<T>(&mut self, name: &'static str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let index = self.done.len() + 1;
        println!("[{index}/{}] {name} …", self.total);
        let started = Instant::now();
        let result = f().with_context(|| format!("rehearsal phase `{name}` failed"))?;
        let elapsed = started.elapsed();
        println!(
            "[{index}/{}] {name} … ok ({})",
            self.total,
            util::human_duration(elapsed)
        );
        self.done.push((name, elapsed));
        Ok(result)
    }
}

/// What the Sentry 4 seeding made.
struct Seeded {
    state: serde_json::Value,
    events: u64,
    /// Sent only to Sentry 4.10 (not to the long-lived install's 4.0).
    bad: Option<BadValues>,
}

/// The events with values PostgreSQL refuses (send_bad_values.py), as Sentry 4 stored them.
struct BadValues {
    events: u64,
    /// Server names of exactly 128 characters, one of them 4 bytes long in UTF-8: they fit
    /// PostgreSQL's varchar(128) (characters), so they must arrive unchanged.
    server_names_128: Vec<String>,
}

impl flags::Rehearse {
    pub fn run(self, sh: &Shell) -> Result<()> {
        if let Some(db) = &self.db {
            return self.run_on_db(sh, &db.clone());
        }
        ensure!(
            !self.fit_values
                && self.tag1.is_none()
                && self.tag2.is_none()
                && self.engine.is_none()
                && self.login.is_none()
                && self.sentry_conf.is_none(),
            "--fit-values, --tag1, --tag2, --engine, --login and --sentry-conf belong to `rehearse --db PATH` (the plain rehearsal makes its own db and settings)"
        );
        let repo = sh.current_dir();
        let events = self.events.unwrap_or(200);
        ensure!(
            events >= 8,
            "--events must be at least 8 (two of each kind per project)"
        );
        let cache = self.cache.clone().unwrap_or_else(default_cache);
        let mut scratch = Scratch::new("sentry-migrate-rehearsal-", self.keep)?;
        let path = scratch.path.clone();
        // `migrate` runs as this very binary, copied: a `cargo build` while the rehearsal runs
        // replaces target/debug/xtask, and the running one's path then names a deleted file.
        let exe = path.join(".rehearsal-xtask");
        fs::copy(std::env::current_exe()?, &exe)
            .with_context(|| format!("cannot copy this binary to {}", exe.display()))?;
        println!(
            "rehearsal in {} (cache {})",
            path.display(),
            cache.display()
        );
        let started = Instant::now();
        stop_servers_on_interrupt(&path)?;
        let mut phases = Phases {
            total: 6,
            done: Vec::new(),
        };
        let result = rehearse(
            &repo,
            &cache,
            &path,
            &exe,
            events,
            self.long_lived,
            &mut phases,
        );
        // Every server is stopped by now (guards dropped, on success and on failure alike).
        let leftovers = processes_inside(&path);
        let result = match result {
            Ok(_) if !leftovers.is_empty() => {
                Err(anyhow::anyhow!("processes left running: {leftovers:?}"))
            }
            Err(err) if !leftovers.is_empty() => {
                Err(err.context(format!("and processes were left running: {leftovers:?}")))
            }
            other => other,
        };
        match result {
            Ok(facts) => {
                print_summary(&path, &phases, &facts, started.elapsed())?;
                if let Some(keep_db) = &self.keep_db {
                    keep_source_db(&path, &repo.join(keep_db))?;
                }
                if self.keep {
                    println!("scratch kept: {}", path.display());
                }
                Ok(())
            }
            Err(err) => {
                scratch.keep = true;
                Err(err.context(format!(
                    "the rehearsal failed; every server it started is stopped; logs: {}/logs and {}/dumps/logs (kept)",
                    path.display(),
                    path.display()
                )))
            }
        }
    }
}

fn rehearse(
    repo: &Path,
    cache: &Path,
    root: &Path,
    exe: &Path,
    events: u64,
    long_lived: bool,
    phases: &mut Phases,
) -> Result<serde_json::Value> {
    let logs = root.join("logs");
    let sh = Shell::new()?;
    sh.change_dir(root);

    let (toolchain, browser) = phases.run("provision", || {
        let toolchain = provision::toolchain(&sh, cache, &logs)?;
        let browser = provision::browser(&sh, cache, &repo.join(BROWSER_REQUIREMENTS), &logs)?;
        copy_repo_files(repo, root, Some(REHEARSAL_ZONE))?;
        provision::bootstrap(&sh, &toolchain, root, &logs)?;
        Ok((toolchain, browser))
    })?;
    for (key, value) in toolchain.env() {
        sh.set_var(key, value);
    }

    // Stopped when it goes out of scope: at the end, or on the first failure.
    let cluster = phases.run("postgres", || {
        let mut cluster = PgCluster::start(&sh, &root.join("pg"))?;
        cluster.stop_on_interrupt();
        Ok(cluster)
    })?;
    let pg_env = cluster.env(&cluster.superuser, &cluster.password, "sentry");

    let (seeded, bad) = if long_lived {
        let seeded = phases.run("sentry4.0-install-and-data", || {
            seed_sentry4(
                &sh,
                root,
                &logs,
                events,
                "buildout/tag0-sentry4.0.cfg",
                Strictness::SomeStored,
                false,
            )
        })?;
        let bad = phases.run("upgrade-in-place-to-4.10-and-more-data", || {
            more_data_after_upgrade(&sh, root, &logs, events)
        })?;
        (seeded, bad)
    } else {
        let mut seeded = phases.run("sentry4-install-and-data", || {
            seed_sentry4(
                &sh,
                root,
                &logs,
                events,
                "buildout/tag1-sentry4.cfg",
                Strictness::AllStored,
                true,
            )
        })?;
        let bad = seeded
            .bad
            .take()
            .context("Sentry 4.10 was sent no events with values PostgreSQL refuses")?;
        (seeded, bad)
    };

    // What Sentry 4 held before `migrate`: a rollback must give exactly this back.
    let source_counts = sentry4_counts(&root.join("var/sentry.db"))?;
    let migrate_started = jiff::Timestamp::now();
    phases.run("migrate", || {
        migrate_fitting_values(&sh, root, exe, &pg_env, &cluster, &logs, &bad)?;
        check_instants(root, &cluster, migrate_started)
    })?;

    let mut facts = phases.run("prove-sentry6", || {
        let mut facts = prove_sentry6(&sh, root, &logs, &cluster, &seeded)?;
        facts["browser"] = look_in_browser(&sh, root, &logs, &browser, &seeded, !long_lived)?;
        Ok(facts)
    })?;
    // The way back, as a user takes it (the plain rehearsal only: CI time).
    if !long_lived {
        facts["rollback"] = phases.run("rollback-to-sentry4", || {
            rollback_to_sentry4(&sh, root, exe, &pg_env, &logs, &seeded, source_counts)
        })?;
    }
    Ok(facts)
}

/// Events and groups in a Sentry 4 SQLite db.
fn sentry4_counts(db: &Path) -> Result<(i64, i64)> {
    let count = || -> rusqlite::Result<(i64, i64)> {
        let conn =
            rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        conn.query_row(
            "SELECT (SELECT count(*) FROM sentry_message), (SELECT count(*) FROM sentry_groupedmessage)",
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
    };
    count().with_context(|| format!("cannot count events and groups in {}", db.display()))
}

/// `cargo xtask rollback` after the Sentry 6 proof, which stored one new event: without
/// `--force` it must refuse naming that one event and change nothing; with `--restore-backup
/// --force` it puts back the backup (sha256 as recorded, the migrated db kept aside), and the
/// real Sentry 4.10 on SQLite then serves the pre-migration events and groups over HTTP.
fn rollback_to_sentry4(
    sh: &Shell,
    root: &Path,
    exe: &Path,
    pg_env: &[(&'static str, String)],
    logs: &Path,
    seeded: &Seeded,
    source: (i64, i64),
) -> Result<serde_json::Value> {
    let db = root.join("var/sentry.db");
    let settings_local = root.join("settings/settings_local.py");
    let journal = Journal::load(&root.join("dumps/journal.json"))?
        .context("no dumps/journal.json after `migrate`")?;
    let backup = journal
        .backup
        .context("the journal records no backup after `migrate`")?;
    let migrated_hash = util::sha256_file(&db)?;
    let settings_before = fs::read(&settings_local)?;
    let log = logs.join("rollback.log");

    let (ok, stderr) = run_logged(
        cmd!(sh, "{exe} rollback --restore-backup")
            .env("SENTRY_MIGRATE_ROOT", root)
            .envs(pg_env.iter().cloned()),
        &log,
    )?;
    ensure!(
        !ok,
        "`rollback --restore-backup` went ahead though Sentry 6 stored a new event; log {}",
        log.display()
    );
    let refusal = "Sentry 6 stored 1 event(s) after the migration";
    ensure!(
        stderr.contains(refusal) && stderr.contains("--force"),
        "`rollback` without --force did not say {refusal:?} (the proof stored exactly one event); log {}:\n{}",
        log.display(),
        util::log_tail(&log, 15)
    );
    ensure!(
        util::sha256_file(&db)? == migrated_hash && fs::read(&settings_local)? == settings_before,
        "the refused rollback changed var/sentry.db or settings/settings_local.py; log {}",
        log.display()
    );
    println!("    without --force: refused, naming the 1 event Sentry 6 stored; nothing changed");

    log_run(
        cmd!(sh, "{exe} rollback --restore-backup --force")
            .env("SENTRY_MIGRATE_ROOT", root)
            .envs(pg_env.iter().cloned()),
        &log,
    )
    .context("`cargo xtask rollback --restore-backup --force` failed")?;
    let restored = util::sha256_file(&db)?;
    ensure!(
        restored == backup.sha256,
        "the restored db has sha256 {restored}, the journal recorded {} for the backup {}",
        backup.sha256,
        backup.path
    );
    let aside: Vec<PathBuf> = fs::read_dir(root.join("var"))?
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| {
            path.file_name().is_some_and(|name| {
                name.to_string_lossy()
                    .starts_with("sentry.db.before-rollback-")
            })
        })
        .collect();
    ensure!(
        aside.len() == 1 && util::sha256_file(&aside[0])? == migrated_hash,
        "the migrated db was not kept aside as var/sentry.db.before-rollback-*: {aside:?}"
    );

    let state_path = root.join("prove4-state.json");
    fs::write(&state_path, serde_json::to_string(&seeded.state)?)?;
    let port = util::free_port()?;
    let facts: serde_json::Value = {
        let _server = sentry4_server(sh, port, &logs.join("sentry4-after-rollback-web.log"))?;
        let base = format!("http://127.0.0.1:{port}");
        let out = log_run(
            cmd!(
                sh,
                "bin/py xtask/python/rehearse/prove4.py settings/settings.py {base} {state_path}"
            ),
            &log,
        )?;
        serde_json::from_str(out.trim()).context("prove4.py printed no JSON")?
    };
    ensure!(
        facts["sentry_version"]
            .as_str()
            .is_some_and(|version| version.starts_with("4.")),
        "after the rollback bin/py runs Sentry {}, not 4.x: {facts}",
        facts["sentry_version"]
    );
    ensure!(
        facts["engine"]
            .as_str()
            .is_some_and(|engine| engine.ends_with("sqlite3")),
        "after the rollback the settings do not point at SQLite: {facts}"
    );
    ensure!(
        facts["login_ok"] == true && facts["stream_ok"] == true,
        "Sentry 4 after the rollback: login or event stream failed: {facts}"
    );
    ensure!(
        facts["events"].as_i64() == Some(source.0) && facts["groups"].as_i64() == Some(source.1),
        "Sentry 4 after the rollback sees {} events and {} groups, the db held {} and {} before `migrate`",
        facts["events"],
        facts["groups"],
        source.0,
        source.1
    );
    println!(
        "    --restore-backup --force: db sha256 = the backup's ({}…), the migrated db kept as {}; Sentry {} on SQLite: login ok, stream lists the events, {} events and {} groups as before `migrate`",
        &restored[..12],
        aside[0].file_name().unwrap_or_default().to_string_lossy(),
        facts["sentry_version"].as_str().unwrap_or("?"),
        source.0,
        source.1
    );
    Ok(facts)
}

/// On SIGINT or SIGTERM: stop every server the rehearsal started, then exit 130. (Its
/// programs run in this process group and get the Ctrl-C themselves.)
fn stop_servers_on_interrupt(scratch: &Path) -> Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])
        .context("cannot watch for Ctrl-C")?;
    let scratch = scratch.to_path_buf();
    std::thread::spawn(move || {
        if let Some(signal) = signals.forever().next() {
            eprintln!(
                "\ninterrupted (signal {signal}): stopping the servers the rehearsal started"
            );
            util::run_interrupt_hooks();
            eprintln!("stopped; scratch folder kept: {}", scratch.display());
            std::process::exit(130);
        }
    });
    Ok(())
}

/// Processes (but this one) whose working directory or command line lies inside `root`.
fn processes_inside(root: &Path) -> Vec<(u32, String)> {
    let root_text = root.display().to_string();
    util::live_processes()
        .into_iter()
        .filter(|process| {
            let in_cwd = fs::read_link(process.dir.join("cwd"))
                .map(|cwd| cwd.starts_with(root))
                .unwrap_or(false);
            in_cwd || process.args.iter().any(|arg| arg.contains(&root_text))
        })
        .map(|process| (process.pid, process.args.join(" ")))
        .collect()
}

/// The files of this repo a buildout checkout has, copied into the scratch root.
/// The zone the rehearsal's Sentry 4 runs with: not UTC, with daylight saving.
const REHEARSAL_ZONE: &str = "America/Chicago";

/// `zone`: write the rehearsal's own `settings/sentry_conf.py` with it (`None`: the caller
/// brings the install's own).
fn copy_repo_files(repo: &Path, root: &Path, zone: Option<&str>) -> Result<()> {
    for dir in [
        "buildout",
        "settings",
        "xtask/python/rehearse",
        "var",
        "dumps",
    ] {
        fs::create_dir_all(root.join(dir))?;
    }
    for file in [
        "buildout/tag1-sentry4.cfg",
        "buildout/tag2-sentry6.cfg",
        "buildout/tag0-sentry4.0.cfg",
        "settings/settings.py",
        "xtask/python/sentry_helper.py",
        "xtask/python/rehearse/sentry_setup.py",
        "xtask/python/rehearse/seed.py",
        "xtask/python/rehearse/send_events.py",
        "xtask/python/rehearse/send_bad_values.py",
        "xtask/python/rehearse/serve.py",
        "xtask/python/rehearse/prove.py",
        "xtask/python/rehearse/prove4.py",
        "xtask/python/rehearse/compare_encoded.py",
        "xtask/python/rehearse/prove_db.py",
        "xtask/python/rehearse/browse.py",
        "xtask/python/rehearse/browser-requirements.txt",
    ] {
        fs::copy(repo.join(file), root.join(file))
            .with_context(|| format!("cannot copy {file} into the scratch repo"))?;
    }
    // The install's own settings: the zone its Sentry 4 runs with (daylight saving included),
    // which `migrate` must read the naive dates in.
    if let Some(zone) = zone {
        fs::write(
            root.join("settings/sentry_conf.py"),
            format!("# Rehearsal: the install's own settings.\nTIME_ZONE = '{zone}'\n"),
        )?;
    }
    // The scratch install sends no mail (Sentry mails on every new event).
    let mut settings = fs::OpenOptions::new()
        .append(true)
        .open(root.join("settings/settings.py"))?;
    writeln!(settings, "\n# Rehearsal only: no mail leaves this machine.\nEMAIL_BACKEND = 'django.core.mail.backends.locmem.EmailBackend'")?;
    Ok(())
}

/// `--keep-db`: the Sentry 4 db the rehearsal made, as it was before `migrate` touched it (the
/// pre-migration backup `migrate` made and verified), copied to `dest` for a later
/// `rehearse --db` (its dates are in America/Chicago).
fn keep_source_db(root: &Path, dest: &Path) -> Result<()> {
    let report: Journal =
        serde_json::from_str(&fs::read_to_string(root.join("dumps/report.json"))?)?;
    let backup = report
        .backup
        .context("dumps/report.json names no pre-migration backup")?;
    let backup = root.join(&backup.path);
    if let Some(parent) = dest.parent() {
        fs::create_dir_all(parent)?;
    }
    let _ = fs::remove_file(dest);
    own_db::copy_online(&backup, dest)?;
    println!(
        "Sentry 4 db kept: {} (a copy of {}; written in {REHEARSAL_ZONE}): `cargo xtask rehearse --db {} --fit-values` with TIME_ZONE = '{REHEARSAL_ZONE}' in its settings",
        dest.display(),
        backup.display(),
        dest.display()
    );
    Ok(())
}

/// A Sentry web service on 127.0.0.1:`port`, stopped (whole process group) when dropped.
fn web_server(name: &str, command: Cmd<'_>, port: u16, log: &Path) -> Result<Server> {
    let command: std::process::Command = command
        .env("SENTRY_WEB_HOST", "127.0.0.1")
        .env("SENTRY_WEB_PORT", port.to_string())
        .into();
    Server::start(name, command, port, log, Duration::from_secs(120))
}

/// Sentry 4's web service, started through the rehearsal's launcher: 4.10's `start` lets
/// gunicorn parse the command line, which rejects `--noupgrade` (see serve.py).
fn sentry4_server(sh: &Shell, port: u16, log: &Path) -> Result<Server> {
    let py = sh.current_dir().join("bin/py");
    web_server(
        "Sentry 4 web",
        cmd!(
            sh,
            "{py} xtask/python/rehearse/serve.py settings/settings.py"
        ),
        port,
        log,
    )
}

/// Sentry 6.4's web service, started with exactly the command `migrate` tells users to run.
fn sentry6_server(sh: &Shell, port: u16, log: &Path) -> Result<Server> {
    let sentry = sh.current_dir().join("bin/sentry");
    web_server(
        "Sentry 6.4 web",
        cmd!(
            sh,
            "{sentry} --config=settings/settings.py start --noupgrade"
        ),
        port,
        log,
    )
}

/// `bin/py seed.py CONFIG COMMAND` (Sentry 4's ORM), with the web port its DSNs name; its JSON.
fn seed(sh: &Shell, log: &Path, command: &str, port: u16) -> Result<serde_json::Value> {
    let out = log_run(
        cmd!(
            sh,
            "bin/py xtask/python/rehearse/seed.py settings/settings.py {command}"
        )
        .env("SENTRY_WEB_PORT", port.to_string()),
        log,
    )?;
    serde_json::from_str(out.trim()).with_context(|| format!("seed.py {command} printed no JSON"))
}

/// How many of the events sent Sentry must have stored.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Strictness {
    /// A fresh 4.10 install stores every event.
    AllStored,
    /// Long-lived installs keep SQLite-only unique indexes (`sentry_filtervalue(key, value)`)
    /// that make Sentry reject events of every project but the first: some must be stored.
    SomeStored,
}

/// One round of events: where Sentry 4 listens, how many, a tag in their text, its log.
struct Batch<'a> {
    port: u16,
    events: u64,
    tag: &'a str,
    web_log: &'a str,
}

/// Runs Sentry 4's web server, sends the batch over HTTP to `dsns`, stops it; returns how many
/// events each project has now.
fn send_events(
    sh: &Shell,
    root: &Path,
    logs: &Path,
    dsns: &[String],
    batch: Batch<'_>,
) -> Result<BTreeMap<i64, u64>> {
    fs::write(root.join("dsns.json"), serde_json::to_string(dsns)?)?;
    {
        let _server = sentry4_server(sh, batch.port, &logs.join(batch.web_log))?;
        let count = batch.events.to_string();
        let tag = batch.tag;
        log_run(
            cmd!(
                sh,
                "bin/py xtask/python/rehearse/send_events.py dsns.json {count} {tag}"
            ),
            &logs.join("sentry4.log"),
        )?;
    }
    stored_events(root)
}

/// Events per project in the Sentry 4 SQLite db.
fn stored_events(root: &Path) -> Result<BTreeMap<i64, u64>> {
    let path = root.join("var/sentry.db");
    let count = || -> rusqlite::Result<BTreeMap<i64, u64>> {
        let conn = rusqlite::Connection::open_with_flags(
            &path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )?;
        let mut stmt =
            conn.prepare("SELECT project_id, count(*) FROM sentry_message GROUP BY project_id")?;
        let rows = stmt.query_map([], |row| {
            Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)? as u64))
        })?;
        rows.collect()
    };
    count().with_context(|| {
        format!(
            "cannot count the events per project in table sentry_message of {}: did the Sentry 4 install (bin/sentry upgrade) complete?",
            path.display()
        )
    })
}

/// Runs Sentry 4's web server again on `port` (the DSNs name it) and sends send_bad_values.py's
/// few events to every project: values PostgreSQL refuses, differing per project (see the
/// script). Checks Sentry stored every one of them, and stored the values as sent.
fn send_bad_values(
    sh: &Shell,
    root: &Path,
    logs: &Path,
    dsns: &[(i64, String)],
    port: u16,
    tag: &str,
) -> Result<BadValues> {
    let before = stored_events(root)?;
    let urls: Vec<&str> = dsns.iter().map(|(_, dsn)| dsn.as_str()).collect();
    fs::write(root.join("dsns.json"), serde_json::to_string(&urls)?)?;
    let web_log = logs.join("sentry4-web-bad-values.log");
    let out = {
        let _server = sentry4_server(sh, port, &web_log)?;
        log_run(
            cmd!(
                sh,
                "bin/py xtask/python/rehearse/send_bad_values.py dsns.json {tag}"
            ),
            &logs.join("sentry4.log"),
        )?
    };
    let printed: serde_json::Value =
        serde_json::from_str(out.trim()).context("send_bad_values.py printed no JSON")?;
    let after = stored_events(root)?;
    let mut events = 0;
    for (project, dsn) in dsns {
        let sent = printed["sent"][dsn.as_str()]
            .as_u64()
            .with_context(|| format!("send_bad_values.py sent nothing to project {project}"))?;
        let count = |map: &BTreeMap<i64, u64>| map.get(project).copied().unwrap_or(0);
        let got = count(&after).saturating_sub(count(&before));
        ensure!(
            got == sent,
            "Sentry 4 stored {got} of the {sent} events with values PostgreSQL refuses sent to project {project}: see {}",
            web_log.display()
        );
        events += sent;
    }
    let server_names_128: Vec<String> = printed["server_name_128"]
        .as_array()
        .context("send_bad_values.py printed no server_name_128")?
        .iter()
        .map(|name| name.as_str().map(str::to_string))
        .collect::<Option<_>>()
        .context("a server_name_128 that is no string")?;
    let stored = stored_bad_values(root)?;
    let projects = dsns.len() as i64;
    // Per project: 3 events with a 150-character server name and a 300-character site; their
    // 3 `url` tag values and the site tag value over 200 characters, the 3 urls sharing their
    // first 200; one message with a NUL; one 128-character server name of 131 bytes.
    for (what, got, least) in [
        ("server_name over 128 characters", stored.server_names, 3),
        ("site over 128 characters", stored.sites, 3),
        (
            "sentry_filtervalue.value over 200 characters",
            stored.tag_values,
            4,
        ),
        (
            "sentry_messagefiltervalue.value over 200 characters",
            stored.group_tag_values,
            4,
        ),
        (
            "tag values sharing their first 200 characters (groups)",
            stored.shared_prefixes,
            1,
        ),
        ("sentry_message.message with NUL", stored.nul_messages, 1),
        (
            "sentry_groupedmessage.message with NUL",
            stored.nul_groups,
            1,
        ),
        (
            "server_name of 128 characters and 131 bytes",
            stored.names_128,
            1,
        ),
    ] {
        ensure!(
            got >= least * projects,
            "Sentry 4 did not store the values sent as they were: {got} rows with {what}, expected at least {} (see {})",
            least * projects,
            web_log.display()
        );
    }
    println!(
        "    sent {events} events with values PostgreSQL refuses, all stored as sent: server_name/site over 128 characters in {}/{} events, tag values over 200 in {}+{} rows ({} groups share their first 200), NUL in {}+{} messages/groups, {} server names of 128 characters in 131 bytes",
        stored.server_names,
        stored.sites,
        stored.tag_values,
        stored.group_tag_values,
        stored.shared_prefixes,
        stored.nul_messages,
        stored.nul_groups,
        stored.names_128
    );
    Ok(BadValues {
        events,
        server_names_128,
    })
}

/// Rows of the Sentry 4 SQLite db holding values PostgreSQL refuses (lengths in characters,
/// as SQLite's length() and PostgreSQL's varchar(n) count them).
struct StoredBadValues {
    server_names: i64,
    sites: i64,
    tag_values: i64,
    group_tag_values: i64,
    shared_prefixes: i64,
    nul_messages: i64,
    nul_groups: i64,
    names_128: i64,
}

fn stored_bad_values(root: &Path) -> Result<StoredBadValues> {
    let path = root.join("var/sentry.db");
    let conn =
        rusqlite::Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let count = |sql: &str| -> Result<i64> {
        conn.query_row(sql, [], |row| row.get(0))
            .with_context(|| format!("`{sql}` failed on {}", path.display()))
    };
    Ok(StoredBadValues {
        server_names: count("SELECT count(*) FROM sentry_message WHERE length(server_name) > 128")?,
        sites: count("SELECT count(*) FROM sentry_message WHERE length(site) > 128")?,
        tag_values: count("SELECT count(*) FROM sentry_filtervalue WHERE length(value) > 200")?,
        group_tag_values: count(
            "SELECT count(*) FROM sentry_messagefiltervalue WHERE length(value) > 200",
        )?,
        shared_prefixes: count(
            "SELECT count(*) FROM (SELECT 1 FROM sentry_filtervalue WHERE length(value) > 200 \
             GROUP BY project_id, key, substr(value, 1, 200) HAVING count(*) > 1)",
        )?,
        // length() of a text stops at its first NUL: look in the bytes.
        nul_messages: count(
            "SELECT count(*) FROM sentry_message WHERE instr(CAST(message AS BLOB), X'00') > 0",
        )?,
        nul_groups: count(
            "SELECT count(*) FROM sentry_groupedmessage \
             WHERE instr(CAST(message AS BLOB), X'00') > 0",
        )?,
        names_128: count(
            "SELECT count(*) FROM sentry_message \
             WHERE length(server_name) = 128 AND length(CAST(server_name AS BLOB)) = 131",
        )?,
    })
}

/// Runs `cmd` with stdin closed, writing its stdout and stderr to `log`; returns whether it
/// succeeded, and its stderr.
fn run_logged(cmd: Cmd<'_>, log: &Path) -> Result<(bool, String)> {
    let (_, output) = run_into_log(cmd, log)?;
    Ok((
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}

/// The migrate phase. The same binary and code path a user runs, `cargo xtask migrate` on this
/// checkout: first without `--fit-values`, which must stop at `scan-values` naming the columns
/// and leave PostgreSQL untouched; then with it, which must fit every refused value and migrate.
fn migrate_fitting_values(
    sh: &Shell,
    root: &Path,
    exe: &Path,
    pg_env: &[(&'static str, String)],
    cluster: &PgCluster,
    logs: &Path,
    bad: &BadValues,
) -> Result<()> {
    let log = logs.join("migrate-without-fit-values.log");
    let (ok, stderr) = run_logged(
        cmd!(sh, "{exe} migrate")
            .env("SENTRY_MIGRATE_ROOT", root)
            .envs(pg_env.iter().cloned()),
        &log,
    )?;
    ensure!(
        !ok,
        "`migrate` without --fit-values succeeded on a db with values PostgreSQL refuses; log {}",
        log.display()
    );
    let tail = util::log_tail(&log, 15);
    ensure!(
        stderr.contains("step `scan-values` failed"),
        "`migrate` without --fit-values failed, but not at step `scan-values`; log {}:\n{tail}",
        log.display()
    );
    for column in ["sentry_message.server_name", "sentry_message.site"] {
        ensure!(
            stderr.contains(column),
            "`migrate` stopped at `scan-values` without naming {column}; log {}:\n{tail}",
            log.display()
        );
    }
    ensure!(
        [
            "sentry_filtervalue.value",
            "sentry_messagefiltervalue.value"
        ]
        .iter()
        .any(|column| stderr.contains(column)),
        "`migrate` stopped at `scan-values` without naming a tag value column; log {}:\n{tail}",
        log.display()
    );
    let dbname = pg_env
        .iter()
        .find(|(key, _)| *key == "PGDATABASE")
        .map(|(_, value)| value.as_str())
        .context("no PGDATABASE for migrate")?;
    ensure_untouched(cluster, dbname)?;
    println!(
        "    without --fit-values: stopped at `scan-values` naming the columns; database `{dbname}` not created (log {})",
        log.display()
    );

    // Both engines to the Sentry 4 state, each into its own database, then compared table by
    // table; the copy engine's result goes on to Sentry 6 and its proof.
    // That stopped run's journal is for the copy engine's target: kept aside for inspection.
    fs::rename(root.join("dumps"), root.join("dumps-stopped-at-scan"))?;
    fs::create_dir(root.join("dumps"))?;
    let loaddata_db = format!("{dbname}_loaddata");
    let loaddata_env: Vec<(&'static str, String)> = pg_env
        .iter()
        .map(|(key, value)| match *key {
            "PGDATABASE" => (*key, loaddata_db.clone()),
            _ => (*key, value.clone()),
        })
        .collect();
    cmd!(
        sh,
        "{exe} migrate --fit-values --engine loaddata --until verify-postgres"
    )
    .env("SENTRY_MIGRATE_ROOT", root)
    .envs(loaddata_env.iter().cloned())
    .run()
    .context(
        "`cargo xtask migrate --fit-values --engine loaddata --until verify-postgres` failed",
    )?;
    // Its journal and report stay for inspection; the copy engine starts a journal of its own.
    fs::rename(root.join("dumps"), root.join("dumps-loaddata"))?;
    fs::create_dir(root.join("dumps"))?;
    cmd!(
        sh,
        "{exe} migrate --fit-values --engine copy --until verify-postgres"
    )
    .env("SENTRY_MIGRATE_ROOT", root)
    .envs(pg_env.iter().cloned())
    .run()
    .context("`cargo xtask migrate --fit-values --engine copy --until verify-postgres` failed")?;
    compare_engines(sh, cluster, &loaddata_db, dbname, logs, pg_env)?;
    cmd!(sh, "{exe} migrate --fit-values --engine copy")
        .env("SENTRY_MIGRATE_ROOT", root)
        .envs(pg_env.iter().cloned())
        .run()
        .context("`cargo xtask migrate --fit-values --engine copy` failed")?;

    let report = read_report(root)?;
    check_fit(&report["fit"])?;
    // Values that fit PostgreSQL's limits, counted in characters, arrive unchanged.
    let mut client = cluster.client(dbname)?;
    let intact: i64 = client
        .query_one(
            "SELECT count(*) FROM sentry_message WHERE server_name = ANY($1)",
            &[&bad.server_names_128],
        )?
        .get(0);
    ensure!(
        intact as usize >= bad.server_names_128.len(),
        "{intact} of the {} server names of 128 characters (131 bytes) arrived unchanged in PostgreSQL: a byte limit was applied?",
        bad.server_names_128.len()
    );
    println!("    {}", fit_summary(&report["fit"]));
    Ok(())
}

/// Starts Sentry 6 as the tool recommends (`start --noupgrade`) on a loopback port, runs
/// `script` (in xtask/python/rehearse/, under bin/py) against it with `state_path`, and returns
/// the JSON facts it prints; the server is stopped on return.
pub(crate) fn prove_on_sentry6(
    sh: &Shell,
    logs: &Path,
    script: &str,
    state_path: &Path,
) -> Result<serde_json::Value> {
    let port = util::free_port()?;
    let out = {
        let _server = sentry6_server(sh, port, &logs.join("sentry6-web.log"))?;
        let base = format!("http://127.0.0.1:{port}");
        let script = format!("xtask/python/rehearse/{script}");
        log_run(
            cmd!(
                sh,
                "bin/py {script} settings/settings.py {base} {state_path}"
            ),
            &logs.join("sentry6.log"),
        )?
    };
    serde_json::from_str(out.trim()).with_context(|| format!("{script} printed no JSON"))
}

/// The newest event is the same instant in SQLite (naive text in the zone Sentry 4 ran with) and
/// in PostgreSQL, and that instant is minutes old: read in the wrong zone it would be hours off
/// while every count still matched.
fn check_instants(
    root: &Path,
    cluster: &PgCluster,
    migrate_started: jiff::Timestamp,
) -> Result<()> {
    let db = root.join("var/sentry.db");
    let naive: String = rusqlite::Connection::open(&db)
        .and_then(|conn| {
            conn.query_row("SELECT max(datetime) FROM sentry_message", [], |row| {
                row.get(0)
            })
        })
        .with_context(|| format!("cannot read the newest event of {}", db.display()))?;
    let local: jiff::civil::DateTime = naive
        .replace(' ', "T")
        .parse()
        .with_context(|| format!("the newest event's time `{naive}` does not parse"))?;
    let in_sqlite = local
        .to_zoned_datetime(jiff::tz::TimeZone::get(REHEARSAL_ZONE)?)?
        .timestamp();
    let mut client = cluster.client("sentry")?;
    let epoch: f64 = client
        .query_one(
            "SELECT extract(epoch FROM max(datetime))::float8 FROM sentry_message",
            &[],
        )?
        .get(0);
    let in_postgres = jiff::Timestamp::from_second(epoch.floor() as i64)?;
    let apart = (in_postgres.as_second() - in_sqlite.as_second()).abs();
    ensure!(
        apart <= 1,
        "the newest event is {naive} in SQLite ({REHEARSAL_ZONE}: {in_sqlite}) but {in_postgres} in PostgreSQL: {apart} s apart, the dates were read in the wrong zone"
    );
    let age = migrate_started.as_second() - in_postgres.as_second();
    ensure!(
        (-60..=20 * 60).contains(&age),
        "the newest event is {in_postgres} in PostgreSQL, {age} s before the migration started: the events were sent minutes before it"
    );
    println!(
        "    dates: newest event {naive} in SQLite ({REHEARSAL_ZONE}) = {in_postgres} in PostgreSQL, sent {age} s before the migration"
    );
    Ok(())
}

/// The loaddata engine's database and the copy engine's hold the same rows: every table hashed
/// over its rows as JSON in a stable order, with the columns Sentry stores encoded (pickles,
/// gzipped pickles; loaddata re-encodes them) left out there and compared decoded, with Sentry's
/// own field code under bin/py.
fn compare_engines(
    sh: &Shell,
    cluster: &PgCluster,
    loaddata_db: &str,
    copy_db: &str,
    logs: &Path,
    pg_env: &[(&'static str, String)],
) -> Result<()> {
    let out = log_run(
        cmd!(
            sh,
            "bin/py xtask/python/rehearse/compare_encoded.py settings/settings.py {loaddata_db} {copy_db}"
        )
        .envs(pg_env.iter().cloned()),
        &logs.join("compare-engines.log"),
    )?;
    let encoded: serde_json::Value =
        serde_json::from_str(out.trim()).context("compare_encoded.py printed no JSON")?;
    let columns = encoded["columns"]
        .as_object()
        .context("compare_encoded.py: no columns")?;
    let mut excluded: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut decoded = Vec::new();
    for (name, result) in columns {
        let (table, column) = name
            .split_once('.')
            .context("compare_encoded.py: a column without its table")?;
        excluded
            .entry(table.to_string())
            .or_default()
            .push(column.to_string());
        let differ = result["differ"].as_array().map(Vec::len).unwrap_or(0);
        ensure!(
            differ == 0 && result["rows"] == result["rows_b"],
            "{name} differs between the engines after decoding: {result}"
        );
        decoded.push(format!("{name} {}", result["rows"]));
    }
    // Django 1.4's JSON serializer writes datetimes to the millisecond, so loaddata drops the
    // microseconds the copy engine keeps: compared to the millisecond, and counted.
    let mut sub_millisecond = 0i64;
    let mut hashes = |dbname: &str,
                      count_truncated: bool|
     -> Result<BTreeMap<String, (i64, String)>> {
        let mut client = cluster.client(dbname)?;
        client.batch_execute("SET TIME ZONE 'UTC'")?;
        // Every table but this tool's load marker (which says which engine loaded).
        let tables = crate::pg::public_tables(&mut client)?;
        let mut out = BTreeMap::new();
        for table in tables {
            let leave_out: Vec<String> = excluded.get(&table).cloned().unwrap_or_default();
            let columns: Vec<(String, String)> = client
                .query(
                    "SELECT column_name::text, data_type::text FROM information_schema.columns \
                     WHERE table_schema = 'public' AND table_name = $1 ORDER BY ordinal_position",
                    &[&table],
                )?
                .iter()
                .map(|row| (row.get(0), row.get(1)))
                .filter(|(name, _): &(String, String)| !leave_out.contains(name))
                .collect();
            let quoted = crate::ident::Ident::table(table.clone())?.quoted();
            let exprs: Vec<String> = columns
                .iter()
                .map(|(name, ty)| {
                    let column = format!("\"{}\"", name.replace('"', ""));
                    if ty.starts_with("timestamp") {
                        format!("date_trunc('milliseconds', {column})")
                    } else {
                        column
                    }
                })
                .collect();
            let r = client.query_one(
                &format!(
                    "SELECT count(*), md5(coalesce(string_agg(r::text, E'\\n' ORDER BY r::text), '')) FROM (SELECT {} FROM {quoted}) r",
                    if exprs.is_empty() { "1".to_string() } else { exprs.join(", ") }
                ),
                &[],
            )?;
            if count_truncated {
                for (name, ty) in &columns {
                    if ty.starts_with("timestamp") {
                        let column = format!("\"{}\"", name.replace('"', ""));
                        let n: i64 = client
                            .query_one(
                                &format!("SELECT count(*) FROM {quoted} WHERE {column} <> date_trunc('milliseconds', {column})"),
                                &[],
                            )?
                            .get(0);
                        sub_millisecond += n;
                    }
                }
            }
            out.insert(table, (r.get(0), r.get(1)));
        }
        Ok(out)
    };
    let loaddata = hashes(loaddata_db, false)?;
    let copy = hashes(copy_db, true)?;
    let differ: Vec<String> = loaddata
        .keys()
        .chain(copy.keys())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .filter(|table| loaddata.get(*table) != copy.get(*table))
        .map(|table| {
            format!(
                "{table} (loaddata {:?}, copy {:?})",
                loaddata.get(table).map(|it| it.0),
                copy.get(table).map(|it| it.0)
            )
        })
        .collect();
    ensure!(
        differ.is_empty(),
        "the copy engine's database differs from the loaddata engine's in {} table(s): {}",
        differ.len(),
        differ.join(", ")
    );
    let rows: i64 = copy.values().map(|(n, _)| n).sum();
    println!(
        "    engines: loaddata and copy equal in all {} tables ({rows} rows, datetimes to the millisecond); decoded and equal: {}; \
         {sub_millisecond} datetimes keep microseconds in the copy that loaddata cuts to milliseconds",
        copy.len(),
        decoded.join(", ")
    );
    Ok(())
}

/// The target database does not exist, or has no tables.
fn ensure_untouched(cluster: &PgCluster, dbname: &str) -> Result<()> {
    let exists: bool = cluster
        .client("postgres")?
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)",
            &[&dbname],
        )?
        .get(0);
    if exists {
        let tables: i64 = cluster
            .client(dbname)?
            .query_one(
                "SELECT count(*) FROM information_schema.tables \
                 WHERE table_schema NOT IN ('pg_catalog', 'information_schema')",
                &[],
            )?
            .get(0);
        ensure!(
            tables == 0,
            "`migrate` stopped at `scan-values` but database `{dbname}` already has {tables} tables"
        );
    }
    Ok(())
}

fn read_report(root: &Path) -> Result<serde_json::Value> {
    let path = root.join("dumps/report.json");
    let text =
        fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))
}

/// report.json's `fit` covers every kind of value the rehearsal sent, and merged the tag
/// values a cut to 200 characters made equal.
fn check_fit(fit: &serde_json::Value) -> Result<()> {
    let changes = fit["changes"]
        .as_array()
        .context("dumps/report.json has no fit.changes after `migrate --fit-values`")?;
    let changed = |tables: &[&str], column: &str, kind: &str| {
        changes.iter().any(|change| {
            tables.iter().any(|table| change["table"] == *table)
                && change["column"] == column
                && change["kind"] == kind
        })
    };
    for (tables, column, kind) in [
        (&["sentry_message"][..], "server_name", "too-long"),
        (&["sentry_message"][..], "site", "too-long"),
        (
            &["sentry_filtervalue", "sentry_messagefiltervalue"][..],
            "value",
            "too-long",
        ),
        (&["sentry_message"][..], "message", "nul"),
        (&["sentry_groupedmessage"][..], "message", "nul"),
    ] {
        ensure!(
            changed(tables, column, kind),
            "fit.changes in dumps/report.json has no `{kind}` change of {}.{column}",
            tables.join(" or ")
        );
    }
    let merged = |table: &str| fit["merged"][table].as_u64().unwrap_or(0);
    ensure!(
        merged("sentry_filtervalue") > 0,
        "fit.merged in dumps/report.json merged no sentry_filtervalue row, yet the rehearsal sent tag values sharing their first 200 characters: {}",
        fit["merged"]
    );
    Ok(())
}

/// One line: the fitted values per kind and column, and the merged rows per table.
fn fit_summary(fit: &serde_json::Value) -> String {
    let mut kinds: BTreeMap<String, u64> = BTreeMap::new();
    let mut columns: BTreeMap<String, u64> = BTreeMap::new();
    let changes = fit["changes"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    for change in changes {
        let text = |key: &str| change[key].as_str().unwrap_or("?").to_string();
        *kinds.entry(text("kind")).or_default() += 1;
        *columns
            .entry(format!("{}.{}", text("table"), text("column")))
            .or_default() += 1;
    }
    let list = |map: &BTreeMap<String, u64>| {
        map.iter()
            .map(|(name, n)| format!("{name} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let merged: BTreeMap<String, u64> = fit["merged"]
        .as_object()
        .map(|map| {
            map.iter()
                .map(|(table, n)| (table.clone(), n.as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default();
    format!(
        "fitted values: {} ({}) in {}; merged rows: {}",
        changes.len(),
        list(&kinds),
        list(&columns),
        if merged.is_empty() {
            "none".to_string()
        } else {
            list(&merged)
        }
    )
}

fn dsn_list(value: &serde_json::Value) -> Result<Vec<(i64, String)>> {
    value["dsns"]
        .as_array()
        .context("the seed script printed no dsns")?
        .iter()
        .map(|d| {
            Ok((
                d["project_id"].as_i64().context("no project_id")?,
                d["dsn"].as_str().context("no dsn")?.to_string(),
            ))
        })
        .collect()
}

fn seed_sentry4(
    sh: &Shell,
    root: &Path,
    logs: &Path,
    events: u64,
    buildout_cfg: &str,
    strictness: Strictness,
    bad_values: bool,
) -> Result<Seeded> {
    let log = logs.join("sentry4.log");
    log_run(
        cmd!(
            sh,
            "bin/buildout -c {buildout_cfg} buildout:directory={root}"
        ),
        &log,
    )
    .with_context(|| format!("bin/buildout -c {buildout_cfg} failed"))?;
    let config = Config::new(root, None, None, |_| None)?;
    settings::switch(crate::flags::DbKind::Sqlite, &config)?;
    log_run(
        cmd!(
            sh,
            "bin/sentry --config=settings/settings.py upgrade --noinput"
        ),
        &log,
    )?;
    let port = util::free_port()?;
    let accounts = seed(sh, &log, "accounts", port)?;
    let dsns = dsn_list(&accounts)?;
    let urls: Vec<String> = dsns.iter().map(|(_, dsn)| dsn.clone()).collect();
    let stored = send_events(
        sh,
        root,
        logs,
        &urls,
        Batch {
            port,
            events,
            tag: "a",
            web_log: "sentry4-web.log",
        },
    )?;
    // raven reports nothing when Sentry refuses an event: count what was stored, per project.
    let total: u64 = dsns
        .iter()
        .map(|(project, _)| stored.get(project).copied().unwrap_or(0))
        .sum();
    match strictness {
        Strictness::AllStored => {
            for (index, (project, _)) in dsns.iter().enumerate() {
                let expected = (0..events)
                    .filter(|n| (*n as usize) % dsns.len() == index)
                    .count() as u64;
                let got = stored.get(project).copied().unwrap_or(0);
                ensure!(got == expected, "Sentry 4 stored {got} events for project {project}, {expected} were sent: see {}", logs.join("sentry4-web.log").display());
            }
        }
        Strictness::SomeStored => ensure!(
            total > 0,
            "Sentry stored none of the {events} events: see {}",
            logs.join("sentry4-web.log").display()
        ),
    }
    // Before `finish`, which deletes a project key.
    let bad = if bad_values {
        Some(send_bad_values(sh, root, logs, &dsns, port, "a")?)
    } else {
        None
    };
    let finish = seed(sh, &log, "finish", port)?;
    println!(
        "    sent {events} events over HTTP to {} projects; Sentry stored {total}; {}",
        dsns.len(),
        finish
    );
    let total = total + bad.as_ref().map_or(0, |bad| bad.events);
    let first = &accounts["dsns"][0];
    let state = serde_json::json!({
        "login": accounts["login"],
        "team": first["team"],
        "project": first["slug"],
        "project_id": first["project_id"],
        "dsn": first["dsn"],
        "expect": "rehearsal message",
    });
    Ok(Seeded {
        state,
        events: total,
        bad,
    })
}

/// The long-lived install's second life: tag 1 over the same SQLite file (`upgrade --noinput`
/// in place, as such installs were upgraded), then more users, projects and events under 4.10.
/// Returns the events with values PostgreSQL refuses it sent to Sentry 4.10.
fn more_data_after_upgrade(sh: &Shell, root: &Path, logs: &Path, events: u64) -> Result<BadValues> {
    let log = logs.join("sentry4.log");
    log_run(
        cmd!(
            sh,
            "bin/buildout -c buildout/tag1-sentry4.cfg buildout:directory={root}"
        ),
        &log,
    )
    .context("bin/buildout for tag 1 failed")?;
    log_run(
        cmd!(
            sh,
            "bin/sentry --config=settings/settings.py upgrade --noinput"
        ),
        &log,
    )
    .context("the in-place upgrade to Sentry 4.10 failed")?;
    let before: u64 = stored_events(root)?.values().sum();
    let port = util::free_port()?;
    let more = seed(sh, &log, "more", port)?;
    let dsns = dsn_list(&more)?;
    let urls: Vec<String> = dsns.iter().map(|(_, dsn)| dsn.clone()).collect();
    let stored = send_events(
        sh,
        root,
        logs,
        &urls,
        Batch {
            port,
            events,
            tag: "new",
            web_log: "sentry4.10-web.log",
        },
    )?;
    let after: u64 = stored.values().sum();
    ensure!(
        after > before,
        "Sentry 4.10 stored none of the {events} new events: see {}",
        logs.join("sentry4.10-web.log").display()
    );
    // Every project, the new ones too: their values differ per project, so the stale index
    // refuses none of them.
    let bad = send_bad_values(sh, root, logs, &dsns, port, "new")?;
    let finish = seed(sh, &log, "finish", port)?;
    println!(
        "    upgraded in place to 4.10; sent {events} more events to {} projects, Sentry stored {} (the stale SQLite-only index rejects the rest); {}",
        urls.len(),
        after - before,
        finish
    );
    Ok(bad)
}

fn max_id(client: &mut postgres::Client, table: &str) -> Result<i64> {
    let sql = format!(
        "SELECT COALESCE(MAX(id), 0)::bigint FROM {}",
        crate::ident::Ident::new("table name", table)?
    );
    Ok(client.query_one(&sql, &[])?.get(0))
}

/// The pinned selenium and its dependencies for `browse.py`.
const BROWSER_REQUIREMENTS: &str = "xtask/python/rehearse/browser-requirements.txt";

/// Sentry 6 as a person sees it, in headless Chromium (`browse.py`): log in with the migrated
/// password; the project's stream lists migrated events and its first group's page renders
/// them; a project whose groups were last seen weeks ago hides them on its default stream
/// (Sentry 6's 5 days) and the URL the report gives (`streams::SHOW_ALL_QUERY`) lists them.
/// No page may log a script error; a screenshot of each is kept in `logs/browser/`. With
/// `quiet_required`, the rehearsal's quiet group must be among the hidden ones.
fn look_in_browser(
    sh: &Shell,
    root: &Path,
    logs: &Path,
    browser: &provision::Browser,
    seeded: &Seeded,
    quiet_required: bool,
) -> Result<serde_json::Value> {
    let journal = Journal::load(&root.join("dumps/journal.json"))?
        .context("no dumps/journal.json after `migrate`")?;
    let mut pages = vec![serde_json::json!({
        "name": "stream",
        "path": format!("/{}/{}/", seeded.state["team"].as_str().unwrap_or_default(), seeded.state["project"].as_str().unwrap_or_default()),
        "expect": [seeded.state["expect"]],
        "open_first_group": true,
    })];
    let quiet = journal
        .streams
        .iter()
        .find(|stream| stream.hidden > 0 && stream.path.is_some());
    match (quiet, quiet_required) {
        (Some(stream), _) => {
            let path = stream.path.clone().unwrap_or_default();
            pages.push(serde_json::json!({
                "name": "stream-default-window",
                "path": path,
                "absent": [QUIET_MESSAGE],
            }));
            pages.push(serde_json::json!({
                "name": "stream-show-all",
                "path": stream.show_all(),
                "expect": [QUIET_MESSAGE],
                "follow_pages": true,
            }));
        }
        (None, true) => bail!(
            "the report counts no project whose stream hides groups, but the rehearsal sent events dated 30 days ago ({QUIET_MESSAGE}…): streams {:?}",
            journal.streams
        ),
        (None, false) => {}
    }
    let shots = logs.join("browser");
    let facts = browse(sh, root, logs, browser, &seeded.state["login"], &pages)?;
    let shown: Vec<&str> = pages
        .iter()
        .filter_map(|page| page["name"].as_str())
        .collect();
    println!(
        "    in headless Chromium: logged in, {} without a script error{}; screenshots in {}",
        shown.join(", "),
        if quiet.is_some() {
            ": the quiet group hidden on the default stream, listed with ?df="
        } else {
            ""
        },
        shots.display()
    );
    Ok(facts)
}

/// Runs `browse.py` in headless Chromium against Sentry 6 started for it: logs in as `login`
/// (`{"username", "password"}`, written only to a 0600 file, removed after) and looks at
/// `pages` (see browse.py). Fails unless every page showed what it should without a script
/// error; the screenshots stay in `logs/browser/`.
pub(crate) fn browse(
    sh: &Shell,
    root: &Path,
    logs: &Path,
    browser: &provision::Browser,
    login: &serde_json::Value,
    pages: &[serde_json::Value],
) -> Result<serde_json::Value> {
    let state = serde_json::json!({ "login": login, "pages": pages });
    let state_path = root.join("browse-state.json");
    util::write_atomic(
        &state_path,
        serde_json::to_string(&state)?.as_bytes(),
        0o600,
    )?;
    let shots = logs.join("browser");
    let port = util::free_port()?;
    let out = {
        let _server = sentry6_server(sh, port, &logs.join("sentry6-web-browser.log"))?;
        let base = format!("http://127.0.0.1:{port}");
        let python = &browser.python;
        log_run(
            cmd!(
                sh,
                "{python} xtask/python/rehearse/browse.py {base} {state_path} {shots}"
            )
            // Python 2.7's private libraries are not Chromium's.
            .env_remove("LD_LIBRARY_PATH")
            .env("CHROMIUM", &browser.chromium)
            .env("CHROMEDRIVER", &browser.chromedriver),
            &logs.join("browser.log"),
        )
    };
    let _ = fs::remove_file(&state_path);
    let facts: serde_json::Value = serde_json::from_str(out?.trim())
        .context("browse.py printed no JSON (see logs/browser.log)")?;
    ensure!(
        facts["ok"] == true,
        "Sentry 6 in a real browser: a page did not show what it should or logged a script error (screenshots in {}): {facts}",
        shots.display()
    );
    Ok(facts)
}

/// The text of the rehearsal's quiet group (send_events.py), dated 30 days before the cut-over.
const QUIET_MESSAGE: &str = "quiet message";

fn prove_sentry6(
    sh: &Shell,
    root: &Path,
    logs: &Path,
    cluster: &PgCluster,
    seeded: &Seeded,
) -> Result<serde_json::Value> {
    let mut client = cluster.client("sentry")?;
    let events_before: i64 = client
        .query_one("SELECT count(*) FROM sentry_message", &[])?
        .get(0);
    ensure!(
        events_before as u64 >= seeded.events,
        "PostgreSQL has {events_before} events, {} were sent to Sentry 4",
        seeded.events
    );
    let max_event = max_id(&mut client, "sentry_message")?;
    let max_project = max_id(&mut client, "sentry_project")?;
    let state_path = root.join("prove-state.json");
    fs::write(&state_path, serde_json::to_string(&seeded.state)?)?;
    let facts = prove_on_sentry6(sh, logs, "prove.py", &state_path)?;
    ensure!(
        facts["login_ok"] == true,
        "a migrated user could not log in to Sentry 6 with the old password: {facts}"
    );
    ensure!(
        facts["stream_ok"] == true,
        "Sentry 6's event stream does not list the migrated events: {facts}"
    );
    let age = facts["newest_event_age_seconds"]
        .as_i64()
        .context(format!("prove.py gave no age of the newest event: {facts}"))?;
    ensure!(
        (-60..=30 * 60).contains(&age),
        "Sentry 6 dates the newest migrated event {age} s ago, but it was sent minutes ago: the dates were read in the wrong zone ({facts})"
    );
    let new_event = facts["new_event_id"].as_i64().context(format!(
        "a new event sent to Sentry 6 was not stored (abstime?): {facts}"
    ))?;
    ensure!(
        new_event > max_event,
        "the new event got id {new_event}, not past the migrated maximum {max_event}"
    );
    let new_project = facts["new_project_id"]
        .as_i64()
        .context("no new project id")?;
    ensure!(
        new_project == max_project + 1,
        "a new project got id {new_project}, expected {}",
        max_project + 1
    );
    let events_after: i64 = client
        .query_one("SELECT count(*) FROM sentry_message", &[])?
        .get(0);
    ensure!(
        events_after == events_before + 1,
        "events went from {events_before} to {events_after}, expected one more"
    );
    println!(
        "    Sentry 6: login ok, migrated events listed, the newest dated {age} s ago, new event id {new_event} > {max_event}, new project id {new_project}"
    );
    Ok(facts)
}

fn print_summary(
    root: &Path,
    phases: &Phases,
    facts: &serde_json::Value,
    total: Duration,
) -> Result<()> {
    let report_path = root.join("dumps/report.json");
    // The report is the journal with a header: read it back as one.
    let report: Journal = serde_json::from_str(&fs::read_to_string(&report_path)?)
        .with_context(|| format!("{} is not a report of this tool", report_path.display()))?;
    println!("\nRehearsal summary");
    for (name, checks) in &report.checks {
        let tally = verify::tally(checks);
        println!(
            "  {name:<22} {:>3} tables: {:>3} equal, {:>3} intended/not carried over, {} different",
            tally.tables,
            tally.equal,
            tally.intended + tally.not_carried_over,
            tally.differs
        );
    }
    let rows: u64 = report.postgres_counts.values().sum();
    println!("  rows compared after the load: {rows}; proof: {facts}");
    println!("  {}", fit_summary(&read_report(root)?["fit"]));
    for (name, elapsed) in &phases.done {
        println!("  {name:<40} {:>8}", util::human_duration(*elapsed));
    }
    println!("  {:<40} {:>8}", "total", util::human_duration(total));
    println!("  servers: PostgreSQL and both Sentry web servers stopped; no process left in the scratch folder");
    Ok(())
}

/// A scratch install with a seeded Sentry 4 db (see [`seeded_install`]).
pub(crate) struct SeededInstall {
    /// The toolchain's environment for the install's programs.
    pub env: Vec<(&'static str, String)>,
    /// The zone its Sentry 4 wrote its dates in.
    pub zone: &'static str,
}

/// For `cargo xtask bench`: a scratch install at `root` (this repo's files, tag 1 built) with a
/// Sentry 4.10 db seeded over HTTP exactly as the plain rehearsal seeds it, values PostgreSQL
/// refuses included, its dates in [`REHEARSAL_ZONE`]. Returns the toolchain's environment for
/// the install's programs and the zone.
pub(crate) fn seeded_install(
    repo: &Path,
    cache: Option<&Path>,
    root: &Path,
    events: u64,
) -> Result<SeededInstall> {
    let logs = root.join("logs");
    fs::create_dir_all(&logs)?;
    let sh = Shell::new()?;
    sh.change_dir(root);
    let cache = cache.map(Path::to_path_buf).unwrap_or_else(default_cache);
    let toolchain = provision::toolchain(&sh, &cache, &logs)?;
    copy_repo_files(repo, root, Some(REHEARSAL_ZONE))?;
    provision::bootstrap(&sh, &toolchain, root, &logs)?;
    let env = toolchain.env();
    for (key, value) in &env {
        sh.set_var(key, value);
    }
    stop_servers_on_interrupt(root)?;
    seed_sentry4(
        &sh,
        root,
        &logs,
        events,
        "buildout/tag1-sentry4.cfg",
        Strictness::AllStored,
        true,
    )?;
    Ok(SeededInstall {
        env,
        zone: REHEARSAL_ZONE,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(table: &str, column: &str, kind: &str) -> serde_json::Value {
        serde_json::json!({"table": table, "id": 1, "column": column, "kind": kind, "detail": ""})
    }

    fn fit(changes: Vec<serde_json::Value>, merged: serde_json::Value) -> serde_json::Value {
        serde_json::json!({"changes": changes, "merged": merged})
    }

    fn complete() -> Vec<serde_json::Value> {
        vec![
            change("sentry_message", "server_name", "too-long"),
            change("sentry_message", "site", "too-long"),
            change("sentry_messagefiltervalue", "value", "too-long"),
            change("sentry_message", "message", "nul"),
            change("sentry_groupedmessage", "message", "nul"),
        ]
    }

    #[test]
    fn a_fit_covering_every_kind_sent_passes_and_is_summed_up() {
        let fit = fit(
            complete(),
            serde_json::json!({"sentry_filtervalue": 8, "sentry_messagefiltervalue": 8}),
        );
        check_fit(&fit).unwrap();
        assert_eq!(
            fit_summary(&fit),
            "fitted values: 5 (nul 2, too-long 3) in sentry_groupedmessage.message 1, \
             sentry_message.message 1, sentry_message.server_name 1, sentry_message.site 1, \
             sentry_messagefiltervalue.value 1; merged rows: sentry_filtervalue 8, \
             sentry_messagefiltervalue 8"
        );
    }

    #[test]
    fn a_fit_missing_a_column_or_the_merge_fails() {
        let merged = serde_json::json!({"sentry_filtervalue": 2});
        let mut changes = complete();
        changes.retain(|c| c["column"] != "site");
        let err = check_fit(&fit(changes, merged.clone())).unwrap_err();
        assert!(err.to_string().contains("sentry_message.site"), "{err}");
        let mut changes = complete();
        changes.retain(|c| c["kind"] != "nul" || c["table"] != "sentry_message");
        let err = check_fit(&fit(changes, merged)).unwrap_err();
        assert!(err.to_string().contains("`nul`"), "{err}");
        let err = check_fit(&fit(complete(), serde_json::json!({}))).unwrap_err();
        assert!(
            err.to_string().contains("merged no sentry_filtervalue"),
            "{err}"
        );
        assert!(check_fit(&serde_json::json!(null)).is_err());
        assert_eq!(
            fit_summary(&serde_json::json!(null)),
            "fitted values: 0 () in ; merged rows: none"
        );
    }
}
