//! Every `settings_local.py` a switch replaces is kept (`.orig`, `.bak-<UTC time>[-n]`, `.bak`),
//! mode 0600, never overwritten: the files and how they are written.

use std::{
    fs,
    io::{ErrorKind, Write},
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};

use crate::util;

/// The file at `path`, or `None` if there is none.
pub(super) fn read_if_present(path: &Path) -> Result<Option<Vec<u8>>> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(err) if err.kind() == ErrorKind::NotFound => Ok(None),
        Err(err) => Err(err).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Writes a new file at `path` (mode 0600) without ever replacing one: through a temp file,
/// hard-linked into place, so it appears whole or not at all. `false` if `path` exists.
pub(super) fn write_new(path: &Path, contents: &[u8]) -> Result<bool> {
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
pub(super) fn timestamped_backups(path: &Path) -> Result<Vec<PathBuf>> {
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
pub(super) fn keep_previous(path: &Path, previous: &[u8]) -> Result<Vec<PathBuf>> {
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

#[cfg(test)]
mod tests {
    use std::fs;

    use super::keep_unique;

    #[test]
    fn keep_unique_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("settings_local.py");
        let first = keep_unique(&path, b"one").unwrap().unwrap();
        let second = keep_unique(&path, b"two").unwrap().unwrap();
        assert_ne!(first, second);
        assert_eq!(keep_unique(&path, b"one").unwrap(), None, "already kept");
        assert_eq!(fs::read(first).unwrap(), b"one");
        assert_eq!(fs::read(second).unwrap(), b"two");
    }
}
