//! The live page's state: pool stats, GPU memory history and recent calls and errors,
//! all in bounded ring buffers so memory stays flat whatever the load.
use crate::events::{schema, AgentEvent, CallEnd, Event, WorkerCrash};
use crate::sinks::prometheus::{measure_f64, meta_str};
use serde::Serialize;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// Ring-buffer sizes (from `[http]`).
#[derive(Debug, Clone, Copy)]
pub struct LiveSizes {
    pub recent_calls: usize,
    pub recent_errors: usize,
    pub gpu_samples: usize,
}

/// Pools, GPU series: names come from the wire or /proc, so their count is bounded too.
const MAX_KEYS: usize = 256;
const MAX_TEXT: usize = 300;

#[derive(Debug, Default, Clone, Serialize)]
struct PoolRow {
    size: i64,
    idle: i64,
    busy: i64,
    /// Calls started and not yet ended.
    in_flight: i64,
    workers: BTreeSet<String>,
    calls: u64,
    errors: u64,
    crashes: u64,
}

#[derive(Debug, Clone, Serialize)]
struct GpuSeries {
    device: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pool: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    worker_id: Option<String>,
    /// `[time_ms, allocated_mb, reserved_mb, free_mb, total_mb]` (NaN-free: missing is 0).
    samples: VecDeque<[f64; 5]>,
}

#[derive(Debug, Clone, Serialize)]
struct CallRow {
    time_ms: u64,
    library: String,
    function: String,
    duration_ms: f64,
    result: String,
    pool: String,
    worker_id: String,
    /// Where the worker's time went (the stacked bar), when the worker probes saw it.
    #[serde(skip_serializing_if = "Option::is_none")]
    split: Option<super::functions::SplitMs>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bound: Option<&'static str>,
}

#[derive(Debug, Clone, Serialize)]
struct ErrorRow {
    time_ms: u64,
    library: String,
    function: String,
    error_type: String,
    message: String,
    pool: String,
    worker_id: String,
    #[serde(skip)]
    correlation_id: Option<String>,
    /// `/repro/<file>`: the failed call's repro script, once written.
    repro: Option<String>,
}

#[derive(Debug, Default, Clone, Serialize)]
struct AgentRow {
    version: String,
    kernel_events: u64,
    ringbuf_drops: u64,
    decode_errors: u64,
    bus_lagged: u64,
    events_seen: u64,
}

#[derive(Debug)]
pub struct Live {
    sizes: LiveSizes,
    pools: BTreeMap<String, PoolRow>,
    gpu: BTreeMap<String, GpuSeries>,
    calls: VecDeque<CallRow>,
    errors: VecDeque<ErrorRow>,
    total_calls: u64,
    total_errors: u64,
    /// Per (library, function): rate, percentiles, error share, mean split.
    functions: super::functions::Functions,
    agent: AgentRow,
    /// Bumped on every change: the SSE broadcaster sends only when it moved.
    version: u64,
}

