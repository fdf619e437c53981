//! Builds the eBPF object (telemetry-ebpf, bin `snakepit-probes`) with nightly and
//! bpf-linker, and hands its path to the crate as `SNAKEPIT_PROBES_OBJ` for
//! `include_bytes_aligned!`.
//!
//! The nested cargo runs in its own target dir (target/bpf) with a clean environment:
//! the variables cargo sets for build scripts (RUSTC, RUSTFLAGS, CARGO_*, ...) would
//! otherwise make it build for the host with the stable compiler.
use std::{
    env,
    path::{Path, PathBuf},
    process::{exit, Command},
};

const SETUP_HINT: &str = "run `cargo xtask setup`";

fn fail(msg: &str) -> ! {
    // One line: cargo shows build script stderr on failure.
    eprintln!("error: {msg}; {SETUP_HINT}");
    exit(1);
}

fn find_in_path(bin: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = env::var_os("PATH")
        .map(|p| env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = env::var_os("CARGO_HOME") {
        dirs.push(PathBuf::from(home).join("bin"));
    }
    if let Some(home) = env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo/bin"));
    }
    dirs.into_iter().map(|d| d.join(bin)).find(|p| p.is_file())
}

/// Environment kept for the nested cargo; everything else is dropped.
const KEEP_ENV: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "TMPDIR",
    "LANG",
    "TERM",
    "RUSTUP_HOME",
    "CARGO_HOME",
    "CARGO_NET_OFFLINE",
    "http_proxy",
    "https_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "no_proxy",
];

fn clean_command(program: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.env_clear();
    for key in KEEP_ENV {
        if let Some(v) = env::var_os(key) {
            cmd.env(key, v);
        }
    }
    cmd
}

/// `channel` of the `[toolchain]` table (the pinned nightly; xtask setup installs it).
fn pinned_channel(text: &str) -> Option<String> {
    text.lines()
        .map(str::trim)
        .skip_while(|l| *l != "[toolchain]")
        .find_map(|l| l.strip_prefix("channel"))
        .and_then(|rest| rest.trim().strip_prefix('='))
        .map(|v| v.trim().trim_matches('"').to_string())
}

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let root = manifest_dir
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| fail("cannot find the workspace root"));
    println!(
        "cargo:rerun-if-changed={}",
        root.join("telemetry-ebpf").display()
    );
    println!(
        "cargo:rerun-if-changed={}",
        root.join("telemetry-common").display()
    );
    println!("cargo:rerun-if-changed=build.rs");

    let pins = root.join("telemetry-ebpf/rust-toolchain.toml");
    println!("cargo:rerun-if-changed={}", pins.display());
    let channel = std::fs::read_to_string(&pins)
        .ok()
        .and_then(|t| pinned_channel(&t))
        .unwrap_or_else(|| fail("telemetry-ebpf/rust-toolchain.toml names no channel"));
    let toolchain = format!("+{channel}");
    let cargo = find_in_path("cargo").unwrap_or_else(|| fail("cargo (rustup proxy) not found"));
    if find_in_path("bpf-linker").is_none() {
        fail("bpf-linker is not installed");
    }
    // rust-src for nightly: needed by -Z build-std=core.
    let sysroot = find_in_path("rustc")
        .and_then(|rustc| {
            clean_command(&rustc)
                .args([toolchain.as_str(), "--print", "sysroot"])
                .output()
                .ok()
        })
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    match sysroot {
        Some(s) if s.join("lib/rustlib/src/rust/library/core").is_dir() => {}
        Some(_) => fail(&format!("rust-src of {channel} is not installed")),
        None => fail(&format!("the pinned toolchain {channel} is not installed")),
    }

    let target_dir = match env::var_os("CARGO_TARGET_DIR") {
        Some(d) => PathBuf::from(d).join("bpf"),
        None => root.join("target").join("bpf"),
    };
    // v3: atomic fetch-add (per-fd sequence numbers) needs BPF_ATOMIC with BPF_FETCH.
    // --btf: emit BTF so the kernel can check map value types and show program names.
    let rustflags = [
        "-Ctarget-cpu=v3",
        "--cfg=bpf_target_arch=\"x86_64\"",
        "-Cdebuginfo=2",
        "-Clink-arg=--btf",
    ]
    .join("\x1f");
    let status = clean_command(&cargo)
        .current_dir(&root)
        .args([
            toolchain.as_str(),
            "build",
            "-Z",
            "build-std=core",
            "--target",
            "bpfel-unknown-none",
            "--release",
            "-p",
            "telemetry-ebpf",
            "--target-dir",
        ])
        .arg(&target_dir)
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags)
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => {
            eprintln!("error: building telemetry-ebpf failed ({s}); see the output above");
            exit(1);
        }
        Err(e) => fail(&format!("cannot run cargo {toolchain}: {e}")),
    }

    let obj = target_dir.join("bpfel-unknown-none/release/snakepit-probes");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").unwrap_or_default());
    let dest = out_dir.join("snakepit-probes.o");
    if let Err(e) = std::fs::copy(&obj, &dest) {
        eprintln!("error: copying {} failed: {e}", obj.display());
        exit(1);
    }
    println!("cargo:rustc-env=SNAKEPIT_PROBES_OBJ={}", dest.display());
}
