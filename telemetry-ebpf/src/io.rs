//! read/write family: capture the payload of syscalls on watched fds.
//!
//! Exit programs only: one IO_PIDS bit test (the only cost for every other process on
//! the host), then one register read, a per-CPU cache of the watched processes'
//! unwatched fds and one WATCHED_FDS lookup; on a hit the payload is copied into a
//! per-CPU IoEvent and sent with only its used length. The frame cursor, which walks
//! the frame headers through those bytes, is in `io/frame_walk.rs`.
use core::{
    ffi::c_void,
    intrinsics::{atomic_xadd, AtomicOrdering},
};

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user, generated},
    macros::tracepoint,
    programs::TracePointContext,
};
use telemetry_common::{
    Capture, Direction, FdKey, FdState, FrameStatus, IoEvent, PendingIo, RecordKind, Syscall,
    CURSOR_UNKNOWN, FD_PIPE, FD_SOCKET, HTTP2_HDR_LEN, HTTP2_MAX_FRAME_TYPE, IO_DATA_AREA,
    IO_HEADER_LEN, MARK_BYTES, MARK_SLOT_LEN, MAX_CAPTURE, MAX_HDR_LEN, MAX_IOVECS, MAX_MARKS,
    MAX_WALK_STEPS, PACKET4_HDR_LEN, PACKET4_MAX_LEN, PROBE_READ, PROBE_READV, PROBE_RECVFROM,
    PROBE_RECVMSG, PROBE_SENDMSG, PROBE_SENDTO, PROBE_WRITE, PROBE_WRITEV, STAT_CURSOR_LOST,
    STAT_EVENTS, STAT_READ_ERRORS, STAT_RINGBUF_DROPS, STAT_TRUNCATED,
};

mod frame_walk;
pub use frame_walk::Walk;
use frame_walk::*;

use crate::maps::{
    cached_unwatched, capture_bytes, ctx_u64, decode_once, events_flags, io_watched,
    regs_arg_offsets, remember_unwatched, saved_reg, saved_regs, stat_add, unwatched_slot,
    watch_generation, CURSOR_HINTS, EVENTS, IO_SCRATCH, WALK_SCRATCH, WATCHED_FDS,
};

/// How the syscall passes its buffer.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Buf {
    /// `buf` at arg 1 (read, write, recvfrom, sendto).
    Plain,
    /// `struct iovec *` at arg 1, count at arg 2 (readv, writev).
    Vec,
    /// `struct user_msghdr *` at arg 1 (recvmsg, sendmsg).
    Msg,
}

// The exit tracepoint's record: the return value at offset 16.
const RET: usize = 16;

/// One exit program per syscall, none at the enter: the arguments come from the
/// task's saved user registers, which the kernel keeps until the return to user space.
/// One program run and no PENDING_IO round trip per syscall, for every process on the
/// host. A read is timed when the data arrived; a send when the kernel took its bytes
/// (for the non-blocking sockets of the BEAM and grpc's C-core, within microseconds of
/// its enter).
macro_rules! exit_probe {
    ($exit:ident, $sys:expr, $dir:expr, $probe:expr, $buf:expr) => {
        #[tracepoint]
        pub fn $exit(ctx: TracePointContext) -> u32 {
            match try_exit(&ctx, $sys, $dir, $probe, $buf) {
                Ok(()) | Err(()) => 0,
            }
        }
    };
}

exit_probe!(
    sys_exit_read,
    Syscall::Read,
    Direction::Ingress,
    PROBE_READ,
    Buf::Plain
);
exit_probe!(
    sys_exit_write,
    Syscall::Write,
    Direction::Egress,
    PROBE_WRITE,
    Buf::Plain
);
exit_probe!(
    sys_exit_readv,
    Syscall::Readv,
    Direction::Ingress,
    PROBE_READV,
    Buf::Vec
);
exit_probe!(
    sys_exit_writev,
    Syscall::Writev,
    Direction::Egress,
    PROBE_WRITEV,
    Buf::Vec
);
exit_probe!(
    sys_exit_recvfrom,
    Syscall::Recvfrom,
    Direction::Ingress,
    PROBE_RECVFROM,
    Buf::Plain
);
exit_probe!(
    sys_exit_sendto,
    Syscall::Sendto,
    Direction::Egress,
    PROBE_SENDTO,
    Buf::Plain
);
exit_probe!(
    sys_exit_recvmsg,
    Syscall::Recvmsg,
    Direction::Ingress,
    PROBE_RECVMSG,
    Buf::Msg
);
exit_probe!(
    sys_exit_sendmsg,
    Syscall::Sendmsg,
    Direction::Egress,
    PROBE_SENDMSG,
    Buf::Msg
);

