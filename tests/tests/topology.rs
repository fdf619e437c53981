//! End-to-end: the agent (real eBPF) against the real demo deployment (a real BEAM
//! spawning real grpcio workers). Needs root; fails, never skips, when it is missing.
use serde_json::Value;
use snakepit_testkit::agent::{events_named, is_event, Agent};
use snakepit_testkit::demo::{ConnStat, Demo, LoadSpec, Status};
use snakepit_testkit::{require, scratch_dir};
use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const WORKER_EXITED: &[&str] = &["snakepit", "agent", "worker_exited"];
const WORKER_DISCOVERED: &[&str] = &["snakepit", "agent", "worker_discovered"];
const BEAM_DISCOVERED: &[&str] = &["snakepit", "agent", "beam_discovered"];
const CONNECTION_OPENED: &[&str] = &["snakepit", "agent", "connection_opened"];
const CONNECTION_IO: &[&str] = &["snakepit", "agent", "connection_io"];
const STATS: &[&str] = &["snakepit", "agent", "stats"];

fn now_unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn str_field<'a>(ev: &'a Value, key: &str) -> Option<&'a str> {
    ev["metadata"][key].as_str()
}

fn u64_meta(ev: &Value, key: &str) -> Option<u64> {
    ev["metadata"][key].as_u64()
}

/// Waits until the agent has reported every worker of `status` (pool, id, pid, port).
fn assert_all_workers_discovered(agent: &mut Agent, status: &Status) {
    for w in &status.workers {
        let ev = agent
            .wait_for(Duration::from_secs(10), |e| {
                is_event(e, WORKER_DISCOVERED)
                    && str_field(e, "worker_id") == Some(w.worker_id.as_str())
            })
            .unwrap_or_else(|e| {
                panic!("worker {} ({}) not discovered: {e}", w.worker_id, w.os_pid)
            });
        assert_eq!(
            u64_meta(&ev, "worker_pid"),
            Some(w.os_pid as u64),
            "pid of {}",
            w.worker_id
        );
        assert_eq!(
            str_field(&ev, "pool"),
            Some(w.pool.as_str()),
            "pool of {}",
            w.worker_id
        );
        assert_eq!(
            u64_meta(&ev, "beam_pid"),
            Some(status.beam_pid as u64),
            "BEAM of {}",
            w.worker_id
        );
        if let Some(port) = w.port {
            // The port is in worker_discovered (found by a scan) or in the
            // worker_listening that follows discovery at exec time.
            agent
                .wait_for(Duration::from_secs(10), |e| {
                    (is_event(e, WORKER_DISCOVERED)
                        || is_event(e, &["snakepit", "agent", "worker_listening"]))
                        && str_field(e, "worker_id") == Some(w.worker_id.as_str())
                        && u64_meta(e, "port") == Some(port as u64)
                })
                .unwrap_or_else(|e| panic!("port {port} of {} not reported: {e}", w.worker_id));
        }
    }
    agent
        .wait_for(Duration::from_secs(5), |e| {
            is_event(e, BEAM_DISCOVERED) && u64_meta(e, "beam_pid") == Some(status.beam_pid as u64)
        })
        .expect("beam_discovered for the demo's BEAM");
}

/// Every BEAM socket the demo reports must be a connection the agent paired:
/// (BEAM address, worker address) == (local, peer).
fn assert_connections_paired(
    agent: &mut Agent,
    stats: &[ConnStat],
) -> HashMap<(String, String), u64> {
    let mut ids = HashMap::new();
    for s in stats.iter().filter(|s| !s.closed) {
        let ev = agent
            .wait_for(Duration::from_secs(10), |e| {
                is_event(e, CONNECTION_OPENED)
                    && str_field(e, "beam_addr") == Some(s.local.as_str())
                    && str_field(e, "worker_addr") == Some(s.peer.as_str())
            })
            .unwrap_or_else(|e| {
                panic!(
                    "connection {} -> {} ({}) not paired: {e}",
                    s.local, s.peer, s.kind
                )
            });
        let role = str_field(&ev, "role").unwrap_or_default();
        let want = if s.kind == "grpc_client" {
            "beam_client"
        } else {
            "worker_callback"
        };
        assert_eq!(role, want, "role of {} -> {}", s.local, s.peer);
        ids.insert(
            (s.local.clone(), s.peer.clone()),
            u64_meta(&ev, "conn_id").expect("conn_id"),
        );
    }
    ids
}

