//! The set-based migration 0083 (`xtask/python/merge_dupe_groups.sql`) on real PostgreSQL, one
//! test per quirk of Sentry 6.4.4's own migration: which group survives (the walk's skip at a
//! chunk boundary included), how its counts and dates combine, tags, per-minute counts, NULL
//! projects. The rehearsal proves the whole upgrade equal to Sentry's own on real data.

use std::path::Path;

use postgres::Client;
use xtask::pgcluster::testing::TestDb;

/// The tables 0083 reads and writes, as they are when it runs (cut down to its columns).
const SCHEMA: &str = "
    CREATE TABLE sentry_groupedmessage (
        id serial PRIMARY KEY, project_id integer, checksum varchar(32) NOT NULL,
        times_seen integer NOT NULL DEFAULT 1, users_seen integer NOT NULL DEFAULT 0,
        time_spent_total double precision NOT NULL DEFAULT 0,
        time_spent_count integer NOT NULL DEFAULT 0,
        first_seen timestamptz NOT NULL DEFAULT '2013-01-01', last_seen timestamptz NOT NULL DEFAULT '2013-01-01',
        active_at timestamptz);
    CREATE TABLE sentry_message (id serial PRIMARY KEY, group_id integer);
    CREATE TABLE sentry_messagefiltervalue (
        id serial PRIMARY KEY, project_id integer, group_id integer NOT NULL,
        key varchar(32) NOT NULL, value varchar(200) NOT NULL, times_seen integer NOT NULL DEFAULT 0,
        first_seen timestamptz, last_seen timestamptz);
    CREATE TABLE sentry_messagecountbyminute (
        id serial PRIMARY KEY, project_id integer, group_id integer NOT NULL, date timestamptz NOT NULL,
        times_seen integer NOT NULL DEFAULT 0, time_spent_total double precision NOT NULL DEFAULT 0,
        time_spent_count integer NOT NULL DEFAULT 0);
    SET TIME ZONE 'UTC';";

fn merge_sql() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/merge_dupe_groups.sql");
    std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

fn database() -> (TestDb, Client) {
    let db = TestDb::new("dupes");
    let mut client = db.client();
    client.batch_execute(SCHEMA).unwrap();
    (db, client)
}

/// Runs the script as the helper does (one transaction), deletes the merged groups as the
/// migration's ORM then does, commits; returns (survivor, other) pairs in order of the other.
fn run_0083(client: &mut Client) -> Vec<(i32, i32)> {
    let mut tx = client.transaction().unwrap();
    tx.batch_execute(&merge_sql()).unwrap();
    let pairs: Vec<(i32, i32)> = tx
        .query(
            "SELECT survivor_id, other_id FROM sentry_migrate_0083_merge ORDER BY other_id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    tx.batch_execute(
        "DELETE FROM sentry_groupedmessage WHERE id IN (SELECT other_id FROM sentry_migrate_0083_merge)",
    )
    .unwrap();
    tx.commit().unwrap();
    pairs
}

/// The groups' ids, in order.
fn ids(client: &mut Client) -> Vec<i32> {
    ids_of(client, "sentry_groupedmessage")
}

fn ids_of(client: &mut Client, table: &str) -> Vec<i32> {
    client
        .query(&format!("SELECT id FROM {table} ORDER BY id"), &[])
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect()
}

#[test]
fn the_lowest_id_survives_with_sums_and_the_greatest_dates_users_seen_unchanged() {
    let (_db, mut client) = database();
    client
        .batch_execute(
            "INSERT INTO sentry_groupedmessage (id, project_id, checksum, times_seen, users_seen,
                 time_spent_total, time_spent_count, first_seen, last_seen, active_at) VALUES
             (1, 1, 'a', 10, 7, 1, 1, '2013-01-01', '2013-01-05', NULL),
             (2, 1, 'b', 99, 1, 0, 0, '2013-01-01', '2013-01-01', NULL),
             (5, 1, 'a', 20, 100, 2, 2, '2013-01-03', '2013-01-04', '2013-01-04'),
             (9, 1, 'a', 30, 100, 3, 3, '2013-01-02', '2013-01-09', '2013-01-02');
             INSERT INTO sentry_message (group_id) VALUES (1), (5), (9), (9), (2);",
        )
        .unwrap();
    assert_eq!(run_0083(&mut client), [(1, 5), (1, 9)]);
    assert_eq!(ids(&mut client), [1, 2]);
    let row = client
        .query_one(
            "SELECT times_seen, users_seen, time_spent_total, time_spent_count,
                    first_seen::text, last_seen::text, active_at::text
             FROM sentry_groupedmessage WHERE id = 1",
            &[],
        )
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 60, "times_seen summed");
    assert_eq!(
        row.get::<_, i32>(1),
        7,
        "users_seen unchanged: 0083 adds `user_seen`, never summed"
    );
    assert_eq!(row.get::<_, f64>(2), 6.0);
    assert_eq!(row.get::<_, i32>(3), 6);
    assert_eq!(
        row.get::<_, String>(4),
        "2013-01-03 00:00:00+00",
        "first_seen: the greatest, not the least"
    );
    assert_eq!(row.get::<_, String>(5), "2013-01-09 00:00:00+00");
    assert_eq!(
        row.get::<_, String>(6),
        "2013-01-04 00:00:00+00",
        "active_at: the greatest, a NULL ignored"
    );
    let events: Vec<i32> = client
        .query("SELECT group_id FROM sentry_message ORDER BY id", &[])
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(events, [1, 1, 1, 1, 2], "events re-pointed to the survivor");
    let other: i32 = client
        .query_one(
            "SELECT times_seen FROM sentry_groupedmessage WHERE id = 2",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(other, 99, "a group without duplicates is untouched");
}

