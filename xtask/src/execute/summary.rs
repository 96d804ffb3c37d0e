//! The summary `migrate` prints at the end: the checks' tallies, the time per phase and the
//! downtime, the slowest migrations, what was not carried over, the backup, the streams, and
//! the next command.

use crate::{
    config::Config,
    journal::Journal,
    plan::{Phase, Step, StepId},
    sentry, verify,
};

pub(super) fn print_summary(config: &Config, steps: &[Step], journal: &Journal) {
    println!("\nSummary ({} -> {})", journal.sqlite, journal.target);
    println!(
        "  {:<22} {:>7} {:>7} {:>9} {:>10} {:>8}",
        "check", "tables", "equal", "intended", "different", ""
    );
    for (name, checks) in &journal.checks {
        let tally = verify::tally(checks);
        println!(
            "  {:<22} {:>7} {:>7} {:>9} {:>10}",
            name,
            tally.tables,
            tally.equal,
            tally.intended + tally.not_carried_over,
            tally.differs
        );
    }
    for phase in [Phase::Sqlite, Phase::Postgres, Phase::Sentry6] {
        let secs: f64 = steps
            .iter()
            .filter(|s| s.phase == phase)
            .filter_map(|s| journal.record_of(s.id))
            .map(|r| r.elapsed_secs)
            .sum();
        println!("  {:<40} {:>8.1}s", phase.title(), secs);
    }
    if let Some((first, secs)) = journal.downtime() {
        println!(
            "  {:<40} {:>8.1}s",
            format!("Sentry down (`{first}` to the end)"),
            secs
        );
    }
    if let Some((names, secs)) = journal.prepared() {
        println!(
            "  {:<40} {:>8.1}s   ({})",
            "prepared while Sentry 4 served",
            secs,
            names.join(", ")
        );
    }
    if let Some(record) = journal.record_of(StepId::Sentry6Upgrade) {
        let slowest: Vec<String> = sentry::slowest(&record.migrations, 3)
            .iter()
            .map(|it| format!("{} {:.1}s", it.label(), it.secs))
            .collect();
        if !slowest.is_empty() {
            println!(
                "  slowest migrations of {}: {}",
                StepId::Sentry6Upgrade,
                slowest.join(", ")
            );
        }
    }
    if !journal.leftover_tables.is_empty() {
        let tables: Vec<String> = journal
            .leftover_tables
            .iter()
            .map(|(table, rows)| format!("{table} ({rows} rows)"))
            .collect();
        println!(
            "  not carried over (SQLite-only tables): {}",
            tables.join(", ")
        );
    }
    if let Some(backup) = &journal.backup {
        // The journal is a file a user can edit: never slice what it says.
        let short: String = backup.sha256.chars().take(16).collect();
        println!("  backup: {} (sha256 {short}…)", backup.path);
    }
    for note in crate::streams::notes(&journal.streams) {
        println!("  stream: {note}");
    }
    println!(
        "\nreport: {}",
        config.display_path(&config.dumps_dir().join("report.md"))
    );
    println!("next:   bin/sentry --config=settings/settings.py start --noupgrade   (Sentry 6 on PostgreSQL)");
}
