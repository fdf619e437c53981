//! Typed events: what the tracker emits for every call (start, checkout, checkin, stop
//! or exception, pool sizes) and for worker health (crash, circuit breaker, alert) as
//! plain structs, so sinks read fields instead of looking up JSON keys, and JSON is
//! made only by the JSON/text sinks. Everything else travels as an [`Event`]
//! (`AgentEvent::Dynamic`), e.g. Python's own telemetry.
//!
//! Each typed event lists its fields through [`AgentEvent::visit`] under the names of
//! `schema::field`; the JSON writer sorts them, which is the order the untyped events
//! have always had (serde_json maps are sorted).
use super::schema::{self, field as f};
use super::Event;
use serde_json::Value;
use std::sync::Arc;

/// Which call of its connection a call is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallRef {
    /// gRPC: the HTTP/2 stream id.
    Stream(u32),
    /// Pipe: the request id.
    Pipe(i64),
    /// Pipe request without an id.
    PipeSeq,
}

impl CallRef {
    pub fn transport(&self) -> &'static str {
        match self {
            CallRef::Stream(_) => "grpc",
            CallRef::Pipe(_) | CallRef::PipeSeq => "pipe",
        }
    }
}

/// What every call event says about the call (the metadata they share).
#[derive(Debug, Clone, PartialEq)]
pub struct CallRecord {
    // Shared with the call and its connection: every event of a call carries its
    // record, and copies of these names were a good part of the agent's allocations.
    pub operation: Arc<str>,
    pub library: Option<Arc<str>>,
    pub function: Option<Arc<str>>,
    pub tool: Option<Arc<str>>,
    pub session_id: Option<Arc<str>>,
    pub correlation_id: Option<Arc<str>>,
    pub pool: Arc<str>,
    pub worker_id: Arc<str>,
    pub beam_pid: u32,
    pub worker_pid: u32,
    pub worker_tid: Option<u32>,
    pub conn_id: u64,
    pub id: CallRef,
    /// Health checks, registration: not the user's tool calls.
    pub internal: bool,
}

impl CallRecord {
    pub fn is_pipe(&self) -> bool {
        self.id.transport() == "pipe"
    }

    /// The function if known, else the tool name.
    pub fn function_or_tool(&self) -> Option<&str> {
        self.function.as_deref().or(self.tool.as_deref())
    }

    /// The record's fields by name (for consumers that keep them as a map).
    pub fn to_metadata(&self) -> serde_json::Map<String, Value> {
        struct Meta(serde_json::Map<String, Value>);
        impl Visitor<'_> for Meta {
            fn measure(&mut self, _: &str, _: Val<'_>) {}
            fn meta(&mut self, key: &str, value: Val<'_>) {
                self.0.insert(key.to_string(), value.to_json());
            }
        }
        let mut m = Meta(serde_json::Map::new());
        self.visit(&mut m);
        m.0
    }

    fn visit<'a>(&'a self, v: &mut dyn Visitor<'a>) {
        v.meta(f::OPERATION, Val::Str(&self.operation));
        for (k, x) in [
            (f::LIBRARY, &self.library),
            (f::FUNCTION, &self.function),
            (f::TOOL, &self.tool),
            (f::SESSION_ID, &self.session_id),
            (f::CORRELATION_ID, &self.correlation_id),
        ] {
            if let Some(x) = x {
                v.meta(k, Val::Str(x));
            }
        }
        v.meta(f::POOL, Val::Str(&self.pool));
        v.meta(f::WORKER_ID, Val::Str(&self.worker_id));
        v.meta(f::BEAM_PID, Val::U64(self.beam_pid.into()));
        v.meta(f::WORKER_PID, Val::U64(self.worker_pid.into()));
        if let Some(t) = self.worker_tid {
            v.meta(f::WORKER_TID, Val::U64(t.into()));
        }
        v.meta(f::CONN_ID, Val::U64(self.conn_id));
        v.meta(f::TRANSPORT, Val::Str(self.id.transport()));
        match self.id {
            CallRef::Stream(s) => v.meta(f::STREAM_ID, Val::U64(s.into())),
            CallRef::Pipe(i) => v.meta(f::REQUEST_ID, Val::I64(i)),
            CallRef::PipeSeq => {}
        }
        if self.internal {
            v.meta(f::INTERNAL, Val::Bool(true));
        }
    }
}

