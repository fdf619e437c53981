//! read/write family: capture the payload of syscalls on watched fds.
//!
//! Enter: one WATCHED_FDS lookup (the only cost for every other fd on the host); on a
//! hit the arguments are parked in PENDING_IO. Exit: one PENDING_IO lookup; on a hit
//! the payload is copied into a per-CPU IoEvent and sent with only its used length.
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
    FdKey, IoEvent, PendingIo, Syscall, DIR_EGRESS, DIR_INGRESS, IO_DATA_AREA, IO_HEADER_LEN,
    KIND_IO, MAX_CAPTURE, MAX_IOVECS, PROBE_READ, PROBE_READV, PROBE_RECVFROM, PROBE_RECVMSG,
    PROBE_SENDMSG, PROBE_SENDTO, PROBE_WRITE, PROBE_WRITEV, STAT_EVENTS, STAT_MAP_FULL,
    STAT_READ_ERRORS, STAT_RINGBUF_DROPS, STAT_TRUNCATED,
};

use crate::maps::{
    capture_bytes, ctx_u64, stat_add, BPF_ANY, EVENTS, IO_SCRATCH, PENDING_IO, WATCHED_FDS,
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

// Syscall tracepoint records: args start at offset 16, 8 bytes each; exit's ret at 16.
const ARG0: usize = 16;
const ARG1: usize = 24;
const ARG2: usize = 32;
const RET: usize = 16;

macro_rules! io_probes {
    ($enter:ident, $exit:ident, $sys:expr, $dir:expr, $probe:expr, $buf:expr) => {
        #[tracepoint]
        pub fn $enter(ctx: TracePointContext) -> u32 {
            match try_enter(&ctx, $sys, $dir, $probe, $buf) {
                Ok(()) | Err(()) => 0,
            }
        }

        #[tracepoint]
        pub fn $exit(ctx: TracePointContext) -> u32 {
            match try_exit(&ctx, $sys, $probe) {
                Ok(()) | Err(()) => 0,
            }
        }
    };
}

io_probes!(
    sys_enter_read,
    sys_exit_read,
    Syscall::Read,
    DIR_INGRESS,
    PROBE_READ,
    Buf::Plain
);
io_probes!(
    sys_enter_write,
    sys_exit_write,
    Syscall::Write,
    DIR_EGRESS,
    PROBE_WRITE,
    Buf::Plain
);
io_probes!(
    sys_enter_readv,
    sys_exit_readv,
    Syscall::Readv,
    DIR_INGRESS,
    PROBE_READV,
    Buf::Vec
);
io_probes!(
    sys_enter_writev,
    sys_exit_writev,
    Syscall::Writev,
    DIR_EGRESS,
    PROBE_WRITEV,
    Buf::Vec
);
io_probes!(
    sys_enter_recvfrom,
    sys_exit_recvfrom,
    Syscall::Recvfrom,
    DIR_INGRESS,
    PROBE_RECVFROM,
    Buf::Plain
);
io_probes!(
    sys_enter_sendto,
    sys_exit_sendto,
    Syscall::Sendto,
    DIR_EGRESS,
    PROBE_SENDTO,
    Buf::Plain
);
io_probes!(
    sys_enter_recvmsg,
    sys_exit_recvmsg,
    Syscall::Recvmsg,
    DIR_INGRESS,
    PROBE_RECVMSG,
    Buf::Msg
);
io_probes!(
    sys_enter_sendmsg,
    sys_exit_sendmsg,
    Syscall::Sendmsg,
    DIR_EGRESS,
    PROBE_SENDMSG,
    Buf::Msg
);

#[inline(always)]
fn try_enter(
    ctx: &TracePointContext,
    sys: Syscall,
    dir: u8,
    probe: u32,
    buf: Buf,
) -> Result<(), ()> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let fd = ctx_u64(ctx, ARG0) as u32;
    let key = FdKey {
        tgid: (pid_tgid >> 32) as u32,
        fd,
    };
    // The miss path: exactly one hash lookup.
    if WATCHED_FDS.get_ptr(key).is_none() {
        return Ok(());
    }
    let arg = ctx_u64(ctx, ARG1);
    let mut pending = PendingIo {
        ts_enter_ns: unsafe { bpf_ktime_get_ns() },
        buf: 0,
        iov: 0,
        iovcnt: 0,
        fd: fd as i32,
        syscall: sys as u8,
        direction: dir,
        _pad: [0; 6],
    };
    match buf {
        Buf::Plain => pending.buf = arg,
        Buf::Vec => {
            pending.iov = arg;
            pending.iovcnt = ctx_u64(ctx, ARG2) as u32;
        }
        Buf::Msg => {
            // user_msghdr: name, namelen, msg_iov (+16), msg_iovlen (+24).
            match unsafe { bpf_probe_read_user(arg as *const [u64; 4]) } {
                Ok(hdr) => {
                    pending.iov = hdr[2];
                    pending.iovcnt = hdr[3] as u32;
                }
                Err(_) => stat_add(probe, STAT_READ_ERRORS, 1),
            }
        }
    }
    if PENDING_IO.insert(pid_tgid, pending, BPF_ANY).is_err() {
        stat_add(probe, STAT_MAP_FULL, 1);
    }
    Ok(())
}

