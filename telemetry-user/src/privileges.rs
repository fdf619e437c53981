//! What the agent needs from the kernel's permission checks, tested for real: the
//! capabilities (docs/deploy.md says why each one), tracefs access (denied is not
//! "not mounted"), and reading another process's /proc entries.
use std::io;
use std::path::{Path, PathBuf};

/// Where the probes' tracepoint ids are read (aya looks here first).
pub const TRACEFS: &str = "/sys/kernel/tracing";

#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error("missing capabilities: {}", names(.0))]
    MissingCaps(Vec<Requirement>),
    #[error(
        "tracefs at {TRACEFS} is mounted but not readable: permission denied \
         (needs CAP_DAC_READ_SEARCH; it is mode 0700 root)"
    )]
    TracefsDenied,
    #[error("cannot read {path} of pid {pid} ({comm}): {cause} (needs {needs})")]
    ProcDenied {
        pid: u32,
        comm: String,
        path: PathBuf,
        cause: io::Error,
        needs: &'static str,
    },
}

fn names(reqs: &[Requirement]) -> String {
    reqs.iter()
        .map(|r| format!("{} ({})", r.name, r.why))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One capability the agent needs, and the ones that stand in for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Requirement {
    pub name: &'static str,
    bit: u32,
    /// Broader capabilities the kernel also accepts for the same checks.
    alternatives: &'static [u32],
    pub why: &'static str,
}

const CAP_DAC_OVERRIDE: u32 = 1;
const CAP_DAC_READ_SEARCH: u32 = 2;
const CAP_SYS_PTRACE: u32 = 19;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// The minimal set, found by experiment (docs/deploy.md): the packaged unit, the
/// Dockerfile and the DaemonSet grant exactly these.
pub const REQUIRED: &[Requirement] = &[
    Requirement {
        name: "CAP_BPF",
        bit: CAP_BPF,
        alternatives: &[CAP_SYS_ADMIN],
        why: "load eBPF programs, create and update their maps",
    },
    Requirement {
        name: "CAP_PERFMON",
        bit: CAP_PERFMON,
        alternatives: &[CAP_SYS_ADMIN],
        why: "attach tracepoints (perf events), read kernel memory in probes",
    },
    Requirement {
        name: "CAP_SYS_PTRACE",
        bit: CAP_SYS_PTRACE,
        alternatives: &[],
        why: "read other users' /proc/PID/fd links, environ and ns (ptrace access check)",
    },
    Requirement {
        name: "CAP_DAC_READ_SEARCH",
        bit: CAP_DAC_READ_SEARCH,
        alternatives: &[CAP_DAC_OVERRIDE],
        why: "list other users' /proc/PID/fd (mode 0500) and read tracefs (mode 0700)",
    },
];

/// The documented names, in order (the unit, Dockerfile and DaemonSet are checked
/// against this list).
pub fn required_names() -> Vec<&'static str> {
    REQUIRED.iter().map(|r| r.name).collect()
}

/// The effective capability set of this process (`CapEff` in /proc/self/status).
pub fn effective_caps() -> u64 {
    parse_cap_eff(&std::fs::read_to_string("/proc/self/status").unwrap_or_default())
}

fn parse_cap_eff(status: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0)
}

/// Whether `caps` satisfies `req` (directly or through a broader capability).
pub fn satisfied(req: &Requirement, caps: u64) -> bool {
    let has = |bit: u32| caps & (1u64 << bit) != 0;
    has(req.bit) || req.alternatives.iter().any(|&b| has(b))
}

/// The requirements `caps` does not meet.
pub fn missing(caps: u64) -> Vec<Requirement> {
    REQUIRED
        .iter()
        .filter(|r| !satisfied(r, caps))
        .copied()
        .collect()
}

/// tracefs as this process sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TracefsState {
    Readable,
    /// Mounted, and reading it was refused.
    Denied,
    NotMounted,
}

pub fn tracefs_state() -> TracefsState {
    let events = Path::new(TRACEFS).join("events");
    match std::fs::read_dir(&events) {
        Ok(_) => TracefsState::Readable,
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => TracefsState::Denied,
        Err(_) => {
            let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
            if is_mounted(&mounts, TRACEFS, "tracefs") {
                TracefsState::Denied
            } else {
                TracefsState::NotMounted
            }
        }
    }
}

fn is_mounted(mounts: &str, path: &str, fstype: &str) -> bool {
    mounts.lines().any(|l| {
        let mut f = l.split_whitespace();
        f.nth(1) == Some(path) && f.next() == Some(fstype)
    })
}

