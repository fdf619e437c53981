//! A source that replays recorded NVML readings (a JSON fixture), frame by frame.
use super::source::{DeviceIdent, GpuSource, MemoryReading, ProcessReading, SourceError};
use super::WorkerRef;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};

/// A recording: devices, the worker pids of the deployment it was taken from, and one
/// frame per sampling round.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recording {
    #[serde(default)]
    pub description: String,
    pub devices: Vec<DeviceIdent>,
    /// pid -> worker, as discovery would report it.
    #[serde(default)]
    pub workers: BTreeMap<u32, WorkerRef>,
    pub frames: Vec<Frame>,
}

/// One round of readings. Keys are device indices (JSON object keys are strings).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Frame {
    #[serde(default)]
    pub memory: BTreeMap<u32, MemoryReading>,
    #[serde(default)]
    pub processes: BTreeMap<u32, Vec<ProcessReading>>,
    /// Devices whose reads fail in this frame (e.g. "GPU is lost").
    #[serde(default)]
    pub errors: BTreeMap<u32, String>,
}

impl Recording {
    pub fn from_json(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }

    pub fn worker_map(&self) -> HashMap<u32, WorkerRef> {
        self.workers
            .iter()
            .map(|(pid, w)| (*pid, w.clone()))
            .collect()
    }
}

/// Replays a recording; each `begin_round` moves to the next frame. After the last
/// frame it keeps returning `Exhausted`, unless built with `looping`.
pub struct RecordedSource {
    rec: Recording,
    next: usize,
    current: Option<usize>,
    looping: bool,
}

impl RecordedSource {
    pub fn new(rec: Recording) -> Self {
        RecordedSource {
            rec,
            next: 0,
            current: None,
            looping: false,
        }
    }

    pub fn looping(mut self) -> Self {
        self.looping = true;
        self
    }

    fn frame(&self) -> Result<&Frame, SourceError> {
        self.current
            .and_then(|i| self.rec.frames.get(i))
            .ok_or(SourceError::Exhausted)
    }

    fn check(&self, index: u32, what: &'static str) -> Result<&Frame, SourceError> {
        let frame = self.frame()?;
        match frame.errors.get(&index) {
            Some(detail) => Err(SourceError::Device {
                index,
                what,
                detail: detail.clone(),
            }),
            None => Ok(frame),
        }
    }
}

impl GpuSource for RecordedSource {
    fn begin_round(&mut self) -> Result<(), SourceError> {
        if self.next >= self.rec.frames.len() {
            if !self.looping || self.rec.frames.is_empty() {
                self.current = None;
                return Err(SourceError::Exhausted);
            }
            self.next = 0;
        }
        self.current = Some(self.next);
        self.next += 1;
        Ok(())
    }

    fn devices(&mut self) -> Result<Vec<DeviceIdent>, SourceError> {
        self.frame()?;
        Ok(self.rec.devices.clone())
    }

    fn memory_info(&mut self, index: u32) -> Result<MemoryReading, SourceError> {
        let frame = self.check(index, "memory info")?;
        frame
            .memory
            .get(&index)
            .copied()
            .ok_or_else(|| SourceError::Device {
                index,
                what: "memory info",
                detail: "not in the recording".into(),
            })
    }

    fn compute_processes(&mut self, index: u32) -> Result<Vec<ProcessReading>, SourceError> {
        let frame = self.check(index, "compute processes")?;
        Ok(frame.processes.get(&index).cloned().unwrap_or_default())
    }
}
