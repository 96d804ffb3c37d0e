//! `cargo xtask hold-events`: while Sentry is down for the cut-over, an HTTP endpoint on the
//! address Sentry listens on that holds every store request on disk before it answers, as
//! Sentry 6 would answer (`store`), in the spool (`spool`); `hold-events --release` stops it
//! and measures how long the address stays free until Sentry 6 takes it (`release`); the
//! accept loop and each request's path through it are `serve`.
//! `cargo xtask replay-events` (module `replay`) sends the held requests on to Sentry 6.

mod release;
mod serve;
pub mod spool;
pub mod store;

use std::{
    fs,
    net::{SocketAddr, ToSocketAddrs},
    path::{Path, PathBuf},
    sync::{atomic::AtomicUsize, Arc, Mutex},
    time::Duration,
};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use xshell::{cmd, Shell};

use crate::{config::Config, lock::Lock};
pub use release::release;
use serve::{Shared, Stats};
use store::{Keys, Limits};

/// How long a client may take to send its headers, and then its body.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
pub const BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// The header every answer of the holder carries.
pub const HOLDER_HEADER: &str = "x-sentry-migrate";

/// `hold-events`' options.
#[derive(Debug, Clone)]
pub struct Options {
    /// `--listen HOST:PORT`; none: SENTRY_WEB_HOST:SENTRY_WEB_PORT of the install's settings.
    pub listen: Option<String>,
    /// The largest request body (and event, decoded) held: larger ones get 413.
    pub max_body: u64,
    /// The spool's largest size: past it, requests get 503 and are not held.
    pub max_spool: u64,
    /// How long to wait for the address to be free (Sentry 4 stopping).
    pub wait: Duration,
}

/// `dumps/hold-events.json`: the running holder, for `--release` and `replay-events`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    pub pid: u32,
    pub address: String,
    pub started: String,
    /// Set by the holder once it let go of the address.
    #[serde(default)]
    pub released: Option<String>,
    /// Milliseconds the address was free before another process (Sentry 6) listened on it;
    /// set by `--release`.
    #[serde(default)]
    pub gap_ms: Option<u64>,
    /// The listening socket came from a service manager (LISTEN_FDS), which keeps it open:
    /// `--release` waits for Sentry 6 to answer on it before stopping the holder.
    #[serde(default)]
    pub socket_passed: bool,
}

pub fn state_path(dumps: &Path) -> PathBuf {
    dumps.join("hold-events.json")
}

pub fn lock_path(dumps: &Path) -> PathBuf {
    dumps.join("hold-events.lock")
}

pub fn log_path(dumps: &Path) -> PathBuf {
    dumps.join("logs/hold-events.log")
}

/// The address Sentry listens on: SENTRY_WEB_HOST and SENTRY_WEB_PORT as the install's own
/// settings give them (Sentry's settings loaded by `bin/py`, as `bin/sentry start` loads them).
pub fn sentry_address(sh: &Shell, config: &Config) -> Result<String> {
    let py = config.bin("py");
    let helper = config.helper_py();
    let settings = config.settings_py();
    if !py.exists() {
        bail!(
            "{} is missing: run bin/buildout first (hold-events reads Sentry's address from its \
             settings), or give the address with --listen HOST:PORT",
            py.display()
        );
    }
    let out = cmd!(sh, "{py} {helper} --config={settings} web-address")
        .quiet()
        .ignore_stderr()
        .read()
        .with_context(|| {
            format!(
                "cannot read SENTRY_WEB_HOST and SENTRY_WEB_PORT from {} with {}: check that \
                 the settings load (`bin/sentry --config={} help`), or give --listen HOST:PORT",
                settings.display(),
                py.display(),
                settings.display()
            )
        })?;
    let value: serde_json::Value = serde_json::from_str(out.trim())
        .with_context(|| format!("sentry_helper.py web-address printed {out:?}"))?;
    let host = value["host"].as_str().unwrap_or("localhost");
    let host = if host.is_empty() { "0.0.0.0" } else { host };
    let port = value["port"]
        .as_u64()
        .filter(|port| (1..=65535).contains(port))
        .with_context(|| format!("SENTRY_WEB_PORT is not a port: {}", value["port"]))?;
    Ok(if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    })
}

fn resolve(address: &str) -> Result<SocketAddr> {
    address
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {address}: give --listen HOST:PORT"))?
        .next()
        .with_context(|| format!("{address} resolves to no address"))
}

/// UTC now: RFC 3339 for the spool, and as raven writes `timestamp` for events without one.
fn now_utc() -> (String, String) {
    let now = jiff::Timestamp::now();
    (
        now.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(),
        now.strftime("%Y-%m-%dT%H:%M:%S%.6f").to_string(),
    )
}

