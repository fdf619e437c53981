//! Processes: BEAMs (candidates until a worker is found under them), workers and
//! the lineage in between; adding, promoting and removing them.

use std::collections::BTreeSet;

use super::model::{
    BeamInfo, CloseReason, ExitInfo, ProcessInfo, ProcessRole, TopologyChange, Transport,
    WorkerInfo,
};
use super::pairing::{listen_ports_of, pick_port};
use super::parse::{
    is_snakepit_grpc_worker, parse_worker_args, ProcStat, ProcessKind, SnakepitEnv, WorkerArgs,
};
use super::reads::Ctx;
use super::topology::{Discovery, SettledWhy, WorkerState, MAX_ANCESTRY_DEPTH};

impl Discovery {
    pub(super) fn add_beam(&mut self, pid: u32, stat: &ProcStat, kind: ProcessKind) {
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
        // A worker socket whose peer no BEAM held may be this BEAM's.
        self.settled.retain(|_, s| s.why != SettledWhy::Foreign);
        let src = &self.src;
        self.identities
            .entry(pid)
            .or_insert_with(|| super::container::NsIdentity::read(src, pid));
        self.beams.entry(pid).or_insert(BeamInfo {
            pid,
            listen_ports: Vec::new(),
            instance_name: None,
            deployment: false,
        });
    }

    /// Walks parents from `ppid` to a BEAM. `lookup(pid) -> (ppid, is_beam)`.
    pub(super) fn beam_ancestor(
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
    pub(super) fn admit(
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
        self.identities
            .insert(pid, super::container::NsIdentity::read(&self.src, pid));
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

    pub(super) fn remove_process(
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
        self.settled.retain(|(t, _), _| *t != pid);
        self.procs.remove(&pid);
        self.identities.remove(&pid);
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
}
