//! `{packet, 4}` stream decoder for Erlang port pipes: a 4-byte big-endian length,
//! then the body (JSON for old Snakepit: `{"id","command","args"}` requests and
//! `{"id","success","result"|"error"}` responses).
//!
//! Fed per syscall with `feed(captured, total_len)`. A gap inside a body only
//! shortens what is known; a gap over a length prefix loses the boundary. Then the
//! decoder waits for a syscall that starts with a plausible packet (length within
//! the limit and a body starting with `{`, `[` or a MessagePack map byte), since
//! writers emit one packet per write in practice.

use super::snakepit::{json_number_field, json_string_field};
use super::{DecodeStats, WireError};

const HEADER_LEN: usize = 4;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortPacket {
    pub len: usize,
    /// The known bytes from the body's start (shorter than `len` when over the
    /// keep limit or cut by a gap).
    pub data: Vec<u8>,
}

impl PortPacket {
    pub fn is_complete(&self) -> bool {
        self.data.len() == self.len
    }

    /// Interprets the body as a Snakepit JSON request or response.
    pub fn message(&self) -> PortMessage {
        PortMessage::parse(&self.data, self.is_complete())
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum PortMessage {
    Request {
        id: Option<i64>,
        command: Option<String>,
        /// Only when the body was complete.
        args: Option<serde_json::Value>,
    },
    Response {
        id: Option<i64>,
        success: Option<bool>,
        result: Option<serde_json::Value>,
        /// The error value; a string, or an object's `message`/`type` text.
        error: Option<String>,
    },
    /// Complete JSON of another shape.
    Other(serde_json::Value),
    /// Not JSON (MessagePack, binary) or cut before anything useful.
    Opaque,
}

impl PortMessage {
    pub fn parse(body: &[u8], complete: bool) -> PortMessage {
        if complete {
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
                return Self::from_value(v);
            }
        }
        // Cut (or invalid) JSON: pick out the keys present in the prefix.
        let Ok(text) =
            std::str::from_utf8(body).or_else(|e| std::str::from_utf8(&body[..e.valid_up_to()]))
        else {
            return PortMessage::Opaque;
        };
        if !text.trim_start().starts_with('{') {
            return PortMessage::Opaque;
        }
        let id = json_number_field(text, "id");
        if let Some(command) = json_string_field(text, "command") {
            return PortMessage::Request {
                id,
                command: Some(command),
                args: None,
            };
        }
        if text.contains("\"success\"") {
            let success = if text.contains("\"success\":true") || text.contains("\"success\": true")
            {
                Some(true)
            } else if text.contains("\"success\":false") || text.contains("\"success\": false") {
                Some(false)
            } else {
                None
            };
            return PortMessage::Response {
                id,
                success,
                result: None,
                error: json_string_field(text, "error")
                    .or_else(|| json_string_field(text, "message")),
            };
        }
        PortMessage::Opaque
    }

    fn from_value(v: serde_json::Value) -> PortMessage {
        let serde_json::Value::Object(o) = &v else {
            return PortMessage::Other(v);
        };
        let id = o.get("id").and_then(serde_json::Value::as_i64);
        if let Some(c) = o.get("command").and_then(|c| c.as_str()) {
            return PortMessage::Request {
                id,
                command: Some(c.to_string()),
                args: o.get("args").cloned(),
            };
        }
        if o.contains_key("success") {
            let error = o.get("error").map(|e| match e {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Object(eo) => eo
                    .get("message")
                    .or_else(|| eo.get("type"))
                    .and_then(|m| m.as_str())
                    .map(str::to_string)
                    .unwrap_or_else(|| e.to_string()),
                other => other.to_string(),
            });
            return PortMessage::Response {
                id,
                success: o.get("success").and_then(serde_json::Value::as_bool),
                result: o.get("result").cloned(),
                error,
            };
        }
        PortMessage::Other(v)
    }
}

#[derive(Debug)]
enum State {
    Header {
        buf: [u8; HEADER_LEN],
        have: usize,
    },
    Body {
        len: usize,
        received: usize,
        data: Vec<u8>,
        contiguous: bool,
    },
    Lost,
}

#[derive(Debug)]
pub struct PacketDecoder {
    /// Bytes kept from each body.
    pub keep: usize,
    /// Larger lengths are taken as loss of sync.
    pub max_len: usize,
    state: State,
    pub stats: DecodeStats,
}

impl PacketDecoder {
    /// `at_boundary`: the pipe is seen from its first byte; otherwise start lost.
    pub fn new(at_boundary: bool) -> Self {
        PacketDecoder {
            keep: 64 * 1024,
            max_len: 256 * 1024 * 1024,
            state: if at_boundary {
                State::Header {
                    buf: [0; HEADER_LEN],
                    have: 0,
                }
            } else {
                State::Lost
            },
            stats: DecodeStats::default(),
        }
    }

    pub fn is_lost(&self) -> bool {
        matches!(self.state, State::Lost)
    }

    fn plausible_start(&self, b: &[u8]) -> bool {
        if b.len() < HEADER_LEN + 1 {
            return false;
        }
        let len = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
        // JSON object/array, or a MessagePack map (fixmap, map16, map32).
        len > 0 && len <= self.max_len && matches!(b[4], b'{' | b'[' | 0x80..=0x8f | 0xde | 0xdf)
    }

