//! Two databases upgraded from one loaded state, compared: the tool's Sentry 6 step on one,
//! Sentry's own unmodified `upgrade` on the other. Schema, sequences and every table's rows must
//! be equal, but for the values a migration sets to `now()` or to random keys (`VOLATILE`).

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context, Result};
use postgres::Client;

use crate::ident::Ident;

/// Which rows of a volatile column may differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Every row: the column is added with `now()` as its value.
    All,
    /// The rows the upgrade creates (id above the loaded state's maximum).
    Created,
}

/// The values Sentry 6.4.4's upgrade sets that differ between two runs on the same database
/// (found by running it twice and comparing every table: shared/notes/sentry6-upgrade.md), and
/// those of the tag rows 0083 creates (the model's default, now).
pub const VOLATILE: &[(&str, &str, Scope)] = &[
    ("sentry_filtervalue", "first_seen", Scope::All),
    ("sentry_filtervalue", "last_seen", Scope::All),
    ("sentry_projectkey", "public_key", Scope::Created),
    ("sentry_projectkey", "secret_key", Scope::Created),
    ("sentry_projectkey", "date_added", Scope::All),
    ("sentry_team", "date_added", Scope::All),
    ("south_migrationhistory", "applied", Scope::All),
    ("sentry_messagefiltervalue", "first_seen", Scope::Created),
    ("sentry_messagefiltervalue", "last_seen", Scope::Created),
];

/// Tables where 0083 creates rows one survivor after another but, within one survivor, in a
/// Python dict's order: their rows are compared without the id, and their sets of ids apart.
pub const IDS_APART: &[&str] = &["sentry_messagefiltervalue", "sentry_messagecountbyminute"];

/// The largest id of every table with an integer `id`, in the state both upgrades start from.
pub fn max_ids(client: &mut Client) -> Result<BTreeMap<String, i64>> {
    let mut out = BTreeMap::new();
    for table in id_tables(client)? {
        let quoted = Ident::table(table.clone())?.quoted();
        let max: Option<i64> = client
            .query_one(&format!("SELECT max(id)::bigint FROM {quoted}"), &[])
            .with_context(|| format!("reading max(id) of {table}"))?
            .get(0);
        out.insert(table, max.unwrap_or(0));
    }
    Ok(out)
}

fn id_tables(client: &mut Client) -> Result<Vec<String>> {
    Ok(client
        .query(
            "SELECT table_name::text FROM information_schema.columns \
             WHERE table_schema = 'public' AND column_name = 'id' \
               AND data_type IN ('integer', 'bigint', 'smallint') ORDER BY 1",
            &[],
        )?
        .iter()
        .map(|row| row.get(0))
        .collect())
}

/// What the comparison found.
#[derive(Debug, Default)]
pub struct Sameness {
    pub tables: usize,
    pub rows: i64,
    /// One line per difference (schema, sequence, table), with examples where it can.
    pub differ: Vec<String>,
    /// `table.column` left out (or left out for created rows), as compared.
    pub left_out: Vec<String>,
}

impl Sameness {
    pub fn is_equal(&self) -> bool {
        self.differ.is_empty()
    }

    /// One line: "equal: N tables, M rows, schema and sequences; left out: …".
    pub fn summary(&self) -> String {
        if self.is_equal() {
            format!(
                "equal: schema, sequences and all {} tables ({} rows), every column but {}",
                self.tables,
                self.rows,
                self.left_out.join(", ")
            )
        } else {
            format!(
                "{} difference(s): {}",
                self.differ.len(),
                self.differ.join("; ")
            )
        }
    }
}

/// The schema as lines: every column with its type, nullability and default, every index and
/// constraint, of schema public.
fn schema(client: &mut Client) -> Result<BTreeSet<String>> {
    let mut out = BTreeSet::new();
    for row in client.query(
        "SELECT format('column %s.%s %s %s default %s', table_name, column_name, data_type, \
                is_nullable, coalesce(column_default, '-')) \
         FROM information_schema.columns WHERE table_schema = 'public'",
        &[],
    )? {
        out.insert(row.get::<_, String>(0));
    }
    for row in client.query(
        "SELECT format('index %s', indexdef) FROM pg_indexes WHERE schemaname = 'public'",
        &[],
    )? {
        out.insert(row.get::<_, String>(0));
    }
    for row in client.query(
        "SELECT format('constraint %s %s %s', c.conrelid::regclass, c.conname, pg_get_constraintdef(c.oid)) \
         FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace WHERE n.nspname = 'public'",
        &[],
    )? {
        out.insert(row.get::<_, String>(0));
    }
    Ok(out)
}

fn sequences(client: &mut Client) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for state in crate::pg::sequences(client)? {
        out.insert(
            state.table.clone(),
            format!("next value {}", state.next_value),
        );
    }
    Ok(out)
}

