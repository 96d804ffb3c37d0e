//! The tables' `id` sequences: found from the catalog, compared with each table's max(id), and
//! set past it after a load that inserted explicit ids.

use anyhow::{Context, Result};
use postgres::GenericClient;

use crate::ident::Ident;

/// What `pg-load` runs after the load for every table with an `id` sequence; `{table}` and `$1`
/// are the table's quoted name.
pub const RESET_SEQUENCE_SQL: &str =
    "SELECT setval(pg_get_serial_sequence($1, 'id'), COALESCE(MAX(id), 1), MAX(id) IS NOT NULL) FROM {table}";

/// One id sequence compared with its table.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SequenceState {
    pub table: String,
    pub max_id: i64,
    pub next_value: i64,
}

impl SequenceState {
    /// The next id it hands out would collide with a loaded row.
    pub fn is_behind(&self) -> bool {
        self.next_value <= self.max_id
    }
}

/// Sets every `id` sequence past its table's max(id), then reads them back.
pub fn reset_sequences(
    client: &mut impl GenericClient,
    reset_sql: &str,
) -> Result<Vec<SequenceState>> {
    let tables = serial_tables(client)?;
    for (table, _) in &tables {
        let quoted = table.quoted();
        client
            .query_one(
                &reset_sql.replace("{table}", &quoted),
                &[&quoted],
            )
            .with_context(|| format!("cannot reset the id sequence of table {}: check the connection and that the role owns the table", table.as_str()))?;
    }
    sequence_states(client, tables)
}

/// Tables of schema `public` with an `id` column backed by a sequence, with that sequence.
/// Tables without an `id` column are left out by the catalog query itself, so any error here is
/// a real one (connection, privileges) and is reported.
fn serial_tables(client: &mut impl GenericClient) -> Result<Vec<(Ident, String)>> {
    let rows = client
        .query(
            "SELECT c.relname::text, pg_get_serial_sequence(format('public.%I', c.relname), 'id') \
             FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'id' AND NOT a.attisdropped \
             WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') ORDER BY 1",
            &[],
        )
        .context("cannot list the id sequences of the tables in schema public: check the connection and that the role may call pg_get_serial_sequence")?;
    let mut out = Vec::new();
    for row in rows {
        // NULL: an `id` column without a sequence (nothing to check or reset).
        if let Some(seq) = row.get::<_, Option<String>>(1) {
            out.push((Ident::table(row.get(0))?, seq));
        }
    }
    Ok(out)
}

/// Every `id` sequence with the next value it would hand out.
pub fn sequences(client: &mut impl GenericClient) -> Result<Vec<SequenceState>> {
    let tables = serial_tables(client)?;
    sequence_states(client, tables)
}

fn sequence_states(
    client: &mut impl GenericClient,
    tables: Vec<(Ident, String)>,
) -> Result<Vec<SequenceState>> {
    let mut out = Vec::new();
    for (table, seq) in tables {
        let max_id: Option<i64> = client
            .query_one(&format!("SELECT MAX(id)::bigint FROM {table}"), &[])?
            .get(0);
        // pg_sequences.last_value is NULL until the sequence hands out (or is set to) a value.
        let row = client.query_one(
            "SELECT last_value, start_value FROM pg_sequences \
             WHERE (quote_ident(schemaname) || '.' || quote_ident(sequencename)) = $1",
            &[&seq],
        )?;
        let next_value = match row.get::<_, Option<i64>>(0) {
            Some(last_value) => last_value + 1,
            None => row.get::<_, i64>(1),
        };
        out.push(SequenceState {
            table: table.into_string(),
            max_id: max_id.unwrap_or(0),
            next_value,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::{reset_sequences, sequences, RESET_SEQUENCE_SQL};
    use crate::{
        pg::{
            catalog::{clear_generated_rows, DEMO_PROJECT_NAME, TRUNCATE_SQL},
            tests::FRESH_UPGRADE,
        },
        pgcluster::testing::{skip, TestDb},
    };

    #[test]
    fn sequences_behind_explicit_ids_are_found_and_reset() {
        if skip() {
            return;
        }
        let db = TestDb::new("seq");
        let mut client = db.client();
        client.batch_execute(FRESH_UPGRADE).unwrap();
        clear_generated_rows(&mut client, DEMO_PROJECT_NAME, TRUNCATE_SQL).unwrap();
        // loaddata inserts explicit ids; the sequence does not move.
        client.batch_execute("INSERT INTO sentry_project (id, name) VALUES (3, 'a'), (17, 'b'); INSERT INTO sentry_team (id) VALUES (4)").unwrap();
        let behind: Vec<_> = sequences(&mut client)
            .unwrap()
            .into_iter()
            .filter(|s| s.is_behind())
            .map(|s| s.table)
            .collect();
        assert_eq!(behind, ["sentry_project", "sentry_team"]);
        let after = reset_sequences(&mut client, RESET_SEQUENCE_SQL).unwrap();
        assert!(after.iter().all(|s| s.next_value > s.max_id), "{after:?}");
        let project = after.iter().find(|s| s.table == "sentry_project").unwrap();
        assert_eq!((project.max_id, project.next_value), (17, 18));
        let empty = after.iter().find(|s| s.table == "sentry_message").unwrap();
        assert_eq!((empty.max_id, empty.next_value), (0, 1));
        let id: i32 = client
            .query_one(
                "INSERT INTO sentry_project (name) VALUES ('c') RETURNING id",
                &[],
            )
            .unwrap()
            .get(0);
        assert_eq!(id, 18);
    }

    #[test]
    fn tables_without_an_id_are_skipped_and_other_errors_are_reported() {
        if skip() {
            return;
        }
        let db = TestDb::new("seqerr");
        let mut client = db.client();
        client.batch_execute(FRESH_UPGRADE).unwrap();
        client
            .batch_execute(
                "CREATE TABLE sentry_noid (key text); CREATE TABLE sentry_idnoseq (id integer)",
            )
            .unwrap();
        let tables: Vec<_> = sequences(&mut client)
            .unwrap()
            .into_iter()
            .map(|s| s.table)
            .collect();
        assert_eq!(tables.len(), 7, "{tables:?}");
        assert!(
            !tables
                .iter()
                .any(|t| t == "sentry_noid" || t == "sentry_idnoseq"),
            "{tables:?}"
        );

        // A role that may not look up sequences: an error, not an empty (passing) check.
        let role = format!("{}_r", db.name);
        client
            .batch_execute(&format!(
                "REVOKE EXECUTE ON FUNCTION pg_get_serial_sequence(text, text) FROM PUBLIC; \
                 CREATE ROLE \"{role}\"; SET ROLE \"{role}\""
            ))
            .unwrap();
        for result in [
            sequences(&mut client),
            reset_sequences(&mut client, RESET_SEQUENCE_SQL),
        ] {
            let err = format!(
                "{:#}",
                result.expect_err("a permission error must be reported")
            );
            assert!(
                err.contains("cannot list the id sequences")
                    && err.contains("permission denied for function pg_get_serial_sequence"),
                "{err}"
            );
        }
        client
            .batch_execute(&format!("RESET ROLE; DROP ROLE \"{role}\""))
            .unwrap();
    }
}
