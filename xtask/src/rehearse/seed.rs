//! The Sentry 4 side of the rehearsal: the install (buildout, `upgrade`), its accounts and
//! projects via seed.py (Sentry 4's ORM), events and values PostgreSQL refuses sent over HTTP,
//! each batch checked against what Sentry 4 stored.

use std::{collections::BTreeMap, fs, path::Path};

use anyhow::{ensure, Context, Result};
use xshell::{cmd, Shell};

use super::{run::log_run, server::sentry4_server};
use crate::{config::Config, settings, util};

/// The zone the rehearsal's Sentry 4 runs with: not UTC, with daylight saving.
pub(super) const REHEARSAL_ZONE: &str = "America/Chicago";

/// What the Sentry 4 seeding made.
pub(super) struct Seeded {
    pub(super) state: serde_json::Value,
    pub(super) events: u64,
    /// Sent only to Sentry 4.10 (not to the long-lived install's 4.0).
    pub(super) bad: Option<BadValues>,
}

/// The events with values PostgreSQL refuses (send_bad_values.py), as Sentry 4 stored them.
pub(super) struct BadValues {
    pub(super) events: u64,
    /// Server names of exactly 128 characters, one of them 4 bytes long in UTF-8: they fit
    /// PostgreSQL's varchar(128) (characters), so they must arrive unchanged.
    pub(super) server_names_128: Vec<String>,
}

/// `bin/py seed.py CONFIG COMMAND` (Sentry 4's ORM), with the web port its DSNs name; its JSON.
fn seed(sh: &Shell, log: &Path, command: &str, port: u16) -> Result<serde_json::Value> {
    let out = log_run(
        cmd!(
            sh,
            "bin/py xtask/python/rehearse/seed.py settings/settings.py {command}"
        )
        .env("SENTRY_WEB_PORT", port.to_string()),
        log,
    )?;
    serde_json::from_str(out.trim()).with_context(|| format!("seed.py {command} printed no JSON"))
}

/// How many of the events sent Sentry must have stored.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Strictness {
    /// A fresh 4.10 install stores every event.
    AllStored,
    /// Long-lived installs keep SQLite-only unique indexes (`sentry_filtervalue(key, value)`)
    /// that make Sentry reject events of every project but the first: some must be stored.
    SomeStored,
}

/// One round of events: where Sentry 4 listens, how many, a tag in their text, its log.
struct Batch<'a> {
    port: u16,
    events: u64,
    tag: &'a str,
    web_log: &'a str,
}

/// Runs Sentry 4's web server, sends the batch over HTTP to `dsns`, stops it; returns how many
/// events each project has now.
fn send_events(
    sh: &Shell,
    root: &Path,
    logs: &Path,
    dsns: &[String],
    batch: Batch<'_>,
) -> Result<BTreeMap<i64, u64>> {
    fs::write(root.join("dsns.json"), serde_json::to_string(dsns)?)?;
    {
        let _server = sentry4_server(sh, batch.port, &logs.join(batch.web_log))?;
        let count = batch.events.to_string();
        let tag = batch.tag;
        log_run(
            cmd!(
                sh,
                "bin/py xtask/python/rehearse/send_events.py dsns.json {count} {tag}"
            ),
            &logs.join("sentry4.log"),
        )?;
    }
    stored_events(root)
}

/// Events per project in the Sentry 4 SQLite db.
fn stored_events(root: &Path) -> Result<BTreeMap<i64, u64>> {
    let path = root.join("var/sentry.db");
    let count = || -> rusqlite::Result<BTreeMap<i64, u64>> {
        let conn = rusqlite::Connection::open_with_flags(
            &path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )?;
        let mut stmt =
            conn.prepare("SELECT project_id, count(*) FROM sentry_message GROUP BY project_id")?;
        let rows = stmt.query_map([], |row| {
            Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)? as u64))
        })?;
        rows.collect()
    };
    count().with_context(|| {
        format!(
            "cannot count the events per project in table sentry_message of {}: did the Sentry 4 install (bin/sentry upgrade) complete?",
            path.display()
        )
    })
}

