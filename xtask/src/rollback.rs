//! `cargo xtask rollback`: back to the state before `migrate` (settings to SQLite, buildout tag 1,
//! on request the db from its verified backup), refusing to leave Sentry 6's new events behind.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{bail, ensure, Context, Result};
use xshell::{cmd, Shell};

use crate::{
    config::Config,
    execute::Lock,
    flags::{self, DbKind},
    journal::Journal,
    pg,
    plan::StepId,
    sentry, settings, util,
};

impl flags::Rollback {
    pub fn run(self, sh: &Shell) -> Result<()> {
        let config = Config::for_flags(
            &sh.current_dir(),
            self.sqlite.as_deref(),
            self.database_url.as_deref(),
            self.tag1.as_deref(),
            None,
        )?;
        rollback(
            sh,
            &config,
            &Options {
                dry_run: self.dry_run,
                restore_backup: self.restore_backup,
                force: self.force,
            },
        )
    }
}

pub struct Options {
    pub dry_run: bool,
    pub restore_backup: bool,
    pub force: bool,
}

/// The db restore: the verified backup and where the current db goes.
struct Restore {
    backup: PathBuf,
    aside: PathBuf,
}

pub fn rollback(sh: &Shell, config: &Config, options: &Options) -> Result<()> {
    let journal_path = config.dumps_dir().join("journal.json");
    let Some(journal) = Journal::load(&journal_path)? else {
        bail!(
            "{} does not exist: no migration to roll back (the README's `Rollback` lists the manual steps)",
            config.display_path(&journal_path)
        );
    };
    journal.check_same_migration(
        &config.sqlite_path.display().to_string(),
        &config.pg.to_string(),
        &journal_path,
    )?;
    // Taken for the whole rollback: never while a `migrate` runs (a dry run only reads).
    let _lock = if options.dry_run {
        None
    } else {
        Some(Lock::acquire(&config.dumps_dir().join("migrate.lock"))?)
    };

    // Every check first: nothing is written until all of them pass.
    let db = &config.sqlite_path;
    let buildout = config.bin("buildout");
    ensure!(
        buildout.exists(),
        "bin/buildout is missing: bootstrap buildout in this repo first (README, `Setup`)"
    );
    ensure!(
        config.tag1_cfg.exists(),
        "{} is missing: the tag 1 buildout config (--tag1)",
        config.display_path(&config.tag1_cfg)
    );
    if let Some((pid, cmdline)) = sentry::running_sentry(&config.root, db).first() {
        bail!("Sentry is running (pid {pid}: {cmdline}): stop it first, then roll back");
    }
    check_new_events(config, &journal, options.force)?;
    let restore = if options.restore_backup {
        Some(check_backup(config, &journal)?)
    } else {
        None
    };

    let tag1 = config.display_path(&config.tag1_cfg);
    let root = config.root.display().to_string();
    let mut plan = Vec::new();
    if let Some(restore) = &restore {
        plan.push(format!(
            "move {} to {} (kept, never deleted)",
            config.display_path(db),
            config.display_path(&restore.aside)
        ));
        plan.push(format!(
            "copy {} to {} (sha256 checked against the journal: equal)",
            config.display_path(&restore.backup),
            config.display_path(db)
        ));
    }
    plan.push(format!(
        "write settings/settings_local.py for SQLite ({}), now {}; the file it replaces is kept",
        config.display_path(db),
        settings::current(config).map_or("pointing at no database".to_string(), |kind| format!(
            "pointing at {kind}"
        ))
    ));
    plan.push(format!(
        "run: bin/buildout -c {tag1} buildout:directory={root}"
    ));
    if options.dry_run {
        println!(
            "dry run: roll back {} -> {}; nothing is touched\n",
            journal.sqlite, journal.target
        );
        for line in &plan {
            println!("  {line}");
        }
        return Ok(());
    }

    if let Some(restore) = &restore {
        restore_db(db, restore, &journal)?;
        println!("{}", plan[0]);
        println!("{}", plan[1]);
    }
    for line in settings::switch(DbKind::Sqlite, config)? {
        println!("{line}");
    }
    let directory = format!("buildout:directory={root}");
    cmd!(sh, "{buildout} -c {tag1} {directory}")
        .run()
        .context("bin/buildout with tag 1 failed: fix the cause shown above, then run `cargo xtask rollback` again")?;
    println!(
        "\nrolled back to Sentry 4 on {}.\nnext:   bin/sentry --config=settings/settings.py start   (from a terminal; answer `no` if asked to delete stale content types)",
        config.display_path(db)
    );
    Ok(())
}

