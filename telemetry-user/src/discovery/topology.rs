//! Deployment (BEAM) > pool > worker, and which fd is which connection.
//!
//! `Discovery` keeps the current picture and turns kernel lifecycle hints (exec, exit,
//! fd open/close) plus reads of the proc tree into `TopologyChange`s. Nothing here
//! needs a kernel: tests drive it over a fake proc tree.
//!
//! Emission order and timing (what callers can rely on):
//! - A `beam.smp` is a *candidate* BEAM (watched with `PID_LINEAGE` only) until a
//!   worker is found under it; then `BeamDiscovered` is emitted, once, just before
//!   that worker's `WorkerDiscovered`.
//! - `WorkerDiscovered` is emitted once per worker as soon as it is identified. At
//!   exec time its listening port is not bound yet, so `port` is `None` there and a
//!   `WorkerListening` follows once the LISTEN socket is seen (on a later fd event,
//!   `tick` or rescan). A full scan of a running deployment emits it with the port.
//! - `ConnectionOpened` is emitted when both ends of a connection (or pipe) are
//!   known; I/O on the fd may be seen earlier (the kernel watches new sockets of
//!   watched processes from their first byte), `conn_for_fd` returns `None` until then.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::rc::Rc;

use serde::Serialize;
use telemetry_common::{
    FD_PIPE, FD_SOCKET, PID_BEAM, PID_LINEAGE, PID_WATCH_NEW_SOCKETS, PID_WORKER,
};

use super::parse::{
    self, canonical, classify, is_loopback, is_snakepit_grpc_worker, parse_worker_args, FdTarget,
    ProcStat, ProcessKind, Selectors, SnakepitEnv, TcpEntry, TcpState, WorkerArgs,
};
use super::source::ProcSource;

/// How many times an unresolved socket is retried (`on_fd_open` + `tick`) before it
/// is given up as not a Snakepit connection.
pub const MAX_RESOLVE_ATTEMPTS: u32 = 8;
/// Ancestors walked from a process looking for its BEAM (worker -> erl_child_setup
/// -> beam.smp is 2; shells or wrappers in between add a few).
const MAX_ANCESTRY_DEPTH: usize = 8;

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
}

/// A tcp table indexed both ways.
#[derive(Default)]
struct Table {
    by_inode: HashMap<u64, TcpEntry>,
    /// canonical (local, remote) -> inode, for connected sockets.
    by_tuple: HashMap<(SocketAddr, SocketAddr), u64>,
}

/// Reads shared within one public call, so a BEAM's fd list or a namespace's tcp
/// table is read once however many sockets need it.
#[derive(Default)]
struct Ctx {
    tables: HashMap<String, Rc<Table>>,
    fds: HashMap<u32, Rc<Vec<(u32, FdTarget)>>>,
}

impl Ctx {
    fn table(&mut self, src: &ProcSource, pid: u32) -> Rc<Table> {
        let key = src.netns(pid).unwrap_or_else(|| format!("pid:{pid}"));
        self.tables
            .entry(key)
            .or_insert_with(|| {
                let mut t = Table::default();
                for e in src.tcp_table(pid).unwrap_or_default() {
                    if e.inode == 0 {
                        continue;
                    }
                    if e.state != TcpState::Listen {
                        t.by_tuple
                            .insert((canonical(e.local), canonical(e.remote)), e.inode);
                    }
                    t.by_inode.insert(e.inode, e);
                }
                Rc::new(t)
            })
            .clone()
    }

    fn fds(&mut self, src: &ProcSource, pid: u32) -> Rc<Vec<(u32, FdTarget)>> {
        self.fds
            .entry(pid)
            .or_insert_with(|| Rc::new(src.fds(pid).unwrap_or_default()))
            .clone()
    }
}

enum Resolve {
    /// Paired, a LISTEN socket noted, or already known.
    Done,
    /// Not a Snakepit connection (or not a socket): forget it.
    Ignore,
    /// The peer or the kernel's table entry is not there yet: retry later.
    NotYet,
}

#[derive(Clone, Copy)]
struct End {
    pid: u32,
    fd: u32,
    inode: u64,
    local: SocketAddr,
}

struct WorkerState {
    info: WorkerInfo,
    listen: BTreeSet<u16>,
}

pub struct Discovery {
    src: ProcSource,
    sel: Selectors,
    procs: BTreeMap<u32, ProcessInfo>,
    beams: BTreeMap<u32, BeamInfo>,
    workers: BTreeMap<u32, WorkerState>,
    conns: BTreeMap<u64, ConnInfo>,
    /// Every (tgid, fd) of a known connection, aliases included.
    fd_index: HashMap<(u32, u32), u64>,
    /// Sockets of BEAMs/workers not yet paired: (tgid, fd) -> attempts so far.
    pending: BTreeMap<(u32, u32), u32>,
    next_id: u64,
}

