//! The command line, declared in one place; doc comments become the help text.

use std::{path::PathBuf, str::FromStr};

xflags::xflags! {
    /// sentry-migrate: move a Sentry 4 install from SQLite to PostgreSQL, then upgrade it to Sentry 6.
    ///
    /// Tasks: `migrate` (the whole runbook), `rollback` (back to Sentry 4 on SQLite),
    /// `hold-events` and `replay-events` (no event lost while Sentry is down),
    /// `switch-settings` (point settings_local.py at a db), `rehearse` (the whole migration on
    /// the real stack, on throwaway data), `bench` (the engines against pgloader and a COPY
    /// floor on scaled real data).
    /// PostgreSQL connection as libpq takes it: PGHOST (a host or a socket folder; unset: the
    /// socket in /var/run/postgresql), PGHOSTADDR, PGPORT, PGUSER, PGDATABASE, PGSSLMODE,
    /// PGSSLROOTCERT, or --database-url without a password; the password from ~/.pgpass (or
    /// PGPASSFILE; recommended) or PGPASSWORD, never from the command line. PGSERVICE,
    /// PGSSLCERT and PGSSLKEY are refused (not supported).
    cmd xtask {
        /// Run the runbook: back up and dump the SQLite db with Sentry 4, load it into PostgreSQL,
        /// upgrade to Sentry 6, verifying row counts after each phase. Resumes after the last
        /// finished step recorded in dumps/journal.json.
        cmd migrate {
            /// Print every step, command and SQL statement, and touch nothing.
            optional --dry-run
            /// Redo from this step (names: see --dry-run) even if the journal says it is done.
            optional --from step: String
            /// Stop after this step.
            optional --until step: String
            /// The Sentry 4 SQLite database (default: var/sentry.db).
            optional --sqlite path: PathBuf
            /// Target as postgres://USER@HOST:PORT/DBNAME (no password here: use ~/.pgpass or PGPASSWORD).
            optional --database-url url: String
            /// Buildout config of tag 1, Sentry 4 + psycopg2 (default: buildout/tag1-sentry4.cfg).
            optional --tag1 path: PathBuf
            /// Buildout config of tag 2, Sentry 6 (default: buildout/tag2-sentry6.cfg).
            optional --tag2 path: PathBuf
            /// Fit values PostgreSQL rejects (over-long text, NUL characters, invalid UTF-8) in a
            /// working copy of the db, dumps/sentry-fitted.db, which the dumps then read; every
            /// changed row is listed in the report. Without it, `scan-values` stops on them.
            optional --fit-values
            /// How the rows go into PostgreSQL: `copy` (the default: SQLite streamed straight
            /// into PostgreSQL with COPY, flat memory, minutes for a million events) or
            /// `loaddata` (the runbook's own dumpdata/loaddata). A plain re-run resumes with
            /// the engine the journal records.
            optional --engine engine: Engine
            /// Run Sentry 6's upgrade exactly as Sentry ships it, `bin/sentry upgrade
            /// --noinput`: its migration 0083 then walks every group in Python (about 20 minutes
            /// at a million events). Without it the same migrations run in the same order, 0083
            /// set-based (proven equal to Sentry's own by the rehearsal).
            optional --sentry-own-upgrade
            /// Before the cut-over, while Sentry 4 still serves: run only what needs no downtime,
            /// buildout-tag1 (when bin/sentry already runs the Sentry 4.x tag 1 pins: it then adds
            /// psycopg2 and nothing else), pg-create-database, pg-upgrade (with settings for
            /// PostgreSQL written to dumps/prepare/; settings/settings_local.py is left alone),
            /// pg-clear-generated-rows and pg-abstime-shim. The cut-over is then `migrate` with
            /// Sentry 4 stopped: it skips them, and its downtime no longer counts them.
            optional --prepare
        }
        /// Back to the state before `migrate`: settings_local.py to SQLite, buildout tag 1, and
        /// with --restore-backup the db from the backup the journal verified. Refused while
        /// Sentry runs, and when Sentry 6 stored events after the migration (they would be left
        /// behind in PostgreSQL) unless --force.
        cmd rollback {
            /// Print what it would do, and touch nothing.
            optional --dry-run
            /// Also put back the SQLite db from its backup (dumps/journal.json names it): its
            /// sha256 is checked against the journal first; the current db is kept as
            /// <db>.before-rollback-<UTC time>, never deleted.
            optional --restore-backup
            /// Roll back even if Sentry 6 stored events after the migration (they stay in
            /// PostgreSQL only), or when they cannot be counted.
            optional --force
            /// The Sentry 4 SQLite database, as given to `migrate` (default: var/sentry.db).
            optional --sqlite path: PathBuf
            /// The target, as given to `migrate` (postgres://USER@HOST:PORT/DBNAME, no password).
            optional --database-url url: String
            /// Buildout config of tag 1 (default: buildout/tag1-sentry4.cfg).
            optional --tag1 path: PathBuf
        }
        /// The whole migration on the real stack: provisions Python 2.7, buildout, Sentry 4.10
        /// and 6.4 (cached) and a throwaway PostgreSQL on loopback, fills a Sentry 4 SQLite db with
        /// real events over HTTP, runs `migrate` on it, and proves Sentry 6 works on the result.
        cmd rehearse {
            /// Events to send to Sentry 4 (default 200).
            optional --events n: u64
            /// Rehearse a long-lived install: data made under Sentry 4.0.0 (buildout/
            /// tag0-sentry4.0.cfg), the same SQLite file upgraded in place to 4.10, more data.
            optional --long-lived
            /// Rehearse the cut-over with clients sending events throughout (raven 2.0.5, raven
            /// for Node, raven 4.0.4): `hold-events` holds them while Sentry is down,
            /// `replay-events` sends them to Sentry 6, and every event answered 200 must be in
            /// Sentry 6 exactly once.
            optional --hold-events
            /// With --hold-events: hand Sentry's address over as a service manager can (systemd's
            /// socket activation): the rehearsal owns the listening socket and passes it to
            /// hold-events and then to Sentry 6 (LISTEN_FDS), so it never closes.
            optional --shared-socket
            /// Keep the scratch folder (repo copy, databases, logs) for inspection.
            optional --keep
            /// Cache for Python 2.7, virtualenvs and eggs (default: ~/.cache/sentry-migrate).
            optional --cache dir: PathBuf
            /// After a plain rehearsal, copy the Sentry 4 db it made (the pre-migration backup) to
            /// this path, for a later `rehearse --db` (CI does).
            optional --keep-db path: PathBuf
            /// Dress rehearsal on YOUR db: copies it with SQLite's online backup (Sentry 4 may keep
            /// running; the file is only read), migrates the copy into a throwaway PostgreSQL
            /// exactly as `migrate` will, proves Sentry 6 on it, and writes a forecast for the real
            /// run (times, disk, memory, value scan, go/no-go) to dumps/rehearsal-forecast.md.
            optional --db path: PathBuf
            /// With --db: your Sentry 4 settings (TIME_ZONE, SECRET_KEY...), copied into the scratch
            /// repo (default: settings/sentry_conf.py, as `migrate` reads them).
            optional --sentry-conf path: PathBuf
            /// With --db: passed on to `migrate` (fit values PostgreSQL rejects in a working copy).
            optional --fit-values
            /// With --db: passed on to `migrate` (your tag 1 buildout config, relative to the repo).
            optional --tag1 path: PathBuf
            /// With --db: passed on to `migrate` (your tag 2 buildout config, relative to the repo).
            optional --tag2 path: PathBuf
            /// With --db: passed on to `migrate` as `--engine VALUE` (only if your `migrate` has it).
            optional --engine value: String
            /// With --db: log in to Sentry 6 as this migrated user, the password taken from
            /// SENTRY_REHEARSE_PASSWORD (default: a temporary superuser made in the throwaway target).
            optional --login user: String
        }
        /// A benchmark, not a test: seeds a real Sentry 4.10 db as the rehearsal does, scales it
        /// to each size (xtask/python/bench/scale_sqlite.py), and loads each size with every
        /// method into a throwaway PostgreSQL, one after the other: the copy engine, dumpdata +
        /// loaddata (as far as it can go), pgloader's data-only mode and the floor (sqlite3 CSV
        /// export + psql COPY). Wall time, rows/s and peak RSS per method and size, rows checked
        /// against SQLite, written to dumps/bench/bench.{json,md,svg}. Needs pgloader and sqlite3.
        cmd bench {
            /// Sizes in events, comma-separated (default: 10k,100k,1M).
            optional --sizes sizes: String
            /// Methods, comma-separated (default: copy,loaddata,pgloader,floor; also copy1, the
            /// copy engine in one session, floor2 and pgloader-drop).
            optional --methods methods: String
            /// Cache for Python 2.7, virtualenvs and eggs (default: ~/.cache/sentry-migrate).
            optional --cache dir: PathBuf
            /// Keep the scratch folder (scaled dbs, logs) for inspection.
            optional --keep
            /// Where the results go (default: dumps/bench).
            optional --out dir: PathBuf
            /// After the methods, run the whole `cargo xtask migrate` (default engine, every step
            /// through Sentry 6's upgrade) on these sizes (comma-separated, from --sizes; default
            /// none) and report its total and each step's time.
            optional --whole-run sizes: String
            /// Measure nothing: redraw bench.md and bench.svg from an earlier run's bench.json
            /// (into --out).
            /// Scale this Sentry 4 SQLite db instead of the one the rehearsal seeds (its dates in
            /// the rehearsal's zone, America/Chicago): e.g. a long-lived rehearsal's `--keep-db`,
            /// whose duplicate groups Sentry 6's migration 0083 merges. Only read (copied).
            optional --seed-db path: PathBuf
            optional --redraw json: PathBuf
        }
        /// While Sentry is down for the cut-over: hold the events clients send. Listens where
        /// Sentry listens (SENTRY_WEB_HOST:SENTRY_WEB_PORT of the install's settings, read with
        /// bin/py), waiting for Sentry 4 to let go of the address; serves only the store endpoints
        /// (/api/store/, /api/<project>/store/); checks each request as Sentry 6 does (DSN keys
        /// from the source db's sentry_projectkey: a bad key gets 403), writes it to
        /// dumps/held-events.jsonl (0600) and syncs it to disk before answering 200 with the event
        /// id. Runs until SIGTERM or Ctrl-C; `--release` stops it. Then `replay-events`.
        cmd hold-events {
            /// Stop the running hold-events (right after starting Sentry 6, whose gunicorn retries
            /// its bind every second) and measure how long the address stayed free.
            optional --release
            /// Listen here instead of Sentry's address, e.g. behind a reverse proxy that sends the
            /// store endpoints here during the cut-over.
            optional --listen address: String
            /// The largest request body held, e.g. 10M (default); larger ones get 413.
            optional --max-body size: ByteSize
            /// The spool's largest size, e.g. 1G (default); past it requests get 503.
            optional --max-spool size: ByteSize
            /// Seconds to wait for the address to be free (default 600), or with --release for
            /// Sentry 6 to take it (default 30).
            optional --wait seconds: u64
            /// The Sentry 4 SQLite database whose DSN keys are accepted (default: var/sentry.db).
            optional --sqlite path: PathBuf
        }
        /// Send the events hold-events held to Sentry 6, in arrival order, each at most once
        /// (dumps/replay-journal.jsonl: a killed replay resumes), waiting while Sentry 6 does not
        /// answer; then looks every one up in Sentry 6's database (the `migrate` target, from the
        /// same PG* variables): "N held, N replayed, 0 lost".
        cmd replay-events {
            /// Sentry 6's address (default: SENTRY_WEB_HOST:SENTRY_WEB_PORT of the settings).
            optional --to address: String
            /// Seconds to wait for Sentry 6 to answer before stopping (default 600).
            optional --wait seconds: u64
            /// The target, as given to `migrate` (postgres://USER@HOST:PORT/DBNAME, no password).
            optional --database-url url: String
        }
        /// Write settings/settings_local.py for SQLite or PostgreSQL (mode 0600, atomically).
        /// The first file replaced is kept as settings_local.py.orig, the last as .bak, every
        /// other as .bak-<UTC time>; a SECRET_KEY it cannot read is refused, never replaced.
        cmd switch-settings {
            /// `sqlite` or `postgres`.
            required db: DbKind
            /// The SQLite database, for `sqlite` (default: var/sentry.db).
            optional --sqlite path: PathBuf
            /// Target as postgres://USER@HOST:PORT/DBNAME or `host=… dbname=…` (a socket folder
            /// as host works); no password here: use ~/.pgpass or PGPASSWORD.
            optional --database-url url: String
        }
    }
}

