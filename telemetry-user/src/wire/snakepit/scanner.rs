//! A tolerant protobuf field scanner for messages the copy limit may have cut, and
//! the partial decoding built on it (complete fields through prost, the cut one by hand).

use super::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldValue<'a> {
    Varint(u64),
    Fixed64(u64),
    Fixed32(u32),
    /// Length-delimited. `data.len() < declared` when the message was cut.
    Len {
        data: &'a [u8],
        declared: usize,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScannedField<'a> {
    pub number: u32,
    pub value: FieldValue<'a>,
    /// Byte range of the whole field (key included) in the scanned buffer.
    pub start: usize,
    pub end: usize,
}

impl<'a> ScannedField<'a> {
    pub fn is_truncated(&self) -> bool {
        matches!(self.value, FieldValue::Len { data, declared } if data.len() < declared)
    }

    pub fn bytes(&self) -> Option<&'a [u8]> {
        match self.value {
            FieldValue::Len { data, .. } => Some(data),
            _ => None,
        }
    }

    pub fn varint(&self) -> Option<u64> {
        match self.value {
            FieldValue::Varint(v) => Some(v),
            _ => None,
        }
    }
}

/// Walks the fields of a (possibly cut) protobuf message. Stops at the end, at a
/// cut (setting `truncated`; a cut length-delimited field is still yielded with
/// the bytes present) or at malformed bytes (setting `malformed`).
#[derive(Debug, Clone)]
pub struct FieldScanner<'a> {
    buf: &'a [u8],
    pos: usize,
    pub truncated: bool,
    pub malformed: bool,
    /// End of the last complete field.
    pub complete_end: usize,
}

impl<'a> FieldScanner<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        FieldScanner {
            buf,
            pos: 0,
            truncated: false,
            malformed: false,
            complete_end: 0,
        }
    }

    /// Scans everything, returning the fields (on the stack up to 8: the agent's
    /// messages have fewer top-level fields, and several scans run per message).
    pub fn collect_all(buf: &'a [u8]) -> (SmallVec<[ScannedField<'a>; 8]>, FieldScanner<'a>) {
        let mut s = FieldScanner::new(buf);
        let fields: SmallVec<[ScannedField<'a>; 8]> = s.by_ref().collect();
        (fields, s)
    }

    /// The next varint; a cut one marks the scan `truncated`, a bad one `malformed`.
    fn next_varint(&mut self) -> Option<u64> {
        match self.raw_varint() {
            None => {
                self.truncated = true;
                None
            }
            Some(Err(())) => {
                self.malformed = true;
                None
            }
            Some(Ok(v)) => Some(v),
        }
    }

    fn raw_varint(&mut self) -> Option<Result<u64, ()>> {
        let mut v: u64 = 0;
        for i in 0..10 {
            let b = self.buf.get(self.pos)?;
            self.pos += 1;
            if i == 9 && *b > 1 {
                return Some(Err(()));
            }
            v |= ((b & 0x7f) as u64) << (7 * i);
            if b & 0x80 == 0 {
                return Some(Ok(v));
            }
        }
        Some(Err(()))
    }
}

impl<'a> Iterator for FieldScanner<'a> {
    type Item = ScannedField<'a>;

    fn next(&mut self) -> Option<ScannedField<'a>> {
        if self.truncated || self.malformed || self.pos >= self.buf.len() {
            return None;
        }
        let start = self.pos;
        let key = self.next_varint()?;
        let number = (key >> 3) as u32;
        if number == 0 || key >> 3 > 0x1fff_ffff {
            self.malformed = true;
            return None;
        }
        let value = match key & 7 {
            0 => FieldValue::Varint(self.next_varint()?),
            1 => match self.buf.get(self.pos..self.pos + 8) {
                Some(b) => {
                    self.pos += 8;
                    let mut a = [0u8; 8];
                    a.copy_from_slice(b);
                    FieldValue::Fixed64(u64::from_le_bytes(a))
                }
                None => {
                    self.truncated = true;
                    return None;
                }
            },
            5 => match self.buf.get(self.pos..self.pos + 4) {
                Some(b) => {
                    self.pos += 4;
                    FieldValue::Fixed32(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                }
                None => {
                    self.truncated = true;
                    return None;
                }
            },
            2 => {
                let len = self.next_varint()?;
                let declared = usize::try_from(len).unwrap_or(usize::MAX);
                let avail = self.buf.len() - self.pos;
                let take = declared.min(avail);
                let data = &self.buf[self.pos..self.pos + take];
                self.pos += take;
                if take < declared {
                    self.truncated = true;
                }
                FieldValue::Len { data, declared }
            }
            _ => {
                // Groups (3, 4) are not used by these protos; 6 and 7 are invalid.
                self.malformed = true;
                return None;
            }
        };
        let f = ScannedField {
            number,
            value,
            start,
            end: self.pos,
        };
        if !f.is_truncated() {
            self.complete_end = self.pos;
        }
        Some(f)
    }
}

