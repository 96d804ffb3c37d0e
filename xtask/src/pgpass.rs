//! libpq's password file (`PGPASSFILE`, else `~/.pgpass`), read as libpq's `passwordFromFile`
//! reads it, so no password need sit in an environment variable. Used only when `PGPASSWORD`
//! is not set.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

/// libpq's `DEFAULT_PGSOCKET_DIR` as Debian and Ubuntu build it (the libpq psycopg2 links
/// against in the buildout): the host when neither `PGHOST` nor `PGHOSTADDR` is set, and the
/// one socket folder a `localhost` line of the password file matches.
pub const DEFAULT_SOCKET_DIR: &str = "/var/run/postgresql";

/// The file libpq would read: `PGPASSFILE`, else `~/.pgpass`.
pub fn default_path(env: impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
    env("PGPASSFILE")
        .filter(|it| !it.is_empty())
        .map(PathBuf::from)
        .or_else(|| env("HOME").map(|home| Path::new(&home).join(".pgpass")))
}

/// What reading the file gave.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup {
    /// The password of the first matching line, and that line's number (from 1).
    Found { password: String, line: usize },
    /// No file, or no line matches.
    NotFound,
    /// The file is readable by group or others: libpq ignores it, and so do we.
    IgnoredPermissions(PathBuf),
}

/// The password for `host`:`port`, `dbname`, `user`, as libpq looks it up: the first line whose
/// four fields match, each literally or as an unescaped `*`. The host of a Unix socket matches
/// `localhost` only when it is libpq's default socket folder
/// ([`DEFAULT_SOCKET_DIR`]); any other folder matches its own path.
pub fn lookup(path: &Path, host: &str, port: u16, dbname: &str, user: &str) -> Lookup {
    let Ok(meta) = fs::metadata(path) else {
        return Lookup::NotFound;
    };
    if !meta.is_file() {
        return Lookup::NotFound;
    }
    if meta.permissions().mode() & 0o077 != 0 {
        return Lookup::IgnoredPermissions(path.to_path_buf());
    }
    let Ok(text) = fs::read_to_string(path) else {
        return Lookup::NotFound;
    };
    let host = match host {
        "" | DEFAULT_SOCKET_DIR => "localhost",
        host => host,
    };
    let port = port.to_string();
    for (at, line) in text.lines().enumerate() {
        // Only a `#` in the first column starts a comment (a line with blanks before it is a
        // line whose host field matches nothing).
        let line = line.trim_end_matches(['\r', '\n']);
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let mut rest = line;
        let matched = [host, port.as_str(), dbname, user]
            .into_iter()
            .all(|value| match field_matches(rest, value) {
                Some(after) => {
                    rest = after;
                    true
                }
                None => false,
            });
        if matched {
            return Lookup::Found {
                password: password_field(rest),
                line: at + 1,
            };
        }
    }
    Lookup::NotFound
}

/// libpq's `pwdfMatchesString`: whether the field at the start of `text` (ended by an unescaped
/// `:`) is `*` or equals `value` once `\` escapes are undone; the text after its `:` if so.
/// An escaped `\*` is a literal star, and a field without a `:` after it matches nothing.
fn field_matches<'a>(text: &'a str, value: &str) -> Option<&'a str> {
    if let Some(after) = text.strip_prefix("*:") {
        return Some(after);
    }
    let mut field = String::new();
    let mut chars = text.char_indices();
    while let Some((at, c)) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some((_, escaped)) => field.push(escaped),
                None => return None,
            },
            ':' => return (field == value).then(|| &text[at + 1..]),
            c => field.push(c),
        }
    }
    None
}

/// The password: up to the first unescaped `:` (anything after it is ignored, as by libpq),
/// `\` escapes undone (a `\` at the very end stays).
fn password_field(text: &str) -> String {
    let mut password = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek().is_some() => password.push(chars.next().unwrap()),
            ':' => break,
            c => password.push(c),
        }
    }
    password
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_match_as_libpq_matches_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pgpass");
        fs::write(
            &path,
            "# comment\n\
             db.example:5432:sentry:sentry:first\n\
             *:*:*:bob:b\\:o\\\\b\n\
             localhost:6543:*:ann:socket\n\
             /srv/pg:6543:*:ann:own-folder\n\
             *:*:\\*:cat:literal-star\n\
             *:*:*:cat:wildcard:extra\n\
             \x20 # not a comment, a host that matches nothing\n\
             *:*:*:dan\n\
             *:*:*:eve:trailing\\\n\
             *:*:*:*:any\n",
        )
        .unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let find = |host, port, db, user| match lookup(&path, host, port, db, user) {
            Lookup::Found { password, .. } => Some(password),
            _ => None,
        };
        assert_eq!(
            find("db.example", 5432, "sentry", "sentry").as_deref(),
            Some("first")
        );
        assert_eq!(
            lookup(&path, "db.example", 5432, "sentry", "sentry"),
            Lookup::Found {
                password: "first".into(),
                line: 2
            }
        );
        assert_eq!(
            find("db.example", 5433, "sentry", "sentry").as_deref(),
            Some("any")
        );
        assert_eq!(find("h", 1, "x", "bob").as_deref(), Some("b:o\\b"));
        // Only libpq's default socket folder is `localhost`; another folder is its path.
        assert_eq!(
            find("/var/run/postgresql", 6543, "x", "ann").as_deref(),
            Some("socket")
        );
        assert_eq!(
            find("/srv/pg", 6543, "x", "ann").as_deref(),
            Some("own-folder")
        );
        assert_eq!(find("/tmp", 6543, "x", "ann").as_deref(), Some("any"));
        // `\*` is a star, not a wildcard; what follows the password's `:` is dropped.
        assert_eq!(find("h", 1, "*", "cat").as_deref(), Some("literal-star"));
        assert_eq!(find("h", 1, "sentry", "cat").as_deref(), Some("wildcard"));
        // A line without a password field matches nothing; a final `\` stays.
        assert_eq!(find("h", 1, "x", "dan").as_deref(), Some("any"));
        assert_eq!(find("h", 1, "x", "eve").as_deref(), Some("trailing\\"));

        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(
            lookup(&path, "h", 1, "x", "bob"),
            Lookup::IgnoredPermissions(path.clone())
        );
        assert_eq!(
            lookup(&dir.path().join("none"), "h", 1, "x", "y"),
            Lookup::NotFound
        );

        let env = |key: &str| match key {
            "HOME" => Some("/home/u".to_string()),
            _ => None,
        };
        assert_eq!(default_path(env), Some(PathBuf::from("/home/u/.pgpass")));
        let env = |key: &str| match key {
            "PGPASSFILE" => Some("/etc/sentry/pgpass".to_string()),
            "HOME" => Some("/home/u".to_string()),
            _ => None,
        };
        assert_eq!(default_path(env), Some(PathBuf::from("/etc/sentry/pgpass")));
    }
}
