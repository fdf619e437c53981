//! Loads snakepit-probes, sets its globals, attaches every program and owns the maps.
use std::{
    os::fd::OwnedFd,
    sync::{atomic::Ordering, Arc},
};

use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray, RingBuf},
    programs::{raw_trace_point::RawTracePointLinkId, RawTracePoint, TracePoint},
    Ebpf, EbpfLoader,
};
use telemetry_common::{
    CursorHint, Direction, FdKey, FdState, CHUNK_BYTES, CURSOR_UNKNOWN, GLOBAL_CAPTURE_BYTES,
    GLOBAL_DECODE_ONCE, GLOBAL_FULL_CAPTURE, GLOBAL_OFF_CPU_PERIOD_NS, GLOBAL_PT_REGS_ARG_OFFSETS,
    GLOBAL_PT_REGS_SYSCALL_OFFSET, GLOBAL_RING_WAKE_BYTES, GLOBAL_TASK_EXIT_CODE_OFFSET,
    GLOBAL_TASK_PID_OFFSET, GLOBAL_TASK_REAL_PARENT_OFFSET, GLOBAL_TASK_TGID_OFFSET,
    MAP_CURSOR_HINTS, MAP_EVENTS, MAP_FULL_CAPTURE_FDS, MAP_IO_PIDS, MAP_SCHED_PIDS,
    MAP_SPLIT_GATE, MAP_STATS, MAP_WATCHED_FDS, MAP_WATCHED_PIDS, MAP_WATCH_GEN, MAX_CAPTURE,
    MAX_CHUNKS, PROBE_COUNT, STAT_KINDS, WATCH_GEN_USER_STEP,
};
use tokio::io::{unix::AsyncFd, Interest};

use super::{
    btf::TaskOffsets,
    decode::FdTotals,
    error::KernelError,
    mounts::ensure_mounts,
    reader,
    stats::{KernelStats, ProgRunStats, ReaderCounters},
};

mod watch;

static PROBES_OBJ: &[u8] = aya::include_bytes_aligned!(env!("SNAKEPIT_PROBES_OBJ"));

/// Load-time settings of the probes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelConfig {
    /// Payload bytes copied per syscall (clamped to MAX_CAPTURE = 4096).
    pub capture_bytes: u32,
    /// Ring buffer size; rounded up to a power of two (at least one page).
    pub ring_buffer_bytes: u32,
    /// Decode each direction of an HTTP/2 connection from the sender's writes only;
    /// the receiver's reads carry frame headers for the timing (see `Capture`).
    pub decode_once: bool,
    /// Attach the scheduling probes (sched_switch, sched_waking) for the per-call
    /// on-CPU / off-CPU split.
    pub scheduling: bool,
    /// Off-CPU stacks of profiled workers: one walk per this many ns per thread on
    /// average (0: off). Needs `scheduling`.
    pub off_cpu_period_ns: u64,
    /// Load the (de)serialization uprobe programs (attached per worker later).
    pub serialization: bool,
    /// Repro scripts: the fds given to [`Probes::capture_whole`] send up to this many
    /// egress bytes per syscall beyond the prefix as chunk records (io_chunks.rs);
    /// 0 = off.
    pub full_capture_bytes: u64,
    /// Hold BPF_ENABLE_STATS while the probes live: [`Probes::prog_run_stats`] counts
    /// only then (or while someone else holds it). It slows every BPF program on the
    /// host by two clock reads per run, so the agent asks for it only when configured.
    pub program_stats: bool,
}

impl Default for KernelConfig {
    fn default() -> Self {
        KernelConfig {
            capture_bytes: MAX_CAPTURE as u32,
            ring_buffer_bytes: DEFAULT_RING_BUFFER_BYTES,
            decode_once: true,
            scheduling: true,
            serialization: true,
            off_cpu_period_ns: 0,
            full_capture_bytes: 0,
            program_stats: false,
        }
    }
}

