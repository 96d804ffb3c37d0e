//! The PostgreSQL target as libpq reads it: `PgTarget` from the PG* variables or `--database-url`
//! (a password in it refused and never echoed: `url.rs`), `sslmode`, `hostaddr`, the password's
//! source.

mod url;

use std::{fmt, net::IpAddr, path::PathBuf};

use anyhow::{anyhow, bail, Context, Result};

use crate::ident::Ident;

/// The host when neither `PGHOST` nor `PGHOSTADDR` is set (libpq's default socket folder).
pub use crate::pgpass::DEFAULT_SOCKET_DIR;

/// Where the PostgreSQL target is. The password is kept out of `Debug`/`Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct PgTarget {
    /// A host name, an address, or a Unix socket folder (starting with `/`).
    pub host: String,
    /// libpq's `hostaddr` (`PGHOSTADDR`): the address connected to, without a name lookup;
    /// `host` still names the server for the password file and TLS.
    pub hostaddr: Option<IpAddr>,
    pub port: u16,
    pub user: String,
    pub dbname: String,
    pub password: Option<Secret>,
    /// libpq's `sslmode` (`PGSSLMODE`, or `sslmode` in `--database-url`); libpq's default,
    /// `prefer`, when unset.
    pub sslmode: SslMode,
    /// libpq's `sslrootcert` (`PGSSLROOTCERT`): the CA the verify modes check the server with.
    pub sslrootcert: Option<PathBuf>,
    /// libpq's password file (`PGPASSFILE`, else `~/.pgpass`), read when `PGPASSWORD` is unset.
    pub passfile: Option<PathBuf>,
}

/// libpq's `sslmode` values, with libpq's meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// No TLS.
    Disable,
    /// libpq tries without TLS first; the Rust client has no such order, so TLS if the server
    /// offers it, as `prefer` (psycopg2 still gets `allow`).
    Allow,
    /// TLS if the server offers it, not verified.
    Prefer,
    /// TLS required, not verified (verified as `verify-ca` when a root certificate is given).
    Require,
    /// TLS required, the server's certificate signed by `sslrootcert`.
    VerifyCa,
    /// `verify-ca`, and the certificate names the host.
    VerifyFull,
}

impl SslMode {
    pub const NAMES: [&'static str; 6] = [
        "disable",
        "allow",
        "prefer",
        "require",
        "verify-ca",
        "verify-full",
    ];

    pub fn name(self) -> &'static str {
        Self::NAMES[self as usize]
    }
}

impl std::str::FromStr for SslMode {
    type Err = anyhow::Error;
    fn from_str(text: &str) -> Result<SslMode> {
        let modes = [
            SslMode::Disable,
            SslMode::Allow,
            SslMode::Prefer,
            SslMode::Require,
            SslMode::VerifyCa,
            SslMode::VerifyFull,
        ];
        modes
            .into_iter()
            .find(|mode| mode.name() == text)
            .ok_or_else(|| anyhow!("sslmode `{text}` is not one of {}", Self::NAMES.join(", ")))
    }
}

/// A password: printed as `********`, never on a command line.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("********")
    }
}

impl fmt::Debug for PgTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl fmt::Display for PgTarget {
    /// `postgres://user@host:port/db`, never with the password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.with_dbname(&self.dbname))
    }
}

/// Where the password of a connection comes from, as the dry run and the errors say it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PasswordSource {
    Env,
    /// The password file's line (from 1) that matches.
    File(PathBuf, usize),
    /// A password file readable by group or others, ignored as libpq ignores it.
    IgnoredFile(PathBuf),
    /// No password: none in the environment, no matching line (in this file, if there is one).
    None(Option<PathBuf>),
}

impl fmt::Display for PasswordSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PasswordSource::Env => f.write_str("PGPASSWORD"),
            PasswordSource::File(path, line) => write!(f, "{} line {line}", path.display()),
            PasswordSource::IgnoredFile(path) => write!(
                f,
                "none: {} is ignored (readable by group or others; chmod 0600 it)",
                path.display()
            ),
            PasswordSource::None(Some(path)) => write!(
                f,
                "none (no PGPASSWORD, no matching line in {})",
                path.display()
            ),
            PasswordSource::None(None) => f.write_str("none (no PGPASSWORD, no password file)"),
        }
    }
}

