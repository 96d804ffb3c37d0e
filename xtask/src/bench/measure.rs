//! Runs one program and measures it as `/usr/bin/time -v` does: wall time, and the peak RSS of
//! the biggest process in its tree (the kernel's `ru_maxrss` from `wait4`).

use std::{
    fs::{File, OpenOptions},
    io::Write,
    os::unix::process::ExitStatusExt,
    path::Path,
    process::{ExitStatus, Stdio},
    time::Instant,
};

use anyhow::{bail, Context, Result};
use xshell::Cmd;

/// What one program cost.
#[derive(Debug, Clone, Copy)]
pub struct Measured {
    pub secs: f64,
    /// The largest resident set of the program or any child it waited for, KiB.
    pub peak_rss_kib: u64,
    pub status: ExitStatus,
}

/// Runs `cmd` with stdin closed, its stderr (and stdout, unless `stdout` is given) appended to
/// `log`, and measures it. Fails only when it cannot run; the caller judges the exit status.
pub fn run(cmd: Cmd<'_>, log: &Path, stdout: Option<File>) -> Result<Measured> {
    let shown = cmd.to_string();
    let mut command: std::process::Command = cmd.into();
    let mut log_file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("cannot open the log {}", log.display()))?;
    writeln!(log_file, "$ {shown}")?;
    let out = match stdout {
        Some(file) => Stdio::from(file),
        None => Stdio::from(log_file.try_clone()?),
    };
    command.stdin(Stdio::null()).stdout(out).stderr(log_file);
    let started = Instant::now();
    let child = command
        .spawn()
        .with_context(|| format!("cannot run `{shown}`"))?;
    let pid = child.id() as libc::pid_t;
    let mut status: libc::c_int = 0;
    // SAFETY: an all-zero rusage is a valid value; wait4 fills it for the child we own.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: `pid` is our own child, not yet reaped (std never waits for it: `child` is
        // only dropped, which does not wait); the pointers are to live locals.
        let got = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if got == pid {
            break;
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            bail!("cannot wait for `{shown}`: {err}");
        }
    }
    drop(child);
    Ok(Measured {
        secs: started.elapsed().as_secs_f64(),
        // Linux reports ru_maxrss in KiB.
        peak_rss_kib: usage.ru_maxrss.max(0) as u64,
        status: ExitStatus::from_raw(status),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_memory_and_time_of_a_child_and_its_children() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let sh = xshell::Shell::new().unwrap();
        // A grandchild that holds 200 MiB for a moment (written, so resident): the measure is the tree's biggest
        // process, as `/usr/bin/time -v` reports it.
        let script = "import subprocess, sys; subprocess.run([sys.executable, '-c', \"b = b'x' * (200 * 1024 * 1024); import time; time.sleep(0.3)\"], check=True)";
        let big = run(xshell::cmd!(sh, "python3 -c {script}"), &log, None).unwrap();
        assert!(big.status.success());
        assert!(big.peak_rss_kib > 200 * 1024, "{big:?}");
        assert!(big.secs >= 0.3, "{big:?}");
        let small = run(xshell::cmd!(sh, "python3 -c pass"), &log, None).unwrap();
        assert!(small.peak_rss_kib < 100 * 1024, "{small:?}");
        let exit3 = "import sys; sys.exit(3)";
        let failed = run(xshell::cmd!(sh, "python3 -c {exit3}"), &log, None).unwrap();
        assert_eq!(failed.status.code(), Some(3));
        assert!(fs_text(&log).contains("$ python3 -c pass"));
    }

    fn fs_text(path: &Path) -> String {
        std::fs::read_to_string(path).unwrap()
    }
}