    pub fn feed(&mut self, captured: &[u8], total_len: usize) -> Vec<PortPacket> {
        let mut out = Vec::new();
        if self.is_lost() && self.plausible_start(captured) {
            self.stats.resyncs += 1;
            self.state = State::Header {
                buf: [0; HEADER_LEN],
                have: 0,
            };
        }
        let mut input = captured;
        while !input.is_empty() {
            match &mut self.state {
                State::Lost => {
                    self.stats.skipped_bytes += input.len() as u64;
                    break;
                }
                State::Header { buf, have } => {
                    let n = (HEADER_LEN - *have).min(input.len());
                    buf[*have..*have + n].copy_from_slice(&input[..n]);
                    *have += n;
                    input = &input[n..];
                    if *have == HEADER_LEN {
                        let len = u32::from_be_bytes(*buf) as usize;
                        if len > self.max_len {
                            let e = WireError::PacketTooLarge(len as u64);
                            self.stats.record(&e);
                            self.state = State::Lost;
                            continue;
                        }
                        self.state = State::Body {
                            len,
                            received: 0,
                            data: Vec::with_capacity(len.min(self.keep).min(16_384)),
                            contiguous: true,
                        };
                        self.finish_if_done(&mut out);
                    }
                }
                State::Body {
                    len,
                    received,
                    data,
                    contiguous,
                } => {
                    let n = (*len - *received).min(input.len());
                    if *contiguous {
                        let room = self.keep.saturating_sub(data.len());
                        data.extend_from_slice(&input[..n.min(room)]);
                    }
                    *received += n;
                    input = &input[n..];
                    self.finish_if_done(&mut out);
                }
            }
        }
        let mut gap = total_len.saturating_sub(captured.len());
        self.stats.gap_bytes += gap as u64;
        while gap > 0 {
            match &mut self.state {
                State::Lost => break,
                State::Header { .. } => {
                    self.stats.record(&WireError::PacketSyncLost);
                    self.state = State::Lost;
                    break;
                }
                State::Body {
                    len,
                    received,
                    contiguous,
                    ..
                } => {
                    let k = (*len - *received).min(gap);
                    *received += k;
                    *contiguous = false;
                    gap -= k;
                    self.finish_if_done(&mut out);
                }
            }
        }
        out
    }

    fn finish_if_done(&mut self, out: &mut Vec<PortPacket>) {
        if matches!(&self.state, State::Body { len, received, .. } if len == received) {
            let st = std::mem::replace(
                &mut self.state,
                State::Header {
                    buf: [0; HEADER_LEN],
                    have: 0,
                },
            );
            if let State::Body { len, data, .. } = st {
                out.push(PortPacket { len, data });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkt(body: &str) -> Vec<u8> {
        let mut v = (body.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(body.as_bytes());
        v
    }

    #[test]
    fn requests_and_responses_split_anyhow() {
        let mut s = pkt(r#"{"id":1,"command":"ping","args":{}}"#);
        s.extend(pkt(r#"{"id":1,"success":true,"result":{"status":"ok"}}"#));
        s.extend(pkt(r#"{"id":2,"success":false,"error":"boom"}"#));
        for chunk in [1, 3, 1000] {
            let mut d = PacketDecoder::new(true);
            let p: Vec<_> = s.chunks(chunk).flat_map(|c| d.feed(c, c.len())).collect();
            assert_eq!(p.len(), 3);
            assert_eq!(
                p[0].message(),
                PortMessage::Request {
                    id: Some(1),
                    command: Some("ping".into()),
                    args: Some(serde_json::json!({}))
                }
            );
            assert!(matches!(
                p[1].message(),
                PortMessage::Response {
                    id: Some(1),
                    success: Some(true),
                    ..
                }
            ));
            assert!(
                matches!(&p[2].message(), PortMessage::Response { error: Some(e), success: Some(false), .. } if e == "boom")
            );
        }
    }

    #[test]
    fn partial_capture_and_gap() {
        let big = format!(
            r#"{{"id":7,"command":"compute","args":{{"x":"{}"}}}}"#,
            "a".repeat(10_000)
        );
        let mut s = pkt(&big);
        let first = s.len();
        s.extend(pkt(r#"{"id":7,"success":true}"#));
        let mut d = PacketDecoder::new(true);
        let mut p = d.feed(&s[..100], first);
        p.extend(d.feed(&s[first..], s.len() - first));
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].len, big.len());
        assert_eq!(p[0].data.len(), 96);
        assert_eq!(
            p[0].message(),
            PortMessage::Request {
                id: Some(7),
                command: Some("compute".into()),
                args: None
            }
        );
        // Gap over a header: lost, then resync on the next plausible write.
        let mut d = PacketDecoder::new(true);
        let s2 = pkt(r#"{"id":8,"command":"x"}"#);
        assert!(d.feed(&[], 2).is_empty());
        assert!(d.is_lost());
        let p = d.feed(&s2, s2.len());
        assert_eq!(p.len(), 1);
        assert_eq!(d.stats.errors(crate::wire::ErrorKind::PacketSyncLost), 1);
        // Too large: lost.
        let mut d = PacketDecoder::new(true);
        d.feed(&[0xff, 0xff, 0xff, 0xff, b'{'], 5);
        assert!(d.is_lost());
    }
}
