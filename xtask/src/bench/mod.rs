//! `cargo xtask bench`: the copy engine, loaddata, pgloader and the COPY floor, side by side on
//! the same scaled data and the same PostgreSQL, one after the other.

pub mod measure;
mod methods;
pub mod report;

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::{ensure, Context, Result};
use xshell::{cmd, Shell};

use crate::{dumps, flags, pgcluster::PgCluster, rehearse::Scratch, sqlite, util};
use report::{Results, Run, Size};

pub use methods::{copy_worker, COPY_WORKER};

/// Events the seeded db gets: the plain rehearsal's, so every size is a multiple of real data.
const SEED_EVENTS: u64 = 200;
/// The database every method's target is cloned from: Sentry 4.10's schema, rows cleared.
const TEMPLATE_DB: &str = "bench_template";

/// What every method needs to know about the scratch install and the server.
pub(crate) struct Bench {
    pub root: PathBuf,
    pub exe: PathBuf,
    pub cluster: PgCluster,
    /// The toolchain's environment (Python 2.7's libraries, buildout's home).
    pub toolchain_env: Vec<(&'static str, String)>,
    pub zone: &'static str,
    pub tables: Vec<String>,
    pub logs: PathBuf,
}

impl Bench {
    /// libpq's variables for `dbname` on the throwaway server (the password only ever in env).
    pub fn pg_env(&self, dbname: &str) -> Vec<(&'static str, String)> {
        self.cluster
            .env(&self.cluster.superuser, &self.cluster.password, dbname)
    }

    pub fn shell(&self) -> Result<Shell> {
        let sh = Shell::new()?;
        sh.change_dir(&self.root);
        for (key, value) in &self.toolchain_env {
            sh.set_var(key, value);
        }
        Ok(sh)
    }
}

/// `10k` → 10 000, `1M` → 1 000 000, `2500` → 2 500.
pub fn parse_size(text: &str) -> Result<u64> {
    let text = text.trim();
    let (digits, factor) = match text.chars().last() {
        Some('k' | 'K') => (&text[..text.len() - 1], 1_000),
        Some('M' | 'm') => (&text[..text.len() - 1], 1_000_000),
        _ => (text, 1),
    };
    let n: u64 = digits
        .parse()
        .with_context(|| format!("`{text}` is not a size: write events as 2500, 10k or 1M"))?;
    ensure!(n > 0, "a size of 0 events measures nothing");
    Ok(n * factor)
}

fn label(events: u64) -> String {
    match events {
        n if n >= 1_000_000 && n % 1_000_000 == 0 => format!("{}M", n / 1_000_000),
        n if n >= 1_000 && n % 1_000 == 0 => format!("{}k", n / 1_000),
        n => n.to_string(),
    }
}

fn parse_methods(text: &str) -> Result<Vec<&'static str>> {
    let mut out = Vec::new();
    for name in text.split(',').map(str::trim) {
        let method = report::METHODS
            .iter()
            .copied()
            .find(|it| *it == name)
            .with_context(|| {
                format!(
                    "unknown method `{name}`: expected some of {}",
                    report::METHODS.join(",")
                )
            })?;
        if !out.contains(&method) {
            out.push(method);
        }
    }
    // Always in the table's order; loaddata, the slowest, after the others.
    out.sort_by_key(|method| {
        [
            "floor",
            "floor2",
            "pgloader",
            "pgloader-drop",
            "copy1",
            "copy",
            "loaddata",
        ]
        .iter()
        .position(|it| it == method)
    });
    Ok(out)
}

fn require(program: &str, why: &str) -> Result<()> {
    let found = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
        .unwrap_or(false);
    ensure!(found, "`{program}` is not installed ({why}): apt-get install {program}, or leave its method out with --methods");
    Ok(())
}

