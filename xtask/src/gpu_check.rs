//! `cargo xtask gpu-check`: on a machine with an NVIDIA GPU, checks the agent's
//! per-worker GPU memory against what a demo worker allocated. The worker creates its
//! CUDA context, then allocates 256 MiB and 512 MiB more (PyTorch or CuPy, installed
//! into .venv when missing), then frees; after each step the agent's
//! `[snakepit, memory, gpu_worker]` figure is compared with the allocator's. The CUDA
//! context's own memory is the tolerance (and is reported).
use anyhow::{bail, Context, Result};
use serde_json::Value;
use snakepit_testkit::agent::{is_event, Agent};
use snakepit_testkit::demo::{Demo, DemoOptions};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const INTERVAL_MS: u64 = 200;

/// Fails at once, with the reason, where there is no NVIDIA GPU.
pub fn require_gpu() -> Result<()> {
    let smi = Command::new("nvidia-smi").arg("-L").output();
    match smi {
        Ok(out) if out.status.success() && !out.stdout.is_empty() => {
            eprintln!(
                "gpu-check: {}",
                String::from_utf8_lossy(&out.stdout).trim()
            );
            Ok(())
        }
        Ok(out) => bail!(
            "gpu-check needs an NVIDIA GPU: `nvidia-smi -L` found none ({}{})",
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) if Path::new("/dev/nvidia0").exists() => {
            eprintln!("gpu-check: /dev/nvidia0 present (nvidia-smi not runnable: {e})");
            Ok(())
        }
        Err(e) => bail!(
            "gpu-check needs an NVIDIA GPU and driver: nvidia-smi not runnable ({e}) and /dev/nvidia0 missing"
        ),
    }
}

pub fn run(root: &Path) -> Result<()> {
    let t0 = Instant::now();
    let python = root.join(".venv/bin/python");
    let tools = root.join("demo/python/gpu_tools.py");
    ensure_backend(&python, &tools)?;
    eprintln!("gpu-check: backend ready after {:.0?}", t0.elapsed());
    crate::run_cmd(Command::new("cargo").current_dir(root).args([
        "build",
        "--release",
        "-p",
        "telemetry-user",
    ]))?;
    eprintln!("gpu-check: agent built after {:.0?}", t0.elapsed());

    let dir = root.join("target/gpu-check");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!("[gpu]\nenabled = true\ninterval_ms = {INTERVAL_MS}\n"),
    )?;
    let mut demo = Demo::start(&DemoOptions {
        grpc_workers: 2,
        pipe_workers: 0,
        log: Some(dir.join("beam.log")),
        ..DemoOptions::default()
    })?;
    let status = demo.wait_ready(Duration::from_secs(60))?;
    let worker = status
        .workers
        .iter()
        .find(|w| w.port.is_some())
        .context("the demo has no gRPC worker with a port")?;
    let (pid, port) = (worker.os_pid, worker.port.unwrap_or_default());
    let others: Vec<u32> = status
        .workers
        .iter()
        .map(|w| w.os_pid)
        .filter(|p| *p != pid)
        .collect();
    eprintln!(
        "gpu-check: worker {} (pid {pid}, port {port}) allocates; others {others:?}",
        worker.worker_id
    );
    let config_arg = config.display().to_string();
    let mut agent = Agent::start(&dir, &["--config", &config_arg]).context(
        "starting the agent with a [gpu] section (is the GPU sampler wired into the agent's config?)",
    )?;

    // Step: (tool, mb, MiB the worker holds afterwards).
    let steps: [(&str, Option<u64>, u64); 4] = [
        ("gpu_alloc", Some(0), 0),
        ("gpu_alloc", Some(256), 256),
        ("gpu_alloc", Some(512), 768),
        ("gpu_free", None, 0),
    ];
    let mut rows = Vec::new();
    let mut overhead = None;
    for (tool, mb, held) in steps {
        let reply = call_tool(&python, &tools, port, tool, mb)?;
        let after = now_ns();
        let allocator = reply["allocator_mb"].as_f64().unwrap_or(held as f64);
        // Two sampling intervals after the call returned: the sample reflects it.
        let seen = seen_after(&mut agent, pid, after + 2 * INTERVAL_MS * 1_000_000)?;
        let context_mb = *overhead.get_or_insert(seen - allocator);
        rows.push((
            format!("{tool} {}", mb.map(|m| m.to_string()).unwrap_or_default()),
            held,
            allocator,
            seen,
        ));
        eprintln!("gpu-check: {tool} {mb:?}: allocator {allocator:.1} MiB, agent {seen:.1} MiB (context {context_mb:.1} MiB)");
    }
    let overhead = overhead.unwrap_or(0.0);
    let events = agent.stop()?;
    demo.stop()?;

    println!("CUDA context overhead (agent figure with nothing allocated): {overhead:.1} MiB");
    println!(
        "{:<16} {:>10} {:>13} {:>12} {:>14} {:>9}",
        "step", "held MiB", "allocator MiB", "agent MiB", "agent-context", "diff MiB"
    );
    let mut worst: f64 = 0.0;
    for (step, held, allocator, seen) in &rows {
        let diff = seen - overhead - allocator;
        worst = worst.max(diff.abs());
        println!(
            "{step:<16} {held:>10} {allocator:>13.1} {seen:>12.1} {:>14.1} {diff:>9.1}",
            seen - overhead
        );
    }
    // Workers that never touched CUDA: nothing, or 0.
    for other in &others {
        let max = worker_events(&events, *other)
            .filter_map(|e| e["measurements"]["used_mb"].as_f64())
            .fold(0.0, f64::max);
        println!("other worker pid {other}: expected 0 MiB, agent max {max:.1} MiB");
        worst = worst.max(max);
    }
    let devices = events
        .iter()
        .filter(|e| is_event(e, &["snakepit", "memory", "gpu"]))
        .count();
    println!("device events: {devices}; total time {:.0?}", t0.elapsed());
    if devices == 0 {
        bail!("the agent emitted no [snakepit, memory, gpu] event");
    }
    if worst > overhead.max(1.0) {
        bail!("per-worker GPU memory off by {worst:.1} MiB, more than the CUDA context overhead ({overhead:.1} MiB)");
    }
    println!("ok: per-worker figures within the CUDA context overhead");
    Ok(())
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn worker_events(events: &[Value], pid: u32) -> impl Iterator<Item = &Value> {
    events.iter().filter(move |e| {
        is_event(e, &["snakepit", "memory", "gpu_worker"])
            && e["metadata"]["worker_pid"].as_u64() == Some(pid as u64)
    })
}

