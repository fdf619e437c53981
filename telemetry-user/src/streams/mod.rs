//! Stream assembly: per (process, fd, direction), syscall records put back in stream
//! order by the kernel-assigned sequence number.
//!
//! The ring buffer is shared by all CPUs, so two reads of one socket made on two CPUs
//! can arrive swapped. Records wait in a small reorder buffer until the missing
//! sequence number arrives; if it does not within `max_wait_ns` (or too many records
//! wait), the hole is declared lost (a ring-buffer drop), counted, and reported to the
//! decoder as a gap so it can resynchronise.
use crate::fast_hash::FastMap;
use crate::kernel::{Capture, Direction, FrameMarks};
use bytes::Bytes;
use std::collections::BTreeMap;

/// One syscall's worth of stream bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct Chunk {
    pub seq: u64,
    /// Bytes the syscall moved (its return value, > 0).
    pub len: usize,
    /// The captured prefix of those bytes (`payload.len() <= len`).
    pub payload: Bytes,
    /// Further known bytes beyond the prefix: (offset in this syscall's bytes, bytes),
    /// sorted. The kernel's frame cursor copies each frame header it finds there.
    pub marks: FrameMarks,
    /// Where the kernel's frame cursor says the first frame header of this syscall
    /// starts (None: not tracked, or a header split from the previous syscall).
    pub frame_start: Option<u32>,
    pub ts_enter_ns: u64,
    pub ts_exit_ns: u64,
    pub tid: u32,
    /// Full (prefix + marks) or lean (frame headers only, see `kernel::Capture`).
    pub capture: Capture,
    /// Bytes of the stream before this syscall.
    pub stream_pos: u64,
}

impl Chunk {
    /// Gives the chunk its own copy of its bytes: records are slices of the ring
    /// reader's shared buffer (see `kernel::decode_with`), which one record kept for
    /// long would keep whole.
    pub fn detach(&mut self) {
        self.payload = Bytes::copy_from_slice(&self.payload);
        self.marks.detach();
    }

    /// The syscall's bytes as `(known bytes, span)` pieces in order: each piece's
    /// known bytes start its span, the rest of the span is unknown. This is the
    /// `feed(captured, total_len)` shape every wire decoder takes. (An iterator: one
    /// per record, it allocates nothing.)
    pub fn pieces(&self) -> Pieces<'_> {
        Pieces {
            chunk: self,
            next_mark: 0,
            cur_off: 0,
            cur: &self.payload[..],
            done: false,
        }
    }
}

/// See [`Chunk::pieces`]: one pass over the prefix and the marks; a piece's span ends
/// where the next known bytes begin.
pub struct Pieces<'a> {
    chunk: &'a Chunk,
    next_mark: usize,
    /// The known bytes the next piece starts with, and their offset.
    cur_off: usize,
    cur: &'a [u8],
    done: bool,
}

impl<'a> Pieces<'a> {
    fn piece(off: usize, bytes: &'a [u8], end: usize) -> Option<(&'a [u8], usize)> {
        let span = end.saturating_sub(off);
        (span > 0).then(|| (&bytes[..bytes.len().min(span)], span))
    }
}

impl<'a> Iterator for Pieces<'a> {
    type Item = (&'a [u8], usize);

    fn next(&mut self) -> Option<Self::Item> {
        while !self.done {
            let Some((off, bytes)) = self.chunk.marks.get(self.next_mark) else {
                self.done = true;
                return Self::piece(self.cur_off, self.cur, self.chunk.len);
            };
            self.next_mark += 1;
            let off = off as usize;
            let covered = self.cur_off + self.cur.len();
            if off >= self.chunk.len || off + bytes.len() <= covered {
                continue; // outside the syscall, or nothing new
            }
            // A mark may overlap what is already known: keep only its new part.
            let skip = covered.saturating_sub(off);
            let piece = Self::piece(self.cur_off, self.cur, off + skip);
            (self.cur_off, self.cur) = (off + skip, &bytes[skip..]);
            if piece.is_some() {
                return piece;
            }
        }
        None
    }
}

/// What the assembler hands on, in stream order.
#[derive(Debug, Clone, PartialEq)]
pub enum Ordered {
    Chunk(Chunk),
    /// Sequence numbers `from..to` never arrived: their bytes are unknown.
    Gap {
        from: u64,
        to: u64,
    },
}

#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub struct StreamKey {
    pub tgid: u32,
    pub fd: u32,
    pub direction: Direction,
}

