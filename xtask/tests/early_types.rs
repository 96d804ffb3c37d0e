//! The copy engine's early integer columns on real PostgreSQL: the four columns Sentry 6's
//! migration 0105 turns from `double precision` into `integer` are loaded as integer when every
//! value is whole, and 0105's own statements (South 0.8.2's combined `ALTER TABLE`) then rewrite
//! no table and leave exactly what they leave after a plain load; a fraction keeps the table's
//! Sentry 4 type and 0105 rounds it as before; the rehearsal's reference (`restore_sentry4_types`)
//! is the plain load.

use std::path::Path;

use postgres::Client;
use rusqlite::Connection;
use xtask::{
    copy::{copy, restore_sentry4_types, Repeatable, TableCopy, SENTRY6_INTEGER_COLUMNS},
    pgcluster::testing::{skip, TestDb},
};

/// The four tables as Sentry 4.10's South migrations leave them on PostgreSQL, cut down.
const SENTRY4_SCHEMA: &str = "
    CREATE TABLE sentry_groupedmessage (id serial PRIMARY KEY, checksum varchar(32) NOT NULL,
        time_spent_total double precision NOT NULL, time_spent_count integer NOT NULL);
    CREATE TABLE sentry_message (id serial PRIMARY KEY,
        group_id integer NOT NULL REFERENCES sentry_groupedmessage (id) DEFERRABLE INITIALLY DEFERRED,
        message text NOT NULL, time_spent double precision);
    CREATE INDEX sentry_message_group_id ON sentry_message (group_id);
    CREATE TABLE sentry_messagecountbyminute (id serial PRIMARY KEY, group_id integer NOT NULL,
        date timestamptz NOT NULL, time_spent_total double precision NOT NULL,
        time_spent_count integer NOT NULL);
    CREATE TABLE sentry_projectcountbyminute (id serial PRIMARY KEY, project_id integer,
        date timestamptz NOT NULL, time_spent_total double precision NOT NULL,
        time_spent_count integer NOT NULL);";

/// What Sentry 6.4.4's 0105 runs through South 0.8.2 on PostgreSQL (`db.alter_column` with an
/// IntegerField: type, nullity and default in one statement per column).
const MIGRATION_0105: &str = "
    ALTER TABLE \"sentry_projectcountbyminute\" ALTER COLUMN \"time_spent_total\" TYPE integer, ALTER COLUMN \"time_spent_total\" SET NOT NULL, ALTER COLUMN \"time_spent_total\" DROP DEFAULT;
    ALTER TABLE \"sentry_groupedmessage\" ALTER COLUMN \"time_spent_total\" TYPE integer, ALTER COLUMN \"time_spent_total\" SET NOT NULL, ALTER COLUMN \"time_spent_total\" DROP DEFAULT;
    ALTER TABLE \"sentry_messagecountbyminute\" ALTER COLUMN \"time_spent_total\" TYPE integer, ALTER COLUMN \"time_spent_total\" SET NOT NULL, ALTER COLUMN \"time_spent_total\" DROP DEFAULT;
    ALTER TABLE \"sentry_message\" ALTER COLUMN \"time_spent\" TYPE integer, ALTER COLUMN \"time_spent\" DROP NOT NULL, ALTER COLUMN \"time_spent\" DROP DEFAULT;";

const TABLES: [&str; 4] = [
    "sentry_groupedmessage",
    "sentry_message",
    "sentry_messagecountbyminute",
    "sentry_projectcountbyminute",
];

