//! End-to-end: the per-call serialization and scheduling split ("why is this call
//! slow") against demo tools whose split is known by construction, and against the
//! worker's own measurement of its (de)serialization (`SNAKEPIT_DEMO_SPLIT_TRUTH`, a
//! file the agent never reads).
use serde_json::Value;
use snakepit_testkit::agent::{events_named, Agent};
use snakepit_testkit::demo::{read_jsonl, Demo, DemoOptions, GroundTruthCall, LoadSpec};
use snakepit_testkit::{require, scratch_dir};
use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const MS: f64 = 1e6;

/// The worker's own (de)serialization clock, by correlation id.
fn read_truth(path: &Path) -> HashMap<String, Value> {
    std::fs::read_to_string(path)
        .expect("the worker's ground truth")
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| Some((v["correlation_id"].as_str()?.to_string(), v)))
        .collect()
}

/// The demo with one gRPC worker; `nice` (when not 0): its worker's autogroup nice.
fn start_demo(dir: &Path, env: &[(&str, String)], nice: i32) -> (Demo, u32) {
    let mut demo = Demo::start(&DemoOptions {
        grpc_workers: 1,
        pipe_workers: 0,
        log: Some(dir.join("beam.log")),
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
        ..DemoOptions::default()
    })
    .expect("demo start");
    let status = demo
        .wait_ready(Duration::from_secs(60))
        .expect("demo ready");
    let pid = status.workers[0].os_pid;
    if nice != 0 {
        snakepit_testkit::procfs::set_autogroup_nice(pid, nice).expect("worker's autogroup nice");
    }
    // The agent plans the worker's probes again until its imports are done (0.25 s).
    std::thread::sleep(Duration::from_millis(2_500));
    (demo, pid)
}

/// One load of exactly `n` sequential calls of `tool` (extra load keys as Erlang map
/// entries); the correlation ids of the calls it made.
fn run(
    demo: &mut Demo,
    dir: &Path,
    tool: &str,
    n: u32,
    per_s: u32,
    extra: &[String],
) -> Vec<String> {
    let mut spec = LoadSpec::new(
        per_s,
        (n as u64 * 1000).div_ceil(per_s as u64) + 1000,
        &[(tool, 1)],
    );
    spec.concurrency = 1;
    spec.extra = extra.to_vec();
    // Exactly `n`: the io_wait writer serves that many.
    spec.extra.push(format!("max_calls => {n}"));
    let stamp = std::time::UNIX_EPOCH.elapsed().map_or(0, |d| d.as_nanos());
    let gt = dir.join(format!("gt-{tool}-{stamp}.jsonl"));
    demo.load(&spec, &gt).expect("load");
    read_jsonl::<GroundTruthCall>(&gt)
        .expect("load ground truth")
        .into_iter()
        .map(|c| c.correlation_id)
        .collect()
}

/// The `call.stop` events of the calls `ids`.
fn stops_in<'a>(events: &'a [Value], ids: &[String]) -> Vec<&'a Value> {
    events_named(events, &["snakepit", "call", "stop"])
        .into_iter()
        .filter(|e| {
            e["metadata"]["correlation_id"]
                .as_str()
                .is_some_and(|c| ids.iter().any(|i| i == c))
        })
        .collect()
}

fn stops_of<'a>(events: &'a [Value], tool: &str) -> Vec<&'a Value> {
    events_named(events, &["snakepit", "call", "stop"])
        .into_iter()
        .filter(|e| e["metadata"]["tool"] == tool)
        .collect()
}

fn m(e: &Value, k: &str) -> f64 {
    e["measurements"][k].as_f64().unwrap_or(f64::NAN)
}

const PARTS: [&str; 7] = [
    "on_cpu_time",
    "runqueue_time",
    "io_wait_time",
    "gil_wait_time",
    "lock_wait_time",
    "sleep_time",
    "gpu_wait_time",
];

/// The split's parts sum to its window within 1 %.
fn parts_sum(e: &Value) -> bool {
    let sum: f64 = PARTS.iter().map(|k| m(e, k)).sum();
    let window = m(e, "worker_time");
    (sum - window).abs() <= 0.01 * window
}

/// The criterion: within `tolerance` of the worker's own measurement or 200 us.
fn close_to_worker(agent_ns: f64, worker_ns: f64, tolerance: f64) -> bool {
    (agent_ns - worker_ns).abs() <= (tolerance * worker_ns).max(200_000.0)
}

/// The agent's time of one direction (`decode`, `encode`) of call `e`.
fn agent_phase(e: &Value, what: &str) -> f64 {
    m(
        e,
        if what == "decode" {
            "deserialize_time"
        } else {
            "serialize_time"
        },
    )
}