#[derive(Debug, Default)]
struct StreamState {
    /// None until the first record: the agent may join a stream at any sequence number.
    next_seq: Option<u64>,
    waiting: BTreeMap<u64, Chunk>,
    /// Arrival time (kernel clock) of the oldest waiting record.
    oldest_wait_ns: u64,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct AssemblyStats {
    pub chunks_in_order: u64,
    pub chunks_reordered: u64,
    pub lost_records: u64,
    /// Records older than what was already handed on (a duplicate or a late record
    /// after its gap was declared lost).
    pub late_records: u64,
}

pub struct Assembler {
    streams: FastMap<StreamKey, StreamState>,
    max_wait_ns: u64,
    max_waiting: usize,
    pub stats: AssemblyStats,
}

impl Assembler {
    pub fn new(max_wait_ns: u64, max_waiting: usize) -> Self {
        Assembler {
            streams: FastMap::default(),
            max_wait_ns,
            max_waiting: max_waiting.max(1),
            stats: AssemblyStats::default(),
        }
    }

    /// Adds a record; returns what is now in order for this stream.
    pub fn push(&mut self, key: StreamKey, chunk: Chunk) -> Vec<Ordered> {
        let mut out = Vec::new();
        self.push_into(key, chunk, &mut out);
        out
    }

    /// [`Assembler::push`] appending to `out` (a caller's scratch buffer: most records
    /// come in order, one item each).
    pub fn push_into(&mut self, key: StreamKey, chunk: Chunk, out: &mut Vec<Ordered>) {
        let st = self.streams.entry(key).or_default();
        let next = *st.next_seq.get_or_insert(chunk.seq);
        if chunk.seq < next {
            self.stats.late_records += 1;
            return;
        }
        if chunk.seq == next && st.waiting.is_empty() {
            st.next_seq = Some(next + 1);
            self.stats.chunks_in_order += 1;
            out.push(Ordered::Chunk(chunk));
            return;
        }
        if st.waiting.is_empty() {
            st.oldest_wait_ns = chunk.ts_exit_ns;
        }
        let now = chunk.ts_exit_ns;
        st.waiting.insert(chunk.seq, chunk);
        Self::drain(st, out, &mut self.stats);
        if !st.waiting.is_empty()
            && (st.waiting.len() > self.max_waiting
                || now.saturating_sub(st.oldest_wait_ns) > self.max_wait_ns)
        {
            Self::skip_hole(st, out, &mut self.stats);
        }
    }

    /// Called periodically with the current kernel-clock time: declares holes that have
    /// waited too long lost, so a quiet stream does not hold records forever.
    pub fn flush_expired(&mut self, now_ns: u64) -> Vec<(StreamKey, Ordered)> {
        let mut out = Vec::new();
        for (key, st) in self.streams.iter_mut() {
            if !st.waiting.is_empty() && now_ns.saturating_sub(st.oldest_wait_ns) > self.max_wait_ns
            {
                let mut items = Vec::new();
                Self::skip_hole(st, &mut items, &mut self.stats);
                out.extend(items.into_iter().map(|o| (*key, o)));
            }
        }
        out
    }

    /// Forgets a stream (fd closed).
    pub fn remove(&mut self, tgid: u32, fd: u32) -> Vec<(StreamKey, Ordered)> {
        let mut out = Vec::new();
        for direction in [Direction::Ingress, Direction::Egress] {
            let key = StreamKey {
                tgid,
                fd,
                direction,
            };
            if let Some(mut st) = self.streams.remove(&key) {
                while !st.waiting.is_empty() {
                    let mut items = Vec::new();
                    Self::skip_hole(&mut st, &mut items, &mut self.stats);
                    out.extend(items.into_iter().map(|o| (key, o)));
                }
            }
        }
        out
    }

    pub fn remove_process(&mut self, tgid: u32) {
        self.streams.retain(|k, _| k.tgid != tgid);
    }

    fn drain(st: &mut StreamState, out: &mut Vec<Ordered>, stats: &mut AssemblyStats) {
        while let Some(next) = st.next_seq {
            match st.waiting.remove(&next) {
                Some(chunk) => {
                    stats.chunks_reordered += 1;
                    st.next_seq = Some(next + 1);
                    out.push(Ordered::Chunk(chunk));
                }
                None => break,
            }
        }
        if let Some((_, first)) = st.waiting.iter().next() {
            st.oldest_wait_ns = first.ts_exit_ns;
        }
    }

