//! `dumps/replay-journal.jsonl`: one line before each send (`sending`) and one with its outcome
//! after, appended and synced; a line cut short by a kill is skipped. What a re-run reads to
//! resume: done requests are never sent again, a request sent but without an outcome is looked
//! up in Sentry 6 first.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

pub const REPLAYED: &str = "replayed";
pub const REFUSED: &str = "refused";
pub const ALREADY_STORED: &str = "already-stored";

/// What became of one held request.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Outcome {
    /// `replayed` (Sentry 6 answered 200), `refused` (its answer is kept), `already-stored`
    /// (sent before, its answer lost, and found in Sentry 6's database).
    pub kind: String,
    /// Sentry 6's HTTP status (0: none).
    pub status: u16,
    /// Sentry 6's answer (the start of its body, or its X-Sentry-Error).
    pub answer: String,
}

impl Outcome {
    pub fn replayed(status: u16, answer: String) -> Outcome {
        Outcome {
            kind: REPLAYED.into(),
            status,
            answer,
        }
    }
    pub fn refused(status: u16, answer: String) -> Outcome {
        Outcome {
            kind: REFUSED.into(),
            status,
            answer,
        }
    }
    pub fn already_stored() -> Outcome {
        Outcome {
            kind: ALREADY_STORED.into(),
            status: 0,
            answer: "found in Sentry 6's sentry_message".into(),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Line {
    seq: u64,
    /// The held request's event id: a journal of another spool is refused.
    #[serde(default)]
    event_id: String,
    at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    outcome: Option<Outcome>,
}

pub fn path(dumps: &Path) -> PathBuf {
    dumps.join("replay-journal.jsonl")
}

pub struct Journal {
    file: crate::jsonl::Appender,
    /// seq → event id, as recorded.
    ids: BTreeMap<u64, String>,
    sending: BTreeSet<u64>,
    outcomes: BTreeMap<u64, Outcome>,
}

impl Journal {
    pub fn open(path: &Path) -> Result<Journal> {
        let mut sending = BTreeSet::new();
        let mut outcomes = BTreeMap::new();
        let mut ids = BTreeMap::new();
        let lines = crate::jsonl::read(path)?;
        for (number, line) in &lines.lines {
            let entry: Line = serde_json::from_slice(line).with_context(|| {
                format!(
                    "{} line {number} is damaged: keep a copy; remove it to replay from the \
                     start, which may send events twice",
                    path.display()
                )
            })?;
            ids.insert(entry.seq, entry.event_id.clone());
            match entry.outcome {
                Some(outcome) => {
                    outcomes.insert(entry.seq, outcome);
                }
                None => {
                    sending.insert(entry.seq);
                }
            }
        }
        // A line cut short by a kill goes, so that the next one starts on a line of its own.
        let file = crate::jsonl::Appender::open(path, lines.whole_len)?;
        Ok(Journal {
            file,
            ids,
            sending,
            outcomes,
        })
    }

    pub fn outcome(&self, seq: u64) -> Option<&Outcome> {
        self.outcomes.get(&seq)
    }

    pub fn outcomes(&self) -> &BTreeMap<u64, Outcome> {
        &self.outcomes
    }

    /// Sent at least once without an outcome recorded.
    pub fn was_sending(&self, seq: u64) -> bool {
        self.sending.contains(&seq) && !self.outcomes.contains_key(&seq)
    }

    fn append(&mut self, line: &Line) -> Result<()> {
        self.file.append(line)
    }

    /// The journal must be this spool's: the same event id at every seq it records.
    pub fn check_spool(&self, held: &[crate::hold::spool::Held], path: &Path) -> Result<()> {
        let spool: BTreeMap<u64, &str> =
            held.iter().map(|h| (h.seq, h.event_id.as_str())).collect();
        for (seq, id) in &self.ids {
            if spool.get(seq) != Some(&id.as_str()) {
                anyhow::bail!(
                    "{} is the journal of another spool (#{seq} was event {id}, the spool has {}): \
                     move it aside if that spool was replayed, then run replay-events again",
                    path.display(),
                    spool.get(seq).unwrap_or(&"nothing")
                );
            }
        }
        Ok(())
    }

    /// Recorded before each send.
    pub fn sending(&mut self, seq: u64, event_id: &str) -> Result<()> {
        self.sending.insert(seq);
        self.ids.insert(seq, event_id.to_string());
        self.append(&Line {
            seq,
            event_id: event_id.to_string(),
            at: crate::util::utc_timestamp(crate::util::unix_now()),
            outcome: None,
        })
    }

    pub fn record(&mut self, seq: u64, event_id: &str, outcome: Outcome) -> Result<()> {
        self.append(&Line {
            seq,
            event_id: event_id.to_string(),
            at: crate::util::utc_timestamp(crate::util::unix_now()),
            outcome: Some(outcome.clone()),
        })?;
        self.ids.insert(seq, event_id.to_string());
        self.outcomes.insert(seq, outcome);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::{fs, io::Write};

    use super::*;

    #[test]
    fn a_resumed_journal_knows_what_is_done_and_what_is_in_doubt() {
        let dir = tempfile::tempdir().unwrap();
        let path = path(dir.path());
        let mut journal = Journal::open(&path).unwrap();
        journal.sending(1, "e1").unwrap();
        journal
            .record(1, "e1", Outcome::replayed(200, "{}".into()))
            .unwrap();
        journal.sending(2, "e2").unwrap();
        drop(journal);
        let mut file = fs::OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(b"{\"seq\":3,\"at").unwrap();
        let mut journal = Journal::open(&path).unwrap();
        assert_eq!(journal.outcome(1).unwrap().kind, REPLAYED);
        assert!(!journal.was_sending(1));
        assert!(journal.was_sending(2));
        assert!(!journal.was_sending(3));
        journal.record(2, "e2", Outcome::already_stored()).unwrap();
        let journal = Journal::open(&path).unwrap();
        assert_eq!(journal.outcomes().len(), 2);
        // Another spool at the same seqs: refused, never taken as done.
        let held = |seq: u64, id: &str| crate::hold::spool::Held {
            seq,
            received: String::new(),
            remote_addr: String::new(),
            method: "POST".into(),
            path: "/api/store/".into(),
            query: String::new(),
            headers: vec![],
            body: String::new(),
            event_id: id.into(),
            project: 1,
            added: vec![],
            replay_json: None,
        };
        journal
            .check_spool(&[held(1, "e1"), held(2, "e2")], &path)
            .unwrap();
        let err = journal
            .check_spool(&[held(1, "other"), held(2, "e2")], &path)
            .unwrap_err();
        assert!(
            format!("{err:#}").contains("the journal of another spool"),
            "{err:#}"
        );
    }
}
