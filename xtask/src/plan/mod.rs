//! The runbook as data: the types of a step (`Step`, `Action`, `Command`, `Limits`) and the
//! pure `plan(&Config)` that lists them in order; `steps` names every step (`StepId`), `render`
//! is what `--dry-run` prints. Nothing here does IO.

mod prepare;
mod render;
mod steps;

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Result};

use crate::{
    config::Config,
    flags::{DbKind, Engine},
    pg, sqlite,
};

pub use prepare::{PREPARED, PREPARED_SETTINGS_DIR};
pub use render::{describe, render, shell_quote};
pub use steps::StepId;

/// The three phases of the runbook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Buildout tag 1 (Sentry 4 + psycopg2), settings on SQLite.
    Sqlite,
    /// Buildout tag 1, settings on PostgreSQL.
    Postgres,
    /// Buildout tag 2 (Sentry 6), on PostgreSQL.
    Sentry6,
}

impl Phase {
    pub fn title(self) -> &'static str {
        match self {
            Phase::Sqlite => "tag 1 (Sentry 4), SQLite",
            Phase::Postgres => "tag 1 (Sentry 4), PostgreSQL",
            Phase::Sentry6 => "tag 2 (Sentry 6), PostgreSQL",
        }
    }
}

/// A program run by the executor: always from the project root, never through a shell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// Relative to the root (`bin/sentry`).
    pub program: PathBuf,
    pub args: Vec<String>,
    /// Where stdout goes (written to a temp file, renamed when the command succeeds); `None`:
    /// into the step's log with stderr.
    pub stdout_to: Option<PathBuf>,
}

/// What a step does. Each variant checks its own preconditions before it acts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Checks everything knowable before anything is touched.
    Preflight(Limits),
    /// Copies the SQLite db next to itself, checks the copy, records its hash.
    BackupSqlite,
    /// `bin/buildout` with a tag's config.
    Buildout(Command),
    /// Writes `settings/settings_local.py`.
    WriteSettings(DbKind),
    /// `bin/sentry` or the helper under `bin/py`.
    Run(Command),
    /// Scans every model table of the source for values PostgreSQL rejects; stops on them
    /// unless `fit` (`--fit-values`) is on.
    ScanValues { fit: bool },
    /// Copies the source to `working_copy`, fits the values there (one transaction), and points
    /// settings_local.py at it, so the dumps read the fitted copy; the source stays as it is.
    FitValues { working_copy: PathBuf },
    /// Parses both dumps and compares objects per model with the SQLite row counts.
    VerifyDumps,
    /// The copy engine's source: rows per model table of the db it reads, against SQLite's.
    CountSource,
    /// The copy engine: every model table streamed into the target with COPY, one transaction,
    /// the session's TimeZone set to Sentry 4's; in the same transaction `truncate_sql` first
    /// when the target holds this migration's own earlier load (`marker_sql` says so), and
    /// `reset_sequence_sql` per id sequence and `marker_sql` before the commit: safe to repeat.
    PgCopy {
        time_zone: Option<String>,
        /// (table, column) loaded as `integer` when every value is whole: Sentry 6's 0105 then
        /// rewrites no table (`copy::SENTRY6_INTEGER_COLUMNS`).
        integer_early: &'static [(&'static str, &'static str)],
        reset_sequence_sql: &'static str,
        truncate_sql: &'static str,
        marker_sql: &'static [&'static str],
    },
    /// Creates the target database (`create_sql`), or accepts an empty one.
    PgCreateDatabase { create_sql: String },
    /// `migrate --prepare`: `bin/buildout` with tag 1's config while Sentry 4 runs, refused
    /// unless bin/sentry already runs the Sentry version the config pins.
    BuildoutWhileRunning(Command),
    /// `migrate --prepare`: the target's privileges checked as preflight checks them, then
    /// [`Action::PgCreateDatabase`].
    PgCreateDatabaseChecked { create_sql: String },
    /// `migrate --prepare`: writes PostgreSQL settings into `settings_dir` (as
    /// `switch-settings postgres` would write them, settings_local.py left alone), then runs
    /// `command` with them while Sentry 4 runs.
    RunPrepared {
        command: Command,
        settings_dir: PathBuf,
    },
    /// Removes the demo project and every row `sentry upgrade` generated, so the load is exact:
    /// `truncate_sql` with `{tables}` = every table in schema public, in one transaction.
    PgClearGeneratedRows {
        demo_project: &'static str,
        truncate_sql: &'static str,
    },
    /// Makes `abstime` work again on PostgreSQL 12+ (Sentry computes scores with it).
    PgAbstimeShim { sql: &'static [&'static str] },
    /// Loads both dumps in one transaction with the side-effect handlers disconnected; the
    /// output is parsed, never trusted by exit code. Before it, in a transaction of its own,
    /// `truncate_sql` when the target holds this migration's own earlier load, and `marker_sql`;
    /// after it `reset_sequence_sql` per id sequence (idempotent): safe to repeat.
    PgLoad {
        command: Command,
        reset_sequence_sql: &'static str,
        truncate_sql: &'static str,
        marker_sql: &'static [&'static str],
    },
    /// Sentry 6's `upgrade --noinput`: every South migration in its order and process; with
    /// `set_based_0083`, through the helper, which runs 0083_migrate_dupe_groups set-based
    /// (`MERGE_DUPE_GROUPS_SQL`) in South's transaction of that migration.
    Sentry6Upgrade {
        command: Command,
        set_based_0083: bool,
    },
    /// Compares every table with SQLite, checks every id sequence.
    VerifyPostgres,
    /// Drops the load's marker (`drop_marker_sql`), then compares every table with the
    /// post-load counts, allowing Sentry 6's intended changes only.
    VerifySentry6 { drop_marker_sql: &'static str },
}

