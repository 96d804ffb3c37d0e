//! Connecting to PostgreSQL as libpq would (password file, socket folder, TLS modes), retrying
//! only while the server starts, and explaining a failure by its kind with the fix.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
use postgres::{Client, NoTls};
use postgres_openssl::MakeTlsConnector;

use crate::{
    config::{PgTarget, SslMode},
    pgpass,
};

/// Connects to `dbname` on `target`, retrying for up to `wait` only while the server refuses
/// connections or says it is starting; any other failure (a password asked for, refused, TLS,
/// a missing database or role) is reported at once.
pub fn connect(target: &PgTarget, dbname: &str, wait: Duration) -> Result<Client> {
    let mut pg_config = postgres::Config::new();
    pg_config
        .host(&target.host)
        .port(target.port)
        .user(&target.user)
        .dbname(dbname)
        .application_name("sentry-migrate")
        .connect_timeout(Duration::from_secs(10));
    if let Some(addr) = target.hostaddr {
        pg_config.hostaddr(addr);
    }
    // PGPASSWORD, else the password file, as libpq reads it (its note, if it was ignored).
    let mut passfile_note = None;
    match (&target.password, &target.passfile) {
        (Some(password), _) => {
            pg_config.password(password.expose());
        }
        (None, Some(file)) => {
            match pgpass::lookup(file, &target.host, target.port, dbname, &target.user) {
                pgpass::Lookup::Found { password, .. } => {
                    pg_config.password(password);
                }
                pgpass::Lookup::IgnoredPermissions(path) => {
                    passfile_note = Some(format!(
                    "{} is ignored, as libpq ignores it: it is readable by group or others (chmod 0600 it)",
                    path.display()
                ));
                }
                pgpass::Lookup::NotFound => {}
            }
        }
        (None, None) => {}
    }
    // libpq ignores sslmode on a Unix socket (no TLS there), whatever the mode.
    let tls = match target.is_socket() {
        true => None,
        false => tls_connector(target)?,
    };
    pg_config.ssl_mode(match (target.is_socket(), target.sslmode) {
        (true, _) | (_, SslMode::Disable) => postgres::config::SslMode::Disable,
        (_, SslMode::Allow | SslMode::Prefer) => postgres::config::SslMode::Prefer,
        (_, SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull) => {
            postgres::config::SslMode::Require
        }
    });
    let deadline = Instant::now() + wait;
    loop {
        let attempt = match &tls {
            None => pg_config.connect(NoTls),
            Some(connector) => pg_config.connect(connector.clone()),
        };
        match attempt {
            Ok(client) => return Ok(client),
            Err(err) => {
                let failure = ConnectFailure::of(&err);
                if failure.may_be_starting() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(200));
                    continue;
                }
                let err = explain_connect_error(target, dbname, err, failure);
                return Err(match &passfile_note {
                    Some(note) => err.context(note.clone()),
                    None => err,
                });
            }
        }
    }
}

/// Why a connection failed, by the error's kind: the server's SQLSTATE, the socket's
/// `io::ErrorKind`, or (tokio-postgres keeps its kind private, and its `Display` is the kind's
/// fixed text and nothing else) the kind read from that text, with the cause beneath it.
#[derive(Debug, PartialEq, Eq)]
enum ConnectFailure {
    /// The server answered with an error (SQLSTATE).
    Server(String),
    /// The server asked for a password and none was given (not sent to the server at all).
    PasswordMissing,
    /// The TCP connection or the socket file: refused, missing, unreachable, not resolved.
    Unreachable(std::io::ErrorKind, String),
    /// No answer within the connect timeout.
    Timeout,
    /// The TLS handshake (or the server refusing TLS that the mode requires).
    Tls(String),
    /// Anything else, in the library's words.
    Other(String),
}

