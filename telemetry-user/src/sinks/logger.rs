//! The design's Logger handler, on `tracing`: slow calls as warnings naming
//! `library.function` and the time split, call exceptions, worker crashes and health
//! alerts as errors, circuit breakers opening as warnings, everything else at debug.
//! Per-call events arrive already thinned by the tracker's `sample_rate`.
use crate::events::{
    json, AgentEvent, BusReceiver, CallEnd, CallRecord, CircuitBreakerOpen, HealthAlert,
    WorkerCrash,
};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use tracing::Level;

/// Log target, so `RUST_LOG=snakepit::events=debug` selects these lines.
pub const TARGET: &str = "snakepit::events";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoggerConfig {
    /// Calls that took longer than this are warnings.
    pub slow_call_ms: u64,
}

impl Default for LoggerConfig {
    fn default() -> Self {
        LoggerConfig { slow_call_ms: 1000 }
    }
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

/// `library.function`, else the operation.
fn call_name(c: &CallRecord) -> String {
    match (&c.library, &c.function) {
        (Some(l), Some(f)) => format!("{l}.{f}"),
        (None, Some(f)) => f.to_string(),
        _ => c.operation.to_string(),
    }
}

/// Where the time went: queue (BEAM send to worker receipt), python (worker
/// receipt to response start), the rest (response transfer and BEAM reads).
fn time_split(e: &CallEnd) -> String {
    let mut s = String::new();
    if let Some(q) = e.queue_time {
        let _ = write!(s, "queue {:.1} ms, ", ms(q));
    }
    if let Some(p) = e.python_time {
        let _ = write!(s, "python {:.1} ms, ", ms(p));
    }
    if let (Some(q), Some(p)) = (e.queue_time, e.python_time) {
        let ser = e.split.as_ref().map_or(0, |x| {
            let t = |p: &Option<crate::events::SerializeSplit>| p.as_ref().map_or(0, |p| p.time);
            t(&x.deserialize) + t(&x.serialize)
        });
        let other = e
            .duration
            .saturating_sub(q.saturating_add(p).saturating_add(ser));
        let _ = write!(s, "other {:.1} ms, ", ms(other));
    }
    if let Some(x) = &e.split {
        if let Some(d) = &x.deserialize {
            let _ = write!(s, "decode {:.1} ms, ", ms(d.time));
        }
        if let Some(d) = &x.serialize {
            let _ = write!(s, "encode {:.1} ms, ", ms(d.time));
        }
    }
    s.trim_end_matches(", ").to_string()
}

/// `, cpu bound 92 %`: the scheduling verdict of the worker window, when known.
fn bound_text(e: &CallEnd) -> String {
    e.split
        .as_ref()
        .and_then(|x| x.sched.as_ref())
        .and_then(|s| s.bound())
        .map(|(b, share)| format!(", {b} bound {:.0} %", share * 100.0))
        .unwrap_or_default()
}

fn generic(e: &AgentEvent) -> String {
    let mut line = e.name().dotted();
    json::write_text_fields(&mut line, e);
    line
}

/// Who served the call, for the end of a line.
fn whom(c: &CallRecord) -> String {
    format!(
        "pool={} worker={} correlation_id={}",
        c.pool,
        c.worker_id,
        c.correlation_id.as_deref().unwrap_or("?")
    )
}

/// The level and line for one event.
pub fn render(e: &AgentEvent, cfg: &LoggerConfig) -> (Level, String) {
    (level(e, cfg), render_line(e, cfg))
}

/// The level `e` is logged at (known before its line is made).
pub fn level(e: &AgentEvent, cfg: &LoggerConfig) -> Level {
    match e {
        AgentEvent::CallEnd(c) if c.is_exception() => Level::ERROR,
        AgentEvent::CallEnd(c) if is_slow(c, cfg) => Level::WARN,
        AgentEvent::WorkerCrash(_) | AgentEvent::HealthAlert(_) => Level::ERROR,
        AgentEvent::CircuitBreakerOpen(_) => Level::WARN,
        _ => Level::DEBUG,
    }
}

fn is_slow(e: &CallEnd, cfg: &LoggerConfig) -> bool {
    e.duration > cfg.slow_call_ms.saturating_mul(1_000_000)
}

fn render_line(e: &AgentEvent, cfg: &LoggerConfig) -> String {
    match e {
        AgentEvent::CallEnd(c) if c.is_exception() => exception_line(c),
        AgentEvent::CallEnd(c) => stop_line(c, cfg),
        AgentEvent::WorkerCrash(c) => crash_line(c),
        AgentEvent::CircuitBreakerOpen(c) => breaker_line(c),
        AgentEvent::HealthAlert(a) => alert_line(a),
        _ => generic(e),
    }
}

fn stop_line(e: &CallEnd, cfg: &LoggerConfig) -> String {
    let d = e.duration;
    let split = time_split(e);
    let split = if split.is_empty() {
        String::new()
    } else {
        format!(" ({split})")
    };
    let result = e.result();
    let err = e
        .error_type()
        .map(|t| format!(" error_type={t}"))
        .unwrap_or_default();
    let whom = whom(&e.call);
    let name = call_name(&e.call);
    if is_slow(e, cfg) {
        return format!(
            "slow Python call: {name} took {:.1} ms{bound}{split}, result={result}{err} {whom}",
            ms(d),
            bound = bound_text(e),
        );
    }
    format!(
        "Python call: {name} {:.1} ms{split}, result={result}{err} {whom}",
        ms(d)
    )
}

fn exception_line(e: &CallEnd) -> String {
    format!(
        "Python call failed: {} ({}) kind={} error_type={} after {:.1} ms: {} {}",
        call_name(&e.call),
        e.call.operation,
        e.kind().unwrap_or("?"),
        e.error_type().unwrap_or("?"),
        ms(e.duration),
        e.error_message().unwrap_or("?"),
        whom(&e.call),
    )
}

fn or_unknown<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "?".to_string(), |v| v.to_string())
}

