//! Records and names shared by the kernel programs (telemetry-ebpf) and the agent
//! (telemetry-user). Everything here is `#[repr(C)]` plain data: the kernel writes it
//! into the ring buffer, user space reads it back at exactly one checked decode point
//! (`telemetry_user::kernel::decode`).
#![no_std]

mod profile;
pub use profile::*;

// ---------------------------------------------------------------------------
// Map and program names (the loader looks them up by these strings).
// ---------------------------------------------------------------------------

/// Ring buffer carrying every record below to user space.
pub const MAP_EVENTS: &str = "EVENTS";
/// `FdKey -> FdState`: the (tgid, fd) pairs whose I/O is captured.
pub const MAP_WATCHED_FDS: &str = "WATCHED_FDS";
/// `tgid (u32) -> PidFlags bits (u32)`: processes the agent cares about.
pub const MAP_WATCHED_PIDS: &str = "WATCHED_PIDS";
/// `pid_tgid (u64) -> PendingIo`: syscall enter state until its exit.
pub const MAP_PENDING_IO: &str = "PENDING_IO";
/// Per-CPU `u64` counters, index = `probe * STAT_KINDS + stat`.
pub const MAP_STATS: &str = "STATS";

/// Global (set by the loader): payload bytes copied per syscall, at most `MAX_CAPTURE`.
pub const GLOBAL_CAPTURE_BYTES: &str = "CAPTURE_BYTES";
/// Global (set by the loader from /sys/kernel/btf/vmlinux): offset of
/// `task_struct.exit_code`, or `u32::MAX` when unknown.
pub const GLOBAL_TASK_EXIT_CODE_OFFSET: &str = "TASK_EXIT_CODE_OFFSET";
/// Global: offset of `task_struct.pid` (`u32::MAX` when unknown). The fork probe is a
/// raw tracepoint (it needs the child's task to tell a thread from a process).
pub const GLOBAL_TASK_PID_OFFSET: &str = "TASK_PID_OFFSET";
/// Global: offset of `task_struct.tgid` (`u32::MAX` when unknown).
pub const GLOBAL_TASK_TGID_OFFSET: &str = "TASK_TGID_OFFSET";
/// Global: offset of `task_struct.real_parent` (`u32::MAX` when unknown); exec's ppid.
pub const GLOBAL_TASK_REAL_PARENT_OFFSET: &str = "TASK_REAL_PARENT_OFFSET";
/// Per-CPU one-entry array holding the `IoEvent` being built (too big for the stack).
pub const MAP_IO_SCRATCH: &str = "IO_SCRATCH";
/// Global (set by the loader): 1 = decode each direction of an HTTP/2 connection once,
/// from the sender's writes; the receiver's reads send frame headers only (see
/// `Capture::Frames`), and only for syscalls in which a frame ends.
pub const GLOBAL_DECODE_ONCE: &str = "DECODE_ONCE";
/// Global (set by the loader, `u64`): unread bytes in EVENTS from which every record
/// wakes the reader (the probes submit without a wakeup below it; the reader polls).
pub const GLOBAL_RING_WAKE_BYTES: &str = "RING_WAKE_BYTES";
/// Global (set by the loader from BTF): offsets of the first three syscall arguments
/// in `struct pt_regs` (`[u32; 3]`), read at the exits of the read family.
pub const GLOBAL_PT_REGS_ARG_OFFSETS: &str = "PT_REGS_ARG_OFFSETS";
/// `FdKey -> CursorHint`: user space tells the kernel where the next frame header of a
/// stream joined mid-way lies, so its frame cursor (and the lean capture) can start.
pub const MAP_CURSOR_HINTS: &str = "CURSOR_HINTS";
pub const MAX_CURSOR_HINTS: u32 = 1024;

