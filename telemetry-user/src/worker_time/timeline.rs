//! Per-thread scheduling timelines: a thread is on a CPU, runnable (waiting for one),
//! or blocked for a reason, from one scheduling edge to the next.
use crate::fast_hash::FastMap;
use std::collections::VecDeque;
use std::ops::Range;
use std::path::PathBuf;

use crate::kernel::{SchedEdge, SchedRecord};

/// Why a thread is off the CPU (not runnable).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WaitReason {
    /// read/write/recv/send/poll/epoll/select with fds, accept, connect, disk (D state).
    Io,
    /// The futex of the interpreter's GIL.
    Gil,
    /// Any other futex, flock, semaphores.
    Lock,
    /// nanosleep/clock_nanosleep, pause, waits on children or signals.
    Sleep,
    /// An ioctl on a GPU device fd.
    Gpu,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadState {
    OnCpu,
    Runnable,
    Blocked(WaitReason),
    /// The split's probes were paused (sampling): the state is not known.
    Unwatched,
}

/// A state and when it began.
#[derive(Clone, Copy, Debug)]
pub struct Segment {
    pub start: u64,
    pub state: ThreadState,
}

/// Another thread of the same process made this one runnable.
#[derive(Clone, Copy, Debug)]
pub struct Wake {
    pub ts: u64,
    /// The waker.
    pub other: u32,
}

/// Segments per thread at most (a thread switching 10,000 times a second keeps ~2 s).
const MAX_SEGMENTS: usize = 20_000;
/// Threads followed at most; the least recently active is dropped beyond.
const MAX_THREADS: usize = 8192;

#[derive(Default)]
pub struct ThreadLine {
    pub tgid: u32,
    pub segments: VecDeque<Segment>,
    /// Same-process threads that woke this one.
    pub woken_by: VecDeque<Wake>,
    last_ts: u64,
}

impl ThreadLine {
    fn push(&mut self, start: u64, state: ThreadState) {
        if let Some(last) = self.segments.back() {
            if last.state == state || start < last.start {
                return;
            }
        }
        if self.segments.len() >= MAX_SEGMENTS {
            self.segments.pop_front();
        }
        self.segments.push_back(Segment { start, state });
    }

    fn push_wake(list: &mut VecDeque<Wake>, w: Wake) {
        if list.len() >= MAX_SEGMENTS {
            list.pop_front();
        }
        list.push_back(w);
    }

    /// The segments overlapping `[a, b)`, clipped: (start, end, state). None when the
    /// timeline does not reach back to `a` (the thread's state at `a` is unknown) or
    /// the split's probes were paused in it.
    pub fn clipped(&self, a: u64, b: u64) -> Option<Vec<(u64, u64, ThreadState)>> {
        let first = self.segments.front()?;
        if first.start > a {
            return None;
        }
        // The last segment starting at or before `a`.
        let i = self
            .segments
            .partition_point(|s| s.start <= a)
            .saturating_sub(1);
        let mut out = Vec::new();
        for (k, s) in self.segments.iter().enumerate().skip(i) {
            if s.start >= b {
                break;
            }
            if s.state == ThreadState::Unwatched {
                return None;
            }
            let end = self.segments.get(k + 1).map_or(b, |n| n.start.min(b));
            let start = s.start.max(a);
            if end > start {
                out.push((start, end, s.state));
            }
        }
        Some(out)
    }

    /// Like `clipped`, but from when the thread was first seen if that lies inside
    /// the window (a thread started for the call, e.g. a pool's new worker thread):
    /// the segments from `max(a, first seen)`, None when it was first seen at `b` or
    /// later.
    pub fn clipped_since_seen(&self, a: u64, b: u64) -> Option<Vec<(u64, u64, ThreadState)>> {
        let first = self.segments.front()?.start;
        if first >= b {
            return None;
        }
        self.clipped(a.max(first), b)
    }

    /// When the thread was first seen (its oldest segment kept).
    pub fn first_seen(&self) -> Option<u64> {
        self.segments.front().map(|s| s.start)
    }

    /// The same-process thread that woke this one in `(from, to]`, the earliest.
    pub fn woken_by_in(&self, from: u64, to: u64) -> Option<u32> {
        self.woken_by
            .iter()
            .find(|w| w.ts > from && w.ts <= to)
            .map(|w| w.other)
    }

