//! `cargo xtask bench --profiler`: what the Python stack sampler costs a busy worker.
//! One worker runs `cpu` calls (a fixed pure-Python loop) back to back; rounds of two
//! attached phases, the sampler off (`[profile] sampling = false`) and on, in
//! alternating order. Per phase: the worker's CPU time per call (the sampler's BPF
//! program runs in the sampled thread's context, so its cost lands there) and, with the
//! sampler on, the kernel's run time of `profile_cpu` per run (every CPU-clock tick of
//! every CPU: a miss for other processes) and per sample of the worker.
use super::BenchArgs;
use anyhow::{Context, Result};
use snakepit_testkit::agent::{events_named, Agent};
use snakepit_testkit::demo::{Demo, DemoOptions, LoadSpec};
use snakepit_testkit::procfs;
use std::path::Path;
use std::time::Duration;

struct Phase {
    cpu_per_call_us: f64,
    calls: u64,
    /// (run time ns, runs) of profile_cpu over the agent's life.
    prog: (u64, u64),
    samples: u64,
}

fn phase(
    demo: &mut Demo,
    dir: &Path,
    worker: u32,
    on: bool,
    secs: u64,
    nice: i32,
) -> Result<Phase> {
    let cfg = dir.join(if on { "on.toml" } else { "off.toml" });
    std::fs::write(&cfg, format!("[profile]\nsampling = {on}\n"))?;
    let cfg_s = cfg.to_string_lossy().to_string();
    let run_dir = dir.join(if on { "on" } else { "off" });
    std::fs::create_dir_all(&run_dir)?;
    let agent = Agent::start_with(&run_dir, &["--config", &cfg_s], nice)?;
    std::thread::sleep(Duration::from_millis(500));
    let c0 = procfs::cpu_time(worker).unwrap_or_default();
    let mut spec = LoadSpec::new(0, secs * 1000, &[("cpu", 1)]);
    spec.concurrency = 1;
    let calls = demo.load_count(&spec)?;
    let c1 = procfs::cpu_time(worker).unwrap_or_default();
    let events = agent.stop().context("stopping the agent")?;
    // The agent's own totals over its life (kernel run-time stats of its programs and
    // the sampler's counters), from its final stats event.
    let stats = events_named(&events, &["snakepit", "agent", "stats"])
        .last()
        .map(|e| e["metadata"].clone())
        .unwrap_or_default();
    let run = &stats["program_run_time"]["profile_cpu"];
    let runs = run["run_count"].as_u64().unwrap_or(0);
    let prog = (
        (run["avg_ns"].as_f64().unwrap_or(0.0) * runs as f64) as u64,
        runs,
    );
    let samples = stats["profiler"]["samples"].as_u64().unwrap_or(0);
    Ok(Phase {
        cpu_per_call_us: c1.saturating_sub(c0).as_secs_f64() * 1e6 / calls.max(1) as f64,
        calls,
        prog,
        samples,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

pub fn run(dir: &Path, args: &BenchArgs) -> Result<()> {
    let mut demo = Demo::start(&DemoOptions {
        grpc_workers: 1,
        pipe_workers: 0,
        log: Some(dir.join("beam.log")),
        nice: args.nice,
        ..DemoOptions::default()
    })?;
    let status = demo.wait_ready(Duration::from_secs(60))?;
    let worker = status.workers.first().context("no worker")?.os_pid;
    let mut ratios = Vec::new();
    let mut per_run = Vec::new();
    let mut per_sample = Vec::new();
    for round in 0..args.rounds.max(1) {
        let order = if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        let mut off = None;
        let mut on = None;
        for o in order {
            let p = phase(&mut demo, dir, worker, o, args.seconds, args.nice)?;
            if o {
                on = Some(p);
            } else {
                off = Some(p);
            }
        }
        let (off, on) = (off.context("off phase")?, on.context("on phase")?);
        let ratio = on.cpu_per_call_us / off.cpu_per_call_us;
        let (t, n) = on.prog;
        eprintln!(
            "bench --profiler round {round}: worker CPU/call off {:.0} us ({} calls), on {:.0} us ({} calls): ratio {ratio:.4}; \
             profile_cpu {} runs, {:.0} ns/run; {} samples, {:.0} ns/sample (all runs' time / samples)",
            off.cpu_per_call_us, off.calls, on.cpu_per_call_us, on.calls, n,
            t as f64 / n.max(1) as f64, on.samples, t as f64 / on.samples.max(1) as f64,
        );
        ratios.push(ratio);
        per_run.push(t as f64 / n.max(1) as f64);
        per_sample.push(t as f64 / on.samples.max(1) as f64);
    }
    demo.stop()?;
    println!(
        "profiler bench ({} rounds of {} s, 1 worker running `cpu` calls, {} Hz):\n  \
         worker CPU per call, sampling on / off (median): {:.4}\n  \
         profile_cpu run time per run (median): {:.0} ns\n  \
         profile_cpu run time per sample taken, misses included (median): {:.0} ns",
        args.rounds.max(1),
        args.seconds,
        99,
        median(ratios),
        median(per_run),
        median(per_sample),
    );
    Ok(())
}
