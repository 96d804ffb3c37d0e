//! The four ways to load a scaled db, each run as programs of its own and measured.

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

/// The copy engine's own process: `xtask __bench-copy SQLITE ZONE MODELS_JSON`, the target from
/// libpq's variables. Not a task: `bench` runs it to measure the engine's memory alone.
pub const COPY_WORKER: &str = "__bench-copy";

pub fn copy_worker(args: &[OsString]) -> Result<()> {
    let [sqlite, zone, models] = args else {
        bail!("{COPY_WORKER} SQLITE ZONE MODELS_JSON (run by `cargo xtask bench`)");
    };
    let zone = zone.to_str().context("the zone is not UTF-8")?;
    let config = Config::new(&std::env::current_dir()?, None, None, |key| {
        std::env::var(key).ok()
    })?;
    let mut client = pg::connect(&config.pg, &config.pg.dbname, Duration::from_secs(5))?;
    let tables = super::model_tables(Path::new(models))?;
    let repeat = crate::copy::Repeatable {
        truncate_sql: None,
        reset_sequence_sql: pg::RESET_SEQUENCE_SQL,
        marker_sql: &[],
        step: COPY_WORKER,
        input: "",
    };
    let (copies, sequences) =
        crate::copy::copy(Path::new(sqlite), &mut client, &tables, zone, &repeat)?;
    let rows: u64 = copies.iter().map(|it| it.rows).sum();
    println!(
        "copied {rows} rows into {} tables; {} sequences reset; peak RSS {} KiB",
        copies.len(),
        sequences.len(),
        util::peak_rss_kib().unwrap_or(0)
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
        "copy" => copy(bench, scaled, dbname, &log)?,
        "floor" => floor(bench, scaled, dbname, &log)?,
        "pgloader" => pgloader(bench, scaled, dbname, &log)?,
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

fn copy(bench: &Bench, scaled: &Path, dbname: &str, log: &Path) -> Result<Parts> {
    let sh = bench.shell()?;
    let exe = &bench.exe;
    let zone = bench.zone;
    let models = bench.root.join("dumps/models.json");
    let measured = measure::run(
        cmd!(sh, "{exe} {COPY_WORKER} {scaled} {zone} {models}").envs(bench.pg_env(dbname)),
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
    let _ = fs::remove_dir_all(&csv_dir);
    fs::create_dir_all(&csv_dir)?;
    let sqlite = open_read_only(scaled)?;
    let mut client = bench.cluster.client(dbname)?;
    let mut export_secs = 0.0;
    let mut export_peak = 0;
    let mut export_ok = None;
    let mut script = String::from("\\set ON_ERROR_STOP on\n");
    let _ = writeln!(
        script,
        "SET TimeZone TO '{}';",
        bench.zone.replace('\'', "''")
    );
    script.push_str("BEGIN;\nSET CONSTRAINTS ALL DEFERRED;\n");
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
        let out = fs::File::create(&csv)?;
        let measured = measure::run(
            cmd!(sh, "sqlite3 -csv -noheader {scaled} {select}"),
            log,
            Some(out),
        )?;
        export_secs += measured.secs;
        export_peak = export_peak.max(measured.peak_rss_kib);
        if !measured.status.success() || export_ok.is_none() {
            export_ok = Some(measured.status);
        }
        let _ = writeln!(
            script,
            "\\copy \"{table}\" ({columns}) FROM '{}' WITH (FORMAT csv)",
            csv.display()
        );
    }
    drop(client);
    script.push_str("COMMIT;\n");
    let script_path = csv_dir.join("load.sql");
    fs::write(&script_path, script)?;
    let load = measure::run(
        cmd!(sh, "psql -X -q -f {script_path}").envs(bench.pg_env(dbname)),
        log,
        None,
    )?;
    fs::remove_dir_all(&csv_dir)?;
    let export = Measured {
        secs: export_secs,
        peak_rss_kib: export_peak,
        status: export_ok.context("no table to export")?,
    };
    Ok(vec![("CSV export".into(), export), ("COPY".into(), load)])
}

/// pgloader's data-only mode into the schema Sentry built, as benchmark.md measured it.
fn pgloader(bench: &Bench, scaled: &Path, dbname: &str, log: &Path) -> Result<Parts> {
    let sh = bench.shell()?;
    let tables = bench
        .tables
        .iter()
        .map(|table| format!("'{table}'"))
        .collect::<Vec<_>>()
        .join(", ");
    // No password in the file: pgloader takes PGPASSWORD, as libpq does.
    let load = format!(
        "LOAD DATABASE\n  FROM sqlite://{}\n  INTO postgresql://{}@127.0.0.1:{}/{dbname}\n  WITH data only, truncate, reset sequences, disable triggers, prefetch rows = 10000\n  SET timezone to '{}'\n  INCLUDING ONLY TABLE NAMES LIKE {tables};\n",
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
