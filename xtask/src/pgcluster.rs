//! A throwaway PostgreSQL cluster (initdb + pg_ctl, loopback + a unix socket in a temp folder),
//! stopped when dropped. Used by the integration tests and the rehearsal, never by `migrate`.

use std::{
    fs,
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

use crate::util::{self, free_port, log_tail, text_tail};

/// A running cluster. Superuser `postgres` with `password`, scram over TCP on 127.0.0.1.
pub struct PgCluster {
    pub dir: PathBuf,
    pub port: u16,
    pub superuser: String,
    pub password: String,
    /// Remove `dir` after stopping (off to keep it for inspection).
    pub remove_on_drop: bool,
    bindir: PathBuf,
    run_as_postgres: bool,
    /// Server options beyond the defaults (`-c name=value …`), kept for a restart.
    extra_options: String,
    _on_interrupt: Option<crate::util::InterruptGuard>,
}

fn find_bindir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("PG_BINDIR") {
        return Ok(PathBuf::from(dir));
    }
    let mut versions: Vec<PathBuf> = fs::read_dir("/usr/lib/postgresql")
        .map(|entries| {
            entries
                .filter_map(|it| it.ok())
                .map(|it| it.path().join("bin"))
                .collect()
        })
        .unwrap_or_default();
    versions.retain(|dir| dir.join("initdb").exists());
    versions.sort();
    versions.pop().context(
        "no PostgreSQL server binaries under /usr/lib/postgresql/*/bin: install postgresql (apt-get install postgresql) or set PG_BINDIR",
    )
}

impl PgCluster {
    /// initdb + start in `dir` (created; must be traversable by the `postgres` user when root).
    pub fn start(sh: &Shell, dir: &Path) -> Result<PgCluster> {
        PgCluster::start_with_options(sh, dir, "")
    }

    /// [`PgCluster::start`] with extra server options (`-c name=value …`) for `pg_ctl -o`.
    pub fn start_with_options(sh: &Shell, dir: &Path, extra_options: &str) -> Result<PgCluster> {
        let bindir = find_bindir()?;
        let run_as_postgres = fs::metadata("/proc/self")?.uid() == 0;
        private_folder(dir)?;
        let password = random_password()?;
        let pwfile = dir.join("pwfile");
        util::write_atomic(&pwfile, password.as_bytes(), 0o600)?;
        if run_as_postgres {
            let user = server_user("postgres")?;
            std::os::unix::fs::chown(dir, Some(user.0), Some(user.1))?;
            std::os::unix::fs::chown(&pwfile, Some(user.0), Some(user.1))?;
        }
        let data = dir.join("data");
        let initdb = bindir.join("initdb");
        let mut cluster = PgCluster {
            dir: dir.to_path_buf(),
            port: 0,
            superuser: "postgres".into(),
            password,
            remove_on_drop: true,
            bindir,
            run_as_postgres,
            extra_options: String::new(),
            _on_interrupt: None,
        };
        // The folder (and any log in it) is removed when `cluster` drops on an error, so errors
        // quote what the programs said instead of naming files.
        let initdb_out = cluster
            .as_server_user(sh, cmd!(sh, "{initdb} -D {data} -U postgres --auth-local=scram-sha-256 --auth-host=scram-sha-256 --pwfile={pwfile} -E UTF8 --no-sync"))
            .quiet()
            .ignore_status()
            .output()
            .context("cannot run initdb")?;
        if !initdb_out.status.success() {
            bail!(
                "initdb failed ({}):\n{}",
                initdb_out.status,
                text_tail(&String::from_utf8_lossy(&initdb_out.stderr), 20)
            );
        }
        fs::remove_file(&pwfile)?;
        cluster.port = free_port()?;
        cluster.extra_options = extra_options.to_string();
        cluster.pg_ctl_start(sh)?;
        Ok(cluster)
    }

    /// Starts the stopped server again, same port and options (a test stops it on purpose).
    pub fn start_again(&self) -> Result<()> {
        self.pg_ctl_start(&Shell::new()?)
    }

