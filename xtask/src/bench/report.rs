//! The benchmark's results and how they are shown: JSON, a markdown table, an SVG figure.

use std::{fmt::Write as _, path::Path};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::util;

/// One benchmark run: every method at every size, on one machine, one after the other.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Results {
    pub started_at: String,
    pub machine: String,
    pub postgres: String,
    pub pgloader: Option<String>,
    pub time_zone: String,
    /// The db every size was scaled from.
    pub source: String,
    pub sizes: Vec<Size>,
    /// Whole migrations (`--whole-run`), Sentry 6's upgrade included.
    #[serde(default)]
    pub whole_runs: Vec<WholeRun>,
}

/// The whole `cargo xtask migrate` on one size.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WholeRun {
    pub events: u64,
    pub secs: f64,
    /// The largest process of the run (Sentry's, Django's or this tool's), KiB.
    pub peak_rss_kib: u64,
    /// This tool's own peak, KiB (the journal's figure).
    pub tool_peak_rss_kib: Option<u64>,
    /// Each step and its seconds, in order (the journal's figures).
    pub steps: Vec<(String, f64)>,
    /// The slowest South migrations of Sentry 6's upgrade (at most 5, slowest first; the
    /// journal's figures).
    #[serde(default)]
    pub sentry6_migrations: Vec<crate::sentry::MigrationTime>,
    /// Set when the run failed: what it said.
    pub failure: Option<String>,
    /// Sentry 6.4.4's own unmodified upgrade on a clone of the same loaded db, in the same run.
    #[serde(default)]
    pub sentry_own: Option<SentryOwn>,
}

/// Sentry's own upgrade beside the tool's Sentry 6 step.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SentryOwn {
    pub secs: f64,
    /// Both databases equal (`pg::sameness`).
    pub equal: bool,
    /// What the comparison found, in one line.
    pub found: String,
}

/// One scaled db and what each method did with it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Size {
    pub label: String,
    pub events: u64,
    /// Rows of the model tables (what every method must load).
    pub rows: u64,
    pub sqlite_bytes: u64,
    pub runs: Vec<Run>,
}

/// One method on one size.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Run {
    pub method: String,
    /// Wall time of all its parts; `None` when it did not run (see `note`).
    pub secs: Option<f64>,
    /// The largest process of any part, KiB.
    pub peak_rss_kib: Option<u64>,
    pub parts: Vec<Part>,
    /// Rows found in PostgreSQL afterwards (model tables).
    pub rows_loaded: Option<u64>,
    /// Tables whose rows differ from SQLite's, and failures.
    pub problems: Vec<String>,
    /// Why it did not run, or what it said.
    pub note: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Part {
    pub name: String,
    pub secs: f64,
    pub peak_rss_kib: u64,
}

pub const METHODS: [&str; 7] = [
    "copy",
    "copy1",
    "loaddata",
    "pgloader",
    "pgloader-drop",
    "floor",
    "floor2",
];

pub fn title(method: &str) -> &'static str {
    match method {
        "copy" => "copy engine (`--engine copy`, two sessions)",
        "copy1" => "copy engine in one session (as before two)",
        "loaddata" => "dumpdata + loaddata (`--engine loaddata`)",
        "pgloader" => "pgloader data-only (prefetch rows = 10000)",
        "pgloader-drop" => "pgloader data-only with `drop indexes` (its bulk-load advice)",
        "floor" => "floor: sqlite3 CSV export + psql COPY (keys checked at commit)",
        "floor2" => "floor2: COPY from ready CSV files (export not counted), plain indexes and foreign keys dropped and rebuilt, two sessions",
        _ => "?",
    }
}

impl Size {
    pub fn run(&self, method: &str) -> Option<&Run> {
        self.runs.iter().find(|run| run.method == method)
    }

