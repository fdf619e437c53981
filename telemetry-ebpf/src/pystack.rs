//! CPython frame walk (3.10-3.13), callable from any program that runs in the context
//! of the thread to walk (perf_event samples now; sched_switch for off-CPU stacks).
//!
//! thread state: the `PY_TSTATES` cache (one read checks it), else a bounded walk of
//! `_PyRuntime.interpreters.head->threads` matching `native_thread_id` (3.10: the
//! pthread id `thread_id` against the task's fs base). Frames: the
//! `_PyInterpreterFrame` chain (3.10: `PyFrameObject.f_back`) from the thread's
//! current frame, at most
//! `PY_MAX_FRAMES`, four user reads per frame. The layout comes from `PY_PROCS`
//! (filled by user space per process, after checking the interpreter's version).
use aya_ebpf::{
    helpers::{bpf_get_current_task, bpf_probe_read_kernel, bpf_probe_read_user},
    macros::map,
    maps::{HashMap, LruHashMap},
};
use telemetry_common::{
    PyProcInfo, PySample, MAX_PY_PROCS, MAX_PY_TSTATES, PY_MAX_FRAMES, PY_MAX_THREADS,
    SAMPLE_NO_FRAME, SAMPLE_NO_TSTATE, SAMPLE_READ_ERROR, SAMPLE_TRUNCATED, TID_PTHREAD,
};

#[map]
pub static PY_PROCS: HashMap<u32, PyProcInfo> = HashMap::with_max_entries(MAX_PY_PROCS, 0);

#[map]
pub static PY_TSTATES: LruHashMap<u32, u64> = LruHashMap::with_max_entries(MAX_PY_TSTATES, 0);

#[inline(always)]
fn read_u64(addr: u64) -> Result<u64, ()> {
    // SAFETY: bpf_probe_read_user checks the user address and fails on a fault.
    unsafe { bpf_probe_read_user(addr as *const u64) }.map_err(|_| ())
}

#[inline(always)]
fn read_u32(addr: u64) -> Result<u32, ()> {
    // SAFETY: as above.
    unsafe { bpf_probe_read_user(addr as *const u32) }.map_err(|_| ())
}

#[inline(always)]
fn read_u8(addr: u64) -> Result<u8, ()> {
    // SAFETY: as above.
    unsafe { bpf_probe_read_user(addr as *const u8) }.map_err(|_| ())
}

/// What the current thread's state holds at `tstate_native_tid_off`: its tid (3.11+),
/// or its pthread id, i.e. the fs base of the current task (3.10).
#[inline(always)]
fn thread_key(info: &PyProcInfo, tid: u32) -> Result<u64, ()> {
    if info.tid_match != TID_PTHREAD {
        return Ok(u64::from(tid));
    }
    // SAFETY: the current task pointer, read with bpf_probe_read_kernel.
    unsafe {
        let task = bpf_get_current_task();
        bpf_probe_read_kernel((task + info.task_fsbase_off as u64) as *const u64).map_err(|_| ())
    }
}

#[inline(always)]
fn key_at(info: &PyProcInfo, ts: u64) -> Result<u64, ()> {
    let at = ts + info.tstate_native_tid_off as u64;
    if info.tid_match == TID_PTHREAD {
        read_u64(at)
    } else {
        read_u32(at).map(u64::from)
    }
}

/// The thread state of thread `tid` of a process with layout `info`, or 0.
#[inline(always)]
fn thread_state(info: &PyProcInfo, tid: u32) -> Result<u64, ()> {
    let key = thread_key(info, tid)?;
    if let Some(ts) = PY_TSTATES.get_ptr(tid) {
        // SAFETY: a value pointer of the map, valid during this program.
        let ts = unsafe { *ts };
        // A dead thread's state may be freed and its tid reused: check it still matches.
        if ts != 0 && key_at(info, ts) == Ok(key) {
            return Ok(ts);
        }
    }
    crate::profile::pstat(telemetry_common::PSTAT_TSTATE_WALKS);
    let interp = read_u64(info.interp_head_addr)?;
    if interp == 0 {
        return Ok(0);
    }
    let mut ts = read_u64(interp + info.threads_head_off as u64)?;
    for _ in 0..PY_MAX_THREADS {
        if ts == 0 {
            return Ok(0);
        }
        if key_at(info, ts)? == key {
            let _ = PY_TSTATES.insert(tid, ts, 0);
            return Ok(ts);
        }
        ts = read_u64(ts + info.tstate_next_off as u64)?;
    }
    Ok(0)
}

/// Fills `s.frames`, `s.py_depth`, `s.tstate` and the `SAMPLE_*` flags for the
/// current thread `tid` of a process whose layout is `info`.
#[inline(always)]
pub fn walk_python(info: &PyProcInfo, tid: u32, s: &mut PySample) {
    s.py_depth = 0;
    let ts = match thread_state(info, tid) {
        Ok(0) => {
            s.flags |= SAMPLE_NO_TSTATE;
            return;
        }
        Ok(ts) => ts,
        Err(()) => {
            s.flags |= SAMPLE_READ_ERROR | SAMPLE_NO_TSTATE;
            return;
        }
    };
    s.tstate = ts;
    if walk_frames(info, ts, s).is_err() {
        s.flags |= SAMPLE_READ_ERROR;
    }
}

#[inline(always)]
fn walk_frames(info: &PyProcInfo, ts: u64, s: &mut PySample) -> Result<(), ()> {
    let holder = if info.tstate_cframe_off == u32::MAX {
        ts
    } else {
        read_u64(ts + info.tstate_cframe_off as u64)?
    };
    if holder == 0 {
        s.flags |= SAMPLE_NO_FRAME;
        return Ok(());
    }
    let mut frame = read_u64(holder + info.current_frame_off as u64)?;
    if frame == 0 {
        s.flags |= SAMPLE_NO_FRAME;
        return Ok(());
    }
    let mut n = 0u32;
    for i in 0..PY_MAX_FRAMES {
        let code = read_u64(frame + info.frame_code_off as u64)?;
        let instr = read_u64(frame + info.frame_instr_off as u64)?;
        let owner = if info.frame_owner_off == u32::MAX {
            0
        } else {
            read_u8(frame + info.frame_owner_off as u64)?
        };
        let f = &mut s.frames[i];
        f.code = code;
        f.instr = instr;
        f.owner = owner;
        n = i as u32 + 1;
        s.py_depth = n;
        frame = read_u64(frame + info.frame_previous_off as u64)?;
        if frame == 0 {
            return Ok(());
        }
    }
    if n as usize == PY_MAX_FRAMES {
        s.flags |= SAMPLE_TRUNCATED;
    }
    Ok(())
}