/// Call `e`'s deserialization and serialization against the worker's own clock (`t`,
/// its truth line): each within `tolerance`, where a shortfall may also be
/// - the time the worker's thread was off the CPU inside its clock: a preemption
///   between the clock and the probed call lands in the worker's clock only (the
///   agent brackets the call itself); the worker measures it as its clock less its
///   thread's CPU time;
/// - `probes` ns (`ProbeCost`): the probes' own traps, which the worker's clock
///   counts and the agent leaves out.
fn split_matches_worker(e: &Value, t: &Value, tolerance: f64, probes: &ProbeCost) -> bool {
    ["decode", "encode"].iter().all(|what| {
        let agent = agent_phase(e, what);
        let worker = t[format!("{what}_ns")].as_f64().unwrap_or(f64::NAN);
        let off_cpu = t[format!("{what}_off_cpu_ns")].as_f64().unwrap_or(0.0);
        let short = worker - agent;
        close_to_worker(agent, worker, tolerance)
            || (short > 0.0
                && short <= (tolerance * worker).max(200_000.0) + off_cpu + probes.of(what))
    })
}

/// What the agent's probes themselves add to the worker's clock around a probed call:
/// the trap (int3 and the kernel's lookup of the probe, before the entry program reads
/// the clock). A few us, and at times 0.1-0.3 ms on a busy VM (perf samples in
/// `find_active_uprobe_rcu`); the agent leaves it out (docs/events.md). Measured in
/// the same run as the worker's clock less the agent's time for calls that do next to
/// no (de)serialization, same calls and probes: their 95th percentile per direction.
#[derive(Default)]
struct ProbeCost {
    decode_ns: f64,
    encode_ns: f64,
}

impl ProbeCost {
    fn measure(stops: &[&Value], truth: &HashMap<String, Value>) -> ProbeCost {
        let p95 = |what: &str| {
            let mut v: Vec<f64> = stops
                .iter()
                .filter_map(|e| {
                    let t = truth.get(e["metadata"]["correlation_id"].as_str()?)?;
                    let worker = t[format!("{what}_ns")].as_f64()?;
                    let off_cpu = t[format!("{what}_off_cpu_ns")].as_f64().unwrap_or(0.0);
                    let agent = agent_phase(e, what);
                    (!agent.is_nan()).then(|| (worker - off_cpu - agent).max(0.0))
                })
                .collect();
            assert!(
                v.len() >= 20,
                "{} tiny calls with a {what} time from both clocks",
                v.len()
            );
            v.sort_by(f64::total_cmp);
            v[(v.len() * 95 / 100).min(v.len() - 1)]
        };
        ProbeCost {
            decode_ns: p95("decode"),
            encode_ns: p95("encode"),
        }
    }

    fn of(&self, what: &str) -> f64 {
        if what == "decode" {
            self.decode_ns
        } else {
            self.encode_ns
        }
    }
}

/// The autogroup nice of the demo's worker (as the bench does): the worker's own clock
/// around each (de)serialization is what the agent is compared with, and a preemption
/// of the worker between its clock and the call (by the agent, the BEAM, a build)
/// would count against the agent.
const DEMO_NICE: i32 = -10;

