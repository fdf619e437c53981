//! CPU-clock sampling of watched Python workers (perf_event, one event per CPU at
//! `[profile] sample_hz`). Only processes in `PY_PROCS` are sampled; every other
//! task costs one hash-map miss per tick of its CPU.
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_get_smp_processor_id, bpf_ktime_get_ns},
    macros::{map, perf_event},
    maps::{PerCpuArray, RingBuf},
    programs::PerfEventContext,
    EbpfContext,
};
use telemetry_common::{
    PySample, NATIVE_MAX_FRAMES, PSTAT_LEN, PSTAT_NO_TSTATE, PSTAT_READ_ERRORS,
    PSTAT_RINGBUF_DROPS, PSTAT_SAMPLES, PSTAT_TRUNCATED, SAMPLE_NO_TSTATE, SAMPLE_READ_ERROR,
    SAMPLE_TRUNCATED,
};

use crate::maps::BPF_RB_NO_WAKEUP;
use crate::pystack::{walk_python, PY_PROCS};

/// Samples to user space (resized by the loader).
#[map]
pub static PROFILE_EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

#[map]
pub static PROFILE_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(PSTAT_LEN, 0);

const BPF_F_USER_STACK: u64 = 1 << 8;

#[inline(always)]
pub fn pstat(i: u32) {
    if let Some(p) = PROFILE_STATS.get_ptr_mut(i) {
        // SAFETY: this CPU's slot.
        unsafe { *p += 1 };
    }
}

#[perf_event]
pub fn profile_cpu(ctx: PerfEventContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let Some(info) = PY_PROCS.get_ptr(tgid) else {
        return 0;
    };
    // SAFETY: a value pointer of the map, valid during this program.
    let info = unsafe { &*info };
    sample_current(&ctx, info, pid_tgid);
    0
}

/// Builds and sends one sample of the current thread: Python frames, then the native
/// user stack. Usable from any program context where `current` is the thread.
#[inline(always)]
pub fn sample_current<C: EbpfContext>(ctx: &C, info: &telemetry_common::PyProcInfo, pid_tgid: u64) {
    let Some(mut entry) = PROFILE_EVENTS.reserve::<PySample>(0) else {
        pstat(PSTAT_RINGBUF_DROPS);
        return;
    };
    // SAFETY: the reserved entry is exactly one PySample; `fill_sample` writes every
    // field read later (frames only up to py_depth, native only up to native_depth).
    let s = unsafe { &mut *entry.as_mut_ptr() };
    fill_sample(ctx, info, pid_tgid, s);
    pstat(PSTAT_SAMPLES);
    entry.submit(BPF_RB_NO_WAKEUP);
}

/// Fills `s` with the current thread's stack (Python frames, then the native user
/// stack) and counts its flags. `ctx` is only needed by `bpf_get_stack`.
#[inline(always)]
pub fn fill_sample<C: EbpfContext>(
    ctx: &C,
    info: &telemetry_common::PyProcInfo,
    pid_tgid: u64,
    s: &mut PySample,
) {
    // SAFETY: helper calls without arguments.
    s.ts_ns = unsafe { bpf_ktime_get_ns() };
    s.tgid = (pid_tgid >> 32) as u32;
    s.tid = pid_tgid as u32;
    // SAFETY: as above.
    s.cpu = unsafe { bpf_get_smp_processor_id() };
    s.flags = 0;
    s.tstate = 0;
    s.native_depth = 0;
    s.off_cpu_ns = 0;
    s.off_cpu_syscall = telemetry_common::NO_SYSCALL;
    s.off_cpu_state = 0;
    walk_python(info, s.tid, s);
    // SAFETY: `native` is a writable buffer of the stated size inside `s`.
    let n = unsafe {
        aya_ebpf::helpers::generated::bpf_get_stack(
            ctx.as_ptr(),
            s.native.as_mut_ptr() as *mut core::ffi::c_void,
            (NATIVE_MAX_FRAMES * 8) as u32,
            BPF_F_USER_STACK,
        )
    };
    if n > 0 {
        s.native_depth = (n as u32) / 8;
    }
    if s.flags & SAMPLE_READ_ERROR != 0 {
        pstat(PSTAT_READ_ERRORS);
    }
    if s.flags & SAMPLE_NO_TSTATE != 0 {
        pstat(PSTAT_NO_TSTATE);
    }
    if s.flags & SAMPLE_TRUNCATED != 0 {
        pstat(PSTAT_TRUNCATED);
    }
}
