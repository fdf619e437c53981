//! Scheduling of sched-watched threads (the Python workers): when each leaves the CPU
//! and why (its task state and the syscall it blocks in), when it is made runnable and
//! by whom, and when it gets the CPU back. The kernel joins these three edges in a
//! per-thread map and sends one `SchedSlice` per off-CPU episode, when the thread runs
//! again; user space turns them into each call's on-CPU, runqueue and off-CPU-by-reason
//! split (worker_time).
//!
//! Where the profiler watches the process too (`PY_PROCS`) and off-CPU sampling is on,
//! a thread that blocks also has its stack walked at the switch (it is still `current`
//! there), and the sample is sent with its blocked time when it runs again.
//!
//! The miss path runs on every context switch and wakeup of the host, so it is kept to
//! helper-free bitmap tests (SCHED_PIDS is an array, its lookup is inlined) plus one
//! kernel read of the next task's tgid; the clock is read only on a hit. While the
//! split gate is paused (SPLIT_GATE, the agent's sampling above a call rate) the agent
//! detaches both programs; a run that races the detach returns after one inlined
//! array lookup.
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel},
    macros::{map, raw_tracepoint},
    maps::{LruHashMap, PerCpuArray},
    programs::RawTracePointContext,
};
use telemetry_common::{
    PySample, RecordKind, SchedSlice, MAX_OFF_CPU_PENDING, MAX_SCHED_THREADS, NO_SYSCALL,
    OFF_CPU_BURST, PROBE_SCHED_SWITCH, PROBE_SCHED_WAKE, PSTAT_OFF_CPU_SAMPLES,
    PSTAT_OFF_CPU_SKIPPED, PSTAT_RINGBUF_DROPS, SAMPLE_NO_TSTATE, SAMPLE_OFF_CPU, SLICE_WALKED,
    STAT_EVENTS, STAT_MAP_FULL, STAT_READ_ERRORS, STAT_RINGBUF_DROPS,
};

use crate::maps::{
    events_flags, regs_arg_offsets, regs_syscall_offset, saved_reg, saved_regs, split_generation,
    stat_add, task_pid_offset, task_tgid_offset, BPF_RB_NO_WAKEUP, EVENTS, SCHED_PIDS,
};
use crate::profile::{fill_sample, pstat, PROFILE_EVENTS};
use crate::pystack::PY_PROCS;

/// Where a watched thread is in its current off-CPU episode (kernel-private).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SchedThread {
    /// Left the CPU; 0 while it runs.
    out_ns: u64,
    /// Made runnable; 0 while blocked.
    wake_ns: u64,
    arg0: u64,
    /// Off-CPU walks: the rate limit's theoretical arrival time (GCRA).
    walk_tat_ns: u64,
    syscall: i32,
    state: u32,
    waker_tid: u32,
    /// An off-CPU sample of this episode waits in OFF_CPU_PENDING.
    walk_pending: u32,
    /// The split gate's generation when this state was written: from an older one, the
    /// thread ran unseen while the gate was paused, and its state is stale.
    generation: u32,
}

const IDLE_THREAD: SchedThread = SchedThread {
    out_ns: 0,
    wake_ns: 0,
    arg0: 0,
    walk_tat_ns: 0,
    syscall: NO_SYSCALL,
    state: 0,
    waker_tid: 0,
    walk_pending: 0,
    generation: 0,
};

#[map]
pub static SCHED_THREADS: LruHashMap<u32, SchedThread> =
    LruHashMap::with_max_entries(MAX_SCHED_THREADS, 0);

/// Off-CPU samples of blocked threads, sent when they run again.
#[map]
pub static OFF_CPU_PENDING: LruHashMap<u32, PySample> =
    LruHashMap::with_max_entries(MAX_OFF_CPU_PENDING, 0);

/// Room to build one off-CPU sample (too large for the BPF stack).
#[map]
static OFF_CPU_SCRATCH: PerCpuArray<PySample> = PerCpuArray::with_max_entries(1, 0);

/// A thread found without a Python thread state is not walked again for this long.
const NO_PYTHON_RETRY_NS: u64 = 1_000_000_000;

