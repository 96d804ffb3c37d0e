//! The fault matrix: kills, a stopped server and full disks, each followed by the same command, which must finish with an uninterrupted run's result.
//! The real `xtask` binary on a scratch repo with the recording fake (tests/fake/fake_sentry.py)
//! and a real PostgreSQL; the harness is `common/`.

mod common;

use common::*;

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

/// SIGKILL in the middle of `pg-copy`: the test holds a lock on one of the last tables the copy
/// fills (the smallest go last), so the run is caught with the other tables streamed into its
/// sessions' transactions. No row is loaded; the keys and indexes dropped by the first
/// transaction are kept in the marker, and the same command finishes with the report and the
/// schema of an uninterrupted run.
#[test]
fn a_copy_killed_in_the_middle_of_pg_copy_loads_no_row_and_resumes() {
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
    // The first transaction committed the drops with the marker, which keeps what re-creates
    // each of them; what is left of the schema and the marker's statements make the whole.
    let rebuild: String = repo
        .target_client()
        .query_one("SELECT rebuild FROM sentry_migrate_load", &[])
        .unwrap()
        .get(0);
    let rebuild: Vec<String> = serde_json::from_str(&rebuild).unwrap();
    let left = schema(&mut repo.target_client());
    assert!(
        schema_before.len() > left.len() && !rebuild.is_empty(),
        "{left:?} {rebuild:?}"
    );

    let out = repo.xtask(&args, None);
    assert!(out.ok, "{out:#?}");
    assert_eq!(report_facts(&repo), expected);
    assert_eq!(
        schema(&mut repo.target_client()),
        schema(&mut reference.target_client()),
        "every key and index back, once"
    );
    assert_eq!(fs::read(&db).unwrap(), original, "the source changed");
    assert_eq!(fs::read(recorded_backup(&repo)).unwrap(), original);
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

/// SIGKILL after a load's commit, before the journal records the step (the tool's test switch
/// holds the run there): every row is in PostgreSQL and the journal does not know it. The same
/// command recognises its own committed load of this source (the marker the load's transaction
/// wrote), loads again in one transaction and ends with the report of an uninterrupted run,
/// for both engines (`pg-copy`, `pg-load`); a marker of other input is refused as today.
#[test]
fn a_load_killed_after_its_commit_before_the_journal_resumes_to_the_same_result() {
    if skip() {
        return;
    }
    for (engine, step) in [("copy", "pg-copy"), ("loaddata", "pg-load")] {
        let args = ["migrate", "--engine", engine];
        let reference = Repo::new("commitref");
        let out = reference.xtask(&args, None);
        assert!(out.ok, "{engine}: {out:#?}");
        let expected = report_facts(&reference);

        let repo = Repo::new("commitkill");
        let db = repo.root.join("var/sentry.db");
        let original = fs::read(&db).unwrap();
        let held = |repo: &Repo| {
            fs::read_dir(repo.root.join("dumps/logs"))
                .into_iter()
                .flatten()
                .flatten()
                .any(|entry| {
                    fs::read_to_string(entry.path())
                        .is_ok_and(|log| log.contains("held before the journal"))
                })
        };
        kill_migrate_with_env_when(
            &repo,
            &args,
            &[(xtask::execute::TEST_HOLD_BEFORE_JOURNAL, step)],
            nix::sys::signal::Signal::SIGKILL,
            held,
        );
        assert!(
            !journal_has(&repo, step),
            "{engine}: killed before the journal"
        );
        let events: i64 = repo
            .target_client()
            .query_one("SELECT count(*) FROM sentry_message", &[])
            .unwrap()
            .get(0);
        assert_eq!(events, 5, "{engine}: killed after the commit");

        // A load of other input (or data without the marker) is still refused as not ours.
        let input: String = repo
            .target_client()
            .query_one("SELECT input FROM sentry_migrate_load", &[])
            .unwrap()
            .get(0);
        let set_input = |input: &str| {
            repo.target_client()
                .execute("UPDATE sentry_migrate_load SET input = $1", &[&input])
                .unwrap();
        };
        set_input("dumps/other.json sha256 0");
        let out = repo.xtask(&args, None);
        assert!(
            !out.ok
                && out.stderr.contains(&format!(
                    "step `{step}` failed: the target is not empty before the"
                )),
            "{engine}: {out:#?}"
        );
        set_input(&input);

        let out = repo.xtask(&args, None);
        assert!(out.ok, "{engine}: the run after the fault failed: {out:#?}");
        assert_eq!(
            report_facts(&repo),
            expected,
            "{engine}: a different result"
        );
        assert_eq!(
            fs::read(&db).unwrap(),
            original,
            "{engine}: the source changed"
        );
        assert_eq!(fs::read(recorded_backup(&repo)).unwrap(), original);
        assert_eq!(
            table_hashes(&mut repo.target_client()),
            table_hashes(&mut reference.target_client()),
            "{engine}: the target differs from an uninterrupted run's"
        );
        let marker: Option<String> = repo
            .target_client()
            .query_one("SELECT to_regclass('sentry_migrate_load')::text", &[])
            .unwrap()
            .get(0);
        assert_eq!(
            marker, None,
            "{engine}: verify-sentry6 drops the load's marker"
        );
    }
}

/// The copy killed after its sessions committed the rows and before the indexes and foreign keys
/// it dropped are back: the target holds the rows without them and the marker keeps the
/// statements; verify-postgres would refuse it; the run again clears, loads and re-creates each
/// once, to an uninterrupted run's result, schema included.
#[test]
fn a_copy_killed_before_its_indexes_and_keys_are_back_resumes_to_the_same_result() {
    if skip() {
        return;
    }
    let args = ["migrate", "--engine", "copy"];
    let reference = Repo::new("rowsref");
    let out = reference.xtask(&args, None);
    assert!(out.ok, "{out:#?}");

    // Resumed as it was started, and with the other engine from where it says to start
    // (the database this run created is made again; the keys are those of Sentry's schema).
    for resume in [
        &args[..],
        &[
            "migrate",
            "--engine",
            "loaddata",
            "--from",
            "settings-sqlite",
        ][..],
    ] {
        let repo = Repo::new("rowskill");
        let pending = |repo: &Repo| -> Option<Vec<String>> {
            let mut client = repo.target_client();
            let rebuild: Option<String> = client
                .query_opt("SELECT rebuild FROM sentry_migrate_load", &[])
                .ok()
                .flatten()
                .and_then(|row| row.get(0));
            let events: i64 = client
                .query_one("SELECT count(*) FROM sentry_message", &[])
                .map_or(0, |row| row.get(0));
            rebuild
                .filter(|_| events > 0)
                .map(|it| serde_json::from_str(&it).unwrap())
        };
        kill_migrate_with_env_when(
            &repo,
            &args,
            &[(xtask::execute::TEST_HOLD_BEFORE_JOURNAL, "pg-copy:rows")],
            nix::sys::signal::Signal::SIGKILL,
            |repo| repo.target_exists() && pending(repo).is_some(),
        );
        let statements = pending(&repo).unwrap();
        assert!(
            statements.iter().any(|it| it.starts_with("CREATE INDEX"))
                && statements.iter().any(|it| it.contains("FOREIGN KEY")),
            "{statements:?}"
        );
        let keys = |repo: &Repo| -> Vec<String> {
            repo.target_client()
            .query(
                "SELECT conrelid::regclass::text || ' ' || pg_get_constraintdef(oid) FROM pg_constraint \
                 WHERE connamespace = 'public'::regnamespace \
                 UNION ALL SELECT pg_get_indexdef(indexrelid) FROM pg_index i JOIN pg_class t ON t.oid = i.indrelid \
                 WHERE t.relnamespace = 'public'::regnamespace ORDER BY 1",
                &[],
            )
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect()
        };
        assert!(
            !keys(&repo).iter().any(|it| it.contains("FOREIGN KEY")),
            "killed before the keys came back"
        );
        assert!(!journal_has(&repo, "pg-copy"));

        let out = repo.xtask(resume, None);
        assert!(
            out.ok,
            "the run after the fault failed ({resume:?}): {out:#?}"
        );
        if resume == args {
            assert_eq!(report_facts(&repo), report_facts(&reference));
        }
        assert_eq!(
            table_hashes(&mut repo.target_client()),
            table_hashes(&mut reference.target_client()),
            "{resume:?}"
        );
        assert_eq!(
            keys(&repo),
            keys(&reference),
            "every index and key once: {resume:?}"
        );
    }
}
