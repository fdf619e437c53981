//! HPACK (RFC 7541) decoder that tolerates joining a connection mid-way.
//!
//! Model: the dynamic table is a list of entries, newest first. We know exactly
//! the entries inserted since we joined (or since the last desync); older ones may
//! exist with unknown content ("unknown older part"). Because indices count from
//! the newest entry, an index within our known entries always names the same entry
//! the encoder means, whatever we believe about evictions: keeping an entry the
//! encoder evicted is harmless (it will never be referenced) and dropping one only
//! turns a value into [`HeaderValue::Unknown`]. So eviction accounting only decides
//! memory and whether an index past the known entries is Unknown (the unknown
//! older part may still hold it) or a protocol error (the table is fully known).
//! Whenever that is ambiguous (maximum size not yet confirmed by a size update,
//! entry sizes only known as lower bounds), we answer Unknown.
//!
//! Huffman decoding uses the `httlib-huffman` crate's decoder (RFC 7541 Appendix
//! B table). Every malformed input yields a counted [`WireError`], never a panic.

use std::collections::VecDeque;

use bytes::Bytes;

use super::{DecodeStats, WireError};

/// Default SETTINGS_HEADER_TABLE_SIZE, what both Gun and grpc-core use.
pub const DEFAULT_TABLE_SIZE: usize = 4096;
/// Per-entry overhead from RFC 7541 section 4.1.
const ENTRY_OVERHEAD: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HeaderValue {
    /// `Bytes`: a static-table reference and a dynamic-table hit are shared, not
    /// copied (every request's `:method`, `:path`, `content-type`... is one).
    Known(Bytes),
    /// Refers to a dynamic-table entry inserted before we joined.
    Unknown,
}

impl HeaderValue {
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            HeaderValue::Known(v) => Some(v),
            HeaderValue::Unknown => None,
        }
    }

    /// The value as UTF-8 text, if known and valid.
    pub fn as_str(&self) -> Option<&str> {
        self.as_bytes().and_then(|b| std::str::from_utf8(b).ok())
    }

    fn len_lower_bound(&self) -> usize {
        self.as_bytes().map_or(0, <[u8]>::len)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderField {
    pub name: HeaderValue,
    pub value: HeaderValue,
    /// Sent as "never indexed" (e.g. credentials).
    pub sensitive: bool,
}

impl HeaderField {
    pub fn known(name: &[u8], value: &[u8]) -> Self {
        HeaderField {
            name: HeaderValue::Known(Bytes::copy_from_slice(name)),
            value: HeaderValue::Known(Bytes::copy_from_slice(value)),
            sensitive: false,
        }
    }
}

/// The result of decoding one header block: the fields decoded (possibly only
/// the ones before an error) and the first error that stopped decoding.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DecodedBlock {
    pub headers: Vec<HeaderField>,
    pub error: Option<WireError>,
}

impl DecodedBlock {
    /// The first field with this (known) name.
    pub fn get(&self, name: &str) -> Option<&HeaderValue> {
        self.headers
            .iter()
            .find(|h| h.name.as_bytes() == Some(name.as_bytes()))
            .map(|h| &h.value)
    }
}

#[derive(Debug, Clone)]
struct Entry {
    name: HeaderValue,
    value: HeaderValue,
    /// Exact, or a lower bound when the name is unknown.
    size: usize,
}

#[derive(Debug)]
pub struct HpackDecoder {
    /// Newest first.
    entries: VecDeque<Entry>,
    /// Sum of the known entries' sizes.
    size: usize,
    max_size: usize,
    /// True once the maximum is confirmed (fresh connection or a size update).
    max_certain: bool,
    /// Entries older than the known ones may exist.
    unknown_older: bool,
    /// Upper bound of the unknown older part's size, when `max_certain`.
    unknown_max: usize,
    /// SETTINGS_HEADER_TABLE_SIZE the peer sent, bounding size updates.
    settings_limit: Option<usize>,
    /// Memory cap on the entries we keep, whatever the protocol maximum.
    mem_cap: usize,
    /// Cap on the decoded size of one block's header list.
    pub max_list_size: usize,
    pub stats: DecodeStats,
}

impl Default for HpackDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl HpackDecoder {
    /// Decoder for a connection seen from its first header block.
    pub fn new() -> Self {
        HpackDecoder {
            entries: VecDeque::new(),
            size: 0,
            max_size: DEFAULT_TABLE_SIZE,
            max_certain: true,
            unknown_older: false,
            unknown_max: 0,
            settings_limit: None,
            mem_cap: 256 * 1024,
            max_list_size: 256 * 1024,
            stats: DecodeStats::default(),
        }
    }