/// Upper bound of the payload copy; a power of two so offsets and lengths can be
/// masked for the verifier.
pub const MAX_CAPTURE: usize = 4096;
/// The record's data area: the captured prefix, then the frame marks. Larger than
/// what is ever sent (IO_MAX_PAYLOAD) because offsets and lengths are masked for the
/// verifier, and masks only bound them to powers of two. Per-CPU map values are
/// limited to 32 KiB.
pub const IO_DATA_AREA: usize = 7 * MAX_CAPTURE;
/// Most bytes a record ever carries after its header.
pub const IO_MAX_PAYLOAD: usize = MAX_CAPTURE + MAX_MARKS as usize * MARK_SLOT_LEN;
const _: () = assert!(2 * MAX_CAPTURE + 128 * MARK_SLOT_LEN + 2 * MARK_BYTES <= IO_DATA_AREA);
const _: () = assert!(IO_MAX_PAYLOAD < 4 * MAX_CAPTURE);
const _: () = assert!(core::mem::size_of::<IoEvent>() <= 32768);
const _: () = assert!(MAX_MARKS < 128);
/// Iovec entries walked per vectored call.
pub const MAX_IOVECS: u32 = 16;

// ---------------------------------------------------------------------------
// Frame cursor: the kernel follows the framing of watched streams (HTTP/2 frames on
// sockets, {packet,4} messages on pipes) so that frame headers beyond the captured
// prefix still reach user space, as "marks".
// ---------------------------------------------------------------------------

/// FdState.cursor value: framing unknown, nothing tracked.
pub const CURSOR_UNKNOWN: u32 = u32::MAX;
/// HTTP/2 frame header: 24-bit length, type, flags, R + 31-bit stream id.
pub const HTTP2_HDR_LEN: u32 = 9;
/// The client connection preface ("PRI * HTTP/2.0...") that precedes the first frame.
pub const HTTP2_PREFACE_LEN: u32 = 24;
/// Highest frame type accepted (CONTINUATION); anything above means lost sync.
pub const HTTP2_MAX_FRAME_TYPE: u8 = 0x9;
/// {packet,4}: a 4-byte big-endian length before each message.
pub const PACKET4_HDR_LEN: u32 = 4;
/// Largest {packet,4} length accepted; anything above means lost sync.
pub const PACKET4_MAX_LEN: u32 = 1 << 30;
/// Largest header of any framing (the partial-header store holds one less).
pub const MAX_HDR_LEN: usize = 9;
/// Marks per record at most (a 1 MiB gRPC message is ~64 DATA frames).
pub const MAX_MARKS: u32 = 80;
/// Bytes copied per mark, starting at the frame header: the header and 119 payload
/// bytes, enough for a later request's header block (one of 62 bytes after a 99 KB
/// write was cut by 64-byte marks) and a message's first fields. (Lean records read
/// only headers from their marks, but a cap of 64 for them made the frame walk too
/// large for the verifier; a longer mark also holds more of the next headers.)
pub const MARK_BYTES: usize = 128;
/// Frame-walk steps per syscall (one header or up to 8 iovecs each).
pub const MAX_WALK_STEPS: u32 = 1024;

/// One mark in a record: the stream bytes `[offset, offset + len)` of this syscall
/// (offset 0 = its first byte), starting at a frame header that the captured prefix
/// does not fully hold. Only the first `len` bytes of `bytes` are meaningful.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct FrameMarkSlot {
    pub offset: u32,
    pub len: u16,
    pub _pad: u16,
    pub bytes: [u8; MARK_BYTES],
}
pub const MARK_SLOT_LEN: usize = core::mem::size_of::<FrameMarkSlot>();

/// How the kernel frame cursor fared in a syscall (IoEventHeader.frame_status).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameStatus {
    /// No cursor for this fd and direction when the syscall began: no marks.
    Unknown = 0,
    /// Followed through the whole syscall: every frame header in it lies in the
    /// prefix or in a mark (a header split at the end continues in the next syscall).
    Tracked = 1,
    /// Known at the start, lost in this syscall (bad header, unreadable buffer); the
    /// marks before the loss are valid. Unknown from here on.
    Lost = 2,
    /// Tracked through this syscall, but more headers lay beyond the prefix than
    /// there are mark slots: the marks cover only the start; the cursor for the next
    /// syscall is still exact (its `cursor_in` lets a decoder resynchronise).
    Overflow = 3,
}

impl TryFrom<u8> for FrameStatus {
    type Error = u8;
    fn try_from(v: u8) -> Result<Self, u8> {
        Ok(match v {
            0 => FrameStatus::Unknown,
            1 => FrameStatus::Tracked,
            2 => FrameStatus::Lost,
            3 => FrameStatus::Overflow,
            _ => return Err(v),
        })
    }
}
pub const COMM_LEN: usize = 16;
pub const FILENAME_LEN: usize = 128;

