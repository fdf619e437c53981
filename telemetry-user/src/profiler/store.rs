//! Resolved samples kept for a window, per worker; per-call attribution (the calls a
//! worker served and when) and per-(pool, function) profiles read from it. CPU-clock
//! samples and off-CPU samples are kept apart: the call summaries count CPU samples
//! only.
use super::offcpu::ProfileMode;
use super::stacks::{Frame, Stack};
use crate::events::Handoff;
use crate::fast_hash::FastMap;
use std::collections::VecDeque;
use std::sync::Arc;

/// A sample as stored: when, which worker, and its stack.
#[derive(Clone, Debug)]
pub struct StoredSample {
    /// CPU samples: when taken; off-CPU samples: when the thread left the CPU.
    pub ts_ns: u64,
    pub stack: Stack,
    /// The function of the call it fell in, once that call finished (shared by the
    /// call's samples).
    pub function: Option<Arc<str>>,
    /// Off-CPU samples: the time until the thread ran again (0 for CPU samples); the
    /// sum of its episodes once estimated ones are merged.
    pub off_cpu_ns: u64,
    /// The samples or off-CPU episodes it stands for: 1, more once merged.
    pub episodes: u64,
    pub origin: Origin,
}

/// Where an off-CPU sample's stack comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Walked by the kernel when the thread blocked (and every CPU sample).
    Walked,
    /// An episode the kernel did not walk, weighed on its thread's last walked stack
    /// (see `SampleStore::push_unwalked`).
    Estimated,
    /// Estimated episodes of one thread and stack whose call is settled (the same
    /// finished call, or none that can still claim them), summed into one.
    Merged,
}

impl StoredSample {
    /// One CPU sample counts 1; an off-CPU sample its blocked nanoseconds.
    pub fn weight(&self) -> u64 {
        if self.off_cpu_ns > 0 {
            self.off_cpu_ns
        } else {
            1
        }
    }
}

/// What the samples of one call say (call.stop metadata).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallProfile {
    pub python_samples: u64,
    pub hot_frame: String,
    pub hot_library: String,
}

/// A finished call, kept a while for the off-CPU samples that arrive after it ended
/// (the kernel sends one when the thread runs again).
struct RecentCall {
    start_ns: u64,
    end_ns: u64,
    /// The latest time a sample can fall in it: its end, or a hand-over's end.
    reach_ns: u64,
    function: Arc<str>,
    serving_tid: Option<u32>,
    handoffs: Vec<Handoff>,
}

impl RecentCall {
    fn new(
        start_ns: u64,
        end_ns: u64,
        function: &str,
        serving_tid: Option<u32>,
        handoffs: &[Handoff],
    ) -> RecentCall {
        let reach_ns = handoffs.iter().map(|h| h.to_ns).fold(end_ns, u64::max);
        RecentCall {
            start_ns,
            end_ns,
            reach_ns,
            function: function.into(),
            serving_tid,
            handoffs: handoffs.to_vec(),
        }
    }

    /// Whether thread `tid`, off the CPU from `ts_ns` for `off_ns`, blocked for this
    /// call: the serving thread (any thread when it is not known) inside the window,
    /// less its waits that another thread ended; that thread's blocking while the
    /// wait lasted is the call's instead (e.g. the pool thread of `asyncio.to_thread`:
    /// both would count the same time).
    fn holds(&self, ts_ns: u64, off_ns: u64, tid: u32) -> bool {
        if self.serving_tid.is_none_or(|t| t == tid) {
            return (self.start_ns..=self.end_ns).contains(&ts_ns)
                && !self
                    .handoffs
                    .iter()
                    .any(|h| (h.from_ns..=h.to_ns).contains(&ts_ns));
        }
        // The helper may have blocked just before the serving thread began to wait.
        let end = ts_ns.saturating_add(off_ns);
        self.handoffs
            .iter()
            .any(|h| h.tid == tid && ts_ns < h.to_ns && end > h.from_ns)
    }
}

/// `d.partition_point(pred)` (`pred` true on a prefix), looked for from the back first:
/// the profiler's lookups are near its newest samples (a sample just sent, a call that
/// just ended), and a binary search over a worker's thousands of samples missed the
/// cache at every step (40 % of `call_finished` at 200 calls/s).
fn partition_recent<T>(d: &VecDeque<T>, pred: impl Fn(&T) -> bool) -> usize {
    const SCAN: usize = 32;
    let stop = d.len().saturating_sub(SCAN);
    match (stop..d.len()).rev().find(|&i| pred(&d[i])) {
        Some(i) => i + 1,
        // The boundary is older than the newest SCAN.
        None => d.partition_point(pred),
    }
}

