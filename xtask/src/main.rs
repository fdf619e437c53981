//! Project tasks: `cargo xtask setup | demo | test`.
//!
//! Every task that needs the toolchain, packages or mounts runs `setup` first; setup is
//! idempotent and cheap when everything is already there.
mod bench;
mod demo;
mod gpu_check;
mod setup;
mod test;

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "xtask", about = "snakepit-agent project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what the agent, the demo and the tests need (idempotent).
    Setup,
    /// Run the agent against the bundled demo deployment (or the running one).
    ///
    /// Known flags: --duration SECS, --grpc-workers N, --pipe-workers N, --rate CALLS_PER_S.
    /// Every other argument is passed to `snakepit-agent run` (e.g. --format json --output FILE).
    Demo {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// The demo at saturation, agent detached vs attached (interleaved): calls/s ratio,
    /// agent CPU per 1,000 calls, eBPF run time per program, losses.
    Bench {
        /// Detached/attached round pairs.
        #[arg(long, default_value_t = 3)]
        rounds: u32,
        /// Seconds of load per round and mode.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// gRPC workers in the demo pool.
        #[arg(long, default_value_t = 4)]
        workers: u32,
    },
    /// On a machine with an NVIDIA GPU: a demo worker allocates known amounts of GPU
    /// memory (CuPy or PyTorch, installed when missing); compares the agent's per-worker
    /// figures with them and prints the differences.
    GpuCheck,
    /// Run every test: Rust unit and end-to-end tests, the demo's own self-tests.
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let root = workspace_root();
    match cli.task {
        Task::Setup => setup::run(&root),
        Task::Demo { args } => {
            setup::run(&root)?;
            demo::run(&root, demo::DemoArgs::parse(&args)?)
        }
        Task::Bench {
            rounds,
            seconds,
            workers,
        } => {
            setup::run(&root)?;
            bench::run(
                &root,
                bench::BenchArgs {
                    rounds,
                    seconds,
                    workers,
                },
            )
        }
        Task::GpuCheck => {
            gpu_check::require_gpu()?;
            setup::run(&root)?;
            gpu_check::run(&root)
        }
        Task::Test { args } => {
            setup::run(&root)?;
            test::run(&root, &args)
        }
    }
}

fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Runs a command, failing with its command line when it does not exit 0.
pub(crate) fn run_cmd(cmd: &mut std::process::Command) -> Result<()> {
    let status = cmd.status()?;
    if !status.success() {
        anyhow::bail!("command failed ({status}): {cmd:?}");
    }
    Ok(())
}

/// True when the command runs and exits 0 (used to probe for installed tools).
pub(crate) fn cmd_ok(cmd: &mut std::process::Command) -> bool {
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}
