//! The harness the integration tests share: a scratch buildout repo with the recording fake in
//! bin/ and a unique PostgreSQL database (`Repo`), a small Sentry 4 db, snapshots, the fault
//! helpers (kill at a step, tmpfs, a full disk) and the report's facts.
// Each test binary uses part of the harness.
#![allow(dead_code)]

pub use std::{
    collections::BTreeMap,
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

pub use xtask::pgcluster::testing::{skip, TestDb};

pub mod hold;

/// Processes a test started to hold the SQLite db open; killed and reaped by the test.
pub static HOLDERS: std::sync::Mutex<Vec<std::process::Child>> = std::sync::Mutex::new(Vec::new());

/// A scratch buildout repo with a Sentry 4 SQLite db, fakes in bin/, and its own target db name.
pub struct Repo {
    pub root: PathBuf,
    pub db: TestDb,
    pub target: String,
    /// Removes `root` when the test ends.
    pub _scratch: tempfile::TempDir,
}

impl Repo {
    pub fn new(tag: &str) -> Repo {
        let scratch = tempfile::Builder::new()
            .prefix(&format!("sentry-migrate-repo-{tag}-"))
            .tempdir()
            .unwrap();
        let root = scratch.path().to_path_buf();
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        for dir in [
            "bin",
            "var",
            "dumps",
            "settings",
            "buildout",
            "xtask/python",
        ] {
            fs::create_dir_all(root.join(dir)).unwrap();
        }
        for file in [
            "settings/settings.py",
            "buildout/tag1-sentry4.cfg",
            "buildout/tag2-sentry6.cfg",
            "xtask/python/sentry_helper.py",
            "xtask/python/merge_dupe_groups.sql",
        ] {
            fs::copy(source.join(file), root.join(file)).unwrap();
        }
        // The install's own settings: the zone its Sentry 4 wrote dates in.
        fs::write(root.join("settings/sentry_conf.py"), "TIME_ZONE = 'UTC'\n").unwrap();
        let fake = root.join("bin/buildout");
        fs::copy(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fake/fake_sentry.py"),
            &fake,
        )
        .unwrap();
        fs::set_permissions(&fake, fs::Permissions::from_mode(0o755)).unwrap();
        make_sentry4_db(&root.join("var/sentry.db"), 62);
        let db = TestDb::new(tag);
        // The database the migration creates: unique per test, dropped with `db`.
        let target = format!("{}_target", db.name);
        Repo {
            root,
            db,
            target,
            _scratch: scratch,
        }
    }

    pub fn xtask(&self, args: &[&str], fail: Option<&str>) -> Output {
        let out = self.command(args, fail).output().unwrap();
        Output {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// The `xtask` command on this repo, with the fake's and PostgreSQL's environment.
    pub fn command(&self, args: &[&str], fail: Option<&str>) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_xtask"));
        cmd.args(args)
            .env("SENTRY_MIGRATE_ROOT", &self.root)
            .env("FAKE_CALLS", self.root.join("calls.log"))
            .env_remove("FAKE_FAIL")
            .env_remove("RUST_BACKTRACE");
        for (key, value) in self.db.cluster.env(
            &self.db.cluster.superuser,
            &self.db.cluster.password,
            &self.target,
        ) {
            cmd.env(key, value);
        }
        if let Some(fail) = fail {
            cmd.env("FAKE_FAIL", fail);
        }
        cmd
    }

    pub fn calls(&self) -> Vec<String> {
        fs::read_to_string(self.root.join("calls.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    pub fn target_client(&self) -> postgres::Client {
        self.db.cluster.admin_client(&self.target)
    }

    pub fn target_exists(&self) -> bool {
        let mut admin = self.db.cluster.admin_client("postgres");
        !admin
            .query(
                "SELECT 1 FROM pg_database WHERE datname = $1",
                &[&self.target],
            )
            .unwrap()
            .is_empty()
    }
}

impl Drop for Repo {
    fn drop(&mut self) {
        let mut admin = self.db.cluster.admin_client("postgres");
        let _ = admin.batch_execute(&format!(
            "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
            self.target
        ));
    }
}

#[derive(Debug)]
pub struct Output {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

/// A small Sentry 4 db: users in groups, projects with ids that have gaps, events, duplicate
/// groups (which Sentry 6 merges), bookmarks, a view, and Django 1.3's leftover `auth_message`.
pub fn make_sentry4_db(path: &Path, migration: u32) {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.execute_batch(&format!(
        "CREATE TABLE auth_group (id integer PRIMARY KEY, name text);
         CREATE TABLE auth_user (id integer PRIMARY KEY, username text);
         CREATE TABLE auth_user_groups (id integer PRIMARY KEY, user_id integer, group_id integer);
         CREATE TABLE auth_message (id integer PRIMARY KEY, message text);
         CREATE TABLE sentry_project (id integer PRIMARY KEY, name text);
         CREATE TABLE sentry_projectkey (id integer PRIMARY KEY, project_id integer);
         CREATE TABLE sentry_groupedmessage (id integer PRIMARY KEY, project_id integer, checksum text, times_seen integer);
         CREATE TABLE sentry_groupbookmark (id integer PRIMARY KEY, group_id integer, user_id integer);
         CREATE TABLE sentry_messagecountbyminute (id integer PRIMARY KEY, group_id integer, date text, times_seen integer);
         CREATE TABLE sentry_message (id integer PRIMARY KEY, group_id integer, datetime datetime);
         CREATE TABLE sentry_view (id integer PRIMARY KEY, path text);
         CREATE TABLE south_migrationhistory (id integer PRIMARY KEY, app_name text, migration text);
         INSERT INTO auth_group VALUES (1, 'admins'), (2, 'devs');
         INSERT INTO auth_user VALUES (1, 'admin'), (2, 'zoë'), (5, 'o''brien');
         INSERT INTO auth_user_groups VALUES (1, 1, 1), (2, 2, 2), (3, 5, 2);
         INSERT INTO auth_message VALUES (1, 'old'), (2, 'older');
         INSERT INTO sentry_project VALUES (1, 'Sentry (Internal)'), (3, 'web'), (4, 'api');
         INSERT INTO sentry_projectkey VALUES (2, 1), (5, 3), (6, 4);
         -- Groups 1 and 2 are duplicates (same project and checksum), as old and new clients made them.
         INSERT INTO sentry_groupedmessage VALUES (1, 3, 'aaa', 2), (2, 3, 'aaa', 1), (7, 4, 'bbb', 2);
         INSERT INTO sentry_groupbookmark VALUES (1, 2, 1), (2, 7, 1);
         INSERT INTO sentry_messagecountbyminute VALUES (1, 1, '2013-01-01 10:00', 2), (2, 2, '2013-01-01 10:00', 1), (3, 7, '2013-01-01 10:01', 2);
         -- Naive times in the zone Sentry 4 ran with: winter, summer, the spring-forward gap, the fall-back fold.
         INSERT INTO sentry_message VALUES (1, 1, '2013-01-01 10:00:00'), (2, 1, '2013-07-01 10:00:00.250000'),
           (3, 2, '2013-03-10 02:30:00'), (9, 7, '2013-11-03 01:30:00'), (10, 7, NULL);
         INSERT INTO sentry_view VALUES (1, 'x');
         INSERT INTO south_migrationhistory VALUES (1, 'sentry', '0001_initial'), (2, 'sentry', '{migration:04}_last');"
    ))
    .unwrap();
}

/// Every file under `root` with its size and content hash (to prove a dry run wrote nothing).
pub fn snapshot(root: &Path) -> BTreeMap<PathBuf, (u64, Vec<u8>)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.insert(
                    path.clone(),
                    (
                        entry.metadata().unwrap().len(),
                        fs::read(&path).unwrap_or_default(),
                    ),
                );
            }
        }
    }
    out
}

/// Runs `migrate` after `spoil` and expects `message` on stderr, no panic, no Python stack.
pub fn expect_error(tag: &str, spoil: impl FnOnce(&Repo), fail: Option<&str>, message: &str) {
    expect_error_with(tag, &["migrate"], spoil, fail, message)
}

/// [`expect_error`] with the given arguments (`--engine loaddata` for its own failures).
pub fn expect_error_with(
    tag: &str,
    args: &[&str],
    spoil: impl FnOnce(&Repo),
    fail: Option<&str>,
    message: &str,
) {
    let repo = Repo::new(tag);
    spoil(&repo);
    let out = repo.xtask(args, fail);
    assert!(!out.ok, "{tag}: should fail: {out:#?}");
    assert!(
        out.stderr.contains(message),
        "{tag}: expected {message:?} in:\n{}",
        out.stderr
    );
    assert!(!out.stderr.contains("panicked"), "{tag}: {}", out.stderr);
    assert!(out.stderr.starts_with("error: "), "{tag}: {}", out.stderr);
}

/// Every directory and file under `dir` with its permission bits.
pub fn modes(dir: &Path) -> Vec<(PathBuf, u32, bool)> {
    let mut out = vec![(
        dir.to_path_buf(),
        fs::metadata(dir).unwrap().permissions().mode() & 0o777,
        true,
    )];
    for entry in fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        let meta = fs::symlink_metadata(&path).unwrap();
        if meta.is_dir() {
            out.extend(modes(&path));
        } else {
            out.push((path, meta.permissions().mode() & 0o777, false));
        }
    }
    out
}

