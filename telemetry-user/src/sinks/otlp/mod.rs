//! OTLP exporter sink: call spans and the call/pool metrics to an OpenTelemetry
//! collector, over gRPC or HTTP/protobuf.
//!
//! Spans go through the SDK's `BatchSpanProcessor` (its own thread, a bounded queue);
//! metrics through a `SdkMeterProvider` with a `PeriodicReader`. A collector that is
//! down costs counted drops, not memory: this sink counts the spans it has handed to the
//! processor and not yet seen exported, and drops (counted) any span that would take
//! that past `max_queue_length`, so the SDK's own queue never overflows silently.
//! Metrics are aggregated in place (their memory grows with attribute sets, not time).
//!
//! The exporters are built when the service name is known: the config's
//! `service_name`, else the Snakepit instance name from the first topology event that
//! carries one, else "snakepit" once the first call (or crash, breaker, alert) arrives
//! or pool gauges have waited 5 s. Pool gauges seen before that are replayed.
mod export;
mod metrics;
pub mod spans;

use crate::events::{schema, AgentEvent, BusReceiver, CallRecord, Event};
use export::Exporting;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use spans::CallContext;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

pub use export::OtlpError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum OtlpProtocol {
    /// OTLP/gRPC (the collector's port 4317).
    #[default]
    Grpc,
    /// OTLP/HTTP with protobuf bodies (port 4318); `/v1/traces` and `/v1/metrics` are
    /// appended to the endpoint.
    HttpProtobuf,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OtlpConfig {
    pub enabled: bool,
    /// Collector base URL.
    pub endpoint: String,
    pub protocol: OtlpProtocol,
    /// `service.name` (default: the Snakepit instance name, else "snakepit").
    pub service_name: Option<String>,
    /// How often spans are flushed and metrics exported.
    pub export_interval_ms: u64,
    /// Spans per export request.
    pub batch_size: usize,
    /// Spans waiting for export at most; more are dropped and counted.
    pub max_queue_length: usize,
    /// One export (with its retries) gives up after this long.
    pub export_timeout_ms: u64,
    pub traces: bool,
    pub metrics: bool,
}

impl Default for OtlpConfig {
    fn default() -> Self {
        OtlpConfig {
            enabled: false,
            endpoint: "http://127.0.0.1:4317".into(),
            protocol: OtlpProtocol::Grpc,
            service_name: None,
            export_interval_ms: 5_000,
            batch_size: 512,
            max_queue_length: 2_048,
            export_timeout_ms: 10_000,
            traces: true,
            metrics: true,
        }
    }
}

impl OtlpConfig {
    pub fn validate(&self) -> Result<(), OtlpError> {
        if self.batch_size == 0 || self.max_queue_length == 0 {
            return Err(OtlpError::Config(
                "otlp.batch_size and otlp.max_queue_length must be > 0".into(),
            ));
        }
        if self.export_interval_ms == 0 || self.export_timeout_ms == 0 {
            return Err(OtlpError::Config(
                "otlp.export_interval_ms and otlp.export_timeout_ms must be > 0".into(),
            ));
        }
        if !(self.endpoint.starts_with("http://") || self.endpoint.starts_with("https://")) {
            return Err(OtlpError::Config(format!(
                "otlp.endpoint must be an http:// or https:// URL, got {:?}",
                self.endpoint
            )));
        }
        Ok(())
    }
}

/// The sink's counters, shared with the exporter threads.
#[derive(Debug, Default)]
pub struct OtlpCounters {
    spans_exported: AtomicU64,
    /// Not enqueued: the queue was full (collector slow or down).
    spans_dropped: AtomicU64,
    /// Enqueued, then lost in a failed export.
    spans_failed: AtomicU64,
    /// Handed to the processor and not yet through an export.
    spans_queued: AtomicU64,
    span_export_failures: AtomicU64,
    metric_exports: AtomicU64,
    metric_export_failures: AtomicU64,
}

/// A snapshot of the counters, for the agent's stats event.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct OtlpStats {
    pub exported_spans: u64,
    pub dropped_spans: u64,
    pub failed_spans: u64,
    pub queued_spans: u64,
    /// Failed export requests, spans and metrics together.
    pub export_failures: u64,
    pub metric_exports: u64,
    pub metric_export_failures: u64,
}

