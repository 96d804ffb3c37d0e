//! The PostgreSQL target as libpq reads it: `PgTarget` from the PG* variables or `--database-url`
//! (a password in it refused and never echoed), `sslmode`, `hostaddr`, the password's source.

use std::{fmt, net::IpAddr, path::PathBuf};

use anyhow::{anyhow, bail, ensure, Context, Result};
use postgres::config::Host;

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

    /// Applies `--database-url`, parsed by `postgres::Config`: a `postgres://` or `postgresql://`
    /// URL, or a libpq key=value string. Its user, host (a name, an address or a Unix socket
    /// folder) and port override the PG* values, its dbname too; what it leaves out keeps them.
    /// A password in it is refused, and no message here repeats any of it (it may hold one).
    fn apply_url(&mut self, url: &str) -> Result<()> {
        // postgres::Config knows only disable/prefer/require: the TLS settings are taken out
        // first and applied here, with libpq's meaning.
        let (rest, tls) = take_tls_settings(url);
        let url = rest.as_str();
        for (key, value) in tls {
            match key {
                "sslmode" => self.sslmode = value?.parse().context("--database-url")?,
                "sslrootcert" => self.sslrootcert = Some(PathBuf::from(value?)),
                _ => bail!(
                    "--database-url sets {key}: {}",
                    match key {
                        "service" => "this tool does not read pg_service.conf: write the service's host, port, user and dbname instead",
                        _ => "client certificates are not supported: remove it and authenticate with a password (~/.pgpass)",
                    }
                ),
            }
        }
        let url_rest = url
            .strip_prefix("postgres://")
            .or_else(|| url.strip_prefix("postgresql://"));
        if url_rest.is_none() {
            if let Some((scheme, _)) = url.split_once("://").filter(|(it, _)| is_scheme(it)) {
                bail!("--database-url must start with postgres:// or postgresql://, not {scheme}://: write it as {URL_FORMS}");
            }
        }
        ensure!(!passes_password(url, url_rest), PASSWORD_IN_URL);
        let parsed: postgres::Config = url.parse().map_err(|err| {
            anyhow!(
                "--database-url cannot be read ({}): write it as {URL_FORMS}",
                parse_error_reason(&err)
            )
        })?;
        ensure!(parsed.get_password().is_none(), PASSWORD_IN_URL);
        let unsupported = unsupported_settings(&parsed);
        ensure!(
            unsupported.is_empty(),
            "--database-url sets {}: not supported yet (only user, host, port and dbname are): remove it",
            unsupported.join(", ")
        );
        match parsed.get_hostaddrs() {
            [] => {}
            [addr] => self.hostaddr = Some(*addr),
            _ => bail!("--database-url names more than one hostaddr: only one host is supported"),
        }
        match parsed.get_hosts() {
            [] => {}
            [Host::Tcp(host)] if host.is_empty() => {}
            [Host::Tcp(host)] => self.host = host.clone(),
            [Host::Unix(path)] => {
                self.host = path
                    .to_str()
                    .context("--database-url: the socket folder's path is not UTF-8: rename it")?
                    .to_string()
            }
            hosts => bail!(
                "--database-url names {} hosts: only one host is supported",
                hosts.len()
            ),
        }
        let mut ports = parsed.get_ports();
        if url_rest.is_some_and(url_host_without_port) {
            // postgres::Config adds 5432 for a host without a port; left out, PGPORT applies.
            ports = ports.get(1..).unwrap_or_default();
        }
        match ports {
            [] => {}
            [port] => self.port = *port,
            _ => bail!("--database-url names more than one port: only one is supported"),
        }
        if let Some(user) = parsed.get_user().filter(|it| !it.is_empty()) {
            self.user = user.to_string();
        }
        if let Some(dbname) = parsed.get_dbname().filter(|it| !it.is_empty()) {
            self.dbname = dbname.to_string();
        }
        Ok(())
    }
}

/// The settings postgres::Config does not know, taken out of a URL's query (values
/// percent-decoded, as libpq decodes them) or a key=value string, and the rest: `sslmode` and
/// `sslrootcert` (applied with libpq's meaning) and those refused (`service`, client certificates).
type TakenSettings = Vec<(&'static str, Result<String>)>;
fn take_tls_settings(url: &str) -> (String, TakenSettings) {
    let mut found = Vec::new();
    let is_url = url.contains("://");
    let mut keep = |pair: &str| -> bool {
        for key in [
            "sslmode",
            "sslrootcert",
            "sslcert",
            "sslkey",
            "sslpassword",
            "service",
        ] {
            if let Some(value) = pair.strip_prefix(key).and_then(|it| it.strip_prefix('=')) {
                let value = if is_url {
                    percent_decode(value).with_context(|| format!("--database-url: {key}"))
                } else {
                    Ok(value.to_string())
                };
                found.push((key, value));
                return false;
            }
        }
        true
    };
    let rest = if is_url {
        match url.split_once('?') {
            Some((base, query)) => {
                let kept: Vec<&str> = query.split('&').filter(|pair| keep(pair)).collect();
                if kept.is_empty() {
                    base.to_string()
                } else {
                    format!("{base}?{}", kept.join("&"))
                }
            }
            None => url.to_string(),
        }
    } else {
        let kept: Vec<&str> = url.split_whitespace().filter(|pair| keep(pair)).collect();
        kept.join(" ")
    };
    (rest, found)
}

/// `%2F` → `/`, as libpq decodes a URL's parts; the text must be UTF-8 once decoded.
fn percent_decode(text: &str) -> Result<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        if bytes[at] == b'%' {
            let hex = text
                .get(at + 1..at + 3)
                .and_then(|it| u8::from_str_radix(it, 16).ok())
                .context("a `%` not followed by two hex digits")?;
            out.push(hex);
            at += 3;
        } else {
            out.push(bytes[at]);
            at += 1;
        }
    }
    String::from_utf8(out).context("not UTF-8 once percent-decoded")
}