fn crash_line(e: &WorkerCrash) -> String {
    format!(
        "Python worker crashed: {} pool={} pid={} type={} exit_code={} signal={} oom_killed={} in_flight_calls={}",
        e.worker_id,
        e.pool,
        e.worker_pid,
        e.crash_type,
        or_unknown(e.exit_code),
        or_unknown(e.signal),
        e.oom_killed,
        e.in_flight_calls,
    )
}

fn breaker_line(e: &CircuitBreakerOpen) -> String {
    format!(
        "Circuit breaker opened for worker {} (pool {}) after {} consecutive failures, last error_type={}",
        e.worker_id,
        e.pool,
        e.failure_count,
        or_unknown(e.error_type.as_deref()),
    )
}

fn alert_line(e: &HealthAlert) -> String {
    format!(
        "Health alert: {} in pool {} - {} crashes within {} s",
        e.alert_type, e.pool, e.crash_count, e.window_s,
    )
}

fn log(level: Level, line: &str) {
    // tracing's macros need the level at compile time.
    match level {
        Level::ERROR => tracing::error!(target: TARGET, "{line}"),
        Level::WARN => tracing::warn!(target: TARGET, "{line}"),
        Level::INFO => tracing::info!(target: TARGET, "{line}"),
        Level::DEBUG => tracing::debug!(target: TARGET, "{line}"),
        _ => tracing::trace!(target: TARGET, "{line}"),
    }
}