pub const MAX_WATCHED_FDS: u32 = 16384;
pub const MAX_WATCHED_PIDS: u32 = 4096;
pub const MAX_PENDING_IO: u32 = 16384;

// ---------------------------------------------------------------------------
// Record kinds
// ---------------------------------------------------------------------------

/// The kind of a ring-buffer record (its first u32).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKind {
    Io = 1,
    Fork = 2,
    Exec = 3,
    Exit = 4,
    FdOpen = 5,
    FdClose = 6,
    /// A `ProcEvent` whose `tgid` the OOM killer chose (oom/mark_victim).
    OomKill = 7,
    /// A `SchedSlice`: one episode of a sched-watched thread off the CPU, sent when it
    /// gets the CPU back (sched_switch; its wakeup from sched_waking).
    SchedSlice = 20,
    /// A `SerializeEvent`: one (de)serialization call in a worker (uprobe + uretprobe).
    Serialize = 23,
    /// An `IoChunk`: bytes of an egress syscall beyond its record's prefix (repro).
    IoChunk = 8,
}

impl TryFrom<u32> for RecordKind {
    type Error = u32;
    fn try_from(v: u32) -> Result<Self, u32> {
        Ok(match v {
            1 => RecordKind::Io,
            2 => RecordKind::Fork,
            3 => RecordKind::Exec,
            4 => RecordKind::Exit,
            5 => RecordKind::FdOpen,
            6 => RecordKind::FdClose,
            7 => RecordKind::OomKill,
            20 => RecordKind::SchedSlice,
            23 => RecordKind::Serialize,
            8 => RecordKind::IoChunk,
            _ => return Err(v),
        })
    }
}

/// Which way bytes move through a process's fd.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    /// Into the process (read family).
    Ingress = 0,
    /// Out of the process (write family).
    Egress = 1,
}

impl Direction {
    /// Index into the per-direction arrays of `FdState` and `CursorHint`.
    pub const fn index(self) -> usize {
        self as usize
    }

    pub const fn opposite(self) -> Direction {
        match self {
            Direction::Ingress => Direction::Egress,
            Direction::Egress => Direction::Ingress,
        }
    }
}

impl TryFrom<u8> for Direction {
    type Error = u8;
    fn try_from(v: u8) -> Result<Self, u8> {
        match v {
            0 => Ok(Direction::Ingress),
            1 => Ok(Direction::Egress),
            _ => Err(v),
        }
    }
}

/// Which syscall produced an I/O or fd record.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Syscall {
    Read = 0,
    Write = 1,
    Readv = 2,
    Writev = 3,
    Recvfrom = 4,
    Sendto = 5,
    Recvmsg = 6,
    Sendmsg = 7,
    Accept = 8,
    Accept4 = 9,
    Connect = 10,
    Close = 11,
}

impl TryFrom<u8> for Syscall {
    type Error = u8;
    fn try_from(v: u8) -> Result<Self, u8> {
        Ok(match v {
            0 => Syscall::Read,
            1 => Syscall::Write,
            2 => Syscall::Readv,
            3 => Syscall::Writev,
            4 => Syscall::Recvfrom,
            5 => Syscall::Sendto,
            6 => Syscall::Recvmsg,
            7 => Syscall::Sendmsg,
            8 => Syscall::Accept,
            9 => Syscall::Accept4,
            10 => Syscall::Connect,
            11 => Syscall::Close,
            _ => return Err(v),
        })
    }
}

impl Syscall {
    pub fn name(self) -> &'static str {
        match self {
            Syscall::Read => "read",
            Syscall::Write => "write",
            Syscall::Readv => "readv",
            Syscall::Writev => "writev",
            Syscall::Recvfrom => "recvfrom",
            Syscall::Sendto => "sendto",
            Syscall::Recvmsg => "recvmsg",
            Syscall::Sendmsg => "sendmsg",
            Syscall::Accept => "accept",
            Syscall::Accept4 => "accept4",
            Syscall::Connect => "connect",
            Syscall::Close => "close",
        }
    }
}

