//! Which process is a BEAM or a Snakepit worker, which pool a worker is in, and
//! which fd is which connection or pipe (rules: shared/snakepit-facts.md and
//! demo/README.md).
//!
//! - `parse`: pure parsers of /proc texts (cmdline, environ, stat, net/tcp, fd links).
//! - `source`: `ProcSource`, reads a proc tree rooted anywhere (tests use a tempdir).
//! - `model`: the public types (processes, workers, connections, changes, snapshot).
//! - `topology`: `Discovery`, its state and the kernel event inputs; its methods
//!   continue in `scan` (full rescan), `processes` (BEAMs, workers, lineage),
//!   `pairing` (which socket is which connection, LISTEN ports), `pipes` (pipe
//!   connections), `settled` (sockets a rescan need not look up again),
//!   `snapshot` (the snapshot and the kernel watch plan), with `reads` caching
//!   /proc reads within one call.

pub mod container;
mod model;
mod pairing;
pub mod parse;
mod pipes;
mod processes;
mod reads;
mod scan;
mod settled;
mod snapshot;
pub mod source;
pub mod topology;

#[cfg(test)]
mod scan_cost;
#[cfg(test)]
mod tests;

use std::path::PathBuf;

pub use container::NsIdentity;
pub use model::{
    BeamInfo, CloseReason, ConnInfo, ConnRole, DeploymentSnapshot, ExitInfo, PoolSnapshot,
    ProcessInfo, ProcessRole, ScanStats, TopologyChange, TopologySnapshot, Transport, WatchPlan,
    WorkerInfo,
};
pub use parse::{
    FdTarget, ProcStat, ProcessKind, Selectors, SnakepitEnv, TcpEntry, TcpState, WorkerArgs,
};
pub use source::ProcSource;
pub use topology::Discovery;

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

impl DiscoveryError {
    /// Reading another user's process without CAP_SYS_PTRACE.
    pub fn is_permission_denied(&self) -> bool {
        matches!(self, DiscoveryError::Io { source, .. }
            if source.kind() == std::io::ErrorKind::PermissionDenied)
    }
}
