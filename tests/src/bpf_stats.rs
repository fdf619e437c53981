//! Kernel run-time statistics of loaded eBPF programs (`bpf_prog_info.run_time_ns` and
//! `run_cnt`, counted only while someone holds BPF_ENABLE_STATS open: [`count`], or an
//! agent run with `[capture] program_stats`). Read without bpftool, through aya's
//! program iterator.
use std::collections::HashMap;
use std::os::fd::OwnedFd;

/// Turns the kernel's run-time statistics on for every BPF program until the returned
/// fd is dropped. They cost each program run two clock reads, so a measurement that
/// compares throughput holds them only where it reads them.
pub fn count() -> std::io::Result<OwnedFd> {
    aya::sys::enable_stats(aya::sys::Stats::RunTime).map_err(std::io::Error::other)
}

/// One program's counters at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgSample {
    pub id: u32,
    /// The kernel's name: the first 15 bytes of the program's function name.
    pub name: String,
    pub run_time_ns: u64,
    pub run_count: u64,
}

/// Every loaded program, by id.
pub fn snapshot() -> HashMap<u32, ProgSample> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .map(|p| {
            let s = ProgSample {
                id: p.id(),
                name: p.name_as_str().unwrap_or("?").to_string(),
                run_time_ns: p.run_time().as_nanos() as u64,
                run_count: p.run_count(),
            };
            (s.id, s)
        })
        .collect()
}

/// Programs in `after` that were not loaded at `before` (the agent's, when `before`
/// was taken just before it started).
pub fn new_programs(
    before: &HashMap<u32, ProgSample>,
    after: &HashMap<u32, ProgSample>,
) -> Vec<u32> {
    let mut ids: Vec<u32> = after
        .keys()
        .filter(|id| !before.contains_key(id))
        .copied()
        .collect();
    ids.sort_unstable();
    ids
}

/// Run time and count accrued by `ids` between two snapshots, optionally only the
/// programs whose name satisfies `keep`.
pub fn delta(
    ids: &[u32],
    from: &HashMap<u32, ProgSample>,
    to: &HashMap<u32, ProgSample>,
    keep: impl Fn(&str) -> bool,
) -> (u64, u64) {
    ids.iter()
        .filter_map(|id| Some((from.get(id)?, to.get(id)?)))
        .filter(|(_, b)| keep(&b.name))
        .fold((0, 0), |(t, c), (a, b)| {
            (
                t + b.run_time_ns.saturating_sub(a.run_time_ns),
                c + b.run_count.saturating_sub(a.run_count),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(id: u32, name: &str, t: u64, c: u64) -> (u32, ProgSample) {
        (
            id,
            ProgSample {
                id,
                name: name.into(),
                run_time_ns: t,
                run_count: c,
            },
        )
    }

    #[test]
    fn deltas_cover_only_new_and_kept_programs() {
        let before: HashMap<_, _> = [s(1, "systemd", 10, 1)].into();
        let mid: HashMap<_, _> = [
            s(1, "systemd", 10, 1),
            s(7, "sys_exit_write", 100, 2),
            s(8, "sys_exit_read", 50, 1),
        ]
        .into();
        let end: HashMap<_, _> = [
            s(1, "systemd", 99, 9),
            s(7, "sys_exit_write", 400, 5),
            s(8, "sys_exit_read", 90, 3),
        ]
        .into();
        let ids = new_programs(&before, &mid);
        assert_eq!(ids, vec![7, 8]);
        assert_eq!(delta(&ids, &mid, &end, |_| true), (340, 5));
        assert_eq!(delta(&ids, &mid, &end, |n| n.ends_with("_write")), (300, 3));
    }
}
