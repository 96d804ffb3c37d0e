//! The Sentry 6 proofs: Sentry 6 started on the migrated database as the tool recommends, a
//! migrated user logs in with the old password, the events are listed, new ids follow the
//! migrated ones; and Sentry 6 as a person sees it, in headless Chromium.

use std::{fs, path::Path};

use anyhow::{bail, ensure, Context, Result};
use xshell::{cmd, Shell};

use super::{provision, run::log_run, seed::Seeded, server::sentry6_server};
use crate::{journal::Journal, pgcluster::PgCluster, util};

/// Starts Sentry 6 as the tool recommends (`start --noupgrade`) on a loopback port, runs
/// `script` (in xtask/python/rehearse/, under bin/py) against it with `state_path`, and returns
/// the JSON facts it prints; the server is stopped on return.
pub(crate) fn prove_on_sentry6(
    sh: &Shell,
    logs: &Path,
    script: &str,
    state_path: &Path,
) -> Result<serde_json::Value> {
    let port = util::free_port()?;
    let out = {
        let _server = sentry6_server(sh, port, &logs.join("sentry6-web.log"))?;
        let base = format!("http://127.0.0.1:{port}");
        let script = format!("xtask/python/rehearse/{script}");
        log_run(
            cmd!(
                sh,
                "bin/py {script} settings/settings.py {base} {state_path}"
            ),
            &logs.join("sentry6.log"),
        )?
    };
    serde_json::from_str(out.trim()).with_context(|| format!("{script} printed no JSON"))
}

pub(super) fn prove_sentry6(
    sh: &Shell,
    root: &Path,
    logs: &Path,
    cluster: &PgCluster,
    seeded: &Seeded,
) -> Result<serde_json::Value> {
    let mut client = cluster.client("sentry")?;
    let events_before: i64 = client
        .query_one("SELECT count(*) FROM sentry_message", &[])?
        .get(0);
    ensure!(
        events_before as u64 >= seeded.events,
        "PostgreSQL has {events_before} events, {} were sent to Sentry 4",
        seeded.events
    );
    let max_event = max_id(&mut client, "sentry_message")?;
    let max_project = max_id(&mut client, "sentry_project")?;
    let state_path = root.join("prove-state.json");
    fs::write(&state_path, serde_json::to_string(&seeded.state)?)?;
    let facts = prove_on_sentry6(sh, logs, "prove.py", &state_path)?;
    ensure!(
        facts["login_ok"] == true,
        "a migrated user could not log in to Sentry 6 with the old password: {facts}"
    );
    ensure!(
        facts["stream_ok"] == true,
        "Sentry 6's event stream does not list the migrated events: {facts}"
    );
    let age = facts["newest_event_age_seconds"]
        .as_i64()
        .context(format!("prove.py gave no age of the newest event: {facts}"))?;
    ensure!(
        (-60..=30 * 60).contains(&age),
        "Sentry 6 dates the newest migrated event {age} s ago, but it was sent minutes ago: the dates were read in the wrong zone ({facts})"
    );
    let new_event = facts["new_event_id"].as_i64().context(format!(
        "a new event sent to Sentry 6 was not stored (abstime?): {facts}"
    ))?;
    ensure!(
        new_event > max_event,
        "the new event got id {new_event}, not past the migrated maximum {max_event}"
    );
    let new_project = facts["new_project_id"]
        .as_i64()
        .context("no new project id")?;
    ensure!(
        new_project == max_project + 1,
        "a new project got id {new_project}, expected {}",
        max_project + 1
    );
    let events_after: i64 = client
        .query_one("SELECT count(*) FROM sentry_message", &[])?
        .get(0);
    ensure!(
        events_after == events_before + 1,
        "events went from {events_before} to {events_after}, expected one more"
    );
    println!(
        "    Sentry 6: login ok, migrated events listed, the newest dated {age} s ago, new event id {new_event} > {max_event}, new project id {new_project}"
    );
    Ok(facts)
}

fn max_id(client: &mut postgres::Client, table: &str) -> Result<i64> {
    let sql = format!(
        "SELECT COALESCE(MAX(id), 0)::bigint FROM {}",
        crate::ident::Ident::new("table name", table)?
    );
    Ok(client.query_one(&sql, &[])?.get(0))
}

