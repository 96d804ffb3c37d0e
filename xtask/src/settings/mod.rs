//! `settings_local.py`: rendering for SQLite or PostgreSQL, and the safe switch (atomic, 0600,
//! every replaced file kept, the secret key kept or the switch refused, changes printed with
//! secrets masked); `keep` keeps every file it replaces.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

mod keep;

use anyhow::{anyhow, bail, Context, Result};
use xshell::Shell;

use keep::{keep_previous, read_if_present};

use crate::{
    config::{Config, PgTarget},
    flags::{self, DbKind},
    pyliteral::{literal_assignment, py_str, sets_names_dynamically, statements, PyStr},
    util,
};

/// A new `SECRET_KEY`: 32 random bytes from the OS, as 64 hex digits.
fn generate_secret_key() -> Result<PyStr> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|err| anyhow!("cannot get random bytes for a new SECRET_KEY: {err}"))?;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    Ok(PyStr::Bytes(hex.into_bytes()))
}

/// The `SECRET_KEY` settings_local.py sets, if it sets one (see [`literal_assignment`]).
fn existing_secret_key(source: &str) -> Result<Option<PyStr>> {
    literal_assignment(source, "SECRET_KEY", "settings_local.py")
}

/// The file's text for `kind`. `secret_key` is kept across switches.
pub fn render(kind: DbKind, config: &Config, secret_key: &str) -> String {
    render_with_key(kind, config, &PyStr::Bytes(secret_key.as_bytes().to_vec()))
}

