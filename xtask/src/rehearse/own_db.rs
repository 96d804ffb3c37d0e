//! `cargo xtask rehearse --db PATH`: the dress rehearsal on a copy of the user's own database.
//! The source is only ever opened read-only, by SQLite's online backup API (safe while Sentry 4
//! runs); everything else happens in the scratch folder and a throwaway PostgreSQL: `migrate`
//! runs on the copy exactly as the real run will, Sentry 6 is proven on the result (see
//! `prove_db.rs`), and the figures become a forecast for the real run (see `forecast.rs`).

use std::{
    fs,
    io::{BufRead, BufReader},
    os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{bail, ensure, Context, Result};
use rusqlite::{backup::Backup, Connection};
use xshell::Shell;

use super::{
    default_cache,
    forecast::{shown_args, Forecast},
    processes_inside,
    prove_db::before,
    provision, stop_servers_on_interrupt, Phases, Scratch,
};
use crate::{flags, journal::Journal, util, verify};

/// The environment variable `--login USER`'s password is read from.
pub const PASSWORD_VAR: &str = "SENTRY_REHEARSE_PASSWORD";

/// Copies `source` to `dest` (created, mode 0600) with SQLite's online backup API. The source is
/// opened read-only: a running Sentry 4 may keep writing (a write during the copy makes SQLite
/// restart it, so the copy is always one consistent state of the db).
pub fn copy_online(source: &Path, dest: &Path) -> Result<()> {
    let from = crate::sqlite::open_read_only(source)?;
    from.busy_timeout(Duration::from_secs(60))?;
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dest)
        .with_context(|| format!("cannot create {}", dest.display()))?;
    let mut to = Connection::open(dest)?;
    Backup::new(&from, &mut to)
        .and_then(|backup| backup.run_to_completion(1024, Duration::from_millis(5), None))
        .with_context(|| {
            format!(
                "the online backup of {} to {} failed",
                source.display(),
                dest.display()
            )
        })?;
    Ok(())
}

/// What "untouched" means for the source: the same bytes and the same mtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint {
    pub sha256: String,
    pub mtime: SystemTime,
    pub bytes: u64,
}

pub fn fingerprint(path: &Path) -> Result<Fingerprint> {
    let meta = fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(Fingerprint {
        sha256: util::sha256_file(path)?,
        mtime: meta.modified()?,
        bytes: meta.len(),
    })
}

/// The repo files a scratch install needs, with the user's own tag configs and settings.
fn copy_into_scratch(args: &flags::Rehearse, repo: &Path, root: &Path) -> Result<()> {
    provision::copy_repo_files(repo, root, None)?;
    // Buildout configs `extends` their neighbours: every file in the folder of each.
    for config in [&args.tag1, &args.tag2].into_iter().flatten() {
        ensure!(
            config.is_relative(),
            "--tag1/--tag2 must be relative to the repo (as `migrate` takes them): {}",
            config.display()
        );
        let dir = config.parent().unwrap_or(Path::new(""));
        fs::create_dir_all(root.join(dir))?;
        for entry in fs::read_dir(repo.join(dir))
            .with_context(|| format!("cannot read {}", repo.join(dir).display()))?
        {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                fs::copy(entry.path(), root.join(dir).join(entry.file_name()))?;
            }
        }
        ensure!(
            root.join(config).is_file(),
            "{} does not exist",
            repo.join(config).display()
        );
    }
    let conf = args
        .sentry_conf
        .clone()
        .unwrap_or_else(|| repo.join("settings/sentry_conf.py"));
    if conf.exists() {
        let target = root.join("settings/sentry_conf.py");
        fs::copy(&conf, &target)
            .with_context(|| format!("cannot copy {} into the scratch repo", conf.display()))?;
        fs::set_permissions(&target, fs::Permissions::from_mode(0o600))?;
    }
    // `migrate` stops in preflight without a zone: say so now, before anything is provisioned.
    let zone = crate::zone::read(root);
    if let Some(problem) = zone.problem() {
        bail!(
            "{problem} (read from {}{})",
            conf.display(),
            if conf.exists() {
                ""
            } else {
                ", which does not exist"
            }
        );
    }
    println!(
        "    settings: {} (from {})",
        zone.describe(),
        conf.display()
    );
    Ok(())
}

/// `migrate`'s arguments as the real run takes them.
fn migrate_args(args: &flags::Rehearse) -> Vec<String> {
    let mut out = Vec::new();
    if args.fit_values {
        out.push("--fit-values".to_string());
    }
    for (flag, value) in [("--tag1", &args.tag1), ("--tag2", &args.tag2)] {
        if let Some(value) = value {
            out.push(flag.to_string());
            out.push(value.display().to_string());
        }
    }
    if let Some(engine) = &args.engine {
        out.push("--engine".to_string());
        out.push(engine.clone());
    }
    out
}

