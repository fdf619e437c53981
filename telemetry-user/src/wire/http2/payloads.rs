//! What a frame read whole means: control frames and header-block fragments.

use super::*;

impl FrameDecoder {
    pub(super) fn finish_buffered(&mut self, out: &mut Vec<Http2Event>) {
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
    pub(super) fn buffered_frame(
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

    pub(super) fn header_fragment(
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
}