impl ConnectFailure {
    fn of(err: &postgres::Error) -> ConnectFailure {
        use std::error::Error as _;
        if let Some(db) = err.as_db_error() {
            return ConnectFailure::Server(db.code().code().to_string());
        }
        let cause = err.source().map(|it| it.to_string()).unwrap_or_default();
        if let Some(io) = err
            .source()
            .and_then(|it| it.downcast_ref::<std::io::Error>())
        {
            return ConnectFailure::Unreachable(io.kind(), io.to_string());
        }
        match err.to_string().as_str() {
            "invalid configuration" if cause == "password missing" => {
                ConnectFailure::PasswordMissing
            }
            "timeout waiting for server" => ConnectFailure::Timeout,
            "error performing TLS handshake" => ConnectFailure::Tls(cause),
            kind => ConnectFailure::Other(match cause.is_empty() {
                true => kind.to_string(),
                false => format!("{kind}: {cause}"),
            }),
        }
    }

    /// A server that is starting (or restarting) refuses connections, has no socket file yet,
    /// or says so (57P03): worth another try. Nothing else is.
    fn may_be_starting(&self) -> bool {
        use std::io::ErrorKind::*;
        match self {
            ConnectFailure::Server(code) => code == "57P03",
            ConnectFailure::Unreachable(kind, _) => {
                matches!(kind, ConnectionRefused | NotFound | ConnectionReset)
            }
            _ => false,
        }
    }
}

/// A field of a password-file line: `:` and `\` escaped.
fn pgpass_field(text: &str) -> String {
    text.replace('\\', "\\\\").replace(':', "\\:")
}

/// The TLS side of `target.sslmode`, as libpq means it: `prefer`/`require` encrypt without
/// verifying (unless a root certificate is given: then `require` verifies as `verify-ca`),
/// `verify-ca` checks the chain against `sslrootcert` (default `~/.postgresql/root.crt`;
/// `system`: the system's CAs), `verify-full` also the host name. `None`: no TLS.
fn tls_connector(target: &PgTarget) -> Result<Option<MakeTlsConnector>> {
    let default_root = std::env::var_os("HOME")
        .map(|home| std::path::PathBuf::from(home).join(".postgresql/root.crt"))
        .filter(|path| path.exists());
    let root = target.sslrootcert.clone().or(default_root);
    let verify = match (target.sslmode, &root) {
        (SslMode::Disable, _) => return Ok(None),
        (SslMode::Allow | SslMode::Prefer, _) | (SslMode::Require, None) => None,
        (SslMode::Require | SslMode::VerifyCa, _) => Some(false),
        (SslMode::VerifyFull, _) => Some(true),
    };
    let mut builder = SslConnector::builder(SslMethod::tls())
        .context("cannot set up TLS (OpenSSL) for the PostgreSQL connection")?;
    let Some(check_host) = verify else {
        builder.set_verify(SslVerifyMode::NONE);
        return Ok(Some(MakeTlsConnector::new(builder.build())));
    };
    let mode = target.sslmode.name();
    match root.as_deref() {
        Some(path) if path == std::path::Path::new("system") => builder
            .set_default_verify_paths()
            .context("cannot load the system's CA certificates")?,
        Some(path) => builder.set_ca_file(path).with_context(|| {
            format!(
                "sslmode={mode}: cannot read the root certificate {} (PGSSLROOTCERT or sslrootcert)",
                path.display()
            )
        })?,
        None => bail!(
            "sslmode={mode} checks the server's certificate against a root certificate, and none is given: \
             set PGSSLROOTCERT (or sslrootcert in --database-url) to the CA that signed the server's, or `system`"
        ),
    }
    let mut connector = MakeTlsConnector::new(builder.build());
    if !check_host {
        connector.set_callback(|config, _| {
            config.set_verify_hostname(false);
            Ok(())
        });
    }
    Ok(Some(connector))
}

