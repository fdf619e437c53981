//! Kernel records into the agent's stages: I/O records to the pipeline and the call
//! tracker, scheduling and (de)serialization records to the worker split and the
//! profiler, process and fd lifecycle records to discovery.
use super::Agent;
use crate::discovery::ExitInfo;
use crate::fast_hash::FastSet;
use crate::kernel::{self, KernelEvent};

impl Agent {
    pub(super) fn on_kernel_event(&mut self, ev: KernelEvent) {
        self.counters.kernel_events += 1;
        match ev {
            KernelEvent::IoChunk {
                tgid,
                fd,
                seq,
                offset,
                bytes,
            } => self.chunks.chunk(tgid, fd, seq, offset, bytes),
            KernelEvent::Io(mut rec) => {
                self.chunks.join(&mut rec);
                self.io.record(
                    rec.tgid,
                    rec.fd,
                    rec.direction.index(),
                    rec.ret,
                    rec.stream_pos,
                    rec.capture == kernel::Capture::Frames,
                );
                self.pipeline
                    .on_io(rec, &self.discovery, &mut self.observations);
                self.feed_tracker();
                self.pass_cursor_hints();
            }
            KernelEvent::Sched(ep) => {
                self.tracker.activity_mut().on_episode(&ep);
                self.weigh_unwalked(&ep);
            }
            KernelEvent::Serialize(rec) => self.tracker.activity_mut().on_serialize(&rec),
            KernelEvent::Exec { tgid, .. } => {
                let changes = self.discovery.on_exec(tgid);
                self.apply(changes);
            }
            KernelEvent::OomKill { tgid, .. } => {
                // Its exit follows: the crash is then reported as an OOM kill.
                self.oom_victims.insert(tgid);
            }
            KernelEvent::Fork { .. } => {
                // The kernel already put the child in the lineage; its exec is what
                // tells whether it is a worker.
            }
            KernelEvent::Exit { tgid, status, .. } => self.on_exit(tgid, status),
            KernelEvent::FdOpen { tgid, fd, .. } => {
                // A failed accept gives no fd; a connect in progress is still a socket.
                if let Some(fd) = fd {
                    self.pipeline.fd_opened(tgid, fd);
                    let changes = self.discovery.on_fd_open(tgid, fd);
                    self.apply(changes);
                }
            }
            KernelEvent::FdClose {
                tgid, fd, totals, ..
            } => {
                // Only watched fds, never negative: the kernel looked the fd up.
                self.io.closed(tgid, fd, totals);
                self.watched_fds.remove(&(tgid, fd));
                let changes = self.discovery.on_fd_close(tgid, fd);
                self.apply(changes);
                self.pipeline.fd_closed(tgid, fd);
                let _ = self.probes.clear_cursor_hint(tgid, fd);
                self.finish_closing(kernel::monotonic_now_ns());
            }
        }
    }

    /// A process ended: its connections' final totals, then discovery, the decoders,
    /// the worker's probes and the watch maps forget it.
    fn on_exit(&mut self, tgid: u32, status: kernel::ExitStatus) {
        // A dying process's fds close without close(2): take their final
        // kernel totals before the entries go.
        let ends: Vec<u32> = self
            .discovery
            .connections()
            .flat_map(|c| [(c.beam_pid, c.beam_fd), (c.worker_pid, c.worker_fd)])
            .filter(|(p, _)| *p == tgid)
            .map(|(_, fd)| fd)
            .collect();
        for fd in ends {
            if let Some(t) = self.probes.fd_totals(tgid, fd) {
                self.io.closed(tgid, fd, t);
            }
        }
        let exit = exit_info(status);
        let changes = self.discovery.on_exit(tgid, exit);
        self.apply(changes);
        self.oom_victims.remove(&tgid);
        self.pipeline.process_exited(tgid);
        self.probes.forget_tgid(tgid);
        self.worker_probes
            .forget(&mut self.probes, &mut self.tracker, tgid);
        self.watched_pids.remove(&tgid);
        self.watched_fds.retain(|k| k.0 != tgid);
        let keep: FastSet<u32> = self
            .closing
            .iter()
            .flat_map(|c| {
                [
                    (c.conn.beam_pid, c.conn.beam_fd),
                    (c.conn.worker_pid, c.conn.worker_fd),
                ]
            })
            .filter(|(p, _)| *p == tgid)
            .map(|(_, fd)| fd)
            .collect();
        self.io.forget_process(tgid, &keep);
    }

    /// A blocked episode the kernel's rate limit did not walk still weighs in the
    /// off-CPU profile (see `SampleStore::push_unwalked`).
    pub(super) fn weigh_unwalked(&self, ep: &crate::kernel::SchedEpisode) {
        let Some(off) = ep.off.filter(|o| o.state != 0 && !o.walked) else {
            return;
        };
        let Some((_, handle)) = &self.profiler else {
            return;
        };
        let blocked = crate::profiler::BlockedIn {
            syscall: off.syscall.map_or(-1, i64::from),
            state: off.state,
        };
        handle.unwalked(
            ep.tgid,
            ep.tid,
            off.out_ns,
            ep.in_ns.saturating_sub(off.out_ns),
            blocked,
        );
    }

    /// Frame cursors the decoders know and the kernel does not (streams joined
    /// mid-way) go to the kernel, which then follows frames and sends lean records.
    pub(super) fn pass_cursor_hints(&mut self) {
        for h in self.pipeline.take_cursor_hints() {
            if let Err(e) =
                self.probes
                    .set_cursor_hint(h.tgid, h.fd, h.direction, h.after_seq, h.cursor)
            {
                self.counters.watch_errors += 1;
                tracing::debug!(tgid = h.tgid, fd = h.fd, error = %e, "cannot pass a frame cursor");
            }
        }
    }
}

fn exit_info(status: kernel::ExitStatus) -> ExitInfo {
    match status {
        kernel::ExitStatus::Exited(code) => ExitInfo {
            code: Some(i32::from(code)),
            signal: None,
            core_dumped: false,
        },
        kernel::ExitStatus::Signaled {
            signal,
            core_dumped,
        } => ExitInfo {
            code: None,
            signal: Some(i32::from(signal)),
            core_dumped,
        },
        kernel::ExitStatus::Unknown => ExitInfo::default(),
    }
}
