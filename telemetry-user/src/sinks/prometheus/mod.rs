//! Prometheus exporter: the design's metrics, named the Prometheus way, filled from
//! bus events and rendered as OpenMetrics text (docs/metrics.md lists them).
//!
//! Every label whose values come from the wire (library, function, error type, pool,
//! worker, device, model, ...) goes through one [`LabelCap`], so a flood of distinct
//! names cannot grow the metric set past the cap.
pub mod cap;
mod observe;

use crate::events::{schema, AgentEvent, CallEnd, Event, PoolSize, WorkerSplit};
use cap::LabelCap;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use serde_json::Value;
use std::collections::HashSet;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("encoding metrics: {0}")]
    Encode(#[from] std::fmt::Error),
}

/// Seconds. Sub-millisecond tool calls up to the design's 10 ms .. 10 s range and beyond.
pub fn default_buckets() -> Vec<f64> {
    vec![
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        5.0, 10.0, 30.0,
    ]
}

/// What the exporter needs from the `[http]` configuration.
#[derive(Debug, Clone)]
pub struct MetricsConfig {
    /// Histogram bucket upper bounds, seconds (sorted, deduplicated here).
    pub buckets: Vec<f64>,
    /// Distinct values per label before the rest become `other`.
    pub label_value_cap: usize,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            buckets: default_buckets(),
            label_value_cap: 500,
        }
    }
}

