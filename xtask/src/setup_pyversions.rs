//! Per-version Python venvs for the profiler's end-to-end tests: the demo worker runs
//! on CPython 3.10, 3.11, 3.12 and 3.13 (pyenv's builds), each venv with the worker's PyPI
//! packages. A version whose interpreter is missing is reported here, and its test
//! fails saying so.
use crate::{cmd_ok, run_cmd};
use anyhow::Result;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Minor versions of CPython 3 the profiler is tested on.
pub const PROFILER_MINORS: &[u32] = &[10, 11, 12, 13];
const PACKAGES: &[&str] = &["grpcio", "protobuf", "orjson", "numpy"];

/// The newest pyenv build of 3.`minor` (~/.pyenv or /root/.pyenv).
pub fn pyenv_python(minor: u32) -> Option<PathBuf> {
    let mut roots = vec![PathBuf::from("/root/.pyenv/versions")];
    if let Some(home) = std::env::var_os("HOME") {
        roots.insert(0, PathBuf::from(home).join(".pyenv/versions"));
    }
    let prefix = format!("3.{minor}.");
    let mut found: Vec<(u32, PathBuf)> = roots
        .iter()
        .filter_map(|r| std::fs::read_dir(r).ok())
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let micro: u32 = name.strip_prefix(&prefix)?.parse().ok()?;
            let bin = e.path().join(format!("bin/python3.{minor}"));
            bin.exists().then_some((micro, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, p)| p)
}

pub fn venv_dir(root: &Path, minor: u32) -> PathBuf {
    root.join(format!(".venv-py3.{minor}"))
}

pub fn run(root: &Path) -> Result<()> {
    for &minor in PROFILER_MINORS {
        let Some(base) = pyenv_python(minor) else {
            eprintln!(
                "setup: no pyenv CPython 3.{minor} (~/.pyenv/versions/3.{minor}.*): \
                 its profiler test will fail until it is installed"
            );
            continue;
        };
        let venv = venv_dir(root, minor);
        let python = venv.join("bin/python");
        if !python.exists() {
            eprintln!("setup: creating {} from {}", venv.display(), base.display());
            run_cmd(Command::new(&base).args(["-m", "venv"]).arg(&venv))?;
        }
        let ok = cmd_ok(
            Command::new(&python).args(["-c", "import grpc, google.protobuf, orjson, numpy"]),
        );
        if !ok {
            eprintln!(
                "setup: {}: pip install {}",
                venv.display(),
                PACKAGES.join(" ")
            );
            run_cmd(
                Command::new(&python)
                    .args(["-m", "pip", "install", "-q", "--disable-pip-version-check"])
                    .args(PACKAGES),
            )?;
        }
    }
    Ok(())
}
