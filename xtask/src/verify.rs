//! Row-count comparisons after each phase, with a verdict and an explanation per table.

use std::collections::BTreeMap;

pub use crate::check::{cell, failures, tally, TableCheck, Tally, Verdict};
use crate::merge::Merge;

fn check(
    table: &str,
    expected: Option<u64>,
    actual: Option<u64>,
    verdict: Verdict,
    note: impl Into<String>,
) -> TableCheck {
    TableCheck {
        table: table.to_string(),
        expected,
        actual,
        verdict,
        note: note.into(),
    }
}

/// Objects in the dumps (per table, via the model map) against SQLite's rows.
/// `merged`: rows the value fit folded into their twins, per table (the only rows a dump may
/// lack).
pub fn dumps_vs_sqlite(
    dump_rows: &BTreeMap<String, u64>,
    sqlite: &BTreeMap<String, u64>,
    merged: &BTreeMap<String, u64>,
) -> Vec<TableCheck> {
    let mut out = Vec::new();
    for (table, &dumped) in dump_rows {
        let folded = merged.get(table).copied().unwrap_or(0);
        out.push(match sqlite.get(table) {
            Some(&rows) if rows == dumped => {
                check(table, Some(rows), Some(dumped), Verdict::Equal, "")
            }
            Some(&rows) if folded > 0 && rows.checked_sub(folded) == Some(dumped) => check(
                table,
                Some(rows),
                Some(dumped),
                Verdict::Intended,
                format!("-{folded}: rows --fit-values merged into their twins after a cut made them equal (listed in the report)"),
            ),
            Some(&rows) => check(
                table,
                Some(rows),
                Some(dumped),
                Verdict::Differs,
                format!("SQLite has {rows} rows, the dumps {dumped}"),
            ),
            None if dumped == 0 => check(
                table,
                None,
                Some(0),
                Verdict::Equal,
                "no table in SQLite, no objects",
            ),
            None => check(
                table,
                None,
                Some(dumped),
                Verdict::Differs,
                "the dumps hold objects of a table SQLite does not have",
            ),
        });
    }
    for (table, &rows) in sqlite {
        if !dump_rows.contains_key(table) {
            out.push(check(
                table,
                Some(rows),
                None,
                Verdict::NotCarriedOver,
                format!("only in SQLite (no Sentry 4 model uses it): {rows} rows not carried over"),
            ));
        }
    }
    out
}

/// PostgreSQL after the load against what the dumps hold (= SQLite's rows).
pub fn postgres_vs_dumps(
    dump_rows: &BTreeMap<String, u64>,
    pg: &BTreeMap<String, u64>,
) -> Vec<TableCheck> {
    let mut out = Vec::new();
    for (table, &expected) in dump_rows {
        out.push(match pg.get(table) {
            Some(&rows) if rows == expected => {
                check(table, Some(expected), Some(rows), Verdict::Equal, "")
            }
            Some(&rows) if rows > expected => check(
                table,
                Some(expected),
                Some(rows),
                Verdict::Differs,
                format!("{} rows more than SQLite", rows - expected),
            ),
            Some(&rows) => check(
                table,
                Some(expected),
                Some(rows),
                Verdict::Differs,
                format!("{} rows lost", expected - rows),
            ),
            None if expected == 0 => check(
                table,
                Some(0),
                None,
                Verdict::Equal,
                "empty in SQLite, no table in PostgreSQL",
            ),
            None => check(
                table,
                Some(expected),
                None,
                Verdict::Differs,
                "table missing in PostgreSQL",
            ),
        });
    }
    for (table, &rows) in pg {
        if !dump_rows.contains_key(table) {
            let verdict = if rows == 0 {
                Verdict::Equal
            } else {
                Verdict::Differs
            };
            out.push(check(
                table,
                Some(0),
                Some(rows),
                verdict,
                "a PostgreSQL table no dumped model maps to",
            ));
        }
    }
    out
}

/// Facts about the migrated data that bound Sentry 6's intended changes.
#[derive(Debug, Clone, Default)]
pub struct Sentry6Facts {
    pub projects: u64,
    /// Events whose group does not exist (must be 0).
    pub orphan_events: u64,
    /// What migration 0083's merge of duplicate groups did.
    pub merge: Merge,
}

