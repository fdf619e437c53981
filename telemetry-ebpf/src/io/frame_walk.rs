//! The frame cursor: walks the HTTP/2 (or `{packet,4}`) frame headers through a
//! syscall's bytes, across its iovecs, and marks where each header lies, so user
//! space knows the frames of bytes it was not sent.

use super::*;

pub(super) const WALK_RUNNING: u32 = 0;
pub(super) const WALK_DONE: u32 = 1;
pub(super) const WALK_LOST: u32 = 2;
/// bpf_loop callback results.
pub(super) const LOOP_CONTINUE: i64 = 0;
pub(super) const LOOP_STOP: i64 = 1;
/// iovecs fetched per walk step while seeking the next header.
pub(super) const SEEK_IOVECS: u32 = 8;
/// Pieces (iovec fetches or copies) per mark: a header may straddle iovecs.
pub(super) const GATHER_STEPS: u32 = 8;
/// Data-area masks: prefix offsets stay below 2 * MAX_CAPTURE, mark slots below 128.
pub(super) const PREFIX_MASK: usize = 2 * MAX_CAPTURE - 1;
pub(super) const SLOT_MASK: usize = 127;
/// Mark bytes start after the slot's offset (u32) and len (u16) + pad.
pub(super) const SLOT_BYTES_OFF: usize = 8;

/// The frame walk of the syscall being handled (WALK_SCRATCH): the bpf_loop callback
/// reaches its state through this map only.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Walk {
    /// Bytes the syscall moved.
    pub(super) ret: u64,
    /// Where the next header bytes start (offset in this syscall's bytes).
    pub(super) pos: u64,
    /// The current iovec: offset of its first byte, its length and address.
    pub(super) vbase: u64,
    pub(super) vlen: u64,
    pub(super) vaddr: u64,
    /// iovec array, 0 for a plain buffer (then the only "iovec").
    pub(super) iov: u64,
    /// The last mark's range [mstart, mend): later headers inside it need no mark.
    pub(super) mstart: u64,
    pub(super) mend: u64,
    /// Where the last mark was meant to end: past `mend` when the syscall cut it
    /// (the next syscall's lean record carries the rest, see `FdState::mark_rest`).
    pub(super) mwant: u64,
    /// Data-area offset of the last mark's bytes.
    pub(super) mdata: u64,
    pub(super) vi: u32,
    pub(super) vcnt: u32,
    pub(super) captured: u32,
    pub(super) marks: u32,
    pub(super) probe: u32,
    /// Header length of the framing (9 or 4) and the fd kind.
    pub(super) hdr: u32,
    pub(super) fd_kind: u32,
    /// Header bytes already in `hbuf` (a header begun in the last syscall).
    pub(super) hgot: u32,
    pub(super) state: u32,
    /// More headers than mark slots: later headers were read into a scratch slot
    /// that is not sent.
    pub(super) overflow: u32,
    /// The prefix length a copy beyond the inline iovecs aims at (`copy_step`).
    pub(super) copy_want: u32,
    /// Bytes at the syscall's start to mark before the walk (`FdState::mark_rest`).
    pub(super) carry: u32,
    pub(super) hbuf: [u8; 16],
    /// The first `iovs_n` iovecs of the syscall, read in one helper call (see
    /// `load_iovecs`); 32 slots so that a masked length stays inside.
    pub(super) iovs_n: u32,
    pub(super) iovs: [[u64; 2]; 32],
}

/// iovecs read at once: a helper call costs about as much as copying a few hundred
/// bytes, and grpc's and the BEAM's sends carry several iovecs (frame headers and
/// payload slices), each read once for the copy and again by the frame walk.
pub(super) const CACHED_IOVECS: u32 = MAX_IOVECS;
const _: () = assert!(CACHED_IOVECS <= 32);

