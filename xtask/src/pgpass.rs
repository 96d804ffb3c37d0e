//! libpq's password file (`PGPASSFILE`, else `~/.pgpass`), read as libpq reads it, so no
//! password need sit in an environment variable. Used only when `PGPASSWORD` is not set.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

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
    Found(String),
    /// No file, or no line matches.
    NotFound,
    /// The file is readable by group or others: libpq ignores it, and so do we.
    IgnoredPermissions(PathBuf),
}

/// The password for `host`:`port`, `dbname`, `user`; a socket folder as host matches
/// `localhost`, as in libpq.
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
    let host = if host.starts_with('/') {
        "localhost"
    } else {
        host
    };
    let port = port.to_string();
    for line in text.lines() {
        if line.trim_start().starts_with('#') {
            continue;
        }
        let fields = split(line);
        let [h, p, d, u, password] = fields.as_slice() else {
            continue;
        };
        let matches = |field: &str, value: &str| field == "*" || field == value;
        if matches(h, host) && matches(p, &port) && matches(d, dbname) && matches(u, user) {
            return Lookup::Found(password.clone());
        }
    }
    Lookup::NotFound
}

/// `a:b\:c:d` → `["a", "b:c", "d"]`: `\:` and `\\` are a literal colon and backslash.
fn split(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(next) = chars.next() {
                    fields.last_mut().unwrap().push(next);
                }
            }
            ':' if fields.len() < 5 => fields.push(String::new()),
            c => fields.last_mut().unwrap().push(c),
        }
    }
    fields
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
            "# comment\ndb.example:5432:sentry:sentry:first\n*:*:*:bob:b\\:o\\\\b\nlocalhost:6543:*:ann:socket\n*:*:*:*:any\n",
        )
        .unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let find = |host, port, db, user| lookup(&path, host, port, db, user);
        assert_eq!(
            find("db.example", 5432, "sentry", "sentry"),
            Lookup::Found("first".into())
        );
        assert_eq!(
            find("db.example", 5433, "sentry", "sentry"),
            Lookup::Found("any".into())
        );
        assert_eq!(find("h", 1, "x", "bob"), Lookup::Found("b:o\\b".into()));
        assert_eq!(
            find("/var/run/postgresql", 6543, "x", "ann"),
            Lookup::Found("socket".into())
        );

        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(
            find("h", 1, "x", "bob"),
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