/// The agent's latest (or final) connection_io for a connection must equal the
/// BEAM's own `inet:getstat` counts, byte for byte.
fn assert_bytes_exact(events: &[Value], conn_id: u64, stat: &ConnStat, want_final: bool) {
    let summary = events_named(events, CONNECTION_IO)
        .into_iter()
        .filter(|e| u64_meta(e, "conn_id") == Some(conn_id))
        .rfind(|e| !want_final || e["metadata"]["final"] == Value::Bool(true))
        .unwrap_or_else(|| {
            panic!(
                "no connection_io for conn {conn_id} ({} -> {})",
                stat.local, stat.peer
            )
        });
    let m = &summary["measurements"];
    assert_eq!(
        (
            m["beam_bytes_sent"].as_u64(),
            m["beam_bytes_received"].as_u64()
        ),
        (Some(stat.send_oct), Some(stat.recv_oct)),
        "byte totals of {} {} -> {} (agent {summary})",
        stat.kind,
        stat.local,
        stat.peer
    );
    assert!(
        stat.send_oct > 0 && stat.recv_oct > 0,
        "connection carried no traffic: {stat:?}"
    );
}

fn load_mix() -> LoadSpec {
    let mut spec = LoadSpec::new(
        150,
        2_000,
        &[
            ("echo", 5),
            ("sleep", 1),
            ("fail", 1),
            ("large", 1),
            ("upload", 1),
            ("stream", 1),
            ("numpy", 1),
        ],
    );
    spec.pools = vec!["default".into(), "legacy".into()];
    spec
}