/// libpq variables this tool does not implement: refused, never ignored, because libpq (and
/// psycopg2 in Sentry's steps) would act on them.
const UNSUPPORTED_ENV: &[(&str, &str)] = &[
    ("PGSERVICE", "this tool does not read pg_service.conf: set PGHOST, PGPORT, PGUSER and PGDATABASE (or --database-url) to the service's values and unset PGSERVICE"),
    ("PGSSLCERT", "client certificates are not supported: unset PGSSLCERT and PGSSLKEY and authenticate with a password (~/.pgpass)"),
    ("PGSSLKEY", "client certificates are not supported: unset PGSSLCERT and PGSSLKEY and authenticate with a password (~/.pgpass)"),
];

impl PgTarget {
    /// The database name as an identifier (checked already by [`PgTarget::from_env_or_url`]).
    pub fn database(&self) -> Result<Ident> {
        Ident::new("database name", &self.dbname)
    }

    /// The role name as an identifier (checked already by [`PgTarget::from_env_or_url`]).
    pub fn role(&self) -> Result<Ident> {
        Ident::new("role name", &self.user)
    }

    /// `postgres://user@host:port/dbname` for another database on the same server.
    pub fn with_dbname(&self, dbname: &str) -> String {
        let hostaddr = match self.hostaddr {
            Some(addr) if addr.to_string() != self.host => format!(" (hostaddr {addr})"),
            _ => String::new(),
        };
        format!(
            "postgres://{}@{}:{}/{dbname}{hostaddr}",
            self.user, self.host, self.port
        )
    }

    /// Whether `host` is a Unix socket folder (libpq: a path starting with `/`).
    pub fn is_socket(&self) -> bool {
        self.hostaddr.is_none() && self.host.starts_with('/')
    }

    /// Where the password for `dbname` comes from: `PGPASSWORD`, else the password file read as
    /// libpq reads it (this reads the file).
    pub fn password_source(&self, dbname: &str) -> PasswordSource {
        if self.password.is_some() {
            return PasswordSource::Env;
        }
        let Some(file) = &self.passfile else {
            return PasswordSource::None(None);
        };
        match crate::pgpass::lookup(file, &self.host, self.port, dbname, &self.user) {
            crate::pgpass::Lookup::Found { line, .. } => PasswordSource::File(file.clone(), line),
            crate::pgpass::Lookup::IgnoredPermissions(path) => PasswordSource::IgnoredFile(path),
            crate::pgpass::Lookup::NotFound => PasswordSource::None(Some(file.clone())),
        }
    }