fn explain_connect_error(
    target: &PgTarget,
    dbname: &str,
    err: postgres::Error,
    failure: ConnectFailure,
) -> anyhow::Error {
    let at = format!("{}:{}", target.host, target.port);
    let user = &target.user;
    let hint = match failure {
        ConnectFailure::Server(code) => match code.as_str() {
            "28P01" => format!("password authentication failed for role `{user}`: check PGPASSWORD (or the password file, ~/.pgpass or PGPASSFILE); the password tried came from {}", target.password_source(dbname)),
            "28000" => format!("role `{user}` may not connect to `{dbname}` (pg_hba.conf or a missing role): check PGUSER and the server's pg_hba.conf"),
            "3D000" => format!("database `{dbname}` does not exist on {at}"),
            "57P03" => format!("the server at {at} is starting or shutting down and did not accept connections in time"),
            code => format!("the server refused the connection (SQLSTATE {code})"),
        },
        ConnectFailure::PasswordMissing => {
            let host = match target.host.as_str() {
                crate::config::DEFAULT_SOCKET_DIR => "localhost".to_string(),
                host => pgpass_field(host),
            };
            let line = format!("{host}:{}:{}:{}:PASSWORD", target.port, pgpass_field(dbname), pgpass_field(user));
            let searched = match &target.passfile {
                Some(file) => format!(" ({} has no line for it)", file.display()),
                None => String::new(),
            };
            format!("the server at {at} asks for a password for role `{user}` and none is given{searched}: add the line `{line}` to ~/.pgpass (mode 0600; or the file PGPASSFILE names), or set PGPASSWORD")
        }
        ConnectFailure::Unreachable(kind, cause) => match kind {
            std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotFound => format!(
                "PostgreSQL is not reachable at {at} ({cause}): is the server running? check PGHOST and PGPORT"
            ),
            _ => format!("PostgreSQL is not reachable at {at} ({cause}): check PGHOST (and PGHOSTADDR) and PGPORT"),
        },
        ConnectFailure::Timeout => format!("no answer from {at} within 10 s: check PGHOST, PGPORT and the network (a firewall?)"),
        ConnectFailure::Tls(cause) => format!(
            "the TLS handshake with {at} failed (sslmode={}): {cause}; check PGSSLMODE, PGSSLROOTCERT and that the server's certificate names the host",
            target.sslmode.name(),
        ),
        ConnectFailure::Other(what) => what,
    };
    anyhow::Error::new(err).context(format!(
        "cannot connect to {}: {hint}",
        target.with_dbname(dbname)
    ))
}

/// A failed statement, PostgreSQL's own words first: message, detail, and where.
pub fn explain_sql_error(err: postgres::Error, what: &str) -> anyhow::Error {
    match err.as_db_error() {
        Some(db) => {
            let mut text = format!("{what} failed: {}", db.message());
            if let Some(detail) = db.detail() {
                text.push_str(&format!(" ({detail})"));
            }
            if let Some(context) = db.where_() {
                text.push_str(&format!(
                    "; at {}",
                    context.lines().next().unwrap_or(context)
                ));
            }
            anyhow::anyhow!("{text} [SQLSTATE {}]", db.code().code())
        }
        None => anyhow::Error::new(err).context(format!("{what} failed")),
    }
}

/// Connects to a maintenance database (`postgres`, else `template1`) to create or drop others.
pub fn connect_admin(target: &PgTarget, wait: Duration) -> Result<Client> {
    match connect(target, "postgres", wait) {
        Ok(client) => Ok(client),
        Err(err) if is_missing_database(&err) => {
            connect(target, "template1", wait).with_context(|| {
                format!("there is no database `postgres` on {target}, and template1 failed too")
            })
        }
        Err(err) => Err(err),
    }
}

