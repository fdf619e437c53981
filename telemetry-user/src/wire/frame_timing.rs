//! Timing one direction of an HTTP/2 connection that the other end decodes.
//!
//! With decode-once, each direction is decoded from the sender's writes; the
//! receiver's reads arrive as lean records: no payload, only the frame headers the
//! kernel's frame cursor found (as marks), and only for syscalls in which a frame
//! ends. What the receiver contributes is *when* it read each frame's last byte:
//! the worker's receipt of a request (t1) and the BEAM's receipt of a response (t3).
//!
//! The bytes of syscalls that sent no record lie inside one frame (the kernel checked
//! that), so they are fed to the frame decoder as a gap of known length.
use super::grpc::{GrpcMessage, MessageReassembler};
use super::http2::{FrameDecoder, Http2Config, Http2Event, Start};
use super::{DecodeStats, ErrorKind};
use crate::fast_hash::FastMap;

/// A frame of interest ended in the syscall being fed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameTiming {
    /// A header block (request headers, response headers or trailers) was read.
    HeadersRead { stream_id: u32, end_stream: bool },
    /// A DATA frame with END_STREAM was read to its last byte.
    StreamEnded { stream_id: u32 },
    /// A whole gRPC message of `len` bytes was read (its length from the 5-byte
    /// prefix, which the kernel's mark of the DATA frame holds). The sender's side
    /// may lose a huge message's boundaries; the receiver's small reads keep them.
    MessageRead { stream_id: u32, len: usize },
    /// Frame sync was lost: ends on this direction are not seen until it is found again.
    SyncLost,
}

/// Header block bytes kept per block: the blocks are only timed, never decoded, and
/// a lean record carries at most a mark's bytes of each.
const HEADER_BLOCK_CAP: usize = telemetry_common::MARK_BYTES;
/// Streams whose message boundaries are followed at once; beyond, the oldest state
/// is dropped (a stream that never ended: its reset was in the other direction).
const MAX_STREAMS: usize = 1024;

/// Follows the frames of one direction through lean records.
#[derive(Debug)]
pub struct FrameTimer {
    frames: FrameDecoder,
    /// Stream position just after the last fed syscall.
    next_pos: Option<u64>,
    /// gRPC message boundaries per HTTP/2 stream (lengths only, no bytes kept).
    messages: FastMap<u32, MessageReassembler>,
    /// The frame events of one feed, kept for the next.
    events: Vec<Http2Event>,
    /// The messages of one DATA piece, kept likewise.
    message_scratch: Vec<GrpcMessage>,
}

impl Default for FrameTimer {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameTimer {
    pub fn new() -> Self {
        FrameTimer {
            frames: searching_decoder(),
            next_pos: None,
            messages: FastMap::default(),
            events: Vec::new(),
            message_scratch: Vec::new(),
        }
    }

    /// Its counters, less the gap bytes and the header blocks lost in gaps: a lean
    /// record's missing payload (header blocks included: they are timed, never
    /// decoded here) is by design, not a decode error.
    pub fn stats(&self) -> DecodeStats {
        let mut s = DecodeStats {
            gap_bytes: 0,
            ..self.frames.stats.clone()
        };
        s.clear(ErrorKind::HeaderBlockGap);
        s
    }

    /// Feeds one lean record: the syscall moved `len` bytes starting at stream
    /// position `stream_pos`; `pieces` are its known bytes (the marks) as
    /// `(bytes, span)`; `frame_start` is where the kernel says its first frame header
    /// begins (None when a header was split from the previous syscall).
    pub fn feed<'a>(
        &mut self,
        stream_pos: u64,
        len: usize,
        frame_start: Option<u32>,
        pieces: impl IntoIterator<Item = (&'a [u8], usize)>,
        out: &mut Vec<FrameTiming>,
    ) {
        let mut events = std::mem::take(&mut self.events);
        match self.next_pos {
            // Syscalls in between sent nothing: they lay inside one frame.
            Some(p) if stream_pos > p => {
                self.frames
                    .feed_into(&[], (stream_pos - p) as usize, &mut events)
            }
            Some(p) if stream_pos < p => {
                // Positions went backwards: not the stream we followed.
                self.frames = searching_decoder();
                self.messages.clear();
            }
            _ => {}
        }
        if self.frames.is_searching() {
            if let Some(start) = frame_start.filter(|&s| (s as usize) < len) {
                self.frames.resync_at(start as usize);
            }
        }
        let mut fed = 0usize;
        for (bytes, span) in pieces {
            self.frames.feed_into(bytes, span, &mut events);
            fed += span;
        }
        if fed < len {
            self.frames.feed_into(&[], len - fed, &mut events);
        }
        self.next_pos = Some(stream_pos + len as u64);
        for mut ev in events.drain(..) {
            if let Http2Event::HeaderBlock { block, .. } = &mut ev {
                // Timed, never decoded: its buffer goes back at once.
                self.frames.recycle(std::mem::take(block));
            }
            self.on_frame_event(ev, out);
        }
        super::keep_scratch(&mut self.events, events);
    }

