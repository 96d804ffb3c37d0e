//! Sentry 6's step: the helper runs its upgrade with 0083 set-based (or Sentry's own with
//! `--sentry-own-upgrade`), every South migration is timed in the log, the journal and the
//! report, and the downtime is shown. The real `xtask` binary with the recording fake; harness
//! `common/`.

mod common;

use common::*;

#[test]
fn every_south_migration_of_sentry6s_upgrade_is_timed_in_its_log_the_journal_and_the_report() {
    if skip() {
        return;
    }
    let repo = Repo::new("migtimes");
    let out = repo.xtask(&["migrate"], None);
    assert!(out.ok, "{out:#?}");
    // The fake's upgrade prints South's lines: djcelery 0004 (50 ms), sentry 0065 (400 ms), 0083
    // (the merge, then 800 ms), 0100 (200 ms).
    let json: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(repo.root.join("dumps/journal.json")).unwrap())
            .unwrap();
    let steps = json["steps"].as_array().unwrap();
    let upgrade = steps
        .iter()
        .find(|it| it["name"] == "sentry6-upgrade")
        .unwrap();
    let migrations = upgrade["migrations"].as_array().expect("migration times");
    let times: Vec<(&str, f64, f64)> = migrations
        .iter()
        .map(|it| {
            (
                it["name"].as_str().unwrap(),
                it["at_secs"].as_f64().unwrap(),
                it["secs"].as_f64().unwrap(),
            )
        })
        .collect();
    let names: Vec<String> = migrations
        .iter()
        .map(|it| {
            format!(
                "{}:{}",
                it["app"].as_str().unwrap(),
                it["name"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        names,
        [
            "djcelery:0004_v30_changes",
            "sentry:0065_create_default_project_key",
            "sentry:0083_migrate_dupe_groups",
            "sentry:0100_fake"
        ],
        "in South's order"
    );
    for (name, at, secs) in &times {
        assert!(*secs >= 0.0 && *at >= 0.0, "{name}: {times:?}");
    }
    assert!(times.windows(2).all(|it| it[0].1 <= it[1].1), "{times:?}");
    // The fake's sleeps are lower bounds; the migrations lie within the step (its time is
    // journaled to 0.1 s).
    for (name, least) in [
        ("0065_create_default_project_key", 0.4),
        ("0083_migrate_dupe_groups", 0.8),
        ("0100_fake", 0.2),
    ] {
        let secs = times.iter().find(|it| it.0 == name).unwrap().2;
        assert!(secs >= least && secs < least + 5.0, "{name}: {times:?}");
    }
    let sum: f64 = times.iter().map(|it| it.2).sum();
    let step_secs = upgrade["elapsed_secs"].as_f64().unwrap();
    assert!(sum <= step_secs + 0.05, "{sum} > {step_secs}: {times:?}");
    // Steps whose programs ran no migration record none.
    for step in steps.iter().filter(|it| it["name"] != "sentry6-upgrade") {
        assert!(step.get("migrations").is_none(), "{step}");
    }

    // The report: the slowest first, with seconds and share of the step; only this step.
    let report = fs::read_to_string(repo.root.join("dumps/report.md")).unwrap();
    assert_eq!(
        report.matches("## Slowest migrations").count(),
        1,
        "{report}"
    );
    assert!(
        report.contains("`sentry6-upgrade`: 4 migration(s), "),
        "{report}"
    );
    let rows: Vec<&str> = report
        .lines()
        .filter(|it| it.starts_with("| sentry:") || it.starts_with("| djcelery:"))
        .collect();
    let ranked: Vec<&str> = rows
        .iter()
        .map(|it| it.split(" | ").next().unwrap().trim_start_matches("| "))
        .collect();
    assert_eq!(
        ranked,
        [
            "sentry:0083_migrate_dupe_groups",
            "sentry:0065_create_default_project_key",
            "sentry:0100_fake",
            "djcelery:0004_v30_changes"
        ],
        "{report}"
    );
    assert!(rows.iter().all(|it| it.ends_with("% |")), "{rows:?}");
    let report_json: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(repo.root.join("dumps/report.json")).unwrap())
            .unwrap();
    let in_report = report_json["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|it| it["name"] == "sentry6-upgrade")
        .unwrap()["migrations"]
        .clone();
    assert_eq!(in_report, upgrade["migrations"], "report.json has them all");

    // The summary names the 3 slowest.
    assert!(
        out.stdout
            .contains("  slowest migrations of sentry6-upgrade: sentry:0083_migrate_dupe_groups "),
        "{}",
        out.stdout
    );
    assert_eq!(
        out.stdout.matches("0100_fake").count(),
        1,
        "3 of 4: {}",
        out.stdout
    );
    assert!(!out.stdout.contains("djcelery"), "{}", out.stdout);

    // The log: the program's stdout as it printed it, then the migrations time-stamped.
    let log = fs::read_dir(repo.root.join("dumps/logs"))
        .unwrap()
        .flatten()
        .find(|it| {
            it.file_name()
                .to_string_lossy()
                .ends_with("-sentry6-upgrade.log")
        })
        .unwrap()
        .path();
    let log = fs::read_to_string(log).unwrap();
    let printed = [
        "Migrating...",
        "Running migrations for djcelery:",
        " > djcelery:0004_v30_changes",
        " - Loading initial data for djcelery.",
        "Installed 0 object(s) from 0 fixture(s)",
        "Running migrations for sentry:",
        " > sentry:0065_create_default_project_key",
        " > sentry:0083_migrate_dupe_groups",
        "Merging duplicate events for <Group: fake>",
        " > sentry:0100_fake",
        " - Loading initial data for sentry.",
        "Installed 0 object(s) from 0 fixture(s)",
        "",
        "Synced:",
        " > django.contrib.auth",
        "",
        "Migrated:",
        " - sentry",
    ];
    let (program, times_block) = log.split_once("migration times (").expect(&log);
    // Stderr (psql's, none here) may come between the lines, never inside one.
    let stdout: Vec<&str> = program
        .lines()
        .skip(1)
        .filter(|it| printed.contains(it))
        .collect();
    assert_eq!(stdout, printed, "{log}");
    let block: Vec<&str> = times_block.lines().skip(1).collect();
    assert_eq!(block.len(), 5, "{log}");
    assert!(
        block[2].contains(" s  sentry:0083_migrate_dupe_groups")
            && block[2].starts_with("  20")
            && block[2].contains("Z  +"),
        "{log}"
    );
    assert!(block[4].starts_with("  4 migration(s), "), "{log}");
}

/// Sentry 6's step runs the helper (0083 set-based), shows what 0083 merged under its `ok`, and
/// `--sentry-own-upgrade` runs Sentry's own `bin/sentry upgrade --noinput` instead.
#[test]
fn sentry6s_upgrade_runs_0083_set_based_unless_told_to_run_sentrys_own() {
    if skip() {
        return;
    }
    let repo = Repo::new("setbased");
    let out = repo.xtask(&["migrate"], None);
    assert!(out.ok, "{out:#?}");
    assert_eq!(
        repo.calls().last().unwrap(),
        "py xtask/python/sentry_helper.py --config=settings/settings.py upgrade"
    );
    assert!(
        out.stdout.contains(
            "0083_migrate_dupe_groups set-based: 9 groups walked, 1 set(s) of duplicates merged"
        ),
        "{}",
        out.stdout
    );

    // The downtime: every step needs Sentry stopped, so from preflight to the end.
    assert!(
        out.stdout
            .contains("  Sentry down (`preflight` to the end)"),
        "{}",
        out.stdout
    );
    let report = fs::read_to_string(repo.root.join("dumps/report.md")).unwrap();
    assert!(
        report.contains("- downtime: Sentry down from step `preflight` to the end: "),
        "{report}"
    );

    let own = Repo::new("sentryown");
    let out = own.xtask(&["migrate", "--sentry-own-upgrade"], None);
    assert!(out.ok, "{out:#?}");
    assert_eq!(
        own.calls().last().unwrap(),
        "sentry --config=settings/settings.py upgrade --noinput"
    );
    assert!(!out.stdout.contains("set-based"), "{}", out.stdout);
    let dry = own.xtask(&["migrate", "--dry-run", "--sentry-own-upgrade"], None);
    assert!(
        dry.stdout
            .contains("Sentry's own upgrade as shipped (--sentry-own-upgrade)"),
        "{}",
        dry.stdout
    );
}
