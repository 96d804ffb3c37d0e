//! The tool's Sentry 6 step proven equal to Sentry's own: the loaded target cloned before the
//! step, Sentry 6.4.4's unmodified `bin/sentry upgrade --noinput` run on the clone, then both
//! databases compared, schema, sequences and every table's rows (`pg::sameness`), and both times
//! shown side by side.

use std::{
    collections::BTreeMap,
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::{ensure, Context, Result};
use xshell::{cmd, Shell};

use super::run::log_run;
use crate::{ident::Ident, journal::Journal, pg::sameness, pgcluster::PgCluster, plan::StepId};

/// The loaded state, cloned before the tool's Sentry 6 step, and its largest ids.
pub(crate) struct Reference {
    pub dbname: String,
    max_ids: BTreeMap<String, i64>,
}

/// Clones `dbname` (loaded, verified, not yet on Sentry 6) as `<dbname>_sentry_own`, with the
/// columns the copy loaded as Sentry 6's `integer` turned back into Sentry 4's `double precision`
/// (exact: whole values): the load as Sentry 4's schema holds it, which is where Sentry's own
/// upgrade starts (its 0105 then rewrites those tables, as it does for a user).
pub(crate) fn clone_loaded(cluster: &PgCluster, dbname: &str) -> Result<Reference> {
    let clone = format!("{dbname}_sentry_own");
    let (source, target) = (
        Ident::new("database name", dbname)?,
        Ident::new("database name", &clone)?,
    );
    cluster
        .client("postgres")?
        .batch_execute(&format!(
            "CREATE DATABASE {} TEMPLATE {}",
            target.quoted(),
            source.quoted()
        ))
        .with_context(|| format!("cloning {dbname} for Sentry's own upgrade"))?;
    let mut client = cluster.client(&clone)?;
    crate::copy::restore_sentry4_types(&mut client, crate::copy::SENTRY6_INTEGER_COLUMNS)
        .with_context(|| format!("giving {clone} Sentry 4's column types back"))?;
    let max_ids = sameness::max_ids(&mut client)?;
    Ok(Reference {
        dbname: clone,
        max_ids,
    })
}

/// Settings for the clone: the migration's own settings, the database name changed.
fn clone_settings(root: &Path, clone: &str) -> Result<PathBuf> {
    let dir = root.join("settings-sentry-own");
    fs::create_dir_all(&dir)?;
    for file in ["settings.py", "sentry_conf.py"] {
        let from = root.join("settings").join(file);
        if from.exists() {
            fs::copy(&from, dir.join(file))?;
        }
    }
    let local = dir.join("settings_local.py");
    fs::write(
        &local,
        format!(
            "# The rehearsal's reference: the migration's settings_local.py, on its clone.\n\
             exec(open({:?}).read())\n\
             DATABASES['default']['NAME'] = {clone:?}\n",
            root.join("settings/settings_local.py")
                .display()
                .to_string()
        ),
    )?;
    fs::set_permissions(&local, fs::Permissions::from_mode(0o600))?;
    Ok(dir.join("settings.py"))
}

/// Sentry's own upgrade on the clone, timed, and both databases compared: Sentry's seconds and
/// what the comparison found.
pub(crate) fn sentry_own_upgrade(
    sh: &Shell,
    root: &Path,
    cluster: &PgCluster,
    dbname: &str,
    reference: &Reference,
    log: &Path,
    pg_env: &[(&'static str, String)],
) -> Result<(f64, sameness::Sameness)> {
    let settings = clone_settings(root, &reference.dbname)?;
    let config = format!("--config={}", settings.display());
    let started = Instant::now();
    log_run(
        cmd!(sh, "bin/sentry {config} upgrade --noinput").envs(pg_env.iter().cloned()),
        log,
    )
    .context("Sentry's own upgrade on the clone failed")?;
    let theirs = started.elapsed().as_secs_f64();
    // What `verify-sentry6` does after the tool's step: the load's marker is not Sentry's.
    cluster
        .client(&reference.dbname)?
        .batch_execute(crate::pg::DROP_LOAD_MARKER_SQL)?;
    let found = sameness::compare(
        &mut cluster.client(dbname)?,
        &mut cluster.client(&reference.dbname)?,
        &reference.max_ids,
    )?;
    Ok((theirs, found))
}

/// Sentry's own upgrade on the clone, then both databases compared; fails on any difference,
/// naming the table and example rows.
pub(super) fn prove_equal(
    sh: &Shell,
    root: &Path,
    cluster: &PgCluster,
    dbname: &str,
    reference: &Reference,
    logs: &Path,
    pg_env: &[(&'static str, String)],
) -> Result<()> {
    let log = logs.join("sentry-own-upgrade.log");
    let (theirs, found) = sentry_own_upgrade(sh, root, cluster, dbname, reference, &log, pg_env)?;
    let ours = Journal::load(&root.join("dumps/journal.json"))?
        .as_ref()
        .and_then(|it| it.record_of(StepId::Sentry6Upgrade).map(|r| r.elapsed_secs))
        .context("the journal has no sentry6-upgrade")?;
    let merged = crate::sentry::set_based_0083_lines(&fs::read_to_string(
        root.join("dumps/logs").join(step_log(root)?),
    )?);
    let line = format!(
        "Sentry 6 step {:.1}s against Sentry's own upgrade {:.1}s ({:.2}x) on a clone of the same loaded db; {}; {}",
        ours,
        theirs,
        ours / theirs,
        merged.first().map_or("0083 said nothing", String::as_str),
        found.summary()
    );
    fs::write(logs.join("sentry-own-upgrade.txt"), format!("{line}\n"))?;
    ensure!(
        found.is_equal(),
        "the tool's Sentry 6 step left a database different from Sentry's own upgrade ({}, log {}): {}",
        reference.dbname,
        log.display(),
        found.summary()
    );
    println!("    {line}");
    Ok(())
}

/// The sentry6-upgrade step's log file name in dumps/logs.
fn step_log(root: &Path) -> Result<String> {
    let logs = root.join("dumps/logs");
    for entry in fs::read_dir(&logs).with_context(|| format!("cannot list {}", logs.display()))? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name.ends_with("-sentry6-upgrade.log") {
            return Ok(name);
        }
    }
    anyhow::bail!("no sentry6-upgrade log in {}", logs.display())
}
