//! The forecast a dress rehearsal (`rehearse --db`) leaves for the real run: every step's time on
//! the copy and the estimate drawn from them, the disk the dumps and the backup need, the peak
//! memory, what the value scan found, the per-project proof, and a go/no-go. Pure: built from
//! figures the rehearsal gathered, rendered as Markdown (written) and as text (printed).

use std::fmt::Write as _;

use crate::{
    util::human_bytes,
    values::{Fit, Scan},
};

/// One project, before (the SQLite copy) and after (PostgreSQL, Sentry 6's upgrade done).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProjectRow {
    pub id: i64,
    pub slug: String,
    pub events_before: u64,
    pub events_after: u64,
    pub groups_before: u64,
    pub groups_after: u64,
    /// Groups of this project Sentry 6's upgrade merged away (migration 0083).
    pub merged_groups: Vec<i64>,
    /// What the Sentry 6 proof saw for this project, in words.
    pub proof: String,
}

#[derive(Debug, Clone, Default)]
pub struct Forecast {
    pub source: String,
    pub source_bytes: u64,
    pub copy_secs: f64,
    /// `migrate`'s arguments, as the real run takes them.
    pub migrate_args: Vec<String>,
    /// `migrate`'s steps on the copy (dumps/journal.json): name and seconds.
    pub steps: Vec<(String, f64)>,
    /// Wall time of the `migrate` child (includes what the steps do not: startup, the report).
    pub migrate_wall_secs: f64,
    /// `migrate` ran to its end (otherwise the times and sizes stop at the failed step).
    pub migrate_done: bool,
    /// Why `migrate` or the proof failed, if it did.
    pub failures: Vec<String>,
    pub dumps_bytes: u64,
    pub fitted_bytes: u64,
    pub postgres_bytes: Option<u64>,
    /// Free space where the real run writes the backup (beside the db) and the dumps.
    pub free_beside_db: Option<u64>,
    pub free_in_dumps: Option<u64>,
    /// The db's folder and `dumps/` are on one file system: the backup, the dumps and the
    /// fitted copy all come out of the same free space.
    pub same_filesystem: bool,
    /// What the rehearsal's scratch folder (its copy of the db, dumps, PostgreSQL) took on the
    /// file system beside the db and on `dumps/`'s (0 where it is elsewhere): it is gone when
    /// the real run starts, so it counts as free.
    pub scratch_beside_db: u64,
    pub scratch_in_dumps: u64,
    pub tool_peak_kib: Option<u64>,
    pub children_peak_kib: Option<u64>,
    pub mem_available_kib: Option<u64>,
    pub fit_values: bool,
    pub scan: Option<Scan>,
    pub fit: Option<Fit>,
    /// Per comparison: (name, tables, equal, intended or not carried over, different).
    pub checks: Vec<(String, usize, usize, usize, usize)>,
    pub projects: Vec<ProjectRow>,
    pub login: Option<String>,
    pub time_zone: Option<String>,
}

/// The disk the real run needs beyond what is there: the backup beside the db, the dumps, the
/// fitted working copy (with --fit-values).
pub fn disk_needed(forecast: &Forecast) -> u64 {
    forecast.source_bytes + forecast.dumps_bytes + forecast.fitted_bytes
}

impl Forecast {
    /// Free space beside the db and in `dumps/` once the rehearsal's scratch folder is gone.
    pub fn free_for_the_real_run(&self) -> (Option<u64>, Option<u64>) {
        (
            self.free_beside_db
                .map(|free| free + self.scratch_beside_db),
            self.free_in_dumps.map(|free| free + self.scratch_in_dumps),
        )
    }

