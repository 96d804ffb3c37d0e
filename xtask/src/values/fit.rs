//! The fit (`--fit-values`): in a working copy, never the source, the fittable values cut,
//! cleaned of NULs and invalid UTF-8 as Sentry 6 does it, rows a cut made equal on a unique key
//! merged as Sentry counts them, every changed row recorded.

use std::{collections::BTreeMap, path::Path};

use anyhow::{bail, Context, Result};
use rusqlite::Connection;
use serde::{Deserialize, Serialize};

use super::{column_type, columns, scan::finding_line, ColumnType, Finding, Kind, Scan};
use crate::sqlite::quote_ident;

/// What `--fit-values` does to a text value, as Sentry 6 does it where it does: NUL characters
/// removed, invalid UTF-8 replaced with U+FFFD, and a value over `limit` characters cut the way
/// Sentry 6's `truncatechars` cuts culprits (the first `limit - 3` characters and `...`).
/// Returns the new text and what was done, or `None` when the value is fine.
pub fn fit_text(bytes: &[u8], limit: Option<u64>) -> Option<(String, Vec<String>)> {
    let mut done = Vec::new();
    let mut text = match std::str::from_utf8(bytes) {
        Ok(text) => text.to_string(),
        Err(_) => {
            done.push("replaced invalid UTF-8 with U+FFFD".to_string());
            String::from_utf8_lossy(bytes).into_owned()
        }
    };
    let nuls = text.matches('\0').count();
    if nuls > 0 {
        text = text.replace('\0', "");
        done.push(format!("removed {nuls} NUL character(s)"));
    }
    if let Some(limit) = limit {
        let chars = text.chars().count() as u64;
        if chars > limit {
            text = cut(&text, limit as usize);
            done.push(format!(
                "cut from {chars} to {limit} characters (first {} and `...`, as Sentry 6 truncates)",
                limit.saturating_sub(3)
            ));
        }
    }
    (!done.is_empty()).then_some((text, done))
}

/// `text` in at most `limit` characters, on a character boundary: the first `limit - 3`
/// characters and `...` (Sentry 6's `truncatechars`); a limit under 4 keeps a plain prefix.
pub fn cut(text: &str, limit: usize) -> String {
    if text.chars().count() <= limit {
        return text.to_string();
    }
    if limit < 4 {
        return text.chars().take(limit).collect();
    }
    let mut out: String = text.chars().take(limit - 3).collect();
    out.push_str("...");
    out
}

/// A changed row, as the report and the journal list it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub table: String,
    pub id: i64,
    pub column: String,
    pub kind: Kind,
    pub detail: String,
}

/// Rows folded into another after a cut made them equal on a unique key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Merge {
    pub table: String,
    /// The row that stays (the lowest id).
    pub kept: i64,
    pub removed: Vec<i64>,
    pub detail: String,
}

/// Everything the fit did to the working copy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fit {
    pub changes: Vec<Change>,
    pub merges: Vec<Merge>,
    /// Rows removed by merges, per table: how far a table may differ from the source.
    pub merged: BTreeMap<String, u64>,
}

/// PostgreSQL's unique keys of Sentry 4.10's tables that hold text a fit may change (SQLite
/// keeps other, sometimes stale, unique indexes: they are not the target's rules).
const UNIQUE_KEYS: &[(&str, &[&str])] = &[
    ("sentry_filtervalue", &["project_id", "key", "value"]),
    (
        "sentry_messagefiltervalue",
        &["project_id", "group_id", "key", "value"],
    ),
    ("sentry_filterkey", &["project_id", "key"]),
    (
        "sentry_groupedmessage",
        &["project_id", "checksum", "logger", "view"],
    ),
    ("sentry_message", &["project_id", "message_id"]),
    ("sentry_searchtoken", &["document_id", "field", "token"]),
    ("sentry_projectoptions", &["project_id", "key"]),
    ("sentry_useroption", &["user_id", "project_id", "key"]),
    ("sentry_groupmeta", &["group_id", "key"]),
    ("sentry_option", &["key"]),
    ("sentry_team", &["slug"]),
    ("sentry_project", &["slug"]),
    ("sentry_projectkey", &["public_key"]),
    ("sentry_projectkey", &["secret_key"]),
    ("sentry_view", &["path"]),
    ("auth_user", &["username"]),
];