/// A Sentry 4 SQLite db: REAL columns holding whole reals, integers (SQLite stores `5` given to
/// a REAL column as a real, `CAST(.. AS INTEGER)` keeps it integer-typed), the int4 edges,
/// negative zero and NULL; `message_time_spent` is the one non-whole-or-NULL value of
/// sentry_message, if any.
fn sentry4_sqlite(path: &Path, message_time_spent: &str) {
    let db = Connection::open(path).unwrap();
    db.execute_batch(&format!(
        "CREATE TABLE sentry_groupedmessage (id integer PRIMARY KEY, checksum varchar(32) NOT NULL,
             time_spent_total real NOT NULL, time_spent_count integer NOT NULL);
         CREATE TABLE sentry_message (id integer PRIMARY KEY, group_id integer NOT NULL,
             message text NOT NULL, time_spent real);
         CREATE TABLE sentry_messagecountbyminute (id integer PRIMARY KEY, group_id integer NOT NULL,
             date datetime NOT NULL, time_spent_total real NOT NULL, time_spent_count integer NOT NULL);
         CREATE TABLE sentry_projectcountbyminute (id integer PRIMARY KEY, project_id integer,
             date datetime NOT NULL, time_spent_total real NOT NULL, time_spent_count integer NOT NULL);
         INSERT INTO sentry_groupedmessage VALUES (1, 'a', 0.0, 0), (2, 'b', 2147483647.0, 3),
             (3, 'c', -2147483648.0, 1), (4, 'd', CAST(5 AS INTEGER), 1), (5, 'e', -0.0, 0);
         INSERT INTO sentry_message VALUES (1, 1, 'one', NULL), (2, 2, 'two', 120.0),
             (3, 3, 'three', CAST(-7 AS INTEGER)), (4, 4, 'four', {message_time_spent}), (5, 5, 'five', NULL);
         INSERT INTO sentry_messagecountbyminute VALUES (1, 1, '2013-01-02 03:04:00', 10.0, 1),
             (2, 2, '2013-01-02 03:05:00', 1e9, 2);
         INSERT INTO sentry_projectcountbyminute VALUES (1, NULL, '2013-01-02 03:04:00', 10.0, 1),
             (2, 7, '2013-01-02 03:05:00', 0.0, 0);"
    ))
    .unwrap();
}

fn load(sqlite: &Path, tag: &str, integer_early: &[(&str, &str)]) -> (TestDb, Vec<TableCopy>) {
    let db = TestDb::new(tag);
    let copies = try_load(&db, sqlite, integer_early).unwrap();
    (db, copies)
}

fn try_load(
    db: &TestDb,
    sqlite: &Path,
    integer_early: &[(&str, &str)],
) -> anyhow::Result<Vec<TableCopy>> {
    db.client().batch_execute(SENTRY4_SCHEMA).unwrap();
    let mut clients = vec![db.client(), db.client()];
    let tables: Vec<String> = TABLES.iter().map(|it| it.to_string()).collect();
    let repeat = Repeatable {
        truncate_sql: None,
        reset_sequence_sql: xtask::pg::RESET_SEQUENCE_SQL,
        marker_sql: &[],
        step: "pg-copy",
        input: "",
    };
    let (copies, _) = copy(sqlite, &mut clients, &tables, "UTC", &repeat, integer_early)?;
    Ok(copies)
}

/// The types of the four columns, in `SENTRY6_INTEGER_COLUMNS`' order.
fn types(client: &mut Client) -> Vec<String> {
    SENTRY6_INTEGER_COLUMNS
        .iter()
        .map(|(table, column)| {
            client
                .query_one(
                    "SELECT data_type::text FROM information_schema.columns \
                     WHERE table_name = $1 AND column_name = $2",
                    &[table, column],
                )
                .unwrap()
                .get(0)
        })
        .collect()
}

/// Every table's columns (name, type, nullity, default) and rows, as text.
fn contents(client: &mut Client) -> Vec<String> {
    let mut out = Vec::new();
    for table in TABLES {
        for row in client
            .query(
                "SELECT column_name::text || ' ' || data_type || ' ' || is_nullable || ' ' || coalesce(column_default, '-') \
                 FROM information_schema.columns WHERE table_name = $1 ORDER BY ordinal_position",
                &[&table],
            )
            .unwrap()
        {
            out.push(format!("{table}: {}", row.get::<_, String>(0)));
        }
        for row in client
            .query(&format!("SELECT t::text FROM {table} t ORDER BY id"), &[])
            .unwrap()
        {
            out.push(format!("{table}: {}", row.get::<_, String>(0)));
        }
    }
    out
}

