//! A Sentry web server for the rehearsal: its own process group on 127.0.0.1, stopped with
//! every process of that group when dropped (also when a rehearsal step fails); and Sentry 4's
//! and Sentry 6's web services started as such.

use std::{
    fs,
    net::{SocketAddr, TcpStream},
    os::unix::process::CommandExt,
    path::Path,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use nix::{
    sys::signal::{killpg, Signal},
    unistd::Pid,
};

use xshell::{cmd, Cmd, Shell};

use crate::util::log_tail;

pub struct Server {
    name: String,
    child: Option<Child>,
    pgid: u32,
    /// Held for its Drop: unregisters the interrupt hook once the server is stopped.
    _on_interrupt: crate::util::InterruptGuard,
}

impl Server {
    /// Spawns `command` in a new process group, output to `log`, and waits until it accepts
    /// connections on 127.0.0.1:`port`.
    pub fn start(
        name: &str,
        mut command: std::process::Command,
        port: u16,
        log: &Path,
        wait: Duration,
    ) -> Result<Server> {
        let out = fs::OpenOptions::new().create(true).append(true).open(log)?;
        command
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        let pgid = child.id();
        let on_interrupt = crate::util::on_interrupt(move || signal_group(pgid, Signal::SIGKILL));
        let mut server = Server {
            name: name.to_string(),
            child: Some(child),
            pgid,
            _on_interrupt: on_interrupt,
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok() {
                return Ok(server);
            }
            if let Some(status) = server
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!(
                    "{name} exited ({status}) before listening on {addr}; last lines of {}:\n{}",
                    log.display(),
                    log_tail(log, 15)
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        bail!(
            "{name} did not listen on {addr} within {}s; see {}:\n{}",
            wait.as_secs(),
            log.display(),
            log_tail(log, 15)
        )
    }

    /// Stops the whole process group: TERM, then KILL after a grace period.
    pub fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        signal_group(self.pgid, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline && (child.try_wait()?.is_none() || group_alive(self.pgid)) {
            std::thread::sleep(Duration::from_millis(100));
        }
        if group_alive(self.pgid) || child.try_wait()?.is_none() {
            signal_group(self.pgid, Signal::SIGKILL);
            let _ = child.wait();
        }
        if group_alive(self.pgid) {
            bail!(
                "{} (process group {}) is still running after KILL",
                self.name,
                self.pgid
            );
        }
        Ok(())
    }

    /// Its process group still has a live process.
    pub fn is_running(&self) -> bool {
        self.child.is_some() && group_alive(self.pgid)
    }

    #[cfg(test)]
    pub fn pgid(&self) -> u32 {
        self.pgid
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Err(err) = self.stop() {
            eprintln!("warning: {err:#}");
        }
    }
}

/// Signals every process of group `pgid`. A group that is already gone (ESRCH) is what
/// stopping wants; `stop` checks the outcome with `group_alive` either way.
fn signal_group(pgid: u32, signal: Signal) {
    if let Ok(pgid) = i32::try_from(pgid) {
        let _ = killpg(Pid::from_raw(pgid), signal);
    }
}

/// Whether any live (non-zombie) process is in process group `pgid`.
pub fn group_alive(pgid: u32) -> bool {
    crate::util::live_processes()
        .iter()
        .any(|process| process.pgrp == pgid)
}

/// A Sentry web service on 127.0.0.1:`port`, stopped (whole process group) when dropped.
fn web_server(name: &str, command: Cmd<'_>, port: u16, log: &Path) -> Result<Server> {
    let command: std::process::Command = command
        .env("SENTRY_WEB_HOST", "127.0.0.1")
        .env("SENTRY_WEB_PORT", port.to_string())
        .into();
    Server::start(name, command, port, log, Duration::from_secs(120))
}

/// Sentry 4's web service, started through the rehearsal's launcher: 4.10's `start` lets
/// gunicorn parse the command line, which rejects `--noupgrade` (see serve.py).
pub(super) fn sentry4_server(sh: &Shell, port: u16, log: &Path) -> Result<Server> {
    let py = sh.current_dir().join("bin/py");
    web_server(
        "Sentry 4 web",
        cmd!(
            sh,
            "{py} xtask/python/rehearse/serve.py settings/settings.py"
        ),
        port,
        log,
    )
}

/// Sentry 6.4's web service, started with exactly the command `migrate` tells users to run.
pub(super) fn sentry6_server(sh: &Shell, port: u16, log: &Path) -> Result<Server> {
    let sentry = sh.current_dir().join("bin/sentry");
    web_server(
        "Sentry 6.4 web",
        cmd!(
            sh,
            "{sentry} --config=settings/settings.py start --noupgrade"
        ),
        port,
        log,
    )
}

/// Sentry 6.4's web service as `sentry6_server` starts it, but on `socket`, passed as a
/// socket-activating service manager passes it (fd 3, LISTEN_FDS, LISTEN_PID: gunicorn 0.17.4
/// takes it instead of binding).
pub(super) fn sentry6_server_on_socket(
    sh: &Shell,
    socket: &std::net::TcpListener,
    port: u16,
    log: &Path,
) -> Result<Server> {
    let sentry = sh.current_dir().join("bin/sentry");
    let mut command: std::process::Command = cmd!(
        sh,
        "python3 xtask/python/rehearse/socket_activate.py {sentry} --config=settings/settings.py start --noupgrade"
    )
    .env("SENTRY_WEB_HOST", "127.0.0.1")
    .env("SENTRY_WEB_PORT", port.to_string())
    .into();
    crate::util::pass_listener(&mut command, socket);
    Server::start(
        "Sentry 6.4 web",
        command,
        port,
        log,
        Duration::from_secs(120),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server with a child process of its own, like gunicorn's master and workers.
    fn forking_server(port: u16) -> std::process::Command {
        let mut command = std::process::Command::new("python3");
        command.args([
            "-c",
            "import subprocess, sys, http.server\n\
             subprocess.Popen(['sleep', '300'])\n\
             http.server.HTTPServer(('127.0.0.1', int(sys.argv[1])), http.server.SimpleHTTPRequestHandler).serve_forever()",
        ]);
        command.arg(port.to_string());
        command
    }

    fn failing_step_with_a_server(log: &Path, port: u16) -> Result<u32> {
        let server = Server::start(
            "test server",
            forking_server(port),
            port,
            log,
            Duration::from_secs(20),
        )?;
        let pgid = server.pgid();
        PGID.with(|cell| cell.set(pgid));
        bail!("a later step failed (server of group {pgid} still in scope)")
    }

    thread_local! {
        static PGID: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
    }

    #[test]
    fn a_failure_stops_the_server_and_its_children() {
        let scratch = tempfile::tempdir().unwrap();
        let dir = scratch.path();
        let log = dir.join("server.log");
        let port = crate::util::free_port().unwrap();
        let mut command = forking_server(port);
        // Start once directly to prove it listens and stops cleanly.
        command.current_dir(dir);
        let mut server =
            Server::start("test server", command, port, &log, Duration::from_secs(20)).unwrap();
        assert!(group_alive(server.pgid()));
        let pgid = server.pgid();
        server.stop().unwrap();
        assert!(!group_alive(pgid), "server and child gone after stop");

        // Now inside a step that fails: the error path drops the server, which stops the group.
        let err = failing_step_with_a_server(&log, crate::util::free_port().unwrap()).unwrap_err();
        assert!(err.to_string().contains("a later step failed"));
        let pgid = PGID.with(|cell| cell.get());
        assert!(pgid > 0);
        assert!(
            !group_alive(pgid),
            "process group {pgid} left running after a failure"
        );
    }

    #[test]
    fn an_interrupt_stops_running_servers() {
        let scratch = tempfile::tempdir().unwrap();
        let dir = scratch.path();
        let port = crate::util::free_port().unwrap();
        let server = Server::start(
            "test server",
            forking_server(port),
            port,
            &dir.join("server.log"),
            Duration::from_secs(20),
        )
        .unwrap();
        let pgid = server.pgid();
        assert!(group_alive(pgid));
        // What the SIGINT handler does for this server before exiting (only this server's
        // hook: the other tests' servers are not ours to stop).
        crate::util::run_interrupt_hook(&server._on_interrupt);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while group_alive(pgid) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(
            !group_alive(pgid),
            "server and its child gone after the interrupt hooks ran"
        );
        drop(server);
    }

    #[test]
    fn a_server_that_dies_is_reported_with_its_log() {
        let scratch = tempfile::tempdir().unwrap();
        let dir = scratch.path();
        let log = dir.join("server.log");
        let mut command = std::process::Command::new("python3");
        command.args([
            "-c",
            "import sys; sys.stderr.write('ImportError: no module named sentry\\n'); sys.exit(3)",
        ]);
        let err = Server::start(
            "Sentry 4",
            command,
            crate::util::free_port().unwrap(),
            &log,
            Duration::from_secs(20),
        )
        .err()
        .unwrap();
        let message = err.to_string();
        assert!(
            message.contains("Sentry 4 exited (exit status: 3) before listening"),
            "{message}"
        );
        assert!(
            message.contains("ImportError: no module named sentry"),
            "{message}"
        );
    }
}
