//! Rollback: back to Sentry 4 from the verified backup, and its refusals.
//! The real `xtask` binary on a scratch repo with the recording fake (tests/fake/fake_sentry.py)
//! and a real PostgreSQL; the harness is `common/`.

mod common;

use common::*;

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

/// A migration that carried no event (a fresh install) records no highest event id: every event
/// in the target is then new. Counted, not guessed: no --force needed while there are none.
#[test]
fn rollback_after_migrating_no_events_needs_no_force() {
    if skip() {
        return;
    }
    let repo = Repo::new("rollbacknoev");
    rusqlite::Connection::open(repo.root.join("var/sentry.db"))
        .unwrap()
        .execute_batch("DELETE FROM sentry_message")
        .unwrap();
    let out = repo.xtask(&["migrate"], None);
    assert!(out.ok, "{out:#?}");
    let calls = repo.calls().len();

    // One event arrived in Sentry 6: refused, counted from id 0.
    repo.target_client()
        .batch_execute("INSERT INTO sentry_message (id, group_id) VALUES (1, 1)")
        .unwrap();
    let out = repo.xtask(&["rollback"], None);
    assert!(!out.ok, "{out:#?}");
    assert!(
        out.stderr.contains(
            "Sentry 6 stored 1 event(s) after the migration (ids past 0 in sentry_message"
        ),
        "{}",
        out.stderr
    );
    assert_eq!(repo.calls().len(), calls, "a program ran");

    repo.target_client()
        .batch_execute("DELETE FROM sentry_message")
        .unwrap();
    let out = repo.xtask(&["rollback"], None);
    assert!(out.ok, "{out:#?}");
    assert_eq!(repo.calls().len(), calls + 1, "buildout tag 1 ran");
}
