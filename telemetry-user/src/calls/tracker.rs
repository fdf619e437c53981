//! The call tracker: matches requests to responses per connection and stream (or
//! pipe request id), takes the four kernel-visible moments of each call from the
//! side and flow that sees them, and publishes the design's call, pool, worker,
//! circuit-breaker and health events.
//!
//! Moments (client = the RPC's caller, the BEAM except on callback connections):
//! t0 client starts sending the request (enter of the syscall carrying its HEADERS),
//! t1 server has read all of it (exit of the syscall carrying its END_STREAM),
//! t2 server starts sending the response (enter, response HEADERS),
//! t3 client has read all of it (exit, trailers' END_STREAM).
use super::config::TrackerConfig;
use super::input::{CallRole, ConnContext, Flow, FrameEnd, Lifecycle, Observation, Observed, Side};
use super::pools::Pools;
use crate::events::{
    AgentEvent, Bus, CallEnd, CallOutcome, CallRecord, CallRef, CallStart, Event, PoolCheckin,
    PoolCheckout, WorkerCrash,
};
use crate::wire::grpc::GrpcMessage;
use crate::wire::snakepit::{self as sp, Direction, Method};
use serde::Serialize;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;

/// Prefix of re-emitted Python-side events (`["snakepit","python",...]`).
pub use crate::events::schema::PYTHON_PREFIX;
/// `operation` of `{packet,4}` pipe calls.
pub const PIPE_OPERATION: &str = "pipe";
/// `operation` when neither `:path` nor the request message tells the method.
pub const UNKNOWN_OPERATION: &str = "unknown";
/// `error_type` of calls ended by RST_STREAM, and of calls cut by a worker's death.
pub const ERROR_RESET: &str = "reset";
pub const ERROR_EXIT: &str = "exit";

/// Completed-call ids remembered per connection, so a late observation of a call
/// (e.g. the other side's copy of a reset) does not start a phantom call.
const RECENT_PER_CONN: usize = 256;

/// Counters: never thinned by sampling.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TrackerStats {
    pub observations: u64,
    /// Calls whose method was decided (user and internal).
    pub calls_started: u64,
    /// Calls ended by a stop or an exception (user and internal).
    pub calls_completed: u64,
    pub calls_ok: u64,
    /// Stops with `result: error` (tool failed, gRPC status OK).
    pub calls_error: u64,
    /// Calls ended as exceptions (non-zero grpc-status, reset, exit).
    pub exceptions: u64,
    /// Internal RPCs (Heartbeat, Ping, session callbacks, telemetry stream).
    pub internal_calls: u64,
    /// Calls whose method neither `:path` nor the message told.
    pub unknown_methods: u64,
    /// Completed from the worker side alone (BEAM side not seen or lost).
    pub worker_only_completions: u64,
    /// In-flight calls dropped to keep memory bounded.
    pub evicted: u64,
    /// In-flight calls dropped after `stale_call_s` without an observation.
    pub stale: u64,
    /// Response-flow observations of calls never seen starting (joined mid-call).
    pub unmatched_responses: u64,
    /// Observations of calls already completed.
    pub late_observations: u64,
    /// Per-call events not published because of `sample_rate`.
    pub sampled_out: u64,
    pub python_events: u64,
    pub worker_crashes: u64,
    pub circuit_breaker_opens: u64,
    pub health_alerts: u64,
    /// Calls in flight now.
    pub in_flight: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum CallId {
    Stream(u32),
    Pipe(i64),
    /// A pipe request without an id: matched in order.
    PipeSeq(u64),
}

type Key = (u64, CallId);

/// How an observation may relate to an unknown call.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Create {
    /// Only an existing call (response flow, resets).
    Never,
    /// Start one unless the id was recently completed.
    IfNew,
    /// Always a new call when none is in flight (the client sends a new request).
    Fresh,
}

struct ConnState {
    seen_client: bool,
    in_flight: BTreeMap<u64, CallId>,
    recent: VecDeque<CallId>,
    recent_set: HashSet<CallId>,
    pipe_seq: u64,
}

impl ConnState {
    fn new() -> Self {
        ConnState {
            seen_client: false,
            in_flight: BTreeMap::new(),
            recent: VecDeque::new(),
            recent_set: HashSet::new(),
            pipe_seq: 0,
        }
    }

    fn remember(&mut self, id: CallId) {
        if self.recent_set.insert(id) {
            self.recent.push_back(id);
        }
        while self.recent.len() > RECENT_PER_CONN {
            if let Some(old) = self.recent.pop_front() {
                self.recent_set.remove(&old);
            }
        }
    }

    fn forget(&mut self, id: CallId) {
        if self.recent_set.remove(&id) {
            self.recent.retain(|x| *x != id);
        }
    }
}

