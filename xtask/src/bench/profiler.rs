//! `cargo xtask bench --profiler [--rate N]`: what the Python stack profiler costs a
//! busy worker. One worker runs `cpu` calls (a fixed pure-Python loop) back to back,
//! or N a second; rounds of three attached phases, in rotating order: the sampler off
//! (`[profile] sampling = false`; the scheduling probes stay), the CPU-clock sampler
//! alone (`off_cpu = false`), the sampler and the off-CPU walks. Per phase: the
//! worker's CPU time per call (the BPF programs run in the sampled or switching
//! thread's context, so their cost lands there), the kernel's run time of
//! `profile_cpu` per run (every CPU-clock tick of every CPU: a miss for other
//! processes) and per sample of the worker, and `sched_switch`'s run time per run
//! without and with the off-CPU walks (the difference per off-CPU sample sent).
use super::BenchArgs;
use anyhow::{Context, Result};
use snakepit_testkit::agent::{events_named, Agent};
use snakepit_testkit::demo::{Demo, DemoOptions, LoadSpec};
use snakepit_testkit::procfs;
use std::path::Path;
use std::time::Duration;

/// What a phase runs with.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Setting {
    /// `[profile] sampling = false`: the scheduling probes only.
    Off,
    /// The CPU-clock sampler, no off-CPU walks.
    Cpu,
    /// The sampler and the off-CPU walks at sched_switch.
    OffCpu,
}

impl Setting {
    fn name(self) -> &'static str {
        match self {
            Setting::Off => "off",
            Setting::Cpu => "cpu",
            Setting::OffCpu => "off-cpu",
        }
    }

    /// program_stats: the programs' run times come from the agent's stats event.
    fn toml(self) -> &'static str {
        match self {
            Setting::Off => "[capture]\nprogram_stats = true\n[profile]\nsampling = false\n",
            Setting::Cpu => {
                "[capture]\nprogram_stats = true\n[profile]\nsampling = true\noff_cpu = false\n"
            }
            Setting::OffCpu => {
                "[capture]\nprogram_stats = true\n[profile]\nsampling = true\noff_cpu = true\n"
            }
        }
    }
}

struct Phase {
    cpu_per_call_us: f64,
    /// The worker's CPU time over the phase.
    worker_cpu_ns: u64,
    calls: u64,
    /// (run time ns, runs) of profile_cpu over the agent's life.
    prog: (u64, u64),
    /// (run time ns, runs) of sched_switch over the agent's life.
    switch: (u64, u64),
    samples: u64,
    off_cpu_samples: u64,
}

/// (total run time ns, runs) of a program in the stats event's `program_run_time`.
fn run_time(stats: &serde_json::Value, prog: &str) -> (u64, u64) {
    let run = &stats["program_run_time"][prog];
    let runs = run["run_count"].as_u64().unwrap_or(0);
    (
        (run["avg_ns"].as_f64().unwrap_or(0.0) * runs as f64) as u64,
        runs,
    )
}

