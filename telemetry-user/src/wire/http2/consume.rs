//! The state machine: a syscall's bytes (or a gap of unknown bytes) walked through
//! frame headers, streamed DATA payloads and buffered frames.

use super::*;

impl FrameDecoder {
    pub(super) fn consume_known(&mut self, input: &[u8], out: &mut Vec<Http2Event>) {
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

    pub(super) fn consume_gap(&mut self, mut n: usize, out: &mut Vec<Http2Event>) {
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

    pub(super) fn expect_header(&mut self) {
        self.state = State::Header {
            buf: [0; FRAME_HEADER_LEN],
            have: 0,
        };
    }

    pub(super) fn finish_if_skipped(&mut self) {
        if matches!(self.state, State::Skip { remaining: 0 }) {
            self.expect_header();
        }
    }

    pub(super) fn end_data_section(&mut self, hdr: FrameHeader, out: &mut Vec<Http2Event>) {
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

    pub(super) fn start_frame(&mut self, hdr: FrameHeader, out: &mut Vec<Http2Event>) {
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
}
