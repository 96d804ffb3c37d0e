//! Orchestration tests: the real `xtask` binary on a scratch repo whose bin/buildout, bin/sentry
//! and bin/py are a recording fake (tests/fake/fake_sentry.py), against a real PostgreSQL.

use std::{
    collections::BTreeMap,
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

use xtask::pgcluster::testing::{skip, TestDb};

/// Processes a test started to hold the SQLite db open; killed and reaped by the test.
static HOLDERS: std::sync::Mutex<Vec<std::process::Child>> = std::sync::Mutex::new(Vec::new());

/// A scratch buildout repo with a Sentry 4 SQLite db, fakes in bin/, and its own target db name.
struct Repo {
    root: PathBuf,
    db: TestDb,
    target: String,
    /// Removes `root` when the test ends.
    _scratch: tempfile::TempDir,
}

impl Repo {
    fn new(tag: &str) -> Repo {
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

    fn xtask(&self, args: &[&str], fail: Option<&str>) -> Output {
        let out = self.command(args, fail).output().unwrap();
        Output {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// The `xtask` command on this repo, with the fake's and PostgreSQL's environment.
    fn command(&self, args: &[&str], fail: Option<&str>) -> Command {
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

    fn calls(&self) -> Vec<String> {
        fs::read_to_string(self.root.join("calls.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn target_client(&self) -> postgres::Client {
        self.db.cluster.admin_client(&self.target)
    }

    fn target_exists(&self) -> bool {
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
struct Output {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// A small Sentry 4 db: users in groups, projects with ids that have gaps, events, duplicate
/// groups (which Sentry 6 merges), bookmarks, a view, and Django 1.3's leftover `auth_message`.
fn make_sentry4_db(path: &Path, migration: u32) {
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
fn snapshot(root: &Path) -> BTreeMap<PathBuf, (u64, Vec<u8>)> {
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

#[test]
fn full_migration_verifies_every_phase_and_reports() {
    if skip() {
        return;
    }
    let repo = Repo::new("full");
    let out = repo.xtask(&["migrate", "--engine", "loaddata"], None);
    assert!(out.ok, "{out:#?}");
    for (index, step) in [
        "preflight",
        "backup-sqlite",
        "pg-load",
        "verify-postgres",
        "verify-sentry6",
    ]
    .iter()
    .enumerate()
    {
        let _ = index;
        assert!(
            out.stdout.contains(&format!("{step} … ok (")),
            "{step}: {}",
            out.stdout
        );
    }
    assert!(
        out.stdout.starts_with("[1/21] preflight … ok ("),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("next:   bin/sentry --config=settings/settings.py start --noupgrade"),
        "{}",
        out.stdout
    );

    // The runbook's commands, in the runbook's order; dumps go to files, not argv.
    let calls = repo.calls();
    let expected = [
        "buildout -c buildout/tag1-sentry4.cfg",
        "sentry --config=settings/settings.py upgrade --noinput",
        "sentry --config=settings/settings.py repair",
        "py xtask/python/sentry_helper.py --config=settings/settings.py models",
        "sentry --config=settings/settings.py dumpdata auth",
        "sentry --config=settings/settings.py dumpdata --exclude auth",
        "sentry --config=settings/settings.py upgrade --noinput",
        "py xtask/python/sentry_helper.py --config=settings/settings.py load dumps/dumpdata-auth.json dumps/dumpdata.json",
        "buildout -c buildout/tag2-sentry6.cfg",
        "sentry --config=settings/settings.py upgrade --noinput",
    ];
    assert_eq!(calls.len(), expected.len(), "{calls:#?}");
    for (call, want) in calls.iter().zip(expected) {
        assert!(call.starts_with(want), "{call} should start with {want}");
    }
    assert!(
        calls
            .iter()
            .all(|call| !call.contains(&repo.db.cluster.password)),
        "password on a command line: {calls:?}"
    );

    // PostgreSQL holds exactly the SQLite rows (demo project replaced, ids kept), then Sentry 6's deltas.
    let mut client = repo.target_client();
    let users: Vec<String> = client
        .query("SELECT username FROM auth_user ORDER BY id", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(users, ["admin", "zoë", "o'brien"]);
    let projects: Vec<i32> = client
        .query("SELECT id FROM sentry_project ORDER BY id", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(projects, [1, 3, 4]);
    let next: i32 = client
        .query_one(
            "INSERT INTO sentry_project (name) VALUES ('new') RETURNING id",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(next, 5, "the sequence is past the migrated ids");

    let report = fs::read_to_string(repo.root.join("dumps/report.md")).unwrap();
    assert!(
        report.contains("| auth_message | 2 | - | - | - |"),
        "{report}"
    );
    assert!(
        report.contains("only in SQLite (no Sentry 4 model uses it): 2 rows not carried over"),
        "{report}"
    );
    assert!(
        report.contains("| sentry_projectkey | 3 | 3 | 3 | 6 |"),
        "{report}"
    );
    assert!(
        report.contains("+3: Sentry 6 adds a key to each project (3 project(s))"),
        "{report}"
    );
    assert!(
        report.contains("table dropped: Sentry 6 drops views"),
        "{report}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(repo.root.join("dumps/report.json")).unwrap())
            .unwrap();
    assert_eq!(json["steps"].as_array().unwrap().len(), 21);
    assert_eq!(
        json["value_scan"]["findings"],
        serde_json::json!([]),
        "a clean db: nothing to fit"
    );
    assert_eq!(json["postgres_counts"]["sentry_message"], 5);

    // The backup sits next to the db with the recorded hash; settings are private.
    let backup = json["backup"]["path"].as_str().unwrap();
    assert!(backup.starts_with("var/sentry.db.backup-"), "{backup}");
    let local = repo.root.join("settings/settings_local.py");
    assert_eq!(
        fs::metadata(&local).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(fs::read_to_string(&local)
        .unwrap()
        .contains("postgresql_psycopg2"));
    for log in fs::read_dir(repo.root.join("dumps/logs"))
        .unwrap()
        .flatten()
    {
        let text = fs::read_to_string(log.path()).unwrap();
        assert!(
            !text.contains(&repo.db.cluster.password),
            "password in {}",
            log.path().display()
        );
    }

    // A second run finds everything done, re-checks the outputs, runs nothing.
    let again = repo.xtask(&["migrate"], None);
    assert!(again.ok, "{again:#?}");
    assert!(
        again
            .stdout
            .contains("[10/21] dump-rest … done earlier (journal)"),
        "{}",
        again.stdout
    );
    assert_eq!(repo.calls().len(), expected.len(), "nothing re-ran");

    // The check of the Sentry 4 state cannot be redone once Sentry 6 upgraded the target.
    let out = repo.xtask(&["migrate", "--from", "verify-postgres"], None);
    assert!(!out.ok);
    assert!(
        out.stderr.contains("the target is already at Sentry migration 0100 (Sentry 6): the Sentry 4 state this step checks is gone"),
        "{}",
        out.stderr
    );

    // Redoing a tag 1 step while tag 2 is installed would run Sentry 6 where Sentry 4 belongs.
    let out = repo.xtask(&["migrate", "--from", "pg-upgrade"], None);
    assert!(!out.ok);
    assert!(
        out.stderr.contains("bin/sentry runs Sentry 6.4.4, but this step needs Sentry 4.x: resume with `cargo xtask migrate --engine loaddata --from buildout-tag1`"),
        "{}",
        out.stderr
    );
    assert_eq!(repo.calls().len(), expected.len(), "no Sentry command ran");
}

#[test]
fn a_failed_step_names_cause_log_and_resume_command_and_resume_continues_there() {
    if skip() {
        return;
    }
    let repo = Repo::new("resume");
    let out = repo.xtask(&["migrate", "--engine", "loaddata"], Some("dump-rest"));
    assert!(!out.ok);
    assert!(
        out.stdout.contains("[10/21] dump-rest … FAILED"),
        "{}",
        out.stdout
    );
    assert!(
        out.stderr.contains("error: step `dump-rest` failed"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("OperationalError: disk I/O error"),
        "the cause from the log: {}",
        out.stderr
    );
    assert!(
        out.stderr.contains("log:    dumps/logs/10-dump-rest.log"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("resume: cargo xtask migrate --engine loaddata (starts again at `dump-rest`"),
        "{}",
        out.stderr
    );
    assert!(
        !repo.root.join("dumps/dumpdata.json").exists(),
        "no half-written dump under the final name"
    );
    let before = repo.calls().len();

    let out = repo.xtask(&["migrate", "--until", "verify-dumps"], None);
    assert!(out.ok, "{out:#?}");
    assert!(
        out.stdout
            .contains("[9/21] dump-auth … done earlier (journal)"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("[10/21] dump-rest … ok"),
        "{}",
        out.stdout
    );
    assert_eq!(
        repo.calls()[before..],
        ["sentry --config=settings/settings.py dumpdata --exclude auth".to_string()]
    );
    assert!(!repo.target_exists(), "--until stopped before PostgreSQL");

    // A changed dump is caught on resume, with the step to redo.
    fs::write(repo.root.join("dumps/dumpdata-auth.json"), "[]").unwrap();
    let out = repo.xtask(&["migrate"], None);
    assert!(!out.ok);
    assert!(
        out.stderr
            .contains("dumps/dumpdata-auth.json, produced by step `dump-auth`, is changed since"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("--from dump-auth"), "{}", out.stderr);
    let out = repo.xtask(&["migrate", "--from", "dump-auth"], None);
    assert!(out.ok, "{out:#?}");
}

#[test]
fn dry_run_prints_the_plan_and_touches_nothing() {
    if skip() {
        return;
    }
    let repo = Repo::new("dry");
    let before = snapshot(&repo.root);
    let out = repo.xtask(&["migrate", "--dry-run"], None);
    assert!(out.ok, "{out:#?}");
    assert_eq!(snapshot(&repo.root), before, "the dry run changed files");
    assert!(repo.calls().is_empty(), "the dry run ran a program");
    assert!(!repo.target_exists(), "the dry run created the database");
    for line in [
        "with the copy engine (--engine loaddata: the runbook's dumpdata/loaddata); nothing is touched",
        "[1/19] preflight",
        "[15/19] pg-copy",
        "sql (each model table, its columns that SQLite has): COPY {table} ({columns}) FROM STDIN",
        "CREATE CAST (timestamptz AS integer)",
        "[19/19] verify-sentry6",
    ] {
        assert!(out.stdout.contains(line), "{line}: {}", out.stdout);
    }
    assert!(
        !out.stdout.contains("settings.py dumpdata"),
        "{}",
        out.stdout
    );
    assert!(!out.stdout.contains(&repo.db.cluster.password));

    let out = repo.xtask(&["migrate", "--dry-run", "--engine", "loaddata"], None);
    assert!(out.ok, "{out:#?}");
    for line in [
        "with the loaddata engine; nothing is touched",
        "[1/21] preflight",
        "run: bin/sentry --config=settings/settings.py dumpdata auth > dumps/dumpdata-auth.json",
        "[21/21] verify-sentry6",
    ] {
        assert!(out.stdout.contains(line), "{line}: {}", out.stdout);
    }
    assert_eq!(snapshot(&repo.root), before, "the dry run changed files");
    assert!(repo.calls().is_empty(), "the dry run ran a program");
}

#[test]
fn a_second_migrate_is_refused_while_one_runs() {
    if skip() {
        return;
    }
    let repo = Repo::new("lock");
    let lock = repo.root.join("dumps/migrate.lock");
    // A real holder: this test process takes the OS lock, as a running `migrate` does.
    let held = fs::File::create(&lock).unwrap();
    held.lock().unwrap();
    fs::write(&lock, format!("{}\n", std::process::id())).unwrap();
    let out = repo.xtask(&["migrate"], None);
    assert!(!out.ok);
    assert!(
        out.stderr.contains(&format!(
            "another `cargo xtask migrate` (pid {}) is running",
            std::process::id()
        )),
        "{}",
        out.stderr
    );
    assert!(repo.calls().is_empty());
    drop(held);

    // A lock file whose process is gone, and one naming a live process (this one: a reused
    // pid) that holds no lock: neither blocks, only the kernel's lock decides.
    for pid in [999_999_999, std::process::id()] {
        fs::write(&lock, format!("{pid}\n")).unwrap();
        let out = repo.xtask(&["migrate", "--until", "preflight"], None);
        assert!(
            out.ok,
            "a lock file without a lock ({pid}) blocked: {out:#?}"
        );
    }
    assert_eq!(
        fs::metadata(&lock).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

/// Two runs started at the same instant: exactly one proceeds, the other is refused by the lock.
#[test]
fn two_migrates_started_at_once_one_runs_one_is_refused() {
    if skip() {
        return;
    }
    let repo = Repo::new("race");
    // A file left by a dead run, as after a SIGKILL: it must not matter.
    fs::write(repo.root.join("dumps/migrate.lock"), "999999999\n").unwrap();
    let children: Vec<std::process::Child> = (0..2)
        .map(|_| {
            repo.command(
                &["migrate", "--engine", "loaddata", "--until", "verify-dumps"],
                None,
            )
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
        })
        .collect();
    let outs: Vec<std::process::Output> = children
        .into_iter()
        .map(|child| child.wait_with_output().unwrap())
        .collect();
    let ok: Vec<&std::process::Output> = outs.iter().filter(|o| o.status.success()).collect();
    let refused: Vec<&std::process::Output> = outs.iter().filter(|o| !o.status.success()).collect();
    assert_eq!(ok.len(), 1, "exactly one proceeds: {outs:#?}");
    assert_eq!(refused.len(), 1, "{outs:#?}");
    let stderr = String::from_utf8_lossy(&refused[0].stderr);
    let winner = String::from_utf8_lossy(&ok[0].stdout);
    assert!(
        // The pid is named once the winner has written it (it may still be writing it).
        stderr.starts_with("error: another `cargo xtask migrate`")
            && stderr.contains("is running on this repo"),
        "{stderr}"
    );
    assert!(winner.contains("verify-dumps … ok"), "{winner}");
    // The refused run ran nothing: each command ran once, by the winner.
    let dumps = repo
        .calls()
        .iter()
        .filter(|call| call.contains("dumpdata auth"))
        .count();
    assert_eq!(dumps, 1, "{:?}", repo.calls());
}

/// Runs `migrate` after `spoil` and expects `message` on stderr, no panic, no Python stack.
fn expect_error(tag: &str, spoil: impl FnOnce(&Repo), fail: Option<&str>, message: &str) {
    expect_error_with(tag, &["migrate"], spoil, fail, message)
}

/// [`expect_error`] with the given arguments (`--engine loaddata` for its own failures).
fn expect_error_with(
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

#[test]
fn bad_input_gets_a_clear_error() {
    if skip() {
        return;
    }
    let db = |repo: &Repo| repo.root.join("var/sentry.db");
    expect_error(
        "missing",
        |r| fs::remove_file(db(r)).unwrap(),
        None,
        "sentry.db does not exist: pass its path with --sqlite PATH",
    );
    expect_error(
        "corrupt",
        |r| fs::write(db(r), vec![0x5a; 8192]).unwrap(),
        None,
        "is not a readable SQLite database",
    );
    expect_error(
        "notsentry",
        |r| {
            fs::remove_file(db(r)).unwrap();
            rusqlite::Connection::open(db(r))
                .unwrap()
                .execute_batch("CREATE TABLE notes (id integer)")
                .unwrap();
        },
        None,
        "is not a Sentry database: it has no `sentry_project` table",
    );
    expect_error(
        "version",
        |r| {
            fs::remove_file(db(r)).unwrap();
            make_sentry4_db(&db(r), 105);
        },
        None,
        "is at Sentry migration 0105, newer than Sentry 4.10 (0062)",
    );
    expect_error(
        "nobuildout",
        |r| fs::remove_file(r.root.join("bin/buildout")).unwrap(),
        None,
        "bin/buildout is missing: bootstrap buildout",
    );
    expect_error(
        "nosettings",
        |r| fs::remove_file(r.root.join("settings/settings.py")).unwrap(),
        None,
        "settings/settings.py is missing: the Sentry settings",
    );
    expect_error(
        "hotjournal",
        |r| fs::write(r.root.join("var/sentry.db-journal"), "x").unwrap(),
        None,
        "sentry.db-journal exists: a writer crashed or is still running",
    );
    expect_error(
        "nonempty",
        |r| {
            let mut admin = r.db.cluster.admin_client("postgres");
            admin
                .batch_execute(&format!("CREATE DATABASE \"{}\"", r.target))
                .unwrap();
            r.target_client()
                .batch_execute(
                    "CREATE TABLE precious (id integer); INSERT INTO precious VALUES (1)",
                )
                .unwrap();
        },
        None,
        "is not empty (1 tables, e.g. precious): refusing to load into it",
    );
    expect_error(
        "dbinuse",
        |r| {
            // A process holding the db open, as a running Sentry does.
            let mut child = Command::new("python3")
                .args(["-c", "import sys, time; f = open(sys.argv[1], 'rb'); print('open', flush=True); time.sleep(60)"])
                .arg(db(r))
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            let mut line = String::new();
            std::io::BufRead::read_line(
                &mut std::io::BufReader::new(child.stdout.take().unwrap()),
                &mut line,
            )
            .unwrap();
            HOLDERS.lock().unwrap().push(child);
        },
        None,
        "Sentry is running or holds the db (pid",
    );
    for mut child in HOLDERS.lock().unwrap().drain(..) {
        child.kill().unwrap();
        child.wait().unwrap();
    }
    expect_error_with(
        "truncated",
        &["migrate", "--engine", "loaddata"],
        |_| {},
        Some("truncate-dump"),
        "dumps/dumpdata.json is truncated",
    );
    expect_error_with(
        "silentload",
        &["migrate", "--engine", "loaddata"],
        |_| {},
        Some("load-silently"),
        "step `pg-load` failed: IntegrityError: duplicate key value violates unique constraint \"sentry_teammember_team_id_uniq\"\n  (loaddata failed and rolled back, though it exits 0",
    );
    expect_error(
        "sentry6loss",
        |_| {},
        Some("upgrade6-loses"),
        "sentry_message: expected 5, found 4 (-1 rows lost)",
    );
    expect_error_with(
        "extrarows",
        &["migrate", "--engine", "loaddata"],
        |_| {},
        Some("load-extra"),
        "sentry_projectkey: expected 3, found 4 (1 rows more than SQLite)",
    );
}

#[test]
fn wrong_password_is_named_without_printing_it() {
    if skip() {
        return;
    }
    let repo = Repo::new("password");
    let out = {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_xtask"));
        cmd.args(["migrate"])
            .env("SENTRY_MIGRATE_ROOT", &repo.root)
            .env("FAKE_CALLS", repo.root.join("calls.log"));
        for (key, value) in repo
            .db
            .cluster
            .env("postgres", "wrong-pw-123", &repo.target)
        {
            cmd.env(key, value);
        }
        cmd.output().unwrap()
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("preflight found 1 problem(s), nothing was touched"),
        "{stderr}"
    );
    assert!(
        stderr.contains("password authentication failed for role `postgres`: check PGPASSWORD"),
        "{stderr}"
    );
    assert!(!stderr.contains("wrong-pw-123"));
    assert!(
        fs::read_dir(repo.root.join("var")).unwrap().count() == 1,
        "no backup was made"
    );
}

/// The `resume:` line of a failure, and every `redo with` hint, are commands that work when
/// pasted into a shell, with a db path that holds spaces and non-ASCII characters (written to
/// settings_local.py as Python 2 reads it) and the flags the run was given.
#[test]
fn resume_hints_are_pasteable_with_spaces_in_paths() {
    if skip() {
        return;
    }
    let repo = Repo::new("paste");
    let db = "var/my data/séntry db ✓.sqlite";
    fs::create_dir_all(repo.root.join("var/my data")).unwrap();
    fs::rename(repo.root.join("var/sentry.db"), repo.root.join(db)).unwrap();
    let out = repo.xtask(
        &[
            "migrate",
            "--engine",
            "loaddata",
            "--sqlite",
            db,
            "--tag1",
            "buildout/tag1-sentry4.cfg",
        ],
        Some("dump-rest"),
    );
    assert!(!out.ok, "{out:#?}");
    let line = out
        .stderr
        .lines()
        .find_map(|line| line.trim().strip_prefix("resume: "))
        .expect("a resume line");
    let command = line.split(" (starts again").next().unwrap();
    let argv = shlex::split(command).expect("the resume command parses as shell words");
    assert_eq!(
        argv[..5],
        ["cargo", "xtask", "migrate", "--sqlite", db],
        "{command}"
    );
    assert!(
        argv.windows(2)
            .any(|w| w == ["--tag1", "buildout/tag1-sentry4.cfg"]),
        "{command}"
    );
    // Paste it (without `cargo xtask`, which runs this same binary).
    let mut args: Vec<&str> = argv[2..].iter().map(String::as_str).collect();
    args.extend(["--until", "verify-dumps"]);
    let out = repo.xtask(&args, None);
    assert!(out.ok, "{out:#?}");
    assert!(
        out.stdout.contains("[10/21] dump-rest … ok"),
        "{}",
        out.stdout
    );

    // A changed dump: the hint names the step to redo from, with the same flags.
    fs::write(repo.root.join("dumps/dumpdata-auth.json"), "[]").unwrap();
    let out = repo.xtask(&args, None);
    assert!(!out.ok);
    let hint = out
        .stderr
        .split("redo with `")
        .nth(1)
        .and_then(|rest| rest.split('`').next())
        .unwrap_or_else(|| panic!("a redo hint: {}", out.stderr));
    let argv = shlex::split(hint).expect("the hint parses as shell words");
    assert!(
        argv.ends_with(&["--from".into(), "dump-auth".into()]),
        "{hint}"
    );
    let mut args: Vec<&str> = argv[2..].iter().map(String::as_str).collect();
    args.extend(["--until", "verify-dumps"]);
    let out = repo.xtask(&args, None);
    assert!(out.ok, "{out:#?}");
}

/// When a step fails and the report cannot be saved either, the step's cause still leads.
#[test]
fn a_failed_step_keeps_its_cause_when_saving_the_report_fails_too() {
    if skip() {
        return;
    }
    let repo = Repo::new("cause");
    let out = repo.xtask(
        &["migrate", "--engine", "loaddata"],
        Some("dump-rest-and-report"),
    );
    assert!(!out.ok);
    assert!(
        out.stderr.starts_with("error: step `dump-rest` failed: "),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("OperationalError: disk I/O error"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("also:   the journal or report could not be saved"),
        "{}",
        out.stderr
    );
}

/// Messages built from outside data (settings switched by hand, a journal edited by hand) say
/// what they mean in words and never panic.
#[test]
fn hand_switched_settings_and_an_edited_journal_get_plain_messages() {
    if skip() {
        return;
    }
    let repo = Repo::new("plain");
    let out = repo.xtask(&["migrate", "--until", "settings-sqlite"], None);
    assert!(out.ok, "{out:#?}");
    let out = repo.xtask(&["switch-settings", "postgres"], None);
    assert!(out.ok, "{out:#?}");
    let out = repo.xtask(&["migrate"], None);
    assert!(!out.ok);
    assert!(
        out.stderr.contains(
            "settings/settings_local.py points at PostgreSQL, but this step needs SQLite: was it switched by hand? \
             resume with `cargo xtask migrate --from settings-sqlite`"
        ),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("Some("), "{}", out.stderr);

    let out = repo.xtask(&["migrate", "--from", "settings-sqlite"], None);
    assert!(out.ok, "{out:#?}");
    let journal_path = repo.root.join("dumps/journal.json");
    let mut journal: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&journal_path).unwrap()).unwrap();
    journal["backup"]["sha256"] = "ab".into();
    fs::write(&journal_path, journal.to_string()).unwrap();
    let out = repo.xtask(&["migrate"], None);
    assert!(
        out.ok,
        "a short hash in the journal must not panic: {out:#?}"
    );
    assert!(out.stdout.contains("(sha256 ab…)"), "{}", out.stdout);
}

/// Values PostgreSQL rejects are found before any dump and before PostgreSQL is touched; with
/// `--fit-values` they are fitted in a working copy (the source keeps them), reported, loaded.
#[test]
fn values_postgres_rejects_stop_the_run_early_and_are_fitted_on_request() {
    if skip() {
        return;
    }
    let repo = Repo::new("values");
    let db = repo.root.join("var/sentry.db");
    let long_name = format!("{}😀", "n".repeat(249));
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        // Sentry's varchar(200) project name, as South creates it on SQLite.
        conn.execute_batch(
            "ALTER TABLE sentry_project RENAME TO old_project;
             CREATE TABLE sentry_project (id integer PRIMARY KEY, name varchar(200));
             INSERT INTO sentry_project SELECT * FROM old_project;
             DROP TABLE old_project;
             UPDATE sentry_project SET name = 'web' || char(0) || 'site' WHERE id = 3;",
        )
        .unwrap();
        conn.execute(
            "UPDATE sentry_project SET name = ?1 WHERE id = 4",
            [&long_name],
        )
        .unwrap();
    }
    let out = repo.xtask(&["migrate", "--engine", "loaddata"], None);
    assert!(!out.ok, "{out:#?}");
    assert!(
        out.stdout.contains("[8/21] scan-values … FAILED"),
        "{}",
        out.stdout
    );
    for line in [
        "error: step `scan-values` failed: 1 column(s) hold values PostgreSQL rejects; nothing was written to PostgreSQL:",
        "sentry_project.name: 1 value(s) longer than the column allows, longest 250 > 200 characters (ids 4)",
        "sentry_project.name: 1 value(s) with NUL characters (ids 3)",
        "resume with `cargo xtask migrate --engine loaddata --fit-values`",
    ] {
        assert!(out.stderr.contains(line), "{line}: {}", out.stderr);
    }
    assert!(!repo.target_exists(), "PostgreSQL is untouched");
    assert!(
        !repo.calls().iter().any(|call| call.contains("dumpdata")),
        "nothing was dumped: {:?}",
        repo.calls()
    );

    let out = repo.xtask(&["migrate", "--fit-values"], None);
    assert!(out.ok, "{out:#?}");
    assert!(
        out.stdout.contains("[9/22] fit-values … ok"),
        "{}",
        out.stdout
    );
    let names: BTreeMap<i32, String> = repo
        .target_client()
        .query("SELECT id, name FROM sentry_project", &[])
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    assert_eq!(names[&3], "website");
    assert_eq!(names[&4].chars().count(), 200);
    assert_eq!(names[&4], format!("{}...", "n".repeat(197)));
    // The source keeps its values; the dumps read the working copy.
    let source_name: Vec<u8> = rusqlite::Connection::open(&db)
        .unwrap()
        .query_row(
            "SELECT CAST(name AS BLOB) FROM sentry_project WHERE id = 3",
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(source_name, b"web\0site");
    let settings = fs::read_to_string(repo.root.join("settings/settings_local.py")).unwrap();
    assert!(settings.contains("postgresql_psycopg2"), "{settings}");
    let fitted = repo.root.join("dumps/sentry-fitted.db");
    assert_eq!(
        fs::metadata(&fitted).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let json: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(repo.root.join("dumps/report.json")).unwrap())
            .unwrap();
    let changes: Vec<(String, i64, String)> = json["fit"]["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                format!(
                    "{}.{}",
                    c["table"].as_str().unwrap(),
                    c["column"].as_str().unwrap()
                ),
                c["id"].as_i64().unwrap(),
                c["kind"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        changes,
        [
            ("sentry_project.name".to_string(), 3, "nul".to_string()),
            ("sentry_project.name".to_string(), 4, "too-long".to_string()),
        ]
    );
    let report = fs::read_to_string(repo.root.join("dumps/report.md")).unwrap();
    assert!(report.contains("## Fitted values"), "{report}");
    assert!(
        report.contains("| sentry_project | 4 | name | cut from 250 to 200 characters"),
        "{report}"
    );
}

/// Without a TIME_ZONE in the settings the run stops before anything is touched, says why it
/// matters and what to set; with one, the plan, the preflight output and the report show it.
#[test]
fn the_time_zone_is_never_guessed() {
    if skip() {
        return;
    }
    let repo = Repo::new("zone");
    fs::remove_file(repo.root.join("settings/sentry_conf.py")).unwrap();
    let before = snapshot(&repo.root);
    let out = repo.xtask(&["migrate"], None);
    assert!(!out.ok);
    for text in [
        "no settings file says which time zone Sentry 4 wrote its dates in",
        "every date shifts by the difference and no row count can see it",
        "write TIME_ZONE = 'UTC'",
    ] {
        assert!(out.stderr.contains(text), "{text}: {}", out.stderr);
    }
    assert!(repo.calls().is_empty(), "nothing ran");
    assert!(!repo.target_exists());
    let after: Vec<_> = snapshot(&repo.root)
        .into_keys()
        .filter(|path| !before.contains_key(path))
        .filter(|path| !path.starts_with(repo.root.join("dumps")))
        .collect();
    assert!(after.is_empty(), "files appeared outside dumps/: {after:?}");

    fs::write(
        repo.root.join("settings/sentry_conf.py"),
        "from sentry.conf.server import *\nTIME_ZONE = 'America/Chicago'\n",
    )
    .unwrap();
    let out = repo.xtask(&["migrate", "--dry-run"], None);
    assert!(
        out.stdout.contains(
            "check: the settings say which zone Sentry 4 wrote its dates in: TIME_ZONE = 'America/Chicago' (from settings/sentry_conf.py)"
        ),
        "{}",
        out.stdout
    );
    let out = repo.xtask(&["migrate", "--until", "preflight"], None);
    assert!(out.ok, "{out:#?}");
    assert!(
        out.stdout.contains(
            "dates in SQLite are read as TIME_ZONE = 'America/Chicago' (from settings/sentry_conf.py)"
        ),
        "{}",
        out.stdout
    );
    let report = fs::read_to_string(repo.root.join("dumps/report.md")).unwrap();
    assert!(
        report.contains("- time zone of the SQLite dates: TIME_ZONE = 'America/Chicago'"),
        "{report}"
    );
}

/// Every directory and file under `dir` with its permission bits.
fn modes(dir: &Path) -> Vec<(PathBuf, u32, bool)> {
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

/// The dumps hold every password hash and DSN secret key: dumps/ is 0700 (made so even when it
/// existed wider), every dump, journal, report, log and the lock in it 0600; the SQLite backup
/// has the source's mode, never a wider one.
#[test]
fn dumps_and_the_backup_are_private() {
    if skip() {
        return;
    }
    let repo = Repo::new("modes");
    let db = repo.root.join("var/sentry.db");
    fs::set_permissions(&db, fs::Permissions::from_mode(0o640)).unwrap();
    fs::set_permissions(repo.root.join("dumps"), fs::Permissions::from_mode(0o755)).unwrap();
    // A dump left 0644 by an older version of the tool, before a --from redo.
    let out = repo.xtask(&["migrate", "--engine", "loaddata"], Some("dump-rest"));
    assert!(!out.ok);
    fs::write(repo.root.join("dumps/dumpdata.json.partial"), "[").unwrap();
    fs::set_permissions(
        repo.root.join("dumps/dumpdata.json.partial"),
        fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let out = repo.xtask(&["migrate"], None);
    assert!(out.ok, "{out:#?}");

    let all = modes(&repo.root.join("dumps"));
    let names: Vec<String> = all
        .iter()
        .map(|(path, _, _)| path.strip_prefix(&repo.root).unwrap().display().to_string())
        .collect();
    for want in [
        "dumps/logs",
        "dumps/journal.json",
        "dumps/report.md",
        "dumps/report.json",
        "dumps/migrate.lock",
        "dumps/dumpdata-auth.json",
        "dumps/dumpdata.json",
        "dumps/models.json",
        "dumps/logs/10-dump-rest.log",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} not in {names:?}");
    }
    for (path, mode, dir) in &all {
        let want = if *dir { 0o700 } else { 0o600 };
        assert_eq!(*mode, want, "{} is {mode:o}", path.display());
    }

    let json: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(repo.root.join("dumps/journal.json")).unwrap())
            .unwrap();
    let backup = repo.root.join(json["backup"]["path"].as_str().unwrap());
    assert_eq!(
        fs::metadata(&backup).unwrap().permissions().mode() & 0o777,
        0o640,
        "the backup has the source's mode"
    );
}

/// Every file under `dir` (recursively).
fn files(dir: &Path) -> Vec<PathBuf> {
    snapshot(dir).into_keys().collect()
}

/// A full run with a password set: no child the tool starts (bin/buildout, bin/sentry, the
/// helper under bin/py) nor the tool itself shows it in `/proc/<pid>/cmdline`, and no file under
/// dumps/ (dumps, journal, report, logs, lock) holds it; only the 0600 settings_local.py does.
#[test]
fn the_password_is_on_no_command_line_and_in_no_file_under_dumps() {
    if skip() {
        return;
    }
    let repo = Repo::new("argv");
    let password = &repo.db.cluster.password;
    assert!(!password.is_empty());
    let out = repo.xtask(&["migrate", "--engine", "loaddata"], None);
    assert!(out.ok, "{out:#?}");

    let seen = fs::read_to_string(repo.root.join("calls.log.cmdline")).unwrap();
    let lines: Vec<&str> = seen.lines().collect();
    assert_eq!(lines.len(), repo.calls().len(), "one record per child");
    for program in ["buildout", "sentry", "py"] {
        assert!(
            lines.iter().any(|l| l.starts_with(&format!("{program}\t"))),
            "{program} never ran: {seen}"
        );
    }
    for line in &lines {
        let fields: Vec<&str> = line.split('\t').collect();
        assert_eq!(fields.len(), 3, "{line}");
        assert!(
            fields[2].contains("xtask") && fields[2].contains("migrate"),
            "the parent is the tool: {line}"
        );
        assert!(
            !line.contains(password.as_str()),
            "password on a command line: {line}"
        );
    }

    let under_dumps = files(&repo.root.join("dumps"));
    assert!(under_dumps.len() >= 10, "{under_dumps:?}");
    for path in under_dumps {
        let bytes = fs::read(&path).unwrap();
        assert!(
            !bytes
                .windows(password.len())
                .any(|w| w == password.as_bytes()),
            "password in {}",
            path.display()
        );
    }
    // Where it belongs: the private settings file (so the search above was for a real secret).
    let local = repo.root.join("settings/settings_local.py");
    assert!(fs::read_to_string(&local)
        .unwrap()
        .contains(password.as_str()));
    assert_eq!(
        fs::metadata(&local).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

/// Database and role names that are not plain identifiers are refused before any SQL runs:
/// no database is created, no program runs, nothing is written.
#[test]
fn names_that_are_not_plain_identifiers_are_refused_before_any_sql() {
    if skip() {
        return;
    }
    for (tag, key, value, message) in [
        (
            "baddb",
            "PGDATABASE",
            "bad-name",
            "database name `bad-name` is not allowed",
        ),
        (
            "badrole",
            "PGUSER",
            "Bad\"role",
            "role name `Bad\"role` is not allowed",
        ),
    ] {
        let repo = Repo::new(tag);
        let before = snapshot(&repo.root);
        let out = repo
            .command(&["migrate"], None)
            .env(key, value)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{tag}: {stderr}");
        assert!(
            stderr.starts_with("error: ") && stderr.contains(message),
            "{tag}: {stderr}"
        );
        assert!(repo.calls().is_empty(), "{tag}: a program ran");
        assert_eq!(snapshot(&repo.root), before, "{tag}: files changed");
        let mut admin = repo.db.cluster.admin_client("postgres");
        let created = admin
            .query(
                "SELECT datname FROM pg_database WHERE datname IN ('bad-name', $1)",
                &[&repo.target],
            )
            .unwrap();
        assert!(created.is_empty(), "{tag}: a database was created");
    }
}

/// `snapshot` without the lock file, whose pid a run that takes the lock rewrites.
fn snapshot_but_lock(root: &Path) -> BTreeMap<PathBuf, (u64, Vec<u8>)> {
    let mut files = snapshot(root);
    files.remove(&root.join("dumps/migrate.lock"));
    files
}

/// The backup the journal recorded, as a path under the repo.
fn recorded_backup(repo: &Repo) -> PathBuf {
    let journal: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(repo.root.join("dumps/journal.json")).unwrap())
            .unwrap();
    repo.root.join(journal["backup"]["path"].as_str().unwrap())
}

/// After a full migration: `rollback --dry-run` says what it would do and changes nothing;
/// `rollback --restore-backup` puts back the db byte for byte from the verified backup (the
/// current one kept aside), settings on SQLite, buildout tag 1.
#[test]
fn rollback_returns_to_sentry4_with_the_db_from_the_verified_backup() {
    if skip() {
        return;
    }
    let repo = Repo::new("rollback");
    let out = repo.xtask(&["migrate"], None);
    assert!(out.ok, "{out:#?}");
    let db = repo.root.join("var/sentry.db");
    let backup = recorded_backup(&repo);
    // Sentry 4's upgrade and repair of phase 1 write to the db (as in the runbook).
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute_batch("INSERT INTO auth_message VALUES (3, 'written by upgrade')")
        .unwrap();
    let current = fs::read(&db).unwrap();
    assert_ne!(current, fs::read(&backup).unwrap());
    let calls = repo.calls().len();

    let before = snapshot(&repo.root);
    let out = repo.xtask(&["rollback", "--dry-run", "--restore-backup"], None);
    assert!(out.ok, "{out:#?}");
    assert_eq!(snapshot(&repo.root), before, "the dry run changed files");
    assert_eq!(repo.calls().len(), calls, "the dry run ran a program");
    for line in [
        "move var/sentry.db to var/sentry.db.before-rollback-",
        "copy var/sentry.db.backup-",
        "write settings/settings_local.py for SQLite (var/sentry.db), now pointing at PostgreSQL",
        &format!(
            "run: bin/buildout -c buildout/tag1-sentry4.cfg buildout:directory={}",
            repo.root.display()
        ),
    ] {
        assert!(out.stdout.contains(line), "{line}: {}", out.stdout);
    }

    let out = repo.xtask(&["rollback", "--restore-backup"], None);
    assert!(out.ok, "{out:#?}");
    assert_eq!(fs::read(&db).unwrap(), fs::read(&backup).unwrap());
    let aside: Vec<PathBuf> = fs::read_dir(repo.root.join("var"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("sentry.db.before-rollback-")
        })
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(
        fs::read(&aside[0]).unwrap(),
        current,
        "the current db is kept"
    );
    let settings = fs::read_to_string(repo.root.join("settings/settings_local.py")).unwrap();
    assert!(
        settings.contains("sqlite3") && !settings.contains("postgresql_psycopg2"),
        "{settings}"
    );
    assert_eq!(
        repo.calls()[calls..],
        [format!(
            "buildout -c buildout/tag1-sentry4.cfg buildout:directory={}",
            repo.root.display()
        )]
    );
    assert_eq!(
        fs::read_to_string(repo.root.join("bin/.tag")).unwrap(),
        "4",
        "Sentry 4 in bin/"
    );
}

/// A backup whose sha256 differs from the journal's is refused before anything changes; events
/// Sentry 6 stored after the migration are counted and refused without --force.
#[test]
fn rollback_refuses_a_changed_backup_and_leaving_new_events_behind() {
    if skip() {
        return;
    }
    let repo = Repo::new("rollbackno");
    let out = repo.xtask(&["migrate"], None);
    assert!(out.ok, "{out:#?}");
    let backup = recorded_backup(&repo);
    let original = fs::read(&backup).unwrap();
    let calls = repo.calls().len();

    let mut changed = original.clone();
    changed.extend_from_slice(b"tampered");
    fs::write(&backup, &changed).unwrap();
    let before = snapshot_but_lock(&repo.root);
    let out = repo.xtask(&["rollback", "--restore-backup"], None);
    assert!(!out.ok, "{out:#?}");
    assert!(
        out.stderr
            .starts_with("error: the backup var/sentry.db.backup-")
            && out.stderr.contains("but the journal recorded")
            && out.stderr.contains("nothing was changed"),
        "{}",
        out.stderr
    );
    assert_eq!(snapshot_but_lock(&repo.root), before, "files changed");
    assert_eq!(repo.calls().len(), calls, "a program ran");
    fs::write(&backup, &original).unwrap();

    // Sentry 6 received two events after the migration.
    repo.target_client()
        .batch_execute("INSERT INTO sentry_message (id, group_id) VALUES (11, 1), (12, 1)")
        .unwrap();
    let before = snapshot_but_lock(&repo.root);
    let out = repo.xtask(&["rollback", "--restore-backup"], None);
    assert!(!out.ok, "{out:#?}");
    assert!(
        out.stderr.contains(
            "Sentry 6 stored 2 event(s) after the migration (ids past 10 in sentry_message"
        ) && out.stderr.contains("roll back anyway with --force"),
        "{}",
        out.stderr
    );
    assert_eq!(snapshot_but_lock(&repo.root), before, "files changed");
    assert_eq!(repo.calls().len(), calls, "a program ran");

    let out = repo.xtask(&["rollback", "--force"], None);
    assert!(out.ok, "{out:#?}");
    assert!(
        out.stderr
            .contains("2 event(s) stored by Sentry 6 after the migration stay in PostgreSQL only"),
        "{}",
        out.stderr
    );
    assert_eq!(repo.calls().len(), calls + 1, "buildout tag 1 ran");
}

/// `--from`/`--until` naming no step, or a step not in this plan, are refused before anything
/// is touched (no lock, no journal, no program, no database).
#[test]
fn from_and_until_naming_no_step_are_refused_before_anything() {
    if skip() {
        return;
    }
    let repo = Repo::new("nostep");
    let before = snapshot(&repo.root);
    for (args, message) in [
        (
            &["migrate", "--from", "dump-everything"][..],
            "error: unknown step `dump-everything`: expected one of preflight, backup-sqlite,",
        ),
        (
            &["migrate", "--until", "verify"][..],
            "error: unknown step `verify`: expected one of preflight,",
        ),
        (
            &["migrate", "--from", "fit-values"][..],
            "error: step `fit-values` is not part of this plan",
        ),
    ] {
        let out = repo.xtask(args, None);
        assert!(!out.ok, "{args:?}: {out:#?}");
        assert!(out.stderr.starts_with(message), "{args:?}: {}", out.stderr);
        assert_eq!(snapshot(&repo.root), before, "{args:?} changed files");
    }
    assert!(repo.calls().is_empty(), "a program ran");
    assert!(!repo.target_exists(), "a database was created");
}

/// Every table's rows as text, in a stable order, hashed: equal hashes, equal tables.
fn table_hashes(client: &mut postgres::Client) -> BTreeMap<String, String> {
    let tables: Vec<String> = client
        .query(
            "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' ORDER BY 1",
            &[],
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

/// The copy engine loads what the runbook's dumpdata/loaddata load, ids, values and instants
/// included (Sentry 4 ran in America/Chicago: winter, summer, the spring gap, the autumn fold),
/// and Sentry 6's upgrade and checks pass on its result.
#[test]
fn the_copy_engine_loads_what_loaddata_loads() {
    if skip() {
        return;
    }
    let zone = "TIME_ZONE = 'America/Chicago'\n";
    let loaddata = Repo::new("eqload");
    fs::write(loaddata.root.join("settings/sentry_conf.py"), zone).unwrap();
    let out = loaddata.xtask(
        &[
            "migrate",
            "--engine",
            "loaddata",
            "--until",
            "verify-postgres",
        ],
        None,
    );
    assert!(out.ok, "{out:#?}");

    let copy = Repo::new("eqcopy");
    fs::write(copy.root.join("settings/sentry_conf.py"), zone).unwrap();
    let out = copy.xtask(
        &["migrate", "--engine", "copy", "--until", "verify-postgres"],
        None,
    );
    assert!(out.ok, "{out:#?}");
    for line in [
        "[9/19] count-source … ok",
        "[15/19] pg-copy … ok",
        "[16/19] verify-postgres … ok",
    ] {
        assert!(out.stdout.contains(line), "{line}: {}", out.stdout);
    }
    assert!(
        !copy
            .calls()
            .iter()
            .any(|call| call.contains("dumpdata") || call.contains(" load ")),
        "{:?}",
        copy.calls()
    );

    let expected = table_hashes(&mut loaddata.target_client());
    assert_eq!(table_hashes(&mut copy.target_client()), expected);
    // The foreign keys and indexes the copy dropped for the load are all back.
    let schema = |client: &mut postgres::Client| -> Vec<String> {
        client
            .query(
                "SELECT pg_get_indexdef(indexrelid) FROM pg_index i JOIN pg_class t ON t.oid = i.indrelid \
                 WHERE t.relnamespace = 'public'::regnamespace \
                 UNION ALL SELECT conrelid::regclass::text || ' ' || pg_get_constraintdef(oid) FROM pg_constraint \
                 WHERE connamespace = 'public'::regnamespace ORDER BY 1",
                &[],
            )
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect()
    };
    assert_eq!(
        schema(&mut copy.target_client()),
        schema(&mut loaddata.target_client())
    );
    let instants: Vec<(i32, Option<f64>)> = copy
        .target_client()
        .query(
            "SELECT id, extract(epoch FROM datetime)::float8 FROM sentry_message ORDER BY id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    // 10:00 CST = 16:00Z; 10:00:00.25 CDT = 15:00:00.25Z.
    assert_eq!(instants[0], (1, Some(1_357_056_000.0)));
    assert_eq!(instants[1], (2, Some(1_372_690_800.25)));
    assert_eq!(instants[4], (10, None));

    let out = copy.xtask(&["migrate", "--engine", "copy"], None);
    assert!(out.ok, "{out:#?}");
    assert!(
        out.stdout.contains("[19/19] verify-sentry6 … ok"),
        "{}",
        out.stdout
    );
    let report = fs::read_to_string(copy.root.join("dumps/report.md")).unwrap();
    assert!(report.contains("copy engine: "), "{report}");
}

/// A copy that breaks a foreign key fails at commit with PostgreSQL's words, and leaves the
/// target as it was before the copy (one transaction).
#[test]
fn a_failed_copy_rolls_back_and_names_the_constraint() {
    if skip() {
        return;
    }
    let repo = Repo::new("cpfk");
    rusqlite::Connection::open(repo.root.join("var/sentry.db"))
        .unwrap()
        .execute_batch("INSERT INTO sentry_groupbookmark VALUES (3, 99, 1)")
        .unwrap();
    let out = repo.xtask(&["migrate", "--engine", "copy"], None);
    assert!(!out.ok);
    for text in [
        "step `pg-copy` failed: re-creating `ALTER TABLE sentry_groupbookmark ADD CONSTRAINT",
        "all of it rolled back: the target is as before",
        "violates foreign key constraint",
        "Key (group_id)=(99) is not present in table \"sentry_groupedmessage\"",
        "resume: cargo xtask migrate (starts again at `pg-copy`",
    ] {
        assert!(out.stderr.contains(text), "{text}: {}", out.stderr);
    }
    let rows: i64 = repo
        .target_client()
        .query_one(
            "SELECT (SELECT count(*) FROM sentry_message) + (SELECT count(*) FROM sentry_groupbookmark) + (SELECT count(*) FROM auth_user)",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(rows, 0, "everything rolled back");
    let keys: i64 = repo
        .target_client()
        .query_one(
            "SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND connamespace = 'public'::regnamespace",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(keys >= 5, "the foreign keys are back: {keys}");
}

/// Where Django's dumpdata cannot fit in memory, the loaddata engine is refused in preflight,
/// pointing at the copy engine, which takes the same db.
#[test]
fn the_loaddata_engine_is_refused_where_it_cannot_fit() {
    if skip() {
        return;
    }
    let available = xtask::util::available_memory().expect("MemAvailable in /proc/meminfo");
    let events = available / (68 * 1024) + 1000;
    let repo = Repo::new("memory");
    rusqlite::Connection::open(repo.root.join("var/sentry.db"))
        .unwrap()
        .execute_batch(&format!(
            "WITH RECURSIVE n(i) AS (SELECT 100 UNION ALL SELECT i + 1 FROM n WHERE i < {}) \
             INSERT INTO sentry_message SELECT i, 7, NULL FROM n",
            100 + events
        ))
        .unwrap();
    let out = repo.xtask(
        &["migrate", "--engine", "loaddata", "--until", "preflight"],
        None,
    );
    assert!(!out.ok);
    assert!(
        out.stderr.contains("the loaddata engine needs about")
            && out.stderr.contains("use `--engine copy` (flat memory)"),
        "{}",
        out.stderr
    );
    let out = repo.xtask(
        &["migrate", "--engine", "copy", "--until", "preflight"],
        None,
    );
    assert!(out.ok, "{out:#?}");
}

/// A target a DBA created and owns, where the app role may only connect (PostgreSQL 15 gives
/// no CREATE on schema public to other roles): refused in preflight, before any dump, with the
/// GRANT a DBA runs; so is a missing database the role may not create.
#[test]
fn missing_privileges_are_refused_in_preflight_with_the_sql_for_a_dba() {
    if skip() {
        return;
    }
    let repo = Repo::new("dbaowned");
    let mut admin = repo.db.cluster.admin_client("postgres");
    if admin
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .unwrap()
        .get::<_, i32>(0)
        < 150000
    {
        return;
    }
    let role = format!("{}_app", repo.target);
    admin
        .batch_execute(&format!("CREATE ROLE \"{role}\" LOGIN PASSWORD 'apppw'"))
        .unwrap();
    admin
        .batch_execute(&format!("CREATE DATABASE \"{}\"", repo.target))
        .unwrap();
    let run = |repo: &Repo| {
        let out = repo
            .command(&["migrate"], None)
            .env("PGUSER", &role)
            .env("PGPASSWORD", "apppw")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, stderr) = run(&repo);
    assert!(!ok);
    assert!(
        stderr.contains("preflight found")
            && stderr.contains(&format!("GRANT CREATE ON SCHEMA public TO \"{role}\";")),
        "{stderr}"
    );
    assert!(repo.calls().is_empty(), "nothing ran: {:?}", repo.calls());

    admin
        .batch_execute(&format!("DROP DATABASE \"{}\"", repo.target))
        .unwrap();
    let (ok, stderr) = run(&repo);
    assert!(!ok);
    assert!(
        stderr.contains("may not create databases (no CREATEDB)")
            && stderr.contains(&format!(
                "CREATE DATABASE \"{}\" OWNER \"{role}\"",
                repo.target
            )),
        "{stderr}"
    );
    assert!(repo.calls().is_empty());
    admin
        .batch_execute(&format!("DROP ROLE \"{role}\""))
        .unwrap();
}

/// A `--tag1` that does not install Sentry 4 is named right after its buildout, before
/// Sentry touches the SQLite db.
#[test]
fn a_tag_that_installs_the_wrong_sentry_is_named() {
    if skip() {
        return;
    }
    let repo = Repo::new("wrongtag");
    let out = repo.xtask(&["migrate", "--tag1", "buildout/tag2-sentry6.cfg"], None);
    assert!(!out.ok);
    assert!(
        out.stderr.contains(
            "step `buildout-tag1` failed: buildout/tag2-sentry6.cfg (--tag1) installed Sentry 6.4.4, not Sentry 4.x"
        ),
        "{}",
        out.stderr
    );
    assert!(
        !repo.calls().iter().any(|call| call.starts_with("sentry")),
        "no Sentry command ran: {:?}",
        repo.calls()
    );

    // A `--tag2` that installs Sentry 4: named right after its buildout, before Sentry 6's
    // upgrade would run on the loaded target.
    let repo = Repo::new("wrongtag2");
    let out = repo.xtask(
        &[
            "migrate",
            "--engine",
            "loaddata",
            "--tag2",
            "buildout/tag1-sentry4.cfg",
        ],
        None,
    );
    assert!(!out.ok);
    assert!(
        out.stderr.contains(
            "step `buildout-tag2` failed: buildout/tag1-sentry4.cfg (--tag2) installed Sentry 4.10.0, not Sentry 6.x"
        ),
        "{}",
        out.stderr
    );
    let calls = repo.calls();
    let upgrades = calls
        .iter()
        .filter(|call| call.contains("upgrade --noinput"))
        .count();
    assert_eq!(upgrades, 2, "only Sentry 4's upgrades ran: {calls:?}");
}

/// What a finished run's report must hold whatever happened on the way (times aside): every
/// comparison, the rows per table at each phase, the backup's hash.
fn report_facts(repo: &Repo) -> serde_json::Value {
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
fn kill_migrate_when(
    repo: &Repo,
    args: &[&str],
    slow: Option<&str>,
    signal: nix::sys::signal::Signal,
    ready: impl Fn(&Repo) -> bool,
) {
    use std::os::unix::process::CommandExt;
    let mut cmd = repo.command(args, None);
    if let Some(slow) = slow {
        cmd.env("FAKE_SLOW", slow);
    }
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

fn journal_has(repo: &Repo, step: &str) -> bool {
    fs::read_to_string(repo.root.join("dumps/journal.json"))
        .ok()
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        .is_some_and(|journal| {
            journal["steps"]
                .as_array()
                .is_some_and(|steps| steps.iter().any(|s| s["name"] == step))
        })
}

/// The fault matrix with the recording fake and real PostgreSQL: SIGKILL right after every
/// step, and in the middle of each step that runs a long program (SIGHUP for one of them, as
/// a closing terminal sends); each time `migrate` is run again and must finish with the same
/// report as an uninterrupted run, the SQLite source as that run leaves it, the backup
/// byte-identical to the original db.
#[test]
fn a_run_killed_anywhere_resumes_to_the_same_result() {
    if skip() {
        return;
    }
    fault_matrix(&["migrate", "--engine", "loaddata"], 21, true);
}

/// The same for the copy engine: SIGKILL right after each of its steps.
#[test]
fn a_copy_killed_anywhere_resumes_to_the_same_result() {
    if skip() {
        return;
    }
    fault_matrix(&["migrate", "--engine", "copy"], 19, false);
}

fn fault_matrix(args: &[&str], step_count: usize, in_the_middle: bool) {
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

/// PostgreSQL stopped in the middle of the load: the step fails naming the lost connection, the
/// target keeps nothing of the half load (one transaction), and once the server is back the
/// same command finishes the migration.
#[test]
fn postgres_stopped_in_the_middle_of_the_load_is_named_and_the_run_resumes() {
    if skip() {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let sh = xshell::Shell::new().unwrap();
    let cluster = xtask::pgcluster::PgCluster::start(&sh, scratch.path()).unwrap();
    let repo = Repo::new("pgdown");
    let env = cluster.env(&cluster.superuser, &cluster.password, &repo.target);
    let run = |slow: Option<&str>| {
        let mut cmd = repo.command(&["migrate", "--engine", "loaddata"], None);
        cmd.envs(env.iter().cloned());
        if let Some(slow) = slow {
            cmd.env("FAKE_SLOW", slow).env("FAKE_SLOW_SECS", "3");
        }
        cmd.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let child = run(Some("load"));
    let started = std::time::Instant::now();
    while !repo.calls().iter().any(|call| call.contains(" load ")) {
        assert!(started.elapsed().as_secs() < 60, "the load never started");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    cluster.stop().unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("step `pg-load` failed") && stderr.contains("resume: cargo xtask migrate"),
        "{stderr}"
    );
    assert!(
        stderr.contains("Connection refused") || stderr.contains("connection to server"),
        "the cause is named: {stderr}"
    );

    cluster.start_again().unwrap();
    let out = run(None).wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("[21/21] verify-sentry6 … ok"), "{stdout}");
    let mut client = cluster.client(&repo.target).unwrap();
    let events: i64 = client
        .query_one("SELECT count(*) FROM sentry_message", &[])
        .unwrap()
        .get(0);
    assert_eq!(events, 5, "every event, once");
}

/// The journal's recorded sha256 of the source, and the backup's.
fn recorded_hashes(repo: &Repo) -> (String, String) {
    let journal: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(repo.root.join("dumps/journal.json")).unwrap())
            .unwrap();
    (
        journal["source_sha256"].as_str().unwrap().to_string(),
        journal["backup"]["sha256"].as_str().unwrap().to_string(),
    )
}

/// A journal whose migration started from another db than the one now at the source's path
/// (another install's dumps/, or the db replaced since) is refused before anything is touched,
/// naming both sha256s and how to start over; doing what it says migrates the db given.
#[test]
fn a_journal_from_another_source_db_is_refused_naming_both() {
    if skip() {
        return;
    }
    let repo = Repo::new("otherdb");
    let args = ["migrate", "--engine", "loaddata"];
    let out = repo.xtask(&[&args[..], &["--until", "dump-auth"]].concat(), None);
    assert!(out.ok, "{out:#?}");
    let (recorded, backup) = recorded_hashes(&repo);
    // Another install's db at the same path: one more event.
    let db = repo.root.join("var/sentry.db");
    fs::remove_file(&db).unwrap();
    make_sentry4_db(&db, 62);
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute_batch("INSERT INTO sentry_message VALUES (11, 7, '2014-01-01 00:00:00')")
        .unwrap();
    let other = xtask::util::sha256_file(&db).unwrap();
    let before = snapshot_but_lock(&repo.root);
    let calls = repo.calls().len();

    let out = repo.xtask(&args, None);
    assert!(!out.ok, "{out:#?}");
    assert!(
        out.stderr.starts_with(&format!(
            "error: var/sentry.db is not the db dumps/journal.json is migrating: its sha256 is {other}, the journal recorded {recorded}"
        )) && out.stderr.contains(&format!("sha256 {backup}"))
            && out.stderr.contains("nothing was touched"),
        "{}",
        out.stderr
    );
    assert_eq!(out.stderr.trim_end().lines().count(), 1, "{}", out.stderr);
    assert_eq!(snapshot_but_lock(&repo.root), before, "files changed");
    assert_eq!(repo.calls().len(), calls, "a program ran");
    assert!(!repo.target_exists());

    // The way it names: dumps/ moved aside, then the same command migrates this db.
    let mv = out
        .stderr
        .split("start over: move dumps/ aside (`")
        .nth(1)
        .and_then(|rest| rest.split('`').next())
        .unwrap_or_else(|| panic!("a move command: {}", out.stderr));
    let argv = shlex::split(mv).unwrap();
    assert_eq!(argv[..2], ["mv", "dumps"], "{mv}");
    fs::rename(repo.root.join("dumps"), repo.root.join(&argv[2])).unwrap();
    let out = repo.xtask(&args, None);
    assert!(out.ok, "{out:#?}");
    let events: i64 = repo
        .target_client()
        .query_one("SELECT count(*) FROM sentry_message", &[])
        .unwrap()
        .get(0);
    assert_eq!(events, 6, "this db's events, the one added included");
}

/// Sentry 4's `upgrade` killed halfway may leave other bytes in the db, never other events: the
/// resume goes on. Once the steps that write the source are done, any change is refused, and so
/// is a change of the events at any time.
#[test]
fn only_an_interrupted_write_of_sentry4_may_change_the_source() {
    if skip() {
        return;
    }
    let args = ["migrate", "--engine", "loaddata"];
    let until = |step: &'static str| [&args[..], &["--until", step]].concat();
    let write = |repo: &Repo, sql: &str| {
        rusqlite::Connection::open(repo.root.join("var/sentry.db"))
            .unwrap()
            .execute_batch(sql)
            .unwrap()
    };
    let refused = |out: &Output| {
        !out.ok
            && out
                .stderr
                .starts_with("error: var/sentry.db is not the db dumps/journal.json is migrating")
    };

    let repo = Repo::new("srcwrite");
    let out = repo.xtask(&until("settings-sqlite"), None);
    assert!(out.ok, "{out:#?}");
    // What an upgrade killed in the middle leaves: a write that is not an event.
    write(
        &repo,
        "INSERT INTO auth_message VALUES (3, 'half an upgrade')",
    );
    let out = repo.xtask(&until("sqlite-repair"), None);
    assert!(
        out.ok,
        "an interrupted upgrade's write wedged the run: {out:#?}"
    );
    // The steps that write the source are done: the db must be as they left it.
    write(
        &repo,
        "INSERT INTO auth_message VALUES (4, 'written later')",
    );
    let out = repo.xtask(&args, None);
    assert!(refused(&out), "{out:#?}");

    let repo = Repo::new("srcevents");
    let out = repo.xtask(&until("settings-sqlite"), None);
    assert!(out.ok, "{out:#?}");
    write(
        &repo,
        "UPDATE sentry_message SET datetime = '2014-01-01 00:00:00' WHERE id = 1",
    );
    let out = repo.xtask(&args, None);
    assert!(refused(&out), "other events are another db: {out:#?}");
    assert!(
        !repo
            .calls()
            .iter()
            .any(|call| call.contains("upgrade --noinput")),
        "{:?}",
        repo.calls()
    );
}

/// A tmpfs mounted on `dir` for one test, unmounted when dropped. None (the test is skipped,
/// saying so) when not root: mounting needs it; CI runs as root.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    fn mount(dir: &Path, options: &str) -> Option<Tmpfs> {
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

    fn remount(&self, options: &str) {
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
fn fill_all_but(dir: &Path, keep: u64) {
    let free = xtask::util::free_bytes(dir).unwrap();
    fs::write(dir.join("other-data"), vec![0u8; (free - keep) as usize]).unwrap();
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
    }
}

/// dumps/ on a read-only file system: refused before anything is written (no lock, no backup,
/// no program, no database), saying why and what to do.
#[test]
fn dumps_not_writable_is_refused_before_anything() {
    if skip() {
        return;
    }
    let repo = Repo::new("rodumps");
    let Some(_ro) = Tmpfs::mount(&repo.root.join("dumps"), "ro,size=1m,mode=0700") else {
        return;
    };
    let before = snapshot(&repo.root);
    let out = repo.xtask(&["migrate", "--engine", "loaddata"], None);
    assert!(!out.ok, "{out:#?}");
    assert!(
        out.stderr
            .starts_with("error: cannot write in dumps: it is on a read-only file system")
            && out
                .stderr
                .contains("make it writable for this user (or remount its file system read-write)")
            && out.stderr.contains("nothing was touched"),
        "{}",
        out.stderr
    );
    assert_eq!(snapshot(&repo.root), before, "files changed");
    assert!(repo.calls().is_empty(), "a program ran");
    assert!(!repo.target_exists(), "a database was created");
}

/// `n` more events in the repo's source db (ids from 100, group 7).
fn add_events(repo: &Repo, n: u32) {
    rusqlite::Connection::open(repo.root.join("var/sentry.db"))
        .unwrap()
        .execute_batch(&format!(
            "WITH RECURSIVE n(i) AS (SELECT 100 UNION ALL SELECT i + 1 FROM n WHERE i < {}) \
             INSERT INTO sentry_message SELECT i, 7, '2013-02-01 12:00:00' FROM n",
            99 + n
        ))
        .unwrap();
}

/// The disk under dumps/ fills up while `dump-rest` writes: the step fails saying so, naming the
/// file; the partial dump is not taken for a finished one; source and backup are untouched. With
/// the disk enlarged, the same command finishes with the report of an uninterrupted run.
#[test]
fn a_full_disk_while_dumping_is_named_and_the_same_command_finishes() {
    if skip() {
        return;
    }
    let args = ["migrate", "--engine", "loaddata"];
    let reference = Repo::new("fullref");
    add_events(&reference, 3000);
    let out = reference.xtask(&args, None);
    assert!(out.ok, "{out:#?}");
    let expected = report_facts(&reference);

    let repo = Repo::new("fulldisk");
    add_events(&repo, 3000);
    let db = repo.root.join("var/sentry.db");
    let original = fs::read(&db).unwrap();
    let dumps = repo.root.join("dumps");
    let Some(disk) = Tmpfs::mount(&dumps, "size=2m,mode=0700") else {
        return;
    };
    let out = repo.xtask(&[&args[..], &["--until", "dump-auth"]].concat(), None);
    assert!(out.ok, "{out:#?}");
    // Something else fills the disk but 16 KiB: the step's log fits, the main dump does not.
    fill_all_but(&dumps, 16 * 1024);

    let out = repo.xtask(&args, None);
    assert!(!out.ok, "{out:#?}");
    assert!(
        out.stdout.contains("[10/21] dump-rest … FAILED"),
        "{}",
        out.stdout
    );
    assert!(
        out.stderr.starts_with("error: step `dump-rest` failed: ")
            && out.stderr.contains(&format!(
                "no space left on device writing {}",
                dumps.join("dumpdata.json.partial").display()
            )),
        "{}",
        out.stderr
    );
    assert!(
        !journal_has(&repo, "dump-rest"),
        "a partial dump taken as done"
    );
    assert!(!dumps.join("dumpdata.json").exists());
    assert_eq!(fs::read(&db).unwrap(), original, "the source changed");
    assert_eq!(fs::read(recorded_backup(&repo)).unwrap(), original);

    disk.remount("size=8m");
    let out = repo.xtask(&args, None);
    assert!(out.ok, "{out:#?}");
    assert_eq!(report_facts(&repo), expected);
    assert_eq!(fs::read(&db).unwrap(), original, "the source changed");
    assert_eq!(fs::read(recorded_backup(&repo)).unwrap(), original);
}

/// SIGKILL in the middle of `pg-copy`: the test holds a lock on the last table the copy fills,
/// so the run is caught with every other table streamed into its transaction. The target is
/// then as before the copy (rows, keys and indexes), and the same command finishes with the
/// report of an uninterrupted run.
#[test]
fn a_copy_killed_in_the_middle_of_pg_copy_changes_nothing_and_resumes() {
    if skip() {
        return;
    }
    let args = ["migrate", "--engine", "copy"];
    let reference = Repo::new("cpmidref");
    let out = reference.xtask(&args, None);
    assert!(out.ok, "{out:#?}");
    let expected = report_facts(&reference);

    let repo = Repo::new("cpmid");
    let db = repo.root.join("var/sentry.db");
    let original = fs::read(&db).unwrap();
    let out = repo.xtask(&[&args[..], &["--until", "pg-abstime-shim"]].concat(), None);
    assert!(out.ok, "{out:#?}");
    let schema_sql = "SELECT pg_get_indexdef(indexrelid) FROM pg_index i JOIN pg_class t ON t.oid = i.indrelid \
         WHERE t.relnamespace = 'public'::regnamespace \
         UNION ALL SELECT conrelid::regclass::text || ' ' || pg_get_constraintdef(oid) FROM pg_constraint \
         WHERE connamespace = 'public'::regnamespace ORDER BY 1";
    let schema = |client: &mut postgres::Client| -> Vec<String> {
        client
            .query(schema_sql, &[])
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect()
    };
    let rows_before = table_hashes(&mut repo.target_client());
    let schema_before = schema(&mut repo.target_client());
    assert!(schema_before.len() > 10, "{schema_before:?}");

    let mut holder = repo.target_client();
    let mut lock = holder.transaction().unwrap();
    lock.batch_execute("LOCK TABLE south_migrationhistory IN SHARE MODE")
        .unwrap();
    let monitor = std::cell::RefCell::new(repo.db.cluster.admin_client("postgres"));
    let copy_waiting = |repo: &Repo| -> bool {
        monitor
            .borrow_mut()
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 \
                 AND wait_event_type = 'Lock' AND query LIKE 'COPY %south_migrationhistory%'",
                &[&repo.target],
            )
            .unwrap()
            .get::<_, i64>(0)
            > 0
    };
    kill_migrate_when(
        &repo,
        &args,
        None,
        nix::sys::signal::Signal::SIGKILL,
        copy_waiting,
    );
    lock.rollback().unwrap();
    // The server ends the dead client's transaction once it reads from its closed socket.
    let started = std::time::Instant::now();
    while monitor
        .borrow_mut()
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND query LIKE 'COPY %'",
            &[&repo.target],
        )
        .unwrap()
        .get::<_, i64>(0)
        > 0
    {
        assert!(
            started.elapsed().as_secs() < 30,
            "the killed copy's backend stays"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(!journal_has(&repo, "pg-copy"));
    assert_eq!(
        table_hashes(&mut repo.target_client()),
        rows_before,
        "rows changed"
    );
    assert_eq!(
        schema(&mut repo.target_client()),
        schema_before,
        "keys or indexes changed"
    );

    let out = repo.xtask(&args, None);
    assert!(out.ok, "{out:#?}");
    assert_eq!(report_facts(&repo), expected);
    assert_eq!(fs::read(&db).unwrap(), original, "the source changed");
    assert_eq!(fs::read(recorded_backup(&repo)).unwrap(), original);
}

/// A settings file Python cannot compile is refused in preflight by the install's own bin/py,
/// naming the file and the line, before the backup or any Sentry step.
#[test]
fn settings_that_are_not_python_are_refused_in_preflight() {
    if skip() {
        return;
    }
    let repo = Repo::new("syntax");
    // An installed Sentry 4 has bin/py (the fake's buildout makes it the same way).
    fs::copy(repo.root.join("bin/buildout"), repo.root.join("bin/py")).unwrap();
    fs::write(repo.root.join("bin/.tag"), "4").unwrap();
    fs::write(
        repo.root.join("settings/sentry_conf.py"),
        "TIME_ZONE = 'UTC'\nif DEBUG\n    ALLOWED_HOSTS = ['*']\n",
    )
    .unwrap();
    let out = repo.xtask(&["migrate", "--engine", "copy"], None);
    assert!(!out.ok, "{out:#?}");
    assert!(
        out.stderr
            .contains("  - settings/sentry_conf.py is not valid Python (line 2: ")
            && out
                .stderr
                .contains("): fix it (Sentry would stop on it at its first step)"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("step `preflight` failed"),
        "{}",
        out.stderr
    );
    let calls = repo.calls();
    assert!(
        calls.iter().all(|call| call.contains("check-syntax")),
        "only the syntax check ran: {calls:?}"
    );
    let backups = fs::read_dir(repo.root.join("var"))
        .unwrap()
        .filter(|entry| {
            entry
                .as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains("backup")
        })
        .count();
    assert_eq!(backups, 0, "no backup was made");
    assert!(!repo.target_exists());

    // Fixed, the same command runs.
    fs::write(
        repo.root.join("settings/sentry_conf.py"),
        "TIME_ZONE = 'UTC'\n",
    )
    .unwrap();
    let out = repo.xtask(
        &["migrate", "--engine", "copy", "--until", "preflight"],
        None,
    );
    assert!(out.ok, "{out:#?}");
}

/// `dumps/` this user may not write (modes, not a read-only file system): the install belongs
/// to `nobody`, who runs `migrate`, but dumps/ is root's 0755. Refused before anything, naming
/// the user. Needs root to switch users (CI runs as root); elsewhere it says it is skipped.
#[test]
fn dumps_without_write_permission_are_refused_before_anything() {
    use std::os::unix::process::CommandExt;
    if skip() {
        return;
    }
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: switching to `nobody` needs root");
        return;
    }
    let nobody = nix::unistd::User::from_name("nobody")
        .unwrap()
        .expect("a `nobody` user");
    let repo = Repo::new("permdumps");
    fn chown_all(path: &Path, uid: u32, gid: u32) {
        std::os::unix::fs::lchown(path, Some(uid), Some(gid)).unwrap();
        if path.is_dir() && !path.is_symlink() {
            for entry in fs::read_dir(path).unwrap() {
                chown_all(&entry.unwrap().path(), uid, gid);
            }
        }
    }
    chown_all(&repo.root, nobody.uid.as_raw(), nobody.gid.as_raw());
    let dumps = repo.root.join("dumps");
    std::os::unix::fs::chown(&dumps, Some(0), Some(0)).unwrap();
    fs::set_permissions(&dumps, fs::Permissions::from_mode(0o755)).unwrap();
    let before = snapshot(&repo.root);
    let mut cmd = repo.command(&["migrate", "--engine", "copy"], None);
    cmd.uid(nobody.uid.as_raw())
        .gid(nobody.gid.as_raw())
        .env("HOME", &repo.root);
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.starts_with(&format!(
            "error: cannot write in dumps: this user (uid {}) may not write there",
            nobody.uid
        )) && stderr.contains("make it writable for this user")
            && stderr.contains("nothing was touched"),
        "{stderr}"
    );
    assert_eq!(snapshot(&repo.root), before, "files changed");
    assert!(repo.calls().is_empty(), "a program ran");
    assert!(!repo.target_exists(), "a database was created");
}

/// The disk beside the db fills up after preflight (which checked it had room): the backup
/// fails saying so, naming the file, leaves no half-written backup behind and the source as it
/// was; with room again, the same command makes the backup and finishes with the report of an
/// uninterrupted run.
#[test]
fn a_full_disk_beside_the_db_fails_the_backup_and_the_same_command_finishes() {
    if skip() {
        return;
    }
    let args = ["migrate", "--engine", "copy"];
    let reference = Repo::new("fullvarref");
    add_events(&reference, 3000);
    let out = reference.xtask(&args, None);
    assert!(out.ok, "{out:#?}");
    let expected = report_facts(&reference);

    let repo = Repo::new("fullvar");
    add_events(&repo, 3000);
    let var = repo.root.join("var");
    let db = var.join("sentry.db");
    let original = fs::read(&db).unwrap();
    fs::remove_file(&db).unwrap();
    let size_kib = original.len() / 1024 + 1;
    let Some(disk) = Tmpfs::mount(&var, &format!("size={}k,mode=0755", size_kib * 4)) else {
        return;
    };
    fs::write(&db, &original).unwrap();
    let out = repo.xtask(&[&args[..], &["--until", "preflight"]].concat(), None);
    assert!(out.ok, "{out:#?}");
    // Something else takes the room preflight saw, but 16 KiB.
    fill_all_but(&var, 16 * 1024);

    let out = repo.xtask(&args, None);
    assert!(!out.ok, "{out:#?}");
    assert!(
        out.stdout.contains("[2/19] backup-sqlite … FAILED"),
        "{}",
        out.stdout
    );
    assert!(
        out.stderr.contains("no space left on device") && out.stderr.contains("sentry.db.backup-"),
        "{}",
        out.stderr
    );
    let leftovers: Vec<String> = fs::read_dir(&var)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.contains("backup"))
        .collect();
    assert!(leftovers.is_empty(), "a half-written backup: {leftovers:?}");
    assert!(!journal_has(&repo, "backup-sqlite"));
    assert_eq!(fs::read(&db).unwrap(), original, "the source changed");
    assert!(!repo.target_exists(), "nothing reached PostgreSQL");

    fs::remove_file(var.join("other-data")).unwrap();
    let out = repo.xtask(&args, None);
    assert!(out.ok, "{out:#?}");
    assert_eq!(report_facts(&repo), expected);
    assert_eq!(fs::read(recorded_backup(&repo)).unwrap(), original);
    drop(disk);
}

/// SIGKILL in the middle of `backup-sqlite` (a db big enough for the copy to take a moment):
/// no file is left under a backup's name unless it is a whole copy, and the same command makes
/// the backup again (the interrupted copy removed) and ends with the report of an
/// uninterrupted run.
#[test]
fn a_run_killed_in_the_middle_of_the_backup_leaves_no_partial_backup_and_resumes() {
    if skip() {
        return;
    }
    let args = ["migrate", "--engine", "copy"];
    // 96 MiB in a table no model has (carried over by no engine, reported as SQLite-only).
    let bloat = |repo: &Repo| {
        rusqlite::Connection::open(repo.root.join("var/sentry.db"))
            .unwrap()
            .execute_batch(
                "CREATE TABLE bloat (b blob); \
                 WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 96) \
                 INSERT INTO bloat SELECT zeroblob(1048576) FROM n",
            )
            .unwrap();
    };
    let reference = Repo::new("bkref");
    bloat(&reference);
    let out = reference.xtask(&args, None);
    assert!(out.ok, "{out:#?}");
    let expected = report_facts(&reference);

    let repo = Repo::new("bkkill");
    bloat(&repo);
    let db = repo.root.join("var/sentry.db");
    let original = fs::read(&db).unwrap();
    let backups = |repo: &Repo| -> Vec<PathBuf> {
        fs::read_dir(repo.root.join("var"))
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .filter(|path| path.to_string_lossy().contains("sentry.db.backup-"))
            .collect()
    };
    kill_migrate_when(
        &repo,
        &args,
        None,
        nix::sys::signal::Signal::SIGKILL,
        |repo| !backups(repo).is_empty(),
    );
    assert!(
        !journal_has(&repo, "backup-sqlite"),
        "killed after the step"
    );
    for path in backups(&repo) {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            name.ends_with(".partial") || fs::read(&path).unwrap() == original,
            "{name} is under a backup's name but not a whole copy"
        );
    }
    assert_eq!(fs::read(&db).unwrap(), original, "the source changed");

    let out = repo.xtask(&args, None);
    assert!(out.ok, "{out:#?}");
    assert_eq!(report_facts(&repo), expected);
    assert_eq!(fs::read(recorded_backup(&repo)).unwrap(), original);
    assert!(
        backups(&repo)
            .iter()
            .all(|path| !path.to_string_lossy().ends_with(".partial")),
        "the interrupted copy is gone: {:?}",
        backups(&repo)
    );
}

/// SIGKILL in the middle of `fit-values` (its working copy being written): the working copy
/// is never left under its own name half made, and the same command fits it again and ends
/// with the report of an uninterrupted run, the source unchanged.
#[test]
fn a_run_killed_in_the_middle_of_fit_values_resumes_to_the_same_result() {
    if skip() {
        return;
    }
    let args = ["migrate", "--engine", "copy", "--fit-values"];
    // A value PostgreSQL refuses (NUL in a varchar(200)), and 96 MiB the copy takes a moment
    // over.
    let prepare = |repo: &Repo| {
        rusqlite::Connection::open(repo.root.join("var/sentry.db"))
            .unwrap()
            .execute_batch(
                "ALTER TABLE sentry_project RENAME TO old_project;
                 CREATE TABLE sentry_project (id integer PRIMARY KEY, name varchar(200));
                 INSERT INTO sentry_project SELECT * FROM old_project;
                 DROP TABLE old_project;
                 UPDATE sentry_project SET name = 'web' || char(0) || 'site' WHERE id = 3;
                 CREATE TABLE bloat (b blob);
                 WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 96)
                 INSERT INTO bloat SELECT zeroblob(1048576) FROM n;",
            )
            .unwrap();
    };
    let reference = Repo::new("fitref");
    prepare(&reference);
    let out = reference.xtask(&args, None);
    assert!(out.ok, "{out:#?}");
    let expected = report_facts(&reference);

    let repo = Repo::new("fitkill");
    prepare(&repo);
    let db = repo.root.join("var/sentry.db");
    let original = fs::read(&db).unwrap();
    let working = repo.root.join("dumps/sentry-fitted.db");
    let partial = repo.root.join("dumps/sentry-fitted.db.partial");
    kill_migrate_when(
        &repo,
        &args,
        None,
        nix::sys::signal::Signal::SIGKILL,
        |_| partial.exists(),
    );
    assert!(!journal_has(&repo, "fit-values"), "killed after the step");
    assert!(
        !working.exists(),
        "a half-made working copy under its own name"
    );
    assert_eq!(fs::read(&db).unwrap(), original, "the source changed");

    let out = repo.xtask(&args, None);
    assert!(out.ok, "{out:#?}");
    assert_eq!(report_facts(&repo), expected);
    assert!(!partial.exists(), "the interrupted copy is gone");
    assert_eq!(fs::read(&db).unwrap(), original, "the source changed");
    assert_eq!(fs::read(recorded_backup(&repo)).unwrap(), original);
}