const PASSWORD_IN_URL: &str = "--database-url must not contain a password (it would be visible \
                               in the process list): remove it and set PGPASSWORD instead";

const URL_FORMS: &str = "postgres://USER@HOST:PORT/DBNAME, or as key=value pairs like \
                         `host=HOST port=PORT user=USER dbname=DBNAME`";

/// A URL scheme as RFC 3986 spells it (so it holds no user info to hide).
fn is_scheme(text: &str) -> bool {
    text.starts_with(|c: char| c.is_ascii_alphabetic())
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

/// Whether the text passes a password: in a URL's user info (`user:pw@`, everything before the
/// first `@` as postgres::Config reads it) or as a `password` parameter. Checked before parsing,
/// so that a parse error cannot leave a password unnoticed; percent-encoded parameter names
/// are caught after parsing (`get_password`).
fn passes_password(text: &str, url_rest: Option<&str>) -> bool {
    let in_user_info = url_rest
        .and_then(|rest| rest.split_once('@'))
        .is_some_and(|(user_info, _)| user_info.contains(':'));
    let lower = text.to_ascii_lowercase();
    let as_parameter = lower
        .match_indices("password")
        .any(|(at, word)| lower[at + word.len()..].trim_start().starts_with('='));
    in_user_info || as_parameter
}

/// Whether a URL (after `postgres://`) names a host in its authority without a port.
fn url_host_without_port(url_rest: &str) -> bool {
    let after_user = url_rest.split_once('@').map_or(url_rest, |(_, it)| it);
    let authority = after_user.split(['/', '?']).next().unwrap_or("");
    let after_address = authority.rsplit_once(']').map_or(authority, |(_, it)| it);
    !authority.is_empty() && !after_address.contains(':')
}

/// Why postgres::Config refused the text, in words that never quote it: the library's own
/// messages can quote an unknown parameter's name or a stray character, which may be part of a
/// password typed in the wrong place.
fn parse_error_reason(err: &postgres::Error) -> String {
    let cause = std::error::Error::source(err)
        .map(|it| it.to_string())
        .unwrap_or_default();
    // `invalid value for option `port``: the name is the library's, not the input's.
    let option = cause
        .strip_prefix("invalid value for option `")
        .and_then(|it| it.strip_suffix('`'))
        .filter(|it| it.chars().all(|c| c.is_ascii_lowercase() || c == '_'));
    match option {
        Some(option) => format!("invalid {option}"),
        None if cause.starts_with("unknown option") => {
            "it has a parameter PostgreSQL does not know".to_string()
        }
        None => "it is neither a postgres:// URL nor key=value pairs".to_string(),
    }
}

/// The connection settings postgres::Config read that this tool would drop (it keeps only user,
/// host, port and dbname). A setting given with its default value goes unnoticed: it changes
/// nothing.
fn unsupported_settings(parsed: &postgres::Config) -> Vec<&'static str> {
    let default = postgres::Config::new();
    [
        ("options", parsed.get_options().is_some()),
        ("application_name", parsed.get_application_name().is_some()),
        ("sslmode", parsed.get_ssl_mode() != default.get_ssl_mode()),
        (
            "sslnegotiation",
            parsed.get_ssl_negotiation() != default.get_ssl_negotiation(),
        ),
        ("connect_timeout", parsed.get_connect_timeout().is_some()),
        ("tcp_user_timeout", parsed.get_tcp_user_timeout().is_some()),
        (
            "keepalives",
            parsed.get_keepalives() != default.get_keepalives(),
        ),
        (
            "keepalives_idle",
            parsed.get_keepalives_idle() != default.get_keepalives_idle(),
        ),
        (
            "keepalives_interval",
            parsed.get_keepalives_interval() != default.get_keepalives_interval(),
        ),
        (
            "keepalives_retries",
            parsed.get_keepalives_retries() != default.get_keepalives_retries(),
        ),
        (
            "target_session_attrs",
            parsed.get_target_session_attrs() != default.get_target_session_attrs(),
        ),
        (
            "channel_binding",
            parsed.get_channel_binding() != default.get_channel_binding(),
        ),
        (
            "load_balance_hosts",
            parsed.get_load_balance_hosts() != default.get_load_balance_hosts(),
        ),
    ]
    .into_iter()
    .filter_map(|(name, set)| set.then_some(name))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

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