/// How Sentry 6's `upgrade` may change a table on purpose.
enum Rule {
    /// Must not change: losing or adding rows here is loss or corruption.
    Unchanged,
    /// May gain up to one row per project (new project keys; a team for a project without one).
    GrowPerProject(&'static str),
    /// May gain rows (new content types, permissions, migration history).
    Grow(&'static str),
    /// Dropped by a migration.
    Dropped(&'static str),
}

fn rule(table: &str) -> Rule {
    match table {
        "sentry_projectkey" => Rule::GrowPerProject("Sentry 6 adds a key to each project"),
        "sentry_team" => Rule::GrowPerProject("Sentry 6 makes a team for each project without one"),
        "django_content_type" => Rule::Grow("Sentry 6's new models add content types"),
        "auth_permission" => Rule::Grow("Sentry 6's new models add permissions"),
        "south_migrationhistory" => Rule::Grow("one row per applied Sentry 6 migration"),
        "sentry_view" | "sentry_groupedmessage_views" => Rule::Dropped("Sentry 6 drops views"),
        _ => Rule::Unchanged,
    }
}

/// PostgreSQL after Sentry 6's upgrade against the loaded counts: intended deltas only.
pub fn sentry6_vs_loaded(
    loaded: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
    facts: &Sentry6Facts,
) -> Vec<TableCheck> {
    let mut out = Vec::new();
    for (table, &before) in loaded {
        let now = after.get(table).copied();
        let c = |verdict, note: String| check(table, Some(before), now, verdict, note);
        out.push(match (rule(table), now) {
            (_, Some(rows)) if rows == before => c(Verdict::Equal, String::new()),
            (Rule::Dropped(why), None) => c(Verdict::Intended, format!("table dropped: {why}")),
            (_, None) => c(Verdict::Differs, "table gone after the upgrade".into()),
            (Rule::GrowPerProject(why), Some(rows))
                if rows > before && rows - before <= facts.projects =>
            {
                c(
                    Verdict::Intended,
                    format!("+{}: {why} ({} project(s))", rows - before, facts.projects),
                )
            }
            (Rule::Grow(why), Some(rows)) if rows > before => {
                c(Verdict::Intended, format!("+{}: {why}", rows - before))
            }
            (_, Some(rows)) if rows > before => c(
                Verdict::Differs,
                format!("+{} rows Sentry 6 is not known to add", rows - before),
            ),
            (_, Some(rows)) => match facts.merge.explains(table, before, rows) {
                Some(why) => c(Verdict::Intended, why),
                None => c(Verdict::Differs, facts.merge.loss(table, before - rows)),
            },
        });
    }
    for (table, &rows) in after {
        if !loaded.contains_key(table) {
            out.push(check(
                table,
                None,
                Some(rows),
                Verdict::Intended,
                "new table created by Sentry 6's upgrade",
            ));
        }
    }
    let orphans = facts.orphan_events;
    out.push(check(
        "(events without a group)",
        Some(0),
        Some(orphans),
        if orphans == 0 {
            Verdict::Equal
        } else {
            Verdict::Differs
        },
        if orphans == 0 {
            "every event points at an existing group".to_string()
        } else {
            format!("{orphans} events point at a missing group")
        },
    ));
    out.extend(facts.merge.invariants());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
        pairs.iter().map(|(t, n)| (t.to_string(), *n)).collect()
    }

    fn verdicts(checks: &[TableCheck]) -> Vec<(String, Verdict)> {
        checks
            .iter()
            .map(|c| (c.table.clone(), c.verdict))
            .collect()
    }

    #[test]
    fn dumps_must_match_sqlite_and_leftovers_are_reported() {
        let checks = dumps_vs_sqlite(
            &counts(&[("auth_user", 3), ("sentry_message", 10)]),
            &counts(&[
                ("auth_user", 3),
                ("sentry_message", 11),
                ("auth_message", 4),
            ]),
            &BTreeMap::new(),
        );
        assert_eq!(
            verdicts(&checks),
            vec![
                ("auth_user".into(), Verdict::Equal),
                ("sentry_message".into(), Verdict::Differs),
                ("auth_message".into(), Verdict::NotCarriedOver)
            ]
        );
        assert!(checks[2].note.contains("4 rows not carried over"));
    }

    #[test]
    fn dumps_may_lack_exactly_the_rows_the_fit_merged() {
        let sqlite = counts(&[("sentry_filtervalue", 10), ("sentry_message", 5)]);
        let merged = counts(&[("sentry_filtervalue", 2)]);
        let checks = dumps_vs_sqlite(
            &counts(&[("sentry_filtervalue", 8), ("sentry_message", 5)]),
            &sqlite,
            &merged,
        );
        assert!(failures(&checks).is_empty(), "{checks:#?}");
        assert_eq!(checks[0].verdict, Verdict::Intended);
        assert!(checks[0].note.starts_with("-2: rows --fit-values merged"));
        // One more row missing than the fit merged: loss.
        let checks = dumps_vs_sqlite(
            &counts(&[("sentry_filtervalue", 7), ("sentry_message", 5)]),
            &sqlite,
            &merged,
        );
        assert_eq!(failures(&checks).len(), 1);
    }

    #[test]
    fn postgres_must_equal_the_dumps_exactly() {
        let dumped = counts(&[("sentry_projectkey", 5), ("sentry_message", 10)]);
        assert!(failures(&postgres_vs_dumps(&dumped, &dumped)).is_empty());
        let extra = postgres_vs_dumps(
            &dumped,
            &counts(&[("sentry_projectkey", 12), ("sentry_message", 10)]),
        );
        assert_eq!(failures(&extra).len(), 1);
        assert_eq!(
            extra
                .iter()
                .find(|c| c.table == "sentry_projectkey")
                .unwrap()
                .note,
            "7 rows more than SQLite"
        );
        let lost = postgres_vs_dumps(
            &dumped,
            &counts(&[
                ("sentry_projectkey", 5),
                ("sentry_message", 9),
                ("sentry_other", 1),
            ]),
        );
        assert_eq!(
            failures(&lost)
                .iter()
                .map(|c| c.table.as_str())
                .collect::<Vec<_>>(),
            ["sentry_message", "sentry_other"]
        );
    }

    #[test]
    fn sentry6_deltas_intended_versus_loss() {
        let loaded = counts(&[
            ("sentry_projectkey", 4),
            ("sentry_team", 2),
            ("sentry_message", 100),
            ("sentry_groupedmessage", 20),
            ("sentry_groupbookmark", 5),
            ("sentry_messagecountbyminute", 30),
            ("sentry_view", 3),
            ("auth_user", 5),
        ]);
        // Groups 7 and 9 were merged into twins; 1 bookmark and 3 minute rows were theirs.
        let facts = Sentry6Facts {
            projects: 3,
            orphan_events: 0,
            merge: Merge {
                merged_groups: vec![7, 9],
                merged_rows: counts(&[
                    ("sentry_groupbookmark", 1),
                    ("sentry_messagecountbyminute", 3),
                ]),
                group_times_seen: (250, 250),
                minute_times_seen: (120, 120),
            },
        };
        let after = counts(&[
            ("sentry_projectkey", 7),
            ("sentry_team", 3),
            ("sentry_message", 100),
            ("sentry_groupedmessage", 18),
            ("sentry_groupbookmark", 4),
            ("sentry_messagecountbyminute", 28),
            ("auth_user", 5),
            ("sentry_activity", 0),
        ]);
        let checks = sentry6_vs_loaded(&loaded, &after, &facts);
        assert!(failures(&checks).is_empty(), "{checks:#?}");
        let groups = checks
            .iter()
            .find(|c| c.table == "sentry_groupedmessage")
            .unwrap();
        assert_eq!(groups.note, "-2: migration 0083 merged 2 duplicate group(s) (same project and checksum) into their twins: 7, 9");

        // An event lost, a user added, more keys than projects, an orphan event, a bookmark of
        // a group that was not merged, a group gone without a merge, counts lost: all loss.
        let mut bad = after.clone();
        bad.insert("sentry_message".into(), 99);
        bad.insert("auth_user".into(), 6);
        bad.insert("sentry_projectkey".into(), 8);
        bad.insert("sentry_groupbookmark".into(), 3);
        bad.insert("sentry_groupedmessage".into(), 17);
        let bad_facts = Sentry6Facts {
            orphan_events: 2,
            merge: Merge {
                minute_times_seen: (120, 110),
                ..facts.merge.clone()
            },
            ..facts.clone()
        };
        let checks = sentry6_vs_loaded(&loaded, &bad, &bad_facts);
        let failed: Vec<_> = failures(&checks).iter().map(|c| c.table.clone()).collect();
        assert_eq!(
            failed,
            [
                "auth_user",
                "sentry_groupbookmark",
                "sentry_groupedmessage",
                "sentry_message",
                "sentry_projectkey",
                "(events without a group)",
                "(sum of per-minute times_seen)"
            ]
        );
        let bookmarks = checks
            .iter()
            .find(|c| c.table == "sentry_groupbookmark")
            .unwrap();
        assert_eq!(
            bookmarks.note,
            "-2 rows lost: only 1 belonged to merged groups"
        );

        // Without any merge, a group table that shrinks is loss.
        let none = Sentry6Facts {
            merge: Merge::default(),
            ..facts
        };
        let checks = sentry6_vs_loaded(&loaded, &after, &none);
        assert!(failures(&checks)
            .iter()
            .any(|c| c.table == "sentry_groupedmessage"));
    }
}
