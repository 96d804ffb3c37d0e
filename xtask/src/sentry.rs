//! What we know about Sentry's processes and output: running-instance detection, the
//! parsing of `loaddata`'s report (Django 1.4 exits 0 even when a load fails and rolls back)
//! and the time of each South migration of an `upgrade`.

use std::{fs, path::Path, time::Instant};

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

/// Processes that look like a running Sentry of this install, or hold the SQLite db open.
pub fn running_sentry(root: &Path, sqlite: &Path) -> Vec<(u32, String)> {
    let sentry_bin = root.join("bin/sentry");
    let sqlite = fs::canonicalize(sqlite).unwrap_or_else(|_| sqlite.to_path_buf());
    crate::util::live_processes()
        .into_iter()
        .filter(|process| {
            let runs_sentry = process
                .args
                .iter()
                .take(2)
                .any(|arg| Path::new(arg) == sentry_bin)
                && process
                    .args
                    .iter()
                    .any(|arg| arg == "start" || arg == "run_gunicorn" || arg == "celeryd");
            let holds_db = fs::read_dir(process.dir.join("fd"))
                .map(|fds| {
                    fds.flatten().any(|fd| {
                        fs::read_link(fd.path())
                            .map(|target| target == sqlite)
                            .unwrap_or(false)
                    })
                })
                .unwrap_or(false);
            runs_sentry || holds_db
        })
        .map(|process| (process.pid, process.args.join(" ")))
        .collect()
}

/// Checks what `loaddata` printed: `Installed N object(s) from M fixture(s)` with N == expected.
/// The last Python exception line of `output` (`DataError: value too long for type character
/// varying(128)`, `django.db.utils.DatabaseError: Could not load sentry.Event(pk=5): …`): the
/// cause, which a traceback prints last.
pub fn python_cause(output: &str) -> Option<String> {
    output
        .lines()
        .rev()
        .map(str::trim)
        .find(|line| {
            line.split_once(": ").is_some_and(|(name, rest)| {
                !rest.is_empty()
                    && (name.ends_with("Error") || name.ends_with("Exception"))
                    && name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
            })
        })
        .map(str::to_string)
}

pub fn check_loaddata_output(
    output: &str,
    expected_objects: u64,
    expected_fixtures: u64,
) -> Result<String> {
    for marker in [
        "Problem installing fixture",
        "No fixture data found",
        "Traceback (most recent call last)",
        "Multiple fixtures named",
    ] {
        if let Some(at) = output.find(marker) {
            let excerpt: String = output[at..].lines().take(12).collect::<Vec<_>>().join("\n");
            match python_cause(output) {
                Some(cause) => bail!(
                    "{cause}\n  (loaddata failed and rolled back, though it exits 0; its output begins: {excerpt})"
                ),
                None => bail!("loaddata failed and rolled back (it still exits 0): {excerpt}"),
            }
        }
    }
    let Some(line) = output
        .lines()
        .rev()
        .find(|line| line.starts_with("Installed "))
    else {
        bail!("loaddata printed no `Installed N object(s)` line: the load did not complete");
    };
    let numbers: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter(|it| !it.is_empty())
        .filter_map(|it| it.parse().ok())
        .collect();
    let (installed, of, fixtures) = match numbers.as_slice() {
        [installed, fixtures] => (*installed, *installed, *fixtures),
        [installed, of, fixtures] => (*installed, *of, *fixtures),
        _ => bail!("cannot read loaddata's summary `{line}`"),
    };
    if fixtures != expected_fixtures {
        bail!("loaddata read {fixtures} fixture(s), expected {expected_fixtures}: `{line}`");
    }
    if installed != of || installed != expected_objects {
        bail!("loaddata installed {installed} object(s) (of {of}) but the dumps hold {expected_objects}: `{line}`");
    }
    Ok(line.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loaddata_success_is_read_not_assumed() {
        assert!(
            check_loaddata_output("Installed 4800 object(s) from 2 fixture(s)\n", 4800, 2).is_ok()
        );
        let cases = [
            ("Installed 4790 object(s) from 2 fixture(s)\n", "but the dumps hold 4800"),
            ("Installed 4790 object(s) (of 4800) from 2 fixture(s)\n", "(of 4800)"),
            ("Installed 4800 object(s) from 1 fixture(s)\n", "read 1 fixture(s), expected 2"),
            ("", "no `Installed N object(s)` line"),
            (
                "Problem installing fixture 'dumps/dumpdata.json': Traceback (most recent call last):\nIntegrityError: duplicate key value violates unique constraint \"sentry_teammember_team_id_uniq\"\n",
                "duplicate key value",
            ),
        ];
        for (output, expected) in cases {
            let err = check_loaddata_output(output, 4800, 2)
                .unwrap_err()
                .to_string();
            assert!(err.contains(expected), "{output:?}: {err}");
        }
    }

    #[test]
    fn a_failed_load_leads_with_the_cause() {
        let output = "Problem installing fixture 'dumps/dumpdata.json': Traceback (most recent call last):\n  File \"/eggs/django/core/management/commands/loaddata.py\", line 196, in handle\n    obj.save(using=using)\nDatabaseError: Could not load sentry.Event(pk=17): value too long for type character varying(128)\n\n";
        let err = check_loaddata_output(output, 10, 2)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("DatabaseError: Could not load sentry.Event(pk=17): value too long for type character varying(128)"),
            "{err}"
        );
        assert_eq!(
            python_cause("Traceback (most recent call last):\n  x\nValueError: A string literal cannot contain NUL (0x00) characters.\n").as_deref(),
            Some("ValueError: A string literal cannot contain NUL (0x00) characters.")
        );
        assert_eq!(
            python_cause("Installed 3 object(s) from 2 fixture(s)\nnote: fine\n"),
            None
        );
    }
}

