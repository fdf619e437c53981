//! Topology changes (discovery's findings) into events, the call tracker's lifecycle,
//! the profiler's workers, the GPU sampler's worker map and the kernel's watch maps.
use super::{topology_events, Agent, Closing, CLOSE_GRACE_NS};
use crate::calls::input::Lifecycle;
use crate::discovery::TopologyChange;
use crate::fast_hash::{FastMap, FastSet};
use crate::kernel;

impl Agent {
    /// Publishes topology changes and brings the kernel's watch maps in line.
    pub(super) fn apply(&mut self, changes: Vec<TopologyChange>) {
        let now = kernel::monotonic_now_ns();
        for change in &changes {
            self.bus
                .publish(topology_events::to_event_in(change, &self.discovery));
            match change {
                TopologyChange::ConnectionClosed { conn, .. } => {
                    self.repro_capture(conn, false);
                    self.closing.push(Closing {
                        conn: conn.clone(),
                        deadline_mono_ns: now + CLOSE_GRACE_NS,
                    });
                    self.tracker.lifecycle(Lifecycle::ConnectionClosed {
                        conn_id: conn.id,
                        ts_ns: now,
                    });
                }
                TopologyChange::ConnectionOpened { conn } => {
                    self.repro_capture(conn, true);
                    if self.initial_scan_done && conn.transport == crate::discovery::Transport::Pipe
                    {
                        self.pipeline.pipe_is_live(conn);
                    }
                    self.pipeline
                        .connection_opened(conn, &self.discovery, &mut self.observations);
                }
                TopologyChange::WorkerDiscovered(w) => {
                    self.profiler_command(crate::profiler::Command::WorkerUp {
                        pid: w.pid,
                        pool: w.pool.clone(),
                    });
                    self.tracker.lifecycle(Lifecycle::WorkerUp {
                        pool: w.pool.clone(),
                        worker_id: w.worker_id.clone(),
                        worker_pid: w.pid,
                        beam_pid: w.beam_pid,
                        ts_ns: now,
                    })
                }
                TopologyChange::WorkerExited {
                    pool,
                    worker_id,
                    pid,
                    exit_code,
                    signal,
                    ..
                } => {
                    // Observations decoded before the exit belong before it.
                    self.feed_tracker();
                    self.profiler_command(crate::profiler::Command::WorkerGone { pid: *pid });
                    self.tracker.lifecycle(Lifecycle::WorkerExited {
                        pool: pool.clone(),
                        worker_id: worker_id.clone(),
                        worker_pid: *pid,
                        exit_code: *exit_code,
                        signal: *signal,
                        oom_killed: self.oom_victims.remove(pid),
                        ts_ns: now,
                    });
                }
                _ => {}
            }
        }
        self.feed_tracker();
        self.finish_closing(kernel::monotonic_now_ns());
        self.sync_watch_maps();
        if changes.iter().any(|c| {
            matches!(
                c,
                TopologyChange::WorkerDiscovered(_) | TopologyChange::WorkerExited { .. }
            )
        }) {
            let map: crate::gpu::WorkerMap = self
                .discovery
                .snapshot()
                .deployments
                .iter()
                .flat_map(|d| d.pools.iter().flat_map(|p| p.workers.iter()))
                .map(|w| (w.pid, crate::gpu::WorkerRef::from(w)))
                .collect();
            let _ = self.gpu_workers.send(map);
        }
    }

    /// Repro: the request sender of a gRPC connection (the BEAM's end of a worker
    /// connection, the worker's end of a callback one) is captured whole.
    pub(super) fn repro_capture(&mut self, conn: &crate::discovery::ConnInfo, on: bool) {
        use crate::discovery::ConnRole;
        if !self.config.repro.repro_on_error {
            return;
        }
        let (pid, fd) = match conn.role {
            ConnRole::BeamClient => (conn.beam_pid, conn.beam_fd),
            ConnRole::WorkerCallback => (conn.worker_pid, conn.worker_fd),
            ConnRole::PipeStdin | ConnRole::PipeStdout => return,
        };
        let r = if on {
            self.probes.capture_whole(pid, fd)
        } else {
            self.probes.stop_capture_whole(pid, fd)
        };
        if let Err(e) = r {
            tracing::debug!(pid, fd, error = %e, "repro: full capture not changed");
        }
    }

