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

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use super::model::{
    BeamInfo, CloseReason, ConnInfo, ExitInfo, ProcessInfo, ScanStats, TopologyChange, Transport,
    WorkerInfo,
};
use super::parse::{canonical, classify, FdTarget, ProcessKind, Selectors};
use super::reads::Ctx;
use super::source::ProcSource;

/// How many times an unresolved socket is retried (`on_fd_open` + `tick`) before it
/// is given up as not a Snakepit connection.
pub const MAX_RESOLVE_ATTEMPTS: u32 = 8;
/// Ancestors walked from a process looking for its BEAM (worker -> erl_child_setup
/// -> beam.smp is 2; shells or wrappers in between add a few).
pub(super) const MAX_ANCESTRY_DEPTH: usize = 8;

pub(super) struct WorkerState {
    pub(super) info: WorkerInfo,
    /// Every LISTEN port seen on the worker (`info.port` is the one picked).
    pub(super) listen: BTreeSet<u16>,
}

/// A process the rescan has classified: not classified again while its start time
/// and comm stay the same (an exec changes the comm; exec events cover the rest).
pub(super) struct SeenProc {
    pub(super) start_time: u64,
    pub(super) comm: String,
    pub(super) kind: ProcessKind,
    /// Admitted, or found to be neither a worker nor under a BEAM.
    pub(super) decided: bool,
}

/// A socket fd the rescan need not look up in the tcp tables again while it holds
/// the same inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Settled {
    pub(super) inode: u64,
    pub(super) why: SettledWhy,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum SettledWhy {
    /// A LISTEN socket, its port noted.
    Listen,
    /// Connected and not a Snakepit connection (not loopback), or, for a BEAM,
    /// connected (never to become a LISTEN socket).
    Connected,
    /// Its peer belongs to no known BEAM (forgotten when a BEAM is added).
    Foreign,
    /// In no tcp table (a unix or UDP socket). Settled only when two rescans in a
    /// row say so: an unbound TCP socket is not listed either.
    NotTcp { confirmed: bool },
}

pub struct Discovery {
    pub(super) src: ProcSource,
    pub(super) sel: Selectors,
    pub(super) procs: BTreeMap<u32, ProcessInfo>,
    pub(super) beams: BTreeMap<u32, BeamInfo>,
    pub(super) workers: BTreeMap<u32, WorkerState>,
    pub(super) conns: BTreeMap<u64, ConnInfo>,
    /// Every (tgid, fd) of a known connection, aliases included.
    pub(super) fd_index: HashMap<(u32, u32), u64>,
    /// Sockets of BEAMs/workers not yet paired: (tgid, fd) -> attempts so far.
    pub(super) pending: BTreeMap<(u32, u32), u32>,
    pub(super) next_id: u64,
    /// Every process the last rescan listed, by pid.
    pub(super) seen: HashMap<u32, SeenProc>,
    /// LISTEN sockets already noted, and sockets that cannot pair (not loopback, or
    /// a peer outside every BEAM); for a BEAM: connected sockets (never LISTEN).
    pub(super) settled: HashMap<(u32, u32), Settled>,
    pub(super) last_scan: ScanStats,
    pub(super) fd_denied_total: u64,
    /// Pids already warned about an unreadable fd directory.
    pub(super) fd_denied_warned: HashSet<u32>,
    /// Namespaces and container identity of each BEAM and worker.
    pub(super) identities: HashMap<u32, super::container::NsIdentity>,
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
            seen: HashMap::new(),
            settled: HashMap::new(),
            last_scan: ScanStats::default(),
            fd_denied_total: 0,
            fd_denied_warned: HashSet::new(),
            identities: HashMap::new(),
        }
    }

    /// A BEAM's or worker's namespaces and container identity (read once, when it
    /// was found).
    pub fn identity(&self, pid: u32) -> Option<&super::container::NsIdentity> {
        self.identities.get(&pid)
    }

    /// What the last `full_scan` read.
    pub fn last_scan_stats(&self) -> ScanStats {
        self.last_scan
    }

    /// Fd directories that could not be listed for lack of permission (the agent
    /// then sees no connection of that process), since start.
    pub fn fd_permission_errors(&self) -> u64 {
        self.fd_denied_total
    }

    /// Ends one public call: counts and reports what its reads ran into.
    pub(super) fn finish(&mut self, ctx: &Ctx) {
        self.fd_denied_total += ctx.counts.fd_denied.len() as u64;
        for &pid in &ctx.counts.fd_denied {
            if self.fd_denied_warned.insert(pid) {
                tracing::warn!(
                    pid,
                    "cannot read /proc/{pid}/fd: permission denied (needs CAP_SYS_PTRACE, \
                     or run as the process's user): its connections are not seen"
                );
            }
        }
    }

    pub fn source(&self) -> &ProcSource {
        &self.src
    }

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
        self.finish(&ctx);
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
        self.settled.remove(&(tgid, fd));
        self.resolve_and_track(&mut ctx, tgid, fd, &mut changes);
        self.retry_pending(&mut ctx, &mut changes, false);
        self.finish(&ctx);
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
        self.settled.remove(&(tgid, fd));
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
        self.finish(&ctx);
        changes
    }
}