#[test]
fn a_null_project_matches_null_and_other_projects_stay_apart() {
    let (_db, mut client) = database();
    client
        .batch_execute(
            "INSERT INTO sentry_groupedmessage (id, project_id, checksum) VALUES
             (1, NULL, 'a'), (2, 1, 'a'), (3, NULL, 'a'), (4, 2, 'a'), (5, 1, 'a'), (6, 2, 'b');",
        )
        .unwrap();
    assert_eq!(run_0083(&mut client), [(1, 3), (2, 5)]);
    assert_eq!(ids(&mut client), [1, 2, 4, 6]);
}

#[test]
fn tags_add_the_other_groups_times_seen_and_new_rows_take_the_survivors_project() {
    let (_db, mut client) = database();
    client
        .batch_execute(
            "INSERT INTO sentry_groupedmessage (id, project_id, checksum, times_seen) VALUES
                 (1, 1, 'a', 4), (2, 1, 'a', 20), (3, 1, 'a', 300);
             INSERT INTO sentry_messagefiltervalue (id, project_id, group_id, key, value, times_seen, first_seen, last_seen) VALUES
                 (1, 1, 1, 'server_name', 'a', 3, '2013-01-01', '2013-01-01'),
                 (2, 1, 2, 'server_name', 'a', 5, '2013-01-02', '2013-01-02'),
                 (3, 1, 2, 'site', 'x', 2, '2013-01-02', '2013-01-02'),
                 (4, 9, 3, 'site', 'x', 1, '2013-01-03', '2013-01-03'),
                 (5, 1, 3, 'level', 'error', 1, '2013-01-03', '2013-01-03');
             SELECT setval('sentry_messagefiltervalue_id_seq', 5);",
        )
        .unwrap();
    run_0083(&mut client);
    let rows: Vec<(i32, i32, i32, String, String, i32, bool)> = client
        .query(
            "SELECT id, project_id, group_id, key, value, times_seen,
                    first_seen > '2020-01-01' AND last_seen > '2020-01-01'
             FROM sentry_messagefiltervalue ORDER BY id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| {
            (
                r.get(0),
                r.get(1),
                r.get(2),
                r.get(3),
                r.get(4),
                r.get(5),
                r.get(6),
            )
        })
        .collect();
    let row = |id, project, key: &str, value: &str, times, now| {
        (
            id,
            project,
            1,
            key.to_string(),
            value.to_string(),
            times,
            now,
        )
    };
    assert_eq!(
        rows,
        [
            // 3 + group 2's times_seen (20), not its row's 5; the dates stay.
            row(1, 1, "server_name", "a", 23, false),
            // Created in key order: group 3's row counts 300 though it was in project 9.
            row(6, 1, "level", "error", 300, true),
            row(7, 1, "site", "x", 320, true),
        ]
    );
}

