//! `snakepit-agent profile`: runs the agent with the Python stack sampler for a while
//! and writes what the workers' CPUs did, optionally only during calls of one function
//! or on one pool, as pprof, folded stacks or an SVG flame graph.
use crate::agent::{Agent, RunOptions};
use crate::config::Config;
use crate::profiler::{output, pprof, Filter, ProfileFormat};
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
            "no samples{}{}: were workers busy on the CPU?",
            args.function
                .as_deref()
                .map(|f| format!(" of function {f}"))
                .unwrap_or_default(),
            args.pool
                .as_deref()
                .map(|p| format!(" on pool {p}"))
                .unwrap_or_default(),
        );
    }
    let frames = || stacks.iter().map(|s| &s[..]);
    let bytes = match args.format {
        ProfileFormat::Folded => output::folded(frames()).into_bytes(),
        ProfileFormat::Svg => {
            let title = match &args.function {
                Some(f) => format!("{f}: {} samples", stacks.len()),
                None => format!("workers: {} samples", stacks.len()),
            };
            output::svg(&output::folded(frames()), &title)?
        }
        ProfileFormat::Pprof => {
            let p = pprof::build(frames(), hz, started, args.duration * 1_000_000_000);
            pprof::encode_gz(&p)?
        }
    };
    std::fs::write(&args.output, bytes)
        .with_context(|| format!("writing {}", args.output.display()))?;
    eprintln!(
        "{} samples written to {}",
        stacks.len(),
        args.output.display()
    );
    Ok(0)
}