/// How `migrate` moves the rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Engine {
    /// Django's `dumpdata` then `loaddata`, as the runbook does.
    Loaddata,
    /// SQLite rows streamed into PostgreSQL with COPY (the default).
    #[default]
    Copy,
}

impl Engine {
    pub fn name(self) -> &'static str {
        match self {
            Engine::Loaddata => "loaddata",
            Engine::Copy => "copy",
        }
    }
}

impl std::fmt::Display for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Engine {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "loaddata" => Ok(Engine::Loaddata),
            "copy" => Ok(Engine::Copy),
            _ => Err(format!(
                "unknown engine `{s}`: expected `copy` or `loaddata`"
            )),
        }
    }
}

/// A size in bytes: `1048576`, `512K`, `10M`, `1G` (binary multiples).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (digits, shift) = match s.trim_end_matches(['B', 'b', 'i']).char_indices().last() {
            Some((i, 'K' | 'k')) => (&s[..i], 10),
            Some((i, 'M' | 'm')) => (&s[..i], 20),
            Some((i, 'G' | 'g')) => (&s[..i], 30),
            _ => (s, 0),
        };
        digits
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(1 << shift))
            .filter(|n| *n > 0)
            .map(ByteSize)
            .ok_or_else(|| format!("`{s}` is not a size: expected e.g. 1048576, 512K, 10M or 1G"))
    }
}

