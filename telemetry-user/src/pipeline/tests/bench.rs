//! The agent's user-space cost per call from kernel records on, without the kernel:
//! N unary ExecuteTool calls recorded as the probes record them with decode-once (the
//! BEAM's full write of each request, the worker's lean read of it, the worker's full
//! write of the response, the BEAM's lean read of that), through the pipeline, the
//! call tracker, the bus and the JSON lines sink. It has no other process and no
//! kernel to share the CPU with, so its figure repeats within a few percent (the live
//! agent's varies by about 10 % between runs). Run with
//! `cargo test -p telemetry-user --release --lib records_to_events -- --ignored --nocapture`
//! (`BENCH_CALLS` overrides N).
use super::*;
use crate::bench_support::{bench_calls, process_cpu_ns};
use crate::calls::{CallTracker, TrackerConfig};
use crate::events::Bus;
use crate::sinks::jsonl;

/// Syscall sizes that cut `len` bytes at `bounds` (each call's first frame header).
fn cuts(bounds: impl Iterator<Item = usize>, len: usize) -> Vec<usize> {
    let mut sizes = Vec::new();
    let mut last = 0;
    for b in bounds.chain(std::iter::once(len)) {
        if b > last {
            sizes.push(b - last);
            last = b;
        }
    }
    sizes
}

#[test]
#[ignore = "benchmark: run in release with --ignored --nocapture"]
fn records_to_events_cpu() {
    let n = bench_calls(20_000);
    let dir = directory();
    let (req, req_heads) = request_stream(n, true);
    let (resp, resp_heads) = response_stream(n);
    // One write and one read per call and direction: a request is its HEADERS and
    // DATA (heads 1 + 2i, after the SETTINGS at 0), a response its HEADERS, DATA and
    // trailers (heads 1 + 3i).
    let req_sizes = cuts((1..n as usize).map(|i| req_heads[1 + 2 * i]), req.len());
    let resp_sizes = cuts((1..n as usize).map(|i| resp_heads[1 + 3 * i]), resp.len());
    assert_eq!(
        (req_sizes.len(), resp_sizes.len()),
        (n as usize, n as usize)
    );
    // Call i's four syscalls 40 ns apart in this order; calls 100 ns apart.
    let at = |step: u64| 1_000 + 2 * step;
    let beam_out = full_records(BEAM_OUT, &req, &req_heads, &req_sizes, 0, at(0));
    let worker_in = lean_records(WORKER_IN, &req, &req_heads, &req_sizes, at(2));
    let worker_out = full_records(WORKER_OUT, &resp, &resp_heads, &resp_sizes, 0, at(4));
    let beam_in = lean_records(BEAM_IN, &resp, &resp_heads, &resp_sizes, at(6));
    assert_eq!(worker_in.len(), n as usize);
    assert_eq!(beam_in.len(), n as usize);
    let mut calls: Vec<[IoRecord; 4]> = beam_out
        .into_iter()
        .zip(worker_in)
        .zip(worker_out.into_iter().zip(beam_in))
        .map(|((a, b), (c, d))| [a, b, c, d])
        .collect();

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let before = process_cpu_ns();
    let (completed, events) = rt.block_on(async {
        let bus = Bus::new(1 << 20);
        let sink = tokio::spawn(jsonl::run(bus.subscribe(), Box::new(std::io::sink())));
        let mut rx = bus.subscribe();
        let counted = tokio::spawn(async move {
            let mut seen = 0u64;
            while rx.recv().await.is_some() {
                seen += 1;
            }
            seen
        });
        let cfg = TrackerConfig {
            pool_size_interval_ms: 0,
            ..TrackerConfig::default()
        };
        let mut tracker = CallTracker::new(cfg, bus.clone());
        let mut p = live_pipeline(&dir);
        let mut obs = Vec::new();
        for (i, records) in calls.drain(..).enumerate() {
            for r in records {
                p.on_io(r, &dir, &mut obs);
                for o in obs.drain(..) {
                    tracker.observe(o);
                }
            }
            if i % 64 == 0 {
                tokio::task::yield_now().await;
            }
        }
        let completed = tracker.stats().calls_completed;
        drop(tracker);
        assert_eq!(bus.lagged(), 0, "no sink may lag in the benchmark");
        drop(bus);
        sink.await.expect("sink");
        (completed, counted.await.expect("counter"))
    });
    let per_call = (process_cpu_ns() - before) / n as u64;
    assert_eq!(completed, n as u64, "every call ends");
    assert!(events >= 2 * n as u64, "{events} events for {n} calls");
    println!("records_to_events: {n} calls, {per_call} ns CPU per call (pipeline, tracker, bus, JSON sink)");
}
