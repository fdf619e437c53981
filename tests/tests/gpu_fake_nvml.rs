//! End-to-end: the GPU path without a GPU. A fake `libnvidia-ml.so.1` (C, compiled
//! here from tests/fake_nvml/) answers NVML calls from a script; the real agent loads it
//! through nvml-wrapper (dlopen, symbol lookup, FFI structs) and reports per-device and
//! per-worker GPU memory for the demo's real worker pids as events, Prometheus gauges
//! and the live page's GPU charts (checked on the DOM headless Chromium renders).
use serde_json::Value;
use snakepit_testkit::agent::{events_named, is_event, Agent};
use snakepit_testkit::browser::chromium;
use snakepit_testkit::demo::{Demo, DemoOptions};
use snakepit_testkit::{require, scratch_dir, workspace_root};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

/// Compiles tests/fake_nvml/fake_nvml.c into `dir/lib/libnvidia-ml.so.1`.
fn build_fake_nvml(dir: &Path) -> PathBuf {
    let src = workspace_root().join("tests/fake_nvml/fake_nvml.c");
    let lib_dir = dir.join("lib");
    std::fs::create_dir_all(&lib_dir).expect("lib dir");
    let out = Command::new("cc")
        .args(["-Wall", "-shared", "-fPIC", "-o"])
        .arg(lib_dir.join("libnvidia-ml.so.1"))
        .arg(&src)
        .output()
        .unwrap_or_else(|e| {
            panic!("running cc failed ({e}): install Debian's gcc (cargo xtask setup)")
        });
    assert!(
        out.status.success(),
        "compiling {}: {}",
        src.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    lib_dir
}

/// Two devices; worker A has a context on cuda:0, worker B on cuda:1, and a process
/// that is no worker (pid 1) on cuda:0.
fn script(a: u32, a_bytes: u64, b: u32) -> String {
    format!(
        "# device NAME UUID TOTAL USED FREE RESERVED\n\
         device Fake-A100-80GB GPU-fake-0 {t0} {u0} {f0} {r}\n\
         device Fake-L4-24GB GPU-fake-1 {t1} {u1} {f1} {r}\n\
         process 0 {a} {a_bytes}\n\
         process 0 1 {other}\n\
         process 1 {b} {b_bytes}\n",
        t0 = 80 * GIB,
        u0 = 10 * GIB,
        f0 = 80 * GIB - 10 * GIB - 512 * MIB,
        t1 = 24 * GIB,
        u1 = 2 * GIB,
        f1 = 24 * GIB - 2 * GIB - 512 * MIB,
        r = 512 * MIB,
        other = 256 * MIB,
        b_bytes = 512 * MIB,
    )
}

fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).expect("connect to the agent's endpoint");
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).expect("request");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

fn worker_used_mb(events: &[Value], pid: u32) -> Vec<f64> {
    events_named(events, &["snakepit", "memory", "gpu_worker"])
        .into_iter()
        .filter(|e| e["metadata"]["worker_pid"] == pid)
        .filter_map(|e| e["measurements"]["used_mb"].as_f64())
        .collect()
}

