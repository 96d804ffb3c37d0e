//! Append-only JSON-lines files synced line by line (the hold spool, the replay journal):
//! whole lines read back, a last line cut short by a kill skipped and cut off before the next
//! append, and a failed append cut back off, so the file is always whole lines.

use std::{
    fs,
    io::{BufRead, BufReader, Write},
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};

/// The whole lines of a file (none if it does not exist), each with its line number.
#[derive(Debug, Default)]
pub struct Lines {
    pub lines: Vec<(usize, Vec<u8>)>,
    /// Where the whole lines end.
    pub whole_len: u64,
    /// Bytes of a last line cut short (a kill while writing it).
    pub torn_tail: u64,
}

pub fn read(path: &Path) -> Result<Lines> {
    let file = match fs::File::open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Lines::default()),
        Err(err) => return Err(err).with_context(|| format!("cannot read {}", path.display())),
    };
    let mut reader = BufReader::new(file);
    let mut out = Lines::default();
    loop {
        let mut line = Vec::new();
        let n = reader
            .read_until(b'\n', &mut line)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        if line.last() != Some(&b'\n') {
            out.torn_tail = n as u64;
            break;
        }
        out.whole_len += n as u64;
        out.lines.push((out.lines.len() + 1, line));
    }
    Ok(out)
}

/// The file open for appending after its last whole line.
pub struct Appender {
    file: fs::File,
    path: PathBuf,
    len: u64,
    /// A failed write that could not be cut back off: nothing more is appended.
    broken: Option<String>,
}

impl Appender {
    /// Opens (or makes) the file, mode 0600, cut to `whole_len` (what `read` found whole).
    pub fn open(path: &Path, whole_len: u64) -> Result<Appender> {
        let file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("cannot open {} for appending", path.display()))?;
        file.set_permissions(fs::Permissions::from_mode(0o600))
            .with_context(|| format!("cannot make {} private (0600)", path.display()))?;
        file.set_len(whole_len)
            .and_then(|()| file.sync_all())
            .with_context(|| format!("cannot cut the torn last line of {}", path.display()))?;
        if let Some(dir) = path.parent() {
            fs::File::open(dir)
                .and_then(|dir| dir.sync_all())
                .with_context(|| format!("cannot sync {}", dir.display()))?;
        }
        Ok(Appender {
            file,
            path: path.to_path_buf(),
            len: whole_len,
            broken: None,
        })
    }

    /// The file's size in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends `value` as one line and syncs it to disk. A failed write is cut back off; if
    /// even that fails, every later append is refused.
    pub fn append(&mut self, value: &impl serde::Serialize) -> Result<()> {
        if let Some(broken) = &self.broken {
            bail!(
                "{} is damaged by an earlier failed write ({broken}): restart the command",
                self.path.display()
            );
        }
        let mut line = serde_json::to_vec(value)?;
        line.push(b'\n');
        if let Err(err) = self
            .file
            .write_all(&line)
            .and_then(|()| self.file.sync_data())
        {
            if let Err(cut) = self
                .file
                .set_len(self.len)
                .and_then(|()| self.file.sync_data())
            {
                self.broken = Some(format!("{err}; cutting it off failed too: {cut}"));
            }
            return Err(err).with_context(|| format!("cannot write {}", self.path.display()));
        }
        self.len += line.len() as u64;
        Ok(())
    }
}
