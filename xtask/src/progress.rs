//! A long step's progress: rows done, rows/s and an ETA on a terminal (indicatif), a line a
//! minute in a log.

use std::{
    io::IsTerminal,
    time::{Duration, Instant},
};

/// Shows rows done, rows/s and an ETA per table on a terminal; a line a minute otherwise.
pub struct Progress {
    bar: Option<indicatif::ProgressBar>,
    started: Instant,
    reported_minutes: u64,
    label: String,
}

impl Progress {
    pub fn new(table: &str, rows: u64) -> Progress {
        let bar = std::io::stdout().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(rows);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "      {msg:<32} {bar:30} {pos:>9}/{len:9} rows {per_sec:>12} eta {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar.set_message(table.to_string());
            bar
        });
        Progress {
            bar,
            started: Instant::now(),
            reported_minutes: 0,
            label: table.to_string(),
        }
    }

    pub fn tick(&mut self, done: u64, total: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(done);
            return;
        }
        let minutes = self.started.elapsed().as_secs() / 60;
        if minutes > self.reported_minutes {
            self.reported_minutes = minutes;
            let rate = done as f64 / self.started.elapsed().as_secs_f64().max(0.001);
            let eta = Duration::from_secs_f64(total.saturating_sub(done) as f64 / rate.max(1.0));
            println!(
                "      {}: {done}/{total} rows, {rate:.0} rows/s, eta {}",
                self.label,
                crate::util::human_duration(eta)
            );
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