    /// Each file system the real run writes on that lacks room (+20% margin): one where the db
    /// and `dumps/` share one, else the backup beside the db and the dumps and fitted copy in
    /// `dumps/` each against their own.
    fn disk_shortfalls(&self) -> Vec<String> {
        let (beside, in_dumps) = self.free_for_the_real_run();
        let with_margin = |bytes: u64| bytes + bytes / 5;
        let mut wants: Vec<(&str, u64, Option<u64>)> = Vec::new();
        if self.same_filesystem {
            let free = match (beside, in_dumps) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            wants.push(("the real run", disk_needed(self), free));
        } else {
            wants.push(("the backup beside the db", self.source_bytes, beside));
            wants.push((
                "the dumps and working copy in dumps/",
                self.dumps_bytes + self.fitted_bytes,
                in_dumps,
            ));
        }
        wants
            .into_iter()
            .filter_map(|(what, needed, free)| {
                let free = free?;
                (free < with_margin(needed)).then(|| {
                    format!(
                        "disk: {what} needs about {} (+20% margin), {} is free",
                        human_bytes(needed),
                        human_bytes(free)
                    )
                })
            })
            .collect()
    }

    pub fn total_step_secs(&self) -> f64 {
        self.steps.iter().map(|(_, secs)| secs).sum()
    }

    /// Why it is a no-go (empty: go).
    pub fn no_go(&self) -> Vec<String> {
        let mut reasons = self.failures.clone();
        for (name, _, _, _, differs) in &self.checks {
            if *differs > 0 {
                reasons.push(format!(
                    "comparison `{name}`: {differs} tables differ (see dumps/report.md)"
                ));
            }
        }
        if let Some(scan) = &self.scan {
            let unfittable: Vec<String> = scan
                .findings
                .iter()
                .filter(|f| !f.kind.fittable())
                .map(|f| format!("{}.{} ({} rows {})", f.table, f.column, f.count(), f.kind))
                .collect();
            if !unfittable.is_empty() {
                reasons.push(format!(
                    "values --fit-values does not fit: {}; fix those rows by hand",
                    unfittable.join(", ")
                ));
            }
        }
        reasons.extend(self.disk_shortfalls());
        if let (Some(peak), Some(available)) = (self.children_peak_kib, self.mem_available_kib) {
            if peak > available {
                reasons.push(format!(
                    "memory: `migrate`'s programs (Sentry; with --engine loaddata, Django's dump/load) peaked at {} here, {} is available now",
                    human_bytes(peak * 1024),
                    human_bytes(available * 1024)
                ));
            }
        }
        reasons
    }

    pub fn verdict(&self) -> String {
        let reasons = self.no_go();
        if !reasons.is_empty() {
            return format!("NO-GO: {}", reasons.join("; "));
        }
        let fitted = self.fit.as_ref().map_or(0, |fit| fit.changes.len());
        if fitted > 0 {
            format!(
                "GO with --fit-values: {fitted} values will be fitted (every one listed in dumps/report.md); run `cargo xtask migrate{}`",
                shown_args(&self.migrate_args)
            )
        } else {
            format!(
                "GO: run `cargo xtask migrate{}`",
                shown_args(&self.migrate_args)
            )
        }
    }

