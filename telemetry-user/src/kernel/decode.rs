//! THE one checked decode point for ring-buffer records (kernel -> user space).
//!
//! Records are `#[repr(C)]` structs from telemetry-common written in host byte order.
//! Fields are read at their `offset_of!` positions from a byte slice with bounds
//! checks, so no input (truncated, garbage) can panic or read out of bounds.
use std::mem::{offset_of, size_of};

use bytes::{Bytes, BytesMut};
pub use telemetry_common::{Capture, Direction, FrameStatus, Syscall};
use telemetry_common::{
    FdEvent, IoChunkHeader, IoEventHeader, ProcEvent, RecordKind, SchedSlice, SerializeEvent,
    SerializeFn, CHUNK_BYTES, CURSOR_UNKNOWN, IO_CHUNK_HEADER_LEN, IO_HEADER_LEN, MARK_SLOT_LEN,
    MAX_CAPTURE, MAX_MARKS, SLICE_WALKED,
};
use thiserror::Error;

pub use super::frame_marks::{FrameMark, FrameMarks};

#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {len} bytes is shorter than its {need}-byte header (kind {kind})")]
    Short { kind: u32, len: usize, need: usize },
    #[error("unknown record kind {0}")]
    UnknownKind(u32),
    #[error("bad direction {0}")]
    BadDirection(u8),
    #[error("bad syscall id {0}")]
    BadSyscall(u8),
    #[error("captured_len {captured} exceeds {limit} (bytes present or MAX_CAPTURE)")]
    BadLength { captured: usize, limit: usize },
    #[error("{marks} frame marks do not fit the record ({present} bytes after the prefix, at most {max} marks)")]
    BadMarkCount {
        marks: usize,
        present: usize,
        max: usize,
    },
    #[error("frame mark {index} (offset {offset}, {len} bytes) is out of order or beyond the syscall's {ret} bytes")]
    BadMark {
        index: usize,
        offset: u32,
        len: usize,
        ret: i64,
    },
    #[error("bad frame status {0}")]
    BadFrameStatus(u8),
    #[error("bad capture mode {0}")]
    BadCapture(u8),
    #[error("bad serialization function id {0}")]
    BadSerializeFn(u8),
}

/// Running totals of a watched fd, kept in the kernel (exact even if records drop).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FdTotals {
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub calls_in: u64,
    pub calls_out: u64,
}

impl FdTotals {
    pub fn from_arrays(bytes: [u64; 2], calls: [u64; 2]) -> FdTotals {
        FdTotals {
            bytes_in: bytes[Direction::Ingress.index()],
            bytes_out: bytes[Direction::Egress.index()],
            calls_in: calls[Direction::Ingress.index()],
            calls_out: calls[Direction::Egress.index()],
        }
    }
}

/// How a process ended, decoded from the raw wait status (task_struct.exit_code).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    Exited(u8),
    Signaled { signal: u8, core_dumped: bool },
    Unknown,
}

impl ExitStatus {
    pub fn from_raw(raw: u32) -> ExitStatus {
        if raw == u32::MAX {
            return ExitStatus::Unknown;
        }
        match raw & 0x7f {
            0 => ExitStatus::Exited(((raw >> 8) & 0xff) as u8),
            0x7f => ExitStatus::Unknown, // "stopped": not an exit
            sig => ExitStatus::Signaled {
                signal: sig as u8,
                core_dumped: raw & 0x80 != 0,
            },
        }
    }
}

/// One read/write-family syscall on a watched fd.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IoRecord {
    pub tgid: u32,
    pub tid: u32,
    pub fd: u32,
    pub direction: Direction,
    pub syscall: Syscall,
    /// Bytes moved, or -errno; 0 is EOF on reads.
    pub ret: i64,
    /// CLOCK_MONOTONIC (bpf_ktime_get_ns).
    pub ts_enter_ns: u64,
    pub ts_exit_ns: u64,
    /// Per (tgid, fd, direction), contiguous unless records were dropped.
    pub seq: u64,
    /// The first min(ret, capture_bytes) bytes.
    pub payload: Bytes,
    /// Frame headers beyond `payload`, sorted by offset (empty unless `frame_status`
    /// is Tracked or Lost).
    pub marks: FrameMarks,
    pub frame_status: FrameStatus,
    /// The kernel cursor when the syscall began: offset of the first frame header in
    /// it; None when unknown. With `partial_in` > 0 a header began in the previous
    /// syscall (which held its first `partial_in` bytes) and ends at the start of
    /// this one; the next header then follows that frame.
    pub cursor_in: Option<u32>,
    pub partial_in: u8,
    pub capture: Capture,
    /// Bytes the fd moved in this direction before this syscall (since it is watched).
    pub stream_pos: u64,
}