// ---------------------------------------------------------------------------
// Process flags (WATCHED_PIDS values)
// ---------------------------------------------------------------------------

/// A Snakepit BEAM.
pub const PID_BEAM: u32 = 1;
/// A Snakepit Python worker.
pub const PID_WORKER: u32 = 2;
/// A descendant of a BEAM (erl_child_setup, a worker before its exec): forks and
/// execs are reported so workers are found without polling.
pub const PID_LINEAGE: u32 = 4;
/// New sockets (accept/connect) of this process are watched from their first byte.
pub const PID_WATCH_NEW_SOCKETS: u32 = 8;

/// Kinds of watched fd (FdState.fd_kind).
pub const FD_SOCKET: u32 = 1;
pub const FD_PIPE: u32 = 2;

// ---------------------------------------------------------------------------
// Maps' keys and values
// ---------------------------------------------------------------------------

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FdKey {
    pub tgid: u32,
    pub fd: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct FdState {
    /// Next sequence number per direction (index `Direction::index`), taken
    /// with an atomic add at syscall exit: the stream order, whatever the CPU.
    pub next_seq: [u64; 2],
    pub fd_kind: u32,
    pub _pad: u32,
    /// Running totals per direction (bytes moved by successful calls, and calls),
    /// exact even when ring records are dropped.
    pub bytes: [u64; 2],
    pub calls: [u64; 2],
    /// Per direction: bytes from the next stream byte to the next frame header, or
    /// CURSOR_UNKNOWN. Meaningless while `partial_len` is non-zero.
    pub cursor: [u32; 2],
    /// Per direction: the first bytes of a frame header split at the end of the last
    /// syscall (at most MAX_HDR_LEN - 1), completed by the next one.
    pub partial: [[u8; 8]; 2],
    pub partial_len: [u8; 2],
    /// Per direction: bytes of the last mark that the last syscall cut short (its frame
    /// header came near that syscall's end); a lean record of the next syscall starts
    /// with a mark of them, so the frame's first payload bytes (a gRPC message's
    /// length prefix) are known. At most MARK_BYTES.
    pub mark_rest: [u8; 2],
    pub _pad2: [u8; 4],
}

/// A frame cursor learnt in user space for a stream whose kernel cursor is unknown
/// (joined mid-connection): per direction, "after the syscall with sequence number
/// `after_seq`, the next frame header is `cursor` bytes ahead". The kernel takes it
/// only at the syscall numbered `after_seq + 1`, so a hint that arrives late is
/// ignored, never misapplied.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CursorHint {
    pub after_seq: [u64; 2],
    pub cursor: [u32; 2],
    /// Per direction: 1 when this direction's hint is set.
    pub valid: [u8; 2],
    pub _pad: [u8; 6],
}

impl FdState {
    /// A fresh entry with the given cursors (index `Direction::index`).
    pub const fn new(fd_kind: u32, cursor: [u32; 2]) -> FdState {
        FdState {
            next_seq: [0; 2],
            fd_kind,
            _pad: 0,
            bytes: [0; 2],
            calls: [0; 2],
            cursor,
            partial: [[0; 8]; 2],
            partial_len: [0; 2],
            mark_rest: [0; 2],
            _pad2: [0; 4],
        }
    }
}

/// Saved at syscall enter, consumed at exit.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct PendingIo {
    pub ts_enter_ns: u64,
    /// Plain buffer (read/write/recvfrom/sendto), or 0.
    pub buf: u64,
    /// iovec array (readv/writev) or msghdr (recvmsg/sendmsg), or 0.
    pub iov: u64,
    pub iovcnt: u32,
    pub fd: i32,
    pub syscall: u8,
    pub direction: u8,
    pub _pad: [u8; 6],
}

// ---------------------------------------------------------------------------
// Ring-buffer records. Every record starts with `kind: u32`.
// ---------------------------------------------------------------------------

