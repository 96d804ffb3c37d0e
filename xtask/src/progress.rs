//! A long step's progress: rows done, rows/s and an ETA on a terminal (indicatif), a line a
//! minute in a log.

use std::{
    io::IsTerminal,
    time::{Duration, Instant},
};

/// The bars of tables copied at the same time, one line each (on a terminal).
pub struct Bars(indicatif::MultiProgress);

impl Bars {
    pub fn new() -> Bars {
        Bars(indicatif::MultiProgress::new())
    }
}

impl Default for Bars {
    fn default() -> Bars {
        Bars::new()
    }
}

/// Shows rows done, rows/s and an ETA per table on a terminal; a line a minute otherwise.
pub struct Progress {
    bar: Option<indicatif::ProgressBar>,
    started: Instant,
    reported_minutes: std::sync::atomic::AtomicU64,
    label: String,
}

impl Progress {
    pub fn new(table: &str, rows: u64) -> Progress {
        Progress::make(None, table, rows)
    }

    /// A bar among `bars`; its length is set by [`Progress::start`].
    pub fn within(bars: &Bars, table: &str) -> Progress {
        Progress::make(Some(bars), table, 0)
    }

    fn make(bars: Option<&Bars>, table: &str, rows: u64) -> Progress {
        let bar = std::io::stdout().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(rows);
            let bar = match bars {
                Some(bars) => bars.0.add(bar),
                None => bar,
            };
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
            reported_minutes: 0.into(),
            label: table.to_string(),
        }
    }

    /// The table's rows are known: (re)starts the count.
    pub fn start(&self, rows: u64) {
        if let Some(bar) = &self.bar {
            bar.set_length(rows);
            bar.set_position(0);
        }
    }

    /// A line above the bars (or just a line).
    pub fn println(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => println!("{line}"),
        }
    }

    pub fn tick(&self, done: u64, total: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(done);
            return;
        }
        let minutes = self.started.elapsed().as_secs() / 60;
        if minutes
            > self
                .reported_minutes
                .load(std::sync::atomic::Ordering::Relaxed)
        {
            self.reported_minutes
                .store(minutes, std::sync::atomic::Ordering::Relaxed);
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
