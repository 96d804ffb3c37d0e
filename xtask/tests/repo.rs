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

/// Every source file of the tool with its module (`execute/target.rs` is `execute`), its text
/// without the unit tests (`#[cfg(test)] mod tests` to the end).
fn sources() -> Vec<(String, String, String)> {
    let src = root().join("xtask/src");
    let mut out = Vec::new();
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|it| it == "rs") {
                let rel = path.strip_prefix(&src).unwrap().display().to_string();
                let module = rel
                    .split('/')
                    .next()
                    .unwrap()
                    .trim_end_matches(".rs")
                    .to_string();
                let text = std::fs::read_to_string(&path).unwrap();
                let code = match text.find("#[cfg(test)]\nmod tests") {
                    Some(at) => text[..at].to_string(),
                    None => text,
                };
                out.push((rel, module, code));
            }
        }
    }
    out.sort();
    out
}

/// The modules a file names as `crate::NAME` (its `use` lines and paths).
fn uses(code: &str) -> std::collections::BTreeSet<String> {
    code.match_indices("crate::")
        .map(|(at, it)| {
            code[at + it.len()..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect::<String>()
        })
        .filter(|it| !it.is_empty())
        .collect()
}

/// ARCHITECTURE.md's invariants that a reading of the `use` lines can check.
#[test]
fn the_layering_holds() {
    let sources = sources();
    let mut graph: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> =
        Default::default();
    for (rel, module, code) in &sources {
        let used = uses(code);
        // The plan is data: no IO, in any file of `plan/`.
        if module == "plan" {
            for io in [
                "std::fs",
                "postgres::",
                "rusqlite",
                "xshell",
                "std::process",
            ] {
                assert!(!code.contains(io), "{rel} uses {io}: the plan does no IO");
            }
        }
        // `migrate`'s modules never reach the rehearsal, the bench or the test cluster.
        if !["rehearse", "bench", "lib", "main"].contains(&module.as_str()) {
            for tool in ["rehearse", "bench", "pgcluster"] {
                assert!(
                    module == tool || !used.contains(tool),
                    "{rel} uses crate::{tool}: only the rehearsal and the bench may"
                );
            }
        }
        // No module reaches its parent with a glob.
        assert!(
            !code.contains("use super::*;"),
            "{rel} imports its parent with `use super::*`: list what it uses"
        );
        if module != "lib" && module != "main" {
            graph
                .entry(module.clone())
                .or_default()
                .extend(used.into_iter().filter(|it| it != module));
        }
    }
    // No import circle between modules.
    fn visit(
        node: &str,
        graph: &std::collections::BTreeMap<String, std::collections::BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut std::collections::BTreeSet<String>,
    ) {
        if let Some(at) = path.iter().position(|it| it == node) {
            panic!("import circle: {} -> {node}", path[at..].join(" -> "));
        }
        if done.contains(node) {
            return;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            visit(next, graph, path, done);
        }
        path.pop();
        done.insert(node.to_string());
    }
    let mut done = Default::default();
    for node in graph.keys() {
        visit(node, &graph, &mut Vec::new(), &mut done);
    }
    assert!(graph.len() > 20, "the sources were read: {graph:?}");
}
