//! What we know about Sentry's processes and output: running-instance detection and the
//! parsing of `loaddata`'s report (Django 1.4 exits 0 even when a load fails and rolls back).

use std::{fs, path::Path};

use anyhow::{bail, Result};

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
    let at = text.find("/sentry-")? + "/sentry-".len();
    let version: String = text[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    let version = version.trim_end_matches('.').to_string();
    version.contains('.').then_some(version)
}

#[cfg(test)]
mod version_tests {
    use super::*;

    #[test]
    fn reads_the_sentry_egg_from_the_script() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("sentry");
        fs::write(&script, "#!/x/bin/python\nimport sys\nsys.path[0:0] = [\n  '/srv/eggs/sentry-4.10.0-py2.7.egg',\n  '/srv/eggs/Django-1.4.22-py2.7.egg',\n]\n").unwrap();
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
