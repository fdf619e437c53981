//! One sampling round: read the source, attribute processes to workers by pid, build the
//! events, update the shared history. Pure logic over a `GpuSource`, so recorded
//! readings test it.
use super::source::{GpuSource, SourceError};
use super::{WorkerMap, WorkerRef};
use crate::events::Event;
use serde::Serialize;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;
use tokio::sync::Notify;

pub use crate::events::schema::{GPU_CALL_MEMORY, GPU_MEMORY, GPU_WORKER_MEMORY};

const MIB: f64 = 1024.0 * 1024.0;
/// Long calls waiting for their "after" figure; beyond this the oldest are dropped.
const MAX_PENDING_CALLS: usize = 1024;

pub(crate) fn mb(bytes: u64) -> f64 {
    bytes as f64 / MIB
}

/// One device in one sample. Figures in MiB (see docs/gpu.md for the NVML source of each).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeviceSample {
    /// `cuda:<index>`
    pub device: String,
    pub name: String,
    pub uuid: String,
    pub allocated_mb: f64,
    pub reserved_mb: Option<f64>,
    pub free_mb: f64,
    pub total_mb: f64,
    /// Processes with a compute context (workers or not).
    pub processes: usize,
    /// Sum over this deployment's workers.
    pub workers_used_mb: f64,
}

/// One worker process on one device in one sample.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WorkerSample {
    pub device: String,
    pub worker_pid: u32,
    pub pool: String,
    pub worker_id: String,
    pub beam_pid: Option<u32>,
    /// None where NVML could not say (`NVML_VALUE_NOT_AVAILABLE`).
    pub used_mb: Option<f64>,
}

/// One sampling round.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GpuSample {
    pub time_unix_nano: u64,
    pub devices: Vec<DeviceSample>,
    pub workers: Vec<WorkerSample>,
    /// Device reads that failed in this round, one line each.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

/// A worker's latest figure, summed over devices.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct WorkerReading {
    pub used_mb: f64,
    pub time_unix_nano: u64,
}

/// A finished long call waiting for the sample that gives its "after" figure.
#[derive(Debug, Clone)]
pub struct LongCall {
    pub worker_pid: u32,
    pub duration: Duration,
    /// The worker's reading when the call started (`GpuHandle::worker_reading` at t1).
    pub before: Option<WorkerReading>,
    pub started_unix_nano: u64,
    pub ended_unix_nano: u64,
    /// Copied into the event (pool, worker_id, function, correlation_id, ...).
    pub metadata: Map<String, Value>,
}

struct State {
    ring: VecDeque<GpuSample>,
    capacity: usize,
    latest: HashMap<u32, WorkerReading>,
    pending: VecDeque<LongCall>,
    pending_dropped: u64,
    availability: Option<super::GpuAvailability>,
}

/// The shared view of the sampler: bounded history for the live page and an API,
/// latest per-worker figures for the call tracker, and the long-call queue.
#[derive(Clone)]
pub struct GpuHandle {
    state: Arc<RwLock<State>>,
    refresh: Arc<Notify>,
    long_call_threshold: Duration,
}

