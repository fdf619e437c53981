//! Read-only views of the picture: the snapshot `list` prints and the kernel watch
//! plan.

use std::collections::BTreeMap;

use telemetry_common::{
    FD_PIPE, FD_SOCKET, PID_BEAM, PID_LINEAGE, PID_WATCH_NEW_SOCKETS, PID_WORKER,
};

use super::model::{
    ConnRole, DeploymentSnapshot, PoolSnapshot, ProcessRole, TopologySnapshot, WatchPlan,
    WorkerInfo,
};
use super::topology::Discovery;

impl Discovery {
    pub fn snapshot(&self) -> TopologySnapshot {
        let mut snap = TopologySnapshot {
            connections: self.conns.values().cloned().collect(),
            pending_sockets: self.pending.len(),
            identities: self
                .identities
                .iter()
                .map(|(pid, id)| (*pid, id.clone()))
                .collect(),
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
}