struct Call {
    seq: u64,
    conn: Arc<ConnContext>,
    id: CallId,
    first_seen_ns: u64,
    last_seen_ns: u64,
    method: Option<String>,
    /// Request message parsed, request ended or response seen: start can carry
    /// library/function.
    info_ready: bool,
    request_parsed: bool,
    response_parsed: bool,
    t0: Option<u64>,
    t1: Option<u64>,
    t2: Option<u64>,
    t3: Option<u64>,
    /// The server side finished sending the response (its END_STREAM's exit).
    server_done: Option<u64>,
    /// Server-side request observation seen (pipe FIFO matching).
    server_req_seen: bool,
    /// The client side lost frame sync while this call was in flight: its end
    /// will not be seen from there.
    client_lost: bool,
    req_bytes: [u64; 2],
    resp_bytes: [u64; 2],
    resp_msgs: [u64; 2],
    python_emitted: u64,
    tool_name: Option<String>,
    session_id: Option<String>,
    correlation_id: Option<String>,
    library: Option<String>,
    function: Option<String>,
    success: Option<bool>,
    error_type: Option<String>,
    error_message: Option<String>,
    grpc_status: Option<u32>,
    grpc_message: Option<String>,
    reset: Option<u32>,
    worker_tid: Option<u32>,
    /// Request parameters and result JSON, kept only when ML rules need them.
    params: Option<HashMap<String, serde_json::Value>>,
    result_json: Option<serde_json::Value>,
    /// The worker's GPU memory when the call started (when a GPU is sampled).
    gpu_before: Option<crate::gpu::WorkerReading>,
    started: bool,
    internal: bool,
    sampled: bool,
    checked_out: bool,
    busy_counted: bool,
}

