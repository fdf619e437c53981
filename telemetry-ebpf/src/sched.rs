//! Scheduling of sched-watched threads (the Python workers): when each leaves the CPU
//! and why (its task state and the syscall it blocks in), when it gets the CPU back,
//! and who made it runnable. User space turns these edges into each call's on-CPU,
//! runqueue and off-CPU-by-reason split (calls/sched). The kernel keeps no per-thread
//! state: three small records per context switch of a watched thread.
//!
//! The miss path runs on every context switch and wakeup of the host, so it is kept to
//! helper-free bitmap tests (SCHED_PIDS is an array, its lookup is inlined) plus one
//! kernel read of the next task's tgid.
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel, generated},
    macros::raw_tracepoint,
    programs::RawTracePointContext,
};
use telemetry_common::{
    RecordKind, SchedEvent, PROBE_SCHED_SWITCH, PROBE_SCHED_WAKE, STAT_EVENTS, STAT_READ_ERRORS,
    STAT_RINGBUF_DROPS,
};

use crate::maps::{
    regs_arg_offsets, regs_syscall_offset, stat_add, task_pid_offset, task_tgid_offset,
    BPF_RB_NO_WAKEUP, EVENTS, SCHED_PIDS,
};

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

#[inline(always)]
fn read_u64(base: u64, off: u32) -> Option<u64> {
    // SAFETY: bpf_probe_read_kernel checks the address and returns an error on a fault.
    unsafe { bpf_probe_read_kernel((base + off as u64) as *const u64) }.ok()
}

#[inline(always)]
fn emit(ev: &SchedEvent, probe: u32) {
    match EVENTS.output::<SchedEvent>(ev, BPF_RB_NO_WAKEUP) {
        Ok(()) => stat_add(probe, STAT_EVENTS, 1),
        Err(_) => stat_add(probe, STAT_RINGBUF_DROPS, 1),
    }
}

/// TP_PROTO(bool preempt, struct task_struct *prev, struct task_struct *next,
/// unsigned int prev_state)
#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn sched_switch(ctx: RawTracePointContext) -> i32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let prev_tgid = (pid_tgid >> 32) as u32;
    // SAFETY: a helper call without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    if sched_watched(prev_tgid) {
        switch_out(&ctx, pid_tgid, now);
    }
    let next: u64 = ctx.arg(2);
    if let Some(next_tgid) = read_u32(next, task_tgid_offset()) {
        if sched_watched(next_tgid) {
            let tid = read_u32(next, task_pid_offset()).unwrap_or(0);
            emit(
                &SchedEvent {
                    kind: RecordKind::SchedIn as u32,
                    tgid: next_tgid,
                    tid,
                    ts_ns: now,
                    syscall: -1,
                    ..SchedEvent::default()
                },
                PROBE_SCHED_SWITCH,
            );
        }
    }
    0
}

/// The current (prev) task leaves the CPU: preempted (state 0 or `preempt`), or
/// blocked in the syscall its saved registers name.
#[inline(always)]
fn switch_out(ctx: &RawTracePointContext, pid_tgid: u64, now: u64) {
    let preempt: u64 = ctx.arg(0);
    let state: u64 = ctx.arg(3);
    let state = if preempt & 0xff != 0 { 0 } else { state as u32 };
    let mut ev = SchedEvent {
        kind: RecordKind::SchedOut as u32,
        tgid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        ts_ns: now,
        syscall: -1,
        state,
        ..SchedEvent::default()
    };
    if state != 0 {
        // SAFETY: helper calls; bpf_task_pt_regs takes the BTF task pointer it is given.
        let regs =
            unsafe { generated::bpf_task_pt_regs(generated::bpf_get_current_task_btf()) } as u64;
        match read_u64(regs, regs_syscall_offset()) {
            Some(nr) => {
                ev.syscall = nr as i64 as i32;
                ev.arg0 = read_u64(regs, regs_arg_offsets()[0]).unwrap_or(0);
            }
            None => stat_add(PROBE_SCHED_SWITCH, STAT_READ_ERRORS, 1),
        }
    }
    emit(&ev, PROBE_SCHED_SWITCH);
}

/// TP_PROTO(struct task_struct *p): fires in the waker's context (unlike
/// sched_wakeup, which may run on the wakee's CPU from an IPI).
#[raw_tracepoint(tracepoint = "sched_waking")]
pub fn sched_waking(ctx: RawTracePointContext) -> i32 {
    wake(&ctx, 0);
    0
}

/// TP_PROTO(struct task_struct *p): a new thread's first wakeup.
#[raw_tracepoint(tracepoint = "sched_wakeup_new")]
pub fn sched_wakeup_new(ctx: RawTracePointContext) -> i32 {
    wake(&ctx, 1);
    0
}

#[inline(always)]
fn wake(ctx: &RawTracePointContext, new: u32) {
    let p: u64 = ctx.arg(0);
    let tgid = match read_u32(p, task_tgid_offset()) {
        Some(t) => t,
        None => return,
    };
    if !sched_watched(tgid) {
        return;
    }
    let waker = bpf_get_current_pid_tgid();
    emit(
        &SchedEvent {
            kind: RecordKind::SchedWake as u32,
            tgid,
            tid: read_u32(p, task_pid_offset()).unwrap_or(0),
            waker_tid: waker as u32,
            waker_tgid: (waker >> 32) as u32,
            // SAFETY: a helper call without arguments.
            ts_ns: unsafe { bpf_ktime_get_ns() },
            syscall: -1,
            state: new,
            ..SchedEvent::default()
        },
        PROBE_SCHED_WAKE,
    );
}
