//! Maps shared by all hooks, loader-set globals and small helpers around them.
use aya_ebpf::{
    helpers::generated,
    macros::map,
    maps::{Array, HashMap, PerCpuArray, RingBuf},
};
use telemetry_common::{
    CursorHint, FdKey, FdState, IoChunk, IoEvent, PendingIo, SerializePending, MAX_CAPTURE,
    MAX_CURSOR_HINTS, MAX_FULL_CAPTURE_FDS, MAX_PENDING_IO, MAX_SERIALIZE_PENDING, MAX_WATCHED_FDS,
    MAX_WATCHED_PIDS, SCHED_PID_WORDS, SPLIT_GATE_GENERATION, SPLIT_GATE_PAUSED, STATS_LEN,
    STAT_KINDS,
};

/// Ring buffer to user space. The loader resizes it (KernelConfig.ring_buffer_bytes).
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

#[map]
pub static WATCHED_FDS: HashMap<FdKey, FdState> = HashMap::with_max_entries(MAX_WATCHED_FDS, 0);

#[map]
pub static WATCHED_PIDS: HashMap<u32, u32> = HashMap::with_max_entries(MAX_WATCHED_PIDS, 0);

#[map]
pub static PENDING_IO: HashMap<u64, PendingIo> = HashMap::with_max_entries(MAX_PENDING_IO, 0);

/// Frame cursors learnt in user space for streams joined mid-way (read only where the
/// kernel's own cursor is unknown, so a stream in sync never looks here).
#[map]
pub static CURSOR_HINTS: HashMap<FdKey, CursorHint> =
    HashMap::with_max_entries(MAX_CURSOR_HINTS, 0);

/// Bitmap of sched-watched tgids (see telemetry_common::MAP_SCHED_PIDS).
#[map]
pub static SCHED_PIDS: Array<u64> = Array::with_max_entries(SCHED_PID_WORDS, 0);

/// Bitmap of the tgids that may have watched fds (see telemetry_common::MAP_IO_PIDS).
#[map]
pub static IO_PIDS: Array<u64> = Array::with_max_entries(SCHED_PID_WORDS, 0);

/// Whether `tgid` may have watched fds: an inlined array lookup and a bit test.
#[inline(always)]
pub fn io_watched(tgid: u32) -> bool {
    match IO_PIDS.get(tgid >> 6) {
        Some(word) => (*word >> (tgid & 63)) & 1 != 0,
        None => false,
    }
}

/// Generation of the set of watched fds (telemetry_common::MAP_WATCH_GEN).
#[map]
pub static WATCH_GEN: Array<u64> = Array::with_max_entries(1, 0);

/// The current WATCH_GEN (one inlined array lookup).
#[inline(always)]
pub fn watch_generation() -> u64 {
    match WATCH_GEN.get(0) {
        Some(g) => *g,
        None => 0,
    }
}

/// Raises WATCH_GEN after an insert into WATCHED_FDS: every cached "not watched" entry
/// becomes stale.
#[inline(always)]
pub fn raise_watch_generation() {
    if let Some(g) = WATCH_GEN.get_ptr_mut(0) {
        // SAFETY: a pointer into the live array value, 8-byte aligned.
        unsafe { crate::io::fetch_add(g, 1) };
    }
}

/// One cached miss of a watched process's exit: `key` was not in WATCHED_FDS while
/// WATCH_GEN was `gen`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct UnwatchedFd {
    pub key: FdKey,
    pub gen: u64,
}

/// Slots of UNWATCHED_FDS per CPU (a power of two).
const UNWATCHED_SLOTS: u32 = 64;

/// Per CPU, direct-mapped by (tgid, fd): the fds of watched processes that their last
/// exit found unwatched. At saturation about 13 read/write exits per call are the
/// runtimes' own wakeups (the BEAM's pipe, each worker's eventfd); with this they cost
/// two inlined array lookups instead of a cache-cold WATCHED_FDS hash lookup.
#[map]
pub static UNWATCHED_FDS: PerCpuArray<UnwatchedFd> =
    PerCpuArray::with_max_entries(UNWATCHED_SLOTS, 0);

