//! (De)serialization calls in the workers: one uprobe and one uretprobe program,
//! attached per worker process to protobuf's upb bindings and orjson (user space
//! resolves the symbols, calls/serialize attributes the calls). The attach cookie says
//! which function it is and where its byte count lies (`SerializeFn`, `SizeFrom`).
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user, generated},
    macros::{uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext},
    EbpfContext,
};
use telemetry_common::{
    RecordKind, SerializeEvent, SerializePending, SizeFrom, PROBE_SERIALIZE, PY_SIZE_OFFSET,
    PY_TUPLE_ITEM0_OFFSET, SERIALIZE_PENDING_KEY_MASK, STAT_EVENTS, STAT_MAP_FULL,
    STAT_READ_ERRORS, STAT_RINGBUF_DROPS,
};

use crate::maps::{events_flags, split_generation, stat_add, BPF_ANY, EVENTS, SERIALIZE_PENDING};

#[inline(always)]
fn cookie(ctx: &impl EbpfContext) -> u64 {
    // SAFETY: the helper only reads the program's attach cookie.
    unsafe { generated::bpf_get_attach_cookie(ctx.as_ptr()) }
}

/// The size field of the CPython object at `obj` (PyBytes ob_size, PyUnicode length).
#[inline(always)]
fn py_size(obj: u64) -> u64 {
    if obj == 0 {
        return u64::MAX;
    }
    // SAFETY: bpf_probe_read_user checks the user address and returns an error on a fault.
    match unsafe { bpf_probe_read_user((obj + PY_SIZE_OFFSET) as *const u64) } {
        Ok(n) => n,
        Err(_) => {
            stat_add(PROBE_SERIALIZE, STAT_READ_ERRORS, 1);
            u64::MAX
        }
    }
}

/// A pending call's key: the thread, the function and whether this entry point is an
/// outer one (so that an outer call and the inner one it makes are both timed).
#[inline(always)]
fn key(pid_tgid: u64, cookie: u64) -> [u64; 2] {
    [pid_tgid, cookie & SERIALIZE_PENDING_KEY_MASK]
}

#[uprobe]
pub fn serialize_enter(ctx: ProbeContext) -> u32 {
    if split_generation().is_none() {
        return 0;
    }
    let c = cookie(&ctx);
    let size_from = ((c >> 8) & 0xff) as u8;
    let bytes = if size_from == SizeFrom::ArgObject as u8 {
        py_size(ctx.arg::<u64>(1).unwrap_or(0))
    } else if size_from == SizeFrom::ArgTupleFirst as u8 {
        let tuple = ctx.arg::<u64>(1).unwrap_or(0);
        // SAFETY: bpf_probe_read_user checks the user address and returns an error on a fault.
        let item = unsafe { bpf_probe_read_user((tuple + PY_TUPLE_ITEM0_OFFSET) as *const u64) }
            .unwrap_or(0);
        py_size(item)
    } else if size_from == SizeFrom::ArgValue as u8 {
        ctx.arg::<u64>(1).unwrap_or(u64::MAX)
    } else {
        u64::MAX
    };
    let pending = SerializePending {
        // SAFETY: a helper call without arguments.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        bytes,
    };
    if SERIALIZE_PENDING
        .insert(&key(bpf_get_current_pid_tgid(), c), &pending, BPF_ANY)
        .is_err()
    {
        stat_add(PROBE_SERIALIZE, STAT_MAP_FULL, 1);
    }
    0
}

#[uretprobe]
pub fn serialize_exit(ctx: RetProbeContext) -> u32 {
    let c = cookie(&ctx);
    let function = c & 0xff;
    let size_from = ((c >> 8) & 0xff) as u8;
    let pid_tgid = bpf_get_current_pid_tgid();
    let k = key(pid_tgid, c);
    // SAFETY: the value is copied out at once.
    let pending = match unsafe { SERIALIZE_PENDING.get(&k) } {
        Some(p) => *p,
        None => return 0,
    };
    let _ = SERIALIZE_PENDING.remove(&k);
    if split_generation().is_none() {
        // Entered before the gate paused: the pair is dropped with the window.
        return 0;
    }
    let bytes = if size_from == SizeFrom::RetObject as u8 {
        py_size(ctx.ret::<u64>())
    } else {
        pending.bytes
    };
    let ev = SerializeEvent {
        kind: RecordKind::Serialize as u32,
        tgid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        function: function as u8,
        _pad: [0; 3],
        ts_start_ns: pending.ts_ns,
        // SAFETY: a helper call without arguments.
        ts_end_ns: unsafe { bpf_ktime_get_ns() },
        bytes,
    };
    match EVENTS.output::<SerializeEvent>(&ev, events_flags()) {
        Ok(()) => stat_add(PROBE_SERIALIZE, STAT_EVENTS, 1),
        Err(_) => stat_add(PROBE_SERIALIZE, STAT_RINGBUF_DROPS, 1),
    }
    0
}
