//! In-kernel counters (STATS map) and per-program run statistics.
use telemetry_common::{PROBE_COUNT, PROBE_NAMES, STAT_KINDS, STAT_NAMES};

/// Counters of one probe group (see telemetry_common::STAT_NAMES for the columns).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProbeStats {
    pub probe: &'static str,
    /// Summed over CPUs, indexed by STAT_* constants.
    pub total: [u64; STAT_KINDS as usize],
    /// Per CPU, indexed [cpu][STAT_*].
    pub per_cpu: Vec<[u64; STAT_KINDS as usize]>,
}

/// A snapshot of the STATS map: one row per probe group, in PROBE_* order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelStats {
    pub probes: Vec<ProbeStats>,
}

impl KernelStats {
    pub(crate) fn empty(cpus: usize) -> KernelStats {
        KernelStats {
            probes: PROBE_NAMES
                .iter()
                .map(|&probe| ProbeStats {
                    probe,
                    total: [0; STAT_KINDS as usize],
                    per_cpu: vec![[0; STAT_KINDS as usize]; cpus],
                })
                .collect(),
        }
    }

    /// Counter `stat` (STAT_*) of probe `probe` (PROBE_*), summed over CPUs.
    pub fn get(&self, probe: u32, stat: u32) -> u64 {
        self.probes
            .get(probe as usize)
            .and_then(|p| p.total.get(stat as usize))
            .copied()
            .unwrap_or(0)
    }

    /// Counter `stat` summed over all probes.
    pub fn total(&self, stat: u32) -> u64 {
        (0..PROBE_COUNT).map(|p| self.get(p, stat)).sum()
    }

    /// `(probe, stat name, value)` for every non-zero total; for logs and `check`.
    pub fn nonzero(&self) -> Vec<(&'static str, &'static str, u64)> {
        let mut out = Vec::new();
        for p in &self.probes {
            for (i, &v) in p.total.iter().enumerate() {
                if v != 0 {
                    out.push((p.probe, STAT_NAMES[i], v));
                }
            }
        }
        out
    }
}

/// Kernel run statistics of one program (BPF_ENABLE_STATS must be on).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProgRunStats {
    pub name: String,
    pub run_time_ns: u64,
    pub run_count: u64,
}

impl ProgRunStats {
    pub fn avg_ns(&self) -> Option<f64> {
        (self.run_count > 0).then(|| self.run_time_ns as f64 / self.run_count as f64)
    }
}

/// Counters of the user-space reader.
#[derive(Debug, Default)]
pub struct ReaderCounters {
    pub records: std::sync::atomic::AtomicU64,
    pub decode_errors: std::sync::atomic::AtomicU64,
}