/// A syscall's exit: its arguments from the saved user registers (x86_64 syscall ABI:
/// fd, buffer, count/iovcnt in di, si, dx; offsets from BTF).
#[inline(always)]
fn try_exit(
    ctx: &TracePointContext,
    sys: Syscall,
    dir: Direction,
    probe: u32,
    buf: Buf,
) -> Result<(), ()> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    // The miss path of every other process: one inlined array lookup.
    if !io_watched(tgid) {
        return Ok(());
    }
    let regs = saved_regs();
    let offs = regs_arg_offsets();
    let fd = saved_reg(regs, offs[0]).ok_or(())? as u32;
    let key = FdKey { tgid, fd };
    // A watched process's unwatched fd: one register read, then this CPU's cache of
    // such fds, valid while no fd was watched since (the generation is read before
    // the hash lookup, so an insert the lookup misses raises it afterwards).
    let gen = watch_generation();
    let slot = unwatched_slot(key);
    if let Some(slot) = slot {
        if cached_unwatched(slot, key, gen) {
            return Ok(());
        }
    }
    let Some(state) = WATCHED_FDS.get_ptr_mut(key) else {
        if let Some(slot) = slot {
            remember_unwatched(slot, key, gen);
        }
        return Ok(());
    };
    let arg = saved_reg(regs, offs[1]).ok_or(())?;
    let mut pending = PendingIo {
        // Timed by the exit (see exit_probe).
        ts_enter_ns: 0,
        buf: 0,
        iov: 0,
        iovcnt: 0,
        fd: fd as i32,
        syscall: sys as u8,
        direction: dir as u8,
        _pad: [0; 6],
    };
    match buf {
        Buf::Plain => pending.buf = arg,
        Buf::Vec => {
            pending.iov = arg;
            pending.iovcnt = saved_reg(regs, offs[2]).unwrap_or(0) as u32;
        }
        Buf::Msg => set_msg_iov(&mut pending, arg, probe),
    }
    finish_io(ctx, pid_tgid, state, &pending, probe)
}

/// The iovec array of a `struct user_msghdr` at `msghdr` (name, namelen, msg_iov at
/// +16, msg_iovlen at +24).
#[inline(always)]
fn set_msg_iov(pending: &mut PendingIo, msghdr: u64, probe: u32) {
    // SAFETY: bpf_probe_read_user checks the user address and returns an error on a fault.
    match unsafe { bpf_probe_read_user(msghdr as *const [u64; 4]) } {
        Ok(hdr) => {
            pending.iov = hdr[2];
            pending.iovcnt = hdr[3] as u32;
        }
        Err(_) => stat_add(probe, STAT_READ_ERRORS, 1),
    }
}