#[inline(always)]
fn try_exit(ctx: &TracePointContext, sys: Syscall, probe: u32) -> Result<(), ()> {
    let pid_tgid = bpf_get_current_pid_tgid();
    // The miss path: exactly one hash lookup.
    let pending = match unsafe { PENDING_IO.get(pid_tgid) } {
        Some(p) => *p,
        None => return Ok(()),
    };
    let _ = PENDING_IO.remove(pid_tgid);
    if pending.syscall != sys as u8 {
        // Stale entry from a syscall whose exit we never saw.
        return Ok(());
    }
    let ret = ctx_u64(ctx, RET) as i64;
    let tgid = (pid_tgid >> 32) as u32;
    let key = FdKey {
        tgid,
        fd: pending.fd as u32,
    };
    // Closed (by another thread) while the call was in flight: nothing to attribute.
    let state = WATCHED_FDS.get_ptr_mut(key).ok_or(())?;
    let dir = (pending.direction & 1) as usize;
    // Atomic: several threads of the process may use the same fd on different CPUs.
    // (The bpf target has no AtomicU64::fetch_add; the intrinsic lowers to BPF_ATOMIC.)
    let seq = unsafe { fetch_add(core::ptr::addr_of_mut!((*state).next_seq[dir]), 1) };
    unsafe {
        fetch_add(core::ptr::addr_of_mut!((*state).calls[dir]), 1);
        if ret > 0 {
            fetch_add(core::ptr::addr_of_mut!((*state).bytes[dir]), ret as u64);
        }
    }

    let ev = IO_SCRATCH.get_ptr_mut(0).ok_or(())?;
    let ev = unsafe { &mut *ev };
    ev.header.kind = KIND_IO;
    ev.header.tgid = tgid;
    ev.header.tid = pid_tgid as u32;
    ev.header.fd = pending.fd;
    ev.header.direction = pending.direction;
    ev.header.syscall = pending.syscall;
    ev.header._pad = [0; 2];
    ev.header.ret = ret;
    ev.header.ts_enter_ns = pending.ts_enter_ns;
    ev.header.ts_exit_ns = unsafe { bpf_ktime_get_ns() };
    ev.header.seq = seq;

    let mut captured: u32 = 0;
    if ret > 0 {
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
            copy_iovecs(ev, pending.iov, pending.iovcnt, want, probe)
        };
        let moved = ret as u64;
        if moved > captured as u64 {
            stat_add(probe, STAT_TRUNCATED, moved - captured as u64);
        }
    }
    ev.header.captured_len = captured;

    // Send only the header and the used part of the data area.
    let len = IO_HEADER_LEN + (captured as usize & (IO_DATA_AREA - 1));
    let bytes = unsafe { core::slice::from_raw_parts(ev as *const IoEvent as *const u8, len) };
    match EVENTS.output::<[u8]>(bytes, 0) {
        Ok(()) => stat_add(probe, STAT_EVENTS, 1),
        Err(_) => stat_add(probe, STAT_RINGBUF_DROPS, 1),
    }
    Ok(())
}

/// Atomic fetch-add. SeqCst on purpose: LLVM's BPF backend lowers a Relaxed
/// atomicrmw add to the legacy non-fetching XADD even when the result is used (every
/// seq came out as the addend); SeqCst emits BPF_ATOMIC|BPF_ADD|BPF_FETCH.
#[inline(always)]
unsafe fn fetch_add(p: *mut u64, v: u64) -> u64 {
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(p, v) }
}

/// Copies `len` user bytes from `src` to `ev.data[off..]`. Callers keep
/// `off + len <= MAX_CAPTURE`; the masks below restate that for the verifier (the
/// data area is 2 * MAX_CAPTURE long). At off == 0 a full MAX_CAPTURE copy is allowed.
#[inline(always)]
fn read_chunk(ev: &mut IoEvent, off: u32, src: u64, len: u32) -> bool {
    let (o, l) = if off == 0 {
        (0usize, len as usize & (IO_DATA_AREA - 1))
    } else {
        (
            off as usize & (MAX_CAPTURE - 1),
            len as usize & (MAX_CAPTURE - 1),
        )
    };
    let ret = unsafe {
        let dst = ev.data.as_mut_ptr().add(o);
        generated::bpf_probe_read_user(dst as *mut c_void, l as u32, src as *const c_void)
    };
    ret == 0
}

/// Walks up to MAX_IOVECS iovecs, skipping empty ones (Erlang's first iovec often is),
/// until `want` bytes are copied. Returns the bytes copied.
#[inline(always)]
fn copy_iovecs(ev: &mut IoEvent, iov: u64, cnt: u32, want: u32, probe: u32) -> u32 {
    let mut copied: u32 = 0;
    let n = if cnt > MAX_IOVECS { MAX_IOVECS } else { cnt };
    if iov == 0 {
        return 0;
    }
    for i in 0..MAX_IOVECS {
        if i >= n || copied >= want {
            break;
        }
        // struct iovec { void *iov_base; size_t iov_len; }
        let v = match unsafe { bpf_probe_read_user((iov + i as u64 * 16) as *const [u64; 2]) } {
            Ok(v) => v,
            Err(_) => {
                stat_add(probe, STAT_READ_ERRORS, 1);
                break;
            }
        };
        if v[1] == 0 {
            continue;
        }
        let room = want - copied;
        let len = if v[1] < room as u64 {
            v[1] as u32
        } else {
            room
        };
        if !read_chunk(ev, copied, v[0], len) {
            stat_add(probe, STAT_READ_ERRORS, 1);
            break;
        }
        copied += len;
    }
    copied
}
