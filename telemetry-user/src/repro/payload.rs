//! Request messages of calls in flight, bounded per call (`max_payload_bytes`) and in
//! total (`max_inflight_bytes`). Kept raw: they are decoded only for failed calls.
use crate::fast_hash::FastMap;

/// Why a stored request is not the whole message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// No request message seen (yet): the agent joined mid-call, or lost it.
    NotSeen,
    /// All `len` bytes kept.
    Whole,
    /// The kernel's per-syscall copy (or a capture gap) delivered only a prefix.
    NotCaptured,
    /// Longer than `max_payload_bytes`.
    PayloadLimit,
    /// The in-flight budget (`max_inflight_bytes`) was full: nothing kept.
    InflightLimit,
}

#[derive(Debug, Clone)]
pub struct StoredRequest {
    /// The first bytes of the message, contiguous from its start.
    pub data: Vec<u8>,
    /// The message's declared length.
    pub len: usize,
    pub cut: Cut,
    /// The bound in force when the message was cut (`max_payload_bytes` or
    /// `max_inflight_bytes`).
    pub limit: u64,
    pub grpc_timeout: Option<String>,
    pub error_text: Option<String>,
}

/// Cap on the kept error text (the worker's error JSON with its traceback).
const MAX_ERROR_TEXT: usize = 64 * 1024;

pub struct PayloadStore {
    max_payload: u64,
    max_inflight: u64,
    held: u64,
    calls: FastMap<u64, StoredRequest>,
}

impl PayloadStore {
    pub fn new(max_payload: u64, max_inflight: u64) -> Self {
        PayloadStore {
            max_payload,
            max_inflight,
            held: 0,
            calls: FastMap::default(),
        }
    }

    /// Stores a request message; a deadline or error text that came first is kept
    /// (records of the two ends of a connection reach the tracker in either order).
    pub fn insert(&mut self, seq: u64, data: &[u8], len: usize) {
        let old = self.remove(seq);
        let mut keep = data.len().min(self.max_payload as usize);
        let mut cut = if keep < data.len() || (len as u64 > self.max_payload) {
            Cut::PayloadLimit
        } else if data.len() < len {
            Cut::NotCaptured
        } else {
            Cut::Whole
        };
        let mut limit = self.max_payload;
        if self.held + keep as u64 > self.max_inflight {
            keep = 0;
            cut = Cut::InflightLimit;
            limit = self.max_inflight;
        }
        self.held += keep as u64;
        self.calls.insert(
            seq,
            StoredRequest {
                data: data[..keep].to_vec(),
                len,
                cut,
                limit,
                grpc_timeout: old.as_ref().and_then(|o| o.grpc_timeout.clone()),
                error_text: old.and_then(|o| o.error_text),
            },
        );
    }

    /// The entry of `seq`; a placeholder (no message yet) when there is none.
    fn entry(&mut self, seq: u64) -> &mut StoredRequest {
        self.calls.entry(seq).or_insert_with(|| StoredRequest {
            data: Vec::new(),
            len: 0,
            cut: Cut::NotSeen,
            limit: 0,
            grpc_timeout: None,
            error_text: None,
        })
    }

    pub fn set_timeout(&mut self, seq: u64, timeout: &str) {
        self.entry(seq).grpc_timeout = Some(timeout.to_string());
    }

    pub fn set_error_text(&mut self, seq: u64, text: &str) {
        let mut end = text.len().min(MAX_ERROR_TEXT);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        self.entry(seq).error_text = Some(text[..end].to_string());
    }

    pub fn remove(&mut self, seq: u64) -> Option<StoredRequest> {
        let s = self.calls.remove(&seq)?;
        self.held = self.held.saturating_sub(s.data.len() as u64);
        Some(s)
    }

    pub fn held_bytes(&self) -> u64 {
        self.held
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_call_and_total_bounds() {
        let mut st = PayloadStore::new(10, 25);
        st.insert(1, &[1; 8], 8);
        st.insert(2, &[2; 10], 20);
        st.insert(3, &[3; 10], 10);
        assert_eq!(st.held_bytes(), 28 - 10);
        assert_eq!(st.calls[&1].cut, Cut::Whole);
        assert_eq!(st.calls[&2].cut, Cut::PayloadLimit);
        assert_eq!(st.calls[&3].cut, Cut::InflightLimit);
        assert!(st.calls[&3].data.is_empty());
        st.remove(2);
        assert_eq!(st.held_bytes(), 8);
        st.insert(4, &[4; 5], 50);
        assert_eq!(st.calls[&4].cut, Cut::PayloadLimit);
        st.insert(5, &[5; 5], 7);
        assert_eq!(st.calls[&5].cut, Cut::NotCaptured);
    }

    #[test]
    fn deadline_and_error_text_survive_the_message() {
        let mut st = PayloadStore::new(100, 100);
        st.set_timeout(7, "30S");
        st.set_error_text(7, "{}");
        st.insert(7, b"abc", 3);
        let s = st.remove(7).expect("stored");
        assert_eq!(s.grpc_timeout.as_deref(), Some("30S"));
        assert_eq!(s.error_text.as_deref(), Some("{}"));
        assert_eq!(s.data, b"abc");
        assert_eq!(st.held_bytes(), 0);
    }
}