fn render_with_key(kind: DbKind, config: &Config, secret_key: &PyStr) -> String {
    let database = match kind {
        DbKind::Sqlite => format!(
            "    'default': {{\n        'ENGINE': 'django.db.backends.sqlite3',\n        'NAME': {},\n    }}\n",
            py_str(&config.sqlite_path.display().to_string())
        ),
        DbKind::Postgres => {
            let pg: &PgTarget = &config.pg;
            let password = pg.password.as_ref().map(|it| it.expose()).unwrap_or("");
            // psycopg2 hands OPTIONS to libpq: the same TLS mode the tool connects with.
            let mut options = format!("'sslmode': {}", py_str(pg.sslmode.name()));
            if let Some(addr) = &pg.hostaddr {
                options.push_str(&format!(", 'hostaddr': {}", py_str(&addr.to_string())));
            }
            if let Some(root) = &pg.sslrootcert {
                options.push_str(&format!(
                    ", 'sslrootcert': {}",
                    py_str(&root.display().to_string())
                ));
            }
            format!(
                "    'default': {{\n        'ENGINE': 'django.db.backends.postgresql_psycopg2',\n        'NAME': {},\n        'USER': {},\n        'PASSWORD': {},\n        'HOST': {},\n        'PORT': {},\n        'OPTIONS': {{{options}}},\n    }}\n",
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
        secret_key.literal()
    )
}

/// A line with any secret's value replaced, for printing: the database password, the secret
/// key, and whatever else a hand-written file may hold under a name that sounds secret.
fn masked(line: &str) -> String {
    let lower = line.to_ascii_lowercase();
    if !["password", "secret", "key", "token", "dsn"]
        .iter()
        .any(|it| lower.contains(it))
    {
        return line.to_string();
    }
    match line.find([':', '=']) {
        Some(at) => format!(
            "{} '********'{}",
            &line[..=at],
            if line.trim_end().ends_with(',') {
                ","
            } else {
                ""
            }
        ),
        None => "********".to_string(),
    }
}

/// Writes `settings_local.py` for `kind`; returns the changed lines (masked) for printing, and
/// `note: ` lines about the secret key and the copies kept of the previous file. The secret key
/// is the one the previous file sets (refused if it cannot be read), or a new one when it sets
/// none.
pub fn switch(kind: DbKind, config: &Config) -> Result<Vec<String>> {
    let path = config.settings_local();
    let (previous, text, mut notes) = planned(kind, config)?;
    if previous.as_deref() == Some(text.as_str()) {
        return Ok(Vec::new());
    }
    if let Some(previous) = &previous {
        for kept in keep_previous(&path, previous.as_bytes())? {
            notes.push(format!(
                "note: kept a copy of a previous file as {}",
                config.display_path(&kept)
            ));
        }
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
    changes.extend(notes);
    Ok(changes)
}

/// What `switch(kind)` writes: the file it replaces (if any), the new text (the secret key
/// kept as `switch` documents it) and notes about the key.
fn planned(kind: DbKind, config: &Config) -> Result<(Option<String>, String, Vec<String>)> {
    let path = config.settings_local();
    let previous = read_if_present(&path)?
        .map(|bytes| {
            String::from_utf8(bytes).map_err(|_| {
                anyhow!(
                    "{} is not UTF-8 text, so its SECRET_KEY cannot be read: \
                     save it as UTF-8 and switch again",
                    path.display()
                )
            })
        })
        .transpose()?;
    let mut notes = Vec::new();
    let key = match previous.as_deref() {
        Some(text) => {
            if let Some(statement) = statements(text)
                .into_iter()
                .find(|it| sets_names_dynamically(&it.code))
            {
                bail!(
                    "settings_local.py may set SECRET_KEY in a way this tool cannot read (line {}: \
                     a star import, execfile, exec or globals()), and it will not guess it or \
                     replace it with a new one: write it on one line as SECRET_KEY = '...' \
                     (a plain string literal) instead and switch again",
                    statement.line
                );
            }
            existing_secret_key(text)?
        }
        None => None,
    };
    // The user's own settings set the key their install runs with: settings_local.py, executed
    // last, repeats it, so it overrides nothing but the database.
    let mut own = None;
    for file in crate::zone::SETTINGS_FILES {
        if let Some(source) = read_if_present(&config.root.join(file))? {
            let source = String::from_utf8_lossy(&source);
            if let Some(found) = literal_assignment(&source, "SECRET_KEY", file)? {
                own = Some((found, file));
            }
        }
    }
    let key = match (own, key) {
        (Some((own, file)), previous) => {
            if previous.as_ref().is_some_and(|it| *it != own) {
                notes.push(format!(
                    "note: SECRET_KEY now repeats the one {file} sets (the previous settings_local.py had another; it is kept)"
                ));
            }
            Some(own)
        }
        (None, previous) => previous,
    };
    let key = match key {
        Some(key) => key,
        None => {
            notes.push(
                match previous {
                    Some(_) => "note: settings_local.py set no SECRET_KEY: generated a new one",
                    None => "note: no settings_local.py yet: generated a new SECRET_KEY",
                }
                .to_string(),
            );
            generate_secret_key()?
        }
    };
    let text = render_with_key(kind, config, &key);
    Ok((previous, text, notes))
}

/// For `migrate --prepare`: in `dir`, the settings `switch-settings postgres` would write
/// (`settings_local.py`, 0600, the same secret key) beside copies of `settings.py` and the
/// install's `sentry_conf.py` (0600), so Sentry 4's `upgrade` can build the target's schema
/// while the running Sentry 4 keeps its own settings_local.py, untouched. Returns the
/// `settings.py` to pass as `--config`.
pub fn write_prepared(config: &Config, dir: &Path) -> Result<PathBuf> {
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    let (_, text, _) = planned(DbKind::Postgres, config)?;
    let text = text.replacen(
        "# Written by `cargo xtask switch-settings postgres`",
        "# Written by `cargo xtask migrate --prepare` (settings/settings_local.py is left as it is)",
        1,
    );
    util::write_atomic(&dir.join("settings_local.py"), text.as_bytes(), 0o600)?;
    for file in ["settings.py", "sentry_conf.py"] {
        let from = config.root.join("settings").join(file);
        let to = dir.join(file);
        match fs::read(&from) {
            Ok(bytes) => util::write_atomic(&to, &bytes, 0o600)
                .with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                let _ = fs::remove_file(&to);
            }
            Err(err) => return Err(err).with_context(|| format!("cannot read {}", from.display())),
        }
    }
    Ok(dir.join("settings.py"))
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
            eprintln!(
                "note: PGPASSWORD is not set: settings_local.py gets an empty password, and psycopg2 reads the password file as libpq does (password: {})",
                config.pg_password_source
            );
        }
        let changes = switch(self.db, &config)?;
        let path = config.display_path(&config.settings_local());
        if changes.is_empty() {
            println!("{path} already points at {}: unchanged", self.db);
        } else {
            println!(
                "{path} now points at {} (mode 0600; previous kept as {path}.bak):",
                match self.db {
                    DbKind::Sqlite => format!("SQLite {}", config.sqlite_path.display()),
                    DbKind::Postgres => format!("PostgreSQL {}", config.pg),
                }
            );
            for line in changes {
                match line.strip_prefix("note: ") {
                    Some(note) => eprintln!("note: {note}"),
                    None => println!("  {line}"),
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::{
        os::unix::fs::PermissionsExt,
        path::{Path, PathBuf},
    };

    use super::{keep::timestamped_backups, *};

    fn check_mode(path: &Path) -> Result<u32> {
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

    /// A scratch root with a `settings` folder, and its config.
    fn scratch() -> (tempfile::TempDir, Config) {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("settings")).unwrap();
        let config = config(dir.path());
        (dir, config)
    }

    fn key_in(path: &Path) -> PyStr {
        existing_secret_key(&fs::read_to_string(path).unwrap())
            .unwrap()
            .expect("a SECRET_KEY")
    }

    /// Every file in the settings folder, by name.
    fn files(config: &Config) -> Vec<(String, Vec<u8>)> {
        let folder = config.settings_local().parent().unwrap().to_path_buf();
        let mut out: Vec<_> = fs::read_dir(folder)
            .unwrap()
            .map(|entry| {
                let entry = entry.unwrap();
                (
                    entry.file_name().to_string_lossy().into_owned(),
                    fs::read(entry.path()).unwrap(),
                )
            })
            .collect();
        out.sort();
        out
    }

    #[test]
    fn switch_is_atomic_private_and_masked() {
        let (_dir, config) = scratch();

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
        let key = key_in(&path);
        let PyStr::Bytes(hex) = &key else {
            panic!("a new key is hex digits: {key:?}")
        };
        let hex = String::from_utf8(hex.clone()).unwrap();

        let changes = switch(DbKind::Postgres, &config).unwrap();
        let printed = changes.join("\n");
        assert!(
            printed.contains("+         'PASSWORD': '********',"),
            "{printed}"
        );
        assert!(!printed.contains("cret"), "password leaked: {printed}");
        assert!(!printed.contains(&hex), "secret key leaked: {printed}");
        let text = fs::read_to_string(&path).unwrap();
        assert!(
            text.contains(r"'PASSWORD': 'it\'s a \\ s\xc3\xa9cret',"),
            "{text}"
        );
        assert!(text.is_ascii());
        assert_eq!(key_in(&path), key, "secret key is kept across switches");
        assert_eq!(check_mode(&path).unwrap(), 0o600);
        let backup = util::sibling(&path, ".bak");
        assert!(fs::read_to_string(&backup).unwrap().contains("sqlite3"));
        assert_eq!(check_mode(&backup).unwrap(), 0o600);

        assert!(
            switch(DbKind::Postgres, &config).unwrap().is_empty(),
            "same target: nothing to change"
        );
    }

    #[test]
    fn psycopg2_gets_the_same_tls_mode() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = config(dir.path());
        config.pg.sslmode = crate::config::SslMode::VerifyFull;
        config.pg.sslrootcert = Some("/etc/sentry/ca.crt".into());
        let text = render(DbKind::Postgres, &config, "k");
        assert!(
            text.contains(
                "'OPTIONS': {'sslmode': 'verify-full', 'sslrootcert': '/etc/sentry/ca.crt'},"
            ),
            "{text}"
        );
        // PGHOSTADDR reaches psycopg2's libpq too.
        config.pg.hostaddr = Some("10.0.0.5".parse().unwrap());
        let text = render(DbKind::Postgres, &config, "k");
        assert!(
            text.contains(
                "'OPTIONS': {'sslmode': 'verify-full', 'hostaddr': '10.0.0.5', 'sslrootcert'"
            ),
            "{text}"
        );
    }

    #[test]
    fn the_installs_own_secret_key_wins_and_is_repeated() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("settings")).unwrap();
        fs::write(
            dir.path().join("settings/sentry_conf.py"),
            "TIME_ZONE = 'UTC'\nSECRET_KEY = \"the-live-key\"\n",
        )
        .unwrap();
        let config = config(dir.path());
        switch(DbKind::Sqlite, &config).unwrap();
        let text = fs::read_to_string(config.settings_local()).unwrap();
        assert_eq!(
            existing_secret_key(&text).unwrap(),
            Some(PyStr::Bytes(b"the-live-key".to_vec()))
        );
        fs::write(
            dir.path().join("settings/sentry_conf.py"),
            "SECRET_KEY = get_key()\n",
        )
        .unwrap();
        let err = switch(DbKind::Postgres, &config).unwrap_err().to_string();
        assert!(
            err.contains("settings/sentry_conf.py sets SECRET_KEY in a form"),
            "{err}"
        );
    }

    #[test]
    fn a_double_quoted_key_is_kept_across_switches() {
        let (_dir, config) = scratch();
        let path = config.settings_local();
        fs::write(
            &path,
            "DEBUG = False\nSECRET_KEY=\"it's my \\\"key\\\" \\\\ \\xe9\"  # from 2013\n",
        )
        .unwrap();
        let key = PyStr::Bytes(b"it's my \"key\" \\ \xe9".to_vec());
        assert_eq!(key_in(&path), key);
        for kind in [DbKind::Sqlite, DbKind::Postgres, DbKind::Sqlite] {
            let changes = switch(kind, &config).unwrap();
            assert!(
                !changes.iter().any(|it| it.contains("generated")),
                "{changes:?}"
            );
            assert_eq!(key_in(&path), key, "after switching to {kind:?}");
        }
    }

    #[test]
    fn a_key_in_an_unreadable_form_is_refused_and_nothing_is_written() {
        for source in [
            "import os\nSECRET_KEY = os.environ['K']\n",
            "SECRET_KEY = '''abc'''\n",
            "SECRET_KEY = \"\"\"abc\ndef\"\"\"\n",
            "SECRET_KEY = ('abc'\n              'def')\n",
            "SECRET_KEY = 'abc' \\\n    'def'\n",
            "SECRET_KEY = 'abc' + 'def'\n",
            "SECRET_KEY = 'abc'; SECRET_KEY += 'def'\n",
            "SECRET_KEY = KEY\n",
            "SECRET_KEY = ur'abc'\n",
            "SECRET_KEY = u'abc\\u'\n",
            "SECRET_KEY = 'abc'\nif True:\n    SECRET_KEY = 'def'\n",
            "SECRET_KEY = 'abc'\nglobals()['SECRET_KEY'] = 'def'\n",
            "SECRET_KEY = 'abc'\nfrom local_secrets import *\n",
            "execfile('/etc/sentry/secret.py')\n",
        ] {
            let (_dir, config) = scratch();
            let path = config.settings_local();
            fs::write(&path, source).unwrap();
            let before = files(&config);
            let err = format!("{:#}", switch(DbKind::Postgres, &config).unwrap_err());
            assert!(
                err.contains("SECRET_KEY in a")
                    && err.contains("cannot read")
                    && err.contains("will not guess it"),
                "{source}: {err}"
            );
            assert!(!err.contains("abc") && !err.contains("def"), "{err}");
            assert_eq!(files(&config), before, "{source}: nothing written");
        }
    }

    #[test]
    fn a_new_key_only_when_none_is_set_and_then_said() {
        let (_dir, config) = scratch();
        let path = config.settings_local();
        let notes = |changes: Vec<String>| -> Vec<String> {
            changes
                .into_iter()
                .filter(|it| it.starts_with("note: ") && it.contains("SECRET_KEY"))
                .collect()
        };
        // No file at all.
        let changes = switch(DbKind::Sqlite, &config).unwrap();
        assert_eq!(
            notes(changes),
            ["note: no settings_local.py yet: generated a new SECRET_KEY"]
        );
        // A file that sets none (a commented-out one and a look-alike name do not count).
        fs::write(
            &path,
            "# SECRET_KEY = 'old'\nSENTRY_SECRET_KEY = 'x'\nDEBUG = True\n",
        )
        .unwrap();
        let changes = switch(DbKind::Sqlite, &config).unwrap();
        assert_eq!(
            notes(changes),
            ["note: settings_local.py set no SECRET_KEY: generated a new one"]
        );
        // A file that sets one: kept, nothing said about keys.
        fs::write(&path, "SECRET_KEY = u'caf\\xe9'\n").unwrap();
        let changes = switch(DbKind::Postgres, &config).unwrap();
        assert!(notes(changes).is_empty());
        assert_eq!(key_in(&path), PyStr::Unicode("café".to_string()));
    }

    #[test]
    fn every_file_replaced_is_kept_and_the_first_in_orig() {
        let (_dir, config) = scratch();
        let path = config.settings_local();
        let original = "# my settings\nDEBUG = True\nSECRET_KEY = 'k'\n\
                        EMAIL_HOST_PASSWORD = 'mail-pw'\nALLOWED_HOSTS = ['*']\n";
        fs::write(&path, original).unwrap();
        let orig = util::sibling(&path, ".orig");
        let mut replaced = Vec::new();
        for kind in [
            DbKind::Sqlite,
            DbKind::Postgres,
            DbKind::Sqlite,
            DbKind::Postgres,
        ] {
            replaced.push(fs::read(&path).unwrap());
            let changes = switch(kind, &config).unwrap();
            let printed = changes.join("\n");
            assert!(!printed.contains("mail-pw"), "secret printed: {printed}");
            assert_eq!(fs::read_to_string(&orig).unwrap(), original);
            assert_eq!(check_mode(&orig).unwrap(), 0o600);
            assert_eq!(
                fs::read(util::sibling(&path, ".bak")).unwrap(),
                *replaced.last().unwrap(),
                ".bak is the file just replaced"
            );
        }
        let kept: Vec<Vec<u8>> = files(&config)
            .into_iter()
            .filter(|(name, _)| name.contains(".bak-") || name.ends_with(".orig"))
            .map(|(_, contents)| contents)
            .collect();
        for contents in &replaced {
            assert!(
                kept.contains(contents),
                "lost: {}",
                String::from_utf8_lossy(contents)
            );
        }
        assert_eq!(
            kept.len(),
            3,
            "the original and two rendered files, once each"
        );
        for backup in timestamped_backups(&path).unwrap() {
            assert_eq!(check_mode(&backup).unwrap(), 0o600);
        }
    }

    #[test]
    fn a_bak_left_by_an_older_version_is_kept() {
        let (_dir, config) = scratch();
        let path = config.settings_local();
        let older = "SECRET_KEY = 'k'\nDEBUG = True\n";
        fs::write(util::sibling(&path, ".bak"), older).unwrap();
        fs::write(&path, "SECRET_KEY = 'k'\n").unwrap();
        switch(DbKind::Sqlite, &config).unwrap();
        let orig = util::sibling(&path, ".orig");
        assert_eq!(fs::read_to_string(orig).unwrap(), older);
        let backups = timestamped_backups(&path).unwrap();
        assert_eq!(backups.len(), 1, "{backups:?}");
        assert_eq!(
            fs::read_to_string(&backups[0]).unwrap(),
            "SECRET_KEY = 'k'\n"
        );
    }

    #[test]
    fn awkward_keys_round_trip() {
        let all_bytes: Vec<u8> = (0..=255).collect();
        let mut keys = vec![
            PyStr::Bytes(all_bytes.clone()),
            PyStr::Bytes(b"'\"\\'\\\\\\x41 # not a comment".to_vec()),
            PyStr::Bytes("sécret €".as_bytes().to_vec()),
            PyStr::Bytes(Vec::new()),
            PyStr::Unicode("sécret € 😀 '\\\" \u{0} \u{7f} \u{ff}".to_string()),
        ];
        keys.push(generate_secret_key().unwrap());
        let (_dir, config) = scratch();
        for key in &keys {
            for kind in [DbKind::Sqlite, DbKind::Postgres] {
                let text = render_with_key(kind, &config, key);
                assert!(text.is_ascii(), "{text}");
                assert_eq!(
                    existing_secret_key(&text).unwrap().as_ref(),
                    Some(key),
                    "{text}"
                );
            }
        }
        // Python reads the same (Python 3 here, when present: Python 2's `'…'` is its `b'…'`).
        let Ok(python) = which_python3() else {
            return;
        };
        for key in &keys {
            let literal = key.literal();
            let (program, expected) = match key {
                PyStr::Bytes(bytes) => (
                    format!("import sys; sys.stdout.write(' '.join(str(b) for b in b{literal}))"),
                    bytes.iter().map(|b| b.to_string()).collect::<Vec<_>>(),
                ),
                PyStr::Unicode(text) => (
                    format!(
                        "import sys; sys.stdout.write(' '.join(str(ord(c)) for c in {literal}))"
                    ),
                    text.chars()
                        .map(|c| u32::from(c).to_string())
                        .collect::<Vec<_>>(),
                ),
            };
            let output = std::process::Command::new(&python)
                .args(["-c", &program])
                .output()
                .unwrap();
            assert!(output.status.success(), "{output:?}");
            assert_eq!(
                String::from_utf8(output.stdout).unwrap(),
                expected.join(" ")
            );
        }
    }

    fn which_python3() -> Result<PathBuf> {
        let path = std::env::var_os("PATH").context("no PATH")?;
        std::env::split_paths(&path)
            .map(|dir| dir.join("python3"))
            .find(|it| it.is_file())
            .context("no python3")
    }
}
