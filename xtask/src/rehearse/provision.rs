//! Rehearsal provisioning, cached: Python 2.7 from Debian bullseye packages extracted into a
//! private prefix (the system's apt state untouched), a 2.7 virtualenv with zc.buildout, and a
//! buildout home whose eggs directory is shared by every rehearsal; and this repo's files a
//! buildout checkout has, copied into the scratch root.

use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

use super::run::log_run;

const PY27_PACKAGES: &[&str] = &[
    "python2.7",
    "libpython2.7-stdlib",
    "libpython2.7-minimal",
    "python2.7-minimal",
    "libpython2.7",
    "python2.7-dev",
    "libpython2.7-dev",
    "libssl1.1",
    "libffi7",
];

/// What the rehearsal needs from the cache.
pub struct Toolchain {
    pub prefix: PathBuf,
    pub ve27: PathBuf,
    pub buildout_home: PathBuf,
}

impl Toolchain {
    /// Environment every Python 2.7 child needs (shared libraries, headers for C extensions,
    /// the shared eggs directory).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let prefix = self.prefix.display();
        vec![
            (
                "LD_LIBRARY_PATH",
                format!("{prefix}/usr/lib/x86_64-linux-gnu"),
            ),
            (
                "CFLAGS",
                format!("-I{prefix}/usr/include/python2.7 -I{prefix}/usr/include"),
            ),
            ("BUILDOUT_HOME", self.buildout_home.display().to_string()),
        ]
    }
}

/// Derives bullseye sources from the system's bookworm ones (no host name is written here).
pub fn bullseye_sources(system: &str) -> Result<String> {
    let mut out = String::new();
    for line in system.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("deb ") || trimmed.starts_with("deb-src ") {
            // One-line format: `deb URI SUITE COMPONENTS…`; drop the suites bullseye lacks.
            let words: Vec<&str> = trimmed.split_whitespace().collect();
            if words
                .iter()
                .any(|w| *w == "bookworm-updates" || *w == "bookworm-backports")
            {
                continue;
            }
        }
        let line = if trimmed.starts_with("Suites:")
            || trimmed.starts_with("deb ")
            || trimmed.starts_with("deb-src ")
        {
            let words: Vec<String> = line
                .split_whitespace()
                .filter(|word| *word != "bookworm-updates" && *word != "bookworm-backports")
                .map(|word| {
                    word.replace("bookworm-security", "bullseye-security")
                        .replace("bookworm", "bullseye")
                })
                .collect();
            words.join(" ")
        } else {
            line.to_string()
        };
        out.push_str(&line);
        out.push('\n');
    }
    if !out.contains("bullseye") {
        bail!("the system's apt sources name no bookworm suite to derive bullseye from");
    }
    Ok(out)
}

fn system_sources() -> Result<(String, &'static str)> {
    if let Ok(text) = fs::read_to_string("/etc/apt/sources.list.d/debian.sources") {
        return Ok((text, "bullseye.sources"));
    }
    let text = fs::read_to_string("/etc/apt/sources.list")
        .context("no /etc/apt/sources.list.d/debian.sources or /etc/apt/sources.list to derive bullseye sources from")?;
    Ok((text, "bullseye.list"))
}

/// Python 2.7.18 in `cache/py27`, extracted from bullseye packages with a private apt state.
fn python27(sh: &Shell, cache: &Path, logs: &Path) -> Result<PathBuf> {
    let prefix = cache.join("py27");
    let python = prefix.join("usr/bin/python2.7");
    if prefix.join(".complete").exists() {
        return Ok(prefix);
    }
    let apt = cache.join("apt");
    let parts = apt.join("parts");
    let lists = apt.join("lists");
    let archives = apt.join("archives");
    for dir in [&parts, &lists.join("partial"), &archives.join("partial")] {
        fs::create_dir_all(dir)?;
    }
    let (system, name) = system_sources()?;
    fs::write(parts.join(name), bullseye_sources(&system)?)?;
    let opts = &[
        "-o".to_string(),
        "Dir::Etc::SourceList=/dev/null".to_string(),
        "-o".to_string(),
        format!("Dir::Etc::SourceParts={}", parts.display()),
        "-o".to_string(),
        format!("Dir::State::Lists={}", lists.display()),
        "-o".to_string(),
        format!("Dir::Cache::Archives={}", archives.display()),
    ];
    let log = logs.join("provision-apt.log");
    log_run(cmd!(sh, "apt-get {opts...} update"), &log)
        .context("apt-get update with the bullseye sources failed")?;
    {
        let _dir = sh.push_dir(&archives);
        log_run(
            cmd!(sh, "apt-get {opts...} download {PY27_PACKAGES...}"),
            &log,
        )
        .context("apt-get download of the Python 2.7 packages failed")?;
    }
    let _ = fs::remove_dir_all(&prefix);
    fs::create_dir_all(&prefix)?;
    for deb in fs::read_dir(&archives)?
        .flatten()
        .map(|it| it.path())
        .filter(|p| p.extension().is_some_and(|e| e == "deb"))
    {
        log_run(cmd!(sh, "dpkg -x {deb} {prefix}"), &log)?;
    }
    let lib = prefix.join("usr/lib/x86_64-linux-gnu");
    log_run(
        cmd!(sh, "{python} -c 'import ssl, hashlib, ctypes, zlib'").env("LD_LIBRARY_PATH", &lib),
        &log,
    )
    .context("the extracted Python 2.7 cannot import ssl/hashlib/ctypes")?;
    fs::write(prefix.join(".complete"), "")?;
    Ok(prefix)
}