/// Finished calls remembered per worker for late off-CPU samples.
const RECENT_CALLS: usize = 256;
/// Last walked off-CPU stacks remembered per worker (by thread and how it blocked).
const MAX_LAST_WALKED: usize = 4096;

/// How a thread left the CPU: the syscall it blocked in (-1: none) and its task state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BlockedIn {
    pub syscall: i64,
    pub state: u32,
}

#[derive(Default)]
struct Worker {
    pool: String,
    samples: VecDeque<StoredSample>,
    /// Sorted by `ts_ns` (they arrive out of order: when the thread runs again).
    off_cpu: VecDeque<StoredSample>,
    /// Sorted by `reach_ns`, so the lookup of a late sample stops at the first call
    /// that ended before it (a busy worker's samples mostly belong to no finished call).
    recent: VecDeque<RecentCall>,
    /// The last walked off-CPU stack of each (thread, how it blocked): the stack given
    /// to the episodes the kernel's rate limit did not walk.
    last_walked: FastMap<(u32, BlockedIn), Stack>,
    /// Unattributed estimated samples before this are merged (see `merge_unclaimed`).
    merged_until: u64,
    /// Settled samples before this are compacted (see `compact`).
    compacted_until: u64,
}

impl Worker {
    /// Inserts an off-CPU sample in time order, attributed to the recent call it
    /// belongs to, and drops what falls out of the window or the bound.
    fn insert_off_cpu(
        &mut self,
        window_ns: u64,
        max_per_worker: usize,
        ts_ns: u64,
        off_cpu_ns: u64,
        stack: Stack,
        origin: Origin,
    ) {
        let function = self
            .recent
            .iter()
            .rev()
            .take_while(|c| c.reach_ns >= ts_ns)
            .find(|c| c.holds(ts_ns, off_cpu_ns, stack.tid))
            .map(|c| c.function.clone());
        let at = partition_recent(&self.off_cpu, |s| s.ts_ns <= ts_ns);
        self.off_cpu.insert(
            at,
            StoredSample {
                ts_ns,
                stack,
                function,
                off_cpu_ns: off_cpu_ns.max(1),
                episodes: 1,
                origin,
            },
        );
        let newest = self.off_cpu.back().map_or(ts_ns, |s| s.ts_ns);
        let oldest = newest.saturating_sub(window_ns);
        while self
            .off_cpu
            .front()
            .is_some_and(|s| s.ts_ns < oldest || self.off_cpu.len() > max_per_worker)
        {
            self.off_cpu.pop_front();
        }
    }
}

impl Worker {
    /// Merges the estimated off-CPU samples from index `first` on that `mergeable`
    /// takes, one per (thread, stack, function): their episodes are the same wait
    /// repeated (a busy worker's threads block thousands of times a second), and kept
    /// apart they were most of the agent's memory. Walked samples stay as they are
    /// until they are settled (see `compact`).
    fn merge_estimated(&mut self, first: usize, mergeable: impl Fn(&StoredSample) -> bool) {
        let len = self.off_cpu.len();
        self.merge_range(first, len, |s| {
            s.origin == Origin::Estimated && mergeable(s)
        });
    }

    /// Merges the samples in `first..end` that `mergeable` takes into the first of
    /// each (thread, stack, function): it keeps its time stamp and takes the others'
    /// time and episodes. Order is kept (a merged sample stays where its first was).
    fn merge_range(&mut self, first: usize, end: usize, mergeable: impl Fn(&StoredSample) -> bool) {
        let end = end.min(self.off_cpu.len());
        if first >= end
            || self
                .off_cpu
                .range(first..end)
                .filter(|s| mergeable(s))
                .nth(1)
                .is_none()
        {
            return;
        }
        let mut range = self.off_cpu.split_off(first);
        let rest = range.split_off(end - first);
        // (tid, frames, function) -> index of the sample that takes the others' time.
        type Key = (u32, *const Arc<Frame>, Option<Arc<str>>);
        let mut into: FastMap<Key, usize> = FastMap::default();
        for s in range {
            if mergeable(&s) {
                let key = (
                    s.stack.tid,
                    Arc::as_ptr(&s.stack.frames) as *const Arc<Frame>,
                    s.function.clone(),
                );
                if let Some(&i) = into.get(&key) {
                    let into = &mut self.off_cpu[i];
                    into.off_cpu_ns += s.off_cpu_ns;
                    into.episodes += s.episodes;
                    into.origin = Origin::Merged;
                    continue;
                }
                into.insert(key, self.off_cpu.len());
            }
            self.off_cpu.push_back(s);
        }
        self.off_cpu.extend(rest);
    }

