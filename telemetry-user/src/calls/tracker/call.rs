//! One call in flight: what is known of it, and the events it becomes.
use super::*;
use crate::events::WorkerSplit;
use std::collections::HashMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum CallId {
    Stream(u32),
    Pipe(i64),
    /// A pipe request without an id: matched in order.
    PipeSeq(u64),
}

pub(super) type Key = (u64, CallId);

pub(super) struct Call {
    pub(super) seq: u64,
    pub(super) conn: Arc<ConnContext>,
    pub(super) id: CallId,
    pub(super) first_seen_ns: u64,
    pub(super) last_seen_ns: u64,
    pub(super) method: Option<Arc<str>>,
    /// Request message parsed, request ended or response seen: start can carry
    /// library/function.
    pub(super) info_ready: bool,
    pub(super) request_parsed: bool,
    pub(super) response_parsed: bool,
    pub(super) t0: Option<u64>,
    pub(super) t1: Option<u64>,
    pub(super) t2: Option<u64>,
    pub(super) t3: Option<u64>,
    /// The server sends the response message (observed when whole; t2 is its HEADERS,
    /// which a worker may send early): the end of the worker window.
    pub(super) t2_message: Option<u64>,
    /// The server side finished sending the response (its END_STREAM's exit).
    pub(super) server_done: Option<u64>,
    /// Server-side request observation seen (pipe FIFO matching).
    pub(super) server_req_seen: bool,
    /// The client side lost frame sync while this call was in flight: its end
    /// will not be seen from there.
    pub(super) client_lost: bool,
    /// The server's writes lost frame sync while this call was in flight: its end may
    /// never be decoded, the client's timed end completes it.
    pub(super) server_lost: bool,
    pub(super) req_bytes: [u64; 2],
    pub(super) resp_bytes: [u64; 2],
    pub(super) resp_msgs: [u64; 2],
    pub(super) python_emitted: u64,
    pub(super) tool_name: Option<Arc<str>>,
    pub(super) session_id: Option<Arc<str>>,
    pub(super) correlation_id: Option<Arc<str>>,
    pub(super) library: Option<Arc<str>>,
    pub(super) function: Option<Arc<str>>,
    pub(super) success: Option<bool>,
    pub(super) error_type: Option<String>,
    pub(super) error_message: Option<String>,
    pub(super) grpc_status: Option<u32>,
    pub(super) grpc_message: Option<String>,
    pub(super) reset: Option<u32>,
    pub(super) worker_tid: Option<u32>,
    /// Request parameters and result JSON, kept only when ML rules need them.
    pub(super) params: Option<HashMap<String, serde_json::Value>>,
    pub(super) result_json: Option<serde_json::Value>,
    /// The worker's GPU memory when the call started (when a GPU is sampled).
    pub(super) gpu_before: Option<crate::gpu::WorkerReading>,
    pub(super) started: bool,
    pub(super) internal: bool,
    pub(super) sampled: bool,
    pub(super) checked_out: bool,
    pub(super) busy_counted: bool,
}

impl Call {
    pub(super) fn new(seq: u64, conn: Arc<ConnContext>, id: CallId, ts: u64) -> Self {
        Call {
            seq,
            conn,
            id,
            first_seen_ns: ts,
            last_seen_ns: ts,
            method: None,
            info_ready: false,
            request_parsed: false,
            response_parsed: false,
            t0: None,
            t1: None,
            t2: None,
            t3: None,
            t2_message: None,
            server_done: None,
            server_req_seen: false,
            client_lost: false,
            server_lost: false,
            req_bytes: [0; 2],
            resp_bytes: [0; 2],
            resp_msgs: [0; 2],
            python_emitted: 0,
            tool_name: None,
            session_id: None,
            correlation_id: None,
            library: None,
            function: None,
            success: None,
            error_type: None,
            error_message: None,
            grpc_status: None,
            grpc_message: None,
            reset: None,
            worker_tid: None,
            params: None,
            result_json: None,
            gpu_before: None,
            started: false,
            internal: false,
            sampled: true,
            checked_out: false,
            busy_counted: false,
        }
    }