/// Sentry 6 may have stored events since the migration: a rollback would leave them in
/// PostgreSQL only. Refused unless `force`.
fn check_new_events(config: &Config, journal: &Journal, force: bool) -> Result<()> {
    let verified = journal
        .steps
        .iter()
        .any(|s| s.name.parse::<StepId>().ok() == Some(StepId::VerifyPostgres));
    // No highest id because none was migrated: every event in the target is new.
    let none_migrated = journal.postgres_counts.get("sentry_message") == Some(&0);
    let last = match journal.max_event_id {
        Some(last) => last,
        None if verified && none_migrated => 0,
        None => {
            ensure!(
                !verified || force,
                "the journal does not record the migration's last event id, so new events in Sentry 6 cannot be counted: \
                 roll back with --force if none can have arrived"
            );
            // The load never finished: Sentry 6 cannot have stored events in this target.
            return Ok(());
        }
    };
    let counted = pg::connect(&config.pg, &config.pg.dbname, Duration::from_secs(5))
        .and_then(|mut client| pg::events_after(&mut client, last));
    match counted {
        Ok(0) => Ok(()),
        Ok(n) if force => {
            eprintln!("note: {n} event(s) stored by Sentry 6 after the migration stay in PostgreSQL only (--force)");
            Ok(())
        }
        Ok(n) => bail!(
            "Sentry 6 stored {n} event(s) after the migration (ids past {last} in sentry_message of {}): \
             a rollback would leave them behind in PostgreSQL; roll back anyway with --force",
            config.pg
        ),
        Err(_) if force => Ok(()),
        Err(err) => Err(err.context(
            "cannot count the events Sentry 6 stored after the migration: roll back anyway with --force",
        )),
    }
}

/// The backup the journal names, with its sha256 equal to the journal's.
fn check_backup(config: &Config, journal: &Journal) -> Result<Restore> {
    let Some(recorded) = &journal.backup else {
        bail!("the journal records no backup (the migration stopped before `backup-sqlite`): the db was never changed, nothing to restore");
    };
    let backup = config.root.join(&recorded.path);
    let actual = util::sha256_file(&backup)
        .with_context(|| format!("the backup {} cannot be read", recorded.path))?;
    ensure!(
        actual == recorded.sha256,
        "the backup {} has sha256 {actual}, but the journal recorded {} when it was made and verified: \
         it is not the db as it was before the migration; nothing was changed",
        recorded.path,
        recorded.sha256
    );
    let db = &config.sqlite_path;
    for suffix in ["-journal", "-wal"] {
        let hot = util::sibling(db, suffix);
        ensure!(
            !hot.exists(),
            "{} exists: a writer crashed or is still running; stop Sentry, then open the db once with `sqlite3 {}` and `.quit`",
            hot.display(),
            db.display()
        );
    }
    let stamp = util::utc_timestamp(util::unix_now()).replace([':', '-'], "");
    let mut aside = util::sibling(db, &format!(".before-rollback-{stamp}"));
    let mut n = 2;
    while aside.exists() {
        aside = util::sibling(db, &format!(".before-rollback-{stamp}-{n}"));
        n += 1;
    }
    Ok(Restore { backup, aside })
}

/// Moves the current db aside (a rename: never deleted), then copies the backup in through a
/// temp file (`util::copy_synced`: private while written, synced, a full disk named) with the
/// backup's mode, checks the copy's sha256, and renames it in, the folder synced.
fn restore_db(db: &Path, restore: &Restore, journal: &Journal) -> Result<()> {
    let partial = util::sibling(db, ".rollback-partial");
    let _ = fs::remove_file(&partial);
    let mode = util::copy_synced(&restore.backup, &partial, &partial)?;
    fs::set_permissions(&partial, fs::Permissions::from_mode(mode))?;
    let copied = util::sha256_file(&partial)?;
    let expected = journal.backup.as_ref().map(|b| b.sha256.as_str());
    if Some(copied.as_str()) != expected {
        let _ = fs::remove_file(&partial);
    }
    ensure!(
        Some(copied.as_str()) == expected,
        "the copy of the backup differs from it (was it written during the copy?); nothing was changed"
    );
    if db.exists() {
        util::rename_synced(db, &restore.aside)?;
    }
    util::rename_synced(&partial, db)
}