    /// Merges the estimated samples no call can claim any more: unattributed, and
    /// ended before `horizon_ns` (less the records' lateness). At most every
    /// MERGE_EVERY_NS, so each sample is looked at about once. Then compacts what
    /// is settled.
    fn merge_unclaimed(&mut self, horizon_ns: u64) {
        let floor = horizon_ns.saturating_sub(LATE_NS);
        if floor < self.merged_until.saturating_add(MERGE_EVERY_NS) {
            return;
        }
        let from = self
            .off_cpu
            .partition_point(|s| s.ts_ns < self.merged_until);
        self.merge_estimated(from, |s| {
            s.function.is_none() && s.ts_ns.saturating_add(s.off_cpu_ns) < floor
        });
        self.merged_until = floor;
        self.compact(floor);
    }

    /// Settled samples (ended before `floor`: no call can claim them any more),
    /// walked or estimated, become one per (thread, stack, function) and
    /// COMPACT_NS of time. The window's off-CPU samples are then bounded by the
    /// distinct places threads block, not by how often they block: a worker's
    /// threads were walked ~200 times a second each at 200 calls/s, and the window
    /// held 150,000 samples (most of the agent's growth in a soak).
    fn compact(&mut self, floor: u64) {
        let upto = floor / COMPACT_NS * COMPACT_NS;
        while self.compacted_until < upto {
            let from = self
                .off_cpu
                .partition_point(|s| s.ts_ns < self.compacted_until);
            // Skip time without samples: start at the next sample's slice.
            let Some(next) = self.off_cpu.get(from) else {
                self.compacted_until = upto;
                break;
            };
            let start = (next.ts_ns / COMPACT_NS * COMPACT_NS).max(self.compacted_until);
            if start >= upto {
                self.compacted_until = upto;
                break;
            }
            let end = start + COMPACT_NS;
            let to = self.off_cpu.partition_point(|s| s.ts_ns < end);
            self.merge_range(from, to, |s| s.ts_ns.saturating_add(s.off_cpu_ns) < floor);
            self.compacted_until = end;
        }
    }
}

/// The time slice within which settled off-CPU samples are compacted: profiles
/// asked for a period see off-CPU time at this granularity.
pub const COMPACT_NS: u64 = 5_000_000_000;

/// How late a kernel record may reach the store (the ring buffer's per-CPU order,
/// the reader's batches): unattributed samples this close to the horizon still wait.
const LATE_NS: u64 = 100_000_000;
/// How often a worker's unclaimed estimated samples are merged.
const MERGE_EVERY_NS: u64 = 50_000_000;

/// A call that finished on a worker, for `SampleStore::call_finished`.
#[derive(Clone, Copy, Debug)]
pub struct FinishedCall<'a> {
    pub pid: u32,
    /// The worker's window of the call.
    pub start_ns: u64,
    pub end_ns: u64,
    pub function: &'a str,
    /// The thread that served it, when known (else every thread's blocking counts).
    pub serving_tid: Option<u32>,
    /// Waits of the serving thread that other threads ended.
    pub handoffs: &'a [Handoff],
    /// No call still in flight on the worker began before this: estimated samples
    /// older than it that no call took are merged.
    pub horizon_ns: u64,
}

/// Which samples to take.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub function: Option<String>,
    pub pool: Option<String>,
    /// CLOCK_MONOTONIC ns; samples at or after.
    pub since_ns: u64,
    /// CPU-clock or off-CPU samples.
    pub mode: ProfileMode,
}

pub struct SampleStore {
    workers: FastMap<u32, Worker>,
    window_ns: u64,
    max_per_worker: usize,
    pub total_samples: u64,
    pub attributed: u64,
    pub off_cpu_samples: u64,
    /// Unwalked episodes given their thread's last walked stack, and those that had
    /// none to take (a thread never walked blocking that way yet).
    pub off_cpu_estimated: u64,
    pub off_cpu_unwalked_dropped: u64,
}

impl SampleStore {
    pub fn new(window_ns: u64, max_per_worker: usize) -> Self {
        SampleStore {
            workers: FastMap::default(),
            window_ns,
            max_per_worker,
            total_samples: 0,
            attributed: 0,
            off_cpu_samples: 0,
            off_cpu_estimated: 0,
            off_cpu_unwalked_dropped: 0,
        }
    }

    pub fn add_worker(&mut self, pid: u32, pool: &str) {
        self.workers.entry(pid).or_default().pool = pool.to_string();
    }

    pub fn remove_worker(&mut self, pid: u32) {
        self.workers.remove(&pid);
    }

