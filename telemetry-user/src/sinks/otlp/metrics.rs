//! The call and pool metrics (the design's metrics handler) as OpenTelemetry instruments.
//!
//! Names follow the design: `snakepit.call.total` {library, function, result, pool},
//! `snakepit.call.duration` / `.queue_time` / `.python_time` histograms in ms,
//! `snakepit.call.exceptions` {library, error_type} (failed calls with an error type,
//! and `call.exception` events), `snakepit.worker.crashes` {type, pool},
//! `snakepit.pool.size` / `.busy` / `.idle` gauges {pool}. Absent metadata gives an
//! absent attribute, never an empty one.
use crate::events::{AgentEvent, CallEnd};
use opentelemetry::metrics::{Counter, Gauge, Histogram, Meter};
use opentelemetry::KeyValue;

/// The design's buckets (ms), with finer ones below 10 ms: most calls are short.
const DURATION_BUCKETS_MS: &[f64] = &[
    0.5, 1.0, 2.5, 5.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
];

pub struct Instruments {
    calls: Counter<u64>,
    duration: Histogram<f64>,
    queue_time: Histogram<f64>,
    python_time: Histogram<f64>,
    exceptions: Counter<u64>,
    crashes: Counter<u64>,
    circuit_breaker_opens: Counter<u64>,
    health_alerts: Counter<u64>,
    pool_size: Gauge<u64>,
    pool_busy: Gauge<u64>,
    pool_idle: Gauge<u64>,
}

impl Instruments {
    pub fn new(meter: &Meter) -> Self {
        let hist = |name: &'static str, what: &'static str| {
            meter
                .f64_histogram(name)
                .with_unit("ms")
                .with_description(what)
                .with_boundaries(DURATION_BUCKETS_MS.to_vec())
                .build()
        };
        Instruments {
            calls: meter
                .u64_counter("snakepit.call.total")
                .with_unit("{call}")
                .with_description("Completed Python calls")
                .build(),
            duration: hist("snakepit.call.duration", "Call duration as the BEAM saw it"),
            queue_time: hist(
                "snakepit.call.queue_time",
                "From the BEAM's send to the worker's read",
            ),
            python_time: hist(
                "snakepit.call.python_time",
                "From the worker's read to its reply",
            ),
            exceptions: meter
                .u64_counter("snakepit.call.exceptions")
                .with_unit("{exception}")
                .with_description("Failed calls with an error type")
                .build(),
            crashes: meter
                .u64_counter("snakepit.worker.crashes")
                .with_unit("{crash}")
                .with_description("Worker crashes")
                .build(),
            circuit_breaker_opens: meter
                .u64_counter("snakepit.circuit_breaker.opens")
                .with_unit("{open}")
                .build(),
            health_alerts: meter
                .u64_counter("snakepit.health.alerts")
                .with_unit("{alert}")
                .build(),
            pool_size: meter
                .u64_gauge("snakepit.pool.size")
                .with_unit("{worker}")
                .build(),
            pool_busy: meter
                .u64_gauge("snakepit.pool.busy")
                .with_unit("{worker}")
                .build(),
            pool_idle: meter
                .u64_gauge("snakepit.pool.idle")
                .with_unit("{worker}")
                .build(),
        }
    }

    /// Records what the event contributes to the metrics (nothing for most events).
    pub fn record(&self, ev: &AgentEvent) {
        match ev {
            AgentEvent::CallEnd(e) => self.record_call(e),
            AgentEvent::PoolSize(e) => {
                let pool = [KeyValue::new("pool", e.pool.clone())];
                self.pool_size.record(e.size, &pool);
                self.pool_busy.record(e.busy, &pool);
                self.pool_idle.record(e.idle, &pool);
            }
            AgentEvent::WorkerCrash(e) => self.crashes.add(
                1,
                &[
                    KeyValue::new("type", e.crash_type),
                    KeyValue::new("pool", e.pool.clone()),
                ],
            ),
            AgentEvent::CircuitBreakerOpen(e) => self
                .circuit_breaker_opens
                .add(1, &[KeyValue::new("pool", e.pool.clone())]),
            AgentEvent::HealthAlert(e) => self.health_alerts.add(
                1,
                &[
                    KeyValue::new("pool", e.pool.clone()),
                    KeyValue::new("alert_type", e.alert_type),
                ],
            ),
            _ => {}
        }
    }

    fn record_call(&self, ev: &CallEnd) {
        let c = &ev.call;
        let result = ev.result();
        let library = c
            .library
            .as_ref()
            .map(|l| KeyValue::new("library", l.clone()));
        let function = c
            .function
            .as_ref()
            .map(|f| KeyValue::new("function", f.clone()));
        let lib_fn: Vec<KeyValue> = library.iter().chain(function.iter()).cloned().collect();
        let mut call_attrs = lib_fn.clone();
        call_attrs.push(KeyValue::new("pool", c.pool.clone()));
        call_attrs.push(KeyValue::new("result", result));
        self.calls.add(1, &call_attrs);

        let ms = |ns: u64| ns as f64 / 1e6;
        self.duration.record(ms(ev.duration), &lib_fn);
        let lib: Vec<KeyValue> = library.into_iter().collect();
        if let Some(v) = ev.queue_time {
            self.queue_time.record(ms(v), &lib);
        }
        if let Some(v) = ev.python_time {
            self.python_time.record(ms(v), &lib_fn);
        }
        let error_type = ev.error_type();
        if ev.is_exception() || error_type.is_some() {
            let mut a = lib;
            a.push(KeyValue::new(
                "error_type",
                error_type.unwrap_or("unknown").to_string(),
            ));
            self.exceptions.add(1, &a);
        }
    }
}
