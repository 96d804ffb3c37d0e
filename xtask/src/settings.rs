//! `settings_local.py`: rendering for SQLite or PostgreSQL, and the safe switch (atomic, 0600,
//! previous file kept, changes printed with the password masked).

use std::{fs, io::Read};

use anyhow::{Context, Result};
use xshell::Shell;

use crate::{
    config::{Config, PgTarget},
    flags::{self, DbKind},
    util,
};

/// A Python 2 byte-string literal: ASCII only, everything else escaped.
fn py_str(value: &str) -> String {
    let mut out = String::from("'");
    for byte in value.bytes() {
        match byte {
            b'\\' => out.push_str("\\\\"),
            b'\'' => out.push_str("\\'"),
            0x20..=0x7e => out.push(byte as char),
            _ => out.push_str(&format!("\\x{byte:02x}")),
        }
    }
    out.push('\'');
    out
}

/// The file's text for `kind`. `secret_key` is kept across switches.
pub fn render(kind: DbKind, config: &Config, secret_key: &str) -> String {
    let database = match kind {
        DbKind::Sqlite => format!(
            "    'default': {{\n        'ENGINE': 'django.db.backends.sqlite3',\n        'NAME': {},\n    }}\n",
            py_str(&config.sqlite_path.display().to_string())
        ),
        DbKind::Postgres => {
            let pg: &PgTarget = &config.pg;
            let password = pg.password.as_ref().map(|it| it.expose()).unwrap_or("");
            format!(
                "    'default': {{\n        'ENGINE': 'django.db.backends.postgresql_psycopg2',\n        'NAME': {},\n        'USER': {},\n        'PASSWORD': {},\n        'HOST': {},\n        'PORT': {},\n    }}\n",
                py_str(&pg.dbname),
                py_str(&pg.user),
                py_str(password),
                py_str(&pg.host),
                py_str(&pg.port.to_string())
            )
        }
    };
    format!(
        "# Written by `cargo xtask switch-settings {}`; mode 0600 (may hold a password): never commit it.\n\
         # Executed by settings.py beside it.\n\
         DATABASES = {{\n{database}}}\n\
         SECRET_KEY = {}\n",
        match kind {
            DbKind::Sqlite => "sqlite",
            DbKind::Postgres => "postgres",
        },
        py_str(secret_key)
    )
}

fn existing_secret_key(text: &str) -> Option<String> {
    let line = text
        .lines()
        .find(|line| line.starts_with("SECRET_KEY = '"))?;
    let value = line.strip_prefix("SECRET_KEY = '")?.strip_suffix('\'')?;
    (!value.contains('\\')).then(|| value.to_string())
}