#[test]
fn agent_sees_a_deployment_started_after_it_with_exact_byte_totals_and_crashes() {
    require::root_and_bpf();
    let dir = scratch_dir("topology-live");
    let mut agent = Agent::start(&dir, &["--summary-interval-ms", "300"]).expect("agent start");
    let (mut demo, status) = Demo::start_ready(&dir, 2, 1).expect("demo start");
    assert_all_workers_discovered(&mut agent, &status);

    // Traffic of every kind, then still: the BEAM stops its heartbeats.
    demo.load(&load_mix(), &dir.join("ground_truth.jsonl"))
        .expect("load");
    demo.quiesce().expect("quiesce");
    std::thread::sleep(Duration::from_millis(500));
    let stats = demo.stats(&dir.join("stats-1.jsonl")).expect("stats");
    let ids = assert_connections_paired(&mut agent, &stats);
    // Pipes: one stdin and one stdout connection per pipe worker.
    let pipe_worker = status
        .workers
        .iter()
        .find(|w| w.transport == "pipe")
        .expect("a pipe worker");
    agent
        .wait_for(Duration::from_secs(5), |e| {
            is_event(e, CONNECTION_OPENED)
                && str_field(e, "role") == Some("pipe_stdin")
                && str_field(e, "worker_id") == Some(pipe_worker.worker_id.as_str())
        })
        .expect("pipe worker's stdin pipe paired");

    // SIGKILL a gRPC worker: worker_exited with signal 9 within 1 s, and the
    // replacement discovered within 1 s of its start.
    let victim = status
        .workers
        .iter()
        .find(|w| w.transport == "grpc")
        .expect("a gRPC worker")
        .clone();
    let killed_at = now_unix_ns();
    let t = Instant::now();
    // SAFETY: kill(2) on a pid the demo reported.
    assert_eq!(
        unsafe { libc::kill(victim.os_pid as i32, libc::SIGKILL) },
        0
    );
    let exited = agent
        .wait_for(Duration::from_secs(5), |e| {
            is_event(e, WORKER_EXITED) && u64_meta(e, "worker_pid") == Some(victim.os_pid as u64)
        })
        .expect("worker_exited");
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "worker_exited took {:?}",
        t.elapsed()
    );
    let event_delay = exited["time_unix_nano"]
        .as_u64()
        .unwrap_or(0)
        .saturating_sub(killed_at);
    assert!(
        event_delay < 1_000_000_000,
        "worker_exited {event_delay} ns after the kill"
    );
    assert_eq!(u64_meta(&exited, "signal"), Some(9), "{exited}");
    assert_eq!(
        str_field(&exited, "worker_id"),
        Some(victim.worker_id.as_str())
    );

    let new_status = demo
        .wait_ready(Duration::from_secs(30))
        .expect("replacement ready");
    let replacement = new_status
        .workers
        .iter()
        .find(|w| {
            w.pool == victim.pool && !status.workers.iter().any(|o| o.worker_id == w.worker_id)
        })
        .expect("a replacement worker")
        .clone();
    let found = agent
        .wait_for(Duration::from_secs(5), |e| {
            is_event(e, WORKER_DISCOVERED)
                && str_field(e, "worker_id") == Some(replacement.worker_id.as_str())
        })
        .expect("replacement discovered");
    let started = process_start_unix_ns(replacement.os_pid).expect("replacement start time");
    let delay = found["time_unix_nano"]
        .as_u64()
        .unwrap_or(0)
        .saturating_sub(started);
    assert!(
        delay < 1_000_000_000,
        "replacement discovered {delay} ns after it started"
    );
    assert_eq!(
        u64_meta(&found, "worker_pid"),
        Some(replacement.os_pid as u64)
    );

    // The victim's connections closed: their final agent totals equal the BEAM's
    // final counts (client and callback connections both).
    std::thread::sleep(Duration::from_millis(500));
    let stats2 = demo.stats(&dir.join("stats-2.jsonl")).expect("stats");
    let events = agent.events();
    let closed: Vec<&ConnStat> = stats2
        .iter()
        .filter(|s| s.closed && s.worker_id.as_deref() == Some(victim.worker_id.as_str()))
        .collect();
    assert!(
        !closed.is_empty(),
        "the demo reports no closed connection of the victim: {stats2:?}"
    );
    for s in closed {
        if let Some(id) = ids.get(&(s.local.clone(), s.peer.clone())) {
            assert_bytes_exact(&events, *id, s, true);
        }
    }

    // Stop: the BEAM closes every connection, noting its final counts just before
    // each close. Every connection opened while the agent ran must match exactly,
    // in both directions.
    let final_stats = demo
        .stop_with_stats(&dir.join("stats-final.jsonl"))
        .expect("demo stop");
    std::thread::sleep(Duration::from_millis(2_500));
    let events = agent.stop().expect("agent stop");
    let mut compared = 0;
    for s in final_stats.iter().filter(|s| s.closed) {
        let id = events_named(&events, CONNECTION_OPENED)
            .into_iter()
            .find(|e| {
                str_field(e, "beam_addr") == Some(s.local.as_str())
                    && str_field(e, "worker_addr") == Some(s.peer.as_str())
            })
            .and_then(|e| u64_meta(e, "conn_id"))
            .unwrap_or_else(|| panic!("connection {} -> {} never paired", s.local, s.peer));
        assert_bytes_exact(&events, id, s, true);
        compared += 1;
    }
    assert!(
        compared >= 6,
        "expected client and callback connections of 3 workers, compared {compared}"
    );
    let stats_ev = events_named(&events, STATS)
        .into_iter()
        .last()
        .expect("a stats event");
    for key in [
        "ringbuf_drops",
        "probe_read_errors",
        "ring_decode_errors",
        "map_full",
    ] {
        assert!(
            stats_ev["measurements"][key].is_u64(),
            "stats lacks {key}: {stats_ev}"
        );
    }
}

#[test]
fn agent_started_late_finds_everything() {
    require::root_and_bpf();
    let dir = scratch_dir("topology-late");
    let (mut demo, status) = Demo::start_ready(&dir, 3, 1).expect("demo start");
    let mut spec = LoadSpec::new(100, 1_000, &[("echo", 3), ("sleep", 1)]);
    spec.pools = vec!["default".into(), "legacy".into()];
    demo.load(&spec, &dir.join("gt-before.jsonl"))
        .expect("load before the agent");

    let mut agent = Agent::start(&dir, &[]).expect("agent start");
    assert_all_workers_discovered(&mut agent, &status);
    let stats = demo.stats(&dir.join("stats.jsonl")).expect("stats");
    assert!(
        stats
            .iter()
            .filter(|s| !s.closed && s.kind == "grpc_client")
            .count()
            == 3,
        "expected 3 client connections: {stats:?}"
    );
    assert_connections_paired(&mut agent, &stats);
    demo.stop().expect("demo stop");
    agent.stop().expect("agent stop");
}

/// A process's start time in unix ns: its start (clock ticks since boot, from
/// /proc/PID/stat) placed on the wall clock through CLOCK_BOOTTIME.
fn process_start_unix_ns(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    let start_ticks: u64 = after.split_whitespace().nth(19)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    let boot_now = ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
    let since_start = boot_now.checked_sub(start_ticks * 1_000_000_000 / hz)?;
    Some(now_unix_ns() - since_start)
}