/// Runs Sentry 4's web server again on `port` (the DSNs name it) and sends send_bad_values.py's
/// few events to every project: values PostgreSQL refuses, differing per project (see the
/// script). Checks Sentry stored every one of them, and stored the values as sent.
fn send_bad_values(
    sh: &Shell,
    root: &Path,
    logs: &Path,
    dsns: &[(i64, String)],
    port: u16,
    tag: &str,
) -> Result<BadValues> {
    let before = stored_events(root)?;
    let urls: Vec<&str> = dsns.iter().map(|(_, dsn)| dsn.as_str()).collect();
    fs::write(root.join("dsns.json"), serde_json::to_string(&urls)?)?;
    let web_log = logs.join("sentry4-web-bad-values.log");
    let out = {
        let _server = sentry4_server(sh, port, &web_log)?;
        log_run(
            cmd!(
                sh,
                "bin/py xtask/python/rehearse/send_bad_values.py dsns.json {tag}"
            ),
            &logs.join("sentry4.log"),
        )?
    };
    let printed: serde_json::Value =
        serde_json::from_str(out.trim()).context("send_bad_values.py printed no JSON")?;
    let after = stored_events(root)?;
    let mut events = 0;
    for (project, dsn) in dsns {
        let sent = printed["sent"][dsn.as_str()]
            .as_u64()
            .with_context(|| format!("send_bad_values.py sent nothing to project {project}"))?;
        let count = |map: &BTreeMap<i64, u64>| map.get(project).copied().unwrap_or(0);
        let got = count(&after).saturating_sub(count(&before));
        ensure!(
            got == sent,
            "Sentry 4 stored {got} of the {sent} events with values PostgreSQL refuses sent to project {project}: see {}",
            web_log.display()
        );
        events += sent;
    }
    let server_names_128: Vec<String> = printed["server_name_128"]
        .as_array()
        .context("send_bad_values.py printed no server_name_128")?
        .iter()
        .map(|name| name.as_str().map(str::to_string))
        .collect::<Option<_>>()
        .context("a server_name_128 that is no string")?;
    let stored = stored_bad_values(root)?;
    let projects = dsns.len() as i64;
    // Per project: 3 events with a 150-character server name and a 300-character site; their
    // 3 `url` tag values and the site tag value over 200 characters, the 3 urls sharing their
    // first 200; one message with a NUL; one 128-character server name of 131 bytes.
    for (what, got, least) in [
        ("server_name over 128 characters", stored.server_names, 3),
        ("site over 128 characters", stored.sites, 3),
        (
            "sentry_filtervalue.value over 200 characters",
            stored.tag_values,
            4,
        ),
        (
            "sentry_messagefiltervalue.value over 200 characters",
            stored.group_tag_values,
            4,
        ),
        (
            "tag values sharing their first 200 characters (groups)",
            stored.shared_prefixes,
            1,
        ),
        ("sentry_message.message with NUL", stored.nul_messages, 1),
        (
            "sentry_groupedmessage.message with NUL",
            stored.nul_groups,
            1,
        ),
        (
            "server_name of 128 characters and 131 bytes",
            stored.names_128,
            1,
        ),
    ] {
        ensure!(
            got >= least * projects,
            "Sentry 4 did not store the values sent as they were: {got} rows with {what}, expected at least {} (see {})",
            least * projects,
            web_log.display()
        );
    }
    println!(
        "    sent {events} events with values PostgreSQL refuses, all stored as sent: server_name/site over 128 characters in {}/{} events, tag values over 200 in {}+{} rows ({} groups share their first 200), NUL in {}+{} messages/groups, {} server names of 128 characters in 131 bytes",
        stored.server_names,
        stored.sites,
        stored.tag_values,
        stored.group_tag_values,
        stored.shared_prefixes,
        stored.nul_messages,
        stored.nul_groups,
        stored.names_128
    );
    Ok(BadValues {
        events,
        server_names_128,
    })
}

/// Rows of the Sentry 4 SQLite db holding values PostgreSQL refuses (lengths in characters,
/// as SQLite's length() and PostgreSQL's varchar(n) count them).
struct StoredBadValues {
    server_names: i64,
    sites: i64,
    tag_values: i64,
    group_tag_values: i64,
    shared_prefixes: i64,
    nul_messages: i64,
    nul_groups: i64,
    names_128: i64,
}