/// Which database `settings_local.py` points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbKind {
    Sqlite,
    Postgres,
}

impl std::fmt::Display for DbKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DbKind::Sqlite => "SQLite",
            DbKind::Postgres => "PostgreSQL",
        })
    }
}

impl FromStr for DbKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "sqlite" => Ok(DbKind::Sqlite),
            "postgres" | "postgresql" => Ok(DbKind::Postgres),
            _ => Err(format!(
                "unknown database `{s}`: expected `sqlite` or `postgres`"
            )),
        }
    }
}

/// The part of xflags' help text `args` asked for: `migrate --help` gets the `xtask migrate`
/// section alone (xflags prints every task's), anything else the whole text.
pub fn help_for(help: &str, args: &[std::ffi::OsString]) -> String {
    let task = args
        .first()
        .and_then(|it| it.to_str())
        .filter(|it| !it.starts_with('-'));
    let Some(task) = task else {
        return help.to_string();
    };
    let header = format!("\nxtask {task}\n");
    let Some(start) = help.find(&header) else {
        return help.to_string();
    };
    let section = &help[start + 1..];
    let end = section
        .find("\n\nxtask ")
        .map_or(section.len(), |end| end + 1);
    format!(
        "{}\nThe PostgreSQL connection and the other tasks: `cargo xtask --help`.\n",
        section[..end].trim_end()
    )
}

/// What `--version` prints.
pub fn version() -> String {
    format!("sentry-migrate {}", env!("CARGO_PKG_VERSION"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn help(args: &[&str]) -> String {
        let args: Vec<std::ffi::OsString> = args.iter().map(|it| it.into()).collect();
        let err = Xtask::from_vec(args.clone()).unwrap_err();
        assert!(err.is_help());
        help_for(&err.to_string(), &args)
    }

    #[test]
    fn a_task_s_help_is_that_task_s_alone() {
        let migrate = help(&["migrate", "--help"]);
        assert!(migrate.starts_with("xtask migrate\n"), "{migrate}");
        assert!(migrate.contains("--dry-run") && migrate.contains("--engine"));
        assert!(!migrate.contains("xtask rollback"), "{migrate}");
        assert!(migrate.ends_with("`cargo xtask --help`.\n"));
        let last = help(&["switch-settings", "--help"]);
        assert!(last.starts_with("xtask switch-settings\n") && last.contains("--sqlite"));
        assert!(!last.contains("xtask bench"));
        let all = help(&["--help"]);
        assert!(all.contains("xtask migrate") && all.contains("xtask rollback"));
        assert!(all.contains("PGHOST"));
    }
}