    /// `method`'s wall time over `other`'s, when both loaded every row.
    pub fn ratio(&self, method: &str, other: &str) -> Option<f64> {
        let time = |name: &str| {
            self.run(name)
                .filter(|run| run.problems.is_empty())
                .and_then(|run| run.secs)
        };
        Some(time(method)? / time(other)?)
    }
}

impl Run {
    pub fn loaded_everything(&self) -> bool {
        self.secs.is_some() && self.problems.is_empty()
    }
}

fn mb(kib: u64) -> String {
    util::human_bytes(kib * 1024)
}

fn seconds(secs: f64) -> String {
    if secs < 10.0 {
        format!("{secs:.2} s")
    } else {
        format!("{secs:.1} s")
    }
}

/// The results as markdown: one row per size and method, then the ratios the targets name.
pub fn markdown(results: &Results) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Benchmark of {}: {}; PostgreSQL {}{}; dates read in {}. Source: {}.\n",
        results.started_at,
        results.machine,
        results.postgres,
        results
            .pgloader
            .as_ref()
            .map(|it| format!("; pgloader {it}"))
            .unwrap_or_default(),
        results.time_zone,
        results.source
    );
    out.push_str("| events | SQLite | method | wall time | rows/s | peak RSS | rows in PostgreSQL | ÷ floor | ÷ floor2 | ÷ pgloader |\n");
    out.push_str("|---:|---:|---|---|---:|---:|---|---:|---:|---:|\n");
    for size in &results.sizes {
        for method in METHODS {
            let Some(run) = size.run(method) else {
                continue;
            };
            let wall = match (run.secs, &run.note) {
                (Some(secs), _) if run.parts.len() > 1 => format!(
                    "{} ({})",
                    seconds(secs),
                    run.parts
                        .iter()
                        .map(|part| format!("{} {}", part.name, seconds(part.secs)))
                        .collect::<Vec<_>>()
                        .join(" + ")
                ),
                (Some(secs), _) => seconds(secs),
                (None, Some(note)) => format!("did not run: {note}"),
                (None, None) => "did not run".into(),
            };
            let rate = run
                .secs
                .filter(|_| run.loaded_everything())
                .map(|secs| format!("{:.0}", size.rows as f64 / secs))
                .unwrap_or_default();
            let rows = match (run.rows_loaded, run.problems.is_empty()) {
                (Some(rows), true) => format!("all {rows}"),
                (_, false) => format!("**{}**", run.problems.join("; ")),
                (None, true) => String::new(),
            };
            let ratio = |other: &str| {
                size.ratio(method, other)
                    .map(|it| format!("{it:.2}"))
                    .unwrap_or_default()
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                size.events,
                util::human_bytes(size.sqlite_bytes),
                title(method),
                wall,
                rate,
                run.peak_rss_kib.map(mb).unwrap_or_default(),
                rows,
                ratio("floor"),
                ratio("floor2"),
                ratio("pgloader"),
            );
        }
    }
    for whole in &results.whole_runs {
        let _ = writeln!(
            out,
            "\nThe whole `cargo xtask migrate` at {} events (copy engine, every step through Sentry 6's upgrade): {}{}, peak RSS {} (largest process), this tool {}.\n",
            whole.events,
            util::human_duration(std::time::Duration::from_secs_f64(whole.secs)),
            whole
                .failure
                .as_ref()
                .map(|it| format!(" **FAILED: {it}**"))
                .unwrap_or_default(),
            mb(whole.peak_rss_kib),
            whole.tool_peak_rss_kib.map(mb).unwrap_or_else(|| "?".into())
        );
        out.push_str("| step | time |\n|---|---:|\n");
        for (step, secs) in &whole.steps {
            let _ = writeln!(out, "| {step} | {} |", seconds(*secs));
        }
        if !whole.sentry6_migrations.is_empty() {
            let upgrade = whole
                .steps
                .iter()
                .find(|(step, _)| step == "sentry6-upgrade")
                .map(|(_, secs)| *secs);
            out.push_str("\nThe slowest South migrations of `sentry6-upgrade`:\n\n| migration | time | share of the step |\n|---|---:|---:|\n");
            for migration in &whole.sentry6_migrations {
                let share = upgrade
                    .filter(|secs| *secs > 0.0)
                    .map(|secs| format!("{:.0}%", 100.0 * migration.secs / secs))
                    .unwrap_or_default();
                let _ = writeln!(
                    out,
                    "| {} | {} | {share} |",
                    migration.label(),
                    seconds(migration.secs)
                );
            }
        }
        if let Some(own) = &whole.sentry_own {
            let ours = whole
                .steps
                .iter()
                .find(|(step, _)| step == "sentry6-upgrade")
                .map(|(_, secs)| *secs);
            let _ = writeln!(
                out,
                "\nSentry 6.4.4's own unmodified `upgrade`, in the same run on a clone of the same loaded db: {}; the tool's `sentry6-upgrade` {}{}. The two databases: {}{}",
                seconds(own.secs),
                ours.map(seconds).unwrap_or_else(|| "?".into()),
                ours.filter(|_| own.secs > 0.0)
                    .map(|secs| format!(" ({:.3}x)", secs / own.secs))
                    .unwrap_or_default(),
                own.found,
                if own.equal { "" } else { " **NOT EQUAL**" }
            );
        }
    }
    for size in &results.sizes {
        if let Some(run) = size.run("loaddata").filter(|run| run.loaded_everything()) {
            if let Some(copy) = size.run("copy").and_then(|run| run.secs) {
                let _ = writeln!(
                    out,
                    "\nAt {} events the copy engine is {:.0}× faster than dumpdata + loaddata.",
                    size.events,
                    run.secs.unwrap_or_default() / copy
                );
            }
        }
    }
    out
}

