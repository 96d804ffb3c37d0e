//! `settings_local.py`: rendering for SQLite or PostgreSQL, and the safe switch (atomic, 0600,
//! every replaced file kept, the secret key kept or the switch refused, changes printed with
//! secrets masked).

use std::{
    fs,
    io::{ErrorKind, Write},
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use anyhow::{anyhow, bail, Context, Result};
use xshell::Shell;

use crate::{
    config::{Config, PgTarget},
    flags::{self, DbKind},
    util,
};

/// A Python 2 byte-string literal: ASCII only, everything else escaped.
fn py_str(value: &str) -> String {
    py_bytes(value.as_bytes())
}

/// A Python 2 byte-string literal holding exactly `bytes` (Python 3 reads the same escapes as
/// the code points 0-255).
fn py_bytes(bytes: &[u8]) -> String {
    let mut out = String::from("'");
    for &byte in bytes {
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

/// A Python 2 unicode literal holding exactly `value`: ASCII only, everything else escaped.
fn py_unicode(value: &str) -> String {
    let mut out = String::from("u'");
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            ' '..='~' => out.push(c),
            c if u32::from(c) < 0x100 => out.push_str(&format!("\\x{:02x}", u32::from(c))),
            c if u32::from(c) < 0x10000 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push_str(&format!("\\U{:08x}", u32::from(c))),
        }
    }
    out.push('\'');
    out
}

/// A `SECRET_KEY` as Python 2 holds it: a byte string (`'…'`, `"…"`, `b'…'`, `r'…'`) or a
/// unicode string (`u'…'`). Kept as such, so that it is written back as the identical value.
#[derive(Debug, Clone, PartialEq, Eq)]
enum SecretKey {
    Bytes(Vec<u8>),
    Unicode(String),
}

impl SecretKey {
    /// 32 random bytes from the OS, as 64 hex digits.
    fn generate() -> Result<SecretKey> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes)
            .map_err(|err| anyhow!("cannot get random bytes for a new SECRET_KEY: {err}"))?;
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        Ok(SecretKey::Bytes(hex.into_bytes()))
    }

    /// The Python literal that reads back as this very value.
    fn literal(&self) -> String {
        match self {
            SecretKey::Bytes(bytes) => py_bytes(bytes),
            SecretKey::Unicode(text) => py_unicode(text),
        }
    }
}

/// The file's text for `kind`. `secret_key` is kept across switches.
pub fn render(kind: DbKind, config: &Config, secret_key: &str) -> String {
    render_with_key(
        kind,
        config,
        &SecretKey::Bytes(secret_key.as_bytes().to_vec()),
    )
}

fn render_with_key(kind: DbKind, config: &Config, secret_key: &SecretKey) -> String {
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

/// One logical line of Python source: a statement, over several physical lines when brackets,
/// a backslash or a triple-quoted string carry it on.
struct Statement<'a> {
    /// The number of its first physical line, from 1.
    line: usize,
    /// Its text as written, comments included, without the final line break.
    text: &'a str,
    /// Its text outside comments (strings included), to look for a name in.
    code: String,
}

