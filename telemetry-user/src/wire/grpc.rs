//! gRPC over HTTP/2: length-prefixed message reassembly per stream, request and
//! response metadata, and [`GrpcDirectionDecoder`], which ties the frame decoder,
//! the HPACK decoder and the per-stream reassemblers of one connection direction.

use crate::fast_hash::FastMap;

use super::hpack::{DecodedBlock, HeaderField, HeaderValue, HpackDecoder, DEFAULT_TABLE_SIZE};
use super::http2::{FrameDecoder, Http2Config, Http2Event, Start};
use super::{DecodeStats, WireError};

const PREFIX_LEN: usize = 5;

#[derive(Debug, Clone)]
pub struct GrpcConfig {
    /// Bytes kept from the start of each message; the full length is always known.
    pub keep_prefix: usize,
    /// Streams tracked at once per direction; the oldest go first beyond it.
    pub max_streams: usize,
    pub http2: Http2Config,
}

impl Default for GrpcConfig {
    fn default() -> Self {
        GrpcConfig {
            keep_prefix: 64 * 1024,
            max_streams: 1024,
            http2: Http2Config::default(),
        }
    }
}

/// One gRPC message: its full length and the known bytes from its start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcMessage {
    pub compressed: bool,
    pub len: usize,
    /// The first bytes of the message, contiguous from its start: shorter than
    /// `len` when over the keep limit or cut by a capture gap.
    pub data: Vec<u8>,
    /// Its end was never decoded (frame sync lost inside it): `data` is its start,
    /// sent for what the start says (a tool's `success`); it is no complete message.
    pub cut: bool,
}

impl GrpcMessage {
    /// A message whose start was never read (its bytes were not captured): `cut`,
    /// with nothing kept.
    pub fn lost_before_start() -> Self {
        GrpcMessage {
            compressed: false,
            len: 0,
            data: Vec::new(),
            cut: true,
        }
    }

    pub fn is_complete(&self) -> bool {
        self.data.len() == self.len
    }
}

#[derive(Debug)]
enum MsgState {
    Prefix {
        buf: [u8; PREFIX_LEN],
        have: usize,
    },
    Body {
        compressed: bool,
        len: usize,
        received: usize,
        data: Vec<u8>,
        /// No gap so far: `data` may still grow.
        contiguous: bool,
    },
    /// Message boundaries unknown (gap in a prefix, joined mid-stream).
    Lost,
}

/// Reassembles length-prefixed messages from one stream direction's DATA.
#[derive(Debug)]
pub struct MessageReassembler {
    keep: usize,
    state: MsgState,
}

impl MessageReassembler {
    /// A reassembler at a message boundary (a stream seen from its start).
    pub fn new(keep_prefix: usize) -> Self {
        MessageReassembler {
            keep: keep_prefix,
            state: MsgState::Prefix {
                buf: [0; PREFIX_LEN],
                have: 0,
            },
        }
    }

    /// A reassembler for a stream whose boundaries are unknown.
    pub fn lost(keep_prefix: usize) -> Self {
        MessageReassembler {
            keep: keep_prefix,
            state: MsgState::Lost,
        }
    }

    pub fn is_lost(&self) -> bool {
        matches!(self.state, MsgState::Lost)
    }

    /// Boundaries lost: the message in progress, when its start was kept, comes back
    /// `cut`.
    pub fn set_lost(&mut self) -> Option<GrpcMessage> {
        match std::mem::replace(&mut self.state, MsgState::Lost) {
            // `data` is always the message's start (nothing is kept after a gap).
            MsgState::Body {
                compressed,
                len,
                data,
                ..
            } if !data.is_empty() => Some(GrpcMessage {
                compressed,
                len,
                data,
                cut: true,
            }),
            _ => None,
        }
    }

    /// True when a message has started and not finished.
    pub fn in_message(&self) -> bool {
        match &self.state {
            MsgState::Prefix { have, .. } => *have > 0,
            MsgState::Body { .. } => true,
            MsgState::Lost => false,
        }
    }

