//! End-to-end: a deployment in its own PID, mount and network namespaces, in a
//! Kubernetes-shaped cgroup, as a container runtime starts one (`unshare`, loopback
//! up). The agent on the host discovers the BEAM and its workers with both pids, the
//! namespaces and the container/pod identity, pairs the loopback connections inside
//! the namespace and reports every call.
use serde_json::Value;
use snakepit_testkit::agent::{events_named, Agent};
use snakepit_testkit::demo::{Demo, DemoOptions, LoadSpec};
use snakepit_testkit::{require, scratch_dir};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

const CONTAINER_ID: &str = "5d3c2b1a9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8b7a6f5e4d3c2b";
const POD_UID: &str = "0c6a1c2d-3b4f-4a5e-9c8d-7f6e5d4c3b2a";
/// A cgroup v1 hierarchy every kernel with cgroups has (this host runs v1).
const PIDS_CGROUP: &str = "/sys/fs/cgroup/pids";

/// The Kubernetes-shaped cgroup (cgroupfs driver), removed when the test ends.
struct Cgroup(PathBuf);

impl Drop for Cgroup {
    fn drop(&mut self) {
        // Empty once the deployment is gone.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.0).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // pod<uid>, besteffort, kubepods: each removed when empty.
        for dir in self.0.ancestors().skip(1).take(3) {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

fn ns_inode(pid: &str, ns: &str) -> u64 {
    let link = std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).expect("ns link");
    let text = link.to_string_lossy().into_owned();
    text.split_once(":[")
        .and_then(|(_, r)| r.strip_suffix(']'))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("odd ns link {text}"))
}

/// A wrapper script: into `cgroup` (when given), then new pid/mount/net namespaces
/// with loopback up, then `exec "$@" EXTRA` (erl becomes pid 1 of the namespace).
fn wrapper(dir: &Path, name: &str, cgroup: Option<&Path>, extra: &str) -> Vec<String> {
    for tool in ["/usr/bin/unshare", "/usr/sbin/ip"] {
        assert!(
            Path::new(tool).exists(),
            "{tool} is missing (util-linux, iproute2): run `cargo xtask setup`"
        );
    }
    let join = cgroup
        .map(|c| format!("echo $$ > {}/cgroup.procs\n", c.display()))
        .unwrap_or_default();
    let script = dir.join(name);
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nset -e\n{join}\
             exec unshare --pid --fork --mount-proc --net sh -c 'ip link set lo up && exec \"$@\"' sh \"$@\" {extra}\n"
        ),
    )
    .expect("writing the wrapper");
    vec!["sh".into(), script.display().to_string()]
}

fn meta_u64(e: &Value, k: &str) -> Option<u64> {
    e["metadata"][k].as_u64()
}

