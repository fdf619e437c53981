//! The topology's public model: processes, workers, connections, the changes
//! `Discovery` emits, the kernel watch plan and the snapshot `list` prints.

use std::net::SocketAddr;

use serde::Serialize;

use super::parse::{ProcessKind, SnakepitEnv};

/// How a process ended. Built from the raw wait status the kernel reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ExitInfo {
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub core_dumped: bool,
}

impl ExitInfo {
    /// `task_struct.exit_code` as a wait status (`code << 8`, or the signal in the
    /// low 7 bits with 0x80 = core dumped); `u32::MAX` means unknown.
    pub fn from_wait_status(raw: u32) -> Self {
        if raw == u32::MAX {
            return Self::default();
        }
        let sig = (raw & 0x7f) as i32;
        if sig == 0 {
            Self {
                code: Some(((raw >> 8) & 0xff) as i32),
                signal: None,
                core_dumped: false,
            }
        } else {
            Self {
                code: None,
                signal: Some(sig),
                core_dumped: raw & 0x80 != 0,
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    Grpc,
    Pipe,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnRole {
    /// The BEAM is the gRPC client of the worker's server port.
    BeamClient,
    /// The worker's callback connection to the BEAM's gRPC server.
    WorkerCallback,
    /// Worker stdin: the BEAM writes.
    PipeStdin,
    /// Worker stdout/stderr: the BEAM reads.
    PipeStdout,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProcessRole {
    Beam,
    Worker,
    /// Between a BEAM and its workers (erl_child_setup).
    Lineage,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ProcessInfo {
    pub pid: u32,
    pub ppid: u32,
    pub comm: String,
    pub start_time: u64,
    pub role: ProcessRole,
    pub kind: ProcessKind,
    pub env: SnakepitEnv,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BeamInfo {
    pub pid: u32,
    pub listen_ports: Vec<u16>,
    pub instance_name: Option<String>,
    /// A worker was found under it (it is a Snakepit deployment).
    pub deployment: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WorkerInfo {
    pub pid: u32,
    pub beam_pid: Option<u32>,
    /// From `SNAKEPIT_READY_FILE` / `SNAKEPIT_WORKER_ID`; `pid_<pid>` when the
    /// environment is unreadable or lacks both.
    pub worker_id: String,
    /// Text before `_worker_`; else `--pool`; else `unknown`.
    pub pool: String,
    /// The worker's LISTEN port (None until bound / seen).
    pub port: Option<u16>,
    pub transport: Transport,
    pub adapter: Option<String>,
    pub run_id: Option<String>,
    pub instance_name: Option<String>,
    pub threaded: bool,
    pub elixir_address: Option<(String, u16)>,
    pub start_time: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ConnInfo {
    /// Unique for the life of this `Discovery`, never reused.
    pub id: u64,
    pub beam_pid: u32,
    pub beam_fd: u32,
    pub worker_pid: u32,
    pub worker_fd: u32,
    pub worker_id: String,
    pub pool: String,
    /// The BEAM end's local address (None for pipes).
    pub beam_addr: Option<SocketAddr>,
    /// The worker end's local address (None for pipes).
    pub worker_addr: Option<SocketAddr>,
    pub role: ConnRole,
    /// The worker's transport (a gRPC worker's stdout pipe carries logs, a pipe
    /// worker's carries {packet,4} frames).
    pub transport: Transport,
    /// Socket inode of the BEAM end, or the pipe inode.
    pub inode: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CloseReason {
    FdClosed,
    ProcessExited,
    /// The process exec'd into something else.
    Exec,
    /// A rescan found the fd or process gone (its close/exit event was missed).
    Rescan,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum TopologyChange {
    BeamDiscovered {
        beam_pid: u32,
        listen_ports: Vec<u16>,
        instance_name: Option<String>,
    },
    BeamExited {
        beam_pid: u32,
        exit: ExitInfo,
    },
    WorkerDiscovered(WorkerInfo),
    WorkerListening {
        beam_pid: Option<u32>,
        pid: u32,
        worker_id: String,
        pool: String,
        port: u16,
    },
    WorkerExited {
        beam_pid: Option<u32>,
        pool: String,
        worker_id: String,
        pid: u32,
        exit_code: Option<i32>,
        signal: Option<i32>,
        core_dumped: bool,
    },
    ConnectionOpened {
        conn: ConnInfo,
    },
    ConnectionClosed {
        conn: ConnInfo,
        closed_by_pid: Option<u32>,
        reason: CloseReason,
    },
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct WatchPlan {
    /// `(tgid, PID_* flags)`.
    pub pids: Vec<(u32, u32)>,
    /// `(tgid, fd, FD_SOCKET | FD_PIPE)`: both ends of every known connection, every
    /// alias fd of a pipe, and sockets still being paired.
    pub fds: Vec<(u32, u32, u32)>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PoolSnapshot {
    pub pool: String,
    pub workers: Vec<WorkerInfo>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DeploymentSnapshot {
    pub beam_pid: u32,
    pub listen_ports: Vec<u16>,
    pub instance_name: Option<String>,
    pub pools: Vec<PoolSnapshot>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TopologySnapshot {
    pub deployments: Vec<DeploymentSnapshot>,
    /// beam.smp processes with no worker (yet).
    pub candidate_beams: Vec<u32>,
    /// Workers whose BEAM was not found.
    pub unattached_workers: Vec<WorkerInfo>,
    pub connections: Vec<ConnInfo>,
    pub pending_sockets: usize,
    /// Namespaces and container identity of each BEAM and worker, by host pid.
    pub identities: std::collections::BTreeMap<u32, super::container::NsIdentity>,
}

/// What the last `full_scan` read: the cost of the periodic rescan, which should
/// stay near one `stat` per process and no tcp table once everything is paired.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ScanStats {
    /// Processes listed.
    pub pids: u32,
    /// Processes whose cmdline was read and classified (new, or exec'd).
    pub classified: u32,
    /// Fd directories listed.
    pub fd_lists: u32,
    /// `net/tcp` + `net/tcp6` pairs read.
    pub tcp_tables: u32,
    /// Fd directories that could not be listed: permission denied.
    pub fd_permission_denied: u32,
}
