//! Secrets: passwords never printed or on a command line; dumps and backups private.
//! The real `xtask` binary on a scratch repo with the recording fake (tests/fake/fake_sentry.py)
//! and a real PostgreSQL; the harness is `common/`.

mod common;

use common::*;

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
