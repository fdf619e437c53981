//! Reads shared within one public call of `Discovery`, so a BEAM's fd list or a
//! namespace's tcp table is read once however many sockets need it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;

use super::parse::{canonical, FdTarget, TcpEntry, TcpState};
use super::source::ProcSource;

#[derive(Default)]
pub(super) struct Table {
    pub(super) by_inode: HashMap<u64, TcpEntry>,
    /// canonical (local, remote) -> inode, for connected sockets.
    pub(super) by_tuple: HashMap<(SocketAddr, SocketAddr), u64>,
}

#[derive(Default)]
pub(super) struct Ctx {
    pub(super) tables: HashMap<String, Rc<Table>>,
    pub(super) fds: HashMap<u32, Rc<Vec<(u32, FdTarget)>>>,
}

impl Ctx {
    pub(super) fn table(&mut self, src: &ProcSource, pid: u32) -> Rc<Table> {
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

    pub(super) fn fds(&mut self, src: &ProcSource, pid: u32) -> Rc<Vec<(u32, FdTarget)>> {
        self.fds
            .entry(pid)
            .or_insert_with(|| Rc::new(src.fds(pid).unwrap_or_default()))
            .clone()
    }
}
