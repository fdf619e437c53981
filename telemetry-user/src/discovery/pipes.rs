//! Pipes: a worker's stdin/stdout/stderr (or a private frame fd) paired with the
//! BEAM fd holding the other end, by pipe inode.

use super::model::{ConnInfo, ConnRole, TopologyChange};
use super::parse::{self, FdTarget};
use super::reads::Ctx;
use super::topology::Discovery;

impl Discovery {
    /// Matches the worker's pipe fds with the BEAM fds holding the other end. Fds
    /// 0-2 are stdin/stdout/stderr; any other pipe fd the BEAM shares (a worker that
    /// moved its output to a private fd) gets its direction from its open flags.
    pub(super) fn pair_pipes(
        &mut self,
        ctx: &mut Ctx,
        wpid: u32,
        changes: &mut Vec<TopologyChange>,
    ) {
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
}
