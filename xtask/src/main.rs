//! Project tasks: `cargo xtask setup | demo | bench | gpu-check | package | test`.
//!
//! Every task that needs the toolchain, packages or mounts runs `setup` first; setup is
//! idempotent and cheap when everything is already there.
mod bench;
mod demo;
mod gpu_check;
mod package;
mod setup;
mod setup_protobuf6;
mod setup_pyversions;
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
    Setup {
        /// Only the pinned toolchain parts that build the agent (container builds).
        #[arg(long)]
        toolchain_only: bool,
    },
    /// Run the agent against the bundled demo deployment (or the running one).
    ///
    /// Known flags: --duration SECS, --grpc-workers N, --pipe-workers N, --rate CALLS_PER_S.
    /// Every other argument is passed to `snakepit-agent run` (e.g. --format json --output FILE).
    Demo {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// The demo with the agent detached vs attached: throughput ratio per round
    /// (min/median/max), eBPF run time and agent CPU per call, agent RSS, drops and
    /// lost records, the miss path. `--rate N` runs one attached phase at N calls/s.
    Bench {
        /// Detached/attached round pairs (their order alternates).
        #[arg(long, default_value_t = 5)]
        rounds: u32,
        /// Seconds of load per phase.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// gRPC workers in the demo pool.
        #[arg(long, default_value_t = 4)]
        workers: u32,
        /// Pipe workers (Erlang ports, `{packet,4}`) in the pool as well: the
        /// cheapest calls the demo can drive (its highest call rates).
        #[arg(long, default_value_t = 0)]
        pipe_workers: u32,
        /// Calls in flight at once.
        #[arg(long, default_value_t = 4)]
        concurrency: u32,
        /// Calls/s for one attached phase of `--seconds` instead of saturation rounds.
        #[arg(long, default_value_t = 0)]
        rate: u32,
        /// Only detached phases (checks that the load itself holds steady).
        #[arg(long)]
        detached_only: bool,
        /// Scheduling priority of the demo and the agent, so other work on a shared
        /// machine takes what they leave (0 = unchanged).
        #[arg(long, default_value_t = -10, allow_hyphen_values = true)]
        nice: i32,
        /// Leave the BEAM's idle schedulers spinning (erl's default).
        #[arg(long)]
        beam_busy_wait: bool,
        /// No InitializeSession callback from the worker on each tool call.
        #[arg(long)]
        no_session_callbacks: bool,
        /// Seconds of load before the first measured phase.
        #[arg(long, default_value_t = 5)]
        warmup_seconds: u64,
        /// Write the results and the machine description to docs/benchmarks.md.
        #[arg(long)]
        write_doc: bool,
        /// Measure the Python stack profiler instead: a worker's CPU per call with
        /// sampling off, on, and on with off-CPU stacks (`--rate`: calls/s, else back
        /// to back), the sampler's eBPF run time per sample and sched_switch's per
        /// off-CPU sample.
        #[arg(long)]
        profiler: bool,
    },
    /// On a machine with an NVIDIA GPU: a demo worker allocates known amounts of GPU
    /// memory (CuPy or PyTorch, installed when missing); compares the agent's per-worker
    /// figures with them and prints the differences.
    GpuCheck,
    /// Build the Debian package (target/debian/snakepit-agent_<version>_<arch>.deb):
    /// the binary, the systemd unit, /etc/snakepit-agent/config.toml, the system user.
    Package,
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
        Task::Setup { toolchain_only } => {
            if toolchain_only {
                setup::rust_toolchain(&root)
            } else {
                setup::run(&root)
            }
        }
        Task::Package => {
            setup::rust_toolchain(&root)?;
            package::run(&root).map(|_| ())
        }
        Task::Demo { args } => {
            setup::run(&root)?;
            demo::run(&root, demo::DemoArgs::parse(&args)?)
        }
        Task::Bench {
            rounds,
            seconds,
            workers,
            pipe_workers,
            concurrency,
            rate,
            detached_only,
            nice,
            beam_busy_wait,
            no_session_callbacks,
            warmup_seconds,
            write_doc,
            profiler,
        } => {
            setup::run(&root)?;
            bench::run(
                &root,
                bench::BenchArgs {
                    rounds,
                    seconds,
                    workers,
                    pipe_workers,
                    concurrency,
                    rate,
                    detached_only,
                    nice,
                    beam_busy_wait,
                    no_session_callbacks,
                    warmup_seconds,
                    write_doc,
                    profiler,
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
