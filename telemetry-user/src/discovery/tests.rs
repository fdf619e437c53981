//! Topology tests over a fake proc tree in a tempdir, plus one scan of the real /proc.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use telemetry_common::{
    FD_PIPE, FD_SOCKET, PID_BEAM, PID_LINEAGE, PID_WATCH_NEW_SOCKETS, PID_WORKER,
};

use super::*;

const LISTEN: u8 = 0x0A;
const ESTAB: u8 = 0x01;

/// A proc tree on disk. Every pid dir gets the same (host-wide) tcp tables, as all
/// processes of one network namespace see.
struct FakeProc {
    dir: tempfile::TempDir,
    socks: Vec<(SocketAddr, SocketAddr, u8, u64)>,
    pids: Vec<u32>,
}

fn hex_addr(a: SocketAddr) -> String {
    let ip = match a {
        SocketAddr::V4(v4) => format!("{:08X}", u32::from_ne_bytes(v4.ip().octets())),
        SocketAddr::V6(v6) => v6
            .ip()
            .octets()
            .chunks(4)
            .map(|c| format!("{:08X}", u32::from_ne_bytes([c[0], c[1], c[2], c[3]])))
            .collect(),
    };
    format!("{ip}:{:04X}", a.port())
}

fn sa(s: &str) -> SocketAddr {
    s.parse().expect("test address")
}

impl FakeProc {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("tempdir"),
            socks: Vec::new(),
            pids: Vec::new(),
        }
    }

    fn path(&self, pid: u32) -> PathBuf {
        self.dir.path().join(pid.to_string())
    }

    fn source(&self) -> ProcSource {
        ProcSource::new(self.dir.path())
    }

    fn add_proc(&mut self, pid: u32, ppid: u32, comm: &str, cmdline: &[&str], env: &[&str]) {
        let p = self.path(pid);
        std::fs::create_dir_all(p.join("fd")).expect("mkdir");
        std::fs::create_dir_all(p.join("net")).expect("mkdir");
        std::fs::create_dir_all(p.join("fdinfo")).expect("mkdir");
        let stat = format!(
            "{pid} ({comm}) S {ppid} {pid} {pid} 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 {} 0 0\n",
            1000 + pid
        );
        std::fs::write(p.join("stat"), stat).expect("write");
        let mut c: Vec<u8> = Vec::new();
        for a in cmdline {
            c.extend_from_slice(a.as_bytes());
            c.push(0);
        }
        std::fs::write(p.join("cmdline"), c).expect("write");
        let mut e: Vec<u8> = Vec::new();
        for a in env {
            e.extend_from_slice(a.as_bytes());
            e.push(0);
        }
        std::fs::write(p.join("environ"), e).expect("write");
        self.pids.push(pid);
        self.write_tables();
    }

    fn remove_proc(&mut self, pid: u32) {
        std::fs::remove_dir_all(self.path(pid)).expect("rm");
        self.pids.retain(|p| *p != pid);
    }

    fn add_fd(&self, pid: u32, fd: u32, target: &str) {
        std::os::unix::fs::symlink(target, self.path(pid).join(format!("fd/{fd}")))
            .expect("symlink");
    }

    fn fdinfo(&self, pid: u32, fd: u32, flags: &str) {
        let text = format!("pos:\t0\nflags:\t{flags}\nmnt_id:\t16\n");
        std::fs::write(self.path(pid).join(format!("fdinfo/{fd}")), text).expect("write");
    }

    fn remove_fd(&self, pid: u32, fd: u32) {
        std::fs::remove_file(self.path(pid).join(format!("fd/{fd}"))).expect("rm fd");
    }

    fn sock(&mut self, pid: u32, fd: u32, inode: u64, local: &str, remote: &str, st: u8) {
        self.add_fd(pid, fd, &format!("socket:[{inode}]"));
        self.socks.push((sa(local), sa(remote), st, inode));
        self.write_tables();
    }

    fn write_tables(&self) {
        let mut t4 = String::from("  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n");
        let mut t6 = String::from("  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n");
        for (i, (l, r, st, inode)) in self.socks.iter().enumerate() {
            let line = format!(
                "{i:4}: {} {} {st:02X} 00000000:00000000 00:00000000 00000000  1000        0 {inode} 1 0000000000000000 20 4 30 10 -1\n",
                hex_addr(*l),
                hex_addr(*r)
            );
            if l.is_ipv4() {
                t4.push_str(&line);
            } else {
                t6.push_str(&line);
            }
        }
        for pid in &self.pids {
            let p = self.path(*pid);
            std::fs::write(p.join("net/tcp"), &t4).expect("write");
            std::fs::write(p.join("net/tcp6"), &t6).expect("write");
        }
    }
}

