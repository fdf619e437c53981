//! Wire decoders: HTTP/2 frames, HPACK, gRPC messages, Snakepit protobuf messages and
//! `{packet,4}` port packets.
//!
//! Everything here is pure: no I/O, no clocks, no kernel. Every decoder is fed the
//! bytes of one connection and direction in order, as `feed(captured, total_len)`:
//! the syscall moved `total_len` bytes and only the first `captured.len()` of them
//! were captured, the tail is unknown. Decoders keep frame and message boundaries
//! across such gaps by skipping lengths, tolerate joining a stream mid-way, never
//! panic on malformed input and keep their memory bounded; errors are counted in
//! [`DecodeStats`].

pub mod frame_timing;
pub mod grpc;
pub mod hpack;
pub mod http2;
pub mod port_packet;
pub mod snakepit;

/// Scratch event buffers beyond this capacity are dropped after use (one huge
/// syscall's hundreds of frames are not kept for every record after it).
const MAX_KEPT_EVENTS: usize = 256;

/// Puts a drained per-record scratch buffer back in `slot` for the next record (a
/// record's events otherwise cost an allocation and a regrowth or two), unless one
/// huge record grew it beyond [`MAX_KEPT_EVENTS`].
pub(crate) fn keep_scratch<T>(slot: &mut Vec<T>, used: Vec<T>) {
    debug_assert!(
        used.is_empty(),
        "drain the scratch buffer before keeping it"
    );
    if used.capacity() <= MAX_KEPT_EVENTS {
        *slot = used;
    }
}

pub use frame_timing::{FrameTimer, FrameTiming};
pub use grpc::{
    GrpcConfig, GrpcDirectionDecoder, GrpcEvent, GrpcMessage, GrpcMetadata, MessageReassembler,
};
pub use hpack::{DecodedBlock, HeaderField, HeaderValue, HpackDecoder};
pub use http2::{FrameDecoder, Http2Config, Http2Event, Setting};
pub use port_packet::{PacketDecoder, PortMessage, PortPacket};
pub use snakepit::{identify_method, Flow, Method};

/// Everything that can go wrong while decoding. The decoders count these in
/// [`DecodeStats`] and carry on; none of them is fatal to the process.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("http2: frame length {0} exceeds the maximum frame size")]
    FrameTooLarge(u32),
    #[error("http2: lost frame sync, resynchronising")]
    LostSync,
    #[error("http2: {0}")]
    Protocol(&'static str),
    #[error("http2: header block over {0} bytes, skipped")]
    HeaderBlockTooLarge(usize),
    #[error("http2: header block not fully captured")]
    HeaderBlockGap,
    #[error("hpack: integer overflow")]
    IntegerOverflow,
    #[error("hpack: header block truncated")]
    Truncated,
    #[error("hpack: invalid huffman string")]
    Huffman,
    #[error("hpack: invalid index {0}")]
    BadIndex(u64),
    #[error("hpack: invalid dynamic table size update {0}")]
    BadTableSizeUpdate(u64),
    #[error("hpack: decoded header list over {0} bytes")]
    HeaderListTooLarge(usize),
    #[error("grpc: invalid message prefix")]
    BadMessagePrefix,
    #[error("grpc: message boundary lost in a capture gap")]
    MessageSyncLost,
    #[error("protobuf: {0}")]
    Protobuf(&'static str),
    #[error("port packet: length {0} over the limit")]
    PacketTooLarge(u64),
    #[error("port packet: boundary lost in a capture gap")]
    PacketSyncLost,
    #[error("port packet: body is not valid JSON")]
    PacketJson,
    #[error("http2: unknown frame type {0:#x}")]
    UnknownFrameType(u8),
    #[error("http2: frame length {len} over the {limit} bytes the peer allows")]
    FrameOverPeerLimit { len: u32, limit: u32 },
    #[error("http2: DATA on stream {0}, which no HEADERS opened")]
    DataOnIdleStream(u32),
}

/// The error kinds, for counters and metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ErrorKind {
    FrameTooLarge,
    LostSync,
    Protocol,
    HeaderBlockTooLarge,
    HeaderBlockGap,
    IntegerOverflow,
    Truncated,
    Huffman,
    BadIndex,
    BadTableSizeUpdate,
    HeaderListTooLarge,
    BadMessagePrefix,
    MessageSyncLost,
    Protobuf,
    PacketTooLarge,
    PacketSyncLost,
    PacketJson,
    UnknownFrameType,
    FrameOverPeerLimit,
    DataOnIdleStream,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 20] = [
        ErrorKind::FrameTooLarge,
        ErrorKind::LostSync,
        ErrorKind::Protocol,
        ErrorKind::HeaderBlockTooLarge,
        ErrorKind::HeaderBlockGap,
        ErrorKind::IntegerOverflow,
        ErrorKind::Truncated,
        ErrorKind::Huffman,
        ErrorKind::BadIndex,
        ErrorKind::BadTableSizeUpdate,
        ErrorKind::HeaderListTooLarge,
        ErrorKind::BadMessagePrefix,
        ErrorKind::MessageSyncLost,
        ErrorKind::Protobuf,
        ErrorKind::PacketTooLarge,
        ErrorKind::PacketSyncLost,
        ErrorKind::PacketJson,
        ErrorKind::UnknownFrameType,
        ErrorKind::FrameOverPeerLimit,
        ErrorKind::DataOnIdleStream,
    ];

    /// Stable snake_case label for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::FrameTooLarge => "frame_too_large",
            ErrorKind::LostSync => "lost_sync",
            ErrorKind::Protocol => "protocol",
            ErrorKind::HeaderBlockTooLarge => "header_block_too_large",
            ErrorKind::HeaderBlockGap => "header_block_gap",
            ErrorKind::IntegerOverflow => "integer_overflow",
            ErrorKind::Truncated => "truncated",
            ErrorKind::Huffman => "huffman",
            ErrorKind::BadIndex => "bad_index",
            ErrorKind::BadTableSizeUpdate => "bad_table_size_update",
            ErrorKind::HeaderListTooLarge => "header_list_too_large",
            ErrorKind::BadMessagePrefix => "bad_message_prefix",
            ErrorKind::MessageSyncLost => "message_sync_lost",
            ErrorKind::Protobuf => "protobuf",
            ErrorKind::PacketTooLarge => "packet_too_large",
            ErrorKind::PacketSyncLost => "packet_sync_lost",
            ErrorKind::PacketJson => "packet_json",
            ErrorKind::UnknownFrameType => "unknown_frame_type",
            ErrorKind::FrameOverPeerLimit => "frame_over_peer_limit",
            ErrorKind::DataOnIdleStream => "data_on_idle_stream",
        }
    }
}

