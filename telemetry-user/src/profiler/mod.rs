//! The Python stack profiler (issue 9): CPU-clock samples of the workers' threads
//! taken in the kernel (telemetry-ebpf `profile.rs` / `pystack.rs`), resolved here to
//! Python functions and native frames, kept per worker for a window, attributed to the
//! calls the worker served, and written as folded stacks, flame graphs or pprof.
//!
//! - `layout`: which CPython a worker runs and the offsets of its structs (checked).
//! - `code`: code objects -> module.qualname / file / line (bounded cache).
//! - `native`, `elf`: native frames -> object and symbol.
//! - `stacks`: merging Python and native frames; the sample's library.
//! - `offcpu`: off-CPU samples (sched_switch): why the thread blocked, the modes.
//! - `store`: the samples' window, per-call summaries, selections for outputs.
//! - `output`, `pprof`: folded / SVG / pprof.
pub mod code;
pub mod config;
pub mod elf;
pub mod error;
pub mod layout;
pub mod mem;
pub mod native;
pub mod offcpu;
pub mod output;
pub mod pprof;
pub mod stacks;
pub mod store;

pub use config::ProfileConfig;
pub use error::ProfilerError;
pub use offcpu::ProfileMode;
pub use output::ProfileFormat;
pub use store::{BlockedIn, CallProfile, Filter, FinishedCall, SampleStore};

use crate::fast_hash::FastMap;
use crate::kernel::ProfilerMaps;
use code::CodeCache;
use layout::Interpreter;
use mem::ProcMem;
use native::Symbolizer;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use telemetry_common::{
    PySample, PY_FRAME_OWNED_BY_CSTACK, PY_SAMPLE_LEN, SAMPLE_OFF_CPU, SAMPLE_TRUNCATED,
};
use tokio::sync::mpsc;

/// The samples, shared by the profiler task (writer), the call tracker (per-call
/// attribution) and the outputs.
#[derive(Clone)]
pub struct ProfileHandle {
    store: Arc<Mutex<SampleStore>>,
    pub sample_hz: u64,
    /// The kernel's counters (PSTAT_NAMES order, summed over CPUs) and user space's.
    stats: Arc<Mutex<serde_json::Map<String, serde_json::Value>>>,
}

impl ProfileHandle {
    pub fn new(store: SampleStore, sample_hz: u64) -> Self {
        ProfileHandle {
            store: Arc::new(Mutex::new(store)),
            sample_hz,
            stats: Arc::default(),
        }
    }

    pub fn with<R>(&self, f: impl FnOnce(&mut SampleStore) -> R) -> R {
        let mut g = match self.store.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        f(&mut g)
    }

    /// The sampler's counters, for `agent.stats` (`profiler`).
    pub fn stats(&self) -> serde_json::Map<String, serde_json::Value> {
        self.stats.lock().map(|m| m.clone()).unwrap_or_default()
    }

    /// A thread's episode off the CPU that the kernel did not walk (see
    /// `SampleStore::push_unwalked`).
    pub fn unwalked(&self, pid: u32, tid: u32, ts_ns: u64, off_cpu_ns: u64, blocked: BlockedIn) {
        self.with(|s| s.push_unwalked(pid, tid, ts_ns, off_cpu_ns, blocked))
    }

    /// Per-call attribution (see `SampleStore::call_finished`).
    pub fn call_finished(&self, call: &FinishedCall) -> Option<CallProfile> {
        self.with(|s| s.call_finished(call))
    }

    /// Functions with attributed samples since `since_ns`: CPU samples, then off-CPU
    /// nanoseconds, most CPU samples first (functions that only wait come last).
    pub fn function_counts(&self, since_ns: u64) -> Vec<FunctionCount> {
        self.with(|s| {
            let mut m: HashMap<String, FunctionCount> = HashMap::new();
            for mode in [ProfileMode::Cpu, ProfileMode::OffCpu] {
                let f = Filter {
                    since_ns,
                    mode,
                    ..Filter::default()
                };
                for (_, x) in s.select(&f) {
                    let Some(name) = &x.function else { continue };
                    let c = m.entry(name.to_string()).or_insert_with(|| FunctionCount {
                        function: name.to_string(),
                        ..FunctionCount::default()
                    });
                    match mode {
                        ProfileMode::Cpu => c.samples += 1,
                        ProfileMode::OffCpu => c.off_cpu_ns += x.weight(),
                    }
                }
            }
            let mut v: Vec<FunctionCount> = m.into_values().collect();
            v.sort_by(|a, b| {
                (b.samples, b.off_cpu_ns)
                    .cmp(&(a.samples, a.off_cpu_ns))
                    .then(a.function.cmp(&b.function))
            });
            v
        })
    }

