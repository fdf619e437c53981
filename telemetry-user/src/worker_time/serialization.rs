//! The workers' (de)serialization calls, and which of them belong to a call: its
//! request decoding (the request message, then the run of parameter decodes right
//! after it) and its response encoding (the run of result encodes right before the
//! response message's encoding). A tool's own parsing in between is not counted: only
//! runs that touch the request's decode or the response's encode are.
use std::collections::{HashMap, VecDeque};

use crate::kernel::{SerializeFn, SerializeRecord};

/// Records kept per worker at most.
const MAX_HITS: usize = 50_000;
/// Largest gap between two calls of one run (a parameter decoded after another, the
/// result encoded before the response): interpreter work between them, not a tool.
pub const RUN_GAP_NS: u64 = 2_000_000;

#[derive(Default)]
pub struct SerializeHits {
    by_tgid: HashMap<u32, VecDeque<SerializeRecord>>,
}

/// What the (de)serialization of one direction of a call cost.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Phase {
    pub time: u64,
    /// Bytes, summed over the calls whose size was read (None if none was).
    pub bytes: Option<u64>,
    /// Per format (`protobuf`, `json`): time, bytes, calls.
    pub parts: Vec<PhasePart>,
    /// The thread that did most of it.
    pub tid: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PhasePart {
    pub format: &'static str,
    pub time: u64,
    pub bytes: Option<u64>,
    pub calls: u64,
}

pub fn format_of(f: SerializeFn) -> &'static str {
    match f {
        SerializeFn::ProtobufDecode | SerializeFn::ProtobufEncode => "protobuf",
        SerializeFn::JsonDecode | SerializeFn::JsonEncode => "json",
    }
}

impl Phase {
    fn add(&mut self, r: &SerializeRecord) {
        let d = r.ts_end_ns.saturating_sub(r.ts_start_ns);
        self.time += d;
        if let Some(b) = r.bytes {
            self.bytes = Some(self.bytes.unwrap_or(0) + b);
        }
        let format = format_of(r.function);
        match self.parts.iter_mut().find(|p| p.format == format) {
            Some(p) => {
                p.time += d;
                p.calls += 1;
                if let Some(b) = r.bytes {
                    p.bytes = Some(p.bytes.unwrap_or(0) + b);
                }
            }
            None => self.parts.push(PhasePart {
                format,
                time: d,
                bytes: r.bytes,
                calls: 1,
            }),
        }
    }
}

/// How far back a record looks for the calls nested in it (its thread's inner call
/// ended just before it; other threads' records may lie in between).
const NESTED_LOOKBACK: usize = 16;

impl SerializeHits {
    pub fn push(&mut self, rec: &SerializeRecord) {
        let q = self.by_tgid.entry(rec.tgid).or_default();
        let mut rec = *rec;
        drop_nested(q, &mut rec);
        if q.len() >= MAX_HITS {
            q.pop_front();
        }
        q.push_back(rec);
    }

    pub fn forget_process(&mut self, tgid: u32) {
        self.by_tgid.remove(&tgid);
    }

    /// Drops the records that ended before `floor` (a worker's entry stays: `seen`).
    pub fn prune(&mut self, floor: u64) {
        for q in self.by_tgid.values_mut() {
            while q.front().is_some_and(|r| r.ts_end_ns < floor) {
                q.pop_front();
            }
            super::timeline::shrink_idle(q);
        }
    }

    /// Whether any (de)serialization of `tgid` was ever seen (its probes work).
    pub fn seen(&self, tgid: u32) -> bool {
        self.by_tgid.contains_key(&tgid)
    }

    /// The records of `tgid` that lie entirely inside `[a, b]`, by end time.
    fn within(&self, tgid: u32, a: u64, b: u64) -> Vec<&SerializeRecord> {
        let Some(q) = self.by_tgid.get(&tgid) else {
            return Vec::new();
        };
        let i = q.partition_point(|r| r.ts_end_ns < a);
        q.iter()
            .skip(i)
            .take_while(|r| r.ts_end_ns <= b)
            .filter(|r| r.ts_start_ns >= a)
            .collect()
    }

