//! `Config`: every path and connection setting a task needs, resolved once from flags and env.

use std::{
    fmt,
    path::{Path, PathBuf},
};

use anyhow::{bail, ensure, Context, Result};

/// Where the PostgreSQL target is. The password is kept out of `Debug`/`Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct PgTarget {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub dbname: String,
    pub password: Option<Secret>,
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
        write!(
            f,
            "postgres://{}@{}:{}/{}",
            self.user, self.host, self.port, self.dbname
        )
    }
}

impl PgTarget {
    /// From `--database-url` if given, else from the libpq variables `PGHOST`, `PGPORT`, `PGUSER`,
    /// `PGDATABASE`; the password only ever comes from `PGPASSWORD`.
    pub fn from_env_or_url(
        url: Option<&str>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<PgTarget> {
        let password = env("PGPASSWORD").filter(|it| !it.is_empty()).map(Secret);
        let mut target = PgTarget {
            host: env("PGHOST").unwrap_or_else(|| "localhost".to_string()),
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
        };
        if let Some(url) = url {
            target.apply_url(url)?;
        }
        validate_identifier("database name", &target.dbname)?;
        validate_identifier("role name", &target.user)?;
        Ok(target)
    }

    fn apply_url(&mut self, url: &str) -> Result<()> {
        let rest = url
            .strip_prefix("postgres://")
            .or_else(|| url.strip_prefix("postgresql://"))
            .with_context(|| format!("--database-url `{url}` must start with postgres://"))?;
        let (authority, dbname) = match rest.split_once('/') {
            Some((authority, dbname)) => (authority, Some(dbname)),
            None => (rest, None),
        };
        let host_port = match authority.rsplit_once('@') {
            Some((userinfo, host_port)) => {
                ensure!(
                    !userinfo.contains(':'),
                    "--database-url must not contain a password (it would be visible in the \
                     process list): remove it and set PGPASSWORD instead"
                );
                if !userinfo.is_empty() {
                    self.user = userinfo.to_string();
                }
                host_port
            }
            None => authority,
        };
        match host_port.rsplit_once(':') {
            Some((host, port)) => {
                self.host = host.to_string();
                self.port = port
                    .parse()
                    .with_context(|| format!("--database-url: `{port}` is not a port number"))?;
            }
            None if !host_port.is_empty() => self.host = host_port.to_string(),
            None => {}
        }
        if let Some(dbname) = dbname.filter(|it| !it.is_empty()) {
            ensure!(
                !dbname.contains('?'),
                "--database-url: query parameters are not supported"
            );
            self.dbname = dbname.to_string();
        }
        Ok(())
    }
}

/// Database and role names go into SQL as quoted identifiers; we accept only the plain ones.
pub fn validate_identifier(what: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !ok {
        bail!("{what} `{name}` is not allowed: use 1-63 lowercase letters, digits and underscores, not starting with a digit");
    }
    Ok(())
}

/// A validated identifier in double quotes, ready to put into SQL.
pub fn quote_identifier(name: &str) -> String {
    debug_assert!(validate_identifier("identifier", name).is_ok());
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Everything the plan and the executor need to know.
#[derive(Debug, Clone)]
pub struct Config {
    pub root: PathBuf,
    pub sqlite_path: PathBuf,
    pub pg: PgTarget,
    pub tag1_cfg: PathBuf,
    pub tag2_cfg: PathBuf,
}

pub const DEFAULT_SQLITE: &str = "var/sentry.db";

impl Config {
    pub fn new(
        root: &Path,
        sqlite: Option<&Path>,
        database_url: Option<&str>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config> {
        let root = root.to_path_buf();
        let sqlite_path = root.join(sqlite.unwrap_or(Path::new(DEFAULT_SQLITE)));
        Ok(Config {
            sqlite_path,
            pg: PgTarget::from_env_or_url(database_url, env)?,
            tag1_cfg: root.join("buildout/tag1-sentry4.cfg"),
            tag2_cfg: root.join("buildout/tag2-sentry6.cfg"),
            root,
        })
    }

    pub fn settings_py(&self) -> PathBuf {
        self.root.join("settings/settings.py")
    }
    pub fn settings_local(&self) -> PathBuf {
        self.root.join("settings/settings_local.py")
    }
    pub fn dumps_dir(&self) -> PathBuf {
        self.root.join("dumps")
    }
    pub fn bin(&self, name: &str) -> PathBuf {
        self.root.join("bin").join(name)
    }
    pub fn helper_py(&self) -> PathBuf {
        self.root.join("xtask/python/sentry_helper.py")
    }
    pub fn dump_auth(&self) -> PathBuf {
        self.dumps_dir().join("dumpdata-auth.json")
    }
    pub fn dump_rest(&self) -> PathBuf {
        self.dumps_dir().join("dumpdata.json")
    }
    pub fn models_json(&self) -> PathBuf {
        self.dumps_dir().join("models.json")
    }
    /// Paths shown to humans: relative to the root where possible.
    pub fn display_path(&self, path: &Path) -> String {
        path.strip_prefix(&self.root)
            .unwrap_or(path)
            .display()
            .to_string()
    }
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

    #[test]
    fn identifiers_are_validated() {
        for bad in [
            "",
            "Sentry",
            "1db",
            "a-b",
            "x\"; drop table y; --",
            &"a".repeat(64),
        ] {
            assert!(validate_identifier("database name", bad).is_err(), "{bad}");
        }
        for good in ["sentry", "_x", "sentry_2"] {
            validate_identifier("database name", good).unwrap();
        }
        let err =
            PgTarget::from_env_or_url(Some("postgres://u@h/Bad-Name"), env_of(&[])).unwrap_err();
        assert!(
            err.to_string()
                .contains("database name `Bad-Name` is not allowed"),
            "{err}"
        );
    }
}
