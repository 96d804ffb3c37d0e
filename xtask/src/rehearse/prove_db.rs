//! `rehearse --db`'s proof on Sentry 6: per project, the events and groups before `migrate`
//! (the SQLite copy) and after (PostgreSQL), a login, every project's stream and a new event
//! through a migrated key (`prove_db.py`), and a look in headless Chromium.

use std::{collections::BTreeMap, fs, path::Path};

use anyhow::{Context, Result};
use rusqlite::Connection;
use xshell::Shell;

use super::{forecast::ProjectRow, prove, provision};
use crate::{flags, journal::Journal, pgcluster::PgCluster};

/// At most this many projects are looked at in the browser.
const BROWSED: usize = 5;

/// Per project in the SQLite copy, before `migrate`: (slug, events, groups), and the highest ids.
pub(super) struct Before {
    projects: BTreeMap<i64, (String, u64, u64)>,
    max_event: i64,
    max_group: i64,
    max_key: i64,
}

fn per_project_sqlite(conn: &Connection, table: &str) -> Result<BTreeMap<i64, u64>> {
    let mut stmt = conn.prepare(&format!(
        "SELECT project_id, count(*) FROM {table} WHERE project_id IS NOT NULL GROUP BY project_id"
    ))?;
    let rows = stmt.query_map([], |row| Ok((row.get(0)?, row.get::<_, i64>(1)? as u64)))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

pub(super) fn before(db: &Path) -> Result<Before> {
    let conn = crate::sqlite::open_read_only(db)?;
    let events = per_project_sqlite(&conn, "sentry_message")?;
    let groups = per_project_sqlite(&conn, "sentry_groupedmessage")?;
    let mut stmt =
        conn.prepare("SELECT id, COALESCE(slug, name, '') FROM sentry_project ORDER BY id")?;
    let projects = stmt
        .query_map([], |row| {
            Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?
        .into_iter()
        .map(|(id, slug)| {
            let n = |map: &BTreeMap<i64, u64>| map.get(&id).copied().unwrap_or(0);
            (id, (slug, n(&events), n(&groups)))
        })
        .collect();
    let max = |table: &str| -> Result<i64> {
        Ok(conn.query_row(
            &format!("SELECT COALESCE(MAX(id), 0) FROM {table}"),
            [],
            |row| row.get(0),
        )?)
    };
    Ok(Before {
        projects,
        max_event: max("sentry_message")?,
        max_group: max("sentry_groupedmessage")?,
        max_key: max("sentry_projectkey")?,
    })
}

fn per_project_pg(client: &mut postgres::Client, sql: &str) -> Result<BTreeMap<i64, u64>> {
    Ok(client
        .query(sql, &[])?
        .iter()
        .map(|row| (row.get::<_, i32>(0) as i64, row.get::<_, i64>(1) as u64))
        .collect())
}

impl flags::Rehearse {
    /// Sentry 6 on the result: a login, every project's stream, a new event through a migrated
    /// key of each project; per project, events and groups before and after. Returns the rows,
    /// the problems found (a no-go), and who logged in.
    #[allow(clippy::type_complexity, clippy::too_many_arguments)]
    pub(super) fn prove(
        &self,
        sh: &Shell,
        root: &Path,
        copy: &Path,
        cluster: &PgCluster,
        before: &Before,
        journal: &Journal,
        browser: &provision::Browser,
    ) -> Result<((Vec<ProjectRow>, Vec<String>), String)> {
        let mut client = cluster.client("sentry")?;
        let events_after = per_project_pg(
            &mut client,
            "SELECT project_id, count(*) FROM sentry_message WHERE project_id IS NOT NULL GROUP BY 1",
        )?;
        let groups_after = per_project_pg(
            &mut client,
            "SELECT project_id, count(*) FROM sentry_groupedmessage WHERE project_id IS NOT NULL GROUP BY 1",
        )?;
        let unresolved = per_project_pg(
            &mut client,
            "SELECT project_id, count(*) FROM sentry_groupedmessage WHERE status = 0 AND project_id IS NOT NULL GROUP BY 1",
        )?;
        // The merged groups, by project (the copy still has them).
        let mut merged: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
        {
            let conn = crate::sqlite::open_read_only(copy)?;
            let mut stmt =
                conn.prepare("SELECT project_id FROM sentry_groupedmessage WHERE id = ?1")?;
            for group in &journal.merged_groups {
                let project: Option<i64> = stmt.query_row([group], |row| row.get(0))?;
                merged.entry(project.unwrap_or(0)).or_default().push(*group);
            }
        }
        let browser_login = root.join("browser-login.json");
        let state = serde_json::json!({
            "login": self.login,
            "projects": before.projects.keys().collect::<Vec<_>>(),
            "old_max_event": before.max_event,
            "old_max_group": before.max_group,
            "old_max_key": before.max_key,
            // A stream that lists no group is saved there, for a look.
            "pages": root.join("logs"),
            "browser_login": browser_login,
        });
        let state_path = root.join("prove-db-state.json");
        fs::write(&state_path, serde_json::to_string(&state)?)?;
        let logs = root.join("logs");
        let facts = prove::prove_on_sentry6(sh, &logs, "prove_db.py", &state_path)?;
        // Then as a person looks: every project's whole stream (at most BROWSED) and its first
        // group's page, in headless Chromium.
        let login: serde_json::Value = serde_json::from_str(
            &fs::read_to_string(&browser_login)
                .context("prove_db.py left no login for the browser")?,
        )?;
        let _ = fs::remove_file(&browser_login);
        let pages: Vec<serde_json::Value> = journal
            .streams
            .iter()
            .filter(|stream| stream.groups > 0)
            .filter_map(|stream| {
                stream.show_all().map(|path| {
                    serde_json::json!({
                        "name": format!("project-{}", stream.project_id),
                        "path": path,
                        "open_first_group": true,
                    })
                })
            })
            .take(BROWSED)
            .collect();
        let browsed = prove::browse(sh, root, &logs, browser, &login, &pages)?;
        println!(
            "    in headless Chromium: {} project stream(s) and a group page of each, no script error; screenshots in {}",
            browsed["pages"].as_object().map_or(0, |pages| pages.len()),
            logs.join("browser").display()
        );
        let login = format!(
            "{} {} over HTTP to Sentry 6 (started with `start --noupgrade`)",
            if facts["temporary_user"] == true {
                "temporary superuser (made in the throwaway target only)"
            } else {
                "migrated user"
            },
            facts["login_user"].as_str().unwrap_or("?"),
        );
        let mut problems = Vec::new();
        if facts["login_ok"] != true {
            problems.push(format!(
                "login as {} failed (ended at {})",
                facts["login_user"], facts["login_final_url"]
            ));
        }
        let mut rows = Vec::new();
        for (id, (slug, events_before, groups_before)) in &before.projects {
            let n = |map: &BTreeMap<i64, u64>| map.get(id).copied().unwrap_or(0);
            let merged = merged.get(id).cloned().unwrap_or_default();
            let mut row = ProjectRow {
                id: *id,
                slug: slug.clone(),
                events_before: *events_before,
                events_after: n(&events_after),
                groups_before: *groups_before,
                groups_after: n(&groups_after),
                merged_groups: merged.clone(),
                proof: String::new(),
            };
            let p = &facts["projects"][id.to_string()];
            let mut said = Vec::new();
            let mut bad = Vec::new();
            if row.events_after != row.events_before {
                bad.push(format!(
                    "{} events before, {} after",
                    row.events_before, row.events_after
                ));
            }
            if row.groups_after + merged.len() as u64 != row.groups_before {
                bad.push(format!(
                    "{} groups before, {} after, {} merged",
                    row.groups_before,
                    row.groups_after,
                    merged.len()
                ));
            }
            if p["no_team"] == true {
                said.push(
                    "no team in Sentry 6, so no stream page (Sentry 6 shows projects by team)"
                        .to_string(),
                );
            } else if let Some(err) = p["stream_error"].as_str() {
                bad.push(format!("stream: {err}"));
            } else {
                let listed = p["stream_migrated_groups"].as_u64().unwrap_or(0);
                if listed == 0 && n(&unresolved) > 0 {
                    bad.push(format!(
                        "the stream lists none of its {} unresolved migrated groups",
                        n(&unresolved)
                    ));
                } else {
                    said.push(format!("stream lists {listed} migrated groups"));
                }
            }
            if p["key_error"].is_string() {
                said.push("no migrated key (Sentry 4 had none)".to_string());
            } else {
                match p["new_event_id"].as_i64() {
                    Some(event) if event > before.max_event && p["new_event_project_id"] == *id => {
                        said.push(format!(
                            "new event #{event} > #{} via key #{}",
                            before.max_event, p["key_id"]
                        ));
                    }
                    Some(event) => bad.push(format!(
                        "new event #{event} (project {}) is not past #{} in this project",
                        p["new_event_project_id"], before.max_event
                    )),
                    None => bad.push(format!(
                        "a new event sent through key #{} was not stored",
                        p["key_id"]
                    )),
                }
            }
            for problem in &bad {
                problems.push(format!("project {slug} (id {id}): {problem}"));
            }
            said.extend(bad.iter().map(|b| format!("**{b}**")));
            row.proof = said.join("; ");
            rows.push(row);
        }
        Ok(((rows, problems), login))
    }
}
