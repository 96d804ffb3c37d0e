//! The migrate phase: `cargo xtask migrate` on the rehearsal's Sentry 4 db as a user runs it,
//! refused at `scan-values` without `--fit-values`, then with it by both engines (compared),
//! and checked: every kind of value fitted, the dates read in the install's zone.

use std::{collections::BTreeMap, fs, path::Path};

use anyhow::{ensure, Context, Result};
use xshell::{cmd, Shell};

use super::{
    compare::compare_engines,
    run::run_tool,
    seed::{BadValues, REHEARSAL_ZONE},
    sentry_own::{clone_loaded, prove_equal},
};
use crate::{pgcluster::PgCluster, util};

/// The migrate phase. The same binary and code path a user runs, `cargo xtask migrate` on this
/// checkout: first without `--fit-values`, which must stop at `scan-values` naming the columns
/// and leave PostgreSQL untouched; then with it, which must fit every refused value and migrate.
pub(super) fn migrate_fitting_values(
    sh: &Shell,
    root: &Path,
    exe: &Path,
    pg_env: &[(&'static str, String)],
    cluster: &PgCluster,
    logs: &Path,
    bad: &BadValues,
) -> Result<()> {
    let log = logs.join("migrate-without-fit-values.log");
    let (ok, stderr) = run_tool(sh, exe, &["migrate"], root, pg_env, &log)?;
    ensure!(
        !ok,
        "`migrate` without --fit-values succeeded on a db with values PostgreSQL refuses; log {}",
        log.display()
    );
    let tail = util::log_tail(&log, 15);
    ensure!(
        stderr.contains("step `scan-values` failed"),
        "`migrate` without --fit-values failed, but not at step `scan-values`; log {}:\n{tail}",
        log.display()
    );
    for column in ["sentry_message.server_name", "sentry_message.site"] {
        ensure!(
            stderr.contains(column),
            "`migrate` stopped at `scan-values` without naming {column}; log {}:\n{tail}",
            log.display()
        );
    }
    ensure!(
        [
            "sentry_filtervalue.value",
            "sentry_messagefiltervalue.value"
        ]
        .iter()
        .any(|column| stderr.contains(column)),
        "`migrate` stopped at `scan-values` without naming a tag value column; log {}:\n{tail}",
        log.display()
    );
    let dbname = pg_env
        .iter()
        .find(|(key, _)| *key == "PGDATABASE")
        .map(|(_, value)| value.as_str())
        .context("no PGDATABASE for migrate")?;
    ensure_untouched(cluster, dbname)?;
    println!(
        "    without --fit-values: stopped at `scan-values` naming the columns; database `{dbname}` not created (log {})",
        log.display()
    );

    // Both engines to the Sentry 4 state, each into its own database, then compared table by
    // table; the copy engine's result goes on to Sentry 6 and its proof.
    // That stopped run's journal is for the copy engine's target: kept aside for inspection.
    fs::rename(root.join("dumps"), root.join("dumps-stopped-at-scan"))?;
    fs::create_dir(root.join("dumps"))?;
    let loaddata_db = format!("{dbname}_loaddata");
    let loaddata_env: Vec<(&'static str, String)> = pg_env
        .iter()
        .map(|(key, value)| match *key {
            "PGDATABASE" => (*key, loaddata_db.clone()),
            _ => (*key, value.clone()),
        })
        .collect();
    cmd!(
        sh,
        "{exe} migrate --fit-values --engine loaddata --until verify-postgres"
    )
    .env("SENTRY_MIGRATE_ROOT", root)
    .envs(loaddata_env.iter().cloned())
    .run()
    .context(
        "`cargo xtask migrate --fit-values --engine loaddata --until verify-postgres` failed",
    )?;
    // Its journal and report stay for inspection; the copy engine starts a journal of its own.
    fs::rename(root.join("dumps"), root.join("dumps-loaddata"))?;
    fs::create_dir(root.join("dumps"))?;
    cmd!(
        sh,
        "{exe} migrate --fit-values --engine copy --until verify-postgres"
    )
    .env("SENTRY_MIGRATE_ROOT", root)
    .envs(pg_env.iter().cloned())
    .run()
    .context("`cargo xtask migrate --fit-values --engine copy --until verify-postgres` failed")?;
    compare_engines(sh, cluster, &loaddata_db, dbname, logs, pg_env)?;
    // The loaded state, kept for Sentry's own upgrade: the tool's Sentry 6 step must leave
    // the same database.
    let reference = clone_loaded(cluster, dbname)?;
    cmd!(sh, "{exe} migrate --fit-values --engine copy")
        .env("SENTRY_MIGRATE_ROOT", root)
        .envs(pg_env.iter().cloned())
        .run()
        .context("`cargo xtask migrate --fit-values --engine copy` failed")?;
    prove_equal(sh, root, cluster, dbname, &reference, logs, pg_env)?;

    let report = read_report(root)?;
    check_fit(&report["fit"])?;
    // Values that fit PostgreSQL's limits, counted in characters, arrive unchanged.
    let mut client = cluster.client(dbname)?;
    let intact: i64 = client
        .query_one(
            "SELECT count(*) FROM sentry_message WHERE server_name = ANY($1)",
            &[&bad.server_names_128],
        )?
        .get(0);
    ensure!(
        intact as usize >= bad.server_names_128.len(),
        "{intact} of the {} server names of 128 characters (131 bytes) arrived unchanged in PostgreSQL: a byte limit was applied?",
        bad.server_names_128.len()
    );
    println!("    {}", fit_summary(&report["fit"]));
    Ok(())
}

/// The newest event is the same instant in SQLite (naive text in the zone Sentry 4 ran with) and
/// in PostgreSQL, and that instant is minutes old: read in the wrong zone it would be hours off
/// while every count still matched.
pub(super) fn check_instants(
    root: &Path,
    cluster: &PgCluster,
    migrate_started: jiff::Timestamp,
) -> Result<()> {
    let db = root.join("var/sentry.db");
    let naive: String = rusqlite::Connection::open(&db)
        .and_then(|conn| {
            conn.query_row("SELECT max(datetime) FROM sentry_message", [], |row| {
                row.get(0)
            })
        })
        .with_context(|| format!("cannot read the newest event of {}", db.display()))?;
    let local: jiff::civil::DateTime = naive
        .replace(' ', "T")
        .parse()
        .with_context(|| format!("the newest event's time `{naive}` does not parse"))?;
    let in_sqlite = local
        .to_zoned_datetime(jiff::tz::TimeZone::get(REHEARSAL_ZONE)?)?
        .timestamp();
    let mut client = cluster.client("sentry")?;
    let epoch: f64 = client
        .query_one(
            "SELECT extract(epoch FROM max(datetime))::float8 FROM sentry_message",
            &[],
        )?
        .get(0);
    let in_postgres = jiff::Timestamp::from_second(epoch.floor() as i64)?;
    let apart = (in_postgres.as_second() - in_sqlite.as_second()).abs();
    ensure!(
        apart <= 1,
        "the newest event is {naive} in SQLite ({REHEARSAL_ZONE}: {in_sqlite}) but {in_postgres} in PostgreSQL: {apart} s apart, the dates were read in the wrong zone"
    );
    let age = migrate_started.as_second() - in_postgres.as_second();
    ensure!(
        (-60..=20 * 60).contains(&age),
        "the newest event is {in_postgres} in PostgreSQL, {age} s before the migration started: the events were sent minutes before it"
    );
    println!(
        "    dates: newest event {naive} in SQLite ({REHEARSAL_ZONE}) = {in_postgres} in PostgreSQL, sent {age} s before the migration"
    );
    Ok(())
}

/// The target database does not exist, or has no tables.
fn ensure_untouched(cluster: &PgCluster, dbname: &str) -> Result<()> {
    let exists: bool = cluster
        .client("postgres")?
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)",
            &[&dbname],
        )?
        .get(0);
    if exists {
        let tables: i64 = cluster
            .client(dbname)?
            .query_one(
                "SELECT count(*) FROM information_schema.tables \
                 WHERE table_schema NOT IN ('pg_catalog', 'information_schema')",
                &[],
            )?
            .get(0);
        ensure!(
            tables == 0,
            "`migrate` stopped at `scan-values` but database `{dbname}` already has {tables} tables"
        );
    }
    Ok(())
}

pub(super) fn read_report(root: &Path) -> Result<serde_json::Value> {
    let path = root.join("dumps/report.json");
    let text =
        fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))
}

