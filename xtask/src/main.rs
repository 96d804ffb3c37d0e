//! sentry-migrate: `cargo xtask` tasks that move a Sentry 4 SQLite install to PostgreSQL and Sentry 6.

use xtask::flags;

use std::path::PathBuf;

fn main() {
    if let Err(err) = try_main() {
        // `{:#}` prints the chain of causes on one line each time, never a backtrace.
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}

fn try_main() -> anyhow::Result<()> {
    let args: Vec<_> = std::env::args_os().skip(1).collect();
    // The benchmark runs the copy engine in a process of its own, to measure its memory alone.
    if args
        .first()
        .is_some_and(|it| it == xtask::bench::COPY_WORKER)
    {
        return xtask::bench::copy_worker(&args[1..]);
    }
    if args
        .first()
        .is_some_and(|it| it == "--version" || it == "-V")
    {
        println!("{}", flags::version());
        return Ok(());
    }
    let args = if args.is_empty() {
        vec!["--help".into()]
    } else {
        args
    };
    let flags = match flags::Xtask::from_vec(args.clone()) {
        Ok(flags) => flags,
        Err(err) if err.is_help() => {
            print!("{}", flags::help_for(&err.to_string(), &args));
            return Ok(());
        }
        Err(err) => anyhow::bail!("{err}\nrun `cargo xtask --help` for the list of tasks"),
    };
    let sh = xshell::Shell::new()?;
    sh.change_dir(project_root());
    match flags.subcommand {
        flags::XtaskCmd::Migrate(cmd) => cmd.run(&sh),
        flags::XtaskCmd::SwitchSettings(cmd) => cmd.run(&sh),
        flags::XtaskCmd::Rehearse(cmd) => cmd.run(&sh),
        flags::XtaskCmd::Rollback(cmd) => cmd.run(&sh),
        flags::XtaskCmd::Bench(cmd) => cmd.run(&sh),
        flags::XtaskCmd::HoldEvents(cmd) => cmd.run(&sh),
        flags::XtaskCmd::ReplayEvents(cmd) => cmd.run(&sh),
    }
}

/// The repository root: the parent of the xtask crate, unless `SENTRY_MIGRATE_ROOT` names another
/// checkout of this layout (the tests and the rehearsal use that to work on a scratch copy).
fn project_root() -> PathBuf {
    if let Some(root) = std::env::var_os("SENTRY_MIGRATE_ROOT") {
        return PathBuf::from(root);
    }
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    manifest_dir
        .parent()
        .expect("xtask lives one level below the root")
        .to_path_buf()
}
