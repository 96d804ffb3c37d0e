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