/// Logs every event until the bus closes.
pub async fn run(mut rx: BusReceiver, cfg: LoggerConfig) {
    let debug = tracing::enabled!(target: TARGET, Level::DEBUG);
    while let Some(event) = rx.recv().await {
        // The level first: with debug off, most events (every call that is neither
        // slow nor failed) make no line at all.
        let level = level(&event, &cfg);
        if level == Level::DEBUG && !debug {
            continue;
        }
        log(level, &render_line(&event, &cfg));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{schema, to_typed, Event};

    fn stop(duration_ms: u64) -> Event {
        Event::new(schema::CALL_STOP)
            .measure("duration", duration_ms * 1_000_000)
            .measure("queue_time", 2_000_000)
            .measure("python_time", duration_ms * 1_000_000 - 3_000_000)
            .meta("library", "numpy")
            .meta("function", "mean")
            .meta("operation", "ExecuteTool")
            .meta("result", "ok")
    }

    #[test]
    fn slow_calls_warn_with_library_function_and_time_split() {
        let cfg = LoggerConfig::default();
        let (level, line) = render(&to_typed(&stop(1500)), &cfg);
        assert_eq!(level, Level::WARN);
        assert!(line.contains("numpy.mean took 1500.0 ms"), "{line}");
        assert!(line.contains("queue 2.0 ms"), "{line}");
        assert!(line.contains("python 1497.0 ms"), "{line}");
        assert!(line.contains("other 1.0 ms"), "{line}");
        let (level, _) = render(&to_typed(&stop(20)), &cfg);
        assert_eq!(level, Level::DEBUG);
        let (level, _) = render(&to_typed(&stop(20)), &LoggerConfig { slow_call_ms: 10 });
        assert_eq!(level, Level::WARN);
    }

    #[test]
    fn slow_calls_say_what_bound_them_and_their_serialization() {
        let ev = stop(1200)
            .measure("worker_time", 1_196_000_000u64)
            .measure("deserialize_time", 3_000_000u64)
            .measure("serialize_time", 1_000_000u64)
            .measure("on_cpu_time", 1_100_000_000u64)
            .measure("runqueue_time", 50_000_000u64)
            .measure("io_wait_time", 46_000_000u64)
            .measure("gil_wait_time", 0u64)
            .measure("lock_wait_time", 0u64)
            .measure("sleep_time", 0u64)
            .measure("gpu_wait_time", 0u64);
        let (level, line) = render(&to_typed(&ev), &LoggerConfig::default());
        assert_eq!(level, Level::WARN);
        assert!(
            line.contains("numpy.mean took 1200.0 ms, cpu bound 92 %"),
            "{line}"
        );
        assert!(line.contains("decode 3.0 ms, encode 1.0 ms"), "{line}");
    }

    #[test]
    fn exceptions_and_crashes_are_errors_the_rest_debug() {
        let cfg = LoggerConfig::default();
        let ex = Event::new(schema::CALL_EXCEPTION)
            .measure("duration", 5_000_000)
            .meta("operation", "ExecuteTool")
            .meta("function", "sleep")
            .meta("kind", "exit")
            .meta("error_type", "exit")
            .meta("reason", "worker killed by signal 9");
        let (level, line) = render(&to_typed(&ex), &cfg);
        assert_eq!(level, Level::ERROR);
        assert!(line.contains("sleep (ExecuteTool) kind=exit"), "{line}");
        let crash = Event::new(schema::WORKER_CRASH)
            .meta("worker_id", "w1")
            .meta("signal", 9);
        let (level, line) = render(&to_typed(&crash), &cfg);
        assert_eq!(level, Level::ERROR);
        assert!(line.contains("signal=9"), "{line}");
        let (level, _) = render(&to_typed(&Event::new(schema::HEALTH_ALERT)), &cfg);
        assert_eq!(level, Level::ERROR);
        let (level, _) = render(&to_typed(&Event::new(schema::CIRCUIT_BREAKER_OPEN)), &cfg);
        assert_eq!(level, Level::WARN);
        let (level, line) = render(
            &to_typed(
                &Event::new(schema::POOL_SIZE)
                    .measure("size", 2)
                    .measure("busy", 1)
                    .measure("idle", 1)
                    .meta("pool", "p"),
            ),
            &cfg,
        );
        assert_eq!(level, Level::DEBUG);
        assert_eq!(line, "snakepit.pool.size busy=1 idle=1 size=2 pool=p");
    }

    #[tokio::test]
    async fn run_drains_the_bus() {
        let bus = crate::events::Bus::new(16);
        let rx = bus.subscribe();
        bus.publish(stop(10));
        drop(bus);
        run(rx, LoggerConfig::default()).await;
    }
}