/// Every file under `dir` (recursively).
pub fn files(dir: &Path) -> Vec<PathBuf> {
    snapshot(dir).into_keys().collect()
}

/// `snapshot` without the lock file, whose pid a run that takes the lock rewrites.
pub fn snapshot_but_lock(root: &Path) -> BTreeMap<PathBuf, (u64, Vec<u8>)> {
    let mut files = snapshot(root);
    files.remove(&root.join("dumps/migrate.lock"));
    files
}

/// The backup the journal recorded, as a path under the repo.
pub fn recorded_backup(repo: &Repo) -> PathBuf {
    let journal: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(repo.root.join("dumps/journal.json")).unwrap())
            .unwrap();
    repo.root.join(journal["backup"]["path"].as_str().unwrap())
}

/// Every table's rows as text, in a stable order, hashed: equal hashes, equal tables. The
/// tool's load marker (which names the step and its input) is left out.
pub fn table_hashes(client: &mut postgres::Client) -> BTreeMap<String, String> {
    let tables: Vec<String> = client
        .query(
            "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' AND tablename <> $1 ORDER BY 1",
            &[&xtask::pg::LOAD_MARKER_TABLE],
        )
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    client.batch_execute("SET TIME ZONE 'UTC'").unwrap();
    tables
        .into_iter()
        .map(|table| {
            let hash: String = client
                .query_one(
                    &format!("SELECT md5(coalesce(string_agg(t::text, E'\\n' ORDER BY t::text), '')) FROM \"{table}\" t"),
                    &[],
                )
                .unwrap()
                .get(0);
            (table, hash)
        })
        .collect()
}