/// Reads the first iovecs of `iov` (at most CACHED_IOVECS of `cnt`) into `w.iovs`.
#[inline(always)]
pub(super) fn load_iovecs(w: &mut Walk, iov: u64, cnt: u32, probe: u32) {
    let n = if cnt > CACHED_IOVECS {
        CACHED_IOVECS
    } else {
        cnt
    };
    // 32 slots of 16 bytes: the mask keeps the length inside them for the verifier.
    // The volatile read keeps LLVM from dropping the mask (n <= 16 makes it look
    // redundant, and the verifier does not follow the min above).
    let size = n * 16;
    // SAFETY: a plain read of a local.
    let size = unsafe { core::ptr::read_volatile(&size) } & 511;
    // SAFETY: the destination is the walk's own array of 512 bytes; the helper checks the
    // user source and fails without faulting.
    let rc = unsafe {
        generated::bpf_probe_read_user(
            w.iovs.as_mut_ptr() as *mut c_void,
            size,
            iov as *const c_void,
        )
    };
    if rc == 0 {
        w.iovs_n = n;
    } else {
        stat_add(probe, STAT_READ_ERRORS, 1);
    }
}

/// iovec `vi` of the array at `iov`: from the cache when loaded, else read.
#[inline(always)]
pub(super) fn iovec_at(w: &Walk, iov: u64, vi: u32) -> Option<[u64; 2]> {
    if vi < w.iovs_n {
        return Some(w.iovs[(vi & 31) as usize]);
    }
    // struct iovec { void *iov_base; size_t iov_len; }
    // SAFETY: bpf_probe_read_user checks the user address and returns an error on a fault.
    unsafe { bpf_probe_read_user((iov + vi as u64 * 16) as *const [u64; 2]) }.ok()
}

/// Follows the fd's frame cursor through this syscall's `ret` bytes: writes marks
/// after the prefix for headers the prefix does not hold, updates the cursor, sets
/// the header's framing fields. Returns the number of marks written.
#[inline(always)]
pub(super) fn follow_frames(
    state: *mut FdState,
    dir: usize,
    ev: &mut IoEvent,
    pending: &PendingIo,
    ret: u64,
    captured: u32,
    probe: u32,
) -> u32 {
    // SAFETY: `state` points into a live WATCHED_FDS value.
    let st = unsafe { &mut *state };
    let dir = dir & 1;
    let cursor = st.cursor[dir];
    if cursor == CURSOR_UNKNOWN {
        return 0;
    }
    let partial = st.partial_len[dir] as u32;
    // The rest of a mark the last syscall cut (`carry_step` marks it in a lean record).
    // Not tested against `captured` here: splitting that precise value before the walk
    // doubles the verifier's work on the walk.
    let carry = st.mark_rest[dir] as u32;
    st.mark_rest[dir] = 0;
    ev.header.cursor_in = cursor;
    ev.header.partial_in = partial as u8;
    ev.header.frame_status = FrameStatus::Tracked as u8;
    // The common case for large frames: no header in this syscall at all.
    if partial == 0 && carry == 0 && (cursor as u64) >= ret {
        st.cursor[dir] = cursor - ret as u32;
        return 0;
    }
    let hdr = if st.fd_kind == FD_PIPE {
        PACKET4_HDR_LEN
    } else {
        HTTP2_HDR_LEN
    };
    let w = match WALK_SCRATCH.get_ptr_mut(0) {
        // SAFETY: a per-CPU scratch value from a successful lookup; a BPF program is not preempted,
        // so nothing else uses it on this CPU meanwhile.
        Some(w) => unsafe { &mut *w },
        None => return 0,
    };
    w.ret = ret;
    w.pos = 0;
    w.vbase = 0;
    w.mstart = 0;
    w.mend = 0;
    w.mwant = 0;
    w.mdata = 0;
    if pending.buf != 0 {
        w.iov = 0;
        w.vaddr = pending.buf;
        w.vlen = ret;
        w.vi = 0;
        w.vcnt = 1;
    } else {
        // No current iovec yet: the first seek fetches iovec 0.
        w.iov = pending.iov;
        w.vaddr = 0;
        w.vlen = 0;
        w.vi = u32::MAX;
        w.vcnt = pending.iovcnt;
    }
    w.captured = captured;
    w.marks = 0;
    w.overflow = 0;
    w.probe = probe;
    w.hdr = hdr;
    w.fd_kind = st.fd_kind;
    w.hgot = if partial < hdr { partial } else { 0 };
    w.state = WALK_RUNNING;
    w.hbuf[..8].copy_from_slice(&st.partial[dir]);
    if carry > 0 {
        w.pos = 0;
        w.carry = carry;
        // SAFETY: carry_step has the bpf_loop callback signature and reaches its state
        // through maps only. (A callback of its own: inlined here or as a branch of
        // walk_step, the copy loop multiplies the paths the verifier walks.)
        unsafe {
            generated::bpf_loop(
                1,
                carry_step as *const () as *mut c_void,
                core::ptr::null_mut(),
                0,
            );
        }
    }
    w.pos = if partial > 0 { 0 } else { cursor as u64 };

    // SAFETY: walk_step has the bpf_loop callback signature and reaches its state through maps
    // only.
    unsafe {
        generated::bpf_loop(
            MAX_WALK_STEPS,
            walk_step as *const () as *mut c_void,
            core::ptr::null_mut(),
            0,
        );
    }

    // SAFETY: a plain read of the walk's own field (see finish_io's re-reads).
    let ret = unsafe { core::ptr::read_volatile(&w.ret) };
    let mut lost = w.state != WALK_DONE;
    if !lost {
        if w.hgot > 0 {
            st.partial[dir].copy_from_slice(&w.hbuf[..8]);
            st.partial_len[dir] = w.hgot as u8;
            st.cursor[dir] = 0;
        } else {
            let next = w.pos - ret;
            if next < CURSOR_UNKNOWN as u64 {
                st.partial_len[dir] = 0;
                st.cursor[dir] = next as u32;
                st.mark_rest[dir] = mark_rest(w, next);
            } else {
                lost = true;
            }
        }
    }
    if !lost && w.overflow != 0 {
        ev.header.frame_status = FrameStatus::Overflow as u8;
    }
    if lost {
        if w.state != WALK_LOST {
            // Ran out of steps (the callback counts its own losses).
            stat_add(probe, STAT_CURSOR_LOST, 1);
        }
        st.cursor[dir] = CURSOR_UNKNOWN;
        st.partial_len[dir] = 0;
        ev.header.frame_status = FrameStatus::Lost as u8;
    }
    let marks = if w.marks > MAX_MARKS {
        MAX_MARKS
    } else {
        w.marks
    };
    ev.header.marks = marks as u16;
    marks
}