    /// (CPU samples, off-CPU samples) held now, over all workers.
    pub fn held(&self) -> (usize, usize) {
        self.workers.values().fold((0, 0), |(c, o), w| {
            (c + w.samples.len(), o + w.off_cpu.len())
        })
    }

    pub fn pool_of(&self, pid: u32) -> Option<&str> {
        self.workers.get(&pid).map(|w| w.pool.as_str())
    }

    pub fn push(&mut self, pid: u32, ts_ns: u64, stack: Stack) {
        let Some(w) = self.workers.get_mut(&pid) else {
            return;
        };
        self.total_samples += 1;
        w.samples.push_back(StoredSample {
            ts_ns,
            stack,
            function: None,
            off_cpu_ns: 0,
            episodes: 1,
            origin: Origin::Walked,
        });
        let oldest = ts_ns.saturating_sub(self.window_ns);
        while w
            .samples
            .front()
            .is_some_and(|s| s.ts_ns < oldest || w.samples.len() > self.max_per_worker)
        {
            w.samples.pop_front();
        }
    }

    /// An off-CPU sample: the thread left the CPU at `ts_ns` for `off_cpu_ns`, as
    /// `blocked` says. It belongs to a call already finished when that call's serving
    /// thread blocked during it.
    pub fn push_off_cpu(
        &mut self,
        pid: u32,
        ts_ns: u64,
        off_cpu_ns: u64,
        stack: Stack,
        blocked: BlockedIn,
    ) {
        let Some(w) = self.workers.get_mut(&pid) else {
            return;
        };
        self.off_cpu_samples += 1;
        if w.last_walked.len() >= MAX_LAST_WALKED {
            w.last_walked.clear();
        }
        w.last_walked.insert((stack.tid, blocked), stack.clone());
        w.insert_off_cpu(
            self.window_ns,
            self.max_per_worker,
            ts_ns,
            off_cpu_ns,
            stack,
            Origin::Walked,
        );
    }

    /// An episode off the CPU that the kernel did not walk (its per-thread rate limit):
    /// it weighs its time on the thread's last walked stack that blocked the same way
    /// (a thread that blocks often mostly blocks in the same place: an event loop's
    /// epoll_wait, a pool thread's wait for work). Without one it is dropped, counted.
    pub fn push_unwalked(
        &mut self,
        pid: u32,
        tid: u32,
        ts_ns: u64,
        off_cpu_ns: u64,
        blocked: BlockedIn,
    ) {
        let Some(w) = self.workers.get_mut(&pid) else {
            return;
        };
        let Some(stack) = w.last_walked.get(&(tid, blocked)).cloned() else {
            self.off_cpu_unwalked_dropped += 1;
            return;
        };
        self.off_cpu_estimated += 1;
        w.insert_off_cpu(
            self.window_ns,
            self.max_per_worker,
            ts_ns,
            off_cpu_ns,
            stack,
            Origin::Estimated,
        );
    }

