use crate::agent::{Agent, RunOptions};
use crate::config::{Config, OutputFormat};
use clap::Args;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// TOML configuration file (flags override it).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Event output format.
    #[arg(long, value_enum)]
    pub format: Option<OutputFormat>,
    /// Write events to FILE instead of stdout.
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Stop after SECS seconds (default: until SIGINT/SIGTERM).
    #[arg(long, value_name = "SECS")]
    pub duration: Option<u64>,
    /// Payload bytes copied per syscall (1..=4096).
    #[arg(long)]
    pub capture_bytes: Option<u32>,
    /// Extra command-line substring that marks a worker (repeatable).
    #[arg(long = "worker-pattern")]
    pub worker_patterns: Vec<String>,
    /// Treat PID as a Snakepit worker (repeatable).
    #[arg(long = "worker-pid")]
    pub worker_pids: Vec<u32>,
    /// Treat PID as a Snakepit BEAM (repeatable).
    #[arg(long = "beam-pid")]
    pub beam_pids: Vec<u32>,
    /// Per-connection I/O summary interval in milliseconds.
    #[arg(long)]
    pub summary_interval_ms: Option<u64>,
    /// Serve /metrics and the live page on ADDR (e.g. 127.0.0.1:9464).
    #[arg(long, value_name = "ADDR")]
    pub http_listen: Option<std::net::SocketAddr>,
    /// Write repro scripts of failed calls into DIR (`[repro] directory`).
    #[arg(long, value_name = "DIR")]
    pub repro_dir: Option<PathBuf>,
    /// No repro scripts (`[repro] repro_on_error = false`).
    #[arg(long)]
    pub no_repro: bool,
    /// Report each eBPF program's run count and mean run time in the stats event
    /// (`[capture] program_stats`; slows every BPF program on the host a little).
    #[arg(long)]
    pub program_stats: bool,
}

impl RunArgs {
    pub fn into_config(self) -> anyhow::Result<(Config, Option<Duration>)> {
        let mut cfg = match &self.config {
            Some(path) => Config::load(path)?,
            None => Config::default(),
        };
        if let Some(f) = self.format {
            cfg.output.format = f;
        }
        if let Some(p) = self.output {
            cfg.output.path = Some(p);
        }
        if let Some(b) = self.capture_bytes {
            cfg.capture.bytes = b;
        }
        if let Some(ms) = self.summary_interval_ms {
            cfg.output.summary_interval_ms = ms;
        }
        if let Some(addr) = self.http_listen {
            cfg.http.enabled = true;
            cfg.http.listen = addr;
        }
        if let Some(dir) = self.repro_dir {
            cfg.repro.directory = dir;
        }
        if self.no_repro {
            cfg.repro.repro_on_error = false;
        }
        if self.program_stats {
            cfg.capture.program_stats = true;
        }
        cfg.discovery
            .worker_cmdline_patterns
            .extend(self.worker_patterns);
        cfg.discovery.worker_pids.extend(self.worker_pids);
        cfg.discovery.beam_pids.extend(self.beam_pids);
        cfg.validate()?;
        Ok((cfg, self.duration.map(Duration::from_secs)))
    }
}

pub fn run(args: RunArgs) -> anyhow::Result<i32> {
    let reload_args = args.clone();
    let reload: crate::agent::reload::Reloader =
        Box::new(move || Ok(reload_args.clone().into_config()?.0));
    let (config, duration) = args.into_config()?;
    // Missing capabilities fail here, by name, not later as a silent 0 connections.
    crate::privileges::require_for_run()?;
    // One thread for the whole pipeline and every sink: each kernel record fans out to
    // several sink tasks, and on a multi-threaded runtime every hand-off was a
    // cross-thread wakeup (a third of the agent's CPU in perf). Blocking work (NVML,
    // the OTLP SDK's own thread) stays off this thread.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let agent = Agent::start(config).await?;
        agent
            .run(RunOptions {
                duration,
                reload: Some(reload),
            })
            .await
    })?;
    // What the runtime still holds (the sampler's task, the sinks' tasks) goes here.
    let t = std::time::Instant::now();
    drop(rt);
    tracing::info!(ms = t.elapsed().as_millis() as u64, "exited");
    Ok(0)
}