    /// The forecast as Markdown (the report file; printed as it is, it reads as text too).
    pub fn render(&self) -> String {
        let mut out = String::new();
        let secs = |s: f64| crate::util::human_duration(std::time::Duration::from_secs_f64(s));
        let _ = writeln!(out, "# Rehearsal forecast\n");
        let _ = writeln!(out, "**{}**\n", self.verdict());
        let _ = writeln!(
            out,
            "Rehearsed on a copy of `{}` ({}), made with SQLite's online backup in {}; the source was only read (sha256 and mtime checked after).",
            self.source,
            human_bytes(self.source_bytes),
            secs(self.copy_secs)
        );
        if let Some(zone) = &self.time_zone {
            let _ = writeln!(out, "Dates read as {zone}.");
        }
        let _ = writeln!(out, "\n## Time\n");
        let _ = writeln!(out, "| step | on the copy |\n|---|---:|");
        for (name, s) in &self.steps {
            let _ = writeln!(out, "| {name} | {} |", secs(*s));
        }
        let total = self.total_step_secs();
        if !self.migrate_done {
            let _ = writeln!(
                out,
                "| **steps up to the failure** | **{}** |\n\n`migrate` did not finish on the copy: \
                 no estimate of the real run, and the sizes below stop at the failed step.",
                secs(total)
            );
        } else {
            let _ = writeln!(
                out,
                "| **all steps** | **{}** (`migrate` wall time {}) |",
                secs(total),
                secs(self.migrate_wall_secs)
            );
            let _ = writeln!(
            out,
            "\nEstimate for the real run on this machine: **about {}** of downtime (Sentry stopped → \
             `migrate` done), plus Sentry 6's start. Basis: the same db on the same machine runs the \
             same steps on the same rows, so the same times; the dump and load steps grow about \
             linearly with the events the db gains before the cut-over. The rehearsal's PostgreSQL \
             runs with fsync off on this machine's disk: a target with fsync on, or across a network, \
             makes the load (`pg-copy`, or `pg-load` with loaddata) slower; `buildout-tag1`/`buildout-tag2` ran against the rehearsal's \
             warm egg cache.",
            secs(self.migrate_wall_secs.max(total))
        );
            let prepared: f64 = self
                .steps
                .iter()
                .filter(|(name, _)| crate::plan::PREPARED.iter().any(|it| it.name() == name))
                .map(|(_, s)| *s)
                .sum();
            if prepared > 0.0 {
                let _ = writeln!(
                    out,
                    "\nWith `cargo xtask migrate --prepare` run first, while Sentry 4 still serves: about **{}** \
                     of downtime; {} of steps ({}) move before the cut-over.",
                    secs((self.migrate_wall_secs.max(total) - prepared).max(0.0)),
                    secs(prepared),
                    crate::plan::PREPARED
                        .iter()
                        .map(|it| it.name())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
        }
        let _ = writeln!(out, "\n## Disk\n");
        let _ = writeln!(
            out,
            "- the backup beside the db: {}\n- the dumps (`dumps/*.json`): {}",
            human_bytes(self.source_bytes),
            human_bytes(self.dumps_bytes)
        );
        if self.fitted_bytes > 0 {
            let _ = writeln!(
                out,
                "- the fitted working copy (`dumps/sentry-fitted.db`): {}",
                human_bytes(self.fitted_bytes)
            );
        }
        let _ = writeln!(
            out,
            "- **needed on this machine: {}**",
            human_bytes(disk_needed(self))
        );
        let (free_beside_db, free_in_dumps) = self.free_for_the_real_run();
        if let Some(free) = free_beside_db {
            let _ = writeln!(
                out,
                "- free beside the db (the rehearsal's scratch folder counted as free): {}",
                human_bytes(free)
            );
        }
        if let Some(free) = free_in_dumps {
            if !self.same_filesystem {
                let _ = writeln!(out, "- free in dumps/: {}", human_bytes(free));
            }
        }
        if let Some(bytes) = self.postgres_bytes {
            let _ = writeln!(
                out,
                "- on the PostgreSQL server, the migrated database: {}",
                human_bytes(bytes)
            );
        }
        let _ = writeln!(out, "\n## Memory\n");
        let kib = |k: Option<u64>| k.map_or("not measured".to_string(), |k| human_bytes(k * 1024));
        let _ = writeln!(
            out,
            "- peak of `migrate`'s children (Sentry's steps; with --engine loaddata, Django's dumpdata/loaddata; the largest process): {}",
            kib(self.children_peak_kib)
        );
        let _ = writeln!(
            out,
            "- peak of `migrate` itself: {}",
            kib(self.tool_peak_kib)
        );
        let _ = writeln!(
            out,
            "- available on this machine now: {}",
            kib(self.mem_available_kib)
        );
        let _ = writeln!(out, "\n## Values PostgreSQL rejects\n");
        match &self.scan {
            None => {
                let _ = writeln!(out, "The scan did not run.");
            }
            Some(scan) if scan.findings.is_empty() => {
                let _ = writeln!(
                    out,
                    "None: {} rows of {} tables scanned in {}.",
                    scan.rows,
                    scan.tables,
                    secs(scan.secs)
                );
            }
            Some(scan) => {
                let _ = writeln!(
                    out,
                    "{} rows of {} tables scanned in {}:\n",
                    scan.rows,
                    scan.tables,
                    secs(scan.secs)
                );
                for f in &scan.findings {
                    let limit = match (f.longest, f.limit) {
                        (Some(longest), Some(limit)) => {
                            format!(", longest {longest} characters, limit {limit}")
                        }
                        _ => String::new(),
                    };
                    let _ = writeln!(
                        out,
                        "- {}.{}: {} values {}{limit}{}",
                        f.table,
                        f.column,
                        f.count(),
                        f.kind,
                        if f.kind.fittable() {
                            ""
                        } else {
                            " (not fitted by --fit-values)"
                        }
                    );
                }
                match &self.fit {
                    Some(fit) => {
                        let merged: u64 = fit.merged.values().sum();
                        let _ = writeln!(
                            out,
                            "\nWith --fit-values: {} values fitted, {merged} rows merged (every one in dumps/report.md).",
                            fit.changes.len()
                        );
                    }
                    None if !self.fit_values => {
                        let _ = writeln!(
                            out,
                            "\n`migrate` stops at `scan-values` on these: rehearse again with --fit-values to see the fit."
                        );
                    }
                    None => {}
                }
            }
        }
        if !self.checks.is_empty() {
            let _ = writeln!(out, "\n## Comparisons\n");
            for (name, tables, equal, intended, differs) in &self.checks {
                let _ = writeln!(
                    out,
                    "- {name}: {tables} tables, {equal} equal, {intended} intended or not carried over, {differs} different"
                );
            }
        }
        if !self.projects.is_empty() {
            let _ = writeln!(out, "\n## Projects (SQLite before, Sentry 6 after)\n");
            let _ = writeln!(out, "| project | events before | after | groups before | after | merged by Sentry 6 | Sentry 6 proof |\n|---|---:|---:|---:|---:|---|---|");
            for p in &self.projects {
                let merged = if p.merged_groups.is_empty() {
                    "-".to_string()
                } else {
                    p.merged_groups
                        .iter()
                        .map(|id| format!("#{id}"))
                        .collect::<Vec<_>>()
                        .join(" ")
                };
                let _ = writeln!(
                    out,
                    "| {} (id {}) | {} | {} | {} | {} | {merged} | {} |",
                    p.slug,
                    p.id,
                    p.events_before,
                    p.events_after,
                    p.groups_before,
                    p.groups_after,
                    p.proof
                );
            }
        }
        if let Some(login) = &self.login {
            let _ = writeln!(out, "\nLogin: {login}.");
        }
        if !self.failures.is_empty() {
            let _ = writeln!(out, "\n## What failed\n");
            for failure in &self.failures {
                let _ = writeln!(out, "- {failure}");
            }
        }
        out
    }
}

/// `args` as they follow `migrate` on a command line (with a leading space).
pub(super) fn shown_args(args: &[String]) -> String {
    args.iter().map(|arg| format!(" {arg}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::values::{Change, Finding, Kind};

    fn forecast() -> Forecast {
        Forecast {
            source: "/srv/sentry/var/sentry.db".into(),
            source_bytes: 10 << 20,
            steps: vec![("preflight".into(), 0.5), ("pg-load".into(), 12.0)],
            migrate_wall_secs: 13.0,
            migrate_done: true,
            dumps_bytes: 30 << 20,
            free_beside_db: Some(1 << 30),
            free_in_dumps: Some(1 << 30),
            same_filesystem: true,
            checks: vec![("postgres-vs-dumps".into(), 40, 40, 0, 0)],
            projects: vec![ProjectRow {
                id: 1,
                slug: "web".into(),
                events_before: 10,
                events_after: 10,
                groups_before: 4,
                groups_after: 3,
                merged_groups: vec![7],
                proof: "ok".into(),
            }],
            ..Forecast::default()
        }
    }

    #[test]
    fn a_clean_rehearsal_is_a_go_with_times_disk_and_merges() {
        let f = forecast();
        assert!(f.no_go().is_empty(), "{:?}", f.no_go());
        assert_eq!(f.verdict(), "GO: run `cargo xtask migrate`");
        assert_eq!(disk_needed(&f), 40 << 20);
        let text = f.render();
        assert!(text.contains("| pg-load | 12.0s |"), "{text}");
        assert!(text.contains("needed on this machine: 40.0 MiB"), "{text}");
        assert!(text.contains("about 13.0s** of downtime"), "{text}");
        assert!(!text.contains("--prepare"), "nothing to prepare: {text}");
        assert!(
            text.contains("| web (id 1) | 10 | 10 | 4 | 3 | #7 | ok |"),
            "{text}"
        );
        let mut prepared = forecast();
        prepared.steps.push(("pg-upgrade".into(), 4.0));
        prepared.migrate_wall_secs = 17.0;
        let text = prepared.render();
        assert!(
            text.contains("run first, while Sentry 4 still serves: about **13.0s** of downtime; 4.0s of steps"),
            "{text}"
        );
    }

    #[test]
    fn findings_fits_and_shortfalls_are_said() {
        let mut f = forecast();
        f.migrate_args = vec!["--fit-values".into()];
        f.fit_values = true;
        f.scan = Some(Scan {
            tables: 3,
            rows: 100,
            secs: 0.1,
            findings: vec![Finding {
                table: "sentry_message".into(),
                column: "site".into(),
                kind: Kind::TooLong,
                limit: Some(128),
                longest: Some(300),
                // The journal keeps 20 ids as examples; the count is the number of values.
                ids: (1..=20).collect(),
                count: 500,
            }],
        });
        f.fit = Some(Fit {
            changes: vec![Change {
                table: "sentry_message".into(),
                id: 1,
                column: "site".into(),
                kind: Kind::TooLong,
                detail: String::new(),
            }],
            ..Fit::default()
        });
        assert!(
            f.verdict().starts_with("GO with --fit-values: 1 values"),
            "{}",
            f.verdict()
        );
        assert!(f.render().contains("sentry_message.site: 500 values longer than the column allows, longest 300 characters, limit 128"));
        f.free_beside_db = Some(10 << 20);
        f.children_peak_kib = Some(4 << 20);
        f.mem_available_kib = Some(1 << 20);
        f.checks[0].4 = 2;
        let reasons = f.no_go();
        assert_eq!(reasons.len(), 3, "{reasons:?}");
        assert!(f
            .verdict()
            .starts_with("NO-GO: comparison `postgres-vs-dumps`: 2 tables differ"));
        assert!(
            reasons[1].starts_with("disk: the real run needs about 40.0 MiB"),
            "{reasons:?}"
        );
        assert!(reasons[2].starts_with("memory:"), "{reasons:?}");
        f.migrate_done = false;
        let text = f.render();
        assert!(text.contains("no estimate of the real run"), "{text}");
        assert!(!text.contains("of downtime"), "{text}");
    }

    #[test]
    fn disk_is_checked_per_file_system_without_the_rehearsals_own_copy() {
        let mut f = forecast();
        // 40 MiB needed: 10 MiB backup beside the db, 30 MiB of dumps.
        f.free_beside_db = Some(20 << 20);
        f.free_in_dumps = Some(40 << 20);
        // One file system: 20 MiB free is short.
        assert_eq!(
            f.no_go(),
            ["disk: the real run needs about 40.0 MiB (+20% margin), 20.0 MiB is free"]
        );
        // Two: the backup fits beside the db, the dumps in dumps/.
        f.same_filesystem = false;
        assert!(f.no_go().is_empty(), "{:?}", f.no_go());
        f.free_in_dumps = Some(30 << 20);
        assert_eq!(
            f.no_go(),
            ["disk: the dumps and working copy in dumps/ needs about 30.0 MiB (+20% margin), 30.0 MiB is free"]
        );
        // The scratch folder (on dumps/' file system) is gone when the real run starts.
        f.scratch_in_dumps = 50 << 20;
        assert!(f.no_go().is_empty(), "{:?}", f.no_go());
        f.same_filesystem = true;
        f.free_beside_db = Some(10 << 20);
        f.free_in_dumps = Some(10 << 20);
        f.scratch_beside_db = 50 << 20;
        assert!(f.no_go().is_empty(), "{:?}", f.no_go());
        assert!(f.render().contains("60.0 MiB"), "{}", f.render());
    }
}