/// report.json's `fit` covers every kind of value the rehearsal sent, and merged the tag
/// values a cut to 200 characters made equal.
fn check_fit(fit: &serde_json::Value) -> Result<()> {
    let changes = fit["changes"]
        .as_array()
        .context("dumps/report.json has no fit.changes after `migrate --fit-values`")?;
    let changed = |tables: &[&str], column: &str, kind: &str| {
        changes.iter().any(|change| {
            tables.iter().any(|table| change["table"] == *table)
                && change["column"] == column
                && change["kind"] == kind
        })
    };
    for (tables, column, kind) in [
        (&["sentry_message"][..], "server_name", "too-long"),
        (&["sentry_message"][..], "site", "too-long"),
        (
            &["sentry_filtervalue", "sentry_messagefiltervalue"][..],
            "value",
            "too-long",
        ),
        (&["sentry_message"][..], "message", "nul"),
        (&["sentry_groupedmessage"][..], "message", "nul"),
    ] {
        ensure!(
            changed(tables, column, kind),
            "fit.changes in dumps/report.json has no `{kind}` change of {}.{column}",
            tables.join(" or ")
        );
    }
    let merged = |table: &str| fit["merged"][table].as_u64().unwrap_or(0);
    ensure!(
        merged("sentry_filtervalue") > 0,
        "fit.merged in dumps/report.json merged no sentry_filtervalue row, yet the rehearsal sent tag values sharing their first 200 characters: {}",
        fit["merged"]
    );
    Ok(())
}