/// What the `migrate` child did: success, its wall time, its stderr, the peak RSS of its largest
/// process (itself or a descendant: GNU time's `%M`, from wait4's rusage).
struct MigrateRun {
    ok: bool,
    wall_secs: f64,
    stderr: String,
    peak_kib: Option<u64>,
}

fn run_migrate(
    root: &Path,
    exe: &Path,
    args: &[String],
    env: &[(String, String)],
) -> Result<MigrateRun> {
    let peak_file = root.join("logs/migrate-peak-rss");
    let time = Path::new("/usr/bin/time");
    let mut command = if time.exists() {
        let mut command = Command::new(time);
        command
            .arg("-f")
            .arg("%M")
            .arg("-o")
            .arg(&peak_file)
            .arg(exe);
        command
    } else {
        Command::new(exe)
    };
    command
        .arg("migrate")
        .args(args)
        .env("SENTRY_MIGRATE_ROOT", root)
        .envs(env.iter().cloned())
        .stdin(Stdio::null())
        .stderr(Stdio::piped());
    println!("    $ cargo xtask migrate{}", shown_args(args));
    let started = Instant::now();
    let mut child = command.spawn().context("cannot start `migrate`")?;
    let mut stderr = String::new();
    // Shown as it comes, and kept for the forecast.
    for line in BufReader::new(child.stderr.take().context("no stderr")?).lines() {
        let line = line.unwrap_or_default();
        eprintln!("{line}");
        stderr.push_str(&line);
        stderr.push('\n');
    }
    let status = child.wait()?;
    let peak_kib = fs::read_to_string(&peak_file)
        .ok()
        .and_then(|text| text.lines().last()?.trim().parse().ok());
    Ok(MigrateRun {
        ok: status.success(),
        wall_secs: started.elapsed().as_secs_f64(),
        stderr,
        peak_kib,
    })
}

/// The disk a folder's files take (blocks allocated), its subfolders included, symlinks not
/// followed.
fn tree_bytes(path: &Path) -> u64 {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return 0;
    };
    let own = meta.blocks() * 512;
    if !meta.is_dir() {
        return own;
    }
    own + fs::read_dir(path)
        .map(|dir| dir.flatten().map(|e| tree_bytes(&e.path())).sum::<u64>())
        .unwrap_or(0)
}