/// Off-CPU walks: one per this many ns per thread on average (set by the loader from
/// `[profile] off_cpu_hz`); 0: off-CPU sampling is off.
#[no_mangle]
static OFF_CPU_PERIOD_NS: u64 = 0;

#[inline(always)]
fn off_cpu_period_ns() -> u64 {
    // SAFETY: a plain read of a loader-patched global.
    unsafe { core::ptr::read_volatile(&OFF_CPU_PERIOD_NS) }
}

/// Is `tgid` sched-watched? One inlined array lookup and a bit test.
#[inline(always)]
fn sched_watched(tgid: u32) -> bool {
    match SCHED_PIDS.get(tgid >> 6) {
        Some(word) => (*word >> (tgid & 63)) & 1 != 0,
        None => false,
    }
}

/// A u32 field of a kernel struct, or None when the offset is unknown.
#[inline(always)]
fn read_u32(base: u64, off: u32) -> Option<u32> {
    if off == u32::MAX || base == 0 {
        return None;
    }
    // SAFETY: bpf_probe_read_kernel checks the address and returns an error on a fault.
    unsafe { bpf_probe_read_kernel((base + off as u64) as *const u32) }.ok()
}

/// The thread's state slot, created idle on first sight.
#[inline(always)]
fn thread_slot(tid: u32) -> Option<*mut SchedThread> {
    if let Some(p) = SCHED_THREADS.get_ptr_mut(&tid) {
        return Some(p);
    }
    if SCHED_THREADS.insert(&tid, &IDLE_THREAD, 0).is_err() {
        stat_add(PROBE_SCHED_SWITCH, STAT_MAP_FULL, 1);
        return None;
    }
    SCHED_THREADS.get_ptr_mut(&tid)
}

/// TP_PROTO(bool preempt, struct task_struct *prev, struct task_struct *next,
/// unsigned int prev_state)
#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn sched_switch(ctx: RawTracePointContext) -> i32 {
    let Some(generation) = split_generation() else {
        return 0;
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    let prev_watched = sched_watched((pid_tgid >> 32) as u32);
    let next: u64 = ctx.arg(2);
    let next_tgid = read_u32(next, task_tgid_offset()).filter(|&t| sched_watched(t));
    if !prev_watched && next_tgid.is_none() {
        // The miss path: most switches of a host involve no worker.
        return 0;
    }
    // SAFETY: a helper call without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    if prev_watched {
        switch_out(&ctx, pid_tgid, now, generation);
    }
    if let Some(next_tgid) = next_tgid {
        if let Some(tid) = read_u32(next, task_pid_offset()) {
            switch_in(next_tgid, tid, now, generation);
        }
    }
    0
}

/// The current (prev) task leaves the CPU: preempted (state 0 or `preempt`), or
/// blocked in the syscall its saved registers name.
#[inline(always)]
fn switch_out(ctx: &RawTracePointContext, pid_tgid: u64, now: u64, generation: u32) {
    let preempt: u64 = ctx.arg(0);
    let state: u64 = ctx.arg(3);
    let state = if preempt & 0xff != 0 { 0 } else { state as u32 };
    let Some(t) = thread_slot(pid_tgid as u32) else {
        return;
    };
    // SAFETY: a value pointer of the map, valid during this program; racing writers
    // are the same thread's own edges, which the scheduler serialises.
    let t = unsafe { &mut *t };
    t.out_ns = now;
    t.generation = generation;
    t.state = state;
    t.waker_tid = 0;
    t.syscall = NO_SYSCALL;
    t.arg0 = 0;
    t.walk_pending = 0;
    if state == 0 {
        t.wake_ns = now;
        return;
    }
    t.wake_ns = 0;
    let regs = saved_regs();
    match saved_reg(regs, regs_syscall_offset()) {
        Some(nr) => {
            t.syscall = nr as i64 as i32;
            t.arg0 = saved_reg(regs, regs_arg_offsets()[0]).unwrap_or(0);
        }
        None => stat_add(PROBE_SCHED_SWITCH, STAT_READ_ERRORS, 1),
    }
    walk_off_cpu(ctx, pid_tgid, now, t);
}

