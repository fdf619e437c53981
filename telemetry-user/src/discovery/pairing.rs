//! Connections: which socket or pipe fd of a worker pairs with which BEAM fd, by
//! inode and the loopback 4-tuple from the tcp tables, and LISTEN ports.

use std::collections::BTreeSet;
use std::net::SocketAddr;

use super::model::{CloseReason, ConnInfo, ConnRole, TopologyChange, Transport};
use super::parse::{canonical, is_loopback, FdTarget, TcpState};
use super::reads::Ctx;
use super::source::ProcSource;
use super::topology::{Discovery, SettledWhy, MAX_RESOLVE_ATTEMPTS};

pub(super) enum Resolve {
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

impl Discovery {
    pub(super) fn note_listen(&mut self, pid: u32, port: u16, changes: &mut Vec<TopologyChange>) {
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

    pub(super) fn refresh_listen(
        &mut self,
        ctx: &mut Ctx,
        pid: u32,
        changes: &mut Vec<TopologyChange>,
    ) {
        for port in listen_ports_of(&self.src, ctx, pid) {
            self.note_listen(pid, port, changes);
        }
    }

    pub(super) fn resolve_and_track(
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

    pub(super) fn retry_pending(
        &mut self,
        ctx: &mut Ctx,
        changes: &mut Vec<TopologyChange>,
        count: bool,
    ) {
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
            Err(e) => {
                ctx.note_fd_error(tgid, &e);
                return Resolve::NotYet;
            }
        };
        let mut table = ctx.table(&self.src, tgid);
        if !table.by_inode.contains_key(&inode) {
            // The table was read (and cached) before this socket got its entry.
            table = ctx.refreshed_table(&self.src, tgid);
        }
        let Some(me) = table.by_inode.get(&inode) else {
            if ctx.rescan {
                self.note_not_tcp(tgid, fd, inode);
            }
            return Resolve::NotYet;
        };
        if me.state == TcpState::Listen {
            self.note_listen(tgid, me.local.port(), changes);
            self.settle(tgid, fd, inode, SettledWhy::Listen);
            return Resolve::Done;
        }
        if !me.state.is_connected() {
            // Not connected yet: may still connect or listen.
            return Resolve::Ignore;
        }
        if !is_loopback(me.local) || !is_loopback(me.remote) {
            self.settle(tgid, fd, inode, SettledWhy::Connected);
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
            table = ctx.refreshed_table(&self.src, tgid);
        }
        let Some(&peer_inode) = table.by_tuple.get(&(r, l)) else {
            return Resolve::NotYet;
        };
        let Some(peer_local) = table.by_inode.get(&peer_inode).map(|e| e.local) else {
            return Resolve::NotYet;
        };
        for &c in &candidates {
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
        // The peer's socket existed when the table was read, yet no BEAM fd list read
        // after that holds it: another process owns the peer (a worker's own
        // client of some local service), not a Snakepit connection.
        let read_after = |c: &u32| ctx.fds_read_at(*c).is_some_and(|t| t > table.read_at);
        if is_worker && !candidates.is_empty() && candidates.iter().all(read_after) {
            self.settle(tgid, fd, inode, SettledWhy::Foreign);
            return Resolve::Ignore;
        }
        // The peer has not accepted yet (or its fd cache is stale): look again later.
        ctx.refresh_fds();
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

    pub(super) fn insert_conn(
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

    pub(super) fn close_conn(
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

pub(super) fn listen_ports_of(src: &ProcSource, ctx: &mut Ctx, pid: u32) -> BTreeSet<u16> {
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
pub(super) fn pick_port(listen: &BTreeSet<u16>, port_arg: Option<u16>) -> Option<u16> {
    match port_arg {
        Some(p) if p != 0 && listen.contains(&p) => Some(p),
        _ => listen.iter().next().copied(),
    }
}
