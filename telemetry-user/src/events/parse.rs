//! An event built by name (tests, older emitters) read back into its typed form.
//! Absent fields take neutral values (empty strings, 0), as a partial event would
//! have shown in any sink.
use super::schema::{self, field as f};
use super::typed::*;
use super::Event;
use serde_json::Value;
use std::sync::Arc;

pub(super) fn typed(e: &Event) -> Option<AgentEvent> {
    let t = e.time_unix_nano;
    let m = |k: &str| e.measurements.get(k).and_then(Value::as_u64);
    let s = |k: &str| {
        e.metadata
            .get(k)
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let u = |k: &str| e.metadata.get(k).and_then(Value::as_u64);
    let ev = if e.is(schema::CALL_START) {
        AgentEvent::CallStart(CallStart {
            time_unix_nano: t,
            call: record(e),
            monotonic_time: m(f::MONOTONIC_TIME).unwrap_or(0),
        })
    } else if e.is(schema::CALL_STOP) || e.is(schema::CALL_EXCEPTION) {
        let outcome = if e.is(schema::CALL_EXCEPTION) {
            let kind = match s(f::KIND).as_deref() {
                Some("exit") => "exit",
                Some("throw") => "throw",
                _ => "error",
            };
            CallOutcome::Exception {
                kind,
                // Sinks always fell back to the kind when the type was missing.
                error_type: s(f::ERROR_TYPE).unwrap_or_else(|| kind.to_string()),
                reason: s(f::REASON).unwrap_or_default(),
            }
        } else if s(f::RESULT).as_deref() == Some("ok") {
            CallOutcome::Ok
        } else if s(f::RESULT).as_deref() == Some("unknown") {
            CallOutcome::Unknown
        } else {
            CallOutcome::Error {
                error_type: s(f::ERROR_TYPE),
                error_message: s(f::ERROR_MESSAGE),
            }
        };
        AgentEvent::CallEnd(CallEnd {
            time_unix_nano: t,
            call: record(e),
            outcome,
            duration: m(f::DURATION).unwrap_or(0),
            request_bytes: m(f::REQUEST_BYTES).unwrap_or(0),
            response_bytes: m(f::RESPONSE_BYTES).unwrap_or(0),
            queue_time: m(f::QUEUE_TIME),
            python_time: m(f::PYTHON_TIME),
            chunks: m(f::CHUNKS),
            grpc_status: u(f::GRPC_STATUS).map(|x| x as u32),
            split: m(f::WORKER_TIME).map(|worker_time| {
                Box::new(WorkerSplit {
                    worker_time,
                    deserialize: m(f::DESERIALIZE_TIME).map(|time| SerializeSplit {
                        time,
                        ..SerializeSplit::default()
                    }),
                    serialize: m(f::SERIALIZE_TIME).map(|time| SerializeSplit {
                        time,
                        ..SerializeSplit::default()
                    }),
                    sched: m(f::ON_CPU_TIME).map(|on_cpu| SchedSplit {
                        on_cpu,
                        runqueue: m(f::RUNQUEUE_TIME).unwrap_or(0),
                        io_wait: m(f::IO_WAIT_TIME).unwrap_or(0),
                        gil_wait: m(f::GIL_WAIT_TIME).unwrap_or(0),
                        lock_wait: m(f::LOCK_WAIT_TIME).unwrap_or(0),
                        sleep: m(f::SLEEP_TIME).unwrap_or(0),
                        gpu_wait: m(f::GPU_WAIT_TIME).unwrap_or(0),
                    }),
                    serving_tid: None,
                    handoffs: Vec::new(),
                })
            }),
            profile: m(f::PYTHON_SAMPLES).map(|n| crate::profiler::CallProfile {
                python_samples: n,
                hot_frame: s(f::HOT_FRAME).unwrap_or_default(),
                hot_library: s(f::HOT_LIBRARY).unwrap_or_default(),
            }),
        })
    } else if e.is(schema::POOL_CHECKIN) {
        AgentEvent::PoolCheckin(PoolCheckin {
            time_unix_nano: t,
            call: record(e),
            busy_time: m(f::BUSY_TIME).unwrap_or(0),
        })
    } else if e.is(schema::POOL_CHECKOUT) {
        AgentEvent::PoolCheckout(PoolCheckout {
            time_unix_nano: t,
            pool: s(f::POOL).unwrap_or_default().into(),
            worker_id: s(f::WORKER_ID).unwrap_or_default().into(),
            worker_pid: u(f::WORKER_PID).unwrap_or(0) as u32,
            correlation_id: s(f::CORRELATION_ID).map(Arc::from),
            queue_time: m(f::QUEUE_TIME),
        })
    } else if e.is(schema::POOL_SIZE) {
        AgentEvent::PoolSize(PoolSize {
            time_unix_nano: t,
            pool: s(f::POOL).unwrap_or_default(),
            size: m(f::SIZE).unwrap_or(0),
            busy: m(f::BUSY).unwrap_or(0),
            idle: m(f::IDLE).unwrap_or(0),
        })
    } else if e.is(schema::WORKER_CRASH) {
        let i = |k: &str| e.metadata.get(k).and_then(Value::as_i64).map(|x| x as i32);
        AgentEvent::WorkerCrash(WorkerCrash {
            time_unix_nano: t,
            pool: s(f::POOL).unwrap_or_default(),
            worker_id: s(f::WORKER_ID).unwrap_or_default(),
            worker_pid: u(f::WORKER_PID).unwrap_or(0) as u32,
            crash_type: match s(f::TYPE).as_deref() {
                Some("oom") => "oom",
                Some("signal") => "signal",
                Some("exit_code") => "exit_code",
                _ => "unknown",
            },
            exit_code: i(f::EXIT_CODE),
            signal: i(f::SIGNAL),
            oom_killed: e.metadata.get(f::OOM_KILLED).and_then(Value::as_bool) == Some(true),
            reason: s(f::REASON).unwrap_or_default(),
            in_flight_calls: m(f::IN_FLIGHT_CALLS).unwrap_or(0),
        })
    } else if e.is(schema::CIRCUIT_BREAKER_OPEN) {
        AgentEvent::CircuitBreakerOpen(CircuitBreakerOpen {
            time_unix_nano: t,
            pool: s(f::POOL).unwrap_or_default(),
            worker_id: s(f::WORKER_ID).unwrap_or_default(),
            worker_pid: u(f::WORKER_PID).unwrap_or(0) as u32,
            failure_count: m(f::FAILURE_COUNT).unwrap_or(0),
            error_type: s(f::ERROR_TYPE),
        })
    } else if e.is(schema::HEALTH_ALERT) {
        AgentEvent::HealthAlert(HealthAlert {
            time_unix_nano: t,
            pool: s(f::POOL).unwrap_or_default(),
            alert_type: "crash_loop",
            worker_id: s(f::WORKER_ID).unwrap_or_default(),
            crash_count: m(f::CRASH_COUNT).unwrap_or(0),
            window_s: m(f::WINDOW_S).unwrap_or(0),
        })
    } else {
        return None;
    };
    Some(ev)
}

fn record(e: &Event) -> Arc<CallRecord> {
    let s = |k: &str| {
        e.metadata
            .get(k)
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let u = |k: &str| e.metadata.get(k).and_then(Value::as_u64);
    let id = match (s(f::TRANSPORT).as_deref(), u(f::STREAM_ID)) {
        (Some("pipe"), _) => match e.metadata.get(f::REQUEST_ID).and_then(Value::as_i64) {
            Some(i) => CallRef::Pipe(i),
            None => CallRef::PipeSeq,
        },
        (_, sid) => CallRef::Stream(sid.unwrap_or(0) as u32),
    };
    Arc::new(CallRecord {
        operation: s(f::OPERATION).unwrap_or_default().into(),
        library: s(f::LIBRARY).map(Arc::from),
        function: s(f::FUNCTION).map(Arc::from),
        tool: s(f::TOOL).map(Arc::from),
        session_id: s(f::SESSION_ID).map(Arc::from),
        correlation_id: s(f::CORRELATION_ID).map(Arc::from),
        pool: s(f::POOL).unwrap_or_default().into(),
        worker_id: s(f::WORKER_ID).unwrap_or_default().into(),
        beam_pid: u(f::BEAM_PID).unwrap_or(0) as u32,
        worker_pid: u(f::WORKER_PID).unwrap_or(0) as u32,
        worker_tid: u(f::WORKER_TID).map(|x| x as u32),
        conn_id: u(f::CONN_ID).unwrap_or(0),
        id,
        internal: e.metadata.get(f::INTERNAL).and_then(Value::as_bool) == Some(true),
    })
}
