//! `migrate --prepare`: the steps of the plan that need no downtime, made safe to run while
//! Sentry 4 serves: tag 1's buildout only over the same Sentry, the target checked as preflight
//! checks it, Sentry 4's `upgrade` with settings of their own in `dumps/prepare/`.

use std::path::PathBuf;

use super::{Action, Command, Step, StepId};
use crate::config::Config;

/// The steps `--prepare` runs, in the plan's order; the cut-over skips them (the journal).
pub const PREPARED: &[StepId] = &[
    StepId::BuildoutTag1,
    StepId::PgCreateDatabase,
    StepId::PgUpgrade,
    StepId::PgClearGeneratedRows,
    StepId::PgAbstimeShim,
];

/// Where `--prepare` writes the settings its `pg-upgrade` runs with (under `dumps/`).
pub const PREPARED_SETTINGS_DIR: &str = "dumps/prepare";

/// `steps` (the whole plan) cut to [`PREPARED`], each made to run beside a running Sentry 4.
pub(super) fn prepared(steps: Vec<Step>, config: &Config) -> Vec<Step> {
    let settings_dir = PathBuf::from(config.display_path(&config.root.join(PREPARED_SETTINGS_DIR)));
    steps
        .into_iter()
        .filter(|step| PREPARED.contains(&step.id))
        .map(|mut step| {
            step.action = match step.action {
                Action::Buildout(command) => Action::BuildoutWhileRunning(command),
                Action::PgCreateDatabase { create_sql } => {
                    Action::PgCreateDatabaseChecked { create_sql }
                }
                Action::Run(command) => Action::RunPrepared {
                    command: Command {
                        args: command
                            .args
                            .iter()
                            .map(|arg| {
                                if arg == super::SETTINGS_ARG {
                                    format!(
                                        "--config={}",
                                        settings_dir.join("settings.py").display()
                                    )
                                } else {
                                    arg.clone()
                                }
                            })
                            .collect(),
                        ..command
                    },
                    settings_dir: settings_dir.clone(),
                },
                other => other,
            };
            step
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::{plan, tests::config, Action, StepId};

    #[test]
    fn prepare_runs_only_what_needs_no_downtime_beside_sentry_4() {
        let mut config = config(None, None);
        config.prepare = true;
        let steps = plan(&config);
        let ids: Vec<StepId> = steps.iter().map(|it| it.id).collect();
        assert_eq!(ids, super::PREPARED);
        assert!(matches!(steps[0].action, Action::BuildoutWhileRunning(_)));
        assert!(matches!(
            steps[1].action,
            Action::PgCreateDatabaseChecked { .. }
        ));
        let Action::RunPrepared {
            command,
            settings_dir,
        } = &steps[2].action
        else {
            panic!("{:?}", steps[2].action)
        };
        assert_eq!(settings_dir.to_str(), Some("dumps/prepare"));
        assert_eq!(
            command.render(),
            "bin/sentry --config=dumps/prepare/settings.py upgrade --noinput"
        );
    }
}
