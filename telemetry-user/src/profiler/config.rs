use serde::{Deserialize, Serialize};

/// `[profile]`: the Python stack sampler.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct ProfileConfig {
    /// CPU-clock sampling of the workers' Python stacks.
    pub sampling: bool,
    /// Samples per second per CPU (perf_event frequency).
    pub sample_hz: u64,
    /// How long resolved samples are kept for per-call attribution and profiles.
    pub window_s: u64,
    /// Uprobes on protobuf (upb) and orjson / stdlib json in the workers:
    /// `deserialize_time`, `serialize_time` and `[:snakepit, :serialize, :stop]`.
    pub serialization: bool,
    /// sched_switch/sched_waking of the workers' threads: on-CPU, runqueue and off-CPU
    /// time by reason per call, and the `bound` verdict.
    pub scheduling: bool,
    /// Off-CPU stacks: where a worker thread blocks, weighted by the time until it runs
    /// again (needs `sampling` and `scheduling`).
    pub off_cpu: bool,
    /// Off-CPU stack walks per second per thread at most, on average (bursts of 16): a
    /// busy event loop blocks thousands of times a second and each walk costs a few
    /// microseconds in the kernel.
    pub off_cpu_hz: u64,
    /// Above this many user calls per second, the split's probes (`scheduling`,
    /// `serialization`, off-CPU walks) record in windows that split about this many
    /// calls a second; the others carry no split. 0: every call is split.
    pub split_max_calls_per_s: u32,
}

impl Default for ProfileConfig {
    fn default() -> Self {
        ProfileConfig {
            sampling: true,
            sample_hz: 99,
            window_s: 120,
            serialization: true,
            scheduling: true,
            off_cpu: true,
            off_cpu_hz: 5,
            split_max_calls_per_s: 100,
        }
    }
}

impl ProfileConfig {
    /// The kernel's off-CPU walk period (ns per walk per thread), 0 when off.
    pub fn off_cpu_period_ns(&self) -> u64 {
        if self.sampling && self.scheduling && self.off_cpu && self.off_cpu_hz > 0 {
            1_000_000_000 / self.off_cpu_hz
        } else {
            0
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.sampling && !(1..=10_000).contains(&self.sample_hz) {
            return Err(format!(
                "[profile] sample_hz {} not in 1..=10000",
                self.sample_hz
            ));
        }
        if self.off_cpu && !(1..=10_000).contains(&self.off_cpu_hz) {
            return Err(format!(
                "[profile] off_cpu_hz {} not in 1..=10000",
                self.off_cpu_hz
            ));
        }
        Ok(())
    }
}