/// The Sentry version `bin/sentry` runs, read from the egg path buildout wrote into it
/// (`…/sentry-4.10.0-py2.7.egg`); `None` when the script does not say (e.g. a develop egg).
pub fn installed_version(script: &Path) -> Option<String> {
    let text = fs::read_to_string(script).ok()?;
    // The egg `/sentry-<version>-…`; other paths may hold `/sentry-` too (a cache under
    // `~/.cache/sentry-migrate/`): the first one followed by a version.
    text.match_indices("/sentry-").find_map(|(at, found)| {
        let version: String = text[at + found.len()..]
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.')
            .collect();
        let version = version.trim_end_matches('.').to_string();
        version.contains('.').then_some(version)
    })
}

/// The Sentry version a buildout config pins: `sentry = X` in its `[versions]` section.
pub fn pinned_version(cfg: &str) -> Option<String> {
    let mut in_versions = false;
    for line in cfg.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.starts_with('[') {
            in_versions = line == "[versions]";
            continue;
        }
        if !in_versions {
            continue;
        }
        if let Some((name, value)) = line.split_once('=') {
            if name.trim().eq_ignore_ascii_case("sentry") {
                return Some(value.trim().to_string()).filter(|it| !it.is_empty());
            }
        }
    }
    None
}

#[cfg(test)]
mod version_tests {
    use super::*;

    #[test]
    fn reads_the_pinned_sentry_of_a_buildout_config() {
        let cfg = "[buildout]\nversions = versions\n[sentry]\neggs = sentry\n[versions]\nsentry-plugins = 1\nsentry = 4.10.0  # tag 1\n";
        assert_eq!(pinned_version(cfg).as_deref(), Some("4.10.0"));
        assert_eq!(pinned_version("[sentry]\nsentry = 4.10.0\n"), None);
        let tag1 = include_str!("../../buildout/tag1-sentry4.cfg");
        assert_eq!(pinned_version(tag1).as_deref(), Some("4.10.0"));
    }