    fn skip_hole(st: &mut StreamState, out: &mut Vec<Ordered>, stats: &mut AssemblyStats) {
        let Some(next) = st.next_seq else { return };
        let Some(&first) = st.waiting.keys().next() else {
            return;
        };
        if first > next {
            stats.lost_records += first - next;
            out.push(Ordered::Gap {
                from: next,
                to: first,
            });
        }
        st.next_seq = Some(first);
        Self::drain(st, out, stats);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marks(v: Vec<(u32, Bytes)>) -> FrameMarks {
        FrameMarks::from_vec(
            v.into_iter()
                .map(|(offset, bytes)| crate::kernel::FrameMark { offset, bytes })
                .collect(),
        )
    }

    fn chunk(seq: u64, t: u64) -> Chunk {
        Chunk {
            seq,
            len: 1,
            payload: Bytes::from(vec![seq as u8]),
            marks: FrameMarks::default(),
            frame_start: None,
            ts_enter_ns: t,
            ts_exit_ns: t,
            tid: 1,
            capture: Capture::Full,
            stream_pos: 0,
        }
    }
    const K: StreamKey = StreamKey {
        tgid: 1,
        fd: 3,
        direction: Direction::Ingress,
    };

    fn seqs(items: &[Ordered]) -> Vec<i64> {
        items
            .iter()
            .map(|o| match o {
                Ordered::Chunk(c) => c.seq as i64,
                Ordered::Gap { from, .. } => -(*from as i64),
            })
            .collect()
    }

    #[test]
    fn joins_at_any_sequence_and_passes_in_order_records() {
        let mut a = Assembler::new(1_000, 64);
        assert_eq!(seqs(&a.push(K, chunk(40, 1))), vec![40]);
        assert_eq!(seqs(&a.push(K, chunk(41, 2))), vec![41]);
        assert_eq!(a.stats.chunks_in_order, 2);
    }

    #[test]
    fn swapped_records_are_put_back_in_order() {
        let mut a = Assembler::new(1_000, 64);
        a.push(K, chunk(0, 1));
        assert!(a.push(K, chunk(2, 2)).is_empty());
        assert_eq!(seqs(&a.push(K, chunk(1, 3))), vec![1, 2]);
        assert_eq!(a.stats.lost_records, 0);
    }

    #[test]
    fn a_hole_that_never_fills_becomes_a_counted_gap() {
        let mut a = Assembler::new(1_000, 64);
        a.push(K, chunk(0, 1));
        assert!(a.push(K, chunk(3, 10)).is_empty());
        let out = a.flush_expired(5_000);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].1, Ordered::Gap { from: 1, to: 3 });
        assert_eq!(a.stats.lost_records, 2);
        // The late record is counted and dropped, never handed on out of order.
        assert!(a.push(K, chunk(1, 6_000)).is_empty());
        assert_eq!(a.stats.late_records, 1);
    }

    #[test]
    fn too_many_waiting_records_force_the_gap() {
        let mut a = Assembler::new(u64::MAX, 2);
        a.push(K, chunk(0, 1));
        a.push(K, chunk(2, 2));
        a.push(K, chunk(3, 3));
        let out = a.push(K, chunk(4, 4));
        assert_eq!(seqs(&out), vec![-1, 2, 3, 4]);
    }

    #[test]
    fn pieces_cover_the_syscall_with_marks_after_the_prefix() {
        let c = Chunk {
            seq: 0,
            len: 100,
            payload: Bytes::from_static(b"abcd"),
            marks: marks(vec![
                (3, Bytes::from_static(b"dEF")),
                (50, Bytes::from_static(b"XY")),
            ]),
            frame_start: None,
            ts_enter_ns: 0,
            ts_exit_ns: 0,
            tid: 1,
            capture: Capture::Full,
            stream_pos: 0,
        };
        let p: Vec<_> = c.pieces().collect();
        assert_eq!(
            p,
            vec![(&b"abcd"[..], 4), (&b"EF"[..], 46), (&b"XY"[..], 50)]
        );
        assert_eq!(p.iter().map(|x| x.1).sum::<usize>(), 100);
    }

    #[test]
    fn a_detached_chunk_owns_its_bytes() {
        let shared = Bytes::from(vec![1u8; 1000]);
        let mut c = chunk(1, 1);
        c.payload = shared.slice(0..10);
        c.marks = marks(vec![(20, shared.slice(100..110))]);
        c.len = 30;
        let before: Vec<_> = c.pieces().map(|(b, s)| (b.to_vec(), s)).collect();
        c.detach();
        let after: Vec<_> = c.pieces().map(|(b, s)| (b.to_vec(), s)).collect();
        assert_eq!(before, after);
        let in_shared = |b: &Bytes| {
            let r = shared.as_ptr_range();
            r.contains(&b.as_ptr())
        };
        let mark = c.marks.mark(0).expect("mark");
        assert!(!in_shared(&c.payload) && !in_shared(&mark.bytes));
    }

    #[test]
    fn directions_and_fds_are_independent() {
        let mut a = Assembler::new(1_000, 64);
        let other = StreamKey {
            direction: Direction::Egress,
            ..K
        };
        a.push(K, chunk(5, 1));
        assert_eq!(seqs(&a.push(other, chunk(0, 1))), vec![0]);
        assert_eq!(seqs(&a.push(K, chunk(6, 1))), vec![6]);
    }
}