/// bpf_loop callback: one step of the walk (seek up to SEEK_IOVECS iovecs, or handle
/// one header). Returns LOOP_STOP when the walk is done or lost.
#[inline(never)]
pub(super) extern "C" fn walk_step(_index: u64, _ctx: *mut c_void) -> i64 {
    let Some((w, ev)) = scratch() else {
        return LOOP_STOP;
    };
    if w.state != WALK_RUNNING {
        return LOOP_STOP;
    }
    if w.pos >= w.ret {
        w.state = WALK_DONE;
        return LOOP_STOP;
    }
    let avail = w.ret - w.pos;
    let need = (w.hdr - w.hgot) as u64;
    // Header bytes present in this syscall (fewer than `need` when split at its end).
    let k = if need < avail { need } else { avail };
    // A header in the last MARK_BYTES of a full-size prefix (one that is not the whole
    // syscall) gets a mark too: its frame's first payload bytes (a header block, a
    // message's start) may run past the prefix, and its block would be cut there. (A
    // prefix shorter than MAX_CAPTURE is the operator's `capture.bytes`: values cut
    // there are cut, and reported absent.)
    let captured = w.captured as u64;
    let src = if w.pos + k <= captured
        && (w.pos + MARK_BYTES as u64 <= captured
            || captured >= w.ret
            || captured < MAX_CAPTURE as u64)
    {
        w.pos
    } else if w.pos >= w.mstart && w.pos + k <= w.mend && w.pos + need + MSG_PREFIX_LEN <= w.mwant {
        // Inside the last mark, with the frame's first payload bytes (a gRPC message's
        // length prefix) inside it too, or in the rest the next syscall carries.
        w.mdata + (w.pos - w.mstart)
    } else {
        // The header is beyond what was copied: find the iovec holding it (only
        // here, so a small write whose headers all lie in the prefix reads no
        // iovec at all).
        for _ in 0..SEEK_IOVECS {
            if w.vbase + w.vlen > w.pos {
                break;
            }
            if !next_iovec(w) {
                return lose(w);
            }
        }
        if w.vbase + w.vlen <= w.pos {
            return LOOP_CONTINUE;
        }
        // Out of slots: keep following the frames, rewriting the last slot, so the
        // cursor stays exact for the next syscall (the record says Overflow).
        if w.marks >= MAX_MARKS {
            w.overflow = 1;
            w.marks = MAX_MARKS - 1;
        }
        let n = if avail < MARK_BYTES as u64 {
            avail as u32
        } else {
            MARK_BYTES as u32
        };
        let got = gather(w, ev, n);
        if (got as u64) < k {
            return lose(w);
        }
        add_mark(w, ev, got, MARK_BYTES as u64)
    };
    // One bound check for the verifier, then unchecked byte reads.
    if src > (IO_DATA_AREA - 2 * MAX_HDR_LEN) as u64 {
        return lose(w);
    }
    let src = src as usize;
    for j in 0..MAX_HDR_LEN {
        if j as u64 >= k {
            break;
        }
        // SAFETY: `src + j` is below IO_DATA_AREA (checked just above).
        let b = unsafe { *ev.data.as_ptr().add(src + j) };
        w.hbuf[(w.hgot as usize + j) & 15] = b;
    }
    if k < need {
        // Split at the end: the rest comes with the next syscall.
        w.hgot += k as u32;
        w.pos = w.ret;
        w.state = WALK_DONE;
        return LOOP_STOP;
    }
    let len = match frame_len(w) {
        Some(l) => l,
        None => return lose(w),
    };
    w.pos += need + len as u64;
    w.hgot = 0;
    LOOP_CONTINUE
}

