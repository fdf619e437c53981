//! `snakepit-agent profile`: runs the agent with the Python stack sampler for a while
//! and writes what the workers' CPUs did, optionally only during calls of one function
//! or on one pool, as pprof, folded stacks or an SVG flame graph; or, with
//! `--mode off-cpu`, where their threads waited (off-CPU stacks weighted by the time
//! blocked).
use crate::agent::{Agent, RunOptions};
use crate::config::Config;
use crate::profiler::{output, pprof, Filter, ProfileFormat, ProfileMode};
use anyhow::Context;
use clap::Args;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Args, Debug)]
pub struct ProfileArgs {
    /// Seconds to sample.
    #[arg(long, value_name = "SECS")]
    pub duration: u64,
    /// Only samples taken during calls of this function (or tool).
    #[arg(long)]
    pub function: Option<String>,
    /// Only samples of this pool's workers.
    #[arg(long)]
    pub pool: Option<String>,
    #[arg(long, value_enum, default_value = "pprof")]
    pub format: ProfileFormat,
    /// `cpu`: where the workers' threads run (CPU-clock samples); `off-cpu`: where
    /// they block, each stack weighted by the time until the thread ran again, below a
    /// leaf `[off-cpu: SYSCALL]` (folded/svg in microseconds, pprof `off_cpu`
    /// nanoseconds). Off-CPU needs `[profile] scheduling` and `off_cpu`.
    #[arg(long, value_enum, default_value = "cpu")]
    pub mode: ProfileMode,
    /// Where the profile goes.
    #[arg(long, value_name = "FILE")]
    pub output: PathBuf,
    /// Also write the agent's events (JSON lines) to FILE.
    #[arg(long, value_name = "FILE")]
    pub events: Option<PathBuf>,
    /// TOML configuration file.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Samples per second per CPU (overrides `[profile] sample_hz`).
    #[arg(long)]
    pub sample_hz: Option<u64>,
    /// Treat PID as a Snakepit worker (repeatable).
    #[arg(long = "worker-pid")]
    pub worker_pids: Vec<u32>,
}

pub fn run(args: ProfileArgs) -> anyhow::Result<i32> {
    let mut cfg = match &args.config {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    cfg.profile.sampling = true;
    if args.mode == ProfileMode::OffCpu && cfg.profile.off_cpu_period_ns() == 0 {
        anyhow::bail!("--mode off-cpu needs [profile] scheduling = true and off_cpu = true");
    }
    if let Some(hz) = args.sample_hz {
        cfg.profile.sample_hz = hz;
    }
    cfg.profile.window_s = cfg.profile.window_s.max(args.duration + 10);
    cfg.output.format = crate::config::OutputFormat::Json;
    cfg.output.path = Some(args.events.clone().unwrap_or_else(|| "/dev/null".into()));
    cfg.discovery.worker_pids.extend(&args.worker_pids);
    cfg.validate()?;
    let hz = cfg.profile.sample_hz;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let filter = Filter {
        function: args.function.clone(),
        pool: args.pool.clone(),
        since_ns: 0,
        mode: args.mode,
    };
    let duration = Duration::from_secs(args.duration);
    let stacks = rt.block_on(async move {
        let agent = Agent::start(cfg).await?;
        let handle = agent
            .profile()
            .context("the Python stack sampler did not start (see the log)")?;
        agent
            .run(RunOptions {
                duration: Some(duration),
                reload: None,
            })
            .await?;
        anyhow::Ok(handle.stacks(&filter))
    })?;
    if stacks.is_empty() {
        anyhow::bail!(
            "no {} samples{}{}: were workers {}?",
            args.mode.as_str(),
            args.function
                .as_deref()
                .map(|f| format!(" of function {f}"))
                .unwrap_or_default(),
            args.pool
                .as_deref()
                .map(|p| format!(" on pool {p}"))
                .unwrap_or_default(),
            match args.mode {
                ProfileMode::Cpu => "busy on the CPU",
                ProfileMode::OffCpu => "blocking",
            }
        );
    }
    let frames = || stacks.iter().map(|(s, _, w)| (&s[..], *w));
    let samples: u64 = stacks.iter().map(|(_, n, _)| n).sum();
    let mode = args.mode;
    let bytes = match args.format {
        ProfileFormat::Folded => output::folded_in(frames(), mode).into_bytes(),
        ProfileFormat::Svg => {
            let what = match mode {
                ProfileMode::Cpu => "",
                ProfileMode::OffCpu => " off-CPU",
            };
            let title = match &args.function {
                Some(f) => format!("{f}: {samples}{what} samples"),
                None => format!("workers: {samples}{what} samples"),
            };
            output::svg(&output::folded_in(frames(), mode), &title, mode)?
        }
        ProfileFormat::Pprof => {
            let ns = args.duration * 1_000_000_000;
            let counted = stacks.iter().map(|(s, n, w)| (&s[..], *n, *w));
            let p = pprof::build(counted, mode, hz, started, ns);
            pprof::encode_gz(&p)?
        }
    };
    std::fs::write(&args.output, bytes)
        .with_context(|| format!("writing {}", args.output.display()))?;
    eprintln!("{samples} samples written to {}", args.output.display());
    if mode == ProfileMode::OffCpu {
        let us: u64 = stacks
            .iter()
            .map(|(_, _, ns)| output::off_cpu_us(*ns))
            .sum();
        eprintln!("{us} us off CPU in those samples");
    }
    Ok(0)
}
