//! Lock files in `dumps/`: one `migrate` (`migrate.lock`), one `hold-events`
//! (`hold-events.lock`) at a time per repo.

use std::{
    fs,
    io::{Read, Seek, SeekFrom, Write},
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::Path,
};

use anyhow::{bail, Context, Result};

/// `dumps/migrate.lock`: one `migrate` at a time per repo. An OS file lock (flock) on the file
/// decides, held as long as the file is open: the kernel releases it when the process ends,
/// however it ends, so a lock file left behind never blocks. The pid written into the file only
/// names the holder in the message.
pub struct Lock {
    _file: fs::File,
}

impl Lock {
    /// `dumps/migrate.lock`, for `migrate` and `rollback`.
    pub fn acquire(path: &Path) -> Result<Lock> {
        Lock::acquire_for(path, "cargo xtask migrate")
    }

    /// The lock at `path`; refused naming `task` and its pid while another process holds it.
    pub fn acquire_for(path: &Path, task: &str) -> Result<Lock> {
        let mut file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("cannot open the lock {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = match holder.trim().parse::<u32>() {
                    Ok(pid) => format!(" (pid {pid})"),
                    Err(_) => String::new(),
                };
                bail!(
                    "another `{task}`{holder} is running on this repo (it holds {}): wait for it to finish",
                    path.display()
                )
            }
            Err(fs::TryLockError::Error(err)) => {
                return Err(err).with_context(|| format!("cannot lock {}", path.display()))
            }
        }
        // Ours now: say who holds it (a file from an older run may be wider than 0600).
        fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
        file.set_len(0)?;
        file.seek(SeekFrom::Start(0))?;
        writeln!(file, "{}", std::process::id())?;
        file.sync_all()?;
        Ok(Lock { _file: file })
    }

    /// The pid of the process holding the lock at `path`, `None` when nobody holds it.
    pub fn holder(path: &Path) -> Result<Option<u32>> {
        let mut file = match fs::OpenOptions::new().read(true).write(true).open(path) {
            Ok(file) => file,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(err) => {
                return Err(err).with_context(|| format!("cannot open the lock {}", path.display()))
            }
        };
        match file.try_lock() {
            Ok(()) => Ok(None),
            Err(fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                file.read_to_string(&mut holder)?;
                Ok(holder.trim().parse().ok())
            }
            Err(fs::TryLockError::Error(err)) => {
                Err(err).with_context(|| format!("cannot read the lock {}", path.display()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Lock;

    #[test]
    fn the_lock_is_exclusive_and_released_with_its_holder() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("migrate.lock");
        let held = Lock::acquire(&path).unwrap();
        // flock conflicts between open files, even in one process.
        let err = format!("{:#}", Lock::acquire(&path).err().unwrap());
        assert!(
            err.contains(&format!(
                "another `cargo xtask migrate` (pid {}) is running",
                std::process::id()
            )),
            "{err}"
        );
        drop(held);
        // A child another test forks in this moment shares the open file until it execs (the
        // descriptor is close-on-exec): give the lock that long to go.
        let again = (0..100).find_map(|_| {
            Lock::acquire(&path).ok().or_else(|| {
                std::thread::sleep(std::time::Duration::from_millis(20));
                None
            })
        });
        assert!(again.is_some(), "the lock is released with its holder");
        assert!(path.exists(), "the file may stay");
    }
}