impl flags::Bench {
    pub fn run(self, sh: &Shell) -> Result<()> {
        let repo = sh.current_dir();
        let out_dir = repo.join(self.out.clone().unwrap_or_else(|| "dumps/bench".into()));
        if let Some(json) = &self.redraw {
            let text = fs::read_to_string(json)
                .with_context(|| format!("cannot read {}", json.display()))?;
            let results: Results = serde_json::from_str(&text)
                .with_context(|| format!("{} is not a bench.json of this tool", json.display()))?;
            report::write_all(&results, &out_dir)?;
            print!("{}", report::markdown(&results));
            println!("redrawn into {}", out_dir.display());
            return Ok(());
        }
        let mut sizes: Vec<u64> = self
            .sizes
            .as_deref()
            .unwrap_or("10k,100k,1M")
            .split(',')
            .map(parse_size)
            .collect::<Result<_>>()?;
        sizes.sort_unstable();
        sizes.dedup();
        let whole_runs: Vec<u64> = match self.whole_run.as_deref() {
            Some(list) => list.split(',').map(parse_size).collect::<Result<_>>()?,
            None => Vec::new(),
        };
        for size in &whole_runs {
            ensure!(
                sizes.contains(size),
                "--whole-run {} is not one of --sizes",
                label(*size)
            );
        }
        let methods = parse_methods(
            self.methods
                .as_deref()
                .unwrap_or("copy,loaddata,pgloader,floor"),
        )?;
        if let Some(seed) = &self.seed_db {
            ensure!(
                seed.is_file(),
                "--seed-db {}: no such file (a Sentry 4 SQLite db, e.g. from `cargo xtask rehearse --long-lived --keep-db PATH`)",
                seed.display()
            );
        }
        require("python3", "it scales the db")?;
        if methods.contains(&"pgloader") || methods.contains(&"pgloader-drop") {
            require("pgloader", "the pgloader method")?;
        }
        if methods.contains(&"floor") || methods.contains(&"floor2") {
            require("sqlite3", "the floor's CSV export")?;
            require("psql", "the floor's COPY")?;
        }
        let mut scratch = Scratch::new("sentry-migrate-bench-", self.keep)?;
        let root = scratch.path.clone();
        println!(
            "benchmark in {} (sizes {}; methods {})",
            root.display(),
            sizes
                .iter()
                .map(|it| label(*it))
                .collect::<Vec<_>>()
                .join(", "),
            methods.join(", ")
        );
        let result = bench(
            &repo,
            self.cache.as_deref(),
            &root,
            &Wanted {
                sizes: &sizes,
                methods: &methods,
                whole_runs: &whole_runs,
                seed_db: self.seed_db.as_deref(),
            },
            &out_dir,
        );
        if result.is_err() {
            println!("scratch kept for inspection: {}", root.display());
            scratch.keep = true;
        } else if self.keep {
            println!("scratch kept: {}", root.display());
        }
        result
    }
}

/// What `bench` is asked to measure (the flags, parsed).
struct Wanted<'a> {
    sizes: &'a [u64],
    methods: &'a [&'static str],
    whole_runs: &'a [u64],
    seed_db: Option<&'a Path>,
}