    fn prune(&mut self, floor: u64) {
        // Keep the segment in force at `floor`.
        while self.segments.len() > 1 && self.segments[1].start <= floor {
            self.segments.pop_front();
        }
        while self.woken_by.front().is_some_and(|w| w.ts < floor) {
            self.woken_by.pop_front();
        }
        shrink_idle(&mut self.segments);
        shrink_idle(&mut self.woken_by);
    }
}

/// Gives back the room a burst left in `q` (a deque keeps its largest size).
pub(crate) fn shrink_idle<T>(q: &mut VecDeque<T>) {
    if q.capacity() > 1024 && q.len() < q.capacity() / 4 {
        q.shrink_to(q.len() * 2);
    }
}

/// What classifies a process's waits.
#[derive(Clone, Debug, Default)]
pub struct ProcessWaits {
    /// Addresses of the interpreter's GIL (a futex there is a GIL wait).
    pub gil: Option<Range<u64>>,
    /// fds open on GPU devices (`/dev/nvidia*`): an ioctl on one is a GPU wait.
    pub gpu_fds: Vec<u64>,
    /// The process's fd directory (`/proc/PID/fd`). A framework opens the GPU when
    /// the first call uses it, after the worker was planned: the fd of an ioctl wait
    /// is looked up there, at most once per `FD_RECHECK_NS` (fds are reused).
    pub fd_dir: Option<PathBuf>,
    /// fd -> when it was last looked up (bounded by `MAX_FD_CHECKS`).
    pub(super) fd_checked: FastMap<u64, u64>,
}

/// How long an fd's lookup holds (an fd closed and reopened on another file).
const FD_RECHECK_NS: u64 = 10_000_000_000;
/// fds whose lookup is remembered per process.
const MAX_FD_CHECKS: usize = 1024;

impl ProcessWaits {
    /// Looks up `fd` (an ioctl wait's) unless done lately, and keeps `gpu_fds` current.
    fn recheck_fd(&mut self, fd: u64, now_ns: u64) {
        let Some(dir) = &self.fd_dir else {
            return;
        };
        if self
            .fd_checked
            .get(&fd)
            .is_some_and(|&t| now_ns.saturating_sub(t) < FD_RECHECK_NS)
        {
            return;
        }
        if self.fd_checked.len() >= MAX_FD_CHECKS {
            self.fd_checked.clear();
        }
        self.fd_checked.insert(fd, now_ns);
        let is_gpu = std::fs::read_link(dir.join(fd.to_string()))
            .is_ok_and(|t| super::targets::is_gpu_device(&t.to_string_lossy()));
        let known = self.gpu_fds.iter().position(|&f| f == fd);
        match (is_gpu, known) {
            (true, None) => self.gpu_fds.push(fd),
            (false, Some(i)) => {
                self.gpu_fds.swap_remove(i);
            }
            _ => {}
        }
    }
}

#[derive(Default)]
pub struct Timelines {
    threads: FastMap<u32, ThreadLine>,
    processes: FastMap<u32, ProcessWaits>,
}

// x86_64 syscall numbers (arch/x86/entry/syscalls/syscall_64.tbl).
const SYS_IOCTL: u32 = 16;
const SYS_SELECT: u32 = 23;
const SYS_PSELECT6: u32 = 270;
const SYS_FUTEX: u32 = 202;
const SYS_FUTEX_WAITV: u32 = 449;
const IO_SYSCALLS: &[u32] = &[
    0, 1, 2, 7, 17, 18, 19, 20, 40, 42, 43, 44, 45, 46, 47, 74, 75, 208, 232, 257, 271, 275, 276,
    277, 281, 288, 295, 296, 299, 307, 326, 327, 328, 333, 426, 441,
];
const LOCK_SYSCALLS: &[u32] = &[65, 73, 220];
const SLEEP_SYSCALLS: &[u32] = &[34, 35, 61, 128, 130, 230, 247];
/// TASK_UNINTERRUPTIBLE.
const STATE_UNINTERRUPTIBLE: u32 = 2;

impl Timelines {
    pub fn set_process(&mut self, tgid: u32, waits: ProcessWaits) {
        self.processes.insert(tgid, waits);
    }

    pub fn process(&self, tgid: u32) -> Option<&ProcessWaits> {
        self.processes.get(&tgid)
    }

    pub fn forget_process(&mut self, tgid: u32) {
        self.processes.remove(&tgid);
        self.threads.retain(|_, t| t.tgid != tgid);
    }

    pub fn thread(&self, tid: u32) -> Option<&ThreadLine> {
        self.threads.get(&tid)
    }

