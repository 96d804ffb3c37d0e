//! Running the rehearsal's programs: stdin closed, the command line and its output appended to
//! a log, so that a failure names the command and shows the log's last lines.

use std::{fs, io::Write, path::Path};

use anyhow::{bail, Context, Result};
use xshell::{cmd, Cmd, Shell};

use crate::util;

/// Runs `cmd` with stdin closed, appending the command line, its stdout and its stderr to `log`.
fn run_into_log(cmd: Cmd<'_>, log: &Path) -> Result<(String, std::process::Output)> {
    let shown = cmd.to_string();
    let mut command: std::process::Command = cmd.into();
    command.stdin(std::process::Stdio::null());
    let output = command
        .output()
        .with_context(|| format!("cannot run `{shown}`"))?;
    let mut file = fs::OpenOptions::new().create(true).append(true).open(log)?;
    writeln!(file, "$ {shown}")?;
    file.write_all(&output.stdout)?;
    file.write_all(&output.stderr)?;
    Ok((shown, output))
}

/// Runs `cmd` with stdin closed, appending its stdout and stderr to `log`; returns stdout.
/// On failure the error names the command and the log, with its last lines.
pub(crate) fn log_run(cmd: Cmd<'_>, log: &Path) -> Result<String> {
    let (shown, output) = run_into_log(cmd, log)?;
    if !output.status.success() {
        let tail = util::log_tail(log, 15);
        bail!(
            "`{shown}` failed ({}); log {}:\n{tail}",
            output.status,
            log.display()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Runs `cmd` with stdin closed, writing its stdout and stderr to `log`; returns whether it
/// succeeded, and its stderr.
/// `exe ARGS` (this tool) on the scratch install `root` with libpq's variables, into `log`:
/// whether it succeeded, and its stderr.
pub(super) fn run_tool(
    sh: &Shell,
    exe: &Path,
    args: &[&str],
    root: &Path,
    pg_env: &[(&'static str, String)],
    log: &Path,
) -> Result<(bool, String)> {
    run_logged(
        cmd!(sh, "{exe} {args...}")
            .env("SENTRY_MIGRATE_ROOT", root)
            .envs(pg_env.iter().cloned()),
        log,
    )
}

pub(super) fn run_logged(cmd: Cmd<'_>, log: &Path) -> Result<(bool, String)> {
    let (_, output) = run_into_log(cmd, log)?;
    Ok((
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}
