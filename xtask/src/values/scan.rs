//! The value scan: one read of every checked column of the source, each value that PostgreSQL
//! (or Django reading SQLite) would reject found and counted per column and kind.

use std::{
    collections::BTreeMap,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use rusqlite::types::ValueRef;

use super::{
    column_type, columns,
    django::{django_date, django_datetime, sqlite_text, whole_i64, DjangoRead},
    ColumnType, Finding, Kind, Scan,
};
use crate::sqlite::{open_read_only, quote_ident};

/// The first problem of one value, if any (`longest` gets its length in characters).
fn check_value(ty: ColumnType, value: ValueRef<'_>) -> Option<(Kind, Option<u64>)> {
    match (ty, value) {
        (_, ValueRef::Null) | (ColumnType::Other, _) => None,
        (
            ColumnType::Varchar(_) | ColumnType::Text,
            ValueRef::Text(bytes) | ValueRef::Blob(bytes),
        ) => {
            let Ok(text) = std::str::from_utf8(bytes) else {
                return Some((Kind::InvalidUtf8, None));
            };
            if bytes.contains(&0) {
                return Some((Kind::Nul, None));
            }
            match ty {
                // Fewer bytes than the limit: fewer characters too, no need to count.
                ColumnType::Varchar(limit) if bytes.len() as u64 > limit => {
                    let chars = text.chars().count() as u64;
                    (chars > limit).then_some((Kind::TooLong, Some(chars)))
                }
                _ => None,
            }
        }
        (ColumnType::Varchar(_) | ColumnType::Text, _) => None,
        (ColumnType::Integer { min, max }, ValueRef::Integer(n)) => {
            (n < min || n > max).then_some((Kind::IntegerOutOfRange, None))
        }
        (ColumnType::Integer { min, max }, ValueRef::Real(x)) => match whole_i64(x) {
            None if x.fract() != 0.0 || x.is_nan() => Some((Kind::NotAnInteger, None)),
            Some(n) if (min..=max).contains(&n) => None,
            _ => Some((Kind::IntegerOutOfRange, None)),
        },
        (ColumnType::Integer { .. }, _) => Some((Kind::NotAnInteger, None)),
        // What Django reads as None (loaddata loads NULL) or cannot read at all.
        (ColumnType::Datetime | ColumnType::Date, value) => {
            let text = sqlite_text(value)?;
            let read = if ty == ColumnType::Datetime {
                django_datetime(&text)
            } else {
                django_date(&text)
            };
            (!matches!(read, DjangoRead::Value(_))).then_some((Kind::BadDate, None))
        }
    }
}

/// One pass per table over every column a check applies to. `tables`: the tables the model map
/// names (tables no model uses are not carried over, so not checked); missing ones are skipped.
pub fn scan(db: &Path, tables: &[String]) -> Result<Scan> {
    let started = Instant::now();
    let conn = open_read_only(db)?;
    let mut out = Scan::default();
    for table in tables {
        let cols = columns(&conn, table)
            .with_context(|| format!("cannot read the columns of {table} in {}", db.display()))?;
        if cols.is_empty() {
            continue;
        }
        out.tables += 1;
        let checked: Vec<(String, ColumnType)> = cols
            .iter()
            .map(|(name, declared)| (name.clone(), column_type(declared)))
            .filter(|(_, ty)| *ty != ColumnType::Other)
            .collect();
        let key = if cols.iter().any(|(name, _)| name == "id") {
            "\"id\""
        } else {
            "rowid"
        };
        let list: Vec<String> = checked.iter().map(|(name, _)| quote_ident(name)).collect();
        let sql = format!(
            "SELECT {key}{}{} FROM {}",
            if list.is_empty() { "" } else { ", " },
            list.join(", "),
            quote_ident(table)
        );
        let mut stmt = conn
            .prepare(&sql)
            .with_context(|| format!("cannot read {table} in {}", db.display()))?;
        let mut rows = stmt.query([])?;
        let mut found: BTreeMap<(usize, Kind), Finding> = BTreeMap::new();
        while let Some(row) = rows
            .next()
            .with_context(|| format!("cannot read {table} in {}", db.display()))?
        {
            out.rows += 1;
            for (index, (column, ty)) in checked.iter().enumerate() {
                let Some((kind, chars)) = check_value(*ty, row.get_ref(index + 1)?) else {
                    continue;
                };
                let id: i64 = row.get(0)?;
                let finding = found.entry((index, kind)).or_insert_with(|| Finding {
                    table: table.clone(),
                    column: column.clone(),
                    kind,
                    limit: match ty {
                        ColumnType::Varchar(n) if kind == Kind::TooLong => Some(*n),
                        _ => None,
                    },
                    longest: None,
                    ids: Vec::new(),
                    count: 0,
                });
                finding.ids.push(id);
                finding.count += 1;
                if let Some(chars) = chars {
                    finding.longest = Some(finding.longest.unwrap_or(0).max(chars));
                }
            }
        }
        out.findings.extend(found.into_values());
    }
    out.secs = started.elapsed().as_secs_f64();
    Ok(out)
}

/// One screen: per `table.column` and kind, how many, the longest against the limit, a few
/// ids, and what to do.
pub fn summary(scan: &Scan) -> String {
    let lines: Vec<String> = scan.findings.iter().map(finding_line).collect();
    lines.join("\n")
}

pub(super) fn finding_line(f: &Finding) -> String {
    let sample: Vec<String> = f.ids.iter().take(5).map(|id| id.to_string()).collect();
    let more = if f.count() > 5 { ", …" } else { "" };
    let length = match (f.longest, f.limit) {
        (Some(longest), Some(limit)) => format!(", longest {longest} > {limit} characters"),
        _ => String::new(),
    };
    format!(
        "{}.{}: {} value(s) {}{length} (ids {}{more})",
        f.table,
        f.column,
        f.count(),
        f.kind,
        sample.join(", ")
    )
}

/// How long a scan of `rows` rows took, for humans.
pub fn rate(scan: &Scan) -> String {
    let secs = Duration::from_secs_f64(scan.secs);
    format!(
        "{} tables, {} rows in {}",
        scan.tables,
        scan.rows,
        crate::util::human_duration(secs)
    )
}

#[cfg(test)]
mod tests {
    use rusqlite::{types::ValueRef, Connection};

    use super::{check_value, scan, summary};
    use crate::values::{fit, tests::sample_db, whole_i64, ColumnType, Kind, Scan};

    #[test]
    fn integers_are_never_saturated() {
        assert_eq!(whole_i64(3.0), Some(3));
        assert_eq!(whole_i64(-9_223_372_036_854_775_808.0), Some(i64::MIN));
        assert_eq!(whole_i64(9_223_372_036_854_775_808.0), None);
        assert_eq!(whole_i64(0.5), None);
        let big = ColumnType::Integer {
            min: i64::MIN,
            max: i64::MAX,
        };
        assert_eq!(
            check_value(big, ValueRef::Real(9_223_372_036_854_775_808.0)),
            Some((Kind::IntegerOutOfRange, None))
        );
        assert_eq!(check_value(big, ValueRef::Real(2.0)), None);
        assert_eq!(
            check_value(big, ValueRef::Real(2.5)),
            Some((Kind::NotAnInteger, None))
        );
    }

    #[test]
    fn each_kind_of_bad_value_is_found_once_per_column() {
        let dir = tempfile::tempdir().unwrap();
        let db = sample_db(dir.path());
        let tables = [
            "sentry_message".to_string(),
            "sentry_messagefiltervalue".to_string(),
            "no_such_table".to_string(),
        ];
        let scan = scan(&db, &tables).unwrap();
        let found: Vec<(String, Kind, Vec<i64>)> = scan
            .findings
            .iter()
            .map(|f| (format!("{}.{}", f.table, f.column), f.kind, f.ids.clone()))
            .collect();
        assert_eq!(
            found,
            [
                ("sentry_message.server_name".into(), Kind::TooLong, vec![2]),
                ("sentry_message.message".into(), Kind::Nul, vec![3]),
                ("sentry_message.message".into(), Kind::InvalidUtf8, vec![4]),
                (
                    "sentry_message.level".into(),
                    Kind::IntegerOutOfRange,
                    vec![3, 4]
                ),
                ("sentry_message.datetime".into(), Kind::BadDate, vec![3]),
                (
                    "sentry_messagefiltervalue.value".into(),
                    Kind::TooLong,
                    vec![10, 11, 12]
                ),
            ]
        );
        assert_eq!((scan.tables, scan.rows), (2, 7));
        let text = summary(&scan);
        assert!(
            text.contains("sentry_message.server_name: 1 value(s) longer than the column allows, longest 13 > 8 characters (ids 2)"),
            "{text}"
        );
        // Unfittable kinds stop the fit, naming them; nothing is written.
        let err = fit(&db, &scan).unwrap_err().to_string();
        assert!(
            err.contains(
                "sentry_message.level: 2 value(s) outside the column's integer range (ids 3, 4)"
            ),
            "{err}"
        );
    }

    /// The scan flags what Django reads as None (loaddata would load NULL, or fail on NOT NULL)
    /// or cannot read, and passes what Django reads, with the same reader as the copy engine.
    #[test]
    fn the_scan_flags_dates_as_django_reads_them() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("dates.db");
        let conn = Connection::open(&db).unwrap();
        conn.execute_batch(
            "CREATE TABLE sentry_message (id integer PRIMARY KEY, datetime datetime NOT NULL, day date);
             INSERT INTO sentry_message VALUES
               (1, '2012-04-23 10:20:30+0100', '2012-4-9'),
               (2, '2012-04-23 10:20:30' || char(10), '2012-04-09' || char(10)),
               (3, '2012-04-23 10:20:30+1:0', '2012-02-30'),
               (4, '2012-4-9 4:8:16', '2012-04-09 10:00'),
               (5, 20120423, 'yesterday');",
        )
        .unwrap();
        drop(conn);
        let found: Vec<(String, Vec<i64>)> = scan(&db, &["sentry_message".to_string()])
            .unwrap()
            .findings
            .iter()
            .map(|f| (f.column.clone(), f.ids.clone()))
            .collect();
        assert_eq!(
            found,
            [
                ("datetime".to_string(), vec![1, 3, 5]),
                ("day".to_string(), vec![3, 4, 5])
            ]
        );
    }

    #[test]
    fn counts_are_whole_where_only_a_few_ids_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("many.db");
        let conn = Connection::open(&db).unwrap();
        conn.execute_batch(
            "CREATE TABLE sentry_message (id integer PRIMARY KEY, server_name varchar(2));
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 500)
             INSERT INTO sentry_message SELECT i, 'too long' FROM n;",
        )
        .unwrap();
        drop(conn);
        let kept = scan(&db, &["sentry_message".to_string()])
            .unwrap()
            .with_examples(20);
        assert_eq!(kept.findings[0].ids.len(), 20);
        let text = summary(&kept);
        assert!(
            text.starts_with("sentry_message.server_name: 500 value(s) longer"),
            "{text}"
        );
        // What the journal stores reads back the same.
        let json = serde_json::to_string(&kept).unwrap();
        let back: Scan = serde_json::from_str(&json).unwrap();
        assert_eq!(summary(&back), text);
    }
}
