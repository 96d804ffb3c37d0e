//! `--database-url` as libpq reads it, applied over the PG* variables: a `postgres://` URL or
//! key=value pairs, TLS settings with libpq's meaning, a password refused and never echoed.

use std::path::PathBuf;

use anyhow::{anyhow, bail, ensure, Context, Result};
use postgres::config::Host;

use super::PgTarget;

impl PgTarget {
    /// Applies `--database-url`, parsed by `postgres::Config`: a `postgres://` or `postgresql://`
    /// URL, or a libpq key=value string. Its user, host (a name, an address or a Unix socket
    /// folder) and port override the PG* values, its dbname too; what it leaves out keeps them.
    /// A password in it is refused, and no message here repeats any of it (it may hold one).
    pub(super) fn apply_url(&mut self, url: &str) -> Result<()> {
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