/// Whether `err` (from [`connect`]) is the server saying the database does not exist
/// (SQLSTATE 3D000), not a missing role or anything else whose message reads alike.
pub fn is_missing_database(err: &anyhow::Error) -> bool {
    err.downcast_ref::<postgres::Error>()
        .and_then(|err| err.code())
        == Some(&postgres::error::SqlState::INVALID_CATALOG_NAME)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use anyhow::Result;
    use postgres::Client;

    use super::{connect, connect_admin, is_missing_database};
    use crate::{
        config::{PgTarget, SslMode},
        pg::tests::{superuser, target},
        pgcluster::testing::{skip, TestDb},
    };

    #[test]
    fn only_a_missing_database_means_try_template1() {
        if skip() {
            return;
        }
        let db = TestDb::new("missing");
        let fails = |target: &PgTarget, dbname: &str| {
            connect(target, dbname, Duration::from_millis(300))
                .err()
                .expect("must fail")
        };
        assert!(is_missing_database(&fails(&superuser(&db), "no_such_db")));
        // Over the unix socket (scram, as over TCP): a role that does not exist fails the
        // password check (SQLSTATE 28P01), and is no missing database either.
        let mut no_role = superuser(&db);
        no_role.host = db.cluster.dir.display().to_string();
        no_role.user = "no_such_role".into();
        let err = fails(&no_role, &db.name);
        assert!(format!("{err:#}").contains("no_such_role"), "{err:#}");
        assert!(!is_missing_database(&err), "{err:#}");
        let wrong_password = target(&db, "postgres", "not-the-password");
        assert!(!is_missing_database(&fails(&wrong_password, &db.name)));
        let mut down = superuser(&db);
        down.port = crate::util::free_port().unwrap();
        assert!(!is_missing_database(&fails(&down, &db.name)));
    }

    #[test]
    fn without_a_postgres_database_admin_connects_to_template1() {
        if skip() {
            return;
        }
        // A cluster of its own: the shared one keeps its `postgres` database.
        let scratch = tempfile::tempdir().unwrap();
        let sh = xshell::Shell::new().unwrap();
        let cluster = crate::pgcluster::PgCluster::start(&sh, scratch.path()).unwrap();
        let env = cluster.env(&cluster.superuser, &cluster.password, "postgres");
        let target = PgTarget::from_env_or_url(None, |key| {
            env.iter().find(|(k, _)| *k == key).map(|(_, v)| v.clone())
        })
        .unwrap();
        let current = |client: &mut Client| -> String {
            client
                .query_one("SELECT current_database()::text", &[])
                .unwrap()
                .get(0)
        };
        let mut admin = connect_admin(&target, Duration::from_secs(5)).unwrap();
        assert_eq!(current(&mut admin), "postgres");
        drop(admin);
        cluster
            .client("template1")
            .unwrap()
            .batch_execute("DROP DATABASE postgres")
            .unwrap();
        let mut admin = connect_admin(&target, Duration::from_secs(5)).unwrap();
        assert_eq!(current(&mut admin), "template1");
    }

    /// A CA, a server certificate for 127.0.0.1 signed by it, and another CA, made with the
    /// `openssl` program in a folder the `postgres` user can read.
    fn make_certificates(dir: &std::path::Path) {
        use std::os::unix::fs::PermissionsExt;
        let run = |args: &[&str]| {
            let out = std::process::Command::new("openssl")
                .args(args)
                .current_dir(dir)
                .output()
                .expect("the openssl program (apt-get install openssl)");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        for ca in ["ca", "other-ca"] {
            run(&[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &format!("{ca}.key"),
                "-out",
                &format!("{ca}.crt"),
                "-subj",
                &format!("/CN={ca}"),
                "-days",
                "2",
            ]);
        }
        run(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ]);
        std::fs::write(dir.join("san.cnf"), "subjectAltName=IP:127.0.0.1\n").unwrap();
        run(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "san.cnf",
        ]);
        std::fs::set_permissions(
            dir.join("server.key"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        if std::fs::metadata("/proc/self")
            .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
            .unwrap_or(1)
            == 0
        {
            let (uid, gid) = crate::pgcluster::server_user("postgres").unwrap();
            for file in ["server.key", "server.crt"] {
                std::os::unix::fs::chown(dir.join(file), Some(uid), Some(gid)).unwrap();
            }
        }
    }

    #[test]
    fn tls_modes_as_libpq_means_them() {
        if skip() {
            return;
        }
        let certs = tempfile::tempdir().unwrap();
        make_certificates(certs.path());
        let scratch = tempfile::tempdir().unwrap();
        let sh = xshell::Shell::new().unwrap();
        let c = certs.path().display();
        let cluster = crate::pgcluster::PgCluster::start_with_options(
            &sh,
            scratch.path(),
            &format!("-c ssl=on -c ssl_cert_file={c}/server.crt -c ssl_key_file={c}/server.key"),
        )
        .unwrap();
        let base = PgTarget::from_env_or_url(None, |key| {
            cluster
                .env(&cluster.superuser, &cluster.password, "postgres")
                .into_iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v)
        })
        .unwrap();
        let with = |mode: SslMode, root: Option<&str>| PgTarget {
            sslmode: mode,
            sslrootcert: root.map(|it| certs.path().join(it)),
            ..base.clone()
        };
        let encrypted = |target: &PgTarget| -> Result<bool> {
            let mut client = connect(target, "postgres", Duration::from_secs(2))?;
            Ok(client
                .query_one(
                    "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                    &[],
                )?
                .get(0))
        };
        assert!(!encrypted(&with(SslMode::Disable, None)).unwrap());
        assert!(encrypted(&with(SslMode::Prefer, None)).unwrap());
        assert!(encrypted(&with(SslMode::Require, None)).unwrap());
        assert!(encrypted(&with(SslMode::VerifyCa, Some("ca.crt"))).unwrap());
        assert!(encrypted(&with(SslMode::VerifyFull, Some("ca.crt"))).unwrap());

        let err = format!(
            "{:#}",
            encrypted(&with(SslMode::VerifyFull, Some("other-ca.crt"))).unwrap_err()
        );
        assert!(
            err.contains("the TLS handshake with 127.0.0.1") && err.contains("sslmode=verify-full"),
            "{err}"
        );
        assert!(!err.contains(&cluster.password), "{err}");
        // `require` with a root certificate verifies, as libpq does.
        assert!(encrypted(&with(SslMode::Require, Some("other-ca.crt"))).is_err());
        let err = format!(
            "{:#}",
            encrypted(&with(SslMode::VerifyCa, Some("missing.crt"))).unwrap_err()
        );
        assert!(err.contains("cannot read the root certificate"), "{err}");
    }

    #[test]
    fn the_password_file_and_a_socket_folder_work_as_in_libpq() {
        use std::os::unix::fs::PermissionsExt;
        if skip() {
            return;
        }
        let db = TestDb::new("pgpass");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pgpass");
        std::fs::write(
            &file,
            format!(
                "127.0.0.1:{}:*:postgres:{}\n",
                db.cluster.port, db.cluster.password
            ),
        )
        .unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let mut target = superuser(&db);
        target.password = None;
        target.passfile = Some(file.clone());
        connect(&target, &db.name, Duration::from_secs(2)).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = format!(
            "{:#}",
            connect(&target, &db.name, Duration::from_secs(1))
                .err()
                .expect("ignored file")
        );
        assert!(
            err.contains("is ignored, as libpq ignores it: it is readable by group or others"),
            "{err}"
        );
        assert!(!err.contains(&db.cluster.password), "{err}");

        // A socket folder as the host (local connections ask for the password too).
        let mut socket = superuser(&db);
        socket.host = db.cluster.dir.display().to_string();
        socket.passfile = None;
        let mut client = connect(&socket, &db.name, Duration::from_secs(2)).unwrap();
        let over_socket: bool = client
            .query_one("SELECT inet_server_addr() IS NULL", &[])
            .unwrap()
            .get(0);
        assert!(over_socket);
    }
    #[test]
    fn connection_errors_name_the_cause_and_the_fix() {
        if skip() {
            return;
        }
        let db = TestDb::new("conn");
        let wrong = target(&db, "postgres", "not-the-password");
        let err = format!(
            "{:#}",
            connect(&wrong, &db.name, Duration::from_secs(1))
                .err()
                .expect("must fail")
        );
        assert!(
            err.contains("password authentication failed for role `postgres`: check PGPASSWORD"),
            "{err}"
        );
        assert!(!err.contains("not-the-password"), "password leaked: {err}");

        let mut missing = superuser(&db);
        missing.dbname = "no_such_db".into();
        let err = format!(
            "{:#}",
            connect(&missing, "no_such_db", Duration::from_secs(1))
                .err()
                .expect("must fail")
        );
        assert!(
            err.contains("database `no_such_db` does not exist"),
            "{err}"
        );

        let mut down = superuser(&db);
        down.port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let err = format!(
            "{:#}",
            connect(&down, &db.name, Duration::from_millis(300))
                .err()
                .expect("must fail")
        );
        assert!(
            err.contains("is not reachable") && err.contains("is the server running?"),
            "{err}"
        );
    }
}