/// Everything the probes report. Timestamps are CLOCK_MONOTONIC nanoseconds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KernelEvent {
    Io(IoRecord),
    Fork {
        parent_tgid: u32,
        child_pid: u32,
        ts_ns: u64,
    },
    Exec {
        tgid: u32,
        ppid: u32,
        comm: String,
        filename: String,
        ts_ns: u64,
    },
    Exit {
        tgid: u32,
        ts_ns: u64,
        status: ExitStatus,
    },
    /// The OOM killer chose this watched process (its exit follows).
    OomKill {
        tgid: u32,
        ts_ns: u64,
    },
    FdOpen {
        tgid: u32,
        tid: u32,
        /// The fd the call opened or connected; None when it gave none (a negative
        /// argument or result).
        fd: Option<u32>,
        syscall: Syscall,
        ret: i64,
        ts_ns: u64,
    },
    FdClose {
        tgid: u32,
        fd: u32,
        ts_ns: u64,
        totals: FdTotals,
    },
    /// Bytes of an egress syscall beyond its record's prefix (repro capture): they
    /// precede the record of the same (tgid, fd, seq) and join it as a mark.
    IoChunk {
        tgid: u32,
        fd: u32,
        seq: u64,
        offset: u32,
        bytes: Bytes,
    },
    /// A thread of a sched-watched process got the CPU back.
    Sched(SchedEpisode),
    /// A (de)serialization call in a worker finished.
    Serialize(SerializeRecord),
}

/// A worker thread got the CPU at `in_ns`, after an episode off it (see
/// telemetry_common::SchedSlice).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SchedEpisode {
    pub tgid: u32,
    pub tid: u32,
    /// None: the first time the kernel sees the thread (it runs from `in_ns`).
    pub off: Option<OffCpu>,
    pub in_ns: u64,
}

/// How a thread spent an episode off the CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OffCpu {
    pub out_ns: u64,
    /// 0: preempted (runnable from `out_ns`).
    pub state: u32,
    pub syscall: Option<u32>,
    pub arg0: u64,
    /// Made runnable (None: no wakeup seen, it counts as blocked until `in_ns`).
    pub wake_ns: Option<u64>,
    /// The thread of the same process that woke it.
    pub waker_tid: Option<u32>,
    /// Its stack was walked: an off-CPU sample of it is on the profiler's ring.
    pub walked: bool,
}

impl SchedEpisode {
    /// The episode as the scheduling edges it joins, in time order.
    pub fn edges(&self) -> impl Iterator<Item = SchedRecord> {
        let (tgid, tid) = (self.tgid, self.tid);
        let edge = move |ts_ns, edge| SchedRecord {
            tgid,
            tid,
            ts_ns,
            edge,
        };
        let out = self.off.map(|o| {
            edge(
                o.out_ns,
                SchedEdge::Out {
                    state: o.state,
                    syscall: o.syscall,
                    arg0: o.arg0,
                },
            )
        });
        // A preempted thread is runnable from the switch: no wakeup edge.
        let wake = self.off.and_then(|o| {
            let w = o.wake_ns.filter(|_| o.state != 0)?;
            Some(edge(
                w,
                SchedEdge::Wake {
                    waker_tgid: if o.waker_tid.is_some() { tgid } else { 0 },
                    waker_tid: o.waker_tid.unwrap_or(0),
                    new_thread: false,
                },
            ))
        });
        out.into_iter()
            .chain(wake)
            .chain(std::iter::once(edge(self.in_ns, SchedEdge::In)))
    }
}

/// One scheduling edge of a worker thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SchedRecord {
    pub tgid: u32,
    pub tid: u32,
    pub ts_ns: u64,
    pub edge: SchedEdge,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SchedEdge {
    /// Left the CPU: `state` 0 = preempted (still runnable), else blocked in
    /// `syscall` (None: not in a syscall, e.g. a page fault) with its first argument.
    Out {
        state: u32,
        syscall: Option<u32>,
        arg0: u64,
    },
    /// Got the CPU.
    In,
    /// Made runnable by `waker_tid` of `waker_tgid` (`new_thread`: its first wakeup).
    Wake {
        waker_tgid: u32,
        waker_tid: u32,
        new_thread: bool,
    },
}