/// Splits Python source into statements, the way Python's tokenizer ends them: at a line break
/// outside brackets, strings and backslash continuations.
fn statements(source: &str) -> Vec<Statement<'_>> {
    let mut out = Vec::new();
    let (mut start, mut start_line, mut line) = (0, 1, 1);
    let mut depth = 0usize;
    let mut code = String::new();
    let mut chars = source.char_indices().peekable();
    while let Some((at, c)) = chars.next() {
        match c {
            '#' => while chars.next_if(|&(_, c)| c != '\n').is_some() {},
            '\'' | '"' => {
                code.push(c);
                let triple = source[at..].starts_with(&c.to_string().repeat(3));
                if triple {
                    chars.next();
                    chars.next();
                }
                while let Some((at, d)) = chars.next() {
                    code.push(d);
                    match d {
                        '\\' => {
                            if let Some((_, e)) = chars.next() {
                                line += usize::from(e == '\n');
                                code.push(e);
                            }
                        }
                        '\n' if triple => line += 1,
                        // An unterminated string ends with its line (a syntax error to Python).
                        '\n' => {
                            code.pop();
                            line += 1;
                            if depth == 0 {
                                out.push(Statement {
                                    line: start_line,
                                    text: &source[start..at],
                                    code: std::mem::take(&mut code),
                                });
                                (start, start_line) = (at + 1, line);
                            }
                            break;
                        }
                        d if d == c && !triple => break,
                        d if d == c && source[at..].starts_with(&c.to_string().repeat(3)) => {
                            chars.next();
                            chars.next();
                            break;
                        }
                        _ => {}
                    }
                }
            }
            '\\' if chars.next_if(|&(_, c)| c == '\n').is_some() => line += 1,
            '(' | '[' | '{' => {
                depth += 1;
                code.push(c);
            }
            ')' | ']' | '}' => {
                depth = depth.saturating_sub(1);
                code.push(c);
            }
            '\n' => {
                line += 1;
                if depth == 0 {
                    out.push(Statement {
                        line: start_line,
                        text: &source[start..at],
                        code: std::mem::take(&mut code),
                    });
                    (start, start_line) = (at + 1, line);
                } else {
                    code.push(' ');
                }
            }
            c => code.push(c),
        }
    }
    if start < source.len() {
        out.push(Statement {
            line: start_line,
            text: &source[start..],
            code,
        });
    }
    out
}

/// Whether `code` has `name` as a whole word (so `SENTRY_SECRET_KEY` is not `SECRET_KEY`).
fn mentions(code: &str, name: &str) -> bool {
    let word = |c: char| c.is_alphanumeric() || c == '_';
    code.match_indices(name).any(|(at, found)| {
        !code[..at].ends_with(word) && !code[at + found.len()..].starts_with(word)
    })
}

/// The `SECRET_KEY` settings_local.py sets, if it sets one (see [`literal_assignment`]).
fn existing_secret_key(source: &str) -> Result<Option<SecretKey>> {
    literal_assignment(source, "SECRET_KEY", "settings_local.py")
}

/// The value `file` (its text: `source`) gives `name`, read from top-level statements of the
/// form `NAME = <string literal>` (the last one wins, as in Python), with either quote, any
/// spacing around `=`, Python 2 escapes, a `u`, `b` or `r` prefix and a trailing comment. Any
/// other statement that mentions `name` outside a comment (an expression, a triple-quoted or
/// continued string, `os.environ[...]`, an indented assignment) is refused: never guessed.
fn literal_assignment(source: &str, name: &str, file: &str) -> Result<Option<SecretKey>> {
    let mut value = None;
    for statement in statements(source) {
        if !mentions(&statement.code, name) {
            continue;
        }
        match assignment(statement.text, name) {
            Some(found) => value = Some(found),
            None => bail!(
                "{file} sets {name} in a form this tool cannot read (line {}), \
                 and it will not guess it or replace it: write it on one line as \
                 {name} = '...' (a plain string literal) and try again",
                statement.line
            ),
        }
    }
    Ok(value)
}

/// The text value of `name` in a settings file (see [`literal_assignment`]); `None` when the
/// file does not set it.
pub fn string_setting(source: &str, name: &str, file: &str) -> Result<Option<String>> {
    Ok(match literal_assignment(source, name, file)? {
        None => None,
        Some(SecretKey::Unicode(text)) => Some(text),
        Some(SecretKey::Bytes(bytes)) => Some(
            String::from_utf8(bytes)
                .map_err(|_| anyhow!("{file} sets {name} to bytes that are not UTF-8 text"))?,
        ),
    })
}

/// The value of `NAME = <literal>  # comment`, written from the first column.
fn assignment(text: &str, name: &str) -> Option<SecretKey> {
    let blank = [' ', '\t', '\x0c', '\r'];
    let value = text
        .strip_prefix(name)?
        .trim_start_matches(blank)
        .strip_prefix('=')
        .filter(|it| !it.starts_with('='))?
        .trim_start_matches(blank);
    let (key, rest) = string_literal(value)?;
    let rest = rest.trim_start_matches(blank);
    (rest.is_empty() || rest.starts_with('#') && !rest.contains('\n')).then_some(key)
}