fn relfilenodes(client: &mut Client) -> Vec<u32> {
    TABLES
        .iter()
        .map(|table| {
            client
                .query_one(
                    "SELECT relfilenode::text::bigint FROM pg_class WHERE oid = $1::text::regclass",
                    &[table],
                )
                .unwrap()
                .get::<_, i64>(0) as u32
        })
        .collect()
}

#[test]
fn whole_values_go_in_as_integer_and_0105_then_rewrites_nothing_and_leaves_what_it_leaves_after_a_plain_load(
) {
    if skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sqlite = dir.path().join("sentry.db");
    sentry4_sqlite(&sqlite, "CAST(2147483647 AS INTEGER)");
    let (early, copies) = load(&sqlite, "early", SENTRY6_INTEGER_COLUMNS);
    let (plain, plain_copies) = load(&sqlite, "plain", &[]);
    let (mut early, mut plain) = (early.client(), plain.client());
    assert_eq!(types(&mut early), ["integer"; 4]);
    assert_eq!(types(&mut plain), ["double precision"; 4]);
    for copy in &copies {
        let expected: Vec<String> = SENTRY6_INTEGER_COLUMNS
            .iter()
            .filter(|(table, _)| *table == copy.table)
            .map(|(_, column)| column.to_string())
            .collect();
        assert_eq!(copy.integer_columns, expected, "{copy:?}");
        assert_eq!(copy.kept_double_precision, None, "{copy:?}");
    }
    assert!(plain_copies.iter().all(|it| it.integer_columns.is_empty()));

    // The rehearsal's reference: the early load with Sentry 4's types back is the plain load.
    let (reference, _) = load(&sqlite, "reference", SENTRY6_INTEGER_COLUMNS);
    let mut reference = reference.client();
    assert_eq!(
        restore_sentry4_types(&mut reference, SENTRY6_INTEGER_COLUMNS).unwrap(),
        SENTRY6_INTEGER_COLUMNS
            .iter()
            .map(|(t, c)| format!("{t}.{c}"))
            .collect::<Vec<_>>()
    );
    assert_eq!(contents(&mut reference), contents(&mut plain));

    // 0105: on the early load no table gets a new file (no rewrite); on the plain load every one
    // does; both end the same.
    let (before_early, before_plain) = (relfilenodes(&mut early), relfilenodes(&mut plain));
    early.batch_execute(MIGRATION_0105).unwrap();
    plain.batch_execute(MIGRATION_0105).unwrap();
    assert_eq!(relfilenodes(&mut early), before_early);
    let after_plain = relfilenodes(&mut plain);
    assert!(
        before_plain.iter().zip(&after_plain).all(|(a, b)| a != b),
        "{before_plain:?} {after_plain:?}"
    );
    assert_eq!(contents(&mut early), contents(&mut plain));
    assert!(contents(&mut early)
        .iter()
        .any(|row| row == "sentry_groupedmessage: (2,b,2147483647,3)"));
}

#[test]
fn a_fraction_keeps_its_tables_sentry4_type_says_which_row_and_0105_rounds_it_as_after_a_plain_load(
) {
    if skip() {
        return;
    }
    // A half (0105 rounds it), and a whole number past int4 (0105 fails on it, as Sentry's own).
    for (value, shown) in [("2.5", "2.5"), ("2147483648.0", "2147483648.0")] {
        let dir = tempfile::tempdir().unwrap();
        let sqlite = dir.path().join("sentry.db");
        sentry4_sqlite(&sqlite, value);
        let (early, copies) = load(&sqlite, "fraction", SENTRY6_INTEGER_COLUMNS);
        let mut early = early.client();
        assert_eq!(
            types(&mut early),
            ["integer", "integer", "integer", "double precision"],
            "{value}"
        );
        let message = copies
            .iter()
            .find(|it| it.table == "sentry_message")
            .unwrap();
        assert!(message.integer_columns.is_empty(), "{message:?}");
        let why = message.kept_double_precision.as_ref().expect("why");
        assert_eq!(
            (why.column.as_str(), why.rowid),
            ("time_spent", 4),
            "{why:?}"
        );
        assert_eq!(why.value, shown);
        // Every row is there once: the first attempt rolled back.
        let rows: i64 = early
            .query_one("SELECT count(*) FROM sentry_message", &[])
            .unwrap()
            .get(0);
        assert_eq!(rows, 5);
        if value == "2.5" {
            let (plain, _) = load(&sqlite, "fractionplain", &[]);
            let mut plain = plain.client();
            early.batch_execute(MIGRATION_0105).unwrap();
            plain.batch_execute(MIGRATION_0105).unwrap();
            assert_eq!(contents(&mut early), contents(&mut plain));
            // PostgreSQL's float8 -> int4 rounds half to even, in both.
            assert!(contents(&mut early)
                .iter()
                .any(|row| row == "sentry_message: (4,4,four,2)"));
        }
    }
}