    pub(super) fn method_str(&self) -> &str {
        self.method.as_deref().unwrap_or(UNKNOWN_OPERATION)
    }

    pub(super) fn is_streaming(&self) -> bool {
        self.method.as_deref() == Some(Method::ExecuteStreamingTool.as_str())
    }

    /// Puts the four moments in causal order. Sends are timed at their exits, when the
    /// kernel has taken the bytes; on another CPU the peer can read them before the
    /// sender's exit runs. A request was sent no later than the worker had it (t0 <=
    /// t1), a response no later than the BEAM had read all of it (t2 and the worker's
    /// end <= t3).
    pub(super) fn order_moments(&mut self) {
        if let (Some(t0), Some(t1)) = (self.t0, self.t1) {
            self.t0 = Some(t0.min(t1));
        }
        if let Some(t3) = self.t3 {
            for v in [&mut self.t2, &mut self.t2_message, &mut self.server_done]
                .into_iter()
                .flatten()
            {
                *v = (*v).min(t3);
            }
        }
    }

    /// Start of the call as best known: t0, else the worker's receipt, else first sight.
    pub(super) fn start_ns(&self) -> u64 {
        self.t0.or(self.t1).unwrap_or(self.first_seen_ns)
    }
}

pub(super) fn side_idx(s: Side) -> usize {
    match s {
        Side::Beam => 0,
        Side::Worker => 1,
    }
}

pub(super) fn client_side(role: CallRole) -> Side {
    match role {
        CallRole::WorkerCallsBeam => Side::Worker,
        CallRole::BeamCallsWorker | CallRole::Pipe => Side::Beam,
    }
}

/// The calls the schema counts as user calls; everything else is internal.
pub fn is_user_operation(op: &str) -> bool {
    matches!(
        op,
        "ExecuteTool" | "ExecuteStreamingTool" | "ExecuteElixirTool" | PIPE_OPERATION
    )
}

pub(super) fn carries_tool_request(op: &str) -> bool {
    matches!(
        op,
        "ExecuteTool" | "ExecuteStreamingTool" | "ExecuteElixirTool"
    )
}

/// gRPC status code names (grpc/doc/statuscodes.md).
pub fn grpc_status_name(code: u32) -> String {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    NAMES
        .get(code as usize)
        .map(|s| s.to_string())
        .unwrap_or_else(|| format!("STATUS_{code}"))
}

/// How a call ended, for the event.
pub(super) enum Outcome {
    Ok,
    /// Completed, the tool reported failure.
    Error,
    /// Completed without an error status, but its response message was lost in
    /// decoding (frame sync lost in the worker's writes): whether the tool succeeded
    /// is not known.
    Unknown,
    /// `[:snakepit, :call, :exception]`.
    Exception {
        kind: &'static str,
        error_type: String,
        reason: String,
    },
}

pub(super) fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

pub(super) fn request_headers_seen(call: &mut Call, is_client: bool, obs: &Observation) {
    if is_client {
        call.t0.get_or_insert(obs.ts_enter_ns);
    } else if call.worker_tid.is_none() {
        call.worker_tid = Some(obs.tid);
    }
}

pub(super) fn response_headers_seen(call: &mut Call, is_client: bool, obs: &Observation) {
    call.info_ready = true;
    if !is_client {
        call.t2.get_or_insert(obs.ts_enter_ns);
    }
    if call.method.is_none() {
        call.method = Some(UNKNOWN_OPERATION.into());
    }
}

pub(super) fn outcome(call: &Call, exit: Option<String>) -> Outcome {
    if let Some(reason) = exit {
        return Outcome::Exception {
            kind: "exit",
            error_type: ERROR_EXIT.to_string(),
            reason,
        };
    }
    if let Some(s) = call.grpc_status.filter(|s| *s != 0) {
        let name = grpc_status_name(s);
        // Streaming tools put the tool's error JSON in grpc-message.
        let reason = call.grpc_message.clone().unwrap_or_else(|| name.clone());
        return Outcome::Exception {
            kind: "error",
            error_type: name,
            reason,
        };
    }
    if let Some(code) = call.reset {
        return Outcome::Exception {
            kind: "error",
            error_type: ERROR_RESET.to_string(),
            reason: format!("RST_STREAM error code {code}"),
        };
    }
    match call.success {
        Some(false) => Outcome::Error,
        None if call.server_lost && expects_success(call) => Outcome::Unknown,
        _ => Outcome::Ok,
    }
}