/// `uuid.uuid4().hex`, as Sentry makes an event id.
fn uuid4_hex() -> String {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the OS gives random bytes");
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs the endpoint until SIGTERM or SIGINT (`--release` sends SIGTERM).
pub fn run(sh: &Shell, config: &Config, options: &Options) -> Result<()> {
    let dumps = config.dumps_dir();
    fs::create_dir_all(dumps.join("logs")).context("cannot create dumps/logs")?;
    use std::os::unix::fs::PermissionsExt;
    for dir in [dumps.clone(), dumps.join("logs")] {
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot make {} private (mode 0700)", dir.display()))?;
    }
    let _lock = Lock::acquire_for(&lock_path(&dumps), "cargo xtask hold-events")?;
    let keys = Keys::from_sqlite(&config.sqlite_path)?;
    if keys.key_count() == 0 {
        bail!(
            "{} has no DSN keys (sentry_projectkey): no client could store an event, there is \
             nothing to hold",
            config.sqlite_path.display()
        );
    }
    let inherited = inherited_socket()?;
    let (address, from) = match (&inherited, &options.listen) {
        (Some(listener), _) => (
            listener.local_addr()?.to_string(),
            "the socket its service manager passed (LISTEN_FDS)".to_string(),
        ),
        (None, Some(address)) => (address.clone(), "--listen".to_string()),
        (None, None) => (
            sentry_address(sh, config)?,
            format!(
                "{}'s SENTRY_WEB_HOST:SENTRY_WEB_PORT",
                config.display_path(&config.settings_py())
            ),
        ),
    };
    let addr = resolve(&address)?;
    let spool_path = spool::path(&dumps);
    let (writer, found) = spool::Writer::open(&spool_path)?;
    // Only the count is kept: the spool may be large.
    let (already, torn_tail) = (found.held.len(), found.torn_tail);
    drop(found);
    if torn_tail > 0 {
        println!(
            "hold-events: the spool's last line was cut short ({} bytes, a kill while writing \
             it: its client got no answer); cut off",
            torn_tail
        );
    }
    use std::os::unix::fs::OpenOptionsExt;
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(log_path(&dumps))
        .context("cannot open dumps/logs/hold-events.log")?;
    let shared = Arc::new(Shared {
        keys,
        limits: Limits {
            max_event_bytes: usize::try_from(options.max_body).unwrap_or(usize::MAX),
        },
        max_body: options.max_body,
        max_spool: options.max_spool,
        dumps: dumps.clone(),
        spool: Mutex::new(writer),
        stats: Mutex::new(Stats::default()),
        log: Mutex::new(log),
        in_flight: AtomicUsize::new(0),
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve::serve(
        shared, addr, inherited, &address, &from, already, options,
    ))
}

/// The listening socket a service manager passed, as systemd passes it (`sd_listen_fds`):
/// `LISTEN_PID` is this process, `LISTEN_FDS` counts descriptors from 3. Sentry 6's gunicorn
/// (0.17.4) takes the same socket the same way, so the address is never closed between them.
fn inherited_socket() -> Result<Option<std::net::TcpListener>> {
    let ours = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|pid| pid.parse::<u32>().ok())
        == Some(std::process::id());
    let count = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse::<u32>().ok())
        .unwrap_or(0);
    if !ours || count == 0 {
        return Ok(None);
    }
    if count != 1 {
        bail!("LISTEN_FDS={count}: hold-events takes one listening socket, Sentry's address");
    }
    use std::os::fd::FromRawFd;
    // SAFETY: fd 3 is ours by the protocol (LISTEN_PID names this process); nothing else in
    // this process uses it.
    let listener = unsafe { std::net::TcpListener::from_raw_fd(3) };
    listener
        .local_addr()
        .context("LISTEN_FDS names fd 3, which is not a TCP listening socket")?;
    listener.set_nonblocking(true)?;
    Ok(Some(listener))
}

impl crate::flags::HoldEvents {
    pub fn run(self, sh: &Shell) -> Result<()> {
        let config =
            Config::for_flags(&sh.current_dir(), self.sqlite.as_deref(), None, None, None)?;
        if self.release {
            if self.listen.is_some() || self.max_body.is_some() || self.max_spool.is_some() {
                bail!("--release takes only --wait: the running hold-events keeps its own options");
            }
            return release(&config, Duration::from_secs(self.wait.unwrap_or(30)));
        }
        run(
            sh,
            &config,
            &Options {
                listen: self.listen,
                max_body: self.max_body.map_or(10 << 20, |it| it.0),
                max_spool: self.max_spool.map_or(1 << 30, |it| it.0),
                wait: Duration::from_secs(self.wait.unwrap_or(600)),
            },
        )
    }
}