fn bench(
    repo: &Path,
    cache: Option<&Path>,
    root: &Path,
    wanted: &Wanted<'_>,
    out_dir: &Path,
) -> Result<()> {
    let Wanted {
        sizes,
        methods,
        whole_runs,
        seed_db,
    } = *wanted;
    let started = Instant::now();
    let logs = root.join("logs");
    // The binary copied, as the rehearsal does: a rebuild meanwhile must not pull it away.
    let exe = util::copy_of_this_binary(root, ".bench-xtask")?;

    print!(
        "[1/3] a real Sentry 4.10 db: provision, install, seed {SEED_EVENTS} events over HTTP … "
    );
    flush();
    let phase = Instant::now();
    let install = crate::rehearse::seeded_install(repo, cache, root, SEED_EVENTS)?;
    let (toolchain_env, zone) = (install.env, install.zone);
    println!("ok ({})", util::human_duration(phase.elapsed()));
    if let Some(seed) = seed_db {
        // The given db in the seeded one's place: the install, its settings and zone stay.
        let db = root.join("var/sentry.db");
        fs::copy(seed, &db).with_context(|| {
            format!(
                "cannot copy --seed-db {} to {}",
                seed.display(),
                db.display()
            )
        })?;
        println!("      scaling {} instead (--seed-db)", seed.display());
    }

    print!("[2/3] PostgreSQL, and Sentry 4.10's schema on it (`migrate --fit-values --until pg-clear-generated-rows`) … ");
    flush();
    let phase = Instant::now();
    let sh = Shell::new()?;
    let mut cluster = PgCluster::start(&sh, &root.join("pg"))?;
    cluster.stop_on_interrupt();
    let mut bench = Bench {
        root: root.to_path_buf(),
        exe: exe.clone(),
        cluster,
        toolchain_env,
        zone,
        tables: Vec::new(),
        logs: logs.clone(),
    };
    // The real `migrate` makes the template: it fits the values PostgreSQL refuses in a working
    // copy (every method then reads data PostgreSQL accepts), lists the model tables, and has
    // Sentry 4.10 build its schema on PostgreSQL and clear the rows it generated.
    let sh = bench.shell()?;
    crate::rehearse::log_run(
        cmd!(
            sh,
            "{exe} migrate --fit-values --until pg-clear-generated-rows"
        )
        .env("SENTRY_MIGRATE_ROOT", root)
        .envs(bench.pg_env(TEMPLATE_DB)),
        &logs.join("template.log"),
    )
    .context("`migrate --until pg-clear-generated-rows` could not make the template database")?;
    let fitted = root.join("dumps/sentry-fitted.db");
    bench.tables = model_tables(&root.join("dumps/models.json"))?;
    let base_events = sqlite_counts(&fitted, &["sentry_message".to_string()])?["sentry_message"];
    println!("ok ({})", util::human_duration(phase.elapsed()));

    let mut results = Results {
        started_at: util::utc_timestamp(util::unix_now()),
        machine: machine(),
        postgres: {
            let mut client = bench.cluster.client("postgres")?;
            client.query_one("SHOW server_version", &[])?.get(0)
        },
        pgloader: (methods.contains(&"pgloader") || methods.contains(&"pgloader-drop"))
            .then(methods::pgloader_version)
            .transpose()?,
        time_zone: zone.to_string(),
        source: match seed_db {
            Some(seed) => format!(
                "{} (--seed-db; {base_events} events, values fitted by `migrate --fit-values`), scaled with xtask/python/bench/scale_sqlite.py",
                seed.file_name().unwrap_or_default().to_string_lossy()
            ),
            None => format!(
                "a Sentry 4.10 db seeded over HTTP by the rehearsal ({base_events} events, values fitted by `migrate --fit-values`), scaled with xtask/python/bench/scale_sqlite.py"
            ),
        },
        sizes: Vec::new(),
        whole_runs: Vec::new(),
    };
    println!("[3/3] each size, each method ({})", methods.join(", "));
    for &events in sizes {
        let label = label(events);
        let factor = events.div_ceil(base_events).max(1).to_string();
        let scaled = root.join(format!("bench-{label}.db"));
        fs::copy(&fitted, &scaled)?;
        let scale = repo.join("xtask/python/bench/scale_sqlite.py");
        let phase = Instant::now();
        crate::rehearse::log_run(
            cmd!(sh, "python3 {scale} {scaled} {factor}"),
            &logs.join(format!("scale-{label}.log")),
        )?;
        let counts = sqlite_counts(&scaled, &bench.tables)?;
        let size = Size {
            label: label.clone(),
            events: counts["sentry_message"],
            rows: counts.values().sum(),
            sqlite_bytes: fs::metadata(&scaled)?.len(),
            runs: Vec::new(),
        };
        println!(
            "  {label}: {} events, {} rows, {} (scaled ×{factor} in {})",
            size.events,
            size.rows,
            util::human_bytes(size.sqlite_bytes),
            util::human_duration(phase.elapsed())
        );
        results.sizes.push(size);
        for &method in methods {
            let dbname = format!(
                "bench_{}_{}",
                method.replace('-', "_"),
                label.to_lowercase()
            );
            let mut admin = bench.cluster.client("postgres")?;
            admin.batch_execute(&format!("DROP DATABASE IF EXISTS {dbname}"))?;
            admin.batch_execute(&format!("CREATE DATABASE {dbname} TEMPLATE {TEMPLATE_DB}"))?;
            drop(admin);
            let size = results.sizes.last().unwrap();
            let mut run =
                methods::run(&bench, method, &scaled, size, &dbname).unwrap_or_else(|err| Run {
                    method: method.to_string(),
                    problems: vec![format!("failed: {err:#}")],
                    ..Run::default()
                });
            if run.secs.is_some() {
                check_rows(&bench, &dbname, &counts, &mut run)?;
            }
            println!("    {}", one_line(&run));
            let mut admin = bench.cluster.client("postgres")?;
            admin.batch_execute(&format!("DROP DATABASE {dbname}"))?;
            results.sizes.last_mut().unwrap().runs.push(run);
            // Written after every run: a long benchmark that stops keeps what it measured.
            report::write_all(&results, out_dir)?;
        }
        if !whole_runs.contains(&events) {
            fs::remove_file(&scaled)?;
        }
    }
    // Last: the whole migration installs Sentry 6 in the scratch install.
    for &events in whole_runs {
        let label = label(events);
        let scaled = root.join(format!("bench-{label}.db"));
        let phase = Instant::now();
        let whole = whole_run(&bench, &scaled, &label)?;
        println!(
            "  the whole `migrate` at {label}: {}{} ({})",
            util::human_duration(std::time::Duration::from_secs_f64(whole.secs)),
            whole
                .failure
                .as_ref()
                .map(|it| format!(", FAILED: {it}"))
                .unwrap_or_default(),
            util::human_duration(phase.elapsed())
        );
        results.whole_runs.push(report::WholeRun {
            events: results
                .sizes
                .iter()
                .find(|size| size.label == label)
                .map_or(events, |size| size.events),
            ..whole
        });
        report::write_all(&results, out_dir)?;
        fs::remove_file(&scaled)?;
    }
    println!("\n{}", report::markdown(&results));
    println!(
        "benchmark done in {}: {}/bench.json, bench.md, bench.svg",
        util::human_duration(started.elapsed()),
        out_dir.display()
    );
    Ok(())
}