/// Whether the call's response message says if the tool succeeded (`success`):
/// ExecuteTool's does (streaming tools fail by their status).
fn expects_success(call: &Call) -> bool {
    !call.internal && call.method.as_deref() == Some(Method::ExecuteTool.as_str())
}

/// t3-t0 when the BEAM side saw both ends, else t2-t1 once the worker side finished, else
/// from the best known start to `end`.
pub(super) fn duration(call: &Call, end: u64) -> u64 {
    match (call.t0, call.t1, call.t2, call.t3) {
        (Some(t0), _, _, Some(t3)) => t3.saturating_sub(t0),
        (_, Some(t1), Some(t2), None) if call.server_done.is_some() => t2.saturating_sub(t1),
        _ => end.saturating_sub(call.start_ns()),
    }
}

/// What every event of this call says about it.
pub(super) fn call_record(call: &Call) -> CallRecord {
    let conn = &call.conn;
    CallRecord {
        operation: call
            .method
            .clone()
            .unwrap_or_else(|| UNKNOWN_OPERATION.into()),
        library: call.library.clone(),
        function: call.function.clone(),
        tool: call.tool_name.clone(),
        session_id: call.session_id.clone(),
        correlation_id: call.correlation_id.clone(),
        pool: conn.pool.clone(),
        worker_id: conn.worker_id.clone(),
        beam_pid: conn.beam_pid,
        worker_pid: conn.worker_pid,
        worker_tid: call.worker_tid,
        conn_id: conn.conn_id,
        id: match call.id {
            CallId::Stream(s) => CallRef::Stream(s),
            CallId::Pipe(i) => CallRef::Pipe(i),
            CallId::PipeSeq(_) => CallRef::PipeSeq,
        },
        internal: call.internal,
    }
}

/// The call's record, built on first use.
pub(super) fn shared_record(slot: &mut Option<Arc<CallRecord>>, call: &Call) -> Arc<CallRecord> {
    slot.get_or_insert_with(|| Arc::new(call_record(call)))
        .clone()
}

/// `call.stop` / `call.exception` of a completed call.
pub(super) fn call_end(
    call: &Call,
    outcome: &Outcome,
    record: Arc<CallRecord>,
    t_end: u64,
    duration: u64,
    split: Option<WorkerSplit>,
) -> CallEnd {
    let outcome = match outcome {
        Outcome::Ok => CallOutcome::Ok,
        Outcome::Unknown => CallOutcome::Unknown,
        Outcome::Error => CallOutcome::Error {
            error_type: call.error_type.clone(),
            error_message: call.error_message.clone(),
        },
        Outcome::Exception {
            kind,
            error_type,
            reason,
        } => CallOutcome::Exception {
            kind,
            error_type: error_type.clone(),
            reason: reason.clone(),
        },
    };
    CallEnd {
        time_unix_nano: t_end,
        call: record,
        outcome,
        duration,
        request_bytes: call.req_bytes[0].max(call.req_bytes[1]),
        response_bytes: call.resp_bytes[0].max(call.resp_bytes[1]),
        queue_time: match (call.t0, call.t1) {
            (Some(t0), Some(t1)) => Some(t1.saturating_sub(t0)),
            _ => None,
        },
        python_time: match (&split, call.t1, call.t2) {
            // The tool's own time: the worker window less its (de)serialization.
            (Some(s), _, _) if s.deserialize.is_some() || s.serialize.is_some() => {
                let ser =
                    |x: &Option<crate::events::SerializeSplit>| x.as_ref().map_or(0, |p| p.time);
                Some(
                    s.worker_time
                        .saturating_sub(ser(&s.deserialize))
                        .saturating_sub(ser(&s.serialize)),
                )
            }
            (_, Some(t1), Some(t2)) => Some(t2.saturating_sub(t1)),
            _ => None,
        },
        chunks: call
            .is_streaming()
            .then(|| call.resp_msgs[0].max(call.resp_msgs[1])),
        grpc_status: call.grpc_status,
        split: split.map(Box::new),
        profile: None,
    }
}