    #[test]
    fn reads_the_sentry_egg_from_the_script() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("sentry");
        fs::write(&script, "#!/x/bin/python\nimport sys\nsys.path[0:0] = [\n  '/srv/eggs/sentry-4.10.0-py2.7.egg',\n  '/srv/eggs/Django-1.4.22-py2.7.egg',\n]\n").unwrap();
        assert_eq!(installed_version(&script).as_deref(), Some("4.10.0"));
        // The rehearsal's own cache path comes first and names no version.
        fs::write(&script, "#!/root/.cache/sentry-migrate/ve27/bin/python\nsys.path[0:0] = [\n  '/root/.cache/sentry-migrate/eggs/sentry-4.10.0-py2.7.egg',\n]\n").unwrap();
        assert_eq!(installed_version(&script).as_deref(), Some("4.10.0"));
        fs::write(
            &script,
            "sys.path[0:0] = ['/srv/eggs/sentry-6.4.4-py2.7.egg']",
        )
        .unwrap();
        assert_eq!(installed_version(&script).as_deref(), Some("6.4.4"));
        fs::write(&script, "sys.path[0:0] = ['/srv/src/sentry']").unwrap();
        assert_eq!(installed_version(&script), None);
    }
}

/// One South migration of an `upgrade` and how long it ran.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MigrationTime {
    /// South's app label (`sentry`, `djcelery`).
    pub app: String,
    /// The migration (`0083_migrate_dupe_groups`).
    pub name: String,
    /// Seconds from the program's start to the migration's line.
    pub at_secs: f64,
    pub secs: f64,
}

impl MigrationTime {
    /// `sentry:0083_migrate_dupe_groups`, as South prints it.
    pub fn label(&self) -> String {
        format!("{}:{}", self.app, self.name)
    }
}

/// The line South prints before it runs a migration, ` > sentry:0083_migrate_dupe_groups`, as
/// (app, migration). The `Synced:` list at the end (` > django.contrib.auth`) has no colon.
pub fn south_marker(line: &str) -> Option<(&str, &str)> {
    let rest = line.trim_end_matches(['\n', '\r']).strip_prefix(" > ")?;
    let (app, name) = rest.split_once(':')?;
    let plain = |it: &str| {
        !it.is_empty()
            && it
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
    };
    (plain(app) && plain(name)).then_some((app, name))
}

/// A line South prints between migrations that ends the one before it: the next migration's,
/// or what follows an app's last migration (` - Loading initial data for sentry.`, then
/// `Running migrations for …:`). Anything else (a migration's own output) does not.
pub fn south_line(line: &str) -> bool {
    south_marker(line).is_some()
        || line.starts_with(" - Loading initial data for ")
        || line.starts_with("Running migrations for ")
}

/// Each migration's time from an upgrade's stdout lines and their arrival: from its marker to
/// the next line South prints itself (`south_line`), or to `exited` for the last one.
/// `started` is the program's start (for `at_secs`). Other lines may be given; they are skipped.
pub fn south_migration_times(
    lines: &[(String, Instant)],
    started: Instant,
    exited: Instant,
) -> Vec<MigrationTime> {
    let secs = |from: Instant, to: Instant| {
        (to.saturating_duration_since(from).as_secs_f64() * 1000.0).round() / 1000.0
    };
    let mut times = Vec::new();
    let mut open: Option<(MigrationTime, Instant)> = None;
    for (line, at) in lines {
        if !south_line(line) {
            continue;
        }
        if let Some((mut migration, since)) = open.take() {
            migration.secs = secs(since, *at);
            times.push(migration);
        }
        if let Some((app, name)) = south_marker(line) {
            let migration = MigrationTime {
                app: app.to_string(),
                name: name.to_string(),
                at_secs: secs(started, *at),
                secs: 0.0,
            };
            open = Some((migration, *at));
        }
    }
    if let Some((mut migration, since)) = open {
        migration.secs = secs(since, exited);
        times.push(migration);
    }
    times
}

/// What the helper's set-based 0083 printed (`sentry_helper.py`: groups walked, sets merged,
/// time), for the step's notes: "0083_migrate_dupe_groups set-based: …".
pub fn set_based_0083_lines(log: &str) -> Vec<String> {
    log.lines()
        .filter_map(|line| line.strip_prefix("sentry-migrate: "))
        .filter(|line| line.starts_with("0083_migrate_dupe_groups set-based:"))
        .map(str::to_string)
        .collect()
}

/// The `count` longest of `times`, longest first (South's order among equals).
pub fn slowest(times: &[MigrationTime], count: usize) -> Vec<&MigrationTime> {
    let mut sorted: Vec<&MigrationTime> = times.iter().collect();
    sorted.sort_by(|a, b| b.secs.total_cmp(&a.secs));
    sorted.truncate(count);
    sorted
}

