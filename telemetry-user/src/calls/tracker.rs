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
use crate::fast_hash::{FastMap, FastSet};
use crate::wire::grpc::GrpcMessage;
use crate::wire::snakepit::{self as sp, Method};
use serde::Serialize;
use serde_json::Value;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

mod call;
mod lifecycle;
mod matching;
mod messages;
mod reload;
mod repro_hook;

use call::*;
pub use call::{grpc_status_name, is_user_operation};
use matching::*;

/// Prefix of re-emitted Python-side events (`["snakepit","python",...]`).
pub use crate::events::schema::PYTHON_PREFIX;
/// `operation` of `{packet,4}` pipe calls.
pub const PIPE_OPERATION: &str = "pipe";
/// `operation` when neither `:path` nor the request message tells the method.
pub const UNKNOWN_OPERATION: &str = "unknown";
/// `error_type` of calls ended by RST_STREAM, and of calls cut by a worker's death.
pub const ERROR_RESET: &str = "reset";
pub const ERROR_EXIT: &str = "exit";

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
    /// Completed with their response message lost in decoding (`result: unknown`).
    pub calls_unknown: u64,
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

pub struct CallTracker {
    cfg: TrackerConfig,
    bus: Bus,
    /// GPU memory per worker: long calls get before/after figures.
    gpu: Option<crate::gpu::GpuHandle>,
    profile: Option<crate::profiler::ProfileHandle>,
    conns: FastMap<u64, ConnState>,
    calls: FastMap<Key, Call>,
    /// Every in-flight call by creation order, for eviction of the oldest.
    order: BTreeMap<u64, Key>,
    next_seq: u64,
    pools: Pools,
    stats: TrackerStats,
    /// The workers' scheduling and (de)serialization: each call's worker split.
    activity: crate::worker_time::WorkerActivity,
    /// Connections closed with calls still open, by close time: those calls end at
    /// the next tick, unless their worker's exit (same discovery batch) claims them.
    closed_conns: BTreeMap<u64, u64>,
    /// Repro scripts for failed calls (`[repro]`), when on.
    repro: Option<crate::repro::Repro>,
}

impl CallTracker {
    pub fn new(cfg: TrackerConfig, bus: Bus) -> Self {
        let pools = Pools::new(&cfg);
        CallTracker {
            cfg,
            bus,
            gpu: None,
            profile: None,
            conns: FastMap::default(),
            calls: FastMap::default(),
            order: BTreeMap::new(),
            next_seq: 0,
            pools,
            stats: TrackerStats::default(),
            activity: Default::default(),
            closed_conns: BTreeMap::new(),
            repro: None,
        }
    }

    /// Long calls (`[gpu] long_call_threshold_ms`) report the worker's GPU memory
    /// before and after them (`[:snakepit, :memory, :gpu_call]`).
    pub fn set_gpu(&mut self, gpu: crate::gpu::GpuHandle) {
        self.gpu = Some(gpu);
    }

    /// The workers' scheduling edges and (de)serialization calls (fed by the agent in
    /// kernel order, before the observations of the same batch).
    pub fn activity_mut(&mut self) -> &mut crate::worker_time::WorkerActivity {
        &mut self.activity
    }

    pub fn activity(&self) -> &crate::worker_time::WorkerActivity {
        &self.activity
    }