/// The whole `cargo xtask migrate` (default engine) on `scaled`, into a database of its own, as a
/// user runs it: every step, Sentry 6's upgrade included; the journal's step times.
fn whole_run(bench: &Bench, scaled: &Path, label: &str) -> Result<report::WholeRun> {
    let root = &bench.root;
    // The template's run left its journal in dumps/: this is another migration.
    let dumps = root.join("dumps");
    let aside = root.join(format!("dumps-before-whole-{label}"));
    fs::rename(&dumps, &aside)?;
    fs::create_dir(&dumps)?;
    let sh = bench.shell()?;
    let exe = &bench.exe;
    let dbname = format!("bench_whole_{}", label.to_lowercase());
    let log = bench
        .logs
        .join(format!("whole-{}.log", label.to_lowercase()));
    // To Sentry 6's step, the loaded state cloned for Sentry's own upgrade, then the rest:
    // the same command resumed, its steps timed by the journal.
    let migrate = |until: &[&str], log: &Path| {
        measure::run(
            cmd!(sh, "{exe} migrate --sqlite {scaled} {until...}")
                .env("SENTRY_MIGRATE_ROOT", root)
                .envs(bench.pg_env(&dbname)),
            log,
            None,
        )
    };
    let first = migrate(&["--until", "buildout-tag2"], &log)?;
    let second = if first.status.success() {
        let reference = crate::rehearse::sentry_own::clone_loaded(&bench.cluster, &dbname)?;
        let second_log = log.with_extension("sentry6.log");
        let measured = migrate(&[], &second_log)?;
        Some((reference, measured, second_log))
    } else {
        None
    };
    let journal = crate::journal::Journal::load(&dumps.join("journal.json"))?
        .context("the whole run left no journal")?;
    // Sentry's own upgrade on the clone, in the same run, and the two results compared.
    let sentry_own = match &second {
        Some((reference, measured, _)) if measured.status.success() => {
            println!("  Sentry's own upgrade on a clone of the loaded db, for the ratio and the equality check …");
            let own_log = bench
                .logs
                .join(format!("sentry-own-upgrade-{}.log", label.to_lowercase()));
            let (secs, found) = crate::rehearse::sentry_own::sentry_own_upgrade(
                &sh,
                root,
                &bench.cluster,
                &dbname,
                reference,
                &own_log,
                &bench.pg_env(&reference.dbname),
            )?;
            Some(report::SentryOwn {
                secs,
                equal: found.is_equal(),
                found: found.summary(),
            })
        }
        _ => None,
    };
    // The run that ended it: the second when there was one.
    let (last, last_log) = match &second {
        Some((_, measured, second_log)) => (*measured, second_log.clone()),
        None => (first, log.clone()),
    };
    Ok(report::WholeRun {
        events: 0,
        secs: first.secs
            + second
                .as_ref()
                .map_or(0.0, |(_, measured, _)| measured.secs),
        peak_rss_kib: first.peak_rss_kib.max(last.peak_rss_kib),
        sentry_own,
        tool_peak_rss_kib: journal.tool_peak_rss_kib,
        steps: journal
            .steps
            .iter()
            .map(|step| (step.name.clone(), step.elapsed_secs))
            .collect(),
        sentry6_migrations: journal
            .record_of(crate::plan::StepId::Sentry6Upgrade)
            .map(|step| {
                crate::sentry::slowest(&step.migrations, 5)
                    .into_iter()
                    .cloned()
                    .collect()
            })
            .unwrap_or_default(),
        failure: (!last.status.success()).then(|| {
            format!(
                "{}; log {}: {}",
                last.status,
                last_log.display(),
                util::log_tail(&last_log, 4).replace('\n', " | ")
            )
        }),
    })
}

