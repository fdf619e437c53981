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

use super::{DecodeStats, WireError};

pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

const FRAME_HEADER_LEN: usize = 9;
/// Largest length a 24-bit frame length can carry (the protocol maximum).
const MAX_FRAME_LEN: u32 = (1 << 24) - 1;
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

pub const TYPE_DATA: u8 = 0;
pub const TYPE_HEADERS: u8 = 1;
pub const TYPE_PRIORITY: u8 = 2;
pub const TYPE_RST_STREAM: u8 = 3;
pub const TYPE_SETTINGS: u8 = 4;
pub const TYPE_PUSH_PROMISE: u8 = 5;
pub const TYPE_PING: u8 = 6;
pub const TYPE_GOAWAY: u8 = 7;
pub const TYPE_WINDOW_UPDATE: u8 = 8;
pub const TYPE_CONTINUATION: u8 = 9;

pub const FLAG_END_STREAM: u8 = 0x1;
pub const FLAG_ACK: u8 = 0x1;
pub const FLAG_END_HEADERS: u8 = 0x4;
pub const FLAG_PADDED: u8 = 0x8;
pub const FLAG_PRIORITY: u8 = 0x20;

pub const SETTINGS_HEADER_TABLE_SIZE: u16 = 0x1;
pub const SETTINGS_MAX_FRAME_SIZE: u16 = 0x5;

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    pub id: u16,
    pub value: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Http2Event {
    /// The client connection preface went by.
    Preface,
    /// A complete header block (HEADERS or PUSH_PROMISE plus CONTINUATIONs).
    HeaderBlock {
        stream_id: u32,
        end_stream: bool,
        /// Set for PUSH_PROMISE blocks: the promised stream.
        promised_stream_id: Option<u32>,
        block: Vec<u8>,
    },
    /// A header block that could not be recovered (gap, too large, protocol
    /// error). The HPACK decoder must call `mark_desync`: the block may have
    /// inserted entries.
    HeaderBlockLost {
        stream_id: u32,
        end_stream: bool,
    },
    /// A piece of a DATA frame's payload (padding removed). `data` is the known
    /// prefix of `len` bytes; the rest were not captured. `end_of_frame` marks
    /// the last piece of the frame, `end_stream` is only set on that one.
    Data {
        stream_id: u32,
        data: Vec<u8>,
        len: usize,
        end_of_frame: bool,
        end_stream: bool,
    },
    /// A DATA frame whose data length is unknown (its pad length byte was lost
    /// or invalid): the stream's message boundaries are lost.
    DataLost {
        stream_id: u32,
        end_stream: bool,
    },
    Priority {
        stream_id: u32,
        depends_on: u32,
        exclusive: bool,
        weight: u8,
    },
    RstStream {
        stream_id: u32,
        code: u32,
    },
    Settings {
        ack: bool,
        settings: Vec<Setting>,
        /// SETTINGS_HEADER_TABLE_SIZE, if present.
        header_table_size: Option<u32>,
        /// SETTINGS_MAX_FRAME_SIZE, if present.
        max_frame_size: Option<u32>,
    },
    Ping {
        ack: bool,
        opaque: [u8; 8],
    },
    GoAway {
        last_stream_id: u32,
        code: u32,
        /// Debug data, at most 1 KiB of it.
        debug: Vec<u8>,
    },
    WindowUpdate {
        stream_id: u32,
        increment: u32,
    },
    Unknown {
        frame_type: u8,
        stream_id: u32,
        len: u32,
    },
    /// Frame sync was lost (a gap hit a frame header or a header was invalid).
    SyncLost,
    /// A plausible frame header was found again after `skipped` known bytes.
    Resynced {
        skipped: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FrameHeader {
    len: u32,
    ty: u8,
    flags: u8,
    stream_id: u32,
    reserved: bool,
}

impl FrameHeader {
    fn parse(b: &[u8]) -> Option<FrameHeader> {
        if b.len() < FRAME_HEADER_LEN {
            return None;
        }
        let len = u32::from_be_bytes([0, b[0], b[1], b[2]]);
        let sid = u32::from_be_bytes([b[5], b[6], b[7], b[8]]);
        Some(FrameHeader {
            len,
            ty: b[3],
            flags: b[4],
            stream_id: sid & 0x7fff_ffff,
            reserved: sid & 0x8000_0000 != 0,
        })
    }

    fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }
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

    fn consume_known(&mut self, input: &[u8], out: &mut Vec<Http2Event>) {
        // Bytes handed back by the resync search are processed from `owned`.
        let mut owned: Vec<u8> = Vec::new();
        let mut use_owned = false;
        let mut pos = 0usize;
        loop {
            let cur: &[u8] = if use_owned { &owned } else { input };
            if pos >= cur.len() {
                return;
            }
            let rest = &cur[pos..];
            match &mut self.state {
                State::Preface { matched } => {
                    let want = &PREFACE[*matched..];
                    let n = want.len().min(rest.len());
                    if rest[..n] == want[..n] {
                        *matched += n;
                        pos += n;
                        if *matched == PREFACE.len() {
                            out.push(Http2Event::Preface);
                            self.state = State::Header {
                                buf: [0; FRAME_HEADER_LEN],
                                have: 0,
                            };
                        }
                    } else {
                        self.stats
                            .record(&WireError::Protocol("bad client preface"));
                        self.state = State::Searching;
                        self.search_buf.clear();
                        self.search_feed_start = 0;
                    }
                }
                State::Searching => {
                    self.search_buf.extend_from_slice(rest);
                    pos = cur.len();
                    if let Some(i) = self.search() {
                        let skipped = self.search_skipped + i as u64;
                        self.stats.skipped_bytes += skipped;
                        self.stats.resyncs += 1;
                        out.push(Http2Event::Resynced { skipped });
                        let tail = self.search_buf.split_off(i);
                        self.search_buf.clear();
                        self.search_skipped = 0;
                        self.state = State::Header {
                            buf: [0; FRAME_HEADER_LEN],
                            have: 0,
                        };
                        owned = tail;
                        use_owned = true;
                        pos = 0;
                    } else {
                        self.trim_search_buf();
                    }
                }
                State::Header { buf, have } => {
                    let n = (FRAME_HEADER_LEN - *have).min(rest.len());
                    buf[*have..*have + n].copy_from_slice(&rest[..n]);
                    *have += n;
                    pos += n;
                    if *have == FRAME_HEADER_LEN {
                        let raw = *buf;
                        if let Some(hdr) = FrameHeader::parse(&raw) {
                            if hdr.len > self.cfg.max_frame_size {
                                self.lose_sync(WireError::FrameTooLarge(hdr.len), out);
                                // Search again from the byte after the bad header's start.
                                let mut again = raw[1..].to_vec();
                                again.extend_from_slice(&cur[pos..]);
                                self.search_skipped = 1;
                                owned = again;
                                use_owned = true;
                                pos = 0;
                                continue;
                            }
                            if let Some(limit) = self.peer_limit.filter(|l| hdr.len > *l) {
                                self.stats.record(&WireError::FrameOverPeerLimit {
                                    len: hdr.len,
                                    limit,
                                });
                            }
                            self.start_frame(hdr, out);
                        }
                    }
                }
                State::Data {
                    hdr,
                    pad_len_pending,
                    data_remaining,
                    pad_remaining,
                } => {
                    let hdr = *hdr;
                    if *pad_len_pending {
                        let pad = rest[0] as usize;
                        pos += 1;
                        *pad_len_pending = false;
                        let body = hdr.len as usize - 1;
                        if pad > body {
                            self.stats
                                .record(&WireError::Protocol("DATA padding exceeds frame"));
                            out.push(Http2Event::DataLost {
                                stream_id: hdr.stream_id,
                                end_stream: hdr.has(FLAG_END_STREAM),
                            });
                            self.state = State::Skip { remaining: body };
                            self.finish_if_skipped();
                            continue;
                        }
                        *data_remaining = body - pad;
                        *pad_remaining = pad;
                        if *data_remaining == 0 {
                            self.end_data_section(hdr, out);
                        }
                        continue;
                    }
                    if *data_remaining > 0 {
                        let n = (*data_remaining).min(rest.len());
                        *data_remaining -= n;
                        let done = *data_remaining == 0;
                        pos += n;
                        let piece = self.piece_mut(hdr.stream_id);
                        piece.data.extend_from_slice(&rest[..n]);
                        piece.len += n;
                        if done {
                            self.end_data_section(hdr, out);
                        }
                        continue;
                    }
                    let n = (*pad_remaining).min(rest.len());
                    *pad_remaining -= n;
                    pos += n;
                    if *pad_remaining == 0 {
                        self.expect_header();
                    }
                }
                State::Buffered {
                    remaining,
                    buf,
                    cap,
                    incomplete,
                    overflow,
                    ..
                } => {
                    let n = (*remaining).min(rest.len());
                    let keep = n.min(cap.saturating_sub(buf.len()));
                    if !*incomplete {
                        buf.extend_from_slice(&rest[..keep]);
                        if keep < n {
                            *incomplete = true;
                            *overflow = true;
                        }
                    }
                    *remaining -= n;
                    pos += n;
                    if *remaining == 0 {
                        self.finish_buffered(out);
                    }
                }
                State::Skip { remaining } => {
                    let n = (*remaining).min(rest.len());
                    *remaining -= n;
                    pos += n;
                    self.finish_if_skipped();
                }
            }
        }
    }

    fn consume_gap(&mut self, mut n: usize, out: &mut Vec<Http2Event>) {
        while n > 0 {
            match &mut self.state {
                State::Preface { .. } | State::Header { .. } => {
                    self.lose_sync(WireError::LostSync, out);
                }
                State::Searching => {
                    // Contiguity is broken: candidates must come from fresh bytes.
                    self.search_buf.clear();
                    self.search_skipped = 0;
                    return;
                }
                State::Data {
                    hdr,
                    pad_len_pending,
                    data_remaining,
                    pad_remaining,
                } => {
                    let hdr = *hdr;
                    if *pad_len_pending {
                        out.push(Http2Event::DataLost {
                            stream_id: hdr.stream_id,
                            end_stream: hdr.has(FLAG_END_STREAM),
                        });
                        self.state = State::Skip {
                            remaining: hdr.len as usize,
                        };
                        continue;
                    }
                    if *data_remaining > 0 {
                        let k = (*data_remaining).min(n);
                        *data_remaining -= k;
                        n -= k;
                        let done = *data_remaining == 0;
                        self.piece_mut(hdr.stream_id).len += k;
                        if done {
                            self.end_data_section(hdr, out);
                        }
                        continue;
                    }
                    let k = (*pad_remaining).min(n);
                    *pad_remaining -= k;
                    n -= k;
                    if *pad_remaining == 0 {
                        self.expect_header();
                    }
                }
                State::Buffered {
                    remaining,
                    incomplete,
                    ..
                } => {
                    let k = (*remaining).min(n);
                    *remaining -= k;
                    *incomplete = true;
                    n -= k;
                    if *remaining == 0 {
                        self.finish_buffered(out);
                    }
                }
                State::Skip { remaining } => {
                    let k = (*remaining).min(n);
                    *remaining -= k;
                    n -= k;
                    self.finish_if_skipped();
                }
            }
        }
    }

    fn expect_header(&mut self) {
        self.state = State::Header {
            buf: [0; FRAME_HEADER_LEN],
            have: 0,
        };
    }

    fn finish_if_skipped(&mut self) {
        if matches!(self.state, State::Skip { remaining: 0 }) {
            self.expect_header();
        }
    }

    fn end_data_section(&mut self, hdr: FrameHeader, out: &mut Vec<Http2Event>) {
        let end_stream = hdr.has(FLAG_END_STREAM);
        if self.piece.is_none() {
            // Empty DATA (typically END_STREAM only): still report it.
            self.piece_mut(hdr.stream_id);
        }
        self.flush_piece(true, end_stream, out);
        if let State::Data { pad_remaining, .. } = self.state {
            if pad_remaining > 0 {
                self.state = State::Skip {
                    remaining: pad_remaining,
                };
                return;
            }
        }
        self.expect_header();
    }

    fn start_frame(&mut self, hdr: FrameHeader, out: &mut Vec<Http2Event>) {
        if self.block.is_some()
            && (hdr.ty != TYPE_CONTINUATION
                || self.block.as_ref().map(|b| b.stream_id) != Some(hdr.stream_id))
        {
            self.lose_block(Some(WireError::Protocol("expected CONTINUATION")), out);
        }
        match hdr.ty {
            TYPE_HEADERS => self.max_headers_stream = self.max_headers_stream.max(hdr.stream_id),
            TYPE_DATA
                if self.whole_history
                    && (hdr.stream_id == 0 || hdr.stream_id > self.max_headers_stream) =>
            {
                self.stats
                    .record(&WireError::DataOnIdleStream(hdr.stream_id));
            }
            // Legal to ignore, but no gRPC peer sends one: counted when its header
            // is seen (a random "frame" may never end).
            ty if ty > TYPE_CONTINUATION => {
                self.stats.record(&WireError::UnknownFrameType(ty));
            }
            _ => {}
        }
        let len = hdr.len as usize;
        match hdr.ty {
            TYPE_DATA => {
                let padded = hdr.has(FLAG_PADDED);
                if padded && len == 0 {
                    self.stats
                        .record(&WireError::Protocol("padded DATA without pad length"));
                    out.push(Http2Event::DataLost {
                        stream_id: hdr.stream_id,
                        end_stream: hdr.has(FLAG_END_STREAM),
                    });
                    self.expect_header();
                    return;
                }
                self.state = State::Data {
                    hdr,
                    pad_len_pending: padded,
                    data_remaining: if padded { 0 } else { len },
                    pad_remaining: 0,
                };
                if !padded && len == 0 {
                    self.end_data_section(hdr, out);
                }
            }
            _ => {
                let cap = match hdr.ty {
                    // Room for pad length, priority fields or a promised stream id.
                    TYPE_HEADERS | TYPE_CONTINUATION | TYPE_PUSH_PROMISE => {
                        self.cfg.max_header_block + 6
                    }
                    _ => CONTROL_CAP,
                };
                let buf = self.take_buf(len.min(cap).min(16_384));
                self.state = State::Buffered {
                    hdr,
                    remaining: len,
                    buf,
                    cap,
                    incomplete: false,
                    overflow: false,
                };
                if len == 0 {
                    self.finish_buffered(out);
                }
            }
        }
    }

    fn finish_buffered(&mut self, out: &mut Vec<Http2Event>) {
        let state = std::mem::replace(
            &mut self.state,
            State::Header {
                buf: [0; FRAME_HEADER_LEN],
                have: 0,
            },
        );
        let State::Buffered {
            hdr,
            buf,
            incomplete,
            overflow,
            ..
        } = state
        else {
            return;
        };
        self.buffered_frame(hdr, &buf, incomplete, overflow, out);
        self.recycle(buf);
    }

    /// The event of a frame read whole into `buf` (header blocks: their fragment).
    fn buffered_frame(
        &mut self,
        hdr: FrameHeader,
        buf: &[u8],
        incomplete: bool,
        overflow: bool,
        out: &mut Vec<Http2Event>,
    ) {
        match hdr.ty {
            TYPE_HEADERS | TYPE_PUSH_PROMISE | TYPE_CONTINUATION => {
                self.header_fragment(hdr, buf, incomplete, overflow, out)
            }
            _ if incomplete => {
                // Not captured: nothing to report, the gap is already counted.
            }
            TYPE_PRIORITY => match buf {
                [a, b, c, d, w] => {
                    let dep = u32::from_be_bytes([*a, *b, *c, *d]);
                    out.push(Http2Event::Priority {
                        stream_id: hdr.stream_id,
                        depends_on: dep & 0x7fff_ffff,
                        exclusive: dep & 0x8000_0000 != 0,
                        weight: *w,
                    });
                }
                _ => self.stats.record(&WireError::Protocol("PRIORITY length")),
            },
            TYPE_RST_STREAM => match buf {
                [a, b, c, d] => out.push(Http2Event::RstStream {
                    stream_id: hdr.stream_id,
                    code: u32::from_be_bytes([*a, *b, *c, *d]),
                }),
                _ => self.stats.record(&WireError::Protocol("RST_STREAM length")),
            },
            TYPE_SETTINGS => {
                if !buf.len().is_multiple_of(6) {
                    self.stats.record(&WireError::Protocol("SETTINGS length"));
                    return;
                }
                let settings: Vec<Setting> = buf
                    .chunks_exact(6)
                    .map(|c| Setting {
                        id: u16::from_be_bytes([c[0], c[1]]),
                        value: u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
                    })
                    .collect();
                let find = |id| settings.iter().rev().find(|s| s.id == id).map(|s| s.value);
                let header_table_size = find(SETTINGS_HEADER_TABLE_SIZE);
                let max_frame_size = find(SETTINGS_MAX_FRAME_SIZE);
                out.push(Http2Event::Settings {
                    ack: hdr.has(FLAG_ACK),
                    settings,
                    header_table_size,
                    max_frame_size,
                });
            }
            TYPE_PING => match <[u8; 8]>::try_from(buf) {
                Ok(opaque) => out.push(Http2Event::Ping {
                    ack: hdr.has(FLAG_ACK),
                    opaque,
                }),
                Err(_) => self.stats.record(&WireError::Protocol("PING length")),
            },
            TYPE_GOAWAY => {
                if buf.len() < 8 {
                    self.stats.record(&WireError::Protocol("GOAWAY length"));
                    return;
                }
                out.push(Http2Event::GoAway {
                    last_stream_id: u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]])
                        & 0x7fff_ffff,
                    code: u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]),
                    debug: buf[8..].to_vec(),
                });
            }
            TYPE_WINDOW_UPDATE => match buf {
                [a, b, c, d] => out.push(Http2Event::WindowUpdate {
                    stream_id: hdr.stream_id,
                    increment: u32::from_be_bytes([*a, *b, *c, *d]) & 0x7fff_ffff,
                }),
                _ => self
                    .stats
                    .record(&WireError::Protocol("WINDOW_UPDATE length")),
            },
            _ => out.push(Http2Event::Unknown {
                frame_type: hdr.ty,
                stream_id: hdr.stream_id,
                len: hdr.len,
            }),
        }
    }

    fn header_fragment(
        &mut self,
        hdr: FrameHeader,
        buf: &[u8],
        incomplete: bool,
        overflow: bool,
        out: &mut Vec<Http2Event>,
    ) {
        let len = hdr.len as usize;
        let mut lost: Option<WireError> = if overflow {
            Some(WireError::HeaderBlockTooLarge(self.cfg.max_header_block))
        } else if incomplete {
            Some(WireError::HeaderBlockGap)
        } else {
            None
        };
        let mut fragment: &[u8] = &[];
        let mut promised = None;
        if lost.is_none() {
            // Strip pad length, priority / promised id, and padding.
            let mut off = 0usize;
            let mut pad = 0usize;
            if hdr.ty != TYPE_CONTINUATION && hdr.has(FLAG_PADDED) {
                pad = buf.first().map(|b| *b as usize).unwrap_or(usize::MAX);
                off = 1;
            }
            if hdr.ty == TYPE_HEADERS && hdr.has(FLAG_PRIORITY) {
                off += 5;
            }
            if hdr.ty == TYPE_PUSH_PROMISE {
                if let Some(b) = buf.get(off..off + 4) {
                    promised = Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) & 0x7fff_ffff);
                }
                off += 4;
            }
            match off.checked_add(pad) {
                Some(end) if end <= len && buf.len() == len => fragment = &buf[off..len - pad],
                _ => lost = Some(WireError::Protocol("header frame padding/priority length")),
            }
        }
        let end_headers = hdr.has(FLAG_END_HEADERS);
        if hdr.ty == TYPE_CONTINUATION {
            if self.block.is_none() {
                // A fragment of a block we never saw started; it may still have
                // changed the HPACK table.
                self.block = Some(PendingBlock {
                    stream_id: hdr.stream_id,
                    end_stream: false,
                    promised: None,
                    buf: Vec::new(),
                    lost: Some(WireError::Protocol("CONTINUATION without HEADERS")),
                });
            }
        } else {
            let buf = self.take_buf(fragment.len());
            self.block = Some(PendingBlock {
                stream_id: hdr.stream_id,
                end_stream: hdr.ty == TYPE_HEADERS && hdr.has(FLAG_END_STREAM),
                promised,
                buf,
                lost: None,
            });
        }
        let max = self.cfg.max_header_block;
        if let Some(b) = self.block.as_mut() {
            if b.lost.is_none() {
                if let Some(e) = lost {
                    b.lost = Some(e);
                    b.buf = Vec::new();
                } else if b.buf.len() + fragment.len() > max {
                    b.lost = Some(WireError::HeaderBlockTooLarge(max));
                    b.buf = Vec::new();
                } else {
                    b.buf.extend_from_slice(fragment);
                }
            }
        }
        if end_headers {
            if let Some(b) = self.block.take() {
                if b.lost.is_some() {
                    self.block = Some(b);
                    self.lose_block(None, out);
                } else {
                    out.push(Http2Event::HeaderBlock {
                        stream_id: b.stream_id,
                        end_stream: b.end_stream,
                        promised_stream_id: b.promised,
                        block: b.buf,
                    });
                }
            }
        }
    }

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
    fn search(&mut self) -> Option<usize> {
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
    fn trim_search_buf(&mut self) {
        let max = self.cfg.max_search_buffer.max(FRAME_HEADER_LEN * 2);
        if self.search_buf.len() > max {
            let drop = self.search_buf.len() - max;
            self.search_buf.drain(..drop);
            self.search_skipped += drop as u64;
            self.search_feed_start = self.search_feed_start.saturating_sub(drop);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn frame(ty: u8, flags: u8, sid: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut v = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, ty, flags];
        v.extend_from_slice(&sid.to_be_bytes());
        v.extend_from_slice(payload);
        v
    }

    fn dec(start: Start) -> FrameDecoder {
        FrameDecoder::new(Http2Config::default(), start)
    }

    /// Joins Data pieces per frame into (stream, bytes, len, end_stream).
    fn data_frames(evs: &[Http2Event]) -> Vec<(u32, Vec<u8>, usize, bool)> {
        let mut res = Vec::new();
        let mut cur: Option<(u32, Vec<u8>, usize)> = None;
        for e in evs {
            if let Http2Event::Data {
                stream_id,
                data,
                len,
                end_of_frame,
                end_stream,
            } = e
            {
                let c = cur.get_or_insert((*stream_id, Vec::new(), 0));
                c.1.extend_from_slice(data);
                c.2 += len;
                if *end_of_frame {
                    let c = cur.take().unwrap();
                    res.push((c.0, c.1, c.2, *end_stream));
                }
            }
        }
        res
    }

    fn sample_stream() -> Vec<u8> {
        let mut s = PREFACE.to_vec();
        s.extend(frame(
            TYPE_SETTINGS,
            0,
            0,
            &[0, 1, 0, 0, 0x10, 0, 0, 5, 0, 0, 0x40, 0],
        ));
        s.extend(frame(TYPE_WINDOW_UPDATE, 0, 0, &[0, 0, 0x10, 0]));
        s.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, b"\x83\x86"));
        s.extend(frame(TYPE_DATA, 0, 1, b"hello"));
        // Padded DATA: pad 3.
        s.extend(frame(
            TYPE_DATA,
            FLAG_PADDED | FLAG_END_STREAM,
            1,
            b"\x03abc\0\0\0",
        ));
        s.extend(frame(TYPE_PING, 0, 0, &[1, 2, 3, 4, 5, 6, 7, 8]));
        s.extend(frame(TYPE_RST_STREAM, 0, 1, &[0, 0, 0, 8]));
        s.extend(frame(0x42, 0, 0, b"xyz"));
        s.extend(frame(
            TYPE_GOAWAY,
            0,
            0,
            &[0, 0, 0, 1, 0, 0, 0, 0, b'b', b'y'],
        ));
        s
    }

    fn check_sample(evs: &[Http2Event]) {
        assert_eq!(evs[0], Http2Event::Preface);
        assert!(evs.iter().any(|e| matches!(
            e,
            Http2Event::Settings {
                header_table_size: Some(4096),
                max_frame_size: Some(16384),
                ..
            }
        )));
        assert!(evs.contains(&Http2Event::WindowUpdate {
            stream_id: 0,
            increment: 4096
        }));
        assert!(evs.contains(&Http2Event::HeaderBlock {
            stream_id: 1,
            end_stream: false,
            promised_stream_id: None,
            block: b"\x83\x86".to_vec()
        }));
        let d = data_frames(evs);
        assert_eq!(
            d,
            vec![
                (1, b"hello".to_vec(), 5, false),
                (1, b"abc".to_vec(), 3, true)
            ]
        );
        assert!(evs.contains(&Http2Event::Ping {
            ack: false,
            opaque: [1, 2, 3, 4, 5, 6, 7, 8]
        }));
        assert!(evs.contains(&Http2Event::RstStream {
            stream_id: 1,
            code: 8
        }));
        assert!(evs.contains(&Http2Event::Unknown {
            frame_type: 0x42,
            stream_id: 0,
            len: 3
        }));
        assert!(evs.contains(&Http2Event::GoAway {
            last_stream_id: 1,
            code: 0,
            debug: b"by".to_vec()
        }));
    }

    #[test]
    fn whole_stream_at_once() {
        let mut d = dec(Start::Preface);
        let s = sample_stream();
        let evs = d.feed(&s, s.len());
        check_sample(&evs);
        // The one error is the unknown frame type 0x42 (no gRPC peer sends one).
        assert_eq!(d.stats.total_errors(), 1);
        assert_eq!(d.stats.errors(crate::wire::ErrorKind::UnknownFrameType), 1);
    }

    #[test]
    fn byte_by_byte() {
        let mut d = dec(Start::Preface);
        let s = sample_stream();
        let mut evs = Vec::new();
        for b in &s {
            evs.extend(d.feed(std::slice::from_ref(b), 1));
        }
        check_sample(&evs);
        // The one error is the unknown frame type 0x42 (no gRPC peer sends one).
        assert_eq!(d.stats.total_errors(), 1);
        assert_eq!(d.stats.errors(crate::wire::ErrorKind::UnknownFrameType), 1);
    }

    #[test]
    fn headers_with_padding_priority_and_continuation() {
        let mut d = dec(Start::FrameBoundary);
        let mut s = Vec::new();
        // PADDED + PRIORITY: pad len 2, 5 priority bytes, fragment "ab", padding.
        let mut p = vec![2u8, 0, 0, 0, 3, 15];
        p.extend_from_slice(b"ab\0\0");
        s.extend(frame(
            TYPE_HEADERS,
            FLAG_PADDED | FLAG_PRIORITY | FLAG_END_STREAM,
            5,
            &p,
        ));
        s.extend(frame(TYPE_CONTINUATION, 0, 5, b"cd"));
        s.extend(frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 5, b"ef"));
        let evs = d.feed(&s, s.len());
        assert_eq!(
            evs,
            vec![Http2Event::HeaderBlock {
                stream_id: 5,
                end_stream: true,
                promised_stream_id: None,
                block: b"abcdef".to_vec()
            }]
        );
    }

    #[test]
    fn continuation_interrupted_is_lost() {
        let mut d = dec(Start::FrameBoundary);
        let mut s = frame(TYPE_HEADERS, 0, 1, b"ab");
        s.extend(frame(TYPE_DATA, 0, 1, b"x"));
        let evs = d.feed(&s, s.len());
        assert_eq!(
            evs[0],
            Http2Event::HeaderBlockLost {
                stream_id: 1,
                end_stream: false
            }
        );
        assert_eq!(d.stats.errors(crate::wire::ErrorKind::Protocol), 1);
    }

    #[test]
    fn huge_header_block_is_skipped_and_counted() {
        let cfg = Http2Config {
            max_header_block: 100,
            ..Http2Config::default()
        };
        let mut d = FrameDecoder::new(cfg, Start::FrameBoundary);
        let mut s = frame(TYPE_HEADERS, 0, 1, &[0x82; 80]);
        s.extend(frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 1, &[0x82; 80]));
        s.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 3, &[0x82; 500]));
        s.extend(frame(TYPE_DATA, 0, 3, b"ok"));
        let evs = d.feed(&s, s.len());
        assert_eq!(
            evs.iter()
                .filter(|e| matches!(e, Http2Event::HeaderBlockLost { .. }))
                .count(),
            2
        );
        assert_eq!(data_frames(&evs), vec![(3, b"ok".to_vec(), 2, false)]);
        assert_eq!(
            d.stats.errors(crate::wire::ErrorKind::HeaderBlockTooLarge),
            2
        );
    }

    #[test]
    fn gap_in_data_keeps_sync() {
        let mut d = dec(Start::FrameBoundary);
        let payload = vec![7u8; 10_000];
        let mut s = frame(TYPE_DATA, FLAG_END_STREAM, 1, &payload);
        s.extend(frame(TYPE_RST_STREAM, 0, 1, &[0, 0, 0, 2]));
        // First syscall: frame header + 10000 payload, only 4096 captured.
        let first = 9 + 10_000;
        let mut evs = d.feed(&s[..4096], first);
        evs.extend(d.feed(&s[first..], s.len() - first));
        let df = data_frames(&evs);
        assert_eq!(df.len(), 1);
        assert_eq!(df[0].1.len(), 4096 - 9);
        assert_eq!(df[0].2, 10_000);
        assert!(df[0].3);
        assert!(evs.contains(&Http2Event::RstStream {
            stream_id: 1,
            code: 2
        }));
    }

    #[test]
    fn gap_over_frame_header_then_resync() {
        let mut d = dec(Start::FrameBoundary);
        let mut s = frame(TYPE_DATA, 0, 1, &[1u8; 5000]);
        let cut = s.len();
        s.extend(frame(TYPE_DATA, 0, 1, &[2u8; 100]));
        let second_start = s.len();
        s.extend(frame(
            TYPE_HEADERS,
            FLAG_END_HEADERS | FLAG_END_STREAM,
            1,
            b"\x88",
        ));
        s.extend(frame(TYPE_PING, FLAG_ACK, 0, &[0; 8]));
        // One syscall covering both DATA frames, only 4096 captured: the second
        // frame header is lost.
        let mut evs = d.feed(&s[..4096], second_start);
        assert!(evs.contains(&Http2Event::SyncLost));
        let _ = cut;
        evs.extend(d.feed(&s[second_start..], s.len() - second_start));
        assert!(evs
            .iter()
            .any(|e| matches!(e, Http2Event::Resynced { skipped: 0 })));
        assert!(evs
            .iter()
            .any(|e| matches!(e, Http2Event::HeaderBlock { block, .. } if block == b"\x88")));
        assert!(evs
            .iter()
            .any(|e| matches!(e, Http2Event::Ping { ack: true, .. })));
    }

    #[test]
    fn join_mid_stream_searches() {
        let mut d = dec(Start::Searching);
        // Tail of some DATA payload, then two real frames.
        let mut s = vec![0xde, 0xad, 0x00, 0x00, 0x05, 0x13, 0x37];
        s.extend(frame(TYPE_DATA, 0, 3, b"abcde"));
        s.extend(frame(TYPE_WINDOW_UPDATE, 0, 0, &[0, 0, 0, 5]));
        let evs = d.feed(&s, s.len());
        assert!(evs.contains(&Http2Event::Resynced { skipped: 7 }));
        assert_eq!(data_frames(&evs), vec![(3, b"abcde".to_vec(), 5, false)]);
        assert!(evs.contains(&Http2Event::WindowUpdate {
            stream_id: 0,
            increment: 5
        }));
    }

    #[test]
    fn join_at_connection_start_while_searching() {
        let mut d = dec(Start::Searching);
        let s = sample_stream();
        let evs = d.feed(&s, s.len());
        assert!(evs.contains(&Http2Event::WindowUpdate {
            stream_id: 0,
            increment: 4096
        }));
    }

    #[test]
    fn oversized_frame_loses_sync() {
        let mut d = FrameDecoder::new(
            Http2Config {
                max_frame_size: 16_384,
                ..Http2Config::default()
            },
            Start::FrameBoundary,
        );
        let mut s = vec![0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 1];
        s.extend(frame(TYPE_PING, 0, 0, &[9; 8]));
        let evs = d.feed(&s, s.len());
        assert!(evs.contains(&Http2Event::SyncLost));
        assert!(evs.iter().any(|e| matches!(e, Http2Event::Ping { .. })));
        assert_eq!(d.stats.errors(crate::wire::ErrorKind::FrameTooLarge), 1);
    }
}
