use super::*;
use crate::events::Event;
use std::ffi::OsStr;
use std::time::Instant;

const FIXTURE: &str = include_str!("fixtures/nvml_two_a100.json");

fn recording() -> Recording {
    Recording::from_json(FIXTURE).expect("fixture parses")
}

fn named<'a>(events: &'a [Event], name: &[&str]) -> Vec<&'a Event> {
    events.iter().filter(|e| e.is(name)).collect()
}

fn m(ev: &Event, key: &str) -> Option<f64> {
    ev.measurements.get(key).and_then(|v| v.as_f64())
}

fn s<'a>(ev: &'a Event, key: &str) -> &'a str {
    ev.metadata.get(key).and_then(|v| v.as_str()).unwrap_or("")
}

/// Runs every frame of the fixture through a sampler; events per round.
fn rounds(handle: &GpuHandle) -> Vec<Vec<Event>> {
    let rec = recording();
    let workers = rec.worker_map();
    let mut src = RecordedSource::new(rec);
    let mut sampler = Sampler::new();
    let mut out = Vec::new();
    for i in 0.. {
        match sampler.round(&mut src, &workers, handle, 1_000_000_000 * (i + 1)) {
            RoundOutcome::Events(ev) => out.push(ev),
            RoundOutcome::Exhausted => break,
        }
    }
    out
}

// ---- NVML absent: real on this machine (no NVIDIA driver) ----

#[test]
fn gpu_probe_names_the_missing_library() {
    match probe() {
        GpuAvailability::Unavailable(u) => {
            // No driver here: dlopen fails. (On a machine with a driver but no GPU the
            // kind is NoDevice or DriverNotLoaded; the line still says why.)
            let line = u.to_string();
            eprintln!("{line}");
            assert!(line.starts_with("GPU profiling off: "), "{line}");
            if u.kind == UnavailableKind::LibraryNotFound {
                assert!(line.contains("libnvidia-ml.so"), "{line}");
            }
            assert!(!line.contains('\n'));
        }
        GpuAvailability::Available(inv) => assert!(!inv.devices.is_empty()),
    }
}

#[test]
fn gpu_library_not_found_is_one_line() {
    let a = probe_library(OsStr::new("/nonexistent/libnvidia-ml.so.1"));
    let GpuAvailability::Unavailable(u) = &a else {
        panic!("expected unavailable: {a:?}")
    };
    assert_eq!(u.kind, UnavailableKind::LibraryNotFound);
    let line = a.line();
    assert!(line.contains("NVML library not found"), "{line}");
    assert!(line.contains("/nonexistent/libnvidia-ml.so.1"), "{line}");
    assert!(!line.contains('\n'));
}

#[test]
fn gpu_symbol_missing_names_the_symbol() {
    // A library that loads but is not NVML: nvmlInit_v2 is missing.
    let a = probe_library(OsStr::new("libc.so.6"));
    let GpuAvailability::Unavailable(u) = &a else {
        panic!("expected unavailable: {a:?}")
    };
    assert_eq!(u.kind, UnavailableKind::SymbolMissing);
    assert!(a.line().contains("nvmlInit_v2"), "{}", a.line());
}

#[tokio::test]
async fn gpu_run_without_nvml_returns_and_reports() {
    if probe().is_available() {
        return; // a GPU machine: covered by `cargo xtask gpu-check`
    }
    let bus = Bus::new(64);
    let mut rx = bus.subscribe();
    let (_tx, workers) = watch::channel(WorkerMap::new());
    let cfg = GpuConfig::default();
    let handle = GpuHandle::new(&cfg);
    tokio::time::timeout(
        Duration::from_secs(10),
        run(cfg, bus.clone(), workers, handle.clone()),
    )
    .await
    .expect("run returns at once without NVML");
    match handle.availability() {
        Some(GpuAvailability::Unavailable(u)) => {
            assert!(u.to_string().starts_with("GPU profiling off"))
        }
        other => panic!("availability not recorded: {other:?}"),
    }
    assert!(rx.try_recv().is_none(), "no GPU events without NVML");
    assert!(handle.snapshot().is_empty());
}

#[tokio::test]
async fn gpu_disabled_in_config_does_not_touch_nvml() {
    let cfg = GpuConfig {
        enabled: false,
        ..GpuConfig::default()
    };
    let (_tx, workers) = watch::channel(WorkerMap::new());
    let handle = GpuHandle::new(&cfg);
    run(cfg, Bus::new(16), workers, handle.clone()).await;
    match handle.availability() {
        Some(GpuAvailability::Unavailable(u)) => assert_eq!(u.kind, UnavailableKind::Disabled),
        other => panic!("{other:?}"),
    }
}

// ---- configuration ----

