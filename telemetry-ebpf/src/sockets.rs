//! Socket bookkeeping for watched processes: new sockets (accept/connect) become
//! watched in the kernel at once, so no byte is missed before user space reacts;
//! close of a watched fd unwatches it and reports the final totals.
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::tracepoint,
    programs::TracePointContext,
    EbpfContext,
};
use telemetry_common::{
    Direction, FdEvent, FdKey, FdState, PendingIo, RecordKind, Syscall, FD_SOCKET,
    HTTP2_PREFACE_LEN, PID_WATCH_NEW_SOCKETS, PROBE_ACCEPT, PROBE_CLOSE, PROBE_CONNECT,
    STAT_EVENTS, STAT_MAP_FULL, STAT_RINGBUF_DROPS,
};

use crate::maps::{
    ctx_u64, events_flags, io_watched, raise_watch_generation, stat_add, BPF_ANY, BPF_NOEXIST,
    EEXIST, EVENTS, PENDING_IO, WATCHED_FDS, WATCHED_PIDS,
};

const ARG0: usize = 16;
const RET: usize = 16;

#[tracepoint]
pub fn sys_enter_connect(ctx: TracePointContext) -> u32 {
    match try_enter_connect(&ctx) {
        Ok(()) | Err(()) => 0,
    }
}

#[tracepoint]
pub fn sys_exit_connect(ctx: TracePointContext) -> u32 {
    match try_exit_connect(&ctx) {
        Ok(()) | Err(()) => 0,
    }
}

#[tracepoint]
pub fn sys_exit_accept(ctx: TracePointContext) -> u32 {
    match try_exit_accept(&ctx, Syscall::Accept) {
        Ok(()) | Err(()) => 0,
    }
}

#[tracepoint]
pub fn sys_exit_accept4(ctx: TracePointContext) -> u32 {
    match try_exit_accept(&ctx, Syscall::Accept4) {
        Ok(()) | Err(()) => 0,
    }
}

#[tracepoint]
pub fn sys_enter_close(ctx: TracePointContext) -> u32 {
    match try_enter_close(&ctx) {
        Ok(()) | Err(()) => 0,
    }
}

/// True when `tgid` asked for its new sockets to be watched (one lookup).
#[inline(always)]
fn wants_new_sockets(tgid: u32) -> bool {
    // SAFETY: the value is copied out at once; a concurrent update leaves valid map memory.
    match unsafe { WATCHED_PIDS.get(tgid) } {
        Some(flags) => *flags & PID_WATCH_NEW_SOCKETS != 0,
        None => false,
    }
}

/// Starts watching (tgid, fd) with fresh counters and the given frame cursors
/// (index `Direction::index`). `flags` BPF_NOEXIST keeps an entry user space
/// may already have made (and its sequence numbers).
#[inline(always)]
fn watch_fd<C: EbpfContext>(ctx: &C, tgid: u32, fd: u32, flags: u64, probe: u32, cursor: [u32; 2]) {
    let state = FdState::new(FD_SOCKET, cursor);
    match WATCHED_FDS.insert(FdKey { tgid, fd }, state, flags) {
        // After the insert: the exits' cached misses of this fd number are stale now.
        Ok(()) => raise_watch_generation(),
        Err(e) if -(e as i64) == EEXIST => {}
        Err(_) => {
            stat_add(probe, STAT_MAP_FULL, 1);
            aya_log_ebpf::warn!(ctx, "WATCHED_FDS full: tgid {} fd {} not watched", tgid, fd);
        }
    }
}

#[inline(always)]
fn emit_fd_event(
    kind: RecordKind,
    pid_tgid: u64,
    fd: i32,
    ret: i64,
    sys: Syscall,
    state: Option<&FdState>,
    probe: u32,
) {
    let (bytes, calls) = match state {
        Some(s) => (s.bytes, s.calls),
        None => ([0; 2], [0; 2]),
    };
    let ev = FdEvent {
        kind: kind as u32,
        tgid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        fd,
        ret,
        // SAFETY: a helper call without arguments.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        syscall: sys as u8,
        _pad: [0; 7],
        bytes,
        calls,
    };
    match EVENTS.output::<FdEvent>(&ev, events_flags()) {
        Ok(()) => stat_add(probe, STAT_EVENTS, 1),
        Err(_) => stat_add(probe, STAT_RINGBUF_DROPS, 1),
    }
}

