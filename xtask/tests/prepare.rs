//! `migrate --prepare`: what needs no downtime, run while Sentry 4 serves (the db held open as
//! a running Sentry holds it), settings_local.py untouched; the cut-over then skips it and its
//! downtime leaves it out, to the same result as a plain run. Refused over another Sentry
//! version and once the cut-over has begun. The real `xtask` binary with the recording fake;
//! harness `common/`.

mod common;

use std::{io::BufRead, os::unix::fs::PermissionsExt, process::Child};

use common::*;

/// The install as it runs before the cut-over: tag 1 installed, settings on SQLite.
fn installed(tag: &str) -> Repo {
    let repo = Repo::new(tag);
    let status = std::process::Command::new(repo.root.join("bin/buildout"))
        .args(["-c", "buildout/tag1-sentry4.cfg"])
        .current_dir(&repo.root)
        .env("FAKE_CALLS", repo.root.join("install-calls.log"))
        .status()
        .unwrap();
    assert!(status.success());
    let out = repo.xtask(&["switch-settings", "sqlite"], None);
    assert!(out.ok, "{out:#?}");
    repo
}

/// A process that holds the db open, as a running Sentry 4 does.
fn sentry4_running(repo: &Repo) -> Child {
    let mut child = std::process::Command::new("python3")
        .args([
            "-c",
            "import sys, time; f = open(sys.argv[1], 'rb'); print('open', flush=True); time.sleep(120)",
        ])
        .arg(repo.root.join("var/sentry.db"))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    child
}

fn journal(repo: &Repo) -> serde_json::Value {
    serde_json::from_str(&fs::read_to_string(repo.root.join("dumps/journal.json")).unwrap())
        .unwrap()
}

