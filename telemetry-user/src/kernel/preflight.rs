//! What `snakepit-agent check` reports before loading anything.
use std::path::Path;

use super::{btf::VMLINUX_BTF, loader::required_tracepoints};

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Preflight {
    pub is_root: bool,
    pub cap_bpf: bool,
    pub cap_perfmon: bool,
    pub cap_sys_admin: bool,
    pub kernel_release: String,
    pub btf_present: bool,
    pub tracefs_mounted: bool,
    pub bpffs_mounted: bool,
    /// Every tracepoint the probes attach to, and whether the kernel has it
    /// (None: unknown, tracefs not mounted; the loader mounts it).
    pub tracepoints: Vec<(String, Option<bool>)>,
}

impl Preflight {
    /// Human-readable blockers; empty when loading should work.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if !(self.is_root || (self.cap_bpf && self.cap_perfmon) || self.cap_sys_admin) {
            out.push("not root and missing CAP_BPF+CAP_PERFMON".to_string());
        }
        if !self.btf_present {
            out.push(format!(
                "{VMLINUX_BTF} missing: exit codes and fork detection degrade"
            ));
        }
        for (tp, present) in &self.tracepoints {
            if *present == Some(false) {
                out.push(format!("tracepoint {tp} not available"));
            }
        }
        out
    }
}

fn mounted(mounts: &str, path: &str, fstype: &str) -> bool {
    mounts.lines().any(|l| {
        let mut f = l.split_whitespace();
        f.nth(1) == Some(path) && f.next() == Some(fstype)
    })
}

fn cap_eff() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0)
}

pub fn preflight() -> Preflight {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let caps = cap_eff();
    let has = |c: u32| caps & (1u64 << c) != 0;
    let tracefs = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .into_iter()
        .find(|p| Path::new(p).join("events").is_dir());
    let tracepoints = required_tracepoints()
        .into_iter()
        .map(|tp| {
            let present = match (tp.strip_prefix("raw:"), tracefs) {
                // Raw tracepoints have no tracefs entry; the classic event of the
                // same name exists exactly when the raw one does.
                (Some(raw), Some(root)) => Some(
                    Path::new(root)
                        .join("events/sched")
                        .join(raw)
                        .join("id")
                        .exists(),
                ),
                (None, Some(root)) => {
                    Some(Path::new(root).join("events").join(&tp).join("id").exists())
                }
                (_, None) => None,
            };
            (tp, present)
        })
        .collect();
    Preflight {
        // SAFETY: geteuid has no preconditions.
        is_root: unsafe { libc::geteuid() } == 0,
        cap_bpf: has(CAP_BPF),
        cap_perfmon: has(CAP_PERFMON),
        cap_sys_admin: has(CAP_SYS_ADMIN),
        kernel_release: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_default(),
        btf_present: Path::new(VMLINUX_BTF).exists(),
        tracefs_mounted: tracefs.is_some(),
        bpffs_mounted: mounted(&mounts, "/sys/fs/bpf", "bpf"),
        tracepoints,
    }
}
