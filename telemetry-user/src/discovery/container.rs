//! Which container a process runs in, seen from the host: its pid inside its own pid
//! namespace (`NSpid` in /proc/PID/status), its pid and network namespaces, and the
//! container and pod identity that runtimes write into its cgroup path.
use serde::Serialize;

use super::source::ProcSource;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct NsIdentity {
    /// The pid inside the process's own pid namespace (the innermost `NSpid`); None
    /// when it is the host pid (not in a nested pid namespace).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ns_pid: Option<u32>,
    /// Namespace inodes (`/proc/PID/ns/{pid,net}`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid_ns: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub net_ns: Option<u64>,
    /// A container runtime's 64-hex id from the cgroup path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    /// A Kubernetes pod's uid from the cgroup path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
}

impl NsIdentity {
    /// Reads what is readable; unreadable parts stay None.
    pub fn read(src: &ProcSource, pid: u32) -> NsIdentity {
        let dir = src.root().join(pid.to_string());
        let status = std::fs::read_to_string(dir.join("status")).unwrap_or_default();
        let cgroup = std::fs::read_to_string(dir.join("cgroup")).unwrap_or_default();
        let ns = |name: &str| {
            std::fs::read_link(dir.join("ns").join(name))
                .ok()
                .and_then(|l| parse_ns_link(&l.to_string_lossy()))
        };
        let (container_id, pod_uid) = parse_cgroup(&cgroup);
        NsIdentity {
            ns_pid: parse_nspid(&status).filter(|inner| *inner != pid),
            pid_ns: ns("pid"),
            net_ns: ns("net"),
            container_id,
            pod_uid,
        }
    }
}

/// The innermost pid of `NSpid:\t4242\t7` (7), or the only one.
pub fn parse_nspid(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))?
        .split_whitespace()
        .last()?
        .parse()
        .ok()
}

/// `net:[4026531840]` -> 4026531840.
pub fn parse_ns_link(link: &str) -> Option<u64> {
    link.split_once(":[")?.1.strip_suffix(']')?.parse().ok()
}

/// (container id, pod uid) from /proc/PID/cgroup (v2 `0::/path` or any v1 line).
/// Shapes: docker (`/docker/<id>`, `docker-<id>.scope`), containerd
/// (`cri-containerd-<id>.scope`), CRI-O (`crio-<id>.scope`), podman
/// (`libpod-<id>.scope`), and Kubernetes pods (`kubepods-...-pod<uid>.slice` with
/// the systemd driver, `/kubepods/<qos>/pod<uid>/<id>` with cgroupfs).
pub fn parse_cgroup(content: &str) -> (Option<String>, Option<String>) {
    let mut container = None;
    let mut pod = None;
    for line in content.lines() {
        let Some(path) = line.splitn(3, ':').nth(2) else {
            continue;
        };
        for seg in path.split('/') {
            if let Some(id) = container_segment(seg) {
                container = Some(id);
            }
            if let Some(uid) = pod_segment(seg) {
                pod = Some(uid);
            }
        }
        if container.is_some() {
            break;
        }
    }
    (container, pod)
}

fn container_segment(seg: &str) -> Option<String> {
    let seg = seg.strip_suffix(".scope").unwrap_or(seg);
    // conmon is CRI-O's monitor process, not the container.
    if seg.starts_with("crio-conmon-") {
        return None;
    }
    let id = [
        "docker-",
        "cri-containerd-",
        "crio-",
        "libpod-",
        "containerd-",
    ]
    .iter()
    .find_map(|p| seg.strip_prefix(p))
    .unwrap_or(seg);
    (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_string())
}

fn pod_segment(seg: &str) -> Option<String> {
    if !seg.starts_with("kubepods") && !seg.starts_with("pod") {
        return None;
    }
    let seg = seg.strip_suffix(".slice").unwrap_or(seg);
    let uid = seg.rsplit_once("pod").map(|(_, u)| u)?;
    // The systemd driver writes the uid's dashes as underscores.
    let uid = uid.replace('_', "-");
    let shaped = uid.len() == 36
        && uid.bytes().enumerate().all(|(i, b)| {
            matches!(i, 8 | 13 | 18 | 23) == (b == b'-') && (b == b'-' || b.is_ascii_hexdigit())
        });
    shaped.then_some(uid)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f4c2b1a9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8b7a6f5e4d3c2b";
    const UID: &str = "8e6a1c2d-3b4f-4a5e-9c8d-7f6e5d4c3b2a";

    fn both(path: &str) -> (Option<String>, Option<String>) {
        parse_cgroup(&format!("0::{path}\n"))
    }

    #[test]
    fn docker_shapes() {
        assert_eq!(both(&format!("/docker/{ID}")), (Some(ID.into()), None));
        assert_eq!(
            both(&format!("/system.slice/docker-{ID}.scope")),
            (Some(ID.into()), None)
        );
        // cgroup v1: the id in every controller's line.
        let v1 = format!("12:pids:/docker/{ID}\n11:memory:/docker/{ID}\n");
        assert_eq!(parse_cgroup(&v1).0.as_deref(), Some(ID));
    }

    #[test]
    fn kubernetes_systemd_driver_with_containerd_and_crio() {
        let uid_ = UID.replace('-', "_");
        let containerd = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/cri-containerd-{ID}.scope"
        );
        assert_eq!(both(&containerd), (Some(ID.into()), Some(UID.into())));
        let crio = format!("/kubepods.slice/kubepods-pod{uid_}.slice/crio-{ID}.scope");
        assert_eq!(both(&crio), (Some(ID.into()), Some(UID.into())));
        let conmon = format!("/kubepods.slice/kubepods-pod{uid_}.slice/crio-conmon-{ID}.scope");
        assert_eq!(both(&conmon), (None, Some(UID.into())));
    }

    #[test]
    fn kubernetes_cgroupfs_driver_and_podman() {
        let cgroupfs = format!("/kubepods/besteffort/pod{UID}/{ID}");
        assert_eq!(both(&cgroupfs), (Some(ID.into()), Some(UID.into())));
        let podman = format!(
            "/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope/container"
        );
        assert_eq!(both(&podman), (Some(ID.into()), None));
    }

    #[test]
    fn host_processes_have_no_identity() {
        assert_eq!(
            both("/user.slice/user-0.slice/session-1.scope"),
            (None, None)
        );
        assert_eq!(both("/"), (None, None));
        assert_eq!(parse_cgroup(""), (None, None));
        // Not 64 hex digits, not a uid.
        assert_eq!(both("/docker/abc"), (None, None));
        assert_eq!(both("/kubepods/podnot-a-uid/x"), (None, None));
    }

    #[test]
    fn nspid_and_namespace_links() {
        assert_eq!(parse_nspid("Name:\tx\nNSpid:\t4242\t7\n"), Some(7));
        assert_eq!(parse_nspid("NSpid:\t4242\n"), Some(4242));
        assert_eq!(parse_nspid("Name:\tx\n"), None);
        assert_eq!(parse_ns_link("net:[4026531840]"), Some(4026531840));
        assert_eq!(parse_ns_link("garbage"), None);
    }

    #[test]
    fn our_own_identity_reads_from_proc() {
        let me = NsIdentity::read(&ProcSource::system(), std::process::id());
        assert!(me.pid_ns.is_some() && me.net_ns.is_some(), "{me:?}");
    }
}
