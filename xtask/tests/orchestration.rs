//! Orchestration: a whole run, a failed step and its resume, the dry run, the lock, hints, --from/--until.
//! The real `xtask` binary on a scratch repo with the recording fake (tests/fake/fake_sentry.py)
//! and a real PostgreSQL; the harness is `common/`.

mod common;

use common::*;

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
        "py xtask/python/sentry_helper.py --config=settings/settings.py upgrade",
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
    // The fake's events are from 2013: Sentry 6's stream (5 days by default) hides them all.
    for line in [
        "## Sentry 6's event stream",
        "- web (id 3): 1 of 1 groups last seen more than 5 days ago are not on its stream by default",
        "- api (id 4): 1 of 1 groups",
        "it has no team, so Sentry 6 gives it no stream page",
    ] {
        assert!(report.contains(line), "{line}: {report}");
    }
    assert!(
        out.stdout.contains("  stream: web (id 3): 1 of 1 groups"),
        "{}",
        out.stdout
    );
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
        "sql (each model table, the largest first, the next one to the session that is free; its columns that SQLite has): COPY {table} ({columns}) FROM STDIN",
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
fn the_dry_run_warns_of_what_preflight_will_stop_on() {
    if skip() {
        return;
    }
    let repo = Repo::new("drywarn");
    let out = repo.xtask(&["migrate", "--dry-run"], None);
    assert!(out.ok, "{out:#?}");
    assert!(
        !out.stdout.contains("preflight will stop"),
        "{}",
        out.stdout
    );

    fs::remove_file(repo.root.join("var/sentry.db")).unwrap();
    fs::remove_file(repo.root.join("bin/buildout")).unwrap();
    fs::write(repo.root.join("settings/sentry_conf.py"), "# no zone\n").unwrap();
    let out = repo.xtask(&["migrate", "--dry-run"], None);
    assert!(out.ok, "{out:#?}");
    for line in [
        "warning: preflight will stop on:",
        "  - bin/buildout is missing: bootstrap buildout in this repo first",
        "/var/sentry.db does not exist: pass its path with --sqlite PATH",
        "TIME_ZONE is not set in the settings: migrate stops in preflight",
    ] {
        assert!(out.stdout.contains(line), "{line}: {}", out.stdout);
    }
    // Preflight stops on the same two, in the same words.
    let out = repo.xtask(&["migrate"], None);
    assert!(!out.ok);
    assert!(
        out.stderr.contains("bin/buildout is missing"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("/var/sentry.db does not exist"),
        "{}",
        out.stderr
    );
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

/// `--fit-values` is remembered as the engine is: a run with it that fails after `fit-values`
/// names it in the resume command, and a plain `migrate` resumes with it (the copy reads the
/// fitted working copy, not the source with values PostgreSQL rejects).
#[test]
fn fit_values_is_remembered_by_the_journal_and_named_in_the_resume_command() {
    if skip() {
        return;
    }
    let repo = Repo::new("fitresume");
    rusqlite::Connection::open(repo.root.join("var/sentry.db"))
        .unwrap()
        .execute_batch(
            "ALTER TABLE sentry_project RENAME TO old_project;
             CREATE TABLE sentry_project (id integer PRIMARY KEY, name varchar(200));
             INSERT INTO sentry_project SELECT * FROM old_project;
             DROP TABLE old_project;
             UPDATE sentry_project SET name = 'web' || char(0) || 'site' WHERE id = 3;",
        )
        .unwrap();
    let out = repo.xtask(&["migrate", "--fit-values"], Some("upgrade-pg"));
    assert!(!out.ok, "{out:#?}");
    assert!(journal_has(&repo, "fit-values"), "{out:#?}");
    assert!(
        out.stderr.contains("step `pg-upgrade` failed")
            && out
                .stderr
                .contains("resume: cargo xtask migrate --fit-values (starts again"),
        "{}",
        out.stderr
    );

    let dry = repo.xtask(&["migrate", "--dry-run"], None);
    assert!(
        dry.stdout.contains("fit-values: fit those values"),
        "{}",
        dry.stdout
    );
    let out = repo.xtask(&["migrate"], None);
    assert!(out.ok, "{out:#?}");
    assert!(
        out.stdout
            .contains("[9/20] fit-values … done earlier (journal)"),
        "{}",
        out.stdout
    );
    let name: String = repo
        .target_client()
        .query_one("SELECT name FROM sentry_project WHERE id = 3", &[])
        .unwrap()
        .get(0);
    assert_eq!(name, "website", "the copy read the fitted working copy");
}