/// The common exit of a watched I/O syscall: totals, sequence number, capture, frame
/// walk, record.
#[inline(always)]
fn finish_io(
    ctx: &TracePointContext,
    pid_tgid: u64,
    state: *mut FdState,
    pending: &PendingIo,
    probe: u32,
) -> Result<(), ()> {
    let ret = ctx_u64(ctx, RET) as i64;
    let tgid = (pid_tgid >> 32) as u32;
    let key = FdKey {
        tgid,
        fd: pending.fd as u32,
    };
    let dir = (pending.direction & 1) as usize;
    // Atomic: several threads of the process may use the same fd on different CPUs.
    // (The bpf target has no AtomicU64::fetch_add; the intrinsic lowers to BPF_ATOMIC.)
    // SAFETY: `state` points into a live WATCHED_FDS value; the fields are u64.
    unsafe { fetch_add(core::ptr::addr_of_mut!((*state).calls[dir]), 1) };
    if ret < 0 {
        // EAGAIN and other errors move no bytes and end no frame: the totals above
        // count them, no record is needed (non-blocking readers make one per wakeup).
        return Ok(());
    }
    // SAFETY: as above.
    let stream_pos = unsafe { fetch_add(core::ptr::addr_of_mut!((*state).bytes[dir]), ret as u64) };
    // SAFETY: as above; plain reads and writes of this fd's own cursor fields.
    let st = unsafe { &mut *state };
    let lean = decode_once()
        && st.fd_kind == FD_SOCKET
        && dir == Direction::Ingress.index()
        && st.cursor[dir] != CURSOR_UNKNOWN;
    if !lean && st.cursor[dir] == CURSOR_UNKNOWN && st.fd_kind == FD_SOCKET {
        take_cursor_hint(st, &key, dir);
    }
    if lean
        && st.partial_len[dir] == 0
        && st.mark_rest[dir] == 0
        && (st.cursor[dir] as u64) > ret as u64
    {
        // Inside one frame from start to end: nothing for the timing to see.
        st.cursor[dir] -= ret as u32;
        return Ok(());
    }
    // SAFETY: as above.
    let seq = unsafe { fetch_add(core::ptr::addr_of_mut!((*state).next_seq[dir]), 1) };

    let ev = IO_SCRATCH.get_ptr_mut(0).ok_or(())?;
    // SAFETY: a per-CPU scratch value from a successful lookup; a BPF program is not preempted, so
    // nothing else uses it on this CPU meanwhile.
    let ev = unsafe { &mut *ev };
    ev.header.kind = RecordKind::Io as u32;
    ev.header.tgid = tgid;
    ev.header.tid = pid_tgid as u32;
    ev.header.fd = pending.fd;
    ev.header.direction = pending.direction;
    ev.header.syscall = pending.syscall;
    ev.header.marks = 0;
    ev.header.cursor_in = CURSOR_UNKNOWN;
    ev.header.partial_in = 0;
    ev.header.frame_status = FrameStatus::Unknown as u8;
    ev.header.capture = if lean { Capture::Frames } else { Capture::Full } as u8;
    ev.header._pad = 0;
    ev.header.stream_pos = stream_pos;
    ev.header.ret = ret;
    // SAFETY: a helper call without arguments.
    let ts_exit = unsafe { bpf_ktime_get_ns() };
    // No enter program (see exit_probe): the exit is the syscall's time.
    ev.header.ts_enter_ns = ts_exit;
    ev.header.ts_exit_ns = ts_exit;
    ev.header.seq = seq;

    // The syscall's iovecs, read once for the copy and the frame walk below.
    let w = WALK_SCRATCH.get_ptr_mut(0).ok_or(())?;
    // SAFETY: a per-CPU scratch value from a successful lookup; a BPF program is not preempted, so
    // nothing else uses it on this CPU meanwhile.
    let w = unsafe { &mut *w };
    w.iovs_n = 0;
    if ret > 0 && pending.iov != 0 {
        load_iovecs(w, pending.iov, pending.iovcnt, probe);
    }

    let mut captured: u32 = 0;
    if ret > 0 && !lean {
        let cap = capture_bytes();
        let want = if (ret as u64) < cap as u64 {
            ret as u32
        } else {
            cap
        };
        captured = if pending.buf != 0 {
            if read_chunk(ev, 0, pending.buf, want) {
                want
            } else {
                stat_add(probe, STAT_READ_ERRORS, 1);
                0
            }
        } else {
            copy_iovecs(ev, w, pending.iov, pending.iovcnt, want, probe)
        };
        let moved = ret as u64;
        if moved > captured as u64 {
            stat_add(probe, STAT_TRUNCATED, moved - captured as u64);
        }
    }
    ev.header.captured_len = captured;
    // Re-read from the record: the lean path (nothing copied) and the full one then
    // reach the frame walk in the same verifier state, so the walk is verified once
    // (its bpf_loop callback dominates the verifier's work).
    // SAFETY: a plain read of a field of the per-CPU record.
    let captured = unsafe { core::ptr::read_volatile(&ev.header.captured_len) };

    let mut marks: u32 = 0;
    if ret > 0 {
        marks = follow_frames(state, dir, ev, pending, ret as u64, captured, probe);
    }
    // Re-read from the record: values kept in registers across the walk would be
    // live at its bpf_loop call, and every distinct range of them another verification
    // of the walk.
    // SAFETY: plain reads of fields of the per-CPU record.
    let (ret, captured, seq) = unsafe {
        (
            core::ptr::read_volatile(&ev.header.ret),
            core::ptr::read_volatile(&ev.header.captured_len),
            core::ptr::read_volatile(&ev.header.seq),
        )
    };

    // Repro: a request sender's bytes beyond the prefix go first, as chunk records.
    if ret > 0 {
        crate::io_chunks::emit_chunks(&key, pending, ret as u64, captured, seq, probe);
    }
    // Send only the header, the used part of the prefix and the marks.
    let used = captured as usize + (marks as usize & 127) * MARK_SLOT_LEN;
    let len = IO_HEADER_LEN + (used & (4 * MAX_CAPTURE - 1));
    // SAFETY: `len` <= size_of::<IoEvent>() (header + masked data length).
    let bytes = unsafe { core::slice::from_raw_parts(ev as *const IoEvent as *const u8, len) };
    match EVENTS.output::<[u8]>(bytes, events_flags()) {
        Ok(()) => stat_add(probe, STAT_EVENTS, 1),
        Err(_) => stat_add(probe, STAT_RINGBUF_DROPS, 1),
    }
    Ok(())
}

