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
