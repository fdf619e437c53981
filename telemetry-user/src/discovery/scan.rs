//! The full rescan of the proc tree: at start, and periodically as the safety net
//! for lost kernel events.

use std::collections::BTreeMap;

use super::model::{CloseReason, ExitInfo, ScanStats, TopologyChange};
use super::parse::{classify, FdTarget, ProcStat, ProcessKind};
use super::reads::Ctx;
use super::topology::{Discovery, SeenProc};

impl Discovery {
    /// Reads the whole proc tree and brings the picture up to date: used at start
    /// and as the fallback when events were lost. Processes and connections that
    /// vanished are reported closed/exited with `CloseReason::Rescan` and an
    /// unknown exit status.
    ///
    /// Kept cheap for its periodic use (kernel events already report new processes
    /// and sockets): one `stat` per process, cmdline and exe only of processes not
    /// seen before, the fd lists of BEAMs and workers, and a tcp table only while
    /// some socket of theirs is neither paired nor settled (`last_scan_stats`).
    pub fn full_scan(&mut self) -> Vec<TopologyChange> {
        let mut changes = Vec::new();
        let pids = match self.src.pids() {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!("discovery scan failed: {e}");
                return changes;
            }
        };
        let mut ctx = Ctx::for_rescan();
        let mut stats = ScanStats {
            pids: pids.len() as u32,
            ..ScanStats::default()
        };
        let table = self.list_processes(pids, &mut stats);

        // Gone (or pid reused) since we last looked.
        let gone: Vec<u32> = self
            .procs
            .values()
            .filter(|p| {
                table
                    .get(&p.pid)
                    .is_none_or(|s| s.stat.start_time != p.start_time)
            })
            .map(|p| p.pid)
            .collect();
        for pid in gone {
            self.remove_process(pid, ExitInfo::default(), CloseReason::Rescan, &mut changes);
        }

        // BEAMs first, so ancestry finds them.
        for (pid, p) in &table {
            if p.kind == ProcessKind::Beam && !self.beams.contains_key(pid) {
                self.add_beam(*pid, &p.stat, p.kind.clone());
            }
        }
        let lookup = |p: u32| {
            table
                .get(&p)
                .map(|s| (s.stat.ppid, s.kind == ProcessKind::Beam))
        };
        let mut admit = Vec::new();
        for (pid, p) in &table {
            if p.kind == ProcessKind::Beam || p.decided || self.procs.contains_key(pid) {
                continue;
            }
            let anc = self.beam_ancestor(p.stat.ppid, &lookup);
            if p.kind.is_worker() || anc.is_some() {
                admit.push((*pid, anc));
            }
        }
        for (pid, p) in &table {
            if let Some(s) = self.seen.get_mut(pid) {
                s.decided = p.kind != ProcessKind::Beam;
            }
        }
        // gRPC workers first: they carry the instance name BeamDiscovered reports.
        admit.sort_by_key(|(pid, _)| {
            !matches!(
                table.get(pid).map(|p| &p.kind),
                Some(ProcessKind::GrpcWorker(_))
            )
        });
        for (pid, anc) in admit {
            if let Some(p) = table.get(&pid) {
                let args = match &p.args {
                    Some(a) => a.clone(),
                    None => self.src.cmdline(pid).unwrap_or_default(),
                };
                self.admit(
                    &mut ctx,
                    pid,
                    &p.stat,
                    &args,
                    p.kind.clone(),
                    anc,
                    &mut changes,
                );
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
        // Sockets already paired or settled cost no tcp table read.
        let worker_pids: Vec<u32> = self.workers.keys().copied().collect();
        for wpid in worker_pids {
            self.pair_pipes(&mut ctx, wpid, &mut changes);
            let fds = ctx.fds(&self.src, wpid);
            self.prune_settled(wpid, &fds);
            for (fd, t) in fds.iter() {
                let FdTarget::Socket(inode) = *t else {
                    continue;
                };
                if !self.fd_index.contains_key(&(wpid, *fd)) && !self.is_settled(wpid, *fd, inode) {
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
            self.refresh_beam_listen(&mut ctx, b, &mut changes);
        }
        stats.fd_lists = ctx.counts.fd_lists;
        stats.tcp_tables = ctx.counts.tcp_tables;
        stats.fd_permission_denied = ctx.counts.fd_denied.len() as u32;
        self.last_scan = stats;
        self.finish(&ctx);
        changes
    }

    /// Stat of every pid; cmdline and exe only of pids not seen before (or whose
    /// start time or comm changed), the rest keep their classification.
    fn list_processes(&mut self, pids: Vec<u32>, stats: &mut ScanStats) -> BTreeMap<u32, Listed> {
        let mut table = BTreeMap::new();
        for pid in pids {
            let Ok(stat) = self.src.stat(pid) else {
                continue;
            };
            let known = self
                .seen
                .get(&pid)
                .filter(|s| s.start_time == stat.start_time && s.comm == stat.comm);
            let listed = match known {
                Some(s) => Listed {
                    kind: s.kind.clone(),
                    decided: s.decided,
                    args: None,
                    stat,
                },
                None => {
                    stats.classified += 1;
                    let args = self.src.cmdline(pid).unwrap_or_default();
                    let exe = self.src.exe(pid);
                    let kind = classify(pid, &args, &stat.comm, exe.as_deref(), &self.sel);
                    self.seen.insert(
                        pid,
                        SeenProc {
                            start_time: stat.start_time,
                            comm: stat.comm.clone(),
                            kind: kind.clone(),
                            decided: false,
                        },
                    );
                    Listed {
                        kind,
                        decided: false,
                        args: Some(args),
                        stat,
                    }
                }
            };
            table.insert(pid, listed);
        }
        self.seen.retain(|pid, _| table.contains_key(pid));
        self.fd_denied_warned.retain(|pid| table.contains_key(pid));
        table
    }
}

/// One process as this scan listed it.
struct Listed {
    stat: ProcStat,
    kind: ProcessKind,
    /// Already admitted or rejected by an earlier scan.
    decided: bool,
    /// Read only when classified in this scan.
    args: Option<Vec<String>>,
}
