//! Joins the kernel's chunk records (a request sender's bytes beyond its record's
//! prefix, see telemetry-ebpf/src/io_chunks.rs) to their I/O record: they come just
//! before it in the ring and become marks, so the decoders see the bytes whole.
use crate::kernel::{FrameMark, IoRecord};
use bytes::Bytes;
use std::collections::HashMap;

/// fds with chunks waiting at most (a record lost in the ring leaves its chunks here).
const MAX_WAITING: usize = 1024;

#[derive(Default)]
pub struct ChunkJoin {
    /// (tgid, fd) -> the syscall's seq and its chunks so far.
    waiting: HashMap<(u32, i32), (u64, Vec<FrameMark>)>,
    /// Chunk bytes joined to records, and chunks whose record never came.
    pub joined_bytes: u64,
    pub orphans: u64,
}

impl ChunkJoin {
    pub fn chunk(&mut self, tgid: u32, fd: i32, seq: u64, offset: u32, bytes: Bytes) {
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
        for c in chunks {
            if c.offset as u64 + c.bytes.len() as u64 <= ret {
                self.joined_bytes += c.bytes.len() as u64;
                rec.marks.push(c);
            }
        }
        rec.marks.sort_by_key(|m| m.offset);
    }
}