/// The content type of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    library: String,
    function: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FunctionLabels {
    library: String,
    function: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SchedLabels {
    library: String,
    function: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BoundLabels {
    library: String,
    function: String,
    bound: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    library: String,
    error_type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabels {
    pool: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CrashLabels {
    pool: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GpuLabels {
    device: String,
    pool: String,
    worker_id: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MemoryLabels {
    memory_type: String,
    device: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SampleLabels {
    function: String,
    hot_library: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabels {
    model: String,
    device: String,
}

/// Repro scripts: `outcome` written or skipped, `reason` why skipped ("" if written).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReproLabels {
    outcome: &'static str,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProgramLabels {
    program: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ExporterLabels {
    exporter: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LabelLabels {
    label: String,
}

/// Builds histograms with the configured buckets.
#[derive(Clone, Debug)]
struct Buckets(Arc<Vec<f64>>);

impl MetricConstructor<Histogram> for Buckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(self.0.iter().copied())
    }
}

type HistFamily<L> = Family<L, Histogram, Buckets>;
type FloatGauge = Gauge<f64, AtomicU64>;
type FloatCounter = Counter<f64, AtomicU64>;

const CRASH_REASONS: [&str; 3] = ["exit_code", "signal", "oom"];
const MB: f64 = 1024.0 * 1024.0;
const NS: f64 = 1e9;

/// The metric set. Not thread-safe by itself for `observe` (it owns the label cap);
/// the HTTP server keeps it behind a lock.
pub struct Metrics {
    registry: Registry,
    cap: LabelCap,
    pools_seen: HashSet<String>,
    calls: Family<CallLabels, Counter>,
    call_duration: HistFamily<FunctionLabels>,
    queue_time: HistFamily<FunctionLabels>,
    python_time: HistFamily<FunctionLabels>,
    worker_time: HistFamily<FunctionLabels>,
    deserialize_time: HistFamily<FunctionLabels>,
    serialize_time: HistFamily<FunctionLabels>,
    sched_time: HistFamily<SchedLabels>,
    bound: Family<BoundLabels, Counter>,
    python_samples: Family<SampleLabels, Counter>,
    exceptions: Family<ErrorLabels, Counter>,
    pool_size: Family<PoolLabels, Gauge>,
    pool_idle: Family<PoolLabels, Gauge>,
    pool_busy: Family<PoolLabels, Gauge>,
    pool_checkouts: Family<PoolLabels, Counter>,
    worker_crashes: Family<CrashLabels, Counter>,
    circuit_breaker_opens: Family<PoolLabels, Counter>,
    gpu_allocated: Family<GpuLabels, FloatGauge>,
    gpu_reserved: Family<GpuLabels, FloatGauge>,
    gpu_free: Family<GpuLabels, FloatGauge>,
    gpu_total: Family<GpuLabels, FloatGauge>,
    gpu_devices: Gauge,
    gpu_devices_seen: HashSet<String>,
    memory_allocated: Family<MemoryLabels, Counter>,
    memory_released: Family<MemoryLabels, Counter>,
    inference_duration: HistFamily<ModelLabels>,
    tokens_per_second: Family<ModelLabels, FloatGauge>,
    // Agent self-metrics (cumulative values from `agent.stats`).
    events_read: Counter,
    bus_events: Counter,
    ringbuf_drops: Counter,
    decode_errors: Family<KindLabels, Counter>,
    unknown_methods: Counter,
    program_runs: Family<ProgramLabels, Counter>,
    program_run_seconds: Family<ProgramLabels, FloatCounter>,
    map_full: Counter,
    watched_fds: Gauge,
    bus_lagged: Counter,
    export_failures: Family<ExporterLabels, Counter>,
    label_overflow: Family<LabelLabels, Counter>,
    repro_scripts: Family<ReproLabels, Counter>,
}

impl Metrics {
    pub fn new(cfg: &MetricsConfig) -> Self {
        let mut b: Vec<f64> = cfg
            .buckets
            .iter()
            .copied()
            .filter(|v| v.is_finite() && *v > 0.0)
            .collect();
        b.sort_by(f64::total_cmp);
        b.dedup();
        if b.is_empty() {
            b = default_buckets();
        }
        let buckets = Buckets(Arc::new(b));
        let hist = || Family::new_with_constructor(buckets.clone());
        let mut m = Metrics {
            registry: Registry::default(),
            cap: LabelCap::new(cfg.label_value_cap),
            pools_seen: HashSet::new(),
            calls: Family::default(),
            call_duration: hist(),
            queue_time: hist(),
            python_time: hist(),
            worker_time: hist(),
            deserialize_time: hist(),
            serialize_time: hist(),
            sched_time: Family::new_with_constructor(buckets.clone()),
            bound: Family::default(),
            python_samples: Family::default(),
            exceptions: Family::default(),
            pool_size: Family::default(),
            pool_idle: Family::default(),
            pool_busy: Family::default(),
            pool_checkouts: Family::default(),
            worker_crashes: Family::default(),
            circuit_breaker_opens: Family::default(),
            gpu_allocated: Family::default(),
            gpu_reserved: Family::default(),
            gpu_free: Family::default(),
            gpu_total: Family::default(),
            gpu_devices: Gauge::default(),
            gpu_devices_seen: HashSet::new(),
            memory_allocated: Family::default(),
            memory_released: Family::default(),
            inference_duration: Family::new_with_constructor(buckets.clone()),
            tokens_per_second: Family::default(),
            events_read: Counter::default(),
            bus_events: Counter::default(),
            ringbuf_drops: Counter::default(),
            decode_errors: Family::default(),
            repro_scripts: Family::default(),
            unknown_methods: Counter::default(),
            program_runs: Family::default(),
            program_run_seconds: Family::default(),
            map_full: Counter::default(),
            watched_fds: Gauge::default(),
            bus_lagged: Counter::default(),
            export_failures: Family::default(),
            label_overflow: Family::default(),
        };
        m.register();
        m
    }

    fn register(&mut self) {
        let r = &mut self.registry;
        r.register(
            "snakepit_calls",
            "Completed tool calls by library, function and result (ok/error)",
            self.calls.clone(),
        );
        r.register(
            "snakepit_call_duration_seconds",
            "Call duration, BEAM request to response (t0..t3)",
            self.call_duration.clone(),
        );
        r.register(
            "snakepit_call_queue_time_seconds",
            "Time a call waited before the worker read it (t0..t1)",
            self.queue_time.clone(),
        );
        r.register(
            "snakepit_call_python_time_seconds",
            "Time the worker spent on a call (t1..t2)",
            self.python_time.clone(),
        );
        r.register(
            "snakepit_call_worker_time_seconds",
            "The worker's window on a call, request read to response written (t1..t2)",
            self.worker_time.clone(),
        );
        r.register(
            "snakepit_call_deserialize_time_seconds",
            "The worker decoding a call's request and parameters (protobuf, JSON)",
            self.deserialize_time.clone(),
        );
        r.register(
            "snakepit_call_serialize_time_seconds",
            "The worker encoding a call's result and response (JSON, protobuf)",
            self.serialize_time.clone(),
        );
        r.register(
            "snakepit_call_sched_time_seconds",
            "The worker window by scheduling state: on_cpu, runqueue, io, gil, lock, sleep, gpu",
            self.sched_time.clone(),
        );
        r.register(
            "snakepit_call_bound",
            "Calls by verdict (the largest part of the worker window): cpu, cpu_starved, io, gil, lock, sleep, gpu",
            self.bound.clone(),
        );
        r.register(
            "snakepit_python_samples",
            "CPU samples of the workers' Python stacks during calls, by function and the call's hot library",
            self.python_samples.clone(),
        );
        r.register(
            "snakepit_call_exceptions",
            "Failed calls by library and error type",
            self.exceptions.clone(),
        );
        r.register(
            "snakepit_pool_size",
            "Workers in the pool",
            self.pool_size.clone(),
        );
        r.register(
            "snakepit_pool_idle",
            "Idle workers in the pool",
            self.pool_idle.clone(),
        );
        r.register(
            "snakepit_pool_busy",
            "Busy workers in the pool",
            self.pool_busy.clone(),
        );
        r.register(
            "snakepit_pool_checkouts",
            "Worker checkouts",
            self.pool_checkouts.clone(),
        );
        r.register(
            "snakepit_worker_crashes",
            "Worker crashes by pool and reason (exit_code, signal, oom)",
            self.worker_crashes.clone(),
        );
        r.register(
            "snakepit_circuit_breaker_opens",
            "Circuit breaker openings",
            self.circuit_breaker_opens.clone(),
        );
        r.register(
            "snakepit_gpu_memory_allocated_bytes",
            "GPU memory allocated, per device (and per worker when reported by one)",
            self.gpu_allocated.clone(),
        );
        r.register(
            "snakepit_gpu_memory_reserved_bytes",
            "GPU memory reserved by the allocator",
            self.gpu_reserved.clone(),
        );
        r.register(
            "snakepit_gpu_memory_free_bytes",
            "GPU memory free",
            self.gpu_free.clone(),
        );
        r.register(
            "snakepit_gpu_memory_total_bytes",
            "GPU memory total",
            self.gpu_total.clone(),
        );
        r.register(
            "snakepit_gpu_devices",
            "GPU devices seen in memory events (0: no GPU data)",
            self.gpu_devices.clone(),
        );
        r.register(
            "snakepit_memory_allocated_bytes",
            "Bytes allocated (memory.allocate events)",
            self.memory_allocated.clone(),
        );
        r.register(
            "snakepit_memory_released_bytes",
            "Bytes released (memory.release events)",
            self.memory_released.clone(),
        );
        r.register(
            "snakepit_ml_inference_duration_seconds",
            "Model inference duration",
            self.inference_duration.clone(),
        );
        r.register(
            "snakepit_ml_inference_tokens_per_second",
            "Last reported inference throughput",
            self.tokens_per_second.clone(),
        );
        r.register(
            "snakepit_agent_events_read",
            "Kernel events read from the ring buffer",
            self.events_read.clone(),
        );
        r.register(
            "snakepit_agent_bus_events",
            "Events this exporter received from the agent's bus",
            self.bus_events.clone(),
        );
        r.register(
            "snakepit_agent_ringbuf_drops",
            "Kernel records dropped because the ring buffer was full",
            self.ringbuf_drops.clone(),
        );
        r.register(
            "snakepit_agent_decode_errors",
            "Wire and record decode errors by kind",
            self.decode_errors.clone(),
        );
        r.register(
            "snakepit_agent_unknown_method_calls",
            "Calls whose gRPC method the agent does not know",
            self.unknown_methods.clone(),
        );
        r.register(
            "snakepit_agent_ebpf_program_runs",
            "eBPF program runs (kernel run-time statistics)",
            self.program_runs.clone(),
        );
        r.register(
            "snakepit_agent_ebpf_program_run_seconds",
            "eBPF program run time",
            self.program_run_seconds.clone(),
        );
        r.register(
            "snakepit_agent_map_full",
            "eBPF map insertions refused because the map was full",
            self.map_full.clone(),
        );
        r.register(
            "snakepit_agent_watched_fds",
            "Entries in the kernel's watched-fd map",
            self.watched_fds.clone(),
        );
        r.register(
            "snakepit_agent_bus_lagged_events",
            "Events lost by sinks that fell behind the event bus",
            self.bus_lagged.clone(),
        );
        r.register(
            "snakepit_agent_export_failures",
            "Export failures by exporter",
            self.export_failures.clone(),
        );
        r.register(
            "snakepit_repro_scripts",
            "Repro scripts of failed calls: written, or skipped (reason: max_files, max_per_minute, queue_full, write_error, pipe_call)",
            self.repro_scripts.clone(),
        );
        r.register(
            "snakepit_agent_label_overflow",
            "Label values reported as `other` because the label reached its cap",
            self.label_overflow.clone(),
        );
    }

    /// Counts a failed export by this process (e.g. the OTLP exporter in-process).
    pub fn export_failed(&mut self, exporter: &str) {
        let exporter = self.label("exporter", Some(exporter.to_string()));
        self.export_failures
            .get_or_create(&ExporterLabels { exporter })
            .inc();
    }

    fn label(&mut self, label: &'static str, value: Option<String>) -> String {
        self.label_opt(label, value.as_deref())
    }

    fn label_opt(&mut self, label: &'static str, value: Option<&str>) -> String {
        match value {
            Some(v) if !v.is_empty() => self.cap.admit(label, v),
            _ => "unknown".to_string(),
        }
    }

    fn label_ref(&mut self, label: &'static str, value: &str) -> String {
        self.label_opt(label, Some(value))
    }

    fn sync_overflow(&mut self) {
        for (label, n) in self.cap.overflow() {
            raise(
                &self.label_overflow.get_or_create(&LabelLabels {
                    label: label.to_string(),
                }),
                n,
            );
        }
    }

    /// Distinct admitted values of a label (for tests and the page).
    pub fn distinct_values(&self, label: &str) -> usize {
        self.cap.distinct(label)
    }

    /// OpenMetrics text (ends with `# EOF`).
    pub fn encode(&self) -> Result<String, MetricsError> {
        let mut out = String::with_capacity(16 * 1024);
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// Sets a counter to a cumulative value reported by the agent (counters only rise).
fn raise(c: &Counter, v: u64) {
    let cur = c.get();
    if v > cur {
        c.inc_by(v - cur);
    }
}

fn ends_with(ev: &Event, suffix: &[&str]) -> bool {
    ev.name.first().map(String::as_str) == Some("snakepit")
        && ev.name.len() > suffix.len()
        && ev.name[ev.name.len() - suffix.len()..]
            .iter()
            .zip(suffix)
            .all(|(a, b)| a == b)
}

/// A metadata value as a label string: strings as they are, other JSON compactly
/// (a device may be `{"cuda": 0}` or `["cuda", 0]`).
pub(crate) fn meta_str(ev: &Event, key: &str) -> Option<String> {
    match ev.metadata.get(key)? {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        Value::Array(a) => Some(
            a.iter()
                .map(|v| match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect::<Vec<_>>()
                .join(":"),
        ),
        other => Some(other.to_string()),
    }
}

pub(crate) fn measure_f64(ev: &Event, key: &str) -> Option<f64> {
    ev.measurements
        .get(key)
        .or_else(|| ev.metadata.get(key))
        .and_then(Value::as_f64)
        .filter(|v| v.is_finite())
}

#[cfg(test)]
mod tests;
