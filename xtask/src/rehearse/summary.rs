//! The rehearsal's summary, printed at its end: the checks per stage, the rows compared, the
//! proofs' facts, the fitted values, and each phase's time.

use std::{fs, path::Path, time::Duration};

use anyhow::{Context, Result};

use super::{
    migrate::{fit_summary, read_report},
    Phases,
};
use crate::{journal::Journal, util, verify};

pub(super) fn print_summary(
    root: &Path,
    phases: &Phases,
    facts: &serde_json::Value,
    total: Duration,
) -> Result<()> {
    let report_path = root.join("dumps/report.json");
    // The report is the journal with a header: read it back as one.
    let report: Journal = serde_json::from_str(&fs::read_to_string(&report_path)?)
        .with_context(|| format!("{} is not a report of this tool", report_path.display()))?;
    println!("\nRehearsal summary");
    for (name, checks) in &report.checks {
        let tally = verify::tally(checks);
        println!(
            "  {name:<22} {:>3} tables: {:>3} equal, {:>3} intended/not carried over, {} different",
            tally.tables,
            tally.equal,
            tally.intended + tally.not_carried_over,
            tally.differs
        );
    }
    let rows: u64 = report.postgres_counts.values().sum();
    println!("  rows compared after the load: {rows}; proof: {facts}");
    println!("  {}", fit_summary(&read_report(root)?["fit"]));
    for (name, elapsed) in &phases.done {
        println!("  {name:<40} {:>8}", util::human_duration(*elapsed));
    }
    println!("  {:<40} {:>8}", "total", util::human_duration(total));
    println!("  servers: PostgreSQL and both Sentry web servers stopped; no process left in the scratch folder");
    Ok(())
}
