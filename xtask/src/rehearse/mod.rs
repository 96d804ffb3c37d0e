//! `cargo xtask rehearse`: the whole migration on the real stack, end to end. Provisions Python
//! 2.7 + buildout (cached) and a throwaway PostgreSQL, makes a real Sentry 4 install with real
//! events sent over HTTP, runs `cargo xtask migrate` on it exactly as a user would, and proves
//! Sentry 6 works on the result. Nothing here is used by `migrate`.

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

/// Runs `cmd` with stdin closed, appending its stdout and stderr to `log`; returns stdout.
/// On failure the error names the command and the log, with its last lines.
pub(crate) fn log_run(cmd: Cmd<'_>, log: &Path) -> Result<String> {
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
struct Scratch {
    path: PathBuf,
    keep: bool,
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
}

impl flags::Rehearse {
    pub fn run(self, sh: &Shell) -> Result<()> {
        let repo = sh.current_dir();
        let events = self.events.unwrap_or(200);
        ensure!(
            events >= 8,
            "--events must be at least 8 (two of each kind per project)"
        );
        let cache = self.cache.clone().unwrap_or_else(default_cache);
        let path =
            std::env::temp_dir().join(format!("sentry-migrate-rehearsal-{}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(path.join("logs"))?;
        // `migrate` runs as this very binary, copied: a `cargo build` while the rehearsal runs
        // replaces target/debug/xtask, and the running one's path then names a deleted file.
        let exe = path.join(".rehearsal-xtask");
        fs::copy(std::env::current_exe()?, &exe)
            .with_context(|| format!("cannot copy this binary to {}", exe.display()))?;
        let mut scratch = Scratch {
            path: path.clone(),
            keep: self.keep,
        };
        println!(
            "rehearsal in {} (cache {})",
            path.display(),
            cache.display()
        );
        let started = Instant::now();
        stop_servers_on_interrupt(&path)?;
        let mut phases = Phases {
            total: if self.long_lived { 6 } else { 5 },
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

    let toolchain = phases.run("provision", || {
        let toolchain = provision::toolchain(&sh, cache, &logs)?;
        copy_repo_files(repo, root)?;
        provision::bootstrap(&sh, &toolchain, root, &logs)?;
        Ok(toolchain)
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

    let seeded = if long_lived {
        let seeded = phases.run("sentry4.0-install-and-data", || {
            seed_sentry4(
                &sh,
                root,
                &logs,
                events,
                "buildout/tag0-sentry4.0.cfg",
                Strictness::SomeStored,
            )
        })?;
        phases.run("upgrade-in-place-to-4.10-and-more-data", || {
            more_data_after_upgrade(&sh, root, &logs, events)
        })?;
        seeded
    } else {
        phases.run("sentry4-install-and-data", || {
            seed_sentry4(
                &sh,
                root,
                &logs,
                events,
                "buildout/tag1-sentry4.cfg",
                Strictness::AllStored,
            )
        })?
    };

    phases.run("migrate", || {
        // The same binary and code path a user runs: `cargo xtask migrate` on this checkout.
        cmd!(sh, "{exe} migrate")
            .env("SENTRY_MIGRATE_ROOT", root)
            .envs(pg_env.clone())
            .run()
            .context("`cargo xtask migrate` failed")
    })?;

    let facts = phases.run("prove-sentry6", || {
        prove_sentry6(&sh, root, &logs, &cluster, &seeded)
    })?;
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
fn copy_repo_files(repo: &Path, root: &Path) -> Result<()> {
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
        "xtask/python/rehearse/serve.py",
        "xtask/python/rehearse/prove.py",
    ] {
        fs::copy(repo.join(file), root.join(file))
            .with_context(|| format!("cannot copy {file} into the scratch repo"))?;
    }
    // The scratch install sends no mail (Sentry mails on every new event).
    let mut settings = fs::OpenOptions::new()
        .append(true)
        .open(root.join("settings/settings.py"))?;
    writeln!(settings, "\n# Rehearsal only: no mail leaves this machine.\nEMAIL_BACKEND = 'django.core.mail.backends.locmem.EmailBackend'")?;
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
    let finish = seed(sh, &log, "finish", port)?;
    println!(
        "    sent {events} events over HTTP to {} projects; Sentry stored {total}; {}",
        dsns.len(),
        finish
    );
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
    })
}

/// The long-lived install's second life: tag 1 over the same SQLite file (`upgrade --noinput`
/// in place, as such installs were upgraded), then more users, projects and events under 4.10.
fn more_data_after_upgrade(sh: &Shell, root: &Path, logs: &Path, events: u64) -> Result<()> {
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
    let urls: Vec<String> = dsn_list(&more)?.into_iter().map(|(_, dsn)| dsn).collect();
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
    let finish = seed(sh, &log, "finish", port)?;
    println!(
        "    upgraded in place to 4.10; sent {events} more events to {} projects, Sentry stored {} (the stale SQLite-only index rejects the rest); {}",
        urls.len(),
        after - before,
        finish
    );
    Ok(())
}

fn max_id(client: &mut postgres::Client, table: &str) -> Result<i64> {
    let sql = format!(
        "SELECT COALESCE(MAX(id), 0)::bigint FROM {}",
        crate::config::quote_identifier(table)
    );
    Ok(client.query_one(&sql, &[])?.get(0))
}

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
    let port = util::free_port()?;
    let facts = {
        let _server = sentry6_server(sh, port, &logs.join("sentry6-web.log"))?;
        let base = format!("http://127.0.0.1:{port}");
        log_run(
            cmd!(
                sh,
                "bin/py xtask/python/rehearse/prove.py settings/settings.py {base} {state_path}"
            ),
            &logs.join("sentry6.log"),
        )?
    };
    let facts: serde_json::Value =
        serde_json::from_str(facts.trim()).context("prove.py printed no JSON")?;
    ensure!(
        facts["login_ok"] == true,
        "a migrated user could not log in to Sentry 6 with the old password: {facts}"
    );
    ensure!(
        facts["stream_ok"] == true,
        "Sentry 6's event stream does not list the migrated events: {facts}"
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
        "    Sentry 6: login ok, migrated events listed, new event id {new_event} > {max_event}, new project id {new_project}"
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
    for (name, elapsed) in &phases.done {
        println!("  {name:<40} {:>8}", util::human_duration(*elapsed));
    }
    println!("  {:<40} {:>8}", "total", util::human_duration(total));
    println!("  servers: PostgreSQL and both Sentry web servers stopped; no process left in the scratch folder");
    Ok(())
}
