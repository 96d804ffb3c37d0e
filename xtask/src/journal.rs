//! The journal in `dumps/journal.json`: finished steps with the hashes of what they produced,
//! and the facts later steps and the report need. It is how a re-run resumes.

use std::{collections::BTreeMap, fs, path::Path};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::{pg::SequenceState, plan::StepId, util, verify::TableCheck};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StepRecord {
    pub name: String,
    pub finished_at: String,
    pub elapsed_secs: f64,
    /// Files the step produced (relative to the root) and their sha256.
    #[serde(default)]
    pub outputs: BTreeMap<String, String>,
    /// Each South migration the step's programs ran, in South's order, with its seconds (from
    /// the step's log: `guards::run_command`). Empty for a step that ran none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub migrations: Vec<crate::sentry::MigrationTime>,
    /// Run by `migrate --prepare`, before the cut-over, while Sentry 4 served: not downtime.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub prepared: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Backup {
    pub path: String,
    pub sha256: String,
    pub bytes: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Journal {
    pub sqlite: String,
    pub target: String,
    pub steps: Vec<StepRecord>,
    /// The engine the run was started with (`copy` or `loaddata`): a plain re-run resumes
    /// with it.
    #[serde(default)]
    pub engine: Option<String>,
    /// Whether the run fits values PostgreSQL rejects (`--fit-values`), recorded as the engine
    /// is: a plain re-run resumes with it (the load reads the fitted working copy).
    #[serde(default)]
    pub fit_values: Option<bool>,
    pub backup: Option<Backup>,
    /// The source's sha256 as this tool last left it: the backup's at `backup-sqlite`, renewed
    /// after each step that writes the source (Sentry 4's `upgrade` and `repair`). A run that
    /// finds another db at the source's path is refused (`execute::check_same_source`).
    #[serde(default)]
    pub source_sha256: Option<String>,
    /// This tool created the target database (so an interrupted run may recreate it).
    #[serde(default)]
    pub created_database: bool,
    /// Rows per table in SQLite when it was dumped.
    #[serde(default)]
    pub sqlite_counts: BTreeMap<String, u64>,
    /// Rows per table the dumps hold (the model map applied to the objects).
    #[serde(default)]
    pub dump_rows: BTreeMap<String, u64>,
    /// Objects in both dumps together.
    #[serde(default)]
    pub dump_objects: u64,
    /// SQLite tables no model maps to: not carried over.
    #[serde(default)]
    pub leftover_tables: BTreeMap<String, u64>,
    /// The zone the SQLite dates are read in (`TIME_ZONE`, from which file).
    #[serde(default)]
    pub time_zone: Option<String>,
    /// What the db's newest event and last write suggest about that zone.
    #[serde(default)]
    pub zone_hint: Option<String>,
    /// What `scan-values` found in the source (a few ids per finding).
    #[serde(default)]
    pub value_scan: Option<crate::values::Scan>,
    /// What `fit-values` changed in the working copy (every row).
    #[serde(default)]
    pub fit: Option<crate::values::Fit>,
    #[serde(default)]
    pub cleared_rows: BTreeMap<String, u64>,
    #[serde(default)]
    pub shim: Option<String>,
    #[serde(default)]
    pub loaddata_summary: Option<String>,
    /// What the copy engine wrote, per table.
    #[serde(default)]
    pub copied: Vec<crate::copy::TableCopy>,
    #[serde(default)]
    pub postgres_counts: BTreeMap<String, u64>,
    /// The highest event id (`sentry_message.id`) after the load: events past it were stored
    /// by Sentry 6 after the migration (a rollback would leave them behind).
    #[serde(default)]
    pub max_event_id: Option<i64>,
    #[serde(default)]
    pub sequences: Vec<SequenceState>,
    /// Duplicate groups (and their rows) before Sentry 6's upgrade, which may merge them.
    #[serde(default)]
    pub merge_candidates: crate::merge::MergeCandidates,
    /// The candidates that Sentry 6's upgrade merged away.
    #[serde(default)]
    pub merged_groups: Vec<i64>,
    /// Per project, the groups Sentry 6's stream hides by default (last seen more than 5 days
    /// before the cut-over), read after its upgrade.
    #[serde(default)]
    pub streams: Vec<crate::streams::Stream>,
    #[serde(default)]
    pub sentry6_counts: BTreeMap<String, u64>,
    #[serde(default)]
    pub checks: BTreeMap<String, Vec<TableCheck>>,
    /// Peak memory of this tool's own process (not Sentry's), KiB, over its last run.
    #[serde(default)]
    pub tool_peak_rss_kib: Option<u64>,
}

impl Journal {
    pub fn load(path: &Path) -> Result<Option<Journal>> {
        match fs::read_to_string(path) {
            Ok(text) => serde_json::from_str(&text).map(Some).with_context(|| {
                format!(
                    "{} is not a journal this tool can read: move it away to start over",
                    path.display()
                )
            }),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(err).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self)?;
        util::write_atomic(path, text.as_bytes(), 0o600)
    }

    pub fn is_done(&self, step: StepId) -> bool {
        self.record_of(step).is_some()
    }

    pub fn record_of(&self, step: StepId) -> Option<&StepRecord> {
        self.steps.iter().find(|it| it.name == step.name())
    }

    /// The downtime: every step, preflight on, needs Sentry 4 stopped (preflight checks it), so
    /// Sentry is down from the first step recorded to the last; the figure is the sum of the
    /// steps' times (of a resumed run too; the time between a failure and its resume is not in
    /// it). `None` before any step.
    pub fn downtime(&self) -> Option<(&str, f64)> {
        let mut down = self.steps.iter().filter(|it| !it.prepared).peekable();
        let first = down.peek()?.name.as_str();
        Some((first, down.map(|it| it.elapsed_secs).sum()))
    }

    /// The steps `migrate --prepare` ran while Sentry 4 served, and their seconds.
    pub fn prepared(&self) -> Option<(Vec<&str>, f64)> {
        let prepared: Vec<&StepRecord> = self.steps.iter().filter(|it| it.prepared).collect();
        (!prepared.is_empty()).then(|| {
            (
                prepared.iter().map(|it| it.name.as_str()).collect(),
                prepared.iter().map(|it| it.elapsed_secs).sum(),
            )
        })
    }

    pub fn record(&mut self, record: StepRecord) {
        self.steps.retain(|it| it.name != record.name);
        self.steps.push(record);
    }

    /// Forgets `names` (a `--from` redo).
    pub fn forget(&mut self, steps: &[StepId]) {
        self.steps
            .retain(|it| !steps.iter().any(|step| step.name() == it.name));
    }

    /// A journal belongs to one source and one target.
    pub fn check_same_migration(
        &self,
        sqlite: &str,
        target: &str,
        journal_path: &Path,
    ) -> Result<()> {
        if self.sqlite != sqlite || self.target != target {
            bail!(
                "{} records a migration of {} to {}, but this run is of {sqlite} to {target}: \
                 finish that one, or move dumps/ away to start a new one",
                journal_path.display(),
                self.sqlite,
                self.target
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_journal_from_before_migration_times_loads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.json");
        fs::write(
            &path,
            r#"{"sqlite": "var/sentry.db", "target": "t", "backup": null,
                "steps": [{"name": "sentry6-upgrade", "finished_at": "x", "elapsed_secs": 1.5}]}"#,
        )
        .unwrap();
        let journal = Journal::load(&path).unwrap().unwrap();
        assert!(journal.steps[0].migrations.is_empty());
        // A step without migrations is written as before.
        let text = serde_json::to_string(&journal).unwrap();
        assert!(!text.contains("migrations"), "{text}");
    }
}