#[cfg(test)]
mod south_tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_set_based_0083_line_is_found_among_souths() {
        let log = " > sentry:0083_migrate_dupe_groups\n\
            sentry-migrate: sentry.migrations.0083_migrate_dupe_groups runs set-based (x.sql)\n\
            sentry-migrate: 0083_migrate_dupe_groups set-based: 2711 groups walked, 33 set(s) of duplicates merged, 35 group(s) merged into their survivor, in 0.1s\n\
             > sentry:0084_auto\n";
        assert_eq!(
            set_based_0083_lines(log),
            ["0083_migrate_dupe_groups set-based: 2711 groups walked, 33 set(s) of duplicates merged, 35 group(s) merged into their survivor, in 0.1s"]
        );
        assert!(set_based_0083_lines(" > sentry:0083_migrate_dupe_groups\n").is_empty());
    }

    #[test]
    fn each_migration_runs_from_its_line_to_the_next_south_line() {
        let started = Instant::now();
        let at = |ms: u64| started + Duration::from_millis(ms);
        // As Sentry 6.4.4's upgrade prints it (19-sentry6-upgrade.log of a rehearsal).
        let lines: Vec<(String, Instant)> = [
            ("Migrating...\n", 100),
            ("Running migrations for djcelery:\n", 110),
            (" - Migrating forwards to 0004_v30_changes.\n", 120),
            (" > djcelery:0003_v26_changes\n", 200),
            (" > djcelery:0004_v30_changes\n", 450),
            (" - Loading initial data for djcelery.\n", 1450),
            ("Installed 0 object(s) from 0 fixture(s)\n", 1500),
            ("Running migrations for sentry:\n", 1600),
            (" > sentry:0083_migrate_dupe_groups\n", 2000),
            ("Merging duplicate events for <Group: x>\n", 2500),
            (" > sentry:0084_auto__add_unique_messagefiltervalue\n", 4250),
            ("\n", 4300),
            ("Synced:\n", 4400),
            (" > django.contrib.auth\n", 4410),
        ]
        .into_iter()
        .map(|(line, ms)| (line.to_string(), at(ms)))
        .collect();
        let times = south_migration_times(&lines, started, at(5000));
        let shown: Vec<(String, f64, f64)> = times
            .iter()
            .map(|it| (it.label(), it.at_secs, it.secs))
            .collect();
        assert_eq!(
            shown,
            [
                ("djcelery:0003_v26_changes".to_string(), 0.2, 0.25),
                ("djcelery:0004_v30_changes".to_string(), 0.45, 1.0),
                ("sentry:0083_migrate_dupe_groups".to_string(), 2.0, 2.25),
                // The last runs to the exit: South prints no line after it but the lists.
                (
                    "sentry:0084_auto__add_unique_messagefiltervalue".to_string(),
                    4.25,
                    0.75
                ),
            ]
        );
        let slowest: Vec<String> = slowest(&times, 2).iter().map(|it| it.label()).collect();
        assert_eq!(
            slowest,
            [
                "sentry:0083_migrate_dupe_groups",
                "djcelery:0004_v30_changes"
            ]
        );
    }

    #[test]
    fn no_migration_no_times() {
        let started = Instant::now();
        // Sentry 4's upgrade of an up-to-date db (05-sqlite-upgrade.log): the `Synced:` list.
        let lines: Vec<(String, Instant)> = [
            "Running migrations for sentry:",
            "- Nothing to migrate.",
            " - Loading initial data for sentry.",
            "Synced:",
            " > django.contrib.auth",
            " > sentry.plugins.sentry_mail",
            "Migrated:",
            " - sentry",
        ]
        .into_iter()
        .map(|line| (line.to_string(), started))
        .collect();
        assert!(south_migration_times(&lines, started, started).is_empty());
        assert_eq!(
            south_marker(" > social_auth:0002_auto__add_unique_nonce"),
            Some(("social_auth", "0002_auto__add_unique_nonce"))
        );
        assert_eq!(south_marker("> sentry:0001_initial"), None);
        assert_eq!(south_marker(" > sentry: 0001 initial"), None);
    }
}