/// Sentry 6.4.4's migration 0083_migrate_dupe_groups as set-based SQL, run by the helper's
/// `upgrade` (the file beside it); the tests run it on real PostgreSQL.
pub const MERGE_DUPE_GROUPS_SQL: &str = "xtask/python/merge_dupe_groups.sql";

/// Memory Django 1.4's `dumpdata` takes per event (measured: it builds the whole JSON in
/// memory), bytes.
pub const LOADDATA_MEMORY_PER_EVENT: u64 = 68 * 1024;

/// The numbers preflight holds the source and the machine to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Free space needed in dumps/, as a multiple of the db's size.
    pub dump_space_factor: u64,
    /// The newest South migration of the `sentry` app a Sentry 4 db may have.
    pub last_sentry4_migration: u32,
    /// Memory Django's dumpdata needs per event (it holds every object; loaddata needs about a
    /// quarter of it), measured on real Sentry 4.10 data (benchmark.md): the loaddata engine
    /// only.
    pub memory_per_event: Option<u64>,
}

/// The limits for `config`: the working copy of `--fit-values` needs the db's size once more.
pub fn limits(config: &Config) -> Limits {
    let copy = config.engine == Engine::Copy;
    Limits {
        // Dumps take about 3x the db; the copy engine writes none; the working copy 1x.
        dump_space_factor: u64::from(!copy) * 3 + u64::from(config.fit_values),
        last_sentry4_migration: sqlite::SENTRY4_LAST_MIGRATION,
        memory_per_event: (!copy).then_some(LOADDATA_MEMORY_PER_EVENT),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub id: StepId,
    pub phase: Phase,
    /// One line for humans.
    pub summary: &'static str,
    pub action: Action,
}

const SETTINGS_ARG: &str = "--config=settings/settings.py";

fn sentry(args: &[&str], stdout_to: Option<PathBuf>) -> Command {
    let mut all = vec![SETTINGS_ARG.to_string()];
    all.extend(args.iter().map(|it| it.to_string()));
    Command {
        program: "bin/sentry".into(),
        args: all,
        stdout_to,
    }
}

fn helper(args: &[&str], stdout_to: Option<PathBuf>) -> Command {
    let mut all = vec![
        "xtask/python/sentry_helper.py".to_string(),
        SETTINGS_ARG.to_string(),
    ];
    all.extend(args.iter().map(|it| it.to_string()));
    Command {
        program: "bin/py".into(),
        args: all,
        stdout_to,
    }
}

fn buildout(config: &Config, cfg: &Path) -> Command {
    Command {
        program: "bin/buildout".into(),
        args: vec![
            "-c".into(),
            config.display_path(cfg),
            format!("buildout:directory={}", config.root.display()),
        ],
        stdout_to: None,
    }
}

/// The whole runbook for `config`, in order.
pub fn plan(config: &Config) -> Vec<Step> {
    use Action::*;
    use Phase::*;
    let rel = |path: PathBuf| PathBuf::from(config.display_path(&path));
    let step = |id, phase, summary, action| Step {
        id,
        phase,
        summary,
        action,
    };
    let mut steps = vec![
        step(
            StepId::Preflight,
            Sqlite,
            "check the repo, the SQLite db, disk space and PostgreSQL before touching anything",
            Preflight(limits(config)),
        ),
        step(
            StepId::BackupSqlite,
            Sqlite,
            "copy the SQLite db next to itself, check the copy, record its sha256",
            BackupSqlite,
        ),
        step(
            StepId::BuildoutTag1,
            Sqlite,
            "install tag 1: Sentry 4.10 and the psycopg2 egg",
            Buildout(buildout(config, &config.tag1_cfg)),
        ),
        step(
            StepId::SettingsSqlite,
            Sqlite,
            "point settings_local.py at the SQLite db",
            WriteSettings(DbKind::Sqlite),
        ),
        step(
            StepId::SqliteUpgrade,
            Sqlite,
            "bring the SQLite schema to Sentry 4.10's latest migration",
            Run(sentry(&["upgrade", "--noinput"], None)),
        ),
        step(
            StepId::SqliteRepair,
            Sqlite,
            "let Sentry repair what it knows to repair",
            Run(sentry(&["repair"], None)),
        ),
        step(
            StepId::InspectModels,
            Sqlite,
            "list every model's table (and m2m tables) as Sentry 4 sees them",
            Run(helper(&["models"], Some(rel(config.models_json())))),
        ),
        step(
            StepId::ScanValues,
            Sqlite,
            "find values PostgreSQL rejects (too long, NUL, invalid UTF-8, integers, dates) before anything is dumped",
            ScanValues {
                fit: config.fit_values,
            },
        ),
        step(
            StepId::DumpAuth,
            Sqlite,
            "dump the auth app first (users, groups, permissions)",
            Run(sentry(&["dumpdata", "auth"], Some(rel(config.dump_auth())))),
        ),
        step(
            StepId::DumpRest,
            Sqlite,
            "dump everything else",
            Run(sentry(
                &["dumpdata", "--exclude", "auth"],
                Some(rel(config.dump_rest())),
            )),
        ),
        step(
            StepId::VerifyDumps,
            Sqlite,
            "parse both dumps; objects per model must equal SQLite's rows per table",
            VerifyDumps,
        ),
        step(
            StepId::PgCreateDatabase,
            Postgres,
            "create the target database, or accept an empty one",
            PgCreateDatabase {
                create_sql: pg::create_database_sql(
                    &config.pg.database().expect("PgTarget::from_env_or_url checked the name"),
                ),
            },
        ),
        step(
            StepId::SettingsPostgres,
            Postgres,
            "point settings_local.py at PostgreSQL (mode 0600)",
            WriteSettings(DbKind::Postgres),
        ),
        step(
            StepId::PgUpgrade,
            Postgres,
            "build Sentry 4.10's schema on PostgreSQL, no superuser prompt",
            Run(sentry(&["upgrade", "--noinput"], None)),
        ),
        step(
            StepId::PgClearGeneratedRows,
            Postgres,
            "remove the demo project and every row upgrade generated, in one transaction",
            PgClearGeneratedRows {
                demo_project: pg::DEMO_PROJECT_NAME,
                truncate_sql: pg::TRUNCATE_SQL,
            },
        ),
        step(
            StepId::PgAbstimeShim,
            Postgres,
            "install the abstime compatibility shim (PostgreSQL 12+ removed abstime)",
            PgAbstimeShim {
                sql: pg::ABSTIME_SHIM_SQL,
            },
        ),
        step(
            StepId::PgLoad,
            Postgres,
            "load auth then the rest in one transaction, side-effect handlers disconnected",
            PgLoad {
                command: helper(
                    &[
                        "load",
                        &config.display_path(&config.dump_auth()),
                        &config.display_path(&config.dump_rest()),
                    ],
                    None,
                ),
                reset_sequence_sql: pg::RESET_SEQUENCE_SQL,
                truncate_sql: pg::TRUNCATE_SQL,
                marker_sql: pg::LOAD_MARKER_SQL,
            },
        ),
        step(
            StepId::VerifyPostgres,
            Postgres,
            "every table's rows equal SQLite's; every id sequence past max(id)",
            VerifyPostgres,
        ),
        step(
            StepId::BuildoutTag2,
            Sentry6,
            "install tag 2: Sentry 6.4",
            Buildout(buildout(config, &config.tag2_cfg)),
        ),
        step(
            StepId::Sentry6Upgrade,
            Sentry6,
            "apply Sentry 6's migrations",
            Sentry6Upgrade {
                command: if config.sentry_own_upgrade {
                    sentry(&["upgrade", "--noinput"], None)
                } else {
                    helper(&["upgrade"], None)
                },
                set_based_0083: !config.sentry_own_upgrade,
            },
        ),
        step(
            StepId::VerifySentry6,
            Sentry6,
            "compare with the loaded counts: only Sentry 6's intended changes",
            VerifySentry6 {
                drop_marker_sql: pg::DROP_LOAD_MARKER_SQL,
            },
        ),
    ];
    if config.engine == Engine::Copy {
        steps.retain(|step| !matches!(step.id, StepId::DumpAuth | StepId::DumpRest));
        for step in &mut steps {
            match step.id {
                StepId::VerifyDumps => {
                    *step = Step {
                        id: StepId::CountSource,
                        phase: Sqlite,
                        summary: "count the rows the copy will read; they must equal SQLite's (less what --fit-values merged)",
                        action: CountSource,
                    }
                }
                StepId::PgLoad => {
                    *step = Step {
                        id: StepId::PgCopy,
                        phase: Postgres,
                        summary: "stream every table into PostgreSQL with COPY over two sessions (indexes and foreign keys dropped, then re-created and checked)",
                        action: PgCopy {
                            time_zone: config.time_zone.zone().map(str::to_string),
                            integer_early: crate::copy::SENTRY6_INTEGER_COLUMNS,
                            reset_sequence_sql: pg::RESET_SEQUENCE_SQL,
                            truncate_sql: pg::TRUNCATE_SQL,
                            marker_sql: pg::LOAD_MARKER_SQL,
                        },
                    }
                }
                _ => {}
            }
        }
    }
    if config.prepare {
        return prepare::prepared(steps, config);
    }
    if config.fit_values {
        let at = steps
            .iter()
            .position(|step| step.id == StepId::ScanValues)
            .map_or(steps.len(), |it| it + 1);
        steps.insert(
            at,
            step(
                StepId::FitValues,
                Sqlite,
                "fit those values in a working copy that the dumps read; the source stays as it is",
                FitValues {
                    working_copy: rel(config.fitted_db()),
                },
            ),
        );
    }
    steps
}

/// The index of the step called `name`, or an error listing the valid names.
pub fn find(steps: &[Step], name: &str) -> Result<usize> {
    let id: StepId = name.parse()?;
    steps
        .iter()
        .position(|step| step.id == id)
        .ok_or_else(|| anyhow!("step `{name}` is not part of this plan"))
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeSet, path::Path};

    use super::{find, plan, Action, Config, Engine, StepId};

    /// The config every plan test starts from: a password in the environment, never printed.
    pub(super) fn config(sqlite: Option<&str>, url: Option<&str>) -> Config {
        let env = |key: &str| match key {
            "PGHOST" => Some("db.internal".to_string()),
            "PGUSER" => Some("sentry".to_string()),
            "PGPASSWORD" => Some("s3cret".to_string()),
            _ => None,
        };
        Config::new(
            Path::new("/srv/central_sentry"),
            sqlite.map(Path::new),
            url,
            env,
        )
        .unwrap()
    }

    #[test]
    fn every_step_is_in_a_plan_once_in_order() {
        let config = config(
            Some("data/central sentry.db"),
            Some("postgres://migrator@127.0.0.1:5433/sentry6"),
        );
        let mut fitting = config.clone();
        fitting.fit_values = true;
        fitting.engine = Engine::Loaddata;
        let mut copying = fitting.clone();
        copying.engine = Engine::Copy;
        let loaddata: Vec<StepId> = plan(&fitting).iter().map(|s| s.id).collect();
        let copy: Vec<StepId> = plan(&copying).iter().map(|s| s.id).collect();
        for ids in [&loaddata, &copy] {
            let in_order: Vec<StepId> = StepId::ALL
                .iter()
                .copied()
                .filter(|id| ids.contains(id))
                .collect();
            assert_eq!(*ids, in_order, "each step once, in the order declared");
        }
        let all: Vec<StepId> = StepId::ALL
            .iter()
            .copied()
            .filter(|id| loaddata.contains(id) || copy.contains(id))
            .collect();
        assert_eq!(all, StepId::ALL, "every step name is in a plan");
        assert!(copy.contains(&StepId::PgCopy) && !copy.contains(&StepId::DumpAuth));
        let mut loaddata_config = config.clone();
        loaddata_config.engine = Engine::Loaddata;
        let ids: Vec<StepId> = plan(&loaddata_config).iter().map(|s| s.id).collect();
        assert_eq!(
            ids,
            StepId::ALL
                .iter()
                .copied()
                .filter(|id| !matches!(
                    id,
                    StepId::FitValues | StepId::CountSource | StepId::PgCopy
                ))
                .collect::<Vec<_>>()
        );
        let names: Vec<&str> = all.iter().map(|id| id.name()).collect();
        assert_eq!(
            names.iter().collect::<BTreeSet<_>>().len(),
            names.len(),
            "step names are unique"
        );
        assert!(
            names.iter().all(|n| n
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')),
            "kebab-case"
        );
    }

    #[test]
    fn a_root_with_spaces_stays_one_argument() {
        let env = |_: &str| None;
        let config = Config::new(Path::new("/srv/my sentry"), None, None, env).unwrap();
        let steps = plan(&config);
        let Action::Buildout(cmd) = &steps[find(&steps, "buildout-tag1").unwrap()].action else {
            panic!()
        };
        assert_eq!(
            cmd.args.last().unwrap(),
            "buildout:directory=/srv/my sentry"
        );
        assert_eq!(
            cmd.render(),
            "bin/buildout -c buildout/tag1-sentry4.cfg 'buildout:directory=/srv/my sentry'",
            "and quoted as one word where it is shown"
        );
        let err = find(&steps, "dump-everything").unwrap_err().to_string();
        assert!(
            err.starts_with(
                "unknown step `dump-everything`: expected one of preflight, backup-sqlite,"
            ),
            "{err}"
        );
    }
}