/// Everything the rehearsal needs, from the cache (made on first use).
pub fn toolchain(sh: &Shell, cache: &Path, logs: &Path) -> Result<Toolchain> {
    fs::create_dir_all(cache)
        .with_context(|| format!("cannot create the cache {}", cache.display()))?;
    let prefix = python27(sh, cache, logs)?;
    let log = logs.join("provision-virtualenv.log");
    let venv3 = cache.join("venv3");
    if !venv3.join("bin/virtualenv").exists() {
        log_run(cmd!(sh, "python3 -m venv {venv3}"), &log)
            .context("python3 -m venv failed (apt-get install python3-venv)")?;
        let pip = venv3.join("bin/pip");
        log_run(cmd!(sh, "{pip} install -q virtualenv<20.22"), &log)
            .context("pip install virtualenv failed")?;
    }
    let ve27 = cache.join("ve27");
    let toolchain = Toolchain {
        buildout_home: cache.join("buildout-home"),
        ve27: ve27.clone(),
        prefix: prefix.clone(),
    };
    if !ve27.join("bin/buildout").exists() {
        let virtualenv = venv3.join("bin/virtualenv");
        let python = prefix.join("usr/bin/python2.7");
        let env = toolchain.env();
        // No periodic update: virtualenv would otherwise leave processes behind, fetching
        // newer seed wheels in the background (the rehearsal refuses to leave any).
        log_run(
            cmd!(sh, "{virtualenv} --no-periodic-update -p {python} {ve27}").envs(env.clone()),
            &log,
        )
        .context("virtualenv for Python 2.7 failed")?;
        let pip = ve27.join("bin/pip");
        log_run(
            cmd!(sh, "{pip} install -q zc.buildout==2.13.8").envs(env),
            &log,
        )
        .context("pip install zc.buildout failed")?;
    }
    let eggs = cache.join("eggs");
    fs::create_dir_all(&eggs)?;
    fs::create_dir_all(&toolchain.buildout_home)?;
    fs::write(
        toolchain.buildout_home.join("default.cfg"),
        format!("# Written by cargo xtask rehearse: one eggs directory for every rehearsal.\n[buildout]\neggs-directory = {}\n", eggs.display()),
    )?;
    Ok(toolchain)
}

/// `bin/buildout` in `root` (what a user's buildout checkout has after `buildout bootstrap`).
pub fn bootstrap(sh: &Shell, toolchain: &Toolchain, root: &Path, logs: &Path) -> Result<()> {
    let cfg = root.join("bootstrap.cfg");
    fs::write(&cfg, "[buildout]\nparts =\n")?;
    let buildout = toolchain.ve27.join("bin/buildout");
    let _dir = sh.push_dir(root);
    log_run(
        cmd!(sh, "{buildout} -c {cfg} bootstrap").envs(toolchain.env()),
        &logs.join("provision-bootstrap.log"),
    )
    .context("buildout bootstrap failed")?;
    fs::remove_file(&cfg)?;
    if !root.join("bin/buildout").exists() {
        bail!(
            "buildout bootstrap made no bin/buildout in {}",
            root.display()
        );
    }
    Ok(())
}

/// A real browser for the Sentry 6 proof: Debian's Chromium and its WebDriver, driven by
/// selenium from a Python 3 virtualenv in the cache (`xtask/python/rehearse/browse.py`).
pub struct Browser {
    pub python: PathBuf,
    pub chromium: PathBuf,
    pub chromedriver: PathBuf,
}

/// Finds Chromium and chromedriver (`CHROMIUM`, `CHROMEDRIVER`, or Debian's paths) and makes
/// the selenium virtualenv from the pinned `requirements` file, remade when the file changes.
/// The JavaScript raven client for Node that `rehearse --hold-events` runs: this version, from
/// npm's registry, cached.
pub const RAVEN_NODE: &str = "0.7.3";

/// `npm install raven@RAVEN_NODE` into the cache (once); its `node_modules` folder.
pub fn raven_node(sh: &Shell, cache: &Path, logs: &Path) -> Result<PathBuf> {
    let prefix = cache.join(format!("raven-node-{RAVEN_NODE}"));
    let modules = prefix.join("node_modules");
    if !modules.join("raven/package.json").exists() {
        fs::create_dir_all(&prefix)?;
        let package = format!("raven@{RAVEN_NODE}");
        log_run(
            cmd!(sh, "npm install --no-audit --no-fund --prefix {prefix} {package}"),
            &logs.join("provision-raven-node.log"),
        )
        .context("npm install raven failed: the rehearsal needs node and npm (apt-get install nodejs npm) and npm's registry")?;
    }
    Ok(modules)
}

