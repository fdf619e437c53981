//! The NVML source and the availability probe. `libnvidia-ml.so.1` is opened at run time
//! (dlopen), so the agent builds and runs on machines without the NVIDIA driver; each
//! way NVML can be missing becomes one line naming what is missing.
use super::source::{DeviceIdent, GpuSource, MemoryReading, ProcessReading, SourceError};
use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::error::{nvml_try, NvmlError};
use nvml_wrapper::Nvml;
use serde::Serialize;
use std::ffi::OsStr;
use std::fmt;

/// The library NVML is loaded from unless a path is given (the driver installs it).
pub const NVML_LIBRARY: &str = "libnvidia-ml.so.1";

/// Why GPU profiling is off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UnavailableKind {
    /// dlopen of the NVML library failed (no NVIDIA driver installed, or not on the
    /// loader path).
    LibraryNotFound,
    /// The library loaded but a function the agent needs is not in it.
    SymbolMissing,
    /// The library is there but the kernel driver is not loaded.
    DriverNotLoaded,
    /// The driver is too old for the calls the agent needs.
    DriverTooOld,
    /// NVML works but reports no device.
    NoDevice,
    NoPermission,
    Disabled,
    Other,
}

/// One-line reason GPU profiling is off (`Display` is the line for logs and `check`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Unavailable {
    pub kind: UnavailableKind,
    pub detail: String,
}

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            UnavailableKind::LibraryNotFound => "NVML library not found",
            UnavailableKind::SymbolMissing => "NVML symbol missing",
            UnavailableKind::DriverNotLoaded => "NVIDIA driver not loaded",
            UnavailableKind::DriverTooOld => "NVIDIA driver too old",
            UnavailableKind::NoDevice => "no NVIDIA GPU",
            UnavailableKind::NoPermission => "no permission to use NVML",
            UnavailableKind::Disabled => "disabled",
            UnavailableKind::Other => "NVML failed",
        };
        write!(f, "GPU profiling off: {what}: {}", self.detail)
    }
}

/// What NVML offers on this machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GpuInventory {
    pub driver_version: Option<String>,
    pub devices: Vec<DeviceIdent>,
    /// Degraded but working (an older call used, a figure missing), one line each.
    pub notes: Vec<String>,
}

/// The answer of `probe()`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum GpuAvailability {
    Available(GpuInventory),
    Unavailable(Unavailable),
}

impl GpuAvailability {
    /// One line for logs and `snakepit-agent check`.
    pub fn line(&self) -> String {
        match self {
            GpuAvailability::Available(inv) => {
                let names: Vec<String> = inv
                    .devices
                    .iter()
                    .map(|d| format!("cuda:{} {}", d.index, d.name))
                    .collect();
                let mut line = format!(
                    "GPU profiling on: NVML, driver {}, {} device(s): {}",
                    inv.driver_version.as_deref().unwrap_or("unknown"),
                    inv.devices.len(),
                    names.join(", ")
                );
                for n in &inv.notes {
                    line.push_str("; ");
                    line.push_str(n);
                }
                line
            }
            GpuAvailability::Unavailable(u) => u.to_string(),
        }
    }

    pub fn is_available(&self) -> bool {
        matches!(self, GpuAvailability::Available(_))
    }
}

/// Probes NVML from the default library (`libnvidia-ml.so.1`).
pub fn probe() -> GpuAvailability {
    probe_library(OsStr::new(NVML_LIBRARY))
}

