//! Whole requests for repro scripts: an egress syscall of a request sender (an fd in
//! FULL_CAPTURE_FDS, filled by user space while repro is on) also sends the bytes
//! beyond its record's prefix, as IoChunk records of CHUNK_BYTES, at most the loader's
//! limit per syscall (`[repro] max_payload_bytes`, at most MAX_CHUNKS), just before the
//! record itself (so they precede it in the ring).
//! Every other fd pays nothing: the global is checked first, then one lookup, and
//! only for egress syscalls longer than the prefix.
use core::ffi::c_void;

use aya_ebpf::helpers::{bpf_probe_read_user, generated};
use telemetry_common::{
    Direction, FdKey, IoChunk, PendingIo, RecordKind, CHUNK_BYTES, IO_CHUNK_HEADER_LEN, MAX_CHUNKS,
    STAT_READ_ERRORS, STAT_RINGBUF_DROPS,
};

use crate::maps::{
    events_flags, full_capture_chunks, stat_add, CHUNK_SCRATCH, CHUNK_WALK, EVENTS,
    FULL_CAPTURE_FDS,
};

/// Loop steps per chunk: its copies and the iovec fetches between them (HTTP/2 frame
/// headers often sit in iovecs of their own).
const STEPS_PER_CHUNK: u32 = 4;
/// Linux's UIO_MAXIOV.
const MAX_IOV: u32 = 1024;
const STATE_SETUP: u32 = 0;
const STATE_RUNNING: u32 = 1;
const LOOP_CONTINUE: i64 = 0;
const LOOP_STOP: i64 = 1;

#[repr(C)]
#[derive(Clone, Copy)]
pub struct ChunkWalk {
    /// Bytes the syscall moved; the next byte to send.
    ret: u64,
    pos: u64,
    /// The current iovec: offset of its first byte, its length and address.
    vbase: u64,
    vlen: u64,
    vaddr: u64,
    /// iovec array, 0 for a plain buffer.
    iov: u64,
    seq: u64,
    tgid: u32,
    fd: i32,
    vi: u32,
    vcnt: u32,
    probe: u32,
    failed: u32,
    /// The syscall's plain buffer (0 for an iovec array), direction, walk state.
    buf: u64,
    dir: u32,
    state: u32,
    /// Chunks this syscall may send.
    limit: u32,
    _pad: u32,
    /// Bytes in the chunk being filled, its offset, chunks sent.
    filled: u32,
    sent: u32,
    start: u64,
}

/// Sends the syscall's bytes from `captured` on when its fd is a request sender.
/// Straight-line here (the caller's verification must not branch on it): every
/// check and the setup happen in the loop's first step.
#[inline(always)]
pub fn emit_chunks(
    key: &FdKey,
    pending: &PendingIo,
    ret: u64,
    captured: u32,
    seq: u64,
    probe: u32,
) {
    let limit = full_capture_chunks();
    // One branch for the common cases (repro off, a read, a syscall within its
    // prefix): the caller's verification stays as it was.
    let beyond =
        (ret > captured as u64) as u32 & (pending.direction == Direction::Egress as u8) as u32;
    if limit * beyond == 0 {
        return;
    }
    let limit = if limit > MAX_CHUNKS {
        MAX_CHUNKS
    } else {
        limit
    };
    let w = match CHUNK_WALK.get_ptr_mut(0) {
        // SAFETY: a per-CPU scratch value; a BPF program is not preempted.
        Some(w) => unsafe { &mut *w },
        None => return,
    };
    w.ret = ret;
    w.pos = captured as u64;
    w.seq = seq;
    w.tgid = key.tgid;
    w.fd = pending.fd;
    w.probe = probe;
    w.buf = pending.buf;
    w.iov = pending.iov;
    w.vcnt = pending.iovcnt;
    w.dir = pending.direction as u32;
    w.state = STATE_SETUP;
    w.limit = limit;
    // SAFETY: chunk_step has the bpf_loop callback signature and reaches its state
    // through maps only.
    unsafe {
        generated::bpf_loop(
            limit * STEPS_PER_CHUNK + 64,
            chunk_step as *const () as *mut c_void,
            core::ptr::null_mut(),
            0,
        );
    }
}

/// First step: is this a request sender's egress with bytes beyond the prefix?
#[inline(always)]
fn setup(w: &mut ChunkWalk) -> bool {
    if w.dir != Direction::Egress as u32 || w.ret <= w.pos {
        return false;
    }
    let key = FdKey {
        tgid: w.tgid,
        fd: w.fd as u32,
    };
    if FULL_CAPTURE_FDS.get_ptr(&key).is_none() {
        return false;
    }
    w.failed = 0;
    w.filled = 0;
    w.sent = 0;
    w.start = w.pos;
    w.vbase = 0;
    if w.buf != 0 {
        w.vaddr = w.buf;
        w.vlen = w.ret;
        w.vi = 0;
        w.vcnt = 1;
        w.iov = 0;
    } else {
        w.vaddr = 0;
        w.vlen = 0;
        w.vi = u32::MAX;
        if w.vcnt > MAX_IOV {
            w.vcnt = MAX_IOV;
        }
    }
    true
}

