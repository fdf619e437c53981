//! Spans from call events (pure: no exporter, no I/O), so they can be unit-tested.
//!
//! One call gives up to four spans, all in one trace:
//! - a CLIENT span on the BEAM side, t0..t3: it ends at the event's time and starts
//!   `duration` before (the root);
//! - a SERVER span on the worker side, t1..t2 (child of the client span), when the
//!   worker side was seen (`python_time` present: gRPC calls);
//! - `snakepit.queue`, t0..t1, INTERNAL, child of the CLIENT span: the wait lies on the
//!   BEAM side of the worker's read, so it cannot nest in the server span;
//! - `snakepit.python`, t1..t2, INTERNAL, child of the SERVER span: the Python execution.
//!
//! Without `queue_time` (the BEAM side was not seen) the server span is the root, and a
//! call without `python_time` (pipe workers) has no server span.
//!
//! Ids are derived, not random, so the same event always gives the same spans: the
//! trace id is a 128-bit hash of the correlation id (a gRPC call's correlation id is
//! unique per request; calls sharing one land in one trace). Pipe request ids are only
//! unique per worker, so pipe calls hash (beam pid, worker pid, request id); a call with
//! no correlation id hashes its connection, stream and end time. Span ids hash the trace
//! key, the role and the call's position (connection, stream, end time).
use crate::events::{AgentEvent, CallEnd, CallRecord, CallRef};
use opentelemetry::trace::{
    Event as SpanEvent, SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The gRPC service both sides of a Snakepit connection serve.
pub const GRPC_SERVICE: &str = "snakepit.bridge.BridgeService";
/// `rpc.service` for calls over the pipe (stdin/stdout JSON) transport.
pub const PIPE_SERVICE: &str = "snakepit.pipe";

/// What the sink knows about a call's surroundings beyond the event itself.
#[derive(Debug, Clone, Default)]
pub struct CallContext {
    /// The worker's address and port (`server.address`, `server.port`).
    pub server_address: Option<String>,
    pub server_port: Option<u16>,
    /// The Snakepit instance the call's BEAM belongs to.
    pub instance_name: Option<String>,
}

/// Spans for a `call.stop` / `call.exception` event; None for any other event.
pub fn call_spans(
    ev: &AgentEvent,
    ctx: &CallContext,
    scope: &InstrumentationScope,
) -> Option<Vec<SpanData>> {
    let AgentEvent::CallEnd(ev) = ev else {
        return None;
    };
    let end = ev.time_unix_nano;
    let duration = ev.duration;
    let queue = ev.queue_time;
    // The worker window: the whole split window when known (python_time is then the
    // tool's own part of it), else t1..t2.
    let split = ev.split.as_deref();
    let python = split.map(|s| s.worker_time).or(ev.python_time);

    // Timeline: t0..t3 is the BEAM's view; t1..t2 the worker's.
    let (t0, t1, t2) = match (queue, python) {
        (Some(q), p) => {
            let t0 = end.saturating_sub(duration);
            let t1 = t0.saturating_add(q);
            (Some(t0), Some(t1), p.map(|p| t1.saturating_add(p)))
        }
        (None, Some(p)) => (None, Some(end.saturating_sub(p)), Some(end)),
        (None, None) => (Some(end.saturating_sub(duration)), None, None),
    };

    let key = trace_key(ev);
    let trace_id = TraceId::from_bytes(hash128(key.as_bytes()));
    let position = format!(
        "{}|{}|{}|{}",
        key,
        ev.call.conn_id,
        call_number(&ev.call),
        end
    );
    let span_id = |role: &str| SpanId::from_bytes(hash64(format!("{position}|{role}").as_bytes()));

    let failed = ev.is_failed();
    let status = if failed {
        Status::error(error_description(ev))
    } else {
        Status::Unset
    };
    let rpc = rpc_attributes(ev, ctx);
    let base = SpanData {
        span_context: SpanContext::new(
            trace_id,
            SpanId::INVALID,
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        ),
        parent_span_id: SpanId::INVALID,
        parent_span_is_remote: false,
        span_kind: SpanKind::Internal,
        name: span_name(ev).into(),
        start_time: SystemTime::UNIX_EPOCH,
        end_time: SystemTime::UNIX_EPOCH,
        attributes: Vec::new(),
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status: Status::Unset,
        instrumentation_scope: scope.clone(),
    };
    let make = |role: &str, kind: SpanKind, parent: SpanId, from: u64, to: u64| {
        let mut s = base.clone();
        s.span_context = SpanContext::new(
            trace_id,
            span_id(role),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        );
        s.parent_span_id = parent;
        s.span_kind = kind;
        s.start_time = to_time(from);
        s.end_time = to_time(to.max(from));
        s
    };

    let mut spans = Vec::with_capacity(4);
    let client_id = t0.map(|_| span_id("client"));
    if let Some(t0) = t0 {
        let mut client = make("client", SpanKind::Client, SpanId::INVALID, t0, end);
        client.attributes = rpc.clone();
        push_byte_counts(ev, &mut client.attributes);
        client.status = status.clone();
        spans.push(client);
        if let Some(t1) = t1 {
            let mut q = make("queue", SpanKind::Internal, span_id("client"), t0, t1);
            q.name = "snakepit.queue".into();
            q.attributes = snakepit_attributes(ev);
            spans.push(q);
        }
    }
    if let (Some(t1), Some(t2)) = (t1, t2) {
        let parent = client_id.unwrap_or(SpanId::INVALID);
        let mut server = make("server", SpanKind::Server, parent, t1, t2);
        server.attributes = rpc;
        if let Some(tid) = ev.call.worker_tid {
            server
                .attributes
                .push(KeyValue::new("thread.id", tid as i64));
        }
        server.status = status.clone();
        push_split_attributes(split, &mut server.attributes);
        // Children: deserialize, the tool itself (`snakepit.python`), serialize.
        let dec = split
            .and_then(|s| s.deserialize.as_ref())
            .map_or(0, |d| d.time);
        let enc = split
            .and_then(|s| s.serialize.as_ref())
            .map_or(0, |d| d.time);
        let (exec_from, exec_to) = (t1 + dec, t2.saturating_sub(enc).max(t1 + dec));
        let mut py = make(
            "python",
            SpanKind::Internal,
            span_id("server"),
            exec_from,
            exec_to,
        );
        py.name = "snakepit.python".into();
        py.attributes = snakepit_attributes(ev);
        spans.push(server);
        spans.push(py);
        if dec > 0 {
            let mut d = make(
                "deserialize",
                SpanKind::Internal,
                span_id("server"),
                t1,
                t1 + dec,
            );
            d.name = "snakepit.deserialize".into();
            spans.push(d);
        }
        if enc > 0 {
            let mut e = make(
                "serialize",
                SpanKind::Internal,
                span_id("server"),
                exec_to,
                t2,
            );
            e.name = "snakepit.serialize".into();
            spans.push(e);
        }
    }
    // The exception event goes on the span where the failure happened: the worker's
    // when it was seen, else the client's.
    if failed {
        let at = to_time(t2.unwrap_or(end));
        if let Some(target) = spans
            .iter_mut()
            .rev()
            .find(|s| matches!(s.span_kind, SpanKind::Server | SpanKind::Client))
        {
            target
                .events
                .events
                .push(SpanEvent::new("exception", at, exception_attributes(ev), 0));
        }
    }
    Some(spans)
}

/// The scheduling split of the worker window as server-span attributes (ns), and its
/// verdict.
fn push_split_attributes(split: Option<&crate::events::WorkerSplit>, a: &mut Vec<KeyValue>) {
    let Some(s) = split else {
        return;
    };
    if let Some(d) = &s.deserialize {
        a.push(KeyValue::new("snakepit.deserialize_time", d.time as i64));
    }
    if let Some(d) = &s.serialize {
        a.push(KeyValue::new("snakepit.serialize_time", d.time as i64));
    }
    let Some(sc) = &s.sched else {
        return;
    };
    for (k, v) in [
        ("snakepit.on_cpu_time", sc.on_cpu),
        ("snakepit.runqueue_time", sc.runqueue),
        ("snakepit.io_wait_time", sc.io_wait),
        ("snakepit.gil_wait_time", sc.gil_wait),
        ("snakepit.lock_wait_time", sc.lock_wait),
        ("snakepit.sleep_time", sc.sleep),
        ("snakepit.gpu_wait_time", sc.gpu_wait),
    ] {
        a.push(KeyValue::new(k, v as i64));
    }
    if let Some((bound, _)) = sc.bound() {
        a.push(KeyValue::new("snakepit.bound", bound));
    }
}

/// `{rpc.service}/{rpc.method}`, the RPC conventions' span name.
fn span_name(ev: &CallEnd) -> String {
    let (service, method) = service_and_method(&ev.call);
    format!("{service}/{method}")
}

fn service_and_method(c: &CallRecord) -> (&'static str, String) {
    if c.is_pipe() {
        let tool = c
            .tool
            .as_deref()
            .or(c.function.as_deref())
            .unwrap_or("call");
        (PIPE_SERVICE, tool.to_string())
    } else {
        (GRPC_SERVICE, c.operation.to_string())
    }
}

/// The stream id (gRPC) or request id (pipe), 0 when there is none.
fn call_number(c: &CallRecord) -> u64 {
    match c.id {
        CallRef::Stream(s) => s.into(),
        CallRef::Pipe(i) => u64::try_from(i).unwrap_or(0),
        CallRef::PipeSeq => 0,
    }
}

fn rpc_attributes(ev: &CallEnd, ctx: &CallContext) -> Vec<KeyValue> {
    let (service, method) = service_and_method(&ev.call);
    let system = if service == PIPE_SERVICE {
        "snakepit_pipe"
    } else {
        "grpc"
    };
    let mut a = vec![
        KeyValue::new("rpc.system", system),
        KeyValue::new("rpc.service", service),
        KeyValue::new("rpc.method", method),
    ];
    if let Some(addr) = &ctx.server_address {
        a.push(KeyValue::new("server.address", addr.clone()));
    }
    if let Some(port) = ctx.server_port {
        a.push(KeyValue::new("server.port", i64::from(port)));
    }
    if let Some(code) = ev.grpc_status {
        a.push(KeyValue::new("rpc.grpc.status_code", i64::from(code)));
    }
    if let Some(name) = &ctx.instance_name {
        a.push(KeyValue::new("snakepit.instance_name", name.clone()));
    }
    a.extend(snakepit_attributes(ev));
    a
}

/// `snakepit.*` attributes of the call.
fn snakepit_attributes(ev: &CallEnd) -> Vec<KeyValue> {
    let c = &ev.call;
    let mut a = Vec::with_capacity(16);
    let result = ev.result();
    for (k, v) in [
        ("snakepit.tool", c.tool.as_deref()),
        ("snakepit.library", c.library.as_deref()),
        ("snakepit.function", c.function.as_deref()),
        ("snakepit.pool", Some(&*c.pool)),
        ("snakepit.worker_id", Some(&*c.worker_id)),
        ("snakepit.session_id", c.session_id.as_deref()),
        ("snakepit.correlation_id", c.correlation_id.as_deref()),
        ("snakepit.transport", Some(c.id.transport())),
        ("snakepit.result", Some(result)),
        ("snakepit.error_type", ev.error_type()),
    ] {
        if let Some(v) = v {
            a.push(KeyValue::new(k, v.to_string()));
        }
    }
    a.push(KeyValue::new("snakepit.beam_pid", i64::from(c.beam_pid)));
    a.push(KeyValue::new(
        "snakepit.worker_pid",
        i64::from(c.worker_pid),
    ));
    a.push(KeyValue::new("snakepit.conn_id", c.conn_id as i64));
    match c.id {
        CallRef::Stream(s) => a.push(KeyValue::new("snakepit.stream_id", i64::from(s))),
        CallRef::Pipe(i) if i >= 0 => a.push(KeyValue::new("snakepit.request_id", i)),
        _ => {}
    }
    a
}

fn push_byte_counts(ev: &CallEnd, a: &mut Vec<KeyValue>) {
    a.push(KeyValue::new(
        "snakepit.request_bytes",
        ev.request_bytes as i64,
    ));
    a.push(KeyValue::new(
        "snakepit.response_bytes",
        ev.response_bytes as i64,
    ));
    if let Some(c) = ev.chunks {
        a.push(KeyValue::new("snakepit.chunks", c as i64));
    }
    // The profiler's view of the call (docs/profiler.md).
    if let Some(p) = &ev.profile {
        a.push(KeyValue::new(
            "snakepit.python_samples",
            p.python_samples as i64,
        ));
        a.push(KeyValue::new("snakepit.hot_frame", p.hot_frame.clone()));
        a.push(KeyValue::new("snakepit.hot_library", p.hot_library.clone()));
    }
}

fn exception_type(ev: &CallEnd) -> Option<&str> {
    ev.error_type().or(ev.kind())
}

fn exception_attributes(ev: &CallEnd) -> Vec<KeyValue> {
    let mut a = Vec::with_capacity(3);
    let ty = exception_type(ev).unwrap_or("error");
    a.push(KeyValue::new("exception.type", ty.to_string()));
    if let Some(msg) = ev.error_message() {
        a.push(KeyValue::new("exception.message", msg.to_string()));
    }
    a
}

fn error_description(ev: &CallEnd) -> String {
    match (exception_type(ev), ev.error_message()) {
        (Some(t), Some(m)) => format!("{t}: {m}"),
        (Some(t), None) => t.to_string(),
        (None, Some(m)) => m.to_string(),
        (None, None) => "error".to_string(),
    }
}

/// The string whose hash is the call's trace id (see the module comment).
pub fn trace_key(ev: &CallEnd) -> String {
    let c = &ev.call;
    match (&c.correlation_id, c.is_pipe()) {
        (Some(corr), false) => format!("corr:{corr}"),
        (Some(corr), true) => format!("pipe:{}:{}:{corr}", c.beam_pid, c.worker_pid),
        (None, _) => format!(
            "call:{}:{}:{}:{}",
            c.beam_pid,
            c.conn_id,
            call_number(c),
            ev.time_unix_nano
        ),
    }
}

/// The trace id of a gRPC call with this correlation id.
pub fn trace_id_for_correlation_id(correlation_id: &str) -> [u8; 16] {
    hash128(format!("corr:{correlation_id}").as_bytes())
}

fn to_time(unix_nano: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(unix_nano)
}

/// FNV-1a with a seed, then a splitmix64 finalizer: stable across builds and platforms
/// (std's hashers promise neither).
fn hash_seeded(bytes: &[u8], seed: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

fn hash64(bytes: &[u8]) -> [u8; 8] {
    // An all-zero id is invalid in OTLP.
    let h = hash_seeded(bytes, 0x5eed_0001).max(1);
    h.to_be_bytes()
}

fn hash128(bytes: &[u8]) -> [u8; 16] {
    let hi = hash_seeded(bytes, 0x5eed_0002);
    let lo = hash_seeded(bytes, 0x5eed_0003).max(1);
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&hi.to_be_bytes());
    out[8..].copy_from_slice(&lo.to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{schema, to_typed, Event};

    fn scope() -> InstrumentationScope {
        InstrumentationScope::builder("test").build()
    }

    fn grpc_stop() -> Event {
        Event::new(schema::CALL_STOP)
            .at(10_000_000)
            .measure("duration", 4_000_000u64)
            .measure("queue_time", 500_000u64)
            .measure("python_time", 2_000_000u64)
            .measure("request_bytes", 116u64)
            .meta("operation", "ExecuteTool")
            .meta("tool", "echo")
            .meta("function", "echo")
            .meta("library", "demo_adapter.DemoAdapter")
            .meta("pool", "default")
            .meta("worker_id", "default_worker_1")
            .meta("session_id", "sess_1")
            .meta("correlation_id", "c-1")
            .meta("beam_pid", 100u64)
            .meta("worker_pid", 200u64)
            .meta("worker_tid", 201u64)
            .meta("conn_id", 7u64)
            .meta("stream_id", 5u64)
            .meta("transport", "grpc")
            .meta("grpc_status", 0u64)
            .meta("result", "ok")
    }

    fn attr<'a>(s: &'a SpanData, k: &str) -> Option<&'a opentelemetry::Value> {
        s.attributes
            .iter()
            .find(|kv| kv.key.as_str() == k)
            .map(|kv| &kv.value)
    }

    fn nanos(t: SystemTime) -> u64 {
        t.duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
    }

    fn by_kind(spans: &[SpanData], kind: SpanKind) -> Vec<&SpanData> {
        spans.iter().filter(|s| s.span_kind == kind).collect()
    }

    #[test]
    fn the_worker_split_gives_deserialize_execute_serialize_children() {
        let ev = grpc_stop()
            .measure("worker_time", 2_600_000u64)
            .measure("python_time", 2_000_000u64)
            .measure("deserialize_time", 400_000u64)
            .measure("serialize_time", 200_000u64)
            .measure("on_cpu_time", 2_000_000u64)
            .measure("runqueue_time", 100_000u64)
            .measure("io_wait_time", 500_000u64)
            .measure("gil_wait_time", 0u64)
            .measure("lock_wait_time", 0u64)
            .measure("sleep_time", 0u64)
            .measure("gpu_wait_time", 0u64);
        let spans = call_spans(&to_typed(&ev), &CallContext::default(), &scope()).expect("spans");
        let named = |n: &str| spans.iter().find(|s| s.name == n).expect(n);
        let server = spans
            .iter()
            .find(|s| s.span_kind == SpanKind::Server)
            .expect("server");
        let (dec, py, enc) = (
            named("snakepit.deserialize"),
            named("snakepit.python"),
            named("snakepit.serialize"),
        );
        for child in [dec, py, enc] {
            assert_eq!(child.parent_span_id, server.span_context.span_id());
        }
        let ns = |t: SystemTime| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos()
        };
        assert_eq!(ns(server.end_time) - ns(server.start_time), 2_600_000);
        assert_eq!(ns(dec.start_time), ns(server.start_time));
        assert_eq!(ns(dec.end_time), ns(py.start_time));
        assert_eq!(ns(py.end_time), ns(enc.start_time));
        assert_eq!(ns(enc.end_time), ns(server.end_time));
        assert_eq!(ns(py.end_time) - ns(py.start_time), 2_000_000);
        assert_eq!(
            attr(server, "snakepit.bound").map(|v| v.as_str().to_string()),
            Some("cpu".to_string())
        );
        assert!(attr(server, "snakepit.io_wait_time").is_some());
    }

    #[test]
    fn a_grpc_call_gives_client_server_queue_and_python_spans_in_one_trace() {
        let ctx = CallContext {
            server_address: Some("127.0.0.1".into()),
            server_port: Some(4000),
            instance_name: Some("demo".into()),
        };
        let spans = call_spans(&to_typed(&grpc_stop()), &ctx, &scope()).expect("call spans");
        assert_eq!(spans.len(), 4);
        let client = by_kind(&spans, SpanKind::Client)[0];
        let server = by_kind(&spans, SpanKind::Server)[0];
        let queue = spans
            .iter()
            .find(|s| s.name == "snakepit.queue")
            .expect("queue");
        let python = spans
            .iter()
            .find(|s| s.name == "snakepit.python")
            .expect("python");

        let tid = TraceId::from_bytes(trace_id_for_correlation_id("c-1"));
        assert!(spans.iter().all(|s| s.span_context.trace_id() == tid));
        assert_eq!(client.parent_span_id, SpanId::INVALID);
        assert_eq!(server.parent_span_id, client.span_context.span_id());
        assert_eq!(queue.parent_span_id, client.span_context.span_id());
        assert_eq!(python.parent_span_id, server.span_context.span_id());

        // t0 = 6 ms, t1 = 6.5 ms, t2 = 8.5 ms, t3 = 10 ms.
        assert_eq!(
            (nanos(client.start_time), nanos(client.end_time)),
            (6_000_000, 10_000_000)
        );
        assert_eq!(
            (nanos(server.start_time), nanos(server.end_time)),
            (6_500_000, 8_500_000)
        );
        assert_eq!(
            (nanos(queue.start_time), nanos(queue.end_time)),
            (6_000_000, 6_500_000)
        );
        assert_eq!(nanos(python.end_time), 8_500_000);

        assert_eq!(server.name, "snakepit.bridge.BridgeService/ExecuteTool");
        for s in [client, server] {
            assert_eq!(
                attr(s, "rpc.system").map(|v| v.as_str()),
                Some("grpc".into())
            );
            assert_eq!(
                attr(s, "rpc.method").map(|v| v.as_str()),
                Some("ExecuteTool".into())
            );
            assert_eq!(
                attr(s, "rpc.grpc.status_code"),
                Some(&opentelemetry::Value::I64(0))
            );
            assert_eq!(
                attr(s, "server.port"),
                Some(&opentelemetry::Value::I64(4000))
            );
            assert_eq!(
                attr(s, "snakepit.correlation_id").map(|v| v.as_str()),
                Some("c-1".into())
            );
            assert_eq!(
                attr(s, "snakepit.worker_pid"),
                Some(&opentelemetry::Value::I64(200))
            );
            assert_eq!(s.status, Status::Unset);
        }
        assert_eq!(
            attr(server, "thread.id"),
            Some(&opentelemetry::Value::I64(201))
        );
        // Same event, same ids.
        let again = call_spans(&to_typed(&grpc_stop()), &ctx, &scope()).expect("spans");
        assert_eq!(again, spans);
    }

    #[test]
    fn a_failed_call_has_error_status_and_an_exception_event_on_the_server_span() {
        let ev = grpc_stop()
            .meta("result", "error")
            .meta("error_type", "ValueError")
            .meta("error_message", "boom");
        let spans = call_spans(&to_typed(&ev), &CallContext::default(), &scope()).expect("spans");
        let server = by_kind(&spans, SpanKind::Server)[0];
        let client = by_kind(&spans, SpanKind::Client)[0];
        assert_eq!(server.status, Status::error("ValueError: boom"));
        assert_eq!(client.status, Status::error("ValueError: boom"));
        assert_eq!(server.events.events.len(), 1);
        let e = &server.events.events[0];
        assert_eq!(e.name, "exception");
        assert!(e
            .attributes
            .iter()
            .any(|kv| kv.key.as_str() == "exception.type" && kv.value.as_str() == "ValueError"));
        assert!(client.events.events.is_empty());
    }

    #[test]
    fn a_call_exception_event_is_an_error() {
        let mut ev = grpc_stop()
            .meta("kind", "exit")
            .meta("reason", "worker died");
        ev.name = schema::CALL_EXCEPTION
            .iter()
            .map(|s| s.to_string())
            .collect();
        ev.measurements.remove("python_time");
        let spans = call_spans(&to_typed(&ev), &CallContext::default(), &scope()).expect("spans");
        // No worker-side end: client + queue only; the exception sits on the client.
        assert_eq!(spans.len(), 2);
        let client = by_kind(&spans, SpanKind::Client)[0];
        assert_eq!(client.status, Status::error("exit: worker died"));
        assert_eq!(client.events.events.len(), 1);
    }

    #[test]
    fn the_profilers_view_is_on_the_call_span() {
        let ev = grpc_stop()
            .measure("python_samples", 21u64)
            .meta("hot_frame", "demo_hot.spin")
            .meta("hot_library", "demo_hot");
        let spans = call_spans(&to_typed(&ev), &CallContext::default(), &scope()).expect("spans");
        let client = by_kind(&spans, SpanKind::Client)[0];
        assert_eq!(
            attr(client, "snakepit.python_samples"),
            Some(&opentelemetry::Value::I64(21))
        );
        assert_eq!(
            attr(client, "snakepit.hot_frame").map(|v| v.as_str().to_string()),
            Some("demo_hot.spin".to_string())
        );
        assert_eq!(
            attr(client, "snakepit.hot_library").map(|v| v.as_str().to_string()),
            Some("demo_hot".to_string())
        );
        // Without samples there is nothing to say.
        let spans =
            call_spans(&to_typed(&grpc_stop()), &CallContext::default(), &scope()).expect("spans");
        assert!(attr(by_kind(&spans, SpanKind::Client)[0], "snakepit.hot_frame").is_none());
    }

    #[test]
    fn a_pipe_call_has_no_server_span_and_a_per_worker_trace() {
        let ev = Event::new(schema::CALL_STOP)
            .at(5_000_000)
            .measure("duration", 1_000_000u64)
            .measure("queue_time", 100_000u64)
            .meta("transport", "pipe")
            .meta("operation", "pipe")
            .meta("tool", "echo")
            .meta("correlation_id", "1")
            .meta("request_id", 1u64)
            .meta("beam_pid", 100u64)
            .meta("worker_pid", 300u64)
            .meta("result", "ok");
        let spans = call_spans(&to_typed(&ev), &CallContext::default(), &scope()).expect("spans");
        assert_eq!(spans.len(), 2);
        assert!(by_kind(&spans, SpanKind::Server).is_empty());
        let client = by_kind(&spans, SpanKind::Client)[0];
        assert_eq!(client.name, "snakepit.pipe/echo");
        assert_ne!(
            client.span_context.trace_id(),
            TraceId::from_bytes(trace_id_for_correlation_id("1"))
        );
    }

    #[test]
    fn a_worker_only_call_has_a_root_server_span() {
        let mut ev = grpc_stop();
        ev.measurements.remove("queue_time");
        let spans = call_spans(&to_typed(&ev), &CallContext::default(), &scope()).expect("spans");
        assert_eq!(spans.len(), 2);
        let server = by_kind(&spans, SpanKind::Server)[0];
        assert_eq!(server.parent_span_id, SpanId::INVALID);
        assert_eq!(nanos(server.end_time), 10_000_000);
        assert_eq!(nanos(server.start_time), 8_000_000);
    }

    #[test]
    fn other_events_give_no_spans() {
        let ev = Event::new(schema::POOL_SIZE);
        assert!(call_spans(&to_typed(&ev), &CallContext::default(), &scope()).is_none());
    }

    #[test]
    fn ids_are_never_zero_and_differ_by_input() {
        assert_ne!(hash64(b"a"), hash64(b"b"));
        assert_ne!(hash128(b"a"), [0u8; 16]);
    }
}
