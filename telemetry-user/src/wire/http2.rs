//! HTTP/2 frame decoder for one connection and one direction (RFC 9113 framing).
//!
//! Fed with `feed(captured, total_len)` per syscall. DATA payloads are streamed out
//! piece by piece (never buffered whole); other frames are buffered up to a cap.
//! A capture gap inside a DATA payload only shortens what is known; a gap inside a
//! frame header loses sync and the decoder then searches for a plausible frame
//! header (see [`FrameDecoder::plausible`]). A gap inside a header block loses the
//! block: [`Http2Event::HeaderBlockLost`] tells the HPACK decoder its table may have
//! changed in ways we did not see.
//!
//! SETTINGS flow: settings sent in one direction constrain the *other* direction.
//! The pipeline should pass a SETTINGS_MAX_FRAME_SIZE seen here to the opposite
//! direction's [`FrameDecoder::set_max_frame_size`], and SETTINGS_HEADER_TABLE_SIZE
//! to the opposite direction's HPACK decoder.
//!
//! Layout: this file holds the decoder's state and its public calls; `frame` the
//! wire format, `consume` the byte-by-byte state machine, `payloads` what a frame
//! read whole means, `resync` the search for a frame boundary.

use super::{DecodeStats, WireError};

mod consume;
mod frame;
mod payloads;
mod resync;
#[cfg(test)]
mod tests;

pub use frame::*;
use frame::{FrameHeader, FRAME_HEADER_LEN, MAX_FRAME_LEN};

/// SETTINGS_MAX_FRAME_SIZE's initial value (RFC 9113 6.5.2).
const DEFAULT_MAX_FRAME: u32 = 16_384;
/// Payload cap for frames we buffer that are not header blocks. SETTINGS with 170
/// entries fit; GOAWAY debug data beyond it is dropped.
const CONTROL_CAP: usize = 1024;
/// Buffers kept for reuse (see `FrameDecoder::recycle`), and the largest kept: a
/// record's few frames reuse them, and a decoder (one per connection and direction)
/// holds at most 64 KiB of them.
const SPARE_BUFS: usize = 4;
const SPARE_BUF_MAX: usize = 16 * 1024;

#[derive(Debug, Clone)]
pub struct Http2Config {
    /// Largest frame accepted while in sync. Defaults to the protocol maximum so
    /// that a peer allowed larger frames never costs us sync.
    pub max_frame_size: u32,
    /// Largest frame length accepted as a resync candidate (tighter, to avoid
    /// false positives inside payload bytes). 16384 is the default every peer
    /// starts with; raise it with [`FrameDecoder::set_max_frame_size`].
    pub resync_max_frame_size: u32,
    /// Cap on a complete header block (HEADERS + CONTINUATIONs).
    pub max_header_block: usize,
    /// gRPC never uses server push, so every stream id is odd: require it of
    /// resync candidates.
    pub odd_stream_ids: bool,
    /// How many bytes the resync search keeps while waiting for a candidate's
    /// frame to be confirmed.
    pub max_search_buffer: usize,
}

impl Default for Http2Config {
    fn default() -> Self {
        Http2Config {
            max_frame_size: MAX_FRAME_LEN,
            resync_max_frame_size: 16_384,
            max_header_block: 64 * 1024,
            odd_stream_ids: true,
            max_search_buffer: 64 * 1024,
        }
    }
}

/// Where the decoder's stream starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Client-to-server direction seen from the connection start.
    Preface,
    /// Server-to-client direction seen from the connection start.
    FrameBoundary,
    /// Joined mid-stream: search for a frame header.
    Searching,
}

#[derive(Debug)]
enum State {
    Preface {
        matched: usize,
    },
    Searching,
    Header {
        buf: [u8; FRAME_HEADER_LEN],
        have: usize,
    },
    Data {
        hdr: FrameHeader,
        pad_len_pending: bool,
        data_remaining: usize,
        pad_remaining: usize,
    },
    Buffered {
        hdr: FrameHeader,
        remaining: usize,
        buf: Vec<u8>,
        cap: usize,
        /// Payload bytes we could not keep (over the cap or not captured).
        incomplete: bool,
        overflow: bool,
    },
    Skip {
        remaining: usize,
    },
}

