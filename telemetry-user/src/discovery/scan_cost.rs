//! CPU cost of `full_scan()` against the real /proc with the demo running under load
//! (issue 10). Manual, needs the built demo (`cargo xtask setup`) and the e2e lock:
//!
//! ```text
//! flock /tmp/snakepit-e2e.lock cargo test -p telemetry-user --release --lib \
//!     discovery::scan_cost -- --ignored --nocapture
//! ```
//!
//! Starts the demo BEAM (4 gRPC + 1 pipe workers, `--autoload 200` calls/s), waits
//! until discovery sees its connections, then times scans with the thread's CPU
//! clock: the first scan of a fresh `Discovery` (agent start) and steady-state
//! rescans of one `Discovery` (the agent's 10 s safety net).
//!
//! On the 2-core dev VM (~92 host pids, 18 connections) the steady-state rescan
//! went from 15.8 ms median (14.2-17.2) to 3.1 ms (2.5-3.6) when it stopped
//! reading the tcp tables (each read walks the kernel's whole established hash)
//! and re-classifying known processes; the first scan stays ~15 ms.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::*;

fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn timed<T>(f: impl FnOnce() -> T) -> (Duration, T) {
    let t0 = thread_cpu();
    let out = f();
    (thread_cpu().saturating_sub(t0), out)
}

/// Kills the BEAM (and with it its workers) when the test ends, pass or fail.
struct DemoGuard(Child);

impl Drop for DemoGuard {
    fn drop(&mut self) {
        // Closing stdin is the demo's stop signal; kill if it lingers.
        drop(self.0.stdin.take());
        for _ in 0..60 {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_demo(grpc: u32, pipe: u32, rate: u32) -> DemoGuard {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .expect("workspace root");
    assert!(
        root.join("demo/_build/ebin").is_dir(),
        "demo not built: run `cargo xtask setup`"
    );
    let child = Command::new("erl")
        .current_dir(&root)
        .args(["-noshell", "-pa", "demo/_build/ebin", "-run", "demo_app"])
        .args(["main", "-extra", "--python"])
        .arg(root.join(".venv/bin/python"))
        .args(["--grpc-workers", &grpc.to_string()])
        .args(["--pipe-workers", &pipe.to_string()])
        .args(["--instance-name", "scan_cost"])
        .args(["--autoload", &rate.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting erl");
    DemoGuard(child)
}

fn summary(name: &str, mut v: Vec<Duration>) {
    v.sort_unstable();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{name}: n={} min={:.2} ms median={:.2} ms max={:.2} ms",
        v.len(),
        ms(v[0]),
        ms(v[v.len() / 2]),
        ms(v[v.len() - 1])
    );
}

#[test]
#[ignore]
fn scan_cost_with_busy_demo() {
    let (grpc, pipe) = (4u32, 1u32);
    let demo = start_demo(grpc, pipe, 200);
    let beam = demo.0.id();

    // Ready: every worker has its connections paired (1 client conn per gRPC worker).
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut d = Discovery::new(ProcSource::system(), Selectors::default());
    loop {
        d.full_scan();
        let snap = d.snapshot();
        let dep = snap.deployments.iter().find(|x| x.beam_pid == beam);
        let workers: usize = dep.map_or(0, |x| x.pools.iter().map(|p| p.workers.len()).sum());
        let clients = snap
            .connections
            .iter()
            .filter(|c| c.beam_pid == beam && c.role == ConnRole::BeamClient)
            .count();
        if workers == (grpc + pipe) as usize && clients >= grpc as usize {
            break;
        }
        assert!(Instant::now() < deadline, "demo not seen ready: {snap:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
    // Let the autoload ramp up.
    std::thread::sleep(Duration::from_secs(3));
    let snap = d.snapshot();
    println!(
        "host pids: {}, connections: {}, pending sockets: {}",
        ProcSource::system().pids().map_or(0, |p| p.len()),
        snap.connections.len(),
        snap.pending_sockets
    );

    let mut first = Vec::new();
    for _ in 0..5 {
        let mut fresh = Discovery::new(ProcSource::system(), Selectors::default());
        first.push(timed(|| fresh.full_scan()).0);
    }
    let mut rescans = Vec::new();
    for _ in 0..20 {
        let (t, changes) = timed(|| d.full_scan());
        rescans.push(t);
        assert!(
            !changes
                .iter()
                .any(|c| matches!(c, TopologyChange::WorkerExited { .. })),
            "a rescan lost a worker: {changes:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    println!("last rescan read: {:?}", d.last_scan_stats());
    summary("first scan (fresh Discovery)", first);
    summary("rescan (steady state)", rescans);
    let after = d.snapshot();
    assert_eq!(after.connections.len(), snap.connections.len());
}