#[test]
fn gpu_config_defaults_clamp_and_unknown_fields() {
    let d = GpuConfig::default();
    assert!(d.enabled);
    assert_eq!(d.interval(), Duration::from_millis(5000));
    assert_eq!(d.history, 1000);
    let c: GpuConfig = toml::from_str("interval_ms = 20\nhistory = 5").expect("parses");
    assert_eq!(c.interval(), Duration::from_millis(MIN_INTERVAL_MS));
    assert_eq!(c.history, 5);
    assert!(c.enabled);
    assert!(toml::from_str::<GpuConfig>("intervall_ms = 200").is_err());
    assert!(GpuConfig {
        history: 0,
        ..GpuConfig::default()
    }
    .validate()
    .is_err());
}

// ---- the sampler over recorded readings ----

#[test]
fn gpu_sampler_event_counts_per_round() {
    let handle = GpuHandle::new(&GpuConfig::default());
    let r = rounds(&handle);
    assert_eq!(r.len(), 5);
    let counts: Vec<(usize, usize)> = r
        .iter()
        .map(|ev| {
            (
                named(ev, GPU_MEMORY).len(),
                named(ev, GPU_WORKER_MEMORY).len(),
            )
        })
        .collect();
    // Frame 2: 4101, 4201, plus a final 0 for 4102 (exited). Frame 3: device 1 lost:
    // no event for it and no false 0 for its worker. Frame 4: 4201 twice (MIG) is one.
    assert_eq!(counts, vec![(2, 1), (2, 3), (2, 3), (1, 1), (2, 2)]);
    assert_eq!(r.iter().map(Vec::len).sum::<usize>(), 19);
}

#[test]
fn gpu_device_event_fields() {
    let handle = GpuHandle::new(&GpuConfig::default());
    let r = rounds(&handle);
    let dev0 = named(&r[0], GPU_MEMORY)[0];
    assert_eq!(s(dev0, "device"), "cuda:0");
    assert_eq!(s(dev0, "name"), "NVIDIA A100-SXM4-40GB");
    assert_eq!(s(dev0, "uuid"), "GPU-5f1c2a7e-3b9d-4c61-8e0a-2d7f4b6c9a10");
    assert_eq!(m(dev0, "total_mb"), Some(40960.0));
    assert_eq!(m(dev0, "reserved_mb"), Some(606.0));
    // used = driver 4 MiB + 480 (worker) + 1024 (not a worker)
    assert_eq!(m(dev0, "allocated_mb"), Some(1508.0));
    assert_eq!(m(dev0, "free_mb"), Some(40960.0 - 1508.0 - 606.0));
    assert_eq!(m(dev0, "processes"), Some(2.0));
    assert_eq!(m(dev0, "workers_used_mb"), Some(480.0));
    assert_eq!(dev0.time_unix_nano, 1_000_000_000);
}

#[test]
fn gpu_workers_attributed_by_pid() {
    let handle = GpuHandle::new(&GpuConfig::default());
    let r = rounds(&handle);
    let w: Vec<(&str, &str, &str, Option<f64>)> = named(&r[1], GPU_WORKER_MEMORY)
        .iter()
        .map(|e| {
            (
                s(e, "device"),
                s(e, "pool"),
                s(e, "worker_id"),
                m(e, "used_mb"),
            )
        })
        .collect();
    assert_eq!(
        w,
        vec![
            ("cuda:0", "default", "default_worker_1", Some(736.0)),
            ("cuda:0", "default", "default_worker_2", Some(480.0)),
            ("cuda:1", "legacy", "legacy_worker_1", Some(1024.0)),
        ]
    );
    let e = named(&r[1], GPU_WORKER_MEMORY)[0];
    assert_eq!(e.metadata["worker_pid"], 4101);
    assert_eq!(e.metadata["beam_pid"], 4000);
    assert_eq!(s(e, "instance_name"), "demo");
    // pid 9999 is not a worker: counted on the device, never as a worker.
    assert!(r
        .iter()
        .flatten()
        .all(|e| e.metadata.get("worker_pid").and_then(|v| v.as_u64()) != Some(9999)));
    // Exited worker: one final 0, then nothing.
    let gone: Vec<_> = r[2]
        .iter()
        .filter(|e| e.is(GPU_WORKER_MEMORY) && s(e, "worker_id") == "default_worker_2")
        .collect();
    assert_eq!(gone.len(), 1);
    assert_eq!(m(gone[0], "used_mb"), Some(0.0));
    // MIG duplicate entries are summed; an unavailable figure has no used_mb.
    let last = named(&r[4], GPU_WORKER_MEMORY);
    let legacy = last
        .iter()
        .find(|e| s(e, "pool") == "legacy")
        .expect("legacy");
    assert_eq!(m(legacy, "used_mb"), Some(1024.0));
    let unknown = last
        .iter()
        .find(|e| s(e, "pool") == "default")
        .expect("default");
    assert_eq!(m(unknown, "used_mb"), None);
}

