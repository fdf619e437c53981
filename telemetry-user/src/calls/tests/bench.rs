//! User-space cost per call, no kernel: N synthetic unary calls (the observation
//! sequence of `unary`) through the tracker, the bus and every sink (JSON lines to
//! `io::sink()`, Prometheus, the live page, the logger, OTLP exporting to a closed
//! port). Prints process CPU time (all threads, getrusage) per call. Run with
//! `cargo test -p telemetry-user --release --lib per_call_cpu -- --ignored --nocapture`
//! (`BENCH_CALLS` overrides N; `BENCH_SINKS=json,logger,otlp,web` picks sinks, `none`
//! for the tracker and bus alone; `BENCH_REPRO=1` turns the repro hook on).
use super::*;
use crate::bench_support::{bench_calls, process_cpu_ns};
use crate::sinks::otlp::{OtlpConfig, OtlpCounters};
use crate::sinks::prometheus::{Metrics, MetricsConfig};
use crate::sinks::web::live::{Live, LiveSizes};
use crate::sinks::{jsonl, logger};

#[test]
#[ignore = "benchmark: run in release with --ignored --nocapture"]
fn per_call_cpu() {
    let n = bench_calls(20_000);
    let c = grpc_conn(1);
    let req = tool_request("echo", &[("value", "\"hi\"")]);
    let resp = tool_response(true, "");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let sinks = std::env::var("BENCH_SINKS").unwrap_or_else(|_| "json,logger,otlp,web".into());
    let on = |name: &str| sinks.split(',').any(|s| s == name);
    let before = process_cpu_ns();
    rt.block_on(async {
        let bus = Bus::new(1 << 20);
        let mut tasks = tokio::task::JoinSet::new();
        if on("json") {
            tasks.spawn(jsonl::run(bus.subscribe(), Box::new(std::io::sink())));
        }
        if on("logger") {
            tasks.spawn(logger::run(bus.subscribe(), Default::default()));
        }
        let otlp_cfg = OtlpConfig {
            enabled: true,
            endpoint: "http://127.0.0.1:9".into(),
            service_name: Some("bench".into()),
            export_timeout_ms: 100,
            ..OtlpConfig::default()
        };
        if on("otlp") {
            tasks.spawn(crate::sinks::otlp::run_with(
                otlp_cfg,
                bus.subscribe(),
                Arc::new(OtlpCounters::default()),
            ));
        }
        let mut rx = bus.subscribe();
        let web = on("web");
        let web = tokio::spawn(async move {
            let mut metrics = Metrics::new(&MetricsConfig {
                buckets: Vec::new(),
                label_value_cap: 100,
            });
            let mut live = Live::new(LiveSizes {
                recent_calls: 100,
                recent_errors: 100,
                gpu_samples: 100,
            });
            let mut seen = 0u64;
            while let Some(ev) = rx.recv().await {
                if web {
                    metrics.observe(&ev);
                    live.observe(&ev);
                }
                seen += 1;
            }
            seen
        });
        let mut t = CallTracker::new(cfg(), bus.clone());
        // BENCH_REPRO=1: the repro hook on (every request kept until its call ends).
        let repro_dir = tempfile::tempdir().expect("tempdir");
        if std::env::var("BENCH_REPRO").is_ok_and(|v| v == "1") {
            let rc = crate::repro::ReproConfig {
                directory: repro_dir.path().join("repro"),
                ..Default::default()
            };
            if let Some(r) = crate::repro::Repro::start(rc, bus.clone()) {
                t.set_repro(r);
            }
        }
        for i in 0..n {
            unary(&mut t, &c, 1 + 2 * i, &req, &resp, M);
            if i % 256 == 0 {
                tokio::task::yield_now().await;
            }
        }
        drop(t);
        let lagged = bus.lagged();
        drop(bus);
        let seen = web.await.expect("web");
        while let Some(r) = tasks.join_next().await {
            r.expect("sink");
        }
        assert_eq!(lagged, 0, "no sink may lag in the benchmark");
        assert!(seen >= 5 * n as u64, "{seen} events for {n} calls");
    });
    let per_call = (process_cpu_ns() - before) / n as u64;
    println!(
        "per_call_cpu: {n} calls, {per_call} ns CPU per call (tracker + bus + sinks: {sinks})"
    );
}