    /// Feeds DATA bytes: `captured` is the known prefix of `total_len` bytes.
    pub fn feed(
        &mut self,
        captured: &[u8],
        total_len: usize,
        stats: &mut DecodeStats,
    ) -> Vec<GrpcMessage> {
        let mut out = Vec::new();
        self.feed_into(captured, total_len, stats, &mut out);
        out
    }

    /// [`Self::feed`], appending the messages that end to `out`.
    pub fn feed_into(
        &mut self,
        captured: &[u8],
        total_len: usize,
        stats: &mut DecodeStats,
        out: &mut Vec<GrpcMessage>,
    ) {
        let mut input = captured;
        while !input.is_empty() {
            match &mut self.state {
                MsgState::Lost => return,
                MsgState::Prefix { buf, have } => {
                    let n = (PREFIX_LEN - *have).min(input.len());
                    buf[*have..*have + n].copy_from_slice(&input[..n]);
                    *have += n;
                    input = &input[n..];
                    if *have == PREFIX_LEN {
                        let b = *buf;
                        if b[0] > 1 {
                            stats.record(&WireError::BadMessagePrefix);
                            self.state = MsgState::Lost;
                            out.push(GrpcMessage::lost_before_start());
                            return;
                        }
                        let len = u32::from_be_bytes([b[1], b[2], b[3], b[4]]) as usize;
                        self.state = MsgState::Body {
                            compressed: b[0] == 1,
                            len,
                            received: 0,
                            data: Vec::with_capacity(len.min(self.keep).min(16_384)),
                            contiguous: true,
                        };
                        self.finish_if_done(out);
                    }
                }
                MsgState::Body {
                    len,
                    received,
                    data,
                    contiguous,
                    ..
                } => {
                    let n = (*len - *received).min(input.len());
                    // After a gap, later bytes are not contiguous with the kept prefix.
                    if *contiguous {
                        let room = self.keep.saturating_sub(data.len());
                        data.extend_from_slice(&input[..n.min(room)]);
                    }
                    *received += n;
                    input = &input[n..];
                    self.finish_if_done(out);
                }
            }
        }
        let mut gap = total_len.saturating_sub(captured.len());
        while gap > 0 {
            match &mut self.state {
                MsgState::Lost => break,
                MsgState::Prefix { .. } => {
                    // A message starts in the gap: the call must know it was not read
                    // (a failed tool would otherwise look like a success).
                    stats.record(&WireError::MessageSyncLost);
                    self.state = MsgState::Lost;
                    out.push(GrpcMessage::lost_before_start());
                    break;
                }
                MsgState::Body {
                    len,
                    received,
                    contiguous,
                    ..
                } => {
                    let k = (*len - *received).min(gap);
                    *received += k;
                    *contiguous = false;
                    gap -= k;
                    self.finish_if_done(out);
                }
            }
        }
    }

    fn finish_if_done(&mut self, out: &mut Vec<GrpcMessage>) {
        if let MsgState::Body { len, received, .. } = &self.state {
            if received == len {
                let st = std::mem::replace(
                    &mut self.state,
                    MsgState::Prefix {
                        buf: [0; PREFIX_LEN],
                        have: 0,
                    },
                );
                if let MsgState::Body {
                    compressed,
                    len,
                    data,
                    ..
                } = st
                {
                    out.push(GrpcMessage {
                        compressed,
                        len,
                        data,
                        cut: false,
                    });
                }
            }
        }
    }
}

/// Request or response metadata of interest, from a header block.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GrpcMetadata {
    /// `:path`, `/<service>/<method>` (see [`GrpcMetadata::service_method`]).
    pub path: Option<String>,
    /// HTTP `:status`.
    pub http_status: Option<u16>,
    pub grpc_status: Option<u32>,
    /// Percent-decoded.
    pub grpc_message: Option<String>,
    pub grpc_timeout: Option<String>,
    pub correlation_id: Option<String>,
    /// Fields whose name or value referred to an unknown table entry.
    pub unknown_fields: usize,
    /// Whether any pseudo-header (`:...`) was present.
    pub has_pseudo: bool,
}

