//! Small helpers shared by the tasks: hashing, atomic writes, timestamps, durations, log tails,
//! free ports and free disk space.

use std::{
    fs,
    io::{Read, Write},
    net::TcpListener,
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file =
        fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(format!("{:x}", hasher.finalize()))
}

/// `path` + `suffix` in the same folder (so a rename is atomic).
pub fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

/// Writes through a temp file in the same folder, fsyncs, renames; `mode` applies from creation.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    let tmp = sibling(path, ".tmp");
    let _ = fs::remove_file(&tmp);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("cannot create {}", tmp.display()))?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .map_err(|err| write_error(&tmp, err))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))?;
    fs::rename(&tmp, path)
        .with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|it| it.as_secs())
        .unwrap_or(0)
}

/// `2026-11-25T18:03:09Z` for a unix time (`unix time N` past year 9999, which jiff does not
/// represent).
pub fn utc_timestamp(secs: u64) -> String {
    i64::try_from(secs)
        .ok()
        .and_then(|secs| jiff::Timestamp::from_second(secs).ok())
        .map(|ts| ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_else(|| format!("unix time {secs}"))
}

/// The last `lines` lines of the file at `path`, each prefixed `    | ` (empty if unreadable),
/// for quoting a log in an error message.
pub fn log_tail(path: &Path, lines: usize) -> String {
    text_tail(&fs::read_to_string(path).unwrap_or_default(), lines)
}

/// The last `lines` lines of `text`, each prefixed `    | ` (a program's captured output).
pub fn text_tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..]
        .iter()
        .map(|line| format!("    | {line}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it).
/// This very binary, copied to `dir/name` for children to run: a `cargo build` meanwhile
/// replaces target/debug/xtask, and the running one's path then names a deleted file.
pub fn copy_of_this_binary(dir: &Path, name: &str) -> Result<PathBuf> {
    let exe = dir.join(name);
    fs::copy(std::env::current_exe()?, &exe)
        .with_context(|| format!("cannot copy this binary to {}", exe.display()))?;
    Ok(exe)
}

pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .context("cannot bind a free port on 127.0.0.1: is the loopback interface up?")?;
    Ok(listener
        .local_addr()
        .context("cannot read the address of a bound port on 127.0.0.1")?
        .port())
}

/// A failed write to `path` in words: a full disk says so plainly, with the folder and what is
/// free there, and what to do.
pub fn write_error(path: &Path, err: std::io::Error) -> anyhow::Error {
    if err.raw_os_error() == Some(libc::ENOSPC) {
        let dir = path.parent().unwrap_or(Path::new("."));
        let free = free_bytes(dir)
            .map(human_bytes)
            .unwrap_or_else(|_| "?".into());
        return anyhow::anyhow!(
            "no space left on device writing {} ({} has {free} free): free space there (or move it to a bigger disk), then run the same command again",
            path.display(),
            dir.display()
        );
    }
    anyhow::Error::new(err).context(format!("cannot write {}", path.display()))
}

/// Copies `from` to the new file `to` (0600 while written, never over an existing file) and
/// syncs it; returns `from`'s permission bits. A failed copy removes `to` and is reported by
/// [`write_error`] under `shown` (the name the user knows the file by).
pub fn copy_synced(from: &Path, to: &Path, shown: &Path) -> Result<u32> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut input =
        fs::File::open(from).with_context(|| format!("cannot read {}", from.display()))?;
    let mode = input.metadata()?.permissions().mode() & 0o777;
    let mut output = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(to)
        .with_context(|| format!("cannot create {}", to.display()))?;
    if let Err(err) = std::io::copy(&mut input, &mut output).and_then(|_| output.sync_all()) {
        let _ = fs::remove_file(to);
        return Err(write_error(shown, err));
    }
    Ok(mode)
}

/// `fs::rename`, then the folder synced, so the new name survives a crash (a rename lives in
/// the folder, not in the file).
pub fn rename_synced(from: &Path, to: &Path) -> Result<()> {
    fs::rename(from, to)
        .with_context(|| format!("cannot rename {} to {}", from.display(), to.display()))?;
    let dir = to
        .parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::File::open(dir)
        .and_then(|dir| dir.sync_all())
        .with_context(|| format!("cannot sync {} after renaming into it", dir.display()))
}