#[derive(Debug)]
struct PendingBlock {
    stream_id: u32,
    end_stream: bool,
    promised: Option<u32>,
    buf: Vec<u8>,
    lost: Option<WireError>,
}

#[derive(Debug)]
struct Piece {
    stream_id: u32,
    data: Vec<u8>,
    len: usize,
}

#[derive(Debug)]
pub struct FrameDecoder {
    cfg: Http2Config,
    state: State,
    block: Option<PendingBlock>,
    piece: Option<Piece>,
    /// Buffers handed back (see `recycle`).
    spare: Vec<Vec<u8>>,
    search_buf: Vec<u8>,
    /// Offset in `search_buf` where the current syscall's bytes begin: syscall
    /// starts are likely frame starts.
    search_feed_start: usize,
    search_skipped: u64,
    /// The largest frame the receiving peer allows, known once its SETTINGS were
    /// decoded (16384 unless they raise it). A longer frame is counted (garbage or a
    /// broken peer), not refused. Unknown before: the two directions are decoded
    /// independently, so a frame may be decoded before the SETTINGS that allowed it.
    peer_limit: Option<u32>,
    /// Every frame header since the connection's start was seen (no join mid-way, no
    /// sync loss): then DATA on a stream above any this sender opened with HEADERS
    /// is a protocol violation (garbage), not a stream we missed.
    whole_history: bool,
    max_headers_stream: u32,
    pub stats: DecodeStats,
}

impl FrameDecoder {
    pub fn new(cfg: Http2Config, start: Start) -> Self {
        let state = match start {
            Start::Preface => State::Preface { matched: 0 },
            Start::FrameBoundary => State::Header {
                buf: [0; FRAME_HEADER_LEN],
                have: 0,
            },
            Start::Searching => State::Searching,
        };
        FrameDecoder {
            cfg,
            state,
            block: None,
            piece: None,
            spare: Vec::new(),
            search_buf: Vec::new(),
            search_feed_start: 0,
            search_skipped: 0,
            peer_limit: None,
            whole_history: !matches!(start, Start::Searching),
            max_headers_stream: 0,
            stats: DecodeStats::default(),
        }
    }

    /// The peer advertised SETTINGS_MAX_FRAME_SIZE for frames sent in this
    /// direction: resync candidates may be this large.
    pub fn set_max_frame_size(&mut self, size: u32) {
        self.cfg.resync_max_frame_size = size.clamp(16_384, MAX_FRAME_LEN);
    }

    /// The receiving peer's SETTINGS (non-ACK) were decoded, with or without a
    /// SETTINGS_MAX_FRAME_SIZE: from now on its frame limit is known.
    pub fn peer_settings(&mut self, max_frame_size: Option<u32>) {
        if let Some(size) = max_frame_size {
            self.set_max_frame_size(size);
        }
        let limit = match max_frame_size {
            Some(size) => size.clamp(DEFAULT_MAX_FRAME, MAX_FRAME_LEN),
            None => self.peer_limit.unwrap_or(DEFAULT_MAX_FRAME),
        };
        self.peer_limit = Some(limit);
    }

    /// True while the decoder is searching for a frame boundary.
    pub fn is_searching(&self) -> bool {
        matches!(self.state, State::Searching)
    }

    /// In sync and between whole header bytes: how many stream bytes lie between the
    /// end of the last feed and the next frame header (the kernel's frame cursor after
    /// that syscall). None while searching or in the middle of a header.
    pub fn bytes_to_next_header(&self) -> Option<u32> {
        let n = match &self.state {
            State::Preface { matched } => PREFACE.len().checked_sub(*matched)?,
            State::Searching => return None,
            State::Header { have, .. } => {
                if *have != 0 {
                    return None;
                }
                0
            }
            State::Data {
                hdr,
                pad_len_pending,
                data_remaining,
                pad_remaining,
            } => {
                if *pad_len_pending {
                    hdr.len as usize
                } else {
                    data_remaining + pad_remaining
                }
            }
            State::Buffered { remaining, .. } | State::Skip { remaining } => *remaining,
        };
        u32::try_from(n).ok()
    }

