//! Joins the kernel's chunk records (a request sender's bytes beyond its record's
//! prefix, see telemetry-ebpf/src/io_chunks.rs) to their I/O record: they come just
//! before it in the ring and become marks, so the decoders see the bytes whole.
use crate::fast_hash::FastMap;
use crate::kernel::{FrameMark, IoRecord};
use bytes::Bytes;

/// fds with chunks waiting at most (a record lost in the ring leaves its chunks here).
const MAX_WAITING: usize = 1024;

#[derive(Default)]
pub struct ChunkJoin {
    /// (tgid, fd) -> the syscall's seq and its chunks so far.
    waiting: FastMap<(u32, u32), (u64, Vec<FrameMark>)>,
    /// Chunk bytes joined to records, and chunks whose record never came.
    pub joined_bytes: u64,
    pub orphans: u64,
}

impl ChunkJoin {
    pub fn chunk(&mut self, tgid: u32, fd: u32, seq: u64, offset: u32, bytes: Bytes) {
        if self.waiting.len() >= MAX_WAITING && !self.waiting.contains_key(&(tgid, fd)) {
            self.orphans += self.waiting.values().map(|w| w.1.len() as u64).sum::<u64>();
            self.waiting.clear();
        }
        let w = self.waiting.entry((tgid, fd)).or_insert((seq, Vec::new()));
        if w.0 != seq {
            // The previous syscall's record never came.
            self.orphans += w.1.len() as u64;
            *w = (seq, Vec::new());
        }
        w.1.push(FrameMark { offset, bytes });
    }

    /// Adds the chunks of `rec`'s syscall to its marks (sorted by offset).
    pub fn join(&mut self, rec: &mut IoRecord) {
        if self.waiting.is_empty() {
            return;
        }
        let Some((seq, chunks)) = self.waiting.remove(&(rec.tgid, rec.fd)) else {
            return;
        };
        if seq != rec.seq {
            self.orphans += chunks.len() as u64;
            return;
        }
        let ret = rec.ret.max(0) as u64;
        let joined = &mut self.joined_bytes;
        rec.marks.join(chunks.into_iter().filter(|c| {
            let fits = c.offset as u64 + c.bytes.len() as u64 <= ret;
            if fits {
                *joined += c.bytes.len() as u64;
            }
            fits
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::decode::{decode, KernelEvent};
    use std::mem::offset_of;
    use telemetry_common::{IoChunkHeader, RecordKind, IO_CHUNK_HEADER_LEN};

    fn chunk_record(tgid: u32, fd: u32, seq: u64, offset: u32, data: &[u8]) -> Vec<u8> {
        type H = IoChunkHeader;
        let mut v = vec![0u8; IO_CHUNK_HEADER_LEN];
        let put = |v: &mut Vec<u8>, at: usize, b: &[u8]| v[at..at + b.len()].copy_from_slice(b);
        put(
            &mut v,
            offset_of!(H, kind),
            &(RecordKind::IoChunk as u32).to_ne_bytes(),
        );
        put(&mut v, offset_of!(H, tgid), &tgid.to_ne_bytes());
        put(&mut v, offset_of!(H, fd), &fd.to_ne_bytes());
        put(&mut v, offset_of!(H, seq), &seq.to_ne_bytes());
        put(&mut v, offset_of!(H, offset), &offset.to_ne_bytes());
        put(
            &mut v,
            offset_of!(H, len),
            &(data.len() as u32).to_ne_bytes(),
        );
        v.extend_from_slice(data);
        v
    }

    fn io(tgid: u32, fd: u32, seq: u64, payload: &[u8], ret: i64) -> IoRecord {
        IoRecord {
            tgid,
            tid: tgid,
            fd,
            direction: crate::kernel::Direction::Egress,
            syscall: crate::kernel::Syscall::Writev,
            ret,
            ts_enter_ns: 1,
            ts_exit_ns: 2,
            seq,
            payload: Bytes::copy_from_slice(payload),
            marks: crate::kernel::FrameMarks::from_vec(vec![FrameMark {
                offset: 20,
                bytes: Bytes::from_static(b"hdr"),
            }]),
            frame_status: crate::kernel::FrameStatus::Tracked,
            cursor_in: None,
            partial_in: 0,
            capture: crate::kernel::Capture::Full,
            stream_pos: 0,
        }
    }

    fn feed(j: &mut ChunkJoin, rec: &[u8]) {
        let Ok(KernelEvent::IoChunk {
            tgid,
            fd,
            seq,
            offset,
            bytes,
        }) = decode(rec)
        else {
            panic!("not a chunk record");
        };
        j.chunk(tgid, fd, seq, offset, bytes);
    }

    #[test]
    fn chunks_join_their_record_as_sorted_marks() {
        let mut j = ChunkJoin::default();
        feed(&mut j, &chunk_record(7, 3, 5, 10, b"0123456789"));
        feed(&mut j, &chunk_record(7, 3, 5, 20, b"abcdefghij"));
        let mut rec = io(7, 3, 5, b"prefix0123", 30);
        j.join(&mut rec);
        let offs: Vec<u32> = rec.marks.iter().map(|m| m.offset).collect();
        assert_eq!(offs, vec![10, 20, 20]);
        assert_eq!(j.joined_bytes, 20);
        // The stream sees the whole syscall.
        let chunk = crate::streams::Chunk {
            seq: 5,
            len: 30,
            payload: rec.payload.clone(),
            marks: rec.marks.clone(),
            frame_start: None,
            ts_enter_ns: 1,
            ts_exit_ns: 2,
            tid: 7,
            capture: crate::kernel::Capture::Full,
            stream_pos: 0,
        };
        let whole: Vec<u8> = chunk.pieces().flat_map(|(b, _)| b.to_vec()).collect();
        assert_eq!(whole, b"prefix01230123456789abcdefghij");
    }

    #[test]
    fn chunks_of_a_lost_record_are_dropped_and_counted() {
        let mut j = ChunkJoin::default();
        feed(&mut j, &chunk_record(7, 3, 5, 10, b"x"));
        feed(&mut j, &chunk_record(7, 3, 6, 10, b"y"));
        assert_eq!(j.orphans, 1);
        let mut rec = io(7, 3, 7, b"p", 11);
        j.join(&mut rec);
        assert_eq!(j.orphans, 2);
        assert_eq!(rec.marks.len(), 1);
        // A chunk claiming more bytes than the record moved is not joined.
        feed(&mut j, &chunk_record(7, 3, 8, 10, b"zz"));
        let mut rec = io(7, 3, 8, b"p", 11);
        j.join(&mut rec);
        assert_eq!(rec.marks.len(), 1);
        // Truncated record: an error, not a panic.
        assert!(decode(&chunk_record(7, 3, 8, 10, b"zz")[..IO_CHUNK_HEADER_LEN + 1]).is_err());
    }
}
