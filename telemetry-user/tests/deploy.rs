//! The deployment files in deploy/ agree with each other and with the agent: the
//! systemd unit, the Dockerfile and the DaemonSet grant exactly the capabilities the
//! agent checks for (`privileges::REQUIRED`), mount what it reads, and the packaged
//! config parses and documents every key. No root needed.
use serde_yaml::Value;
use snakepit_agent::config::Config;
use snakepit_agent::privileges::required_names;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .expect("workspace root")
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("reading {rel}: {e}"))
}

fn required() -> BTreeSet<String> {
    required_names().into_iter().map(String::from).collect()
}

/// `Key=` values of a unit file (every occurrence, space-separated words).
fn unit_words(unit: &str, key: &str) -> BTreeSet<String> {
    unit.lines()
        .filter_map(|l| l.strip_prefix(&format!("{key}=")))
        .flat_map(|v| v.split_whitespace().map(String::from))
        .collect()
}

#[test]
fn the_unit_grants_exactly_the_checked_capabilities_and_is_hardened() {
    let unit = read("deploy/snakepit-agent.service");
    assert_eq!(unit_words(&unit, "AmbientCapabilities"), required());
    assert_eq!(unit_words(&unit, "CapabilityBoundingSet"), required());
    for line in [
        "User=snakepit-agent",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "ReadWritePaths=/var/lib/snakepit-agent",
        "Restart=on-failure",
        "ExecReload=/bin/kill -HUP $MAINPID",
    ] {
        assert!(unit.lines().any(|l| l == line), "unit lacks {line}");
    }
}

#[test]
fn the_unit_verifies_with_systemd_analyze() {
    // The packaged unit names /usr/bin/snakepit-agent; verify a copy pointing at any
    // existing executable (verify checks that ExecStart exists).
    let unit = read("deploy/snakepit-agent.service");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("snakepit-agent.service");
    std::fs::write(&path, unit.replace("/usr/bin/snakepit-agent", "/bin/true")).expect("write");
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze is missing: `cargo xtask setup` installs systemd");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze verify: {stderr}");
    assert!(
        !stderr.contains("snakepit-agent.service"),
        "warnings: {stderr}"
    );
}

#[test]
fn the_dockerfile_adds_exactly_the_checked_capabilities() {
    let docker = read("deploy/Dockerfile");
    let added: BTreeSet<String> = docker
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("--cap-add="))
        .map(|c| format!("CAP_{c}"))
        .collect();
    assert_eq!(added, required());
    assert!(docker.contains("--cap-drop=ALL") && docker.contains("--pid=host"));
    for mount in ["/sys/kernel/btf", "/sys/kernel/tracing", "/sys/fs/bpf"] {
        assert!(docker.contains(&format!("-v {mount}:{mount}")), "{mount}");
    }
}

#[test]
fn the_daemonset_matches_the_unit_capabilities_and_mounts() {
    let ds: Value = serde_yaml::from_str(&read("deploy/kubernetes/daemonset.yaml")).expect("yaml");
    assert_eq!(ds["kind"], "DaemonSet");
    let spec = &ds["spec"]["template"]["spec"];
    assert_eq!(spec["hostPID"], true, "hostPID: other pods' /proc entries");
    let container = &spec["containers"][0];
    let caps = &container["securityContext"]["capabilities"];
    let added: BTreeSet<String> = caps["add"]
        .as_sequence()
        .expect("capabilities.add")
        .iter()
        .filter_map(|c| c.as_str().map(|c| format!("CAP_{c}")))
        .collect();
    assert_eq!(added, required());
    assert_eq!(caps["drop"][0], "ALL");
    assert_eq!(
        container["securityContext"]["allowPrivilegeEscalation"],
        false
    );
    // Every kernel file system the agent reads is mounted from the host, same path.
    let volumes = spec["volumes"].as_sequence().expect("volumes");
    let mounts = container["volumeMounts"]
        .as_sequence()
        .expect("volumeMounts");
    for path in ["/sys/kernel/btf", "/sys/kernel/tracing", "/sys/fs/bpf"] {
        let mount = mounts
            .iter()
            .find(|m| m["mountPath"] == path)
            .unwrap_or_else(|| panic!("no volumeMount at {path}"));
        let volume = volumes
            .iter()
            .find(|v| v["name"] == mount["name"])
            .unwrap_or_else(|| panic!("no volume for {path}"));
        assert_eq!(volume["hostPath"]["path"], path);
    }
    let ann = &ds["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(ann["prometheus.io/scrape"], "true");
    assert_eq!(ann["prometheus.io/port"], "9464");
    assert_eq!(ann["prometheus.io/path"], "/metrics");
}

/// Every key of the agent's configuration, as `section.key` (from serializing the
/// defaults, so a key added to the code shows up here).
fn config_keys() -> Vec<String> {
    let value = toml::Value::try_from(Config::default()).expect("config serializes");
    let mut keys = Vec::new();
    for (section, table) in value.as_table().expect("table") {
        if let Some(t) = table.as_table() {
            keys.extend(t.keys().map(|k| format!("{section}.{k}")));
        }
    }
    keys
}

#[test]
fn the_packaged_config_parses_serves_on_loopback_and_documents_every_key() {
    let text = read("deploy/config.toml");
    let cfg = Config::from_toml(&text).expect("deploy/config.toml");
    assert!(cfg.http.enabled, "the packaged endpoint is on");
    assert!(cfg.http.listen.ip().is_loopback(), "{}", cfg.http.listen);
    assert_eq!(
        cfg.output.path.as_deref(),
        Some(Path::new("/var/lib/snakepit-agent/events.jsonl"))
    );
    let mut section = String::new();
    let mut documented = BTreeSet::new();
    for line in text.lines() {
        let l = line.trim_start_matches('#').trim();
        if let Some(s) = l.strip_prefix('[').and_then(|s| s.split(']').next()) {
            if !s.starts_with('[') && !line.starts_with('#') {
                section = s.to_string();
            }
            continue;
        }
        if let Some((key, _)) = l.split_once('=') {
            documented.insert(format!("{section}.{}", key.trim()));
        }
    }
    let missing: Vec<String> = config_keys()
        .into_iter()
        .filter(|k| !documented.contains(k))
        .collect();
    assert!(
        missing.is_empty(),
        "deploy/config.toml does not document {missing:?}"
    );
}