/// Tables whose collided rows are merged the way Sentry counts them (tag values per project and
/// per group); a collision anywhere else stops the fit.
const MERGEABLE: &[&str] = &["sentry_filtervalue", "sentry_messagefiltervalue"];

/// Fits every fittable finding of `scan` in `working` (a copy of the source, never the source):
/// one transaction, then an integrity check. Refuses findings it cannot fit.
pub fn fit(working: &Path, scan: &Scan) -> Result<Fit> {
    let unfittable: Vec<&Finding> = scan
        .findings
        .iter()
        .filter(|f| !f.kind.fittable())
        .collect();
    if !unfittable.is_empty() {
        let lines: Vec<String> = unfittable.iter().map(|f| finding_line(f)).collect();
        bail!(
            "these values cannot be fitted automatically (fix them in the source with Sentry 4 stopped, then redo):\n    {}",
            lines.join("\n    ")
        );
    }
    let mut conn = Connection::open(working)
        .with_context(|| format!("cannot open the working copy {}", working.display()))?;
    let tx = conn.transaction()?;
    // Text findings of one row are fitted together (a value may be long and hold a NUL).
    let mut rows: BTreeMap<(String, String), BTreeMap<i64, Vec<Kind>>> = BTreeMap::new();
    let mut limits: BTreeMap<(String, String), Option<u64>> = BTreeMap::new();
    for f in &scan.findings {
        let key = (f.table.clone(), f.column.clone());
        if f.limit.is_some() {
            limits.insert(key.clone(), f.limit);
        }
        limits.entry(key.clone()).or_insert(None);
        for id in &f.ids {
            rows.entry(key.clone())
                .or_default()
                .entry(*id)
                .or_default()
                .push(f.kind);
        }
    }
    // SQLite's own unique indexes are not the target's rules (long-lived dbs keep stale ones,
    // such as `sentry_filtervalue (key, value)` without the project): in the working copy they
    // go, and PostgreSQL's keys are checked below instead. The dumps carry no indexes.
    let fitted_tables: std::collections::BTreeSet<&String> = rows.keys().map(|(t, _)| t).collect();
    for table in fitted_tables {
        let indexes: Vec<String> = tx
            .prepare(&format!("PRAGMA index_list({})", quote_ident(table)))?
            .query_map([], |row| {
                Ok((
                    row.get::<_, String>(1)?,
                    row.get::<_, bool>(2)?,
                    row.get::<_, String>(3)?,
                ))
            })?
            .filter_map(|it| it.ok())
            .filter(|(_, unique, origin)| *unique && origin == "c")
            .map(|(name, _, _)| name)
            .collect();
        for index in indexes {
            tx.execute_batch(&format!("DROP INDEX {}", quote_ident(&index)))
                .with_context(|| format!("cannot drop index {index} in the working copy"))?;
        }
    }
    let mut out = Fit::default();
    for ((table, column), ids) in &rows {
        let limit = limit_of(&tx, table, column)?.or(limits[&(table.clone(), column.clone())]);
        let key = row_key(&tx, table)?;
        for (id, kinds) in ids {
            let bytes: Option<Vec<u8>> = tx
                .query_row(
                    &format!(
                        "SELECT CAST({} AS BLOB) FROM {} WHERE {key} = ?1",
                        quote_ident(column),
                        quote_ident(table)
                    ),
                    [id],
                    |row| row.get(0),
                )
                .with_context(|| format!("cannot read {table}.{column} of row {id}"))?;
            // The row may be gone already, merged into another.
            let Some(bytes) = bytes else { continue };
            let Some((text, done)) = fit_text(&bytes, limit) else {
                continue;
            };
            let kind = kinds.iter().copied().min().unwrap_or(Kind::TooLong);
            if MERGEABLE.contains(&table.as_str()) && column == "value" {
                if let Some(merge) = merge_into(&tx, table, *id, column, &text)? {
                    let folded = merge.kept != *id;
                    out.merges.push(merge);
                    if folded {
                        // This row now lives on in its twin, which holds the fitted text.
                        continue;
                    }
                }
            }
            set_text(&tx, table, key, column, *id, &text)?;
            out.changes.push(Change {
                table: table.clone(),
                id: *id,
                column: column.clone(),
                kind,
                detail: done.join("; "),
            });
        }
    }
    check_unique_keys(&tx, &out.changes)?;
    for merge in &out.merges {
        *out.merged.entry(merge.table.clone()).or_default() += merge.removed.len() as u64;
    }
    tx.commit()
        .with_context(|| format!("cannot save the fitted values in {}", working.display()))?;
    let check: String = conn.query_row("PRAGMA integrity_check", [], |row| row.get(0))?;
    if check != "ok" {
        bail!(
            "the working copy {} fails its integrity check after the fit: {check}",
            working.display()
        );
    }
    Ok(out)
}