    pub fn thread_count(&self) -> usize {
        self.threads.len()
    }

    /// Why a thread that left the CPU in `syscall` (arg0 its first argument) waits.
    pub fn classify(&self, tgid: u32, state: u32, syscall: Option<u32>, arg0: u64) -> WaitReason {
        let waits = self.processes.get(&tgid);
        let Some(nr) = syscall else {
            // Not in a syscall: a page fault (disk) when uninterruptible.
            return if state & STATE_UNINTERRUPTIBLE != 0 {
                WaitReason::Io
            } else {
                WaitReason::Sleep
            };
        };
        match nr {
            SYS_FUTEX | SYS_FUTEX_WAITV => {
                let gil = waits.and_then(|w| w.gil.as_ref());
                if gil.is_some_and(|r| r.contains(&arg0)) {
                    WaitReason::Gil
                } else {
                    WaitReason::Lock
                }
            }
            SYS_IOCTL if waits.is_some_and(|w| w.gpu_fds.contains(&arg0)) => WaitReason::Gpu,
            // select(0, NULL, NULL, NULL, &timeout): Python's time.sleep before 3.11.
            SYS_SELECT | SYS_PSELECT6 if arg0 == 0 => WaitReason::Sleep,
            n if IO_SYSCALLS.contains(&n) || n == SYS_IOCTL || n == SYS_SELECT => WaitReason::Io,
            n if n == SYS_PSELECT6 => WaitReason::Io,
            n if LOCK_SYSCALLS.contains(&n) => WaitReason::Lock,
            n if SLEEP_SYSCALLS.contains(&n) => WaitReason::Sleep,
            _ if state & STATE_UNINTERRUPTIBLE != 0 => WaitReason::Io,
            _ => WaitReason::Sleep,
        }
    }

    pub fn push(&mut self, rec: &SchedRecord) {
        if !self.threads.contains_key(&rec.tid) && self.threads.len() >= MAX_THREADS {
            self.evict_idlest();
        }
        if let SchedEdge::Out {
            syscall: Some(SYS_IOCTL),
            arg0,
            ..
        } = rec.edge
        {
            if let Some(w) = self.processes.get_mut(&rec.tgid) {
                w.recheck_fd(arg0, rec.ts_ns);
            }
        }
        let state = match rec.edge {
            SchedEdge::In => ThreadState::OnCpu,
            SchedEdge::Out { state: 0, .. } => ThreadState::Runnable,
            SchedEdge::Out {
                state,
                syscall,
                arg0,
            } => ThreadState::Blocked(self.classify(rec.tgid, state, syscall, arg0)),
            SchedEdge::Wake {
                waker_tgid,
                waker_tid,
                ..
            } => {
                if waker_tgid == rec.tgid && waker_tid != rec.tid {
                    let t = self.threads.entry(rec.tid).or_default();
                    ThreadLine::push_wake(
                        &mut t.woken_by,
                        Wake {
                            ts: rec.ts_ns,
                            other: waker_tid,
                        },
                    );
                }
                ThreadState::Runnable
            }
        };
        let line = self.threads.entry(rec.tid).or_default();
        line.tgid = rec.tgid;
        line.last_ts = rec.ts_ns;
        // A wakeup of a thread that is not blocked (already runnable) changes nothing.
        if matches!(rec.edge, SchedEdge::Wake { .. })
            && !matches!(
                line.segments.back().map(|s| s.state),
                Some(ThreadState::Blocked(_))
            )
        {
            return;
        }
        line.push(rec.ts_ns, state);
    }

    /// The split's probes paused at `from_ns` and record again now: every thread's
    /// state is unknown from `from_ns` until its next record.
    pub fn mark_unwatched(&mut self, from_ns: u64) {
        for t in self.threads.values_mut() {
            while t.segments.back().is_some_and(|s| s.start >= from_ns) {
                t.segments.pop_back();
            }
            t.segments.push_back(Segment {
                start: from_ns,
                state: ThreadState::Unwatched,
            });
        }
    }

    pub fn prune(&mut self, floor: u64) {
        // Threads are dropped with their process (or as the idlest beyond
        // MAX_THREADS): a thread blocked for longer than the horizon still has a state.
        for t in self.threads.values_mut() {
            t.prune(floor);
        }
    }

    fn evict_idlest(&mut self) {
        if let Some((&tid, _)) = self.threads.iter().min_by_key(|(_, t)| t.last_ts) {
            self.threads.remove(&tid);
        }
    }
}