impl Call {
    fn new(seq: u64, conn: Arc<ConnContext>, id: CallId, ts: u64) -> Self {
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
            server_done: None,
            server_req_seen: false,
            client_lost: false,
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

    fn method_str(&self) -> &str {
        self.method.as_deref().unwrap_or(UNKNOWN_OPERATION)
    }

    fn is_streaming(&self) -> bool {
        self.method.as_deref() == Some(Method::ExecuteStreamingTool.as_str())
    }

    /// Start of the call as best known: t0, else the worker's receipt, else first sight.
    fn start_ns(&self) -> u64 {
        self.t0.or(self.t1).unwrap_or(self.first_seen_ns)
    }
}

fn side_idx(s: Side) -> usize {
    match s {
        Side::Beam => 0,
        Side::Worker => 1,
    }
}

fn client_side(role: CallRole) -> Side {
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

fn carries_tool_request(op: &str) -> bool {
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
enum Outcome {
    Ok,
    /// Completed, the tool reported failure.
    Error,
    /// `[:snakepit, :call, :exception]`.
    Exception {
        kind: &'static str,
        error_type: String,
        reason: String,
    },
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

pub struct CallTracker {
    cfg: TrackerConfig,
    bus: Bus,
    /// GPU memory per worker: long calls get before/after figures.
    gpu: Option<crate::gpu::GpuHandle>,
    conns: HashMap<u64, ConnState>,
    calls: HashMap<Key, Call>,
    /// Every in-flight call by creation order, for eviction of the oldest.
    order: BTreeMap<u64, Key>,
    next_seq: u64,
    pools: Pools,
    stats: TrackerStats,
}

impl CallTracker {
    pub fn new(cfg: TrackerConfig, bus: Bus) -> Self {
        let pools = Pools::new(&cfg);
        CallTracker {
            cfg,
            bus,
            gpu: None,
            conns: HashMap::new(),
            calls: HashMap::new(),
            order: BTreeMap::new(),
            next_seq: 0,
            pools,
            stats: TrackerStats::default(),
        }
    }

    /// Long calls (`[gpu] long_call_threshold_ms`) report the worker's GPU memory
    /// before and after them (`[:snakepit, :memory, :gpu_call]`).
    pub fn set_gpu(&mut self, gpu: crate::gpu::GpuHandle) {
        self.gpu = Some(gpu);
    }

    pub fn config(&self) -> &TrackerConfig {
        &self.cfg
    }

    pub fn stats(&self) -> TrackerStats {
        let mut s = self.stats.clone();
        s.in_flight = self.calls.len() as u64;
        s
    }

    fn publish(&self, ev: impl Into<AgentEvent>) {
        self.bus.publish(ev);
    }

    fn unix(&self, mono_ns: u64) -> u64 {
        self.cfg.clock.to_unix(mono_ns)
    }

    // -----------------------------------------------------------------------
    // Observations

    pub fn observe(&mut self, obs: Observation) {
        self.stats.observations += 1;
        let conn = obs.conn.clone();
        let conn_id = conn.conn_id;
        let is_client = obs.side == client_side(conn.role);
        let now = obs.ts_exit_ns.max(obs.ts_enter_ns);
        self.note_worker(&conn, now);
        {
            let cs = self.conns.entry(conn_id).or_insert_with(ConnState::new);
            if is_client {
                cs.seen_client = true;
            }
        }
        let si = side_idx(obs.side);
        match &obs.what {
            Observed::Headers {
                flow,
                stream_id,
                metadata,
                ..
            } => {
                let create = header_create(*flow, is_client);
                let Some(key) = self.lookup(&conn, CallId::Stream(*stream_id), create, now) else {
                    return;
                };
                let Some(call) = self.calls.get_mut(&key) else {
                    return;
                };
                call.last_seen_ns = now;
                match flow {
                    Flow::Request => {
                        request_headers_seen(call, is_client, &obs);
                        if call.method.is_none() {
                            if let Some(path) = &metadata.path {
                                call.method = Some(match Method::from_path(path) {
                                    Some(m) => m.as_str().to_string(),
                                    None => metadata.method.clone().unwrap_or_else(|| path.clone()),
                                });
                            }
                        }
                    }
                    Flow::Response => {
                        response_headers_seen(call, is_client, &obs);
                        if let Some(s) = metadata.grpc_status {
                            call.grpc_status = Some(s);
                            if metadata.grpc_message.is_some() {
                                call.grpc_message = metadata.grpc_message.clone();
                            }
                        }
                    }
                }
                if call.correlation_id.is_none() {
                    call.correlation_id = metadata.correlation_id.clone();
                }
                self.progress(key);
            }
            Observed::HeadersLost {
                flow, stream_id, ..
            } => {
                let create = header_create(*flow, is_client);
                let Some(key) = self.lookup(&conn, CallId::Stream(*stream_id), create, now) else {
                    return;
                };
                let Some(call) = self.calls.get_mut(&key) else {
                    return;
                };
                call.last_seen_ns = now;
                match flow {
                    Flow::Request => request_headers_seen(call, is_client, &obs),
                    Flow::Response => response_headers_seen(call, is_client, &obs),
                }
                self.progress(key);
            }
            Observed::Message {
                flow,
                stream_id,
                message,
            } => {
                let create = match flow {
                    Flow::Request => Create::IfNew,
                    Flow::Response => Create::Never,
                };
                let Some(key) = self.lookup(&conn, CallId::Stream(*stream_id), create, now) else {
                    return;
                };
                match flow {
                    Flow::Request => self.request_message(key, si, message, now),
                    Flow::Response => self.response_message(key, si, is_client, message, &obs),
                }
                self.progress(key);
            }
            Observed::EndStream { flow, stream_id } => {
                let create = match flow {
                    Flow::Request => Create::IfNew,
                    Flow::Response => Create::Never,
                };
                let Some(key) = self.lookup(&conn, CallId::Stream(*stream_id), create, now) else {
                    return;
                };
                match flow {
                    Flow::Request => {
                        if let Some(call) = self.calls.get_mut(&key) {
                            call.last_seen_ns = now;
                            call.info_ready = true;
                            if !is_client {
                                call.t1.get_or_insert(obs.ts_exit_ns);
                                call.worker_tid = Some(obs.tid);
                            }
                            if call.method.is_none() {
                                call.method = Some(UNKNOWN_OPERATION.to_string());
                            }
                        }
                        self.progress(key);
                    }
                    Flow::Response => self.response_end(key, is_client, &obs),
                }
            }
            Observed::Reset {
                stream_id, code, ..
            } => {
                let Some(key) = self.lookup(&conn, CallId::Stream(*stream_id), Create::Never, now)
                else {
                    return;
                };
                let Some(call) = self.calls.get_mut(&key) else {
                    return;
                };
                // RST_STREAM(NO_ERROR) after a full response only cancels the
                // unfinished request half: the call itself succeeded.
                if !(*code == 0 && (call.server_done.is_some() || call.t3.is_some())) {
                    call.reset = Some(*code);
                }
                let end = call.t3.or(call.server_done).unwrap_or(obs.ts_exit_ns);
                self.complete(key, end, None);
            }
            Observed::SyncLost { .. } => {
                if is_client {
                    // Calls in flight now get no client end; those the server side
                    // already finished complete at once. Later calls are unaffected:
                    // the decoder resynchronises on frame boundaries.
                    let mut done = Vec::new();
                    for (k, c) in self.calls.iter_mut().filter(|(k, _)| k.0 == conn_id) {
                        c.client_lost = true;
                        if let Some(t) = c.server_done {
                            done.push((c.seq, *k, t));
                        }
                    }
                    done.sort_unstable_by_key(|d| d.0);
                    let done: Vec<(Key, u64)> = done.into_iter().map(|(_, k, t)| (k, t)).collect();
                    for (k, t) in done {
                        self.stats.worker_only_completions += 1;
                        self.complete(k, t, None);
                    }
                }
            }
            Observed::Timing {
                flow,
                stream_id,
                end,
            } => {
                let ended = matches!(
                    end,
                    FrameEnd::Stream | FrameEnd::Headers { end_stream: true }
                );
                // A response read before anything of its call was decoded cannot
                // be placed; the worker-only grace ends such a call instead.
                let create = match flow {
                    Flow::Request => Create::IfNew,
                    Flow::Response => Create::Never,
                };
                let Some(key) = self.lookup(&conn, CallId::Stream(*stream_id), create, now) else {
                    return;
                };
                let Some(call) = self.calls.get_mut(&key) else {
                    return;
                };
                call.last_seen_ns = now;
                if let FrameEnd::Message { len } = end {
                    // Sizes count from whichever side saw the message whole (the
                    // sender's own copy may have lost a huge message's boundaries).
                    let framed = *len as u64 + 5;
                    match flow {
                        Flow::Request => call.req_bytes[si] += framed,
                        Flow::Response => {
                            call.resp_bytes[si] += framed;
                            call.resp_msgs[si] += 1;
                        }
                    }
                    return;
                }
                match (flow, is_client) {
                    (Flow::Request, false) => {
                        call.worker_tid.get_or_insert(obs.tid);
                        if ended {
                            call.t1.get_or_insert(obs.ts_exit_ns);
                            call.worker_tid = Some(obs.tid);
                        }
                        self.progress(key);
                    }
                    (Flow::Response, true) if ended => {
                        call.t3 = Some(obs.ts_exit_ns);
                        // The decoding side (the server's writes) may still be on its
                        // way: the call completes when both ends are known.
                        if call.server_done.is_some() {
                            self.progress(key);
                            self.complete(key, obs.ts_exit_ns, None);
                        }
                    }
                    _ => {}
                }
            }
            Observed::PipeRequest {
                id,
                command,
                args,
                len,
            } => {
                let Some(key) = self.pipe_request_key(&conn, *id, is_client, now) else {
                    return;
                };
                let Some(call) = self.calls.get_mut(&key) else {
                    return;
                };
                call.last_seen_ns = now;
                call.info_ready = true;
                call.request_parsed = true;
                call.method = Some(PIPE_OPERATION.to_string());
                call.req_bytes[si] = call.req_bytes[si].max(*len as u64);
                if is_client {
                    call.t0.get_or_insert(obs.ts_enter_ns);
                } else {
                    call.server_req_seen = true;
                    call.t1.get_or_insert(obs.ts_exit_ns);
                    call.worker_tid = Some(obs.tid);
                }
                if call.tool_name.is_none() {
                    call.tool_name = command.clone();
                    call.function = command.clone();
                    call.library = call.conn.adapter.clone();
                }
                if call.session_id.is_none() {
                    call.session_id = args
                        .as_ref()
                        .and_then(|a| a.get("session_id"))
                        .and_then(Value::as_str)
                        .map(str::to_string);
                }
                if call.correlation_id.is_none() {
                    call.correlation_id = id.map(|i| i.to_string());
                }
                self.progress(key);
            }
            Observed::PipeResponse {
                id,
                success,
                error_type,
                error_message,
                len,
            } => {
                let Some(key) = self.pipe_response_key(&conn, *id, is_client, now) else {
                    return;
                };
                let Some(call) = self.calls.get_mut(&key) else {
                    return;
                };
                call.last_seen_ns = now;
                call.resp_bytes[si] = call.resp_bytes[si].max(*len as u64);
                if success.is_some() {
                    call.success = *success;
                }
                if error_type.is_some() {
                    call.error_type = error_type.clone();
                }
                if error_message.is_some() {
                    call.error_message = error_message.clone();
                }
                if is_client {
                    call.t3 = Some(obs.ts_exit_ns);
                    self.progress(key);
                    self.complete(key, obs.ts_exit_ns, None);
                } else {
                    call.t2.get_or_insert(obs.ts_enter_ns);
                    call.server_done = Some(obs.ts_exit_ns);
                    self.progress(key);
                    self.maybe_worker_only(key, obs.ts_exit_ns);
                }
            }
        }
    }

    fn request_message(&mut self, key: Key, si: usize, message: &GrpcMessage, now: u64) {
        let role = key_role(&self.calls, &key);
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        call.last_seen_ns = now;
        call.req_bytes[si] += message.len as u64 + 5;
        // Both sides see the same message: parse the first copy only.
        if call.request_parsed || message.compressed {
            call.info_ready = true;
            return;
        }
        let data_known = !message.data.is_empty() || message.len == 0;
        if !data_known {
            return;
        }
        call.request_parsed = true;
        call.info_ready = true;
        if call.method.is_none() {
            let guess = sp::identify_method(Direction::Request, &message.data).map(|m| {
                // Same shapes both ways: the connection's direction tells them apart.
                if role == Some(CallRole::WorkerCallsBeam) && m == Method::ExecuteTool {
                    Method::ExecuteElixirTool
                } else {
                    m
                }
            });
            call.method = Some(
                guess
                    .map(|m| m.as_str().to_string())
                    .unwrap_or_else(|| UNKNOWN_OPERATION.to_string()),
            );
        }
        if carries_tool_request(call.method_str()) {
            if let Ok(p) = sp::decode_execute_tool_request(&message.data) {
                let req = p.msg;
                if !req.session_id.is_empty() {
                    call.session_id = Some(req.session_id.clone());
                }
                if !req.tool_name.is_empty() {
                    call.tool_name = Some(req.tool_name.clone());
                }
                if call.correlation_id.is_none() {
                    call.correlation_id = req.metadata.get("correlation_id").cloned();
                }
                if !self.cfg.ml_rules.is_empty() {
                    call.params = Some(sp::parameters_json(&req));
                }
                match sp::snakebridge_call(&req) {
                    Some(sb) => {
                        call.library = sb.library;
                        call.function = sb.function;
                    }
                    None => {
                        call.library = call.conn.adapter.clone();
                        call.function = call.tool_name.clone();
                    }
                }
            }
        } else if call.method_str() == Method::Heartbeat.as_str() {
            if let Ok(p) = sp::decode_prefix::<sp::HeartbeatRequest>(&message.data) {
                if !p.msg.session_id.is_empty() {
                    call.session_id = Some(p.msg.session_id);
                }
            }
        }
    }

    fn response_message(
        &mut self,
        key: Key,
        si: usize,
        is_client: bool,
        message: &GrpcMessage,
        obs: &Observation,
    ) {
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        call.last_seen_ns = obs.ts_exit_ns;
        call.info_ready = true;
        call.resp_bytes[si] += message.len as u64 + 5;
        call.resp_msgs[si] += 1;
        if !is_client {
            // Response HEADERS lost: the first message's send is the next best t2.
            call.t2.get_or_insert(obs.ts_enter_ns);
        }
        if call.method.is_none() {
            call.method = Some(UNKNOWN_OPERATION.to_string());
        }
        let method = call.method_str().to_string();
        if method == Method::StreamTelemetry.as_str() {
            // Each side sees each event once: publish the n-th event on its first sight.
            if call.resp_msgs[si] > call.python_emitted {
                call.python_emitted = call.resp_msgs[si];
                let conn = call.conn.clone();
                self.python_event(&conn, message, obs.ts_exit_ns);
            }
            return;
        }
        if call.response_parsed || message.compressed || !carries_tool_request(&method) {
            return;
        }
        if method == Method::ExecuteStreamingTool.as_str() {
            return;
        }
        if message.data.is_empty() && message.len > 0 {
            return;
        }
        if let Ok(p) = sp::decode_execute_tool_response(&message.data) {
            call.response_parsed = true;
            // proto3 omits false: a captured body without field 1 means failure.
            call.success = Some(p.msg.success);
            if !self.cfg.ml_rules.is_empty() {
                call.result_json = p.msg.result.as_ref().and_then(sp::param_json);
            }
            if !p.msg.success && !p.msg.error_message.is_empty() {
                let err = sp::parse_tool_error(&p.msg.error_message);
                call.error_type = err.error_type;
                call.error_message = err.message.or(Some(p.msg.error_message.clone()));
            }
            if call.correlation_id.is_none() {
                call.correlation_id = p.msg.metadata.get("correlation_id").cloned();
            }
        }
    }

    fn response_end(&mut self, key: Key, is_client: bool, obs: &Observation) {
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        call.last_seen_ns = obs.ts_exit_ns;
        call.info_ready = true;
        if call.method.is_none() {
            call.method = Some(UNKNOWN_OPERATION.to_string());
        }
        if is_client {
            call.t3 = Some(obs.ts_exit_ns);
            self.progress(key);
            self.complete(key, obs.ts_exit_ns, None);
        } else {
            call.server_done = Some(obs.ts_exit_ns);
            self.progress(key);
            // The client's read of the end was timed first (decode-once): done now.
            if let Some(t3) = self.calls.get(&key).and_then(|c| c.t3) {
                self.complete(key, t3, None);
                return;
            }
            self.maybe_worker_only(key, obs.ts_exit_ns);
        }
    }

    /// Completes a call the server side finished when the client side cannot end it.
    fn maybe_worker_only(&mut self, key: Key, end: u64) {
        let seen_client = self.conns.get(&key.0).is_some_and(|c| c.seen_client);
        let lost = self.calls.get(&key).is_some_and(|c| c.client_lost);
        if !seen_client || lost {
            self.stats.worker_only_completions += 1;
            self.complete(key, end, None);
        }
    }

    fn python_event(&mut self, conn: &ConnContext, message: &GrpcMessage, ts: u64) {
        let Ok(p) = sp::decode_prefix::<sp::TelemetryEvent>(&message.data) else {
            return;
        };
        let te = p.msg;
        let mut name: Vec<&str> = PYTHON_PREFIX.to_vec();
        let parts: Vec<&str> = te.event_parts.iter().map(String::as_str).collect();
        let rest = match parts.first() {
            Some(&"python") => &parts[1..],
            _ => &parts[..],
        };
        name.extend(rest);
        if rest.is_empty() {
            name.push("event");
        }
        let time = if te.timestamp_ns > 0 {
            te.timestamp_ns as u64
        } else {
            self.unix(ts)
        };
        let mut ev = Event::new(&name).at(time);
        for (k, v) in &te.measurements {
            use sp::telemetry_value::Value as TV;
            ev = match &v.value {
                Some(TV::IntValue(i)) => ev.measure(k, *i),
                Some(TV::FloatValue(f)) => ev.measure(k, *f),
                Some(TV::StringValue(s)) => ev.meta(k, s.clone()),
                None => ev,
            };
        }
        for (k, v) in &te.metadata {
            ev = ev.meta(k, v.clone());
        }
        ev = ev
            .meta("pool", conn.pool.clone())
            .meta("worker_id", conn.worker_id.clone())
            .meta("worker_pid", conn.worker_pid)
            .meta_opt(
                "correlation_id",
                (!te.correlation_id.is_empty()).then_some(te.correlation_id),
            );
        self.stats.python_events += 1;
        let design = super::ml::from_python(rest, &ev);
        self.publish(ev);
        if let Some(design) = design {
            self.publish(design);
        }
    }

    // -----------------------------------------------------------------------
    // Call table

    fn lookup(
        &mut self,
        conn: &Arc<ConnContext>,
        id: CallId,
        create: Create,
        now: u64,
    ) -> Option<Key> {
        let key = (conn.conn_id, id);
        if self.calls.contains_key(&key) {
            return Some(key);
        }
        let cs = self
            .conns
            .entry(conn.conn_id)
            .or_insert_with(ConnState::new);
        match create {
            Create::Never => {
                if cs.recent_set.contains(&id) {
                    self.stats.late_observations += 1;
                } else {
                    self.stats.unmatched_responses += 1;
                }
                return None;
            }
            Create::IfNew if cs.recent_set.contains(&id) => {
                self.stats.late_observations += 1;
                return None;
            }
            Create::IfNew => {}
            Create::Fresh => cs.forget(id),
        }
        self.create(conn, id, now);
        Some(key)
    }

    fn create(&mut self, conn: &Arc<ConnContext>, id: CallId, now: u64) {
        let conn_id = conn.conn_id;
        let per_conn = self
            .conns
            .get(&conn_id)
            .map(|c| c.in_flight.len())
            .unwrap_or(0);
        if per_conn >= self.cfg.max_in_flight_per_conn.max(1) {
            let oldest = self
                .conns
                .get(&conn_id)
                .and_then(|c| c.in_flight.values().next().copied());
            if let Some(old) = oldest {
                self.drop_call((conn_id, old), false);
            }
        }
        if self.calls.len() >= self.cfg.max_in_flight.max(1) {
            if let Some(old) = self.order.values().next().copied() {
                self.drop_call(old, false);
            }
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let key = (conn_id, id);
        self.calls
            .insert(key, Call::new(seq, conn.clone(), id, now));
        self.order.insert(seq, key);
        self.conns
            .entry(conn_id)
            .or_insert_with(ConnState::new)
            .in_flight
            .insert(seq, id);
    }

    /// Removes a call from every index; returns it.
    fn take(&mut self, key: Key) -> Option<Call> {
        let call = self.calls.remove(&key)?;
        self.order.remove(&call.seq);
        if let Some(cs) = self.conns.get_mut(&key.0) {
            cs.in_flight.remove(&call.seq);
            cs.remember(key.1);
        }
        if call.busy_counted {
            let now = call.last_seen_ns;
            let events = self.pools.call_ended(&call.conn, now);
            for ev in events {
                self.publish(ev);
            }
        }
        Some(call)
    }

    /// Drops a call without an event (memory bound or stale).
    fn drop_call(&mut self, key: Key, stale: bool) {
        if self.take(key).is_some() {
            if stale {
                self.stats.stale += 1;
            } else {
                self.stats.evicted += 1;
            }
        }
    }

    fn pipe_request_key(
        &mut self,
        conn: &Arc<ConnContext>,
        id: Option<i64>,
        is_client: bool,
        now: u64,
    ) -> Option<Key> {
        match id {
            Some(i) => {
                let create = if is_client {
                    Create::Fresh
                } else {
                    Create::IfNew
                };
                self.lookup(conn, CallId::Pipe(i), create, now)
            }
            None => {
                if !is_client {
                    // The worker reads requests in the order the BEAM wrote them.
                    if let Some(k) = self.first_pipe_seq(conn.conn_id, |c| !c.server_req_seen) {
                        return Some(k);
                    }
                }
                let cs = self
                    .conns
                    .entry(conn.conn_id)
                    .or_insert_with(ConnState::new);
                cs.pipe_seq += 1;
                let id = CallId::PipeSeq(cs.pipe_seq);
                self.lookup(conn, id, Create::Fresh, now)
            }
        }
    }

    fn pipe_response_key(
        &mut self,
        conn: &Arc<ConnContext>,
        id: Option<i64>,
        is_client: bool,
        now: u64,
    ) -> Option<Key> {
        match id {
            Some(i) => self.lookup(conn, CallId::Pipe(i), Create::Never, now),
            None => {
                let found = if is_client {
                    self.first_pipe_seq(conn.conn_id, |c| c.t3.is_none())
                } else {
                    self.first_pipe_seq(conn.conn_id, |c| c.server_done.is_none())
                };
                if found.is_none() {
                    self.stats.unmatched_responses += 1;
                }
                found
            }
        }
    }

    fn first_pipe_seq(&self, conn_id: u64, pred: impl Fn(&Call) -> bool) -> Option<Key> {
        let cs = self.conns.get(&conn_id)?;
        cs.in_flight
            .values()
            .filter(|id| matches!(id, CallId::PipeSeq(_)))
            .map(|id| (conn_id, *id))
            .find(|k| self.calls.get(k).is_some_and(&pred))
    }

    // -----------------------------------------------------------------------
    // Progress and completion

    /// Publishes start and checkout once what they carry is known.
    fn progress(&mut self, key: Key) {
        let Some(call) = self.calls.get(&key) else {
            return;
        };
        if !call.started && call.method.is_some() && call.info_ready {
            self.start(key);
        }
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        // Checkout once the worker has the request (so it carries queue_time); calls
        // whose worker side is never seen check out at completion.
        if call.started && !call.internal && !call.checked_out && call.t1.is_some() {
            call.checked_out = true;
            if call.sampled {
                let ev = checkout_event(call, &self.cfg);
                self.publish(ev);
            }
        }
    }

    fn start(&mut self, key: Key) {
        let rate = self.cfg.sample_rate;
        let include_internal = self.cfg.include_internal;
        let gpu_before = match (&self.gpu, self.calls.get(&key)) {
            (Some(g), Some(c)) => g.worker_reading(c.conn.worker_pid),
            _ => None,
        };
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        call.started = true;
        call.gpu_before = gpu_before;
        if call.method.is_none() {
            call.method = Some(UNKNOWN_OPERATION.to_string());
        }
        let op = call.method_str().to_string();
        call.internal = !is_user_operation(&op);
        call.sampled = if rate >= 1.0 {
            true
        } else if rate <= 0.0 {
            false
        } else {
            (splitmix64(call.seq) as f64 / u64::MAX as f64) < rate
        };
        self.stats.calls_started += 1;
        if op == UNKNOWN_OPERATION {
            self.stats.unknown_methods += 1;
        }
        if call.internal {
            self.stats.internal_calls += 1;
        } else {
            call.busy_counted = true;
        }
        let publish = call.sampled && (!call.internal || include_internal);
        if !call.sampled {
            self.stats.sampled_out += 1;
        }
        let ev = publish.then(|| CallStart {
            time_unix_nano: self.cfg.clock.to_unix(call.start_ns()),
            call: Arc::new(call_record(call)),
            monotonic_time: call.start_ns(),
        });
        let busy = call.busy_counted;
        let conn = call.conn.clone();
        let now = call.last_seen_ns;
        if let Some(ev) = ev {
            self.publish(ev);
        }
        if busy {
            for ev in self.pools.call_started(&conn, now) {
                self.publish(ev);
            }
        }
    }

    /// Ends a call: `exit` set when the worker or connection died under it.
    fn complete(&mut self, key: Key, end_ns: u64, exit: Option<String>) {
        if let Some(call) = self.calls.get_mut(&key) {
            call.info_ready = true;
        }
        if self.calls.get(&key).is_some_and(|c| !c.started) {
            self.start(key);
        }
        // Pool checkout before the checkin, even if the server side never showed.
        if let Some(call) = self.calls.get_mut(&key) {
            if !call.internal && !call.checked_out {
                call.checked_out = true;
                if call.sampled {
                    let ev = checkout_event(call, &self.cfg);
                    self.publish(ev);
                }
            }
        }
        let Some(call) = self.take(key) else {
            return;
        };
        let outcome = outcome(&call, exit);
        let duration = duration(&call, end_ns);
        self.stats.calls_completed += 1;
        match &outcome {
            Outcome::Ok => self.stats.calls_ok += 1,
            Outcome::Error => self.stats.calls_error += 1,
            Outcome::Exception { .. } => self.stats.exceptions += 1,
        }
        let publish_internal = !call.internal || self.cfg.include_internal;
        let t_end = self.unix(end_ns);
        // Built once, and only when an event needs it (sampled-out calls need none).
        let mut record = None;
        if !call.internal && call.sampled {
            self.publish(PoolCheckin {
                time_unix_nano: t_end,
                call: shared_record(&mut record, &call),
                busy_time: duration,
            });
        }
        // Exceptions are never thinned: they are what an operator looks for.
        let is_exception = matches!(outcome, Outcome::Exception { .. });
        if publish_internal && (call.sampled || is_exception) {
            let record = shared_record(&mut record, &call);
            self.publish(call_end(&call, &outcome, record, t_end, duration));
        }
        let long =
            |g: &crate::gpu::GpuHandle| duration as u128 >= g.long_call_threshold().as_nanos();
        if let Some(gpu) = self.gpu.as_ref().filter(|g| !call.internal && long(g)) {
            gpu.long_call_finished(crate::gpu::LongCall {
                worker_pid: call.conn.worker_pid,
                duration: std::time::Duration::from_nanos(duration),
                before: call.gpu_before,
                started_unix_nano: t_end.saturating_sub(duration),
                ended_unix_nano: t_end,
                metadata: shared_record(&mut record, &call).to_metadata(),
            });
        }
        if matches!(outcome, Outcome::Ok) && !self.cfg.ml_rules.is_empty() {
            let facts = super::ml::CallFacts {
                tool: call.tool_name.as_deref(),
                library: call.library.as_deref(),
                function: call.function.as_deref(),
                params: call.params.as_ref(),
                result: call.result_json.as_ref(),
                duration_ns: duration,
            };
            if let Some(ml) = super::ml::ml_event(&self.cfg.ml_rules, &facts) {
                let ml = ml
                    .at(t_end)
                    .meta("pool", call.conn.pool.clone())
                    .meta("worker_id", call.conn.worker_id.clone())
                    .meta_opt("correlation_id", call.correlation_id.clone());
                self.publish(ml);
            }
        }
        if !call.internal {
            let failed = !matches!(outcome, Outcome::Ok);
            let error_type = match &outcome {
                Outcome::Exception { error_type, .. } => Some(error_type.clone()),
                _ => call.error_type.clone(),
            };
            if let Some(ev) = self
                .pools
                .call_result(&call.conn, failed, error_type, t_end)
            {
                self.stats.circuit_breaker_opens += 1;
                self.publish(ev);
            }
        }
    }

    // -----------------------------------------------------------------------
    // Lifecycle and time

    pub fn lifecycle(&mut self, ev: Lifecycle) {
        match ev {
            Lifecycle::WorkerUp {
                pool,
                worker_id,
                worker_pid,
                beam_pid,
                ts_ns,
            } => {
                for ev in self
                    .pools
                    .worker_up(&pool, &worker_id, worker_pid, beam_pid, ts_ns)
                {
                    self.publish(ev);
                }
            }
            Lifecycle::WorkerExited {
                pool,
                worker_id,
                worker_pid,
                exit_code,
                signal,
                oom_killed,
                ts_ns,
            } => {
                let reason = match (signal, exit_code) {
                    (Some(s), _) if oom_killed => format!("worker OOM-killed (signal {s})"),
                    (Some(s), _) => format!("worker killed by signal {s}"),
                    (None, Some(c)) => format!("worker exited with code {c}"),
                    (None, None) => "worker exited".to_string(),
                };
                let victims: Vec<Key> = self
                    .calls
                    .iter()
                    .filter(|(_, c)| {
                        (worker_pid != 0 && c.conn.worker_pid == worker_pid)
                            || (c.conn.pool == pool && c.conn.worker_id == worker_id)
                    })
                    .map(|(k, c)| (c.seq, *k))
                    .collect::<BTreeMap<u64, Key>>()
                    .into_values()
                    .collect();
                let in_flight = victims.len();
                for k in victims {
                    self.complete(k, ts_ns, Some(reason.clone()));
                }
                let crashed = oom_killed || signal.is_some() || exit_code.is_some_and(|c| c != 0);
                let t = self.unix(ts_ns);
                if crashed {
                    self.stats.worker_crashes += 1;
                    let kind = if oom_killed {
                        "oom"
                    } else if signal.is_some() {
                        "signal"
                    } else {
                        "exit_code"
                    };
                    self.publish(WorkerCrash {
                        time_unix_nano: t,
                        pool: pool.clone(),
                        worker_id: worker_id.clone(),
                        worker_pid,
                        crash_type: kind,
                        exit_code,
                        signal,
                        oom_killed,
                        reason,
                        in_flight_calls: in_flight as u64,
                    });
                }
                let (events, alert) = self
                    .pools
                    .worker_exited(&pool, &worker_id, crashed, ts_ns, t);
                if alert {
                    self.stats.health_alerts += 1;
                }
                for ev in events {
                    self.publish(ev);
                }
            }
            Lifecycle::ConnectionClosed { conn_id, ts_ns } => {
                let keys: Vec<Key> = self
                    .calls
                    .iter()
                    .filter(|(k, _)| k.0 == conn_id)
                    .map(|(k, c)| (c.seq, *k))
                    .collect::<BTreeMap<u64, Key>>()
                    .into_values()
                    .collect();
                for k in keys {
                    match self.calls.get(&k).and_then(|c| c.server_done) {
                        Some(done) => {
                            self.stats.worker_only_completions += 1;
                            self.complete(k, done, None);
                        }
                        None => self.complete(k, ts_ns, Some("connection closed".to_string())),
                    }
                }
                self.conns.remove(&conn_id);
            }
        }
    }

    /// Time passes: grace periods, stale calls, pool size events.
    pub fn tick(&mut self, now_mono_ns: u64) {
        let grace = self.cfg.worker_only_grace_ms.saturating_mul(1_000_000);
        let stale = self.cfg.stale_call_s.saturating_mul(1_000_000_000);
        let mut finish = BTreeMap::new();
        let mut drop = BTreeMap::new();
        for (k, c) in &self.calls {
            // The client read the end but the server's side of it never came (its
            // records lost): complete with what is known.
            if let (Some(t3), None) = (c.t3, c.server_done) {
                if now_mono_ns.saturating_sub(t3) >= grace {
                    finish.insert(c.seq, (*k, t3));
                    continue;
                }
            }
            if let Some(done) = c.server_done {
                if c.t3.is_none() && now_mono_ns.saturating_sub(done) >= grace {
                    finish.insert(c.seq, (*k, done));
                    continue;
                }
            }
            if now_mono_ns.saturating_sub(c.last_seen_ns) >= stale {
                drop.insert(c.seq, *k);
            }
        }
        for (k, done) in finish.into_values() {
            self.stats.worker_only_completions += 1;
            self.complete(k, done, None);
        }
        for k in drop.into_values() {
            self.drop_call(k, true);
        }
        for ev in self.pools.tick(now_mono_ns) {
            self.publish(ev);
        }
    }

    fn note_worker(&mut self, conn: &ConnContext, now: u64) {
        for ev in self.pools.note_conn(conn, now) {
            self.publish(ev);
        }
    }
}

fn header_create(flow: Flow, is_client: bool) -> Create {
    match (flow, is_client) {
        (Flow::Request, true) => Create::Fresh,
        (Flow::Request, false) => Create::IfNew,
        (Flow::Response, _) => Create::Never,
    }
}

fn key_role(calls: &HashMap<Key, Call>, key: &Key) -> Option<CallRole> {
    calls.get(key).map(|c| c.conn.role)
}

fn request_headers_seen(call: &mut Call, is_client: bool, obs: &Observation) {
    if is_client {
        call.t0.get_or_insert(obs.ts_enter_ns);
    } else if call.worker_tid.is_none() {
        call.worker_tid = Some(obs.tid);
    }
}

fn response_headers_seen(call: &mut Call, is_client: bool, obs: &Observation) {
    call.info_ready = true;
    if !is_client {
        call.t2.get_or_insert(obs.ts_enter_ns);
    }
    if call.method.is_none() {
        call.method = Some(UNKNOWN_OPERATION.to_string());
    }
}

fn outcome(call: &Call, exit: Option<String>) -> Outcome {
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
    if call.success == Some(false) {
        return Outcome::Error;
    }
    Outcome::Ok
}

/// t3-t0 when the BEAM side saw both ends, else t2-t1 once the worker side finished, else
/// from the best known start to `end`.
fn duration(call: &Call, end: u64) -> u64 {
    match (call.t0, call.t1, call.t2, call.t3) {
        (Some(t0), _, _, Some(t3)) => t3.saturating_sub(t0),
        (_, Some(t1), Some(t2), None) if call.server_done.is_some() => t2.saturating_sub(t1),
        _ => end.saturating_sub(call.start_ns()),
    }
}

/// What every event of this call says about it.
fn call_record(call: &Call) -> CallRecord {
    let conn = &call.conn;
    CallRecord {
        operation: call.method_str().to_string(),
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
fn shared_record(slot: &mut Option<Arc<CallRecord>>, call: &Call) -> Arc<CallRecord> {
    slot.get_or_insert_with(|| Arc::new(call_record(call)))
        .clone()
}

/// `call.stop` / `call.exception` of a completed call.
fn call_end(
    call: &Call,
    outcome: &Outcome,
    record: Arc<CallRecord>,
    t_end: u64,
    duration: u64,
) -> CallEnd {
    let outcome = match outcome {
        Outcome::Ok => CallOutcome::Ok,
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
        python_time: match (call.t1, call.t2) {
            (Some(t1), Some(t2)) => Some(t2.saturating_sub(t1)),
            _ => None,
        },
        chunks: call
            .is_streaming()
            .then(|| call.resp_msgs[0].max(call.resp_msgs[1])),
        grpc_status: call.grpc_status,
    }
}

fn checkout_event(call: &Call, cfg: &TrackerConfig) -> PoolCheckout {
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