    fn on_frame_event(&mut self, ev: Http2Event, out: &mut Vec<FrameTiming>) {
        match ev {
            Http2Event::HeaderBlock {
                stream_id,
                end_stream,
                promised_stream_id: None,
                ..
            }
            | Http2Event::HeaderBlockLost {
                stream_id,
                end_stream,
            } => {
                if end_stream {
                    self.messages.remove(&stream_id);
                } else if !self.messages.contains_key(&stream_id) {
                    // Headers open a stream's messages: its first DATA starts one.
                    if self.messages.len() >= MAX_STREAMS {
                        self.messages.clear();
                    }
                    self.messages.insert(stream_id, MessageReassembler::new(0));
                }
                out.push(FrameTiming::HeadersRead {
                    stream_id,
                    end_stream,
                });
            }
            Http2Event::Data {
                stream_id,
                data,
                len,
                end_of_frame,
                end_stream,
            } => {
                // DATA of a stream whose start was not seen: boundaries unknown.
                let r = self
                    .messages
                    .entry(stream_id)
                    .or_insert_with(|| MessageReassembler::lost(0));
                // A cut message (lost in a gap) was not read: it has no time of its own.
                let mut msgs = std::mem::take(&mut self.message_scratch);
                r.feed_into(&data, len, &mut self.frames.stats, &mut msgs);
                self.frames.recycle(data);
                for m in msgs.drain(..) {
                    if m.cut {
                        continue;
                    }
                    out.push(FrameTiming::MessageRead {
                        stream_id,
                        len: m.len,
                    });
                }
                self.message_scratch = msgs;
                if end_of_frame && end_stream {
                    self.messages.remove(&stream_id);
                    out.push(FrameTiming::StreamEnded { stream_id });
                }
            }
            Http2Event::DataLost {
                stream_id,
                end_stream,
            } => {
                if let Some(r) = self.messages.get_mut(&stream_id) {
                    r.set_lost();
                }
                if end_stream {
                    self.messages.remove(&stream_id);
                    out.push(FrameTiming::StreamEnded { stream_id });
                }
            }
            Http2Event::RstStream { stream_id, .. } => {
                self.messages.remove(&stream_id);
            }
            Http2Event::SyncLost => {
                self.messages.clear();
                out.push(FrameTiming::SyncLost);
            }
            _ => {}
        }
    }
}

fn searching_decoder() -> FrameDecoder {
    let cfg = Http2Config {
        max_header_block: HEADER_BLOCK_CAP,
        ..Http2Config::default()
    };
    FrameDecoder::new(cfg, Start::Searching)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(len: u32, ty: u8, flags: u8, stream: u32) -> Vec<u8> {
        let mut h = len.to_be_bytes()[1..].to_vec();
        h.extend([ty, flags]);
        h.extend(stream.to_be_bytes());
        h
    }

    /// A lean record as the kernel sends it: marks of up to MARK_BYTES at offsets.
    fn feed(
        t: &mut FrameTimer,
        pos: u64,
        len: usize,
        start: Option<u32>,
        marks: &[(usize, Vec<u8>)],
    ) -> Vec<FrameTiming> {
        let mut pieces: Vec<(&[u8], usize)> = Vec::new();
        if marks.first().is_none_or(|m| m.0 > 0) {
            let first = marks.first().map(|m| m.0).unwrap_or(len);
            pieces.push((&[], first));
        }
        for (i, (off, bytes)) in marks.iter().enumerate() {
            let end = marks.get(i + 1).map(|m| m.0).unwrap_or(len);
            pieces.push((&bytes[..bytes.len().min(end - off)], end - off));
        }
        let mut out = Vec::new();
        t.feed(pos, len, start, pieces.iter().copied(), &mut out);
        out
    }

    #[test]
    fn request_headers_and_end_across_skipped_syscalls() {
        let mut t = FrameTimer::new();
        // HEADERS (stream 1, 30 bytes) then DATA of 5000 bytes with END_STREAM.
        let mut m0 = header(30, 1, 0x4, 1);
        m0.extend([0u8; 30]);
        let d = header(5000, 0, 0x1, 1);
        let first = feed(&mut t, 0, 1460, Some(0), &[(0, m0), (39, d)]);
        assert_eq!(
            first,
            vec![FrameTiming::HeadersRead {
                stream_id: 1,
                end_stream: false
            }]
        );
        // Two syscalls of 1460 inside the DATA frame sent nothing; the fourth
        // read ends it (39 + 9 + 5000 = 5048 = 4380 + 668).
        let end = feed(&mut t, 4380, 668, Some(668), &[]);
        assert_eq!(end, vec![FrameTiming::StreamEnded { stream_id: 1 }]);
    }

    #[test]
    fn trailers_end_the_stream_and_split_headers_join() {
        let mut t = FrameTimer::new();
        // A response DATA frame (no END_STREAM) then trailers split after 4 bytes.
        let data = header(10, 0, 0, 3);
        let trailers = header(20, 1, 0x5, 3);
        let out = feed(
            &mut t,
            100,
            23,
            Some(0),
            &[(0, data.clone()), (19, trailers[..4].to_vec())],
        );
        assert!(out.is_empty());
        let mut rest = trailers[4..].to_vec();
        rest.extend([0u8; 20]);
        let out = feed(&mut t, 123, 25, None, &[(0, rest)]);
        assert_eq!(
            out,
            vec![FrameTiming::HeadersRead {
                stream_id: 3,
                end_stream: true
            }]
        );
    }

    #[test]
    fn message_lengths_across_frames_and_silent_reads() {
        let mut t = FrameTimer::new();
        // HEADERS, then a 40 000-byte message in three DATA frames (16384, 16384, 7237
        // with the 5-byte prefix): only the marks (header + first bytes) are known.
        let len: usize = 40_000;
        let mut m0 = header(10, 1, 0x4, 7);
        m0.extend([0u8; 10]);
        let mut d0 = header(16_384, 0, 0, 7);
        d0.extend([0u8]);
        d0.extend((len as u32).to_be_bytes());
        d0.extend([1u8; 20]);
        let out = feed(&mut t, 0, 1460, Some(0), &[(0, m0), (19, d0)]);
        assert_eq!(
            out,
            vec![FrameTiming::HeadersRead {
                stream_id: 7,
                end_stream: false
            }]
        );
        // The first DATA frame ends at 19 + 9 + 16384 = 16412; the next header there.
        let d1 = header(16_384, 0, 0, 7);
        assert!(feed(&mut t, 16_060, 1460, Some(352), &[(352, d1)]).is_empty());
        let d2 = header(len as u32 + 5 - 2 * 16_384, 0, 0x1, 7);
        let at = 16_412 + 9 + 16_384;
        let out = feed(&mut t, at as u64, 7_246, Some(0), &[(0, d2)]);
        assert_eq!(
            out,
            vec![
                FrameTiming::MessageRead { stream_id: 7, len },
                FrameTiming::StreamEnded { stream_id: 7 }
            ]
        );
    }

    #[test]
    fn searching_without_a_frame_start_reports_nothing() {
        let mut t = FrameTimer::new();
        assert!(feed(&mut t, 0, 100, None, &[]).is_empty());
        // The kernel's cursor says where the next frame starts: in sync again.
        let d = header(0, 0, 0x1, 5);
        let out = feed(&mut t, 100, 9, Some(0), &[(0, d)]);
        assert_eq!(out, vec![FrameTiming::StreamEnded { stream_id: 5 }]);
    }
}