const BEAM: u32 = 100;
const CHILD_SETUP: u32 = 101;
const WA: u32 = 200;
const WB: u32 = 201;
const WP: u32 = 202;

fn worker_cmd(script: &str, port: &str) -> Vec<String> {
    format!(
        "/venv/bin/python3 /app/priv/python/{script} --adapter demo_adapter.DemoAdapter --port 0 \
         --elixir-address 127.0.0.1:{port} --snakepit-run-id k3x9q2a --snakepit-instance-name demo"
    )
    .split(' ')
    .map(str::to_string)
    .collect()
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn add_beam(f: &mut FakeProc) {
    f.add_proc(
        BEAM,
        1,
        "beam.smp",
        &[
            "/usr/lib/erlang/erts-13.1.5/bin/beam.smp",
            "--",
            "-root",
            "/usr/lib/erlang",
        ],
        &["HOME=/root"],
    );
    f.add_proc(
        CHILD_SETUP,
        BEAM,
        "erl_child_setup",
        &["erl_child_setup", "1024"],
        &[],
    );
    f.sock(BEAM, 10, 1000, "127.0.0.1:4000", "0.0.0.0:0", LISTEN);
}

/// BEAM + erl_child_setup + two gRPC workers + one pipe worker, fully connected:
/// worker A over IPv4 (accepted on a dual-stack socket, so IPv4-mapped in tcp6),
/// worker B over IPv6 loopback, A also calls back into the BEAM.
fn full_tree() -> FakeProc {
    let mut f = FakeProc::new();
    add_beam(&mut f);
    let a = worker_cmd("grpc_server.py", "4000");
    f.add_proc(
        WA,
        CHILD_SETUP,
        "python3",
        &refs(&a),
        &[
            "SNAKEPIT_READY_FILE=/tmp/snakepit_ready_default_worker_1_ab12_7",
            "SNAKEPIT_LOG_LEVEL=info",
        ],
    );
    let b = worker_cmd("grpc_server_threaded.py", "4000");
    f.add_proc(
        WB,
        CHILD_SETUP,
        "python3",
        &refs(&b),
        &["SNAKEPIT_READY_FILE=/tmp/snakepit_ready_default_worker_2_cd34_8"],
    );
    f.add_proc(
        WP,
        CHILD_SETUP,
        "python3",
        &[
            "/venv/bin/python3",
            "/repo/demo/python/port_worker.py",
            "--pool",
            "legacy",
        ],
        &["SNAKEPIT_WORKER_ID=legacy_worker_1_ef56"],
    );
    f.add_proc(300, 1, "bash", &["bash"], &[]);
    // Worker A: listen, accepted BEAM client, callback to the BEAM.
    f.sock(WA, 5, 2000, "[::]:50001", "[::]:0", LISTEN);
    f.sock(BEAM, 11, 1001, "127.0.0.1:40001", "127.0.0.1:50001", ESTAB);
    f.sock(
        WA,
        6,
        2001,
        "[::ffff:127.0.0.1]:50001",
        "[::ffff:127.0.0.1]:40001",
        ESTAB,
    );
    f.sock(WA, 7, 2002, "127.0.0.1:45000", "127.0.0.1:4000", ESTAB);
    f.sock(BEAM, 13, 1003, "127.0.0.1:4000", "127.0.0.1:45000", ESTAB);
    // Worker B over ::1.
    f.sock(WB, 5, 2100, "[::]:50002", "[::]:0", LISTEN);
    f.sock(BEAM, 12, 1002, "[::1]:40002", "[::1]:50002", ESTAB);
    f.sock(WB, 6, 2102, "[::1]:50002", "[::1]:40002", ESTAB);
    // An unrelated loopback connection of the BEAM (a local database).
    f.sock(BEAM, 20, 1004, "127.0.0.1:39000", "127.0.0.1:5432", ESTAB);
    // Pipes: BEAM holds the other ends.
    for (bfd, inode) in [
        (14, 7000),
        (15, 7001),
        (16, 7002),
        (17, 7003),
        (18, 7004),
        (19, 7005),
    ] {
        f.add_fd(BEAM, bfd, &format!("pipe:[{inode}]"));
    }
    f.add_fd(BEAM, 3, "/dev/null");
    for (pid, i, o) in [(WA, 7000, 7001), (WB, 7002, 7003)] {
        f.add_fd(pid, 0, &format!("pipe:[{i}]"));
        f.add_fd(pid, 1, &format!("pipe:[{o}]"));
        f.add_fd(pid, 2, &format!("pipe:[{o}]"));
    }
    // The pipe worker moved its frame output to a private fd (as the demo's does);
    // fd 1 and 2 point at a log file.
    f.add_fd(WP, 0, "pipe:[7004]");
    f.add_fd(WP, 1, "/tmp/agent.log");
    f.add_fd(WP, 2, "/tmp/agent.log");
    f.add_fd(WP, 3, "pipe:[7005]");
    f.fdinfo(WP, 3, "02000001");
    // A pipe the BEAM does not hold is not a connection.
    f.add_fd(WP, 4, "pipe:[7777]");
    f
}

fn conns_by_role(d: &Discovery) -> BTreeMap<(u32, String), ConnInfo> {
    d.connections()
        .map(|c| ((c.worker_pid, format!("{:?}", c.role)), c.clone()))
        .collect()
}

#[test]
fn full_scan_builds_the_topology() {
    let f = full_tree();
    let mut d = Discovery::new(f.source(), Selectors::default());
    let changes = d.full_scan();

    // BeamDiscovered comes first, once, before the first worker.
    assert_eq!(
        changes[0],
        TopologyChange::BeamDiscovered {
            beam_pid: BEAM,
            listen_ports: vec![4000],
            instance_name: Some("demo".into()),
        }
    );
    let workers: Vec<&WorkerInfo> = changes
        .iter()
        .filter_map(|c| match c {
            TopologyChange::WorkerDiscovered(w) => Some(w),
            _ => None,
        })
        .collect();
    assert_eq!(workers.len(), 3);
    let a = d.worker(WA).expect("worker A");
    assert_eq!(a.worker_id, "default_worker_1_ab12");
    assert_eq!(a.pool, "default");
    assert_eq!(a.port, Some(50001));
    assert_eq!(a.beam_pid, Some(BEAM));
    assert_eq!(a.transport, Transport::Grpc);
    assert_eq!(a.adapter.as_deref(), Some("demo_adapter.DemoAdapter"));
    assert_eq!(a.run_id.as_deref(), Some("k3x9q2a"));
    assert!(!a.threaded);
    let b = d.worker(WB).expect("worker B");
    assert_eq!((b.port, b.threaded), (Some(50002), true));
    assert_eq!(b.worker_id, "default_worker_2_cd34");
    let p = d.worker(WP).expect("pipe worker");
    assert_eq!(p.worker_id, "legacy_worker_1_ef56");
    assert_eq!(
        (p.pool.as_str(), p.transport, p.port),
        ("legacy", Transport::Pipe, None)
    );

    assert_eq!(
        d.process(CHILD_SETUP).map(|p| p.role),
        Some(ProcessRole::Lineage)
    );
    assert!(d.process(300).is_none());
    assert_eq!(d.process(WA).map(|p| p.env.vars.len()), Some(2));

    let c = conns_by_role(&d);
    assert_eq!(c.len(), 9, "{c:#?}");
    let ac = &c[&(WA, "BeamClient".to_string())];
    assert_eq!((ac.beam_fd, ac.worker_fd), (11, 6));
    assert_eq!(ac.beam_addr, Some(sa("127.0.0.1:40001")));
    assert_eq!(ac.worker_addr, Some(sa("127.0.0.1:50001")));
    assert_eq!(ac.worker_id, "default_worker_1_ab12");
    let cb = &c[&(WA, "WorkerCallback".to_string())];
    assert_eq!((cb.beam_fd, cb.worker_fd), (13, 7));
    let bc = &c[&(WB, "BeamClient".to_string())];
    assert_eq!((bc.beam_fd, bc.worker_fd), (12, 6));
    assert_eq!(bc.beam_addr, Some(sa("[::1]:40002")));
    let ps = &c[&(WP, "PipeStdin".to_string())];
    assert_eq!(
        (ps.beam_fd, ps.worker_fd, ps.transport),
        (18, 0, Transport::Pipe)
    );
    let po = &c[&(WP, "PipeStdout".to_string())];
    assert_eq!((po.beam_fd, po.worker_fd), (19, 3));
    assert_eq!(
        c[&(WA, "PipeStdout".to_string())].transport,
        Transport::Grpc
    );

    // Lookups from both ends; fd 2 shares stdout's pipe.
    assert_eq!(d.conn_for_fd(BEAM, 11).map(|c| c.id), Some(ac.id));
    assert_eq!(d.conn_for_fd(WA, 6).map(|c| c.id), Some(ac.id));
    assert_eq!(
        d.conn_for_fd(WA, 2).map(|c| c.id),
        Some(c[&(WA, "PipeStdout".to_string())].id)
    );
    assert!(d.conn_for_fd(WP, 2).is_none());
    assert!(d.conn_for_fd(BEAM, 20).is_none());
    assert!(d.conn_for_fd(BEAM, 10).is_none());

    // A second scan changes nothing.
    assert_eq!(d.full_scan(), vec![]);
    assert_eq!(d.conn_for_fd(BEAM, 11).map(|c| c.id), Some(ac.id));

    let snap = d.snapshot();
    assert_eq!(snap.deployments.len(), 1);
    let pools: Vec<&str> = snap.deployments[0]
        .pools
        .iter()
        .map(|p| p.pool.as_str())
        .collect();
    assert_eq!(pools, vec!["default", "legacy"]);
    assert_eq!(snap.deployments[0].pools[0].workers.len(), 2);
    assert!(snap.unattached_workers.is_empty());
    assert_eq!(snap.pending_sockets, 0);
    let json = serde_json::to_string(&snap).expect("serializes");
    assert!(json.contains("\"role\":\"beam_client\""), "{json}");
    let json = serde_json::to_string(&changes[1]).expect("serializes");
    assert!(
        json.starts_with("{\"change\":\"worker_discovered\""),
        "{json}"
    );
}

#[test]
fn watch_plan_flags() {
    let f = full_tree();
    let mut d = Discovery::new(f.source(), Selectors::default());
    d.full_scan();
    let plan = d.watch_plan();
    let pids: BTreeMap<u32, u32> = plan.pids.iter().copied().collect();
    assert_eq!(pids[&BEAM], PID_BEAM | PID_LINEAGE | PID_WATCH_NEW_SOCKETS);
    assert_eq!(pids[&CHILD_SETUP], PID_LINEAGE);
    assert_eq!(pids[&WA], PID_WORKER | PID_WATCH_NEW_SOCKETS);
    assert_eq!(pids.len(), 5);
    assert!(plan.fds.contains(&(BEAM, 11, FD_SOCKET)));
    assert!(plan.fds.contains(&(WA, 6, FD_SOCKET)));
    assert!(plan.fds.contains(&(WA, 2, FD_PIPE)));
    assert!(plan.fds.contains(&(BEAM, 14, FD_PIPE)));
    assert!(!plan.fds.iter().any(|(p, fd, _)| *p == BEAM && *fd == 20));
    // 3 tcp conns x 2 ends + 6 pipe conns x 2 ends + 2 fd-2 aliases.
    assert_eq!(plan.fds.len(), 20);
}

#[test]
fn candidate_beam_only_is_not_a_deployment() {
    let mut f = FakeProc::new();
    add_beam(&mut f);
    let mut d = Discovery::new(f.source(), Selectors::default());
    assert_eq!(d.full_scan(), vec![]);
    assert_eq!(d.snapshot().candidate_beams, vec![BEAM]);
    let plan = d.watch_plan();
    assert!(plan.pids.contains(&(BEAM, PID_LINEAGE)));
}

#[test]
fn fd_close_alias_and_primary() {
    let f = full_tree();
    let mut d = Discovery::new(f.source(), Selectors::default());
    d.full_scan();
    assert_eq!(d.on_fd_close(WA, 2), vec![]);
    assert!(d.conn_for_fd(WA, 1).is_some());
    let ch = d.on_fd_close(BEAM, 11);
    assert!(matches!(
        &ch[..],
        [TopologyChange::ConnectionClosed { conn, closed_by_pid: Some(BEAM), reason: CloseReason::FdClosed }]
            if conn.role == ConnRole::BeamClient && conn.worker_pid == WA
    ));
    assert!(d.conn_for_fd(WA, 6).is_none());
    assert_eq!(d.on_fd_close(BEAM, 11), vec![]);
}

#[test]
fn worker_exit_closes_its_connections() {
    let f = full_tree();
    let mut d = Discovery::new(f.source(), Selectors::default());
    d.full_scan();
    let ch = d.on_exit(WA, ExitInfo::from_wait_status(9));
    let closed = ch
        .iter()
        .filter(|c| {
            matches!(
                c,
                TopologyChange::ConnectionClosed {
                    reason: CloseReason::ProcessExited,
                    ..
                }
            )
        })
        .count();
    assert_eq!(closed, 4);
    assert_eq!(
        ch.last(),
        Some(&TopologyChange::WorkerExited {
            beam_pid: Some(BEAM),
            pool: "default".into(),
            worker_id: "default_worker_1_ab12".into(),
            pid: WA,
            exit_code: None,
            signal: Some(9),
            core_dumped: false,
        })
    );
    assert!(d.worker(WA).is_none());
    assert_eq!(d.connections().count(), 5);
}

#[test]
fn rescan_reports_missed_exits_and_closes() {
    let mut f = full_tree();
    let mut d = Discovery::new(f.source(), Selectors::default());
    d.full_scan();
    f.remove_fd(BEAM, 12);
    f.remove_proc(WP);
    let ch = d.full_scan();
    assert!(ch.iter().any(|c| matches!(
        c,
        TopologyChange::WorkerExited {
            pid: WP,
            exit_code: None,
            signal: None,
            ..
        }
    )));
    assert!(ch.iter().any(|c| matches!(c,
        TopologyChange::ConnectionClosed { conn, reason: CloseReason::Rescan, .. }
            if conn.worker_pid == WB && conn.role == ConnRole::BeamClient)));
    assert_eq!(d.connections().count(), 6);
}

#[test]
fn live_worker_start_sequence() {
    // The agent starts first; the deployment comes up under it.
    let mut f = FakeProc::new();
    add_beam(&mut f);
    let mut d = Discovery::new(f.source(), Selectors::default());
    assert_eq!(d.full_scan(), vec![]);

    // erl_child_setup already forked the worker; exec is reported.
    f.add_fd(BEAM, 14, "pipe:[7000]");
    f.add_fd(BEAM, 15, "pipe:[7001]");
    let a = worker_cmd("grpc_server.py", "4000");
    f.add_proc(
        WA,
        CHILD_SETUP,
        "python3",
        &refs(&a),
        &["SNAKEPIT_READY_FILE=/tmp/snakepit_ready_default_worker_1_ab12_7"],
    );
    f.add_fd(WA, 0, "pipe:[7000]");
    f.add_fd(WA, 1, "pipe:[7001]");
    f.add_fd(WA, 2, "pipe:[7001]");
    let ch = d.on_exec(WA);
    assert!(matches!(
        &ch[0],
        TopologyChange::BeamDiscovered { beam_pid: BEAM, .. }
    ));
    assert!(matches!(&ch[1], TopologyChange::WorkerDiscovered(w) if w.port.is_none()));
    assert_eq!(ch.len(), 4, "{ch:#?}"); // + two pipes
    assert!(d
        .watch_plan()
        .pids
        .contains(&(BEAM, PID_BEAM | PID_LINEAGE | PID_WATCH_NEW_SOCKETS)));

    // The worker binds; the BEAM connects before the worker accepted.
    f.sock(WA, 5, 2000, "[::]:50001", "[::]:0", LISTEN);
    f.socks.push((
        sa("[::ffff:127.0.0.1]:50001"),
        sa("[::ffff:127.0.0.1]:40001"),
        ESTAB,
        2001,
    ));
    f.sock(BEAM, 11, 1001, "127.0.0.1:40001", "127.0.0.1:50001", ESTAB);
    let ch = d.on_fd_open(BEAM, 11);
    assert_eq!(
        ch,
        vec![TopologyChange::WorkerListening {
            beam_pid: Some(BEAM),
            pid: WA,
            worker_id: "default_worker_1_ab12".into(),
            pool: "default".into(),
            port: 50001,
        }]
    );
    assert!(d.conn_for_fd(BEAM, 11).is_none());
    assert!(
        d.watch_plan().fds.contains(&(BEAM, 11, FD_SOCKET)),
        "pending is watched"
    );

    // The accept pairs it.
    f.add_fd(WA, 6, "socket:[2001]");
    let ch = d.on_fd_open(WA, 6);
    assert!(
        matches!(&ch[..], [TopologyChange::ConnectionOpened { conn }]
        if conn.role == ConnRole::BeamClient && conn.beam_fd == 11 && conn.worker_fd == 6)
    );
    assert_eq!(d.snapshot().pending_sockets, 0);

    // A callback whose table entry is late: pending, then paired by tick.
    f.add_fd(WA, 7, "socket:[2002]");
    assert_eq!(d.on_fd_open(WA, 7), vec![]);
    assert_eq!(d.snapshot().pending_sockets, 1);
    assert_eq!(d.tick(), vec![]);
    f.socks
        .push((sa("127.0.0.1:45000"), sa("127.0.0.1:4000"), ESTAB, 2002));
    f.sock(BEAM, 13, 1003, "127.0.0.1:4000", "127.0.0.1:45000", ESTAB);
    let ch = d.tick();
    assert!(
        matches!(&ch[..], [TopologyChange::ConnectionOpened { conn }]
        if conn.role == ConnRole::WorkerCallback && conn.beam_fd == 13 && conn.worker_fd == 7)
    );

    // An unrelated BEAM socket is dropped at once, one that never resolves after
    // MAX_RESOLVE_ATTEMPTS ticks.
    f.sock(BEAM, 20, 1004, "127.0.0.1:39000", "127.0.0.1:5432", ESTAB);
    assert_eq!(d.on_fd_open(BEAM, 20), vec![]);
    assert_eq!(d.snapshot().pending_sockets, 0);
    f.add_fd(WA, 8, "socket:[9999]");
    d.on_fd_open(WA, 8);
    for _ in 0..topology::MAX_RESOLVE_ATTEMPTS {
        d.tick();
    }
    assert_eq!(d.snapshot().pending_sockets, 0);

    // Unrelated execs are ignored.
    f.add_proc(400, 1, "ls", &["ls", "-l"], &[]);
    assert_eq!(d.on_exec(400), vec![]);
    assert!(d.process(400).is_none());
}

#[test]
fn worker_found_by_elixir_address_and_selectors() {
    let mut f = FakeProc::new();
    add_beam(&mut f);
    // Reparented to init: the BEAM is found by its callback port.
    let a = worker_cmd("grpc_server.py", "4000");
    f.add_proc(WA, 1, "python3", &refs(&a), &[]);
    // A custom worker selected by pattern.
    f.add_proc(
        WB,
        1,
        "node",
        &["node", "my_worker.js", "--elixir-address", "127.0.0.1:4000"],
        &[],
    );
    let sel = Selectors {
        worker_patterns: vec!["my_worker.js".into()],
        ..Default::default()
    };
    let mut d = Discovery::new(f.source(), sel);
    d.full_scan();
    let a = d.worker(WA).expect("worker");
    assert_eq!(a.beam_pid, Some(BEAM));
    assert_eq!(
        (a.worker_id.as_str(), a.pool.as_str()),
        ("pid_200", "unknown")
    );
    assert_eq!(d.worker(WB).map(|w| w.beam_pid), Some(Some(BEAM)));
    assert_eq!(d.worker(WB).map(|w| w.transport), Some(Transport::Grpc));
}

#[test]
fn exit_status_decoding() {
    assert_eq!(
        ExitInfo::from_wait_status(3 << 8),
        ExitInfo {
            code: Some(3),
            signal: None,
            core_dumped: false
        }
    );
    assert_eq!(
        ExitInfo::from_wait_status(0x80 | 11),
        ExitInfo {
            code: None,
            signal: Some(11),
            core_dumped: true
        }
    );
    assert_eq!(ExitInfo::from_wait_status(0).code, Some(0));
    assert_eq!(ExitInfo::from_wait_status(u32::MAX), ExitInfo::default());
}

#[test]
fn real_proc_scan_finds_own_pid() {
    let me = std::process::id();
    let src = ProcSource::system();
    let st = src.stat(me).expect("own stat");
    assert_eq!(st.pid, me);
    assert!(src.tcp_table(me).is_ok());
    assert!(!src.cmdline(me).expect("own cmdline").is_empty());
    let sel = Selectors {
        worker_pids: vec![me],
        ..Default::default()
    };
    let mut d = Discovery::new(src, sel);
    let ch = d.full_scan();
    assert!(ch
        .iter()
        .any(|c| matches!(c, TopologyChange::WorkerDiscovered(w) if w.pid == me)));
    assert_eq!(d.process(me).map(|p| p.role), Some(ProcessRole::Worker));
    serde_json::to_string(&d.snapshot()).expect("serializes");
    d.tick();
}

/// Manual check against a running demo (`cargo test -p telemetry-user --lib
/// live_host_snapshot -- --ignored --nocapture`): prints what discovery sees.
#[test]
#[ignore]
fn live_host_snapshot() {
    let mut d = Discovery::new(ProcSource::system(), Selectors::default());
    for c in d.full_scan() {
        println!("{}", serde_json::to_string(&c).unwrap_or_default());
    }
    println!(
        "{}",
        serde_json::to_string_pretty(&d.snapshot()).unwrap_or_default()
    );
    println!("{:?}", d.watch_plan());
}

#[test]
fn steady_rescan_reads_no_tcp_table_and_classifies_nothing() {
    let mut f = full_tree();
    let mut d = Discovery::new(f.source(), Selectors::default());
    d.full_scan();
    let first = d.last_scan_stats();
    assert!(first.tcp_tables >= 1, "{first:?}");
    assert_eq!(first.classified, first.pids, "{first:?}");
    let before = d.snapshot();
    assert!(d.full_scan().is_empty());
    let s = d.last_scan_stats();
    assert_eq!((s.tcp_tables, s.classified), (0, 0), "{s:?}");
    assert_eq!(s.pids, first.pids);
    assert_eq!(d.snapshot(), before);

    // A worker's client of a local service: no BEAM holds the peer. Looked up until
    // settled, then no more table reads.
    f.add_proc(400, 1, "postgres", &["postgres"], &[]);
    f.sock(400, 7, 3001, "127.0.0.1:5433", "127.0.0.1:46000", ESTAB);
    f.sock(WA, 9, 3000, "127.0.0.1:46000", "127.0.0.1:5433", ESTAB);
    for _ in 0..3 {
        assert!(d.full_scan().is_empty());
        d.tick();
    }
    d.full_scan();
    let s = d.last_scan_stats();
    assert_eq!((s.tcp_tables, s.classified), (0, 0), "{s:?}");
    assert_eq!(d.snapshot().pending_sockets, 0);
    assert!(d.conn_for_fd(WA, 9).is_none());

    // Unix sockets are in no tcp table: looked up by two rescans, then settled.
    f.add_fd(BEAM, 22, "socket:[9999]");
    f.add_fd(WB, 8, "socket:[9998]");
    let reads: Vec<u32> = (0..3)
        .map(|_| {
            d.full_scan();
            d.last_scan_stats().tcp_tables
        })
        .collect();
    assert!(reads[0] > 0 && reads[1] > 0 && reads[2] == 0, "{reads:?}");

    // Events were missed: the rescan still finds a new connection...
    f.sock(BEAM, 21, 1005, "127.0.0.1:40003", "127.0.0.1:50002", ESTAB);
    f.sock(WB, 7, 2103, "127.0.0.1:50002", "127.0.0.1:40003", ESTAB);
    let ch = d.full_scan();
    assert!(
        ch.iter()
            .any(|c| matches!(c, TopologyChange::ConnectionOpened { conn }
            if conn.worker_pid == WB && conn.worker_fd == 7 && conn.beam_fd == 21
                && conn.role == ConnRole::BeamClient)),
        "{ch:?}"
    );
    // ...and a process that exec'd into a worker (its comm changed).
    let w = worker_cmd("grpc_server.py", "4000");
    f.add_proc(
        300,
        1,
        "python3",
        &refs(&w),
        &["SNAKEPIT_READY_FILE=/tmp/snakepit_ready_default_worker_3_aa11_9"],
    );
    let ch = d.full_scan();
    assert_eq!(d.last_scan_stats().classified, 1);
    assert!(
        ch.iter()
            .any(|c| matches!(c, TopologyChange::WorkerDiscovered(w)
            if w.pid == 300 && w.beam_pid == Some(BEAM))),
        "{ch:?}"
    );
}

#[test]
fn fd_permission_denied_is_counted_once_per_read() {
    let f = full_tree();
    let mut d = Discovery::new(f.source(), Selectors::default());
    let denied = DiscoveryError::Io {
        path: PathBuf::from("/proc/7/fd"),
        source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
    };
    let gone = DiscoveryError::Io {
        path: PathBuf::from("/proc/8/fd"),
        source: std::io::Error::from(std::io::ErrorKind::NotFound),
    };
    assert!(denied.is_permission_denied());
    assert!(!gone.is_permission_denied());
    let mut ctx = reads::Ctx::default();
    ctx.note_fd_error(7, &denied);
    ctx.note_fd_error(8, &gone);
    d.finish(&ctx);
    d.finish(&ctx);
    assert_eq!(d.fd_permission_errors(), 2);
    // A scan of readable fds adds none.
    d.full_scan();
    assert_eq!(d.last_scan_stats().fd_permission_denied, 0);
    assert_eq!(d.fd_permission_errors(), 2);
}
