//! The ways to load a scaled db, each run as programs of its own and measured.

use std::{ffi::OsString, fmt::Write as _, fs, path::Path, time::Duration};

use anyhow::{bail, Context, Result};
use xshell::cmd;

use super::{
    measure::{self, Measured},
    report::{Part, Run, Size},
    Bench,
};
use crate::{
    config::Config,
    flags::DbKind,
    pg, settings,
    sqlite::{open_read_only, quote_ident},
    util,
};

/// The copy engine's own process: `xtask __bench-copy SQLITE ZONE MODELS_JSON SESSIONS`, the
/// target from libpq's variables. Not a task: `bench` runs it to measure the engine's memory alone.
pub const COPY_WORKER: &str = "__bench-copy";

pub fn copy_worker(args: &[OsString]) -> Result<()> {
    let [sqlite, zone, models, sessions] = args else {
        bail!("{COPY_WORKER} SQLITE ZONE MODELS_JSON SESSIONS (run by `cargo xtask bench`)");
    };
    let sessions: usize = sessions
        .to_str()
        .and_then(|it| it.parse().ok())
        .filter(|it| (1..=8).contains(it))
        .context("SESSIONS is a number from 1 to 8")?;
    let zone = zone.to_str().context("the zone is not UTF-8")?;
    let config = Config::new(&std::env::current_dir()?, None, None, |key| {
        std::env::var(key).ok()
    })?;
    let mut clients = (0..sessions)
        .map(|_| pg::connect(&config.pg, &config.pg.dbname, Duration::from_secs(5)))
        .collect::<Result<Vec<_>>>()?;
    let tables = super::model_tables(Path::new(models))?;
    let repeat = crate::copy::Repeatable {
        truncate_sql: None,
        reset_sequence_sql: pg::RESET_SEQUENCE_SQL,
        marker_sql: &[],
        step: COPY_WORKER,
        input: "",
    };
    let (copies, sequences) = crate::copy::copy(
        Path::new(sqlite),
        &mut clients,
        &tables,
        zone,
        &repeat,
        crate::copy::SENTRY6_INTEGER_COLUMNS,
    )?;
    let rows: u64 = copies.iter().map(|it| it.rows).sum();
    println!(
        "copied {rows} rows into {} tables over {sessions} session(s); {} sequences reset; peak RSS {} KiB; CPU {:.1} s",
        copies.len(),
        sequences.len(),
        util::peak_rss_kib().unwrap_or(0),
        util::cpu_secs()
    );
    Ok(())
}

pub fn pgloader_version() -> Result<String> {
    let sh = xshell::Shell::new()?;
    let out = cmd!(sh, "pgloader --version")
        .read()
        .context("cannot run `pgloader --version`")?;
    Ok(out
        .lines()
        .next()
        .unwrap_or_default()
        .trim_start_matches("pgloader version ")
        .trim_matches('"')
        .to_string())
}

/// Runs `method` on `scaled` into the empty `dbname`; its row count is checked by the caller.
pub fn run(bench: &Bench, method: &str, scaled: &Path, size: &Size, dbname: &str) -> Result<Run> {
    let log = bench
        .logs
        .join(format!("{method}-{}.log", size.label.to_lowercase()));
    let mut run = Run {
        method: method.to_string(),
        ..Run::default()
    };
    let parts = match method {
        "copy" => copy(bench, scaled, dbname, &log, crate::copy::SESSIONS)?,
        "copy1" => copy(bench, scaled, dbname, &log, 1)?,
        "floor" => floor(bench, scaled, dbname, &log)?,
        "floor2" => floor2(bench, scaled, dbname, &log)?,
        "pgloader" => pgloader(bench, scaled, dbname, &log)?,
        "pgloader-drop" => pgloader_drop(bench, scaled, dbname, &log)?,
        "loaddata" => match loaddata(bench, scaled, size, dbname, &log)? {
            Ok(parts) => parts,
            Err(refused) => {
                run.note = Some(refused);
                return Ok(run);
            }
        },
        _ => bail!("unknown method {method}"),
    };
    for (name, measured) in &parts {
        if !measured.status.success() {
            run.problems.push(format!(
                "{name} failed ({}); log {}: {}",
                measured.status,
                log.display(),
                util::log_tail(&log, 3).replace('\n', " | ")
            ));
        }
    }
    run.secs = Some(parts.iter().map(|(_, m)| m.secs).sum());
    run.peak_rss_kib = parts.iter().map(|(_, m)| m.peak_rss_kib).max();
    run.parts = parts
        .into_iter()
        .map(|(name, m)| Part {
            name,
            secs: m.secs,
            peak_rss_kib: m.peak_rss_kib,
        })
        .collect();
    Ok(run)
}