impl GrpcMetadata {
    /// Only the fields the agent reads become strings: this runs for every header
    /// block of every call (`:authority`, `content-type`, `user-agent`... are skipped).
    pub fn from_headers(headers: &[HeaderField]) -> Self {
        let mut m = GrpcMetadata::default();
        for h in headers {
            let (Some(name), HeaderValue::Known(v)) = (h.name.as_str(), &h.value) else {
                m.unknown_fields += 1;
                continue;
            };
            let val = || String::from_utf8_lossy(v).into_owned();
            if name.starts_with(':') {
                m.has_pseudo = true;
            }
            match name {
                ":path" => m.path = Some(val()),
                ":status" => m.http_status = parse_number(v),
                "grpc-status" => m.grpc_status = parse_number(v),
                "grpc-message" => m.grpc_message = Some(percent_decode(v)),
                "grpc-timeout" => m.grpc_timeout = Some(val()),
                "x-snakepit-correlation-id" => m.correlation_id = Some(val()),
                _ => {}
            }
        }
        m
    }

    /// `(service, method)` of a `/<service>/<method>` path.
    pub fn service_method(&self) -> Option<(&str, &str)> {
        self.path
            .as_deref()?
            .trim_start_matches('/')
            .split_once('/')
    }
}

fn parse_number<T: std::str::FromStr>(v: &[u8]) -> Option<T> {
    std::str::from_utf8(v).ok()?.trim().parse().ok()
}

