//! The per-worker probes: which processes' threads report their scheduling (the
//! SCHED_PIDS bitmap) and the (de)serialization uprobes attached to a worker's mapped
//! protobuf and orjson objects (calls/serialize decides what to attach where).
use std::{collections::HashMap, num::NonZeroU32, os::fd::OwnedFd, path::PathBuf};

use aya::programs::{
    uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeLinkId, UProbeScope},
    RawTracePoint, UProbe,
};
use telemetry_common::{
    SerializeFn, SizeFrom, MAP_SCHED_PIDS, MAP_SPLIT_GATE, SCHED_PID_WORDS, SERIALIZE_OUTER,
    SPLIT_GATE_GENERATION, SPLIT_GATE_PAUSED,
};
use thiserror::Error;

use super::loader::Probes;
use super::uprobe_multi::{by_path, MultiUprobeError, MultiUprobePrograms, UprobeSite};

/// The programs in the object.
pub(super) const SERIALIZE_ENTER: &str = "serialize_enter";
pub(super) const SERIALIZE_EXIT: &str = "serialize_exit";

#[derive(Debug, Error)]
pub enum WorkerProbeError {
    #[error("scheduling probes are off")]
    SchedulingOff,
    #[error("tgid {0} is beyond the scheduling bitmap")]
    TgidTooLarge(u32),
    #[error("map {MAP_SCHED_PIDS}: {0}")]
    Map(#[from] aya::maps::MapError),
    #[error("map {MAP_SPLIT_GATE}: {0}")]
    Gate(aya::maps::MapError),
    #[error("serialization probes are off")]
    SerializationOff,
    #[error("pid 0")]
    NoPid,
    #[error("{symbol} in {path}: no file offset (not in a section of the object)")]
    NoOffset { symbol: String, path: PathBuf },
    #[error("{0}")]
    Multi(#[from] MultiUprobeError),
    #[error("{symbol} in {path}: {source}")]
    Attach {
        symbol: String,
        path: PathBuf,
        source: Box<aya::programs::ProgramError>,
    },
}

/// One function to probe in a worker: `symbol` of the object at `path` (as the agent
/// sees it: through /proc/PID/root for workers in other mount namespaces).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SerializeTarget {
    pub path: PathBuf,
    pub symbol: String,
    pub function: SerializeFn,
    /// Where the entry probe finds the byte count.
    pub enter_size: SizeFrom,
    /// Where the return probe finds it (overrides the entry's when not None).
    pub exit_size: SizeFrom,
    /// The function's offset in the file (multi-uprobe links take offsets).
    pub offset: Option<u64>,
    /// An outer entry point: it wraps another probed one of the same function
    /// (`SERIALIZE_OUTER`).
    pub outer: bool,
}

/// Links of the uprobes attached per worker.
#[derive(Default)]
pub(super) struct WorkerLinks {
    /// aya's perf-event uprobes (kernels without multi-uprobe links): attached for
    /// the worker's life.
    perf: HashMap<u32, Vec<(bool, UProbeLinkId)>>,
    /// Multi-uprobe links: every worker's sites, and its links while the split
    /// records.
    multi: HashMap<u32, MultiWorker>,
}

/// A worker's (de)serialization sites and, while attached, their links.
#[derive(Default)]
struct MultiWorker {
    /// (object, entry site, return site): the same offset, each with its cookie.
    sites: Vec<(PathBuf, UprobeSite, UprobeSite)>,
    links: Vec<OwnedFd>,
}

impl WorkerLinks {
    /// Every worker's perf-event links (is_enter, id), forgotten here.
    pub(super) fn take_perf(&mut self) -> Vec<(bool, UProbeLinkId)> {
        self.perf.drain().flat_map(|(_, links)| links).collect()
    }

