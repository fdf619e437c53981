//! Attaching the Python stack sampler (perf_event CPU clock, one event per online
//! CPU) and handing its maps to `crate::profiler`. Separate from `Probes::load` so the
//! sampler costs nothing (not even verification) when `[profile] sampling` is off.
use aya::{
    maps::{HashMap, MapData, PerCpuArray, RingBuf},
    programs::{
        perf_event::{PerfEventConfig, PerfEventScope, SamplePolicy, SoftwareEvent},
        PerfEvent,
    },
};
use telemetry_common::{
    PyProcInfo, MAP_PROFILE_EVENTS, MAP_PROFILE_STATS, MAP_PY_PROCS, PROG_PROFILE,
};

use super::{error::KernelError, loader::Probes};

/// The sampler's maps, owned by the profiler task.
pub struct ProfilerMaps {
    pub py_procs: HashMap<MapData, u32, PyProcInfo>,
    pub ring: RingBuf<MapData>,
    pub stats: PerCpuArray<MapData, u64>,
}

impl Probes {
    /// Loads and attaches the sampler at `hz` per CPU.
    pub fn start_profiler(&mut self, hz: u64) -> Result<ProfilerMaps, KernelError> {
        let target = format!("perf_event:cpu-clock@{hz}Hz");
        let probe_err = |source| KernelError::Probe {
            name: PROG_PROFILE,
            target: target.clone(),
            source,
        };
        let ebpf = self.ebpf_mut();
        let prog: &mut PerfEvent = ebpf
            .program_mut(PROG_PROFILE)
            .ok_or(KernelError::MissingProgram(PROG_PROFILE))?
            .try_into()
            .map_err(probe_err)?;
        prog.load().map_err(probe_err)?;
        let cpus = aya::util::online_cpus().map_err(|(_, e)| {
            probe_err(aya::programs::ProgramError::SyscallError(
                aya::sys::SyscallError {
                    call: "online_cpus",
                    io_error: e,
                },
            ))
        })?;
        let mut perf_links = Vec::new();
        for cpu in cpus {
            let link = prog
                .attach(
                    PerfEventConfig::Software(SoftwareEvent::CpuClock),
                    PerfEventScope::AllProcessesOneCpu { cpu },
                    SamplePolicy::Frequency(hz),
                    false,
                )
                .map_err(probe_err)?;
            perf_links.push(super::teardown::LinkRef::PerfEvent(PROG_PROFILE, link));
        }
        let take = |ebpf: &mut aya::Ebpf, name: &'static str| {
            ebpf.take_map(name).ok_or(KernelError::MissingMap(name))
        };
        let map_err = |name: &'static str| move |source| KernelError::Map { name, source };
        let py_procs =
            HashMap::try_from(take(ebpf, MAP_PY_PROCS)?).map_err(map_err(MAP_PY_PROCS))?;
        let ring = RingBuf::try_from(take(ebpf, MAP_PROFILE_EVENTS)?)
            .map_err(map_err(MAP_PROFILE_EVENTS))?;
        let stats = PerCpuArray::try_from(take(ebpf, MAP_PROFILE_STATS)?)
            .map_err(map_err(MAP_PROFILE_STATS))?;
        self.note_attached(target);
        self.links.extend(perf_links);
        Ok(ProfilerMaps {
            py_procs,
            ring,
            stats,
        })
    }
}