/// A gRPC message's length prefix: a header inside the last mark reuses it only when
/// these bytes after the header lie in it too (the lean timing reads message lengths).
pub(super) const MSG_PREFIX_LEN: u64 = 5;

/// bpf_loop callback run once before the walk: the first mark of a lean record holds
/// the `w.carry` bytes at the syscall's start that the last syscall's final mark was
/// meant to hold (see `FdState::mark_rest`).
#[inline(never)]
pub(super) extern "C" fn carry_step(_index: u64, _ctx: *mut c_void) -> i64 {
    let Some((w, ev)) = scratch() else {
        return LOOP_STOP;
    };
    // A full record's prefix starts at the same place: it has those bytes.
    if w.captured != 0 {
        return LOOP_STOP;
    }
    let want = w.carry as u64;
    let n = if want < w.ret { want } else { w.ret } as u32;
    let got = gather(w, ev, n);
    if got > 0 {
        add_mark(w, ev, got, want);
    }
    LOOP_STOP
}

/// Completes mark slot number `w.marks`, whose `got` bytes `gather` copied from `w.pos`
/// on (`want` were meant): writes its offset and length, makes it the last mark.
/// Returns the data-area offset of its bytes.
#[inline(always)]
pub(super) fn add_mark(w: &mut Walk, ev: &mut IoEvent, got: u32, want: u64) -> u64 {
    let slot = (w.captured as usize & PREFIX_MASK) + (w.marks as usize & SLOT_MASK) * MARK_SLOT_LEN;
    // SAFETY: `slot` is masked to lie inside `ev.data` with room for a whole mark slot.
    unsafe {
        let p = ev.data.as_mut_ptr().add(slot);
        core::ptr::write_unaligned(p as *mut u32, w.pos as u32);
        core::ptr::write_unaligned(p.add(4) as *mut u32, got);
    }
    w.marks += 1;
    w.mstart = w.pos;
    w.mend = w.pos + got as u64;
    w.mwant = w.pos + want;
    w.mdata = (slot + SLOT_BYTES_OFF) as u64;
    w.mdata
}