    /// From `--database-url` if given, else from the libpq variables `PGHOST` (default: the
    /// socket folder [`DEFAULT_SOCKET_DIR`], as libpq), `PGHOSTADDR`, `PGPORT`, `PGUSER`,
    /// `PGDATABASE`; the password only ever comes from `PGPASSWORD` or the password file.
    /// `PGSERVICE`, `PGSSLCERT` and `PGSSLKEY` are refused (not implemented).
    pub fn from_env_or_url(
        url: Option<&str>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<PgTarget> {
        for (name, why) in UNSUPPORTED_ENV {
            if env(name).is_some_and(|it| !it.is_empty()) {
                bail!("{name} is set: {why}");
            }
        }
        let password = env("PGPASSWORD").filter(|it| !it.is_empty()).map(Secret);
        let hostaddr = match env("PGHOSTADDR").filter(|it| !it.is_empty()) {
            Some(addr) => Some(addr.parse::<IpAddr>().map_err(|_| {
                anyhow!("PGHOSTADDR `{addr}` is not a numeric IP address (libpq looks up no names there): put a host name in PGHOST")
            })?),
            None => None,
        };
        let mut target = PgTarget {
            host: env("PGHOST").unwrap_or_default(),
            hostaddr,
            port: match env("PGPORT") {
                Some(port) => port
                    .parse()
                    .with_context(|| format!("PGPORT `{port}` is not a port number"))?,
                None => 5432,
            },
            user: env("PGUSER")
                .or_else(|| env("USER"))
                .unwrap_or_else(|| "sentry".to_string()),
            dbname: env("PGDATABASE").unwrap_or_else(|| "sentry".to_string()),
            password,
            sslmode: match env("PGSSLMODE").filter(|it| !it.is_empty()) {
                Some(mode) => mode.parse().context("PGSSLMODE")?,
                None => SslMode::Prefer,
            },
            sslrootcert: env("PGSSLROOTCERT")
                .filter(|it| !it.is_empty())
                .map(PathBuf::from),
            passfile: None,
        };
        if target.password.is_none() {
            target.passfile = crate::pgpass::default_path(&env);
        }
        if let Some(url) = url {
            target.apply_url(url)?;
        }
        if target.host.is_empty() {
            // libpq: with a hostaddr and no host, the address stands for the host (password
            // file, TLS); with neither, the default socket folder.
            target.host = match target.hostaddr {
                Some(addr) => addr.to_string(),
                None => DEFAULT_SOCKET_DIR.to_string(),
            };
        }
        target.database()?;
        target.role()?;
        Ok(target)
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::{PasswordSource, PgTarget, SslMode, DEFAULT_SOCKET_DIR};

    fn env_of(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |key| {
            vars.iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn target_from_libpq_env() {
        let target = PgTarget::from_env_or_url(
            None,
            env_of(&[
                ("PGHOST", "db.local"),
                ("PGPORT", "6543"),
                ("PGUSER", "sentry"),
                ("PGDATABASE", "central"),
                ("PGPASSWORD", "hunter2"),
            ]),
        )
        .unwrap();
        assert_eq!(
            target.to_string(),
            "postgres://sentry@db.local:6543/central"
        );
        assert_eq!(target.password.as_ref().unwrap().expose(), "hunter2");
        assert!(!format!("{target:?}").contains("hunter2"));
    }

    #[test]
    fn url_overrides_env_and_refuses_passwords() {
        let env = env_of(&[("PGHOST", "ignored"), ("PGUSER", "ignored")]);
        let target =
            PgTarget::from_env_or_url(Some("postgres://bob@127.0.0.1:5433/sentry_new"), &env)
                .unwrap();
        assert_eq!(
            target.to_string(),
            "postgres://bob@127.0.0.1:5433/sentry_new"
        );
        let err = PgTarget::from_env_or_url(Some("postgres://bob:secret@h/db"), &env).unwrap_err();
        assert!(
            err.to_string().contains("must not contain a password"),
            "{err}"
        );
        assert!(!err.to_string().contains("secret"));
    }

    fn refusal(url: &str) -> String {
        let env = env_of(&[("PGHOST", "envhost"), ("PGUSER", "envuser")]);
        match PgTarget::from_env_or_url(Some(url), env) {
            Ok(target) => panic!("{url} accepted as {target}"),
            Err(err) => format!("{err:#}"),
        }
    }

    #[test]
    fn wrong_scheme_is_refused_without_the_password() {
        for url in [
            "mysql://user:secret@host/db",
            "mysql://user@host/db?password=secret",
            "http://user:secret@host:xyz/db",
        ] {
            let err = refusal(url);
            assert!(err.contains("must start with postgres://"), "{err}");
            assert!(!err.contains("secret"), "password echoed: {err}");
        }
        assert!(refusal("mysql://user:secret@host/db").contains("not mysql://"));
        // Not even a scheme: nothing of it is repeated.
        let err = refusal("user:secret@host://db");
        assert!(!err.contains("secret"), "password echoed: {err}");
    }

    #[test]
    fn passwords_are_refused_in_every_form_without_echo() {
        for url in [
            "postgres://bob:secret@h/db",
            "postgres://bob:se@cret@h/db",
            "postgres://bob@h/db?password=secret",
            "postgresql://h/db?sslmode=disable&password=secret",
            "postgres://bob@h/db?pass%77ord=secret",
            "host=h user=bob password=secret",
            "host=h password = 'se cret' dbname=db",
            // A bad port after the password: parsing fails after the password was read.
            "postgres://bob:secret@h:xyz/db",
            "postgres://bob@h:xyz/db?password=secret",
        ] {
            let err = refusal(url);
            assert!(err.contains("must not contain a password"), "{url}: {err}");
            assert!(
                !err.contains("secret") && !err.contains("cret"),
                "{url}: {err}"
            );
        }
    }

    #[test]
    fn parse_errors_never_quote_the_input() {
        let err = refusal("postgres://bob@h:xyz/db");
        assert!(err.contains("invalid port"), "{err}");
        assert!(!err.contains("xyz"), "{err}");
        // A password typed where a parameter name goes is not repeated either.
        for url in [
            "host=h hunter2=x",
            "postgres://h/db?hunter2=x",
            "host=h hunter2 dbname=db",
        ] {
            let err = refusal(url);
            assert!(err.contains("cannot be read"), "{url}: {err}");
            assert!(!err.contains("hunter2"), "{url}: {err}");
        }
    }

    #[test]
    fn unsupported_settings_and_hosts_are_refused() {
        let err = refusal("postgres://bob@h/db?sslmode=sometimes");
        assert!(
            err.contains("sslmode `sometimes` is not one of disable, allow"),
            "{err}"
        );
        let err = refusal("host=h application_name=x connect_timeout=3");
        assert!(
            err.contains("sets application_name, connect_timeout"),
            "{err}"
        );
        for url in [
            "postgres://bob@h1,h2/db",
            "host=h1,h2",
            "postgres://h1/db?host=h2",
        ] {
            let err = refusal(url);
            assert!(err.contains("only one host is supported"), "{url}: {err}");
        }
        let err = refusal("postgres://h:5433/db?port=5434");
        assert!(err.contains("more than one port"), "{err}");
    }

    #[test]
    fn tls_settings_come_from_the_url_or_the_libpq_variables() {
        let env = env_of(&[("PGSSLMODE", "require"), ("PGSSLROOTCERT", "/etc/ca.crt")]);
        let target = PgTarget::from_env_or_url(None, &env).unwrap();
        assert_eq!(target.sslmode, SslMode::Require);
        assert_eq!(target.sslrootcert, Some(PathBuf::from("/etc/ca.crt")));
        let target = PgTarget::from_env_or_url(
            Some(
                "postgres://bob@db.example:5433/sentry?sslmode=verify-full&sslrootcert=/srv/ca.pem",
            ),
            &env,
        )
        .unwrap();
        assert_eq!(target.to_string(), "postgres://bob@db.example:5433/sentry");
        assert_eq!(target.sslmode, SslMode::VerifyFull);
        assert_eq!(target.sslrootcert, Some(PathBuf::from("/srv/ca.pem")));
        let target = PgTarget::from_env_or_url(
            Some("host=db.example sslmode=verify-ca dbname=sentry"),
            env_of(&[]),
        )
        .unwrap();
        assert_eq!(
            (target.sslmode, target.host.as_str()),
            (SslMode::VerifyCa, "db.example")
        );
        // libpq's default, and a bad PGSSLMODE named.
        assert_eq!(
            PgTarget::from_env_or_url(None, env_of(&[]))
                .unwrap()
                .sslmode,
            SslMode::Prefer
        );
        let err = PgTarget::from_env_or_url(None, env_of(&[("PGSSLMODE", "always")])).unwrap_err();
        assert!(
            format!("{err:#}").contains("PGSSLMODE: sslmode `always` is not one of"),
            "{err:#}"
        );
        // The password file is read only without PGPASSWORD.
        let env = env_of(&[("HOME", "/home/u"), ("PGPASSWORD", "x")]);
        assert_eq!(
            PgTarget::from_env_or_url(None, &env).unwrap().passfile,
            None
        );
        let env = env_of(&[("HOME", "/home/u")]);
        assert_eq!(
            PgTarget::from_env_or_url(None, &env).unwrap().passfile,
            Some(PathBuf::from("/home/u/.pgpass"))
        );
    }

    #[test]
    fn url_parts_override_env_and_parts_left_out_keep_it() {
        let env = env_of(&[
            ("PGHOST", "envhost"),
            ("PGPORT", "6543"),
            ("PGUSER", "envuser"),
            ("PGDATABASE", "envdb"),
        ]);
        let target = |url: &str| {
            PgTarget::from_env_or_url(Some(url), &env)
                .unwrap()
                .to_string()
        };
        assert_eq!(target("postgres://h"), "postgres://envuser@h:6543/envdb");
        assert_eq!(target("postgres://h/"), "postgres://envuser@h:6543/envdb");
        assert_eq!(
            target("postgresql://bob@h:5433"),
            "postgres://bob@h:5433/envdb"
        );
        assert_eq!(
            target("postgres:///db2"),
            "postgres://envuser@envhost:6543/db2"
        );
        assert_eq!(
            target("postgres://bob@[::1]/db2"),
            "postgres://bob@::1:6543/db2"
        );
        assert_eq!(
            target("postgres://[::1]:5433/db2"),
            "postgres://envuser@::1:5433/db2"
        );
        assert_eq!(target("dbname=db2"), "postgres://envuser@envhost:6543/db2");
        assert_eq!(
            target("host=h port=5433 user=bob dbname=db2"),
            "postgres://bob@h:5433/db2"
        );
        assert_eq!(
            target("postgres://h/db2?port=5433"),
            "postgres://envuser@h:5433/db2"
        );
        assert_eq!(
            target("postgres://h/db2?user=bob"),
            "postgres://bob@h:6543/db2"
        );
        // Unix socket folders, as a query parameter or percent-encoded in the authority.
        let socket = |url: &str| PgTarget::from_env_or_url(Some(url), &env).unwrap();
        let it = socket("postgres:///db2?host=/var/run/postgresql");
        assert_eq!((it.host.as_str(), it.port), ("/var/run/postgresql", 6543));
        let it = socket("postgres://bob@%2Fvar%2Frun%2Fpostgresql:5433/db2");
        assert_eq!((it.host.as_str(), it.port), ("/var/run/postgresql", 5433));
        assert_eq!(it.user, "bob");
    }

    #[test]
    fn libpq_defaults_hostaddr_and_refused_variables() {
        // No PGHOST: libpq's default socket folder, not TCP localhost.
        let it = PgTarget::from_env_or_url(None, env_of(&[])).unwrap();
        assert_eq!(
            (it.host.as_str(), it.is_socket()),
            (DEFAULT_SOCKET_DIR, true)
        );
        let it = PgTarget::from_env_or_url(None, env_of(&[("PGHOST", "")])).unwrap();
        assert_eq!(it.host, DEFAULT_SOCKET_DIR);
        // PGHOSTADDR: connected to without a lookup; with no PGHOST it stands for the host.
        let it = PgTarget::from_env_or_url(None, env_of(&[("PGHOSTADDR", "127.0.0.1")])).unwrap();
        assert_eq!((it.host.as_str(), it.is_socket()), ("127.0.0.1", false));
        let it = PgTarget::from_env_or_url(
            None,
            env_of(&[("PGHOST", "db.example"), ("PGHOSTADDR", "10.0.0.5")]),
        )
        .unwrap();
        assert_eq!(it.host, "db.example");
        assert_eq!(it.hostaddr, Some("10.0.0.5".parse().unwrap()));
        assert_eq!(
            it.to_string(),
            "postgres://sentry@db.example:5432/sentry (hostaddr 10.0.0.5)"
        );
        let it = PgTarget::from_env_or_url(Some("host=db.example hostaddr=10.0.0.6"), env_of(&[]))
            .unwrap();
        assert_eq!(it.hostaddr, Some("10.0.0.6".parse().unwrap()));
        let err = PgTarget::from_env_or_url(None, env_of(&[("PGHOSTADDR", "db.example")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("is not a numeric IP address"), "{err}");
        // Not implemented: refused, never ignored.
        for (name, value, says) in [
            (
                "PGSERVICE",
                "sentry",
                "this tool does not read pg_service.conf",
            ),
            (
                "PGSSLCERT",
                "/c.crt",
                "client certificates are not supported",
            ),
            (
                "PGSSLKEY",
                "/c.key",
                "client certificates are not supported",
            ),
        ] {
            let vars: &'static [(&str, &str)] = Box::leak(Box::new([(name, value)]));
            let err = PgTarget::from_env_or_url(None, env_of(vars))
                .unwrap_err()
                .to_string();
            assert!(err.contains(&format!("{name} is set: {says}")), "{err}");
        }
        for (url, says) in [
            (
                "postgres://h/db?service=x",
                "sets service: this tool does not read pg_service.conf",
            ),
            (
                "postgres://h/db?sslcert=/c.crt",
                "sets sslcert: client certificates",
            ),
            ("host=h sslkey=/c.key", "sets sslkey: client certificates"),
        ] {
            assert!(refusal(url).contains(says), "{url}: {}", refusal(url));
        }
        // A URL's sslrootcert is percent-decoded, as libpq decodes it.
        let it = PgTarget::from_env_or_url(
            Some("postgres://h/db?sslmode=verify-ca&sslrootcert=%2Fsrv%2Fmy%20ca.pem"),
            env_of(&[]),
        )
        .unwrap();
        assert_eq!(it.sslrootcert, Some(PathBuf::from("/srv/my ca.pem")));
        assert!(refusal("postgres://h/db?sslrootcert=%zz").contains("sslrootcert"));
    }

    #[test]
    fn the_password_source_is_named() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().display().to_string();
        let file = dir.path().join(".pgpass");
        std::fs::write(&file, "# x\nh:5432:sentry:sentry:pw\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let env = |key: &str| match key {
            "HOME" => Some(home.clone()),
            "PGHOST" => Some("h".to_string()),
            "PGUSER" => Some("sentry".to_string()),
            _ => None,
        };
        let it = PgTarget::from_env_or_url(None, env).unwrap();
        assert_eq!(
            it.password_source("sentry"),
            PasswordSource::File(file.clone(), 2)
        );
        assert_eq!(
            it.password_source("postgres").to_string(),
            format!(
                "none (no PGPASSWORD, no matching line in {})",
                file.display()
            )
        );
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(it
            .password_source("sentry")
            .to_string()
            .contains("is ignored"));
    }

    #[test]
    fn identifiers_are_validated() {
        // The rules themselves: crate::ident's tests.
        let err =
            PgTarget::from_env_or_url(Some("postgres://u@h/Bad-Name"), env_of(&[])).unwrap_err();
        assert!(
            err.to_string()
                .contains("database name `Bad-Name` is not allowed"),
            "{err}"
        );
    }
}