/// One (de)serialization call of a worker thread (see telemetry_common::SerializeEvent).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SerializeRecord {
    pub tgid: u32,
    pub tid: u32,
    pub function: SerializeFn,
    pub ts_start_ns: u64,
    pub ts_end_ns: u64,
    /// Bytes decoded or produced, when the probe could read them.
    pub bytes: Option<u64>,
}

struct Rec<'a> {
    b: &'a [u8],
}

impl Rec<'_> {
    // Callers check the length first; the fallbacks only keep this panic-free.
    fn u8(&self, off: usize) -> u8 {
        self.b.get(off).copied().unwrap_or(0)
    }
    fn u16(&self, off: usize) -> u16 {
        self.b
            .get(off..off + 2)
            .and_then(|s| s.try_into().ok())
            .map(u16::from_ne_bytes)
            .unwrap_or(0)
    }
    fn u32(&self, off: usize) -> u32 {
        self.b
            .get(off..off + 4)
            .and_then(|s| s.try_into().ok())
            .map(u32::from_ne_bytes)
            .unwrap_or(0)
    }
    fn u64(&self, off: usize) -> u64 {
        self.b
            .get(off..off + 8)
            .and_then(|s| s.try_into().ok())
            .map(u64::from_ne_bytes)
            .unwrap_or(0)
    }
    fn i64(&self, off: usize) -> i64 {
        self.u64(off) as i64
    }
    fn cstr(&self, off: usize, len: usize) -> String {
        let s = self.b.get(off..off + len).unwrap_or(&[]);
        let end = s.iter().position(|&c| c == 0).unwrap_or(s.len());
        String::from_utf8_lossy(&s[..end]).into_owned()
    }
}

fn need(kind: u32, b: &[u8], n: usize) -> Result<(), DecodeError> {
    if b.len() < n {
        return Err(DecodeError::Short {
            kind,
            len: b.len(),
            need: n,
        });
    }
    Ok(())
}

fn syscall(v: u8) -> Result<Syscall, DecodeError> {
    Syscall::try_from(v).map_err(DecodeError::BadSyscall)
}

/// Decodes one ring-buffer record.
pub fn decode(bytes: &[u8]) -> Result<KernelEvent, DecodeError> {
    decode_with(bytes, &mut BytesMut::new())
}

/// The buffer records' bytes are copied into (see [`decode_with`]): a new one each
/// time this much is used, unless every record of the last one is gone and it can be
/// taken back. Set here, not left to `BytesMut::reserve`, which would allocate 64 KiB
/// buffers after the first (its cap on a split buffer's growth): four times as many
/// allocations, and glibc consolidates its free lists at each of them and at their frees.
pub const ARENA_BYTES: usize = 256 * 1024;

/// Copies `b` out of the ring into `arena` and returns it as its own `Bytes`.
fn copy_out(arena: &mut BytesMut, b: &[u8]) -> Bytes {
    if arena.capacity() < b.len() && !arena.try_reclaim(b.len()) {
        *arena = BytesMut::with_capacity(ARENA_BYTES.max(b.len()));
    }
    arena.extend_from_slice(b);
    arena.split().freeze()
}