#[test]
fn counts_are_summed_per_date_into_the_survivors_rows() {
    let (_db, mut client) = database();
    client
        .batch_execute(
            "INSERT INTO sentry_groupedmessage (id, project_id, checksum) VALUES (1, 1, 'a'), (2, 1, 'a');
             INSERT INTO sentry_messagecountbyminute (project_id, group_id, date, times_seen, time_spent_total, time_spent_count) VALUES
                 (1, 1, '2013-01-01 10:00', 2, 10, 1),
                 (1, 2, '2013-01-01 10:00', 3, 5, 2),
                 (1, 2, '2013-01-01 10:01', 4, 1, 1);",
        )
        .unwrap();
    run_0083(&mut client);
    let rows: Vec<(i32, String, i32, f64, i32)> = client
        .query(
            "SELECT group_id, date::text, times_seen, time_spent_total, time_spent_count
             FROM sentry_messagecountbyminute ORDER BY id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect();
    assert_eq!(
        rows,
        [
            (1, "2013-01-01 10:00:00+00".into(), 5, 15.0, 3),
            (1, "2013-01-01 10:01:00+00".into(), 4, 1.0, 1),
        ]
    );
}

/// 2,500 groups `first..`; `dupes` = (group, group it shares its checksum with).
fn many_groups(client: &mut Client, dupes: &[(i32, i32)]) {
    client
        .batch_execute(
            "INSERT INTO sentry_groupedmessage (id, project_id, checksum)
             SELECT j, 1, 'g' || j FROM generate_series(1, 2500) AS j;",
        )
        .unwrap();
    for (group, like) in dupes {
        client
            .execute(
                "UPDATE sentry_groupedmessage SET checksum = 'g' || $2::int WHERE id = $1",
                &[group, like],
            )
            .unwrap();
    }
}

#[test]
fn the_walk_skips_the_group_after_a_chunk_whose_last_group_was_merged_away() {
    // Sentry's RangeQuerySetWrapper fetches the next 1000 as `id >= last` OFFSET 1: with group
    // 1000 merged into group 1 during the first chunk, the offset skips group 1001, so its
    // duplicate 1400 survives and 1001 is merged into it (seen on real Sentry 6.4.4 too).
    let (_db, mut client) = database();
    many_groups(&mut client, &[(1000, 1), (1400, 1001), (2000, 5)]);
    assert_eq!(run_0083(&mut client), [(1, 1000), (1400, 1001), (5, 2000)]);
    // Without the merge at the boundary, the lowest id survives as everywhere else.
    let (_db, mut client) = database();
    many_groups(&mut client, &[(999, 1), (1400, 1001)]);
    assert_eq!(run_0083(&mut client), [(1, 999), (1001, 1400)]);
}

#[test]
fn created_rows_get_ids_survivor_by_survivor() {
    let (_db, mut client) = database();
    client
        .batch_execute(
            "INSERT INTO sentry_groupedmessage (id, project_id, checksum) VALUES
                 (1, 1, 'b'), (2, 1, 'a'), (3, 1, 'b'), (4, 1, 'a');
             INSERT INTO sentry_messagefiltervalue (project_id, group_id, key, value) VALUES
                 (1, 4, 'k', 'z'), (1, 3, 'k', 'y'), (1, 4, 'k', 'x'), (1, 3, 'k', 'w');",
        )
        .unwrap();
    run_0083(&mut client);
    let rows: Vec<(i32, i32, String)> = client
        .query(
            "SELECT id, group_id, value FROM sentry_messagefiltervalue ORDER BY id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        rows,
        [
            (5, 1, "w".into()),
            (6, 1, "y".into()),
            (7, 2, "x".into()),
            (8, 2, "z".into())
        ]
    );
}

#[test]
fn without_duplicates_nothing_changes() {
    let (_db, mut client) = database();
    many_groups(&mut client, &[]);
    client
        .batch_execute("INSERT INTO sentry_message (group_id) SELECT id FROM sentry_groupedmessage")
        .unwrap();
    let digest = |client: &mut Client| -> String {
        client
            .query_one(
                "SELECT md5(string_agg(g::text, ',' ORDER BY g.id)) FROM sentry_groupedmessage g",
                &[],
            )
            .unwrap()
            .get(0)
    };
    let before = digest(&mut client);
    assert!(run_0083(&mut client).is_empty());
    assert_eq!(digest(&mut client), before);
}

/// Killed before its commit (South's transaction of 0083), the script leaves nothing behind:
/// no merge, no table of its own; the run South then repeats gives the same result as one run,
/// but for the ids of the rows it creates: sequences are not transactional, so the killed run
/// used some up (Sentry's own migration, killed, does the same).
#[test]
fn a_merge_killed_before_its_commit_leaves_nothing_and_runs_again_the_same() {
    let setup = "INSERT INTO sentry_groupedmessage (id, project_id, checksum, times_seen) VALUES
             (1, 1, 'a', 1), (2, 1, 'a', 2), (3, 1, 'b', 3), (4, 1, 'b', 4);
         INSERT INTO sentry_messagefiltervalue (project_id, group_id, key, value, times_seen) VALUES
             (1, 2, 'k', 'v', 1), (1, 4, 'k', 'v', 1);";
    let state = |client: &mut Client| -> Vec<String> {
        client
            .query(
                "SELECT format('%s %s', 'group', g.*) FROM sentry_groupedmessage g
                 UNION ALL SELECT format('%s %s', 'tag', t.group_id || ' ' || t.times_seen)
                     FROM sentry_messagefiltervalue t
                 UNION ALL SELECT format('%s %s', 'table', c.relname) FROM pg_class c
                     WHERE c.relname LIKE 'sentry_migrate%'
                 ORDER BY 1",
                &[],
            )
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect()
    };
    let (_once, mut once) = database();
    once.batch_execute(setup).unwrap();
    run_0083(&mut once);

    let (_db, mut client) = database();
    client.batch_execute(setup).unwrap();
    let before = state(&mut client);
    let killer = _db.client();
    let pid: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .unwrap()
        .get(0);
    let mut tx = client.transaction().unwrap();
    tx.batch_execute(&merge_sql()).unwrap();
    // The process dies before South's commit: the server ends its session.
    let mut killer = killer;
    killer
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .unwrap();
    assert!(tx.commit().is_err(), "the killed session cannot commit");
    let mut client = _db.client();
    assert_eq!(
        state(&mut client),
        before,
        "nothing of the killed run is left"
    );
    run_0083(&mut client);
    assert_eq!(state(&mut client), state(&mut once));
    let tags = "sentry_messagefiltervalue";
    assert_eq!(ids_of(&mut once, tags), [3, 4]);
    assert_eq!(
        ids_of(&mut client, tags),
        [5, 6],
        "the killed run used 3 and 4"
    );
}