/// `[:snakepit, :call, :start]`.
#[derive(Debug, Clone, PartialEq)]
pub struct CallStart {
    pub time_unix_nano: u64,
    pub call: Arc<CallRecord>,
    pub monotonic_time: u64,
}

/// How a call ended.
#[derive(Debug, Clone, PartialEq)]
pub enum CallOutcome {
    Ok,
    /// Completed without an error status, its response message lost in decoding:
    /// whether the tool succeeded is not known (`result: unknown`).
    Unknown,
    /// Completed, the tool reported failure.
    Error {
        error_type: Option<String>,
        error_message: Option<String>,
    },
    /// `[:snakepit, :call, :exception]`: status, reset, the worker or connection died.
    Exception {
        kind: &'static str,
        error_type: String,
        reason: String,
    },
}

/// `[:snakepit, :call, :stop]` or, for an exception outcome, `[:snakepit, :call,
/// :exception]`.
#[derive(Debug, Clone, PartialEq)]
pub struct CallEnd {
    pub time_unix_nano: u64,
    pub call: Arc<CallRecord>,
    pub outcome: CallOutcome,
    /// t3 - t0 (or what part of it was seen), ns.
    pub duration: u64,
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub queue_time: Option<u64>,
    pub python_time: Option<u64>,
    /// Streaming calls: response messages.
    pub chunks: Option<u64>,
    pub grpc_status: Option<u32>,
    /// What the profiler's samples of the call say (`[profile] sampling`).
    pub profile: Option<crate::profiler::CallProfile>,
    /// Where the worker's time went (serialization and scheduling split), when its
    /// window `[t1, t2]` is known and the worker probes saw it.
    pub split: Option<Box<WorkerSplit>>,
}

/// A call's worker window `[t1, t2]` cut into decoding, tool and encoding, and into
/// on-CPU and off-CPU time by reason (docs/events.md, "Why is this call slow").
#[derive(Debug, Clone, PartialEq, Default)]
pub struct WorkerSplit {
    /// t2 - t1, ns.
    pub worker_time: u64,
    /// The worker decoding the request and its parameters.
    pub deserialize: Option<SerializeSplit>,
    /// The worker encoding the result and the response.
    pub serialize: Option<SerializeSplit>,
    pub sched: Option<SchedSplit>,
    /// The thread that served the call.
    pub serving_tid: Option<u32>,
    /// Waits of the serving thread that another thread ended (its work was the
    /// call's: `asyncio.to_thread`'s pool thread, an executor's worker).
    pub handoffs: Vec<Handoff>,
}

/// The serving thread waited over `[from_ns, to_ns]` while thread `tid` worked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handoff {
    pub tid: u32,
    pub from_ns: u64,
    pub to_ns: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SerializeSplit {
    pub time: u64,
    pub bytes: Option<u64>,
    /// Per format (`protobuf`, `json`).
    pub parts: Vec<crate::worker_time::serialization::PhasePart>,
}

/// Runqueue share of the window from which a call is `cpu_starved`.
pub const STARVED_SHARE: f64 = 0.3;

/// On-CPU, runqueue and off-CPU time by reason over the worker window, ns; the parts
/// sum to the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SchedSplit {
    pub on_cpu: u64,
    pub runqueue: u64,
    pub io_wait: u64,
    pub gil_wait: u64,
    pub lock_wait: u64,
    pub sleep: u64,
    pub gpu_wait: u64,
}

impl SchedSplit {
    pub fn total(&self) -> u64 {
        self.on_cpu
            + self.runqueue
            + self.io_wait
            + self.gil_wait
            + self.lock_wait
            + self.sleep
            + self.gpu_wait
    }

