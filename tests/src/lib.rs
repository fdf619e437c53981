//! Drives real processes for the end-to-end tests, `cargo xtask demo` and the benchmark:
//! the demo deployment (a real BEAM and real Python workers, see demo/README.md) through
//! its stdin/stdout control protocol, and the agent binary with its JSON-lines output.
pub mod agent;
pub mod bpf_stats;
pub mod browser;

pub mod demo;
pub mod http;
pub mod otlp_receiver;
pub mod privileges;
pub mod procfs;
pub mod require;

use std::path::PathBuf;

/// The workspace root (this crate lives in `<root>/tests`).
pub fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

/// `127.0.0.1:PORT` of a port free now (for an agent's `--http-listen`).
pub fn free_loopback_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a free loopback port");
    l.local_addr().expect("its address").to_string()
}

/// A fresh scratch directory under target/e2e for one test.
pub fn scratch_dir(name: &str) -> PathBuf {
    let dir = workspace_root()
        .join("target/e2e")
        .join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("creating scratch dir under target/e2e");
    dir
}