pub fn browser(sh: &Shell, cache: &Path, requirements: &Path, logs: &Path) -> Result<Browser> {
    let program = |var: &str, default: &str| {
        std::env::var_os(var).map_or_else(|| PathBuf::from(default), PathBuf::from)
    };
    let chromium = program("CHROMIUM", "/usr/bin/chromium");
    let chromedriver = program("CHROMEDRIVER", "/usr/bin/chromedriver");
    for path in [&chromium, &chromedriver] {
        if !path.exists() {
            bail!(
                "{} is missing: the rehearsal looks at Sentry 6 in a real headless browser (apt-get install chromium chromium-driver, or set CHROMIUM and CHROMEDRIVER)",
                path.display()
            );
        }
    }
    let pinned = fs::read_to_string(requirements)
        .with_context(|| format!("cannot read {}", requirements.display()))?;
    let venv = cache.join("browser-py3");
    let stamp = venv.join("requirements.txt");
    let python = venv.join("bin/python");
    if fs::read_to_string(&stamp).ok().as_deref() != Some(pinned.as_str()) {
        let log = logs.join("provision-browser.log");
        let _ = fs::remove_dir_all(&venv);
        log_run(cmd!(sh, "python3 -m venv {venv}"), &log)
            .context("python3 -m venv failed (apt-get install python3-venv)")?;
        let pip = venv.join("bin/pip");
        log_run(cmd!(sh, "{pip} install -q -r {requirements}"), &log)
            .with_context(|| format!("pip install -r {} failed", requirements.display()))?;
        fs::write(&stamp, &pinned)?;
    }
    Ok(Browser {
        python,
        chromium,
        chromedriver,
    })
}

/// The pinned selenium and its dependencies for `browse.py`.
pub(super) const BROWSER_REQUIREMENTS: &str = "xtask/python/rehearse/browser-requirements.txt";

/// The files of this repo a buildout checkout has, copied into the scratch root.
/// `zone`: write the rehearsal's own `settings/sentry_conf.py` with it (`None`: the caller
/// brings the install's own).
pub(super) fn copy_repo_files(repo: &Path, root: &Path, zone: Option<&str>) -> Result<()> {
    for dir in [
        "buildout",
        "settings",
        "xtask/python/rehearse",
        "var",
        "dumps",
    ] {
        fs::create_dir_all(root.join(dir))?;
    }
    for file in [
        "buildout/tag1-sentry4.cfg",
        "buildout/tag2-sentry6.cfg",
        "buildout/tag0-sentry4.0.cfg",
        "settings/settings.py",
        "xtask/python/sentry_helper.py",
        "xtask/python/merge_dupe_groups.sql",
        "xtask/python/rehearse/sentry_setup.py",
        "xtask/python/rehearse/seed.py",
        "xtask/python/rehearse/send_events.py",
        "xtask/python/rehearse/send_bad_values.py",
        "xtask/python/rehearse/serve.py",
        "xtask/python/rehearse/prove.py",
        "xtask/python/rehearse/prove4.py",
        "xtask/python/rehearse/compare_encoded.py",
        "xtask/python/rehearse/prove_db.py",
        "xtask/python/rehearse/browse.py",
        "xtask/python/rehearse/browser-requirements.txt",
        "xtask/python/rehearse/keep_sending.py",
        "xtask/python/rehearse/keep_sending.js",
        "xtask/python/rehearse/socket_activate.py",
    ] {
        fs::copy(repo.join(file), root.join(file))
            .with_context(|| format!("cannot copy {file} into the scratch repo"))?;
    }
    // The install's own settings: the zone its Sentry 4 runs with (daylight saving included),
    // which `migrate` must read the naive dates in.
    if let Some(zone) = zone {
        fs::write(
            root.join("settings/sentry_conf.py"),
            format!("# Rehearsal: the install's own settings.\nTIME_ZONE = '{zone}'\n"),
        )?;
    }
    // The scratch install sends no mail (Sentry mails on every new event).
    let mut settings = fs::OpenOptions::new()
        .append(true)
        .open(root.join("settings/settings.py"))?;
    writeln!(settings, "\n# Rehearsal only: no mail leaves this machine.\nEMAIL_BACKEND = 'django.core.mail.backends.locmem.EmailBackend'")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bullseye_sources_from_deb822_and_one_line_formats() {
        let deb822 = "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\nComponents: main\n\nTypes: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\nComponents: main\n";
        let out = bullseye_sources(deb822).unwrap();
        assert!(out.contains("Suites: bullseye\n"), "{out}");
        assert!(out.contains("Suites: bullseye-security\n"), "{out}");
        assert!(!out.contains("bookworm"), "{out}");
        assert!(
            out.contains("URIs: http://mirror.example/debian\n"),
            "the host is kept from the system: {out}"
        );

        let list = "deb http://mirror.example/debian bookworm main\ndeb http://mirror.example/debian bookworm-updates main\n";
        let out = bullseye_sources(list).unwrap();
        assert_eq!(out, "deb http://mirror.example/debian bullseye main\n");
        assert!(bullseye_sources("Types: deb\nSuites: jammy\n").is_err());
    }
}
