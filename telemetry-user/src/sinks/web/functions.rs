//! The live page's per-function table: rate, latency percentiles, error share and the
//! mean worker split of each (library, function), over a bounded window of recent calls.
use crate::events::CallEnd;
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};

/// Calls kept per function (the percentiles and means are over these).
const WINDOW_CALLS: usize = 1000;
/// The rate is over the calls of the last minute.
const RATE_WINDOW_MS: u64 = 60_000;
/// Functions followed at most (names come from the wire).
const MAX_FUNCTIONS: usize = 256;

/// A call's worker split in ms: the parts of the live page's stacked bar.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct SplitMs {
    pub decode: f64,
    pub encode: f64,
    pub on_cpu: f64,
    pub runqueue: f64,
    pub io: f64,
    pub gil: f64,
    pub lock: f64,
    pub sleep: f64,
    pub gpu: f64,
}

impl SplitMs {
    /// The split of a call, when the worker probes saw it.
    pub fn of(ev: &CallEnd) -> Option<SplitMs> {
        let s = ev.split.as_deref()?;
        let ms = |ns: u64| ns as f64 / 1e6;
        let mut out = SplitMs {
            decode: s.deserialize.as_ref().map_or(0.0, |d| ms(d.time)),
            encode: s.serialize.as_ref().map_or(0.0, |d| ms(d.time)),
            ..SplitMs::default()
        };
        if let Some(sc) = &s.sched {
            out.on_cpu = ms(sc.on_cpu);
            out.runqueue = ms(sc.runqueue);
            out.io = ms(sc.io_wait);
            out.gil = ms(sc.gil_wait);
            out.lock = ms(sc.lock_wait);
            out.sleep = ms(sc.sleep);
            out.gpu = ms(sc.gpu_wait);
        }
        Some(out)
    }

    fn add(&mut self, o: &SplitMs, k: f64) {
        self.decode += o.decode * k;
        self.encode += o.encode * k;
        self.on_cpu += o.on_cpu * k;
        self.runqueue += o.runqueue * k;
        self.io += o.io * k;
        self.gil += o.gil * k;
        self.lock += o.lock * k;
        self.sleep += o.sleep * k;
        self.gpu += o.gpu * k;
    }
}

#[derive(Debug)]
struct Sample {
    time_ms: u64,
    duration_ms: f64,
    ok: bool,
    split: Option<SplitMs>,
}

#[derive(Debug, Default)]
pub struct Functions {
    by_name: BTreeMap<(String, String), VecDeque<Sample>>,
}

/// One row of the table.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FunctionRow {
    pub library: String,
    pub function: String,
    pub calls: usize,
    pub rate_per_s: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub error_pct: f64,
    /// The mean split of the calls that have one.
    pub mean_split: Option<SplitMs>,
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

impl Functions {
    pub fn record(&mut self, library: &str, function: &str, ev: &CallEnd) {
        let key = (library.to_string(), function.to_string());
        if !self.by_name.contains_key(&key) && self.by_name.len() >= MAX_FUNCTIONS {
            return;
        }
        let ring = self.by_name.entry(key).or_default();
        if ring.len() >= WINDOW_CALLS {
            ring.pop_front();
        }
        ring.push_back(Sample {
            time_ms: ev.time_unix_nano / 1_000_000,
            duration_ms: ev.duration as f64 / 1e6,
            ok: !ev.is_failed(),
            split: SplitMs::of(ev),
        });
    }

    pub fn rows(&self, now_ms: u64) -> Vec<FunctionRow> {
        self.by_name
            .iter()
            .map(|((library, function), ring)| {
                let mut d: Vec<f64> = ring.iter().map(|s| s.duration_ms).collect();
                d.sort_by(f64::total_cmp);
                let recent = ring
                    .iter()
                    .filter(|s| s.time_ms + RATE_WINDOW_MS >= now_ms)
                    .count();
                let errors = ring.iter().filter(|s| !s.ok).count();
                let with_split: Vec<&SplitMs> =
                    ring.iter().filter_map(|s| s.split.as_ref()).collect();
                let mean_split = (!with_split.is_empty()).then(|| {
                    let mut m = SplitMs::default();
                    let k = 1.0 / with_split.len() as f64;
                    for s in &with_split {
                        m.add(s, k);
                    }
                    m
                });
                FunctionRow {
                    library: library.clone(),
                    function: function.clone(),
                    calls: ring.len(),
                    rate_per_s: recent as f64 / (RATE_WINDOW_MS as f64 / 1000.0),
                    p50_ms: percentile(&d, 0.5),
                    p95_ms: percentile(&d, 0.95),
                    p99_ms: percentile(&d, 0.99),
                    error_pct: 100.0 * errors as f64 / ring.len().max(1) as f64,
                    mean_split,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{schema, to_typed, AgentEvent, Event};

    fn end(ms: u64, ok: bool, split: bool) -> CallEnd {
        let mut e = Event::new(schema::CALL_STOP)
            .at(1_000_000_000_000)
            .measure("duration", ms * 1_000_000)
            .meta("function", "f")
            .meta("operation", "ExecuteTool")
            .meta("result", if ok { "ok" } else { "error" });
        if split {
            e = e
                .measure("worker_time", ms * 1_000_000)
                .measure("deserialize_time", 1_000_000u64)
                .measure("on_cpu_time", (ms - 1) * 1_000_000)
                .measure("runqueue_time", 1_000_000u64);
        }
        match to_typed(&e) {
            AgentEvent::CallEnd(c) => c,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn rows_have_percentiles_error_share_and_the_mean_split() {
        let mut f = Functions::default();
        for i in 1..=100u64 {
            f.record("lib", "f", &end(i, i % 10 != 0, i % 2 == 0));
        }
        let rows = f.rows(1_000_000);
        assert_eq!(rows.len(), 1);
        let r = &rows[0];
        assert_eq!(r.calls, 100);
        assert_eq!(r.p50_ms, 51.0);
        assert_eq!(r.p99_ms, 99.0);
        assert_eq!(r.error_pct, 10.0);
        assert!((r.rate_per_s - 100.0 / 60.0).abs() < 1e-9);
        let m = r.mean_split.expect("split");
        assert!((m.decode - 1.0).abs() < 1e-9, "{m:?}");
        // Even durations 2..=100: mean 51 ms, on CPU 50 ms of it.
        assert!((m.on_cpu - 50.0).abs() < 1e-9, "{m:?}");
    }
}