/// A one-line Python 2 string literal at the start of `text`, and the text after it.
fn string_literal(text: &str) -> Option<(SecretKey, &str)> {
    let quote_at = text.find(['\'', '"'])?;
    let (unicode, raw) = match &text[..quote_at] {
        "" | "b" | "B" => (false, false),
        "u" | "U" => (true, false),
        "r" | "R" | "br" | "bR" | "Br" | "BR" => (false, true),
        // `ur'…'` still reads `\u` escapes in Python 2: not a plain literal.
        _ => return None,
    };
    let quote = text[quote_at..].chars().next()?;
    let body = &text[quote_at + 1..];
    if body.starts_with(&quote.to_string().repeat(2)) {
        return None; // triple-quoted
    }
    let mut value = String::new();
    // Byte strings may hold any byte: kept as chars 0-255, turned into bytes at the end.
    let mut chars = body.char_indices();
    let push_source_char = |value: &mut String, c: char| {
        if unicode {
            value.push(c);
        } else {
            let mut buf = [0u8; 4];
            value.extend(c.encode_utf8(&mut buf).bytes().map(char::from));
        }
    };
    while let Some((at, c)) = chars.next() {
        match c {
            c if c == quote => {
                let key = if unicode {
                    SecretKey::Unicode(value)
                } else {
                    SecretKey::Bytes(value.chars().map(|c| c as u8).collect())
                };
                return Some((key, &body[at + c.len_utf8()..]));
            }
            '\n' | '\r' => return None,
            '\\' => {
                let (_, e) = chars.next()?;
                if raw {
                    if e == '\n' || e == '\r' {
                        return None;
                    }
                    value.push('\\');
                    push_source_char(&mut value, e);
                    continue;
                }
                let escaped = match e {
                    '\\' | '\'' | '"' => e,
                    'a' => '\x07',
                    'b' => '\x08',
                    'f' => '\x0c',
                    'n' => '\n',
                    'r' => '\r',
                    't' => '\t',
                    'v' => '\x0b',
                    '0'..='7' => {
                        let mut code = e.to_digit(8)?;
                        for _ in 0..2 {
                            match chars.clone().next().and_then(|(_, d)| d.to_digit(8)) {
                                Some(digit) => {
                                    code = code * 8 + digit;
                                    chars.next();
                                }
                                None => break,
                            }
                        }
                        if !unicode && code > 0xff {
                            return None;
                        }
                        char::from_u32(code)?
                    }
                    'x' | 'u' | 'U' if e == 'x' || unicode => {
                        let digits = match e {
                            'x' => 2,
                            'u' => 4,
                            _ => 8,
                        };
                        let hex: String = (0..digits)
                            .map(|_| chars.next().map(|(_, d)| d))
                            .collect::<Option<_>>()?;
                        if !hex.chars().all(|d| d.is_ascii_hexdigit()) {
                            return None;
                        }
                        char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?
                    }
                    // `\N{name}`, and a backslash ending the line: not plain one-line literals.
                    'N' if unicode => return None,
                    '\n' | '\r' => return None,
                    // Python keeps unknown escapes as they are.
                    e => {
                        value.push('\\');
                        push_source_char(&mut value, e);
                        continue;
                    }
                };
                value.push(escaped);
            }
            c => push_source_char(&mut value, c),
        }
    }
    None
}