    fn pg_ctl_start(&self, sh: &Shell) -> Result<()> {
        let pg_ctl = self.bindir.join("pg_ctl");
        let data = self.dir.join("data");
        let opts = format!(
            "-c listen_addresses=127.0.0.1 -c port={} -c unix_socket_directories={} -c fsync=off -c full_page_writes=off -c synchronous_commit=off {}",
            self.port,
            self.dir.display(),
            self.extra_options
        );
        let log = self.log();
        let started = self
            .as_server_user(
                sh,
                cmd!(sh, "{pg_ctl} -D {data} -l {log} -o {opts} -w start"),
            )
            .quiet()
            .ignore_status()
            .output()
            .context("cannot run pg_ctl start")?;
        if !started.status.success() {
            bail!(
                "PostgreSQL did not start on port {} (pg_ctl start: {}):\n{}\nlast lines of its log:\n{}",
                self.port,
                started.status,
                text_tail(&String::from_utf8_lossy(&started.stderr), 10),
                log_tail(&log, 20)
            );
        }
        Ok(())
    }

    /// The server's log (inside `dir`: gone once the cluster is dropped).
    fn log(&self) -> PathBuf {
        self.dir.join("server.log")
    }

    fn as_server_user<'a>(&self, sh: &'a Shell, inner: xshell::Cmd<'a>) -> xshell::Cmd<'a> {
        if !self.run_as_postgres {
            return inner;
        }
        let std_cmd: std::process::Command = inner.into();
        let program = std_cmd.get_program().to_owned();
        let args: Vec<_> = std_cmd.get_args().map(|it| it.to_owned()).collect();
        cmd!(sh, "runuser -u postgres -- {program} {args...}")
    }

    /// Stops the cluster if the process is interrupted (SIGINT/SIGTERM) while it runs: the
    /// postmaster has a session of its own, so a Ctrl-C does not reach it.
    pub fn stop_on_interrupt(&mut self) {
        let (pg_ctl, data, as_postgres) = (
            self.bindir.join("pg_ctl"),
            self.dir.join("data"),
            self.run_as_postgres,
        );
        self._on_interrupt = Some(crate::util::on_interrupt(move || {
            let mut stop = if as_postgres {
                let mut c = std::process::Command::new("runuser");
                c.args(["-u", "postgres", "--"]).arg(&pg_ctl);
                c
            } else {
                std::process::Command::new(&pg_ctl)
            };
            let _ = stop
                .arg("-D")
                .arg(&data)
                .args(["-m", "immediate", "-w", "stop"])
                .stdout(std::process::Stdio::null())
                .status();
        }));
    }

    /// libpq variables for a client of this cluster (`PGPASSWORD` included: pass it as env).
    pub fn env(&self, user: &str, password: &str, dbname: &str) -> Vec<(&'static str, String)> {
        vec![
            ("PGHOST", "127.0.0.1".to_string()),
            ("PGPORT", self.port.to_string()),
            ("PGUSER", user.to_string()),
            ("PGPASSWORD", password.to_string()),
            ("PGDATABASE", dbname.to_string()),
        ]
    }

    /// A superuser connection over TCP with the password.
    /// If the server is gone, the error quotes the end of its log (the folder with the log is
    /// removed when the cluster is dropped).
    pub fn client(&self, dbname: &str) -> Result<postgres::Client> {
        postgres::Config::new()
            .host("127.0.0.1")
            .port(self.port)
            .user(&self.superuser)
            .password(&self.password)
            .dbname(dbname)
            .connect(postgres::NoTls)
            .with_context(|| {
                if self.is_running() {
                    format!(
                        "cannot connect to the throwaway cluster on port {}",
                        self.port
                    )
                } else {
                    format!(
                        "the throwaway cluster's server on port {} is not running; last lines of its log:\n{}\ncannot connect to it",
                        self.port,
                        log_tail(&self.log(), 20)
                    )
                }
            })
    }

    /// Whether the postmaster of this cluster is alive.
    pub fn is_running(&self) -> bool {
        self.postmaster_pid()
            .map(crate::util::process_alive)
            .unwrap_or(false)
    }

