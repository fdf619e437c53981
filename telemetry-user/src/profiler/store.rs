//! Resolved samples kept for a window, per worker; per-call attribution (the calls a
//! worker served and when) and per-(pool, function) profiles read from it. CPU-clock
//! samples and off-CPU samples are kept apart: the call summaries count CPU samples
//! only.
use super::offcpu::ProfileMode;
use super::stacks::Stack;
use crate::events::Handoff;
use std::collections::{HashMap, VecDeque};

/// A sample as stored: when, which worker, and its stack.
#[derive(Clone, Debug)]
pub struct StoredSample {
    /// CPU samples: when taken; off-CPU samples: when the thread left the CPU.
    pub ts_ns: u64,
    pub stack: Stack,
    /// The call it fell in, once that call finished: (function, call's pool).
    pub function: Option<String>,
    /// Off-CPU samples: the time until the thread ran again (0 for CPU samples).
    pub off_cpu_ns: u64,
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
    function: String,
    serving_tid: Option<u32>,
    handoffs: Vec<Handoff>,
}

impl RecentCall {
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
    recent: VecDeque<RecentCall>,
    /// The last walked off-CPU stack of each (thread, how it blocked): the stack given
    /// to the episodes the kernel's rate limit did not walk.
    last_walked: HashMap<(u32, BlockedIn), Stack>,
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
    ) {
        let function = self
            .recent
            .iter()
            .rev()
            .find(|c| c.holds(ts_ns, off_cpu_ns, stack.tid))
            .map(|c| c.function.clone());
        let at = self.off_cpu.partition_point(|s| s.ts_ns <= ts_ns);
        self.off_cpu.insert(
            at,
            StoredSample {
                ts_ns,
                stack,
                function,
                off_cpu_ns: off_cpu_ns.max(1),
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
    workers: HashMap<u32, Worker>,
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
            workers: HashMap::new(),
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
        );
    }

    /// A call of `function` ran on worker `pid` over [start_ns, end_ns]: its samples
    /// are marked with the function, and its CPU samples summarised (None when it had
    /// none). Off-CPU samples count when the serving thread (when known) blocked
    /// during the call, or a thread it handed a wait over to (`handoffs`) blocked
    /// during that wait, including those still to come.
    pub fn call_finished(
        &mut self,
        pid: u32,
        start_ns: u64,
        end_ns: u64,
        function: &str,
        serving_tid: Option<u32>,
        handoffs: &[Handoff],
    ) -> Option<CallProfile> {
        let w = self.workers.get_mut(&pid)?;
        let call = RecentCall {
            start_ns,
            end_ns,
            function: function.to_string(),
            serving_tid,
            handoffs: handoffs.to_vec(),
        };
        let first = w.off_cpu.partition_point(|s| s.ts_ns < start_ns);
        for s in w.off_cpu.range_mut(first..) {
            if s.ts_ns > end_ns {
                break;
            }
            if call.holds(s.ts_ns, s.off_cpu_ns, s.stack.tid) {
                s.function = Some(function.to_string());
            }
        }
        if w.recent.len() >= RECENT_CALLS {
            w.recent.pop_front();
        }
        w.recent.push_back(call);
        let first = w.samples.partition_point(|s| s.ts_ns < start_ns);
        let mut n = 0u64;
        let mut frames: HashMap<&str, u64> = HashMap::new();
        let mut libs: HashMap<&str, u64> = HashMap::new();
        for s in w.samples.range_mut(first..) {
            if s.ts_ns > end_ns {
                break;
            }
            s.function = Some(function.to_string());
        }
        for s in w.samples.range(first..) {
            if s.ts_ns > end_ns {
                break;
            }
            n += 1;
            *frames.entry(s.stack.hot_frame.as_str()).or_default() += 1;
            *libs.entry(s.stack.library.as_str()).or_default() += 1;
        }
        if n == 0 {
            return None;
        }
        self.attributed += n;
        let top = |m: HashMap<&str, u64>| {
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
    use crate::profiler::stacks::Frame;

    fn stack(hot: &str, lib: &str) -> Stack {
        stack_of(1, hot, lib)
    }

    fn stack_of(tid: u32, hot: &str, lib: &str) -> Stack {
        Stack {
            tid,
            frames: vec![Frame::Native {
                name: hot.into(),
                library: lib.into(),
            }]
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
            .call_finished(5, 100, 109, "hot_path", None, &[])
            .expect("samples");
        assert_eq!(p.python_samples, 10);
        assert_eq!(p.hot_frame, "demo_hot.spin");
        assert_eq!(p.hot_library, "demo_hot");
        assert!(st.call_finished(5, 200, 300, "other", None, &[]).is_none());
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
    use super::*;
    use crate::profiler::stacks::Frame;

    fn stack(tid: u32, leaf: &str) -> Stack {
        Stack {
            tid,
            frames: vec![Frame::Native {
                name: leaf.into(),
                library: "kernel".into(),
            }]
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
            .call_finished(5, 100, 200, "io", Some(7), &[])
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
        st.call_finished(5, 100, 200, "offloaded", Some(7), &handoffs);
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
        const FUTEX: BlockedIn = BlockedIn {
            syscall: 202,
            state: 1,
        };
        let mut st = SampleStore::new(1_000_000, 1000);
        st.add_worker(5, "default");
        st.push_unwalked(5, 7, 100, 10, READ); // nothing walked yet
        st.push_off_cpu(5, 110, 20, stack(7, "[off-cpu: read]"), READ);
        st.push_off_cpu(5, 140, 5, stack(7, "[off-cpu: futex]"), FUTEX);
        st.push_unwalked(5, 7, 150, 30, READ);
        st.push_unwalked(5, 7, 190, 7, FUTEX);
        st.push_unwalked(5, 8, 200, 9, READ); // another thread, never walked
        st.call_finished(5, 100, 300, "io", Some(7), &[]);
        let got: Vec<(u64, String, u64)> = st
            .select(&off(Some("io")))
            .iter()
            .map(|(_, s)| (s.ts_ns, s.stack.hot_frame.clone(), s.weight()))
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

    #[test]
    fn without_a_serving_thread_every_thread_counts() {
        let mut st = SampleStore::new(1_000_000, 1000);
        st.add_worker(5, "default");
        st.push_off_cpu(5, 110, 5, stack(7, "a"), READ);
        st.push_off_cpu(5, 120, 5, stack(8, "b"), READ);
        assert!(st.call_finished(5, 100, 200, "io", None, &[]).is_none());
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
}
