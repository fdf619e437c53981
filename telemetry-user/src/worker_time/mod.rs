//! Where a worker's time on a call goes (issue "why is this call slow"), from the
//! kernel's scheduling edges and the (de)serialization uprobes of the worker threads:
//!
//! - `timeline`: per-thread state over time (on CPU, runnable, blocked and why),
//!   built from `SchedRecord`s, bounded in time and size.
//! - `serialization`: the (de)serialization calls of each worker, and which of them
//!   are a call's request decoding and response encoding.
//! - `split`: a call's window `[t1, t2]` cut into on-CPU, runqueue and off-CPU time by
//!   reason, following the thread that serves the call.
//! - `targets`: what to probe in a worker (its mapped upb and orjson objects) and the
//!   address range of its interpreter's GIL (`_PyRuntime`).
//!
//! Each stage takes plain records, so all of it is tested without the kernel.
pub mod sampling;
pub mod serialization;
pub mod split;
pub mod targets;
pub mod timeline;

#[cfg(test)]
mod tests;

use crate::events::WorkerSplit;
use crate::kernel::{SchedEpisode, SchedRecord, SerializeRecord};
pub use sampling::{GateChange, SplitSampler};
pub use serialization::{MessageSizes, SerializeHits};
pub use timeline::{ProcessWaits, Timelines, WaitReason};

/// How long records are kept at most: longer than any call the split is asked about.
pub const HORIZON_NS: u64 = 120_000_000_000;
/// How long records are kept before the oldest call in flight, and when none is
/// (records reach the agent out of order, and a call's end is read after its
/// records). Keeping the whole horizon was 20,000 segments per thread of a busy worker.
pub const SETTLE_NS: u64 = 2_000_000_000;

/// Everything the agent knows of the workers' threads and their (de)serialization.
pub struct WorkerActivity {
    pub timelines: Timelines,
    pub serialize: SerializeHits,
    /// When the split's probes record (windows above a call rate).
    pub sampler: SplitSampler,
}

impl Default for WorkerActivity {
    fn default() -> Self {
        WorkerActivity {
            timelines: Timelines::default(),
            serialize: SerializeHits::default(),
            sampler: SplitSampler::new(0),
        }
    }
}

impl WorkerActivity {
    pub fn on_sched(&mut self, rec: &SchedRecord) {
        self.timelines.push(rec);
    }

    /// A thread's episode off the CPU, as the kernel joined it.
    pub fn on_episode(&mut self, ep: &SchedEpisode) {
        for rec in ep.edges() {
            self.timelines.push(&rec);
        }
    }

    pub fn on_serialize(&mut self, rec: &SerializeRecord) {
        self.serialize.push(rec);
    }

    /// Process facts that classify waits (the GIL's address range, GPU fds).
    pub fn set_process_waits(&mut self, tgid: u32, waits: ProcessWaits) {
        self.timelines.set_process(tgid, waits);
    }

    /// A worker exited: forget its threads and records.
    pub fn forget_process(&mut self, tgid: u32) {
        self.timelines.forget_process(tgid);
        self.serialize.forget_process(tgid);
    }

    /// The split of `[t1, t2]` of a call served by worker `tgid` (`reader_tid`: the
    /// thread that read its request, a fallback for the serving thread).
    pub fn split(
        &self,
        tgid: u32,
        reader_tid: Option<u32>,
        t1: u64,
        t2: u64,
        sizes: MessageSizes,
    ) -> WorkerSplit {
        split::split(self, tgid, reader_tid, t1, t2, sizes)
    }

    /// Called on every tick: the split gate's change to make in the kernel. On a
    /// resume, every thread's state is unknown from the pause on.
    pub fn tick_sampler(&mut self, now_ns: u64) -> Option<GateChange> {
        let change = self.sampler.tick(now_ns);
        if let (Some(GateChange::Resume { .. }), Some(paused)) =
            (change, self.sampler.last_pause_ns())
        {
            self.timelines.mark_unwatched(paused);
        }
        change
    }

    /// Whether the split's probes recorded all of `[t1, t2]`.
    pub fn recorded(&self, t1: u64, t2: u64) -> bool {
        self.sampler.covered(t1, t2)
    }

    /// Drops what no call can need any more: older than SETTLE_NS before the oldest
    /// call still in flight (`oldest_open_ns`) or now, and always than the horizon.
    pub fn prune(&mut self, now_ns: u64, oldest_open_ns: Option<u64>) {
        let floor = oldest_open_ns
            .unwrap_or(now_ns)
            .min(now_ns)
            .saturating_sub(SETTLE_NS)
            .max(now_ns.saturating_sub(HORIZON_NS));
        self.timelines.prune(floor);
        self.serialize.prune(floor);
    }

    pub fn thread_count(&self) -> usize {
        self.timelines.thread_count()
    }
}