    /// A call finished (see `FinishedCall`): its samples are marked with its function,
    /// and its CPU samples summarised (None when it had none). Off-CPU samples count
    /// when the serving thread (when known) blocked during the call, or a thread it
    /// handed a wait over to blocked during that wait, including those still to come.
    pub fn call_finished(&mut self, c: &FinishedCall) -> Option<CallProfile> {
        let FinishedCall {
            pid,
            start_ns,
            end_ns,
            function,
            serving_tid,
            handoffs,
            horizon_ns,
        } = *c;
        let w = self.workers.get_mut(&pid)?;
        let call = RecentCall::new(start_ns, end_ns, function, serving_tid, handoffs);
        let first = partition_recent(&w.off_cpu, |s| s.ts_ns < start_ns);
        for s in w.off_cpu.range_mut(first..) {
            if s.ts_ns > call.reach_ns {
                break;
            }
            if s.origin != Origin::Merged && call.holds(s.ts_ns, s.off_cpu_ns, s.stack.tid) {
                s.function = Some(call.function.clone());
            }
        }
        let own = &call.function;
        w.merge_estimated(first, |s| {
            s.function.as_ref().is_some_and(|f| Arc::ptr_eq(f, own))
        });
        w.merge_unclaimed(horizon_ns);
        let function = call.function.clone();
        if w.recent.len() >= RECENT_CALLS {
            w.recent.pop_front();
        }
        let at = partition_recent(&w.recent, |c| c.reach_ns <= call.reach_ns);
        w.recent.insert(at, call);
        let first = partition_recent(&w.samples, |s| s.ts_ns < start_ns);
        let mut n = 0u64;
        let mut frames: FastMap<&str, u64> = FastMap::default();
        let mut libs: FastMap<&str, u64> = FastMap::default();
        for s in w.samples.range_mut(first..) {
            if s.ts_ns > end_ns {
                break;
            }
            s.function = Some(function.clone());
        }
        for s in w.samples.range(first..) {
            if s.ts_ns > end_ns {
                break;
            }
            n += 1;
            *frames.entry(&s.stack.hot_frame).or_default() += 1;
            *libs.entry(&s.stack.library).or_default() += 1;
        }
        if n == 0 {
            return None;
        }
        self.attributed += n;
        let top = |m: FastMap<&str, u64>| {
            m.into_iter()
                .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(a.0)))
                .map(|(k, _)| k.to_string())
                .unwrap_or_default()
        };
        Some(CallProfile {
            python_samples: n,
            hot_frame: top(frames),
            hot_library: top(libs),
        })
    }

    /// Samples matching `f`, oldest first.
    pub fn select(&self, f: &Filter) -> Vec<(u32, &StoredSample)> {
        let mode = f.mode;
        let mut out: Vec<(u32, &StoredSample)> = self
            .workers
            .iter()
            .filter(|(_, w)| f.pool.as_ref().is_none_or(|p| *p == w.pool))
            .flat_map(|(pid, w)| {
                let samples = match mode {
                    ProfileMode::Cpu => &w.samples,
                    ProfileMode::OffCpu => &w.off_cpu,
                };
                samples.iter().map(move |s| (*pid, s))
            })
            .filter(|(_, s)| s.ts_ns >= f.since_ns)
            .filter(|(_, s)| {
                f.function
                    .as_ref()
                    .is_none_or(|want| s.function.as_deref() == Some(want.as_str()))
            })
            .collect();
        out.sort_by_key(|(_, s)| s.ts_ns);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A finished call that leaves unclaimed samples alone (horizon 0).
    pub(super) fn fin<'a>(
        pid: u32,
        start_ns: u64,
        end_ns: u64,
        function: &'a str,
        serving_tid: Option<u32>,
        handoffs: &'a [Handoff],
    ) -> FinishedCall<'a> {
        FinishedCall {
            pid,
            start_ns,
            end_ns,
            function,
            serving_tid,
            handoffs,
            horizon_ns: 0,
        }
    }
    use crate::profiler::stacks::Frame;

    fn stack(hot: &str, lib: &str) -> Stack {
        stack_of(1, hot, lib)
    }

    fn stack_of(tid: u32, hot: &str, lib: &str) -> Stack {
        Stack {
            tid,
            frames: vec![Arc::new(Frame::Native {
                name: hot.into(),
                library: lib.into(),
            })]
            .into(),
            hot_frame: hot.into(),
            library: lib.into(),
            truncated: false,
        }
    }

    #[test]
    fn calls_take_the_samples_of_their_window() {
        let mut st = SampleStore::new(10_000, 1000);
        st.add_worker(5, "default");
        for t in 0..10 {
            let (h, l) = if t < 7 {
                ("demo_hot.spin", "demo_hot")
            } else {
                ("dgemm", "numpy")
            };
            st.push(5, 100 + t, stack(h, l));
        }
        st.push(6, 100, stack("x", "y")); // not a worker: ignored
        let p = st
            .call_finished(&fin(5, 100, 109, "hot_path", None, &[]))
            .expect("samples");
        assert_eq!(p.python_samples, 10);
        assert_eq!(p.hot_frame, "demo_hot.spin");
        assert_eq!(p.hot_library, "demo_hot");
        assert!(st
            .call_finished(&fin(5, 200, 300, "other", None, &[]))
            .is_none());
        let f = Filter {
            function: Some("hot_path".into()),
            ..Default::default()
        };
        assert_eq!(st.select(&f).len(), 10);
        let f = Filter {
            pool: Some("gpu".into()),
            ..Default::default()
        };
        assert!(st.select(&f).is_empty());
    }

    #[test]
    fn the_window_is_bounded() {
        let mut st = SampleStore::new(100, 5);
        st.add_worker(1, "p");
        for t in 0..50 {
            st.push(1, 1000 + t, stack("a", "b"));
        }
        assert_eq!(st.select(&Filter::default()).len(), 5);
    }
}

#[cfg(test)]
mod off_cpu_tests {
    use super::tests::fin;
    use super::*;
    use crate::profiler::stacks::Frame;

    fn stack(tid: u32, leaf: &str) -> Stack {
        Stack {
            tid,
            frames: vec![Arc::new(Frame::Native {
                name: leaf.into(),
                library: "kernel".into(),
            })]
            .into(),
            hot_frame: leaf.into(),
            library: "kernel".into(),
            truncated: false,
        }
    }

