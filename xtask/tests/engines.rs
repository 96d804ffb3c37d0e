//! The engines: the copy engine loads what loaddata loads, rolls back whole, and loaddata is refused where it cannot fit.
//! The real `xtask` binary on a scratch repo with the recording fake (tests/fake/fake_sentry.py)
//! and a real PostgreSQL; the harness is `common/`.

mod common;

use common::*;

/// The copy engine loads what the runbook's dumpdata/loaddata load, ids, values and instants
/// included (Sentry 4 ran in America/Chicago: winter, summer, the spring gap, the autumn fold),
/// and Sentry 6's upgrade and checks pass on its result.
#[test]
fn the_copy_engine_loads_what_loaddata_loads() {
    if skip() {
        return;
    }
    let zone = "TIME_ZONE = 'America/Chicago'\n";
    let loaddata = Repo::new("eqload");
    fs::write(loaddata.root.join("settings/sentry_conf.py"), zone).unwrap();
    let out = loaddata.xtask(
        &[
            "migrate",
            "--engine",
            "loaddata",
            "--until",
            "verify-postgres",
        ],
        None,
    );
    assert!(out.ok, "{out:#?}");

    let copy = Repo::new("eqcopy");
    fs::write(copy.root.join("settings/sentry_conf.py"), zone).unwrap();
    let out = copy.xtask(
        &["migrate", "--engine", "copy", "--until", "verify-postgres"],
        None,
    );
    assert!(out.ok, "{out:#?}");
    for line in [
        "[9/19] count-source … ok",
        "[15/19] pg-copy … ok",
        "[16/19] verify-postgres … ok",
    ] {
        assert!(out.stdout.contains(line), "{line}: {}", out.stdout);
    }
    assert!(
        !copy
            .calls()
            .iter()
            .any(|call| call.contains("dumpdata") || call.contains(" load ")),
        "{:?}",
        copy.calls()
    );

    let expected = table_hashes(&mut loaddata.target_client());
    assert_eq!(table_hashes(&mut copy.target_client()), expected);
    // The foreign keys and indexes the copy dropped for the load are all back.
    let schema = |client: &mut postgres::Client| -> Vec<String> {
        client
            .query(
                "SELECT pg_get_indexdef(indexrelid) FROM pg_index i JOIN pg_class t ON t.oid = i.indrelid \
                 WHERE t.relnamespace = 'public'::regnamespace \
                 UNION ALL SELECT conrelid::regclass::text || ' ' || pg_get_constraintdef(oid) FROM pg_constraint \
                 WHERE connamespace = 'public'::regnamespace ORDER BY 1",
                &[],
            )
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect()
    };
    assert_eq!(
        schema(&mut copy.target_client()),
        schema(&mut loaddata.target_client())
    );
    let instants: Vec<(i32, Option<f64>)> = copy
        .target_client()
        .query(
            "SELECT id, extract(epoch FROM datetime)::float8 FROM sentry_message ORDER BY id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    // 10:00 CST = 16:00Z; 10:00:00.25 CDT = 15:00:00.25Z.
    assert_eq!(instants[0], (1, Some(1_357_056_000.0)));
    assert_eq!(instants[1], (2, Some(1_372_690_800.25)));
    assert_eq!(instants[4], (10, None));

    let out = copy.xtask(&["migrate", "--engine", "copy"], None);
    assert!(out.ok, "{out:#?}");
    assert!(
        out.stdout.contains("[19/19] verify-sentry6 … ok"),
        "{}",
        out.stdout
    );
    let report = fs::read_to_string(copy.root.join("dumps/report.md")).unwrap();
    assert!(report.contains("copy engine: "), "{report}");
}

/// A copy that breaks a foreign key fails at commit with PostgreSQL's words, and leaves the
/// target as it was before the copy (one transaction).
#[test]
fn a_failed_copy_rolls_back_and_names_the_constraint() {
    if skip() {
        return;
    }
    let repo = Repo::new("cpfk");
    rusqlite::Connection::open(repo.root.join("var/sentry.db"))
        .unwrap()
        .execute_batch("INSERT INTO sentry_groupbookmark VALUES (3, 99, 1)")
        .unwrap();
    let out = repo.xtask(&["migrate", "--engine", "copy"], None);
    assert!(!out.ok);
    for text in [
        "step `pg-copy` failed: re-creating `ALTER TABLE sentry_groupbookmark ADD CONSTRAINT",
        "all of it rolled back: the target is as before",
        "violates foreign key constraint",
        "Key (group_id)=(99) is not present in table \"sentry_groupedmessage\"",
        "resume: cargo xtask migrate (starts again at `pg-copy`",
    ] {
        assert!(out.stderr.contains(text), "{text}: {}", out.stderr);
    }
    let rows: i64 = repo
        .target_client()
        .query_one(
            "SELECT (SELECT count(*) FROM sentry_message) + (SELECT count(*) FROM sentry_groupbookmark) + (SELECT count(*) FROM auth_user)",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(rows, 0, "everything rolled back");
    let keys: i64 = repo
        .target_client()
        .query_one(
            "SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND connamespace = 'public'::regnamespace",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(keys >= 5, "the foreign keys are back: {keys}");
}

/// Where Django's dumpdata cannot fit in memory, the loaddata engine is refused in preflight,
/// pointing at the copy engine, which takes the same db.
#[test]
fn the_loaddata_engine_is_refused_where_it_cannot_fit() {
    if skip() {
        return;
    }
    let available = xtask::util::available_memory().expect("MemAvailable in /proc/meminfo");
    let events = available / (68 * 1024) + 1000;
    let repo = Repo::new("memory");
    rusqlite::Connection::open(repo.root.join("var/sentry.db"))
        .unwrap()
        .execute_batch(&format!(
            "WITH RECURSIVE n(i) AS (SELECT 100 UNION ALL SELECT i + 1 FROM n WHERE i < {}) \
             INSERT INTO sentry_message SELECT i, 7, NULL FROM n",
            100 + events
        ))
        .unwrap();
    let out = repo.xtask(
        &["migrate", "--engine", "loaddata", "--until", "preflight"],
        None,
    );
    assert!(!out.ok);
    assert!(
        out.stderr.contains("the loaddata engine needs about")
            && out.stderr.contains("use `--engine copy` (flat memory)"),
        "{}",
        out.stderr
    );
    let out = repo.xtask(
        &["migrate", "--engine", "copy", "--until", "preflight"],
        None,
    );
    assert!(out.ok, "{out:#?}");
}

/// Values Django 1.4 reads its own way load the same through both engines: booleans (only `1`
/// is true: 2, `t`, `true` are false), datetimes Django's pattern takes that PostgreSQL reads
/// otherwise or refuses (one-digit fields, a trailing newline, an offset). The fake's dumpdata
/// reads SQLite with Django's converters and regexes.
#[test]
fn both_engines_read_values_as_django_does() {
    if skip() {
        return;
    }
    let seed = "ALTER TABLE sentry_project ADD COLUMN public bool;
         UPDATE sentry_project SET public = 1 WHERE id = 1;
         UPDATE sentry_project SET public = 't' WHERE id = 3;
         UPDATE sentry_project SET public = 2 WHERE id = 4;
         INSERT INTO sentry_project VALUES (8, 'p8', 'true'), (9, 'p9', '1'), (11, 'p11', 0);
         INSERT INTO sentry_message VALUES (20, 7, '2012-4-9 4:8:16'), (21, 7, '2012-04-23 10:20:30' || char(10)),
           (22, 7, '2012-04-23T10:20:30.400+02:30'), (23, 7, '2012-04-23 10:20Z');";
    let mut hashes = Vec::new();
    for engine in ["loaddata", "copy"] {
        let repo = Repo::new(&format!("django{engine}"));
        rusqlite::Connection::open(repo.root.join("var/sentry.db"))
            .unwrap()
            .execute_batch(seed)
            .unwrap();
        let out = repo.xtask(
            &["migrate", "--engine", engine, "--until", "verify-postgres"],
            None,
        );
        assert!(out.ok, "{engine}: {out:#?}");
        let mut client = repo.target_client();
        let public: Vec<(i32, Option<bool>)> = client
            .query("SELECT id, public FROM sentry_project ORDER BY id", &[])
            .unwrap()
            .iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect();
        assert_eq!(
            public,
            [
                (1, Some(true)),
                (3, Some(false)),
                (4, Some(false)),
                (8, Some(false)),
                (9, Some(true)),
                (11, Some(false))
            ],
            "{engine}"
        );
        client.batch_execute("SET TIME ZONE 'UTC'").unwrap();
        let dates: Vec<String> = client
            .query(
                "SELECT datetime::text FROM sentry_message WHERE id >= 20 ORDER BY id",
                &[],
            )
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect();
        assert_eq!(
            dates,
            [
                "2012-04-09 04:08:16+00",
                "2012-04-23 10:20:30+00",
                "2012-04-23 07:50:30.4+00",
                "2012-04-23 10:20:00+00"
            ],
            "{engine}"
        );
        hashes.push(table_hashes(&mut client));
    }
    assert_eq!(hashes[0], hashes[1]);
}