fn phase(
    demo: &mut Demo,
    dir: &Path,
    worker: u32,
    setting: Setting,
    round: u32,
    args: &BenchArgs,
) -> Result<Phase> {
    let cfg = dir.join(format!("{}.toml", setting.name()));
    std::fs::write(&cfg, setting.toml())?;
    let cfg_s = cfg.to_string_lossy().to_string();
    // A fresh directory per phase: the agent helper waits for the started event in
    // events.jsonl, which a previous round's file would already hold.
    let run_dir = dir.join(format!("{}-{round}", setting.name()));
    std::fs::create_dir_all(&run_dir)?;
    let agent = Agent::start_with(&run_dir, &["--config", &cfg_s], args.nice)?;
    std::thread::sleep(Duration::from_millis(500));
    let c0 = procfs::cpu_time(worker).unwrap_or_default();
    let mut spec = LoadSpec::new(args.rate, args.seconds * 1000, &[("cpu", 1)]);
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
    let worker_cpu = c1.saturating_sub(c0);
    Ok(Phase {
        cpu_per_call_us: worker_cpu.as_secs_f64() * 1e6 / calls.max(1) as f64,
        worker_cpu_ns: worker_cpu.as_nanos() as u64,
        calls,
        prog: run_time(&stats, "profile_cpu"),
        switch: run_time(&stats, "sched_switch"),
        samples: stats["profiler"]["samples"].as_u64().unwrap_or(0),
        off_cpu_samples: stats["profiler"]["off_cpu_samples"].as_u64().unwrap_or(0),
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn per(t: u64, n: u64) -> f64 {
    t as f64 / n.max(1) as f64
}

#[derive(Default)]
struct Figures {
    ratio_cpu: Vec<f64>,
    ratio_off_cpu: Vec<f64>,
    per_run: Vec<f64>,
    per_sample: Vec<f64>,
    /// profile_cpu's time over the worker's CPU time (an upper bound of its share:
    /// the misses on other processes' ticks are in it).
    share: Vec<f64>,
    switch_cpu: Vec<f64>,
    switch_off_cpu: Vec<f64>,
    per_walk: Vec<f64>,
    /// The walks' added sched_switch time over the worker's CPU time (the program
    /// runs in the context of the thread that switches out: the worker's).
    walk_share: Vec<f64>,
    off_cpu_samples: Vec<f64>,
}

impl Figures {
    fn add(&mut self, round: u32, off: &Phase, cpu: &Phase, full: &Phase) {
        let ratio_cpu = cpu.cpu_per_call_us / off.cpu_per_call_us;
        let ratio_off = full.cpu_per_call_us / off.cpu_per_call_us;
        let (t, n) = cpu.prog;
        let (s1, n1) = cpu.switch;
        let (s2, n2) = full.switch;
        // What the walks add to sched_switch, over the off-CPU samples they sent.
        let walk = (per(s2, n2) - per(s1, n1)) * n2 as f64 / full.off_cpu_samples.max(1) as f64;
        eprintln!(
            "bench --profiler round {round}: worker CPU/call off {:.0} us ({} calls), cpu {:.0} us ({} calls), \
             off-cpu {:.0} us ({} calls): ratios {ratio_cpu:.4} / {ratio_off:.4}; profile_cpu {n} runs, \
             {:.0} ns/run, {} samples, {:.0} ns/sample; sched_switch {:.0} ns/run without walks, {:.0} with \
             ({} off-CPU samples, {walk:.0} ns each)",
            off.cpu_per_call_us, off.calls, cpu.cpu_per_call_us, cpu.calls, full.cpu_per_call_us, full.calls,
            per(t, n), cpu.samples, per(t, cpu.samples), per(s1, n1), per(s2, n2), full.off_cpu_samples,
        );
        self.ratio_cpu.push(ratio_cpu);
        self.ratio_off_cpu.push(ratio_off);
        self.per_run.push(per(t, n));
        self.per_sample.push(per(t, cpu.samples));
        self.share.push(t as f64 / cpu.worker_cpu_ns.max(1) as f64);
        self.switch_cpu.push(per(s1, n1));
        self.switch_off_cpu.push(per(s2, n2));
        self.per_walk.push(walk);
        self.walk_share
            .push(walk * full.off_cpu_samples as f64 / full.worker_cpu_ns.max(1) as f64);
        self.off_cpu_samples.push(full.off_cpu_samples as f64);
    }
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
    let mut fig = Figures::default();
    let settings = [Setting::Off, Setting::Cpu, Setting::OffCpu];
    for round in 0..args.rounds.max(1) {
        // The order rotates between rounds so that drift spreads over the settings.
        let mut phases: Vec<(Setting, Phase)> = Vec::new();
        for i in 0..settings.len() {
            let s = settings[(i + round as usize) % settings.len()];
            phases.push((s, phase(&mut demo, dir, worker, s, round, args)?));
        }
        let get = |s: Setting| {
            phases
                .iter()
                .find(|(x, _)| *x == s)
                .map(|(_, p)| p)
                .context("a phase is missing")
        };
        fig.add(
            round,
            get(Setting::Off)?,
            get(Setting::Cpu)?,
            get(Setting::OffCpu)?,
        );
    }
    demo.stop()?;
    let load = if args.rate > 0 {
        format!("{} `cpu` calls/s", args.rate)
    } else {
        "`cpu` calls back to back".into()
    };
    println!(
        "profiler bench ({} rounds of {} s, 1 worker, {load}, sampling at 99 Hz; medians):\n  \
         worker CPU per call, CPU sampler on / off: {:.4}\n  \
         worker CPU per call, sampler and off-CPU stacks on / off: {:.4}\n  \
         profile_cpu run time per run: {:.0} ns\n  \
         profile_cpu run time per sample taken, misses included: {:.0} ns\n  \
         profile_cpu run time / the worker's CPU time: {:.3} %\n  \
         sched_switch run time per run, off-CPU walks off / on: {:.0} / {:.0} ns\n  \
         sched_switch time added per off-CPU sample: {:.0} ns ({:.0} off-CPU samples per phase)\n  \
         off-CPU walks' time / the worker's CPU time: {:.3} %",
        args.rounds.max(1),
        args.seconds,
        median(fig.ratio_cpu),
        median(fig.ratio_off_cpu),
        median(fig.per_run),
        median(fig.per_sample),
        median(fig.share) * 100.0,
        median(fig.switch_cpu),
        median(fig.switch_off_cpu),
        median(fig.per_walk),
        median(fig.off_cpu_samples),
        median(fig.walk_share) * 100.0,
    );
    Ok(())
}
