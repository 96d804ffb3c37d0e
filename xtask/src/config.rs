//! `Config`: the repo's paths and the run's options, resolved once from flags and env (the
//! PostgreSQL target in it: `crate::pgtarget`).

use std::path::{Path, PathBuf};

use anyhow::Result;

pub use crate::pgtarget::{PasswordSource, PgTarget, SslMode, DEFAULT_SOCKET_DIR};

/// Everything the plan and the executor need to know.
#[derive(Debug, Clone)]
pub struct Config {
    pub root: PathBuf,
    pub sqlite_path: PathBuf,
    pub pg: PgTarget,
    /// Where the target database's password comes from (read once, for the plan).
    pub pg_password_source: PasswordSource,
    pub tag1_cfg: PathBuf,
    pub tag2_cfg: PathBuf,
    /// `--fit-values`: fit what PostgreSQL rejects in a working copy the dumps read.
    pub fit_values: bool,
    /// `--sentry-own-upgrade`: Sentry 6's `upgrade` as shipped (0083 walks every group).
    pub sentry_own_upgrade: bool,
    /// `--prepare`: only the steps that need no downtime, while Sentry 4 runs.
    pub prepare: bool,
    /// How the rows go into PostgreSQL.
    pub engine: crate::flags::Engine,
    /// The `TIME_ZONE` Sentry 4 wrote its naive dates in, as the settings files say.
    pub time_zone: crate::zone::ZoneSetting,
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
        let pg = PgTarget::from_env_or_url(database_url, env)?;
        Ok(Config {
            sqlite_path,
            pg_password_source: pg.password_source(&pg.dbname),
            pg,
            tag1_cfg: root.join("buildout/tag1-sentry4.cfg"),
            tag2_cfg: root.join("buildout/tag2-sentry6.cfg"),
            fit_values: false,
            sentry_own_upgrade: false,
            prepare: false,
            engine: crate::flags::Engine::default(),
            time_zone: crate::zone::read(&root),
            root,
        })
    }

    /// The config of a task's flags: the source and target as `new` reads them, and the
    /// buildout configs of the tags when given (relative to the root).
    pub fn for_flags(
        root: &Path,
        sqlite: Option<&Path>,
        database_url: Option<&str>,
        tag1: Option<&Path>,
        tag2: Option<&Path>,
    ) -> Result<Config> {
        let mut config = Config::new(root, sqlite, database_url, |key| std::env::var(key).ok())?;
        if let Some(tag1) = tag1 {
            config.tag1_cfg = config.root.join(tag1);
        }
        if let Some(tag2) = tag2 {
            config.tag2_cfg = config.root.join(tag2);
        }
        Ok(config)
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
    /// The working copy `--fit-values` fits and the dumps then read (never the source).
    pub fn fitted_db(&self) -> PathBuf {
        self.dumps_dir().join("sentry-fitted.db")
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