#[test]
fn prepare_builds_the_target_while_sentry_4_runs_and_the_cut_over_skips_it() {
    if skip() {
        return;
    }
    let reference = installed("prepref");
    let out = reference.xtask(&["migrate"], None);
    assert!(out.ok, "{out:#?}");

    let repo = installed("prepare");
    let settings_local = repo.root.join("settings/settings_local.py");
    let live_settings = fs::read(&settings_local).unwrap();
    let mut sentry4 = sentry4_running(&repo);
    let out = repo.xtask(&["migrate", "--prepare"], None);
    assert!(out.ok, "{out:#?}");
    for line in [
        "[1/5] buildout-tag1 … ok",
        "[2/5] pg-create-database … ok",
        "[3/5] pg-upgrade … ok",
        "[4/5] pg-clear-generated-rows … ok",
        "[5/5] pg-abstime-shim … ok",
        "next:   stop Sentry 4, then `cargo xtask migrate` (the cut-over: it skips what is prepared)",
    ] {
        assert!(out.stdout.contains(line), "{line}: {}", out.stdout);
    }
    let calls = repo.calls();
    assert!(
        calls.len() == 2
            && calls[0].starts_with("buildout -c buildout/tag1-sentry4.cfg ")
            && calls[1] == "sentry --config=dumps/prepare/settings.py upgrade --noinput",
        "{calls:?}"
    );
    assert_eq!(
        fs::read(&settings_local).unwrap(),
        live_settings,
        "the running Sentry's settings changed"
    );
    let prepared = repo.root.join("dumps/prepare/settings_local.py");
    let text = fs::read_to_string(&prepared).unwrap();
    assert!(
        text.contains("postgresql_psycopg2") && text.contains(&repo.target),
        "{text}"
    );
    assert_eq!(
        fs::metadata(&prepared).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // Sentry 4's schema, its generated rows cleared.
    let projects: i64 = repo
        .target_client()
        .query_one("SELECT count(*) FROM sentry_project", &[])
        .unwrap()
        .get(0);
    assert_eq!(projects, 0);
    let steps = journal(&repo)["steps"].as_array().unwrap().clone();
    assert_eq!(steps.len(), 5);
    assert!(steps.iter().all(|it| it["prepared"] == true), "{steps:?}");

    // The cut-over needs Sentry 4 stopped, as always.
    let out = repo.xtask(&["migrate"], None);
    assert!(
        !out.ok && out.stderr.contains("Sentry is running or holds the db"),
        "{out:#?}"
    );
    sentry4.kill().unwrap();
    sentry4.wait().unwrap();
    let out = repo.xtask(&["migrate"], None);
    assert!(out.ok, "{out:#?}");
    for line in [
        "[3/19] buildout-tag1 … done earlier (journal)",
        "[10/19] pg-create-database … done earlier (journal)",
        "[12/19] pg-upgrade … done earlier (journal)",
        "[13/19] pg-clear-generated-rows … done earlier (journal)",
        "[14/19] pg-abstime-shim … done earlier (journal)",
        "Sentry down (`preflight` to the end)",
        "prepared while Sentry 4 served",
    ] {
        assert!(out.stdout.contains(line), "{line}: {}", out.stdout);
    }
    assert_eq!(
        repo.calls()
            .iter()
            .filter(|it| *it == "sentry --config=settings/settings.py upgrade --noinput")
            .count(),
        1,
        "Sentry 4's upgrade of SQLite, no second one of PostgreSQL: {:?}",
        repo.calls()
    );
    let report = fs::read_to_string(repo.root.join("dumps/report.md")).unwrap();
    assert!(
        report.contains("- downtime: Sentry down from step `preflight` to the end")
            && report.contains(
                "- prepared beforehand while Sentry 4 served (`migrate --prepare`, not downtime)"
            ),
        "{report}"
    );
    // The downtime is the cut-over's steps only.
    let journal = journal(&repo);
    let down: f64 = journal["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|it| it["prepared"] != true)
        .map(|it| it["elapsed_secs"].as_f64().unwrap())
        .sum();
    assert!(
        report.contains(&format!("to the end: {down:.1} s")),
        "{down}: {report}"
    );
    // The same result as a run without --prepare.
    assert_eq!(
        table_hashes(&mut repo.target_client()),
        table_hashes(&mut reference.target_client())
    );
    let facts = |repo: &Repo| {
        let mut facts = report_facts(repo);
        let mut steps: Vec<String> = facts["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|it| it.as_str().unwrap().to_string())
            .collect();
        steps.sort();
        facts["steps"] = serde_json::json!(steps);
        facts
    };
    assert_eq!(facts(&repo), facts(&reference));

    // Once the cut-over has begun, --prepare is refused.
    let out = repo.xtask(&["migrate", "--prepare"], None);
    assert!(
        !out.ok
            && out.stderr.contains(
                "--prepare is for before the cut-over, but the cut-over has begun (done: preflight"
            ),
        "{out:#?}"
    );
}

#[test]
fn prepare_will_not_install_another_sentry_under_the_running_one() {
    if skip() {
        return;
    }
    let repo = installed("prepver");
    // The running install is Sentry 4.9.0; tag 1 pins 4.10.0.
    let sentry = repo.root.join("bin/sentry");
    let script = fs::read_to_string(&sentry)
        .unwrap()
        .replace("sentry-4.10.0-py2.7.egg", "sentry-4.9.0-py2.7.egg");
    fs::write(&sentry, script).unwrap();
    let mut sentry4 = sentry4_running(&repo);
    let out = repo.xtask(&["migrate", "--prepare"], None);
    sentry4.kill().unwrap();
    sentry4.wait().unwrap();
    assert!(!out.ok, "{out:#?}");
    assert!(
        out.stderr.contains(
            "bin/sentry runs Sentry 4.9.0, but buildout/tag1-sentry4.cfg installs Sentry 4.10.0: installing it under the running Sentry is not safe"
        ),
        "{}",
        out.stderr
    );
    assert!(repo.calls().is_empty(), "{:?}", repo.calls());
    assert!(!repo.target_exists());
}
