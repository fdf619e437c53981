//! The `snakepit-agent` command line: one file per subcommand; each only parses flags,
//! calls the library and prints.
pub mod check;
pub mod list;
pub mod profile;
pub mod run;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "snakepit-agent",
    version,
    about = "eBPF observability for Snakepit deployments: no code change, attach to what runs"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Attach to the Snakepit deployments on this host and stream what they do.
    Run(run::RunArgs),
    /// One-shot: deployments, pools, workers, pids, ports, connections.
    List(list::ListArgs),
    /// Preflight: privileges, kernel, BTF, tracefs, and what would be attached.
    Check(check::CheckArgs),
    /// Sample the workers' Python stacks for a while and write a profile.
    Profile(profile::ProfileArgs),
}

/// Runs the parsed command; the process exit code is the returned one.
pub fn dispatch(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Run(args) => run::run(args),
        Command::List(args) => list::run(args),
        Command::Check(args) => check::run(args),
        Command::Profile(args) => profile::run(args),
    }
}