fn new_secret_key() -> Result<String> {
    let mut bytes = [0u8; 32];
    fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// A line with the password value replaced, for printing.
fn masked(line: &str) -> String {
    match line.find("'PASSWORD':") {
        Some(at) => format!("{}'PASSWORD': '********',", &line[..at]),
        None if line.starts_with("SECRET_KEY") => "SECRET_KEY = '********'".to_string(),
        None => line.to_string(),
    }
}

/// Writes `settings_local.py` for `kind`; returns the changed lines (masked) for printing.
pub fn switch(kind: DbKind, config: &Config) -> Result<Vec<String>> {
    let path = config.settings_local();
    let previous = fs::read_to_string(&path).ok();
    let secret_key = match previous.as_deref().and_then(existing_secret_key) {
        Some(key) => key,
        None => new_secret_key()?,
    };
    let text = render(kind, config, &secret_key);
    if previous.as_deref() == Some(text.as_str()) {
        return Ok(Vec::new());
    }
    if let Some(previous) = &previous {
        util::write_atomic(&util::sibling(&path, ".bak"), previous.as_bytes(), 0o600)
            .context("cannot keep the previous settings_local.py as settings_local.py.bak")?;
    }
    util::write_atomic(&path, text.as_bytes(), 0o600)
        .with_context(|| format!("cannot write {}", path.display()))?;
    let old_lines: Vec<&str> = previous.as_deref().unwrap_or("").lines().collect();
    let new_lines: Vec<&str> = text.lines().collect();
    let mut changes = Vec::new();
    for line in &old_lines {
        if !new_lines.contains(line) {
            changes.push(format!("- {}", masked(line)));
        }
    }
    for line in &new_lines {
        if !old_lines.contains(line) {
            changes.push(format!("+ {}", masked(line)));
        }
    }
    Ok(changes)
}

/// Which database the current file points at, if any.
pub fn current(config: &Config) -> Option<DbKind> {
    let text = fs::read_to_string(config.settings_local()).ok()?;
    if text.contains("postgresql_psycopg2") {
        Some(DbKind::Postgres)
    } else if text.contains("sqlite3") {
        Some(DbKind::Sqlite)
    } else {
        None
    }
}

impl flags::SwitchSettings {
    pub fn run(self, sh: &Shell) -> Result<()> {
        let config = Config::new(
            &sh.current_dir(),
            self.sqlite.as_deref(),
            self.database_url.as_deref(),
            |key| std::env::var(key).ok(),
        )?;
        if self.db == DbKind::Postgres && config.pg.password.is_none() {
            eprintln!("note: PGPASSWORD is not set: settings_local.py gets an empty password (fine for trust or peer auth)");
        }
        let changes = switch(self.db, &config)?;
        let path = config.display_path(&config.settings_local());
        if changes.is_empty() {
            println!("{path} already points at {:?}: unchanged", self.db);
        } else {
            println!(
                "{path} now points at {} (mode 0600; previous kept as {path}.bak):",
                match self.db {
                    DbKind::Sqlite => format!("SQLite {}", config.sqlite_path.display()),
                    DbKind::Postgres => format!("PostgreSQL {}", config.pg),
                }
            );
            for line in changes {
                println!("  {line}");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn check_mode(path: &Path) -> Result<u32> {
        use std::os::unix::fs::PermissionsExt;
        Ok(fs::metadata(path)?.permissions().mode() & 0o777)
    }

    fn config(root: &Path) -> Config {
        let env = |key: &str| match key {
            "PGHOST" => Some("db.example".to_string()),
            "PGUSER" => Some("sentry".to_string()),
            "PGPASSWORD" => Some("it's a \\ sécret".to_string()),
            _ => None,
        };
        Config::new(root, None, None, env).unwrap()
    }

    #[test]
    fn switch_is_atomic_private_and_masked() {
        let dir = std::env::temp_dir().join(format!("settings-test-{}", std::process::id()));
        fs::create_dir_all(dir.join("settings")).unwrap();
        let config = config(&dir);

        let changes = switch(DbKind::Sqlite, &config).unwrap();
        assert!(
            changes
                .iter()
                .any(|it| it.contains("django.db.backends.sqlite3")),
            "{changes:?}"
        );
        let path = config.settings_local();
        assert_eq!(check_mode(&path).unwrap(), 0o600);
        assert_eq!(current(&config), Some(DbKind::Sqlite));
        let key = existing_secret_key(&fs::read_to_string(&path).unwrap()).unwrap();

        let changes = switch(DbKind::Postgres, &config).unwrap();
        let printed = changes.join("\n");
        assert!(
            printed.contains("+         'PASSWORD': '********',"),
            "{printed}"
        );
        assert!(!printed.contains("cret"), "password leaked: {printed}");
        assert!(!printed.contains(&key), "secret key leaked: {printed}");
        let text = fs::read_to_string(&path).unwrap();
        assert!(
            text.contains(r"'PASSWORD': 'it\'s a \\ s\xc3\xa9cret',"),
            "{text}"
        );
        assert!(text.is_ascii());
        assert_eq!(
            existing_secret_key(&text).unwrap(),
            key,
            "secret key is kept across switches"
        );
        assert_eq!(check_mode(&path).unwrap(), 0o600);
        let backup = util::sibling(&path, ".bak");
        assert!(fs::read_to_string(&backup).unwrap().contains("sqlite3"));
        assert_eq!(check_mode(&backup).unwrap(), 0o600);

        assert!(
            switch(DbKind::Postgres, &config).unwrap().is_empty(),
            "same target: nothing to change"
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