    /// The parts with the verdict each stands for, in a fixed order.
    pub fn parts(&self) -> [(&'static str, u64); 7] {
        [
            ("cpu", self.on_cpu),
            ("cpu_starved", self.runqueue),
            ("io", self.io_wait),
            ("gil", self.gil_wait),
            ("lock", self.lock_wait),
            ("sleep", self.sleep),
            ("gpu", self.gpu_wait),
        ]
    }

    /// The verdict and its share of the window: `cpu_starved` when the thread waited
    /// for a CPU for at least `STARVED_SHARE` of the window (a CPU-bound thread given
    /// half a CPU is starved even if it runs the other half), else the largest part
    /// (`cpu`, `io`, `gil`, `gpu`, `lock`, `sleep`).
    pub fn bound(&self) -> Option<(&'static str, f64)> {
        let total = self.total();
        if total == 0 {
            return None;
        }
        let share = |v: u64| v as f64 / total as f64;
        if share(self.runqueue) >= STARVED_SHARE {
            return Some(("cpu_starved", share(self.runqueue)));
        }
        let (name, v) = self.parts().into_iter().max_by_key(|(_, v)| *v)?;
        Some((name, share(v)))
    }
}

/// `[:snakepit, :serialize, :stop]`: one direction and format of a call's
/// (de)serialization in the worker.
#[derive(Debug, Clone, PartialEq)]
pub struct SerializeStop {
    pub time_unix_nano: u64,
    pub call: Arc<CallRecord>,
    pub duration: u64,
    pub bytes: Option<u64>,
    /// `encode` | `decode`.
    pub direction: &'static str,
    /// `protobuf` | `json`.
    pub format: &'static str,
    /// (De)serialization calls it sums.
    pub calls: u64,
}

impl CallEnd {
    pub fn is_exception(&self) -> bool {
        matches!(self.outcome, CallOutcome::Exception { .. })
    }

    pub fn is_ok(&self) -> bool {
        matches!(self.outcome, CallOutcome::Ok)
    }

    /// Failed: the tool reported failure, or an exception (not `unknown`).
    pub fn is_failed(&self) -> bool {
        matches!(
            self.outcome,
            CallOutcome::Error { .. } | CallOutcome::Exception { .. }
        )
    }

    /// The `result` field: `ok`, `error` (the tool failed, or an exception) or
    /// `unknown`.
    pub fn result(&self) -> &'static str {
        match self.outcome {
            CallOutcome::Ok => "ok",
            CallOutcome::Unknown => "unknown",
            CallOutcome::Error { .. } | CallOutcome::Exception { .. } => "error",
        }
    }

    pub fn error_type(&self) -> Option<&str> {
        match &self.outcome {
            CallOutcome::Ok | CallOutcome::Unknown => None,
            CallOutcome::Error { error_type, .. } => error_type.as_deref(),
            CallOutcome::Exception { error_type, .. } => Some(error_type),
        }
    }

    /// The tool's error message, or the exception's reason.
    pub fn error_message(&self) -> Option<&str> {
        match &self.outcome {
            CallOutcome::Ok | CallOutcome::Unknown => None,
            CallOutcome::Error { error_message, .. } => error_message.as_deref(),
            CallOutcome::Exception { reason, .. } => Some(reason),
        }
    }

    /// The exception's kind (`error`, `exit`, ...).
    pub fn kind(&self) -> Option<&'static str> {
        match &self.outcome {
            CallOutcome::Exception { kind, .. } => Some(kind),
            _ => None,
        }
    }
}

/// `[:snakepit, :pool, :checkin]`.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolCheckin {
    pub time_unix_nano: u64,
    pub call: Arc<CallRecord>,
    pub busy_time: u64,
}

/// `[:snakepit, :pool, :checkout]`.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolCheckout {
    pub time_unix_nano: u64,
    pub pool: Arc<str>,
    pub worker_id: Arc<str>,
    pub worker_pid: u32,
    pub correlation_id: Option<Arc<str>>,
    pub queue_time: Option<u64>,
}