/// The worker window `[t1, t2]` of a gRPC call that ended at `end_ns`, split (None for
/// pipe calls and calls whose window was not seen or fell outside the split's
/// recording windows, or when nothing of the worker's inside was recorded).
pub(super) fn worker_split(
    call: &Call,
    end_ns: u64,
    activity: &crate::worker_time::WorkerActivity,
) -> Option<WorkerSplit> {
    if !matches!(call.id, CallId::Stream(_)) || call.conn.role != CallRole::BeamCallsWorker {
        return None;
    }
    tracing::trace!(
        t1 = ?call.t1,
        t2 = ?call.t2,
        t2_message = ?call.t2_message,
        server_done = ?call.server_done,
        "worker window"
    );
    let t1 = call.t1?;
    // A response message too large to be decoded from the copied prefix has no
    // t2_message: the end of the response (its END_STREAM's exit) bounds the window.
    // Where neither was seen in the worker's writes (frame sync lost in a huge
    // response), its first write (t2) can be the headers, sent before the tool ran:
    // the call's end (the BEAM's read of it) bounds the window then.
    let t2 = call
        .t2_message
        .or(call.server_done)
        .or_else(|| Some(call.t2?.max(end_ns)))?;
    if t2 <= t1 || !activity.recorded(t1, t2) {
        return None;
    }
    // Unary: one message each way, its length is the bytes less the 5-byte prefix.
    let unary = |msgs: u64, bytes: u64| (msgs <= 1 && bytes >= 5).then(|| bytes - 5);
    let sizes = crate::worker_time::MessageSizes {
        request: unary(1, call.req_bytes[0].max(call.req_bytes[1])),
        response: (!call.is_streaming())
            .then(|| {
                unary(
                    call.resp_msgs[1].max(call.resp_msgs[0]),
                    call.resp_bytes[0].max(call.resp_bytes[1]),
                )
            })
            .flatten(),
    };
    let split = activity.split(call.conn.worker_pid, call.worker_tid, t1, t2, sizes);
    (split.sched.is_some() || split.deserialize.is_some() || split.serialize.is_some())
        .then_some(split)
}

/// `[:snakepit, :serialize, :stop]` per direction and format of a call's split.
pub(super) fn serialize_events(
    split: &WorkerSplit,
    record: &Arc<CallRecord>,
    unix: impl Fn(u64) -> u64,
    t1: Option<u64>,
) -> Vec<crate::events::SerializeStop> {
    let at = unix(t1.unwrap_or(0) + split.worker_time);
    let mut out = Vec::new();
    for (direction, phase) in [("decode", &split.deserialize), ("encode", &split.serialize)] {
        for part in phase.iter().flat_map(|p| p.parts.iter()) {
            out.push(crate::events::SerializeStop {
                time_unix_nano: at,
                call: record.clone(),
                duration: part.time,
                bytes: part.bytes,
                direction,
                format: part.format,
                calls: part.calls,
            });
        }
    }
    out
}

pub(super) fn checkout_event(call: &Call, cfg: &TrackerConfig) -> PoolCheckout {
    let at = call.t1.unwrap_or(call.start_ns());
    PoolCheckout {
        time_unix_nano: cfg.clock.to_unix(at),
        pool: call.conn.pool.clone(),
        worker_id: call.conn.worker_id.clone(),
        worker_pid: call.conn.worker_pid,
        correlation_id: call.correlation_id.clone(),
        queue_time: match (call.t0, call.t1) {
            (Some(t0), Some(t1)) => Some(t1.saturating_sub(t0)),
            _ => None,
        },
    }
}