    /// Calls take the profiler's samples of their worker while they ran
    /// (`python_samples`, `hot_frame`, `hot_library` in call.stop).
    pub fn set_profile(&mut self, profile: crate::profiler::ProfileHandle) {
        self.profile = Some(profile);
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
                                    Some(m) => m.as_str().into(),
                                    None => metadata
                                        .service_method()
                                        .map_or_else(|| path.as_str().into(), |(_, m)| m.into()),
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
                    call.correlation_id = metadata.correlation_id.as_deref().map(Arc::from);
                }
                if *flow == Flow::Request {
                    self.repro_headers(key, metadata.grpc_timeout.as_ref());
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
                if message.cut {
                    // Only a response's start says something (the tool's success).
                    if *flow == Flow::Response {
                        if let Some(key) =
                            self.lookup(&conn, CallId::Stream(*stream_id), Create::Never, now)
                        {
                            self.response_head(key, message);
                        }
                    }
                    return;
                }
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
                                call.method = Some(UNKNOWN_OPERATION.into());
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
            Observed::SyncLost { flow } => {
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
                } else if *flow == Flow::Response {
                    // The server's writes lost frame sync (e.g. a 50 MB response in one
                    // sendmsg, more frames than the kernel's mark slots): the end of calls
                    // in flight may never be decoded. The client's timed end completes
                    // them; those already read complete now.
                    // Any response not yet decoded may be cut: the decoder finds frames
                    // again only at a later syscall's frame start.
                    let mut done = Vec::new();
                    let cut = |c: &Call| c.server_done.is_none();
                    for (k, c) in self
                        .calls
                        .iter_mut()
                        .filter(|(k, c)| k.0 == conn_id && cut(c))
                    {
                        c.server_lost = true;
                        if let Some(t) = c.t3 {
                            done.push((c.seq, *k, t));
                        }
                    }
                    done.sort_unstable_by_key(|d| d.0);
                    for (_, k, t) in done {
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
                        // way: the call completes when both ends are known (or when
                        // that side lost sync and will not tell).
                        if call.server_done.is_some() || call.server_lost {
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
                call.method = Some(PIPE_OPERATION.into());
                call.req_bytes[si] = call.req_bytes[si].max(*len as u64);
                if is_client {
                    call.t0.get_or_insert(obs.ts_enter_ns);
                } else {
                    call.server_req_seen = true;
                    call.t1.get_or_insert(obs.ts_exit_ns);
                    call.worker_tid = Some(obs.tid);
                }
                if call.tool_name.is_none() {
                    call.tool_name = command.as_deref().map(Arc::from);
                    call.function = call.tool_name.clone();
                    call.library = call.conn.adapter.as_deref().map(Arc::from);
                }
                if call.session_id.is_none() {
                    call.session_id = args
                        .as_ref()
                        .and_then(|a| a.get("session_id"))
                        .and_then(Value::as_str)
                        .map(Arc::from);
                }
                if call.correlation_id.is_none() {
                    call.correlation_id = id.map(|i| i.to_string().into());
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
                    call.t2_message.get_or_insert(obs.ts_enter_ns);
                    call.server_done = Some(obs.ts_exit_ns);
                    self.progress(key);
                    self.maybe_worker_only(key, obs.ts_exit_ns);
                }
            }
        }
    }

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
            call.method = Some(UNKNOWN_OPERATION.into());
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
        let Some(mut call) = self.take(key) else {
            return;
        };
        call.order_moments();
        let outcome = outcome(&call, exit);
        let duration = duration(&call, end_ns);
        self.repro_end(&call, Some(&outcome), self.unix(end_ns));
        self.stats.calls_completed += 1;
        match &outcome {
            Outcome::Ok => self.stats.calls_ok += 1,
            Outcome::Error => self.stats.calls_error += 1,
            Outcome::Unknown => self.stats.calls_unknown += 1,
            Outcome::Exception { .. } => self.stats.exceptions += 1,
        }
        let publish_internal = !call.internal || self.cfg.include_internal;
        let t_end = self.unix(end_ns);
        // Exceptions are never thinned: they are what an operator looks for.
        let is_exception = matches!(outcome, Outcome::Exception { .. });
        let publish = publish_internal && (call.sampled || is_exception);
        let profiled = self.profile.is_some() && !call.internal;
        if !call.internal {
            let sampler = &mut self.activity.sampler;
            sampler.call_finished();
            if call.t1.is_some_and(|t1| !sampler.covered(t1, end_ns)) {
                sampler.counters.calls_not_split += 1;
            }
        }
        // The split also names the serving thread, whose off-CPU samples are the call's.
        let split = (publish || profiled)
            .then(|| worker_split(&call, end_ns, &self.activity))
            .flatten();
        // The worker's samples from its read of the request to the call's end (t2 can
        // be the response headers' write, sent before the tool runs).
        let profile = self
            .profile
            .as_ref()
            .filter(|_| !call.internal)
            .and_then(|p| {
                let from = call.t1.unwrap_or(call.start_ns());
                let to = end_ns.max(call.t2.unwrap_or(0));
                let function = call.function.as_deref().or(call.tool_name.as_deref())?;
                let serving = split.as_ref().and_then(|s| s.serving_tid);
                let handoffs = split.as_ref().map_or(&[][..], |s| &s.handoffs[..]);
                tracing::trace!(
                    from,
                    to,
                    ?serving,
                    ?handoffs,
                    function,
                    "profile attribution"
                );
                // Samples before every call still in flight on the worker are settled
                // (internal ones, e.g. the telemetry stream, take none).
                let horizon_ns = self
                    .calls
                    .values()
                    .filter(|c| !c.internal && c.conn.worker_pid == call.conn.worker_pid)
                    .map(|c| c.t1.unwrap_or(u64::MAX).min(c.start_ns()))
                    .min()
                    .unwrap_or(end_ns);
                p.call_finished(&crate::profiler::FinishedCall {
                    pid: call.conn.worker_pid,
                    start_ns: from,
                    end_ns: to,
                    function,
                    serving_tid: serving,
                    handoffs,
                    horizon_ns,
                })
            });
        // Built once, and only when an event needs it (sampled-out calls need none).
        let mut record = None;
        if !call.internal && call.sampled {
            self.publish(PoolCheckin {
                time_unix_nano: t_end,
                call: shared_record(&mut record, &call),
                busy_time: duration,
            });
        }
        if publish {
            let record = shared_record(&mut record, &call);
            if let Some(split) = &split {
                for ev in serialize_events(split, &record, |m| self.unix(m), call.t1) {
                    self.publish(ev);
                }
            }
            let mut end = call_end(&call, &outcome, record, t_end, duration, split);
            end.profile = profile;
            self.publish(end);
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
                    .meta("pool", call.conn.pool.to_string())
                    .meta("worker_id", call.conn.worker_id.to_string())
                    .meta_opt(
                        "correlation_id",
                        call.correlation_id.as_deref().map(str::to_string),
                    );
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
}
