//! One measured phase of load: detached (the deployment alone) or attached (with a
//! freshly started agent), with everything read around it.
use super::BenchArgs;
use anyhow::{Context, Result};
use snakepit_testkit::agent::{events_named, Agent};
use snakepit_testkit::bpf_stats;
use snakepit_testkit::demo::{Demo, DemoOptions, LoadSpec};
use snakepit_testkit::procfs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Quiet time before each phase: the previous phase's last calls, or the previous
/// agent's exit, settle first.
const SETTLE: Duration = Duration::from_millis(500);

pub struct Detached {
    pub calls: u64,
    pub seconds: f64,
    /// CPU of the BEAM and its workers during the load.
    pub deploy_cpu: Duration,
}

pub struct Attached {
    pub calls: u64,
    pub seconds: f64,
    pub deploy_cpu: Duration,
    pub agent_cpu: Duration,
    /// Kernel run time and runs of the agent's programs during the load, all processes.
    pub ebpf_ns: u64,
    pub ebpf_runs: u64,
    /// (program, run time ns, runs) during the load, largest time first.
    pub ebpf_by_prog: Vec<(String, u64, u64)>,
    /// Largest VmRSS sampled during the load, and VmHWM at its end (KiB).
    pub rss_max_kib: u64,
    pub rss_peak_kib: u64,
    /// From the agent's final stats event.
    pub ringbuf_drops: u64,
    pub records_lost: u64,
    pub decode_errors: u64,
    pub bus_lagged: u64,
    /// SIGINT to exit.
    pub stop_seconds: f64,
}

pub struct Bench {
    pub demo: Demo,
    pub dir: PathBuf,
    pub beam_pid: u32,
    pub seconds: u64,
    pub nice: i32,
    pub concurrency: u32,
    pub pools: Vec<String>,
}

impl Bench {
    pub fn start(dir: &Path, args: &BenchArgs) -> Result<Bench> {
        let mut erl_flags = Vec::new();
        if !args.beam_busy_wait {
            // Idle BEAM schedulers otherwise spin for a while before sleeping: on two
            // cores that spinning takes CPU from the Python workers, by an amount that
            // changes with every scheduling pattern.
            for f in ["+sbwt", "none", "+sbwtdcpu", "none", "+sbwtdio", "none"] {
                erl_flags.push(f.to_string());
            }
        }
        let mut demo = Demo::start(&DemoOptions {
            grpc_workers: args.workers,
            pipe_workers: args.pipe_workers,
            log: Some(dir.join("beam.log")),
            init_session_per_call: !args.no_session_callbacks,
            nice: args.nice,
            erl_flags,
            ..DemoOptions::default()
        })?;
        let status = demo.wait_ready(Duration::from_secs(60))?;
        if args.nice != 0 {
            // The BEAM shares its session (and autogroup) with this process and the
            // agents it starts; each worker is a session of its own.
            let pids =
                std::iter::once(status.beam_pid).chain(status.workers.iter().map(|w| w.os_pid));
            for pid in pids {
                procfs::set_autogroup_nice(pid, args.nice)
                    .with_context(|| format!("setting the autogroup nice of pid {pid}"))?;
            }
        }
        let mut bench = Bench {
            demo,
            dir: dir.to_path_buf(),
            beam_pid: status.beam_pid,
            seconds: args.seconds,
            nice: args.nice,
            concurrency: args.concurrency.max(1),
            pools: [("default", args.workers), ("legacy", args.pipe_workers)]
                .iter()
                .filter(|(_, n)| *n > 0)
                .map(|(p, _)| p.to_string())
                .collect(),
        };
        if args.warmup_seconds > 0 {
            // Connections, sessions, Python imports, the BEAM's and grpcio's buffers.
            bench.load(0, args.warmup_seconds)?;
        }
        Ok(bench)
    }

    fn load(&mut self, rate: u32, seconds: u64) -> Result<u64> {
        let mut spec = LoadSpec::new(rate, seconds * 1000, &[("echo", 1)]);
        spec.concurrency = self.concurrency;
        // The demo's pipe workers form the pool `legacy`.
        spec.pools = self.pools.clone();
        self.demo.load_count(&spec)
    }

