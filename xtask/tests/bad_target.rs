//! Bad input about the target database, refused in preflight before any SQL, dump or program:
//! names that are not plain identifiers, missing privileges (with the SQL a DBA runs), an
//! encoding other than UTF8. The real `xtask` binary with the recording fake; harness `common/`.

mod common;

use common::*;

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

/// An existing target database in another encoding than UTF8 is refused in preflight, naming
/// the encoding, with the SQL a DBA runs: in SQL_ASCII `ééé` overflows a varchar(3) the scan
/// counted as fitting, LATIN1 refuses an emoji, both only at `pg-copy`, after Sentry's upgrade.
#[test]
fn a_target_database_not_in_utf8_is_refused_in_preflight() {
    if skip() {
        return;
    }
    for encoding in ["SQL_ASCII", "LATIN1"] {
        let repo = Repo::new("encoding");
        let mut admin = repo.db.cluster.admin_client("postgres");
        admin
            .batch_execute(&format!(
                "CREATE DATABASE \"{}\" ENCODING '{encoding}' TEMPLATE template0 LC_COLLATE 'C' LC_CTYPE 'C'",
                repo.target
            ))
            .unwrap();
        let source = fs::read(repo.root.join("var/sentry.db")).unwrap();
        let out = repo.xtask(&["migrate"], None);
        assert!(!out.ok);
        let create = format!(
            "CREATE DATABASE \"{}\" OWNER \"postgres\" ENCODING 'UTF8' TEMPLATE template0;",
            repo.target
        );
        assert!(
            out.stderr.contains("preflight found")
                && out.stderr.contains(&format!(
                    "database `{}` has encoding {encoding}, and Sentry's data needs UTF8",
                    repo.target
                ))
                && out.stderr.contains(&create),
            "{}",
            out.stderr
        );
        assert!(repo.calls().is_empty(), "nothing ran: {:?}", repo.calls());
        assert_eq!(fs::read(repo.root.join("var/sentry.db")).unwrap(), source);
        assert!(!repo.root.join("settings/settings_local.py").exists());
        let mut target = repo.target_client();
        let (encoding_now, tables): (String, i64) = {
            let row = target
                .query_one(
                    "SELECT pg_encoding_to_char(encoding)::text, (SELECT count(*) FROM pg_tables WHERE schemaname = 'public') \
                     FROM pg_database WHERE datname = current_database()",
                    &[],
                )
                .unwrap();
            (row.get(0), row.get(1))
        };
        assert_eq!(
            (encoding_now.as_str(), tables),
            (encoding, 0),
            "the target is as it was"
        );
        drop(target);
        admin
            .batch_execute(&format!("DROP DATABASE \"{}\"", repo.target))
            .unwrap();
    }
}