/// Where an idle thread waits (x86_64 poll, select, epoll_wait, pselect6, ppoll,
/// epoll_pwait, epoll_pwait2): an event loop blocks there hundreds of times a second,
/// always in the same place, and user space weighs its unwalked waits on its last
/// walked stack there.
const IDLE_WAIT_SYSCALLS: [i32; 7] = [7, 23, 232, 270, 271, 281, 441];

#[inline(always)]
fn is_idle_wait(syscall: i32) -> bool {
    let mut i = 0;
    while i < IDLE_WAIT_SYSCALLS.len() {
        if IDLE_WAIT_SYSCALLS[i] == syscall {
            return true;
        }
        i += 1;
    }
    false
}

/// The stack of a thread that blocks, kept until it runs again. At most one walk per
/// period per thread on average (bursts of OFF_CPU_BURST): the event loop of a busy
/// worker blocks thousands of times a second (each walk costs microseconds), a thread
/// that blocks rarely is walked every time. Idle waits may take half the burst only:
/// the rest stays for the rarer blocks elsewhere (a tool's read, a lock), which are
/// what a call's off-CPU profile looks for (an event loop thread that also ran a
/// tool's blocking read had its budget spent in epoll_wait before).
#[inline(always)]
fn walk_off_cpu(ctx: &RawTracePointContext, pid_tgid: u64, now: u64, t: &mut SchedThread) {
    let period = off_cpu_period_ns();
    if period == 0 {
        return;
    }
    // GCRA: a walk is allowed while the arrival time is less than a burst ahead. (Tested
    // before the process lookup: most blocks of a busy thread end here.)
    let tat = if t.walk_tat_ns > now {
        t.walk_tat_ns
    } else {
        now
    };
    let burst = if is_idle_wait(t.syscall) {
        OFF_CPU_BURST / 2
    } else {
        OFF_CPU_BURST
    };
    if tat > now + period * burst {
        pstat(PSTAT_OFF_CPU_SKIPPED);
        return;
    }
    let Some(info) = PY_PROCS.get_ptr((pid_tgid >> 32) as u32) else {
        return;
    };
    t.walk_tat_ns = tat + period;
    let Some(s) = OFF_CPU_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's scratch slot and a value pointer of PY_PROCS, both valid
    // during this program.
    let (s, info) = unsafe { (&mut *s, &*info) };
    fill_sample(ctx, info, pid_tgid, s);
    if s.flags & SAMPLE_NO_TSTATE != 0 {
        // A thread without a Python thread state (grpc's C threads, BLAS pools): its
        // walk looked through every thread of the interpreter for nothing. Look
        // again in a second (C threads that call into Python get a state later).
        t.walk_tat_ns = now + NO_PYTHON_RETRY_NS + period * OFF_CPU_BURST;
        return;
    }
    s.ts_ns = now;
    s.flags |= SAMPLE_OFF_CPU;
    s.off_cpu_syscall = t.syscall;
    s.off_cpu_state = t.state;
    let tid = pid_tgid as u32;
    if OFF_CPU_PENDING.insert(&tid, s, 0).is_ok() {
        t.walk_pending = 1;
    } else {
        stat_add(PROBE_SCHED_SWITCH, STAT_MAP_FULL, 1);
    }
}