/// `[:snakepit, :pool, :size]`.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolSize {
    pub time_unix_nano: u64,
    pub pool: String,
    pub size: u64,
    pub busy: u64,
    pub idle: u64,
}

/// `[:snakepit, :worker, :crash]`: a worker died other than by a clean exit.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerCrash {
    pub time_unix_nano: u64,
    pub pool: String,
    pub worker_id: String,
    pub worker_pid: u32,
    /// `oom`, `signal` or `exit_code`.
    pub crash_type: &'static str,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub oom_killed: bool,
    pub reason: String,
    pub in_flight_calls: u64,
}

/// `[:snakepit, :circuit_breaker, :open]`.
#[derive(Debug, Clone, PartialEq)]
pub struct CircuitBreakerOpen {
    pub time_unix_nano: u64,
    pub pool: String,
    pub worker_id: String,
    pub worker_pid: u32,
    pub failure_count: u64,
    pub error_type: Option<String>,
}

/// `[:snakepit, :health, :alert]`.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthAlert {
    pub time_unix_nano: u64,
    pub pool: String,
    /// `crash_loop`.
    pub alert_type: &'static str,
    /// The worker whose crash raised the alert.
    pub worker_id: String,
    pub crash_count: u64,
    pub window_s: u64,
}

/// Every event on the bus.
#[derive(Debug, Clone, PartialEq)]
pub enum AgentEvent {
    CallStart(CallStart),
    CallEnd(CallEnd),
    PoolCheckout(PoolCheckout),
    PoolCheckin(PoolCheckin),
    PoolSize(PoolSize),
    WorkerCrash(WorkerCrash),
    CircuitBreakerOpen(CircuitBreakerOpen),
    HealthAlert(HealthAlert),
    SerializeStop(SerializeStop),
    /// Any other event, fields by name (Python telemetry, topology, GPU, ...).
    Dynamic(Event),
}

/// A field value as the typed events hand it out.
#[derive(Debug, Clone, Copy)]
pub enum Val<'a> {
    Str(&'a str),
    U64(u64),
    I64(i64),
    Bool(bool),
    Json(&'a Value),
}

/// Receives an event's fields (keys unsorted).
pub trait Visitor<'a> {
    fn measure(&mut self, key: &'a str, value: Val<'a>);
    fn meta(&mut self, key: &'a str, value: Val<'a>);
}

