//! `cargo xtask package`: the Debian package, built with dpkg-deb from a staged tree.
//!
//! dpkg-deb rather than cargo-deb: the package is one binary plus files kept in
//! deploy/, dpkg-deb is on every Debian machine, and cargo-deb would be one more tool
//! compiled by set-up (minutes on a small machine) for no file it would add.
use crate::run_cmd;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

const NAME: &str = "snakepit-agent";

/// Files of the package: (source under the workspace root, path in the package, mode).
const FILES: &[(&str, &str, u32)] = &[
    (
        "target/release/snakepit-agent",
        "usr/bin/snakepit-agent",
        0o755,
    ),
    (
        "deploy/snakepit-agent.service",
        "lib/systemd/system/snakepit-agent.service",
        0o644,
    ),
    (
        "deploy/config.toml",
        "etc/snakepit-agent/config.toml",
        0o644,
    ),
    (
        "deploy/debian/logrotate",
        "etc/logrotate.d/snakepit-agent",
        0o644,
    ),
    (
        "docs/deploy.md",
        "usr/share/doc/snakepit-agent/deploy.md",
        0o644,
    ),
    (
        "docs/snakepit-agent.toml",
        "usr/share/doc/snakepit-agent/snakepit-agent.toml",
        0o644,
    ),
    ("deploy/debian/postinst", "DEBIAN/postinst", 0o755),
    ("deploy/debian/prerm", "DEBIAN/prerm", 0o755),
    ("deploy/debian/postrm", "DEBIAN/postrm", 0o755),
];

/// Kept on upgrade and asked about when changed (dpkg conffiles).
const CONFFILES: &[&str] = &[
    "/etc/snakepit-agent/config.toml",
    "/etc/logrotate.d/snakepit-agent",
];

/// Builds the release binary and `target/debian/snakepit-agent_<version>_<arch>.deb`;
/// returns its path.
pub fn run(root: &Path) -> Result<PathBuf> {
    run_cmd(Command::new("cargo").current_dir(root).args([
        "build",
        "--release",
        "-p",
        "telemetry-user",
    ]))?;
    let version = env!("CARGO_PKG_VERSION");
    let arch = dpkg_arch()?;
    let out_dir = root.join("target/debian");
    let stage = out_dir.join(format!("{NAME}_{version}_{arch}"));
    if stage.exists() {
        std::fs::remove_dir_all(&stage).context("clearing the staging tree")?;
    }
    for (src, dst, mode) in FILES {
        install(&root.join(src), &stage.join(dst), *mode)?;
    }
    let mut conffiles = CONFFILES.join("\n");
    conffiles.push('\n');
    std::fs::write(stage.join("DEBIAN/conffiles"), conffiles)?;
    std::fs::write(stage.join("DEBIAN/control"), control(version, &arch))?;
    let deb = out_dir.join(format!("{NAME}_{version}_{arch}.deb"));
    run_cmd(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "--build"])
            .arg(&stage)
            .arg(&deb),
    )?;
    println!("{}", deb.display());
    Ok(deb)
}

fn control(version: &str, arch: &str) -> String {
    format!(
        "Package: {NAME}\n\
         Version: {version}\n\
         Architecture: {arch}\n\
         Maintainer: snakepit-agent developers <snakepit-agent@localhost>\n\
         Depends: libc6, libgcc-s1, adduser\n\
         Suggests: prometheus\n\
         Section: admin\n\
         Priority: optional\n\
         Description: eBPF observability for Snakepit deployments\n \
         A daemon that attaches to the Snakepit deployments (an Elixir BEAM running\n \
         pools of Python gRPC workers) of the host, with no code change, and reports\n \
         their calls, pools, workers and crashes from the kernel and the wire.\n"
    )
}

fn dpkg_arch() -> Result<String> {
    let out = Command::new("dpkg")
        .arg("--print-architecture")
        .output()
        .context("running dpkg --print-architecture")?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn install(src: &Path, dst: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = dst.parent() {
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    }
    std::fs::copy(src, dst).with_context(|| format!("copying {}", src.display()))?;
    std::fs::set_permissions(dst, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_packaged_source_file_exists_except_the_build_output() {
        let root = crate::workspace_root();
        for (src, _, _) in FILES {
            if src.starts_with("target/") {
                continue;
            }
            assert!(root.join(src).is_file(), "{src} is missing");
        }
    }

    #[test]
    fn control_has_the_fields_dpkg_requires() {
        let c = control("0.1.0", "amd64");
        for field in [
            "Package:",
            "Version:",
            "Architecture:",
            "Maintainer:",
            "Description:",
        ] {
            assert!(c.contains(field), "{field}");
        }
        assert!(c.ends_with('\n'));
    }
}