    pub fn detached(&mut self) -> Result<Detached> {
        std::thread::sleep(SETTLE);
        let cpu0 = procfs::tree_cpu_time(self.beam_pid);
        let calls = self.load(0, self.seconds)?;
        let cpu1 = procfs::tree_cpu_time(self.beam_pid);
        Ok(Detached {
            calls,
            seconds: self.seconds as f64,
            deploy_cpu: cpu1.saturating_sub(cpu0),
        })
    }

    /// A phase with a fresh agent (its default configuration: the kernel's run-time
    /// statistics off). `counted`: this process holds them on during the load, for the
    /// programs' run times (which then cost each run two clock reads more).
    pub fn attached(&mut self, name: &str, rate: u32, counted: bool) -> Result<Attached> {
        let run_dir = self.dir.join(name);
        std::fs::create_dir_all(&run_dir)?;
        let before = bpf_stats::snapshot();
        let agent = Agent::start_with(&run_dir, &[], self.nice)?;
        let ids = bpf_stats::new_programs(&before, &bpf_stats::snapshot());
        std::thread::sleep(SETTLE);
        let rss = RssSampler::start(agent.pid());
        let stats_on = if counted {
            Some(bpf_stats::count().context("BPF_ENABLE_STATS (the programs' run times)")?)
        } else {
            None
        };
        let s0 = bpf_stats::snapshot();
        let a0 = agent.cpu_time().unwrap_or_default();
        let d0 = procfs::tree_cpu_time(self.beam_pid);
        let calls = self.load(rate, self.seconds)?;
        let d1 = procfs::tree_cpu_time(self.beam_pid);
        let a1 = agent.cpu_time().unwrap_or_default();
        let s1 = bpf_stats::snapshot();
        drop(stats_on);
        let rss_max_kib = rss.stop();
        let rss_peak_kib = procfs::peak_rss_kib(agent.pid()).unwrap_or(0);
        let (ebpf_ns, ebpf_runs) = bpf_stats::delta(&ids, &s0, &s1, |_| true);
        let mut ebpf_by_prog: Vec<(String, u64, u64)> = ids
            .iter()
            .filter_map(|id| {
                let name = s1.get(id)?.name.clone();
                let (t, runs) = bpf_stats::delta(&[*id], &s0, &s1, |_| true);
                Some((name, t, runs))
            })
            .collect();
        ebpf_by_prog.sort_by_key(|p| std::cmp::Reverse(p.1));
        let (took, events) = agent
            .stop_timed()
            .with_context(|| format!("stopping the agent ({name})"))?;
        let stop_seconds = took.as_secs_f64();
        let stats = events_named(&events, &["snakepit", "agent", "stats"])
            .last()
            .map(|e| e["measurements"].clone())
            .context("the agent wrote no stats event")?;
        let m = |k: &str| stats[k].as_u64().unwrap_or(0);
        Ok(Attached {
            calls,
            seconds: self.seconds as f64,
            deploy_cpu: d1.saturating_sub(d0),
            agent_cpu: a1.saturating_sub(a0),
            ebpf_ns,
            ebpf_runs,
            ebpf_by_prog,
            rss_max_kib,
            rss_peak_kib,
            ringbuf_drops: m("ringbuf_drops"),
            records_lost: m("records_lost"),
            decode_errors: m("decode_errors"),
            bus_lagged: m("bus_lagged"),
            stop_seconds,
        })
    }

    pub fn miss_path(&mut self) -> Result<super::miss::MissPath> {
        // No calls, no heartbeats from the BEAM: the agent is attached and idle.
        self.demo.quiesce()?;
        let run_dir = self.dir.join("miss");
        std::fs::create_dir_all(&run_dir)?;
        super::miss::measure(&run_dir, self.nice)
    }

    pub fn stop(self) -> Result<()> {
        self.demo.stop()
    }
}

/// Samples a process's VmRSS every 100 ms on a thread; `stop` returns the largest.
struct RssSampler {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<u64>,
}

impl RssSampler {
    fn start(pid: u32) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut max = 0;
            while !flag.load(Ordering::Relaxed) {
                max = max.max(procfs::rss_kib(pid).unwrap_or(0));
                std::thread::sleep(Duration::from_millis(100));
            }
            max.max(procfs::rss_kib(pid).unwrap_or(0))
        });
        RssSampler { stop, thread }
    }

    fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or(0)
    }
}