fn stored_bad_values(root: &Path) -> Result<StoredBadValues> {
    let path = root.join("var/sentry.db");
    let conn =
        rusqlite::Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let count = |sql: &str| -> Result<i64> {
        conn.query_row(sql, [], |row| row.get(0))
            .with_context(|| format!("`{sql}` failed on {}", path.display()))
    };
    Ok(StoredBadValues {
        server_names: count("SELECT count(*) FROM sentry_message WHERE length(server_name) > 128")?,
        sites: count("SELECT count(*) FROM sentry_message WHERE length(site) > 128")?,
        tag_values: count("SELECT count(*) FROM sentry_filtervalue WHERE length(value) > 200")?,
        group_tag_values: count(
            "SELECT count(*) FROM sentry_messagefiltervalue WHERE length(value) > 200",
        )?,
        shared_prefixes: count(
            "SELECT count(*) FROM (SELECT 1 FROM sentry_filtervalue WHERE length(value) > 200 \
             GROUP BY project_id, key, substr(value, 1, 200) HAVING count(*) > 1)",
        )?,
        // length() of a text stops at its first NUL: look in the bytes.
        nul_messages: count(
            "SELECT count(*) FROM sentry_message WHERE instr(CAST(message AS BLOB), X'00') > 0",
        )?,
        nul_groups: count(
            "SELECT count(*) FROM sentry_groupedmessage \
             WHERE instr(CAST(message AS BLOB), X'00') > 0",
        )?,
        names_128: count(
            "SELECT count(*) FROM sentry_message \
             WHERE length(server_name) = 128 AND length(CAST(server_name AS BLOB)) = 131",
        )?,
    })
}

/// What `seed_and_send` made and sent.
struct Sent {
    port: u16,
    accounts: serde_json::Value,
    dsns: Vec<(i64, String)>,
    urls: Vec<String>,
    stored: BTreeMap<i64, u64>,
}

/// Sentry's ORM makes `what` (`seed.py`: users, projects, keys), then `events` go over HTTP to
/// every project's DSN through Sentry 4's web server on a free port.
#[allow(clippy::too_many_arguments)]
fn seed_and_send(
    sh: &Shell,
    root: &Path,
    logs: &Path,
    log: &Path,
    what: &str,
    events: u64,
    tag: &str,
    web_log: &str,
) -> Result<Sent> {
    let port = util::free_port()?;
    let accounts = seed(sh, log, what, port)?;
    let dsns = dsn_list(&accounts)?;
    let urls: Vec<String> = dsns.iter().map(|(_, dsn)| dsn.clone()).collect();
    let stored = send_events(
        sh,
        root,
        logs,
        &urls,
        Batch {
            port,
            events,
            tag,
            web_log,
        },
    )?;
    Ok(Sent {
        port,
        accounts,
        dsns,
        urls,
        stored,
    })
}

fn dsn_list(value: &serde_json::Value) -> Result<Vec<(i64, String)>> {
    value["dsns"]
        .as_array()
        .context("the seed script printed no dsns")?
        .iter()
        .map(|d| {
            Ok((
                d["project_id"].as_i64().context("no project_id")?,
                d["dsn"].as_str().context("no dsn")?.to_string(),
            ))
        })
        .collect()
}

/// `bin/buildout -c cfg` in the scratch install, into `log`.
fn buildout(sh: &Shell, root: &Path, cfg: &str, log: &Path) -> Result<()> {
    log_run(
        cmd!(sh, "bin/buildout -c {cfg} buildout:directory={root}"),
        log,
    )
    .with_context(|| format!("bin/buildout -c {cfg} failed"))?;
    Ok(())
}

/// The plain rehearsal's Sentry 4: tag 1, every event stored, values PostgreSQL refuses sent.
pub(super) fn seed_plain_sentry4(
    sh: &Shell,
    root: &Path,
    logs: &Path,
    events: u64,
) -> Result<Seeded> {
    seed_sentry4(
        sh,
        root,
        logs,
        events,
        "buildout/tag1-sentry4.cfg",
        Strictness::AllStored,
        true,
    )
}