/// One read/write-family syscall on a watched fd. Only `captured_len` bytes of `data`
/// are sent (the record is copied out of a per-CPU scratch buffer with that length).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct IoEventHeader {
    pub kind: u32,
    pub tgid: u32,
    pub tid: u32,
    pub fd: i32,
    pub direction: u8,
    pub syscall: u8,
    /// FrameMarkSlots that follow the captured prefix (at most MAX_MARKS).
    pub marks: u16,
    /// Payload bytes that follow this header (then `marks` FrameMarkSlots, unaligned).
    pub captured_len: u32,
    /// The syscall's return value: bytes moved, or -errno.
    pub ret: i64,
    pub ts_enter_ns: u64,
    pub ts_exit_ns: u64,
    /// Per (tgid, fd, direction) sequence number assigned in the kernel.
    pub seq: u64,
    /// Frame cursor when the syscall began: offset of the first frame header in this
    /// syscall's bytes, or CURSOR_UNKNOWN. With `partial_in` > 0 a header began in the
    /// previous syscall: its remaining (header length - partial_in) bytes start this
    /// one. Set for ret > 0 only.
    pub cursor_in: u32,
    pub partial_in: u8,
    /// `FrameStatus` (how the cursor fared in this syscall).
    pub frame_status: u8,
    /// `Capture` (what the record carries).
    pub capture: u8,
    pub _pad: u8,
    /// Bytes the fd moved in this direction before this syscall (since it is watched):
    /// a lean record (`Capture::Frames`) follows syscalls that sent none.
    pub stream_pos: u64,
}

/// What an I/O record carries (IoEventHeader.capture).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Capture {
    /// The payload prefix (`captured_len` bytes) and the marks beyond it: this side
    /// decodes the stream.
    Full = 0,
    /// Frame headers only (as marks, no prefix): the other end of the connection
    /// decodes this direction; this one only times it. Sent only for syscalls in which
    /// a frame ends (or a header is split), so syscalls inside a large frame send
    /// nothing and `stream_pos` tells how many bytes they moved.
    Frames = 1,
}