/// Probes NVML from a given library path (tests point it at other libraries).
pub fn probe_library(lib: &OsStr) -> GpuAvailability {
    match NvmlSource::open(lib) {
        Ok((_, inv)) => GpuAvailability::Available(inv),
        Err(u) => GpuAvailability::Unavailable(u),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MemoryCall {
    /// `nvmlDeviceGetMemoryInfo_v2`: total, used, free and reserved.
    V2,
    /// `nvmlDeviceGetMemoryInfo`: no reserved figure (drivers before R510).
    V1,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProcessCall {
    V3,
    V2,
    None,
}

/// NVML as a `GpuSource`.
pub struct NvmlSource {
    nvml: Nvml,
    memory_call: MemoryCall,
    process_call: ProcessCall,
}

impl NvmlSource {
    /// Loads and initialises NVML, checks the calls the sampler needs and lists the
    /// devices. Every failure is one `Unavailable` line.
    pub fn open(lib: &OsStr) -> Result<(NvmlSource, GpuInventory), Unavailable> {
        let lib_name = lib.to_string_lossy().into_owned();
        let nvml = Nvml::builder()
            .lib_path(lib)
            .init()
            .map_err(|e| classify_init(&lib_name, e))?;
        let l = nvml.lib();
        let mut notes = Vec::new();
        let memory_call = if l.nvmlDeviceGetMemoryInfo_v2.is_ok() {
            MemoryCall::V2
        } else if l.nvmlDeviceGetMemoryInfo.is_ok() {
            notes.push(
                "nvmlDeviceGetMemoryInfo_v2 missing (driver before R510): reserved_mb not reported"
                    .to_string(),
            );
            MemoryCall::V1
        } else {
            return Err(Unavailable {
                kind: UnavailableKind::DriverTooOld,
                detail: format!(
                    "{lib_name} has neither nvmlDeviceGetMemoryInfo_v2 nor nvmlDeviceGetMemoryInfo"
                ),
            });
        };
        let process_call = if l.nvmlDeviceGetComputeRunningProcesses_v3.is_ok() {
            ProcessCall::V3
        } else if l.nvmlDeviceGetComputeRunningProcesses_v2.is_ok() {
            ProcessCall::V2
        } else {
            notes.push(format!(
                "nvmlDeviceGetComputeRunningProcesses_v3/_v2 missing from {lib_name} (old driver): per-worker GPU memory not reported"
            ));
            ProcessCall::None
        };
        let driver_version = nvml.sys_driver_version().ok();
        let mut src = NvmlSource {
            nvml,
            memory_call,
            process_call,
        };
        let devices = src.devices().map_err(|e| Unavailable {
            kind: UnavailableKind::Other,
            detail: e.to_string(),
        })?;
        if devices.is_empty() {
            return Err(Unavailable {
                kind: UnavailableKind::NoDevice,
                detail: format!(
                    "NVML (driver {}) reports 0 devices",
                    driver_version.as_deref().unwrap_or("unknown")
                ),
            });
        }
        // A first memory read catches drivers whose symbols exist but refuse the call.
        if let Err(e) = src.memory_info(devices[0].index) {
            return Err(Unavailable {
                kind: UnavailableKind::Other,
                detail: e.to_string(),
            });
        }
        let inv = GpuInventory {
            driver_version,
            devices,
            notes,
        };
        Ok((src, inv))
    }

    fn device(
        &self,
        index: u32,
        what: &'static str,
    ) -> Result<nvml_wrapper::Device<'_>, SourceError> {
        self.nvml
            .device_by_index(index)
            .map_err(|e| dev_err(index, what, e))
    }
}

fn dev_err(index: u32, what: &'static str, e: NvmlError) -> SourceError {
    SourceError::Device {
        index,
        what,
        detail: e.to_string(),
    }
}

fn classify_init(lib: &str, e: NvmlError) -> Unavailable {
    let (kind, detail) = match &e {
        NvmlError::LibloadingError(le) => (
            UnavailableKind::LibraryNotFound,
            format!("cannot load {lib} (is the NVIDIA driver installed?): {le}"),
        ),
        NvmlError::FailedToLoadSymbol(s) => (
            UnavailableKind::SymbolMissing,
            format!("nvmlInit_v2 not found in {lib}: {s}"),
        ),
        NvmlError::DriverNotLoaded => (
            UnavailableKind::DriverNotLoaded,
            format!("{lib} loaded but the nvidia kernel module is not running"),
        ),
        NvmlError::NoPermission => (
            UnavailableKind::NoPermission,
            format!("{lib}: NVML may not talk to the driver (/dev/nvidia* permissions)"),
        ),
        NvmlError::LibRmVersionMismatch => (
            UnavailableKind::DriverTooOld,
            format!("{lib} and the nvidia kernel module are different versions (reboot or reinstall the driver)"),
        ),
        NvmlError::FunctionNotFound => (
            UnavailableKind::DriverTooOld,
            format!("{lib}: a function is not supported by the driver"),
        ),
        other => (UnavailableKind::Other, format!("{lib}: nvmlInit_v2 failed: {other}")),
    };
    Unavailable { kind, detail }
}

impl GpuSource for NvmlSource {
    fn devices(&mut self) -> Result<Vec<DeviceIdent>, SourceError> {
        let count = self
            .nvml
            .device_count()
            .map_err(|e| SourceError::Other(format!("nvmlDeviceGetCount_v2 failed: {e}")))?;
        let mut out = Vec::with_capacity(count as usize);
        for index in 0..count {
            let dev = self.device(index, "nvmlDeviceGetHandleByIndex_v2")?;
            out.push(DeviceIdent {
                index,
                // Names and UUIDs are labels only: an error there must not hide the device.
                name: dev.name().unwrap_or_else(|_| "unknown".into()),
                uuid: dev.uuid().unwrap_or_default(),
            });
        }
        Ok(out)
    }

    fn memory_info(&mut self, index: u32) -> Result<MemoryReading, SourceError> {
        let dev = self.device(index, "nvmlDeviceGetHandleByIndex_v2")?;
        match self.memory_call {
            MemoryCall::V2 => {
                let m = dev
                    .memory_info()
                    .map_err(|e| dev_err(index, "nvmlDeviceGetMemoryInfo_v2", e))?;
                Ok(MemoryReading {
                    total: m.total,
                    used: m.used,
                    free: m.free,
                    reserved: Some(m.reserved),
                })
            }
            MemoryCall::V1 => {
                let what = "nvmlDeviceGetMemoryInfo";
                let f = self
                    .nvml
                    .lib()
                    .nvmlDeviceGetMemoryInfo
                    .as_ref()
                    .map_err(|e| {
                        dev_err(index, what, NvmlError::FailedToLoadSymbol(e.to_string()))
                    })?;
                let mut m = std::mem::MaybeUninit::zeroed();
                // SAFETY: the handle comes from this NVML instance and `m` is a valid
                // out-pointer of the type the v1 call writes (nvmlMemory_t).
                let rc = unsafe { f(dev.handle(), m.as_mut_ptr()) };
                nvml_try(rc).map_err(|e| dev_err(index, what, e))?;
                // SAFETY: zero-initialised plain integers, filled by a successful call.
                let m = unsafe { m.assume_init() };
                Ok(MemoryReading {
                    total: m.total,
                    used: m.used,
                    free: m.free,
                    reserved: None,
                })
            }
        }
    }

    fn compute_processes(&mut self, index: u32) -> Result<Vec<ProcessReading>, SourceError> {
        let dev = self.device(index, "nvmlDeviceGetHandleByIndex_v2")?;
        let list = match self.process_call {
            ProcessCall::V3 => dev
                .running_compute_processes()
                .map_err(|e| dev_err(index, "nvmlDeviceGetComputeRunningProcesses_v3", e))?,
            ProcessCall::V2 => dev
                .running_compute_processes_v2()
                .map_err(|e| dev_err(index, "nvmlDeviceGetComputeRunningProcesses_v2", e))?,
            ProcessCall::None => return Ok(Vec::new()),
        };
        Ok(list
            .into_iter()
            .map(|p| ProcessReading {
                pid: p.pid,
                used_bytes: match p.used_gpu_memory {
                    UsedGpuMemory::Used(b) => Some(b),
                    UsedGpuMemory::Unavailable => None,
                },
            })
            .collect())
    }
}