/// What a finished run's report must hold whatever happened on the way (times aside): every
/// comparison, the rows per table at each phase, the backup's hash.
pub fn report_facts(repo: &Repo) -> serde_json::Value {
    let report: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(repo.root.join("dumps/report.json")).unwrap())
            .unwrap();
    serde_json::json!({
        "checks": report["checks"],
        "sqlite_counts": report["sqlite_counts"],
        "dump_rows": report["dump_rows"],
        "postgres_counts": report["postgres_counts"],
        "sentry6_counts": report["sentry6_counts"],
        "merged_groups": report["merged_groups"],
        "backup_sha256": report["backup"]["sha256"],
        "steps": report["steps"].as_array().unwrap().iter().map(|s| s["name"].clone()).collect::<Vec<_>>(),
    })
}

/// `migrate` in its own process group, as a terminal runs it; killed with `signal` (the whole
/// group, children included, as a closing terminal or a dropped SSH session does) once `ready`
/// says so.
pub fn kill_migrate_when(
    repo: &Repo,
    args: &[&str],
    slow: Option<&str>,
    signal: nix::sys::signal::Signal,
    ready: impl Fn(&Repo) -> bool,
) {
    let env: Vec<(&str, &str)> = slow.map(|slow| ("FAKE_SLOW", slow)).into_iter().collect();
    kill_migrate_with_env_when(repo, args, &env, signal, ready)
}