#[test]
fn a_namespaced_deployment_is_seen_with_both_pids_its_namespaces_and_its_pod() {
    require::root_and_bpf();
    assert!(
        Path::new(PIDS_CGROUP).join("cgroup.procs").exists(),
        "no cgroup v1 pids hierarchy at {PIDS_CGROUP}: the test puts the deployment in a pod-shaped cgroup there"
    );
    let dir = scratch_dir("containers");
    let cgroup = Path::new(PIDS_CGROUP)
        .join("kubepods/besteffort")
        .join(format!("pod{POD_UID}"))
        .join(CONTAINER_ID);
    std::fs::create_dir_all(&cgroup).expect("creating the pod cgroup");
    let _cgroup = Cgroup(cgroup.clone());

    let agent = Agent::start(&dir, &[]).expect("agent start");
    let mut demo = Demo::start(&DemoOptions {
        grpc_workers: 2,
        pipe_workers: 1,
        log: Some(dir.join("beam.log")),
        wrapper: wrapper(&dir, "container.sh", Some(&cgroup), ""),
        ..DemoOptions::default()
    })
    .expect("demo start");
    let status = demo
        .wait_ready(Duration::from_secs(60))
        .expect("demo ready");
    // The demo reports pids as it sees them: inside its namespace.
    assert_eq!(status.beam_pid, 1, "erl is the namespace's init");
    std::thread::sleep(Duration::from_millis(500));
    let spec = LoadSpec::new(60, 2_000, &[("echo", 3), ("fail", 1), ("stream", 1)]);
    let truth = demo
        .load_truth(&spec, &dir.join("ground_truth.jsonl"))
        .expect("load");
    // Host pids of the namespaced workers, by their pid inside, from the events.
    let events_now = agent.events();
    let workers: HashMap<u64, u64> =
        events_named(&events_now, &["snakepit", "agent", "worker_discovered"])
            .into_iter()
            .filter_map(|e| Some((meta_u64(e, "worker_ns_pid")?, meta_u64(e, "worker_pid")?)))
            .collect();
    // Checked while they run: the host's /proc agrees (NSpid: host ... inner).
    for w in &status.workers {
        let host = workers.get(&u64::from(w.os_pid)).unwrap_or_else(|| {
            panic!(
                "worker {} (ns pid {}) not discovered with its ns pid: {workers:?}",
                w.worker_id, w.os_pid
            )
        });
        let st = std::fs::read_to_string(format!("/proc/{host}/status")).expect("status");
        let nspid = st
            .lines()
            .find(|l| l.starts_with("NSpid:"))
            .unwrap_or_default();
        assert!(
            nspid.ends_with(&format!("\t{}", w.os_pid)),
            "host pid {host}: {nspid}"
        );
    }
    let some_worker = workers.values().next().expect("a worker").to_string();
    let (pid_ns, net_ns) = (ns_inode(&some_worker, "pid"), ns_inode(&some_worker, "net"));
    demo.stop().expect("demo stop");
    std::thread::sleep(Duration::from_millis(1_000));
    let events = agent.stop().expect("agent stop");

    assert_ne!(
        pid_ns,
        ns_inode("self", "pid"),
        "the workers share our pid namespace"
    );
    assert_ne!(
        net_ns,
        ns_inode("self", "net"),
        "the workers share our network"
    );
    let found: Vec<&Value> = events_named(&events, &["snakepit", "agent", "worker_discovered"])
        .into_iter()
        .chain(events_named(
            &events,
            &["snakepit", "agent", "beam_discovered"],
        ))
        .filter(|e| meta_u64(e, "pid_ns") == Some(pid_ns))
        .collect();
    assert_eq!(
        found.len(),
        status.workers.len() + 1,
        "BEAM + workers in the namespace"
    );
    for e in &found {
        assert_eq!(meta_u64(e, "net_ns"), Some(net_ns), "{e}");
        assert_eq!(e["metadata"]["container_id"], CONTAINER_ID, "{e}");
        assert_eq!(e["metadata"]["pod_uid"], POD_UID, "{e}");
    }
    let beam = events_named(&events, &["snakepit", "agent", "beam_discovered"])
        .into_iter()
        .find(|e| meta_u64(e, "pid_ns") == Some(pid_ns))
        .expect("the namespaced BEAM");
    assert_eq!(meta_u64(beam, "beam_ns_pid"), Some(1));
    assert_ne!(meta_u64(beam, "beam_pid"), Some(1), "the host pid");

    // Loopback inside the namespace: every call, on connections between host pids.
    let host_workers: HashSet<u64> = workers.values().copied().collect();
    let ends: Vec<&Value> = events_named(&events, &["snakepit", "call", "stop"])
        .into_iter()
        .chain(events_named(&events, &["snakepit", "call", "exception"]))
        .collect();
    let reported: HashSet<&str> = ends
        .iter()
        .filter_map(|e| e["metadata"]["correlation_id"].as_str())
        .collect();
    let missing: Vec<&str> = truth
        .iter()
        .map(|g| g.correlation_id.as_str())
        .filter(|c| !reported.contains(c))
        .collect();
    assert!(truth.len() >= 60, "load made {} calls", truth.len());
    assert!(
        missing.is_empty(),
        "{} of {} calls not reported",
        missing.len(),
        truth.len()
    );
    for e in &ends {
        if let Some(p) = meta_u64(e, "worker_pid") {
            assert!(
                host_workers.contains(&p),
                "a call on worker pid {p}, not a host pid of the namespace's workers: {e}"
            );
        }
    }
}