    /// Every worker's multi-uprobe links, detached by dropping them (the sites stay).
    pub(super) fn take_multi(&mut self) -> Vec<OwnedFd> {
        self.multi
            .values_mut()
            .flat_map(|w| std::mem::take(&mut w.links))
            .collect()
    }
}

/// Closes uprobe links off the agent's loop, each on a thread of its own: a close
/// removes the link's breakpoints at once, then waits for a grace period (tens of
/// ms), and the waits of links closed together overlap.
pub(super) fn close_in_background<L: Send + 'static>(links: Vec<L>) {
    if links.is_empty() {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("uprobe-detach".into())
        .spawn(move || {
            std::thread::scope(|s| {
                for link in links {
                    if std::thread::Builder::new()
                        .name("uprobe-detach".into())
                        .spawn_scoped(s, move || drop(link))
                        .is_err()
                    {
                        // Out of threads: the failed spawn dropped the link here,
                        // on this thread.
                        log::debug!("detached a uprobe link on the shared thread");
                    }
                }
            })
        });
    if let Err(e) = spawned {
        log::warn!("cannot start a thread to detach uprobes: {e}");
    }
}

fn cookie(target: &SerializeTarget, size: SizeFrom) -> u64 {
    let outer = if target.outer { SERIALIZE_OUTER } else { 0 };
    target.function as u64 | (size as u64) << 8 | outer
}

impl Probes {
    /// Turns the scheduling records of `tgid`'s threads on or off.
    pub fn sched_watch(&mut self, tgid: u32, on: bool) -> Result<(), WorkerProbeError> {
        let map = self
            .sched_pids
            .as_mut()
            .ok_or(WorkerProbeError::SchedulingOff)?;
        let word = tgid / 64;
        if word >= SCHED_PID_WORDS {
            return Err(WorkerProbeError::TgidTooLarge(tgid));
        }
        super::loader::set_pid_bit(map, tgid, on)?;
        Ok(())
    }

    /// Pauses or resumes the worker split's probes (scheduling, off-CPU walks,
    /// (de)serialization); a resume starts window `generation`. Nothing to do when
    /// neither probe family is loaded.
    ///
    /// The scheduling programs are also detached while paused: even returning at
    /// once, they ran on every context switch of the host (about 100 per call at
    /// saturation, 5-10 us per call). Attaching a raw tracepoint again needs no
    /// verification (the program stays loaded).
    pub fn set_split_gate(
        &mut self,
        recording: bool,
        generation: u32,
    ) -> Result<(), WorkerProbeError> {
        if self.split_gate.is_none() {
            return Ok(());
        }
        let word = (generation as u64 & SPLIT_GATE_GENERATION)
            | if recording { 0 } else { SPLIT_GATE_PAUSED };
        // Paused before the detach, attached before the resume: no program runs on a
        // stale generation.
        self.split_recording = recording;
        if recording {
            self.attach_multi_all();
            self.attach_sched(true)?;
            self.write_split_gate(word)
        } else {
            self.write_split_gate(word)?;
            close_in_background(self.worker_links.take_multi());
            self.attach_sched(false)
        }
    }

    /// Attaches the multi-uprobe links of every worker that has none (a window opens).
    fn attach_multi_all(&mut self) {
        let Some(progs) = self.multi_uprobes.as_ref() else {
            return;
        };
        for (pid, w) in &mut self.worker_links.multi {
            if !w.links.is_empty() {
                continue;
            }
            match attach_sites(progs, *pid, &w.sites) {
                Ok(links) => w.links = links,
                Err(e) => log::warn!("pid {pid}: (de)serialization probes: {e}"),
            }
        }
    }

    fn write_split_gate(&mut self, word: u64) -> Result<(), WorkerProbeError> {
        match self.split_gate.as_mut() {
            Some(map) => map.set(0, word, 0).map_err(WorkerProbeError::Gate),
            None => Ok(()),
        }
    }

    /// Attaches or detaches the scheduling raw tracepoints (those not already so).
    fn attach_sched(&mut self, attach: bool) -> Result<(), WorkerProbeError> {
        for (name, tp, link) in &mut self.sched_links {
            let Some(Ok(prog)) = self
                .ebpf
                .program_mut(name)
                .map(<&mut RawTracePoint>::try_from)
            else {
                continue;
            };
            let result = match (attach, link.take()) {
                (true, None) => prog.attach(tp).map(|id| *link = Some(id)),
                (false, Some(id)) => prog.detach(id),
                (_, kept) => {
                    *link = kept;
                    Ok(())
                }
            };
            result.map_err(|e| WorkerProbeError::Attach {
                symbol: (*name).to_string(),
                path: PathBuf::from(format!("raw_tracepoint:{tp}")),
                source: Box::new(e),
            })?;
        }
        Ok(())
    }

    /// Attaches the entry and return probes of `target` for process `pid` only. With
    /// multi-uprobe links the target is kept and attached while the split records.
    pub fn attach_serialize(
        &mut self,
        pid: u32,
        target: &SerializeTarget,
    ) -> Result<(), WorkerProbeError> {
        if !self.serialization {
            return Err(WorkerProbeError::SerializationOff);
        }
        if pid == 0 {
            return Err(WorkerProbeError::NoPid);
        }
        if let Some(progs) = self.multi_uprobes.as_ref() {
            let offset = target.offset.ok_or_else(|| WorkerProbeError::NoOffset {
                symbol: target.symbol.clone(),
                path: target.path.clone(),
            })?;
            let site = |size| UprobeSite {
                offset,
                cookie: cookie(target, size),
            };
            let sites = vec![(
                target.path.clone(),
                site(target.enter_size),
                site(target.exit_size),
            )];
            let w = self.worker_links.multi.entry(pid).or_default();
            if self.split_recording {
                w.links.extend(attach_sites(progs, pid, &sites)?);
            }
            w.sites.extend(sites);
            return Ok(());
        }
        self.attach_serialize_perf(pid, target)
    }

