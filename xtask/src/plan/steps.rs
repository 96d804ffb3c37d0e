//! Every step's name, defined once (`StepId`): its kebab-case name, parsing it back, the order.

use std::{fmt, str::FromStr};

use anyhow::{anyhow, Error, Result};

/// Every step's name, defined once: the plan, the journal, `--from`/`--until` and every hint
/// that tells a user which step to redo use these, so a renamed step cannot leave a hint behind.
macro_rules! step_ids {
    ($($variant:ident = $name:literal,)*) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum StepId { $($variant,)* }

        impl StepId {
            /// Every step, in plan order.
            pub const ALL: &'static [StepId] = &[$(StepId::$variant,)*];

            /// The stable kebab-case name (journal, `--from`, docs, tests).
            pub fn name(self) -> &'static str {
                match self { $(StepId::$variant => $name,)* }
            }
        }
    };
}

step_ids! {
    Preflight = "preflight",
    BackupSqlite = "backup-sqlite",
    BuildoutTag1 = "buildout-tag1",
    SettingsSqlite = "settings-sqlite",
    SqliteUpgrade = "sqlite-upgrade",
    SqliteRepair = "sqlite-repair",
    InspectModels = "inspect-models",
    ScanValues = "scan-values",
    FitValues = "fit-values",
    CountSource = "count-source",
    DumpAuth = "dump-auth",
    DumpRest = "dump-rest",
    VerifyDumps = "verify-dumps",
    PgCreateDatabase = "pg-create-database",
    SettingsPostgres = "settings-postgres",
    PgUpgrade = "pg-upgrade",
    PgClearGeneratedRows = "pg-clear-generated-rows",
    PgAbstimeShim = "pg-abstime-shim",
    PgLoad = "pg-load",
    PgCopy = "pg-copy",
    VerifyPostgres = "verify-postgres",
    BuildoutTag2 = "buildout-tag2",
    Sentry6Upgrade = "sentry6-upgrade",
    VerifySentry6 = "verify-sentry6",
}

impl fmt::Display for StepId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for StepId {
    type Err = Error;
    fn from_str(name: &str) -> Result<StepId> {
        StepId::ALL
            .iter()
            .copied()
            .find(|id| id.name() == name)
            .ok_or_else(|| {
                let names: Vec<_> = StepId::ALL.iter().map(|it| it.name()).collect();
                anyhow!(
                    "unknown step `{name}`: expected one of {}",
                    names.join(", ")
                )
            })
    }
}