impl OtlpCounters {
    pub fn snapshot(&self) -> OtlpStats {
        let span_failures = self.span_export_failures.load(Ordering::Relaxed);
        let metric_failures = self.metric_export_failures.load(Ordering::Relaxed);
        OtlpStats {
            exported_spans: self.spans_exported.load(Ordering::Relaxed),
            dropped_spans: self.spans_dropped.load(Ordering::Relaxed),
            failed_spans: self.spans_failed.load(Ordering::Relaxed),
            queued_spans: self.spans_queued.load(Ordering::Relaxed),
            export_failures: span_failures + metric_failures,
            metric_exports: self.metric_exports.load(Ordering::Relaxed),
            metric_export_failures: metric_failures,
        }
    }
}

static GLOBAL: LazyLock<Arc<OtlpCounters>> = LazyLock::new(Arc::default);

/// The counters of the sink started with [`run`] (all zero when it is not running).
pub fn stats() -> OtlpStats {
    GLOBAL.snapshot()
}

/// Runs the OTLP sink until the bus closes, then flushes (bounded by the export
/// timeout). Counters: [`stats`].
pub async fn run(cfg: OtlpConfig, rx: BusReceiver) {
    run_with(cfg, rx, GLOBAL.clone()).await
}

/// [`run`] with the caller's counters.
pub async fn run_with(cfg: OtlpConfig, rx: BusReceiver, counters: Arc<OtlpCounters>) {
    run_with_until(cfg, rx, counters, None).await
}

/// [`run`] that also ends, flushing the same way, when `stop` fires or its sender
/// is dropped (a SIGHUP replacing the exporter). It is checked before each event,
/// so no event is exported after the replacement took over.
pub async fn run_until(cfg: OtlpConfig, rx: BusReceiver, stop: oneshot::Receiver<()>) {
    run_with_until(cfg, rx, GLOBAL.clone(), Some(stop)).await
}

async fn run_with_until(
    cfg: OtlpConfig,
    mut rx: BusReceiver,
    counters: Arc<OtlpCounters>,
    mut stop: Option<oneshot::Receiver<()>>,
) {
    let stop_fired = |stop: &mut Option<oneshot::Receiver<()>>| {
        stop.as_mut()
            .is_some_and(|s| !matches!(s.try_recv(), Err(oneshot::error::TryRecvError::Empty)))
    };
    if !cfg.enabled {
        return;
    }
    if let Err(e) = cfg.validate() {
        tracing::error!("otlp sink disabled: {e}");
        return;
    }
    let mut sink = Sink::new(cfg, counters);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let mut ticks = 0u64;
    loop {
        tokio::select! {
            ev = rx.recv() => match ev {
                Some(_) if stop_fired(&mut stop) => break,
                Some(ev) => sink.on_event(&ev),
                None => break,
            },
            _ = tick.tick() => {
                ticks += 1;
                sink.on_tick();
                if ticks.is_multiple_of(FAILURE_REPORT_TICKS) {
                    sink.report_failures();
                }
            }
            _ = async { stop.as_mut().expect("checked").await }, if stop.is_some() => break,
        }
    }
    sink.shutdown().await;
}

/// How long pool gauges wait for an instance name before exporting under "snakepit".
const NAME_WAIT: Duration = Duration::from_secs(5);
/// Export failures are logged at most this often (in 1 s ticks).
const FAILURE_REPORT_TICKS: u64 = 30;

struct Sink {
    cfg: OtlpConfig,
    counters: Arc<OtlpCounters>,
    exporting: Option<Exporting>,
    /// The build failed: the sink only drains the bus.
    broken: bool,
    /// `service.name` once known.
    instance_name: Option<String>,
    instance_by_beam: HashMap<u64, String>,
    /// `worker_addr` of each connection (conn_id -> (address, port)).
    peer_by_conn: HashMap<u64, (String, u16)>,
    /// gRPC listen port by worker id, when the connection's address is unknown.
    port_by_worker: HashMap<String, u16>,
    /// Latest pool sizes, replayed when the exporters start.
    pool_sizes: HashMap<String, Arc<AgentEvent>>,
    failures_reported: u64,
    /// Since when pool gauges wait for a service name.
    waiting_since: Option<Instant>,
    /// The `service.name` the exporters were built with.
    service_name: Option<String>,
}

