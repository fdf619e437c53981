//! Which process is a BEAM or a Snakepit worker, which pool a worker is in, and
//! which fd is which connection or pipe (rules: shared/snakepit-facts.md and
//! demo/README.md).
//!
//! - `parse`: pure parsers of /proc texts (cmdline, environ, stat, net/tcp, fd links).
//! - `source`: `ProcSource`, reads a proc tree rooted anywhere (tests use a tempdir).
//! - `topology`: `Discovery`, the deployment > pool > worker picture, connection
//!   pairing, the kernel watch plan.

pub mod parse;
pub mod source;
pub mod topology;

#[cfg(test)]
mod scan_cost;
#[cfg(test)]
mod tests;

use std::path::PathBuf;

pub use parse::{
    FdTarget, ProcStat, ProcessKind, Selectors, SnakepitEnv, TcpEntry, TcpState, WorkerArgs,
};
pub use source::ProcSource;
pub use topology::{
    BeamInfo, CloseReason, ConnInfo, ConnRole, DeploymentSnapshot, Discovery, ExitInfo,
    PoolSnapshot, ProcessInfo, ProcessRole, TopologyChange, TopologySnapshot, Transport, WatchPlan,
    WorkerInfo,
};

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing {what}: {detail}")]
    Parse { what: &'static str, detail: String },
}
