//! Sentry 6's merge of duplicate groups (migration 0083, same project and checksum): what may
//! merge, read before the upgrade; what merged, read after; and so how many rows each table
//! may lose because of it. The Sentry 6 verification asks this module, and nothing else knows.

use std::collections::BTreeMap;

use anyhow::Result;
use postgres::Client;

use crate::{
    check::{TableCheck, Verdict},
    ident::Ident,
    pg::public_tables,
};

/// Groups that Sentry 6's migration 0083 may merge (same project and checksum), with the rows
/// that belong to them in every table that points at groups, and totals the merge preserves.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MergeCandidates {
    pub groups: Vec<i64>,
    /// table -> group id -> rows of that group.
    pub rows: BTreeMap<String, BTreeMap<i64, u64>>,
    /// Preserved by a merge: sum of sentry_groupedmessage.times_seen and of
    /// sentry_messagecountbyminute.times_seen.
    pub group_times_seen: i64,
    pub minute_times_seen: i64,
}

/// Tables with a `group_id` column (besides the events, which a merge repoints, never drops).
fn tables_pointing_at_groups(client: &mut Client) -> Result<Vec<Ident>> {
    let rows = client.query(
        "SELECT table_name::text FROM information_schema.columns \
         WHERE table_schema = 'public' AND column_name = 'group_id' AND table_name <> 'sentry_message' ORDER BY 1",
        &[],
    )?;
    rows.iter().map(|row| Ident::table(row.get(0))).collect()
}

fn sum_times_seen(client: &mut Client, table: &str) -> Result<i64> {
    let sql = format!(
        "SELECT COALESCE(SUM(times_seen), 0)::bigint FROM {}",
        Ident::new("table name", table)?
    );
    Ok(client.query_one(&sql, &[])?.get(0))
}

/// Read in `verify-postgres`, before Sentry 6's upgrade touches the groups.
pub fn candidates(client: &mut Client) -> Result<MergeCandidates> {
    let groups: Vec<i64> = client
        .query(
            "SELECT g.id::bigint FROM sentry_groupedmessage g WHERE EXISTS (SELECT 1 FROM sentry_groupedmessage o \
             WHERE o.project_id = g.project_id AND o.checksum = g.checksum AND o.id <> g.id) ORDER BY 1",
            &[],
        )?
        .iter()
        .map(|row| row.get(0))
        .collect();
    let mut rows = BTreeMap::new();
    for table in tables_pointing_at_groups(client)? {
        let sql = format!(
            "SELECT group_id::bigint, count(*) FROM {table} WHERE group_id = ANY($1::bigint[]) GROUP BY 1"
        );
        let counts: BTreeMap<i64, u64> = client
            .query(&sql, &[&groups])?
            .iter()
            .map(|r| (r.get::<_, i64>(0), r.get::<_, i64>(1) as u64))
            .collect();
        rows.insert(table.into_string(), counts);
    }
    if public_tables(client)?
        .iter()
        .any(|t| t == "sentry_searchtoken")
    {
        let counts: BTreeMap<i64, u64> = client
            .query(
                "SELECT d.group_id::bigint, count(*) FROM sentry_searchtoken t JOIN sentry_searchdocument d ON d.id = t.document_id \
                 WHERE d.group_id = ANY($1::bigint[]) GROUP BY 1",
                &[&groups],
            )?
            .iter()
            .map(|r| (r.get::<_, i64>(0), r.get::<_, i64>(1) as u64))
            .collect();
        rows.insert("sentry_searchtoken".to_string(), counts);
    }
    Ok(MergeCandidates {
        group_times_seen: sum_times_seen(client, "sentry_groupedmessage")?,
        minute_times_seen: sum_times_seen(client, "sentry_messagecountbyminute")?,
        groups,
        rows,
    })
}

/// What happened to the candidates after Sentry 6's upgrade.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MergeOutcome {
    /// Candidates that no longer exist: merged into a duplicate.
    pub merged: Vec<i64>,
    pub group_times_seen: i64,
    pub minute_times_seen: i64,
}

/// Read in `verify-sentry6`, after the upgrade.
pub fn outcome(client: &mut Client, before: &MergeCandidates) -> Result<MergeOutcome> {
    let remaining: std::collections::BTreeSet<i64> = client
        .query(
            "SELECT id::bigint FROM sentry_groupedmessage WHERE id = ANY($1::bigint[])",
            &[&before.groups],
        )?
        .iter()
        .map(|row| row.get(0))
        .collect();
    Ok(MergeOutcome {
        merged: before
            .groups
            .iter()
            .copied()
            .filter(|id| !remaining.contains(id))
            .collect(),
        group_times_seen: sum_times_seen(client, "sentry_groupedmessage")?,
        minute_times_seen: sum_times_seen(client, "sentry_messagecountbyminute")?,
    })
}