#[test]
fn gpu_history_ring_is_bounded_and_device_errors_recorded() {
    let cfg = GpuConfig {
        history: 3,
        ..GpuConfig::default()
    };
    let handle = GpuHandle::new(&cfg);
    rounds(&handle);
    let snap = handle.snapshot();
    assert_eq!(snap.len(), 3);
    let times: Vec<u64> = snap.iter().map(|s| s.time_unix_nano).collect();
    assert_eq!(times, vec![3_000_000_000, 4_000_000_000, 5_000_000_000]);
    assert_eq!(
        snap[1].errors,
        vec!["device 1: memory info failed: GPU is lost"]
    );
    assert_eq!(snap[1].devices.len(), 1);
    let json = serde_json::to_value(&snap).expect("serializes for the API");
    assert_eq!(json[0]["devices"][0]["device"], "cuda:0");
}

#[test]
fn gpu_worker_used_mb_and_long_call_before_after() {
    let rec = recording();
    let workers = rec.worker_map();
    let mut src = RecordedSource::new(rec);
    let cfg = GpuConfig {
        long_call_threshold_ms: 500,
        ..GpuConfig::default()
    };
    let handle = GpuHandle::new(&cfg);
    let mut sampler = Sampler::new();
    assert_eq!(handle.worker_used_mb(4101), None, "before the first sample");
    let ev = |o: RoundOutcome| match o {
        RoundOutcome::Events(e) => e,
        RoundOutcome::Exhausted => panic!("exhausted"),
    };
    ev(sampler.round(&mut src, &workers, &handle, 1_000_000_000));
    ev(sampler.round(&mut src, &workers, &handle, 2_000_000_000));
    assert_eq!(handle.worker_used_mb(4101), Some(736.0));
    assert_eq!(handle.worker_used_mb(4102), Some(480.0));
    assert_eq!(handle.worker_used_mb(9999), None, "not a worker");
    // A call starts on 4101 at t1 = 2.5 s and runs 1.2 s.
    let before = handle.worker_reading(4101);
    let call = |ms: u64| {
        LongCall {
        worker_pid: 4101,
        duration: Duration::from_millis(ms),
        before,
        started_unix_nano: 2_500_000_000,
        ended_unix_nano: 2_500_000_000 + ms * 1_000_000,
        metadata: serde_json::json!({"pool": "default", "worker_id": "default_worker_1", "function": "train"})
            .as_object()
            .cloned()
            .unwrap_or_default(),
    }
    };
    assert!(!handle.long_call_finished(call(100)), "short call ignored");
    assert!(handle.long_call_finished(call(1200)));
    let events = ev(sampler.round(&mut src, &workers, &handle, 3_800_000_000));
    let calls = named(&events, GPU_CALL_MEMORY);
    assert_eq!(calls.len(), 1);
    let c = calls[0];
    assert_eq!(m(c, "before_mb"), Some(736.0));
    assert_eq!(m(c, "after_mb"), Some(1248.0));
    assert_eq!(m(c, "delta_mb"), Some(512.0));
    assert_eq!(m(c, "duration"), Some(1.2e9));
    assert_eq!(s(c, "function"), "train");
    assert_eq!(c.metadata["worker_pid"], 4101);
    assert_eq!(c.metadata["before_age_ms"], 500);
    assert_eq!(c.metadata["after_delay_ms"], 100);
    // 4102 exited but is still in the map: 0, not unknown.
    assert_eq!(handle.worker_used_mb(4102), Some(0.0));
}

#[tokio::test]
async fn gpu_run_loop_publishes_every_round_at_the_clamped_interval() {
    let rec = recording();
    let (_tx, workers) = watch::channel(rec.worker_map());
    let bus = Bus::new(256);
    let mut rx = bus.subscribe();
    let cfg = GpuConfig {
        interval_ms: 1, // clamped to 100 ms
        ..GpuConfig::default()
    };
    let handle = GpuHandle::new(&cfg);
    let t0 = Instant::now();
    tokio::time::timeout(
        Duration::from_secs(10),
        run_with_source(
            RecordedSource::new(rec),
            cfg,
            bus.clone(),
            workers,
            handle.clone(),
        ),
    )
    .await
    .expect("stops when the recording ends");
    // 5 frames: the first at once, then 100 ms apart; the 6th tick finds no frame.
    assert!(
        t0.elapsed() >= Duration::from_millis(500),
        "{:?}",
        t0.elapsed()
    );
    let mut n = 0;
    while rx.try_recv().is_some() {
        n += 1;
    }
    assert_eq!(n, 19);
    assert_eq!(handle.snapshot().len(), 5);
}

#[tokio::test]
async fn gpu_run_loop_stops_when_discovery_goes_away() {
    let rec = recording();
    let (tx, workers) = watch::channel(rec.worker_map());
    let cfg = GpuConfig {
        interval_ms: 100,
        ..GpuConfig::default()
    };
    let handle = GpuHandle::new(&cfg);
    let task = tokio::spawn(run_with_source(
        RecordedSource::new(rec).looping(),
        cfg,
        Bus::new(64),
        workers,
        handle,
    ));
    tokio::time::sleep(Duration::from_millis(250)).await;
    drop(tx);
    tokio::time::timeout(Duration::from_secs(2), task)
        .await
        .expect("stops")
        .expect("no panic");
}
