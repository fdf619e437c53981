//! Fuzz-ish robustness: random and mutated inputs through every decoder, checking
//! no panic and bounded state. Deterministic (xorshift) so failures reproduce.

use super::grpc::tests::{frame, msg};
use super::grpc::{GrpcConfig, GrpcDirectionDecoder, MessageReassembler};
use super::hpack::{self, enc, HpackDecoder};
use super::http2::{self, FrameDecoder, Http2Config, Start};
use super::port_packet::PacketDecoder;
use super::snakepit::{self, Flow};
use super::DecodeStats;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// A plausible gRPC client stream to mutate.
fn base_stream() -> Vec<u8> {
    let mut s = http2::PREFACE.to_vec();
    s.extend(frame(4, 0, 0, &[0, 1, 0, 0, 0x10, 0]));
    for sid in [1u32, 3, 5] {
        let mut hb = Vec::new();
        enc::indexed(&mut hb, 3);
        enc::literal(
            &mut hb,
            b":path",
            b"/snakepit.bridge.BridgeService/ExecuteTool",
        );
        enc::insert(&mut hb, b"x-snakepit-correlation-id", b"c-1");
        enc::indexed(&mut hb, 62);
        enc::size_update(&mut hb, 100);
        s.extend(frame(1, 0, sid, &hb[..4]));
        s.extend(frame(9, 4, sid, &hb[4..]));
        s.extend(frame(0, 8, sid, &[2, 0, 0, 0, 0, 3, 9, 9, 9, 0, 0]));
        s.extend(frame(0, 1, sid, &msg(&[0x12, 1, b'x'])));
    }
    s
}

/// Splits `data` into syscalls with random sizes and random capture cuts.
fn feed_randomly(rng: &mut Rng, data: &[u8], mut f: impl FnMut(&[u8], usize)) {
    let mut pos = 0;
    while pos < data.len() {
        let n = 1 + rng.below(2000).min(data.len() - pos - 1);
        let chunk = &data[pos..pos + n];
        let cap = if rng.below(4) == 0 {
            rng.below(n + 1)
        } else {
            n
        };
        f(&chunk[..cap], n);
        pos += n;
    }
}

#[test]
fn random_buffers_never_panic() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let base = base_stream();
    for i in 0..10_000 {
        let buf = if i % 2 == 0 {
            let n = rng.below(600);
            rng.bytes(n)
        } else {
            let mut b = base.clone();
            for _ in 0..1 + rng.below(8) {
                let at = rng.below(b.len());
                b[at] = rng.next() as u8;
            }
            b
        };

        let start = [Start::Preface, Start::FrameBoundary, Start::Searching][i % 3];
        let mut fd = FrameDecoder::new(Http2Config::default(), start);
        let mut gd = GrpcDirectionDecoder::new(
            GrpcConfig {
                max_streams: 8,
                ..GrpcConfig::default()
            },
            start,
        );
        let mut pd = PacketDecoder::new(i % 2 == 0);
        let mut mr = MessageReassembler::new(1024);
        let mut st = DecodeStats::default();
        feed_randomly(&mut rng, &buf, |c, t| {
            let _ = fd.feed(c, t);
            let _ = gd.feed(c, t);
            let _ = pd.feed(c, t);
            let _ = mr.feed(c, t, &mut st);
        });
        assert!(gd.open_streams() <= 8);

        let mut h = HpackDecoder::new();
        let _ = h.decode_block(&buf);
        let mut hj = HpackDecoder::joined(4096);
        let _ = hj.decode_block(&buf);
        let _ = hj.decode_block(&buf);
        // Table memory stays within its bounds (entries are at least 32 bytes).
        assert!(hj.known_entries() <= 256 * 1024 / 32);
        let _ = hpack::huffman_decode(&buf);

        let _ = snakepit::decode_execute_tool_request(&buf);
        let _ = snakepit::decode_execute_tool_response(&buf);
        let _ = snakepit::decode_tool_chunk(&buf);
        let _ = snakepit::decode_prefix::<snakepit::TelemetryEvent>(&buf);
        let _ = snakepit::identify_method(Flow::Request, &buf);
        let _ = snakepit::identify_method(Flow::Response, &buf);
        if let Ok(s) = std::str::from_utf8(&buf) {
            let _ = snakepit::parse_tool_error(s);
        }
        let _ = super::port_packet::PortMessage::parse(&buf, i % 3 == 0);
    }
}