/// Two deployments in two network namespaces with the same BEAM port: the same
/// loopback addresses on both sides. Every connection and call must join a BEAM and
/// a worker of the same namespace.
#[test]
fn two_namespaces_with_the_same_loopback_ports_are_not_mixed_up() {
    require::root_and_bpf();
    let dir = scratch_dir("containers-two");
    let agent = Agent::start(&dir, &[]).expect("agent start");
    let mut demos = Vec::new();
    for name in ["a", "b"] {
        let mut demo = Demo::start(&DemoOptions {
            grpc_workers: 2,
            pipe_workers: 0,
            instance_name: format!("ns_{name}"),
            log: Some(dir.join(format!("beam-{name}.log"))),
            wrapper: wrapper(&dir, &format!("{name}.sh"), None, "--beam-port 50999"),
            ..DemoOptions::default()
        })
        .expect("demo start");
        let st = demo
            .wait_ready(Duration::from_secs(60))
            .expect("demo ready");
        assert_eq!(st.beam_port, 50999, "both BEAMs on the same port");
        demos.push(demo);
    }
    std::thread::sleep(Duration::from_millis(500));
    let spec = LoadSpec::new(40, 1_500, &[("echo", 3), ("stream", 1)]);
    let mut calls = 0;
    for (i, demo) in demos.iter_mut().enumerate() {
        calls += demo
            .load_truth(&spec, &dir.join(format!("truth-{i}.jsonl")))
            .expect("load")
            .len();
    }
    for demo in demos {
        demo.stop().expect("demo stop");
    }
    std::thread::sleep(Duration::from_millis(1_000));
    let events = agent.stop().expect("agent stop");

    // pid -> pid namespace, for every BEAM and worker found.
    let mut ns_of: HashMap<u64, u64> = HashMap::new();
    for e in events_named(&events, &["snakepit", "agent", "worker_discovered"]) {
        if let (Some(p), Some(n)) = (meta_u64(e, "worker_pid"), meta_u64(e, "pid_ns")) {
            ns_of.insert(p, n);
        }
    }
    for e in events_named(&events, &["snakepit", "agent", "beam_discovered"]) {
        if let (Some(p), Some(n)) = (meta_u64(e, "beam_pid"), meta_u64(e, "pid_ns")) {
            ns_of.insert(p, n);
        }
    }
    assert_eq!(
        ns_of.values().collect::<HashSet<_>>().len(),
        2,
        "two namespaces: {ns_of:?}"
    );
    let same_ns = |e: &Value| {
        let b = meta_u64(e, "beam_pid").and_then(|p| ns_of.get(&p));
        let w = meta_u64(e, "worker_pid").and_then(|p| ns_of.get(&p));
        b.is_some() && b == w
    };
    let conns = events_named(&events, &["snakepit", "agent", "connection_opened"]);
    assert!(conns.len() >= 4, "{} connections", conns.len());
    for c in &conns {
        assert!(same_ns(c), "a connection across namespaces: {c}");
    }
    let ends: Vec<&Value> = events_named(&events, &["snakepit", "call", "stop"]);
    assert_eq!(ends.len(), calls, "every call of both loads, once");
    for e in &ends {
        if meta_u64(e, "beam_pid").is_some() {
            assert!(same_ns(e), "a call across namespaces: {e}");
        }
    }
}
