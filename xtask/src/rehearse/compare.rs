//! Both engines compared table by table: the loaddata engine's database and the copy engine's
//! hold the same rows, the columns Sentry stores encoded compared decoded.

use std::{collections::BTreeMap, path::Path};

use anyhow::{ensure, Context, Result};
use xshell::{cmd, Shell};

use super::run::log_run;
use crate::pgcluster::PgCluster;

/// The loaddata engine's database and the copy engine's hold the same rows: every table hashed
/// over its rows as JSON in a stable order, with the columns Sentry stores encoded (pickles,
/// gzipped pickles; loaddata re-encodes them) left out there and compared decoded, with Sentry's
/// own field code under bin/py.
pub(super) fn compare_engines(
    sh: &Shell,
    cluster: &PgCluster,
    loaddata_db: &str,
    copy_db: &str,
    logs: &Path,
    pg_env: &[(&'static str, String)],
) -> Result<()> {
    let out = log_run(
        cmd!(
            sh,
            "bin/py xtask/python/rehearse/compare_encoded.py settings/settings.py {loaddata_db} {copy_db}"
        )
        .envs(pg_env.iter().cloned()),
        &logs.join("compare-engines.log"),
    )?;
    let encoded: serde_json::Value =
        serde_json::from_str(out.trim()).context("compare_encoded.py printed no JSON")?;
    let columns = encoded["columns"]
        .as_object()
        .context("compare_encoded.py: no columns")?;
    let mut excluded: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut decoded = Vec::new();
    for (name, result) in columns {
        let (table, column) = name
            .split_once('.')
            .context("compare_encoded.py: a column without its table")?;
        excluded
            .entry(table.to_string())
            .or_default()
            .push(column.to_string());
        let differ = result["differ"].as_array().map(Vec::len).unwrap_or(0);
        ensure!(
            differ == 0 && result["rows"] == result["rows_b"],
            "{name} differs between the engines after decoding: {result}"
        );
        decoded.push(format!("{name} {}", result["rows"]));
    }
    // Django 1.4's JSON serializer writes datetimes to the millisecond, so loaddata drops the
    // microseconds the copy engine keeps: compared to the millisecond, and counted.
    let mut sub_millisecond = 0i64;
    let mut hashes = |dbname: &str,
                      count_truncated: bool|
     -> Result<BTreeMap<String, (i64, String)>> {
        let mut client = cluster.client(dbname)?;
        client.batch_execute("SET TIME ZONE 'UTC'")?;
        // Every table but this tool's load marker (which says which engine loaded).
        let tables = crate::pg::public_tables(&mut client)?;
        let mut out = BTreeMap::new();
        for table in tables {
            let leave_out: Vec<String> = excluded.get(&table).cloned().unwrap_or_default();
            let columns: Vec<(String, String)> = client
                .query(
                    "SELECT column_name::text, data_type::text FROM information_schema.columns \
                     WHERE table_schema = 'public' AND table_name = $1 ORDER BY ordinal_position",
                    &[&table],
                )?
                .iter()
                .map(|row| (row.get(0), row.get(1)))
                .filter(|(name, _): &(String, String)| !leave_out.contains(name))
                .collect();
            let quoted = crate::ident::Ident::table(table.clone())?.quoted();
            let exprs: Vec<String> = columns
                .iter()
                .map(|(name, ty)| {
                    let column = format!("\"{}\"", name.replace('"', ""));
                    if ty.starts_with("timestamp") {
                        format!("date_trunc('milliseconds', {column})")
                    } else {
                        column
                    }
                })
                .collect();
            let r = client.query_one(
                &format!(
                    "SELECT count(*), md5(coalesce(string_agg(r::text, E'\\n' ORDER BY r::text), '')) FROM (SELECT {} FROM {quoted}) r",
                    if exprs.is_empty() { "1".to_string() } else { exprs.join(", ") }
                ),
                &[],
            )?;
            if count_truncated {
                for (name, ty) in &columns {
                    if ty.starts_with("timestamp") {
                        let column = format!("\"{}\"", name.replace('"', ""));
                        let n: i64 = client
                            .query_one(
                                &format!("SELECT count(*) FROM {quoted} WHERE {column} <> date_trunc('milliseconds', {column})"),
                                &[],
                            )?
                            .get(0);
                        sub_millisecond += n;
                    }
                }
            }
            out.insert(table, (r.get(0), r.get(1)));
        }
        Ok(out)
    };
    let loaddata = hashes(loaddata_db, false)?;
    let copy = hashes(copy_db, true)?;
    let differ: Vec<String> = loaddata
        .keys()
        .chain(copy.keys())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .filter(|table| loaddata.get(*table) != copy.get(*table))
        .map(|table| {
            format!(
                "{table} (loaddata {:?}, copy {:?})",
                loaddata.get(table).map(|it| it.0),
                copy.get(table).map(|it| it.0)
            )
        })
        .collect();
    ensure!(
        differ.is_empty(),
        "the copy engine's database differs from the loaddata engine's in {} table(s): {}",
        differ.len(),
        differ.join(", ")
    );
    let rows: i64 = copy.values().map(|(n, _)| n).sum();
    println!(
        "    engines: loaddata and copy equal in all {} tables ({rows} rows, datetimes to the millisecond); decoded and equal: {}; \
         {sub_millisecond} datetimes keep microseconds in the copy that loaddata cuts to milliseconds",
        copy.len(),
        decoded.join(", ")
    );
    Ok(())
}