fn file_size(path: &Path) -> u64 {
    fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

impl flags::Rehearse {
    /// `rehearse --db PATH`.
    pub(super) fn run_on_db(&self, sh: &Shell, db: &Path) -> Result<()> {
        let repo = sh.current_dir();
        let source = repo.join(db);
        ensure!(
            source.is_file(),
            "{} does not exist (or is no file)",
            source.display()
        );
        ensure!(
            self.events.is_none() && !self.long_lived && self.keep_db.is_none(),
            "--events, --long-lived and --keep-db belong to the plain rehearsal, not to --db"
        );
        if self.login.is_some() {
            ensure!(
                std::env::var_os(PASSWORD_VAR).is_some_and(|v| !v.is_empty()),
                "--login needs the user's password in the environment variable {PASSWORD_VAR}"
            );
        }
        let untouched = fingerprint(&source)?;
        let cache = self.cache.clone().unwrap_or_else(default_cache);
        // A copy of the user's data lives here: theirs to read only (see `Scratch::new`).
        let mut scratch = Scratch::new("sentry-migrate-rehearsal-", self.keep)?;
        let path = scratch.path.clone();
        let exe = util::copy_of_this_binary(&path, ".rehearsal-xtask")?;
        println!(
            "dress rehearsal of {} in {} (cache {})",
            source.display(),
            path.display(),
            cache.display()
        );
        stop_servers_on_interrupt(&path)?;
        let mut phases = Phases {
            total: 5,
            done: Vec::new(),
        };
        let started = Instant::now();
        let result = self.rehearse_db(&repo, &source, &cache, &path, &exe, &mut phases);
        let leftovers = processes_inside(&path);
        // Whatever happened: is the source as it was?
        let after = fingerprint(&source)?;
        let source_line = if after == untouched {
            format!(
                "source untouched: {} sha256 {} and mtime unchanged",
                source.display(),
                &untouched.sha256[..16]
            )
        } else {
            format!(
                "WARNING: {} changed while the rehearsal ran (sha256 {} → {}, {} → {} bytes): the rehearsal only opened it read-only, so another program (a running Sentry 4?) wrote to it",
                source.display(),
                &untouched.sha256[..16],
                &after.sha256[..16],
                untouched.bytes,
                after.bytes
            )
        };
        let result = super::fail_on_leftovers(result, &leftovers);
        match result {
            Ok(go) => {
                for (name, elapsed) in &phases.done {
                    println!("  {name:<20} {:>8}", util::human_duration(*elapsed));
                }
                println!(
                    "  {:<20} {:>8}",
                    "total",
                    util::human_duration(started.elapsed())
                );
                println!("  {source_line}");
                println!("  servers: PostgreSQL and Sentry 6 stopped; no process left in the scratch folder");
                if self.keep && go {
                    println!(
                        "scratch kept: {} (it holds a copy of your data)",
                        path.display()
                    );
                }
                if !go {
                    scratch.keep = true;
                    bail!(
                        "the rehearsal says NO-GO: see the forecast above; logs: {}/logs and {}/dumps/logs (kept; it holds a copy of your data: remove it when done)",
                        path.display(),
                        path.display()
                    );
                }
                Ok(())
            }
            Err(err) => {
                println!("  {source_line}");
                Err(scratch.kept_after_failure(
                    err,
                    "the dress rehearsal",
                    "; it holds a copy of your data: remove it when done",
                ))
            }
        }
    }

    /// The phases; returns whether the forecast says go.
    fn rehearse_db(
        &self,
        repo: &Path,
        source: &Path,
        cache: &Path,
        root: &Path,
        exe: &Path,
        phases: &mut Phases,
    ) -> Result<bool> {
        let logs = root.join("logs");
        let sh = Shell::new()?;
        sh.change_dir(root);
        let copy = root.join("var/sentry.db");
        let copy_started = Instant::now();
        phases.run("copy-db", || {
            copy_into_scratch(self, repo, root)?;
            copy_online(source, &copy)?;
            crate::sqlite::check_integrity(&copy, true)?;
            let db = crate::sqlite::check_sentry4(&copy, 62)?;
            println!(
                "    copied {} with the online backup API ({}, {} tables, South at {:04}); integrity_check ok",
                source.display(),
                util::human_bytes(file_size(&copy)),
                db.tables,
                db.latest_migration
            );
            Ok(())
        })?;
        let copy_secs = copy_started.elapsed().as_secs_f64();
        let before = before(&copy)?;

        let (toolchain, browser) = phases.run("provision", || {
            let toolchain = provision::toolchain(&sh, cache, &logs)?;
            let browser = provision::browser(
                &sh,
                cache,
                &root.join(provision::BROWSER_REQUIREMENTS),
                &logs,
            )?;
            provision::bootstrap(&sh, &toolchain, root, &logs)?;
            Ok((toolchain, browser))
        })?;
        // The toolchain's variables (its libraries) and the target's, as `cargo xtask migrate`
        // would see them in the user's shell.
        let mut env: Vec<(String, String)> = Vec::new();
        for (key, value) in toolchain.env() {
            env.push((key.to_string(), value.clone()));
            sh.set_var(key, value);
        }
        let cluster = phases.run("postgres", || super::throwaway_postgres(&sh, root))?;
        let pg_env = cluster.env(&cluster.superuser, &cluster.password, "sentry");

        let args = migrate_args(self);
        env.extend(pg_env.iter().map(|(k, v)| (k.to_string(), v.clone())));
        let run = phases.run("migrate", || run_migrate(root, exe, &args, &env))?;
        let journal = Journal::load(&root.join("dumps/journal.json"))?.unwrap_or_default();
        let mut forecast = Forecast {
            source: source.display().to_string(),
            source_bytes: file_size(source),
            copy_secs,
            migrate_args: args,
            steps: journal
                .steps
                .iter()
                .map(|s| (s.name.clone(), s.elapsed_secs))
                .collect(),
            migrate_wall_secs: run.wall_secs,
            migrate_done: run.ok,
            dumps_bytes: fs::read_dir(root.join("dumps"))
                .map(|dir| {
                    dir.flatten()
                        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
                        .filter(|e| {
                            let name = e.file_name();
                            name != "journal.json" && name != "report.json"
                        })
                        .map(|e| file_size(&e.path()))
                        .sum()
                })
                .unwrap_or(0),
            fitted_bytes: file_size(&root.join("dumps/sentry-fitted.db")),
            tool_peak_kib: journal.tool_peak_rss_kib,
            children_peak_kib: run.peak_kib,
            mem_available_kib: util::meminfo_kib("MemAvailable"),
            fit_values: self.fit_values,
            scan: journal.value_scan.clone(),
            fit: journal.fit.clone(),
            time_zone: journal.time_zone.clone(),
            ..Forecast::default()
        };
        let dumps_dir = if repo.join("dumps").is_dir() {
            repo.join("dumps")
        } else {
            repo.to_path_buf()
        };
        let db_dir = source.parent().unwrap_or(Path::new("/"));
        forecast.free_beside_db = util::free_bytes(db_dir).ok();
        forecast.free_in_dumps = util::free_bytes(&dumps_dir).ok();
        let device = |path: &Path| fs::metadata(path).ok().map(|m| m.dev());
        forecast.same_filesystem = device(db_dir).is_some() && device(db_dir) == device(&dumps_dir);
        // Measured while the scratch folder is still here: its bytes count as free.
        let scratch_bytes = tree_bytes(root);
        if device(root) == device(db_dir) {
            forecast.scratch_beside_db = scratch_bytes;
        }
        if device(root) == device(&dumps_dir) {
            forecast.scratch_in_dumps = scratch_bytes;
        }
        for (name, checks) in &journal.checks {
            let t = verify::tally(checks);
            forecast.checks.push((
                name.clone(),
                t.tables,
                t.equal,
                t.intended + t.not_carried_over,
                t.differs,
            ));
        }
        if run.ok {
            let proof = phases.run("prove-sentry6", || {
                self.prove(&sh, root, &copy, &cluster, &before, &journal, &browser)
            });
            match proof {
                Ok((projects, login)) => {
                    forecast.projects = projects.0;
                    forecast.failures.extend(projects.1);
                    forecast.login = Some(login);
                }
                Err(err) => forecast.failures.push(format!("{err:#}")),
            }
            forecast.postgres_bytes = cluster
                .client("sentry")
                .and_then(
                    |mut c| Ok(c.query_one("SELECT pg_database_size('sentry')::bigint", &[])?),
                )
                .ok()
                .map(|row| row.get::<_, i64>(0) as u64);
        } else {
            let cause = run
                .stderr
                .lines()
                .find(|l| l.contains("failed"))
                .unwrap_or("")
                .trim()
                .trim_start_matches("error: ");
            forecast.failures.push(format!(
                "`cargo xtask migrate{}` failed on the copy: {cause}\n\n```\n{}\n```",
                shown_args(&forecast.migrate_args),
                util::text_tail(&run.stderr, 25)
            ));
        }
        let text = forecast.render();
        util::write_atomic(&root.join("rehearsal-forecast.md"), text.as_bytes(), 0o600)?;
        let kept = dumps_dir.join("rehearsal-forecast.md");
        util::write_atomic(&kept, text.as_bytes(), 0o600)?;
        println!("\n{text}");
        println!("forecast written to {}", kept.display());
        Ok(forecast.no_go().is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The copy of a db (while another connection holds it open and has written to it) is the
    /// same data, 0600; the source keeps its sha256 and mtime.
    #[test]
    fn the_online_copy_leaves_the_source_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("sentry.db");
        let writer = Connection::open(&source).unwrap();
        writer
            .execute_batch(
                "CREATE TABLE sentry_message (id integer PRIMARY KEY, message text);
                 WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 5000)
                 INSERT INTO sentry_message SELECT i, printf('event %d ✓', i) FROM n;",
            )
            .unwrap();
        // An old mtime, so a write during the test would show.
        let old = SystemTime::now() - Duration::from_secs(3600);
        fs::File::options()
            .write(true)
            .open(&source)
            .unwrap()
            .set_modified(old)
            .unwrap();
        let before = fingerprint(&source).unwrap();
        assert_eq!(before.mtime, old);

        let copy = dir.path().join("copy/sentry.db");
        fs::create_dir_all(copy.parent().unwrap()).unwrap();
        copy_online(&source, &copy).unwrap();

        assert_eq!(fingerprint(&source).unwrap(), before);
        assert_eq!(
            fs::metadata(&copy).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let conn = Connection::open(&copy).unwrap();
        let (count, text): (i64, String) = conn
            .query_row(
                "SELECT count(*), max(message) FROM sentry_message",
                [],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .unwrap();
        assert_eq!((count, text.as_str()), (5000, "event 999 ✓"));
        // It never overwrites a file.
        assert!(copy_online(&source, &copy).is_err());
        drop(writer);
        assert_eq!(fingerprint(&source).unwrap(), before);
    }
}
