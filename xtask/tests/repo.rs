//! Repository checks as ordinary tests: formatting, and CI running the README's test command.

use std::{path::Path, process::Command};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

#[test]
fn code_is_formatted() {
    let out = Command::new(env!("CARGO"))
        .args(["fmt", "--all", "--", "--check"])
        .current_dir(root())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "run `cargo fmt --all` locally:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn ci_runs_the_readme_setup_commands() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let ci = std::fs::read_to_string(root().join(".ci/run")).unwrap();
    let block = readme
        .split("## Setup and tests")
        .nth(1)
        .expect("README has a `Setup and tests` section");
    let commands: Vec<&str> = block
        .split("```sh\n")
        .nth(1)
        .and_then(|it| it.split("```").next())
        .expect("a ```sh block")
        .lines()
        .collect();
    assert_eq!(
        commands,
        ["cargo xtask rehearse", "cargo test --workspace"],
        "the README's setup is two commands"
    );
    for command in commands {
        assert!(
            ci.lines().any(|line| line.trim() == command),
            ".ci/run must run `{command}`, as the README says"
        );
    }
}

#[test]
fn generated_settings_and_dumps_are_never_committed() {
    let ignore = std::fs::read_to_string(root().join(".gitignore")).unwrap();
    for pattern in ["/settings/settings_local.py", "/dumps/*"] {
        assert!(
            ignore.lines().any(|line| line == pattern),
            ".gitignore must list {pattern}"
        );
    }
}