/// gRPC's percent-encoding of grpc-message (RFC 3986 style `%XX`); invalid
/// escapes are kept as they are.
pub fn percent_decode(v: &[u8]) -> String {
    let hex = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    let mut out = Vec::with_capacity(v.len());
    let mut i = 0;
    while i < v.len() {
        if v[i] == b'%' && i + 2 < v.len() {
            if let (Some(h), Some(l)) = (hex(v[i + 1]), hex(v[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(v[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrpcEvent {
    /// A decoded header block. `trailers` is true for a stream's second block (or,
    /// when we joined mid-stream, a block with grpc-status and no pseudo-header).
    Headers {
        stream_id: u32,
        end_stream: bool,
        trailers: bool,
        metadata: Box<GrpcMetadata>,
    },
    /// A header block we could not decode.
    HeadersLost {
        stream_id: u32,
        end_stream: bool,
    },
    Message {
        stream_id: u32,
        message: GrpcMessage,
    },
    /// END_STREAM in this direction.
    EndStream {
        stream_id: u32,
    },
    Reset {
        stream_id: u32,
        code: u32,
    },
    GoAway {
        last_stream_id: u32,
        code: u32,
        debug: String,
    },
    /// SETTINGS from this direction's sender; pass the values to the opposite
    /// direction's decoder with [`GrpcDirectionDecoder::apply_peer_settings`].
    Settings {
        ack: bool,
        header_table_size: Option<u32>,
        max_frame_size: Option<u32>,
    },
    Ping {
        ack: bool,
    },
    /// Frame sync lost: streams in flight lost their message boundaries.
    SyncLost,
}

#[derive(Debug)]
struct StreamState {
    headers_seen: bool,
    msgs: MessageReassembler,
}

/// Decodes one direction of a gRPC connection into [`GrpcEvent`]s.
#[derive(Debug)]
pub struct GrpcDirectionDecoder {
    cfg: GrpcConfig,
    frames: FrameDecoder,
    hpack: HpackDecoder,
    streams: FastMap<u32, StreamState>,
    stats: DecodeStats,
    /// The frame events of one feed, kept for the next (a record's events otherwise
    /// cost an allocation and a regrowth or two per record).
    frame_events: Vec<Http2Event>,
    /// The messages of one DATA piece, kept likewise.
    messages: Vec<GrpcMessage>,
    /// The fields of the header block being decoded: only its metadata is kept.
    block_scratch: DecodedBlock,
}

impl GrpcDirectionDecoder {
    /// `start`: [`Start::Preface`] for the client direction of a connection seen
    /// from its start, [`Start::FrameBoundary`] for the server direction, and
    /// [`Start::Searching`] when joining mid-stream.
    pub fn new(cfg: GrpcConfig, start: Start) -> Self {
        let hpack = match start {
            Start::Searching => HpackDecoder::joined(DEFAULT_TABLE_SIZE),
            _ => HpackDecoder::new(),
        };
        GrpcDirectionDecoder {
            frames: FrameDecoder::new(cfg.http2.clone(), start),
            cfg,
            hpack,
            streams: FastMap::default(),
            stats: DecodeStats::default(),
            frame_events: Vec::new(),
            messages: Vec::new(),
            block_scratch: DecodedBlock::default(),
        }
    }

    /// Settings the opposite direction's sender announced, which bind this one.
    pub fn apply_peer_settings(
        &mut self,
        header_table_size: Option<u32>,
        max_frame_size: Option<u32>,
    ) {
        if let Some(t) = header_table_size {
            self.hpack.set_settings_limit(t as usize);
        }
        self.frames.peer_settings(max_frame_size);
    }

    /// A frame header starts `offset` bytes into the next feed (the kernel's frame
    /// cursor). A decoder that lost sync takes it; streams in flight keep their lost
    /// message boundaries until their next message starts a DATA frame.
    pub fn resync_at(&mut self, offset: usize) -> bool {
        self.frames.resync_at(offset)
    }

    /// See [`FrameDecoder::bytes_to_next_header`].
    pub fn bytes_to_next_header(&self) -> Option<u32> {
        self.frames.bytes_to_next_header()
    }

    /// All counters of this direction (frames, HPACK, messages).
    pub fn stats(&self) -> DecodeStats {
        let mut s = self.stats.clone();
        s.merge(&self.frames.stats);
        s.merge(&self.hpack.stats);
        s
    }

    /// Streams currently tracked.
    pub fn open_streams(&self) -> usize {
        self.streams.len()
    }

    pub fn feed(&mut self, captured: &[u8], total_len: usize) -> Vec<GrpcEvent> {
        let mut out = Vec::new();
        self.feed_into(captured, total_len, &mut out);
        out
    }

    /// [`Self::feed`], appending to `out`.
    pub fn feed_into(&mut self, captured: &[u8], total_len: usize, out: &mut Vec<GrpcEvent>) {
        let mut frames = std::mem::take(&mut self.frame_events);
        self.frames.feed_into(captured, total_len, &mut frames);
        for ev in frames.drain(..) {
            self.on_frame_event(ev, out);
        }
        super::keep_scratch(&mut self.frame_events, frames);
    }

    fn stream(&mut self, id: u32, at_boundary: bool) -> &mut StreamState {
        if !self.streams.contains_key(&id) && self.streams.len() >= self.cfg.max_streams {
            // Stream ids grow: the smallest is the oldest.
            if let Some(oldest) = self.streams.keys().min().copied() {
                self.streams.remove(&oldest);
            }
        }
        let keep = self.cfg.keep_prefix;
        self.streams.entry(id).or_insert_with(|| StreamState {
            headers_seen: false,
            msgs: if at_boundary {
                MessageReassembler::new(keep)
            } else {
                MessageReassembler::lost(keep)
            },
        })
    }

    fn end_stream(&mut self, id: u32, out: &mut Vec<GrpcEvent>) {
        if let Some(s) = self.streams.remove(&id) {
            if s.msgs.in_message() {
                self.stats.record(&WireError::Truncated);
            }
        }
        out.push(GrpcEvent::EndStream { stream_id: id });
    }

    fn on_frame_event(&mut self, ev: Http2Event, out: &mut Vec<GrpcEvent>) {
        match ev {
            Http2Event::HeaderBlock {
                stream_id,
                end_stream,
                promised_stream_id,
                block,
            } => {
                self.hpack
                    .decode_block_into(&block, &mut self.block_scratch);
                self.frames.recycle(block);
                let decoded = &self.block_scratch;
                if promised_stream_id.is_some() {
                    // gRPC has no server push; the block only mattered for HPACK.
                    return;
                }
                let metadata = GrpcMetadata::from_headers(&decoded.headers);
                let st = self.stream(stream_id, true);
                let trailers = if st.headers_seen {
                    true
                } else {
                    !metadata.has_pseudo && metadata.grpc_status.is_some()
                };
                st.headers_seen = true;
                out.push(GrpcEvent::Headers {
                    stream_id,
                    end_stream,
                    trailers,
                    metadata: Box::new(metadata),
                });
                if end_stream {
                    self.end_stream(stream_id, out);
                }
            }
            Http2Event::HeaderBlockLost {
                stream_id,
                end_stream,
            } => {
                self.hpack.mark_desync();
                let st = self.stream(stream_id, true);
                st.headers_seen = true;
                out.push(GrpcEvent::HeadersLost {
                    stream_id,
                    end_stream,
                });
                if end_stream {
                    self.end_stream(stream_id, out);
                }
            }
            Http2Event::Data {
                stream_id,
                data,
                len,
                end_of_frame,
                end_stream,
            } => {
                // DATA on a stream whose headers we missed starts mid-message.
                let mut stats = std::mem::take(&mut self.stats);
                let mut msgs = std::mem::take(&mut self.messages);
                let st = self.stream(stream_id, false);
                st.msgs.feed_into(&data, len, &mut stats, &mut msgs);
                self.stats = stats;
                self.frames.recycle(data);
                for m in msgs.drain(..) {
                    out.push(GrpcEvent::Message {
                        stream_id,
                        message: m,
                    });
                }
                self.messages = msgs;
                if end_of_frame && end_stream {
                    self.end_stream(stream_id, out);
                }
            }
            Http2Event::DataLost {
                stream_id,
                end_stream,
            } => {
                self.stats.record(&WireError::MessageSyncLost);
                // The stream's message is cut: its kept start, or nothing (it began in
                // the lost bytes), so the call knows its message was not read.
                let message = self.stream(stream_id, false).msgs.set_lost();
                let message = message.unwrap_or_else(GrpcMessage::lost_before_start);
                out.push(GrpcEvent::Message { stream_id, message });
                if end_stream {
                    self.end_stream(stream_id, out);
                }
            }
            Http2Event::RstStream { stream_id, code } => {
                self.streams.remove(&stream_id);
                out.push(GrpcEvent::Reset { stream_id, code });
            }
            Http2Event::Settings {
                ack,
                header_table_size,
                max_frame_size,
                ..
            } => out.push(GrpcEvent::Settings {
                ack,
                header_table_size,
                max_frame_size,
            }),
            Http2Event::Ping { ack, .. } => out.push(GrpcEvent::Ping { ack }),
            Http2Event::GoAway {
                last_stream_id,
                code,
                debug,
            } => out.push(GrpcEvent::GoAway {
                last_stream_id,
                code,
                debug: String::from_utf8_lossy(&debug).into_owned(),
            }),
            Http2Event::SyncLost => {
                self.hpack.mark_desync();
                for (&stream_id, s) in self.streams.iter_mut() {
                    if let Some(message) = s.msgs.set_lost() {
                        out.push(GrpcEvent::Message { stream_id, message });
                    }
                }
                out.push(GrpcEvent::SyncLost);
            }
            Http2Event::Preface
            | Http2Event::Priority { .. }
            | Http2Event::WindowUpdate { .. }
            | Http2Event::Unknown { .. }
            | Http2Event::Resynced { .. } => {}
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #[test]
    fn service_and_method_come_from_the_path() {
        let m = |path: &str| GrpcMetadata {
            path: Some(path.into()),
            ..GrpcMetadata::default()
        };
        assert_eq!(
            m("/snakepit.bridge.BridgeService/ExecuteTool").service_method(),
            Some(("snakepit.bridge.BridgeService", "ExecuteTool"))
        );
        assert_eq!(m("/a/b/c").service_method(), Some(("a", "b/c")));
        assert_eq!(m("/health").service_method(), None);
        assert_eq!(GrpcMetadata::default().service_method(), None);
    }

    use super::*;
    use crate::wire::hpack::enc;
    use crate::wire::http2::{self, FLAG_END_HEADERS, FLAG_END_STREAM, TYPE_DATA, TYPE_HEADERS};

    pub(crate) fn frame(ty: u8, flags: u8, sid: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut v = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, ty, flags];
        v.extend_from_slice(&sid.to_be_bytes());
        v.extend_from_slice(payload);
        v
    }

    pub(crate) fn msg(body: &[u8]) -> Vec<u8> {
        let mut v = vec![0];
        v.extend_from_slice(&(body.len() as u32).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    fn feed_all(r: &mut MessageReassembler, chunks: &[(&[u8], usize)]) -> Vec<GrpcMessage> {
        let mut st = DecodeStats::default();
        chunks
            .iter()
            .flat_map(|(c, t)| r.feed(c, *t, &mut st))
            .collect()
    }

    #[test]
    fn messages_across_and_within_frames() {
        let mut all = msg(b"hello");
        all.extend(msg(b""));
        all.extend(msg(&[9u8; 300]));
        let mut r = MessageReassembler::new(1024);
        let mut got = Vec::new();
        let mut st = DecodeStats::default();
        for c in all.chunks(7) {
            got.extend(r.feed(c, c.len(), &mut st));
        }
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].data, b"hello");
        assert_eq!(got[1].len, 0);
        assert_eq!(got[2].data, vec![9u8; 300]);
        assert!(got.iter().all(GrpcMessage::is_complete));
    }

    /// Boundaries lost inside a message: its kept start comes back, marked cut.
    #[test]
    fn a_message_cut_by_lost_sync_returns_its_start() {
        let mut st = DecodeStats::default();
        let mut r = MessageReassembler::new(64);
        let mut prefix = vec![0u8, 0, 0, 0x10, 0];
        prefix.extend_from_slice(&[8, 1, 18, 3]);
        assert!(r.feed(&prefix, prefix.len(), &mut st).is_empty());
        let cut = r.set_lost().expect("the start");
        assert_eq!(
            (cut.len, cut.data.as_slice(), cut.cut),
            (0x1000, &[8, 1, 18, 3][..], true)
        );
        assert!(r.set_lost().is_none(), "nothing after it");
    }

    #[test]
    fn keep_prefix_and_gaps() {
        // 10000-byte message, keep 100: data truncated, length exact.
        let body: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        let mut all = msg(&body);
        all.extend(msg(b"next"));
        let mut r = MessageReassembler::new(100);
        let got = feed_all(&mut r, &[(&all, all.len())]);
        assert_eq!(got[0].len, 10_000);
        assert_eq!(got[0].data, body[..100]);
        assert_eq!(got[1].data, b"next");
        // Same with a capture gap: first 50 bytes known of the first 8000.
        let mut r = MessageReassembler::new(1_000_000);
        let got = feed_all(
            &mut r,
            &[(&all[..50], 8000), (&all[8000..], all.len() - 8000)],
        );
        assert_eq!(got[0].len, 10_000);
        assert_eq!(got[0].data, body[..45]);
        assert_eq!(got[1].data, b"next");
        // Gap over a prefix: lost.
        let mut r = MessageReassembler::new(100);
        let mut st = DecodeStats::default();
        let got = r.feed(&[], 3, &mut st);
        assert!(r.is_lost());
        assert_eq!(st.errors(crate::wire::ErrorKind::MessageSyncLost), 1);
        // ... and the message that began there comes back cut, with nothing kept, so
        // its call knows it was not read.
        assert_eq!(got, vec![GrpcMessage::lost_before_start()]);
        // A gap right after a whole message: the next one is lost the same way.
        let mut r = MessageReassembler::new(100);
        let one = msg(b"ok");
        let got = feed_all(&mut r, &[(&one, one.len()), (&[], 9)]);
        assert_eq!(got.len(), 2);
        assert_eq!((got[0].data.as_slice(), got[0].cut), (&b"ok"[..], false));
        assert_eq!(got[1], GrpcMessage::lost_before_start());
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode(b"a%20b%zz%4"), "a b%zz%4");
        assert_eq!(percent_decode(b"%E2%9C%93"), "\u{2713}");
    }

    /// A unary call, both directions, fed byte by byte and in 1460-byte reads.
    #[test]
    fn unary_call_both_directions() {
        let mut req = http2::PREFACE.to_vec();
        req.extend(frame(4, 0, 0, &[]));
        let mut hb = Vec::new();
        enc::indexed(&mut hb, 3);
        enc::indexed(&mut hb, 6);
        enc::literal(
            &mut hb,
            b":path",
            b"/snakepit.bridge.BridgeService/ExecuteTool",
        );
        enc::insert_idx(&mut hb, 31, b"application/grpc");
        enc::insert(&mut hb, b"x-snakepit-correlation-id", b"abc-1");
        req.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &hb));
        let body = vec![0x12, 3, b'a', b'd', b'd'];
        let m = msg(&body);
        req.extend(frame(TYPE_DATA, 0, 1, &m[..3]));
        req.extend(frame(TYPE_DATA, FLAG_END_STREAM, 1, &m[3..]));

        let mut resp = frame(4, 0, 0, &[0, 1, 0, 0, 0x10, 0]);
        let mut hb = Vec::new();
        enc::indexed(&mut hb, 8);
        enc::insert_idx(&mut hb, 31, b"application/grpc");
        resp.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &hb));
        resp.extend(frame(TYPE_DATA, 0, 1, &msg(&[8, 1])));
        let mut hb = Vec::new();
        enc::literal(&mut hb, b"grpc-status", b"13");
        enc::literal(&mut hb, b"grpc-message", b"boom%20here");
        resp.extend(frame(
            TYPE_HEADERS,
            FLAG_END_HEADERS | FLAG_END_STREAM,
            1,
            &hb,
        ));

        for chunk in [1usize, 1460] {
            let mut d = GrpcDirectionDecoder::new(GrpcConfig::default(), Start::Preface);
            let evs: Vec<_> = req.chunks(chunk).flat_map(|c| d.feed(c, c.len())).collect();
            let GrpcEvent::Headers {
                metadata, trailers, ..
            } = &evs[1]
            else {
                panic!("{evs:?}")
            };
            assert!(!trailers);
            assert_eq!(
                metadata.service_method(),
                Some(("snakepit.bridge.BridgeService", "ExecuteTool"))
            );
            assert_eq!(metadata.correlation_id.as_deref(), Some("abc-1"));
            assert!(evs.contains(&GrpcEvent::Message {
                stream_id: 1,
                message: GrpcMessage {
                    compressed: false,
                    len: 5,
                    data: body.clone(),
                    cut: false,
                }
            }));
            assert_eq!(evs.last(), Some(&GrpcEvent::EndStream { stream_id: 1 }));
            assert_eq!(d.open_streams(), 0);
            assert_eq!(d.stats().total_errors(), 0);

            let mut d = GrpcDirectionDecoder::new(GrpcConfig::default(), Start::FrameBoundary);
            let evs: Vec<_> = resp
                .chunks(chunk)
                .flat_map(|c| d.feed(c, c.len()))
                .collect();
            assert!(evs.iter().any(|e| matches!(e,
                GrpcEvent::Headers { trailers: true, metadata, .. }
                    if metadata.grpc_status == Some(13)
                        && metadata.grpc_message.as_deref() == Some("boom here"))));
            assert!(evs.iter().any(|e| matches!(e,
                GrpcEvent::Headers { trailers: false, metadata, .. } if metadata.http_status == Some(200))));
            assert!(evs.iter().any(
                |e| matches!(e, GrpcEvent::Message { message, .. } if message.data == [8, 1])
            ));
        }
    }

    #[test]
    fn joined_mid_stream_ignores_orphan_data_until_next_call() {
        let mut s = frame(TYPE_DATA, 0, 1, &[1, 2, 3, 4]);
        let mut hb = Vec::new();
        enc::indexed(&mut hb, 3);
        enc::indexed(&mut hb, 70); // unknown old entry
        s.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 3, &hb));
        s.extend(frame(TYPE_DATA, FLAG_END_STREAM, 3, &msg(b"xy")));
        let mut d = GrpcDirectionDecoder::new(GrpcConfig::default(), Start::Searching);
        let evs = d.feed(&s, s.len());
        let msgs: Vec<_> = evs
            .iter()
            .filter_map(|e| match e {
                GrpcEvent::Message { stream_id, message } => {
                    Some((*stream_id, message.data.clone()))
                }
                _ => None,
            })
            .collect();
        assert_eq!(msgs, vec![(3, b"xy".to_vec())]);
        assert!(evs.iter().any(
            |e| matches!(e, GrpcEvent::Headers { metadata, .. } if metadata.unknown_fields == 1)
        ));
    }
}