    /// Emits the final summary of closed connections whose two ends both closed (or
    /// whose grace period ran out).
    pub(super) fn finish_closing(&mut self, now_mono_ns: u64) {
        if self.closing.is_empty() {
            return;
        }
        let (done, waiting): (Vec<Closing>, Vec<Closing>) = std::mem::take(&mut self.closing)
            .into_iter()
            .partition(|c| {
                let ends_closed = self.io.is_closed(c.conn.beam_pid, c.conn.beam_fd)
                    && self.io.is_closed(c.conn.worker_pid, c.conn.worker_fd);
                ends_closed || now_mono_ns >= c.deadline_mono_ns
            });
        self.closing = waiting;
        for c in done {
            let probes = &self.probes;
            let ev = self
                .io
                .summary(&c.conn, |p, f| probes.fd_totals(p, f), true);
            self.bus.publish(ev);
            self.io.forget(&c.conn);
        }
    }

    pub(super) fn sync_watch_maps(&mut self) {
        let plan = self.discovery.watch_plan();
        let mut want_pids = FastMap::with_capacity_and_hasher(plan.pids.len(), Default::default());
        for (tgid, flags) in plan.pids {
            want_pids.insert(tgid, flags);
            if self.watched_pids.get(&tgid) != Some(&flags) {
                if let Err(e) = self.probes.watch_pid(tgid, flags) {
                    self.counters.watch_errors += 1;
                    tracing::warn!(tgid, error = %e, "cannot watch process");
                    continue;
                }
                self.watched_pids.insert(tgid, flags);
            }
        }
        let stale: Vec<u32> = self
            .watched_pids
            .keys()
            .filter(|p| !want_pids.contains_key(p))
            .copied()
            .collect();
        for tgid in stale {
            let _ = self.probes.unwatch_pid(tgid);
            self.watched_pids.remove(&tgid);
        }
        self.sync_worker_probes();
        let mut want_fds = FastSet::with_capacity_and_hasher(plan.fds.len(), Default::default());
        // Ends of half-closed connections stay watched until they close.
        for c in &self.closing {
            want_fds.insert((c.conn.beam_pid, c.conn.beam_fd));
            want_fds.insert((c.conn.worker_pid, c.conn.worker_fd));
        }
        for (tgid, fd, kind) in plan.fds {
            want_fds.insert((tgid, fd));
            if !self.watched_fds.contains(&(tgid, fd)) {
                match self.probes.watch_fd(tgid, fd, kind, None) {
                    Ok(()) => {
                        self.watched_fds.insert((tgid, fd));
                    }
                    Err(e) => {
                        self.counters.watch_errors += 1;
                        tracing::warn!(tgid, fd, error = %e, "cannot watch fd");
                    }
                }
            }
        }
        // Only fds this loop added are removed here: the kernel itself adds the new
        // sockets of watched processes, and discovery decides about them later.
        let stale: Vec<(u32, u32)> = self.watched_fds.difference(&want_fds).copied().collect();
        for (tgid, fd) in stale {
            let _ = self.probes.unwatch_fd(tgid, fd);
            self.watched_fds.remove(&(tgid, fd));
        }
    }

    /// Scheduling records and (de)serialization probes for the watched workers.
    pub(super) fn sync_worker_probes(&mut self) {
        let workers: Vec<u32> = self
            .watched_pids
            .iter()
            .filter(|(_, f)| **f & kernel::PID_WORKER != 0)
            .map(|(p, _)| *p)
            .collect();
        self.worker_probes.sync(
            &mut self.probes,
            &mut self.tracker,
            &self.config.discovery.proc_root,
            &workers,
            &self.config.profile,
            kernel::monotonic_now_ns(),
        );
    }
}
