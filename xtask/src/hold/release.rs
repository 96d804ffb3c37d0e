//! `hold-events --release`: stops the running holder (SIGTERM), waits until it let go of the
//! address and exited with every request it was receiving answered and on disk, and measures
//! the hand-over gap: how long the address refused connections until another process (Sentry 6,
//! whose gunicorn retries its bind every second) listened on it.

use std::{
    fs,
    net::TcpStream,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use nix::{
    sys::signal::{kill, Signal},
    unistd::Pid,
};

use super::{lock_path, resolve, state_path, State, BODY_TIMEOUT, HEADER_TIMEOUT};
use crate::{config::Config, lock::Lock};

fn read_state(config: &Config) -> Result<State> {
    let path = state_path(&config.dumps_dir());
    let text = fs::read(&path)
        .with_context(|| format!("cannot read {} (hold-events writes it)", path.display()))?;
    serde_json::from_slice(&text).with_context(|| format!("{} is damaged", path.display()))
}

/// Releases the address; `wait_for_sentry`: how long to wait for another process to listen on
/// it before saying nothing did.
pub fn release(config: &Config, wait_for_sentry: Duration) -> Result<()> {
    let dumps = config.dumps_dir();
    let Some(pid) = Lock::holder(&lock_path(&dumps))? else {
        bail!(
            "no `cargo xtask hold-events` runs on this repo ({} is not held): nothing to release",
            lock_path(&dumps).display()
        );
    };
    let state = read_state(config)?;
    if state.pid != pid {
        bail!(
            "{} names pid {} but pid {pid} holds {}: stop that process yourself",
            state_path(&dumps).display(),
            state.pid,
            lock_path(&dumps).display()
        );
    }
    let addr = resolve(&state.address)?;
    if state.socket_passed {
        return release_shared_socket(config, &state, addr, pid, wait_for_sentry);
    }
    kill(Pid::from_raw(pid as i32), Signal::SIGTERM)
        .with_context(|| format!("cannot signal hold-events (pid {pid})"))?;
    // The holder drops its listener first, then says so in its state file.
    let deadline = Instant::now() + Duration::from_secs(10);
    let released = loop {
        if read_state(config).is_ok_and(|state| state.released.is_some()) {
            break Instant::now();
        }
        if Instant::now() > deadline {
            bail!(
                "hold-events (pid {pid}) did not let go of {} within 10 s of SIGTERM: see \
                 dumps/logs/hold-events.log",
                state.address
            );
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    // Measure the gap while the holder finishes the requests it was receiving.
    let taken = loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(50)).is_ok() {
            break Some(released.elapsed());
        }
        if released.elapsed() > wait_for_sentry {
            break None;
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    let exit_deadline = Instant::now() + HEADER_TIMEOUT + BODY_TIMEOUT + Duration::from_secs(5);
    while Lock::holder(&lock_path(&dumps))?.is_some() {
        if Instant::now() > exit_deadline {
            bail!("hold-events (pid {pid}) released {} but has not exited: see dumps/logs/hold-events.log", state.address);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut state = read_state(config)?;
    state.gap_ms = taken.map(|gap| gap.as_millis() as u64);
    crate::util::write_atomic(
        &state_path(&dumps),
        &serde_json::to_vec_pretty(&state)?,
        0o600,
    )?;
    match taken {
        Some(gap) => println!(
            "hold-events released {}: it refused connections for {} ms until Sentry 6 listened \
             on it. Next: `cargo xtask replay-events`.",
            state.address,
            gap.as_millis()
        ),
        None => bail!(
            "hold-events released {} but nothing listens on it {} s later: events sent now are \
             lost. Start Sentry 6 (`bin/sentry start`), or `cargo xtask hold-events` again to \
             hold them",
            state.address,
            wait_for_sentry.as_secs()
        ),
    }
    Ok(())
}

/// Whether an answer on `addr` came from Sentry (not from the holder): `None` when nothing
/// answered.
fn sentry_answers(addr: std::net::SocketAddr, wait: Duration) -> Option<bool> {
    use std::io::{Read, Write};
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
    stream.set_read_timeout(Some(wait)).ok()?;
    stream
        .write_all(b"GET /api/store/ HTTP/1.0\r\nHost: sentry-migrate\r\n\r\n")
        .ok()?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 16 << 10 {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    if !head.starts_with(b"HTTP/") {
        return None;
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    Some(!head.contains(&format!("\r\n{}:", super::HOLDER_HEADER)))
}

/// The holder and Sentry 6 share a socket their service manager keeps open: nothing is ever
/// refused. The holder stops taking connections at once; those that come until Sentry 6 takes
/// them wait in the socket's queue (start Sentry 6 first: once its workers boot, they take
/// connections beside the holder, and the wait is nil). Measured: how long a probe waited.
fn release_shared_socket(
    config: &Config,
    state: &State,
    addr: std::net::SocketAddr,
    pid: u32,
    wait_for_sentry: Duration,
) -> Result<()> {
    let dumps = config.dumps_dir();
    kill(Pid::from_raw(pid as i32), Signal::SIGTERM)
        .with_context(|| format!("cannot signal hold-events (pid {pid})"))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !read_state(config).is_ok_and(|state| state.released.is_some()) {
        if Instant::now() > deadline {
            bail!("hold-events (pid {pid}) did not stop taking connections within 10 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let released = Instant::now();
    let answered = loop {
        match sentry_answers(addr, wait_for_sentry) {
            Some(true) => break Some(released.elapsed()),
            // The holder's answer to a connection it took before it stopped: again.
            Some(false) => continue,
            None if released.elapsed() < wait_for_sentry => {
                std::thread::sleep(Duration::from_millis(20))
            }
            None => break None,
        }
    };
    let exit_deadline = Instant::now() + HEADER_TIMEOUT + BODY_TIMEOUT + Duration::from_secs(5);
    while Lock::holder(&lock_path(&dumps))?.is_some() {
        if Instant::now() > exit_deadline {
            bail!("hold-events (pid {pid}) has not exited: see dumps/logs/hold-events.log");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let Some(waited) = answered else {
        bail!(
            "hold-events stopped, but nothing answers on {} {} s later: connections wait in \
             the socket's queue. Start Sentry 6 with the socket (or `cargo xtask hold-events` \
             again with it)",
            state.address,
            wait_for_sentry.as_secs()
        );
    };
    let mut state = read_state(config)?;
    state.gap_ms = Some(0);
    crate::util::write_atomic(
        &state_path(&dumps),
        &serde_json::to_vec_pretty(&state)?,
        0o600,
    )?;
    println!(
        "hold-events released {}: the socket never closed, so no connection was refused; \
         Sentry 6 answered a connection made as the holder stopped after {} ms. Next: `cargo \
         xtask replay-events`.",
        state.address,
        waited.as_millis()
    );
    Ok(())
}
