//! `cargo xtask rehearse`: the whole migration on the real stack, end to end. Provisions Python
//! 2.7 + buildout (cached) and a throwaway PostgreSQL, makes a real Sentry 4 install with real
//! events sent over HTTP, runs `cargo xtask migrate` on it exactly as a user would, and proves
//! Sentry 6 works on the result. Nothing here is used by `migrate`.
//!
//! Among the events are a few with values Sentry 4 stores in SQLite but PostgreSQL refuses
//! (too long for their varchar, a NUL character): `migrate` must stop at `scan-values` before
//! touching PostgreSQL, and `migrate --fit-values` must fit them and migrate.
//!
//! Here: the command's entry, the phase runner, the scratch folder, and the order of the
//! phases; each phase's work lives in its own file (`seed`, `migrate`, `compare`, `prove`,
//! `sentry_own`, `rollback`, `summary`), `rehearse --db` in `own_db`.

mod compare;
mod cutover;
mod forecast;
mod migrate;
mod own_db;
mod prove;
mod prove_db;
mod provision;
mod rollback;
mod run;
mod seed;
pub(crate) mod sentry_own;
mod server;
mod summary;

use std::{
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{ensure, Context, Result};
use xshell::Shell;

use crate::{flags, journal::Journal, pgcluster::PgCluster, util};
use migrate::{check_instants, migrate_fitting_values};
use prove::{look_in_browser, prove_sentry6};
use provision::{copy_repo_files, BROWSER_REQUIREMENTS};
use rollback::{rollback_to_sentry4, sentry4_counts};
pub(crate) use run::log_run;
use seed::{more_data_after_upgrade, seed_plain_sentry4, seed_sentry4, Strictness, REHEARSAL_ZONE};
use summary::print_summary;

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

impl Scratch {
    /// A failed run's error, the folder kept for its logs and the message saying where they are.
    pub(crate) fn kept_after_failure(
        &mut self,
        err: anyhow::Error,
        what: &str,
        note: &str,
    ) -> anyhow::Error {
        self.keep = true;
        let path = self.path.display();
        err.context(format!(
            "{what} failed; every server it started is stopped; logs: {path}/logs and {path}/dumps/logs (kept{note})"
        ))
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
        // `migrate` runs as this very binary, copied.
        let exe = util::copy_of_this_binary(&path, ".rehearsal-xtask")?;
        println!(
            "rehearsal in {} (cache {})",
            path.display(),
            cache.display()
        );
        let started = Instant::now();
        stop_servers_on_interrupt(&path)?;
        ensure!(
            !(self.long_lived && self.hold_events),
            "--hold-events rehearses the cut-over on the plain install: not with --long-lived"
        );
        ensure!(
            self.hold_events || !self.shared_socket,
            "--shared-socket goes with --hold-events"
        );
        let mut phases = Phases {
            total: if self.hold_events { 4 } else { 6 },
            done: Vec::new(),
        };
        let result = rehearse(
            &repo,
            &cache,
            &path,
            &exe,
            events,
            Variant {
                long_lived: self.long_lived,
                hold_events: self.hold_events,
                shared_socket: self.shared_socket,
            },
            &mut phases,
        );
        // Every server is stopped by now (guards dropped, on success and on failure alike).
        let result = fail_on_leftovers(result, &processes_inside(&path));
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
            Err(err) => Err(scratch.kept_after_failure(err, "the rehearsal", "")),
        }
    }
}

/// Which rehearsal: the plain one, `--long-lived`, `--hold-events`.
#[derive(Clone, Copy)]
struct Variant {
    long_lived: bool,
    hold_events: bool,
    shared_socket: bool,
}

fn rehearse(
    repo: &Path,
    cache: &Path,
    root: &Path,
    exe: &Path,
    events: u64,
    variant: Variant,
    phases: &mut Phases,
) -> Result<serde_json::Value> {
    let Variant {
        long_lived,
        hold_events,
        shared_socket,
    } = variant;
    let logs = root.join("logs");
    let sh = Shell::new()?;
    sh.change_dir(root);

    let (toolchain, browser, raven_node) = phases.run("provision", || {
        let toolchain = provision::toolchain(&sh, cache, &logs)?;
        let browser = provision::browser(&sh, cache, &repo.join(BROWSER_REQUIREMENTS), &logs)?;
        let raven_node = if hold_events {
            Some(provision::raven_node(&sh, cache, &logs)?)
        } else {
            None
        };
        copy_repo_files(repo, root, Some(REHEARSAL_ZONE))?;
        provision::bootstrap(&sh, &toolchain, root, &logs)?;
        Ok((toolchain, browser, raven_node))
    })?;
    for (key, value) in toolchain.env() {
        sh.set_var(key, value);
    }

    // Stopped when it goes out of scope: at the end, or on the first failure.
    let cluster = phases.run("postgres", || throwaway_postgres(&sh, root))?;
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
            seed_plain_sentry4(&sh, root, &logs, events)
        })?;
        let bad = seeded
            .bad
            .take()
            .context("Sentry 4.10 was sent no events with values PostgreSQL refuses")?;
        (seeded, bad)
    };

    if let Some(raven_node) = raven_node {
        // The cut-over with clients sending throughout, instead of the proofs below.
        return phases.run("cut-over-holding-events", || {
            cutover::cut_over(
                &sh,
                root,
                exe,
                &pg_env,
                &cluster,
                &logs,
                &raven_node,
                &seeded,
                shared_socket,
            )
        });
    }

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
/// The rehearsal's PostgreSQL in `root/pg`, stopped on drop and on Ctrl-C.
fn throwaway_postgres(sh: &Shell, root: &Path) -> Result<PgCluster> {
    let mut cluster = PgCluster::start(sh, &root.join("pg"))?;
    cluster.stop_on_interrupt();
    Ok(cluster)
}

/// A run that left processes inside its scratch folder failed, whatever it returned.
fn fail_on_leftovers<T>(result: Result<T>, leftovers: &[(u32, String)]) -> Result<T> {
    match result {
        Ok(_) if !leftovers.is_empty() => {
            Err(anyhow::anyhow!("processes left running: {leftovers:?}"))
        }
        Err(err) if !leftovers.is_empty() => {
            Err(err.context(format!("and processes were left running: {leftovers:?}")))
        }
        other => other,
    }
}

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
    seed_plain_sentry4(&sh, root, &logs, events)?;
    Ok(SeededInstall {
        env,
        zone: REHEARSAL_ZONE,
    })
}