/// big_json of 1, 5 and 20 MB against the worker's own clock (`json`: orjson|stdlib).
fn serialization_matches_ground_truth(json: &str) {
    require::root_and_bpf();
    let dir = scratch_dir(&format!("split-serialize-{json}"));
    let truth_path = dir.join("split_truth.jsonl");
    let agent = Agent::start(&dir, &[]).expect("agent start");
    let (mut demo, _) = start_demo(
        &dir,
        &[
            (
                "SNAKEPIT_DEMO_SPLIT_TRUTH",
                truth_path.display().to_string(),
            ),
            ("SNAKEPIT_DEMO_JSON", json.to_string()),
        ],
        DEMO_NICE,
    );
    // 49 calls, so that the 95 % is a rate and not "at most one miss". After each size,
    // calls of a 44-byte document measure what the probes themselves add to the
    // worker's clock meanwhile (`ProbeCost`).
    let sizes = [(1u64 << 20, 40u32), (5 << 20, 6), (20 << 20, 3)];
    let (mut big_ids, mut tiny_ids) = (Vec::new(), Vec::new());
    for (bytes, n) in sizes {
        big_ids.extend(run(
            &mut demo,
            &dir,
            "big_json",
            n,
            1,
            &[format!("big_json_bytes => {bytes}")],
        ));
        tiny_ids.extend(run(
            &mut demo,
            &dir,
            "big_json",
            15,
            20,
            &["big_json_bytes => 44".to_string()],
        ));
    }
    demo.stop().expect("demo stop");
    std::thread::sleep(Duration::from_millis(1_000));
    let events = agent.stop().expect("agent stop");

    let truth = read_truth(&truth_path);
    let probes = ProbeCost::measure(&stops_in(&events, &tiny_ids), &truth);
    let stops = stops_in(&events, &big_ids);
    let expected: u32 = sizes.iter().map(|s| s.1).sum();
    // (A call lost next to a huge message is issue 12's; here only the split matters.)
    assert!(
        stops.len() as f64 >= 0.9 * expected as f64,
        "big_json calls reported: {} of {expected}",
        stops.len()
    );
    let serialize_events = events_named(&events, &["snakepit", "serialize", "stop"]);
    let mut good = 0;
    let mut report = Vec::new();
    for e in &stops {
        let cid = e["metadata"]["correlation_id"]
            .as_str()
            .expect("correlation");
        let t = &truth[cid];
        let (dec, enc) = (m(e, "deserialize_time"), m(e, "serialize_time"));
        let (tdec, tenc) = (
            t["decode_ns"].as_f64().expect("decode_ns"),
            t["encode_ns"].as_f64().expect("encode_ns"),
        );
        // (stdlib json: the agent probes the C scanner and encoder, not the Python
        // around them (bytes to str before the scanner, the join after the encoder);
        // the demo worker's clock times the same two calls.)
        if split_matches_worker(e, t, 0.1, &probes) {
            good += 1;
        }
        let off_cpu = |what: &str| t[what].as_f64().unwrap_or(0.0) / MS;
        // The protobuf call's share on both sides (the rest is the JSON's): says which
        // of the two calls a difference lies in.
        let protobuf_ms = |dir: &str| {
            let agent = serialize_events
                .iter()
                .filter(|s| {
                    s["metadata"]["correlation_id"] == cid
                        && s["metadata"]["direction"] == dir
                        && s["metadata"]["format"] == "protobuf"
                })
                .filter_map(|s| s["measurements"]["duration"].as_f64())
                .sum::<f64>();
            let worker = t[format!("{dir}_protobuf_ns")].as_f64().unwrap_or(f64::NAN);
            (agent / MS, worker / MS)
        };
        let (pb_dec, pb_enc) = (protobuf_ms("decode"), protobuf_ms("encode"));
        report.push(format!(
            "{cid}: decode {:.2} ms (worker {:.2}, {:.2} off-CPU; protobuf {:.2}/{:.2}), encode {:.2} ms (worker {:.2}, {:.2} off-CPU; protobuf {:.2}/{:.2})",
            dec / MS,
            tdec / MS,
            off_cpu("decode_off_cpu_ns"),
            pb_dec.0,
            pb_dec.1,
            enc / MS,
            tenc / MS,
            off_cpu("encode_off_cpu_ns"),
            pb_enc.0,
            pb_enc.1,
        ));
        // python_time is the tool's own time: the window less both (a phase not
        // found counts as none here, and as a miss above).
        let py = m(e, "python_time");
        let found = |v: f64| if v.is_nan() { 0.0 } else { v };
        assert!(
            (py - (m(e, "worker_time") - found(dec) - found(enc))).abs() < 1.0,
            "python_time is the window less (de)serialization: {e}"
        );
        // Format and bytes: the response message's encoding is exactly what the
        // worker serialized; the parameters' JSON is at least the document's size.
        let of = |dir: &str, fmt: &str| {
            serialize_events
                .iter()
                .find(|s| {
                    s["metadata"]["correlation_id"] == cid
                        && s["metadata"]["direction"] == dir
                        && s["metadata"]["format"] == fmt
                })
                .copied()
        };
        let missing = |what: &str| panic!("{what} event missing for {cid}: {e}");
        let enc_pb = of("encode", "protobuf").unwrap_or_else(|| missing("protobuf encode"));
        assert_eq!(
            enc_pb["measurements"]["bytes"], t["bytes_out"],
            "response bytes: {enc_pb}"
        );
        of("decode", "protobuf").unwrap_or_else(|| missing("protobuf decode"));
        // (A missing JSON part shows as a time far from the worker's, counted below.)
        if let Some(dec_json) = of("decode", "json") {
            let size = dec_json["measurements"]["bytes"].as_f64().expect("bytes");
            assert!(size >= 0.9 * (1u64 << 20) as f64, "{dec_json}");
        }
    }
    println!("{}", report.join("\n"));
    // The criterion. The worker's clock spans the probed call plus the
    // interpreter's work around it; its GC passes and GIL hand-overs are held off
    // there (demo_split_tools.SerializationClock), what is left is a preemption of the
    // worker between its clock and the call, which lands in its clock only, and the
    // probes' own traps (`ProbeCost`, measured in this run).
    println!(
        "probes' own cost in the worker's clock, 95th percentile: decode {:.0} us, encode {:.0} us",
        probes.decode_ns / 1e3,
        probes.encode_ns / 1e3
    );
    assert!(
        good as f64 >= 0.95 * stops.len() as f64,
        "deserialize/serialize within 10 % or 200 us of the worker's own timing (less the probes' own cost, 95th percentile: decode {:.0} us, encode {:.0} us) for >= 95 % of calls ({good}/{}):\n{}",
        probes.decode_ns / 1e3,
        probes.encode_ns / 1e3,
        stops.len(),
        report.join("\n")
    );
}

