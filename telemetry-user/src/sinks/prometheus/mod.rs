//! Prometheus exporter: the design's metrics, named the Prometheus way, filled from
//! bus events and rendered as OpenMetrics text (docs/metrics.md lists them).
//!
//! Every label whose values come from the wire (library, function, error type, pool,
//! worker, device, model, ...) goes through one [`LabelCap`], so a flood of distinct
//! names cannot grow the metric set past the cap.
pub mod cap;

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

    /// Updates the metrics from one event. Unknown events are ignored.
    pub fn observe(&mut self, ev: &AgentEvent) {
        self.bus_events.inc();
        match ev {
            AgentEvent::CallEnd(e) => self.call_end(e),
            AgentEvent::PoolSize(e) => self.pool_size_event(e),
            AgentEvent::PoolCheckout(e) => {
                let pool = self.label_ref("pool", &e.pool);
                self.pool_checkouts
                    .get_or_create(&PoolLabels { pool })
                    .inc();
            }
            AgentEvent::WorkerCrash(e) => {
                let pool = self.label_ref("pool", &e.pool);
                let reason = self.label_ref("reason", e.crash_type);
                self.worker_crashes
                    .get_or_create(&CrashLabels { pool, reason })
                    .inc();
            }
            AgentEvent::CircuitBreakerOpen(e) => {
                let pool = self.label_ref("pool", &e.pool);
                self.circuit_breaker_opens
                    .get_or_create(&PoolLabels { pool })
                    .inc();
            }
            AgentEvent::CallStart(_)
            | AgentEvent::PoolCheckin(_)
            | AgentEvent::HealthAlert(_)
            | AgentEvent::SerializeStop(_) => {}
            AgentEvent::Dynamic(e) => self.dynamic(e),
        }
        self.sync_overflow();
    }

    fn dynamic(&mut self, ev: &Event) {
        if ev.is(schema::AGENT_STATS) {
            self.agent_stats(ev);
        } else if ev.is(crate::repro::REPRO_WRITTEN) || ev.is(crate::repro::REPRO_SKIPPED) {
            let (outcome, reason) = if ev.is(crate::repro::REPRO_WRITTEN) {
                ("written", String::new())
            } else {
                let r = ev.metadata.get("reason").and_then(Value::as_str);
                ("skipped", r.unwrap_or("unknown").to_string())
            };
            self.repro_scripts
                .get_or_create(&ReproLabels { outcome, reason })
                .inc();
        } else if ends_with(ev, &["memory", "gpu"]) || ends_with(ev, &["memory", "gpu_worker"]) {
            self.gpu_memory(ev);
        } else if ends_with(ev, &["memory", "allocate"]) || ends_with(ev, &["memory", "release"]) {
            let memory_type = self.label("memory_type", meta_str(ev, "type"));
            let device = self.label("device", meta_str(ev, "device"));
            let bytes = measure_f64(ev, "bytes").unwrap_or(0.0).max(0.0) as u64;
            let family = if ends_with(ev, &["memory", "allocate"]) {
                &self.memory_allocated
            } else {
                &self.memory_released
            };
            family
                .get_or_create(&MemoryLabels {
                    memory_type,
                    device,
                })
                .inc_by(bytes);
        } else if ends_with(ev, &["ml", "inference"]) {
            let model = self.label("model", meta_str(ev, "model"));
            let device = self.label("device", meta_str(ev, "device"));
            let l = ModelLabels { model, device };
            if let Some(d) = measure_f64(ev, "duration") {
                self.inference_duration.get_or_create(&l).observe(d / NS);
            }
            if let Some(t) = measure_f64(ev, "tokens_per_second") {
                self.tokens_per_second.get_or_create(&l).set(t);
            }
        }
    }

    fn call_end(&mut self, ev: &CallEnd) {
        // Internal calls (health checks, registration) are not the user's tool calls.
        if ev.call.internal {
            return;
        }
        let library = self.label_opt("library", ev.call.library.as_deref());
        let function = self.label_opt("function", ev.call.function_or_tool());
        let result = ev.result().to_string();
        self.calls
            .get_or_create(&CallLabels {
                library: library.clone(),
                function: function.clone(),
                result,
            })
            .inc();
        if let Some(p) = &ev.profile {
            let hot_library = self.label_ref("hot_library", &p.hot_library);
            self.python_samples
                .get_or_create(&SampleLabels {
                    function: function.clone(),
                    hot_library,
                })
                .inc_by(p.python_samples);
        }
        let fl = FunctionLabels {
            library: library.clone(),
            function,
        };
        self.call_duration
            .get_or_create(&fl)
            .observe(ev.duration as f64 / NS);
        if let Some(d) = ev.queue_time {
            self.queue_time.get_or_create(&fl).observe(d as f64 / NS);
        }
        if let Some(d) = ev.python_time {
            self.python_time.get_or_create(&fl).observe(d as f64 / NS);
        }
        if let Some(split) = &ev.split {
            self.split(&fl, split);
        }
        if ev.is_failed() {
            let error_type = self.label_opt("error_type", ev.error_type());
            self.exceptions
                .get_or_create(&ErrorLabels {
                    library,
                    error_type,
                })
                .inc();
        }
    }

    fn split(&mut self, fl: &FunctionLabels, split: &WorkerSplit) {
        self.worker_time
            .get_or_create(fl)
            .observe(split.worker_time as f64 / NS);
        if let Some(d) = &split.deserialize {
            self.deserialize_time
                .get_or_create(fl)
                .observe(d.time as f64 / NS);
        }
        if let Some(d) = &split.serialize {
            self.serialize_time
                .get_or_create(fl)
                .observe(d.time as f64 / NS);
        }
        let Some(sched) = &split.sched else {
            return;
        };
        for (state, v) in [
            ("on_cpu", sched.on_cpu),
            ("runqueue", sched.runqueue),
            ("io", sched.io_wait),
            ("gil", sched.gil_wait),
            ("lock", sched.lock_wait),
            ("sleep", sched.sleep),
            ("gpu", sched.gpu_wait),
        ] {
            self.sched_time
                .get_or_create(&SchedLabels {
                    library: fl.library.clone(),
                    function: fl.function.clone(),
                    state: state.to_string(),
                })
                .observe(v as f64 / NS);
        }
        if let Some((bound, _)) = sched.bound() {
            self.bound
                .get_or_create(&BoundLabels {
                    library: fl.library.clone(),
                    function: fl.function.clone(),
                    bound: bound.to_string(),
                })
                .inc();
        }
    }

    fn pool_size_event(&mut self, ev: &PoolSize) {
        let pool = self.label_ref("pool", &ev.pool);
        let l = PoolLabels { pool: pool.clone() };
        for (v, family) in [
            (ev.size, &self.pool_size),
            (ev.idle, &self.pool_idle),
            (ev.busy, &self.pool_busy),
        ] {
            family.get_or_create(&l).set(v as i64);
        }
        // Crash counters start at 0 for every known pool: rate() then sees the first
        // crash, and dashboards show 0 rather than no data.
        if self.pools_seen.insert(pool.clone()) {
            for reason in CRASH_REASONS {
                let _ = self.worker_crashes.get_or_create(&CrashLabels {
                    pool: pool.clone(),
                    reason: reason.to_string(),
                });
            }
            let _ = self.pool_checkouts.get_or_create(&l);
        }
    }

    fn gpu_memory(&mut self, ev: &Event) {
        let device = self.label("device", meta_str(ev, "device"));
        let pool = match meta_str(ev, "pool") {
            Some(p) => self.label("pool", Some(p)),
            None => String::new(),
        };
        let worker_id = match meta_str(ev, "worker_id") {
            Some(w) => self.label("worker_id", Some(w)),
            None => String::new(),
        };
        if self.gpu_devices_seen.len() < 4096 && self.gpu_devices_seen.insert(device.clone()) {
            self.gpu_devices.set(self.gpu_devices_seen.len() as i64);
        }
        let l = GpuLabels {
            device,
            pool,
            worker_id,
        };
        // A worker's own figure (`gpu_worker` events) is its allocation on the device.
        let allocated_key = if measure_f64(ev, "used_mb").is_some() {
            "used_mb"
        } else {
            "allocated_mb"
        };
        for (key, family) in [
            (allocated_key, &self.gpu_allocated),
            ("reserved_mb", &self.gpu_reserved),
            ("free_mb", &self.gpu_free),
            ("total_mb", &self.gpu_total),
        ] {
            if let Some(v) = measure_f64(ev, key) {
                family.get_or_create(&l).set(v * MB);
            }
        }
    }

    fn agent_stats(&mut self, ev: &Event) {
        let m = |k: &str| measure_f64(ev, k).map(|v| v.max(0.0) as u64);
        if let Some(v) = m("kernel_events") {
            raise(&self.events_read, v);
        }
        if let Some(v) = m("ringbuf_drops") {
            raise(&self.ringbuf_drops, v);
        }
        if let Some(v) = m("map_full") {
            raise(&self.map_full, v);
        }
        if let Some(v) = m("bus_lagged") {
            raise(&self.bus_lagged, v);
        }
        if let Some(v) = m("watched_fds") {
            self.watched_fds.set(v as i64);
        }
        if let Some(v) = m("ring_decode_errors") {
            raise(
                &self.decode_errors.get_or_create(&KindLabels {
                    kind: "ring_record".into(),
                }),
                v,
            );
        }
        if let Some(Value::Object(kinds)) = ev.metadata.get("decode_errors_by_kind") {
            for (kind, n) in kinds {
                if let Some(n) = n.as_u64() {
                    let kind = self.label("kind", Some(kind.clone()));
                    raise(&self.decode_errors.get_or_create(&KindLabels { kind }), n);
                }
            }
        }
        if let Some(n) = ev
            .metadata
            .get("calls")
            .and_then(|c| c.get("unknown_methods"))
            .and_then(Value::as_u64)
        {
            raise(&self.unknown_methods, n);
        }
        if let Some(Value::Object(progs)) = ev.metadata.get("program_run_time") {
            for (name, row) in progs {
                let runs = row.get("run_count").and_then(Value::as_u64);
                let avg = row.get("avg_ns").and_then(Value::as_f64);
                let program = self.label("program", Some(name.clone()));
                let l = ProgramLabels { program };
                if let Some(runs) = runs {
                    raise(&self.program_runs.get_or_create(&l), runs);
                    if let Some(avg) = avg {
                        let secs = runs as f64 * avg / NS;
                        let c = self.program_run_seconds.get_or_create(&l);
                        let cur = c.get();
                        if secs > cur {
                            c.inc_by(secs - cur);
                        }
                    }
                }
            }
        }
        // Exporters report their failures as `export_failures: {exporter: n}`.
        if let Some(Value::Object(by)) = ev.metadata.get("export_failures") {
            for (name, n) in by {
                if let Some(n) = n.as_u64() {
                    let exporter = self.label("exporter", Some(name.clone()));
                    raise(
                        &self
                            .export_failures
                            .get_or_create(&ExporterLabels { exporter }),
                        n,
                    );
                }
            }
        }
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