/// A copy that fails once its rows are in (a foreign key PostgreSQL refuses at the end) leaves
/// the target as before: no row, every index and key back, and Sentry 4's types on the four
/// columns it had made integer.
#[test]
fn a_failed_copy_gives_the_early_columns_their_sentry4_type_back() {
    if skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sqlite = dir.path().join("sentry.db");
    sentry4_sqlite(&sqlite, "NULL");
    Connection::open(&sqlite)
        .unwrap()
        .execute_batch("INSERT INTO sentry_message VALUES (6, 99, 'orphan', 1.0)")
        .unwrap();
    let db = TestDb::new("undo");
    let err = try_load(&db, &sqlite, SENTRY6_INTEGER_COLUMNS).unwrap_err();
    let text = format!("{err:#}");
    assert!(
        text.contains("violates foreign key constraint")
            && text.contains("all of it rolled back: the target is as before"),
        "{text}"
    );
    let mut client = db.client();
    assert_eq!(types(&mut client), ["double precision"; 4]);
    let rows: i64 = client
        .query_one(
            "SELECT (SELECT count(*) FROM sentry_message) + (SELECT count(*) FROM sentry_groupedmessage)",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(rows, 0);
    let back: i64 = client
        .query_one(
            "SELECT (SELECT count(*) FROM pg_indexes WHERE indexname = 'sentry_message_group_id') \
             + (SELECT count(*) FROM pg_constraint WHERE contype = 'f')",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(back, 2, "the index and the foreign key are back");
}

/// What an interrupted copy left in its marker (a dropped index, a column made integer) is put
/// back by `recreate_pending` before another kind of load rewrites the marker.
#[test]
fn what_an_interrupted_copy_left_pending_is_put_back() {
    if skip() {
        return;
    }
    let db = TestDb::new("pending");
    let mut client = db.client();
    client.batch_execute(SENTRY4_SCHEMA).unwrap();
    client
        .batch_execute(
            "DROP INDEX sentry_message_group_id; \
             ALTER TABLE sentry_message ALTER COLUMN time_spent TYPE integer",
        )
        .unwrap();
    xtask::pg::write_load_marker(&mut client, xtask::pg::LOAD_MARKER_SQL, "pg-copy", "x").unwrap();
    let statement =
        "CREATE INDEX sentry_message_group_id ON public.sentry_message USING btree (group_id)";
    xtask::pg::record_pending_rebuild(&mut client, &[statement.to_string()]).unwrap();
    let mut tx = client.transaction().unwrap();
    assert_eq!(
        xtask::copy::recreate_pending(&mut tx, SENTRY6_INTEGER_COLUMNS).unwrap(),
        1
    );
    tx.commit().unwrap();
    assert_eq!(types(&mut client), ["double precision"; 4]);
    let index: String = client
        .query_one(
            "SELECT indexdef FROM pg_indexes WHERE indexname = 'sentry_message_group_id'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(index, statement);
    // Nothing pending: nothing done.
    xtask::pg::record_pending_rebuild(&mut client, &[]).unwrap();
    client
        .batch_execute("UPDATE sentry_migrate_load SET rebuild = NULL")
        .unwrap();
    let mut tx = client.transaction().unwrap();
    assert_eq!(
        xtask::copy::recreate_pending(&mut tx, SENTRY6_INTEGER_COLUMNS).unwrap(),
        0
    );
}