/// Bytes an unprivileged user may still write on the file system holding `dir`.
pub fn free_bytes(dir: &Path) -> Result<u64> {
    let stat = nix::sys::statvfs::statvfs(dir).with_context(|| {
        format!(
            "cannot read the free space of {} (statvfs): check that the folder exists",
            dir.display()
        )
    })?;
    #[allow(clippy::useless_conversion)] // the libc types differ between platforms
    let (blocks, fragment) = (
        u64::from(stat.blocks_available()),
        u64::from(stat.fragment_size()),
    );
    Ok(blocks.saturating_mul(fragment))
}

pub fn human_duration(duration: Duration) -> String {
    let secs = duration.as_secs_f64();
    if secs < 60.0 {
        format!("{secs:.1}s")
    } else {
        format!(
            "{}m{:02}s",
            duration.as_secs() / 60,
            duration.as_secs() % 60
        )
    }
}

/// Whether `pid` is a live process (a zombie whose parent is gone and not yet reaped is not).
pub fn process_alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(')')
                .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

type Hook = Box<dyn Fn() + Send>;

static INTERRUPT_HOOKS: std::sync::Mutex<Vec<(u64, Hook)>> = std::sync::Mutex::new(Vec::new());
static NEXT_HOOK: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Registers what to do if the process is interrupted (SIGINT/SIGTERM) while the returned
/// guard lives: servers in their own session or process group do not get the terminal's
/// Ctrl-C, so whoever starts one registers how to stop it.
pub fn on_interrupt(hook: impl Fn() + Send + 'static) -> InterruptGuard {
    let id = NEXT_HOOK.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    INTERRUPT_HOOKS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((id, Box::new(hook)));
    InterruptGuard(id)
}

/// Runs every registered hook, newest first.
pub fn run_interrupt_hooks() {
    let hooks = std::mem::take(&mut *INTERRUPT_HOOKS.lock().unwrap_or_else(|e| e.into_inner()));
    for (_, hook) in hooks.into_iter().rev() {
        hook();
    }
}

/// Runs the one hook `guard` registered (leaving it registered).
#[cfg(test)]
pub fn run_interrupt_hook(guard: &InterruptGuard) {
    let hooks = INTERRUPT_HOOKS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, hook)) = hooks.iter().find(|(id, _)| *id == guard.0) {
        hook();
    }
}

/// Unregisters its hook when dropped (the thing it would stop is stopped by then).
pub struct InterruptGuard(u64);

impl Drop for InterruptGuard {
    fn drop(&mut self) {
        INTERRUPT_HOOKS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(id, _)| *id != self.0);
    }
}

/// A live process as /proc shows it.
pub struct ProcessInfo {
    pub pid: u32,
    /// `/proc/PID`, for its `cwd` and `fd` links.
    pub dir: PathBuf,
    pub args: Vec<String>,
    pub pgrp: u32,
}

/// Every live process but this one (zombies left for a parent that never reaps are skipped).
pub fn live_processes() -> Vec<ProcessInfo> {
    let me = std::process::id();
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|it| it.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // After the parenthesised command: state, ppid, pgrp, …
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        if pid == me || fields.len() < 3 || fields[0] == "Z" {
            continue;
        }
        let cmdline = fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let args = cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        out.push(ProcessInfo {
            pid,
            dir: entry.path(),
            args,
            pgrp: fields[2].parse().unwrap_or(0),
        });
    }
    out
}