/// A statement that could set names no reader of the text can see: a star import, `execfile`,
/// `exec`, or writes through `globals()`, `locals()`, `vars()`, `setattr` or `__dict__`.
fn sets_names_dynamically(code: &str) -> bool {
    let word = |c: char| c.is_alphanumeric() || c == '_';
    let has_word = |name: &str| {
        code.match_indices(name).any(|(at, _)| {
            !code[..at].ends_with(word) && !code[at + name.len()..].starts_with(word)
        })
    };
    let star_import = code
        .match_indices("import")
        .any(|(at, name)| code[at + name.len()..].trim_start().starts_with('*'));
    star_import
        || [
            "execfile", "exec", "globals", "locals", "vars", "setattr", "__dict__",
        ]
        .into_iter()
        .any(has_word)
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

/// The file at `path`, or `None` if there is none.
fn read_if_present(path: &Path) -> Result<Option<Vec<u8>>> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(err) if err.kind() == ErrorKind::NotFound => Ok(None),
        Err(err) => Err(err).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Writes a new file at `path` (mode 0600) without ever replacing one: through a temp file,
/// hard-linked into place, so it appears whole or not at all. `false` if `path` exists.
fn write_new(path: &Path, contents: &[u8]) -> Result<bool> {
    let tmp = util::sibling(path, ".tmp");
    let _ = fs::remove_file(&tmp);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot create {}", tmp.display()))?;
    file.write_all(contents)?;
    file.sync_all()?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600))?;
    let linked = fs::hard_link(&tmp, path);
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(true),
        Err(err) if err.kind() == ErrorKind::AlreadyExists => Ok(false),
        Err(err) => Err(err).with_context(|| format!("cannot write {}", path.display())),
    }
}

/// `settings_local.py.bak-<UTC time>` files beside `path`.
fn timestamped_backups(path: &Path) -> Result<Vec<PathBuf>> {
    let prefix = format!(
        "{}.bak-",
        path.file_name().unwrap_or_default().to_string_lossy()
    );
    let folder = path.parent().unwrap_or(Path::new("."));
    let mut out = Vec::new();
    for entry in
        fs::read_dir(folder).with_context(|| format!("cannot list {}", folder.display()))?
    {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(&prefix) && !name.ends_with(".tmp") {
            out.push(folder.join(&*name));
        }
    }
    Ok(out)
}

/// Keeps `contents` under a new name, `settings_local.py.bak-<UTC time>[-n]`, unless
/// `settings_local.py.orig` or one of those already holds it. Returns the new file's path.
fn keep_unique(path: &Path, contents: &[u8]) -> Result<Option<PathBuf>> {
    let kept = std::iter::once(util::sibling(path, ".orig")).chain(timestamped_backups(path)?);
    for file in kept {
        if read_if_present(&file)?.as_deref() == Some(contents) {
            return Ok(None);
        }
    }
    let stamp: String = util::utc_timestamp(util::unix_now())
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect();
    for n in 0.. {
        let suffix = match n {
            0 => format!(".bak-{stamp}"),
            n => format!(".bak-{stamp}-{n}"),
        };
        let backup = util::sibling(path, &suffix);
        if write_new(&backup, contents)? {
            return Ok(Some(backup));
        }
    }
    unreachable!("some -n is free")
}

/// Keeps `previous`, the file about to be replaced, so that no file ever written there is lost:
/// - `settings_local.py.orig` is the first file replaced (or, after an older version of this
///   tool, the `.bak` it left, which is older still): written once, never replaced;
/// - `settings_local.py.bak-<UTC time>[-n]` holds every other file replaced (the old `.bak`
///   included) whose contents are not kept already: never replaced either;
/// - `settings_local.py.bak` is the file just replaced, rewritten on every switch.
///
/// All are mode 0600 (they may hold a password). Returns the files made, but `.bak`.
fn keep_previous(path: &Path, previous: &[u8]) -> Result<Vec<PathBuf>> {
    let orig = util::sibling(path, ".orig");
    let bak = util::sibling(path, ".bak");
    let old_bak = read_if_present(&bak)?;
    let mut made = Vec::new();
    if !orig.exists() && write_new(&orig, old_bak.as_deref().unwrap_or(previous))? {
        made.push(orig);
    }
    for contents in old_bak.as_deref().into_iter().chain([previous]) {
        made.extend(keep_unique(path, contents)?);
    }
    util::write_atomic(&bak, previous, 0o600)
        .with_context(|| format!("cannot keep the previous file as {}", bak.display()))?;
    Ok(made)
}