/// A watched thread gets the CPU: its episode off the CPU is complete.
#[inline(always)]
fn switch_in(tgid: u32, tid: u32, now: u64, generation: u32) {
    let mut slice = SchedSlice {
        kind: RecordKind::SchedSlice as u32,
        tgid,
        tid,
        in_ns: now,
        syscall: NO_SYSCALL,
        ..SchedSlice::default()
    };
    let idle = SchedThread {
        generation,
        ..IDLE_THREAD
    };
    let Some(t) = SCHED_THREADS.get_ptr_mut(&tid) else {
        // First sight (it was running or blocked before the process was watched): the
        // slice only says it runs from now.
        if SCHED_THREADS.insert(&tid, &idle, 0).is_err() {
            stat_add(PROBE_SCHED_SWITCH, STAT_MAP_FULL, 1);
        }
        emit_slice(&slice);
        return;
    };
    // SAFETY: a value pointer of the map, valid during this program.
    let t = unsafe { &mut *t };
    if t.generation != generation {
        // Left the CPU before a pause and ran unseen during it: a first sight again,
        // and the off-CPU sample walked then would weigh the whole pause.
        if t.walk_pending != 0 {
            let _ = OFF_CPU_PENDING.remove(&tid);
        }
        // The walks' rate limit outlives the window: reset with the rest, every
        // thread got a fresh burst of OFF_CPU_BURST walks at each window (about 900
        // walks a second at 200 calls/s, where the rate allows 5 per thread).
        *t = SchedThread {
            walk_tat_ns: t.walk_tat_ns,
            ..idle
        };
        emit_slice(&slice);
        return;
    }
    if t.out_ns == 0 {
        return;
    }
    slice.waker_tid = t.waker_tid;
    slice.out_ns = t.out_ns;
    slice.wake_ns = t.wake_ns;
    slice.arg0 = t.arg0;
    slice.syscall = t.syscall;
    slice.state = t.state;
    if t.walk_pending != 0 && send_off_cpu(tid, now - t.out_ns) {
        slice.flags = SLICE_WALKED;
    }
    t.walk_pending = 0;
    emit_slice(&slice);
    t.out_ns = 0;
    t.wake_ns = 0;
    t.waker_tid = 0;
}

#[inline(always)]
fn emit_slice(slice: &SchedSlice) {
    match EVENTS.output::<SchedSlice>(slice, events_flags()) {
        Ok(()) => stat_add(PROBE_SCHED_SWITCH, STAT_EVENTS, 1),
        Err(_) => stat_add(PROBE_SCHED_SWITCH, STAT_RINGBUF_DROPS, 1),
    }
}

/// Sends the thread's pending off-CPU sample; whether it was sent.
#[inline(always)]
fn send_off_cpu(tid: u32, off_cpu_ns: u64) -> bool {
    let Some(s) = OFF_CPU_PENDING.get_ptr_mut(&tid) else {
        return false;
    };
    // SAFETY: a value pointer of the map, valid during this program.
    let s = unsafe { &mut *s };
    s.off_cpu_ns = off_cpu_ns;
    let sent = match PROFILE_EVENTS.output::<PySample>(s, BPF_RB_NO_WAKEUP) {
        Ok(()) => {
            pstat(PSTAT_OFF_CPU_SAMPLES);
            true
        }
        Err(_) => {
            pstat(PSTAT_RINGBUF_DROPS);
            false
        }
    };
    let _ = OFF_CPU_PENDING.remove(&tid);
    sent
}

/// TP_PROTO(struct task_struct *p): fires in the waker's context (unlike
/// sched_wakeup, which may run on the wakee's CPU from an IPI).
#[raw_tracepoint(tracepoint = "sched_waking")]
pub fn sched_waking(ctx: RawTracePointContext) -> i32 {
    if let Some(generation) = split_generation() {
        wake(&ctx, generation);
    }
    0
}

/// A blocked watched thread is made runnable: the first wakeup of the episode counts.
/// (A new thread's first wakeup, sched_wakeup_new, needs nothing: the thread is seen
/// when it first runs.)
#[inline(always)]
fn wake(ctx: &RawTracePointContext, generation: u32) {
    let p: u64 = ctx.arg(0);
    let Some(tgid) = read_u32(p, task_tgid_offset()) else {
        return;
    };
    if !sched_watched(tgid) {
        return;
    }
    let Some(tid) = read_u32(p, task_pid_offset()) else {
        return;
    };
    let Some(t) = SCHED_THREADS.get_ptr_mut(&tid) else {
        return;
    };
    // SAFETY: a value pointer of the map, valid during this program.
    let t = unsafe { &mut *t };
    if t.out_ns == 0 || t.wake_ns != 0 || t.generation != generation {
        return;
    }
    // SAFETY: a helper call without arguments.
    t.wake_ns = unsafe { bpf_ktime_get_ns() };
    let waker = bpf_get_current_pid_tgid();
    if (waker >> 32) as u32 == tgid {
        t.waker_tid = waker as u32;
    }
    stat_add(PROBE_SCHED_WAKE, STAT_EVENTS, 1);
}
