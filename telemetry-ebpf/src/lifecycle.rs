//! Process lifecycle: forks of watched processes (their children inherit
//! PID_LINEAGE), every exec on the host, and exits of watched processes.
use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task, bpf_ktime_get_ns,
        bpf_probe_read_kernel, bpf_probe_read_kernel_str_bytes,
    },
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
    EbpfContext,
};
use telemetry_common::{
    ProcEvent, RecordKind, COMM_LEN, FILENAME_LEN, PID_LINEAGE, PROBE_EXEC, PROBE_EXIT, PROBE_FORK,
    STAT_EVENTS, STAT_MAP_FULL, STAT_READ_ERRORS, STAT_RINGBUF_DROPS,
};

use crate::maps::{
    ctx_u32, events_flags, stat_add, task_exit_code_offset, task_pid_offset,
    task_real_parent_offset, task_tgid_offset, BPF_ANY, EVENTS, WATCHED_PIDS,
};

/// sched_process_exec record: `__data_loc char[] filename` at 8 (6.18 layout, see
/// /sys/kernel/tracing/events/sched/sched_process_exec/format).
const EXEC_FILENAME_LOC: usize = 8;

/// Raw tracepoint, not the classic one: its arguments are the parent and child
/// task_structs, and only the child's tgid tells a new process from a new thread.
#[raw_tracepoint(tracepoint = "sched_process_fork")]
pub fn sched_process_fork(ctx: RawTracePointContext) -> i32 {
    match try_fork(&ctx) {
        Ok(()) | Err(()) => 0,
    }
}

#[tracepoint]
pub fn sched_process_exec(ctx: TracePointContext) -> u32 {
    match try_exec(&ctx) {
        Ok(()) | Err(()) => 0,
    }
}

#[tracepoint]
pub fn sched_process_exit(ctx: TracePointContext) -> u32 {
    match try_exit(&ctx) {
        Ok(()) | Err(()) => 0,
    }
}

#[inline(always)]
pub(crate) fn empty_event(kind: RecordKind, pid_tgid: u64) -> ProcEvent {
    ProcEvent {
        kind: kind as u32,
        tgid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        ppid: 0,
        // SAFETY: a helper call without arguments.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        exit_code: 0,
        child_pid: 0,
        comm: [0; COMM_LEN],
        filename: [0; FILENAME_LEN],
    }
}

#[inline(always)]
pub(crate) fn send(ev: &ProcEvent, probe: u32) {
    match EVENTS.output::<ProcEvent>(ev, events_flags()) {
        Ok(()) => stat_add(probe, STAT_EVENTS, 1),
        Err(_) => stat_add(probe, STAT_RINGBUF_DROPS, 1),
    }
}

/// Reads a u32 field at `off` of the kernel struct at `base`; None when the offset is
/// unknown (u32::MAX) or the read fails.
#[inline(always)]
fn read_u32_at(base: u64, off: u32) -> Option<u32> {
    if off == u32::MAX || base == 0 {
        return None;
    }
    // SAFETY: bpf_probe_read_kernel checks the address and returns an error on a fault.
    unsafe { bpf_probe_read_kernel((base + off as u64) as *const u32) }.ok()
}

/// The tgid of the current task's real parent, or 0.
#[inline(always)]
fn current_ppid() -> u32 {
    let off = task_real_parent_offset();
    if off == u32::MAX {
        return 0;
    }
    // SAFETY: a helper call without arguments.
    let task = unsafe { bpf_get_current_task() };
    // SAFETY: bpf_probe_read_kernel checks the address and returns an error on a fault.
    let parent = match unsafe { bpf_probe_read_kernel((task + off as u64) as *const u64) } {
        Ok(p) => p,
        Err(_) => return 0,
    };
    read_u32_at(parent, task_tgid_offset()).unwrap_or(0)
}

#[inline(always)]
fn try_fork(ctx: &RawTracePointContext) -> Result<(), ()> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let parent_tgid = (pid_tgid >> 32) as u32;
    // Miss path: one lookup.
    if WATCHED_PIDS.get_ptr(parent_tgid).is_none() {
        return Ok(());
    }
    // TP_PROTO(struct task_struct *parent, struct task_struct *child)
    let child: u64 = ctx.arg(1);
    let child_tgid = match read_u32_at(child, task_tgid_offset()) {
        Some(t) => t,
        None => {
            stat_add(PROBE_FORK, STAT_READ_ERRORS, 1);
            return Err(());
        }
    };
    if child_tgid == parent_tgid {
        // A new thread of a watched process, not a new process.
        return Ok(());
    }
    let child_pid = read_u32_at(child, task_pid_offset()).unwrap_or(child_tgid);
    // Lineage only: the child's own sockets are watched once user space decides.
    if WATCHED_PIDS
        .insert(child_tgid, PID_LINEAGE, BPF_ANY)
        .is_err()
    {
        stat_add(PROBE_FORK, STAT_MAP_FULL, 1);
    }
    let mut ev = empty_event(RecordKind::Fork, pid_tgid);
    ev.tgid = child_tgid;
    ev.tid = child_pid;
    ev.ppid = parent_tgid;
    ev.child_pid = child_pid;
    if let Ok(comm) = bpf_get_current_comm() {
        ev.comm = comm;
    }
    send(&ev, PROBE_FORK);
    Ok(())
}

#[inline(always)]
fn try_exec(ctx: &TracePointContext) -> Result<(), ()> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let mut ev = empty_event(RecordKind::Exec, pid_tgid);
    ev.ppid = current_ppid();
    if let Ok(comm) = bpf_get_current_comm() {
        ev.comm = comm;
    }
    // __data_loc: low 16 bits = offset of the string inside the record.
    let loc = ctx_u32(ctx, EXEC_FILENAME_LOC);
    let off = (loc & 0xffff) as usize;
    // SAFETY: `off` comes from the record's __data_loc field; the helper below checks the read.
    let src = unsafe { (ctx.as_ptr() as *const u8).add(off) };
    // SAFETY: bpf_probe_read_kernel checks the address and returns an error on a fault.
    if unsafe { bpf_probe_read_kernel_str_bytes(src, &mut ev.filename) }.is_err() {
        stat_add(PROBE_EXEC, STAT_READ_ERRORS, 1);
    }
    send(&ev, PROBE_EXEC);
    Ok(())
}

#[inline(always)]
fn try_exit(_ctx: &TracePointContext) -> Result<(), ()> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    // Only the group leader reports the process's exit; no lookup for other threads.
    if pid_tgid as u32 != tgid {
        return Ok(());
    }
    if WATCHED_PIDS.get_ptr(tgid).is_none() {
        return Ok(());
    }
    let mut ev = empty_event(RecordKind::Exit, pid_tgid);
    ev.ppid = current_ppid();
    // SAFETY: a helper call without arguments.
    let task = unsafe { bpf_get_current_task() };
    ev.exit_code = read_u32_at(task, task_exit_code_offset()).unwrap_or(u32::MAX);
    if let Ok(comm) = bpf_get_current_comm() {
        ev.comm = comm;
    }
    send(&ev, PROBE_EXIT);
    let _ = WATCHED_PIDS.remove(tgid);
    Ok(())
}