    /// Root-first stacks of the samples matching `f`, with the samples or off-CPU
    /// episodes each stands for and their weights (1 per CPU sample, the blocked
    /// nanoseconds of an off-CPU sample).
    pub fn stacks(&self, f: &Filter) -> Vec<(stacks::Frames, u64, u64)> {
        self.with(|s| {
            s.select(f)
                .into_iter()
                .map(|(_, x)| (x.stack.frames.clone(), x.episodes, x.weight()))
                .collect()
        })
    }
}

/// A function's share of the window (`/debug/pprof/functions`).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct FunctionCount {
    pub function: String,
    /// CPU samples.
    pub samples: u64,
    /// Off-CPU time of its calls' serving threads in the off-CPU samples.
    pub off_cpu_ns: u64,
}

/// What the agent tells the profiler.
#[derive(Debug)]
pub enum Command {
    WorkerUp {
        pid: u32,
        pool: String,
    },
    WorkerGone {
        pid: u32,
    },
    /// Take the samples the kernel has queued, then answer: the agent asks before it
    /// handles a batch of kernel records, so a call that ends in it finds its samples.
    Drain(tokio::sync::oneshot::Sender<()>),
}

struct Proc {
    interp: Interpreter,
    mem: ProcMem,
}

struct Pending {
    pool: String,
    since: Instant,
    last_error: String,
}

/// How long a new worker's interpreter may take to come up before it is given up.
const INSPECT_PATIENCE: Duration = Duration::from_secs(30);
/// The sampler's ring is drained before each batch of kernel records (`Command::Drain`,
/// every 16-32 ms under load); this timer covers the rest (samples of long calls
/// without wire traffic, workers still to attach). A runtime wakeup of its own every
/// 10 ms cost about what one of the ring reader's did (docs/benchmarks.md).
const POLL: Duration = Duration::from_millis(50);

pub struct Profiler {
    proc_root: PathBuf,
    maps: ProfilerMaps,
    procs: FastMap<u32, Proc>,
    pending: HashMap<u32, Pending>,
    code: CodeCache,
    native: Symbolizer,
    handle: ProfileHandle,
    /// Interpreters by pid, for `check` and the started event.
    pub interpreters: Arc<Mutex<HashMap<u32, Result<String, String>>>>,
    decode_errors: u64,
    /// `task_struct.thread.fsbase` (BTF), or u32::MAX.
    task_fsbase_off: u32,
    stacks: stacks::Interner,
    python_frames: stacks::PythonFrames,
    /// Samples taken from the ring, DRAIN_BATCH at a time (one buffer kept for all).
    batch: Vec<PySample>,
}

/// Samples (about 1 KB each) copied out of the ring before they are resolved.
const DRAIN_BATCH: usize = 256;

/// Offset of `task_struct.thread.fsbase`: a 3.10 thread state names its thread by
/// pthread id, which is the thread's fs base on x86_64 glibc.
fn task_fsbase_off() -> u32 {
    let Ok(btf) = crate::kernel::btf::Btf::from_sys() else {
        return u32::MAX;
    };
    match (
        btf.member_offset("task_struct", "thread"),
        btf.member_offset("thread_struct", "fsbase"),
    ) {
        (Ok(a), Ok(b)) => a + b,
        _ => u32::MAX,
    }
}

impl Profiler {
    pub fn new(maps: ProfilerMaps, cfg: &ProfileConfig, proc_root: PathBuf) -> Profiler {
        let store = SampleStore::new(cfg.window_s.max(1) * 1_000_000_000, 200_000);
        Profiler {
            native: Symbolizer::new(&proc_root),
            proc_root,
            maps,
            procs: FastMap::default(),
            pending: HashMap::new(),
            code: CodeCache::new(65_536),
            handle: ProfileHandle::new(store, cfg.sample_hz),
            interpreters: Arc::default(),
            decode_errors: 0,
            task_fsbase_off: task_fsbase_off(),
            stacks: stacks::Interner::default(),
            python_frames: stacks::PythonFrames::default(),
            batch: Vec::with_capacity(DRAIN_BATCH),
        }
    }

    pub fn handle(&self) -> ProfileHandle {
        self.handle.clone()
    }