/// A stream joined mid-way: adopt the frame cursor user space found, if it was
/// given for exactly the syscall before this one (the next sequence number).
#[inline(always)]
fn take_cursor_hint(st: &mut FdState, key: &FdKey, dir: usize) {
    let hint = match CURSOR_HINTS.get_ptr(key) {
        Some(h) => h,
        None => return,
    };
    // Constant indices: the verifier rejects variable offsets into stack copies.
    // SAFETY: `hint` points into a live CURSOR_HINTS value; plain field reads.
    let (valid, after_seq, cursor) = unsafe {
        if dir == Direction::Ingress.index() {
            ((*hint).valid[0], (*hint).after_seq[0], (*hint).cursor[0])
        } else {
            ((*hint).valid[1], (*hint).after_seq[1], (*hint).cursor[1])
        }
    };
    if valid != 0 && after_seq.wrapping_add(1) == st.next_seq[dir & 1] {
        st.cursor[dir & 1] = cursor;
        st.partial_len[dir & 1] = 0;
    }
}

/// Atomic fetch-add. SeqCst on purpose: LLVM's BPF backend lowers a Relaxed
/// atomicrmw add to the legacy non-fetching XADD even when the result is used (every
/// seq came out as the addend); SeqCst emits BPF_ATOMIC|BPF_ADD|BPF_FETCH.
#[inline(always)]
pub(crate) unsafe fn fetch_add(p: *mut u64, v: u64) -> u64 {
    // SAFETY: callers pass a pointer into a live map value, 8-byte aligned.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(p, v) }
}

/// Copies `len` user bytes from `src` to `ev.data[off..]`. Callers keep
/// `off + len <= MAX_CAPTURE`; the masks below restate that for the verifier (the
/// data area is 2 * MAX_CAPTURE long). At off == 0 a full MAX_CAPTURE copy is allowed.
#[inline(always)]
fn read_chunk(ev: &mut IoEvent, off: u32, src: u64, len: u32) -> bool {
    let (o, l) = if off == 0 {
        (0usize, len as usize & PREFIX_MASK)
    } else {
        (
            off as usize & (MAX_CAPTURE - 1),
            len as usize & (MAX_CAPTURE - 1),
        )
    };
    // SAFETY: the destination stays inside `ev.data` (masked offset and length); the helper checks
    // the user source and fails without faulting.
    let ret = unsafe {
        let dst = ev.data.as_mut_ptr().add(o);
        generated::bpf_probe_read_user(dst as *mut c_void, l as u32, src as *const c_void)
    };
    ret == 0
}