    /// Decoder for a connection joined mid-way. `assumed_max` is our best guess of
    /// the table's maximum size (the peer's SETTINGS_HEADER_TABLE_SIZE if known,
    /// else [`DEFAULT_TABLE_SIZE`]).
    pub fn joined(assumed_max: usize) -> Self {
        let mut d = Self::new();
        d.max_size = assumed_max;
        d.max_certain = false;
        d.unknown_older = true;
        d.unknown_max = assumed_max;
        d
    }

    /// The decoder missed some header block: whatever it inserted is unknown, so
    /// the known entries' indices are unknown too.
    pub fn mark_desync(&mut self) {
        self.entries.clear();
        self.size = 0;
        self.unknown_older = true;
        self.unknown_max = self.max_size;
    }

    /// The peer's SETTINGS_HEADER_TABLE_SIZE (sent in the opposite direction).
    pub fn set_settings_limit(&mut self, limit: usize) {
        self.settings_limit = Some(limit);
    }

    /// Number of dynamic entries known exactly.
    pub fn known_entries(&self) -> usize {
        self.entries.len()
    }

    /// Whether entries older than the known ones may exist.
    pub fn has_unknown_part(&self) -> bool {
        self.unknown_older
    }

    pub fn max_size(&self) -> usize {
        self.max_size
    }

    pub fn decode_block(&mut self, block: &[u8]) -> DecodedBlock {
        let mut out = DecodedBlock::default();
        self.decode_block_into(block, &mut out);
        out
    }