/// A field of `/proc/meminfo` (`MemAvailable`, `MemTotal`, …), in KiB.
pub fn meminfo_kib(field: &str) -> Option<u64> {
    let info = fs::read_to_string("/proc/meminfo").ok()?;
    info.lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The memory the kernel says is available for new work (`MemAvailable`), in bytes.
pub fn available_memory() -> Option<u64> {
    meminfo_kib("MemAvailable").map(|kib| kib * 1024)
}

/// This process's peak resident memory (VmHWM), in KiB.
pub fn peak_rss_kib() -> Option<u64> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// CPU seconds (user + system) this process has used, all its threads.
pub fn cpu_secs() -> f64 {
    // SAFETY: an all-zero rusage is valid; getrusage fills it for this process.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a rusage we own.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return 0.0;
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

pub fn human_bytes(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

/// Makes `listener` fd 3 of the program `command` runs, as a service manager passes a socket
/// (`sd_listen_fds`: `LISTEN_FDS` and `LISTEN_PID` are the program's to set, or its wrapper's,
/// `xtask/python/rehearse/socket_activate.py`). For the rehearsal and the tests.
pub fn pass_listener(command: &mut std::process::Command, listener: &std::net::TcpListener) {
    use std::os::{fd::AsRawFd, unix::process::CommandExt};
    let fd = listener.as_raw_fd();
    // SAFETY: only async-signal-safe calls (dup2, fcntl) between fork and exec.
    unsafe {
        command.pre_exec(move || {
            if fd == 3 {
                // dup2 onto itself keeps close-on-exec: clear it instead.
                if libc::fcntl(3, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// The one test switch of the binary: `SENTRY_MIGRATE_TEST_HOLD_BEFORE_JOURNAL` (the fault matrix
/// kills a run while it is held). Off unless a test sets it.
pub const TEST_HOLD: &str = "SENTRY_MIGRATE_TEST_HOLD_BEFORE_JOURNAL";

/// With [`TEST_HOLD`] set to `point`: says so on stdout, then waits a minute (the test kills the
/// run in that time). `point` is a step's name (held before its journal entry) or a point inside
/// a step (`pg-copy:rows`: after the rows committed, before the indexes and keys come back).
pub fn test_hold(point: &str) {
    if std::env::var(TEST_HOLD).as_deref() != Ok(point) {
        return;
    }
    println!("held at {point} ({TEST_HOLD})");
    std::thread::sleep(Duration::from_secs(60));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_fields_are_read_in_kib() {
        let total = meminfo_kib("MemTotal").unwrap();
        let available = meminfo_kib("MemAvailable").unwrap();
        assert!(total > 0 && available <= total, "{available} of {total}");
        // A field's name is matched whole: `Mem` is no field.
        assert_eq!(meminfo_kib("Mem"), None);
    }

    #[test]
    fn timestamps_are_civil_utc() {
        assert_eq!(utc_timestamp(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc_timestamp(1_795_629_789), "2026-11-25T18:03:09Z");
        assert_eq!(utc_timestamp(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc_timestamp(u64::MAX), format!("unix time {}", u64::MAX));
    }

    #[test]
    fn log_tail_quotes_the_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("server.log");
        fs::write(&log, "one\ntwo\nthree\n").unwrap();
        assert_eq!(log_tail(&log, 2), "    | two\n    | three");
        assert_eq!(log_tail(&log, 10), "    | one\n    | two\n    | three");
        assert_eq!(log_tail(&dir.path().join("missing.log"), 5), "");
    }

    #[test]
    fn a_free_port_can_be_bound() {
        let port = free_port().unwrap();
        assert_ne!(port, 0);
        TcpListener::bind(("127.0.0.1", port)).unwrap();
    }

    #[test]
    fn free_bytes_of_a_folder_and_an_error_naming_a_missing_one() {
        let dir = tempfile::tempdir().unwrap();
        let free = free_bytes(dir.path()).unwrap();
        // What df reports for the same folder, in KiB (POSIX format).
        let df = std::process::Command::new("df")
            .arg("-Pk")
            .arg(dir.path())
            .output()
            .unwrap();
        let df = String::from_utf8(df.stdout).unwrap();
        let available_kib: u64 = df
            .lines()
            .nth(1)
            .and_then(|line| line.split_whitespace().nth(3))
            .and_then(|it| it.parse().ok())
            .unwrap();
        let df_bytes = available_kib * 1024;
        // Other writers may change the number between the two readings.
        assert!(
            free.abs_diff(df_bytes) < 256 << 20,
            "statvfs {free} vs df {df_bytes}"
        );

        let missing = dir.path().join("no-such-folder");
        let err = format!("{:#}", free_bytes(&missing).unwrap_err());
        assert!(err.contains(&missing.display().to_string()), "{err}");
    }
}