    const READ: BlockedIn = BlockedIn {
        syscall: 0,
        state: 1,
    };
    const FUTEX: BlockedIn = BlockedIn {
        syscall: 202,
        state: 1,
    };

    fn off(f: Option<&str>) -> Filter {
        Filter {
            function: f.map(String::from),
            mode: ProfileMode::OffCpu,
            ..Default::default()
        }
    }

    #[test]
    fn off_cpu_samples_stay_apart_from_the_calls_cpu_summary() {
        let mut st = SampleStore::new(1_000_000, 1000);
        st.add_worker(5, "default");
        st.push(5, 100, stack(7, "spin"));
        // The serving thread (7) blocked in the call; the poller (8) too, not its.
        st.push_off_cpu(5, 110, 5_000, stack(7, "[off-cpu: read]"), READ);
        st.push_off_cpu(5, 120, 9_000, stack(8, "[off-cpu: epoll_wait]"), READ);
        let p = st
            .call_finished(&fin(5, 100, 200, "io", Some(7), &[]))
            .expect("cpu");
        assert_eq!(
            p.python_samples, 1,
            "off-CPU samples are not python_samples"
        );
        // Sent when the thread ran again, after the call ended; older than the last.
        st.push_off_cpu(5, 150, 40, stack(7, "[off-cpu: write]"), READ);
        st.push_off_cpu(5, 300, 40, stack(7, "[off-cpu: futex]"), READ);
        let io = st.select(&off(Some("io")));
        let got: Vec<(u64, u64)> = io.iter().map(|(_, s)| (s.ts_ns, s.weight())).collect();
        assert_eq!(got, [(110, 5_000), (150, 40)]);
        let all: Vec<u64> = st.select(&off(None)).iter().map(|(_, s)| s.ts_ns).collect();
        assert_eq!(all, [110, 120, 150, 300], "sorted by when they blocked");
        assert_eq!(st.select(&Filter::default()).len(), 1, "CPU samples only");
        assert_eq!(st.off_cpu_samples, 4);
    }

    /// The handler (7) waited on a lock over [120, 180] while a pool thread (9) ran
    /// the tool, which blocked in a read: that read is the call's, the handler's own
    /// wait is not (it would count the time twice), its other waits still are.
    #[test]
    fn a_wait_handed_over_counts_the_helpers_blocking_instead() {
        let mut st = SampleStore::new(1_000_000, 1000);
        st.add_worker(5, "default");
        st.push_off_cpu(5, 110, 8, stack(7, "[off-cpu: read]"), READ);
        st.push_off_cpu(5, 120, 60, stack(7, "[off-cpu: futex]"), READ);
        st.push_off_cpu(5, 130, 45, stack(9, "[off-cpu: read]"), READ);
        // Blocked just before the handler began to wait, until inside the wait.
        st.push_off_cpu(5, 118, 10, stack(9, "[off-cpu: openat]"), READ);
        st.push_off_cpu(5, 190, 5, stack(9, "[off-cpu: futex]"), READ); // idle again
        let handoffs = [Handoff {
            tid: 9,
            from_ns: 120,
            to_ns: 180,
        }];
        st.call_finished(&fin(5, 100, 200, "offloaded", Some(7), &handoffs));
        // Late: sent when the pool thread ran again.
        st.push_off_cpu(5, 140, 30, stack(9, "[off-cpu: write]"), READ);
        let got: Vec<(u32, u64)> = st
            .select(&off(Some("offloaded")))
            .iter()
            .map(|(_, s)| (s.stack.tid, s.ts_ns))
            .collect();
        assert_eq!(got, [(7, 110), (9, 118), (9, 130), (9, 140)]);
    }

