//! The way back, as a user takes it: `cargo xtask rollback` refused while Sentry 6 holds a new
//! event, then `--restore-backup --force`, and Sentry 4.10 proven on the restored db
//! (`prove4.py`) with the events and groups it held before `migrate`.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{ensure, Context, Result};
use xshell::{cmd, Shell};

use super::{
    run::{log_run, run_tool},
    seed::Seeded,
    server::sentry4_server,
};
use crate::{journal::Journal, util};

/// Events and groups in a Sentry 4 SQLite db.
pub(super) fn sentry4_counts(db: &Path) -> Result<(i64, i64)> {
    let count = || -> rusqlite::Result<(i64, i64)> {
        let conn =
            rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        conn.query_row(
            "SELECT (SELECT count(*) FROM sentry_message), (SELECT count(*) FROM sentry_groupedmessage)",
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
    };
    count().with_context(|| format!("cannot count events and groups in {}", db.display()))
}

/// `cargo xtask rollback` after the Sentry 6 proof, which stored one new event: without
/// `--force` it must refuse naming that one event and change nothing; with `--restore-backup
/// --force` it puts back the backup (sha256 as recorded, the migrated db kept aside), and the
/// real Sentry 4.10 on SQLite then serves the pre-migration events and groups over HTTP.
pub(super) fn rollback_to_sentry4(
    sh: &Shell,
    root: &Path,
    exe: &Path,
    pg_env: &[(&'static str, String)],
    logs: &Path,
    seeded: &Seeded,
    source: (i64, i64),
) -> Result<serde_json::Value> {
    let db = root.join("var/sentry.db");
    let settings_local = root.join("settings/settings_local.py");
    let journal = Journal::load(&root.join("dumps/journal.json"))?
        .context("no dumps/journal.json after `migrate`")?;
    let backup = journal
        .backup
        .context("the journal records no backup after `migrate`")?;
    let migrated_hash = util::sha256_file(&db)?;
    let settings_before = fs::read(&settings_local)?;
    let log = logs.join("rollback.log");

    let (ok, stderr) = run_tool(
        sh,
        exe,
        &["rollback", "--restore-backup"],
        root,
        pg_env,
        &log,
    )?;
    ensure!(
        !ok,
        "`rollback --restore-backup` went ahead though Sentry 6 stored a new event; log {}",
        log.display()
    );
    let refusal = "Sentry 6 stored 1 event(s) after the migration";
    ensure!(
        stderr.contains(refusal) && stderr.contains("--force"),
        "`rollback` without --force did not say {refusal:?} (the proof stored exactly one event); log {}:\n{}",
        log.display(),
        util::log_tail(&log, 15)
    );
    ensure!(
        util::sha256_file(&db)? == migrated_hash && fs::read(&settings_local)? == settings_before,
        "the refused rollback changed var/sentry.db or settings/settings_local.py; log {}",
        log.display()
    );
    println!("    without --force: refused, naming the 1 event Sentry 6 stored; nothing changed");

    log_run(
        cmd!(sh, "{exe} rollback --restore-backup --force")
            .env("SENTRY_MIGRATE_ROOT", root)
            .envs(pg_env.iter().cloned()),
        &log,
    )
    .context("`cargo xtask rollback --restore-backup --force` failed")?;
    let restored = util::sha256_file(&db)?;
    ensure!(
        restored == backup.sha256,
        "the restored db has sha256 {restored}, the journal recorded {} for the backup {}",
        backup.sha256,
        backup.path
    );
    let aside: Vec<PathBuf> = fs::read_dir(root.join("var"))?
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| {
            path.file_name().is_some_and(|name| {
                name.to_string_lossy()
                    .starts_with("sentry.db.before-rollback-")
            })
        })
        .collect();
    ensure!(
        aside.len() == 1 && util::sha256_file(&aside[0])? == migrated_hash,
        "the migrated db was not kept aside as var/sentry.db.before-rollback-*: {aside:?}"
    );

    let state_path = root.join("prove4-state.json");
    fs::write(&state_path, serde_json::to_string(&seeded.state)?)?;
    let port = util::free_port()?;
    let facts: serde_json::Value = {
        let _server = sentry4_server(sh, port, &logs.join("sentry4-after-rollback-web.log"))?;
        let base = format!("http://127.0.0.1:{port}");
        let out = log_run(
            cmd!(
                sh,
                "bin/py xtask/python/rehearse/prove4.py settings/settings.py {base} {state_path}"
            ),
            &log,
        )?;
        serde_json::from_str(out.trim()).context("prove4.py printed no JSON")?
    };
    ensure!(
        facts["sentry_version"]
            .as_str()
            .is_some_and(|version| version.starts_with("4.")),
        "after the rollback bin/py runs Sentry {}, not 4.x: {facts}",
        facts["sentry_version"]
    );
    ensure!(
        facts["engine"]
            .as_str()
            .is_some_and(|engine| engine.ends_with("sqlite3")),
        "after the rollback the settings do not point at SQLite: {facts}"
    );
    ensure!(
        facts["login_ok"] == true && facts["stream_ok"] == true,
        "Sentry 4 after the rollback: login or event stream failed: {facts}"
    );
    ensure!(
        facts["events"].as_i64() == Some(source.0) && facts["groups"].as_i64() == Some(source.1),
        "Sentry 4 after the rollback sees {} events and {} groups, the db held {} and {} before `migrate`",
        facts["events"],
        facts["groups"],
        source.0,
        source.1
    );
    println!(
        "    --restore-backup --force: db sha256 = the backup's ({}…), the migrated db kept as {}; Sentry {} on SQLite: login ok, stream lists the events, {} events and {} groups as before `migrate`",
        &restored[..12],
        aside[0].file_name().unwrap_or_default().to_string_lossy(),
        facts["sentry_version"].as_str().unwrap_or("?"),
        source.0,
        source.1
    );
    Ok(facts)
}
