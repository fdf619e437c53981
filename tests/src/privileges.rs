//! Running the agent as an unprivileged user with exactly the capabilities the
//! packaged systemd unit grants (setpriv with ambient capabilities).
use std::path::Path;

/// `AmbientCapabilities=` of a unit file, e.g. `["CAP_BPF", ...]`.
pub fn unit_caps(unit_text: &str) -> Vec<String> {
    unit_text
        .lines()
        .filter_map(|l| l.strip_prefix("AmbientCapabilities="))
        .flat_map(|v| v.split_whitespace().map(String::from))
        .collect()
}

/// The capabilities of deploy/snakepit-agent.service.
pub fn packaged_caps() -> Vec<String> {
    let path = crate::workspace_root().join("deploy/snakepit-agent.service");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let caps = unit_caps(&text);
    assert!(!caps.is_empty(), "{} grants no capability", path.display());
    caps
}

/// `setpriv` arguments that exec a program as `user:group` holding exactly `caps`
/// (inheritable, ambient and bounding set), with no supplementary groups.
pub fn setpriv_prefix(user: &str, group: &str, caps: &[String]) -> Vec<String> {
    assert!(
        Path::new("/usr/bin/setpriv").exists(),
        "setpriv (util-linux) is missing: run `cargo xtask setup`"
    );
    let list: String = std::iter::once("-all".to_string())
        .chain(
            caps.iter()
                .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_ascii_lowercase())),
        )
        .collect::<Vec<_>>()
        .join(",");
    [
        "setpriv".to_string(),
        format!("--reuid={user}"),
        format!("--regid={group}"),
        "--clear-groups".to_string(),
        format!("--inh-caps={list}"),
        format!("--ambient-caps={list}"),
        format!("--bounding-set={list}"),
        "--".to_string(),
    ]
    .to_vec()
}

/// Makes `dir` writable by the unprivileged agent (its event file goes there).
pub fn open_up(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", dir.display()));
}

/// `CapEff` and the real uid of a running process.
pub fn caps_and_uid(pid: u32) -> (u64, u32) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    let caps = u64::from_str_radix(&field("CapEff:"), 16).unwrap_or(u64::MAX);
    let uid = field("Uid:")
        .split_whitespace()
        .next()
        .and_then(|u| u.parse().ok())
        .unwrap_or(u32::MAX);
    (caps, uid)
}

/// The kernel's bit mask for capability names (`CAP_BPF` ...).
pub fn cap_mask(caps: &[String]) -> u64 {
    caps.iter()
        .map(|c| match c.as_str() {
            "CAP_DAC_OVERRIDE" => 1,
            "CAP_DAC_READ_SEARCH" => 2,
            "CAP_SYS_PTRACE" => 19,
            "CAP_SYS_ADMIN" => 21,
            "CAP_PERFMON" => 38,
            "CAP_BPF" => 39,
            other => panic!("no bit known for {other}"),
        })
        .fold(0u64, |m, bit| m | (1u64 << bit))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setpriv_arguments_hold_exactly_the_given_caps() {
        let p = setpriv_prefix(
            "nobody",
            "nogroup",
            &["CAP_BPF".into(), "CAP_SYS_PTRACE".into()],
        );
        assert!(p.contains(&"--ambient-caps=-all,+bpf,+sys_ptrace".to_string()));
        assert_eq!(p.last().map(String::as_str), Some("--"));
        assert_eq!(cap_mask(&["CAP_BPF".into()]), 1 << 39);
    }
}
