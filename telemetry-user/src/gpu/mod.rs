//! GPU memory: an NVML sampler. Per device (total, used, free, reserved) and per process
//! with a compute context, attributed to Snakepit workers by pid; bounded history for
//! the live page and an API; per-call before/after figures for long calls. NVML is
//! loaded at run time: without a driver the agent runs on and says why in one line.
//! docs/gpu.md says which NVML figure each event field is.
mod nvml;
mod recorded;
mod sampler;
mod source;
#[cfg(test)]
mod tests;

pub use nvml::{
    probe, probe_library, GpuAvailability, GpuInventory, NvmlSource, Unavailable, UnavailableKind,
    NVML_LIBRARY,
};
pub use recorded::{Frame, RecordedSource, Recording};
#[cfg(test)]
pub(crate) use sampler::golden_events;
pub use sampler::{
    DeviceSample, GpuHandle, GpuSample, LongCall, RoundOutcome, Sampler, WorkerReading,
    WorkerSample, GPU_CALL_MEMORY, GPU_MEMORY, GPU_WORKER_MEMORY,
};
pub use source::{DeviceIdent, GpuSource, MemoryReading, ProcessReading, SourceError};

use crate::discovery::WorkerInfo;
use crate::events::Bus;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::time::Duration;
use tokio::sync::watch;

/// Lowest sampling interval: NVML process queries cost a driver round trip each.
pub const MIN_INTERVAL_MS: u64 = 100;

/// `[gpu]` configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct GpuConfig {
    pub enabled: bool,
    /// Sampling interval; values below 100 ms are raised to 100 ms.
    pub interval_ms: u64,
    /// Samples kept for the live page and the API.
    pub history: usize,
    /// Calls at least this long get the worker's GPU memory before and after.
    pub long_call_threshold_ms: u64,
}

impl Default for GpuConfig {
    fn default() -> Self {
        GpuConfig {
            enabled: true,
            interval_ms: 5000,
            history: 1000,
            long_call_threshold_ms: 1000,
        }
    }
}

impl GpuConfig {
    /// The interval actually used (clamped to at least `MIN_INTERVAL_MS`).
    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms.max(MIN_INTERVAL_MS))
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.history == 0 {
            return Err("gpu.history must be >= 1".into());
        }
        Ok(())
    }
}

/// A worker as the sampler attributes memory to it (pool, worker, deployment).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerRef {
    pub pool: String,
    pub worker_id: String,
    #[serde(default)]
    pub beam_pid: Option<u32>,
    #[serde(default)]
    pub instance_name: Option<String>,
}

impl From<&WorkerInfo> for WorkerRef {
    fn from(w: &WorkerInfo) -> Self {
        WorkerRef {
            pool: w.pool.clone(),
            worker_id: w.worker_id.clone(),
            beam_pid: w.beam_pid,
            instance_name: w.instance_name.clone(),
        }
    }
}

/// Worker pid -> worker; discovery feeds it through a `watch` channel.
pub type WorkerMap = HashMap<u32, WorkerRef>;

/// Runs the NVML sampler until the `workers` sender is dropped (or the task is
/// aborted). Without NVML it logs the one-line reason, records it on `handle` and
/// returns at once: the agent runs on.
pub async fn run(cfg: GpuConfig, bus: Bus, workers: watch::Receiver<WorkerMap>, handle: GpuHandle) {
    if !cfg.enabled {
        tracing::info!("GPU profiling off: disabled in the configuration ([gpu] enabled = false)");
        handle.set_availability(GpuAvailability::Unavailable(Unavailable {
            kind: UnavailableKind::Disabled,
            detail: "[gpu] enabled = false".into(),
        }));
        return;
    }
    let opened = tokio::task::spawn_blocking(|| NvmlSource::open(OsStr::new(NVML_LIBRARY))).await;
    let source = match opened {
        Ok(Ok((source, inv))) => {
            let a = GpuAvailability::Available(inv);
            tracing::info!("{}", a.line());
            handle.set_availability(a);
            source
        }
        Ok(Err(u)) => {
            tracing::warn!("{u}");
            handle.set_availability(GpuAvailability::Unavailable(u));
            return;
        }
        Err(e) => {
            tracing::warn!("GPU profiling off: NVML probe task failed: {e}");
            return;
        }
    };
    run_with_source(source, cfg, bus, workers, handle).await;
}

/// The sampling loop over any source (tests use `RecordedSource`). Returns when the
/// source is exhausted or the `workers` sender is gone.
pub async fn run_with_source<S: GpuSource>(
    source: S,
    cfg: GpuConfig,
    bus: Bus,
    mut workers: watch::Receiver<WorkerMap>,
    handle: GpuHandle,
) {
    let mut ticker = tokio::time::interval(cfg.interval());
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut slot = Some((source, Sampler::new()));
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = handle.refresh_requested().notified() => {}
        }
        if workers.has_changed().is_err() {
            return;
        }
        let map = workers.borrow_and_update().clone();
        let Some((mut source, mut sampler)) = slot.take() else {
            return;
        };
        let h = handle.clone();
        // NVML calls block on the driver: keep them off the async workers.
        let joined = tokio::task::spawn_blocking(move || {
            let out = sampler.round(&mut source, &map, &h, crate::events::now_unix_nano());
            (source, sampler, out)
        })
        .await;
        let Ok((source, sampler, outcome)) = joined else {
            tracing::warn!("GPU sampler: a sampling round panicked; GPU sampling stopped");
            return;
        };
        match outcome {
            RoundOutcome::Exhausted => return,
            RoundOutcome::Events(events) => {
                for ev in events {
                    bus.publish(ev);
                }
            }
        }
        slot = Some((source, sampler));
    }
}
