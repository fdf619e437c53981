//! End-to-end: least privilege, proven. The agent runs as `nobody` holding exactly
//! the packaged unit's capabilities and reports every call of a demo load; without
//! any one of them, `run` and `check` name it and exit non-zero; a denied tracefs is
//! reported as denied, not as missing; denied /proc reads are reported, not swallowed.
use serde_json::Value;
use snakepit_testkit::agent::{agent_bin, events_named, Agent};
use snakepit_testkit::demo::{Demo, LoadSpec};
use snakepit_testkit::privileges::{
    cap_mask, caps_and_uid, open_up, packaged_caps, setpriv_prefix,
};
use snakepit_testkit::{require, scratch_dir};
use std::collections::HashSet;
use std::process::{Command, Output};
use std::time::Duration;

const NOBODY: (&str, &str) = ("nobody", "nogroup");

/// The agent binary as `nobody` with `caps`, with `args`.
fn agent_as_nobody(caps: &[String], args: &[&str]) -> Output {
    let prefix = setpriv_prefix(NOBODY.0, NOBODY.1, caps);
    Command::new(&prefix[0])
        .args(&prefix[1..])
        .arg(agent_bin())
        .args(args)
        .output()
        .expect("running setpriv")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn as_nobody_with_exactly_the_units_capabilities_every_call_is_reported() {
    require::root_and_bpf();
    let caps = packaged_caps();
    let dir = scratch_dir("privileges-least");
    open_up(&dir);
    let prefix = setpriv_prefix(NOBODY.0, NOBODY.1, &caps);
    let agent = Agent::start_prefixed(&dir, &prefix, &[]).expect("agent start as nobody");
    // It really runs unprivileged: uid nobody, effective capabilities = the unit's.
    let (eff, uid) = caps_and_uid(agent.pid());
    assert_eq!(eff, cap_mask(&caps), "CapEff {eff:x}");
    assert_eq!(uid, 65534, "uid");

    let (mut demo, _) = Demo::start_ready(&dir, 2, 1).expect("demo start");
    std::thread::sleep(Duration::from_millis(500));
    let spec = LoadSpec::new(60, 2_000, &[("echo", 3), ("fail", 1), ("stream", 1)]);
    let truth = demo
        .load_truth(&spec, &dir.join("ground_truth.jsonl"))
        .expect("load");
    demo.stop().expect("demo stop");
    std::thread::sleep(Duration::from_millis(1_000));
    let events = agent.stop().expect("agent stop");

    assert!(truth.len() >= 60, "load made only {} calls", truth.len());
    let reported: HashSet<&str> = events_named(&events, &["snakepit", "call", "stop"])
        .into_iter()
        .chain(events_named(&events, &["snakepit", "call", "exception"]))
        .filter_map(|e| e["metadata"]["correlation_id"].as_str())
        .collect();
    let missing: Vec<&str> = truth
        .iter()
        .map(|g| g.correlation_id.as_str())
        .filter(|c| !reported.contains(c))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} calls not reported as nobody: {:?}",
        missing.len(),
        truth.len(),
        &missing[..missing.len().min(5)]
    );
    let stats: Vec<&Value> = events_named(&events, &["snakepit", "agent", "stats"]);
    let last = stats.last().expect("a stats event");
    assert_eq!(
        last["measurements"]["proc_permission_errors"], 0,
        "denied /proc reads with the unit's capabilities"
    );
}

#[test]
fn without_any_one_capability_run_and_check_name_it_and_fail() {
    require::root_and_bpf();
    let caps = packaged_caps();
    for dropped in &caps {
        let fewer: Vec<String> = caps.iter().filter(|c| *c != dropped).cloned().collect();
        let check = agent_as_nobody(&fewer, &["check", "--no-load"]);
        assert!(!check.status.success(), "check without {dropped} exited 0");
        assert!(
            text(&check).contains(&format!("problem: missing capabilities: {dropped}")),
            "check without {dropped}:\n{}",
            text(&check)
        );
        let run = agent_as_nobody(&fewer, &["run", "--duration", "1", "--output", "/dev/null"]);
        assert!(!run.status.success(), "run without {dropped} exited 0");
        let err = String::from_utf8_lossy(&run.stderr);
        assert!(
            err.contains("missing capabilities") && err.contains(dropped.as_str()),
            "run without {dropped}: {err}"
        );
        // The cause is printed once.
        assert_eq!(err.matches(dropped.as_str()).count(), 1, "{err}");
    }
    // With all of them, check passes its privilege checks (no probe load here).
    let check = agent_as_nobody(&caps, &["check", "--no-load"]);
    assert!(
        check.status.success(),
        "check with the unit's caps:\n{}",
        text(&check)
    );
}

#[test]
fn a_denied_tracefs_is_reported_as_denied_not_as_missing() {
    require::root_and_bpf();
    let caps: Vec<String> = ["CAP_BPF", "CAP_PERFMON"].map(String::from).to_vec();
    let check = agent_as_nobody(&caps, &["check", "--no-load"]);
    let out = text(&check);
    assert!(!check.status.success());
    assert!(
        out.contains("tracefs             mounted, PERMISSION DENIED"),
        "{out}"
    );
    assert!(out.contains("tracefs: permission denied"), "{out}");
    // (The GPU line may say "not found" about NVML: only tracefs lines count.)
    let tracefs_lines: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("tracefs") || l.starts_with("tracepoint"))
        .collect();
    assert!(
        tracefs_lines
            .iter()
            .all(|l| !l.contains("not mounted") && !l.contains("not found")),
        "{tracefs_lines:#?}"
    );
    // The README no longer claims CAP_SYS_ADMIN is needed.
    assert!(!check_text_mentions_sys_admin_requirement());
}

fn check_text_mentions_sys_admin_requirement() -> bool {
    let readme = std::fs::read_to_string(snakepit_testkit::workspace_root().join("README.md"))
        .expect("README.md");
    readme.contains("CAP_PERFMON + CAP_SYS_ADMIN")
}

#[test]
fn denied_proc_reads_of_a_deployment_are_reported_not_swallowed() {
    require::root_and_bpf();
    let dir = scratch_dir("privileges-proc");
    let (demo, status) = Demo::start_ready(&dir, 1, 0).expect("demo start");
    // Listing /proc/PID/fd works with CAP_DAC_READ_SEARCH; its links need the ptrace
    // check: discovery must say so instead of finding no connection.
    let list = agent_as_nobody(&["CAP_DAC_READ_SEARCH".to_string()], &["list", "--json"]);
    // `check` tests /proc access on a process of the deployment itself.
    let no_ptrace: Vec<String> = packaged_caps()
        .into_iter()
        .filter(|c| c != "CAP_SYS_PTRACE")
        .collect();
    let check = agent_as_nobody(&no_ptrace, &["check", "--no-load"]);
    demo.stop().expect("demo stop");

    let err = String::from_utf8_lossy(&list.stderr);
    assert!(
        err.contains("permission denied") && err.contains("CAP_SYS_PTRACE"),
        "no warning about the deployment's unreadable fds: {err}"
    );
    let deployment: Vec<u32> = std::iter::once(status.beam_pid)
        .chain(status.workers.iter().map(|w| w.os_pid))
        .collect();
    let out = text(&check);
    let denied_line = out
        .lines()
        .find(|l| l.starts_with("/proc access"))
        .unwrap_or_default();
    assert!(
        deployment
            .iter()
            .any(|p| denied_line == format!("/proc access        pid {p}: DENIED")),
        "check did not test a deployment process {deployment:?}: {out}"
    );
    assert!(out.contains("(needs CAP_SYS_PTRACE)"), "{out}");
}