/// One line: the fitted values per kind and column, and the merged rows per table.
pub(super) fn fit_summary(fit: &serde_json::Value) -> String {
    let mut kinds: BTreeMap<String, u64> = BTreeMap::new();
    let mut columns: BTreeMap<String, u64> = BTreeMap::new();
    let changes = fit["changes"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    for change in changes {
        let text = |key: &str| change[key].as_str().unwrap_or("?").to_string();
        *kinds.entry(text("kind")).or_default() += 1;
        *columns
            .entry(format!("{}.{}", text("table"), text("column")))
            .or_default() += 1;
    }
    let list = |map: &BTreeMap<String, u64>| {
        map.iter()
            .map(|(name, n)| format!("{name} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let merged: BTreeMap<String, u64> = fit["merged"]
        .as_object()
        .map(|map| {
            map.iter()
                .map(|(table, n)| (table.clone(), n.as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default();
    format!(
        "fitted values: {} ({}) in {}; merged rows: {}",
        changes.len(),
        list(&kinds),
        list(&columns),
        if merged.is_empty() {
            "none".to_string()
        } else {
            list(&merged)
        }
    )
}

#[cfg(test)]
mod tests {
    use super::{check_fit, fit_summary};

    fn change(table: &str, column: &str, kind: &str) -> serde_json::Value {
        serde_json::json!({"table": table, "id": 1, "column": column, "kind": kind, "detail": ""})
    }

    fn fit(changes: Vec<serde_json::Value>, merged: serde_json::Value) -> serde_json::Value {
        serde_json::json!({"changes": changes, "merged": merged})
    }

    fn complete() -> Vec<serde_json::Value> {
        vec![
            change("sentry_message", "server_name", "too-long"),
            change("sentry_message", "site", "too-long"),
            change("sentry_messagefiltervalue", "value", "too-long"),
            change("sentry_message", "message", "nul"),
            change("sentry_groupedmessage", "message", "nul"),
        ]
    }

    #[test]
    fn a_fit_covering_every_kind_sent_passes_and_is_summed_up() {
        let fit = fit(
            complete(),
            serde_json::json!({"sentry_filtervalue": 8, "sentry_messagefiltervalue": 8}),
        );
        check_fit(&fit).unwrap();
        assert_eq!(
            fit_summary(&fit),
            "fitted values: 5 (nul 2, too-long 3) in sentry_groupedmessage.message 1, \
             sentry_message.message 1, sentry_message.server_name 1, sentry_message.site 1, \
             sentry_messagefiltervalue.value 1; merged rows: sentry_filtervalue 8, \
             sentry_messagefiltervalue 8"
        );
    }

    #[test]
    fn a_fit_missing_a_column_or_the_merge_fails() {
        let merged = serde_json::json!({"sentry_filtervalue": 2});
        let mut changes = complete();
        changes.retain(|c| c["column"] != "site");
        let err = check_fit(&fit(changes, merged.clone())).unwrap_err();
        assert!(err.to_string().contains("sentry_message.site"), "{err}");
        let mut changes = complete();
        changes.retain(|c| c["kind"] != "nul" || c["table"] != "sentry_message");
        let err = check_fit(&fit(changes, merged)).unwrap_err();
        assert!(err.to_string().contains("`nul`"), "{err}");
        let err = check_fit(&fit(complete(), serde_json::json!({}))).unwrap_err();
        assert!(
            err.to_string().contains("merged no sentry_filtervalue"),
            "{err}"
        );
        assert!(check_fit(&serde_json::json!(null)).is_err());
        assert_eq!(
            fit_summary(&serde_json::json!(null)),
            "fitted values: 0 () in ; merged rows: none"
        );
    }
}