impl AgentEvent {
    /// The event's name, e.g. `["snakepit","call","stop"]`.
    pub fn name(&self) -> NameRef<'_> {
        match self {
            AgentEvent::CallStart(_) => NameRef::Static(schema::CALL_START),
            AgentEvent::CallEnd(e) if e.is_exception() => NameRef::Static(schema::CALL_EXCEPTION),
            AgentEvent::CallEnd(_) => NameRef::Static(schema::CALL_STOP),
            AgentEvent::PoolCheckout(_) => NameRef::Static(schema::POOL_CHECKOUT),
            AgentEvent::PoolCheckin(_) => NameRef::Static(schema::POOL_CHECKIN),
            AgentEvent::PoolSize(_) => NameRef::Static(schema::POOL_SIZE),
            AgentEvent::WorkerCrash(_) => NameRef::Static(schema::WORKER_CRASH),
            AgentEvent::CircuitBreakerOpen(_) => NameRef::Static(schema::CIRCUIT_BREAKER_OPEN),
            AgentEvent::HealthAlert(_) => NameRef::Static(schema::HEALTH_ALERT),
            AgentEvent::SerializeStop(_) => NameRef::Static(schema::SERIALIZE_STOP),
            AgentEvent::Dynamic(e) => NameRef::Owned(&e.name),
        }
    }

    pub fn is(&self, name: &[&str]) -> bool {
        match self.name() {
            NameRef::Static(n) => n == name,
            NameRef::Owned(n) => n.len() == name.len() && n.iter().zip(name).all(|(a, b)| a == b),
        }
    }

    pub fn time_unix_nano(&self) -> u64 {
        match self {
            AgentEvent::CallStart(e) => e.time_unix_nano,
            AgentEvent::CallEnd(e) => e.time_unix_nano,
            AgentEvent::PoolCheckout(e) => e.time_unix_nano,
            AgentEvent::PoolCheckin(e) => e.time_unix_nano,
            AgentEvent::PoolSize(e) => e.time_unix_nano,
            AgentEvent::WorkerCrash(e) => e.time_unix_nano,
            AgentEvent::CircuitBreakerOpen(e) => e.time_unix_nano,
            AgentEvent::HealthAlert(e) => e.time_unix_nano,
            AgentEvent::SerializeStop(e) => e.time_unix_nano,
            AgentEvent::Dynamic(e) => e.time_unix_nano,
        }
    }

    /// The untyped event, if this is one.
    pub fn dynamic(&self) -> Option<&Event> {
        match self {
            AgentEvent::Dynamic(e) => Some(e),
            _ => None,
        }
    }

    /// Hands every field to `v` (measurements and metadata, unsorted).
    pub fn visit<'a>(&'a self, v: &mut dyn Visitor<'a>) {
        match self {
            AgentEvent::CallStart(e) => {
                v.measure(f::SYSTEM_TIME, Val::U64(e.time_unix_nano));
                v.measure(f::MONOTONIC_TIME, Val::U64(e.monotonic_time));
                e.call.visit(v);
            }
            AgentEvent::CallEnd(e) => visit_end(e, v),
            AgentEvent::PoolCheckin(e) => {
                v.measure(f::BUSY_TIME, Val::U64(e.busy_time));
                e.call.visit(v);
            }
            AgentEvent::PoolCheckout(e) => {
                if let Some(q) = e.queue_time {
                    v.measure(f::QUEUE_TIME, Val::U64(q));
                }
                v.meta(f::POOL, Val::Str(&e.pool));
                v.meta(f::WORKER_ID, Val::Str(&e.worker_id));
                v.meta(f::WORKER_PID, Val::U64(e.worker_pid.into()));
                if let Some(c) = &e.correlation_id {
                    v.meta(f::CORRELATION_ID, Val::Str(c));
                }
            }
            AgentEvent::PoolSize(e) => {
                v.measure(f::SIZE, Val::U64(e.size));
                v.measure(f::BUSY, Val::U64(e.busy));
                v.measure(f::IDLE, Val::U64(e.idle));
                v.meta(f::POOL, Val::Str(&e.pool));
            }
            AgentEvent::WorkerCrash(e) => {
                v.measure(f::IN_FLIGHT_CALLS, Val::U64(e.in_flight_calls));
                v.meta(f::POOL, Val::Str(&e.pool));
                v.meta(f::WORKER_ID, Val::Str(&e.worker_id));
                v.meta(f::WORKER_PID, Val::U64(e.worker_pid.into()));
                v.meta(f::TYPE, Val::Str(e.crash_type));
                if let Some(c) = e.exit_code {
                    v.meta(f::EXIT_CODE, Val::I64(c.into()));
                }
                if let Some(s) = e.signal {
                    v.meta(f::SIGNAL, Val::I64(s.into()));
                }
                v.meta(f::OOM_KILLED, Val::Bool(e.oom_killed));
                v.meta(f::REASON, Val::Str(&e.reason));
            }
            AgentEvent::CircuitBreakerOpen(e) => {
                v.measure(f::FAILURE_COUNT, Val::U64(e.failure_count));
                v.meta(f::POOL, Val::Str(&e.pool));
                v.meta(f::WORKER_ID, Val::Str(&e.worker_id));
                v.meta(f::WORKER_PID, Val::U64(e.worker_pid.into()));
                if let Some(t) = &e.error_type {
                    v.meta(f::ERROR_TYPE, Val::Str(t));
                }
            }
            AgentEvent::HealthAlert(e) => {
                v.measure(f::CRASH_COUNT, Val::U64(e.crash_count));
                v.measure(f::WINDOW_S, Val::U64(e.window_s));
                v.meta(f::POOL, Val::Str(&e.pool));
                v.meta(f::ALERT_TYPE, Val::Str(e.alert_type));
                v.meta(f::WORKER_ID, Val::Str(&e.worker_id));
            }
            AgentEvent::SerializeStop(e) => {
                v.measure(f::DURATION, Val::U64(e.duration));
                if let Some(b) = e.bytes {
                    v.measure(f::BYTES, Val::U64(b));
                }
                v.measure(f::CALLS, Val::U64(e.calls));
                v.meta(f::DIRECTION, Val::Str(e.direction));
                v.meta(f::FORMAT, Val::Str(e.format));
                e.call.visit(v);
            }
            AgentEvent::Dynamic(e) => {
                for (k, x) in &e.measurements {
                    v.measure(k, Val::Json(x));
                }
                for (k, x) in &e.metadata {
                    v.meta(k, Val::Json(x));
                }
            }
        }
    }

    /// The event with its fields by name (tests, and the few consumers that keep a
    /// call's metadata as a map).
    pub fn to_event(&self) -> Event {
        if let AgentEvent::Dynamic(e) = self {
            return e.clone();
        }
        struct Maps(Event);
        impl Visitor<'_> for Maps {
            fn measure(&mut self, key: &str, value: Val<'_>) {
                self.0.measurements.insert(key.to_string(), value.to_json());
            }
            fn meta(&mut self, key: &str, value: Val<'_>) {
                self.0.metadata.insert(key.to_string(), value.to_json());
            }
        }
        let name: Vec<&str> = match self.name() {
            NameRef::Static(n) => n.to_vec(),
            NameRef::Owned(n) => n.iter().map(String::as_str).collect(),
        };
        let mut maps = Maps(Event::new(&name).at(self.time_unix_nano()));
        self.visit(&mut maps);
        maps.0
    }
}