/// Time and peak memory against events, log scales, a line per method, side by side.
pub fn svg(results: &Results, path: &Path) -> Result<()> {
    use plotters::prelude::*;

    let series = |method: &str, value: &dyn Fn(&Run) -> Option<f64>| -> Vec<(f64, f64)> {
        results
            .sizes
            .iter()
            .filter_map(|size| {
                let run = size.run(method).filter(|run| run.loaded_everything())?;
                Some((size.events as f64, value(run)?))
            })
            .collect()
    };
    let time = |run: &Run| run.secs;
    let memory = |run: &Run| run.peak_rss_kib.map(|kib| kib as f64 / 1024.0);
    let colors = [
        RGBColor(0xd6, 0x27, 0x28),
        RGBColor(0x1f, 0x77, 0xb4),
        RGBColor(0x2c, 0xa0, 0x2c),
        RGBColor(0x9e, 0x4c, 0xc8),
        RGBColor(0x7f, 0x7f, 0x7f),
        RGBColor(0xff, 0x7f, 0x0e),
    ];
    let backend = SVGBackend::new(path, (1200, 500));
    let root = backend.into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let (left, right) = root.split_horizontally(600);
    type Value<'a> = &'a dyn Fn(&Run) -> Option<f64>;
    let panels: [(&DrawingArea<_, _>, &str, &str, Value); 2] = [
        (&left, "load time", "seconds (log)", &time),
        (
            &right,
            "peak memory (largest process)",
            "MiB (log)",
            &memory,
        ),
    ];
    for (area, caption, unit, value) in panels {
        let points: Vec<(f64, f64)> = METHODS
            .iter()
            .flat_map(|method| series(method, value))
            .collect();
        let (xmin, xmax) = bounds(points.iter().map(|p| p.0));
        let (ymin, ymax) = bounds(points.iter().map(|p| p.1));
        let mut chart = ChartBuilder::on(area)
            .caption(caption, ("sans-serif", 22))
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(
                (xmin / 1.5..xmax * 1.5).log_scale(),
                (ymin / 2.0..ymax * 2.0).log_scale(),
            )
            .map_err(plot_error)?;
        chart
            .configure_mesh()
            .light_line_style(WHITE)
            .x_labels(6)
            .y_labels(8)
            .x_label_formatter(&|x| short_number(*x))
            .y_label_formatter(&|y| short_number(*y))
            .x_desc("events (log)")
            .y_desc(unit)
            .draw()
            .map_err(plot_error)?;
        for (method, color) in METHODS.iter().zip(colors) {
            let line = series(method, value);
            if line.is_empty() {
                continue;
            }
            chart
                .draw_series(LineSeries::new(line.clone(), color.stroke_width(2)))
                .map_err(plot_error)?
                .label(*method)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
            chart
                .draw_series(line.into_iter().map(|p| Circle::new(p, 4, color.filled())))
                .map_err(plot_error)?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .border_style(BLACK)
            .background_style(WHITE.mix(0.8))
            .draw()
            .map_err(plot_error)?;
    }
    root.present().map_err(plot_error)?;
    Ok(())
}

/// 1500 → "1.5k", 2000000 → "2M", 0.5 → "0.5": axis labels that stay short.
fn short_number(value: f64) -> String {
    let (scaled, suffix) = match value {
        v if v >= 1e6 => (v / 1e6, "M"),
        v if v >= 1e3 => (v / 1e3, "k"),
        v => (v, ""),
    };
    let text = format!("{scaled:.1}");
    let text = text.trim_end_matches(".0");
    format!("{text}{suffix}")
}

fn bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (min, max) = values.fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if min > max {
        (1.0, 10.0)
    } else {
        (min.max(1e-3), max.max(min.max(1e-3) * 10.0))
    }
}