    /// (decoding of the request, encoding of the response) of a call whose worker
    /// window is `[a, b]`. `sizes`: the request's and the response's message lengths
    /// when known (unary calls): the protobuf call of that size is the message's, the
    /// first decode and last encode otherwise. The response is looked for on the
    /// thread that decoded the parameters (the handler's), if it decoded any: another
    /// thread may encode other messages meanwhile (e.g. a telemetry stream).
    pub fn phases(
        &self,
        tgid: u32,
        a: u64,
        b: u64,
        sizes: MessageSizes,
    ) -> (Option<Phase>, Option<Phase>) {
        let hits = self.within(tgid, a, b);
        if tracing::enabled!(tracing::Level::TRACE) {
            let rel: Vec<(u32, SerializeFn, u64, u64, Option<u64>)> = hits
                .iter()
                .map(|r| {
                    (
                        r.tid,
                        r.function,
                        r.ts_start_ns - a,
                        r.ts_end_ns - a,
                        r.bytes,
                    )
                })
                .collect();
            tracing::trace!(
                tgid,
                window_start = a,
                window = b - a,
                ?sizes,
                ?rel,
                "(de)serialization in the worker window"
            );
        }
        let decode = decode_phase(&hits, sizes.request);
        let handler = decode
            .as_ref()
            .filter(|p| p.parts.iter().any(|x| x.format == "json"))
            .map(|p| p.tid);
        let encode = handler
            .and_then(|t| {
                let own: Vec<&SerializeRecord> =
                    hits.iter().copied().filter(|r| r.tid == t).collect();
                encode_phase(&own, sizes.response)
            })
            .or_else(|| encode_phase(&hits, sizes.response));
        (decode, encode)
    }
}

/// The gRPC message lengths of a call's request and response (unary calls).
#[derive(Clone, Copy, Debug, Default)]
pub struct MessageSizes {
    pub request: Option<u64>,
    pub response: Option<u64>,
}

/// Between the message's (de)serialization and the first (last) JSON call of the
/// parameters (result): the hand-over to the handler. Copies of the document into
/// the message (an `Any`'s bytes) also lie there, and grow with it: a JSON call that
/// carries most of the message's bytes is the message's whatever the gap.
const HANDOVER_GAP_NS: u64 = 20_000_000;
/// The copies in the hand-over go at least this fast (ns per byte of the message:
/// 100 MB/s, a loaded host's floor; 20 MB took 55 ms here with stdlib json's join,
/// str-to-bytes and the `Any` copy). Used where the JSON call's size is unknown (the
/// stdlib encoder returns chunks).
const HANDOVER_NS_PER_BYTE: u64 = 10;

/// The longest hand-over allowed next to a message of `msg` bytes.
fn handover_gap(msg: Option<u64>) -> u64 {
    HANDOVER_GAP_NS.max(msg.unwrap_or(0).saturating_mul(HANDOVER_NS_PER_BYTE))
}

/// The JSON call of `json` bytes is (most of) the protobuf message of `msg` bytes.
fn carries_message(json: Option<u64>, msg: Option<u64>) -> bool {
    matches!((json, msg), (Some(j), Some(m)) if m > 0 && j <= m && 2 * j >= m)
}

/// Removes the records of `outer`'s thread and function that lie inside it: the
/// inner call an outer entry point makes (`FromString` -> `MergeFromString`), which
/// ends, and so arrives, first. `outer` keeps the inner's byte count if it has none.
fn drop_nested(q: &mut VecDeque<SerializeRecord>, outer: &mut SerializeRecord) {
    let first = q.len().saturating_sub(NESTED_LOOKBACK);
    let mut i = q.len();
    while i > first {
        i -= 1;
        let r = &q[i];
        if r.tid == outer.tid
            && r.function == outer.function
            && r.ts_start_ns >= outer.ts_start_ns
            && r.ts_end_ns <= outer.ts_end_ns
        {
            if outer.bytes.is_none() {
                outer.bytes = r.bytes;
            }
            q.remove(i);
        }
    }
}

