//! The `snakepit-agent` command line: one file per subcommand; each only parses flags,
//! calls the library and prints.
pub mod check;
pub mod list;
pub mod profile;
pub mod repro;
pub mod run;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "snakepit-agent",
    version,
    about = "eBPF observability for Snakepit deployments: no code change, attach to what runs"
)]
pub struct Cli {
    /// Log lines on stderr: `text` (journald-friendly: no colours and no timestamp of
    /// our own under systemd) or `json` (one object per line).
    #[arg(long, value_enum, global = true, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Sets up the log subscriber on stderr (`RUST_LOG` filters, default `info`).
pub fn init_logging(format: LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // systemd sets JOURNAL_STREAM when stderr goes to the journal, which stamps
    // every line itself.
    let journal = std::env::var_os("JOURNAL_STREAM").is_some();
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text if journal => builder.with_ansi(false).without_time().init(),
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
    }
}

/// An error and its causes on one line, each cause once: a cause whose text its
/// parent already holds is left out.
pub fn error_line(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Attach to the Snakepit deployments on this host and stream what they do.
    Run(run::RunArgs),
    /// One-shot: deployments, pools, workers, pids, ports, connections.
    List(list::ListArgs),
    /// Preflight: privileges, kernel, BTF, tracefs, and what would be attached.
    Check(check::CheckArgs),
    /// Repro scripts of failed calls: `repro list`, `repro show ID`.
    Repro(repro::ReproArgs),
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
        Command::Repro(args) => repro::run(args),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cause_repeated_by_its_parent_prints_once() {
        let io = std::io::Error::new(std::io::ErrorKind::AddrInUse, "address in use");
        let e = anyhow::Error::new(io)
            .context("binding 127.0.0.1:9464: address in use")
            .context("starting the HTTP endpoint");
        let line = error_line(&e);
        assert_eq!(
            line,
            "starting the HTTP endpoint: binding 127.0.0.1:9464: address in use"
        );
    }

    #[test]
    fn log_format_is_a_global_flag() {
        let cli = Cli::try_parse_from(["snakepit-agent", "check", "--log-format", "json"])
            .expect("parses");
        assert_eq!(cli.log_format, LogFormat::Json);
    }
}
