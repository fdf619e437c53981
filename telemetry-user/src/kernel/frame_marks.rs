//! A record's frame marks: the frame headers the kernel's cursor copied beyond the
//! captured prefix, kept as the record's own mark slots.
//!
//! Most records that carry payload carry marks, so a list made per record was one of
//! the agent's largest sources of allocations (decode, then the pipeline's copy). The
//! slots are checked once at decode and read in place afterwards; only a record that
//! gets extra pieces (repro chunks, see `repro::chunks`) owns a list.
use std::mem::offset_of;

use bytes::Bytes;
use telemetry_common::{FrameMarkSlot, MARK_BYTES, MARK_SLOT_LEN};

/// Bytes of a syscall beyond its captured prefix, starting at a frame header (HTTP/2
/// on sockets, {packet,4} on pipes) that the prefix does not fully hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameMark {
    /// Offset in the syscall's bytes (0 = the first byte of `payload`).
    pub offset: u32,
    /// At most MARK_BYTES (64): the header and the first payload bytes, fewer where the
    /// syscall's data ends earlier.
    pub bytes: Bytes,
}

/// Why a record's mark slots were refused (see [`FrameMarks::from_slots`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadMark {
    pub index: usize,
    pub offset: u32,
    pub len: usize,
}

/// The marks of one record, sorted by offset.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FrameMarks {
    /// The record's mark slots (a multiple of MARK_SLOT_LEN bytes), checked by
    /// `from_slots`; empty once `owned` is used.
    slots: Bytes,
    /// The marks as a list: only for records given pieces after decode, and tests.
    owned: Vec<FrameMark>,
}

impl FrameMarks {
    /// Checks `n` slots at the start of `slots`: in bounds, strictly increasing
    /// offsets, each 1..=MARK_BYTES long and inside the syscall's `ret` bytes.
    pub fn from_slots(slots: Bytes, n: usize, ret: i64) -> Result<Self, BadMark> {
        let mut next_min: u64 = 0;
        for index in 0..n {
            let (offset, len) = slot_at(&slots, index).unwrap_or((0, 0));
            let end = offset as u64 + len as u64;
            if len == 0
                || len > MARK_BYTES
                || (offset as u64) < next_min
                || ret < 0
                || end > ret as u64
            {
                return Err(BadMark { index, offset, len });
            }
            next_min = offset as u64 + 1;
        }
        let slots = if n == 0 {
            Bytes::new()
        } else {
            slots.slice(..n * MARK_SLOT_LEN)
        };
        Ok(FrameMarks {
            slots,
            owned: Vec::new(),
        })
    }

    /// Marks given as a list (sorted by offset by the caller).
    pub fn from_vec(owned: Vec<FrameMark>) -> Self {
        FrameMarks {
            slots: Bytes::new(),
            owned,
        }
    }

    pub fn len(&self) -> usize {
        if self.owned.is_empty() {
            self.slots.len() / MARK_SLOT_LEN
        } else {
            self.owned.len()
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Mark `i`: its offset and bytes, borrowed.
    pub fn get(&self, i: usize) -> Option<(u32, &[u8])> {
        if !self.owned.is_empty() {
            return self.owned.get(i).map(|m| (m.offset, &m.bytes[..]));
        }
        let (offset, len) = slot_at(&self.slots, i)?;
        let b = i * MARK_SLOT_LEN + offset_of!(FrameMarkSlot, bytes);
        Some((offset, self.slots.get(b..b + len)?))
    }

    /// Mark `i` with its own handle on the bytes (no copy).
    pub fn mark(&self, i: usize) -> Option<FrameMark> {
        if !self.owned.is_empty() {
            return self.owned.get(i).cloned();
        }
        let (offset, len) = slot_at(&self.slots, i)?;
        let b = i * MARK_SLOT_LEN + offset_of!(FrameMarkSlot, bytes);
        let bytes = self.slots.slice(b..(b + len).min(self.slots.len()));
        Some(FrameMark { offset, bytes })
    }

    pub fn iter(&self) -> Iter<'_> {
        Iter {
            marks: self,
            next: 0,
        }
    }

    /// Adds pieces of the same syscall and keeps the list sorted; at one offset the
    /// longer piece comes first (a chunk before a frame-header mark).
    pub fn join(&mut self, pieces: impl IntoIterator<Item = FrameMark>) {
        if self.owned.is_empty() {
            self.owned = self.iter().collect();
            self.slots = Bytes::new();
        }
        self.owned.extend(pieces);
        self.owned
            .sort_by_key(|m| (m.offset, std::cmp::Reverse(m.bytes.len())));
    }

    /// Own copies of the bytes: the slots are a slice of the ring reader's shared
    /// buffer, which a record kept for long would keep whole.
    pub fn detach(&mut self) {
        self.slots = Bytes::copy_from_slice(&self.slots);
        for m in &mut self.owned {
            m.bytes = Bytes::copy_from_slice(&m.bytes);
        }
    }
}

/// The marks in order, each with its own handle on its bytes.
pub struct Iter<'a> {
    marks: &'a FrameMarks,
    next: usize,
}

