//! `cargo xtask bench`: the demo deployment with the agent detached and attached.
//!
//! Saturation mode (default): rounds of one detached and one attached phase, their
//! order alternating between rounds so drift cancels; per round the throughput ratio
//! attached/detached and the same ratio from CPU cost per call (deployment CPU, plus
//! the agent's when attached), which holds when other processes share the machine.
//! Rate mode (`--rate N`): one attached run at N calls/s. Both print eBPF run time per
//! call (kernel bpf stats), agent CPU per call, agent RSS, ring-buffer drops and lost
//! records, and the miss path: what the probes cost an unrelated process per syscall.
//!
//! The agent runs with its defaults, which leave the kernel's run-time statistics of BPF
//! programs off (each run would read the clock twice more). The bench turns them on
//! itself only where it reads them: an extra attached phase after the rounds, the rate
//! phase, and a second loop of the miss path.
mod doc;
mod miss;
mod phase;
mod profiler;
mod report;

use anyhow::Result;
use phase::Bench;
use report::Report;
use std::path::Path;
use std::process::Command;

pub struct BenchArgs {
    pub rounds: u32,
    pub seconds: u64,
    pub workers: u32,
    pub pipe_workers: u32,
    /// Calls in flight at once.
    pub concurrency: u32,
    /// Calls/s for rate mode; 0 = saturation.
    pub rate: u32,
    /// Rounds without the agent only (to check that the load holds steady).
    pub detached_only: bool,
    /// Scheduling priority of the deployment and the agent (other users of the
    /// machine get what is left).
    pub nice: i32,
    /// Leave the BEAM's idle schedulers spinning (erl's default).
    pub beam_busy_wait: bool,
    /// No InitializeSession callback per tool call.
    pub no_session_callbacks: bool,
    pub warmup_seconds: u64,
    pub write_doc: bool,
    /// The Python stack sampler's cost instead (see `profiler.rs`).
    pub profiler: bool,
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
    if args.profiler {
        return profiler::run(&dir, &args);
    }
    let machine = report::Machine::describe();
    let mut bench = Bench::start(&dir, &args)?;
    let mut report = Report::new(&args, machine);
    if args.rate > 0 {
        report.rate = Some(bench.attached("rate", args.rate, true)?);
    } else {
        // off, on, off, on, ..., off: each attached phase is compared with the
        // detached phases on both sides of it, which cancels drift in between.
        report.detached.push(bench.detached()?);
        for round in 0..args.rounds {
            if !args.detached_only {
                report
                    .attached
                    .push(bench.attached(&format!("on-{round}"), 0, false)?);
            }
            report.detached.push(bench.detached()?);
            eprintln!("bench: {}", report.round_line(round as usize));
        }
        if !args.detached_only {
            // The programs' run times, apart: counting them slows every program run.
            report.counted = Some(bench.attached("counted", 0, true)?);
        }
    }
    if !args.detached_only {
        report.miss = Some(bench.miss_path()?);
    }
    bench.stop()?;
    let text = report.render();
    println!("{text}");
    if args.write_doc {
        let path = root.join("docs/benchmarks.md");
        let section = if args.rate > 0 {
            doc::Section::Rate
        } else {
            doc::Section::Saturation
        };
        doc::write_results(&path, section, &report.render_markdown())?;
        eprintln!("bench: results written to {}", path.display());
    }
    Ok(())
}
