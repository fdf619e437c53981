//! The wire format of HTTP/2 frames (RFC 9113 section 4 and 6): constants, the
//! 9-byte frame header, and the events a decoded frame becomes.

pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

pub(super) const FRAME_HEADER_LEN: usize = 9;
/// Largest length a 24-bit frame length can carry (the protocol maximum).
pub(super) const MAX_FRAME_LEN: u32 = (1 << 24) - 1;

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
pub(super) struct FrameHeader {
    pub(super) len: u32,
    pub(super) ty: u8,
    pub(super) flags: u8,
    pub(super) stream_id: u32,
    pub(super) reserved: bool,
}

impl FrameHeader {
    pub(super) fn parse(b: &[u8]) -> Option<FrameHeader> {
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

    pub(super) fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }
}
