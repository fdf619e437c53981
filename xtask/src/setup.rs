//! Idempotent set-up for a fresh Debian machine: toolchain parts for eBPF, Debian
//! packages, the project-local Python venv, the demo's compiled BEAM code and generated
//! protobuf modules, and the tracefs/bpffs mounts.
use crate::{cmd_ok, run_cmd};
use anyhow::{Context, Result};
use std::path::Path;
use std::process::Command;

/// The pins: the nightly channel and the bpf-linker version, in one file that
/// telemetry-user/build.rs reads too.
pub const PINS_FILE: &str = "telemetry-ebpf/rust-toolchain.toml";
const DEBIAN_PACKAGES: &[&str] = &[
    "erlang-base",
    "erlang-dev",
    "python3-venv",
    "python3-pip",
    "prometheus",
    "chromium",
    // The daemon tests: `systemd-analyze verify`, the package's postinst, namespaces.
    "systemd",
    "adduser",
    "iproute2",
    "util-linux",
    "gcc", // compiles the fake NVML library of tests/tests/gpu_fake_nvml.rs
    // objcopy/strip: the profiler's debug-file test builds a stripped binary with a
    // .gnu_debuglink (gcc depends on it; named for that test).
    "binutils",
];
/// py-spy: the off-CPU profile's cross-check (tests/tests/offcpu.rs), a binary in the
/// venv's bin/.
const PYPI_PACKAGES: &[&str] = &[
    "grpcio",
    "grpcio-tools",
    "protobuf",
    "orjson",
    "numpy",
    "py-spy",
];

pub fn run(root: &Path) -> Result<()> {
    rust_toolchain(root)?;
    debian_packages()?;
    python_venv(root)?;
    crate::setup_pyversions::run(root)?;
    demo_build(root)?;
    crate::setup_protobuf6::run(root)?;
    mounts()?;
    Ok(())
}

#[derive(Debug, PartialEq, Eq)]
pub struct Pins {
    /// e.g. `nightly-2026-10-30`
    pub channel: String,
    pub bpf_linker: String,
}

/// Reads `channel` under `[toolchain]` and `version` under `[bpf-linker]`.
pub fn parse_pins(text: &str) -> Option<Pins> {
    let mut table = "";
    let (mut channel, mut bpf_linker) = (None, None);
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            table = line;
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let value = value.trim().trim_matches('"').to_string();
        match (table, key.trim()) {
            ("[toolchain]", "channel") => channel = Some(value),
            ("[bpf-linker]", "version") => bpf_linker = Some(value),
            _ => {}
        }
    }
    Some(Pins {
        channel: channel?,
        bpf_linker: bpf_linker?,
    })
}

pub fn pins(root: &Path) -> Result<Pins> {
    let path = root.join(PINS_FILE);
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {PINS_FILE}"))?;
    parse_pins(&text)
        .with_context(|| format!("{PINS_FILE}: no [toolchain] channel or [bpf-linker] version"))
}

/// The pinned nightly with rust-src, and the pinned bpf-linker.
pub fn rust_toolchain(root: &Path) -> Result<()> {
    let pins = pins(root)?;
    let channel = pins.channel.as_str();
    let have_src = Command::new("rustup")
        .args(["component", "list", "--installed", "--toolchain", channel])
        .output()
        .map(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains("rust-src"))
        .unwrap_or(false);
    if !have_src {
        eprintln!("setup: installing {channel} with rust-src");
        run_cmd(Command::new("rustup").args([
            "toolchain",
            "install",
            channel,
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ]))?;
    }
    let version = pins.bpf_linker.as_str();
    let linker_ok = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == format!("bpf-linker {version}"))
        .unwrap_or(false);
    if !linker_ok {
        eprintln!("setup: installing bpf-linker {version}");
        run_cmd(Command::new("cargo").args([
            "install",
            &format!("bpf-linker@{version}"),
            "--locked",
            "--force",
        ]))?;
    }
    Ok(())
}

fn debian_packages() -> Result<()> {
    let missing: Vec<&str> = DEBIAN_PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            !Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", p])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
                .unwrap_or(false)
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("setup: apt-get install {}", missing.join(" "));
    run_cmd(Command::new("apt-get").args(["update", "-qq"]))?;
    run_cmd(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn python_venv(root: &Path) -> Result<()> {
    let venv = root.join(".venv");
    let python = venv.join("bin/python");
    if !python.exists() {
        eprintln!("setup: creating {}", venv.display());
        run_cmd(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    }
    let imports_ok = cmd_ok(Command::new(&python).args([
        "-c",
        "import grpc, grpc_tools, google.protobuf, orjson, numpy",
    ])) && venv.join("bin/py-spy").exists();
    if !imports_ok {
        eprintln!("setup: pip install {}", PYPI_PACKAGES.join(" "));
        run_cmd(
            Command::new(&python)
                .args(["-m", "pip", "install", "-q", "--disable-pip-version-check"])
                .args(PYPI_PACKAGES),
        )?;
    }
    Ok(())
}

/// Compiles the demo BEAM modules and generates the Python protobuf modules. Both are
/// cheap, so they always run: stale outputs after a source change are worse.
fn demo_build(root: &Path) -> Result<()> {
    let ebin = root.join("demo/_build/ebin");
    std::fs::create_dir_all(&ebin).context("creating demo/_build/ebin")?;
    let sources: Vec<_> = std::fs::read_dir(root.join("demo/beam"))
        .context("reading demo/beam")?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "erl"))
        .collect();
    run_cmd(Command::new("erlc").arg("-o").arg(&ebin).args(&sources))?;
    let gen = root.join("demo/python/gen_proto.py");
    if gen.exists() {
        run_cmd(Command::new(root.join(".venv/bin/python")).arg(gen))?;
    }
    Ok(())
}

fn mounts() -> Result<()> {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let mounted = |fstype: &str, dir: &str| {
        mounts.lines().any(|l| {
            let mut f = l.split_whitespace();
            let _dev = f.next();
            f.next() == Some(dir) && f.next() == Some(fstype)
        })
    };
    for (fstype, dir) in [("tracefs", "/sys/kernel/tracing"), ("bpf", "/sys/fs/bpf")] {
        if !mounted(fstype, dir) {
            eprintln!("setup: mounting {fstype} on {dir}");
            run_cmd(Command::new("mount").args(["-t", fstype, fstype, dir]))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pins_file_names_a_dated_nightly_and_a_bpf_linker_version() {
        let pins = pins(&crate::workspace_root()).expect("pins");
        let date = pins.channel.strip_prefix("nightly-").expect("a nightly");
        assert_eq!(date.len(), 10, "nightly-YYYY-MM-DD, got {}", pins.channel);
        assert_eq!(pins.bpf_linker, "0.10.3");
    }

    #[test]
    fn pins_need_both_tables() {
        assert!(parse_pins("[toolchain]\nchannel = \"nightly-2026-10-30\"\n").is_none());
        let both = "[toolchain]\nchannel = \"x\"\n[bpf-linker]\nversion = \"1\"\n";
        assert_eq!(
            parse_pins(both),
            Some(Pins {
                channel: "x".into(),
                bpf_linker: "1".into()
            })
        );
    }
}