impl TryFrom<u8> for Capture {
    type Error = u8;
    fn try_from(v: u8) -> Result<Self, u8> {
        match v {
            0 => Ok(Capture::Full),
            1 => Ok(Capture::Frames),
            _ => Err(v),
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct IoEvent {
    pub header: IoEventHeader,
    pub data: [u8; IO_DATA_AREA],
}

pub const IO_HEADER_LEN: usize = core::mem::size_of::<IoEventHeader>();

// ---------------------------------------------------------------------------
// Request capture for repro scripts: egress syscalls of the fds in FULL_CAPTURE_FDS
// (request senders, chosen by user space) send the bytes beyond their record's
// prefix as IoChunk records, just before the record itself.

/// Global (set by the loader): chunks per syscall at most (from `[repro]
/// max_payload_bytes`, at most MAX_CHUNKS); 0 when repro scripts are off.
pub const GLOBAL_FULL_CAPTURE: &str = "FULL_CAPTURE";
/// `FdKey -> u32 (1)`: the request senders whose egress is captured whole.
pub const MAP_FULL_CAPTURE_FDS: &str = "FULL_CAPTURE_FDS";
/// Bytes per chunk record.
pub const CHUNK_BYTES: usize = 4096;
/// Chunks per syscall at most (8 MiB beyond the prefix): the per-syscall cost stays
/// bounded by what a repro script may hold.
pub const MAX_CHUNKS: u32 = 2048;
pub const MAX_FULL_CAPTURE_FDS: u32 = 4096;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct IoChunkHeader {
    pub kind: u32,
    pub tgid: u32,
    pub fd: i32,
    pub direction: u8,
    pub _pad: [u8; 3],
    /// The sequence number of the syscall's IoEvent.
    pub seq: u64,
    /// Offset of these bytes in the syscall's bytes.
    pub offset: u32,
    /// Bytes that follow the header.
    pub len: u32,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct IoChunk {
    pub header: IoChunkHeader,
    /// Twice the chunk: masked offsets and lengths stay inside for the verifier.
    pub data: [u8; 2 * CHUNK_BYTES],
}

pub const IO_CHUNK_HEADER_LEN: usize = core::mem::size_of::<IoChunkHeader>();

/// fork / exec / exit of a process of interest (exec: every exec on the host whose
/// comm or lineage may matter; it is rare enough).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ProcEvent {
    pub kind: u32,
    pub tgid: u32,
    pub tid: u32,
    /// fork: the parent's tgid; exec/exit: the parent's tgid when known, else 0.
    pub ppid: u32,
    pub ts_ns: u64,
    /// exit: raw wait status from task_struct.exit_code (`code << 8` or signal in the
    /// low 7 bits, 0x80 = core dumped); `u32::MAX` when the offset is unknown.
    pub exit_code: u32,
    /// fork: the child's pid (== tgid of a new process).
    pub child_pid: u32,
    pub comm: [u8; COMM_LEN],
    /// exec: the executed file name (NUL-terminated, truncated).
    pub filename: [u8; FILENAME_LEN],
}

/// accept/connect/close of a watched process's fd.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct FdEvent {
    pub kind: u32,
    pub tgid: u32,
    pub tid: u32,
    pub fd: i32,
    pub ret: i64,
    pub ts_ns: u64,
    pub syscall: u8,
    pub _pad: [u8; 7],
    /// close: the fd's final totals per direction (FdState.bytes / calls); 0 otherwise.
    pub bytes: [u64; 2],
    pub calls: [u64; 2],
}

// ---------------------------------------------------------------------------
// Counters (STATS map)
// ---------------------------------------------------------------------------

/// Probe ids for STATS (one row per probe group).
pub const PROBE_READ: u32 = 0;
pub const PROBE_WRITE: u32 = 1;
pub const PROBE_READV: u32 = 2;
pub const PROBE_WRITEV: u32 = 3;
pub const PROBE_RECVFROM: u32 = 4;
pub const PROBE_SENDTO: u32 = 5;
pub const PROBE_RECVMSG: u32 = 6;
pub const PROBE_SENDMSG: u32 = 7;
pub const PROBE_ACCEPT: u32 = 8;
pub const PROBE_CONNECT: u32 = 9;
pub const PROBE_CLOSE: u32 = 10;
pub const PROBE_FORK: u32 = 11;
pub const PROBE_EXEC: u32 = 12;
pub const PROBE_EXIT: u32 = 13;
pub const PROBE_OOM: u32 = 14;
/// sched_switch of sched-watched threads (both ends).
pub const PROBE_SCHED_SWITCH: u32 = 15;
/// sched_waking / sched_wakeup_new of sched-watched threads.
pub const PROBE_SCHED_WAKE: u32 = 16;
/// The (de)serialization uprobes and uretprobes in workers.
pub const PROBE_SERIALIZE: u32 = 17;
pub const PROBE_COUNT: u32 = 18;

pub const PROBE_NAMES: [&str; PROBE_COUNT as usize] = [
    "read",
    "write",
    "readv",
    "writev",
    "recvfrom",
    "sendto",
    "recvmsg",
    "sendmsg",
    "accept",
    "connect",
    "close",
    "fork",
    "exec",
    "exit",
    "oom",
    "sched_switch",
    "sched_wake",
    "serialize",
];

/// Records sent.
pub const STAT_EVENTS: u32 = 0;
/// Ring-buffer output failed (full): the record is lost.
pub const STAT_RINGBUF_DROPS: u32 = 1;
/// A bpf_probe_read_user failed (payload not copied; header still sent).
pub const STAT_READ_ERRORS: u32 = 2;
/// Bytes moved beyond the copied prefix (accounted by length only).
pub const STAT_TRUNCATED: u32 = 3;
/// A map update failed (map full): pending state or a watched fd was not stored.
pub const STAT_MAP_FULL: u32 = 4;
/// A frame cursor was lost (bad header, more frames than marks, unreadable buffer).
pub const STAT_CURSOR_LOST: u32 = 5;
pub const STAT_KINDS: u32 = 6;
pub const STAT_NAMES: [&str; STAT_KINDS as usize] = [
    "events",
    "ringbuf_drops",
    "read_errors",
    "truncated_bytes",
    "map_full",
    "cursor_lost",
];
pub const STATS_LEN: u32 = PROBE_COUNT * STAT_KINDS;

// ---------------------------------------------------------------------------
// Scheduling and serialization (issue "why is this call slow")
// ---------------------------------------------------------------------------

/// `SCHED_PIDS`: a bitmap of the tgids whose threads' scheduling is reported, one bit
/// per tgid in `u64` words (word `tgid / 64`, bit `tgid % 64`). An array map because
/// its lookup is inlined by the verifier: the miss path runs on every context switch
/// of the host.
pub const MAP_SCHED_PIDS: &str = "SCHED_PIDS";
/// Words of SCHED_PIDS: tgids below 64 * 65536 = 4,194,304 (the kernel's largest
/// pid_max) are covered.
pub const SCHED_PID_WORDS: u32 = 65536;
/// `IO_PIDS`: a bitmap, as SCHED_PIDS, of the tgids that may have watched fds (set by
/// user space before it watches a process or one of its fds, cleared at its exit). The
/// read/write exits test it before anything else: an unrelated process's syscall pays
/// one inlined array lookup, not a register read and a hash lookup.
pub const MAP_IO_PIDS: &str = "IO_PIDS";
/// `WATCH_GEN` (an array of one `u64`): the generation of the set of watched fds,
/// raised after every insert into WATCHED_FDS (atomically by 1 in the kernel, by
/// `WATCH_GEN_USER_STEP` from user space, which cannot add atomically: its write can
/// lose a concurrent kernel raise but still leaves a value never seen before). The
/// read/write exits cache "this fd of a watched process is not watched" per CPU with
/// the generation they saw; a raise makes every such entry stale, so a newly watched
/// fd is never skipped.
pub const MAP_WATCH_GEN: &str = "WATCH_GEN";
/// What user space adds to WATCH_GEN: more than the kernel can add between its read
/// and its write, so the new value is larger than every value seen before.
pub const WATCH_GEN_USER_STEP: u64 = 1 << 32;
/// `SPLIT_GATE` (an array of one `u64`): whether the worker split's probes (the
/// scheduling edges, the off-CPU walks and the (de)serialization uprobes) record, and
/// the generation of the current recording window. Above `[profile]
/// split_max_calls_per_s` the agent records in windows (issue 10: the split costs a
/// record per context switch of a worker thread). Zero, the map's initial value, is
/// "on, generation 0", so an agent that never samples never writes it.
pub const MAP_SPLIT_GATE: &str = "SPLIT_GATE";
/// Set in SPLIT_GATE: the split's probes are paused (they return at once).
pub const SPLIT_GATE_PAUSED: u64 = 1 << 63;
/// The generation bits of SPLIT_GATE: a thread's state from an older window is stale
/// (it ran unseen while paused), so its first switch after a resume is a first sight.
pub const SPLIT_GATE_GENERATION: u64 = u32::MAX as u64;
/// Global (set by the loader from BTF): offset of `pt_regs.orig_ax` (the syscall
/// number of a task in a syscall, -1 otherwise).
pub const GLOBAL_PT_REGS_SYSCALL_OFFSET: &str = "PT_REGS_SYSCALL_OFFSET";
/// `(pid_tgid, function) -> SerializePending`: a (de)serialization call in progress.
pub const MAP_SERIALIZE_PENDING: &str = "SERIALIZE_PENDING";
pub const MAX_SERIALIZE_PENDING: u32 = 4096;

/// `tid (u32) -> scheduling state of a sched-watched thread` (kernel-private: where it
/// left the CPU, when it was woken and by whom, the off-CPU walk's rate limit). An LRU
/// map: a thread that exited is forgotten when room is needed.
pub const MAP_SCHED_THREADS: &str = "SCHED_THREADS";
pub const MAX_SCHED_THREADS: u32 = 16384;

/// One episode of a sched-watched thread off the CPU (RecordKind SchedSlice), sent
/// when the thread gets a CPU again. The kernel joins the three edges (out, waking, in)
/// so that user space gets one record per episode instead of three.
/// - `out_ns`: it left the CPU; 0 when this is the first time the kernel sees the
///   thread (it has been running since `in_ns`; nothing else is valid).
/// - `state`: its task state then (0: preempted or yielded, still runnable), `syscall`
///   the syscall it blocked in (-1 none) and `arg0` that syscall's first argument.
/// - `wake_ns`: it was made runnable (== `out_ns` when preempted; 0 when no wakeup was
///   seen, e.g. it was woken before the agent attached); `waker_tid`: the thread of
///   the same process that woke it, 0 when another process, a kernel thread or an
///   interrupt did.
/// - `in_ns`: it got a CPU again.
/// - `flags`: `SLICE_WALKED` when its stack was walked (an off-CPU sample of the
///   episode is on the profiler's ring).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SchedSlice {
    pub kind: u32,
    pub tgid: u32,
    pub tid: u32,
    pub waker_tid: u32,
    pub out_ns: u64,
    pub wake_ns: u64,
    pub in_ns: u64,
    pub arg0: u64,
    pub syscall: i32,
    pub state: u32,
    pub flags: u32,
    pub _pad: u32,
}

/// SchedSlice flag: the episode's stack was walked (its off-CPU sample was sent).
pub const SLICE_WALKED: u32 = 1;

/// Which (de)serialization function a uprobe sits on (its attach cookie).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SerializeFn {
    /// protobuf (upb): a message parsed from bytes (`PyUpb_Message_MergeFromString`,
    /// else `upb_Decode`).
    ProtobufDecode = 0,
    /// protobuf (upb): a message serialized (`PyUpb_Message_SerializeInternal`).
    ProtobufEncode = 1,
    /// orjson.loads
    JsonDecode = 2,
    /// orjson.dumps
    JsonEncode = 3,
}