/// Shows a `print!`ed "step … " before the step's work starts.
fn flush() {
    let _ = std::io::Write::flush(&mut std::io::stdout());
}

fn one_line(run: &Run) -> String {
    let what = match (run.secs, &run.note) {
        (Some(secs), _) => format!(
            "{secs:.1} s, peak {}",
            util::human_bytes(run.peak_rss_kib.unwrap_or(0) * 1024)
        ),
        (None, Some(note)) => format!("did not run: {note}"),
        (None, None) => "did not run".into(),
    };
    let rows = if run.problems.is_empty() {
        run.rows_loaded
            .map(|rows| format!("; all {rows} rows"))
            .unwrap_or_default()
    } else {
        format!("; PROBLEMS: {}", run.problems.join("; "))
    };
    format!("{}: {what}{rows}", run.method)
}

fn model_tables(models_json: &Path) -> Result<Vec<String>> {
    let tables = dumps::model_tables(&dumps::read_models(models_json)?);
    for table in &tables {
        crate::ident::Ident::new("the model table", table)?;
    }
    Ok(tables)
}

fn sqlite_counts(db: &Path, tables: &[String]) -> Result<BTreeMap<String, u64>> {
    let conn = sqlite::open_read_only(db)?;
    tables
        .iter()
        .map(|table| {
            let n: i64 = conn
                .query_row(
                    &format!("SELECT count(*) FROM {}", sqlite::quote_ident(table)),
                    [],
                    |row| row.get(0),
                )
                .with_context(|| format!("cannot count {table} in {}", db.display()))?;
            Ok((table.clone(), n as u64))
        })
        .collect()
}

/// Rows per model table in `dbname` against SQLite's: every method must load every row.
fn check_rows(
    bench: &Bench,
    dbname: &str,
    expected: &BTreeMap<String, u64>,
    run: &mut Run,
) -> Result<()> {
    let mut client = bench.cluster.client(dbname)?;
    let mut total = 0;
    for (table, want) in expected {
        let got: i64 = client
            .query_one(&format!("SELECT count(*) FROM \"{table}\""), &[])?
            .get(0);
        total += got as u64;
        if got as u64 != *want {
            run.problems.push(format!("{table}: {got} of {want} rows"));
        }
    }
    run.rows_loaded = Some(total);
    Ok(())
}

fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let memory = util::meminfo_kib("MemTotal")
        .map(|kib| util::human_bytes(kib * 1024))
        .unwrap_or_else(|| "?".into());
    format!("{cores} cores, {memory}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_methods_parse_or_are_refused() {
        assert_eq!(parse_size("10k").unwrap(), 10_000);
        assert_eq!(parse_size("1M").unwrap(), 1_000_000);
        assert_eq!(parse_size(" 2500 ").unwrap(), 2_500);
        assert!(parse_size("0").is_err());
        assert!(parse_size("ten")
            .unwrap_err()
            .to_string()
            .contains("write events as 2500, 10k or 1M"));
        assert_eq!(label(100_000), "100k");
        assert_eq!(label(1_000_000), "1M");
        assert_eq!(label(2_500), "2500");
        assert_eq!(
            parse_methods("loaddata,copy,floor,copy").unwrap(),
            ["floor", "copy", "loaddata"]
        );
        assert!(parse_methods("mysql")
            .unwrap_err()
            .to_string()
            .contains("unknown method `mysql`"));
    }
}