/// Where a program attaches.
#[derive(Clone, Copy, Debug)]
enum Hook {
    /// Classic tracepoint (category, name).
    Tp(&'static str, &'static str),
    /// Raw tracepoint (name).
    Raw(&'static str),
}

/// (program name in the object, hook). Syscall programs are named after their event.
const PROGRAMS: &[(&str, Hook)] = &[
    ("sys_exit_read", Hook::Tp("syscalls", "sys_exit_read")),
    ("sys_exit_write", Hook::Tp("syscalls", "sys_exit_write")),
    ("sys_exit_readv", Hook::Tp("syscalls", "sys_exit_readv")),
    ("sys_exit_writev", Hook::Tp("syscalls", "sys_exit_writev")),
    (
        "sys_exit_recvfrom",
        Hook::Tp("syscalls", "sys_exit_recvfrom"),
    ),
    ("sys_exit_sendto", Hook::Tp("syscalls", "sys_exit_sendto")),
    ("sys_exit_recvmsg", Hook::Tp("syscalls", "sys_exit_recvmsg")),
    ("sys_exit_sendmsg", Hook::Tp("syscalls", "sys_exit_sendmsg")),
    (
        "sys_enter_connect",
        Hook::Tp("syscalls", "sys_enter_connect"),
    ),
    ("sys_exit_connect", Hook::Tp("syscalls", "sys_exit_connect")),
    ("sys_exit_accept", Hook::Tp("syscalls", "sys_exit_accept")),
    ("sys_exit_accept4", Hook::Tp("syscalls", "sys_exit_accept4")),
    ("sys_enter_close", Hook::Tp("syscalls", "sys_enter_close")),
    ("sched_process_fork", Hook::Raw("sched_process_fork")),
    (
        "sched_process_exec",
        Hook::Tp("sched", "sched_process_exec"),
    ),
    (
        "sched_process_exit",
        Hook::Tp("sched", "sched_process_exit"),
    ),
    ("oom_mark_victim", Hook::Tp("oom", "mark_victim")),
    ("sched_switch", Hook::Raw("sched_switch")),
    ("sched_waking", Hook::Raw("sched_waking")),
];

/// The programs of the per-call scheduling split (attached only with `scheduling`).
const SCHED_PROGRAMS: &[&str] = &["sched_switch", "sched_waking"];

/// The tracepoints the probes need, as "category/name" (raw ones as "raw:name").
pub fn required_tracepoints() -> Vec<String> {
    PROGRAMS
        .iter()
        .map(|(_, hook)| match hook {
            Hook::Tp(c, n) => format!("{c}/{n}"),
            Hook::Raw(n) => format!("raw:{n}"),
        })
        .collect()
}

/// Sets or clears `tgid`'s bit in a tgid bitmap (SCHED_PIDS, IO_PIDS: word `tgid /
/// 64`, bit `tgid % 64`). Only this process writes them; the programs only read.
pub(super) fn set_pid_bit(
    map: &mut Array<MapData, u64>,
    tgid: u32,
    on: bool,
) -> Result<(), aya::maps::MapError> {
    let word = tgid / 64;
    let bit = 1u64 << (tgid % 64);
    let old = map.get(&word, 0)?;
    let new = if on { old | bit } else { old & !bit };
    if new != old {
        map.set(word, new, 0)?;
    }
    Ok(())
}

/// The ring buffer to user space by default. Its data area is mapped twice in the
/// agent, so RSS counts twice its size once the ring has wrapped. 8 MiB dropped
/// records when 30 MB requests were captured for repro scripts next to other calls
/// (hardening tests), while the reader only polled; since the probes force a wakeup
/// past an eighth of the ring (RING_WAKE_BYTES), 8 MiB holds those bursts.
pub const DEFAULT_RING_BUFFER_BYTES: u32 = 8 << 20;

/// Unread bytes from which the probes wake the reader: an eighth of the ring. At
/// saturation the ring holds a few hundred KB between polls; a burst that fills an
/// eighth (repro chunks of 50 MB messages) is read at once instead of at the next poll.
fn ring_wake_bytes(ring_bytes: u32) -> u64 {
    u64::from(ring_bytes / 8)
}

fn ring_size(requested: u32) -> u32 {
    let page = 4096u32;
    requested
        .max(page)
        .checked_next_power_of_two()
        .unwrap_or(1 << 31)
}

/// The loaded and attached probes, and the maps user space drives.
pub struct Probes {
    pub(super) ebpf: Ebpf,
    /// SCHED_PIDS, when the scheduling probes are attached.
    pub(super) sched_pids: Option<Array<MapData, u64>>,
    /// IO_PIDS: the tgids that may have watched fds.
    io_pids: Array<MapData, u64>,
    /// SPLIT_GATE, when the scheduling or serialization probes are loaded.
    pub(super) split_gate: Option<Array<MapData, u64>>,
    /// The scheduling programs' links (program, tracepoint, link while attached):
    /// detached while the split gate is paused.
    pub(super) sched_links: Vec<(&'static str, &'static str, Option<RawTracePointLinkId>)>,
    /// The other links, for `detach_all` (see `teardown`).
    pub(super) links: Vec<super::teardown::LinkRef>,
    /// The serialization uprobe programs are loaded (attached per worker).
    pub(super) serialization: bool,
    /// Their copies for multi-uprobe links, where the kernel has them (else aya's
    /// perf-event uprobes are used, attached for a worker's life).
    pub(super) multi_uprobes: Option<super::uprobe_multi::MultiUprobePrograms>,
    /// The split gate records (the multi-uprobe links are attached meanwhile).
    pub(super) split_recording: bool,
    pub(super) worker_links: super::workers::WorkerLinks,
    watched_pids: HashMap<MapData, u32, u32>,
    watched_fds: HashMap<MapData, FdKey, FdState>,
    /// WATCH_GEN: raised after each insert into WATCHED_FDS.
    watch_gen: Array<MapData, u64>,
    cursor_hints: HashMap<MapData, FdKey, CursorHint>,
    full_capture_fds: HashMap<MapData, FdKey, u32>,
    stats: PerCpuArray<MapData, u64>,
    ring: Option<RingBuf<MapData>>,
    logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    /// Keeps BPF_ENABLE_STATS on while the probes live (closing it turns it off).
    _run_stats: Option<OwnedFd>,
    attached: Vec<String>,
    offsets: TaskOffsets,
    counters: Arc<ReaderCounters>,
}

fn take_map(ebpf: &mut Ebpf, name: &'static str) -> Result<aya::maps::Map, KernelError> {
    ebpf.take_map(name).ok_or(KernelError::MissingMap(name))
}

/// Loads (has the kernel verify) the programs named in `names`, each on a thread of
/// its own. Verification is most of the agent's start: the four egress exits (the
/// frame walk) took about 2 s each here, one after the other 8.4 s of a 7.5-10 s
/// start, and the start under load must stay inside the 10 s a restart may take.
fn verify_in_parallel(ebpf: &mut Ebpf, names: &[&'static str]) -> Result<(), KernelError> {
    let mut programs: Vec<(&'static str, &mut aya::programs::Program)> = Vec::new();
    for (name, prog) in ebpf.programs_mut() {
        if let Some(&wanted) = names.iter().find(|n| **n == name) {
            programs.push((wanted, prog));
        }
    }
    if let Some(missing) = names
        .iter()
        .find(|n| !programs.iter().any(|(p, _)| p == *n))
    {
        return Err(KernelError::MissingProgram(missing));
    }
    let results: Vec<(&'static str, Result<(), aya::programs::ProgramError>)> =
        std::thread::scope(|s| {
            let running: Vec<_> = programs
                .into_iter()
                .map(|(name, prog)| {
                    (
                        name,
                        s.spawn(move || {
                            let started = std::time::Instant::now();
                            let r = load_program(prog);
                            // What the verifier walked: the budget is 1M instructions per
                            // program, and the frame walk is the biggest.
                            let verified = prog
                                .info()
                                .ok()
                                .and_then(|i| i.verified_instruction_count());
                            log::debug!(
                                "loaded {name}: {verified:?} instructions verified in {:?}",
                                started.elapsed()
                            );
                            r
                        }),
                    )
                })
                .collect();
            running
                .into_iter()
                .map(|(name, t)| {
                    // A panic inside aya's load is a bug: it stays one.
                    let r = t.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
                    (name, r)
                })
                .collect()
        });
    for (name, result) in results {
        result.map_err(|source| KernelError::Probe {
            name,
            target: "load".to_string(),
            source,
        })?;
    }
    Ok(())
}

fn load_program(prog: &mut aya::programs::Program) -> Result<(), aya::programs::ProgramError> {
    use aya::programs::Program;
    match prog {
        Program::TracePoint(p) => p.load(),
        Program::RawTracePoint(p) => p.load(),
        Program::UProbe(p) => p.load(),
        _ => Err(aya::programs::ProgramError::UnexpectedProgramType),
    }
}

/// Multi-uprobe links came with Linux 6.6.
const UPROBE_MULTI_KERNEL: (u8, u8) = (6, 6);

/// The (de)serialization programs for multi-uprobe links, or None (with one log line)
/// where the kernel has none: aya's perf-event uprobes then.
fn load_multi_uprobes(ebpf: &Ebpf) -> Option<super::uprobe_multi::MultiUprobePrograms> {
    let (major, minor) = UPROBE_MULTI_KERNEL;
    match aya::util::KernelVersion::current() {
        Ok(v) if v >= aya::util::KernelVersion::new(major, minor, 0) => {}
        other => {
            log::info!(
                "kernel {other:?} has no multi-uprobe links: the (de)serialization uprobes stay attached between the split's windows"
            );
            return None;
        }
    }
    match super::uprobe_multi::MultiUprobePrograms::load(
        PROBES_OBJ,
        ebpf,
        super::workers::SERIALIZE_ENTER,
        super::workers::SERIALIZE_EXIT,
    ) {
        Ok(p) => Some(p),
        Err(e) => {
            log::warn!("multi-uprobe links unavailable ({e}): the (de)serialization uprobes stay attached between the split's windows");
            None
        }
    }
}

fn map_err(name: &'static str) -> impl FnOnce(aya::maps::MapError) -> KernelError {
    move |source| KernelError::Map { name, source }
}

impl Probes {
    /// Loads the probes, sets their globals and attaches all programs. The error
    /// names the probe that failed.
    pub fn load(cfg: &KernelConfig) -> Result<Probes, KernelError> {
        ensure_mounts()?;
        raise_memlock();
        let offsets = TaskOffsets::from_kernel();
        let capture = cfg.capture_bytes.min(MAX_CAPTURE as u32);
        let ring_bytes = ring_size(cfg.ring_buffer_bytes);
        let decode_once = u32::from(cfg.decode_once);
        let ring_wake = ring_wake_bytes(ring_bytes);
        let full_capture = cfg
            .full_capture_bytes
            .div_ceil(CHUNK_BYTES as u64)
            .min(MAX_CHUNKS as u64) as u32;

        let mut ebpf = EbpfLoader::new()
            .override_global(GLOBAL_CAPTURE_BYTES, &capture, true)
            .override_global(GLOBAL_TASK_EXIT_CODE_OFFSET, &offsets.exit_code, true)
            .override_global(GLOBAL_TASK_PID_OFFSET, &offsets.pid, true)
            .override_global(GLOBAL_TASK_TGID_OFFSET, &offsets.tgid, true)
            .override_global(GLOBAL_TASK_REAL_PARENT_OFFSET, &offsets.real_parent, true)
            .override_global(GLOBAL_DECODE_ONCE, &decode_once, true)
            .override_global(GLOBAL_RING_WAKE_BYTES, &ring_wake, true)
            .override_global(GLOBAL_FULL_CAPTURE, &full_capture, true)
            .override_global(GLOBAL_PT_REGS_ARG_OFFSETS, &offsets.regs_args, true)
            .override_global(GLOBAL_PT_REGS_SYSCALL_OFFSET, &offsets.regs_syscall, true)
            .override_global(GLOBAL_OFF_CPU_PERIOD_NS, &cfg.off_cpu_period_ns, true)
            .map_max_entries(MAP_EVENTS, ring_bytes)
            .load(PROBES_OBJ)
            .map_err(KernelError::Load)?;

        // Before any map is taken out of `ebpf` (the copy is relocated against them).
        let multi_uprobes = if cfg.serialization {
            load_multi_uprobes(&ebpf)
        } else {
            None
        };

        // The logger owns the AYA_LOGS map; dropping it would close the map.
        let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(l) => Some(l),
            Err(e) => {
                log::warn!("eBPF logs unavailable: {e}");
                None
            }
        };

        let mut wanted: Vec<&'static str> = PROGRAMS
            .iter()
            .map(|(name, _)| *name)
            .filter(|name| cfg.scheduling || !SCHED_PROGRAMS.contains(name))
            .collect();
        if cfg.serialization && multi_uprobes.is_none() {
            wanted.extend([
                super::workers::SERIALIZE_ENTER,
                super::workers::SERIALIZE_EXIT,
            ]);
        }
        verify_in_parallel(&mut ebpf, &wanted)?;

        let mut attached = Vec::with_capacity(PROGRAMS.len());
        let mut sched_links = Vec::new();
        let mut links = Vec::new();
        for &(name, hook) in PROGRAMS {
            if !cfg.scheduling && SCHED_PROGRAMS.contains(&name) {
                continue;
            }
            let target = match hook {
                Hook::Tp(c, n) => format!("tracepoint:{c}/{n}"),
                Hook::Raw(n) => format!("raw_tracepoint:{n}"),
            };
            let probe_err = |source| KernelError::Probe {
                name,
                target: target.clone(),
                source,
            };
            let prog = ebpf
                .program_mut(name)
                .ok_or(KernelError::MissingProgram(name))?;
            match hook {
                Hook::Tp(category, tp) => {
                    let p: &mut TracePoint = prog.try_into().map_err(probe_err)?;
                    let link = p.attach(category, tp).map_err(probe_err)?;
                    links.push(super::teardown::LinkRef::TracePoint(name, link));
                }
                Hook::Raw(tp) => {
                    let p: &mut RawTracePoint = prog.try_into().map_err(probe_err)?;
                    let link = p.attach(tp).map_err(probe_err)?;
                    if SCHED_PROGRAMS.contains(&name) {
                        sched_links.push((name, tp, Some(link)));
                    } else {
                        links.push(super::teardown::LinkRef::RawTracePoint(name, link));
                    }
                }
            }
            attached.push(target);
        }

        // Loaded above; attached per worker.
        let serialization = cfg.serialization;
        let sched_pids = if cfg.scheduling {
            Some(
                Array::try_from(take_map(&mut ebpf, MAP_SCHED_PIDS)?)
                    .map_err(map_err(MAP_SCHED_PIDS))?,
            )
        } else {
            None
        };

        let split_gate = if cfg.scheduling || serialization {
            Some(
                Array::try_from(take_map(&mut ebpf, MAP_SPLIT_GATE)?)
                    .map_err(map_err(MAP_SPLIT_GATE))?,
            )
        } else {
            None
        };

        let io_pids =
            Array::try_from(take_map(&mut ebpf, MAP_IO_PIDS)?).map_err(map_err(MAP_IO_PIDS))?;
        let watched_pids = HashMap::try_from(take_map(&mut ebpf, MAP_WATCHED_PIDS)?)
            .map_err(map_err(MAP_WATCHED_PIDS))?;
        let watched_fds = HashMap::try_from(take_map(&mut ebpf, MAP_WATCHED_FDS)?)
            .map_err(map_err(MAP_WATCHED_FDS))?;
        let watch_gen =
            Array::try_from(take_map(&mut ebpf, MAP_WATCH_GEN)?).map_err(map_err(MAP_WATCH_GEN))?;
        let cursor_hints = HashMap::try_from(take_map(&mut ebpf, MAP_CURSOR_HINTS)?)
            .map_err(map_err(MAP_CURSOR_HINTS))?;
        let full_capture_fds = HashMap::try_from(take_map(&mut ebpf, MAP_FULL_CAPTURE_FDS)?)
            .map_err(map_err(MAP_FULL_CAPTURE_FDS))?;
        let stats =
            PerCpuArray::try_from(take_map(&mut ebpf, MAP_STATS)?).map_err(map_err(MAP_STATS))?;
        let ring =
            RingBuf::try_from(take_map(&mut ebpf, MAP_EVENTS)?).map_err(map_err(MAP_EVENTS))?;

        let run_stats = if cfg.program_stats {
            match aya::sys::enable_stats(aya::sys::Stats::RunTime) {
                Ok(fd) => Some(fd),
                Err(e) => {
                    log::warn!("BPF run-time stats unavailable: {e}");
                    None
                }
            }
        } else {
            None
        };

        Ok(Probes {
            ebpf,
            sched_pids,
            io_pids,
            split_gate,
            sched_links,
            links,
            serialization,
            multi_uprobes,
            split_recording: true,
            worker_links: Default::default(),
            watched_pids,
            watched_fds,
            watch_gen,
            cursor_hints,
            full_capture_fds,
            stats,
            ring: Some(ring),
            logger,
            _run_stats: run_stats,
            attached,
            offsets,
            counters: Arc::default(),
        })
    }

    /// Snapshot of the in-kernel counters.
    pub fn stats(&self) -> KernelStats {
        let cpus = aya::util::nr_cpus().unwrap_or(1);
        let mut out = KernelStats::empty(cpus);
        for probe in 0..PROBE_COUNT {
            for stat in 0..STAT_KINDS {
                let Ok(values) = self.stats.get(&(probe * STAT_KINDS + stat), 0) else {
                    continue;
                };
                let row = &mut out.probes[probe as usize];
                if row.per_cpu.len() < values.len() {
                    row.per_cpu.resize(values.len(), [0; STAT_KINDS as usize]);
                }
                for (cpu, v) in values.iter().enumerate() {
                    row.per_cpu[cpu][stat as usize] = *v;
                    row.total[stat as usize] += *v;
                }
            }
        }
        out
    }

    /// Kernel-measured run time and count of every program.
    pub fn prog_run_stats(&self) -> Vec<ProgRunStats> {
        let multi = self.multi_uprobes.iter().flat_map(|m| m.run_stats());
        PROGRAMS
            .iter()
            .map(|&(name, _)| name)
            // The sampler, when it was started, and the (de)serialization programs
            // when aya loaded them (an unloaded program has no info).
            .chain([
                telemetry_common::PROG_PROFILE,
                super::workers::SERIALIZE_ENTER,
                super::workers::SERIALIZE_EXIT,
            ])
            .filter_map(|name| {
                let info = self.ebpf.program(name)?.info().ok()?;
                Some((name, info.run_time().as_nanos() as u64, info.run_count()))
            })
            .chain(multi)
            .map(|(name, run_time_ns, run_count)| ProgRunStats {
                name: name.to_string(),
                run_time_ns,
                run_count,
            })
            .collect()
    }

    /// What is attached, as "tracepoint:category/name" / "raw_tracepoint:name".
    pub fn attached(&self) -> Vec<String> {
        self.attached.clone()
    }

    pub fn task_offsets(&self) -> TaskOffsets {
        self.offsets
    }

    pub(super) fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    pub(super) fn note_attached(&mut self, target: String) {
        self.attached.push(target);
    }

    /// Records read and decode failures of the ring-buffer reader.
    pub fn reader_counters(&self) -> (u64, u64) {
        (
            self.counters.records.load(Ordering::Relaxed),
            self.counters.decode_errors.load(Ordering::Relaxed),
        )
    }

    /// The ring buffer's fd, until `events` takes the ring: to watch its wakeups.
    pub fn ring_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        use std::os::fd::AsFd;
        self.ring.as_ref().map(|r| r.as_fd())
    }

    /// The decoded event stream, fed by a tokio task reading the ring buffer (call
    /// once, inside a tokio runtime). The task ends when the receiver is dropped.
    pub fn events(&mut self) -> Result<reader::KernelEvents, KernelError> {
        let ring = self.ring.take().ok_or(KernelError::EventsTaken)?;
        let events = reader::spawn(ring, self.counters.clone());
        if let Some(logger) = self.logger.take() {
            // SAFETY: as above, the logger owns its ring-buffer fd.
            match unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) } {
                Ok(afd) => {
                    tokio::spawn(reader::run_logger(afd));
                }
                Err(e) => log::warn!("eBPF log reader: {e}"),
            }
        }
        Ok(events)
    }
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; harmless on newer ones.
fn raise_memlock() {
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall with a valid pointer.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) } != 0 {
        log::debug!(
            "setrlimit(RLIMIT_MEMLOCK): {}",
            std::io::Error::last_os_error()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_sizes() {
        assert_eq!(ring_size(0), 4096);
        assert_eq!(ring_size(32 << 20), 32 << 20);
        assert_eq!(ring_size((32 << 20) + 1), 64 << 20);
    }

    #[test]
    fn object_has_every_program() {
        let obj = aya_obj_names();
        for (name, _) in PROGRAMS {
            assert!(obj.iter().any(|n| n == name), "{name} missing from object");
        }
    }

    /// Symbol names in the embedded object (a cheap check that needs no privileges).
    fn aya_obj_names() -> Vec<String> {
        let hay = String::from_utf8_lossy(PROBES_OBJ);
        PROGRAMS
            .iter()
            .filter(|(n, _)| hay.contains(n))
            .map(|(n, _)| n.to_string())
            .collect()
    }
}