type Parts = Vec<(String, Measured)>;

fn copy(bench: &Bench, scaled: &Path, dbname: &str, log: &Path, sessions: usize) -> Result<Parts> {
    let sh = bench.shell()?;
    let exe = &bench.exe;
    let zone = bench.zone;
    let models = bench.root.join("dumps/models.json");
    let sessions = sessions.to_string();
    let measured = measure::run(
        cmd!(
            sh,
            "{exe} {COPY_WORKER} {scaled} {zone} {models} {sessions}"
        )
        .envs(bench.pg_env(dbname)),
        log,
        None,
    )?;
    Ok(vec![("copy".into(), measured)])
}

/// Columns of `table` that SQLite and PostgreSQL both have, in SQLite's order, quoted.
fn shared_columns(
    sqlite: &rusqlite::Connection,
    client: &mut postgres::Client,
    table: &str,
) -> Result<Vec<String>> {
    let target: Vec<String> = client
        .query(
            "SELECT column_name::text FROM information_schema.columns WHERE table_schema = 'public' AND table_name = $1",
            &[&table],
        )?
        .iter()
        .map(|row| row.get(0))
        .collect();
    let source: Vec<String> = sqlite
        .prepare(&format!("PRAGMA table_info({})", quote_ident(table)))?
        .query_map([], |row| row.get(1))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(source
        .into_iter()
        .filter(|column| target.contains(column))
        .map(|column| quote_ident(&column))
        .collect())
}

/// The floor: every non-empty model table exported by sqlite3 as CSV, then loaded by psql with
/// `\copy` in one transaction, foreign keys checked at commit (Django made them deferrable).
fn floor(bench: &Bench, scaled: &Path, dbname: &str, log: &Path) -> Result<Parts> {
    let sh = bench.shell()?;
    let csv_dir = bench.root.join("bench-csv");
    let (files, export) = export_csv(bench, scaled, dbname, log, &csv_dir)?;
    let mut script = String::from("\\set ON_ERROR_STOP on\n");
    let _ = writeln!(
        script,
        "SET TimeZone TO '{}';",
        bench.zone.replace('\'', "''")
    );
    script.push_str("BEGIN;\nSET CONSTRAINTS ALL DEFERRED;\n");
    for file in &files {
        let _ = writeln!(script, "{}", file.copy_line());
    }
    script.push_str("COMMIT;\n");
    let script_path = csv_dir.join("load.sql");
    fs::write(&script_path, script)?;
    let load = measure::run(
        cmd!(sh, "psql -X -q -f {script_path}").envs(bench.pg_env(dbname)),
        log,
        None,
    )?;
    fs::remove_dir_all(&csv_dir)?;
    Ok(vec![("CSV export".into(), export), ("COPY".into(), load)])
}

/// Every non-empty model table exported by sqlite3 as CSV, each file with its size.
fn export_csv(
    bench: &Bench,
    scaled: &Path,
    dbname: &str,
    log: &Path,
    csv_dir: &Path,
) -> Result<(Vec<CsvFile>, Measured)> {
    let sh = bench.shell()?;
    let _ = fs::remove_dir_all(csv_dir);
    fs::create_dir_all(csv_dir)?;
    let sqlite = open_read_only(scaled)?;
    let mut client = bench.cluster.client(dbname)?;
    let mut out = Vec::new();
    let mut total: Option<Measured> = None;
    for table in &bench.tables {
        let rows: i64 = sqlite.query_row(
            &format!("SELECT count(*) FROM {}", quote_ident(table)),
            [],
            |row| row.get(0),
        )?;
        if rows == 0 {
            continue;
        }
        let columns = shared_columns(&sqlite, &mut client, table)?.join(", ");
        let csv = csv_dir.join(format!("{table}.csv"));
        let select = format!("SELECT {columns} FROM {}", quote_ident(table));
        let measured = measure::run(
            cmd!(sh, "sqlite3 -csv -noheader {scaled} {select}"),
            log,
            Some(fs::File::create(&csv)?),
        )?;
        total = Some(match total {
            None => measured,
            Some(sum) => Measured {
                secs: sum.secs + measured.secs,
                peak_rss_kib: sum.peak_rss_kib.max(measured.peak_rss_kib),
                status: if sum.status.success() {
                    measured.status
                } else {
                    sum.status
                },
            },
        });
        let bytes = fs::metadata(&csv)?.len();
        out.push(CsvFile {
            table: table.clone(),
            columns,
            path: csv,
            bytes,
        });
    }
    Ok((out, total.context("no table to export")?))
}