#[inline(always)]
fn try_enter_connect(ctx: &TracePointContext) -> Result<(), ()> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if !wants_new_sockets(tgid) {
        return Ok(());
    }
    // The fd is known at enter; a non-blocking connect returns -EINPROGRESS and its
    // first bytes may follow before any exit handling in user space.
    let fd = ctx_u64(ctx, ARG0) as u32;
    // HTTP/2 client: our first bytes are the 24-byte preface, the peer starts with a frame.
    let mut cursor = [0u32; 2];
    cursor[Direction::Egress.index()] = HTTP2_PREFACE_LEN;
    watch_fd(ctx, tgid, fd, BPF_NOEXIST, PROBE_CONNECT, cursor);
    let pending = PendingIo {
        // SAFETY: a helper call without arguments.
        ts_enter_ns: unsafe { bpf_ktime_get_ns() },
        buf: 0,
        iov: 0,
        iovcnt: 0,
        fd: fd as i32,
        syscall: Syscall::Connect as u8,
        direction: 0,
        _pad: [0; 6],
    };
    if PENDING_IO.insert(pid_tgid, pending, BPF_ANY).is_err() {
        stat_add(PROBE_CONNECT, STAT_MAP_FULL, 1);
    }
    Ok(())
}

#[inline(always)]
fn try_exit_connect(ctx: &TracePointContext) -> Result<(), ()> {
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: the value is copied out at once; a concurrent update leaves valid map memory.
    let pending = match unsafe { PENDING_IO.get(pid_tgid) } {
        Some(p) => *p,
        None => return Ok(()),
    };
    let _ = PENDING_IO.remove(pid_tgid);
    if pending.syscall != Syscall::Connect as u8 {
        return Ok(());
    }
    let ret = ctx_u64(ctx, RET) as i64;
    emit_fd_event(
        RecordKind::FdOpen,
        pid_tgid,
        pending.fd,
        ret,
        Syscall::Connect,
        None,
        PROBE_CONNECT,
    );
    Ok(())
}

#[inline(always)]
fn try_exit_accept(ctx: &TracePointContext, sys: Syscall) -> Result<(), ()> {
    let ret = ctx_u64(ctx, RET) as i64;
    if ret < 0 {
        return Ok(());
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if !wants_new_sockets(tgid) {
        return Ok(());
    }
    // A fresh fd number: any entry left for it (a close we missed) is stale, replace it.
    // HTTP/2 server: the peer's first bytes are the preface.
    let mut cursor = [0u32; 2];
    cursor[Direction::Ingress.index()] = HTTP2_PREFACE_LEN;
    watch_fd(ctx, tgid, ret as u32, BPF_ANY, PROBE_ACCEPT, cursor);
    emit_fd_event(
        RecordKind::FdOpen,
        pid_tgid,
        ret as i32,
        ret,
        sys,
        None,
        PROBE_ACCEPT,
    );
    Ok(())
}

#[inline(always)]
fn try_enter_close(ctx: &TracePointContext) -> Result<(), ()> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    // The miss path of every other process: one inlined array lookup (a close is
    // rare per process, so the hash lookup below is usually cache-cold: ~0.6 us).
    if !io_watched(tgid) {
        return Ok(());
    }
    let key = FdKey {
        tgid,
        fd: ctx_u64(ctx, ARG0) as u32,
    };
    // A watched process's other fds: one lookup.
    // SAFETY: the value is copied out at once; a concurrent update leaves valid map memory.
    let state = match unsafe { WATCHED_FDS.get(key) } {
        Some(s) => *s,
        None => return Ok(()),
    };
    let _ = WATCHED_FDS.remove(key);
    emit_fd_event(
        RecordKind::FdClose,
        pid_tgid,
        key.fd as i32,
        0,
        Syscall::Close,
        Some(&state),
        PROBE_CLOSE,
    );
    Ok(())
}