/// [`decode`], the record's bytes copied into `arena`: the reader keeps one for all
/// records, so a record's payload and marks are slices of a shared buffer (no
/// allocation per record; a new buffer only when it is used up). Each slice holds
/// its buffer until dropped; decoders copy what they keep, so that is until the
/// record is handled.
pub fn decode_with(bytes: &[u8], arena: &mut BytesMut) -> Result<KernelEvent, DecodeError> {
    need(0, bytes, 4)?;
    let r = Rec { b: bytes };
    let raw_kind = r.u32(0);
    let kind = RecordKind::try_from(raw_kind).map_err(DecodeError::UnknownKind)?;
    match kind {
        RecordKind::IoChunk => {
            need(raw_kind, bytes, IO_CHUNK_HEADER_LEN)?;
            type H = IoChunkHeader;
            let len = r.u32(offset_of!(H, len)) as usize;
            let limit = (bytes.len() - IO_CHUNK_HEADER_LEN).min(CHUNK_BYTES);
            if len > limit {
                return Err(DecodeError::BadLength {
                    captured: len,
                    limit,
                });
            }
            Ok(KernelEvent::IoChunk {
                tgid: r.u32(offset_of!(H, tgid)),
                fd: r.u32(offset_of!(H, fd)),
                seq: r.u64(offset_of!(H, seq)),
                offset: r.u32(offset_of!(H, offset)),
                // Its own copy: a chunk may wait for its record (see repro::chunks).
                bytes: Bytes::copy_from_slice(
                    &bytes[IO_CHUNK_HEADER_LEN..IO_CHUNK_HEADER_LEN + len],
                ),
            })
        }
        RecordKind::Io => {
            need(raw_kind, bytes, IO_HEADER_LEN)?;
            type H = IoEventHeader;
            let direction = Direction::try_from(r.u8(offset_of!(H, direction)))
                .map_err(DecodeError::BadDirection)?;
            let captured = r.u32(offset_of!(H, captured_len)) as usize;
            let present = bytes.len() - IO_HEADER_LEN;
            let limit = present.min(MAX_CAPTURE);
            if captured > limit {
                return Err(DecodeError::BadLength { captured, limit });
            }
            let ret = r.i64(offset_of!(H, ret));
            let n_marks = r.u16(offset_of!(H, marks)) as usize;
            if n_marks > MAX_MARKS as usize || captured + n_marks * MARK_SLOT_LEN > present {
                return Err(DecodeError::BadMarkCount {
                    marks: n_marks,
                    present: present - captured,
                    max: MAX_MARKS as usize,
                });
            }
            let frame_status = FrameStatus::try_from(r.u8(offset_of!(H, frame_status)))
                .map_err(DecodeError::BadFrameStatus)?;
            let cursor_in = Some(r.u32(offset_of!(H, cursor_in))).filter(|&c| c != CURSOR_UNKNOWN);
            let partial_in = r.u8(offset_of!(H, partial_in));
            let capture =
                Capture::try_from(r.u8(offset_of!(H, capture))).map_err(DecodeError::BadCapture)?;
            let area = &bytes[IO_HEADER_LEN..IO_HEADER_LEN + captured + n_marks * MARK_SLOT_LEN];
            // One copy for the prefix and every mark.
            let data = copy_out(arena, area);
            let (payload, marks) =
                if n_marks == 0 {
                    (data, FrameMarks::default())
                } else {
                    let marks = FrameMarks::from_slots(data.slice(captured..), n_marks, ret)
                        .map_err(|m| DecodeError::BadMark {
                            index: m.index,
                            offset: m.offset,
                            len: m.len,
                            ret,
                        })?;
                    let payload = if captured == 0 {
                        Bytes::new()
                    } else {
                        data.slice(..captured)
                    };
                    (payload, marks)
                };
            Ok(KernelEvent::Io(IoRecord {
                tgid: r.u32(offset_of!(H, tgid)),
                tid: r.u32(offset_of!(H, tid)),
                fd: r.u32(offset_of!(H, fd)),
                direction,
                syscall: syscall(r.u8(offset_of!(H, syscall)))?,
                ret,
                ts_enter_ns: r.u64(offset_of!(H, ts_enter_ns)),
                ts_exit_ns: r.u64(offset_of!(H, ts_exit_ns)),
                seq: r.u64(offset_of!(H, seq)),
                payload,
                marks,
                frame_status,
                cursor_in,
                partial_in,
                capture,
                stream_pos: r.u64(offset_of!(H, stream_pos)),
            }))
        }
        RecordKind::Fork | RecordKind::Exec | RecordKind::Exit | RecordKind::OomKill => {
            need(raw_kind, bytes, size_of::<ProcEvent>())?;
            type P = ProcEvent;
            let tgid = r.u32(offset_of!(P, tgid));
            let ts_ns = r.u64(offset_of!(P, ts_ns));
            Ok(match kind {
                RecordKind::Fork => KernelEvent::Fork {
                    parent_tgid: r.u32(offset_of!(P, ppid)),
                    child_pid: r.u32(offset_of!(P, child_pid)),
                    ts_ns,
                },
                RecordKind::Exec => KernelEvent::Exec {
                    tgid,
                    ppid: r.u32(offset_of!(P, ppid)),
                    comm: r.cstr(offset_of!(P, comm), telemetry_common::COMM_LEN),
                    filename: r.cstr(offset_of!(P, filename), telemetry_common::FILENAME_LEN),
                    ts_ns,
                },
                RecordKind::OomKill => KernelEvent::OomKill { tgid, ts_ns },
                _ => KernelEvent::Exit {
                    tgid,
                    ts_ns,
                    status: ExitStatus::from_raw(r.u32(offset_of!(P, exit_code))),
                },
            })
        }
        RecordKind::SchedSlice => {
            need(raw_kind, bytes, size_of::<SchedSlice>())?;
            type S = SchedSlice;
            let out_ns = r.u64(offset_of!(S, out_ns));
            let wake_ns = r.u64(offset_of!(S, wake_ns));
            Ok(KernelEvent::Sched(SchedEpisode {
                tgid: r.u32(offset_of!(S, tgid)),
                tid: r.u32(offset_of!(S, tid)),
                off: (out_ns != 0).then(|| OffCpu {
                    out_ns,
                    state: r.u32(offset_of!(S, state)),
                    syscall: u32::try_from(r.u32(offset_of!(S, syscall)) as i32).ok(),
                    arg0: r.u64(offset_of!(S, arg0)),
                    wake_ns: (wake_ns != 0).then_some(wake_ns),
                    waker_tid: match r.u32(offset_of!(S, waker_tid)) {
                        0 => None,
                        t => Some(t),
                    },
                    walked: r.u32(offset_of!(S, flags)) & SLICE_WALKED != 0,
                }),
                in_ns: r.u64(offset_of!(S, in_ns)),
            }))
        }
        RecordKind::Serialize => {
            need(raw_kind, bytes, size_of::<SerializeEvent>())?;
            type Z = SerializeEvent;
            let function = SerializeFn::try_from(r.u8(offset_of!(Z, function)))
                .map_err(DecodeError::BadSerializeFn)?;
            let n = r.u64(offset_of!(Z, bytes));
            Ok(KernelEvent::Serialize(SerializeRecord {
                tgid: r.u32(offset_of!(Z, tgid)),
                tid: r.u32(offset_of!(Z, tid)),
                function,
                ts_start_ns: r.u64(offset_of!(Z, ts_start_ns)),
                ts_end_ns: r.u64(offset_of!(Z, ts_end_ns)),
                // A size field beyond any real message means the read hit something
                // that is not a bytes/str object.
                bytes: (n < 1 << 40).then_some(n),
            }))
        }
        RecordKind::FdOpen | RecordKind::FdClose => {
            need(raw_kind, bytes, size_of::<FdEvent>())?;
            type F = FdEvent;
            let tgid = r.u32(offset_of!(F, tgid));
            let fd = r.u32(offset_of!(F, fd));
            let ts_ns = r.u64(offset_of!(F, ts_ns));
            if kind == RecordKind::FdOpen {
                let ret = r.i64(offset_of!(F, ret));
                // The fd is the call's argument (connect) or its result (accept).
                let opened = if (fd as i32) >= 0 {
                    Some(fd)
                } else {
                    u32::try_from(ret).ok()
                };
                Ok(KernelEvent::FdOpen {
                    tgid,
                    tid: r.u32(offset_of!(F, tid)),
                    fd: opened,
                    syscall: syscall(r.u8(offset_of!(F, syscall)))?,
                    ret,
                    ts_ns,
                })
            } else {
                let b = offset_of!(F, bytes);
                let c = offset_of!(F, calls);
                Ok(KernelEvent::FdClose {
                    tgid,
                    fd,
                    ts_ns,
                    totals: FdTotals::from_arrays(
                        [r.u64(b), r.u64(b + 8)],
                        [r.u64(c), r.u64(c + 8)],
                    ),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use telemetry_common::{FrameMarkSlot, MARK_BYTES};

    fn put32(v: &mut [u8], off: usize, x: u32) {
        v[off..off + 4].copy_from_slice(&x.to_ne_bytes());
    }
    fn put64(v: &mut [u8], off: usize, x: u64) {
        v[off..off + 8].copy_from_slice(&x.to_ne_bytes());
    }

    fn io_record(payload: &[u8]) -> Vec<u8> {
        type H = IoEventHeader;
        let mut v = vec![0u8; IO_HEADER_LEN + payload.len()];
        put32(&mut v, 0, RecordKind::Io as u32);
        put32(&mut v, offset_of!(H, tgid), 10);
        put32(&mut v, offset_of!(H, tid), 11);
        put32(&mut v, offset_of!(H, fd), 7);
        v[offset_of!(H, direction)] = Direction::Egress as u8;
        v[offset_of!(H, syscall)] = Syscall::Writev as u8;
        put32(&mut v, offset_of!(H, captured_len), payload.len() as u32);
        put64(&mut v, offset_of!(H, ret), payload.len() as u64 + 5);
        put64(&mut v, offset_of!(H, ts_enter_ns), 100);
        put64(&mut v, offset_of!(H, ts_exit_ns), 200);
        put64(&mut v, offset_of!(H, seq), 42);
        v[IO_HEADER_LEN..].copy_from_slice(payload);
        v
    }

    #[test]
    fn io_roundtrip() {
        let ev = decode(&io_record(b"hello")).unwrap();
        let KernelEvent::Io(io) = ev else {
            panic!("not io")
        };
        assert_eq!(
            (io.tgid, io.tid, io.fd, io.seq, io.ret),
            (10, 11, 7, 42, 10)
        );
        assert_eq!(io.direction, Direction::Egress);
        assert_eq!(io.syscall, Syscall::Writev);
        assert_eq!(&io.payload[..], b"hello");
    }

    #[test]
    fn records_decoded_into_one_arena_keep_their_own_bytes() {
        let mut arena = BytesMut::with_capacity(64);
        let records = [
            io_record(b"first"),
            io_with_marks(b"second", 100, &[(40, b"markbytes")]),
            io_record(&[7u8; 200]), // beyond the arena's capacity: a new buffer
            io_record(b"last"),
        ];
        let mut payloads = Vec::new();
        for r in &records {
            let Ok(KernelEvent::Io(io)) = decode_with(r, &mut arena) else {
                panic!("not io")
            };
            payloads.push(io);
        }
        assert_eq!(&payloads[0].payload[..], b"first");
        assert_eq!(&payloads[1].payload[..], b"second");
        assert_eq!(payloads[1].marks.get(0), Some((40, &b"markbytes"[..])));
        assert_eq!(&payloads[2].payload[..], &[7u8; 200][..]);
        assert_eq!(&payloads[3].payload[..], b"last");
        // A failed decode leaves nothing behind for the next record.
        let bad = io_with_marks(b"x", 1, &[(40, b"beyond ret")]);
        assert!(decode_with(&bad, &mut arena).is_err());
        let Ok(KernelEvent::Io(io)) = decode_with(&io_record(b"after"), &mut arena) else {
            panic!("not io")
        };
        assert_eq!(&io.payload[..], b"after");
    }

    /// An io record with `marks` (offset, bytes) slots after the prefix.
    fn io_with_marks(payload: &[u8], ret: i64, marks: &[(u32, &[u8])]) -> Vec<u8> {
        type H = IoEventHeader;
        let mut v = io_record(payload);
        put64(&mut v, offset_of!(H, ret), ret as u64);
        v[offset_of!(H, marks)..offset_of!(H, marks) + 2]
            .copy_from_slice(&(marks.len() as u16).to_ne_bytes());
        v[offset_of!(H, frame_status)] = FrameStatus::Tracked as u8;
        put32(&mut v, offset_of!(H, cursor_in), 3);
        for (off, bytes) in marks {
            let mut slot = vec![0u8; MARK_SLOT_LEN];
            put32(&mut slot, offset_of!(FrameMarkSlot, offset), *off);
            let l = offset_of!(FrameMarkSlot, len);
            slot[l..l + 2].copy_from_slice(&(bytes.len() as u16).to_ne_bytes());
            let b = offset_of!(FrameMarkSlot, bytes);
            slot[b..b + bytes.len()].copy_from_slice(bytes);
            v.extend(slot);
        }
        v
    }

    #[test]
    fn io_marks_roundtrip() {
        let v = io_with_marks(b"prefix", 100_000, &[(5000, &[1; 64]), (90_000, b"abc")]);
        let KernelEvent::Io(io) = decode(&v).unwrap() else {
            panic!("not io")
        };
        assert_eq!(&io.payload[..], b"prefix");
        assert_eq!(io.frame_status, FrameStatus::Tracked);
        assert_eq!((io.cursor_in, io.partial_in), (Some(3), 0));
        assert_eq!(io.marks.len(), 2);
        assert_eq!(io.marks.get(0), Some((5000, &[1u8; 64][..])));
        assert_eq!(io.marks.get(1), Some((90_000, &b"abc"[..])));
        // No marks, cursor unknown: the plain record of an untracked fd.
        let KernelEvent::Io(io) = decode(&io_record(b"x")).unwrap() else {
            panic!("not io")
        };
        assert_eq!(io.frame_status, FrameStatus::Unknown);
        assert!(io.marks.is_empty());
    }

    #[test]
    fn io_mark_checks() {
        type H = IoEventHeader;
        let ok: &[u8] = &[7; 9];
        // Out of order, beyond ret, empty, too long.
        for (marks, ret) in [
            (vec![(500u32, ok), (400, ok)], 1000i64),
            (vec![(500, ok), (500, ok)], 1000),
            (vec![(995, ok)], 1000),
            (vec![(10, ok)], -11),
            (vec![(10, &[][..])], 1000),
        ] {
            let v = io_with_marks(b"pre", ret, &marks);
            assert!(
                matches!(decode(&v), Err(DecodeError::BadMark { .. })),
                "{marks:?} {ret}"
            );
        }
        let mut v = io_with_marks(b"pre", 1000, &[(10, ok)]);
        let l = IO_HEADER_LEN + 3 + offset_of!(FrameMarkSlot, len);
        v[l..l + 2].copy_from_slice(&(MARK_BYTES as u16 + 1).to_ne_bytes());
        assert!(matches!(decode(&v), Err(DecodeError::BadMark { .. })));
        // More marks than the record holds, or than MAX_MARKS.
        let mut v = io_with_marks(b"pre", 1000, &[(10, ok)]);
        v[offset_of!(H, marks)..offset_of!(H, marks) + 2].copy_from_slice(&2u16.to_ne_bytes());
        assert!(matches!(decode(&v), Err(DecodeError::BadMarkCount { .. })));
        let many: Vec<(u32, &[u8])> = (0..=MAX_MARKS).map(|i| (i * 10, ok)).collect();
        let v = io_with_marks(b"pre", 100_000, &many);
        assert!(matches!(decode(&v), Err(DecodeError::BadMarkCount { .. })));
        let v = io_with_marks(b"pre", 100_000, &many[..MAX_MARKS as usize]);
        assert!(decode(&v).is_ok());
        let mut v = io_with_marks(b"pre", 1000, &[]);
        v[offset_of!(H, frame_status)] = 7;
        assert_eq!(decode(&v), Err(DecodeError::BadFrameStatus(7)));
        // Cut anywhere: an error, never a panic.
        let v = io_with_marks(b"prefix", 100_000, &[(5000, &[1; 64]), (90_000, b"abc")]);
        for cut in 0..v.len() {
            assert!(decode(&v[..cut]).is_err());
        }
    }

    #[test]
    fn io_length_checks() {
        let mut v = io_record(b"hello");
        put32(&mut v, offset_of!(IoEventHeader, captured_len), 6);
        assert!(matches!(decode(&v), Err(DecodeError::BadLength { .. })));
        let mut v = io_record(&[0u8; 10]);
        put32(&mut v, offset_of!(IoEventHeader, captured_len), u32::MAX);
        assert!(matches!(decode(&v), Err(DecodeError::BadLength { .. })));
        let mut v = io_record(b"x");
        v[offset_of!(IoEventHeader, direction)] = 9;
        assert_eq!(decode(&v), Err(DecodeError::BadDirection(9)));
        let mut v = io_record(b"x");
        v[offset_of!(IoEventHeader, syscall)] = 200;
        assert_eq!(decode(&v), Err(DecodeError::BadSyscall(200)));
    }

    #[test]
    fn truncated_and_garbage_never_panic() {
        let io = io_record(&[7u8; 64]);
        for cut in 0..io.len() {
            let _ = decode(&io[..cut]);
        }
        let mut proc_rec = vec![0u8; size_of::<ProcEvent>()];
        let mut fd_rec = vec![0u8; size_of::<FdEvent>()];
        for kind in [
            RecordKind::Fork,
            RecordKind::Exec,
            RecordKind::Exit,
            RecordKind::OomKill,
        ]
        .map(|k| k as u32)
        {
            put32(&mut proc_rec, 0, kind);
            assert!(decode(&proc_rec).is_ok());
            for cut in 0..proc_rec.len() {
                assert!(decode(&proc_rec[..cut]).is_err());
            }
        }
        for kind in [RecordKind::FdOpen, RecordKind::FdClose].map(|k| k as u32) {
            put32(&mut fd_rec, 0, kind);
            fd_rec[offset_of!(FdEvent, syscall)] = Syscall::Accept4 as u8;
            assert!(decode(&fd_rec).is_ok());
            for cut in 0..fd_rec.len() {
                assert!(decode(&fd_rec[..cut]).is_err());
            }
        }
        // Pseudo-random garbage.
        let mut x: u64 = 0x9e3779b97f4a7c15;
        for len in 0..600 {
            let v: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    (x % 8) as u8 // small values hit the valid kinds often
                })
                .collect();
            let _ = decode(&v);
        }
        assert_eq!(decode(&[9, 0, 0, 0]), Err(DecodeError::UnknownKind(9)));
    }

    #[test]
    fn proc_and_fd_events() {
        type P = ProcEvent;
        let mut v = vec![0u8; size_of::<P>()];
        put32(&mut v, 0, RecordKind::Exec as u32);
        put32(&mut v, offset_of!(P, tgid), 5);
        put32(&mut v, offset_of!(P, ppid), 1);
        v[offset_of!(P, comm)..offset_of!(P, comm) + 7].copy_from_slice(b"python3");
        let f = offset_of!(P, filename);
        v[f..f + 9].copy_from_slice(b"/usr/bin/");
        let KernelEvent::Exec {
            tgid,
            ppid,
            comm,
            filename,
            ..
        } = decode(&v).unwrap()
        else {
            panic!("not exec")
        };
        assert_eq!(
            (tgid, ppid, comm.as_str(), filename.as_str()),
            (5, 1, "python3", "/usr/bin/")
        );

        type F = FdEvent;
        let mut v = vec![0u8; size_of::<F>()];
        put32(&mut v, 0, RecordKind::FdClose as u32);
        put32(&mut v, offset_of!(F, fd), 9);
        put64(&mut v, offset_of!(F, bytes), 100);
        put64(&mut v, offset_of!(F, bytes) + 8, 200);
        put64(&mut v, offset_of!(F, calls), 3);
        put64(&mut v, offset_of!(F, calls) + 8, 4);
        let KernelEvent::FdClose { fd, totals, .. } = decode(&v).unwrap() else {
            panic!("not close")
        };
        assert_eq!(fd, 9);
        assert_eq!(
            totals,
            FdTotals {
                bytes_in: 100,
                bytes_out: 200,
                calls_in: 3,
                calls_out: 4
            }
        );
    }

    /// A used-up arena is replaced by a whole new one while its records live, and taken
    /// back once they are gone.
    #[test]
    fn the_arena_is_renewed_whole_or_reclaimed() {
        let mut arena = BytesMut::with_capacity(64);
        let held = copy_out(&mut arena, &[1; 60]);
        let next = copy_out(&mut arena, &[2; 10]);
        assert_eq!((&held[..], &next[..]), (&[1u8; 60][..], &[2u8; 10][..]));
        assert_eq!(arena.capacity(), ARENA_BYTES - 10, "a new arena, whole");
        drop((held, next));
        let start = arena.as_ptr() as usize - 10;
        let mut last = Bytes::new();
        for _ in 0..ARENA_BYTES / 1000 {
            last = copy_out(&mut arena, &[3; 1000]);
        }
        drop(last);
        let again = copy_out(&mut arena, &[4; 1000]);
        assert_eq!(
            again.as_ptr() as usize,
            start,
            "the same buffer, taken back"
        );
    }

    /// An open's fd is its argument (connect) or, where that is negative, its result
    /// (accept); neither gives none.
    #[test]
    fn fd_open_takes_the_argument_or_the_result() {
        type F = FdEvent;
        let open = |arg: i32, ret: i64| {
            let mut v = vec![0u8; size_of::<F>()];
            put32(&mut v, 0, RecordKind::FdOpen as u32);
            put32(&mut v, offset_of!(F, fd), arg as u32);
            put64(&mut v, offset_of!(F, ret), ret as u64);
            v[offset_of!(F, syscall)] = Syscall::Connect as u8;
            match decode(&v) {
                Ok(KernelEvent::FdOpen { fd, .. }) => fd,
                other => panic!("not an open: {other:?}"),
            }
        };
        assert_eq!(open(7, 0), Some(7));
        assert_eq!(open(7, -115), Some(7), "a connect in progress is a socket");
        assert_eq!(open(-1, 12), Some(12));
        assert_eq!(open(-1, -9), None);
    }

    #[test]
    fn exit_status() {
        assert_eq!(ExitStatus::from_raw(3 << 8), ExitStatus::Exited(3));
        assert_eq!(
            ExitStatus::from_raw(9),
            ExitStatus::Signaled {
                signal: 9,
                core_dumped: false
            }
        );
        assert_eq!(
            ExitStatus::from_raw(0x80 | 11),
            ExitStatus::Signaled {
                signal: 11,
                core_dumped: true
            }
        );
        assert_eq!(ExitStatus::from_raw(u32::MAX), ExitStatus::Unknown);
    }
}