fn visit_end<'a>(e: &'a CallEnd, v: &mut dyn Visitor<'a>) {
    v.measure(f::DURATION, Val::U64(e.duration));
    v.measure(f::REQUEST_BYTES, Val::U64(e.request_bytes));
    v.measure(f::RESPONSE_BYTES, Val::U64(e.response_bytes));
    for (k, x) in [
        (f::QUEUE_TIME, e.queue_time),
        (f::PYTHON_TIME, e.python_time),
        (f::CHUNKS, e.chunks),
    ] {
        if let Some(x) = x {
            v.measure(k, Val::U64(x));
        }
    }
    if let Some(split) = &e.split {
        visit_split(split, v);
    }
    if let Some(p) = &e.profile {
        v.measure(f::PYTHON_SAMPLES, Val::U64(p.python_samples));
        v.meta(f::HOT_FRAME, Val::Str(&p.hot_frame));
        v.meta(f::HOT_LIBRARY, Val::Str(&p.hot_library));
    }
    e.call.visit(v);
    match &e.outcome {
        CallOutcome::Ok | CallOutcome::Unknown => v.meta(f::RESULT, Val::Str(e.result())),
        CallOutcome::Error {
            error_type,
            error_message,
        } => {
            v.meta(f::RESULT, Val::Str("error"));
            if let Some(t) = error_type {
                v.meta(f::ERROR_TYPE, Val::Str(t));
            }
            if let Some(m) = error_message {
                v.meta(f::ERROR_MESSAGE, Val::Str(m));
            }
        }
        CallOutcome::Exception {
            kind,
            error_type,
            reason,
        } => {
            v.meta(f::RESULT, Val::Str("error"));
            v.meta(f::KIND, Val::Str(kind));
            v.meta(f::ERROR_TYPE, Val::Str(error_type));
            v.meta(f::REASON, Val::Str(reason));
        }
    }
    if let Some(s) = e.grpc_status {
        v.meta(f::GRPC_STATUS, Val::U64(s.into()));
    }
}