impl Discovery {
    pub fn new(src: ProcSource, sel: Selectors) -> Self {
        Self {
            src,
            sel,
            procs: BTreeMap::new(),
            beams: BTreeMap::new(),
            workers: BTreeMap::new(),
            conns: BTreeMap::new(),
            fd_index: HashMap::new(),
            pending: BTreeMap::new(),
            next_id: 1,
        }
    }

    pub fn source(&self) -> &ProcSource {
        &self.src
    }

    // -----------------------------------------------------------------------
    // Queries
    // -----------------------------------------------------------------------

    pub fn process(&self, pid: u32) -> Option<&ProcessInfo> {
        self.procs.get(&pid)
    }

    pub fn worker(&self, pid: u32) -> Option<&WorkerInfo> {
        self.workers.get(&pid).map(|w| &w.info)
    }

    pub fn beam(&self, pid: u32) -> Option<&BeamInfo> {
        self.beams.get(&pid)
    }

    pub fn conn_for_fd(&self, tgid: u32, fd: u32) -> Option<&ConnInfo> {
        self.fd_index
            .get(&(tgid, fd))
            .and_then(|id| self.conns.get(id))
    }

    pub fn connections(&self) -> impl Iterator<Item = &ConnInfo> {
        self.conns.values()
    }

    pub fn snapshot(&self) -> TopologySnapshot {
        let mut snap = TopologySnapshot {
            connections: self.conns.values().cloned().collect(),
            pending_sockets: self.pending.len(),
            ..Default::default()
        };
        for b in self.beams.values() {
            if !b.deployment {
                snap.candidate_beams.push(b.pid);
                continue;
            }
            let mut pools: BTreeMap<&str, Vec<WorkerInfo>> = BTreeMap::new();
            for w in self.workers.values() {
                if w.info.beam_pid == Some(b.pid) {
                    pools.entry(&w.info.pool).or_default().push(w.info.clone());
                }
            }
            snap.deployments.push(DeploymentSnapshot {
                beam_pid: b.pid,
                listen_ports: b.listen_ports.clone(),
                instance_name: b.instance_name.clone(),
                pools: pools
                    .into_iter()
                    .map(|(pool, workers)| PoolSnapshot {
                        pool: pool.to_string(),
                        workers,
                    })
                    .collect(),
            });
        }
        snap.unattached_workers = self
            .workers
            .values()
            .filter(|w| w.info.beam_pid.is_none_or(|b| !self.beams.contains_key(&b)))
            .map(|w| w.info.clone())
            .collect();
        snap
    }

    /// What the kernel should watch: every BEAM and its lineage, every worker, and
    /// the fds of known (or being paired) connections.
    pub fn watch_plan(&self) -> WatchPlan {
        let mut plan = WatchPlan::default();
        for p in self.procs.values() {
            let flags = match p.role {
                ProcessRole::Beam => {
                    if self.beams.get(&p.pid).is_some_and(|b| b.deployment) {
                        PID_BEAM | PID_LINEAGE | PID_WATCH_NEW_SOCKETS
                    } else {
                        PID_LINEAGE
                    }
                }
                ProcessRole::Worker => PID_WORKER | PID_WATCH_NEW_SOCKETS,
                ProcessRole::Lineage => PID_LINEAGE,
            };
            plan.pids.push((p.pid, flags));
        }
        for (&(tgid, fd), id) in &self.fd_index {
            let kind = match self.conns.get(id).map(|c| c.role) {
                Some(ConnRole::PipeStdin | ConnRole::PipeStdout) => FD_PIPE,
                _ => FD_SOCKET,
            };
            plan.fds.push((tgid, fd, kind));
        }
        for &(tgid, fd) in self.pending.keys() {
            plan.fds.push((tgid, fd, FD_SOCKET));
        }
        plan.fds.sort_unstable();
        plan
    }

    // -----------------------------------------------------------------------
    // Inputs
    // -----------------------------------------------------------------------

    /// Reads the whole proc tree and brings the picture up to date: used at start
    /// and as the fallback when events were lost. Processes and connections that
    /// vanished are reported closed/exited with `CloseReason::Rescan` and an
    /// unknown exit status.
    pub fn full_scan(&mut self) -> Vec<TopologyChange> {
        let mut changes = Vec::new();
        let pids = match self.src.pids() {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!("discovery scan failed: {e}");
                return changes;
            }
        };
        let mut ctx = Ctx::default();
        let mut table: BTreeMap<u32, (ProcStat, Vec<String>, ProcessKind)> = BTreeMap::new();
        for pid in pids {
            let Ok(stat) = self.src.stat(pid) else {
                continue;
            };
            let args = self.src.cmdline(pid).unwrap_or_default();
            let exe = self.src.exe(pid);
            let kind = classify(pid, &args, &stat.comm, exe.as_deref(), &self.sel);
            table.insert(pid, (stat, args, kind));
        }