/// Reads what discovery reads of `pid` (its fd links and environ), as discovery
/// does; Ok when every read works. The process must belong to another user for
/// this to prove anything, so callers pick a Snakepit process or pid 1.
pub fn check_proc_access(proc_root: &Path, pid: u32) -> Result<(), PrivilegeError> {
    let comm = std::fs::read_to_string(proc_root.join(pid.to_string()).join("comm"))
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let denied =
        |path: PathBuf, cause: io::Error, needs: &'static str| PrivilegeError::ProcDenied {
            pid,
            comm: comm.clone(),
            path,
            cause,
            needs,
        };
    let fd_dir = proc_root.join(pid.to_string()).join("fd");
    let entries =
        std::fs::read_dir(&fd_dir).map_err(|e| denied(fd_dir.clone(), e, "CAP_DAC_READ_SEARCH"))?;
    // Listing works with CAP_DAC_READ_SEARCH alone; the links need the ptrace check.
    if let Some(entry) = entries.filter_map(|e| e.ok()).next() {
        let path = entry.path();
        std::fs::read_link(&path).map_err(|e| denied(path, e, "CAP_SYS_PTRACE"))?;
    }
    let environ = proc_root.join(pid.to_string()).join("environ");
    std::fs::File::open(&environ)
        .map_err(|e| denied(environ, e, "CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH"))?;
    Ok(())
}

/// A user process other than pid 1 (which sandboxes and LSMs may guard beyond what a
/// capability grants) owned by another user than `euid` when there is one: what
/// `check` tests /proc access on when no Snakepit process runs.
pub fn other_process(proc_root: &Path, euid: u32) -> Option<u32> {
    let mut fallback = None;
    let rd = std::fs::read_dir(proc_root).ok()?;
    for entry in rd.filter_map(|e| e.ok()) {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if pid <= 1 || pid == std::process::id() {
            continue;
        }
        // Kernel threads have an empty cmdline and no fds worth reading.
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if cmdline.is_empty() {
            continue;
        }
        let status = std::fs::read_to_string(entry.path().join("status")).unwrap_or_default();
        let uid = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u32>().ok());
        match uid {
            Some(uid) if uid != euid => return Some(pid),
            _ => fallback = fallback.or(Some(pid)),
        }
    }
    fallback
}

/// What `run` needs before it loads anything: every capability, and a readable
/// tracefs when it is mounted (a missing one is mounted by the loader when allowed).
/// Denied /proc reads of the processes it finds are counted and reported by discovery.
pub fn require_for_run() -> Result<(), PrivilegeError> {
    let miss = missing(effective_caps());
    if !miss.is_empty() {
        return Err(PrivilegeError::MissingCaps(miss));
    }
    if tracefs_state() == TracefsState::Denied {
        return Err(PrivilegeError::TracefsDenied);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_eff_parses_from_status() {
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000000c000080004\n";
        let caps = parse_cap_eff(status);
        // bpf(39), perfmon(38), sys_ptrace(19), dac_read_search(2)
        assert!(missing(caps).is_empty(), "{:?}", missing(caps));
        assert_eq!(parse_cap_eff("garbage"), 0);
    }

    #[test]
    fn missing_names_each_capability_and_accepts_the_broader_ones() {
        let names: Vec<_> = missing(0).iter().map(|r| r.name).collect();
        assert_eq!(names, required_names());
        // CAP_SYS_ADMIN stands in for BPF and PERFMON, never for ptrace.
        let admin_only = 1u64 << CAP_SYS_ADMIN;
        let names: Vec<_> = missing(admin_only).iter().map(|r| r.name).collect();
        assert_eq!(names, vec!["CAP_SYS_PTRACE", "CAP_DAC_READ_SEARCH"]);
        let all = (1u64 << CAP_BPF)
            | (1u64 << CAP_PERFMON)
            | (1u64 << CAP_SYS_PTRACE)
            | (1u64 << CAP_DAC_OVERRIDE);
        assert!(missing(all).is_empty());
        let msg = PrivilegeError::MissingCaps(missing(1u64 << CAP_BPF)).to_string();
        assert!(
            msg.contains("CAP_PERFMON") && !msg.contains("CAP_BPF "),
            "{msg}"
        );
    }

    #[test]
    fn proc_access_of_our_own_process_works_and_a_missing_one_is_named() {
        assert!(check_proc_access(Path::new("/proc"), std::process::id()).is_ok());
        let err = check_proc_access(Path::new("/nonexistent"), 1).expect_err("no such tree");
        assert!(err.to_string().contains("/nonexistent/1/fd"), "{err}");
    }

    #[test]
    fn another_process_is_found_and_never_pid_1_or_ourselves() {
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .expect("sleep");
        let pid = other_process(Path::new("/proc"), euid).expect("a process");
        assert!(pid > 1 && pid != std::process::id());
        let _ = child.kill();
        let _ = child.wait();
    }

    #[test]
    fn mount_table_lookup_matches_path_and_type() {
        let mounts = "tracefs /sys/kernel/tracing tracefs rw 0 0\n";
        assert!(is_mounted(mounts, TRACEFS, "tracefs"));
        assert!(!is_mounted(mounts, "/sys/fs/bpf", "bpf"));
    }
}
