//! End-to-end: calls reconstructed from the wire by the agent (real eBPF) compared with
//! the ground truth the demo BEAM writes for every call it makes.
use serde_json::Value;
use snakepit_testkit::agent::{events_named, Agent};
use snakepit_testkit::demo::{read_jsonl, Demo, DemoOptions, GroundTruthCall, LoadSpec};
use snakepit_testkit::{require, scratch_dir};
use std::collections::HashMap;
use std::time::Duration;

const CALL_STOP: &[&str] = &["snakepit", "call", "stop"];
const CALL_EXCEPTION: &[&str] = &["snakepit", "call", "exception"];
const WORKER_CRASH: &[&str] = &["snakepit", "worker", "crash"];
const STATS: &[&str] = &["snakepit", "agent", "stats"];

fn meta<'a>(e: &'a Value, k: &str) -> Option<&'a str> {
    e["metadata"][k].as_str()
}

/// Call ends (stop or exception) keyed like the ground truth: gRPC calls by
/// correlation id, pipe calls by (worker id, request id).
fn call_ends(events: &[Value]) -> HashMap<(String, String), Vec<&Value>> {
    let mut by: HashMap<(String, String), Vec<&Value>> = HashMap::new();
    for e in events_named(events, CALL_STOP)
        .into_iter()
        .chain(events_named(events, CALL_EXCEPTION))
    {
        let corr = meta(e, "correlation_id").unwrap_or_default().to_string();
        let key = if meta(e, "transport") == Some("pipe") {
            (meta(e, "worker_id").unwrap_or_default().to_string(), corr)
        } else {
            (String::new(), corr)
        };
        by.entry(key).or_default().push(e);
    }
    by
}

fn gt_key(g: &GroundTruthCall) -> (String, String) {
    if g.transport == "pipe" {
        (g.worker_id.clone(), g.correlation_id.clone())
    } else {
        (String::new(), g.correlation_id.clone())
    }
}

/// Calls of the load's ground truth that the agent did not report.
fn missing_calls(
    truth: &[GroundTruthCall],
    ends: &HashMap<(String, String), Vec<&Value>>,
) -> usize {
    truth
        .iter()
        .filter(|g| !ends.contains_key(&gt_key(g)))
        .count()
}