/// The SELECT list a table is compared by: every column, the volatile ones left out (or, for
/// created rows, NULL), the id left out where ids are compared apart.
fn compared_columns(
    client: &mut Client,
    table: &str,
    max_ids: &BTreeMap<String, i64>,
    left_out: &mut Vec<String>,
) -> Result<Vec<String>> {
    let columns: Vec<String> = client
        .query(
            "SELECT column_name::text FROM information_schema.columns \
             WHERE table_schema = 'public' AND table_name = $1 ORDER BY column_name",
            &[&table],
        )?
        .iter()
        .map(|row| row.get(0))
        .collect();
    let mut exprs = Vec::new();
    for column in columns {
        let quoted = Ident::column(&column)?.quoted();
        if column == "id" && IDS_APART.contains(&table) {
            left_out.push(format!("{table}.id (its ids compared as a set)"));
            continue;
        }
        match VOLATILE
            .iter()
            .find(|(t, c, _)| *t == table && *c == column)
        {
            Some((_, _, Scope::All)) => left_out.push(format!("{table}.{column}")),
            Some((_, _, Scope::Created)) => {
                let max = max_ids.get(table).copied().unwrap_or(0);
                left_out.push(format!("{table}.{column} of rows created (id > {max})"));
                exprs.push(format!("CASE WHEN id > {max} THEN NULL ELSE {quoted} END"));
            }
            None => exprs.push(quoted),
        }
    }
    Ok(exprs)
}

/// count, and two 64-bit sums of the rows' md5: equal multisets of rows give equal sums.
const HASH_SQL: &str = "SELECT count(*), \
     coalesce(sum(('x' || substr(h, 1, 16))::bit(64)::bigint::numeric), 0)::text, \
     coalesce(sum(('x' || substr(h, 17, 16))::bit(64)::bigint::numeric), 0)::text \
     FROM (SELECT md5(ROW({exprs})::text) AS h FROM {table}) AS r";

fn table_hash(client: &mut Client, table: &str, exprs: &[String]) -> Result<(i64, String)> {
    let quoted = Ident::table(table.to_string())?.quoted();
    let list = if exprs.is_empty() {
        "1".to_string()
    } else {
        exprs.join(", ")
    };
    let sql = HASH_SQL
        .replace("{exprs}", &list)
        .replace("{table}", &quoted);
    let row = client
        .query_one(&sql, &[])
        .with_context(|| format!("hashing the rows of {table}"))?;
    Ok((
        row.get(0),
        format!("{}/{}", row.get::<_, String>(1), row.get::<_, String>(2)),
    ))
}

/// Up to 3 ids whose rows differ, with both rows as text, for the message.
fn examples(a: &mut Client, b: &mut Client, table: &str, exprs: &[String]) -> Result<String> {
    let quoted = Ident::table(table.to_string())?.quoted();
    let sql = format!(
        "SELECT id::bigint, ROW({})::text FROM {quoted} ORDER BY id",
        exprs.join(", ")
    );
    let rows = |client: &mut Client| -> Result<BTreeMap<i64, String>> {
        Ok(client
            .query(&sql, &[])?
            .iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect())
    };
    let (left, right) = (rows(a)?, rows(b)?);
    let ids: BTreeSet<&i64> = left.keys().chain(right.keys()).collect();
    let shown: Vec<String> = ids
        .into_iter()
        .filter(|id| left.get(id) != right.get(id))
        .take(3)
        .map(|id| {
            format!(
                "id {id}: {} vs {}",
                left.get(id).map_or("(none)", String::as_str),
                right.get(id).map_or("(none)", String::as_str)
            )
        })
        .collect();
    Ok(shown.join(" | "))
}

/// Compares `ours` with `theirs` (Sentry's own upgrade), both upgraded from the state whose
/// largest ids are `max_ids`.
pub fn compare(
    ours: &mut Client,
    theirs: &mut Client,
    max_ids: &BTreeMap<String, i64>,
) -> Result<Sameness> {
    let mut found = Sameness::default();
    for client in [&mut *ours, &mut *theirs] {
        client.batch_execute("SET TIME ZONE 'UTC'; SET extra_float_digits = 3")?;
    }
    let (schema_a, schema_b) = (schema(ours)?, schema(theirs)?);
    for line in schema_a.symmetric_difference(&schema_b).take(10) {
        let side = if schema_a.contains(line) {
            "only ours"
        } else {
            "only Sentry's"
        };
        found.differ.push(format!("schema, {side}: {line}"));
    }
    let (seq_a, seq_b) = (sequences(ours)?, sequences(theirs)?);
    for (name, state) in &seq_a {
        if seq_b.get(name) != Some(state) {
            found.differ.push(format!(
                "sequence {name}: {state} vs {}",
                seq_b.get(name).map_or("(none)", String::as_str)
            ));
        }
    }
    let tables_a = crate::pg::public_tables(ours)?;
    let tables_b = crate::pg::public_tables(theirs)?;
    if tables_a != tables_b {
        found.differ.push(format!(
            "tables: {} vs {}",
            tables_a.join(","),
            tables_b.join(",")
        ));
    }
    let with_ids = id_tables(ours)?;
    for table in &tables_a {
        if !tables_b.contains(table) {
            continue;
        }
        let mut left_out = Vec::new();
        let exprs = compared_columns(ours, table, max_ids, &mut left_out)?;
        let (a, b) = (
            table_hash(ours, table, &exprs)?,
            table_hash(theirs, table, &exprs)?,
        );
        found.tables += 1;
        found.rows += a.0;
        if a != b {
            let example = if with_ids.contains(table) && !IDS_APART.contains(&table.as_str()) {
                examples(ours, theirs, table, &exprs)?
            } else {
                String::new()
            };
            found.differ.push(format!(
                "{table}: {} rows vs {} (rows differ) {example}",
                a.0, b.0
            ));
        }
        if IDS_APART.contains(&table.as_str()) {
            let ids = ["id".to_string()];
            if table_hash(ours, table, &ids)? != table_hash(theirs, table, &ids)? {
                found
                    .differ
                    .push(format!("{table}: the sets of ids differ"));
            }
        }
        found.left_out.extend(left_out);
    }
    Ok(found)
}