#[test]
fn fake_nvml_drives_gpu_events_gauges_and_the_live_page() {
    require::root_and_bpf();
    require::demo_built();
    let dir = scratch_dir("gpu-fake-nvml");
    let lib_dir = build_fake_nvml(&dir);
    let mut demo = Demo::start(&DemoOptions {
        log: Some(dir.join("beam.log")),
        ..DemoOptions::default()
    })
    .expect("demo start");
    let status = demo
        .wait_ready(Duration::from_secs(60))
        .expect("demo ready");
    let grpc: Vec<_> = status
        .workers
        .iter()
        .filter(|w| w.transport == "grpc")
        .collect();
    assert!(grpc.len() >= 2, "two gRPC workers: {:?}", status.workers);
    let (wa, wb) = (grpc[0], grpc[1]);
    let script_path = dir.join("nvml.script");
    std::fs::write(&script_path, script(wa.os_pid, GIB, wb.os_pid)).expect("script");

    let addr = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port");
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "[gpu]\ninterval_ms = 200\n[http]\nenabled = true\nlisten = \"{addr}\"\npage_update_ms = 100\n"
        ),
    )
    .expect("config");
    let cfg = config.to_string_lossy().into_owned();
    let mut agent = Agent::start_env(
        &dir,
        &["--config", &cfg],
        &[
            ("LD_LIBRARY_PATH", lib_dir.as_path()),
            ("FAKE_NVML_SCRIPT", script_path.as_path()),
        ],
    )
    .expect("agent start");

    // Worker A's 1 GiB, then 2 GiB once the script says so: sampled, not cached.
    agent
        .wait_for(Duration::from_secs(30), |e| {
            is_event(e, &["snakepit", "memory", "gpu_worker"])
                && e["metadata"]["worker_pid"] == wa.os_pid
                && e["measurements"]["used_mb"] == 1024.0
        })
        .expect("worker A's GPU memory (1024 MiB) reported");
    std::fs::write(&script_path, script(wa.os_pid, 2 * GIB, wb.os_pid)).expect("script");
    agent
        .wait_for(Duration::from_secs(30), |e| {
            is_event(e, &["snakepit", "memory", "gpu_worker"])
                && e["metadata"]["worker_pid"] == wa.os_pid
                && e["measurements"]["used_mb"] == 2048.0
        })
        .expect("worker A's new figure (2048 MiB) reported");

    let metrics = http_get(addr, "/metrics");
    let url = format!("http://{addr}/?hold=1500");
    let dom = chromium(&dir, "p1", &["--dump-dom".into()], &url);
    let log = std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default();
    // The agent first: its last samples still see the workers alive.
    let events = agent.stop().expect("agent stop");
    demo.stop().expect("demo stop");

    assert!(
        log.contains("GPU profiling on: NVML, driver 999.99-fake, 2 device(s)"),
        "the agent loaded the fake NVML: {log}"
    );
    // Per device: NVML's figures in MiB, with name and uuid.
    let devices = events_named(&events, &["snakepit", "memory", "gpu"]);
    for (dev, name, total, used, processes, workers_mb) in [
        ("cuda:0", "Fake-A100-80GB", 81920.0, 10240.0, 2, 2048.0),
        ("cuda:1", "Fake-L4-24GB", 24576.0, 2048.0, 1, 512.0),
    ] {
        let last = devices
            .iter()
            .rev()
            .find(|e| e["metadata"]["device"] == dev)
            .unwrap_or_else(|| panic!("no memory.gpu event for {dev}"));
        assert_eq!(last["metadata"]["name"], name);
        let m = &last["measurements"];
        assert_eq!(m["total_mb"], total, "{dev}: {last}");
        assert_eq!(m["allocated_mb"], used, "{dev}: {last}");
        assert_eq!(m["reserved_mb"], 512.0, "{dev}: {last}");
        assert_eq!(m["processes"], processes, "{dev}: {last}");
        assert_eq!(m["workers_used_mb"], workers_mb, "{dev}: {last}");
    }
    // Per worker: the demo's real pids, attributed to their pool and worker id.
    assert!(worker_used_mb(&events, wb.os_pid).contains(&512.0));
    let b_ev = events_named(&events, &["snakepit", "memory", "gpu_worker"])
        .into_iter()
        .find(|e| e["metadata"]["worker_pid"] == wb.os_pid)
        .expect("worker B event");
    assert_eq!(b_ev["metadata"]["worker_id"], wb.worker_id.as_str());
    assert_eq!(b_ev["metadata"]["device"], "cuda:1");
    assert!(
        worker_used_mb(&events, 1).is_empty(),
        "a process that is no worker gets no worker event"
    );
    // Prometheus: device-wide and per-worker gauges.
    let gauge = |name: &str, labels: &[&str]| -> Option<f64> {
        metrics.lines().find_map(|l| {
            let rest = l.strip_prefix(name)?;
            if !labels.iter().all(|x| rest.contains(x)) {
                return None;
            }
            rest.rsplit(' ').next()?.parse().ok()
        })
    };
    assert_eq!(gauge("snakepit_gpu_devices ", &[]), Some(2.0), "{metrics}");
    assert_eq!(
        gauge(
            "snakepit_gpu_memory_total_bytes{",
            &["device=\"cuda:0\"", "worker_id=\"\""]
        ),
        Some((80 * GIB) as f64),
        "{metrics}"
    );
    let a_label = format!("worker_id=\"{}\"", wa.worker_id);
    assert_eq!(
        gauge(
            "snakepit_gpu_memory_allocated_bytes{",
            &["device=\"cuda:0\"", &a_label]
        ),
        Some((2 * GIB) as f64),
        "{metrics}"
    );
    // The live page: one card per device, with its chart's series.
    for dev in ["cuda:0", "cuda:1"] {
        let card = dom
            .split(&format!("data-device=\"{dev}\""))
            .nth(1)
            .unwrap_or_else(|| panic!("no GPU card for {dev} on the page: {dom}"));
        let card = card.split("data-device=").next().unwrap_or_default();
        assert!(
            card.contains("class=\"gpu-chart\"") && card.contains("data-series=\"allocated\""),
            "{dev}: no chart"
        );
    }
    assert!(
        !dom.contains("class=\"card gpu-card empty\""),
        "the page says no GPU"
    );
}
