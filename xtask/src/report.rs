//! `dumps/report.md` and `dumps/report.json`, rebuilt from the journal after every step.

use std::{collections::BTreeSet, fmt::Write, path::Path};

use anyhow::Result;
use serde::Serialize;

use crate::{
    journal::Journal,
    util,
    verify::{self, cell, Verdict},
};

#[derive(Serialize)]
struct ReportJson<'a> {
    tool: &'static str,
    tool_version: &'static str,
    generated_at: String,
    #[serde(flatten)]
    journal: &'a Journal,
}

pub fn write(journal: &Journal, dumps_dir: &Path) -> Result<()> {
    let json = serde_json::to_string_pretty(&ReportJson {
        tool: "sentry-migrate",
        tool_version: env!("CARGO_PKG_VERSION"),
        generated_at: util::utc_timestamp(util::unix_now()),
        journal,
    })?;
    util::write_atomic(&dumps_dir.join("report.json"), json.as_bytes(), 0o600)?;
    util::write_atomic(
        &dumps_dir.join("report.md"),
        markdown(journal).as_bytes(),
        0o600,
    )
}

pub fn markdown(journal: &Journal) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# sentry-migrate report\n");
    let _ = writeln!(out, "- source: `{}`", journal.sqlite);
    let _ = writeln!(out, "- target: `{}`", journal.target);
    if let Some(backup) = &journal.backup {
        let _ = writeln!(
            out,
            "- backup: `{}` ({} bytes, sha256 `{}`)",
            backup.path, backup.bytes, backup.sha256
        );
    }
    if let Some(zone) = &journal.time_zone {
        let _ = writeln!(out, "- time zone of the SQLite dates: {zone}");
    }
    if let Some(hint) = &journal.zone_hint {
        let _ = writeln!(out, "- zone hint: {hint}");
    }
    if let Some(shim) = &journal.shim {
        let _ = writeln!(out, "- abstime shim: {shim}");
    }
    if let Some(kib) = journal.tool_peak_rss_kib {
        let _ = writeln!(
            out,
            "- this tool's peak memory: {kib} KiB (Sentry's processes not included)"
        );
    }
    if let Some((first, secs)) = journal.downtime() {
        let _ = writeln!(
            out,
            "- downtime: Sentry down from step `{first}` to the end: {secs:.1} s (every step needs Sentry 4 stopped; the sum of the step times)"
        );
    }
    if let Some((names, secs)) = journal.prepared() {
        let _ = writeln!(
            out,
            "- prepared beforehand while Sentry 4 served (`migrate --prepare`, not downtime): {secs:.1} s ({})",
            names.join(", ")
        );
    }
    if let Some(summary) = &journal.loaddata_summary {
        let _ = writeln!(out, "- loaddata: {summary}");
    }
    let _ = writeln!(
        out,
        "\n## Steps\n\n| step | finished | time |\n|---|---|---|"
    );
    for step in &journal.steps {
        let _ = writeln!(
            out,
            "| {} | {} | {:.1}s |",
            step.name, step.finished_at, step.elapsed_secs
        );
    }
    for step in journal.steps.iter().filter(|it| !it.migrations.is_empty()) {
        if !out.contains("\n## Slowest migrations\n") {
            let _ = writeln!(
                out,
                "\n## Slowest migrations\n\nEach South migration from its ` > app:migration` line in the step's log to South's next line \
                 (or the program's exit); every one is in report.json (`steps[].migrations`) and at the end of the step's log."
            );
        }
        let total: f64 = step.migrations.iter().map(|it| it.secs).sum();
        let _ = writeln!(
            out,
            "\n`{}`: {} migration(s), {total:.1}s of the step's {:.1}s\n\n| migration | time | share of the step |\n|---|---:|---:|",
            step.name,
            step.migrations.len(),
            step.elapsed_secs
        );
        for migration in crate::sentry::slowest(&step.migrations, 5) {
            let share = if step.elapsed_secs > 0.0 {
                format!("{:.0}%", 100.0 * migration.secs / step.elapsed_secs)
            } else {
                "-".into()
            };
            let _ = writeln!(
                out,
                "| {} | {:.2}s | {share} |",
                migration.label(),
                migration.secs
            );
        }
    }

    let tables: BTreeSet<&String> = journal
        .sqlite_counts
        .keys()
        .chain(journal.dump_rows.keys())
        .chain(journal.postgres_counts.keys())
        .chain(journal.sentry6_counts.keys())
        .collect();
    if !tables.is_empty() {
        let _ = writeln!(out, "\n## Rows per table\n\n| table | SQLite | dumps | PostgreSQL (Sentry 4) | PostgreSQL (Sentry 6) |\n|---|---|---|---|---|");
        for table in tables {
            let _ = writeln!(
                out,
                "| {table} | {} | {} | {} | {} |",
                cell(journal.sqlite_counts.get(table).copied()),
                cell(journal.dump_rows.get(table).copied()),
                cell(journal.postgres_counts.get(table).copied()),
                cell(journal.sentry6_counts.get(table).copied()),
            );
        }
    }
    for (phase, checks) in &journal.checks {
        let equal = verify::tally(checks).equal;
        let _ = writeln!(
            out,
            "\n## Check `{phase}`: {equal} of {} equal\n",
            checks.len()
        );
        let notable: Vec<_> = checks
            .iter()
            .filter(|c| c.verdict != Verdict::Equal)
            .collect();
        if notable.is_empty() {
            let _ = writeln!(out, "Every table equal.");
            continue;
        }
        let _ = writeln!(
            out,
            "| table | expected | actual | verdict | why |\n|---|---|---|---|---|"
        );
        for c in notable {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} |",
                c.table,
                cell(c.expected),
                cell(c.actual),
                c.verdict,
                c.note
            );
        }
    }
    if let Some(scan) = &journal.value_scan {
        let _ = writeln!(
            out,
            "\n## Value scan\n\n{} in the source: {}.",
            crate::values::rate(scan),
            if scan.findings.is_empty() {
                "nothing PostgreSQL rejects".to_string()
            } else {
                format!("{} finding(s)", scan.findings.len())
            }
        );
        for line in crate::values::summary(scan).lines() {
            let _ = writeln!(out, "- {line}");
        }
    }
    if let Some(fit) = &journal.fit {
        let _ = writeln!(
            out,
            "\n## Fitted values\n\n{} value(s) changed in the working copy `dumps/sentry-fitted.db` (the source is as it was), {} row(s) merged into their twins.",
            fit.changes.len(),
            fit.merged.values().sum::<u64>()
        );
        const SHOWN: usize = 200;
        if !fit.changes.is_empty() {
            let _ = writeln!(
                out,
                "\n| table | id | column | what was done |\n|---|---|---|---|"
            );
            for c in fit.changes.iter().take(SHOWN) {
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} |",
                    c.table, c.id, c.column, c.detail
                );
            }
            if fit.changes.len() > SHOWN {
                let _ = writeln!(
                    out,
                    "\n… and {} more: every change is in report.json (`fit.changes`).",
                    fit.changes.len() - SHOWN
                );
            }
        }
        if !fit.merges.is_empty() {
            let _ = writeln!(
                out,
                "\n| table | kept id | merged ids | how |\n|---|---|---|---|"
            );
            for m in fit.merges.iter().take(SHOWN) {
                let removed: Vec<String> = m.removed.iter().map(|it| it.to_string()).collect();
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} |",
                    m.table,
                    m.kept,
                    removed.join(", "),
                    m.detail
                );
            }
        }
    }
    let hidden = crate::streams::notes(&journal.streams);
    if !hidden.is_empty() {
        let _ = writeln!(
            out,
            "\n## Sentry 6's event stream\n\nSentry 6 lists only groups seen in the last {} days unless the stream's URL gives a date:\n",
            crate::streams::DEFAULT_WINDOW_DAYS
        );
        for note in hidden {
            let _ = writeln!(out, "- {note}");
        }
    }
    let skipped: Vec<_> = journal
        .copied
        .iter()
        .filter(|c| !c.skipped_columns.is_empty())
        .collect();
    if !skipped.is_empty() {
        let _ = writeln!(
            out,
            "\n## SQLite-only columns not carried over\n\nThe copy engine skipped these columns: the target has none of that name (no model field: loaddata drops them too)."
        );
        for c in skipped {
            let _ = writeln!(out, "- {}: {}", c.table, c.skipped_columns.join(", "));
        }
    }
    let early: Vec<String> = journal
        .copied
        .iter()
        .flat_map(|c| {
            c.integer_columns
                .iter()
                .map(move |col| format!("{}.{col}", c.table))
        })
        .collect();
    let kept: Vec<String> = journal
        .copied
        .iter()
        .filter_map(|c| {
            c.kept_double_precision
                .as_ref()
                .map(|why| format!("{}: {why}", c.table))
        })
        .collect();
    if !early.is_empty() || !kept.is_empty() {
        let _ = writeln!(
            out,
            "\n## Sentry 6's integer columns\n\nSentry 6's migration 0105 makes these columns integer. The copy loaded them as integer where every value was whole, so 0105 rewrites no table for them."
        );
        if !early.is_empty() {
            let _ = writeln!(out, "- loaded as integer: {}", early.join(", "));
        }
        for why in kept {
            let _ = writeln!(
                out,
                "- kept double precision (0105 rewrites the table): {why}"
            );
        }
    }
    if !journal.sequences.is_empty() {
        let behind: Vec<_> = journal.sequences.iter().filter(|s| s.is_behind()).collect();
        let _ = writeln!(
            out,
            "\n## Sequences\n\n{} id sequences checked, {} behind max(id).",
            journal.sequences.len(),
            behind.len()
        );
        for s in behind {
            let _ = writeln!(
                out,
                "- {}: next {} <= max(id) {}",
                s.table, s.next_value, s.max_id
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{journal::StepRecord, sentry::MigrationTime};

    #[test]
    fn the_slowest_migrations_of_each_step_that_ran_any() {
        let migration = |name: &str, secs: f64| MigrationTime {
            app: "sentry".into(),
            name: name.into(),
            at_secs: 0.0,
            secs,
        };
        let step = |name: &str, elapsed_secs: f64, migrations: Vec<MigrationTime>| StepRecord {
            name: name.into(),
            elapsed_secs,
            migrations,
            ..StepRecord::default()
        };
        let journal = Journal {
            steps: vec![
                step("pg-load", 3.0, vec![]),
                step(
                    "sentry6-upgrade",
                    10.0,
                    (1..=7)
                        .map(|n| migration(&format!("00{n}"), n as f64 * 0.2))
                        .collect(),
                ),
            ],
            ..Journal::default()
        };
        let text = markdown(&journal);
        assert_eq!(text.matches("## Slowest migrations").count(), 1, "{text}");
        assert!(
            text.contains("`sentry6-upgrade`: 7 migration(s), 5.6s of the step's 10.0s"),
            "{text}"
        );
        let rows: Vec<&str> = text
            .lines()
            .filter(|it| it.starts_with("| sentry:"))
            .collect();
        assert_eq!(
            rows,
            [
                "| sentry:007 | 1.40s | 14% |",
                "| sentry:006 | 1.20s | 12% |",
                "| sentry:005 | 1.00s | 10% |",
                "| sentry:004 | 0.80s | 8% |",
                "| sentry:003 | 0.60s | 6% |",
            ]
        );
        assert!(!text.contains("`pg-load`:"), "{text}");
        assert!(
            text.contains("- downtime: Sentry down from step `pg-load` to the end: 13.0 s"),
            "{text}"
        );
        assert!(!markdown(&Journal::default()).contains("downtime"));
    }

    #[test]
    fn columns_the_copy_skipped_are_in_the_report() {
        let journal = Journal {
            copied: vec![
                crate::copy::TableCopy {
                    table: "sentry_project".into(),
                    rows: 2,
                    skipped_columns: vec!["owner_old".into(), "legacy".into()],
                    integer_columns: Vec::new(),
                    kept_double_precision: None,
                    secs: 0.1,
                },
                crate::copy::TableCopy {
                    table: "sentry_team".into(),
                    rows: 1,
                    skipped_columns: Vec::new(),
                    integer_columns: Vec::new(),
                    kept_double_precision: None,
                    secs: 0.1,
                },
                crate::copy::TableCopy {
                    table: "sentry_message".into(),
                    rows: 3,
                    skipped_columns: Vec::new(),
                    integer_columns: Vec::new(),
                    kept_double_precision: Some(crate::copy::NotWhole {
                        column: "time_spent".into(),
                        rowid: 7,
                        value: "1.5".into(),
                    }),
                    secs: 0.1,
                },
                crate::copy::TableCopy {
                    table: "sentry_groupedmessage".into(),
                    rows: 3,
                    skipped_columns: Vec::new(),
                    integer_columns: vec!["time_spent_total".into()],
                    kept_double_precision: None,
                    secs: 0.1,
                },
            ],
            ..Journal::default()
        };
        let text = markdown(&journal);
        assert!(
            text.contains("## SQLite-only columns not carried over"),
            "{text}"
        );
        assert!(
            text.contains("- sentry_project: owner_old, legacy\n"),
            "{text}"
        );
        assert!(!text.contains("- sentry_team"), "{text}");
        assert!(
            text.contains("- loaded as integer: sentry_groupedmessage.time_spent_total\n"),
            "{text}"
        );
        assert!(
            text.contains("- kept double precision (0105 rewrites the table): sentry_message: time_spent of row 7 is 1.5, not a whole number"),
            "{text}"
        );
    }
}