/// The worker's used_mb (summed over devices) from the first sample at or after `t`.
fn seen_after(agent: &mut Agent, pid: u32, t: u64) -> Result<f64> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let events = agent.events();
        let mut first: Option<u64> = None;
        let mut sum = 0.0;
        for e in worker_events(&events, pid) {
            let time = e["time_unix_nano"].as_u64().unwrap_or(0);
            if time < t {
                continue;
            }
            match first {
                None => {
                    first = Some(time);
                    sum = e["measurements"]["used_mb"].as_f64().unwrap_or(0.0);
                }
                Some(f) if f == time => sum += e["measurements"]["used_mb"].as_f64().unwrap_or(0.0),
                Some(_) => {}
            }
        }
        if first.is_some() {
            return Ok(sum);
        }
        // A worker without a context (or after freeing it all) has no event: 0 once a
        // device sample after `t` exists.
        let device_after = events.iter().any(|e| {
            is_event(e, &["snakepit", "memory", "gpu"])
                && e["time_unix_nano"].as_u64().unwrap_or(0) >= t + INTERVAL_MS * 1_000_000
        });
        if device_after {
            return Ok(0.0);
        }
        if Instant::now() > deadline {
            bail!(
                "no GPU sample from the agent 20 s after a step (see target/gpu-check/agent.log)"
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn call_tool(python: &Path, tools: &Path, port: u16, tool: &str, mb: Option<u64>) -> Result<Value> {
    let mut cmd = Command::new(python);
    cmd.arg(tools)
        .args(["call", "--port", &port.to_string(), "--tool", tool]);
    if let Some(mb) = mb {
        cmd.args(["--mb", &mb.to_string()]);
    }
    let out = cmd
        .output()
        .with_context(|| format!("running {}", tools.display()))?;
    if !out.status.success() {
        bail!(
            "{tool} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    serde_json::from_slice(&out.stdout).with_context(|| format!("{tool}: reply is not JSON"))
}

/// PyTorch or CuPy in .venv; installs CuPy (smaller) and, failing that, PyTorch.
fn ensure_backend(python: &Path, tools: &Path) -> Result<()> {
    if backend(python, tools).is_some() {
        return Ok(());
    }
    // `timeout` bounds each download: the whole check must fit in 8 minutes.
    for pkgs in [
        &["cupy-cuda12x[ctk]"][..],
        &["cupy-cuda12x", "nvidia-cuda-runtime-cu12"][..],
        &["torch"][..],
    ] {
        eprintln!("gpu-check: pip install {}", pkgs.join(" "));
        let ok = Command::new("timeout")
            .arg("240")
            .arg(python)
            .args(["-m", "pip", "install", "--quiet"])
            .args(pkgs)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if ok {
            if let Some(b) = backend(python, tools) {
                eprintln!("gpu-check: backend {b}");
                return Ok(());
            }
        }
    }
    bail!("no GPU backend: neither CuPy nor PyTorch could be installed or use the GPU")
}

fn backend(python: &Path, tools: &Path) -> Option<String> {
    let out = Command::new(python)
        .arg(tools)
        .arg("backend")
        .output()
        .ok()?;
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    v["backend"].as_str().map(String::from)
}