/// `key`'s slot in this CPU's UNWATCHED_FDS.
#[inline(always)]
pub fn unwatched_slot(key: FdKey) -> Option<*mut UnwatchedFd> {
    // Fibonacci hashing of both halves: pids and fds are small, dense numbers.
    let h = key.tgid.wrapping_mul(0x9E37_79B1) ^ key.fd.wrapping_mul(0x85EB_CA77);
    UNWATCHED_FDS.get_ptr_mut(h >> (32 - UNWATCHED_SLOTS.trailing_zeros()))
}

/// Whether `slot` says `key` is unwatched at generation `gen`.
#[inline(always)]
pub fn cached_unwatched(slot: *mut UnwatchedFd, key: FdKey, gen: u64) -> bool {
    // SAFETY: `slot` points into this CPU's live UNWATCHED_FDS value.
    let s = unsafe { core::ptr::read_volatile(slot) };
    s.gen == gen && s.key.tgid == key.tgid && s.key.fd == key.fd
}

/// Records in `slot` that `key` was unwatched at generation `gen`. The generation is
/// invalidated first and written last: a program that preempts this one on the same
/// CPU and writes the slot in between leaves either its own entry or one whose
/// generation is no newer than the key's check, never a key paired with a later
/// generation than the one its lookup saw.
#[inline(always)]
pub fn remember_unwatched(slot: *mut UnwatchedFd, key: FdKey, gen: u64) {
    // SAFETY: `slot` points into this CPU's live UNWATCHED_FDS value.
    unsafe {
        core::ptr::write_volatile(core::ptr::addr_of_mut!((*slot).gen), u64::MAX);
        core::ptr::write_volatile(core::ptr::addr_of_mut!((*slot).key), key);
        core::ptr::write_volatile(core::ptr::addr_of_mut!((*slot).gen), gen);
    }
}

/// Whether the worker split's probes record, and the window's generation
/// (telemetry_common::MAP_SPLIT_GATE).
#[map]
pub static SPLIT_GATE: Array<u64> = Array::with_max_entries(1, 0);

/// The split gate's word: `Some(generation)` while recording, None while paused. One
/// inlined array lookup.
#[inline(always)]
pub fn split_generation() -> Option<u32> {
    match SPLIT_GATE.get(0) {
        Some(&g) if g & SPLIT_GATE_PAUSED == 0 => Some((g & SPLIT_GATE_GENERATION) as u32),
        Some(_) => None,
        None => Some(0),
    }
}

/// `[pid_tgid, SerializeFn]` -> entry of a (de)serialization call until its return.
#[map]
pub static SERIALIZE_PENDING: HashMap<[u64; 2], SerializePending> =
    HashMap::with_max_entries(MAX_SERIALIZE_PENDING, 0);

#[map]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STATS_LEN, 0);

/// The IoEvent under construction; it does not fit the 512-byte BPF stack.
#[map]
pub static IO_SCRATCH: PerCpuArray<IoEvent> = PerCpuArray::with_max_entries(1, 0);

/// State of the frame walk of the syscall being handled (shared with the bpf_loop
/// callback, which can only reach it through a map).
#[map]
pub static WALK_SCRATCH: PerCpuArray<crate::io::Walk> = PerCpuArray::with_max_entries(1, 0);

/// Request senders whose egress is captured whole for repro scripts (user space
/// fills it while repro is on; io_chunks.rs).
#[map]
pub static FULL_CAPTURE_FDS: HashMap<FdKey, u32> =
    HashMap::with_max_entries(MAX_FULL_CAPTURE_FDS, 0);

/// The chunk record under construction, and the copy walk's state.
#[map]
pub static CHUNK_SCRATCH: PerCpuArray<IoChunk> = PerCpuArray::with_max_entries(1, 0);
#[map]
pub static CHUNK_WALK: PerCpuArray<crate::io_chunks::ChunkWalk> =
    PerCpuArray::with_max_entries(1, 0);