fn plot_error(err: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("cannot draw the figure: {err}")
}

/// Writes `bench.json`, `bench.md` and `bench.svg` into `dir`.
pub fn write_all(results: &Results, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    util::write_atomic(
        &dir.join("bench.json"),
        serde_json::to_string_pretty(results)?.as_bytes(),
        0o644,
    )?;
    util::write_atomic(&dir.join("bench.md"), markdown(results).as_bytes(), 0o644)?;
    svg(results, &dir.join("bench.svg"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(method: &str, secs: f64, rss_mib: u64, rows: u64) -> Run {
        Run {
            method: method.into(),
            secs: Some(secs),
            peak_rss_kib: Some(rss_mib * 1024),
            parts: vec![],
            rows_loaded: Some(rows),
            problems: vec![],
            note: None,
        }
    }

    fn results() -> Results {
        let small = Size {
            label: "10k".into(),
            events: 10_000,
            rows: 72_800,
            sqlite_bytes: 18 << 20,
            runs: vec![
                run("copy", 1.0, 20, 72_800),
                Run {
                    parts: vec![
                        Part {
                            name: "dumpdata".into(),
                            secs: 8.0,
                            peak_rss_kib: 700 << 10,
                        },
                        Part {
                            name: "loaddata".into(),
                            secs: 52.0,
                            peak_rss_kib: 200 << 10,
                        },
                    ],
                    ..run("loaddata", 60.0, 700, 72_800)
                },
                Run {
                    problems: vec!["sentry_message: 0 of 1300 rows".into()],
                    ..run("pgloader", 2.0, 400, 71_500)
                },
                run("floor", 1.25, 12, 72_800),
            ],
        };
        let big = Size {
            label: "1M".into(),
            events: 1_000_000,
            rows: 7_280_000,
            sqlite_bytes: 1800 << 20,
            runs: vec![
                run("copy", 60.0, 25, 7_280_000),
                Run {
                    method: "loaddata".into(),
                    note: Some("it would need ~66 GiB".into()),
                    ..Run::default()
                },
                run("pgloader", 120.0, 1600, 7_280_000),
                run("floor", 100.0, 12, 7_280_000),
            ],
        };
        Results {
            started_at: "2026-11-26 12:00:00 UTC".into(),
            machine: "2 cores, 23 GiB".into(),
            postgres: "15.18".into(),
            pgloader: Some("3.6.7".into()),
            time_zone: "America/Chicago".into(),
            source: "a rehearsal's db".into(),
            sizes: vec![small, big],
            whole_runs: vec![WholeRun {
                events: 10_000,
                secs: 95.5,
                peak_rss_kib: 180 << 10,
                tool_peak_rss_kib: Some(20 << 10),
                steps: vec![("pg-copy".into(), 1.0), ("sentry6-upgrade".into(), 40.31)],
                sentry6_migrations: vec![crate::sentry::MigrationTime {
                    app: "sentry".into(),
                    name: "0083_migrate_dupe_groups".into(),
                    at_secs: 3.0,
                    secs: 36.2,
                }],
                failure: None,
                sentry_own: Some(SentryOwn {
                    secs: 161.2,
                    equal: true,
                    found: "equal: schema".into(),
                }),
            }],
        }
    }

    #[test]
    fn ratios_count_only_methods_that_loaded_every_row() {
        let results = results();
        let small = &results.sizes[0];
        assert_eq!(small.ratio("copy", "floor"), Some(0.8));
        assert_eq!(small.ratio("copy", "pgloader"), None, "pgloader lost rows");
        assert_eq!(results.sizes[1].ratio("copy", "pgloader"), Some(0.5));
        assert_eq!(results.sizes[1].ratio("loaddata", "floor"), None);
        let text = markdown(&results);
        assert!(
            text.contains("| 10000 | 18.0 MiB | copy engine (`--engine copy`, two sessions) | 1.00 s | 72800 | 20.0 MiB | all 72800 | 0.80 |  |"),
            "{text}"
        );
        assert!(
            text.contains("60.0 s (dumpdata 8.00 s + loaddata 52.0 s)"),
            "{text}"
        );
        assert!(
            text.contains("**sentry_message: 0 of 1300 rows**"),
            "{text}"
        );
        assert!(
            text.contains("did not run: it would need ~66 GiB"),
            "{text}"
        );
        assert!(
            text.contains(
                "At 10000 events the copy engine is 60× faster than dumpdata + loaddata."
            ),
            "{text}"
        );
        assert!(
            text.contains("The slowest South migrations of `sentry6-upgrade`:\n\n| migration | time | share of the step |\n|---|---:|---:|\n| sentry:0083_migrate_dupe_groups | 36.2 s | 90% |\n"),
            "{text}"
        );
        assert!(
            text.contains("Sentry 6.4.4's own unmodified `upgrade`, in the same run on a clone of the same loaded db: 161.2 s; the tool's `sentry6-upgrade` 40.3 s (0.250x). The two databases: equal: schema\n"),
            "{text}"
        );
    }

    #[test]
    fn axis_labels_stay_short() {
        assert_eq!(short_number(1_000_000.0), "1M");
        assert_eq!(short_number(1_500.0), "1.5k");
        assert_eq!(short_number(100_000.0), "100k");
        assert_eq!(short_number(0.5), "0.5");
        assert_eq!(short_number(20.0), "20");
    }

    #[test]
    fn the_figure_has_a_line_per_method_that_ran() {
        let dir = tempfile::tempdir().unwrap();
        write_all(&results(), dir.path()).unwrap();
        let svg = std::fs::read_to_string(dir.path().join("bench.svg")).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..100.min(svg.len())]);
        for label in [
            "load time",
            "peak memory",
            "copy",
            "floor",
            "pgloader",
            "loaddata",
        ] {
            assert!(svg.contains(label), "{label} missing");
        }
        // copy and floor at two sizes, loaddata at one, pgloader at one (it lost rows at 10k):
        // a circle per point, in both panels.
        assert_eq!(svg.matches("<circle").count(), 2 * (2 + 2 + 1 + 1), "{svg}");
        let json: Results =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("bench.json")).unwrap())
                .unwrap();
        assert_eq!(json.sizes.len(), 2);
    }
}
