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
fn ci_runs_the_readme_test_command() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let ci = std::fs::read_to_string(root().join(".ci/run")).unwrap();
    let block = readme
        .split("## Setup and tests")
        .nth(1)
        .expect("README has a `Setup and tests` section");
    let command = block
        .split("```sh\n")
        .nth(1)
        .and_then(|it| it.split('\n').next())
        .expect("a ```sh block");
    assert_eq!(command, "cargo test --workspace");
    assert!(
        ci.lines().any(|line| line.trim() == command),
        ".ci/run must run `{command}`, the README's test command"
    );
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