    fn postmaster_pid(&self) -> Option<u32> {
        let text = fs::read_to_string(self.dir.join("data/postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    pub fn stop(&self) -> Result<()> {
        // A server that died leaves its postmaster.pid behind: nothing to stop then.
        if !self.is_running() {
            return Ok(());
        }
        let sh = Shell::new()?;
        let pg_ctl = self.bindir.join("pg_ctl");
        let data = self.dir.join("data");
        self.as_server_user(&sh, cmd!(sh, "{pg_ctl} -D {data} -m fast -w stop"))
            .quiet()
            .ignore_stdout()
            .run()
            .context("pg_ctl stop failed")?;
        if self.is_running() {
            bail!("postmaster still running after pg_ctl stop");
        }
        Ok(())
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        match self.stop() {
            Ok(()) if self.remove_on_drop => {
                let _ = fs::remove_dir_all(&self.dir);
            }
            Ok(()) => {}
            Err(err) => eprintln!(
                "warning: could not stop the PostgreSQL cluster in {}: {err:#}",
                self.dir.display()
            ),
        }
    }
}

/// The cluster's folder (its data, log and Unix socket): made here with mode 0700, or an
/// existing empty folder of this user's (a fresh temp folder), made 0700. A folder someone else
/// made, a symlink or a folder with files in it is refused: the cluster would be theirs to read.
fn private_folder(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    match fs::symlink_metadata(dir) {
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => fs::DirBuilder::new()
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create the cluster folder {}", dir.display()))?,
        Err(err) => {
            return Err(err).with_context(|| format!("cannot inspect {}", dir.display()));
        }
        Ok(meta) => {
            let me = nix::unistd::geteuid().as_raw();
            if !meta.is_dir() || meta.uid() != me || fs::read_dir(dir)?.next().is_some() {
                bail!(
                    "{} is not an empty folder of this user's: the throwaway PostgreSQL makes its folder itself (remove it, or give a path that does not exist)",
                    dir.display()
                );
            }
        }
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot make {} private (mode 0700)", dir.display()))
}

/// The superuser's password: 24 random bytes from the OS, as hex. It goes to clients only by
/// environment (`PGPASSWORD`) or in memory, never on a command line.
fn random_password() -> Result<String> {
    let mut bytes = [0u8; 24];
    getrandom::fill(&mut bytes)
        .map_err(|err| anyhow::anyhow!("cannot get random bytes for a password: {err}"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// uid and gid of the system user the server runs as (the user database: /etc/passwd, NSS).
pub fn server_user(name: &str) -> Result<(u32, u32)> {
    let user = nix::unistd::User::from_name(name)
        .with_context(|| format!("cannot look up the system user `{name}`: check /etc/nsswitch.conf and /etc/passwd"))?
        .with_context(|| format!("no `{name}` user on this machine: PostgreSQL refuses to run as root; create the user (apt-get install postgresql does)"))?;
    Ok((user.uid.as_raw(), user.gid.as_raw()))
}

/// Test support: one cluster per test process while any test uses it, one database per test
/// (the unit tests and the integration tests in `xtask/tests/` share it).
pub mod testing {
    use std::sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex, Weak,
    };

    use super::PgCluster;

    static CLUSTER: Mutex<Weak<PgCluster>> = Mutex::new(Weak::new());
    static COUNTER: AtomicUsize = AtomicUsize::new(0);

    /// Slow tests (a real cluster) are skipped only when this is set, never silently.
    pub fn skip() -> bool {
        std::env::var_os("SENTRY_MIGRATE_SKIP_PG").is_some()
    }

    /// The running test cluster, started on first use and stopped when the last user drops it.
    pub fn cluster() -> Arc<PgCluster> {
        let mut slot = CLUSTER.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(cluster) = slot.upgrade() {
            return cluster;
        }
        // An unpredictable, private name; the cluster removes it when it stops.
        let dir = tempfile::Builder::new()
            .prefix("sentry-migrate-pg-")
            .tempdir()
            .expect("a temp folder for the test cluster")
            .keep();
        let sh = xshell::Shell::new().unwrap();
        let cluster =
            Arc::new(PgCluster::start(&sh, &dir).expect("start a throwaway PostgreSQL cluster"));
        *slot = Arc::downgrade(&cluster);
        cluster
    }

    /// A fresh, uniquely named database, dropped when this value is dropped.
    pub struct TestDb {
        pub cluster: Arc<PgCluster>,
        pub name: String,
    }

    impl TestDb {
        pub fn new(tag: &str) -> TestDb {
            let cluster = cluster();
            let name = format!(
                "t_{tag}_{}_{}",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::SeqCst)
            );
            let mut admin = cluster.admin_client("postgres");
            admin
                .batch_execute(&format!("CREATE DATABASE \"{name}\""))
                .expect("create test database");
            TestDb { cluster, name }
        }

        pub fn client(&self) -> postgres::Client {
            self.cluster.admin_client(&self.name)
        }
    }

    impl Drop for TestDb {
        fn drop(&mut self) {
            let mut admin = self.cluster.admin_client("postgres");
            let _ = admin.batch_execute(&format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                self.name
            ));
        }
    }

    #[test]
    fn a_failure_after_start_stops_the_cluster() {
        if skip() {
            return;
        }
        fn failing_step(dir: &std::path::Path, pid: &mut u32) -> anyhow::Result<()> {
            let sh = xshell::Shell::new()?;
            let cluster = PgCluster::start(&sh, dir)?;
            assert!(cluster.is_running());
            *pid = cluster.postmaster_pid().unwrap();
            anyhow::bail!("a later step failed")
        }
        // `start` opens the folder to the `postgres` user (tempdir makes it 0700).
        let scratch = tempfile::tempdir().unwrap();
        let dir = scratch.path();
        let mut pid = 0;
        assert!(failing_step(dir, &mut pid).is_err());
        assert!(pid > 0);
        assert!(
            !crate::util::process_alive(pid),
            "postmaster {pid} still running after a failure"
        );
        assert!(!dir.exists(), "the cluster folder is removed");
    }

    #[test]
    fn a_server_that_cannot_start_is_reported_with_its_log() {
        if skip() {
            return;
        }
        let scratch = tempfile::tempdir().unwrap();
        let sh = xshell::Shell::new().unwrap();
        let err = PgCluster::start_with_options(&sh, scratch.path(), "-c shared_buffers=bogus")
            .err()
            .expect("a bad server option must fail the start");
        let message = format!("{err:#}");
        assert!(
            message.contains("PostgreSQL did not start")
                && message.contains("| ")
                && message.contains("shared_buffers"),
            "the error quotes the server's log: {message}"
        );
        assert!(
            !scratch.path().exists(),
            "the folder (with the log) is removed, so the error must not just name it"
        );
    }

    #[test]
    fn a_server_that_died_is_reported_with_its_log() {
        if skip() {
            return;
        }
        let scratch = tempfile::tempdir().unwrap();
        let sh = xshell::Shell::new().unwrap();
        let cluster = PgCluster::start(&sh, scratch.path()).unwrap();
        let pid = cluster.postmaster_pid().unwrap();
        // SIGQUIT: the postmaster's immediate shutdown, as if someone pulled the plug.
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGQUIT,
        )
        .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while cluster.is_running() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        assert!(!cluster.is_running(), "postmaster {pid} ignored SIGQUIT");
        let message = format!("{:#}", cluster.client("postgres").err().unwrap());
        assert!(
            message.contains("is not running; last lines of its log")
                && message.contains("| ")
                && message.contains("immediate shutdown request"),
            "the error quotes the server's log: {message}"
        );
        drop(cluster);
        assert!(
            !scratch.path().exists(),
            "a dead cluster's folder is removed"
        );
    }

    impl PgCluster {
        /// A superuser connection over TCP with the password.
        pub fn admin_client(&self, dbname: &str) -> postgres::Client {
            self.client(dbname).expect("connect to the test cluster")
        }
    }
}