/// What the merge did, as the verification of Sentry 6's upgrade needs it.
#[derive(Debug, Clone, Default)]
pub struct Merge {
    /// Duplicate groups migration 0083 merged away.
    pub merged_groups: Vec<i64>,
    /// Per table: rows that belonged to the merged groups before the upgrade (the most a
    /// merge may remove from it).
    pub merged_rows: BTreeMap<String, u64>,
    /// (before, after) of totals a merge preserves.
    pub group_times_seen: (i64, i64),
    pub minute_times_seen: (i64, i64),
}

impl Merge {
    pub fn new(before: &MergeCandidates, after: &MergeOutcome) -> Merge {
        let merged_rows = before
            .rows
            .iter()
            .map(|(table, per_group)| {
                let rows = after.merged.iter().filter_map(|id| per_group.get(id)).sum();
                (table.clone(), rows)
            })
            .collect();
        Merge {
            merged_groups: after.merged.clone(),
            merged_rows,
            group_times_seen: (before.group_times_seen, after.group_times_seen),
            minute_times_seen: (before.minute_times_seen, after.minute_times_seen),
        }
    }

    /// Why `table` went from `before` to `now` rows (`now < before`), if the merge explains it.
    pub fn explains(&self, table: &str, before: u64, now: u64) -> Option<String> {
        let merged = self.merged_groups.len() as u64;
        let lost = before.checked_sub(now).filter(|it| *it > 0)?;
        if table == "sentry_groupedmessage" {
            return (lost == merged).then(|| {
                format!(
                    "-{merged}: migration 0083 merged {merged} duplicate group(s) (same project and checksum) into their twins: {}",
                    ids(&self.merged_groups)
                )
            });
        }
        let most = self.merged_rows.get(table).copied()?;
        (lost <= most).then(|| {
            format!(
                "-{lost}: rows of the {merged} merged group(s), folded into their twins or deleted with them by migration 0083 ({most} belonged to them)"
            )
        })
    }

    /// Says how much of a loss the merge cannot explain.
    pub fn loss(&self, table: &str, lost: u64) -> String {
        match self.merged_rows.get(table) {
            Some(most) => format!("-{lost} rows lost: only {most} belonged to merged groups"),
            None => format!("-{lost} rows lost"),
        }
    }

    /// Totals a merge preserves: the sums of `times_seen` must not change.
    pub fn invariants(&self) -> Vec<TableCheck> {
        [
            (
                "(sum of groups' times_seen)",
                self.group_times_seen,
                "a merge adds the duplicate's times_seen to its twin",
            ),
            (
                "(sum of per-minute times_seen)",
                self.minute_times_seen,
                "a merge adds the duplicate's per-minute counts to its twin's",
            ),
        ]
        .into_iter()
        .map(|(name, (before, now), what)| {
            let equal = before == now;
            TableCheck {
                table: name.to_string(),
                expected: Some(before.max(0) as u64),
                actual: Some(now.max(0) as u64),
                verdict: if equal {
                    Verdict::Equal
                } else {
                    Verdict::Differs
                },
                note: if equal {
                    format!("unchanged: {what}")
                } else {
                    format!("changed from {before} to {now}: counts were lost")
                },
            }
        })
        .collect()
    }
}

fn ids(list: &[i64]) -> String {
    let shown: Vec<String> = list.iter().take(8).map(|id| id.to_string()).collect();
    let more = if list.len() > 8 {
        format!(" and {} more", list.len() - 8)
    } else {
        String::new()
    };
    format!("{}{more}", shown.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_rows_count_only_the_groups_that_vanished() {
        let before = MergeCandidates {
            groups: vec![7, 8, 9],
            rows: BTreeMap::from([(
                "sentry_groupbookmark".to_string(),
                BTreeMap::from([(7, 2), (8, 5), (9, 1)]),
            )]),
            group_times_seen: 250,
            minute_times_seen: 120,
        };
        let after = MergeOutcome {
            merged: vec![7, 9],
            group_times_seen: 250,
            minute_times_seen: 119,
        };
        let merge = Merge::new(&before, &after);
        assert_eq!(merge.merged_rows["sentry_groupbookmark"], 3);
        assert_eq!(
            merge.explains("sentry_groupbookmark", 10, 7).as_deref(),
            Some("-3: rows of the 2 merged group(s), folded into their twins or deleted with them by migration 0083 (3 belonged to them)")
        );
        assert_eq!(merge.explains("sentry_groupbookmark", 10, 6), None);
        assert_eq!(
            merge.loss("sentry_groupbookmark", 4),
            "-4 rows lost: only 3 belonged to merged groups"
        );
        assert!(merge.explains("sentry_groupedmessage", 20, 18).is_some());
        assert_eq!(merge.explains("sentry_groupedmessage", 20, 17), None);
        assert_eq!(merge.explains("sentry_message", 20, 19), None);
        let verdicts: Vec<_> = merge.invariants().iter().map(|c| c.verdict).collect();
        assert_eq!(verdicts, [Verdict::Equal, Verdict::Differs]);
    }
}