// Globals live in .rodata and are patched by the loader before the programs load.
// They are read with read_volatile so the compiler cannot fold the defaults in.
#[no_mangle]
static CAPTURE_BYTES: u32 = MAX_CAPTURE as u32;
#[no_mangle]
static TASK_EXIT_CODE_OFFSET: u32 = u32::MAX;
#[no_mangle]
static TASK_PID_OFFSET: u32 = u32::MAX;
#[no_mangle]
static TASK_TGID_OFFSET: u32 = u32::MAX;
#[no_mangle]
static TASK_REAL_PARENT_OFFSET: u32 = u32::MAX;
#[no_mangle]
static DECODE_ONCE: u32 = 0;
#[no_mangle]
static FULL_CAPTURE: u32 = 0;
/// Offsets of the first three syscall arguments in `struct pt_regs` (di, si, dx on
/// x86_64), from BTF; the defaults are the x86_64 layout.
#[no_mangle]
static PT_REGS_ARG_OFFSETS: [u32; 3] = [112, 104, 96];
/// Offset of `pt_regs.orig_ax` (the syscall number), from BTF; x86_64 default.
#[no_mangle]
static PT_REGS_SYSCALL_OFFSET: u32 = 120;
/// Unread bytes in EVENTS from which a record wakes the reader (see `events_flags`).
#[no_mangle]
static RING_WAKE_BYTES: u64 = u64::MAX;

#[inline(always)]
pub fn capture_bytes() -> u32 {
    // SAFETY: a plain read of a loader-patched global.
    let v = unsafe { core::ptr::read_volatile(&CAPTURE_BYTES) };
    if v > MAX_CAPTURE as u32 {
        MAX_CAPTURE as u32
    } else {
        v
    }
}

/// See PT_REGS_ARG_OFFSETS.
#[inline(always)]
pub fn regs_arg_offsets() -> [u32; 3] {
    // SAFETY: a plain read of a loader-patched global.
    unsafe { core::ptr::read_volatile(&PT_REGS_ARG_OFFSETS) }
}

/// See PT_REGS_SYSCALL_OFFSET.
#[inline(always)]
pub fn regs_syscall_offset() -> u32 {
    // SAFETY: a plain read of a loader-patched global.
    unsafe { core::ptr::read_volatile(&PT_REGS_SYSCALL_OFFSET) }
}

/// The current task's saved user registers (`struct pt_regs`), which the kernel keeps
/// until the return to user space. The verifier types the pointer from BTF, so
/// [`saved_reg`] reads its fields with plain loads.
#[inline(always)]
pub fn saved_regs() -> u64 {
    // SAFETY: helper calls; bpf_task_pt_regs takes the BTF task pointer it is given.
    unsafe { generated::bpf_task_pt_regs(generated::bpf_get_current_task_btf()) as u64 }
}

/// The u64 at `off` in the saved registers (offsets from BTF, see
/// PT_REGS_ARG_OFFSETS). A plain load: the verifier checks it against `pt_regs`'s BTF
/// (the offsets are constants of the frozen .rodata) and makes it fault-tolerant.
/// `bpf_probe_read_kernel` cost a helper call per register (about 25 ns a run on this
/// VM's mitigated returns; a watched process's unwatched-fd exit went 114-118 -> 89-101
/// ns).
#[inline(always)]
pub fn saved_reg(regs: u64, off: u32) -> Option<u64> {
    if regs == 0 || off == u32::MAX {
        return None;
    }
    // SAFETY: `regs` is the verifier's BTF-typed pt_regs pointer of `saved_regs` and
    // `off` one of its u64 fields (from BTF); the verifier rejects any other access.
    Some(unsafe { core::ptr::read_volatile((regs + off as u64) as *const u64) })
}

