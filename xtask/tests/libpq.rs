//! The tool's connection settings against `psql` (libpq) on the same environment, one table
//! row per habit users bring: both connect, or both fail for the same reason (and the tool
//! names it), or the tool refuses what it does not implement. A cluster of its own, with a
//! pg_hba.conf that asks for a password on TCP and on the Unix socket alike, so the test does
//! not depend on the shared test cluster's authentication.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use xshell::{cmd, Shell};
use xtask::{config::PgTarget, pg, pgcluster::testing::skip, pgcluster::PgCluster};

const APP_PASSWORD: &str = "apppw";
/// A password with every character the password file escapes or treats specially.
const ODD_PASSWORD: &str = r"o:d\d*";
const PSQL: &str = "/usr/bin/psql";

/// What both programs must do in one environment.
#[derive(Debug)]
enum Expect {
    Connects,
    /// Both fail: psql's stderr holds the first text, the tool's message the second.
    Fail(&'static str, &'static str),
    /// Not implemented by the tool: refused with this text (psql's outcome is only shown).
    Refused(&'static str),
}

struct Case {
    name: &'static str,
    env: Vec<(&'static str, String)>,
    /// `~/.pgpass` and its mode (none: no file).
    pgpass: Option<(String, u32)>,
    expect: Expect,
}

/// A cluster asking for scram passwords everywhere, with sockets in its own folder and, when
/// this machine has it, in libpq's default folder too.
struct Server {
    cluster: PgCluster,
    default_socket: bool,
    _hba_dir: tempfile::TempDir,
    _scratch: tempfile::TempDir,
}

fn server() -> Server {
    let scratch = tempfile::tempdir().unwrap();
    let hba_dir = tempfile::tempdir().unwrap();
    fs::set_permissions(hba_dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let hba = hba_dir.path().join("pg_hba.conf");
    fs::write(
        &hba,
        "local all all scram-sha-256\nhost all all 127.0.0.1/32 scram-sha-256\nhost all all ::1/128 scram-sha-256\n",
    )
    .unwrap();
    fs::set_permissions(&hba, fs::Permissions::from_mode(0o644)).unwrap();
    // libpq's default socket folder, if the server may put a socket there (root: it runs as
    // `postgres`, who owns it on Debian); its port is this cluster's, so no other server's.
    let default_dir = Path::new(xtask::config::DEFAULT_SOCKET_DIR);
    let default_socket = default_dir.is_dir() && running_as_root();
    let cluster_dir = scratch.path().join("pg");
    let mut options = format!("-c hba_file={}", hba.display());
    if default_socket {
        options.push_str(&format!(
            " -c unix_socket_directories={},{}",
            cluster_dir.display(),
            default_dir.display()
        ));
    }
    let sh = Shell::new().unwrap();
    let cluster = PgCluster::start_with_options(&sh, &cluster_dir, &options).unwrap();
    let mut admin = cluster.admin_client("postgres");
    admin
        .batch_execute(&format!(
            "CREATE ROLE app LOGIN PASSWORD '{APP_PASSWORD}'; CREATE ROLE odd LOGIN PASSWORD '{}'",
            ODD_PASSWORD.replace('\'', "''")
        ))
        .unwrap();
    admin
        .batch_execute("CREATE DATABASE sentry OWNER app")
        .unwrap();
    Server {
        cluster,
        default_socket,
        _hba_dir: hba_dir,
        _scratch: scratch,
    }
}

fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// The outcome of one program: `Ok` or its message.
type Outcome = Result<(), String>;

fn psql(sh: &Shell, env: &[(&'static str, String)]) -> Outcome {
    let sql = "select 1";
    let out = cmd!(sh, "{PSQL} -X -w -At -c {sql}")
        .env_clear()
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .ignore_status()
        .quiet()
        .output()
        .unwrap();
    match out.status.success() {
        true => Ok(()),
        false => Err(String::from_utf8_lossy(&out.stderr).into_owned()),
    }
}

fn tool(env: &[(&'static str, String)]) -> (Outcome, Duration) {
    let start = Instant::now();
    let outcome = PgTarget::from_env_or_url(None, |key| {
        env.iter().find(|(k, _)| *k == key).map(|(_, v)| v.clone())
    })
    .and_then(|target| pg::connect(&target, &target.dbname, Duration::from_secs(5)))
    .map(drop)
    .map_err(|err| format!("{err:#}"));
    (outcome, start.elapsed())
}

/// A HOME with `.pgpass` as given.
fn home_with(pgpass: Option<&(String, u32)>) -> tempfile::TempDir {
    let home = tempfile::tempdir().unwrap();
    if let Some((text, mode)) = pgpass {
        let file = home.path().join(".pgpass");
        fs::write(&file, text).unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(*mode)).unwrap();
    }
    home
}

#[test]
fn the_tool_connects_where_psql_connects_and_fails_where_it_fails() {
    if skip() {
        return;
    }
    let server = server();
    let sh = Shell::new().unwrap();
    let port = server.cluster.port;
    let socket_dir = server.cluster.dir.display().to_string();
    let free_port = xtask::util::free_port().unwrap();
    let env = |pairs: &[(&'static str, &str)]| -> Vec<(&'static str, String)> {
        let mut env = vec![
            ("PGPORT", port.to_string()),
            ("PGUSER", "app".to_string()),
            ("PGDATABASE", "sentry".to_string()),
        ];
        for (key, value) in pairs {
            env.retain(|(k, _)| k != key);
            env.push((key, value.to_string()));
        }
        env
    };
    let pgpass = |text: String| Some((text, 0o600));
    let pw = APP_PASSWORD;
    let mut cases = vec![
        Case {
            name: "PGHOST=127.0.0.1, db-specific line",
            env: env(&[("PGHOST", "127.0.0.1")]),
            pgpass: pgpass(format!("127.0.0.1:{port}:sentry:app:{pw}\n")),
            expect: Expect::Connects,
        },
        Case {
            name: "PGHOST=localhost, localhost line",
            env: env(&[("PGHOST", "localhost")]),
            pgpass: pgpass(format!("localhost:{port}:*:app:{pw}\n")),
            expect: Expect::Connects,
        },
        Case {
            name: "wildcard line",
            env: env(&[("PGHOST", "127.0.0.1")]),
            pgpass: pgpass(format!("*:*:*:*:{pw}\n")),
            expect: Expect::Connects,
        },
        Case {
            name: "escaped colon and backslash in the password",
            env: env(&[("PGHOST", "127.0.0.1"), ("PGUSER", "odd")]),
            pgpass: pgpass(r"*:*:*:odd:o\:d\\d*".to_string() + "\n"),
            expect: Expect::Connects,
        },
        Case {
            name: r"escaped \* is a literal star, not a wildcard",
            env: env(&[("PGHOST", "127.0.0.1")]),
            pgpass: pgpass(format!("*:*:\\*:app:wrong\n*:*:*:app:{pw}\n")),
            expect: Expect::Connects,
        },
        Case {
            name: "pw:extra: the password ends at the colon",
            env: env(&[("PGHOST", "127.0.0.1")]),
            pgpass: pgpass(format!("*:*:*:app:{pw}:extra\n")),
            expect: Expect::Connects,
        },
        Case {
            name: "comments: column 0, and one with leading blanks",
            env: env(&[("PGHOST", "127.0.0.1")]),
            pgpass: pgpass(format!(
                "#*:*:*:app:wrong\n  #*:*:*:app:wrong\n*:*:*:app:{pw}\n"
            )),
            expect: Expect::Connects,
        },
        Case {
            name: "socket folder, line with its path",
            env: env(&[("PGHOST", &socket_dir)]),
            pgpass: pgpass(format!("{socket_dir}:{port}:*:app:{pw}\n")),
            expect: Expect::Connects,
        },
        Case {
            name: "socket folder (not the default), localhost line",
            env: env(&[("PGHOST", &socket_dir)]),
            pgpass: pgpass(format!("localhost:{port}:*:app:{pw}\n")),
            expect: Expect::Fail("no password supplied", "asks for a password"),
        },
        Case {
            name: "sslmode=require on a socket",
            env: env(&[("PGHOST", &socket_dir), ("PGSSLMODE", "require")]),
            pgpass: pgpass(format!("{socket_dir}:{port}:*:app:{pw}\n")),
            expect: Expect::Connects,
        },
        Case {
            name: "sslmode=verify-full on a socket, no root certificate",
            env: env(&[("PGHOST", &socket_dir), ("PGSSLMODE", "verify-full")]),
            pgpass: pgpass(format!("{socket_dir}:{port}:*:app:{pw}\n")),
            expect: Expect::Connects,
        },
        Case {
            name: "sslmode=require over TCP, server without TLS",
            env: env(&[("PGHOST", "127.0.0.1"), ("PGSSLMODE", "require")]),
            pgpass: pgpass(format!("*:*:*:app:{pw}\n")),
            expect: Expect::Fail("server does not support SSL", "TLS handshake"),
        },
        Case {
            name: "PGHOSTADDR with a PGHOST that does not resolve, line for the name",
            env: env(&[("PGHOST", "db.invalid"), ("PGHOSTADDR", "127.0.0.1")]),
            pgpass: pgpass(format!("db.invalid:{port}:*:app:{pw}\n")),
            expect: Expect::Connects,
        },
        Case {
            name: "PGHOSTADDR alone, line for the address",
            env: env(&[("PGHOSTADDR", "127.0.0.1")]),
            pgpass: pgpass(format!("127.0.0.1:{port}:*:app:{pw}\n")),
            expect: Expect::Connects,
        },
        Case {
            name: "password required, none given",
            env: env(&[("PGHOST", "127.0.0.1")]),
            pgpass: None,
            expect: Expect::Fail("no password supplied", "asks for a password"),
        },
        Case {
            name: "wrong PGPASSWORD",
            env: env(&[("PGHOST", "127.0.0.1"), ("PGPASSWORD", "nope")]),
            pgpass: None,
            expect: Expect::Fail(
                "password authentication failed",
                "password authentication failed",
            ),
        },
        Case {
            name: "password file readable by others",
            env: env(&[("PGHOST", "127.0.0.1")]),
            pgpass: Some((format!("*:*:*:app:{pw}\n"), 0o644)),
            expect: Expect::Fail("has group or world access", "readable by group or others"),
        },
        Case {
            name: "missing database",
            env: env(&[("PGHOST", "127.0.0.1"), ("PGDATABASE", "nodb")]),
            pgpass: pgpass(format!("*:*:*:app:{pw}\n")),
            expect: Expect::Fail("does not exist", "database `nodb` does not exist"),
        },
        Case {
            name: "nothing listening on the port",
            env: env(&[("PGHOST", "127.0.0.1"), ("PGPORT", &free_port.to_string())]),
            pgpass: None,
            expect: Expect::Fail("Connection refused", "is the server running?"),
        },
        Case {
            name: "PGSERVICE",
            env: env(&[("PGHOST", "127.0.0.1"), ("PGSERVICE", "sentry")]),
            pgpass: pgpass(format!("*:*:*:app:{pw}\n")),
            expect: Expect::Refused("PGSERVICE is set: this tool does not read pg_service.conf"),
        },
        Case {
            name: "PGSSLCERT",
            env: env(&[("PGHOST", "127.0.0.1"), ("PGSSLCERT", "/nonexistent.crt")]),
            pgpass: pgpass(format!("*:*:*:app:{pw}\n")),
            expect: Expect::Refused("PGSSLCERT is set: client certificates are not supported"),
        },
    ];
    if server.default_socket {
        cases.push(Case {
            name: "PGHOST unset (libpq's default socket folder), localhost line",
            env: env(&[]),
            pgpass: pgpass(format!("localhost:{port}:*:app:{pw}\n")),
            expect: Expect::Connects,
        });
    } else {
        eprintln!(
            "note: {} is not usable here: the PGHOST-unset row is left out",
            xtask::config::DEFAULT_SOCKET_DIR
        );
    }
    let mut failures = Vec::new();
    for case in &cases {
        let home = home_with(case.pgpass.as_ref());
        let mut env = case.env.clone();
        env.push(("HOME", home.path().display().to_string()));
        let by_psql = psql(&sh, &env);
        let (by_tool, took) = tool(&env);
        let ok = match (&case.expect, &by_psql, &by_tool) {
            (Expect::Connects, Ok(()), Ok(())) => true,
            (Expect::Fail(psql_says, tool_says), Err(p), Err(t)) => {
                p.contains(psql_says) && t.contains(tool_says)
            }
            (Expect::Refused(tool_says), _, Err(t)) => t.contains(tool_says),
            _ => false,
        };
        // A failure that is not about reachability is reported at once, not after retries.
        let quick = took < Duration::from_secs(2) || case.name == "nothing listening on the port";
        eprintln!(
            "{} {:<70} psql: {:<6} tool: {:<6} ({:.1}s)",
            if ok && quick { "ok  " } else { "FAIL" },
            case.name,
            if by_psql.is_ok() { "ok" } else { "fails" },
            if by_tool.is_ok() { "ok" } else { "fails" },
            took.as_secs_f64()
        );
        for outcome in [&by_psql, &by_tool] {
            if let Err(message) = outcome {
                assert!(!message.contains(APP_PASSWORD) && !message.contains(ODD_PASSWORD));
            }
        }
        if !(ok && quick) {
            failures.push(format!(
                "{}: expected {:?}, took {took:?}\n  psql: {by_psql:?}\n  tool: {by_tool:?}",
                case.name, case.expect
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // PGHOST unset means the socket, as in libpq, not TCP to localhost.
    if server.default_socket {
        let env = env(&[("PGPASSWORD", APP_PASSWORD)]);
        let target = PgTarget::from_env_or_url(None, |key| {
            env.iter().find(|(k, _)| *k == key).map(|(_, v)| v.clone())
        })
        .unwrap();
        let mut client = pg::connect(&target, "sentry", Duration::from_secs(2)).unwrap();
        let over_socket: bool = client
            .query_one("SELECT inet_server_addr() IS NULL", &[])
            .unwrap()
            .get(0);
        assert!(over_socket, "{target}");
    }
}

/// A password file with a line for the target database only (a common DBA setup) passes
/// preflight: the target is connected to first. The maintenance database is needed only
/// when the target does not exist yet, and the message then names it.
#[test]
fn a_password_file_line_for_the_target_only_passes_preflight() {
    if skip() {
        return;
    }
    let server = server();
    let port = server.cluster.port;
    let home = home_with(Some(&(
        format!(
            "127.0.0.1:{port}:sentry:app:{APP_PASSWORD}\n127.0.0.1:{port}:sentry_new:app:{APP_PASSWORD}\n"
        ),
        0o600,
    )));
    let home_path = home.path().display().to_string();
    let target = |dbname: &str| {
        let env = [
            ("PGHOST", "127.0.0.1".to_string()),
            ("PGPORT", port.to_string()),
            ("PGUSER", "app".to_string()),
            ("PGDATABASE", dbname.to_string()),
            ("HOME", home_path.clone()),
        ];
        PgTarget::from_env_or_url(None, |key| {
            env.iter().find(|(k, _)| *k == key).map(|(_, v)| v.clone())
        })
        .unwrap()
    };
    assert_eq!(pg::privilege_problem(&target("sentry")).unwrap(), None);
    // A target that does not exist yet: its line lets the server say so (3D000), and only
    // then is the maintenance database asked for, by its own name.
    let err = format!(
        "{:#}",
        pg::privilege_problem(&target("sentry_new")).unwrap_err()
    );
    assert!(
        err.contains("database `sentry_new` does not exist yet")
            && err.contains(&format!(
                "cannot connect to postgres://app@127.0.0.1:{port}/postgres"
            ))
            && err.contains(&format!("127.0.0.1:{port}:postgres:app:PASSWORD")),
        "{err}"
    );
}

/// The password file as the dry run reads it.
#[test]
fn the_dry_run_names_the_password_file_it_reads() {
    let home = home_with(Some(&("h:5432:sentry:app:pw\n".to_string(), 0o600)));
    let home_path = home.path().display().to_string();
    let env = |key: &str| match key {
        "HOME" => Some(home_path.clone()),
        "PGHOST" => Some("h".to_string()),
        "PGUSER" => Some("app".to_string()),
        _ => None,
    };
    let config = xtask::config::Config::new(Path::new("/srv/x"), None, None, env).unwrap();
    let text = xtask::plan::render(&xtask::plan::plan(&config), &config);
    let file: PathBuf = home.path().join(".pgpass");
    for line in [
        format!("answers (password: {} line 1)", file.display()),
        format!(
            "password from {} (psycopg2 reads it; none in the file)",
            file.display()
        ),
    ] {
        assert!(text.contains(&line), "{line}\n{text}");
    }
    assert!(!text.contains("PGPASSWORD"), "{text}");
}