/// Many frames with large declared lengths must not make the decoders allocate
/// by the declared sizes.
#[test]
fn declared_lengths_do_not_drive_allocation() {
    let mut d = FrameDecoder::new(Http2Config::default(), Start::FrameBoundary);
    // A 16 MiB HEADERS frame, fed as gaps: the block is dropped, nothing buffered.
    let hdr = [0xff, 0xff, 0xff, 1, 4, 0, 0, 0, 1];
    let _ = d.feed(&hdr, hdr.len() + (1 << 24) - 1);
    let mut r = MessageReassembler::new(64);
    let mut st = DecodeStats::default();
    let _ = r.feed(&[0, 0xff, 0xff, 0xff, 0xff, 1, 2, 3], 8, &mut st);
    assert!(r.in_message());
    let mut p = PacketDecoder::new(true);
    let _ = p.feed(&[0x0f, 0xff, 0xff, 0xff, b'{'], 5);
}

/// Issue 12: 2 MB of random bytes after a real preface, and a frame declaring 16 MB,
/// were decoded without a single error counted (only gap bytes). Both are now
/// decode errors by kind.
#[test]
fn garbage_and_oversized_frames_are_counted_as_decode_errors() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut d = FrameDecoder::new(Http2Config::default(), Start::Preface);
    d.peer_settings(None);
    let mut stream = http2::PREFACE.to_vec();
    stream.extend(frame(4, 0, 0, &[]));
    stream.extend(rng.bytes(2 << 20));
    feed_randomly(&mut rng, &stream, |c, n| {
        d.feed(c, n);
    });
    assert!(
        d.stats.total_errors() > 0,
        "2 MB of garbage counted no error: {:?}",
        d.stats
    );

    let mut d = FrameDecoder::new(Http2Config::default(), Start::FrameBoundary);
    d.peer_settings(None); // the peer's SETTINGS left the limit at 16384
    let mut big = frame(0, 0, 1, &[]);
    big[..3].copy_from_slice(&[0xff, 0xff, 0xff]); // declares 16 MiB - 1
    d.feed(&big, big.len());
    d.feed(&[], 1 << 20);
    assert_eq!(d.stats.errors(super::ErrorKind::FrameOverPeerLimit), 1);

    // A peer that allowed large frames makes the same frame legal; before its
    // SETTINGS are decoded nothing is assumed.
    for settings in [Some(Some((1 << 24) - 1)), None] {
        let mut d = FrameDecoder::new(Http2Config::default(), Start::FrameBoundary);
        if let Some(s) = settings {
            d.peer_settings(s);
        }
        d.feed(&big, big.len());
        assert_eq!(d.stats.errors(super::ErrorKind::FrameOverPeerLimit), 0);
    }
    // Joined mid-stream, the limit is unknown: nothing is assumed.
    let mut d = FrameDecoder::new(Http2Config::default(), Start::Searching);
    let mut u = frame(0x42, 0, 1, &[0; 8]);
    u.extend(frame(0x42, 0, 1, &[0; 8]));
    d.resync_at(0);
    d.feed(&u, u.len());
    assert_eq!(d.stats.errors(super::ErrorKind::UnknownFrameType), 2);

    // Seen from the start, DATA on a stream no HEADERS opened is garbage; on an
    // opened one, or after joining mid-stream, it is not.
    let data = |sid| frame(0, 0, sid, &[0, 0, 0, 0, 1, 7]);
    let mut d = FrameDecoder::new(Http2Config::default(), Start::FrameBoundary);
    let mut s = frame(1, 4, 3, &[0x88]);
    s.extend(data(3));
    s.extend(data(1));
    s.extend(data(5));
    d.feed(&s, s.len());
    assert_eq!(d.stats.errors(super::ErrorKind::DataOnIdleStream), 1);
    let mut d = FrameDecoder::new(Http2Config::default(), Start::Searching);
    d.resync_at(0);
    let s = data(5);
    d.feed(&s, s.len());
    assert_eq!(d.stats.total_errors(), 0);
    // Joined, but the first bytes are the connection preface: the start is seen.
    let mut d = FrameDecoder::new(Http2Config::default(), Start::Searching);
    let mut s = http2::PREFACE.to_vec();
    s.extend(frame(4, 0, 0, &[]));
    s.extend(data(5));
    d.feed(&s, s.len());
    assert_eq!(d.stats.errors(super::ErrorKind::DataOnIdleStream), 1);
}
