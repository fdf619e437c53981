//! `cargo xtask bench`: the demo deployment at saturation with the agent detached and
//! attached, interleaved in one run, so both see the same machine state. Prints calls/s
//! for both and their ratio, the agent's CPU time per 1,000 calls, eBPF run time per
//! program invocation (kernel bpf stats) and losses. Ratios only: absolute timings
//! depend on the machine.
use anyhow::{Context, Result};
use snakepit_testkit::agent::{events_named, Agent};
use snakepit_testkit::demo::{Demo, DemoOptions, LoadSpec};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

pub struct BenchArgs {
    pub rounds: u32,
    pub seconds: u64,
    pub workers: u32,
}

pub fn run(root: &Path, args: BenchArgs) -> Result<()> {
    crate::run_cmd(Command::new("cargo").current_dir(root).args([
        "build",
        "--release",
        "-p",
        "telemetry-user",
    ]))?;
    let dir = root.join("target/bench");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let mut demo = Demo::start(&DemoOptions {
        grpc_workers: args.workers,
        pipe_workers: 0,
        log: Some(dir.join("beam.log")),
        ..DemoOptions::default()
    })?;
    demo.wait_ready(Duration::from_secs(60))?;
    let mut spec = LoadSpec::new(0, args.seconds * 1000, &[("echo", 1)]);
    spec.concurrency = 4;
    // Warm-up: connections, sessions, Python imports.
    demo.load(
        &LoadSpec::new(0, 1000, &[("echo", 1)]),
        &dir.join("warmup.jsonl"),
    )?;

    let (mut off_calls, mut on_calls) = (0u64, 0u64);
    let mut agent_cpu = Duration::ZERO;
    let mut last_stats = None;
    for round in 0..args.rounds {
        let n = calls(demo.load(&spec, &dir.join(format!("off-{round}.jsonl")))?)?;
        off_calls += n;
        let run_dir = dir.join(format!("agent-{round}"));
        std::fs::create_dir_all(&run_dir)?;
        let agent = Agent::start(&run_dir, &[])?;
        let cpu0 = agent.cpu_time().unwrap_or_default();
        let m = calls(demo.load(&spec, &dir.join(format!("on-{round}.jsonl")))?)?;
        agent_cpu += agent.cpu_time().unwrap_or_default().saturating_sub(cpu0);
        on_calls += m;
        let events = agent.stop()?;
        last_stats = events_named(&events, &["snakepit", "agent", "stats"])
            .last()
            .map(|e| (*e).clone());
        eprintln!("bench: round {round}: detached {n} calls, attached {m} calls");
    }
    demo.stop()?;

    let secs = (args.rounds as u64 * args.seconds) as f64;
    let off_rate = off_calls as f64 / secs;
    let on_rate = on_calls as f64 / secs;
    println!("calls/s detached        {off_rate:.1}");
    println!("calls/s attached        {on_rate:.1}");
    println!(
        "ratio attached/detached {:.3}",
        on_rate / off_rate.max(1e-9)
    );
    println!(
        "agent CPU per 1000 calls {:.1} ms",
        agent_cpu.as_secs_f64() * 1000.0 / (on_calls.max(1) as f64 / 1000.0)
    );
    if let Some(stats) = last_stats {
        let m = &stats["measurements"];
        println!(
            "losses (last round)     ringbuf_drops {} records_lost {} decode_errors {} bus_lagged {}",
            m["ringbuf_drops"], m["records_lost"], m["decode_errors"], m["bus_lagged"]
        );
        if let Some(progs) = stats["metadata"]["program_run_time"].as_object() {
            let mut progs: Vec<_> = progs.iter().collect();
            progs.sort_by(|a, b| a.0.cmp(b.0));
            for (name, v) in progs {
                println!(
                    "eBPF {name:<28} {:>10} runs {:>8.0} ns/run",
                    v["run_count"],
                    v["avg_ns"].as_f64().unwrap_or(0.0)
                );
            }
        }
    }
    Ok(())
}

fn calls(reply: serde_json::Value) -> Result<u64> {
    reply["calls"]
        .as_u64()
        .context("load reply without a call count")
}