    /// [`Self::decode_block`] into `out`, which is cleared first (a decoder that
    /// keeps one for every block allocates no list per block).
    pub fn decode_block_into(&mut self, block: &[u8], out: &mut DecodedBlock) {
        out.headers.clear();
        out.error = None;
        let mut list_size = 0usize;
        let mut over_list = false;
        let mut pos = 0usize;
        let mut seen_field = false;
        while pos < block.len() {
            let res = self.decode_one(block, &mut pos, seen_field);
            match res {
                Ok(Some(field)) => {
                    seen_field = true;
                    let sz = field.name.len_lower_bound()
                        + field.value.len_lower_bound()
                        + ENTRY_OVERHEAD;
                    list_size = list_size.saturating_add(sz);
                    if list_size > self.max_list_size {
                        // Keep parsing so table insertions stay in sync; stop storing.
                        if !over_list {
                            over_list = true;
                            let e = WireError::HeaderListTooLarge(self.max_list_size);
                            self.stats.record(&e);
                            out.error.get_or_insert(e);
                        }
                    } else {
                        out.headers.push(field);
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    self.stats.record(&e);
                    // The rest of the block may have inserted entries we cannot see.
                    self.mark_desync();
                    out.error.get_or_insert(e);
                    break;
                }
            }
        }
    }

    fn decode_one(
        &mut self,
        block: &[u8],
        pos: &mut usize,
        seen_field: bool,
    ) -> Result<Option<HeaderField>, WireError> {
        let b = block[*pos];
        if b & 0x80 != 0 {
            let idx = decode_int(block, pos, 7)?;
            let (name, value) = self.lookup(idx)?;
            return Ok(Some(HeaderField {
                name,
                value,
                sensitive: false,
            }));
        }
        if b & 0x40 != 0 {
            let idx = decode_int(block, pos, 6)?;
            let name = self.literal_name(idx, block, pos)?;
            let value = HeaderValue::Known(decode_string(block, pos)?.into());
            self.insert(name.clone(), value.clone());
            return Ok(Some(HeaderField {
                name,
                value,
                sensitive: false,
            }));
        }
        if b & 0x20 != 0 {
            let v = decode_int(block, pos, 5)?;
            if seen_field {
                // RFC 7541 4.2: only at the start of a block. Count, but apply:
                // the encoder's table did change.
                self.stats.record(&WireError::BadTableSizeUpdate(v));
            }
            self.size_update(v)?;
            return Ok(None);
        }
        let sensitive = b & 0x10 != 0;
        let idx = decode_int(block, pos, 4)?;
        let name = self.literal_name(idx, block, pos)?;
        let value = HeaderValue::Known(decode_string(block, pos)?.into());
        Ok(Some(HeaderField {
            name,
            value,
            sensitive,
        }))
    }

    fn literal_name(
        &mut self,
        idx: u64,
        block: &[u8],
        pos: &mut usize,
    ) -> Result<HeaderValue, WireError> {
        if idx == 0 {
            Ok(HeaderValue::Known(decode_string(block, pos)?.into()))
        } else {
            Ok(self.lookup(idx)?.0)
        }
    }

    fn lookup(&mut self, idx: u64) -> Result<(HeaderValue, HeaderValue), WireError> {
        if idx == 0 {
            return Err(WireError::BadIndex(0));
        }
        if idx <= STATIC_TABLE.len() as u64 {
            let (n, v) = STATIC_TABLE[(idx - 1) as usize];
            return Ok((
                HeaderValue::Known(Bytes::from_static(n.as_bytes())),
                HeaderValue::Known(Bytes::from_static(v.as_bytes())),
            ));
        }
        let d = idx - STATIC_TABLE.len() as u64 - 1;
        if let Some(e) = usize::try_from(d).ok().and_then(|d| self.entries.get(d)) {
            if e.name == HeaderValue::Unknown {
                self.stats.unknown_header_refs += 1;
            }
            return Ok((e.name.clone(), e.value.clone()));
        }
        if self.unknown_older {
            self.stats.unknown_header_refs += 1;
            return Ok((HeaderValue::Unknown, HeaderValue::Unknown));
        }
        Err(WireError::BadIndex(idx))
    }

    fn insert(&mut self, name: HeaderValue, value: HeaderValue) {
        // With an unknown name the size is a lower bound; see the module doc for
        // why lower bounds keep the accounting on the safe side.
        let s = name.len_lower_bound() + value.len_lower_bound() + ENTRY_OVERHEAD;
        let limit = self.max_size.min(self.mem_cap);
        if s > limit {
            self.entries.clear();
            self.size = 0;
            // RFC 7541 4.4: an entry larger than the table empties it, and then
            // nothing older remains if the maximum is certain. Otherwise (assumed
            // maximum, or only our memory cap) the encoder may still hold entries.
            self.unknown_older = !(self.max_certain && s > self.max_size);
            self.unknown_max = self.max_size;
            return;
        }
        let mut evicted = false;
        while self.size + s > limit {
            match self.entries.pop_back() {
                Some(e) => {
                    self.size -= e.size;
                    evicted = true;
                }
                None => break,
            }
        }
        if evicted {
            // Known entries go only after every older unknown one; but if the
            // maximum is only assumed (or our memory cap evicted), the encoder
            // may still hold them.
            self.unknown_older = !(self.max_certain && limit == self.max_size);
            self.unknown_max = self.max_size;
        }
        self.entries.push_front(Entry {
            name,
            value,
            size: s,
        });
        self.size += s;
        self.tighten_unknown();
    }

    fn tighten_unknown(&mut self) {
        if self.unknown_older && self.max_certain {
            self.unknown_max = self
                .unknown_max
                .min(self.max_size.saturating_sub(self.size));
            if self.unknown_max < ENTRY_OVERHEAD {
                self.unknown_older = false;
            }
        }
    }

    fn size_update(&mut self, v: u64) -> Result<(), WireError> {
        let limit = self.settings_limit.unwrap_or(u32::MAX as usize) as u64;
        if v > limit || v > u32::MAX as u64 {
            return Err(WireError::BadTableSizeUpdate(v));
        }
        let n = v as usize;
        if !self.max_certain && self.unknown_older {
            self.unknown_max = n.saturating_sub(self.size);
        }
        self.max_size = n;
        self.max_certain = true;
        let cap = n.min(self.mem_cap);
        let mut evicted = false;
        while self.size > cap {
            match self.entries.pop_back() {
                Some(e) => {
                    self.size -= e.size;
                    evicted = true;
                }
                None => break,
            }
        }
        if evicted {
            self.unknown_older = cap < n;
            self.unknown_max = n;
        }
        self.tighten_unknown();
        Ok(())
    }
}

/// RFC 7541 5.1 integer with an N-bit prefix. Values beyond u32 are rejected:
/// no legitimate index, length or size comes near that.
fn decode_int(buf: &[u8], pos: &mut usize, prefix_bits: u8) -> Result<u64, WireError> {
    let mask: u8 = ((1u16 << prefix_bits) - 1) as u8;
    let first = *buf.get(*pos).ok_or(WireError::Truncated)?;
    *pos += 1;
    let mut value = (first & mask) as u64;
    if value < mask as u64 {
        return Ok(value);
    }
    let mut shift = 0u32;
    loop {
        let b = *buf.get(*pos).ok_or(WireError::Truncated)?;
        *pos += 1;
        if shift > 28 {
            return Err(WireError::IntegerOverflow);
        }
        value += ((b & 0x7f) as u64) << shift;
        shift += 7;
        if value > u32::MAX as u64 {
            return Err(WireError::IntegerOverflow);
        }
        if b & 0x80 == 0 {
            return Ok(value);
        }
    }
}

/// RFC 7541 5.2 string literal.
fn decode_string(buf: &[u8], pos: &mut usize) -> Result<Vec<u8>, WireError> {
    let huffman = buf.get(*pos).ok_or(WireError::Truncated)? & 0x80 != 0;
    let len = decode_int(buf, pos, 7)? as usize;
    let end = pos.checked_add(len).ok_or(WireError::Truncated)?;
    let raw = buf.get(*pos..end).ok_or(WireError::Truncated)?;
    *pos = end;
    if huffman {
        huffman_decode(raw)
    } else {
        Ok(raw.to_vec())
    }
}

pub fn huffman_decode(raw: &[u8]) -> Result<Vec<u8>, WireError> {
    // Shortest code is 5 bits: the output is at most 8/5 of the input.
    let mut dst = Vec::with_capacity(raw.len() * 8 / 5 + 1);
    httlib_huffman::decode(raw, &mut dst, httlib_huffman::DecoderSpeed::FourBits)
        .map_err(|_| WireError::Huffman)?;
    // The crate accepts zero-bit padding; RFC 7541 5.2 wants at most 7 bits, all
    // ones. Recount the code bits from the crate's Appendix B table.
    let table = &httlib_huffman::encoder::table::ENCODE_TABLE;
    let bits: usize = dst.iter().map(|b| table[*b as usize].0 as usize).sum();
    let pad = (raw.len() * 8)
        .checked_sub(bits)
        .ok_or(WireError::Huffman)?;
    if pad > 7 {
        return Err(WireError::Huffman);
    }
    if pad > 0 {
        let mask = ((1u16 << pad) - 1) as u8;
        if raw.last().is_none_or(|l| l & mask != mask) {
            return Err(WireError::Huffman);
        }
    }
    Ok(dst)
}

/// RFC 7541 Appendix A.
pub const STATIC_TABLE: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

/// Test helpers: a tiny HPACK encoder (no Huffman) to build header blocks.
#[cfg(test)]
pub(crate) mod enc {
    pub fn int(out: &mut Vec<u8>, first: u8, prefix_bits: u8, mut v: u64) {
        let mask = ((1u16 << prefix_bits) - 1) as u64;
        if v < mask {
            out.push(first | v as u8);
            return;
        }
        out.push(first | mask as u8);
        v -= mask;
        while v >= 128 {
            out.push((v % 128) as u8 | 0x80);
            v /= 128;
        }
        out.push(v as u8);
    }