impl TryFrom<u8> for SerializeFn {
    type Error = u8;
    fn try_from(v: u8) -> Result<Self, u8> {
        Ok(match v {
            0 => SerializeFn::ProtobufDecode,
            1 => SerializeFn::ProtobufEncode,
            2 => SerializeFn::JsonDecode,
            3 => SerializeFn::JsonEncode,
            _ => return Err(v),
        })
    }
}

/// Attach-cookie bit of an outer entry point: a function that wraps another probed
/// one of the same `SerializeFn` (upb's `FromString` builds the message, then calls
/// `MergeFromString`). Its calls are pending under their own key, so the inner call
/// does not overwrite the outer's start; user space drops the inner record that lies
/// inside the outer one.
pub const SERIALIZE_OUTER: u64 = 1 << 16;

/// The part of an attach cookie that keys a pending call: the function and the outer
/// bit (the byte count's source differs between entry and return).
pub const SERIALIZE_PENDING_KEY_MASK: u64 = 0xff | SERIALIZE_OUTER;

/// How a uprobe finds the byte count of its call (the low byte of the attach cookie
/// is the `SerializeFn`, the next byte this, bit 16 `SERIALIZE_OUTER`).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SizeFrom {
    /// Not known from the probe.
    None = 0,
    /// Argument 1 is a PyBytes/PyUnicode object: its size field (`ob_size` /
    /// `length`, at +16 in CPython 3.x non-debug builds).
    ArgObject = 1,
    /// The return value is a PyBytes object: its `ob_size`.
    RetObject = 2,
    /// Argument 1 is the byte count itself (upb_Decode's `size`).
    ArgValue = 3,
    /// Argument 1 is a tuple whose first item is a str/bytes (the `args` of a C
    /// `tp_call`, e.g. the stdlib json scanner's `(string, idx)`): that item's size.
    ArgTupleFirst = 4,
}

/// Offset of `ob_item[0]` in a CPython 3 PyTupleObject.
pub const PY_TUPLE_ITEM0_OFFSET: u64 = 24;

/// Offset of `ob_size` (PyVarObject) and `length` (PyASCIIObject) in CPython 3.
pub const PY_SIZE_OFFSET: u64 = 16;

/// Entry state of a (de)serialization call (SERIALIZE_PENDING value).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SerializePending {
    pub ts_ns: u64,
    pub bytes: u64,
}

/// One completed (de)serialization call (RecordKind Serialize).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SerializeEvent {
    pub kind: u32,
    pub tgid: u32,
    pub tid: u32,
    /// `SerializeFn`.
    pub function: u8,
    pub _pad: [u8; 3],
    pub ts_start_ns: u64,
    pub ts_end_ns: u64,
    /// Bytes decoded or produced; u64::MAX when unknown.
    pub bytes: u64,
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    unsafe impl aya::Pod for FdKey {}
    unsafe impl aya::Pod for FdState {}
    unsafe impl aya::Pod for PendingIo {}
    unsafe impl aya::Pod for CursorHint {}
    unsafe impl aya::Pod for SerializePending {}
}