impl Iterator for Iter<'_> {
    type Item = FrameMark;

    fn next(&mut self) -> Option<FrameMark> {
        let m = self.marks.mark(self.next)?;
        self.next += 1;
        Some(m)
    }
}

impl<'a> IntoIterator for &'a FrameMarks {
    type Item = FrameMark;
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

/// Offset and length of slot `i`, if the slot is present.
fn slot_at(slots: &Bytes, i: usize) -> Option<(u32, usize)> {
    let at = i.checked_mul(MARK_SLOT_LEN)?;
    let s = slots.get(at..at + MARK_SLOT_LEN)?;
    let o = offset_of!(FrameMarkSlot, offset);
    let l = offset_of!(FrameMarkSlot, len);
    let offset = u32::from_ne_bytes(s.get(o..o + 4)?.try_into().ok()?);
    let len = u16::from_ne_bytes(s.get(l..l + 2)?.try_into().ok()?) as usize;
    Some((offset, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slots(marks: &[(u32, &[u8])]) -> Bytes {
        let mut v = Vec::new();
        for (off, bytes) in marks {
            let mut slot = vec![0u8; MARK_SLOT_LEN];
            let o = offset_of!(FrameMarkSlot, offset);
            slot[o..o + 4].copy_from_slice(&off.to_ne_bytes());
            let l = offset_of!(FrameMarkSlot, len);
            slot[l..l + 2].copy_from_slice(&(bytes.len() as u16).to_ne_bytes());
            let b = offset_of!(FrameMarkSlot, bytes);
            slot[b..b + bytes.len()].copy_from_slice(bytes);
            v.extend(slot);
        }
        Bytes::from(v)
    }

    #[test]
    fn slots_read_in_place_as_a_list_would() {
        let m = FrameMarks::from_slots(slots(&[(5, b"abc"), (90, b"defgh")]), 2, 100).unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m.get(0), Some((5, &b"abc"[..])));
        assert_eq!(m.get(1), Some((90, &b"defgh"[..])));
        assert_eq!(m.get(2), None);
        let list: Vec<FrameMark> = m.iter().collect();
        assert_eq!(list[1].offset, 90);
        assert_eq!(&list[1].bytes[..], b"defgh");
        // Fewer slots checked than present: only those count.
        let m = FrameMarks::from_slots(slots(&[(5, b"abc"), (90, b"defgh")]), 1, 100).unwrap();
        assert_eq!((m.len(), m.get(1)), (1, None));
    }

    #[test]
    fn joined_pieces_keep_the_marks_sorted() {
        let mut m = FrameMarks::from_slots(slots(&[(5, b"hdr"), (90, b"hdr2")]), 2, 100).unwrap();
        m.join([
            FrameMark {
                offset: 50,
                bytes: Bytes::from_static(b"chunk"),
            },
            FrameMark {
                offset: 90,
                bytes: Bytes::from_static(b"longer chunk"),
            },
        ]);
        let offs: Vec<(u32, usize)> = m.iter().map(|x| (x.offset, x.bytes.len())).collect();
        assert_eq!(offs, vec![(5, 3), (50, 5), (90, 12), (90, 4)]);
        assert_eq!(m.get(2), Some((90, &b"longer chunk"[..])));
    }

    #[test]
    fn bad_slots_are_refused() {
        let ok: &[u8] = &[7; 9];
        for (marks, n, ret) in [
            (vec![(500u32, ok), (400, ok)], 2, 1000i64),
            (vec![(500, ok), (500, ok)], 2, 1000),
            (vec![(995, ok)], 1, 1000),
            (vec![(10, ok)], 1, -11),
            (vec![(10, &[][..])], 1, 1000),
            (vec![(10, ok)], 2, 1000), // a slot missing
        ] {
            assert!(
                FrameMarks::from_slots(slots(&marks), n, ret).is_err(),
                "{marks:?} {n} {ret}"
            );
        }
        let too_long = [1u8; MARK_BYTES + 1];
        let mut s = slots(&[(10, &too_long[..MARK_BYTES])]).to_vec();
        let l = offset_of!(FrameMarkSlot, len);
        s[l..l + 2].copy_from_slice(&(MARK_BYTES as u16 + 1).to_ne_bytes());
        assert!(FrameMarks::from_slots(Bytes::from(s), 1, 1000).is_err());
    }
}