        // Gone (or pid reused) since we last looked.
        let gone: Vec<u32> = self
            .procs
            .values()
            .filter(|p| {
                table
                    .get(&p.pid)
                    .is_none_or(|(s, _, _)| s.start_time != p.start_time)
            })
            .map(|p| p.pid)
            .collect();
        for pid in gone {
            self.remove_process(pid, ExitInfo::default(), CloseReason::Rescan, &mut changes);
        }

        // BEAMs first, so ancestry finds them.
        for (pid, (stat, _, kind)) in &table {
            if *kind == ProcessKind::Beam && !self.beams.contains_key(pid) {
                self.add_beam(*pid, stat, kind.clone());
            }
        }
        let lookup = |p: u32| {
            table
                .get(&p)
                .map(|(s, _, k)| (s.ppid, *k == ProcessKind::Beam))
        };
        let mut admit = Vec::new();
        for (pid, (stat, _, kind)) in &table {
            if *kind == ProcessKind::Beam || self.procs.contains_key(pid) {
                continue;
            }
            let anc = self.beam_ancestor(stat.ppid, &lookup);
            if kind.is_worker() || anc.is_some() {
                admit.push((*pid, anc));
            }
        }
        // gRPC workers first: they carry the instance name BeamDiscovered reports.
        admit.sort_by_key(|(pid, _)| {
            !matches!(table.get(pid), Some((_, _, ProcessKind::GrpcWorker(_))))
        });
        for (pid, anc) in admit {
            if let Some((stat, args, kind)) = table.get(&pid) {
                self.admit(&mut ctx, pid, stat, args, kind.clone(), anc, &mut changes);
            }
        }

        // Connections we hold whose fds no longer point at the same inode.
        let stale: Vec<u64> = self
            .conns
            .values()
            .filter(|c| {
                let beam_fds = ctx.fds(&self.src, c.beam_pid);
                !beam_fds.iter().any(|(fd, t)| {
                    *fd == c.beam_fd
                        && matches!(t, FdTarget::Socket(i) | FdTarget::Pipe(i) if *i == c.inode)
                })
            })
            .map(|c| c.id)
            .collect();
        for id in stale {
            self.close_conn(id, None, CloseReason::Rescan, &mut changes);
        }