    /// Runs until the command channel closes.
    pub async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        let mut poll = tokio::time::interval(POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_stats = Instant::now();
        loop {
            tokio::select! {
                cmd = commands.recv() => match cmd {
                    Some(c) => self.command(c),
                    None => break,
                },
                _ = poll.tick() => {
                    self.retry_pending();
                    self.drain();
                    if last_stats.elapsed() >= Duration::from_secs(1) {
                        self.publish_stats();
                        last_stats = Instant::now();
                    }
                }
            }
        }
        self.drain();
        self.publish_stats();
    }

    fn publish_stats(&self) {
        let mut m = serde_json::Map::new();
        for (i, name) in telemetry_common::PSTAT_NAMES.iter().enumerate() {
            let v: u64 = self
                .maps
                .stats
                .get(&(i as u32), 0)
                .map(|per_cpu| per_cpu.iter().sum())
                .unwrap_or(0);
            m.insert((*name).into(), v.into());
        }
        let (total, attributed, off_cpu, estimated, unwalked_dropped, held) =
            self.handle.with(|s| {
                (
                    s.total_samples,
                    s.attributed,
                    s.off_cpu_samples,
                    s.off_cpu_estimated,
                    s.off_cpu_unwalked_dropped,
                    s.held(),
                )
            });
        // What the window holds (the agent's largest memory consumer under load).
        let (frames, stacks, names) = self.stacks.sizes();
        m.insert("held_samples".into(), held.0.into());
        m.insert("held_off_cpu_samples".into(), held.1.into());
        m.insert("distinct_frames".into(), frames.into());
        m.insert("distinct_stacks".into(), stacks.into());
        m.insert("distinct_names".into(), names.into());
        m.insert("native_frames_cached".into(), self.native.cached().into());
        m.insert("resolved".into(), total.into());
        m.insert("off_cpu_resolved".into(), off_cpu.into());
        m.insert("off_cpu_estimated".into(), estimated.into());
        m.insert("off_cpu_unwalked_dropped".into(), unwalked_dropped.into());
        m.insert("attributed".into(), attributed.into());
        m.insert("code_read_errors".into(), self.code.read_errors.into());
        m.insert("record_errors".into(), self.decode_errors.into());
        m.insert("workers".into(), self.procs.len().into());
        if let Ok(mut s) = self.handle.stats.lock() {
            *s = m;
        }
    }

    fn command(&mut self, c: Command) {
        match c {
            Command::WorkerUp { pid, pool } => {
                self.handle.with(|s| s.add_worker(pid, &pool));
                self.pending.insert(
                    pid,
                    Pending {
                        pool,
                        since: Instant::now(),
                        last_error: String::new(),
                    },
                );
                self.retry_pending();
            }
            Command::Drain(done) => {
                self.drain();
                let _ = done.send(());
            }
            Command::WorkerGone { pid } => {
                self.drain();
                let _ = self.maps.py_procs.remove(&pid);
                self.procs.remove(&pid);
                self.pending.remove(&pid);
                self.code.forget(pid);
                self.native.forget(pid);
                self.handle.with(|s| s.remove_worker(pid));
            }
        }
    }

    fn retry_pending(&mut self) {
        let pids: Vec<u32> = self.pending.keys().copied().collect();
        for pid in pids {
            match self.attach(pid) {
                Ok(()) => {
                    self.pending.remove(&pid);
                }
                Err(e) => {
                    let Some(p) = self.pending.get_mut(&pid) else {
                        continue;
                    };
                    let msg = e.to_string();
                    let permanent = matches!(
                        e,
                        ProfilerError::UnsupportedVersion { .. }
                            | ProfilerError::NoInterpreter { .. }
                    ) && p.since.elapsed() > Duration::from_secs(2);
                    if permanent || p.since.elapsed() > INSPECT_PATIENCE {
                        tracing::warn!(pid, pool = %p.pool, error = %msg, "worker not profiled");
                        self.record(pid, Err(msg));
                        self.pending.remove(&pid);
                    } else {
                        p.last_error = msg;
                    }
                }
            }
        }
    }

    fn record(&self, pid: u32, r: Result<String, String>) {
        if let Ok(mut m) = self.interpreters.lock() {
            m.insert(pid, r);
        }
    }