    /// Someone who knows says a frame header starts `offset` bytes into the next
    /// feed (the kernel's frame cursor): a searching decoder takes it and is in sync
    /// again. A decoder in sync keeps its own reckoning.
    pub fn resync_at(&mut self, offset: usize) -> bool {
        if !self.is_searching() {
            return false;
        }
        self.search_buf.clear();
        self.search_feed_start = 0;
        self.search_skipped = 0;
        self.stats.resyncs += 1;
        self.state = State::Skip { remaining: offset };
        self.finish_if_skipped();
        true
    }

    /// Feeds one syscall's bytes: `captured` is the known prefix of `total_len`.
    pub fn feed(&mut self, captured: &[u8], total_len: usize) -> Vec<Http2Event> {
        let mut out = Vec::new();
        self.feed_into(captured, total_len, &mut out);
        out
    }

    pub fn feed_into(&mut self, captured: &[u8], total_len: usize, out: &mut Vec<Http2Event>) {
        if matches!(self.state, State::Searching) {
            self.search_feed_start = self.search_buf.len();
        }
        self.consume_known(captured, out);
        let gap = total_len.saturating_sub(captured.len());
        if gap > 0 {
            self.stats.gap_bytes += gap as u64;
            self.consume_gap(gap, out);
        }
        self.flush_piece(false, false, out);
    }

    fn flush_piece(&mut self, end_of_frame: bool, end_stream: bool, out: &mut Vec<Http2Event>) {
        if let Some(p) = self.piece.take() {
            out.push(Http2Event::Data {
                stream_id: p.stream_id,
                data: p.data,
                len: p.len,
                end_of_frame,
                end_stream,
            });
        }
    }

    fn piece_mut(&mut self, stream_id: u32) -> &mut Piece {
        let data = if self.piece.is_none() {
            self.take_buf(0)
        } else {
            Vec::new() // not used; allocates nothing
        };
        self.piece.get_or_insert(Piece {
            stream_id,
            data,
            len: 0,
        })
    }

    /// An empty buffer with room for `cap` bytes, reused when one was handed back.
    fn take_buf(&mut self, cap: usize) -> Vec<u8> {
        match self.spare.pop() {
            Some(mut v) => {
                v.reserve(cap);
                v
            }
            None => Vec::with_capacity(cap),
        }
    }

    /// Hands back the buffer of a frame, a DATA piece (`Http2Event::Data`) or a header
    /// block (`Http2Event::HeaderBlock`) once used: the next one reuses it instead of
    /// allocating (several per record otherwise).
    pub fn recycle(&mut self, mut buf: Vec<u8>) {
        if self.spare.len() < SPARE_BUFS && buf.capacity() > 0 && buf.capacity() <= SPARE_BUF_MAX {
            buf.clear();
            self.spare.push(buf);
        }
    }

    fn lose_sync(&mut self, err: WireError, out: &mut Vec<Http2Event>) {
        self.stats.record(&err);
        self.whole_history = false;
        self.flush_piece(false, false, out);
        self.lose_block(None, out);
        out.push(Http2Event::SyncLost);
        self.state = State::Searching;
        self.search_buf.clear();
        self.search_feed_start = 0;
        self.search_skipped = 0;
    }

    /// Drops a pending header block, reporting it lost.
    fn lose_block(&mut self, err: Option<WireError>, out: &mut Vec<Http2Event>) {
        if let Some(b) = self.block.take() {
            let e = err.or(b.lost).unwrap_or(WireError::HeaderBlockGap);
            self.stats.record(&e);
            out.push(Http2Event::HeaderBlockLost {
                stream_id: b.stream_id,
                end_stream: b.end_stream,
            });
        }
    }
}
