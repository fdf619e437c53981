//! End-to-end: the agent under hostile or broken surroundings (issue 12): thousands of
//! live-page clients that never read, and an `--output` file system that fills up.
use snakepit_testkit::agent::Agent;
use snakepit_testkit::demo::{Demo, DemoOptions};
use snakepit_testkit::{procfs, require, scratch_dir};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
}

fn start_demo(dir: &Path, autoload: u32) -> Demo {
    let mut demo = Demo::start(&DemoOptions {
        autoload,
        log: Some(dir.join("beam.log")),
        ..DemoOptions::default()
    })
    .expect("demo start");
    demo.wait_ready(Duration::from_secs(60))
        .expect("demo ready");
    demo
}

/// One request on a fresh connection; the answer ("" when refused or closed).
fn http_get(addr: SocketAddr, path: &str) -> String {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return String::new();
    }
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// Opens `/events` and reads until `n` state messages came, or `timeout`.
fn stream_states(addr: SocketAddr, n: usize, timeout: Duration) -> usize {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
        return 0;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
        .is_err()
    {
        return 0;
    }
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => seen.extend_from_slice(&buf[..k]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => break,
        }
        let count = String::from_utf8_lossy(&seen)
            .matches("event: state\n")
            .count();
        if count >= n {
            return count;
        }
    }
    String::from_utf8_lossy(&seen)
        .matches("event: state\n")
        .count()
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0)
}

fn raise_fd_limit(n: u64) {
    let lim = libc::rlimit {
        rlim_cur: n,
        rlim_max: n,
    };
    // SAFETY: setrlimit with a valid struct; root may raise the hard limit.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    assert_eq!(
        rc, 0,
        "raising RLIMIT_NOFILE to {n} for 2,000 client sockets"
    );
}

/// 2,000 clients open `/events` and never read (the old agent went from 90 MB to
/// 1.3 GB): the agent's memory stays bounded, the stuck clients are dropped and
/// counted, and a client that does read still gets live states.
#[test]
fn live_stream_clients_that_never_read_keep_memory_bounded() {
    require::root_and_bpf();
    require::demo_built();
    let dir = scratch_dir("hardening-sse");
    let addr = free_addr();
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "[http]\nenabled = true\nlisten = \"{addr}\"\npage_update_ms = 100\n\
             write_stall_timeout_ms = 2000\nheader_read_timeout_ms = 2000\n"
        ),
    )
    .expect("config");
    let cfg = config.to_string_lossy().into_owned();
    let agent = Agent::start(&dir, &["--config", &cfg, "--summary-interval-ms", "500"])
        .expect("agent start");
    let demo = start_demo(&dir, 60);
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        stream_states(addr, 2, Duration::from_secs(10)) >= 2,
        "a reading client gets live states before the attack"
    );
    let baseline = procfs::rss_kib(agent.pid()).expect("agent rss");

    raise_fd_limit(8192);
    let mut idle = Vec::new();
    for _ in 0..2000 {
        if let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            let _ = s.write_all(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n");
            idle.push(s); // never read
        }
    }
    assert!(idle.len() >= 1000, "only {} clients connected", idle.len());
    let mut peak = baseline;
    let watch_until = Instant::now() + Duration::from_secs(15);
    while Instant::now() < watch_until {
        peak = peak.max(procfs::rss_kib(agent.pid()).unwrap_or(0));
        std::thread::sleep(Duration::from_millis(200));
    }
    // The stuck clients are still connected: a new reader is served all the same.
    let mut states = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while states < 2 && Instant::now() < deadline {
        states = stream_states(addr, 2, Duration::from_secs(5));
        peak = peak.max(procfs::rss_kib(agent.pid()).unwrap_or(0));
    }
    assert!(
        states >= 2,
        "a reading client got {states} states while 2,000 idle ones hang on"
    );
    let metrics = http_get(addr, "/metrics");
    let dropped = metric(&metrics, "snakepit_agent_http_slow_clients_dropped_total");
    let refused = metric(&metrics, "snakepit_agent_http_refused_connections_total")
        + metric(&metrics, "snakepit_agent_http_refused_event_streams_total");
    drop(idle);
    std::thread::sleep(Duration::from_secs(5));
    let after = procfs::rss_kib(agent.pid()).expect("agent rss");
    eprintln!(
        "agent RSS: baseline {} MiB, peak {} MiB with 2,000 idle clients, {} MiB after; \
         slow clients dropped {dropped}, refused {refused}",
        baseline / 1024,
        peak / 1024,
        after / 1024
    );
    assert!(
        dropped > 0,
        "stuck readers are dropped and counted: {metrics}"
    );
    assert!(refused > 0, "clients over the caps are refused and counted");
    assert!(
        peak < baseline + 150 * 1024,
        "RSS grew {} MiB with 2,000 idle clients (bound 150 MiB)",
        (peak - baseline) / 1024
    );
    assert!(
        after < baseline + 100 * 1024,
        "RSS stays {} MiB above the baseline after the clients left",
        (after.saturating_sub(baseline)) / 1024
    );
    assert!(http_get(addr, "/healthz").starts_with("HTTP/1.1 200"));
    demo.stop().expect("demo stop");
    agent.stop().expect("agent stop");
}