/// The agent's last stats event, and the losses it counts: ring-buffer drops, lost
/// records, bus lag and evicted calls.
fn counted_losses(events: &[Value]) -> (Value, [(&'static str, u64); 4]) {
    let stats = events_named(events, STATS)
        .into_iter()
        .last()
        .expect("stats")
        .clone();
    let count = |k: &str| stats["measurements"][k].as_u64().unwrap_or(0);
    let losses = [
        ("ringbuf_drops", count("ringbuf_drops")),
        ("records_lost", count("records_lost")),
        ("bus_lagged", count("bus_lagged")),
        (
            "evicted",
            stats["metadata"]["calls"]["evicted"].as_u64().unwrap_or(0),
        ),
    ];
    (stats, losses)
}

fn start(dir: &std::path::Path, grpc_workers: u32, pipe_workers: u32) -> (Agent, Demo) {
    require::root_and_bpf();
    let agent = Agent::start(dir, &[]).expect("agent start");
    let (demo, _) = Demo::start_ready(dir, grpc_workers, pipe_workers).expect("demo start");
    // Let discovery pair every connection before the load.
    std::thread::sleep(Duration::from_millis(500));
    (agent, demo)
}

fn finish(agent: Agent, demo: Demo) -> Vec<Value> {
    demo.stop().expect("demo stop");
    std::thread::sleep(Duration::from_millis(1_000));
    agent.stop().expect("agent stop")
}

#[test]
fn every_call_is_reported_exactly_once_with_the_right_fields() {
    let dir = scratch_dir("calls-exact");
    let (agent, mut demo) = start(&dir, 2, 1);
    let mut spec = LoadSpec::new(
        120,
        3_000,
        &[
            ("echo", 4),
            ("sleep", 1),
            ("cpu", 1),
            ("fail", 2),
            ("large", 1),
            ("upload", 1),
            ("stream", 2),
            ("numpy", 1),
            ("snakebridge", 2),
        ],
    );
    spec.pools = vec!["default".into(), "legacy".into()];
    let gt_path = dir.join("ground_truth.jsonl");
    let truth = demo.load_truth(&spec, &gt_path).expect("load");
    let events = finish(agent, demo);
    let ends = call_ends(&events);

    assert!(truth.len() > 200, "load made only {} calls", truth.len());
    assert!(
        truth.iter().any(|g| g.transport == "pipe"),
        "no pipe call in the load"
    );
    assert!(
        truth.iter().any(|g| g.method == "ExecuteStreamingTool"),
        "no streaming call"
    );
    let mut problems = Vec::new();
    for g in &truth {
        let Some(found) = ends.get(&gt_key(g)) else {
            problems.push(format!(
                "missing: {} {} {}",
                g.transport, g.tool, g.correlation_id
            ));
            continue;
        };
        if found.len() != 1 {
            problems.push(format!("{} events for {}", found.len(), g.correlation_id));
            continue;
        }
        let e = found[0];
        let want_function = g.function.clone().unwrap_or_else(|| g.tool.clone());
        let want_result = if g.success { "ok" } else { "error" };
        let checks = [
            ("operation", Some(g.method.as_str())),
            ("tool", Some(g.tool.as_str())),
            ("function", Some(want_function.as_str())),
            (
                "library",
                g.library
                    .as_deref()
                    .filter(|_| g.tool.starts_with("snakebridge")),
            ),
            (
                "session_id",
                g.session_id.as_deref().filter(|_| g.transport == "grpc"),
            ),
            ("result", Some(want_result)),
            ("error_type", g.error_type.as_deref()),
            ("pool", Some(g.pool.as_str())),
            ("worker_id", Some(g.worker_id.as_str())),
        ];
        for (field, want) in checks {
            if let Some(want) = want {
                if meta(e, field) != Some(want) {
                    problems.push(format!(
                        "{} {}: {field} = {:?}, want {want}",
                        g.tool,
                        g.correlation_id,
                        meta(e, field)
                    ));
                }
            }
        }
        if let Some(pid) = g.worker_pid {
            if e["metadata"]["worker_pid"].as_u64() != Some(pid as u64) {
                problems.push(format!(
                    "{}: worker_pid {} want {pid}",
                    g.correlation_id, e["metadata"]["worker_pid"]
                ));
            }
        }
    }
    // Nothing extra: user calls reported == calls made.
    let reported: usize = ends.values().map(Vec::len).sum();
    if reported != truth.len() {
        problems.push(format!(
            "{reported} call events for {} calls made",
            truth.len()
        ));
    }
    assert!(
        problems.is_empty(),
        "{} problems, first: {:#?}",
        problems.len(),
        &problems[..problems.len().min(15)]
    );
}

#[test]
fn durations_match_the_beams_own_measurement() {
    let dir = scratch_dir("calls-durations");
    let (agent, mut demo) = start(&dir, 2, 1);
    let mut spec = LoadSpec::new(
        50,
        5_000,
        &[
            ("echo", 3),
            ("sleep", 2),
            ("cpu", 1),
            ("fail", 1),
            ("stream", 1),
            ("snakebridge", 1),
        ],
    );
    spec.pools = vec!["default".into(), "legacy".into()];
    spec.concurrency = 2;
    let gt_path = dir.join("ground_truth.jsonl");
    let truth = demo.load_truth(&spec, &gt_path).expect("load");
    let events = finish(agent, demo);
    let ends = call_ends(&events);
    // The BEAM's own clock readings carry its send/receive path (caller -> Gun
    // process -> socket, 50-250 us that no syscall shows: shared/profiling-facts.md)
    // and its scheduling delay (a busy scheduler reads the socket late); the agent's
    // are the syscalls'. Every call must agree within 5 % or 200 us, or 300 us where
    // the BEAM's is the longer (that path), but for a 2 % allowance of BEAM-side
    // jitter (in a fresh-clone CI run: 6 of 250 calls 206-258 us shorter by the
    // agent, all that way round). Beyond 1 ms: never with
    // the agent's duration the longer (that would be the agent's error); with the
    // BEAM's the longer, two calls in 100 (in fresh-clone CI runs on 2 cores, where
    // the `cpu` tool's workers fill both, one call of 250 was 1.3-2.8 ms longer by the
    // BEAM's clock: its scheduler thread waited for a CPU between its clock and the
    // socket, which no syscall shows; on 2026-12-02, a machine three times slower than
    // usual, three: 1.4-2.2 ms, two of them echo calls of 3.4-3.7 ms on the wire). Where the BEAM's is the longer, the bound is
    // 500 us: in a fresh-clone CI run on a slow day the BEAM's own path took 55 us at
    // the median, 226 at the 90th percentile and up to 521 (13 of 251 calls beyond
    // 300 us), on a machine where this test had passed at 300; a systematic shortfall
    // of the agent's durations is caught by their median instead (below).
    let mut outside = Vec::new();
    let mut shortfalls = Vec::new();
    let mut far = Vec::new();
    let mut beam_late = Vec::new();
    for g in &truth {
        let e = ends
            .get(&gt_key(g))
            .and_then(|v| v.first())
            .unwrap_or_else(|| panic!("missing {}", g.correlation_id));
        let d = e["measurements"]["duration"].as_u64().expect("duration");
        let diff = d.abs_diff(g.duration_ns);
        let line = format!(
            "{} {}: agent {d} ns, BEAM {} ns",
            g.tool, g.correlation_id, g.duration_ns
        );
        shortfalls.push(g.duration_ns as i64 - d as i64);
        let slack = if d < g.duration_ns { 500_000 } else { 200_000 };
        if diff > (g.duration_ns / 20).max(slack) {
            outside.push(line.clone());
        }
        if diff > (g.duration_ns / 20).max(1_000_000) {
            if d < g.duration_ns {
                beam_late.push(line);
            } else {
                far.push(line);
            }
        }
        // The split adds up: queue + python never exceed the whole.
        let m = &e["measurements"];
        if let (Some(q), Some(p)) = (m["queue_time"].as_u64(), m["python_time"].as_u64()) {
            assert!(
                q + p <= d,
                "queue {q} + python {p} > duration {d} for {}",
                g.correlation_id
            );
        }
        // The worker's (de)serialization (uprobes) lies within its window.
        if let Some(w) = m["worker_time"].as_u64() {
            let ser = m["serialize_time"].as_u64().unwrap_or(0)
                + m["deserialize_time"].as_u64().unwrap_or(0);
            assert!(
                ser <= w,
                "(de)serialization {ser} > worker_time {w} for {}",
                g.correlation_id
            );
        }
    }
    shortfalls.sort_unstable();
    let median_shortfall = shortfalls[shortfalls.len() / 2];
    eprintln!(
        "durations: {} of {} calls outside 5 % / 200 us (500 us shorter), the BEAM's longer by {median_shortfall} ns at the median: {outside:?}",
        outside.len(),
        truth.len()
    );
    // The BEAM's send/receive path, at the median (50-60 us on most days; 143-167 us
    // on 2026-12-02's machine, with this stop's agent and the one before alike): the
    // agent's durations are the wire's, not shorter than it.
    assert!(
        (0..=250_000).contains(&median_shortfall),
        "the BEAM's clock is longer than the agent's by {median_shortfall} ns at the median (its send/receive path is 50-250 us)"
    );
    assert!(
        far.is_empty(),
        "calls longer by the agent than by the BEAM by more than 5 % / 1 ms: {far:#?}"
    );
    assert!(
        beam_late.len() * 50 <= truth.len(),
        "{} of {} calls shorter by the agent than by the BEAM by more than 5 % / 1 ms: {beam_late:#?}",
        beam_late.len(),
        truth.len()
    );
    assert!(
        outside.len() * 50 <= truth.len(),
        "{} of {} calls outside 5 % / 200 us (500 us shorter) of the BEAM's own duration: {:#?}",
        outside.len(),
        truth.len(),
        &outside[..outside.len().min(10)]
    );
}

#[test]
fn agent_joining_live_connections_names_later_calls() {
    require::root_and_bpf();
    let dir = scratch_dir("calls-late-join");
    let (mut demo, _) = Demo::start_ready(&dir, 2, 0).expect("demo start");
    let mix = [
        ("echo", 3),
        ("fail", 1),
        ("stream", 1),
        ("snakebridge", 1),
        ("sleep", 1),
    ];
    demo.load(
        &LoadSpec::new(100, 1_500, &mix),
        &dir.join("gt-before.jsonl"),
    )
    .expect("load before");
    let before: Vec<GroundTruthCall> = read_jsonl(&dir.join("gt-before.jsonl")).expect("gt");
    assert!(
        before.len() >= 100,
        "only {} calls before the agent",
        before.len()
    );

    let agent = Agent::start(&dir, &[]).expect("agent start");
    std::thread::sleep(Duration::from_millis(300));
    let gt_path = dir.join("gt-after.jsonl");
    demo.load(&LoadSpec::new(100, 4_000, &mix), &gt_path)
        .expect("load after");
    let truth: Vec<GroundTruthCall> = read_jsonl(&gt_path).expect("gt");
    let events = finish(agent, demo);
    let ends = call_ends(&events);
    let right = truth
        .iter()
        .filter(|g| {
            ends.get(&gt_key(g))
                .and_then(|v| v.first())
                .is_some_and(|e| {
                    meta(e, "tool") == Some(g.tool.as_str())
                        && meta(e, "operation") == Some(g.method.as_str())
                })
        })
        .count();
    assert!(
        right * 100 >= truth.len() * 99,
        "only {right} of {} calls after a mid-connection join carry the right tool and method",
        truth.len()
    );
}

/// Real workers call InitializeSession back on every tool call (shared/snakepit-facts.md).
/// grpc's C-core writes a connection's first header block with each literal in its own
/// iovec (about 30 for the first callback): the kernel must copy all of them, or that
/// block's HPACK insertions are lost and no later callback on the connection can be
/// named (its `:path` and its correlation id header refer to them).
#[test]
fn every_session_callback_is_decoded_from_its_headers() {
    require::root_and_bpf();
    let dir = scratch_dir("calls-callbacks");
    let config = dir.join("agent.toml");
    std::fs::write(&config, "[calls]\ninclude_internal = true\n").expect("agent config");
    let config = config.to_str().expect("utf-8 scratch path");
    let agent = Agent::start(&dir, &["--config", config]).expect("agent start");
    let (mut demo, _) = Demo::start_ready_with(&DemoOptions {
        grpc_workers: 2,
        pipe_workers: 0,
        init_session_per_call: true,
        log: Some(dir.join("beam.log")),
        ..DemoOptions::default()
    })
    .expect("demo start");
    std::thread::sleep(Duration::from_millis(500));
    let truth = demo
        .load_truth(
            &LoadSpec::new(100, 3_000, &[("echo", 1)]),
            &dir.join("ground_truth.jsonl"),
        )
        .expect("load");
    let events = finish(agent, demo);
    assert!(truth.len() > 150, "load made only {} calls", truth.len());

    let (stats, _) = counted_losses(&events);
    let unknown_refs = stats["measurements"]["unknown_header_refs"].as_u64();
    let gaps = stats["metadata"]["decode_errors_by_kind"]["header_block_gap"]
        .as_u64()
        .unwrap_or(0);
    assert_eq!(
        (unknown_refs, gaps),
        (Some(0), 0),
        "header blocks lost (unknown_header_refs, header_block_gap); stats {stats}"
    );

    // Every tool call waits for its own callback: each worker's callbacks are named
    // and carry the worker's correlation id (a header), at least one per tool call.
    let mut callbacks: HashMap<String, usize> = HashMap::new();
    let mut problems = Vec::new();
    for e in events_named(&events, CALL_STOP) {
        if meta(e, "operation") != Some("InitializeSession") {
            continue;
        }
        let worker = meta(e, "worker_id").unwrap_or_default().to_string();
        if !meta(e, "correlation_id").is_some_and(|c| c.starts_with("w-")) {
            problems.push(format!(
                "{worker}: callback without the worker's correlation id: {e}"
            ));
        }
        *callbacks.entry(worker).or_default() += 1;
    }
    let mut made: HashMap<String, usize> = HashMap::new();
    for g in &truth {
        *made.entry(g.worker_id.clone()).or_default() += 1;
    }
    for (worker, calls) in &made {
        let seen = callbacks.get(worker).copied().unwrap_or(0);
        if seen < *calls {
            problems.push(format!(
                "{worker}: {seen} InitializeSession callbacks named for {calls} tool calls"
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "{} problems, first: {:#?}",
        problems.len(),
        &problems[..problems.len().min(10)]
    );
}

#[test]
fn saturation_loses_nothing_or_counts_every_loss() {
    let dir = scratch_dir("calls-saturation");
    let (agent, mut demo) = start(&dir, 8, 0);
    let mut spec = LoadSpec::new(0, 3_000, &[("echo", 1)]);
    spec.concurrency = 4;
    let gt_path = dir.join("ground_truth.jsonl");
    let truth = demo.load_truth(&spec, &gt_path).expect("load");
    let events = finish(agent, demo);
    let ends = call_ends(&events);
    let missing = missing_calls(&truth, &ends);
    let (stats, counted) = counted_losses(&events);
    let losses: u64 = counted.iter().map(|(_, n)| n).sum();
    eprintln!(
        "saturation: {} calls in 3 s, {missing} missing, losses counted {losses}",
        truth.len()
    );
    assert!(
        truth.len() > 500,
        "the load made only {} calls",
        truth.len()
    );
    assert!(
        missing == 0 || losses > 0,
        "{missing} calls missing with no loss counted (stats {stats})"
    );
}

/// 5,000 calls/s on the demo's pipe workers (its cheapest calls; its gRPC workers
/// saturate near 1,300/s on two cores) for 10 s: every call the load made is reported
/// exactly once, and nothing is dropped or lost, not even with a count. The rate
/// reached depends on the machine: it is printed, and at least 1,000 calls/s are
/// required so that the run is a high-rate one at all.
#[test]
fn pipe_workers_at_5000_calls_per_s_lose_nothing() {
    let dir = scratch_dir("calls-5k");
    let (agent, mut demo) = start(&dir, 0, 4);
    let mut spec = LoadSpec::new(5_000, 10_000, &[("echo", 1)]);
    spec.concurrency = 8;
    spec.pools = vec!["legacy".into()];
    let gt_path = dir.join("ground_truth.jsonl");
    let truth = demo.load_truth(&spec, &gt_path).expect("load");
    let events = finish(agent, demo);
    let ends = call_ends(&events);
    let missing = missing_calls(&truth, &ends);
    let twice = ends.values().filter(|v| v.len() > 1).count();
    let (stats, losses) = counted_losses(&events);
    eprintln!(
        "pipe load: {} calls in 10 s ({:.0}/s), {missing} missing, {twice} reported twice, losses {losses:?}",
        truth.len(),
        truth.len() as f64 / 10.0
    );
    assert!(
        truth.len() >= 10_000,
        "the load made only {} calls in 10 s",
        truth.len()
    );
    assert_eq!((missing, twice), (0, 0), "of {} calls", truth.len());
    assert!(
        losses.iter().all(|(_, n)| *n == 0),
        "losses {losses:?} (stats {stats})"
    );
}

#[test]
fn worker_killed_mid_call_ends_its_call_as_an_exception_and_crash() {
    let dir = scratch_dir("calls-kill");
    let (agent, mut demo) = start(&dir, 1, 0);
    let status = demo.status().expect("status");
    let victim = status.workers[0].clone();
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(700));
        // SAFETY: kill(2) on the worker pid the demo reported.
        unsafe { libc::kill(victim.os_pid as i32, libc::SIGKILL) };
    });
    let mut spec = LoadSpec::new(4, 1_000, &[("sleep", 1)]);
    spec.concurrency = 2;
    let gt_path = dir.join("ground_truth.jsonl");
    // Long sleeps: the kill lands while calls are in flight.
    spec.extra.push("sleep_ms => 1500".into());
    demo.load(&spec, &gt_path).expect("load");
    killer.join().expect("killer");
    let truth: Vec<GroundTruthCall> = read_jsonl(&gt_path).expect("ground truth");
    // In flight at the kill: on the wire (a stream id) and ended by the worker's exit.
    // A call issued after the connection dropped fails in the BEAM without a byte sent.
    let killed: Vec<&GroundTruthCall> = truth
        .iter()
        .filter(|g| g.error_type.as_deref() == Some("exit") && g.stream_id.is_some())
        .collect();
    assert!(
        !killed.is_empty(),
        "no call was in flight at the kill: {truth:?}"
    );
    let events = finish(agent, demo);
    let ends = call_ends(&events);
    for g in killed {
        let e = ends
            .get(&gt_key(g))
            .and_then(|v| v.first())
            .unwrap_or_else(|| panic!("killed call {} not reported", g.correlation_id));
        assert_eq!(e["event"][2], "exception", "{e}");
        assert_eq!(meta(e, "kind"), Some("exit"), "{e}");
    }
    let crash = events_named(&events, WORKER_CRASH)
        .into_iter()
        .find(|e| meta(e, "worker_id") == Some(status.workers[0].worker_id.as_str()))
        .expect("a worker crash event naming the killed worker");
    assert_eq!(
        crash["metadata"]["signal"]
            .as_u64()
            .or(crash["measurements"]["signal"].as_u64()),
        Some(9),
        "{crash}"
    );
}

#[test]
fn fifty_megabyte_messages_keep_every_boundary() {
    let dir = scratch_dir("calls-huge");
    let (agent, mut demo) = start(&dir, 2, 0);
    // 50 MB responses and requests, with small calls on the same connections: frame
    // and message boundaries must survive syscalls far larger than the copied prefix.
    let mut spec = LoadSpec::new(4, 3_000, &[("large", 1), ("upload", 1), ("echo", 2)]);
    spec.concurrency = 2;
    spec.extra.push("large_bytes => 52428800".into());
    spec.extra.push("upload_bytes => 52428800".into());
    let gt_path = dir.join("ground_truth.jsonl");
    let truth = demo.load_truth(&spec, &gt_path).expect("load");
    let events = finish(agent, demo);
    let ends = call_ends(&events);
    let big = truth
        .iter()
        .filter(|g| g.tool == "large" || g.tool == "upload")
        .count();
    assert!(big >= 2, "the load made only {big} 50 MB calls");
    let mut unknown = 0;
    for g in &truth {
        let e = ends
            .get(&gt_key(g))
            .and_then(|v| v.first())
            .unwrap_or_else(|| panic!("{} {} not reported", g.tool, g.correlation_id));
        assert_eq!(meta(e, "tool"), Some(g.tool.as_str()), "{e}");
        // Never a wrong result; `unknown` when the worker's decoder lost the response
        // message before its start (a small call's response multiplexed into the
        // tail of a 50 MB write, past the kernel's mark slots).
        match meta(e, "result") {
            Some("unknown") => unknown += 1,
            result => assert_eq!(result, Some(if g.success { "ok" } else { "error" }), "{e}"),
        }
        let m = &e["measurements"];
        let (req, resp) = (
            m["request_bytes"].as_u64().unwrap_or(0),
            m["response_bytes"].as_u64().unwrap_or(0),
        );
        match g.tool.as_str() {
            "large" => assert!(resp >= 52_428_800, "large: response_bytes {resp}: {e}"),
            "upload" => assert!(req >= 52_428_800, "upload: request_bytes {req}: {e}"),
            _ => {}
        }
    }
    // Frames were followed, not guessed: the kernel's cursor never lost the framing,
    // and every decoder that lost sync inside a syscall with more frame headers than
    // mark slots picked up again at the kernel's exact frame start.
    let stats = events_named(&events, STATS)
        .into_iter()
        .last()
        .expect("stats");
    let cursor_lost: u64 = stats["metadata"]["probes"]
        .as_object()
        .map(|p| p.values().filter_map(|v| v["cursor_lost"].as_u64()).sum())
        .unwrap_or(0);
    assert_eq!(cursor_lost, 0, "the kernel lost a frame cursor: {stats}");
    let lost_sync = stats["metadata"]["decode_errors_by_kind"]["lost_sync"]
        .as_u64()
        .unwrap_or(0);
    let resyncs = stats["measurements"]["decode_resyncs"]
        .as_u64()
        .unwrap_or(0);
    assert!(
        resyncs >= lost_sync,
        "{lost_sync} sync losses, {resyncs} resyncs: {stats}"
    );
    eprintln!("50 MB: {lost_sync} in-syscall sync losses, all recovered ({resyncs} resyncs)");
    let counted = stats["metadata"]["calls"]["calls_unknown"]
        .as_u64()
        .unwrap_or(0);
    eprintln!("{unknown} of {} calls of unknown result", truth.len());
    assert!(
        unknown == 0 || (lost_sync > 0 && counted >= unknown && unknown * 2 <= truth.len() as u64),
        "{unknown} of {} calls of unknown result ({counted} counted, {lost_sync} sync losses)",
        truth.len()
    );
}
