//! The spool of held requests: `dumps/held-events.jsonl`, one JSON line per request in arrival
//! order, mode 0600, appended and synced to disk before the client gets its answer. A line cut
//! short by a kill is a request nobody was answered for: reading skips it, and the next
//! `hold-events` cuts it off before appending.

use std::{
    fs,
    io::{BufRead, BufReader, Write},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// One held request.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Held {
    /// 1, 2, 3… in arrival order.
    pub seq: u64,
    /// When it arrived, UTC (RFC 3339, microseconds).
    pub received: String,
    pub remote_addr: String,
    pub method: String,
    pub path: String,
    pub query: String,
    /// The headers Sentry reads (`store::KEPT_HEADERS`), names lower-case.
    pub headers: Vec<(String, String)>,
    /// The body as it came, base64.
    pub body: String,
    pub event_id: String,
    pub project: i64,
    /// What was added for the replay (`store::Event::added`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub added: Vec<String>,
    /// The event as JSON, base64, when anything was added: the replay sends this instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_json: Option<String>,
}

impl Held {
    pub fn body_bytes(&self) -> Result<Vec<u8>> {
        b64(&self.body)
    }
    pub fn replay_json_bytes(&self) -> Result<Option<Vec<u8>>> {
        self.replay_json.as_deref().map(b64).transpose()
    }
}

fn b64(text: &str) -> Result<Vec<u8>> {
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .context("a spool line's base64 is damaged")
}

pub fn encode(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub fn path(dumps: &Path) -> PathBuf {
    dumps.join("held-events.jsonl")
}

/// What reading a spool found.
#[derive(Debug, Default)]
pub struct Read {
    pub held: Vec<Held>,
    /// Bytes of a last line cut short (a kill while writing it; its client got no answer).
    pub torn_tail: u64,
    /// Where the whole lines end.
    pub whole_len: u64,
}

/// Every whole line of the spool (none if there is no spool); a line in the middle that does
/// not read is an error (the file was damaged), a cut-short last line is not.
pub fn read(path: &Path) -> Result<Read> {
    let file = match fs::File::open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Read::default()),
        Err(err) => return Err(err).with_context(|| format!("cannot read {}", path.display())),
    };
    let mut reader = BufReader::new(file);
    let mut out = Read::default();
    let mut line = Vec::new();
    let mut number = 0;
    loop {
        line.clear();
        let n = reader
            .read_until(b'\n', &mut line)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        number += 1;
        if line.last() != Some(&b'\n') {
            out.torn_tail = n as u64;
            break;
        }
        let held: Held = serde_json::from_slice(&line).with_context(|| {
            format!(
                "{} line {number} is damaged: the spool was changed by something else than \
                 hold-events; keep a copy and remove the line to go on",
                path.display()
            )
        })?;
        let expected = out.held.last().map_or(1, |last| last.seq + 1);
        if held.seq != expected {
            bail!(
                "{} line {number} has seq {} where {expected} was expected: the spool was changed \
                 by something else than hold-events",
                path.display(),
                held.seq
            );
        }
        out.whole_len += n as u64;
        out.held.push(held);
    }
    Ok(out)
}

/// The spool open for appending, after the last whole line.
pub struct Writer {
    file: fs::File,
    next_seq: u64,
    len: u64,
    /// A failed write that could not be cut back off: nothing more is appended.
    broken: Option<String>,
}

impl Writer {
    /// Opens (or makes, 0600) the spool; a cut-short last line is cut off first.
    pub fn open(path: &Path) -> Result<(Writer, Read)> {
        let found = read(path)?;
        let file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("cannot open {} for appending", path.display()))?;
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(fs::Permissions::from_mode(0o600))
            .with_context(|| format!("cannot make {} private (0600)", path.display()))?;
        if found.torn_tail > 0 {
            file.set_len(found.whole_len)
                .with_context(|| format!("cannot cut the torn last line of {}", path.display()))?;
        }
        file.sync_all()?;
        if let Some(dir) = path.parent() {
            fs::File::open(dir)?.sync_all()?;
        }
        Ok((
            Writer {
                file,
                next_seq: found.held.last().map_or(1, |last| last.seq + 1),
                len: found.whole_len,
                broken: None,
            },
            found,
        ))
    }

    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The spool's size in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends `held` (its seq set here) and syncs it to disk; returns its seq. A failed
    /// write is cut back off, so the spool stays whole lines; if even that fails, every later
    /// append is refused.
    pub fn append(&mut self, mut held: Held) -> Result<u64> {
        if let Some(broken) = &self.broken {
            bail!(
                "the spool is damaged by an earlier failed write ({broken}): restart hold-events"
            );
        }
        held.seq = self.next_seq;
        let mut line = serde_json::to_vec(&held)?;
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
            return Err(err).context("cannot write the spool");
        }
        self.len += line.len() as u64;
        self.next_seq += 1;
        Ok(held.seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(n: u64) -> Held {
        Held {
            seq: 0,
            received: "t".into(),
            remote_addr: "a".into(),
            method: "POST".into(),
            path: "/api/store/".into(),
            query: String::new(),
            headers: vec![],
            body: encode(format!("{{\"n\": {n}}}").as_bytes()),
            event_id: format!("e{n}"),
            project: 1,
            added: vec![],
            replay_json: None,
        }
    }

    #[test]
    fn a_torn_last_line_is_skipped_and_cut_before_the_next_append() {
        let dir = tempfile::tempdir().unwrap();
        let path = path(dir.path());
        let (mut writer, _) = Writer::open(&path).unwrap();
        writer.append(held(1)).unwrap();
        writer.append(held(2)).unwrap();
        drop(writer);
        let mut file = fs::OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(b"{\"seq\":3,\"rece").unwrap();
        let found = read(&path).unwrap();
        assert_eq!(found.held.len(), 2);
        assert_eq!(found.torn_tail, 14);
        let (mut writer, _) = Writer::open(&path).unwrap();
        assert_eq!(writer.append(held(3)).unwrap(), 3);
        let found = read(&path).unwrap();
        assert_eq!(
            found
                .held
                .iter()
                .map(|h| h.event_id.as_str())
                .collect::<Vec<_>>(),
            ["e1", "e2", "e3"]
        );
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn a_damaged_line_in_the_middle_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = path(dir.path());
        fs::write(&path, "{\"seq\":1}\nnot json\n").unwrap();
        let err = format!("{:#}", read(&path).unwrap_err());
        assert!(err.contains("line 1 is damaged"), "{err}");
    }
}