fn visit_split<'a>(s: &'a WorkerSplit, v: &mut dyn Visitor<'a>) {
    v.measure(f::WORKER_TIME, Val::U64(s.worker_time));
    if let Some(d) = &s.deserialize {
        v.measure(f::DESERIALIZE_TIME, Val::U64(d.time));
    }
    if let Some(d) = &s.serialize {
        v.measure(f::SERIALIZE_TIME, Val::U64(d.time));
    }
    if let Some(sc) = &s.sched {
        for (k, x) in [
            (f::ON_CPU_TIME, sc.on_cpu),
            (f::RUNQUEUE_TIME, sc.runqueue),
            (f::IO_WAIT_TIME, sc.io_wait),
            (f::GIL_WAIT_TIME, sc.gil_wait),
            (f::LOCK_WAIT_TIME, sc.lock_wait),
            (f::SLEEP_TIME, sc.sleep),
            (f::GPU_WAIT_TIME, sc.gpu_wait),
        ] {
            v.measure(k, Val::U64(x));
        }
        if let Some((bound, _)) = sc.bound() {
            v.meta(f::BOUND, Val::Str(bound));
        }
    }
}

impl Val<'_> {
    pub fn to_json(self) -> Value {
        match self {
            Val::Str(s) => s.into(),
            Val::U64(n) => n.into(),
            Val::I64(n) => n.into(),
            Val::Bool(b) => b.into(),
            Val::Json(v) => v.clone(),
        }
    }
}

/// An event name: the schema's constant, or a dynamic event's own.
#[derive(Debug, Clone, Copy)]
pub enum NameRef<'a> {
    Static(&'static [&'static str]),
    Owned(&'a [String]),
}

impl NameRef<'_> {
    /// `snakepit.call.stop` style, for logs.
    pub fn dotted(&self) -> String {
        match self {
            NameRef::Static(n) => n.join("."),
            NameRef::Owned(n) => n.join("."),
        }
    }

    pub fn parts(&self) -> Vec<&str> {
        match self {
            NameRef::Static(n) => n.to_vec(),
            NameRef::Owned(n) => n.iter().map(String::as_str).collect(),
        }
    }
}

impl From<CallStart> for AgentEvent {
    fn from(e: CallStart) -> Self {
        AgentEvent::CallStart(e)
    }
}

impl From<CallEnd> for AgentEvent {
    fn from(e: CallEnd) -> Self {
        AgentEvent::CallEnd(e)
    }
}

impl From<PoolCheckout> for AgentEvent {
    fn from(e: PoolCheckout) -> Self {
        AgentEvent::PoolCheckout(e)
    }
}

impl From<PoolCheckin> for AgentEvent {
    fn from(e: PoolCheckin) -> Self {
        AgentEvent::PoolCheckin(e)
    }
}

impl From<PoolSize> for AgentEvent {
    fn from(e: PoolSize) -> Self {
        AgentEvent::PoolSize(e)
    }
}

impl From<WorkerCrash> for AgentEvent {
    fn from(e: WorkerCrash) -> Self {
        AgentEvent::WorkerCrash(e)
    }
}

impl From<CircuitBreakerOpen> for AgentEvent {
    fn from(e: CircuitBreakerOpen) -> Self {
        AgentEvent::CircuitBreakerOpen(e)
    }
}

impl From<SerializeStop> for AgentEvent {
    fn from(e: SerializeStop) -> Self {
        AgentEvent::SerializeStop(e)
    }
}

impl From<HealthAlert> for AgentEvent {
    fn from(e: HealthAlert) -> Self {
        AgentEvent::HealthAlert(e)
    }
}

/// An untyped event becomes the typed one its name says (events built by name, as
/// tests do, reach the sinks exactly as the tracker's own); other names stay dynamic.
impl From<Event> for AgentEvent {
    fn from(e: Event) -> Self {
        super::parse::typed(&e).unwrap_or(AgentEvent::Dynamic(e))
    }
}
