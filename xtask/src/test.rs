//! `cargo xtask test`: every test. Rust unit tests and the end-to-end tests (root, real
//! eBPF, the real demo deployment), then the demo's own self-tests.
use crate::run_cmd;
use anyhow::Result;
use std::path::Path;
use std::process::Command;

pub fn run(root: &Path, cargo_test_args: &[String]) -> Result<()> {
    // The end-to-end tests run the agent binary: build it first.
    run_cmd(Command::new("cargo").current_dir(root).args([
        "build",
        "--release",
        "-p",
        "telemetry-user",
    ]))?;
    run_cmd(
        Command::new(root.join(".venv/bin/python"))
            .current_dir(root)
            .args([
                "-m",
                "unittest",
                "discover",
                "-s",
                "demo/python",
                "-p",
                "test_*.py",
            ]),
    )?;
    run_cmd(Command::new("erl").current_dir(root).args([
        "-noshell",
        "-pa",
        "demo/_build/ebin",
        "-s",
        "demo_selftest",
        "run",
        "-s",
        "init",
        "stop",
    ]))?;
    // End-to-end tests share the host's kernel and loopback: one at a time.
    run_cmd(
        Command::new("cargo")
            .current_dir(root)
            .args(["test", "--workspace", "--no-fail-fast"])
            .args(cargo_test_args)
            .args(["--", "--test-threads=1"]),
    )?;
    Ok(())
}
