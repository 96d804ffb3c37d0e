//! The throwaway PostgreSQL of the tests, the rehearsal and the bench is this user's alone:
//! another OS user (`nobody`) can neither reach its socket nor log in over TCP, with no
//! password or the old guessable one; its folder and the scratch folders are private and
//! named unpredictably.

use std::{
    fs,
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::Path,
};

use xshell::{cmd, Shell};
use xtask::pgcluster::PgCluster;

/// What is tried, psql's arguments, its environment.
type Case<'a> = (&'a str, Vec<&'a str>, Vec<(&'a str, &'a str)>);

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// `psql -c 'select 1'` run as `nobody` with `env` (a password, if any, only in the
/// environment); whether it connected, and what it said.
fn psql_as_nobody(sh: &Shell, args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let query = "select 1";
    let mut cmd = cmd!(sh, "runuser -u nobody -- psql -X -w -c {query} {args...}")
        .env_remove("PGPASSWORD")
        .env_remove("PGPASSFILE")
        .env("HOME", "/nonexistent")
        .ignore_status()
        .quiet();
    for (key, value) in env {
        cmd = cmd.env(key, value);
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn another_user_cannot_reach_the_throwaway_postgres() {
    if xtask::pgcluster::testing::skip() {
        return;
    }
    if !is_root() {
        eprintln!("skipped: switching to `nobody` needs root (CI runs as root)");
        return;
    }
    let sh = Shell::new().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().join("pg");
    let cluster = PgCluster::start(&sh, &dir).unwrap();
    let port = cluster.port.to_string();

    // The owner (this test, root) connects over TCP with the password: the cases below fail
    // for the reasons they name, not because the server is down.
    let mut client = cluster.client("postgres").unwrap();
    let one: i32 = client.query_one("SELECT 1", &[]).unwrap().get(0);
    assert_eq!(one, 1);

    let socket = dir.display().to_string();
    let old = format!("pw{}", std::process::id());
    let cases: [Case; 4] = [
        (
            "the socket, no password",
            vec!["-h", &socket, "-p", &port, "-U", "postgres", "postgres"],
            vec![],
        ),
        (
            "TCP, the old guessable password",
            vec!["-h", "127.0.0.1", "-p", &port, "-U", "postgres", "postgres"],
            vec![("PGPASSWORD", old.as_str())],
        ),
        (
            "TCP, an empty password",
            vec!["-h", "127.0.0.1", "-p", &port, "-U", "postgres", "postgres"],
            vec![("PGPASSWORD", "")],
        ),
        (
            "TCP, as its own OS name with no password",
            vec!["-h", "127.0.0.1", "-p", &port, "-U", "nobody", "postgres"],
            vec![],
        ),
    ];
    for (what, args, env) in &cases {
        let (connected, said) = psql_as_nobody(&sh, args, env);
        assert!(!connected, "{what}: nobody connected");
        assert!(!said.is_empty(), "{what}: psql said nothing");
    }
    // The socket folder cannot even be entered.
    let (listed, _) = {
        let out = cmd!(sh, "runuser -u nobody -- ls {dir}")
            .ignore_status()
            .quiet()
            .output()
            .unwrap();
        (out.status.success(), ())
    };
    assert!(!listed, "nobody listed the cluster folder");
    // The folder holding the data, the log and the socket: the server user's only.
    let meta = fs::metadata(&dir).unwrap();
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o700,
        "cluster folder mode"
    );
    let (postgres_uid, _) = xtask::pgcluster::server_user("postgres").unwrap();
    assert_eq!(meta.uid(), postgres_uid, "cluster folder owner");

    // A password no one can guess from what `ps` shows (it used to be `pw<pid>`).
    assert!(cluster.password.len() >= 32, "{}", cluster.password.len());
    assert!(!cluster.password.starts_with("pw"));

    // The right password over TCP works for whoever has it: the refusals above are about
    // who asks, not a dead server.
    let (connected, said) = psql_as_nobody(
        &sh,
        &["-h", "127.0.0.1", "-p", &port, "-U", "postgres", "postgres"],
        &[("PGPASSWORD", cluster.password.as_str())],
    );
    assert!(connected, "the password itself must work: {said}");
}

#[test]
fn a_cluster_folder_someone_else_made_is_refused() {
    if xtask::pgcluster::testing::skip() {
        return;
    }
    let sh = Shell::new().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    // A folder with something in it (someone prepared it): refused, never taken over.
    let dir = scratch.path().join("pg");
    fs::create_dir(&dir).unwrap();
    fs::write(dir.join("planted"), "x").unwrap();
    let err = PgCluster::start(&sh, &dir).err().expect("refused");
    assert!(
        format!("{err:#}").contains("is not an empty folder of this user's"),
        "{err:#}"
    );
    // A symlink to elsewhere: refused too.
    let link = scratch.path().join("link");
    std::os::unix::fs::symlink(scratch.path(), &link).unwrap();
    assert!(PgCluster::start(&sh, &link).is_err());
    if is_root() {
        // An empty folder owned by another user: refused.
        let theirs = scratch.path().join("theirs");
        fs::create_dir(&theirs).unwrap();
        let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
        std::os::unix::fs::chown(&theirs, Some(nobody.uid.as_raw()), None).unwrap();
        assert!(PgCluster::start(&sh, &theirs).is_err());
    }
}

#[test]
fn scratch_folders_are_private_and_unpredictable() {
    let a = xtask::rehearse::Scratch::new("sentry-migrate-test-", false).unwrap();
    let b = xtask::rehearse::Scratch::new("sentry-migrate-test-", false).unwrap();
    assert_ne!(a.path, b.path);
    for scratch in [&a, &b] {
        let name = scratch.path.file_name().unwrap().to_str().unwrap();
        assert!(
            name.len() > "sentry-migrate-test-".len() + 4,
            "no random part: {name}"
        );
        assert!(!name.contains(&std::process::id().to_string()), "{name}");
        let mode = fs::metadata(&scratch.path).unwrap().permissions().mode() & 0o777;
        let expected = if is_root() { 0o750 } else { 0o700 };
        assert_eq!(mode, expected, "{}", scratch.path.display());
        assert!(Path::new(&scratch.path).join("logs").is_dir());
    }
    let path = a.path.clone();
    drop(a);
    assert!(!path.exists(), "a scratch folder not kept is removed");
}