    pub fn string(out: &mut Vec<u8>, s: &[u8]) {
        int(out, 0, 7, s.len() as u64);
        out.extend_from_slice(s);
    }

    pub fn indexed(out: &mut Vec<u8>, idx: u64) {
        int(out, 0x80, 7, idx);
    }

    /// Literal with incremental indexing, new name.
    pub fn insert(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
        out.push(0x40);
        string(out, name);
        string(out, value);
    }

    /// Literal with incremental indexing, indexed name.
    pub fn insert_idx(out: &mut Vec<u8>, name_idx: u64, value: &[u8]) {
        int(out, 0x40, 6, name_idx);
        string(out, value);
    }

    pub fn literal(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
        out.push(0x00);
        string(out, name);
        string(out, value);
    }

    pub fn size_update(out: &mut Vec<u8>, v: u64) {
        int(out, 0x20, 5, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ErrorKind;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn fields(list: &[(&str, &str)]) -> Vec<HeaderField> {
        list.iter()
            .map(|(n, v)| HeaderField::known(n.as_bytes(), v.as_bytes()))
            .collect()
    }

    fn table(d: &HpackDecoder) -> Vec<(String, String, usize)> {
        d.entries
            .iter()
            .map(|e| {
                (
                    e.name.as_str().unwrap().to_string(),
                    e.value.as_str().unwrap().to_string(),
                    e.size,
                )
            })
            .collect()
    }

    fn check(
        d: &mut HpackDecoder,
        block: &str,
        want: &[(&str, &str)],
        tbl: &[(&str, &str)],
        size: usize,
    ) {
        let r = d.decode_block(&hex(block));
        assert_eq!(r.error, None);
        assert_eq!(r.headers, fields(want));
        let t: Vec<(String, String)> = table(d).into_iter().map(|(n, v, _)| (n, v)).collect();
        let w: Vec<(String, String)> = tbl
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        assert_eq!(t, w);
        assert_eq!(d.size, size);
        assert!(!d.has_unknown_part());
    }

    const REQ1: &[(&str, &str)] = &[
        (":method", "GET"),
        (":scheme", "http"),
        (":path", "/"),
        (":authority", "www.example.com"),
    ];
    const REQ2: &[(&str, &str)] = &[
        (":method", "GET"),
        (":scheme", "http"),
        (":path", "/"),
        (":authority", "www.example.com"),
        ("cache-control", "no-cache"),
    ];
    const REQ3: &[(&str, &str)] = &[
        (":method", "GET"),
        (":scheme", "https"),
        (":path", "/index.html"),
        (":authority", "www.example.com"),
        ("custom-key", "custom-value"),
    ];

    fn requests(blocks: [&str; 3]) {
        let mut d = HpackDecoder::new();
        check(
            &mut d,
            blocks[0],
            REQ1,
            &[(":authority", "www.example.com")],
            57,
        );
        check(
            &mut d,
            blocks[1],
            REQ2,
            &[
                ("cache-control", "no-cache"),
                (":authority", "www.example.com"),
            ],
            110,
        );
        check(
            &mut d,
            blocks[2],
            REQ3,
            &[
                ("custom-key", "custom-value"),
                ("cache-control", "no-cache"),
                (":authority", "www.example.com"),
            ],
            164,
        );
    }

    #[test]
    fn rfc7541_c3_requests_plain() {
        requests([
            "8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
            "8286 84be 5808 6e6f 2d63 6163 6865",
            "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65",
        ]);
    }

    #[test]
    fn rfc7541_c4_requests_huffman() {
        requests([
            "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff",
            "8286 84be 5886 a8eb 1064 9cbf",
            "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
        ]);
    }

    const DATE1: &str = "Mon, 21 Oct 2013 20:13:21 GMT";
    const DATE2: &str = "Mon, 21 Oct 2013 20:13:22 GMT";
    const LOC: &str = "https://www.example.com";
    const COOKIE: &str = "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1";

    fn responses(blocks: [&str; 3]) {
        let mut d = HpackDecoder::new();
        d.size_update(256).unwrap();
        check(
            &mut d,
            blocks[0],
            &[
                (":status", "302"),
                ("cache-control", "private"),
                ("date", DATE1),
                ("location", LOC),
            ],
            &[
                ("location", LOC),
                ("date", DATE1),
                ("cache-control", "private"),
                (":status", "302"),
            ],
            222,
        );
        check(
            &mut d,
            blocks[1],
            &[
                (":status", "307"),
                ("cache-control", "private"),
                ("date", DATE1),
                ("location", LOC),
            ],
            &[
                (":status", "307"),
                ("location", LOC),
                ("date", DATE1),
                ("cache-control", "private"),
            ],
            222,
        );
        check(
            &mut d,
            blocks[2],
            &[
                (":status", "200"),
                ("cache-control", "private"),
                ("date", DATE2),
                ("location", LOC),
                ("content-encoding", "gzip"),
                ("set-cookie", COOKIE),
            ],
            &[
                ("set-cookie", COOKIE),
                ("content-encoding", "gzip"),
                ("date", DATE2),
            ],
            215,
        );
    }

    #[test]
    fn rfc7541_c5_responses_plain() {
        responses([
            "4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133
             2032 303a 3133 3a32 3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70
             6c65 2e63 6f6d",
            "4803 3330 37c1 c0bf",
            "88c1 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3220 474d
             54c0 5a04 677a 6970 7738 666f 6f3d 4153 444a 4b48 514b 425a 584f 5157 454f 5049
             5541 5851 5745 4f49 553b 206d 6178 2d61 6765 3d33 3630 303b 2076 6572 7369 6f6e
             3d31",
        ]);
    }

    #[test]
    fn rfc7541_c6_responses_huffman() {
        responses([
            "4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6
             2d1b ff6e 919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3",
            "4883 640e ffc1 c0bf",
            "88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b d9ab
             77ad 94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f
             9587 3160 65c0 03ed 4ee5 b106 3d50 07",
        ]);
    }

    #[test]
    fn table_size_updates() {
        let mut d = HpackDecoder::new();
        let mut b = Vec::new();
        enc::insert(&mut b, b"aaaa", b"1111"); // 40 bytes
        enc::insert(&mut b, b"bbbb", b"2222");
        enc::insert(&mut b, b"cccc", b"3333");
        assert_eq!(d.decode_block(&b).error, None);
        assert_eq!(d.size, 120);
        // Shrink to 80: the oldest goes.
        let mut b = Vec::new();
        enc::size_update(&mut b, 80);
        enc::indexed(&mut b, 62);
        enc::indexed(&mut b, 63);
        let r = d.decode_block(&b);
        assert_eq!(r.error, None);
        assert_eq!(r.headers, fields(&[("cccc", "3333"), ("bbbb", "2222")]));
        // Index 64 is now out of a fully known table: error.
        let mut b = Vec::new();
        enc::indexed(&mut b, 64);
        let r = d.decode_block(&b);
        assert_eq!(r.error, Some(WireError::BadIndex(64)));
        // Size 0 clears; then two updates in a row are fine.
        let mut d = HpackDecoder::new();
        let mut b = Vec::new();
        enc::insert(&mut b, b"x", b"y");
        d.decode_block(&b);
        let mut b = Vec::new();
        enc::size_update(&mut b, 0);
        enc::size_update(&mut b, 4096);
        enc::indexed(&mut b, 2);
        let r = d.decode_block(&b);
        assert_eq!(r.error, None);
        assert_eq!(d.known_entries(), 0);
        // Over the SETTINGS limit: error.
        d.set_settings_limit(1000);
        let mut b = Vec::new();
        enc::size_update(&mut b, 2000);
        assert_eq!(
            d.decode_block(&b).error,
            Some(WireError::BadTableSizeUpdate(2000))
        );
        // Entry bigger than the table empties it.
        let mut d = HpackDecoder::new();
        let mut b = Vec::new();
        enc::size_update(&mut b, 64);
        enc::insert(&mut b, b"k", b"v");
        enc::insert(&mut b, b"big", &[b'x'; 100]);
        let r = d.decode_block(&b);
        assert_eq!(r.error, None);
        assert_eq!(d.known_entries(), 0);
    }

    /// A Gun-like client: every request inserts :authority, user-agent, te,
    /// content-type, grpc-timeout and the correlation id, then refers back to them.
    #[test]
    fn join_mid_connection() {
        // What the encoder did before we joined: inserted 5 entries (sizes unknown
        // to us). Request A, which we missed, built that table.
        let mut before = Vec::new();
        enc::insert_idx(&mut before, 1, b"localhost:50051"); // :authority
        enc::insert(&mut before, b"te", b"trailers");
        enc::insert_idx(&mut before, 31, b"application/grpc"); // content-type
        enc::insert(&mut before, b"user-agent", b"grpc-elixir/0.9");
        enc::insert(&mut before, b"x-snakepit-correlation-id", b"corr-1");
        let mut full = HpackDecoder::new();
        assert_eq!(full.decode_block(&before).error, None);

        // Request B, the first we see: reuses te/content-type/authority (indices
        // 64, 63, 66), sends a new correlation id (inserted) and the path literally.
        let mut b = Vec::new();
        enc::indexed(&mut b, 3); // :method POST
        enc::indexed(&mut b, 6); // :scheme http
        enc::literal(&mut b, b":path", b"/snakepit.bridge.BridgeService/Ping");
        enc::indexed(&mut b, 66); // :authority localhost:50051
        enc::indexed(&mut b, 64); // content-type
        enc::indexed(&mut b, 65); // te
        enc::insert(&mut b, b"x-snakepit-correlation-id", b"corr-2");
        // Request C: refers to corr-2 (new, index 62) and the old entries (now 63..).
        let mut c = Vec::new();
        enc::indexed(&mut c, 3);
        enc::indexed(&mut c, 62);
        enc::indexed(&mut c, 65); // content-type, shifted by one
        let mut joined = HpackDecoder::joined(DEFAULT_TABLE_SIZE);
        for blk in [&b, &c] {
            let want = full.decode_block(blk);
            let got = joined.decode_block(blk);
            assert_eq!(got.error, None);
            assert_eq!(want.headers.len(), got.headers.len());
            for (w, g) in want.headers.iter().zip(&got.headers) {
                // Never a wrong value: either equal or Unknown.
                if g.value != HeaderValue::Unknown {
                    assert_eq!(w, g);
                }
            }
        }
        let got_c = {
            let mut j = HpackDecoder::joined(DEFAULT_TABLE_SIZE);
            j.decode_block(&b);
            j.decode_block(&c)
        };
        assert_eq!(
            got_c.headers[1],
            HeaderField::known(b"x-snakepit-correlation-id", b"corr-2")
        );
        assert_eq!(got_c.headers[2].value, HeaderValue::Unknown);
        assert!(joined.stats.unknown_header_refs >= 3);
        assert_eq!(joined.stats.total_errors(), 0);
    }

    #[test]
    fn joined_eviction_is_conservative() {
        let mut d = HpackDecoder::joined(100);
        let mut b = Vec::new();
        enc::insert(&mut b, b"aaaa", b"1111"); // 40
        enc::insert(&mut b, b"bbbb", b"2222"); // 40
        enc::insert(&mut b, b"cccc", b"3333"); // 40 > 100: "aaaa" evicted by our guess
        d.decode_block(&b);
        assert_eq!(d.known_entries(), 2);
        // The real max may be larger: index 64 is Unknown, not an error.
        let mut b = Vec::new();
        enc::indexed(&mut b, 64);
        let r = d.decode_block(&b);
        assert_eq!(r.error, None);
        assert_eq!(r.headers[0].value, HeaderValue::Unknown);
        // A size update confirms the max: 80 keeps two 40-byte entries and no room
        // for unknown ones, so the table is now fully known.
        let mut b = Vec::new();
        enc::size_update(&mut b, 80);
        d.decode_block(&b);
        assert!(!d.has_unknown_part());
    }

    #[test]
    fn unknown_name_insert() {
        let mut d = HpackDecoder::joined(4096);
        let mut b = Vec::new();
        enc::insert_idx(&mut b, 70, b"val"); // name from an unknown entry
        enc::indexed(&mut b, 62);
        let r = d.decode_block(&b);
        assert_eq!(r.error, None);
        assert_eq!(r.headers[1].name, HeaderValue::Unknown);
        assert_eq!(
            r.headers[1].value,
            HeaderValue::Known(Bytes::from_static(b"val"))
        );
    }

    #[test]
    fn malformed_inputs() {
        let cases: &[(&[u8], ErrorKind)] = &[
            (&[0x80], ErrorKind::BadIndex),
            (
                &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f],
                ErrorKind::IntegerOverflow,
            ),
            (&[0xff], ErrorKind::Truncated),
            (&[0x40, 0x05, b'a'], ErrorKind::Truncated),
            (&[0x40, 0x81, 0x00, 0x00], ErrorKind::Huffman), // zero padding bits
            (&[0xbf], ErrorKind::BadIndex),                  // index 62, empty table
        ];
        for (input, kind) in cases {
            let mut d = HpackDecoder::new();
            let r = d.decode_block(input);
            assert_eq!(
                r.error.as_ref().map(WireError::kind),
                Some(*kind),
                "{input:?}"
            );
            assert_eq!(d.stats.errors(*kind), 1);
        }
    }

    #[test]
    fn huffman_rejects_eos_and_long_padding() {
        // EOS (30 ones) inside a string.
        assert!(huffman_decode(&[0xff, 0xff, 0xff, 0xff]).is_err());
        // "a" = 00011, padding 111: ok.
        assert_eq!(huffman_decode(&[0x1f]).unwrap(), b"a");
    }

    #[test]
    fn list_size_cap() {
        let mut d = HpackDecoder::new();
        d.max_list_size = 100;
        let mut b = Vec::new();
        for _ in 0..10 {
            enc::literal(&mut b, b"name", b"value");
        }
        enc::insert(&mut b, b"k", b"v");
        let r = d.decode_block(&b);
        assert_eq!(r.error, Some(WireError::HeaderListTooLarge(100)));
        assert!(r.headers.len() < 10);
        // Insertions after the cap still happened.
        assert_eq!(d.known_entries(), 1);
    }
}