fn is_decode(f: SerializeFn) -> bool {
    matches!(f, SerializeFn::ProtobufDecode | SerializeFn::JsonDecode)
}

/// The request message's decode (the first protobuf decode), then the parameters'
/// JSON decodes that follow it on the same thread without a gap.
fn decode_phase(hits: &[&SerializeRecord], size: Option<u64>) -> Option<Phase> {
    let is_msg = |r: &&SerializeRecord| r.function == SerializeFn::ProtobufDecode;
    let first = size
        .and_then(|n| hits.iter().position(|r| is_msg(r) && r.bytes == Some(n)))
        .or_else(|| hits.iter().position(is_msg))
        .or_else(|| {
            hits.iter()
                .position(|r| r.function == SerializeFn::JsonDecode)
        })?;
    let mut phase = Phase::default();
    phase.add(hits[first]);
    let mut end = hits[first].ts_end_ns;
    let mut tid = None;
    for r in &hits[first + 1..] {
        if r.function != SerializeFn::JsonDecode {
            // Other threads' messages (a telemetry stream, heartbeats) interleave;
            // the handler encoding something ends its parameter run.
            if tid == Some(r.tid) && !is_decode(r.function) {
                break;
            }
            continue;
        }
        if tid.is_some_and(|t| t != r.tid) {
            continue;
        }
        // The first parameter may wait for the hand-over to the tool's thread.
        let gap = if tid.is_none() {
            handover_gap(hits[first].bytes)
        } else {
            RUN_GAP_NS
        };
        let first_carries = tid.is_none() && carries_message(r.bytes, hits[first].bytes);
        if r.ts_start_ns.saturating_sub(end) > gap && !first_carries {
            break;
        }
        tid = Some(r.tid);
        phase.add(r);
        end = r.ts_end_ns;
    }
    phase.tid = tid.unwrap_or(hits[first].tid);
    Some(phase)
}

/// The response message's encode (the last protobuf encode), with the result's JSON
/// encodes that precede it without a gap.
fn encode_phase(hits: &[&SerializeRecord], size: Option<u64>) -> Option<Phase> {
    let is_msg = |r: &&SerializeRecord| r.function == SerializeFn::ProtobufEncode;
    let last = size
        .and_then(|n| hits.iter().rposition(|r| is_msg(r) && r.bytes == Some(n)))
        .or_else(|| hits.iter().rposition(is_msg))
        .or_else(|| {
            hits.iter()
                .rposition(|r| r.function == SerializeFn::JsonEncode)
        })?;
    let anchor = hits[last];
    let mut phase = Phase {
        tid: anchor.tid,
        ..Phase::default()
    };
    phase.add(anchor);
    let mut start = anchor.ts_start_ns;
    for r in hits[..last].iter().rev() {
        if r.tid != anchor.tid {
            continue;
        }
        // The first step back may cross the hand-over (a copy of the whole document
        // into the response, which grows with it); the rest are a run.
        let first_step = phase.parts.iter().map(|p| p.calls).sum::<u64>() == 1;
        let gap = if first_step {
            handover_gap(anchor.bytes)
        } else {
            RUN_GAP_NS
        };
        let carries = first_step && carries_message(r.bytes, anchor.bytes);
        if is_decode(r.function) || (start.saturating_sub(r.ts_end_ns) > gap && !carries) {
            break;
        }
        // The result's JSON, or a nested message encoded on its own (an Any).
        phase.add(r);
        start = r.ts_start_ns;
    }
    Some(phase)
}