/// bpf_loop callback: one step (fetch the next iovec, or copy one piece into the
/// chunk being filled, sending it when full or at the end). One step per call keeps
/// the callback small for the verifier.
#[inline(never)]
extern "C" fn chunk_step(_index: u64, _ctx: *mut c_void) -> i64 {
    let (w, c) = match (CHUNK_WALK.get_ptr_mut(0), CHUNK_SCRATCH.get_ptr_mut(0)) {
        // SAFETY: per-CPU scratch values; a BPF program is not preempted.
        (Some(w), Some(c)) => unsafe { (&mut *w, &mut *c) },
        _ => return LOOP_STOP,
    };
    if w.state == STATE_SETUP {
        if !setup(w) {
            return LOOP_STOP;
        }
        w.state = STATE_RUNNING;
    }
    if w.failed != 0 || w.sent >= w.limit {
        return LOOP_STOP;
    }
    if w.pos >= w.ret {
        if w.filled > 0 {
            flush(w, c);
        }
        return LOOP_STOP;
    }
    if w.pos >= w.vbase + w.vlen {
        // Next iovec (a plain buffer has only one).
        let next = w.vi.wrapping_add(1);
        if w.iov == 0 || next >= w.vcnt {
            w.failed = 1;
            if w.filled > 0 {
                flush(w, c);
            }
            return LOOP_STOP;
        }
        if w.vi != u32::MAX {
            w.vbase += w.vlen;
        }
        // SAFETY: the helper checks the user address and fails without faulting.
        match unsafe { bpf_probe_read_user((w.iov + next as u64 * 16) as *const [u64; 2]) } {
            Ok(v) => {
                w.vi = next;
                w.vaddr = v[0];
                w.vlen = v[1];
                return LOOP_CONTINUE;
            }
            Err(_) => {
                stat_add(w.probe, STAT_READ_ERRORS, 1);
                w.failed = 1;
                if w.filled > 0 {
                    flush(w, c);
                }
                return LOOP_STOP;
            }
        }
    }
    let in_vec = w.vbase + w.vlen - w.pos;
    let in_ret = w.ret - w.pos;
    let room = (CHUNK_BYTES as u32 - w.filled) as u64;
    let mut n = if in_vec < room { in_vec } else { room };
    if in_ret < n {
        n = in_ret;
    }
    let src = w.vaddr + (w.pos - w.vbase);
    if !copy(c, w.filled, src, n as u32) {
        stat_add(w.probe, STAT_READ_ERRORS, 1);
        w.failed = 1;
        if w.filled > 0 {
            flush(w, c);
        }
        return LOOP_STOP;
    }
    w.filled += n as u32;
    w.pos += n;
    if w.filled >= CHUNK_BYTES as u32 || w.pos >= w.ret {
        flush(w, c);
    }
    LOOP_CONTINUE
}

/// Sends the chunk filled so far and starts the next one.
#[inline(always)]
fn flush(w: &mut ChunkWalk, c: &mut IoChunk) {
    c.header.kind = RecordKind::IoChunk as u32;
    c.header.tgid = w.tgid;
    c.header.fd = w.fd;
    c.header.direction = Direction::Egress as u8;
    c.header._pad = [0; 3];
    c.header.seq = w.seq;
    c.header.offset = w.start as u32;
    c.header.len = w.filled;
    // SAFETY: a plain read of a map value's field (volatile keeps the mask).
    let filled = unsafe { core::ptr::read_volatile(&w.filled) };
    let len = IO_CHUNK_HEADER_LEN + (filled as usize & (2 * CHUNK_BYTES - 1));
    // SAFETY: `len` <= size_of::<IoChunk>() (header + masked data length).
    let bytes = unsafe { core::slice::from_raw_parts(c as *const IoChunk as *const u8, len) };
    if EVENTS.output::<[u8]>(bytes, events_flags()).is_err() {
        stat_add(w.probe, STAT_RINGBUF_DROPS, 1);
        // The rest would not be contiguous with what was sent: stop.
        w.failed = 1;
    }
    w.sent += 1;
    w.filled = 0;
    w.start = w.pos;
}

/// Copies `len` user bytes to `c.data[off..]`; `off + len <= CHUNK_BYTES` (the masks
/// restate it for the verifier; the data area is twice that).
#[inline(always)]
fn copy(c: &mut IoChunk, off: u32, src: u64, len: u32) -> bool {
    // Volatile: the compiler knows `len <= CHUNK_BYTES` and would drop the masks the
    // verifier needs to see.
    // SAFETY: plain reads of locals.
    let (off, len) = unsafe {
        (
            core::ptr::read_volatile(&off),
            core::ptr::read_volatile(&len),
        )
    };
    let (o, l) = if off == 0 {
        (0usize, len as usize & (2 * CHUNK_BYTES - 1))
    } else {
        (
            off as usize & (CHUNK_BYTES - 1),
            len as usize & (CHUNK_BYTES - 1),
        )
    };
    // SAFETY: the destination stays inside `c.data`; the helper checks the source.
    let ret = unsafe {
        let dst = c.data.as_mut_ptr().add(o);
        generated::bpf_probe_read_user(dst as *mut c_void, l as u32, src as *const c_void)
    };
    ret == 0
}