/// Decode each direction of a connection from the sender's side only.
#[inline(always)]
pub fn decode_once() -> bool {
    // SAFETY: a plain read of a loader-patched global.
    unsafe { core::ptr::read_volatile(&DECODE_ONCE) != 0 }
}

/// Repro scripts: chunks per syscall at most for request senders (0: off).
#[inline(always)]
pub fn full_capture_chunks() -> u32 {
    // SAFETY: a plain read of a loader-patched global.
    unsafe { core::ptr::read_volatile(&FULL_CAPTURE) }
}

#[inline(always)]
pub fn task_exit_code_offset() -> u32 {
    // SAFETY: a plain read of a loader-patched global.
    unsafe { core::ptr::read_volatile(&TASK_EXIT_CODE_OFFSET) }
}

#[inline(always)]
pub fn task_pid_offset() -> u32 {
    // SAFETY: a plain read of a loader-patched global.
    unsafe { core::ptr::read_volatile(&TASK_PID_OFFSET) }
}

#[inline(always)]
pub fn task_tgid_offset() -> u32 {
    // SAFETY: a plain read of a loader-patched global.
    unsafe { core::ptr::read_volatile(&TASK_TGID_OFFSET) }
}

#[inline(always)]
pub fn task_real_parent_offset() -> u32 {
    // SAFETY: a plain read of a loader-patched global.
    unsafe { core::ptr::read_volatile(&TASK_REAL_PARENT_OFFSET) }
}

/// Adds `n` to the per-CPU counter `probe * STAT_KINDS + stat`. Per-CPU, so no atomics.
#[inline(always)]
pub fn stat_add(probe: u32, stat: u32, n: u64) {
    if let Some(p) = STATS.get_ptr_mut(probe * STAT_KINDS + stat) {
        // SAFETY: `p` points into this CPU's STATS slot.
        unsafe { *p += n };
    }
}

/// Reads a u64 field of a classic tracepoint record (direct ctx load, no helper).
#[inline(always)]
pub fn ctx_u64(ctx: &aya_ebpf::programs::TracePointContext, off: usize) -> u64 {
    use aya_ebpf::EbpfContext;
    // SAFETY: `off` is a fixed offset inside the tracepoint record.
    unsafe { core::ptr::read((ctx.as_ptr() as *const u8).add(off) as *const u64) }
}

#[inline(always)]
pub fn ctx_u32(ctx: &aya_ebpf::programs::TracePointContext, off: usize) -> u32 {
    use aya_ebpf::EbpfContext;
    // SAFETY: `off` is a fixed offset inside the tracepoint record.
    unsafe { core::ptr::read((ctx.as_ptr() as *const u8).add(off) as *const u32) }
}

/// Errno returned by a map update when the key exists (BPF_NOEXIST) and when full.
pub const EEXIST: i64 = 17;
/// bpf_map_update_elem flags.
pub const BPF_ANY: u64 = 0;
pub const BPF_NOEXIST: u64 = 1;
/// bpf_ringbuf_output flag: do not wake the reader; it polls on a timer (a wakeup
/// costs ~1.4 us per record, the flag ~25 ns).
pub const BPF_RB_NO_WAKEUP: u64 = 1;
/// bpf_ringbuf_output flag: wake the reader now.
pub const BPF_RB_FORCE_WAKEUP: u64 = 2;
/// bpf_ringbuf_query flag: bytes submitted or reserved and not yet consumed.
pub const BPF_RB_AVAIL_DATA: u64 = 0;

/// Flags for a record into EVENTS: no wakeup (the reader polls on a timer) unless the
/// unread bytes have reached RING_WAKE_BYTES, as in a burst of repro chunks or large
/// writes; then every record wakes the reader until it has drained below that.
#[inline(always)]
pub fn events_flags() -> u64 {
    // SAFETY: a plain read of a loader-patched global.
    let wake = unsafe { core::ptr::read_volatile(&RING_WAKE_BYTES) };
    if EVENTS.query(BPF_RB_AVAIL_DATA) >= wake {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    }
}
