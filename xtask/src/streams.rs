//! What Sentry 6's event stream shows after the cut-over: it lists only groups seen in the last
//! 5 days unless the URL gives a date (6.4.4 `web/frontend/groups.py`, `timedelta(days=5)`), so
//! a quiet project reads "No events to show." Per project, how many groups that hides, and the
//! stream URL that lists them all.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// Sentry 6.4.4's default window of the stream, in days.
pub const DEFAULT_WINDOW_DAYS: i64 = 5;

/// The query that makes the stream list every group: a `df` (date from) before any data.
/// Sentry 6 reads it with `datetime.strptime(df, '%Y-%m-%d')` and then filters
/// `last_seen >= df`.
pub const SHOW_ALL_QUERY: &str = "?df=1970-01-01";

/// One project's stream as Sentry 6 opens it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stream {
    pub project_id: i64,
    pub project: String,
    /// The stream's path (`/<team>/<project>/`); none for a project without a team, which
    /// Sentry 6 gives no stream page.
    pub path: Option<String>,
    pub groups: i64,
    /// Groups last seen before the default window: not listed without a date.
    pub hidden: i64,
}

impl Stream {
    /// The URL path that lists every group of the project.
    pub fn show_all(&self) -> Option<String> {
        self.path
            .as_ref()
            .map(|path| format!("{path}{SHOW_ALL_QUERY}"))
    }
}

/// Per project: its groups, those last seen more than [`DEFAULT_WINDOW_DAYS`] before now (the
/// cut-over), and its stream path. Runs on Sentry 6's schema.
pub const STREAMS_SQL: &str = "SELECT p.id::bigint, p.name, t.slug, p.slug, \
     count(g.id), count(g.id) FILTER (WHERE g.last_seen < now() - make_interval(days => $1)) \
     FROM sentry_project p \
     LEFT JOIN sentry_team t ON t.id = p.team_id \
     LEFT JOIN sentry_groupedmessage g ON g.project_id = p.id \
     GROUP BY p.id, p.name, t.slug, p.slug ORDER BY p.id";

/// Reads every project's stream from the migrated database.
pub fn read(client: &mut postgres::Client) -> Result<Vec<Stream>> {
    let days = DEFAULT_WINDOW_DAYS as i32;
    let rows = client
        .query(STREAMS_SQL, &[&days])
        .context("cannot count the groups Sentry 6's event stream shows per project")?;
    Ok(rows
        .iter()
        .map(|row| {
            let team: Option<String> = row.get(2);
            let slug: Option<String> = row.get(3);
            let id: i64 = row.get(0);
            Stream {
                project_id: id,
                project: row.get(1),
                path: team
                    .map(|team| format!("/{team}/{}/", slug.unwrap_or_else(|| id.to_string()))),
                groups: row.get(4),
                hidden: row.get(5),
            }
        })
        .collect())
}

/// One line per project whose stream hides groups, for the summary and the report.
pub fn notes(streams: &[Stream]) -> Vec<String> {
    streams
        .iter()
        .filter(|s| s.hidden > 0)
        .map(|s| {
            let place = match s.show_all() {
                Some(url) => format!("open <your Sentry URL>{url} to list them all (newest first: the oldest on the last pages)"),
                None => "it has no team, so Sentry 6 gives it no stream page".to_string(),
            };
            format!(
                "{} (id {}): {} of {} groups last seen more than {DEFAULT_WINDOW_DAYS} days ago are not on its stream by default (\"No events to show.\" is not data loss); {place}",
                s.project, s.project_id, s.hidden, s.groups
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_projects_with_hidden_groups_are_noted_with_the_url_that_shows_them() {
        let streams = [
            Stream {
                project_id: 3,
                project: "web".into(),
                path: Some("/acme/web/".into()),
                groups: 12,
                hidden: 10,
            },
            Stream {
                project_id: 4,
                project: "api".into(),
                path: Some("/acme/api/".into()),
                groups: 2,
                hidden: 0,
            },
            Stream {
                project_id: 1,
                project: "Sentry (Internal)".into(),
                path: None,
                groups: 1,
                hidden: 1,
            },
        ];
        let notes = notes(&streams);
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(notes[0].starts_with("web (id 3): 10 of 12 groups last seen more than 5 days ago"));
        assert!(notes[0].contains(
            "open <your Sentry URL>/acme/web/?df=1970-01-01 to list them all (newest first"
        ));
        assert!(notes[1].contains("no stream page"), "{}", notes[1]);
    }
}
