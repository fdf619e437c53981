//! The full rescan of the proc tree: at start, and periodically as the safety net
//! for lost kernel events.

use std::collections::BTreeMap;

use super::model::{CloseReason, ExitInfo, TopologyChange};
use super::parse::{classify, FdTarget, ProcStat, ProcessKind};
use super::reads::Ctx;
use super::topology::Discovery;

impl Discovery {
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
}