impl Sink {
    fn new(cfg: OtlpConfig, counters: Arc<OtlpCounters>) -> Self {
        Sink {
            cfg,
            counters,
            exporting: None,
            broken: false,
            instance_name: None,
            instance_by_beam: HashMap::new(),
            peer_by_conn: HashMap::new(),
            port_by_worker: HashMap::new(),
            pool_sizes: HashMap::new(),
            failures_reported: 0,
            waiting_since: None,
            service_name: None,
        }
    }

    fn name_known(&self) -> bool {
        self.cfg.service_name.is_some() || self.instance_name.is_some()
    }

    /// Pool gauges waited long enough for an instance name: export them anyway.
    fn on_tick(&mut self) {
        let waited = self.waiting_since.is_some_and(|t| t.elapsed() >= NAME_WAIT);
        if self.exporting.is_none() && !self.broken && waited {
            self.start_exporting();
        }
    }

    fn on_event(&mut self, ev: &Arc<AgentEvent>) {
        if self.broken {
            return;
        }
        let call = match &**ev {
            AgentEvent::CallEnd(c) => Some(c),
            _ => None,
        };
        let is_pool_size = if let AgentEvent::PoolSize(p) = &**ev {
            if !self.pool_sizes.contains_key(&p.pool) {
                self.pool_sizes.insert(p.pool.clone(), ev.clone());
            } else if let Some(slot) = self.pool_sizes.get_mut(&p.pool) {
                *slot = ev.clone();
            }
            true
        } else {
            false
        };
        if let AgentEvent::Dynamic(d) = &**ev {
            self.learn_topology(d);
        }
        // Pool sizes alone wait (they are replayed): a pipe worker's discovery comes
        // with its pool size but without the instance name a gRPC worker brings.
        let wants_export = matches!(
            &**ev,
            AgentEvent::CallEnd(_)
                | AgentEvent::WorkerCrash(_)
                | AgentEvent::CircuitBreakerOpen(_)
                | AgentEvent::HealthAlert(_)
        );
        if self.exporting.is_none() && is_pool_size && self.waiting_since.is_none() {
            self.waiting_since = Some(Instant::now());
        }
        if self.exporting.is_none() && (wants_export || self.name_known()) {
            self.start_exporting();
        }
        let Some(exp) = &self.exporting else {
            return;
        };
        if let Some(instruments) = &exp.instruments {
            instruments.record(ev);
        }
        if let Some(call) = call.filter(|_| exp.spans.is_some()) {
            let ctx = self.call_context(&call.call);
            if let Some(spans) = spans::call_spans(ev, &ctx, &exp.scope) {
                self.submit(spans);
            }
        }
    }

    /// Enqueues a call's spans, all or none (a lone child would lose its parent).
    fn submit(&self, spans: Vec<opentelemetry_sdk::trace::SpanData>) {
        use opentelemetry_sdk::trace::SpanProcessor;
        let Some(exp) = &self.exporting else { return };
        let Some(processor) = &exp.spans else { return };
        let n = spans.len() as u64;
        // Only this task enqueues, so check-then-add cannot overshoot; the exporter
        // thread only lowers the count.
        let queued = self.counters.spans_queued.load(Ordering::Acquire);
        if queued + n > self.cfg.max_queue_length as u64 {
            self.counters.spans_dropped.fetch_add(n, Ordering::Relaxed);
            return;
        }
        self.counters.spans_queued.fetch_add(n, Ordering::AcqRel);
        for span in spans {
            processor.on_end(span);
        }
    }

