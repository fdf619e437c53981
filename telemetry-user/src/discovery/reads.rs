//! Reads shared within one public call of `Discovery`, so a BEAM's fd list or a
//! namespace's tcp table is read once however many sockets need it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;

use super::parse::{canonical, FdTarget, TcpEntry, TcpState};
use super::source::ProcSource;
use super::DiscoveryError;

#[derive(Default)]
pub(super) struct Table {
    pub(super) by_inode: HashMap<u64, TcpEntry>,
    /// canonical (local, remote) -> inode, for connected sockets.
    pub(super) by_tuple: HashMap<(SocketAddr, SocketAddr), u64>,
    /// When it was read, in `Ctx` read order.
    pub(super) read_at: u64,
}

/// What one call read, for `ScanStats` and the permission warning.
#[derive(Clone, Debug, Default)]
pub(super) struct ReadCounts {
    pub(super) tcp_tables: u32,
    pub(super) fd_lists: u32,
    /// Pids whose fd directory could not be listed: permission denied.
    pub(super) fd_denied: Vec<u32>,
}

#[derive(Default)]
pub(super) struct Ctx {
    tables: HashMap<String, Rc<Table>>,
    fds: HashMap<u32, Rc<Vec<(u32, FdTarget)>>>,
    fds_read_at: HashMap<u32, u64>,
    /// Counts reads, to tell which of two reads came first.
    seq: u64,
    /// A refresh already happened in this call: a second one finds nothing new
    /// microseconds later, and on a busy host each tcp table read walks every
    /// socket's hash bucket (the most expensive read discovery does).
    tables_refreshed: bool,
    fds_refreshed: bool,
    pub(super) counts: ReadCounts,
    /// The call is a full rescan (not a kernel event's).
    pub(super) rescan: bool,
}

impl Ctx {
    pub(super) fn for_rescan() -> Self {
        Self {
            rescan: true,
            ..Self::default()
        }
    }

    pub(super) fn table(&mut self, src: &ProcSource, pid: u32) -> Rc<Table> {
        let key = src.netns(pid).unwrap_or_else(|| format!("pid:{pid}"));
        if let Some(t) = self.tables.get(&key) {
            return t.clone();
        }
        self.counts.tcp_tables += 1;
        self.seq += 1;
        let mut t = Table {
            read_at: self.seq,
            ..Table::default()
        };
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
        let t = Rc::new(t);
        self.tables.insert(key, t.clone());
        t
    }

    /// The table read again, unless it already was in this call.
    pub(super) fn refreshed_table(&mut self, src: &ProcSource, pid: u32) -> Rc<Table> {
        if !self.tables_refreshed {
            self.tables_refreshed = true;
            self.tables.clear();
        }
        self.table(src, pid)
    }

    pub(super) fn fds(&mut self, src: &ProcSource, pid: u32) -> Rc<Vec<(u32, FdTarget)>> {
        if let Some(f) = self.fds.get(&pid) {
            return f.clone();
        }
        self.counts.fd_lists += 1;
        self.seq += 1;
        self.fds_read_at.insert(pid, self.seq);
        let list = match src.fds(pid) {
            Ok(l) => l,
            Err(e) => {
                self.note_fd_error(pid, &e);
                Vec::new()
            }
        };
        let list = Rc::new(list);
        self.fds.insert(pid, list.clone());
        list
    }

    /// A vanished process is no news; a denied read is counted (the agent would
    /// otherwise see no connection of that process, silently).
    pub(super) fn note_fd_error(&mut self, pid: u32, e: &DiscoveryError) {
        if e.is_permission_denied() {
            self.counts.fd_denied.push(pid);
        }
    }

    /// When `pid`'s cached fd list was read (`None`: not read in this call).
    pub(super) fn fds_read_at(&self, pid: u32) -> Option<u64> {
        self.fds
            .contains_key(&pid)
            .then(|| self.fds_read_at.get(&pid).copied())?
    }

    /// Fd lists are read again on next use (once per call): a peer may have
    /// accepted since they were read.
    pub(super) fn refresh_fds(&mut self) {
        if !self.fds_refreshed {
            self.fds_refreshed = true;
            self.fds.clear();
        }
    }
}