    /// Episodes the kernel did not walk take the thread's last walked stack that
    /// blocked the same way; without one they are dropped and counted.
    #[test]
    fn unwalked_episodes_weigh_on_the_last_walked_stack_that_blocked_the_same_way() {
        let mut st = SampleStore::new(1_000_000, 1000);
        st.add_worker(5, "default");
        st.push_unwalked(5, 7, 100, 10, READ); // nothing walked yet
        st.push_off_cpu(5, 110, 20, stack(7, "[off-cpu: read]"), READ);
        st.push_off_cpu(5, 140, 5, stack(7, "[off-cpu: futex]"), FUTEX);
        st.push_unwalked(5, 7, 150, 30, READ);
        st.push_unwalked(5, 7, 190, 7, FUTEX);
        st.push_unwalked(5, 8, 200, 9, READ); // another thread, never walked
        st.call_finished(&fin(5, 100, 300, "io", Some(7), &[]));
        let got: Vec<(u64, String, u64)> = st
            .select(&off(Some("io")))
            .iter()
            .map(|(_, s)| (s.ts_ns, s.stack.hot_frame.to_string(), s.weight()))
            .collect();
        assert_eq!(
            got,
            [
                (110, "[off-cpu: read]".to_string(), 20),
                (140, "[off-cpu: futex]".to_string(), 5),
                (150, "[off-cpu: read]".to_string(), 30),
                (190, "[off-cpu: futex]".to_string(), 7),
            ]
        );
        assert_eq!((st.off_cpu_estimated, st.off_cpu_unwalked_dropped), (2, 2));
    }

    /// A call's estimated episodes of one thread and stack become one sample with
    /// their summed time; walked samples, other stacks and other calls stay apart.
    #[test]
    fn a_calls_estimated_episodes_merge_into_one_sample_per_thread_and_stack() {
        let mut st = SampleStore::new(1_000_000, 1000);
        st.add_worker(5, "default");
        st.push_off_cpu(5, 100, 20, stack(7, "[off-cpu: read]"), READ);
        st.push_off_cpu(5, 105, 3, stack(7, "[off-cpu: futex]"), FUTEX);
        for t in [110, 120, 130] {
            st.push_unwalked(5, 7, t, 10, READ);
        }
        st.push_unwalked(5, 7, 125, 4, FUTEX);
        st.push_unwalked(5, 7, 135, 4, FUTEX);
        st.push_off_cpu(5, 140, 30, stack(7, "[off-cpu: read]"), READ);
        st.push_unwalked(5, 7, 150, 10, READ);
        st.push_unwalked(5, 7, 250, 10, READ); // the next call's
        st.call_finished(&fin(5, 100, 200, "io", Some(7), &[]));
        let got: Vec<(u64, String, u64, Origin)> = st
            .select(&off(Some("io")))
            .iter()
            .map(|(_, s)| (s.ts_ns, s.stack.hot_frame.to_string(), s.weight(), s.origin))
            .collect();
        let (read, futex) = (
            "[off-cpu: read]".to_string(),
            "[off-cpu: futex]".to_string(),
        );
        assert_eq!(
            got,
            [
                (100, read.clone(), 20, Origin::Walked),
                (105, futex.clone(), 3, Origin::Walked),
                (110, read.clone(), 30, Origin::Merged),
                (125, futex, 8, Origin::Merged),
                (140, read.clone(), 30, Origin::Walked),
                // Walked at 140: a stack of its own, though it looks the same.
                (150, read.clone(), 10, Origin::Estimated),
            ]
        );
        st.push_unwalked(5, 7, 260, 10, READ);
        st.call_finished(&fin(5, 240, 300, "io", Some(7), &[]));
        let total: u64 = st
            .select(&off(Some("io")))
            .iter()
            .map(|(_, s)| s.weight())
            .sum();
        assert_eq!(
            total,
            20 + 3 + 30 + 8 + 30 + 10 + 20,
            "no time lost in merging"
        );
        assert_eq!(st.select(&off(None)).len(), 7);
    }

    /// Estimated episodes no call took and none still in flight can take (they ended
    /// before the horizon, less the records' lateness) become one sample per thread
    /// and stack; newer ones wait, and a merged sample is not claimed afterwards.
    #[test]
    fn unclaimed_estimated_episodes_merge_once_no_call_can_take_them() {
        const MS: u64 = 1_000_000;
        let mut st = SampleStore::new(10_000 * MS, 100_000);
        st.add_worker(5, "default");
        st.push_off_cpu(5, MS, 10, stack(8, "[off-cpu: futex]"), READ);
        for i in 0..100 {
            st.push_unwalked(5, 8, 2 * MS + i * MS, 1_000, READ); // an idle pool thread
        }
        let call = |start_ns, end_ns, horizon_ns| FinishedCall {
            horizon_ns,
            ..fin(5, start_ns, end_ns, "io", Some(7), &[])
        };
        // In flight since 150 ms: what ended before 50 ms is settled.
        st.call_finished(&call(100 * MS, 110 * MS, 150 * MS));
        let got: Vec<(u64, u64, Origin)> = st
            .select(&off(None))
            .iter()
            .map(|(_, s)| (s.ts_ns, s.weight(), s.origin))
            .collect();
        assert_eq!(got.len(), 1 + 1 + 52, "{got:?}");
        assert_eq!(got[1], (2 * MS, 48 * 1_000, Origin::Merged));
        assert_eq!(got[2], (50 * MS, 1_000, Origin::Estimated));
        // A call over the merged sample's time does not take it; the newer ones it may.
        st.call_finished(&FinishedCall {
            serving_tid: Some(8),
            ..call(MS, 120 * MS, 0)
        });
        let io: u64 = st
            .select(&off(Some("io")))
            .iter()
            .map(|(_, s)| s.weight())
            .sum();
        assert_eq!(io, 10 + 52 * 1_000);
        let all: u64 = st.select(&off(None)).iter().map(|(_, s)| s.weight()).sum();
        assert_eq!(all, 10 + 100 * 1_000, "no time lost in merging");
    }