fn limit_of(conn: &Connection, table: &str, column: &str) -> Result<Option<u64>> {
    Ok(columns(conn, table)?
        .into_iter()
        .find(|(name, _)| name == column)
        .and_then(|(_, declared)| match column_type(&declared) {
            ColumnType::Varchar(n) => Some(n),
            _ => None,
        }))
}

fn row_key(conn: &Connection, table: &str) -> Result<&'static str> {
    Ok(
        if columns(conn, table)?.iter().any(|(name, _)| name == "id") {
            "\"id\""
        } else {
            "rowid"
        },
    )
}

fn set_text(
    conn: &Connection,
    table: &str,
    key: &str,
    column: &str,
    id: i64,
    text: &str,
) -> Result<()> {
    conn.execute(
        &format!(
            "UPDATE {} SET {} = ?1 WHERE {key} = ?2",
            quote_ident(table),
            quote_ident(column)
        ),
        rusqlite::params![text, id],
    )
    .with_context(|| {
        format!(
            "cannot write the fitted {table}.{column} of row {id} into the working copy: it collides with another row on a unique index; \
             this row needs a decision by hand"
        )
    })?;
    Ok(())
}

/// Before `id`'s `column` becomes `text`: the rows of `table` that would then be equal to it on
/// PostgreSQL's unique key are folded into the lowest id, as Sentry counts them (`times_seen`
/// summed, earliest `first_seen`, latest `last_seen`), and whatever pointed at a removed row
/// points at the kept one.
fn merge_into(
    conn: &Connection,
    table: &str,
    id: i64,
    column: &str,
    text: &str,
) -> Result<Option<Merge>> {
    let key = UNIQUE_KEYS
        .iter()
        .find(|(t, _)| *t == table)
        .map(|(_, cols)| *cols)
        .unwrap_or_default();
    let others: Vec<&str> = key.iter().copied().filter(|c| *c != column).collect();
    let mut condition = vec![format!("{} = ?1", quote_ident(column))];
    for other in &others {
        condition.push(format!(
            "{c} IS (SELECT {c} FROM {t} WHERE id = ?2)",
            c = quote_ident(other),
            t = quote_ident(table)
        ));
    }
    let sql = format!(
        "SELECT id FROM {} WHERE id <> ?2 AND {}",
        quote_ident(table),
        condition.join(" AND ")
    );
    let twins: Vec<i64> = conn
        .prepare(&sql)?
        .query_map(rusqlite::params![text, id], |row| row.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    if twins.is_empty() {
        return Ok(None);
    }
    let mut all = twins.clone();
    all.push(id);
    all.sort_unstable();
    let kept = all[0];
    let removed: Vec<i64> = all[1..].to_vec();
    let cols: Vec<String> = columns(conn, table)?.into_iter().map(|(n, _)| n).collect();
    let ids = all
        .iter()
        .map(|it| it.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let mut sets = Vec::new();
    let mut detail = Vec::new();
    for (col, agg, what) in [
        ("times_seen", "SUM", "times_seen summed"),
        ("first_seen", "MIN", "earliest first_seen"),
        ("last_seen", "MAX", "latest last_seen"),
    ] {
        if cols.iter().any(|c| c == col) {
            sets.push(format!(
                "{c} = (SELECT {agg}({c}) FROM {t} WHERE id IN ({ids}))",
                c = quote_ident(col),
                t = quote_ident(table)
            ));
            detail.push(what);
        }
    }
    if !sets.is_empty() {
        conn.execute(
            &format!(
                "UPDATE {} SET {} WHERE id = ?1",
                quote_ident(table),
                sets.join(", ")
            ),
            [kept],
        )?;
    }
    let removed_list = removed
        .iter()
        .map(|it| it.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    for (referrer, fk) in references_to(conn, table)? {
        conn.execute(
            &format!(
                "UPDATE {} SET {} = ?1 WHERE {} IN ({removed_list})",
                quote_ident(&referrer),
                quote_ident(&fk),
                quote_ident(&fk)
            ),
            [kept],
        )?;
        detail.push("references re-pointed");
    }
    conn.execute(
        &format!(
            "DELETE FROM {} WHERE id IN ({removed_list})",
            quote_ident(table)
        ),
        [],
    )?;
    Ok(Some(Merge {
        table: table.to_string(),
        kept,
        removed,
        detail: if detail.is_empty() {
            "equal after the cut: duplicates removed".into()
        } else {
            format!("equal after the cut: {}", detail.join(", "))
        },
    }))
}

/// `(table, column)` pairs whose foreign key points at `table`.
fn references_to(conn: &Connection, table: &str) -> Result<Vec<(String, String)>> {
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")?
        .query_map([], |row| row.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let mut out = Vec::new();
    for other in tables {
        let mut stmt =
            conn.prepare(&format!("PRAGMA foreign_key_list({})", quote_ident(&other)))?;
        let fks: Vec<(String, String)> = stmt
            .query_map([], |row| Ok((row.get(2)?, row.get(3)?)))?
            .collect::<rusqlite::Result<_>>()?;
        for (target, from) in fks {
            if target == table {
                out.push((other.clone(), from));
            }
        }
    }
    Ok(out)
}

/// After the fit, no changed row may share PostgreSQL's unique key with another row: the load
/// would fail on it. (Tag values were merged; anything else needs a decision by hand.)
fn check_unique_keys(conn: &Connection, changes: &[Change]) -> Result<()> {
    let mut problems = Vec::new();
    for change in changes {
        for (table, key) in UNIQUE_KEYS {
            if *table != change.table || !key.contains(&change.column.as_str()) {
                continue;
            }
            let condition: Vec<String> = key
                .iter()
                .map(|c| {
                    format!(
                        "{c} IS (SELECT {c} FROM {t} WHERE id = ?1)",
                        c = quote_ident(c),
                        t = quote_ident(table)
                    )
                })
                .collect();
            let twins: i64 = conn.query_row(
                &format!(
                    "SELECT count(*) FROM {} WHERE id <> ?1 AND {}",
                    quote_ident(table),
                    condition.join(" AND ")
                ),
                [change.id],
                |row| row.get(0),
            )?;
            if twins > 0 {
                problems.push(format!(
                    "{table} row {}: after fitting {} it equals {twins} other row(s) on ({})",
                    change.id,
                    change.column,
                    key.join(", ")
                ));
            }
        }
    }
    if !problems.is_empty() {
        bail!(
            "fitting would break a unique key PostgreSQL enforces, and these rows are not merged automatically:\n    {}",
            problems.join("\n    ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use rusqlite::Connection;

    use super::{cut, fit, fit_text};
    use crate::values::{scan, tests::sample_db};

    #[test]
    fn cuts_on_character_boundaries_the_way_sentry_6_truncates() {
        assert_eq!(cut("abcdef", 6), "abcdef");
        assert_eq!(cut("abcdefg", 6), "abc...");
        // 4-byte characters count as one, as PostgreSQL counts them.
        let emoji = "😀".repeat(10);
        let cut_emoji = cut(&emoji, 8);
        assert_eq!(cut_emoji, format!("{}...", "😀".repeat(5)));
        assert_eq!(cut_emoji.chars().count(), 8);
        assert_eq!(cut("ünïcödé", 3), "ünï");
        let (text, done) = fit_text("é".repeat(130).as_bytes(), Some(128)).unwrap();
        assert_eq!(text.chars().count(), 128);
        assert!(text.ends_with("é..."), "{text}");
        assert_eq!(
            done,
            ["cut from 130 to 128 characters (first 125 and `...`, as Sentry 6 truncates)"]
        );
        assert_eq!(fit_text("é".repeat(128).as_bytes(), Some(128)), None);
    }

    #[test]
    fn nul_and_invalid_utf8_are_fitted() {
        let (text, done) = fit_text(b"before\0after\0", None).unwrap();
        assert_eq!(text, "beforeafter");
        assert_eq!(done, ["removed 2 NUL character(s)"]);
        let (text, done) = fit_text(b"caf\xe9 \xff", None).unwrap();
        assert_eq!(text, "caf\u{FFFD} \u{FFFD}");
        assert_eq!(done, ["replaced invalid UTF-8 with U+FFFD"]);
        assert_eq!(fit_text("fine ✓".as_bytes(), Some(10)), None);
    }

    #[test]
    fn collided_tag_values_merge_as_sentry_counts_them() {
        let dir = tempfile::tempdir().unwrap();
        let db = sample_db(dir.path());
        let conn = Connection::open(&db).unwrap();
        // Only fittable problems left.
        conn.execute_batch("DELETE FROM sentry_message WHERE id IN (3, 4)")
            .unwrap();
        drop(conn);
        let tables = [
            "sentry_message".to_string(),
            "sentry_messagefiltervalue".to_string(),
        ];
        let found = scan(&db, &tables).unwrap();
        let fitted = fit(&db, &found).unwrap();
        // 10 and 11 (same project, group and key) both become `http:...`: 11 folds into 10;
        // 12 is another group: cut, not merged.
        assert_eq!(
            fitted.merged,
            BTreeMap::from([("sentry_messagefiltervalue".to_string(), 1)])
        );
        assert_eq!(fitted.merges[0].kept, 10);
        assert_eq!(fitted.merges[0].removed, [11]);
        let conn = Connection::open(&db).unwrap();
        let row: (String, i64, String, String) = conn
            .query_row(
                "SELECT value, times_seen, first_seen, last_seen FROM sentry_messagefiltervalue WHERE id = 10",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .unwrap();
        assert_eq!(
            row,
            (
                "http:...".to_string(),
                5,
                "2012-01-01 00:00:00".to_string(),
                "2012-01-05 00:00:00".to_string()
            )
        );
        let pointer: i64 = conn
            .query_row("SELECT mfv_id FROM sentry_pointer", [], |r| r.get(0))
            .unwrap();
        assert_eq!(
            pointer, 10,
            "references to the removed row point at the kept one"
        );
        let value: String = conn
            .query_row(
                "SELECT value FROM sentry_messagefiltervalue WHERE id = 12",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(value, "http:...");
        let server: String = conn
            .query_row(
                "SELECT server_name FROM sentry_message WHERE id = 2",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(server, "much-...");
        let changed: Vec<(String, i64)> = fitted
            .changes
            .iter()
            .map(|c| (format!("{}.{}", c.table, c.column), c.id))
            .collect();
        assert_eq!(
            changed,
            [
                ("sentry_message.server_name".to_string(), 2),
                ("sentry_messagefiltervalue.value".to_string(), 10),
                ("sentry_messagefiltervalue.value".to_string(), 12),
            ]
        );
        // Fitted: a second scan finds nothing.
        assert!(scan(&db, &tables).unwrap().findings.is_empty());
    }

    #[test]
    fn a_stale_sqlite_index_does_not_block_values_postgres_accepts() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("stale.db");
        let conn = Connection::open(&db).unwrap();
        // A long-lived db's SQLite-only UNIQUE (key, value), without the project.
        conn.execute_batch(
            "CREATE TABLE sentry_filtervalue (id integer PRIMARY KEY, project_id INTEGER, key varchar(32), value varchar(8));
             CREATE UNIQUE INDEX stale ON sentry_filtervalue (key, value);
             INSERT INTO sentry_filtervalue VALUES (1, 1, 'url', 'http://a/1'), (2, 2, 'url', 'http://a/2');",
        )
        .unwrap();
        drop(conn);
        let tables = ["sentry_filtervalue".to_string()];
        let fitted = fit(&db, &scan(&db, &tables).unwrap()).unwrap();
        // Two projects: equal values are fine on PostgreSQL's key, so nothing merges.
        assert!(fitted.merges.is_empty(), "{fitted:?}");
        assert_eq!(fitted.changes.len(), 2);
    }
}
