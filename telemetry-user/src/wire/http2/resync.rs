//! Finding frame boundaries again after bytes were lost or the agent joined a
//! connection mid-way: a candidate header must be plausible, and so must the chain
//! of headers it implies.

use super::*;

impl FrameDecoder {
    /// Whether the 9 bytes look like a frame header a gRPC peer would send as the
    /// first frame after a resync: known type other than CONTINUATION and
    /// PUSH_PROMISE (those continue or start blocks we cannot use), only defined
    /// flags, reserved bit clear, stream id rules, fixed lengths.
    pub fn plausible(&self, b: &[u8]) -> Option<u32> {
        let h = FrameHeader::parse(b)?;
        if h.reserved || h.len > self.cfg.resync_max_frame_size {
            return None;
        }
        let (flags_ok, stream_frame) = match h.ty {
            TYPE_DATA => (h.flags & !(FLAG_END_STREAM | FLAG_PADDED) == 0, Some(true)),
            TYPE_HEADERS => (
                h.flags & !(FLAG_END_STREAM | FLAG_END_HEADERS | FLAG_PADDED | FLAG_PRIORITY) == 0,
                Some(true),
            ),
            TYPE_PRIORITY => (h.flags == 0 && h.len == 5, Some(true)),
            TYPE_RST_STREAM => (h.flags == 0 && h.len == 4, Some(true)),
            TYPE_SETTINGS => (
                h.flags & !FLAG_ACK == 0 && h.len % 6 == 0 && (!h.has(FLAG_ACK) || h.len == 0),
                Some(false),
            ),
            TYPE_PING => (h.flags & !FLAG_ACK == 0 && h.len == 8, Some(false)),
            TYPE_GOAWAY => (h.flags == 0 && h.len >= 8, Some(false)),
            TYPE_WINDOW_UPDATE => (h.flags == 0 && h.len == 4, None),
            _ => (false, None),
        };
        if !flags_ok {
            return None;
        }
        match stream_frame {
            Some(true) => {
                if h.stream_id == 0 || (self.cfg.odd_stream_ids && h.stream_id % 2 == 0) {
                    return None;
                }
            }
            Some(false) => {
                if h.stream_id != 0 {
                    return None;
                }
            }
            None => {
                if self.cfg.odd_stream_ids && h.stream_id != 0 && h.stream_id % 2 == 0 {
                    return None;
                }
            }
        }
        Some(h.len)
    }

    /// Scans the search buffer for a frame start. A candidate must be plausible
    /// and so must every following header that lies inside the buffer; it is
    /// accepted when that chain holds at least two headers, or ends exactly at
    /// the end of the known bytes, or the candidate starts a syscall's bytes.
    pub(super) fn search(&mut self) -> Option<usize> {
        let buf = &self.search_buf;
        // A connection start seen while searching.
        if buf.len() >= PREFACE.len() && buf.starts_with(PREFACE) {
            // Skip past the preface by treating what follows as a candidate start.
            let i = PREFACE.len();
            if buf.len() >= i + FRAME_HEADER_LEN && self.plausible(&buf[i..]).is_some() {
                // Nothing came before it: every frame header from here on is seen.
                self.whole_history = self.search_skipped == 0;
                return Some(i);
            }
        }
        let mut i = 0usize;
        while i + FRAME_HEADER_LEN <= buf.len() {
            if self.plausible(&buf[i..]).is_some() {
                let mut j = i;
                let mut count = 0usize;
                let mut ok = true;
                while j + FRAME_HEADER_LEN <= buf.len() {
                    match self.plausible(&buf[j..]) {
                        Some(len) => {
                            count += 1;
                            j += FRAME_HEADER_LEN + len as usize;
                        }
                        None => {
                            ok = false;
                            break;
                        }
                    }
                }
                if ok && (count >= 2 || j == buf.len() || i == self.search_feed_start) {
                    return Some(i);
                }
            }
            i += 1;
        }
        None
    }

    /// Bounds the search buffer, keeping the tail where a candidate may still be
    /// confirmed by bytes to come.
    pub(super) fn trim_search_buf(&mut self) {
        let max = self.cfg.max_search_buffer.max(FRAME_HEADER_LEN * 2);
        if self.search_buf.len() > max {
            let drop = self.search_buf.len() - max;
            self.search_buf.drain(..drop);
            self.search_skipped += drop as u64;
            self.search_feed_start = self.search_feed_start.saturating_sub(drop);
        }
    }
}
