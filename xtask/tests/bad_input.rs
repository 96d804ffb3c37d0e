//! Bad input: each refusal names what is wrong and what to do, before anything is touched.
//! The real `xtask` binary on a scratch repo with the recording fake (tests/fake/fake_sentry.py)
//! and a real PostgreSQL; the harness is `common/`.

mod common;

use common::*;

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
        .filter(|call| call.contains(" upgrade"))
        .count();
    assert_eq!(upgrades, 2, "only Sentry 4's upgrades ran: {calls:?}");
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
        !repo.calls().iter().any(|call| call.contains(" upgrade")),
        "{:?}",
        repo.calls()
    );
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

/// `bench --seed-db` naming no file is refused at once, before anything is provisioned.
#[test]
fn a_bench_seed_db_that_is_not_there_is_refused_at_once() {
    let started = std::time::Instant::now();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args([
            "bench",
            "--methods",
            "copy",
            "--sizes",
            "10k",
            "--seed-db",
            "/nonexistent/sentry.db",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("--seed-db /nonexistent/sentry.db: no such file"),
        "{stderr}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}
