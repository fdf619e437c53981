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
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root)
        .args(["test", "--workspace", "--no-fail-fast"])
        .args(cargo_test_args)
        .args(["--", "--test-threads=1"]);
    let (status, passed, failed) = run_counting(&mut cmd)?;
    // One closing line for the whole run (cargo's last line is its doc-tests').
    println!("{passed} passed, {failed} failed");
    if !status.success() {
        anyhow::bail!("cargo test failed ({status})");
    }
    Ok(())
}

/// Runs `cargo test`, echoing its output, and sums its `test result:` lines.
fn run_counting(cmd: &mut Command) -> Result<(std::process::ExitStatus, u64, u64)> {
    use std::io::{BufRead, BufReader};
    let mut child = cmd.stdout(std::process::Stdio::piped()).spawn()?;
    let (mut passed, mut failed) = (0u64, 0u64);
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines() {
            let line = line?;
            println!("{line}");
            if let Some(rest) = line.strip_prefix("test result: ") {
                passed += count_before(rest, " passed");
                failed += count_before(rest, " failed");
            }
        }
    }
    Ok((child.wait()?, passed, failed))
}

/// The number just before `word` in `ok. 12 passed; 0 failed; ...`.
fn count_before(text: &str, word: &str) -> u64 {
    text.split(';')
        .find_map(|part| {
            part.trim()
                .trim_start_matches("ok. ")
                .trim_start_matches("FAILED. ")
                .strip_suffix(word)
        })
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::count_before;

    #[test]
    fn counts_come_from_cargo_result_lines() {
        let ok =
            "ok. 151 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 3.64s";
        assert_eq!(count_before(ok, " passed"), 151);
        assert_eq!(count_before(ok, " failed"), 0);
        let bad = "FAILED. 5 passed; 1 failed; 0 ignored; 0 measured";
        assert_eq!(count_before(bad, " passed"), 5);
        assert_eq!(count_before(bad, " failed"), 1);
    }
}