/// A message decoded from a possibly cut buffer.
#[derive(Debug, Clone, PartialEq)]
pub struct Partial<T> {
    pub msg: T,
    /// The buffer was cut: fields after the cut are missing, the cut one may be
    /// partly filled in.
    pub truncated: bool,
    /// Number of the field that was cut, if it was a length-delimited one.
    pub cut_field: Option<u32>,
}

/// Decodes the complete fields of `buf` with prost; `fill_cut` then gets the number
/// and present bytes of a cut length-delimited field, to fill in what matters.
fn decode_partial<T: prost::Message + Default>(
    buf: &[u8],
    fill_cut: impl FnOnce(&mut T, u32, &[u8]),
) -> Result<Partial<T>, WireError> {
    let (fields, scan) = FieldScanner::collect_all(buf);
    if scan.malformed {
        return Err(WireError::Protobuf("malformed field"));
    }
    let cut = fields.last().filter(|f| f.is_truncated()).copied();
    let mut msg =
        T::decode(&buf[..scan.complete_end]).map_err(|_| WireError::Protobuf("invalid message"))?;
    if let Some(f) = cut {
        fill_cut(&mut msg, f.number, f.bytes().unwrap_or_default());
    }
    Ok(Partial {
        msg,
        truncated: scan.truncated,
        cut_field: cut.map(|f| f.number),
    })
}

/// Generic prefix decoding: complete fields only.
pub fn decode_prefix<T: prost::Message + Default>(buf: &[u8]) -> Result<Partial<T>, WireError> {
    decode_partial(buf, |_, _, _| {})
}

pub(super) fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn partial_any(data: &[u8]) -> Any {
    let mut any = Any::default();
    for f in FieldScanner::new(data) {
        match (f.number, f.value) {
            (1, FieldValue::Len { data, .. }) => any.type_url = lossy(data),
            (2, FieldValue::Len { data, .. }) => any.value = data.to_vec(),
            _ => {}
        }
    }
    any
}

/// ExecuteToolRequest (also ExecuteElixirToolRequest) from a possibly cut buffer.
/// A session id, tool name, parameter or metadata entry cut by the copy limit stays
/// out (empty / absent, `cut_field` says which): a prefix reported as the value
/// would be wrong.
pub fn decode_execute_tool_request(buf: &[u8]) -> Result<Partial<ExecuteToolRequest>, WireError> {
    decode_partial(buf, |_, _, _| {})
}

/// ExecuteToolResponse (also ExecuteElixirToolResponse) from a possibly cut buffer.
pub fn decode_execute_tool_response(buf: &[u8]) -> Result<Partial<ExecuteToolResponse>, WireError> {
    decode_partial(
        buf,
        |msg: &mut ExecuteToolResponse, number, data| match number {
            2 => msg.result = Some(partial_any(data)),
            3 => msg.error_message = lossy(data),
            6 => msg.binary_result = data.to_vec(),
            _ => {}
        },
    )
}

/// ToolChunk from a possibly cut buffer.
pub fn decode_tool_chunk(buf: &[u8]) -> Result<Partial<ToolChunk>, WireError> {
    decode_partial(buf, |msg: &mut ToolChunk, number, data| match number {
        1 => msg.chunk_id = lossy(data),
        2 => msg.data = data.to_vec(),
        _ => {}
    })
}
