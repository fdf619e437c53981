//! Idempotent set-up for a fresh Debian machine: toolchain parts for eBPF, Debian
//! packages, the project-local Python venv, the demo's compiled BEAM code and generated
//! protobuf modules, and the tracefs/bpffs mounts.
use crate::{cmd_ok, run_cmd};
use anyhow::{Context, Result};
use std::path::Path;
use std::process::Command;

/// bpf-linker 0.10.3 loads rustc's own LLVM; later versions need a system LLVM.
const BPF_LINKER_VERSION: &str = "0.10.3";
const DEBIAN_PACKAGES: &[&str] = &[
    "erlang-base",
    "erlang-dev",
    "python3-venv",
    "python3-pip",
    "prometheus",
    "chromium",
];
const PYPI_PACKAGES: &[&str] = &["grpcio", "grpcio-tools", "protobuf", "orjson", "numpy"];

pub fn run(root: &Path) -> Result<()> {
    rust_toolchain()?;
    debian_packages()?;
    python_venv(root)?;
    crate::setup_pyversions::run(root)?;
    demo_build(root)?;
    mounts()?;
    Ok(())
}

fn rust_toolchain() -> Result<()> {
    let have_src = Command::new("rustup")
        .args(["component", "list", "--installed", "--toolchain", "nightly"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("rust-src"))
        .unwrap_or(false);
    if !have_src {
        eprintln!("setup: installing nightly rust-src");
        run_cmd(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ]))?;
    }
    let linker_ok = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION))
        .unwrap_or(false);
    if !linker_ok {
        eprintln!("setup: installing bpf-linker {BPF_LINKER_VERSION}");
        run_cmd(Command::new("cargo").args([
            "install",
            &format!("bpf-linker@{BPF_LINKER_VERSION}"),
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
    ]));
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