/// [`kill_migrate_when`] with `env` set for `migrate` (a fake's or the tool's test switch).
pub fn kill_migrate_with_env_when(
    repo: &Repo,
    args: &[&str],
    env: &[(&str, &str)],
    signal: nix::sys::signal::Signal,
    ready: impl Fn(&Repo) -> bool,
) {
    use std::os::unix::process::CommandExt;
    let mut cmd = repo.command(args, None);
    cmd.envs(env.iter().copied());
    let mut child = cmd
        .process_group(0)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while !ready(repo) {
        assert!(
            child.try_wait().unwrap().is_none(),
            "migrate ended before the moment to kill it"
        );
        assert!(started.elapsed().as_secs() < 60, "the moment never came");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let group = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::killpg(group, signal);
    child.wait().unwrap();
}

pub fn journal_has(repo: &Repo, step: &str) -> bool {
    fs::read_to_string(repo.root.join("dumps/journal.json"))
        .ok()
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        .is_some_and(|journal| {
            journal["steps"]
                .as_array()
                .is_some_and(|steps| steps.iter().any(|s| s["name"] == step))
        })
}

pub fn fault_matrix(args: &[&str], step_count: usize, in_the_middle: bool) {
    use nix::sys::signal::Signal;
    let reference = Repo::new("faultref");
    let original = fs::read(reference.root.join("var/sentry.db")).unwrap();
    let out = reference.xtask(args, None);
    assert!(out.ok, "{out:#?}");
    let expected = report_facts(&reference);
    let steps: Vec<String> = expected["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect();
    assert_eq!(steps.len(), step_count);

    let check = |repo: &Repo, fault: &str| {
        let out = repo.xtask(args, None);
        assert!(out.ok, "{fault}: the run after the fault failed: {out:#?}");
        assert_eq!(report_facts(repo), expected, "{fault}: a different result");
        assert_eq!(
            fs::read(repo.root.join("var/sentry.db")).unwrap(),
            original,
            "{fault}: the source changed"
        );
        let report: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(repo.root.join("dumps/report.json")).unwrap())
                .unwrap();
        let backup = repo.root.join(report["backup"]["path"].as_str().unwrap());
        assert_eq!(
            fs::read(backup).unwrap(),
            original,
            "{fault}: the backup differs"
        );
    };

    let mut faults = 0;
    // Right after each step (the last one's is a finished run).
    for step in &steps[..steps.len() - 1] {
        let repo = Repo::new("faultafter");
        kill_migrate_when(&repo, args, None, Signal::SIGKILL, |repo| {
            journal_has(repo, step)
        });
        check(&repo, &format!("SIGKILL after {step}"));
        faults += 1;
    }
    if !in_the_middle {
        assert_eq!(faults, step_count - 1);
        return;
    }
    // In the middle of the long programs.
    for (slow, call, signal) in [
        ("dump-rest", "dumpdata --exclude auth", Signal::SIGKILL),
        ("upgrade-pg", "upgrade --noinput", Signal::SIGHUP),
        ("load", " load ", Signal::SIGKILL),
        (
            "upgrade6",
            "buildout -c buildout/tag2-sentry6.cfg",
            Signal::SIGKILL,
        ),
    ] {
        let repo = Repo::new("faultmid");
        kill_migrate_when(&repo, args, Some(slow), signal, |repo| {
            let calls = repo.calls();
            match slow {
                // The PostgreSQL upgrade is the second `upgrade` call (the first is SQLite's).
                "upgrade-pg" => calls.iter().filter(|c| c.contains(call)).count() >= 2,
                // Sentry 6's upgrade is the call after tag 2's buildout.
                "upgrade6" => calls
                    .iter()
                    .position(|c| c.contains(call))
                    .is_some_and(|at| calls.len() > at + 1),
                _ => calls.iter().any(|c| c.contains(call)),
            }
        });
        check(&repo, &format!("{signal:?} in the middle of {slow}"));
        faults += 1;
    }
    assert_eq!(faults, 24);
}

/// The journal's recorded sha256 of the source, and the backup's.
pub fn recorded_hashes(repo: &Repo) -> (String, String) {
    let journal: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(repo.root.join("dumps/journal.json")).unwrap())
            .unwrap();
    (
        journal["source_sha256"].as_str().unwrap().to_string(),
        journal["backup"]["sha256"].as_str().unwrap().to_string(),
    )
}

/// A tmpfs mounted on `dir` for one test, unmounted when dropped. None (the test is skipped,
/// saying so) when not root: mounting needs it; CI runs as root.
pub struct Tmpfs {
    pub dir: PathBuf,
}

impl Tmpfs {
    pub fn mount(dir: &Path, options: &str) -> Option<Tmpfs> {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: mounting a tmpfs on {} needs root", dir.display());
            return None;
        }
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(
            status.success(),
            "mount -t tmpfs -o {options} on {}",
            dir.display()
        );
        Some(Tmpfs {
            dir: dir.to_path_buf(),
        })
    }

    pub fn remount(&self, options: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,{options}")])
            .arg(&self.dir)
            .status()
            .unwrap();
        assert!(status.success(), "remount {options}");
    }
}

/// Something else takes all the room on `dir`'s file system but `keep` bytes
/// (`dir/other-data`).
pub fn fill_all_but(dir: &Path, keep: u64) {
    let free = xtask::util::free_bytes(dir).unwrap();
    fs::write(dir.join("other-data"), vec![0u8; (free - keep) as usize]).unwrap();
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
    }
}

/// `n` more events in the repo's source db (ids from 100, group 7).
pub fn add_events(repo: &Repo, n: u32) {
    rusqlite::Connection::open(repo.root.join("var/sentry.db"))
        .unwrap()
        .execute_batch(&format!(
            "WITH RECURSIVE n(i) AS (SELECT 100 UNION ALL SELECT i + 1 FROM n WHERE i < {}) \
             INSERT INTO sentry_message SELECT i, 7, '2013-02-01 12:00:00' FROM n",
            99 + n
        ))
        .unwrap();
}