#[test]
fn serialization_split_matches_the_workers_own_timing_orjson() {
    serialization_matches_ground_truth("orjson");
}

#[test]
fn serialization_split_matches_the_workers_own_timing_stdlib_json() {
    serialization_matches_ground_truth("stdlib");
}

/// Writes to the FIFO `n` times: waits for the tool to open it, holds it `hold`,
/// then writes and closes (the tool's read returns).
fn fifo_writer(path: std::path::PathBuf, n: u32, hold: Duration) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for _ in 0..n {
            let mut f = match std::fs::OpenOptions::new().write(true).open(&path) {
                Ok(f) => f,
                Err(_) => return,
            };
            std::thread::sleep(hold);
            let _ = std::io::Write::write_all(&mut f, b"snakepit");
            drop(f);
            // Let the reader see EOF and close before the next open pairs with it.
            std::thread::sleep(Duration::from_millis(200));
        }
    })
}

#[test]
fn scheduling_split_gives_each_tool_its_verdict() {
    require::root_and_bpf();
    let dir = scratch_dir("split-sched");
    let agent = Agent::start(&dir, &[]).expect("agent start");
    let (mut demo, worker) = start_demo(&dir, &[], 0);

    let free_ids = run(
        &mut demo,
        &dir,
        "cpu_spin",
        5,
        2,
        &["spin_ms => 250".into()],
    );
    let sleep_ids = run(&mut demo, &dir, "sleep", 5, 2, &["sleep_ms => 250".into()]);
    let fifo = dir.join("io.fifo");
    let c = std::ffi::CString::new(fifo.display().to_string()).expect("path");
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o666) }, 0, "mkfifo");
    // The wait is long next to the tool's own work around it (its dispatch and
    // result: 1-25 ms on CPU here, depending on the machine's day).
    let writer = fifo_writer(fifo.clone(), 4, Duration::from_millis(600));
    let io_ids = run(
        &mut demo,
        &dir,
        "io_wait",
        4,
        1,
        &[format!("io_fifo => \"{}\"", fifo.display())],
    );
    writer.join().expect("fifo writer");
    let gil_ids = run(
        &mut demo,
        &dir,
        "gil_contention",
        4,
        1,
        &["spin_ms => 400".into()],
    );

    // A CPU hog pinned with every thread of the worker to one CPU.
    let pin = Command::new("taskset")
        .args(["-a", "-p", "-c", "0", &worker.to_string()])
        .output()
        .expect("taskset (util-linux)");
    assert!(pin.status.success(), "taskset: {pin:?}");
    let mut hog = Command::new("taskset")
        .args(["-c", "0", "sh", "-c", "while :; do :; done"])
        .spawn()
        .expect("cpu hog");
    std::thread::sleep(Duration::from_millis(300));
    let starved_ids = run(
        &mut demo,
        &dir,
        "cpu_spin",
        4,
        1,
        &["spin_ms => 400".into()],
    );
    let _ = hog.kill();
    let _ = hog.wait();

    demo.stop().expect("demo stop");
    std::thread::sleep(Duration::from_millis(1_000));
    let events = agent.stop().expect("agent stop");

    let share = |e: &Value, k: &str| m(e, k) / m(e, "python_time");
    let mut problems = Vec::new();
    let mut check = |ok: bool, what: &str, e: &Value| {
        if !ok {
            problems.push(format!("{what}: {e}"));
        }
    };
    // This host's other processes may preempt the spin (runqueue) and the worker's
    // other Python threads take the GIL now and then (gil_wait): it must never wait
    // for anything else.
    let (free, starved) = (
        stops_in(&events, &free_ids),
        stops_in(&events, &starved_ids),
    );
    check(
        free.len() >= 4 && starved.len() >= 3,
        "cpu_spin calls reported",
        &Value::from(free.len()),
    );
    for e in free {
        check(parts_sum(e), "parts sum to the window", e);
        let runnable =
            share(e, "on_cpu_time") + share(e, "runqueue_time") + share(e, "gil_wait_time");
        check(
            runnable >= 0.9,
            "cpu_spin on CPU, runnable or GIL >= 90 %",
            e,
        );
        check(
            share(e, "on_cpu_time") >= 0.75,
            "cpu_spin on CPU >= 75 %",
            e,
        );
        check(e["metadata"]["bound"] == "cpu", "verdict cpu", e);
    }
    for e in starved {
        check(parts_sum(e), "parts sum to the window", e);
        check(
            share(e, "runqueue_time") >= 0.3,
            "runqueue >= 30 % with a hog",
            e,
        );
        check(
            e["metadata"]["bound"] == "cpu_starved",
            "verdict cpu_starved",
            e,
        );
    }
    let sleeps = stops_in(&events, &sleep_ids);
    check(
        sleeps.len() >= 4,
        "sleep calls reported",
        &Value::from(sleeps.len()),
    );
    for e in sleeps {
        check(parts_sum(e), "parts sum to the window", e);
        check(e["metadata"]["bound"] == "sleep", "verdict sleep", e);
    }
    let io = stops_in(&events, &io_ids);
    check(
        io.len() >= 3,
        "io_wait calls reported",
        &Value::from(io.len()),
    );
    for e in io {
        check(parts_sum(e), "parts sum to the window", e);
        check(share(e, "io_wait_time") >= 0.9, "io_wait >= 90 %", e);
        check(e["metadata"]["bound"] == "io", "verdict io", e);
    }
    let gil = stops_in(&events, &gil_ids);
    check(
        gil.len() >= 3,
        "gil_contention calls reported",
        &Value::from(gil.len()),
    );
    for e in gil {
        check(parts_sum(e), "parts sum to the window", e);
        check(share(e, "gil_wait_time") >= 0.3, "gil_wait >= 30 %", e);
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

fn venv_python(minor: u32) -> std::path::PathBuf {
    let p = snakepit_testkit::workspace_root().join(format!(".venv-py3.{minor}/bin/python"));
    assert!(
        p.exists(),
        "{} is missing (a CPython 3.{minor} venv with grpcio, protobuf, orjson): run `cargo xtask setup`",
        p.display()
    );
    p
}

/// big_json calls of 1 MB in the per-version test.
const BIG_JSON_CALLS: u32 = 5;

/// The split on another interpreter: its GIL (`_PyRuntime` of that version), its
/// orjson and upb wheels.
fn split_on_cpython(minor: u32) {
    require::root_and_bpf();
    let dir = scratch_dir(&format!("split-py3{minor}"));
    let truth_path = dir.join("split_truth.jsonl");
    let agent = Agent::start(&dir, &[]).expect("agent start");
    let mut demo = Demo::start(&DemoOptions {
        grpc_workers: 1,
        pipe_workers: 0,
        log: Some(dir.join("beam.log")),
        python: Some(venv_python(minor)),
        env: vec![(
            "SNAKEPIT_DEMO_SPLIT_TRUTH".to_string(),
            truth_path.display().to_string(),
        )],
        ..DemoOptions::default()
    })
    .expect("demo start");
    let status = demo
        .wait_ready(Duration::from_secs(60))
        .expect("demo ready");
    snakepit_testkit::procfs::set_autogroup_nice(status.workers[0].os_pid, DEMO_NICE)
        .expect("worker's autogroup nice");
    std::thread::sleep(Duration::from_millis(2_500));
    run(
        &mut demo,
        &dir,
        "cpu_spin",
        3,
        2,
        &["spin_ms => 200".into()],
    );
    run(
        &mut demo,
        &dir,
        "gil_contention",
        2,
        1,
        &["spin_ms => 400".into()],
    );
    run(
        &mut demo,
        &dir,
        "big_json",
        BIG_JSON_CALLS,
        2,
        &[format!("big_json_bytes => {}", 1u64 << 20)],
    );
    demo.stop().expect("demo stop");
    std::thread::sleep(Duration::from_millis(1_000));
    let events = agent.stop().expect("agent stop");
    let share = |e: &Value, k: &str| m(e, k) / m(e, "python_time");
    let mut problems = Vec::new();
    // On CPU or waiting for one (this host's other processes may take it).
    for e in stops_of(&events, "cpu_spin") {
        let runnable =
            share(e, "on_cpu_time") + share(e, "runqueue_time") + share(e, "gil_wait_time");
        let verdict = e["metadata"]["bound"] == "cpu" || e["metadata"]["bound"] == "cpu_starved";
        if !(parts_sum(e) && verdict && runnable >= 0.9) {
            problems.push(format!("cpu_spin not CPU-bound: {e}"));
        }
    }
    for e in stops_of(&events, "gil_contention") {
        if !(parts_sum(e) && share(e, "gil_wait_time") >= 0.3) {
            problems.push(format!("gil_contention without >= 30 % GIL wait: {e}"));
        }
    }
    let big = stops_of(&events, "big_json");
    if big.len() < BIG_JSON_CALLS as usize {
        problems.push(format!("{} big_json calls reported", big.len()));
    }
    // The (de)serialization against the worker's own clock, summed over the calls:
    // the probes in this version's wheels find both phases of every call, and their
    // total is the worker's within 10 %. (Per call, the 3.11 tests above hold 10 %;
    // here a call's encoding is 1-2 ms, where 0.25 ms outside the probed calls, seen
    // on CI in two calls of five, is already 13 %.)
    let truth = read_truth(&truth_path);
    // Per phase: the agent's total, the worker's, and the worker's time off the CPU.
    let mut sums = [[0.0f64; 3]; 2];
    let phases = [("decode", "deserialize_time"), ("encode", "serialize_time")];
    let mut report = Vec::new();
    for e in big {
        let cid = e["metadata"]["correlation_id"].as_str().unwrap_or("?");
        let t = &truth[cid];
        let mut line = format!("big_json {cid}:");
        for (sum, (what, field)) in sums.iter_mut().zip(phases) {
            let agent = m(e, field);
            let worker = t[format!("{what}_ns")].as_f64().unwrap_or(f64::NAN);
            line += &format!(" {what} {:.2} ms (worker {:.2})", agent / MS, worker / MS);
            if agent.is_nan() || worker.is_nan() {
                problems.push(format!("big_json {cid}: {what} not measured: {e}"));
                continue;
            }
            sum[0] += agent;
            sum[1] += worker;
            sum[2] += t[format!("{what}_off_cpu_ns")].as_f64().unwrap_or(0.0);
        }
        report.push(line);
    }
    for ([agent, worker, off_cpu], (what, _)) in sums.into_iter().zip(phases) {
        let close = close_to_worker(agent, worker, 0.1)
            || (agent < worker && close_to_worker(agent + off_cpu, worker, 0.1));
        if !close {
            problems.push(format!(
                "{what} summed over the big_json calls: {:.2} ms, the worker's {:.2} ms ({:.2} off-CPU):\n{}",
                agent / MS,
                worker / MS,
                off_cpu / MS,
                report.join("\n")
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "CPython 3.{minor}:\n{}",
        problems.join("\n")
    );
}

#[test]
fn split_on_cpython_3_12() {
    split_on_cpython(12);
}

#[test]
fn split_on_cpython_3_13() {
    split_on_cpython(13);
}

/// The same probes on protobuf's previous major (6.x: `.venv-pb6`, its own stubs).
#[test]
fn serialization_split_on_protobuf_6() {
    require::root_and_bpf();
    let root = snakepit_testkit::workspace_root();
    let python = root.join(".venv-pb6/bin/python");
    assert!(
        python.exists(),
        "{} is missing (CPython 3.11 with protobuf 6.x): run `cargo xtask setup`",
        python.display()
    );
    let dir = scratch_dir("split-pb6");
    let truth_path = dir.join("split_truth.jsonl");
    let agent = Agent::start(&dir, &[]).expect("agent start");
    let mut demo = Demo::start(&DemoOptions {
        grpc_workers: 1,
        pipe_workers: 0,
        log: Some(dir.join("beam.log")),
        python: Some(python),
        env: vec![
            ("SNAKEPIT_DEMO_GENERATED".into(), "generated-pb6".into()),
            (
                "SNAKEPIT_DEMO_SPLIT_TRUTH".into(),
                truth_path.display().to_string(),
            ),
        ],
        ..DemoOptions::default()
    })
    .expect("demo start");
    demo.wait_ready(Duration::from_secs(60))
        .expect("demo ready");
    std::thread::sleep(Duration::from_millis(2_500));
    run(
        &mut demo,
        &dir,
        "big_json",
        6,
        2,
        &[format!("big_json_bytes => {}", 1u64 << 20)],
    );
    demo.stop().expect("demo stop");
    std::thread::sleep(Duration::from_millis(1_000));
    let events = agent.stop().expect("agent stop");
    let truth = read_truth(&truth_path);
    let stops = stops_of(&events, "big_json");
    assert!(stops.len() >= 5, "{} big_json calls reported", stops.len());
    let mut good = 0;
    for e in &stops {
        let cid = e["metadata"]["correlation_id"]
            .as_str()
            .expect("correlation");
        if split_matches_worker(e, &truth[cid], 0.1, &ProbeCost::default()) {
            good += 1;
        }
    }
    assert!(
        good as f64 >= 0.8 * stops.len() as f64,
        "protobuf 6: {good} of {} calls within 10 % or 200 us of the worker's timing",
        stops.len()
    );
}

/// One agent run over `secs` of `rate` echo calls/s with `[profile]
/// split_max_calls_per_s = max`: (calls, calls with a split, their stops, the
/// scheduling records the kernel sent, the agent's split_sampling stats). `profile`:
/// more `[profile]` settings.
fn sampled_run(
    dir: &Path,
    demo: &mut Demo,
    max: u32,
    rate: u32,
    secs: u64,
    profile: &str,
) -> SampledRun {
    let config = dir.join(format!("split-max-{max}.toml"));
    std::fs::write(
        &config,
        // program_stats: the uprobe programs' run counts below.
        format!(
            "[capture]\nprogram_stats = true\n[profile]\nsplit_max_calls_per_s = {max}\n{profile}"
        ),
    )
    .expect("config");
    let out = dir.join(format!("events-max-{max}.jsonl"));
    let agent = Agent::start_to(dir, &out, &["--config", &config.display().to_string()])
        .expect("agent start");
    std::thread::sleep(Duration::from_millis(2_500));
    let mut spec = LoadSpec::new(rate, secs * 1000, &[("echo", 1)]);
    spec.concurrency = 2;
    let gt = dir.join(format!("gt-max-{max}.jsonl"));
    demo.load(&spec, &gt).expect("load");
    let ids: Vec<String> = read_jsonl::<GroundTruthCall>(&gt)
        .expect("load ground truth")
        .into_iter()
        .map(|c| c.correlation_id)
        .collect();
    std::thread::sleep(Duration::from_millis(1_000));
    let events = agent.stop().expect("agent stop");
    let stops: Vec<Value> = stops_in(&events, &ids).into_iter().cloned().collect();
    let stats = events_named(&events, &["snakepit", "agent", "stats"])
        .last()
        .map(|e| (*e).clone())
        .expect("agent.stats");
    SampledRun {
        calls: ids.len(),
        split: stops
            .iter()
            .filter(|e| e["measurements"]["worker_time"].is_u64())
            .count(),
        sched_records: stats["metadata"]["probes"]["sched_switch"]["events"]
            .as_u64()
            .unwrap_or(0),
        sampling: stats["metadata"]["split_sampling"].clone(),
        serialize_runs: ["serialize_enter", "serialize_exit"]
            .iter()
            .map(|p| {
                stats["metadata"]["program_run_time"][p]["run_count"]
                    .as_u64()
                    .unwrap_or(0)
            })
            .sum(),
        off_cpu_samples: stats["metadata"]["profiler"]["off_cpu_samples"]
            .as_u64()
            .unwrap_or(0),
        stops,
    }
}

struct SampledRun {
    calls: usize,
    split: usize,
    stops: Vec<Value>,
    sched_records: u64,
    sampling: Value,
    /// Runs of the (de)serialization uprobe programs (the agent's own stats).
    serialize_runs: u64,
    /// Off-CPU stacks the kernel walked and sent.
    off_cpu_samples: u64,
}

/// Above `split_max_calls_per_s` the split's probes record in windows: far fewer
/// scheduling records per call than when every call is split, about that many calls a
/// second split, and each split as whole as before (its parts add up to its window:
/// no call across a pause is split).
#[test]
fn above_the_split_rate_the_probes_record_in_windows() {
    require::root_and_bpf();
    let dir = scratch_dir("split-sampling");
    let (mut demo, _) = start_demo(&dir, &[], DEMO_NICE);
    let (rate, secs) = (200, 8);
    let all = sampled_run(&dir, &mut demo, 0, rate, secs, "");
    let sampled = sampled_run(&dir, &mut demo, 20, rate, secs, "");
    demo.stop().expect("demo stop");
    for run in [&all, &sampled] {
        eprintln!(
            "{} calls, {} split, {} scheduling records, sampling {}",
            run.calls, run.split, run.sched_records, run.sampling
        );
        assert!(run.calls as u64 >= rate as u64 * secs / 2, "the load ran");
        assert_eq!(run.stops.len(), run.calls, "every call is still reported");
        // (A thread not seen since a pause has no scheduling parts; its call keeps
        // what the (de)serialization probes measured.)
        for e in run
            .stops
            .iter()
            .filter(|e| e["measurements"]["on_cpu_time"].is_u64())
        {
            assert!(parts_sum(e), "parts add up to the window: {e}");
        }
    }
    assert!(
        all.split * 10 >= all.calls * 9,
        "split_max_calls_per_s = 0 splits every call: {} of {}",
        all.split,
        all.calls
    );
    assert_eq!(all.sampling["windows"], 0, "never paused: {}", all.sampling);
    // 20 of 200 calls/s, after the first quarter second that measures the rate.
    assert!(
        sampled.split >= 5 && sampled.split * 10 <= sampled.calls * 3,
        "{} of {} calls split at 10x the limit",
        sampled.split,
        sampled.calls
    );
    let with_sched = |r: &SampledRun| {
        r.stops
            .iter()
            .filter(|e| e["measurements"]["on_cpu_time"].is_u64())
            .count()
    };
    assert!(
        with_sched(&sampled) >= 3 && with_sched(&all) * 10 >= all.calls * 9,
        "calls with scheduling parts: {} sampled, {} of {} with every call split",
        with_sched(&sampled),
        with_sched(&all),
        all.calls
    );
    assert!(
        sampled.sampling["windows"].as_u64() >= Some(1),
        "{}",
        sampled.sampling
    );
    let not_split = sampled.sampling["calls_not_split"].as_u64().unwrap_or(0) as usize;
    assert!(
        not_split + sampled.split >= sampled.calls * 9 / 10,
        "calls outside the windows are counted: {not_split} + {} of {}",
        sampled.split,
        sampled.calls
    );
    // The kernel's gate really pauses: its scheduling records per call.
    let per_call = |r: &SampledRun| r.sched_records as f64 / r.calls as f64;
    assert!(
        per_call(&sampled) * 2.0 <= per_call(&all),
        "scheduling records per call: {:.1} sampled, {:.1} with every call split",
        per_call(&sampled),
        per_call(&all)
    );
    // The (de)serialization uprobes are multi-uprobe links on this kernel, attached
    // only for the windows: between them the workers' calls run no uprobe program.
    // The calls split inside a window still have what they measured.
    let runs_per_call = |r: &SampledRun| r.serialize_runs as f64 / r.calls as f64;
    assert!(
        runs_per_call(&all) >= 2.0 && runs_per_call(&sampled) * 2.0 <= runs_per_call(&all),
        "uprobe program runs per call: {:.1} sampled, {:.1} with every call split",
        runs_per_call(&sampled),
        runs_per_call(&all)
    );
    let with_decode = sampled
        .stops
        .iter()
        .filter(|e| e["measurements"]["deserialize_time"].is_u64())
        .count();
    assert!(
        with_decode * 10 >= sampled.split * 8,
        "split calls with their deserialization measured: {with_decode} of {}",
        sampled.split
    );
}

/// The off-CPU walks' rate limit (`off_cpu_hz` per thread after a burst) holds across
/// the split's recording windows: a window that opens resets each thread's scheduling
/// state, and once reset the limit with it, giving every thread a fresh burst of walks
/// per window (about 2 windows a second at twice the split's rate). Recording in
/// windows must then walk no more stacks than recording all the time.
#[test]
fn the_off_cpu_walk_limit_holds_across_recording_windows() {
    require::root_and_bpf();
    let dir = scratch_dir("split-walk-limit");
    let (mut demo, _) = start_demo(&dir, &[], DEMO_NICE);
    let (rate, secs) = (200, 8);
    let walks = "off_cpu_hz = 1\n";
    let always = sampled_run(&dir, &mut demo, 0, rate, secs, walks);
    let windows = sampled_run(&dir, &mut demo, 100, rate, secs, walks);
    demo.stop().expect("demo stop");
    for run in [&always, &windows] {
        eprintln!(
            "{} calls, {} off-CPU walks, sampling {}",
            run.calls, run.off_cpu_samples, run.sampling
        );
        assert!(run.calls as u64 >= rate as u64 * secs / 2, "the load ran");
    }
    let opened = windows.sampling["windows"].as_u64().unwrap_or(0);
    assert!(opened >= 6, "windows opened: {}", windows.sampling);
    assert!(
        always.off_cpu_samples >= 5,
        "the workers' threads are walked: {}",
        always.off_cpu_samples
    );
    assert!(
        windows.off_cpu_samples <= always.off_cpu_samples * 3 / 2 + 10,
        "{} off-CPU walks recording in {opened} windows, {} recording all the time",
        windows.off_cpu_samples,
        always.off_cpu_samples
    );
}