/// Writes `settings_local.py` for `kind`; returns the changed lines (masked) for printing, and
/// `note: ` lines about the secret key and the copies kept of the previous file. The secret key
/// is the one the previous file sets (refused if it cannot be read), or a new one when it sets
/// none.
pub fn switch(kind: DbKind, config: &Config) -> Result<Vec<String>> {
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
            SecretKey::generate()?
        }
    };
    let text = render_with_key(kind, config, &key);
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
    use super::*;

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

    fn key_in(path: &Path) -> SecretKey {
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
        let SecretKey::Bytes(hex) = &key else {
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
            Some(SecretKey::Bytes(b"the-live-key".to_vec()))
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
        let key = SecretKey::Bytes(b"it's my \"key\" \\ \xe9".to_vec());
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
        assert_eq!(key_in(&path), SecretKey::Unicode("café".to_string()));
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
    fn keep_unique_never_overwrites() {
        let (_dir, config) = scratch();
        let path = config.settings_local();
        let first = keep_unique(&path, b"one").unwrap().unwrap();
        let second = keep_unique(&path, b"two").unwrap().unwrap();
        assert_ne!(first, second);
        assert_eq!(keep_unique(&path, b"one").unwrap(), None, "already kept");
        assert_eq!(fs::read(first).unwrap(), b"one");
        assert_eq!(fs::read(second).unwrap(), b"two");
    }

    #[test]
    fn python_literals_are_read_as_python_2_reads_them() {
        let read = |source: &str| existing_secret_key(source).unwrap().unwrap();
        let bytes = |it: &[u8]| SecretKey::Bytes(it.to_vec());
        assert_eq!(read("SECRET_KEY = 'a'"), bytes(b"a"));
        assert_eq!(read("SECRET_KEY='a' # it's \"quoted\"\r\n"), bytes(b"a"));
        assert_eq!(read("SECRET_KEY\t=  \"a\\'b\\\"\"\n"), bytes(b"a'b\""));
        assert_eq!(
            read(r"SECRET_KEY = 'a\x41\101\n\t\q\0'"),
            bytes(b"aAA\n\t\\q\0")
        );
        assert_eq!(read(r"SECRET_KEY = b'\xff\\'"), bytes(b"\xff\\"));
        assert_eq!(read(r"SECRET_KEY = r'a\n\''"), bytes(b"a\\n\\'"));
        assert_eq!(read("SECRET_KEY = 'é'"), bytes("é".as_bytes()));
        assert_eq!(
            read(r"SECRET_KEY = u'\xe9\u20ac\U0001f600\q'"),
            SecretKey::Unicode("é€😀\\q".to_string())
        );
        // The last top-level assignment wins, as in Python; brackets, quotes and `#` in
        // strings do not confuse where statements start.
        assert_eq!(
            read("SECRET_KEY = 'a'\nX = ('#', \"'(\",\n     'y')\nSECRET_KEY = 'c'\n"),
            bytes(b"c")
        );
        // Any mention outside a comment, even in a string, is not guessed at.
        assert!(existing_secret_key("X = '''\nSECRET_KEY = 'b'\n'''\n").is_err());
    }

    #[test]
    fn awkward_keys_round_trip() {
        let all_bytes: Vec<u8> = (0..=255).collect();
        let mut keys = vec![
            SecretKey::Bytes(all_bytes.clone()),
            SecretKey::Bytes(b"'\"\\'\\\\\\x41 # not a comment".to_vec()),
            SecretKey::Bytes("sécret €".as_bytes().to_vec()),
            SecretKey::Bytes(Vec::new()),
            SecretKey::Unicode("sécret € 😀 '\\\" \u{0} \u{7f} \u{ff}".to_string()),
        ];
        keys.push(SecretKey::generate().unwrap());
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
                SecretKey::Bytes(bytes) => (
                    format!("import sys; sys.stdout.write(' '.join(str(b) for b in b{literal}))"),
                    bytes.iter().map(|b| b.to_string()).collect::<Vec<_>>(),
                ),
                SecretKey::Unicode(text) => (
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