/// What of the walk's last mark the syscall cut (it ends at the syscall's end short of
/// where it was meant to), up to the `next` bytes left of the current frame.
#[inline(always)]
pub(super) fn mark_rest(w: &Walk, next: u64) -> u8 {
    if w.marks == 0 || next == 0 || w.mend != w.ret || w.mwant <= w.mend {
        return 0;
    }
    let rest = w.mwant - w.mend;
    let rest = if rest < next { rest } else { next };
    if rest > MARK_BYTES as u64 {
        MARK_BYTES as u8
    } else {
        rest as u8
    }
}

#[inline(always)]
pub(super) fn lose(w: &mut Walk) -> i64 {
    w.state = WALK_LOST;
    stat_add(w.probe, STAT_CURSOR_LOST, 1);
    LOOP_STOP
}

/// Makes the next iovec current. False when there is none or it cannot be read.
#[inline(always)]
pub(super) fn next_iovec(w: &mut Walk) -> bool {
    let vi = w.vi.wrapping_add(1);
    if w.iov == 0 || vi >= w.vcnt {
        return false;
    }
    match iovec_at(w, w.iov, vi) {
        Some(v) => {
            w.vbase += w.vlen;
            w.vaddr = v[0];
            w.vlen = v[1];
            w.vi = vi;
            true
        }
        None => {
            stat_add(w.probe, STAT_READ_ERRORS, 1);
            false
        }
    }
}

/// Copies up to `n` (<= MARK_BYTES) stream bytes from `w.pos` into the bytes of mark
/// slot number `w.marks`, walking iovecs from the current one without moving it (later
/// headers may lie inside these bytes). Returns the bytes copied.
#[inline(always)]
pub(super) fn gather(w: &Walk, ev: &mut IoEvent, n: u32) -> u32 {
    let (mut base, mut len, mut addr, mut vi) = (w.vbase, w.vlen, w.vaddr, w.vi);
    let mut got: u32 = 0;
    for _ in 0..GATHER_STEPS {
        if got >= n {
            break;
        }
        let at = w.pos + got as u64;
        if at >= base + len {
            vi = vi.wrapping_add(1);
            if w.iov == 0 || vi >= w.vcnt {
                break;
            }
            match iovec_at(w, w.iov, vi) {
                Some(v) => {
                    base += len;
                    addr = v[0];
                    len = v[1];
                }
                None => break,
            }
            continue;
        }
        let room = base + len - at;
        let want = (n - got) as u64;
        let piece = if want < room { want } else { room } as u32;
        // Masked parts give the verifier its bound (an AND with a non power of two
        // minus one would not clamp, it would clear bits).
        let dst = (w.captured as usize & PREFIX_MASK)
            + (w.marks as usize & SLOT_MASK) * MARK_SLOT_LEN
            + SLOT_BYTES_OFF
            + (got as usize & (MARK_BYTES - 1));
        // SAFETY: the destination stays inside `ev.data` (masked offset and length); the helper
        // checks the user source and fails without faulting.
        let rc = unsafe {
            generated::bpf_probe_read_user(
                ev.data.as_mut_ptr().add(dst) as *mut c_void,
                piece & (2 * MARK_BYTES as u32 - 1),
                (addr + (at - base)) as *const c_void,
            )
        };
        if rc != 0 {
            stat_add(w.probe, STAT_READ_ERRORS, 1);
            break;
        }
        got += piece;
    }
    got
}

/// The frame's payload length from a complete header in `w.hbuf`, or None when the
/// header cannot be one (lost sync).
#[inline(always)]
pub(super) fn frame_len(w: &Walk) -> Option<u32> {
    let h = &w.hbuf;
    if w.fd_kind == FD_PIPE {
        let l = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
        if l > PACKET4_MAX_LEN {
            return None;
        }
        Some(l)
    } else {
        // Known frame types only, and the reserved bit of the stream id clear.
        if h[3] > HTTP2_MAX_FRAME_TYPE || h[5] & 0x80 != 0 {
            return None;
        }
        Some((h[0] as u32) << 16 | (h[1] as u32) << 8 | h[2] as u32)
    }
}