/// A tmpfs mount that is unmounted when dropped.
struct SmallFs(PathBuf);

impl SmallFs {
    fn mount(path: PathBuf, size: &str) -> SmallFs {
        std::fs::create_dir_all(&path).expect("mount point");
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .status()
            .expect("running mount");
        assert!(
            st.success(),
            "mount -t tmpfs -o size={size} failed (needs root)"
        );
        SmallFs(path)
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// `--output` on a file system that fills up (it used to log one line, leave a torn
/// last line and exit 0): every line in the file is whole JSON, the agent says why
/// and exits non-zero.
#[test]
fn a_full_output_file_system_fails_the_run_without_torn_lines() {
    require::root_and_bpf();
    require::demo_built();
    let dir = scratch_dir("hardening-full-disk");
    let fs = SmallFs::mount(dir.join("small"), "64k");
    let output = fs.0.join("events.jsonl");
    let mut agent =
        Agent::start_to(&dir, &output, &["--summary-interval-ms", "200"]).expect("agent start");
    let demo = start_demo(&dir, 60);
    let status = agent
        .wait_exit(Duration::from_secs(90))
        .expect("waiting for the agent");
    let text = std::fs::read_to_string(&output).expect("output readable");
    let log = std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default();
    demo.stop().expect("demo stop");
    let status = status.expect("the agent stops by itself once its output is full");
    assert!(!status.success(), "exit status {status} must say it failed");
    assert!(
        log.contains("No space left on device") && log.contains("output failed"),
        "the log says why: {log}"
    );
    assert!(
        text.len() > 10_000,
        "the file was filled ({} bytes)",
        text.len()
    );
    assert!(text.ends_with('\n'), "the last line is whole");
    for (i, line) in text.lines().enumerate() {
        assert!(
            serde_json::from_str::<serde_json::Value>(line).is_ok(),
            "line {i} is not whole JSON: {line:?}"
        );
    }
}

/// A restart under load (it took ~40 s): from the agent's launch to its first reported
/// call, with the demo already busy, stays under the 10 s (measured 2.2 s; 5.5-6.6 s on a 2-core machine at load 8,
/// most of it the verifier's time on the probes).
#[test]
fn an_agent_restarted_under_load_reports_calls_within_10_s() {
    require::root_and_bpf();
    require::demo_built();
    let dir = scratch_dir("hardening-restart");
    let demo = start_demo(&dir, 100);
    for round in 0..2 {
        let t0 = Instant::now();
        let run_dir = dir.join(format!("r{round}"));
        std::fs::create_dir_all(&run_dir).expect("scratch subdir");
        let mut agent = Agent::start(&run_dir, &[]).expect("agent start");
        let started = t0.elapsed();
        agent
            .wait_for(Duration::from_secs(30), |e| {
                snakepit_testkit::agent::is_event(e, &["snakepit", "call", "stop"])
            })
            .expect("a call reported");
        let first_call = t0.elapsed();
        eprintln!(
            "restart {round}: agent started after {:.2} s, first call reported after {:.2} s",
            started.as_secs_f64(),
            first_call.as_secs_f64()
        );
        assert!(
            first_call < Duration::from_secs(10),
            "first call after {first_call:?} (bound 10 s)"
        );
        agent.stop().expect("agent stop");
    }
    demo.stop().expect("demo stop");
}

/// A 30 MB request used to cost the next call on its connection (`lost_sync` 14): one
/// worker, so every call shares its connection, uploads of 30 MB between small calls;
/// every call is reported with its tool.
#[test]
fn a_30_mb_request_costs_its_neighbours_nothing() {
    use snakepit_testkit::agent::events_named;
    use snakepit_testkit::demo::LoadSpec;
    require::root_and_bpf();
    require::demo_built();
    let dir = scratch_dir("hardening-30mb");
    let agent = Agent::start(&dir, &[]).expect("agent start");
    let (mut demo, _) = Demo::start_ready(&dir, 1, 0).expect("demo start");
    std::thread::sleep(Duration::from_millis(500));
    // Concurrent calls: small ones interleave with the big one's frames on the wire.
    let mut spec = LoadSpec::new(6, 6_000, &[("upload", 1), ("echo", 3)]);
    spec.concurrency = 4;
    spec.extra.push("upload_bytes => 31457280".into());
    let truth = demo
        .load_truth(&spec, &dir.join("ground_truth.jsonl"))
        .expect("load");
    demo.stop().expect("demo stop");
    std::thread::sleep(Duration::from_secs(1));
    let events = agent.stop().expect("agent stop");
    let uploads = truth.iter().filter(|g| g.tool == "upload").count();
    assert!(uploads >= 3, "the load made only {uploads} 30 MB calls");
    let ends: Vec<&serde_json::Value> = events_named(&events, &["snakepit", "call", "stop"])
        .into_iter()
        .chain(events_named(&events, &["snakepit", "call", "exception"]))
        .collect();
    let mut missing = Vec::new();
    for g in &truth {
        let e = ends
            .iter()
            .find(|e| e["metadata"]["correlation_id"] == g.correlation_id.as_str());
        match e {
            Some(e) => assert_eq!(e["metadata"]["tool"], g.tool.as_str(), "{e}"),
            None => missing.push(format!("{} #{} {}", g.tool, g.seq, g.correlation_id)),
        }
    }
    let stats = events_named(&events, &["snakepit", "agent", "stats"])
        .into_iter()
        .last()
        .map(|s| s["metadata"]["decode_errors_by_kind"].clone());
    eprintln!(
        "{} calls ({uploads} of 30 MB), decode errors {stats:?}",
        truth.len()
    );
    assert!(
        missing.is_empty(),
        "{} of {} calls not reported: {missing:?}; decode errors {stats:?}",
        missing.len(),
        truth.len()
    );
}

/// Garbage on a watched connection (2 MB of random bytes after a real preface, and a
/// frame declaring 16 MB) used to count no decode error, only gap bytes. A raw TCP
/// client, declared a BEAM (`--beam-pid`), talks to a real worker's gRPC port.
#[test]
fn garbage_frames_are_counted_as_decode_errors_by_kind() {
    use snakepit_testkit::agent::events_named;
    require::root_and_bpf();
    require::demo_built();
    let dir = scratch_dir("hardening-garbage");
    let (demo, status) = Demo::start_ready(&dir, 1, 0).expect("demo start");
    let port = status
        .workers
        .iter()
        .find_map(|w| w.port)
        .expect("a gRPC worker port");
    let me = std::process::id().to_string();
    let agent = Agent::start(&dir, &["--beam-pid", &me, "--summary-interval-ms", "200"])
        .expect("agent start");
    std::thread::sleep(Duration::from_secs(1));
    let worker: SocketAddr = ([127, 0, 0, 1], port).into();
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let settings = [0u8, 0, 0, 4, 0, 0, 0, 0, 0];
    // Connects, lets the agent pair the connection (so its first byte is seen), sends
    // the preface and SETTINGS, then `rest`.
    let send = |rest: &[u8]| {
        let mut s = TcpStream::connect(worker).expect("connect to the worker");
        std::thread::sleep(Duration::from_millis(1500));
        s.write_all(PREFACE).expect("preface");
        s.write_all(&settings).expect("settings");
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let mut buf = [0u8; 256];
        let _ = s.read(&mut buf);
        std::thread::sleep(Duration::from_millis(300));
        let _ = s.write_all(rest);
        std::thread::sleep(Duration::from_millis(500));
    };
    // The latest stats' error counts by kind, once they differ from `before`.
    let kinds_after = |agent: &Agent, before: &serde_json::Value| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let events = agent.events();
            let last = events_named(&events, &["snakepit", "agent", "stats"])
                .last()
                .map(|e| e["metadata"]["decode_errors_by_kind"].clone());
            if let Some(k) = last.filter(|k| k != before) {
                return Some(k);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    };
    let n = |kinds: &serde_json::Value, k: &str| kinds[k].as_u64().unwrap_or(0);
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let garbage: Vec<u8> = (0..2 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    send(&garbage);
    let after_garbage = kinds_after(&agent, &serde_json::json!({}))
        .expect("2 MB of random bytes counted no decode error");
    eprintln!("after 2 MB of random bytes: {after_garbage}");
    // DATA declaring 16 MiB - 1 on stream 1, which no HEADERS opened; a little of it.
    let mut big = vec![0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 1];
    big.extend_from_slice(&[0u8; 4096]);
    send(&big);
    std::thread::sleep(Duration::from_secs(1));
    let events = agent.stop().expect("agent stop");
    demo.stop().expect("demo stop");
    let stats = events_named(&events, &["snakepit", "agent", "stats"])
        .into_iter()
        .last()
        .expect("stats event");
    let after_big = stats["metadata"]["decode_errors_by_kind"].clone();
    eprintln!("after a frame declaring 16 MB: {after_big}");
    let idle_or_over =
        |k: &serde_json::Value| n(k, "data_on_idle_stream") + n(k, "frame_over_peer_limit");
    assert!(
        idle_or_over(&after_big) > idle_or_over(&after_garbage),
        "{after_garbage} -> {after_big}"
    );
    assert!(stats["measurements"]["decode_errors"].as_u64().unwrap_or(0) > 0);
}

/// A worker killed with calls in flight: its crash event used to say
/// `in_flight_calls: 0` (its connection's close ended them first).
#[test]
fn a_worker_crash_counts_its_in_flight_calls() {
    use snakepit_testkit::agent::events_named;
    use snakepit_testkit::demo::{read_jsonl, GroundTruthCall, LoadSpec};
    require::root_and_bpf();
    require::demo_built();
    let dir = scratch_dir("hardening-crash");
    let agent = Agent::start(&dir, &[]).expect("agent start");
    let (mut demo, status) = Demo::start_ready(&dir, 1, 0).expect("demo start");
    std::thread::sleep(Duration::from_millis(500));
    let victim = status.workers[0].clone();
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(700));
        // SAFETY: kill(2) on the worker pid the demo reported.
        unsafe { libc::kill(victim.os_pid as i32, libc::SIGKILL) };
    });
    let mut spec = LoadSpec::new(4, 1_000, &[("sleep", 1)]);
    spec.concurrency = 2;
    spec.extra.push("sleep_ms => 1500".into());
    let gt = dir.join("ground_truth.jsonl");
    demo.load(&spec, &gt).expect("load");
    killer.join().expect("killer");
    let truth: Vec<GroundTruthCall> = read_jsonl(&gt).expect("ground truth");
    let in_flight = truth
        .iter()
        .filter(|g| g.error_type.as_deref() == Some("exit") && g.stream_id.is_some())
        .count();
    demo.stop().expect("demo stop");
    std::thread::sleep(Duration::from_secs(1));
    let events = agent.stop().expect("agent stop");
    assert!(in_flight > 0, "no call was in flight at the kill");
    let crash = events_named(&events, &["snakepit", "worker", "crash"])
        .into_iter()
        .find(|e| e["metadata"]["worker_id"] == status.workers[0].worker_id.as_str())
        .expect("a crash event for the killed worker");
    let counted = crash["measurements"]["in_flight_calls"]
        .as_u64()
        .or(crash["metadata"]["in_flight_calls"].as_u64())
        .unwrap_or(0);
    // At least the load's calls cut short (internal calls in flight count too).
    assert!(
        counted >= in_flight as u64,
        "{in_flight} calls were in flight at the kill: {crash}"
    );
}