        // Every Snakepit connection has a worker end: resolving workers' sockets
        // (few) finds them all without walking the BEAM's (possibly many) sockets.
        let worker_pids: Vec<u32> = self.workers.keys().copied().collect();
        for wpid in worker_pids {
            self.refresh_listen(&mut ctx, wpid, &mut changes);
            self.pair_pipes(&mut ctx, wpid, &mut changes);
            let fds = ctx.fds(&self.src, wpid);
            for (fd, t) in fds.iter() {
                if matches!(t, FdTarget::Socket(_)) && !self.fd_index.contains_key(&(wpid, *fd)) {
                    self.resolve_and_track(&mut ctx, wpid, *fd, &mut changes);
                }
            }
        }
        let beam_pids: Vec<u32> = self
            .beams
            .values()
            .filter(|b| b.deployment)
            .map(|b| b.pid)
            .collect();
        for b in beam_pids {
            self.refresh_listen(&mut ctx, b, &mut changes);
        }
        changes
    }

    /// A process exec'd (any process on the host: cheap rejection for the rest).
    pub fn on_exec(&mut self, pid: u32) -> Vec<TopologyChange> {
        let mut changes = Vec::new();
        let Ok(stat) = self.src.stat(pid) else {
            return changes;
        };
        let args = self.src.cmdline(pid).unwrap_or_default();
        let exe = self.src.exe(pid);
        let kind = classify(pid, &args, &stat.comm, exe.as_deref(), &self.sel);
        let mut ctx = Ctx::default();

        if self.procs.contains_key(&pid) {
            // A wrapper exec'ing the real interpreter keeps its identity.
            if kind.is_worker() {
                let env = self.src.environ(pid).unwrap_or_default();
                let same = self
                    .workers
                    .get(&pid)
                    .is_some_and(|w| env.worker_id.as_deref() == Some(w.info.worker_id.as_str()));
                if same {
                    if let Some(p) = self.procs.get_mut(&pid) {
                        p.kind = kind;
                        p.comm = stat.comm;
                        p.env = env;
                    }
                    return changes;
                }
            } else if kind == ProcessKind::Beam && self.beams.contains_key(&pid) {
                return changes;
            }
            self.remove_process(pid, ExitInfo::default(), CloseReason::Exec, &mut changes);
        }

        if kind == ProcessKind::Beam {
            self.add_beam(pid, &stat, kind);
            return changes;
        }
        let src = self.src.clone();
        let sel = self.sel.clone();
        let lookup = move |p: u32| {
            let s = src.stat(p).ok()?;
            let is_beam = s.comm == "beam.smp" || sel.beam_pids.contains(&p) || {
                let a = src.cmdline(p).unwrap_or_default();
                classify(p, &a, &s.comm, None, &sel) == ProcessKind::Beam
            };
            Some((s.ppid, is_beam))
        };
        let anc = self.beam_ancestor(stat.ppid, &lookup);
        if kind.is_worker() || anc.is_some() {
            self.admit(&mut ctx, pid, &stat, &args, kind, anc, &mut changes);
        }
        changes
    }

    /// A process (thread group) ended.
    pub fn on_exit(&mut self, pid: u32, exit: ExitInfo) -> Vec<TopologyChange> {
        let mut changes = Vec::new();
        self.remove_process(pid, exit, CloseReason::ProcessExited, &mut changes);
        changes
    }

    /// A watched process got a new fd from accept/connect: find which connection it
    /// is. Unresolved sockets are kept pending and retried here and in `tick`.
    pub fn on_fd_open(&mut self, tgid: u32, fd: u32) -> Vec<TopologyChange> {
        let mut changes = Vec::new();
        if !self.workers.contains_key(&tgid) && !self.beams.contains_key(&tgid) {
            return changes;
        }
        let mut ctx = Ctx::default();
        if let Some(&id) = self.fd_index.get(&(tgid, fd)) {
            // Already paired from the other end's event (accept and connect of one
            // connection arrive in either order): nothing new.
            if self.fd_still_matches(&mut ctx, id, tgid, fd) {
                return changes;
            }
            // A stale mapping means a close was missed and the number reused.
            self.close_conn(id, Some(tgid), CloseReason::Rescan, &mut changes);
        }
        self.pending.remove(&(tgid, fd));
        self.resolve_and_track(&mut ctx, tgid, fd, &mut changes);
        self.retry_pending(&mut ctx, &mut changes, false);
        changes
    }

    /// Whether `(tgid, fd)` still is the socket end that connection `id` recorded
    /// (same local address for this process's end).
    fn fd_still_matches(&self, ctx: &mut Ctx, id: u64, tgid: u32, fd: u32) -> bool {
        let Some(c) = self.conns.get(&id) else {
            return false;
        };
        let want = if c.beam_pid == tgid && c.beam_fd == fd {
            c.beam_addr
        } else if c.worker_pid == tgid && c.worker_fd == fd {
            c.worker_addr
        } else {
            return false;
        };
        let Ok(FdTarget::Socket(inode)) = self.src.fd_target(tgid, fd) else {
            return false;
        };
        let table = ctx.table(&self.src, tgid);
        table
            .by_inode
            .get(&inode)
            .is_some_and(|e| Some(canonical(e.local)) == want.map(canonical))
    }

    pub fn on_fd_close(&mut self, tgid: u32, fd: u32) -> Vec<TopologyChange> {
        let mut changes = Vec::new();
        self.pending.remove(&(tgid, fd));
        let Some(&id) = self.fd_index.get(&(tgid, fd)) else {
            return changes;
        };
        let primary = self.conns.get(&id).is_some_and(|c| {
            (c.beam_pid == tgid && c.beam_fd == fd) || (c.worker_pid == tgid && c.worker_fd == fd)
        });
        if primary {
            self.close_conn(id, Some(tgid), CloseReason::FdClosed, &mut changes);
        } else {
            // An alias (worker fd 2 sharing the stdout pipe): the connection stays.
            self.fd_index.remove(&(tgid, fd));
        }
        changes
    }

    /// Periodic work (call every 100 ms - 1 s): retries pending sockets (counting
    /// attempts, dropping them after `MAX_RESOLVE_ATTEMPTS`) and looks for the LISTEN
    /// port of workers that have none yet.
    pub fn tick(&mut self) -> Vec<TopologyChange> {
        let mut changes = Vec::new();
        let mut ctx = Ctx::default();
        let no_port: Vec<u32> = self
            .workers
            .values()
            .filter(|w| w.info.port.is_none() && w.info.transport == Transport::Grpc)
            .map(|w| w.info.pid)
            .collect();
        for pid in no_port {
            self.refresh_listen(&mut ctx, pid, &mut changes);
        }
        self.retry_pending(&mut ctx, &mut changes, true);
        changes
    }

    // -----------------------------------------------------------------------
    // Processes
    // -----------------------------------------------------------------------

    fn add_beam(&mut self, pid: u32, stat: &ProcStat, kind: ProcessKind) {
        self.procs.insert(
            pid,
            ProcessInfo {
                pid,
                ppid: stat.ppid,
                comm: stat.comm.clone(),
                start_time: stat.start_time,
                role: ProcessRole::Beam,
                kind,
                env: SnakepitEnv::default(),
            },
        );
        self.beams.entry(pid).or_insert(BeamInfo {
            pid,
            listen_ports: Vec::new(),
            instance_name: None,
            deployment: false,
        });
    }

    /// Walks parents from `ppid` to a BEAM. `lookup(pid) -> (ppid, is_beam)`.
    fn beam_ancestor(
        &self,
        mut ppid: u32,
        lookup: &dyn Fn(u32) -> Option<(u32, bool)>,
    ) -> Option<u32> {
        for _ in 0..MAX_ANCESTRY_DEPTH {
            if ppid <= 1 {
                return None;
            }
            if self.beams.contains_key(&ppid) {
                return Some(ppid);
            }
            let (next, is_beam) = lookup(ppid)?;
            if is_beam {
                return Some(ppid);
            }
            ppid = next;
        }
        None
    }

    /// Records a non-BEAM process that is a worker or lives under a BEAM.
    #[allow(clippy::too_many_arguments)]
    fn admit(
        &mut self,
        ctx: &mut Ctx,
        pid: u32,
        stat: &ProcStat,
        args: &[String],
        kind: ProcessKind,
        beam: Option<u32>,
        changes: &mut Vec<TopologyChange>,
    ) {
        if let Some(b) = beam {
            if !self.beams.contains_key(&b) {
                // Found by ancestry before its own exec/scan was seen.
                if let Ok(bs) = self.src.stat(b) {
                    self.add_beam(b, &bs, ProcessKind::Beam);
                }
            }
        }
        let env = self.src.environ(pid).unwrap_or_default();
        let kind = match kind {
            ProcessKind::Other if env.worker_id_var.is_some() && env.ready_file.is_none() => {
                // Legacy rule: a BEAM's child carrying SNAKEPIT_WORKER_ID.
                ProcessKind::PortWorker(parse_worker_args(args))
            }
            k => k,
        };
        if kind.is_worker() {
            self.add_worker(ctx, pid, stat, args, kind, env, beam, changes);
        } else if stat.comm == "erl_child_setup" {
            self.procs.insert(
                pid,
                ProcessInfo {
                    pid,
                    ppid: stat.ppid,
                    comm: stat.comm.clone(),
                    start_time: stat.start_time,
                    role: ProcessRole::Lineage,
                    kind,
                    env,
                },
            );
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn add_worker(
        &mut self,
        ctx: &mut Ctx,
        pid: u32,
        stat: &ProcStat,
        args: &[String],
        kind: ProcessKind,
        env: SnakepitEnv,
        beam: Option<u32>,
        changes: &mut Vec<TopologyChange>,
    ) {
        let wa: WorkerArgs = kind.worker_args().cloned().unwrap_or_default();
        let transport = match &kind {
            ProcessKind::PortWorker(_) => Transport::Pipe,
            // A user-selected worker that looks like a pipe worker.
            _ if !is_snakepit_grpc_worker(args)
                && env.ready_file.is_none()
                && env.worker_id_var.is_some()
                && wa.elixir_address.is_none() =>
            {
                Transport::Pipe
            }
            _ => Transport::Grpc,
        };
        let beam = beam.or_else(|| {
            let port = wa.elixir_address.as_ref()?.1;
            self.beam_by_listen_port(ctx, port)
        });
        if let Some(b) = beam {
            self.promote_beam(ctx, b, wa.instance_name.clone(), changes);
        }
        let listen = if transport == Transport::Grpc {
            listen_ports_of(&self.src, ctx, pid)
        } else {
            BTreeSet::new()
        };
        let port = pick_port(&listen, wa.port_arg);
        let info = WorkerInfo {
            pid,
            beam_pid: beam,
            worker_id: env
                .worker_id
                .clone()
                .unwrap_or_else(|| format!("pid_{pid}")),
            pool: env
                .pool
                .clone()
                .or_else(|| wa.pool_arg.clone())
                .unwrap_or_else(|| "unknown".to_string()),
            port,
            transport,
            adapter: wa.adapter.clone(),
            run_id: wa.run_id.clone(),
            instance_name: wa.instance_name.clone(),
            threaded: wa.threaded,
            elixir_address: wa.elixir_address.clone(),
            start_time: stat.start_time,
        };
        self.procs.insert(
            pid,
            ProcessInfo {
                pid,
                ppid: stat.ppid,
                comm: stat.comm.clone(),
                start_time: stat.start_time,
                role: ProcessRole::Worker,
                kind,
                env,
            },
        );
        changes.push(TopologyChange::WorkerDiscovered(info.clone()));
        self.workers.insert(pid, WorkerState { info, listen });
        self.pair_pipes(ctx, pid, changes);
    }

    fn promote_beam(
        &mut self,
        ctx: &mut Ctx,
        pid: u32,
        instance: Option<String>,
        changes: &mut Vec<TopologyChange>,
    ) {
        let listen = listen_ports_of(&self.src, ctx, pid);
        let Some(b) = self.beams.get_mut(&pid) else {
            return;
        };
        for p in listen {
            if !b.listen_ports.contains(&p) {
                b.listen_ports.push(p);
            }
        }
        b.listen_ports.sort_unstable();
        if b.instance_name.is_none() {
            b.instance_name = instance;
        }
        if !b.deployment {
            b.deployment = true;
            changes.push(TopologyChange::BeamDiscovered {
                beam_pid: pid,
                listen_ports: b.listen_ports.clone(),
                instance_name: b.instance_name.clone(),
            });
        }
    }

    fn beam_by_listen_port(&self, ctx: &mut Ctx, port: u16) -> Option<u32> {
        if let Some(b) = self.beams.values().find(|b| b.listen_ports.contains(&port)) {
            return Some(b.pid);
        }
        self.beams
            .keys()
            .copied()
            .find(|&b| listen_ports_of(&self.src, ctx, b).contains(&port))
    }

    fn remove_process(
        &mut self,
        pid: u32,
        exit: ExitInfo,
        reason: CloseReason,
        changes: &mut Vec<TopologyChange>,
    ) {
        let ids: Vec<u64> = self
            .conns
            .values()
            .filter(|c| c.beam_pid == pid || c.worker_pid == pid)
            .map(|c| c.id)
            .collect();
        for id in ids {
            self.close_conn(id, Some(pid), reason, changes);
        }
        self.pending.retain(|(t, _), _| *t != pid);
        self.procs.remove(&pid);
        if let Some(w) = self.workers.remove(&pid) {
            changes.push(TopologyChange::WorkerExited {
                beam_pid: w.info.beam_pid,
                pool: w.info.pool,
                worker_id: w.info.worker_id,
                pid,
                exit_code: exit.code,
                signal: exit.signal,
                core_dumped: exit.core_dumped,
            });
        }
        if let Some(b) = self.beams.remove(&pid) {
            if b.deployment {
                changes.push(TopologyChange::BeamExited {
                    beam_pid: pid,
                    exit,
                });
            }
        }
    }

    // -----------------------------------------------------------------------
    // Sockets and pipes
    // -----------------------------------------------------------------------

    fn note_listen(&mut self, pid: u32, port: u16, changes: &mut Vec<TopologyChange>) {
        if let Some(w) = self.workers.get_mut(&pid) {
            w.listen.insert(port);
            if w.info.port.is_none() {
                w.info.port = pick_port(&w.listen, None);
                changes.push(TopologyChange::WorkerListening {
                    beam_pid: w.info.beam_pid,
                    pid,
                    worker_id: w.info.worker_id.clone(),
                    pool: w.info.pool.clone(),
                    port,
                });
            }
        } else if let Some(b) = self.beams.get_mut(&pid) {
            if !b.listen_ports.contains(&port) {
                b.listen_ports.push(port);
                b.listen_ports.sort_unstable();
            }
        }
    }

    fn refresh_listen(&mut self, ctx: &mut Ctx, pid: u32, changes: &mut Vec<TopologyChange>) {
        for port in listen_ports_of(&self.src, ctx, pid) {
            self.note_listen(pid, port, changes);
        }
    }

    fn resolve_and_track(
        &mut self,
        ctx: &mut Ctx,
        tgid: u32,
        fd: u32,
        changes: &mut Vec<TopologyChange>,
    ) {
        match self.resolve_socket(ctx, tgid, fd, changes) {
            Resolve::NotYet => {
                *self.pending.entry((tgid, fd)).or_insert(0) += 1;
            }
            Resolve::Done | Resolve::Ignore => {
                self.pending.remove(&(tgid, fd));
            }
        }
    }

    fn retry_pending(&mut self, ctx: &mut Ctx, changes: &mut Vec<TopologyChange>, count: bool) {
        let keys: Vec<((u32, u32), u32)> = self.pending.iter().map(|(k, v)| (*k, *v)).collect();
        for ((tgid, fd), attempts) in keys {
            if self.fd_index.contains_key(&(tgid, fd)) {
                self.pending.remove(&(tgid, fd));
                continue;
            }
            match self.resolve_socket(ctx, tgid, fd, changes) {
                Resolve::NotYet => {
                    let n = if count { attempts + 1 } else { attempts };
                    if n >= MAX_RESOLVE_ATTEMPTS {
                        self.pending.remove(&(tgid, fd));
                    } else {
                        self.pending.insert((tgid, fd), n);
                    }
                }
                Resolve::Done | Resolve::Ignore => {
                    self.pending.remove(&(tgid, fd));
                }
            }
        }
    }

    fn resolve_socket(
        &mut self,
        ctx: &mut Ctx,
        tgid: u32,
        fd: u32,
        changes: &mut Vec<TopologyChange>,
    ) -> Resolve {
        let is_worker = self.workers.contains_key(&tgid);
        if !is_worker && !self.beams.contains_key(&tgid) {
            return Resolve::Ignore;
        }
        if self.fd_index.contains_key(&(tgid, fd)) {
            return Resolve::Done;
        }
        let inode = match self.src.fd_target(tgid, fd) {
            Ok(FdTarget::Socket(i)) => i,
            Ok(_) => return Resolve::Ignore,
            Err(_) => return Resolve::NotYet,
        };
        let mut table = ctx.table(&self.src, tgid);
        if !table.by_inode.contains_key(&inode) {
            // The table was read (and cached) before this socket got its entry.
            ctx.tables.clear();
            table = ctx.table(&self.src, tgid);
        }
        let Some(me) = table.by_inode.get(&inode) else {
            return Resolve::NotYet;
        };
        if me.state == TcpState::Listen {
            self.note_listen(tgid, me.local.port(), changes);
            return Resolve::Done;
        }
        if !me.state.is_connected() || !is_loopback(me.local) || !is_loopback(me.remote) {
            return Resolve::Ignore;
        }
        let (l, r) = (canonical(me.local), canonical(me.remote));
        let mine = End {
            pid: tgid,
            fd,
            inode,
            local: me.local,
        };
        let candidates: Vec<u32> = if is_worker {
            let own = self.workers.get(&tgid).and_then(|w| w.info.beam_pid);
            own.into_iter()
                .chain(self.beams.keys().copied().filter(|b| Some(*b) != own))
                .collect()
        } else {
            if !self.beam_may_own(ctx, tgid, l.port(), r.port(), changes) {
                return Resolve::Ignore;
            }
            let ws = || self.workers.values().map(|w| (w.info.pid, w.info.beam_pid));
            ws().filter(|(_, b)| *b == Some(tgid))
                .chain(ws().filter(|(_, b)| *b != Some(tgid)))
                .map(|(p, _)| p)
                .collect()
        };
        if !table.by_tuple.contains_key(&(r, l)) {
            // The peer's entry may be newer than the cached table.
            ctx.tables.clear();
            table = ctx.table(&self.src, tgid);
        }
        let Some(&peer_inode) = table.by_tuple.get(&(r, l)) else {
            return Resolve::NotYet;
        };
        let Some(peer_local) = table.by_inode.get(&peer_inode).map(|e| e.local) else {
            return Resolve::NotYet;
        };
        for c in candidates {
            let fds = ctx.fds(&self.src, c);
            let found = fds
                .iter()
                .find(|(_, t)| *t == FdTarget::Socket(peer_inode))
                .map(|(f, _)| *f);
            if let Some(pfd) = found {
                let peer = End {
                    pid: c,
                    fd: pfd,
                    inode: peer_inode,
                    local: peer_local,
                };
                let (beam_end, worker_end) = if is_worker {
                    (peer, mine)
                } else {
                    (mine, peer)
                };
                return if self.make_socket_conn(ctx, beam_end, worker_end, changes) {
                    Resolve::Done
                } else {
                    Resolve::Ignore
                };
            }
        }
        // The peer has not accepted yet (or its fd cache is stale): look again later.
        ctx.fds.clear();
        Resolve::NotYet
    }

    /// Whether a BEAM socket (local port `l`, remote port `r`) may lead to a worker:
    /// to a worker's port (or one still unknown), or into the BEAM's own server.
    fn beam_may_own(
        &mut self,
        ctx: &mut Ctx,
        beam: u32,
        l: u16,
        r: u16,
        changes: &mut Vec<TopologyChange>,
    ) -> bool {
        let check = |d: &Self| {
            d.beams
                .get(&beam)
                .is_some_and(|b| b.listen_ports.contains(&l))
                || d.workers.values().any(|w| {
                    w.listen.contains(&r)
                        || w.info.elixir_address.as_ref().is_some_and(|a| a.1 == l)
                })
        };
        if check(self) {
            return true;
        }
        // Ports may not be known yet: look again at the BEAM and at portless workers.
        self.refresh_listen(ctx, beam, changes);
        let portless: Vec<u32> = self
            .workers
            .values()
            .filter(|w| w.info.port.is_none() && w.info.transport == Transport::Grpc)
            .map(|w| w.info.pid)
            .collect();
        for w in portless {
            self.refresh_listen(ctx, w, changes);
        }
        check(self)
    }

    fn make_socket_conn(
        &mut self,
        ctx: &mut Ctx,
        b: End,
        w: End,
        changes: &mut Vec<TopologyChange>,
    ) -> bool {
        let role = |d: &Self| {
            let ws = d.workers.get(&w.pid)?;
            if ws.listen.contains(&w.local.port()) {
                return Some(ConnRole::BeamClient);
            }
            let beam_listens = d
                .beams
                .get(&b.pid)
                .is_some_and(|bi| bi.listen_ports.contains(&b.local.port()));
            let elixir = ws
                .info
                .elixir_address
                .as_ref()
                .is_some_and(|a| a.1 == b.local.port());
            (beam_listens || elixir).then_some(ConnRole::WorkerCallback)
        };
        let role = match role(self) {
            Some(r) => r,
            None => {
                self.refresh_listen(ctx, w.pid, changes);
                self.refresh_listen(ctx, b.pid, changes);
                match role(self) {
                    Some(r) => r,
                    None => return false,
                }
            }
        };
        let Some(ws) = self.workers.get(&w.pid) else {
            return false;
        };
        let conn = ConnInfo {
            id: self.next_id,
            beam_pid: b.pid,
            beam_fd: b.fd,
            worker_pid: w.pid,
            worker_fd: w.fd,
            worker_id: ws.info.worker_id.clone(),
            pool: ws.info.pool.clone(),
            beam_addr: Some(canonical(b.local)),
            worker_addr: Some(canonical(w.local)),
            role,
            transport: ws.info.transport,
            inode: b.inode,
        };
        self.insert_conn(conn, &[(w.pid, w.fd)], changes);
        true
    }

    fn insert_conn(
        &mut self,
        conn: ConnInfo,
        extra_fds: &[(u32, u32)],
        changes: &mut Vec<TopologyChange>,
    ) {
        self.next_id += 1;
        self.fd_index.insert((conn.beam_pid, conn.beam_fd), conn.id);
        self.pending.remove(&(conn.beam_pid, conn.beam_fd));
        for &k in extra_fds {
            self.fd_index.insert(k, conn.id);
            self.pending.remove(&k);
        }
        changes.push(TopologyChange::ConnectionOpened { conn: conn.clone() });
        self.conns.insert(conn.id, conn);
    }

    /// Matches the worker's pipe fds with the BEAM fds holding the other end. Fds
    /// 0-2 are stdin/stdout/stderr; any other pipe fd the BEAM shares (a worker that
    /// moved its output to a private fd) gets its direction from its open flags.
    fn pair_pipes(&mut self, ctx: &mut Ctx, wpid: u32, changes: &mut Vec<TopologyChange>) {
        let Some(ws) = self.workers.get(&wpid) else {
            return;
        };
        let Some(bpid) = ws.info.beam_pid else {
            return;
        };
        let (worker_id, pool, transport) = (
            ws.info.worker_id.clone(),
            ws.info.pool.clone(),
            ws.info.transport,
        );
        let wfds = ctx.fds(&self.src, wpid);
        let bfds = ctx.fds(&self.src, bpid);
        for (wfd, t) in wfds.iter() {
            let (wfd, FdTarget::Pipe(inode)) = (*wfd, t) else {
                continue;
            };
            if self.fd_index.contains_key(&(wpid, wfd)) {
                continue;
            }
            // stdout and stderr may share one pipe: the second fd joins the first's conn.
            if let Some(id) = self.conns.values().find_map(|c| {
                (c.worker_pid == wpid && c.beam_pid == bpid && c.inode == *inode).then_some(c.id)
            }) {
                self.fd_index.insert((wpid, wfd), id);
                continue;
            }
            let Some(bfd) = bfds
                .iter()
                .find(|(_, bt)| *bt == FdTarget::Pipe(*inode))
                .map(|(f, _)| *f)
            else {
                continue;
            };
            let role = match wfd {
                0 => ConnRole::PipeStdin,
                1 | 2 => ConnRole::PipeStdout,
                _ => match self.src.fd_flags(wpid, wfd) {
                    Ok(fl) if parse::flags_writable(fl) => ConnRole::PipeStdout,
                    Ok(_) => ConnRole::PipeStdin,
                    Err(_) => continue,
                },
            };
            let conn = ConnInfo {
                id: self.next_id,
                beam_pid: bpid,
                beam_fd: bfd,
                worker_pid: wpid,
                worker_fd: wfd,
                worker_id: worker_id.clone(),
                pool: pool.clone(),
                beam_addr: None,
                worker_addr: None,
                role,
                transport,
                inode: *inode,
            };
            self.insert_conn(conn, &[(wpid, wfd)], changes);
        }
    }

    fn close_conn(
        &mut self,
        id: u64,
        by: Option<u32>,
        reason: CloseReason,
        changes: &mut Vec<TopologyChange>,
    ) {
        let Some(conn) = self.conns.remove(&id) else {
            return;
        };
        self.fd_index.retain(|_, v| *v != id);
        changes.push(TopologyChange::ConnectionClosed {
            conn,
            closed_by_pid: by,
            reason,
        });
    }
}

/// The LISTEN ports among a process's sockets.
fn listen_ports_of(src: &ProcSource, ctx: &mut Ctx, pid: u32) -> BTreeSet<u16> {
    let fds = ctx.fds(src, pid);
    let table = ctx.table(src, pid);
    fds.iter()
        .filter_map(|(_, t)| match t {
            FdTarget::Socket(i) => table.by_inode.get(i),
            _ => None,
        })
        .filter(|e| e.state == TcpState::Listen)
        .map(|e| e.local.port())
        .collect()
}

/// The worker's port: the one its `--port` asked for when listening there, else
/// the lowest LISTEN port.
fn pick_port(listen: &BTreeSet<u16>, port_arg: Option<u16>) -> Option<u16> {
    match port_arg {
        Some(p) if p != 0 && listen.contains(&p) => Some(p),
        _ => listen.iter().next().copied(),
    }
}