impl CsvFile {
    /// psql's `\copy` of this file into its table.
    fn copy_line(&self) -> String {
        format!(
            "\\copy \"{}\" ({}) FROM '{}' WITH (FORMAT csv)",
            self.table,
            self.columns,
            self.path.display()
        )
    }
}

/// A table exported by `export_csv`.
struct CsvFile {
    table: String,
    /// Its columns, quoted, as in the file.
    columns: String,
    path: std::path::PathBuf,
    bytes: u64,
}

/// The yardstick for the copy engine: COPY of the same rows from CSV files made
/// beforehand (their export is not timed), the plain indexes and foreign keys dropped first and
/// rebuilt after (the copy engine's own list, `copy::KEYS_AND_INDEXES_SQL`), the tables split
/// over two psql sessions by size, the rebuild split the same way (indexes, then keys). Not
/// one transaction: a floor, not a safe load.
fn floor2(bench: &Bench, scaled: &Path, dbname: &str, log: &Path) -> Result<Parts> {
    let csv_dir = bench.root.join("bench-csv");
    let (files, export) = export_csv(bench, scaled, dbname, log, &csv_dir)?;
    anyhow::ensure!(
        export.status.success(),
        "sqlite3 could not export the tables"
    );
    let mut client = bench.cluster.client(dbname)?;
    let listed = client.query(crate::copy::KEYS_AND_INDEXES_SQL, &[])?;
    drop(client);
    let mut drops = String::from("\\set ON_ERROR_STOP on\n");
    let (mut indexes, mut keys) = (Vec::new(), Vec::new());
    for row in &listed {
        let (drop, create, is_key): (String, String, i32) = (row.get(0), row.get(1), row.get(2));
        let _ = writeln!(drops, "{drop};");
        if is_key == 1 {
            keys.push(create);
        } else {
            indexes.push(create);
        }
    }
    // Largest first, each to the lighter session.
    let mut files = files;
    files.sort_by_key(|it| std::cmp::Reverse(it.bytes));
    let header = format!(
        "\\set ON_ERROR_STOP on\nSET TimeZone TO '{}';\nBEGIN;\n",
        bench.zone.replace('\'', "''")
    );
    let mut scripts = [header.clone(), header];
    let mut load = [0u64, 0];
    for file in &files {
        let lighter = usize::from(load[1] < load[0]);
        load[lighter] += file.bytes;
        let _ = writeln!(scripts[lighter], "{}", file.copy_line());
    }
    let mut rebuild = [
        String::from("\\set ON_ERROR_STOP on\n"),
        String::from("\\set ON_ERROR_STOP on\n"),
    ];
    for (n, index) in indexes.iter().enumerate() {
        let _ = writeln!(rebuild[n % 2], "{index};");
    }
    let mut keys_script = String::from("\\set ON_ERROR_STOP on\n");
    for key in &keys {
        let _ = writeln!(keys_script, "{key};");
    }
    let write = |name: &str, text: &str| -> Result<std::path::PathBuf> {
        let path = csv_dir.join(name);
        fs::write(&path, text)?;
        Ok(path)
    };
    let drop_path = write("drop.sql", &drops)?;
    let copy_paths = [
        write("copy-a.sql", &format!("{}COMMIT;\n", scripts[0]))?,
        write("copy-b.sql", &format!("{}COMMIT;\n", scripts[1]))?,
    ];
    let index_paths = [
        write("index-a.sql", &rebuild[0])?,
        write("index-b.sql", &rebuild[1])?,
    ];
    let keys_path = write("keys.sql", &keys_script)?;
    let env = bench.pg_env(dbname);
    let (root, toolchain) = (&bench.root, &bench.toolchain_env);
    // A shell per thread (xshell's is not shared between threads).
    let psql = |script: &Path| -> Result<Measured> {
        let sh = xshell::Shell::new()?;
        sh.change_dir(root);
        measure::run(
            cmd!(sh, "psql -X -q -f {script}")
                .envs(toolchain.iter().cloned())
                .envs(env.iter().cloned()),
            log,
            None,
        )
    };
    let both = |pair: &[std::path::PathBuf; 2]| -> Result<Vec<Measured>> {
        std::thread::scope(|scope| {
            let handles: Vec<_> = pair.iter().map(|it| scope.spawn(|| psql(it))).collect();
            handles
                .into_iter()
                .map(|handle| {
                    handle
                        .join()
                        .unwrap_or_else(|_| bail!("a psql thread panicked"))
                })
                .collect()
        })
    };
    let started = std::time::Instant::now();
    let mut all = vec![psql(&drop_path)?];
    all.extend(both(&copy_paths)?);
    all.extend(both(&index_paths)?);
    all.push(psql(&keys_path)?);
    let secs = started.elapsed().as_secs_f64();
    fs::remove_dir_all(&csv_dir)?;
    let failed = all.iter().find(|it| !it.status.success()).copied();
    Ok(vec![(
        "drop + 2 sessions of COPY + rebuild".into(),
        Measured {
            secs,
            peak_rss_kib: all.iter().map(|it| it.peak_rss_kib).max().unwrap_or(0),
            status: failed.unwrap_or(all[0]).status,
        },
    )])
}