/// A tool name or session id cut by the copy limit used to be reported as if whole
/// (a prefix). With copies so short that the limit falls inside those fields, every
/// reported tool and session id is the real one; the cut ones are absent.
#[test]
fn values_cut_by_the_copy_limit_are_absent_never_wrong() {
    use snakepit_testkit::agent::events_named;
    use snakepit_testkit::demo::LoadSpec;
    require::root_and_bpf();
    require::demo_built();
    let dir = scratch_dir("hardening-cut");
    let (mut demo, _) = Demo::start_ready(&dir, 2, 0).expect("demo start");
    let (mut checked, mut absent) = (0, 0);
    for bytes in [60u32, 75, 90, 105] {
        let run = dir.join(format!("c{bytes}"));
        std::fs::create_dir_all(&run).expect("scratch subdir");
        let agent =
            // Repro off: with it on, the request senders' bytes beyond the copy limit
            // arrive as chunks and nothing is cut.
            Agent::start(
                &run,
                &["--capture-bytes", &bytes.to_string(), "--no-repro"],
            )
            .expect("agent start");
        std::thread::sleep(Duration::from_millis(500));
        let mut spec = LoadSpec::new(40, 2_000, &[("echo", 2), ("sleep", 1)]);
        spec.concurrency = 4;
        let truth = demo
            .load_truth(&spec, &run.join("ground_truth.jsonl"))
            .expect("load");
        std::thread::sleep(Duration::from_millis(500));
        let events = agent.stop().expect("agent stop");
        for e in events_named(&events, &["snakepit", "call", "stop"]) {
            let Some(g) = truth
                .iter()
                .find(|g| e["metadata"]["correlation_id"] == g.correlation_id.as_str())
            else {
                continue;
            };
            checked += 1;
            for (field, real) in [
                ("tool", Some(g.tool.as_str())),
                ("session_id", g.session_id.as_deref()),
            ] {
                match e["metadata"][field].as_str() {
                    None => absent += 1,
                    Some(v) => assert_eq!(Some(v), real, "capture {bytes}: {field} of {e}"),
                }
            }
        }
    }
    demo.stop().expect("demo stop");
    eprintln!("{checked} calls checked, {absent} cut values absent");
    assert!(
        checked > 100,
        "only {checked} calls matched the ground truth"
    );
    assert!(
        absent > 0,
        "no copy limit fell inside a tool name or session id"
    );
}