    fn learn_topology(&mut self, ev: &Event) {
        if ev.is(schema::BEAM_DISCOVERED) || ev.is(schema::WORKER_DISCOVERED) {
            if let (Some(pid), Some(name)) =
                (meta_u64(ev, "beam_pid"), meta_str(ev, "instance_name"))
            {
                self.instance_by_beam.insert(pid, name.to_string());
                if self.instance_name.is_none() {
                    self.instance_name = Some(name.to_string());
                }
            }
        }
        if ev.is(schema::WORKER_DISCOVERED) || ev.is(schema::WORKER_LISTENING) {
            if let (Some(id), Some(port)) = (meta_str(ev, "worker_id"), meta_u64(ev, "port")) {
                if let Ok(port) = u16::try_from(port) {
                    self.port_by_worker.insert(id.to_string(), port);
                }
            }
        }
        if ev.is(schema::CONNECTION_OPENED) {
            if let (Some(conn), Some(addr)) = (meta_u64(ev, "conn_id"), meta_str(ev, "worker_addr"))
            {
                if let Some((host, port)) = split_host_port(addr) {
                    self.peer_by_conn.insert(conn, (host, port));
                }
            }
        } else if ev.is(schema::CONNECTION_CLOSED) {
            if let Some(conn) = meta_u64(ev, "conn_id") {
                self.peer_by_conn.remove(&conn);
            }
        } else if ev.is(schema::WORKER_EXITED) {
            if let Some(id) = meta_str(ev, "worker_id") {
                self.port_by_worker.remove(id);
            }
        } else if ev.is(schema::BEAM_EXITED) {
            if let Some(pid) = meta_u64(ev, "beam_pid") {
                self.instance_by_beam.remove(&pid);
            }
        }
    }

    fn call_context(&self, c: &CallRecord) -> CallContext {
        let peer = self.peer_by_conn.get(&c.conn_id);
        let port = peer
            .map(|p| p.1)
            .or_else(|| self.port_by_worker.get(&*c.worker_id).copied());
        CallContext {
            server_address: peer.map(|p| p.0.clone()),
            server_port: port,
            instance_name: self.instance_by_beam.get(&u64::from(c.beam_pid)).cloned(),
        }
    }

    fn start_exporting(&mut self) {
        let service_name = self
            .cfg
            .service_name
            .clone()
            .or_else(|| self.instance_name.clone())
            .unwrap_or_else(|| "snakepit".to_string());
        match Exporting::build(&self.cfg, &service_name, self.counters.clone()) {
            Ok(exp) => {
                tracing::info!(
                    endpoint = %self.cfg.endpoint,
                    protocol = ?self.cfg.protocol,
                    service_name = %service_name,
                    "otlp sink exporting"
                );
                if let Some(instruments) = &exp.instruments {
                    for ev in self.pool_sizes.values() {
                        instruments.record(ev);
                    }
                }
                self.exporting = Some(exp);
                self.service_name = Some(service_name);
            }
            Err(e) => {
                tracing::error!("otlp sink disabled: {e}");
                self.broken = true;
            }
        }
    }

    /// Logs new export failures (at most once per report interval).
    fn report_failures(&mut self) {
        let s = self.counters.snapshot();
        if s.export_failures > self.failures_reported {
            tracing::warn!(
                export_failures = s.export_failures,
                dropped_spans = s.dropped_spans,
                failed_spans = s.failed_spans,
                endpoint = %self.cfg.endpoint,
                "otlp exports are failing"
            );
            self.failures_reported = s.export_failures;
        }
    }

    async fn shutdown(self) {
        let counters = self.counters.clone();
        if let Some(exp) = self.exporting {
            let timeout = Duration::from_millis(self.cfg.export_timeout_ms);
            // The SDK's shutdown blocks on its threads.
            let _ = tokio::task::spawn_blocking(move || exp.shutdown(timeout)).await;
        }
        let s = counters.snapshot();
        tracing::info!(
            exported_spans = s.exported_spans,
            dropped_spans = s.dropped_spans,
            failed_spans = s.failed_spans,
            export_failures = s.export_failures,
            metric_exports = s.metric_exports,
            metric_export_failures = s.metric_export_failures,
            "otlp sink stopped"
        );
    }
}

fn meta_str<'a>(ev: &'a Event, k: &str) -> Option<&'a str> {
    ev.metadata.get(k).and_then(Value::as_str)
}

fn meta_u64(ev: &Event, k: &str) -> Option<u64> {
    ev.metadata.get(k).and_then(Value::as_u64)
}

/// `"127.0.0.1:4000"` / `"[::1]:4000"` -> (host, port).
fn split_host_port(addr: &str) -> Option<(String, u16)> {
    let (host, port) = addr.rsplit_once(':')?;
    let port = port.parse().ok()?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Some((host.to_string(), port))
}

#[cfg(test)]
mod tests;