/// pgloader's data-only mode into the schema Sentry built, as benchmark.md measured it.
/// pgloader's data-only mode, as `pgloader` below, but tuned as its docs advise for a bulk load:
/// `drop indexes` (it drops the target's indexes, loads, and creates them again).
fn pgloader_drop(bench: &Bench, scaled: &Path, dbname: &str, log: &Path) -> Result<Parts> {
    pgloader_with(bench, scaled, dbname, log, "drop indexes, ")
}

fn pgloader(bench: &Bench, scaled: &Path, dbname: &str, log: &Path) -> Result<Parts> {
    pgloader_with(bench, scaled, dbname, log, "")
}

fn pgloader_with(
    bench: &Bench,
    scaled: &Path,
    dbname: &str,
    log: &Path,
    extra: &str,
) -> Result<Parts> {
    let sh = bench.shell()?;
    let tables = bench
        .tables
        .iter()
        .map(|table| format!("'{table}'"))
        .collect::<Vec<_>>()
        .join(", ");
    // No password in the file: pgloader takes PGPASSWORD, as libpq does.
    let load = format!(
        "LOAD DATABASE\n  FROM sqlite://{}\n  INTO postgresql://{}@127.0.0.1:{}/{dbname}\n  WITH data only, {extra}truncate, reset sequences, disable triggers, prefetch rows = 10000\n  SET timezone to '{}'\n  INCLUDING ONLY TABLE NAMES LIKE {tables};\n",
        scaled.display(),
        bench.cluster.superuser,
        bench.cluster.port,
        bench.zone,
    );
    let path = bench.root.join(format!("{dbname}.load"));
    fs::write(&path, load)?;
    let measured = measure::run(
        cmd!(sh, "pgloader --no-ssl-cert-verification {path}").envs(bench.pg_env(dbname)),
        log,
        None,
    )?;
    Ok(vec![("pgloader".into(), measured)])
}

/// dumpdata auth, dumpdata --exclude auth, then one loaddata, as `--engine loaddata` runs them;
/// refused (with the reason) where preflight would refuse it: not enough memory for dumpdata.
fn loaddata(
    bench: &Bench,
    scaled: &Path,
    size: &Size,
    dbname: &str,
    log: &Path,
) -> Result<std::result::Result<Parts, String>> {
    let per_event = crate::plan::LOADDATA_MEMORY_PER_EVENT;
    let needed = size.events * per_event;
    let available = util::available_memory().unwrap_or(0);
    if needed > available {
        return Ok(Err(format!(
            "dumpdata would need ~{} (~{} KiB per event), {} available: `migrate` refuses it in preflight",
            util::human_bytes(needed),
            per_event / 1024,
            util::human_bytes(available)
        )));
    }
    let sh = bench.shell()?;
    let env = bench.pg_env(dbname);
    let lookup = |key: &str| {
        env.iter()
            .find(|(name, _)| *name == key)
            .map(|(_, value)| value.clone())
    };
    let config = Config::new(&bench.root, Some(scaled), None, lookup)?;
    settings::switch(DbKind::Sqlite, &config)?;
    let auth = bench.root.join("bench-dumpdata-auth.json");
    let rest = bench.root.join("bench-dumpdata.json");
    let dump_auth = measure::run(
        cmd!(sh, "bin/sentry --config=settings/settings.py dumpdata auth"),
        log,
        Some(fs::File::create(&auth)?),
    )?;
    let dump_rest = measure::run(
        cmd!(
            sh,
            "bin/sentry --config=settings/settings.py dumpdata --exclude auth"
        ),
        log,
        Some(fs::File::create(&rest)?),
    )?;
    settings::switch(DbKind::Postgres, &config)?;
    let load = measure::run(
        cmd!(
            sh,
            "bin/py xtask/python/sentry_helper.py --config=settings/settings.py load {auth} {rest}"
        )
        .envs(env.clone()),
        log,
        None,
    )?;
    let _ = fs::remove_file(&auth);
    let _ = fs::remove_file(&rest);
    Ok(Ok(vec![
        ("dumpdata auth".into(), dump_auth),
        ("dumpdata rest".into(), dump_rest),
        ("loaddata".into(), load),
    ]))
}