/// Sentry 6 as a person sees it, in headless Chromium (`browse.py`): log in with the migrated
/// password; the project's stream lists migrated events and its first group's page renders
/// them; a project whose groups were last seen weeks ago hides them on its default stream
/// (Sentry 6's 5 days) and the URL the report gives (`streams::SHOW_ALL_QUERY`) lists them.
/// No page may log a script error; a screenshot of each is kept in `logs/browser/`. With
/// `quiet_required`, the rehearsal's quiet group must be among the hidden ones.
pub(super) fn look_in_browser(
    sh: &Shell,
    root: &Path,
    logs: &Path,
    browser: &provision::Browser,
    seeded: &Seeded,
    quiet_required: bool,
) -> Result<serde_json::Value> {
    let journal = Journal::load(&root.join("dumps/journal.json"))?
        .context("no dumps/journal.json after `migrate`")?;
    let mut pages = vec![serde_json::json!({
        "name": "stream",
        "path": format!("/{}/{}/", seeded.state["team"].as_str().unwrap_or_default(), seeded.state["project"].as_str().unwrap_or_default()),
        "expect": [seeded.state["expect"]],
        "open_first_group": true,
    })];
    let quiet = journal
        .streams
        .iter()
        .find(|stream| stream.hidden > 0 && stream.path.is_some());
    match (quiet, quiet_required) {
        (Some(stream), _) => {
            let path = stream.path.clone().unwrap_or_default();
            pages.push(serde_json::json!({
                "name": "stream-default-window",
                "path": path,
                "absent": [QUIET_MESSAGE],
            }));
            pages.push(serde_json::json!({
                "name": "stream-show-all",
                "path": stream.show_all(),
                "expect": [QUIET_MESSAGE],
                "follow_pages": true,
            }));
        }
        (None, true) => bail!(
            "the report counts no project whose stream hides groups, but the rehearsal sent events dated 30 days ago ({QUIET_MESSAGE}…): streams {:?}",
            journal.streams
        ),
        (None, false) => {}
    }
    let shots = logs.join("browser");
    let facts = browse(sh, root, logs, browser, &seeded.state["login"], &pages)?;
    let shown: Vec<&str> = pages
        .iter()
        .filter_map(|page| page["name"].as_str())
        .collect();
    println!(
        "    in headless Chromium: logged in, {} without a script error{}; screenshots in {}",
        shown.join(", "),
        if quiet.is_some() {
            ": the quiet group hidden on the default stream, listed with ?df="
        } else {
            ""
        },
        shots.display()
    );
    Ok(facts)
}

/// Runs `browse.py` in headless Chromium against Sentry 6 started for it: logs in as `login`
/// (`{"username", "password"}`, written only to a 0600 file, removed after) and looks at
/// `pages` (see browse.py). Fails unless every page showed what it should without a script
/// error; the screenshots stay in `logs/browser/`.
pub(crate) fn browse(
    sh: &Shell,
    root: &Path,
    logs: &Path,
    browser: &provision::Browser,
    login: &serde_json::Value,
    pages: &[serde_json::Value],
) -> Result<serde_json::Value> {
    let state = serde_json::json!({ "login": login, "pages": pages });
    let state_path = root.join("browse-state.json");
    util::write_atomic(
        &state_path,
        serde_json::to_string(&state)?.as_bytes(),
        0o600,
    )?;
    let shots = logs.join("browser");
    let port = util::free_port()?;
    let out = {
        let _server = sentry6_server(sh, port, &logs.join("sentry6-web-browser.log"))?;
        let base = format!("http://127.0.0.1:{port}");
        let python = &browser.python;
        log_run(
            cmd!(
                sh,
                "{python} xtask/python/rehearse/browse.py {base} {state_path} {shots}"
            )
            // Python 2.7's private libraries are not Chromium's.
            .env_remove("LD_LIBRARY_PATH")
            .env("CHROMIUM", &browser.chromium)
            .env("CHROMEDRIVER", &browser.chromedriver),
            &logs.join("browser.log"),
        )
    };
    let _ = fs::remove_file(&state_path);
    let facts: serde_json::Value = serde_json::from_str(out?.trim())
        .context("browse.py printed no JSON (see logs/browser.log)")?;
    ensure!(
        facts["ok"] == true,
        "Sentry 6 in a real browser: a page did not show what it should or logged a script error (screenshots in {}): {facts}",
        shots.display()
    );
    Ok(facts)
}

/// The text of the rehearsal's quiet group (send_events.py), dated 30 days before the cut-over.
const QUIET_MESSAGE: &str = "quiet message";
