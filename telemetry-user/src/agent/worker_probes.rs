//! The probes inside the workers: each worker's threads get the scheduling records
//! (SCHED_PIDS), its mapped upb and orjson objects the (de)serialization uprobes, and
//! the tracker learns where its GIL lies. A worker that has not imported protobuf or
//! orjson yet (a fresh one; the stdlib json it imported first does not count) is
//! planned again every 0.25 s for 5 s, then at doubling
//! intervals (about 4 minutes in all), then left with one log line saying what is
//! missing.
use std::collections::HashMap;
use std::path::Path;

use crate::calls::CallTracker;
use crate::kernel::Probes;
use crate::worker_time::targets;

/// Plans per worker at most while something is missing.
const MAX_PLANS: u32 = 30;
/// Delay between plans; doubled after `FAST_PLANS`.
const RETRY_NS: u64 = 250_000_000;
const FAST_PLANS: u32 = 20;

#[derive(Default)]
pub(crate) struct WorkerProbes {
    workers: HashMap<u32, Probed>,
    pub counters: WorkerProbeCounters,
}

#[derive(Default, Clone, Copy, Debug)]
pub(crate) struct WorkerProbeCounters {
    pub uprobes_attached: u64,
    pub uprobe_errors: u64,
    pub workers_missing_targets: u64,
}

#[derive(Default)]
struct Probed {
    plans: u32,
    next_plan_ns: u64,
    /// The interpreter's runtime range, once found (not looked up again).
    gil: Option<std::ops::Range<u64>>,
    sched: bool,
    /// Symbols attached, by (path, symbol).
    attached: Vec<(std::path::PathBuf, String)>,
    complete: bool,
}

impl WorkerProbes {
    /// Brings the probes of the current `workers` up to date (called after each scan).
    pub fn sync(
        &mut self,
        probes: &mut Probes,
        tracker: &mut CallTracker,
        proc_root: &Path,
        workers: &[u32],
        cfg: &crate::profiler::ProfileConfig,
        now_ns: u64,
    ) {
        let (scheduling, serialization) = (cfg.scheduling, cfg.serialization);
        for &pid in workers {
            let w = self.workers.entry(pid).or_default();
            if scheduling && !w.sched {
                match probes.sched_watch(pid, true) {
                    Ok(()) => w.sched = true,
                    Err(e) => {
                        tracing::warn!(pid, error = %e, "cannot follow the worker's scheduling");
                        w.sched = true; // said once
                    }
                }
            }
            if w.complete || w.plans >= MAX_PLANS || now_ns < w.next_plan_ns {
                continue;
            }
            w.next_plan_ns = now_ns + (RETRY_NS << w.plans.saturating_sub(FAST_PLANS));
            w.plans += 1;
            let mut plan = targets::plan(proc_root, pid, w.gil.clone());
            if w.gil.is_none() {
                w.gil = plan.waits.gil.clone();
            }
            plan.waits.gil = w.gil.clone();
            tracker
                .activity_mut()
                .set_process_waits(pid, plan.waits.clone());
            if serialization {
                for t in &plan.targets {
                    let key = (t.path.clone(), t.symbol.clone());
                    if w.attached.contains(&key) {
                        continue;
                    }
                    match probes.attach_serialize(pid, t) {
                        Ok(()) => {
                            self.counters.uprobes_attached += 1;
                            w.attached.push(key);
                        }
                        Err(e) => {
                            self.counters.uprobe_errors += 1;
                            tracing::warn!(pid, error = %e, "cannot probe the worker's (de)serialization");
                        }
                    }
                }
            }
            let all_attached = plan.targets.iter().all(|t| {
                w.attached
                    .iter()
                    .any(|(p, s)| *p == t.path && *s == t.symbol)
            });
            w.complete = if serialization {
                plan.complete && all_attached
            } else {
                plan.waits.gil.is_some()
            };
            if !w.complete && w.plans == MAX_PLANS {
                self.counters.workers_missing_targets += 1;
                tracing::info!(
                    pid,
                    missing = %plan.missing.join("; "),
                    "worker split: some of the worker's inside is not probed"
                );
            }
        }
        let gone: Vec<u32> = self
            .workers
            .keys()
            .filter(|p| !workers.contains(p))
            .copied()
            .collect();
        for pid in gone {
            self.forget(probes, tracker, pid);
        }
    }

    pub fn forget(&mut self, probes: &mut Probes, tracker: &mut CallTracker, pid: u32) {
        if let Some(w) = self.workers.remove(&pid) {
            if w.sched {
                let _ = probes.sched_watch(pid, false);
            }
            probes.detach_serialize(pid);
            tracker.activity_mut().forget_process(pid);
        }
    }
}
