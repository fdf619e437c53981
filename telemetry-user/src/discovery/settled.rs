//! Sockets the rescan has settled: LISTEN sockets already noted and sockets that
//! cannot become a Snakepit connection, so a steady-state rescan reads no tcp table.

use super::model::TopologyChange;
use super::parse::{FdTarget, TcpState};
use super::reads::Ctx;
use super::topology::{Discovery, Settled, SettledWhy};

impl Discovery {
    /// Whether the rescan already settled `(pid, fd)` holding `inode`.
    pub(super) fn is_settled(&self, pid: u32, fd: u32, inode: u64) -> bool {
        self.settled
            .get(&(pid, fd))
            .is_some_and(|s| s.inode == inode && s.why != SettledWhy::NotTcp { confirmed: false })
    }

    pub(super) fn settle(&mut self, pid: u32, fd: u32, inode: u64, why: SettledWhy) {
        self.settled.insert((pid, fd), Settled { inode, why });
    }

    /// A rescan found the socket in no tcp table: settled the second time in a row.
    pub(super) fn note_not_tcp(&mut self, pid: u32, fd: u32, inode: u64) {
        let seen_before = self
            .settled
            .get(&(pid, fd))
            .is_some_and(|s| s.inode == inode);
        let why = SettledWhy::NotTcp {
            confirmed: seen_before,
        };
        self.settle(pid, fd, inode, why);
    }

    /// Forgets settled sockets of `pid` that its fd list (sorted) no longer holds.
    pub(super) fn prune_settled(&mut self, pid: u32, fds: &[(u32, FdTarget)]) {
        self.settled.retain(|&(p, fd), s| {
            p != pid
                || fds
                    .binary_search_by_key(&fd, |(f, _)| *f)
                    .is_ok_and(|i| fds[i].1 == FdTarget::Socket(s.inode))
        });
    }

    /// The BEAM's LISTEN ports, looking up only sockets neither paired nor settled
    /// (no tcp table read when there are none).
    pub(super) fn refresh_beam_listen(
        &mut self,
        ctx: &mut Ctx,
        pid: u32,
        changes: &mut Vec<TopologyChange>,
    ) {
        let fds = ctx.fds(&self.src, pid);
        self.prune_settled(pid, &fds);
        let unknown: Vec<(u32, u64)> = fds
            .iter()
            .filter_map(|(fd, t)| match *t {
                FdTarget::Socket(i) => Some((*fd, i)),
                _ => None,
            })
            .filter(|&(fd, i)| {
                !self.fd_index.contains_key(&(pid, fd)) && !self.is_settled(pid, fd, i)
            })
            .collect();
        if unknown.is_empty() {
            return;
        }
        let table = ctx.table(&self.src, pid);
        for (fd, inode) in unknown {
            let Some(e) = table.by_inode.get(&inode) else {
                self.note_not_tcp(pid, fd, inode);
                continue;
            };
            if e.state == TcpState::Listen {
                self.note_listen(pid, e.local.port(), changes);
                self.settle(pid, fd, inode, SettledWhy::Listen);
            } else if e.state.is_connected() {
                // A connected socket never becomes a LISTEN one.
                self.settle(pid, fd, inode, SettledWhy::Connected);
            }
        }
    }
}