/// Copies the syscall's first `want` bytes from its iovecs, skipping empty ones
/// (Erlang's first iovec often is). Returns the bytes copied. The first MAX_IOVECS
/// iovecs are copied inline; a syscall with more (grpc's C-core writes each literal
/// of a new header block as its own iovec: 30 for a connection's first request)
/// continues in a bpf_loop, so the prefix is never cut at an iovec count.
#[inline(always)]
fn copy_iovecs(ev: &mut IoEvent, w: &mut Walk, iov: u64, cnt: u32, want: u32, probe: u32) -> u32 {
    let mut copied: u32 = 0;
    let n = if cnt > MAX_IOVECS { MAX_IOVECS } else { cnt };
    if iov == 0 {
        return 0;
    }
    for i in 0..MAX_IOVECS {
        if i >= n || copied >= want {
            return copied;
        }
        let v = match iovec_at(w, iov, i) {
            Some(v) => v,
            None => {
                stat_add(probe, STAT_READ_ERRORS, 1);
                return copied;
            }
        };
        match copy_iovec(ev, v, copied, want, probe) {
            Some(len) => copied += len,
            None => return copied,
        }
    }
    if cnt <= MAX_IOVECS || copied >= want {
        return copied;
    }
    let vcnt = if cnt > MAX_COPY_IOVECS {
        MAX_COPY_IOVECS
    } else {
        cnt
    };
    // Volatile: `w` is a `&mut`, so the compiler may assume the callback (which reaches
    // the same per-CPU value through the map) neither reads these stores nor changes
    // `captured`.
    // SAFETY: plain writes and a read of fields of the live per-CPU walk.
    unsafe {
        core::ptr::write_volatile(&mut w.iov, iov);
        core::ptr::write_volatile(&mut w.vi, MAX_IOVECS);
        core::ptr::write_volatile(&mut w.vcnt, vcnt);
        core::ptr::write_volatile(&mut w.captured, copied);
        core::ptr::write_volatile(&mut w.copy_want, want);
        core::ptr::write_volatile(&mut w.probe, probe);
    }
    // SAFETY: copy_step has the bpf_loop callback signature and reaches its state
    // through maps only.
    unsafe {
        generated::bpf_loop(
            MAX_COPY_IOVECS - MAX_IOVECS,
            copy_step as *const () as *mut c_void,
            core::ptr::null_mut(),
            0,
        );
    }
    // SAFETY: as above.
    unsafe { core::ptr::read_volatile(&w.captured) }
}

/// iovecs a prefix copy follows at most (the kernel's UIO_MAXIOV).
const MAX_COPY_IOVECS: u32 = 1024;

/// The per-CPU walk and record, for bpf_loop callbacks (which reach their state
/// through maps only).
#[inline(always)]
fn scratch() -> Option<(&'static mut Walk, &'static mut IoEvent)> {
    match (WALK_SCRATCH.get_ptr_mut(0), IO_SCRATCH.get_ptr_mut(0)) {
        // SAFETY: per-CPU scratch values from successful lookups; a BPF program is not
        // preempted, so nothing else uses them on this CPU meanwhile.
        (Some(w), Some(ev)) => unsafe { Some((&mut *w, &mut *ev)) },
        _ => None,
    }
}

/// bpf_loop callback of `copy_iovecs` beyond the inline iovecs: copies iovec `w.vi`
/// (state in WALK_SCRATCH: `captured` bytes copied of `copy_want`, iovecs up to
/// `vcnt`). Returns LOOP_STOP when the prefix is complete or an iovec cannot be read.
#[inline(never)]
extern "C" fn copy_step(_index: u64, _ctx: *mut c_void) -> i64 {
    let Some((w, ev)) = scratch() else {
        return LOOP_STOP;
    };
    let (copied, want) = (w.captured, w.copy_want);
    if w.vi >= w.vcnt || copied >= want || want > MAX_CAPTURE as u32 {
        return LOOP_STOP;
    }
    let v = match iovec_at(w, w.iov, w.vi) {
        Some(v) => v,
        None => {
            stat_add(w.probe, STAT_READ_ERRORS, 1);
            return LOOP_STOP;
        }
    };
    w.vi += 1;
    match copy_iovec(ev, v, copied, want, w.probe) {
        Some(len) => {
            w.captured = copied + len;
            LOOP_CONTINUE
        }
        None => LOOP_STOP,
    }
}

/// Copies iovec `v` (base, len) into the prefix at `copied`, at most up to `want`.
/// Returns the bytes copied (0 for an empty iovec), None when the read failed.
#[inline(always)]
fn copy_iovec(ev: &mut IoEvent, v: [u64; 2], copied: u32, want: u32, probe: u32) -> Option<u32> {
    if v[1] == 0 {
        return Some(0);
    }
    let room = want - copied;
    let len = if v[1] < room as u64 {
        v[1] as u32
    } else {
        room
    };
    if !read_chunk(ev, copied, v[0], len) {
        stat_add(probe, STAT_READ_ERRORS, 1);
        return None;
    }
    Some(len)
}