    fn attach_serialize_perf(
        &mut self,
        pid: u32,
        target: &SerializeTarget,
    ) -> Result<(), WorkerProbeError> {
        let scope = UProbeScope::OneProcess(NonZeroU32::new(pid).ok_or(WorkerProbeError::NoPid)?);
        let mut links = Vec::with_capacity(2);
        for (name, is_enter, size) in [
            (SERIALIZE_ENTER, true, target.enter_size),
            (SERIALIZE_EXIT, false, target.exit_size),
        ] {
            let err = |source| WorkerProbeError::Attach {
                symbol: target.symbol.clone(),
                path: target.path.clone(),
                source: Box::new(source),
            };
            let prog: &mut UProbe = match self.ebpf.program_mut(name).map(|p| p.try_into()) {
                Some(Ok(p)) => p,
                _ => return Err(WorkerProbeError::SerializationOff),
            };
            let point = UProbeAttachPoint {
                location: UProbeAttachLocation::Symbol(&target.symbol),
                cookie: Some(cookie(target, size)),
            };
            match prog.attach(point, &target.path, scope) {
                Ok(id) => links.push((is_enter, id)),
                Err(e) => {
                    self.detach_links(links);
                    return Err(err(e));
                }
            }
        }
        self.worker_links.perf.entry(pid).or_default().extend(links);
        Ok(())
    }

    /// Detaches every serialization probe of `pid` (it exited or stopped being a worker).
    pub fn detach_serialize(&mut self, pid: u32) {
        if let Some(links) = self.worker_links.perf.remove(&pid) {
            self.detach_links(links);
        }
        if let Some(w) = self.worker_links.multi.remove(&pid) {
            close_in_background(w.links);
        }
    }

    /// Workers with serialization probes attached, or kept for the next window.
    pub fn serialize_probed_pids(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self.worker_links.perf.keys().copied().collect();
        pids.extend(self.worker_links.multi.keys().copied());
        pids
    }

    /// Serialization uprobe links attached now (multi-uprobe links count one per
    /// object and direction), and whether they are multi-uprobe links.
    pub fn serialize_links(&self) -> (usize, bool) {
        let perf: usize = self.worker_links.perf.values().map(Vec::len).sum();
        let multi: usize = self
            .worker_links
            .multi
            .values()
            .map(|w| w.links.len())
            .sum();
        (perf + multi, self.multi_uprobes.is_some())
    }

    /// Detaches `links` off the agent's loop: a uprobe's unregistration waits for an RCU
    /// grace period (tens of ms each), and a worker has eight of them.
    fn detach_links(&mut self, links: Vec<(bool, UProbeLinkId)>) {
        let mut owned = Vec::with_capacity(links.len());
        for (is_enter, id) in links {
            let name = if is_enter {
                SERIALIZE_ENTER
            } else {
                SERIALIZE_EXIT
            };
            if let Some(Ok(p)) = self.ebpf.program_mut(name).map(<&mut UProbe>::try_from) {
                // The process may be gone already; its links are then stale and go.
                if let Ok(link) = p.take_link(id) {
                    owned.push(link);
                }
            }
        }
        // One thread: perf-event uprobes are destroyed under one kernel mutex anyway.
        close_in_background(vec![owned]);
    }
}

/// Links for `sites` in process `pid`: per object, one for the entries and one for
/// the returns.
fn attach_sites(
    progs: &MultiUprobePrograms,
    pid: u32,
    sites: &[(PathBuf, UprobeSite, UprobeSite)],
) -> Result<Vec<OwnedFd>, WorkerProbeError> {
    let mut links = Vec::new();
    for ret in [false, true] {
        let groups = by_path(
            sites
                .iter()
                .map(|(path, enter, exit)| (path.as_path(), if ret { *exit } else { *enter })),
        );
        for (path, group) in groups {
            match progs.attach(path, pid, &group, ret) {
                Ok(link) => links.push(link),
                Err(e) => {
                    close_in_background(links);
                    return Err(WorkerProbeError::Multi(e));
                }
            }
        }
    }
    Ok(links)
}