impl WireError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            WireError::FrameTooLarge(_) => ErrorKind::FrameTooLarge,
            WireError::LostSync => ErrorKind::LostSync,
            WireError::Protocol(_) => ErrorKind::Protocol,
            WireError::HeaderBlockTooLarge(_) => ErrorKind::HeaderBlockTooLarge,
            WireError::HeaderBlockGap => ErrorKind::HeaderBlockGap,
            WireError::IntegerOverflow => ErrorKind::IntegerOverflow,
            WireError::Truncated => ErrorKind::Truncated,
            WireError::Huffman => ErrorKind::Huffman,
            WireError::BadIndex(_) => ErrorKind::BadIndex,
            WireError::BadTableSizeUpdate(_) => ErrorKind::BadTableSizeUpdate,
            WireError::HeaderListTooLarge(_) => ErrorKind::HeaderListTooLarge,
            WireError::BadMessagePrefix => ErrorKind::BadMessagePrefix,
            WireError::MessageSyncLost => ErrorKind::MessageSyncLost,
            WireError::Protobuf(_) => ErrorKind::Protobuf,
            WireError::PacketTooLarge(_) => ErrorKind::PacketTooLarge,
            WireError::PacketSyncLost => ErrorKind::PacketSyncLost,
            WireError::PacketJson => ErrorKind::PacketJson,
            WireError::UnknownFrameType(_) => ErrorKind::UnknownFrameType,
            WireError::FrameOverPeerLimit { .. } => ErrorKind::FrameOverPeerLimit,
            WireError::DataOnIdleStream(_) => ErrorKind::DataOnIdleStream,
        }
    }
}

/// Decoder counters the pipeline exports. Each decoder owns one; the pipeline
/// sums them with [`DecodeStats::merge`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DecodeStats {
    errors: [u64; ErrorKind::ALL.len()],
    /// Bytes fed that were not captured (known only by length).
    pub gap_bytes: u64,
    /// Bytes skipped while searching for a frame or packet boundary.
    pub skipped_bytes: u64,
    /// Times a decoder found a boundary again after losing it.
    pub resyncs: u64,
    /// Header fields that referred to a dynamic-table entry we never saw.
    pub unknown_header_refs: u64,
}

impl DecodeStats {
    pub fn record(&mut self, err: &WireError) {
        self.errors[err.kind() as usize] += 1;
    }

    pub fn errors(&self, kind: ErrorKind) -> u64 {
        self.errors[kind as usize]
    }

    /// Forgets the errors of one kind (a kind that is expected where it was counted).
    pub fn clear(&mut self, kind: ErrorKind) {
        self.errors[kind as usize] = 0;
    }

    pub fn total_errors(&self) -> u64 {
        self.errors.iter().sum()
    }

    /// Non-zero error counters, by kind.
    pub fn error_counts(&self) -> impl Iterator<Item = (ErrorKind, u64)> + '_ {
        ErrorKind::ALL
            .iter()
            .map(|k| (*k, self.errors[*k as usize]))
            .filter(|(_, n)| *n > 0)
    }

    pub fn merge(&mut self, other: &DecodeStats) {
        for (a, b) in self.errors.iter_mut().zip(other.errors.iter()) {
            *a += b;
        }
        self.gap_bytes += other.gap_bytes;
        self.skipped_bytes += other.skipped_bytes;
        self.resyncs += other.resyncs;
        self.unknown_header_refs += other.unknown_header_refs;
    }

    /// Returns the counters and resets them, for periodic export.
    pub fn take(&mut self) -> DecodeStats {
        std::mem::take(self)
    }
}

#[cfg(test)]
mod fuzz_tests;