    fn attach(&mut self, pid: u32) -> Result<(), ProfilerError> {
        let interp = layout::inspect(&self.proc_root, pid)?;
        let mem = ProcMem::open(&self.proc_root, pid)?;
        if interp.layout.pthread_ids && self.task_fsbase_off == u32::MAX {
            return Err(ProfilerError::LayoutMismatch {
                pid,
                version: interp.version,
                what: "task_struct.thread.fsbase unknown (no kernel BTF): 3.10 threads cannot be matched".into(),
            });
        }
        let info = interp
            .layout
            .proc_info(interp.runtime_addr, self.task_fsbase_off);
        self.maps
            .py_procs
            .insert(pid, info, 0)
            .map_err(|e| ProfilerError::Kernel(e.to_string()))?;
        let desc = format!(
            "CPython {} ({}, layout from {})",
            interp.version,
            interp.path.display(),
            interp.layout_source
        );
        tracing::info!(pid, interpreter = %desc, "profiling worker");
        self.record(pid, Ok(desc));
        self.procs.insert(pid, Proc { interp, mem });
        Ok(())
    }

    /// Takes every sample the kernel has queued.
    fn drain(&mut self) {
        let mut batch = std::mem::take(&mut self.batch);
        loop {
            while batch.len() < DRAIN_BATCH {
                let Some(item) = self.maps.ring.next() else {
                    break;
                };
                if item.len() < PY_SAMPLE_LEN {
                    self.decode_errors += 1;
                    continue;
                }
                // SAFETY: length checked; PySample is plain old data, read unaligned.
                let s = unsafe { std::ptr::read_unaligned(item.as_ptr() as *const PySample) };
                batch.push(s);
            }
            let full = batch.len() >= DRAIN_BATCH;
            for s in &batch {
                self.on_sample(s);
            }
            batch.clear();
            if !full {
                break;
            }
        }
        self.batch = batch;
    }

    fn on_sample(&mut self, s: &PySample) {
        let Some(p) = self.procs.get(&s.tgid) else {
            return;
        };
        let l = p.interp.layout.code;
        let depth = (s.py_depth as usize).min(s.frames.len());
        let mut python = Vec::with_capacity(depth);
        for f in &s.frames[..depth] {
            if f.owner == PY_FRAME_OWNED_BY_CSTACK || f.code == 0 {
                continue;
            }
            let Some(code) = self.code.get(&p.mem, s.tgid, &l, f.code) else {
                continue;
            };
            let units = if l.legacy_310 {
                // f_lasti, an int (the low half of the 8 bytes read).
                i64::from(f.instr as u32 as i32)
            } else {
                (f.instr as i64 - (f.code + l.code_adaptive) as i64) / 2
            };
            python.push(self.python_frames.frame(&code, units));
        }
        let nd = (s.native_depth as usize).min(s.native.len());
        let native: Vec<_> = s.native[..nd]
            .iter()
            .enumerate()
            .filter_map(|(i, a)| self.native.resolve(s.tgid, *a, i > 0))
            .collect();
        let mut stack = stacks::merge(
            s.tid,
            python,
            &native,
            &p.interp.path,
            s.flags & SAMPLE_TRUNCATED != 0,
        );
        // Off-CPU samples (sched_switch) go to their own profile, below a leaf that
        // says why the thread left the CPU.
        if s.flags & SAMPLE_OFF_CPU != 0 {
            let mut frames = stack.frames.to_vec();
            frames.push(Arc::new(offcpu::reason_frame(
                s.off_cpu_syscall,
                s.off_cpu_state,
            )));
            stack.frames = frames.into();
            let stack = self.stacks.stack(stack);
            let blocked = BlockedIn {
                syscall: i64::from(s.off_cpu_syscall),
                state: s.off_cpu_state,
            };
            self.handle
                .with(|st| st.push_off_cpu(s.tgid, s.ts_ns, s.off_cpu_ns, stack, blocked));
            return;
        }
        let stack = self.stacks.stack(stack);
        self.handle.with(|st| st.push(s.tgid, s.ts_ns, stack));
    }
}

/// Starts the sampler on the loaded probes. The returned sender feeds it workers.
pub fn start(
    probes: &mut crate::kernel::Probes,
    cfg: &ProfileConfig,
    proc_root: PathBuf,
) -> Result<(mpsc::UnboundedSender<Command>, ProfileHandle), ProfilerError> {
    let maps = probes
        .start_profiler(cfg.sample_hz)
        .map_err(|e| ProfilerError::Kernel(e.to_string()))?;
    let profiler = Profiler::new(maps, cfg, proc_root);
    let handle = profiler.handle();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(profiler.run(rx));
    Ok((tx, handle))
}
