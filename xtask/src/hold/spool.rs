//! The spool of held requests: `dumps/held-events.jsonl`, one JSON line per request in arrival
//! order, mode 0600, appended and synced to disk before the client gets its answer. A line cut
//! short by a kill is a request nobody was answered for: reading skips it, and the next
//! `hold-events` cuts it off before appending.

use std::path::{Path, PathBuf};

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
    let lines = crate::jsonl::read(path)?;
    let mut out = Read {
        torn_tail: lines.torn_tail,
        whole_len: lines.whole_len,
        ..Read::default()
    };
    for (number, line) in lines.lines {
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
        out.held.push(held);
    }
    Ok(out)
}

/// The spool open for appending, after the last whole line.
pub struct Writer {
    file: crate::jsonl::Appender,
    next_seq: u64,
}

impl Writer {
    /// Opens (or makes, 0600) the spool; a cut-short last line is cut off first.
    pub fn open(path: &Path) -> Result<(Writer, Read)> {
        let found = read(path)?;
        let file = crate::jsonl::Appender::open(path, found.whole_len)?;
        let next_seq = found.held.last().map_or(1, |last| last.seq + 1);
        Ok((Writer { file, next_seq }, found))
    }

    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The spool's size in bytes.
    pub fn len(&self) -> u64 {
        self.file.len()
    }

    pub fn is_empty(&self) -> bool {
        self.file.is_empty()
    }

    /// Appends `held` (its seq set here) and syncs it to disk; returns its seq.
    pub fn append(&mut self, mut held: Held) -> Result<u64> {
        held.seq = self.next_seq;
        self.file.append(&held)?;
        self.next_seq += 1;
        Ok(held.seq)
    }
}

#[cfg(test)]
mod tests {
    use std::{fs, io::Write};

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
