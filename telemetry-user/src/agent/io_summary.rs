//! Per-connection I/O accounting: what the ring buffer delivered (records, bytes) per
//! (process, fd, direction), and the kernel's own exact totals (kept in the watched-fd
//! map even when ring records are dropped; final values arrive with the close event).
use crate::agent::topology_events::ConnMeta;
use crate::discovery::ConnInfo;
use crate::events::{schema, Event};
use crate::fast_hash::{FastMap, FastSet};
use crate::kernel::FdTotals;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Observed {
    pub bytes: [u64; 2],
    pub calls: [u64; 2],
    /// Syscalls that returned an error or EOF (ret <= 0).
    pub errors: u64,
    /// Stream position after the last record, per direction.
    end: [u64; 2],
}

#[derive(Default)]
pub struct IoAccounting {
    observed: FastMap<(u32, u32), Observed>,
    /// Final kernel totals of fds that closed (or whose process exited).
    closed: FastMap<(u32, u32), FdTotals>,
}

impl IoAccounting {
    /// One record. A lean one (`covers_silent`) also accounts for the reads before it
    /// that sent no record by design (they lay inside one frame), from `stream_pos`.
    pub fn record(
        &mut self,
        tgid: u32,
        fd: u32,
        direction: usize,
        ret: i64,
        stream_pos: u64,
        covers_silent: bool,
    ) {
        let o = self.observed.entry((tgid, fd)).or_default();
        let d = direction & 1;
        if ret > 0 {
            let silent = if covers_silent {
                stream_pos.saturating_sub(o.end[d])
            } else {
                0
            };
            o.bytes[d] += ret as u64 + silent;
            o.calls[d] += 1;
            o.end[d] = stream_pos + ret as u64;
        } else {
            o.errors += 1;
        }
    }

    pub fn closed(&mut self, tgid: u32, fd: u32, totals: FdTotals) {
        self.closed.insert((tgid, fd), totals);
    }

    pub fn is_closed(&self, tgid: u32, fd: u32) -> bool {
        self.closed.contains_key(&(tgid, fd))
    }

    pub fn observed(&self, tgid: u32, fd: u32) -> Observed {
        self.observed.get(&(tgid, fd)).copied().unwrap_or_default()
    }

    /// Final totals if the fd closed, else the live value from `live`.
    pub fn totals(
        &self,
        tgid: u32,
        fd: u32,
        live: impl Fn(u32, u32) -> Option<FdTotals>,
    ) -> Option<FdTotals> {
        self.closed
            .get(&(tgid, fd))
            .copied()
            .or_else(|| live(tgid, fd))
    }

    /// Forgets a connection's ends once its summary has been emitted at close.
    pub fn forget(&mut self, conn: &ConnInfo) {
        for key in [
            (conn.beam_pid, conn.beam_fd),
            (conn.worker_pid, conn.worker_fd),
        ] {
            self.observed.remove(&key);
            self.closed.remove(&key);
        }
    }

    /// Forgets a dead process's fds, except `keep` (ends of connections whose final
    /// summary still waits for the other end).
    pub fn forget_process(&mut self, tgid: u32, keep: &FastSet<u32>) {
        self.observed
            .retain(|k, _| k.0 != tgid || keep.contains(&k.1));
        self.closed
            .retain(|k, _| k.0 != tgid || keep.contains(&k.1));
    }

    /// The `connection_io` event for one connection. Kernel totals are exact
    /// (`beam_bytes_sent` ...); `*_observed` are what the ring buffer delivered, so a
    /// difference between the two is data lost on the way (also counted in stats).
    pub fn summary(
        &self,
        conn: &ConnInfo,
        live: impl Fn(u32, u32) -> Option<FdTotals>,
        final_summary: bool,
    ) -> Event {
        let mut ev = Event::new(schema::CONNECTION_IO)
            .meta_from(&ConnMeta::from(conn))
            .meta("final", final_summary);
        for (side, pid, fd) in [
            ("beam", conn.beam_pid, conn.beam_fd),
            ("worker", conn.worker_pid, conn.worker_fd),
        ] {
            if let Some(t) = self.totals(pid, fd, &live) {
                ev = ev
                    .measure(&format!("{side}_bytes_sent"), t.bytes_out)
                    .measure(&format!("{side}_bytes_received"), t.bytes_in)
                    .measure(&format!("{side}_send_calls"), t.calls_out)
                    .measure(&format!("{side}_receive_calls"), t.calls_in);
            }
            let o = self.observed(pid, fd);
            ev = ev
                .measure(&format!("{side}_bytes_sent_observed"), o.bytes[1])
                .measure(&format!("{side}_bytes_received_observed"), o.bytes[0]);
        }
        ev
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::{ConnRole, Transport};

    fn conn() -> ConnInfo {
        ConnInfo {
            id: 1,
            beam_pid: 10,
            beam_fd: 20,
            worker_pid: 11,
            worker_fd: 7,
            worker_id: "default_worker_1_a".into(),
            pool: "default".into(),
            beam_addr: None,
            worker_addr: None,
            role: ConnRole::BeamClient,
            transport: Transport::Grpc,
            inode: 5,
        }
    }

    #[test]
    fn summary_prefers_final_kernel_totals_and_reports_observed_bytes() {
        let mut io = IoAccounting::default();
        io.record(10, 20, 1, 100, 0, false);
        io.record(10, 20, 1, 50, 100, false);
        io.record(10, 20, 0, -11, 0, false);
        // Lean reads: 30 bytes, then 40 more after 200 bytes that sent no record.
        io.record(10, 20, 0, 30, 0, true);
        io.record(10, 20, 0, 40, 230, true);
        io.closed(
            10,
            20,
            FdTotals {
                bytes_in: 5,
                bytes_out: 170,
                calls_in: 1,
                calls_out: 3,
            },
        );
        let ev = io.summary(&conn(), |_, _| None, true);
        assert_eq!(ev.measurements["beam_bytes_sent"], 170);
        assert_eq!(ev.measurements["beam_bytes_sent_observed"], 150);
        assert_eq!(ev.measurements["beam_bytes_received"], 5);
        assert_eq!(ev.measurements["beam_bytes_received_observed"], 270);
        // No totals known for the worker end: only what was observed.
        assert!(!ev.measurements.contains_key("worker_bytes_sent"));
        assert_eq!(ev.measurements["worker_bytes_sent_observed"], 0);
        assert_eq!(io.observed(10, 20).errors, 1);
    }
}
