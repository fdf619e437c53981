//! What the sampler reads: a GPU source. NVML in production, recorded readings in tests,
//! so the sampler's logic is tested on machines without a GPU.
use serde::{Deserialize, Serialize};

/// One device's identity (stable across samples).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceIdent {
    /// NVML index: the `N` of `cuda:N` (same order as CUDA when
    /// `CUDA_DEVICE_ORDER=PCI_BUS_ID`).
    pub index: u32,
    pub name: String,
    pub uuid: String,
}

/// Framebuffer memory of one device, in bytes (NVML `nvmlMemory_v2_t`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryReading {
    pub total: u64,
    /// Allocated by processes plus what the driver sets aside for itself.
    pub used: u64,
    pub free: u64,
    /// Reserved by the driver/firmware (only with `nvmlDeviceGetMemoryInfo_v2`, driver
    /// >= 510; None with the v1 call).
    #[serde(default)]
    pub reserved: Option<u64>,
}

/// One process with a compute context on a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessReading {
    pub pid: u32,
    /// None where NVML cannot say (e.g. no permission, WDDM).
    pub used_bytes: Option<u64>,
}

/// A source failure. `Display` is one line meant for logs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    #[error("device {index}: {what} failed: {detail}")]
    Device {
        index: u32,
        what: &'static str,
        detail: String,
    },
    #[error("{0}")]
    Other(String),
    /// A recorded source ran out of readings.
    #[error("no more recorded readings")]
    Exhausted,
}

/// A GPU memory source. Calls block (NVML talks to the driver); the sampler runs them
/// off the async runtime.
pub trait GpuSource: Send + 'static {
    /// Devices present now.
    fn devices(&mut self) -> Result<Vec<DeviceIdent>, SourceError>;
    fn memory_info(&mut self, index: u32) -> Result<MemoryReading, SourceError>;
    /// Processes with a compute context on the device and their used memory.
    fn compute_processes(&mut self, index: u32) -> Result<Vec<ProcessReading>, SourceError>;
    /// Called once per sampling round before any other call; a recorded source moves
    /// to its next frame here.
    fn begin_round(&mut self) -> Result<(), SourceError> {
        Ok(())
    }
}