pub(super) fn seed_sentry4(
    sh: &Shell,
    root: &Path,
    logs: &Path,
    events: u64,
    buildout_cfg: &str,
    strictness: Strictness,
    bad_values: bool,
) -> Result<Seeded> {
    let log = logs.join("sentry4.log");
    buildout(sh, root, buildout_cfg, &log)?;
    let config = Config::new(root, None, None, |_| None)?;
    settings::switch(crate::flags::DbKind::Sqlite, &config)?;
    log_run(
        cmd!(
            sh,
            "bin/sentry --config=settings/settings.py upgrade --noinput"
        ),
        &log,
    )?;
    let Sent {
        port,
        accounts,
        dsns,
        stored,
        ..
    } = seed_and_send(
        sh,
        root,
        logs,
        &log,
        "accounts",
        events,
        "a",
        "sentry4-web.log",
    )?;
    // raven reports nothing when Sentry refuses an event: count what was stored, per project.
    let total: u64 = dsns
        .iter()
        .map(|(project, _)| stored.get(project).copied().unwrap_or(0))
        .sum();
    match strictness {
        Strictness::AllStored => {
            for (index, (project, _)) in dsns.iter().enumerate() {
                let expected = (0..events)
                    .filter(|n| (*n as usize) % dsns.len() == index)
                    .count() as u64;
                let got = stored.get(project).copied().unwrap_or(0);
                ensure!(got == expected, "Sentry 4 stored {got} events for project {project}, {expected} were sent: see {}", logs.join("sentry4-web.log").display());
            }
        }
        Strictness::SomeStored => ensure!(
            total > 0,
            "Sentry stored none of the {events} events: see {}",
            logs.join("sentry4-web.log").display()
        ),
    }
    // Before `finish`, which deletes a project key.
    let bad = if bad_values {
        Some(send_bad_values(sh, root, logs, &dsns, port, "a")?)
    } else {
        None
    };
    let finish = seed(sh, &log, "finish", port)?;
    println!(
        "    sent {events} events over HTTP to {} projects; Sentry stored {total}; {}",
        dsns.len(),
        finish
    );
    let total = total + bad.as_ref().map_or(0, |bad| bad.events);
    let first = &accounts["dsns"][0];
    let state = serde_json::json!({
        "login": accounts["login"],
        "team": first["team"],
        "project": first["slug"],
        "project_id": first["project_id"],
        "dsn": first["dsn"],
        "dsns": accounts["dsns"],
        "expect": "rehearsal message",
    });
    Ok(Seeded {
        state,
        events: total,
        bad,
    })
}

/// The long-lived install's second life: tag 1 over the same SQLite file (`upgrade --noinput`
/// in place, as such installs were upgraded), then more users, projects and events under 4.10.
/// Returns the events with values PostgreSQL refuses it sent to Sentry 4.10.
pub(super) fn more_data_after_upgrade(
    sh: &Shell,
    root: &Path,
    logs: &Path,
    events: u64,
) -> Result<BadValues> {
    let log = logs.join("sentry4.log");
    buildout(sh, root, "buildout/tag1-sentry4.cfg", &log)?;
    log_run(
        cmd!(
            sh,
            "bin/sentry --config=settings/settings.py upgrade --noinput"
        ),
        &log,
    )
    .context("the in-place upgrade to Sentry 4.10 failed")?;
    let before: u64 = stored_events(root)?.values().sum();
    let sent = seed_and_send(
        sh,
        root,
        logs,
        &log,
        "more",
        events,
        "new",
        "sentry4.10-web.log",
    )?;
    let (port, dsns, urls, stored) = (sent.port, sent.dsns, sent.urls, sent.stored);
    let after: u64 = stored.values().sum();
    ensure!(
        after > before,
        "Sentry 4.10 stored none of the {events} new events: see {}",
        logs.join("sentry4.10-web.log").display()
    );
    // Every project, the new ones too: their values differ per project, so the stale index
    // refuses none of them.
    let bad = send_bad_values(sh, root, logs, &dsns, port, "new")?;
    let finish = seed(sh, &log, "finish", port)?;
    println!(
        "    upgraded in place to 4.10; sent {events} more events to {} projects, Sentry stored {} (the stale SQLite-only index rejects the rest); {}",
        urls.len(),
        after - before,
        finish
    );
    Ok(bad)
}