    /// Settled samples, walked or estimated, become one per thread, stack, function
    /// and 5 s slice, with every episode's time; what a call may still claim waits.
    #[test]
    fn settled_samples_compact_per_thread_stack_function_and_slice() {
        const S: u64 = 1_000_000_000;
        let mut st = SampleStore::new(600 * S, 100_000);
        st.add_worker(5, "default");
        let (epoll, futex) = (stack(7, "[off-cpu: epoll]"), stack(7, "[off-cpu: futex]"));
        let mut t = S;
        // 20 s of an event loop blocking 100 times a second, and a lock now and then.
        while t < 21 * S {
            st.push_off_cpu(5, t, 1_000, epoll.clone(), READ);
            if t.is_multiple_of(S) {
                st.push_off_cpu(5, t + 1, 500, futex.clone(), FUTEX);
            }
            t += S / 100;
        }
        // One call in the first slice claims its part; calls in flight since 17.5 s.
        st.call_finished(&FinishedCall {
            horizon_ns: 17_500_000_000,
            ..fin(5, 2 * S, 3 * S, "io", Some(7), &[])
        });
        let got = st.select(&off(None));
        // Slices 0-5, 5-10, 10-15 s compacted (17.4 s is the floor): (epoll, futex)
        // each, and the call's own in 0-5 s; the rest (15-21 s) as it came.
        let before_15: Vec<_> = got.iter().filter(|(_, s)| s.ts_ns < 15 * S).collect();
        assert_eq!(before_15.len(), 2 + 2 + 2 + 2, "{before_15:?}");
        let io: Vec<_> = st.select(&off(Some("io")));
        assert_eq!(io.len(), 2);
        assert_eq!(
            io.iter().map(|(_, s)| s.episodes).sum::<u64>(),
            100 + 1 + 1,
            "the call's episodes: 2.00-3.00 s inclusive"
        );
        let total: u64 = got.iter().map(|(_, s)| s.weight()).sum();
        let episodes: u64 = got.iter().map(|(_, s)| s.episodes).sum();
        assert_eq!(episodes, 2000 + 20);
        assert_eq!(total, 2000 * 1_000 + 20 * 500, "no time lost in compacting");
        assert!(got.len() < 8 + 610, "{}", got.len());
    }

    #[test]
    fn without_a_serving_thread_every_thread_counts() {
        let mut st = SampleStore::new(1_000_000, 1000);
        st.add_worker(5, "default");
        st.push_off_cpu(5, 110, 5, stack(7, "a"), READ);
        st.push_off_cpu(5, 120, 5, stack(8, "b"), READ);
        assert!(st
            .call_finished(&fin(5, 100, 200, "io", None, &[]))
            .is_none());
        assert_eq!(st.select(&off(Some("io"))).len(), 2);
    }

    #[test]
    fn the_off_cpu_window_is_bounded() {
        let mut st = SampleStore::new(100, 5);
        st.add_worker(1, "p");
        for t in 0..50 {
            st.push_off_cpu(1, 1000 + t, 3, stack(1, "a"), READ);
        }
        st.push_off_cpu(1, 10, 3, stack(1, "old"), READ);
        let got = st.select(&off(None));
        assert_eq!(got.len(), 5);
        assert!(got.iter().all(|(_, s)| s.ts_ns >= 1045));
    }

    #[test]
    fn partition_recent_is_partition_point() {
        let d: VecDeque<u64> = (0..200u64).map(|i| i * 3 / 2).collect();
        for x in [0, 1, 5, 100, 250, 290, 298, 299, 300, 1_000] {
            for strict in [true, false] {
                let pred = |v: &u64| if strict { *v < x } else { *v <= x };
                assert_eq!(
                    partition_recent(&d, pred),
                    d.partition_point(pred),
                    "{x} {strict}"
                );
            }
        }
        assert_eq!(partition_recent(&VecDeque::<u64>::new(), |_| true), 0);
    }
}