impl Live {
    pub fn new(sizes: LiveSizes) -> Self {
        Live {
            sizes: LiveSizes {
                recent_calls: sizes.recent_calls.max(1),
                recent_errors: sizes.recent_errors.max(1),
                gpu_samples: sizes.gpu_samples.max(2),
            },
            pools: BTreeMap::new(),
            gpu: BTreeMap::new(),
            calls: VecDeque::new(),
            errors: VecDeque::new(),
            total_calls: 0,
            total_errors: 0,
            functions: Default::default(),
            agent: AgentRow::default(),
            version: 0,
        }
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn observe(&mut self, ev: &AgentEvent) {
        self.agent.events_seen += 1;
        match ev {
            AgentEvent::CallStart(e) => {
                if !e.call.internal {
                    if let Some(p) = self.pool_named(&e.call.pool) {
                        p.in_flight += 1;
                    }
                }
            }
            AgentEvent::CallEnd(e) => {
                if e.call.internal {
                    return;
                }
                self.call_end(e);
            }
            AgentEvent::PoolSize(e) => {
                if let Some(p) = self.pool_named(&e.pool) {
                    p.size = e.size as i64;
                    p.idle = e.idle as i64;
                    p.busy = e.busy as i64;
                }
            }
            AgentEvent::WorkerCrash(e) => self.worker_crash(e),
            AgentEvent::PoolCheckout(_)
            | AgentEvent::PoolCheckin(_)
            | AgentEvent::CircuitBreakerOpen(_)
            | AgentEvent::HealthAlert(_)
            | AgentEvent::SerializeStop(_) => return,
            AgentEvent::Dynamic(e) => {
                if !self.dynamic(e) {
                    return;
                }
            }
        }
        self.version += 1;
    }

    /// Whether the event changed the page.
    fn dynamic(&mut self, ev: &Event) -> bool {
        if ev.is(schema::WORKER_DISCOVERED) {
            if let (Some(w), Some(p)) = (meta_str(ev, "worker_id"), self.pool(ev)) {
                if p.workers.len() < MAX_KEYS {
                    p.workers.insert(w);
                }
            }
        } else if ev.is(schema::WORKER_EXITED) {
            if let (Some(w), Some(p)) = (meta_str(ev, "worker_id"), self.pool(ev)) {
                p.workers.remove(&w);
            }
        } else if ev.is(schema::AGENT_STARTED) {
            self.agent.version = text(meta_str(ev, "version"));
        } else if ev.is(schema::AGENT_STATS) {
            let m = |k: &str| measure_f64(ev, k).unwrap_or(0.0) as u64;
            self.agent.kernel_events = m("kernel_events");
            self.agent.ringbuf_drops = m("ringbuf_drops");
            self.agent.decode_errors = m("decode_errors") + m("ring_decode_errors");
            self.agent.bus_lagged = m("bus_lagged");
        } else if ev.is(crate::repro::REPRO_WRITTEN) {
            return self.repro_written(ev);
        } else if ev.name.len() >= 3 && ev.name.ends_with(&["memory".into(), "gpu".into()]) {
            self.gpu_sample(ev);
        } else {
            return false;
        }
        true
    }

    /// Links the failed call's row to its script (served at `/repro/<file>`).
    fn repro_written(&mut self, ev: &Event) -> bool {
        let (Some(corr), Some(path)) = (meta_str(ev, "correlation_id"), meta_str(ev, "path"))
        else {
            return false;
        };
        let Some(name) = std::path::Path::new(&path).file_name() else {
            return false;
        };
        let link = format!("/repro/{}", name.to_string_lossy());
        match self
            .errors
            .iter_mut()
            .rev()
            .find(|r| r.correlation_id.as_deref() == Some(corr.as_str()))
        {
            Some(row) => {
                row.repro = Some(link);
                true
            }
            None => false,
        }
    }

    fn worker_crash(&mut self, e: &WorkerCrash) {
        if let Some(p) = self.pool_named(&e.pool) {
            p.crashes += 1;
        }
        let row = ErrorRow {
            time_ms: e.time_unix_nano / 1_000_000,
            library: String::new(),
            function: String::new(),
            error_type: format!("worker_crash:{}", e.crash_type),
            message: text(Some(&e.reason)),
            pool: text(Some(&e.pool)),
            worker_id: text(Some(&e.worker_id)),
            correlation_id: None,
            repro: None,
        };
        push(&mut self.errors, row, self.sizes.recent_errors);
    }

    fn pool(&mut self, ev: &Event) -> Option<&mut PoolRow> {
        let name = meta_str(ev, "pool")?;
        self.pool_named(&name)
    }

    fn pool_named(&mut self, name: &str) -> Option<&mut PoolRow> {
        if self.pools.contains_key(name) {
            return self.pools.get_mut(name);
        }
        if self.pools.len() >= MAX_KEYS {
            return None;
        }
        Some(self.pools.entry(text(Some(name))).or_default())
    }

    fn call_end(&mut self, ev: &CallEnd) {
        let ok = !ev.is_failed();
        self.total_calls += 1;
        if !ok {
            self.total_errors += 1;
        }
        let c = &ev.call;
        if let Some(p) = self.pool_named(&c.pool) {
            p.in_flight = (p.in_flight - 1).max(0);
            p.calls += 1;
            if !ok {
                p.errors += 1;
            }
        }
        let time_ms = ev.time_unix_nano / 1_000_000;
        let library = text(c.library.as_deref());
        let function = text(c.function_or_tool());
        let pool = text(Some(&*c.pool));
        let worker_id = text(Some(&*c.worker_id));
        let row = CallRow {
            time_ms,
            library: library.clone(),
            function: function.clone(),
            duration_ms: ev.duration as f64 / 1e6,
            result: ev.result().into(),
            pool: pool.clone(),
            worker_id: worker_id.clone(),
            split: super::functions::SplitMs::of(ev),
            bound: ev
                .split
                .as_deref()
                .and_then(|s| s.sched.as_ref())
                .and_then(|s| s.bound())
                .map(|b| b.0),
        };
        self.functions.record(&library, &function, ev);
        push(&mut self.calls, row, self.sizes.recent_calls);
        if !ok {
            let row = ErrorRow {
                time_ms,
                library,
                function,
                error_type: text(ev.error_type()),
                message: text(ev.error_message()),
                pool,
                worker_id,
                correlation_id: c.correlation_id.as_deref().map(str::to_string),
                repro: None,
            };
            push(&mut self.errors, row, self.sizes.recent_errors);
        }
    }

    fn gpu_sample(&mut self, ev: &Event) {
        let device = text(meta_str(ev, "device").or(Some("gpu".into())));
        let worker_id = meta_str(ev, "worker_id").map(|w| text(Some(w)));
        let key = match &worker_id {
            Some(w) => format!("{device}/{w}"),
            None => device.clone(),
        };
        if !self.gpu.contains_key(&key) && self.gpu.len() >= MAX_KEYS {
            return;
        }
        let series = self.gpu.entry(key).or_insert_with(|| GpuSeries {
            device,
            pool: meta_str(ev, "pool").map(|p| text(Some(p))),
            worker_id,
            samples: VecDeque::new(),
        });
        let m = |k: &str| measure_f64(ev, k).unwrap_or(0.0);
        let sample = [
            (ev.time_unix_nano / 1_000_000) as f64,
            m("allocated_mb"),
            m("reserved_mb"),
            m("free_mb"),
            m("total_mb"),
        ];
        push(&mut series.samples, sample, self.sizes.gpu_samples);
    }

    /// The page's whole state as one JSON value (newest rows first).
    pub fn snapshot(&self) -> Value {
        serde_json::json!({
            "version": self.version,
            "now_ms": crate::events::now_unix_nano() / 1_000_000,
            "pools": self.pools,
            "gpu": self.gpu.values().collect::<Vec<_>>(),
            "recent_calls": self.calls.iter().rev().collect::<Vec<_>>(),
            "recent_errors": self.errors.iter().rev().collect::<Vec<_>>(),
            "functions": self.functions.rows(crate::events::now_unix_nano() / 1_000_000),
            "totals": {"calls": self.total_calls, "errors": self.total_errors},
            "agent": self.agent,
            "sizes": {
                "recent_calls": self.sizes.recent_calls,
                "recent_errors": self.sizes.recent_errors,
                "gpu_samples": self.sizes.gpu_samples,
            },
        })
    }
}

fn push<T>(ring: &mut VecDeque<T>, item: T, cap: usize) {
    while ring.len() >= cap {
        ring.pop_front();
    }
    ring.push_back(item);
}

/// Wire text for display: bounded length (the page escapes it when rendering).
fn text(s: Option<impl AsRef<str> + Into<String>>) -> String {
    let Some(s) = s else {
        return String::new();
    };
    if s.as_ref().len() <= MAX_TEXT {
        return s.into();
    }
    let s = s.as_ref();
    let mut end = MAX_TEXT;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::to_typed;

    fn sizes() -> LiveSizes {
        LiveSizes {
            recent_calls: 3,
            recent_errors: 2,
            gpu_samples: 4,
        }
    }

    #[test]
    fn ring_buffers_stay_bounded_and_newest_first() {
        let mut live = Live::new(sizes());
        for i in 0..10u64 {
            live.observe(&to_typed(
                &Event::new(schema::CALL_START).meta("pool", "default"),
            ));
            let ok = i % 2 == 0;
            live.observe(&to_typed(
                &Event::new(schema::CALL_STOP)
                    .at(i * 1_000_000)
                    .measure("duration", 2_000_000)
                    .meta("pool", "default")
                    .meta("function", format!("f{i}"))
                    .meta("result", if ok { "ok" } else { "error" })
                    .meta_opt("error_type", (!ok).then_some("ValueError"))
                    .meta_opt("error_message", (!ok).then_some("boom")),
            ));
        }
        for i in 0..10u64 {
            live.observe(&to_typed(
                &Event::new(&["snakepit", "memory", "gpu"])
                    .at(i)
                    .measure("allocated_mb", i)
                    .meta("device", "cuda:0"),
            ));
        }
        let s = live.snapshot();
        let calls = s["recent_calls"].as_array().expect("calls");
        assert_eq!(calls.len(), 3);
        assert_eq!(calls[0]["function"], "f9");
        assert_eq!(calls[0]["duration_ms"], 2.0);
        let errors = s["recent_errors"].as_array().expect("errors");
        assert_eq!(errors.len(), 2);
        assert_eq!(errors[0]["error_type"], "ValueError");
        assert_eq!(errors[0]["message"], "boom");
        assert_eq!(s["totals"]["calls"], 10);
        assert_eq!(s["totals"]["errors"], 5);
        assert_eq!(s["pools"]["default"]["in_flight"], 0);
        let gpu = s["gpu"].as_array().expect("gpu");
        assert_eq!(gpu.len(), 1);
        assert_eq!(gpu[0]["samples"].as_array().map(Vec::len), Some(4));
        assert_eq!(gpu[0]["samples"][3][1], 9.0);
    }

    #[test]
    fn pool_rows_follow_size_events_and_workers() {
        let mut live = Live::new(sizes());
        let v0 = live.version();
        live.observe(&to_typed(
            &Event::new(schema::POOL_SIZE)
                .measure("size", 2)
                .measure("idle", 2)
                .measure("busy", 0)
                .meta("pool", "default"),
        ));
        live.observe(&to_typed(
            &Event::new(schema::WORKER_DISCOVERED)
                .meta("pool", "default")
                .meta("worker_id", "w1"),
        ));
        assert!(live.version() > v0);
        let s = live.snapshot();
        assert_eq!(s["pools"]["default"]["size"], 2);
        assert_eq!(s["pools"]["default"]["workers"][0], "w1");
        assert_eq!(s["gpu"].as_array().map(Vec::len), Some(0));
    }
}