impl GpuHandle {
    pub fn new(cfg: &super::GpuConfig) -> Self {
        GpuHandle {
            state: Arc::new(RwLock::new(State {
                ring: VecDeque::new(),
                capacity: cfg.history.max(1),
                latest: HashMap::new(),
                pending: VecDeque::new(),
                pending_dropped: 0,
                availability: None,
            })),
            refresh: Arc::new(Notify::new()),
            long_call_threshold: Duration::from_millis(cfg.long_call_threshold_ms),
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, State> {
        // A panic elsewhere while holding the lock leaves plain data: keep using it.
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    /// History, oldest first (at most `history` samples).
    pub fn snapshot(&self) -> Vec<GpuSample> {
        self.read().ring.iter().cloned().collect()
    }

    pub fn latest(&self) -> Option<GpuSample> {
        self.read().ring.back().cloned()
    }

    /// GPU memory the worker process used at the latest sample, over all devices (0 for
    /// a known worker without a CUDA context; None before its first sample).
    pub fn worker_used_mb(&self, pid: u32) -> Option<f64> {
        self.worker_reading(pid).map(|r| r.used_mb)
    }

    pub fn worker_reading(&self, pid: u32) -> Option<WorkerReading> {
        self.read().latest.get(&pid).copied()
    }

    pub fn long_call_threshold(&self) -> Duration {
        self.long_call_threshold
    }

    /// Hands a finished call to the sampler: when it ran at least the threshold, the
    /// sampler takes a sample right away and emits `[snakepit, memory, gpu_call]` with
    /// the worker's figure before and after. Returns whether the call was queued.
    pub fn long_call_finished(&self, call: LongCall) -> bool {
        if call.duration < self.long_call_threshold {
            return false;
        }
        {
            let mut st = self.write();
            if st.pending.len() >= MAX_PENDING_CALLS {
                st.pending.pop_front();
                st.pending_dropped += 1;
            }
            st.pending.push_back(call);
        }
        self.refresh.notify_one();
        true
    }

    /// Long calls dropped because the queue was full (the sampler could not keep up).
    pub fn long_calls_dropped(&self) -> u64 {
        self.read().pending_dropped
    }

    /// The result of opening NVML (None until the sampler has tried).
    pub fn availability(&self) -> Option<super::GpuAvailability> {
        self.read().availability.clone()
    }

    pub(crate) fn set_availability(&self, a: super::GpuAvailability) {
        self.write().availability = Some(a);
    }

    pub(crate) fn refresh_requested(&self) -> &Notify {
        &self.refresh
    }

    fn take_pending(&self) -> Vec<LongCall> {
        self.write().pending.drain(..).collect()
    }

    fn record(&self, sample: GpuSample, latest: HashMap<u32, WorkerReading>) {
        let mut st = self.write();
        while st.ring.len() >= st.capacity {
            st.ring.pop_front();
        }
        st.ring.push_back(sample);
        st.latest = latest;
    }
}

/// What a round produced.
#[derive(Debug)]
pub enum RoundOutcome {
    Events(Vec<Event>),
    /// A recorded source has no more frames.
    Exhausted,
}

/// Sampler state kept between rounds.
#[derive(Default)]
pub struct Sampler {
    /// (device index, pid) reported in the previous round: when one goes away its
    /// worker gets a final used_mb 0 so gauges do not stick.
    previous: HashMap<(u32, u32), WorkerRef>,
    /// Error lines already logged (one warning per distinct failure, not per round).
    logged: HashSet<String>,
}

impl Sampler {
    pub fn new() -> Self {
        Sampler::default()
    }

    fn log_once(&mut self, line: &str) {
        if self.logged.len() < 256 && self.logged.insert(line.to_string()) {
            tracing::warn!("GPU sampler: {line}");
        }
    }

    /// One round at `now` (unix ns).
    pub fn round<S: GpuSource>(
        &mut self,
        source: &mut S,
        workers: &WorkerMap,
        handle: &GpuHandle,
        now: u64,
    ) -> RoundOutcome {
        // Calls queued before this round's reads get figures taken after they ended.
        let pending = handle.take_pending();
        match source.begin_round() {
            Ok(()) => {}
            Err(SourceError::Exhausted) => return RoundOutcome::Exhausted,
            Err(e) => {
                self.log_once(&e.to_string());
                return RoundOutcome::Events(Vec::new());
            }
        }
        let devices = match source.devices() {
            Ok(d) => d,
            Err(SourceError::Exhausted) => return RoundOutcome::Exhausted,
            Err(e) => {
                self.log_once(&e.to_string());
                return RoundOutcome::Events(Vec::new());
            }
        };
        let mut events = Vec::new();
        let mut sample = GpuSample {
            time_unix_nano: now,
            devices: Vec::new(),
            workers: Vec::new(),
            errors: Vec::new(),
        };
        let mut seen: HashMap<(u32, u32), WorkerRef> = HashMap::new();
        let mut carried = Vec::new();
        let mut per_worker: HashMap<u32, Option<f64>> = HashMap::new();
        let mut worker_events = Vec::new();
        let mut failed: HashSet<u32> = HashSet::new();
        for dev in &devices {
            let device = format!("cuda:{}", dev.index);
            let mem = match source.memory_info(dev.index) {
                Ok(m) => m,
                Err(e) => {
                    let line = e.to_string();
                    self.log_once(&line);
                    sample.errors.push(line);
                    failed.insert(dev.index);
                    continue;
                }
            };
            let procs = match source.compute_processes(dev.index) {
                Ok(p) => p,
                Err(e) => {
                    let line = e.to_string();
                    self.log_once(&line);
                    sample.errors.push(line);
                    failed.insert(dev.index);
                    Vec::new()
                }
            };
            let mut workers_used = 0.0;
            // A process can appear twice (MIG instances): sum per pid.
            // Unknown for a pid when any of its entries is unknown.
            let mut by_pid: BTreeMap<u32, Option<f64>> = BTreeMap::new();
            for p in &procs {
                let e = by_pid.entry(p.pid).or_insert(Some(0.0));
                *e = e.zip(p.used_bytes).map(|(a, b)| a + mb(b));
            }
            for (pid, used_mb) in by_pid {
                let Some(w) = workers.get(&pid) else { continue };
                workers_used += used_mb.unwrap_or(0.0);
                let total = per_worker.entry(pid).or_insert(Some(0.0));
                *total = total.zip(used_mb).map(|(a, b)| a + b);
                seen.insert((dev.index, pid), w.clone());
                worker_events.push(worker_event(now, &device, &dev.uuid, pid, w, used_mb));
                sample.workers.push(WorkerSample {
                    device: device.clone(),
                    worker_pid: pid,
                    pool: w.pool.clone(),
                    worker_id: w.worker_id.clone(),
                    beam_pid: w.beam_pid,
                    used_mb,
                });
            }
            let ds = DeviceSample {
                device: device.clone(),
                name: dev.name.clone(),
                uuid: dev.uuid.clone(),
                allocated_mb: mb(mem.used),
                reserved_mb: mem.reserved.map(mb),
                free_mb: mb(mem.free),
                total_mb: mb(mem.total),
                processes: procs.len(),
                workers_used_mb: workers_used,
            };
            events.push(device_event(now, &ds));
            sample.devices.push(ds);
        }
        // Workers that left a device (exited, or freed their context): one final 0.
        // A device that failed this round says nothing: keep its workers as they were.
        for ((index, pid), w) in &self.previous {
            if failed.contains(index) {
                carried.push(((*index, *pid), w.clone()));
            } else if !seen.contains_key(&(*index, *pid)) {
                let uuid = devices
                    .iter()
                    .find(|d| d.index == *index)
                    .map(|d| d.uuid.as_str())
                    .unwrap_or("");
                worker_events.push(worker_event(
                    now,
                    &format!("cuda:{index}"),
                    uuid,
                    *pid,
                    w,
                    Some(0.0),
                ));
            }
        }
        seen.extend(carried);
        self.previous = seen;
        events.append(&mut worker_events);

        // Every known worker has a figure (0 without a CUDA context), except one whose
        // figure NVML could not give.
        let latest: HashMap<u32, WorkerReading> = workers
            .keys()
            .filter_map(|pid| {
                let used_mb = match per_worker.get(pid) {
                    Some(v) => (*v)?,
                    None => 0.0,
                };
                Some((
                    *pid,
                    WorkerReading {
                        used_mb,
                        time_unix_nano: now,
                    },
                ))
            })
            .collect();
        for call in pending {
            let after = latest.get(&call.worker_pid).map(|r| r.used_mb);
            events.push(call_event(now, &call, after));
        }
        handle.record(sample, latest);
        RoundOutcome::Events(events)
    }
}

fn device_event(now: u64, d: &DeviceSample) -> Event {
    let mut ev = Event::new(GPU_MEMORY)
        .at(now)
        .measure("allocated_mb", d.allocated_mb)
        .measure("free_mb", d.free_mb)
        .measure("total_mb", d.total_mb)
        .measure("processes", d.processes as u64)
        .measure("workers_used_mb", d.workers_used_mb)
        .meta("device", d.device.clone())
        .meta("name", d.name.clone())
        .meta("uuid", d.uuid.clone());
    if let Some(r) = d.reserved_mb {
        ev = ev.measure("reserved_mb", r);
    }
    ev
}

fn worker_event(
    now: u64,
    device: &str,
    uuid: &str,
    pid: u32,
    w: &WorkerRef,
    used_mb: Option<f64>,
) -> Event {
    let mut ev = Event::new(GPU_WORKER_MEMORY).at(now);
    if let Some(u) = used_mb {
        ev = ev.measure("used_mb", u);
    }
    ev.meta("device", device)
        .meta("uuid", uuid)
        .meta("pool", w.pool.clone())
        .meta("worker_id", w.worker_id.clone())
        .meta("worker_pid", pid)
        .meta_opt("beam_pid", w.beam_pid)
        .meta_opt("instance_name", w.instance_name.clone())
}

fn call_event(now: u64, call: &LongCall, after: Option<f64>) -> Event {
    let before = call.before.map(|b| b.used_mb);
    let mut ev = Event::new(GPU_CALL_MEMORY)
        .at(now)
        .measure("duration", call.duration.as_nanos() as u64);
    if let Some(b) = before {
        ev = ev.measure("before_mb", b);
    }
    if let Some(a) = after {
        ev = ev.measure("after_mb", a);
    }
    if let (Some(b), Some(a)) = (before, after) {
        ev = ev.measure("delta_mb", a - b);
    }
    ev.metadata = call.metadata.clone();
    let before_age_ms = call
        .before
        .map(|b| call.started_unix_nano.saturating_sub(b.time_unix_nano) / 1_000_000);
    ev.meta("worker_pid", call.worker_pid)
        .meta_opt("before_age_ms", before_age_ms)
        .meta(
            "after_delay_ms",
            now.saturating_sub(call.ended_unix_nano) / 1_000_000,
        )
}

/// One event of each GPU kind with fixed inputs (the golden JSON test).
#[cfg(test)]
pub(crate) fn golden_events() -> Vec<Event> {
    let now = 1_700_000_456_000_000_000;
    let d = DeviceSample {
        device: "cuda:0".into(),
        name: "NVIDIA H200".into(),
        uuid: "GPU-1".into(),
        allocated_mb: 1024.5,
        reserved_mb: Some(2048.0),
        free_mb: 100.25,
        total_mb: 143_771.0,
        processes: 2,
        workers_used_mb: 512.0,
    };
    let w = WorkerRef {
        pool: "default".into(),
        worker_id: "default_worker_1_a".into(),
        beam_pid: Some(10),
        instance_name: Some("demo".into()),
    };
    let mut metadata = Map::new();
    metadata.insert("pool".into(), "default".into());
    metadata.insert("function".into(), "mean".into());
    let call = LongCall {
        worker_pid: 11,
        duration: Duration::from_millis(1500),
        before: Some(WorkerReading {
            used_mb: 100.0,
            time_unix_nano: now - 3_000_000_000,
        }),
        started_unix_nano: now - 2_000_000_000,
        ended_unix_nano: now - 500_000_000,
        metadata,
    };
    vec![
        device_event(now, &d),
        device_event(
            now,
            &DeviceSample {
                reserved_mb: None,
                ..d.clone()
            },
        ),
        worker_event(now, "cuda:0", "GPU-1", 11, &w, Some(300.5)),
        worker_event(
            now,
            "cuda:0",
            "GPU-1",
            11,
            &WorkerRef {
                beam_pid: None,
                instance_name: None,
                ..w
            },
            None,
        ),
        call_event(now, &call, Some(164.0)),
        call_event(
            now,
            &LongCall {
                before: None,
                ..call
            },
            None,
        ),
    ]
}
