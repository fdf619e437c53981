//! The Python stack profiler's maps and records (kernel: telemetry-ebpf `profile.rs`,
//! `pystack.rs`; user space: `telemetry_user::profiler`).

/// Ring buffer carrying `PySample` records (apart from `EVENTS`, so the sampler's rate
/// never competes with the I/O records and has its own reader).
pub const MAP_PROFILE_EVENTS: &str = "PROFILE_EVENTS";
/// `tgid (u32) -> PyProcInfo`: the worker processes to sample, and their layout.
/// Only processes in this map are sampled (the filter in the kernel).
pub const MAP_PY_PROCS: &str = "PY_PROCS";
/// LRU `tid (u32) -> thread state address (u64)`: found by walking the interpreter's
/// thread list once, then checked with one read per sample.
pub const MAP_PY_TSTATES: &str = "PY_TSTATES";
/// Per-CPU `u64` counters of the sampler (index `PSTAT_*`).
pub const MAP_PROFILE_STATS: &str = "PROFILE_STATS";
/// The perf_event program.
pub const PROG_PROFILE: &str = "profile_cpu";

pub const MAX_PY_PROCS: u32 = 1024;
pub const MAX_PY_TSTATES: u32 = 8192;
/// Python frames per sample at most (a deeper stack keeps its innermost frames and
/// says `SAMPLE_TRUNCATED`).
pub const PY_MAX_FRAMES: usize = 48;
/// Native (user) frames per sample at most, innermost first.
pub const NATIVE_MAX_FRAMES: usize = 32;
/// Threads of one interpreter walked when looking for a thread's state.
pub const PY_MAX_THREADS: u32 = 64;

/// `PySample.flags`: more Python frames than `PY_MAX_FRAMES`.
pub const SAMPLE_TRUNCATED: u32 = 1;
/// No Python thread state for this thread (a native thread, e.g. OpenBLAS's): the
/// sample has native frames only.
pub const SAMPLE_NO_TSTATE: u32 = 2;
/// A user-memory read failed during the walk; the frames before it are valid.
pub const SAMPLE_READ_ERROR: u32 = 4;
/// The thread had a state but no Python frame was running (idle in C).
pub const SAMPLE_NO_FRAME: u32 = 8;
/// An off-CPU sample: the stack where the thread blocked (sched_switch), weighted by
/// `PySample.off_cpu_ns`, the time until it ran again.
pub const SAMPLE_OFF_CPU: u32 = 16;

/// `PySample.off_cpu_syscall` of a sample taken outside a syscall.
pub const NO_SYSCALL: i32 = -1;
/// Off-CPU walks of one thread: at most `[profile] off_cpu_hz` per second on average,
/// in bursts of up to this many (a thread that blocks rarely is walked every time).
pub const OFF_CPU_BURST: u64 = 16;
/// Threads with an off-CPU sample waiting for their wakeup, at most.
pub const MAX_OFF_CPU_PENDING: u32 = 1024;
/// `tid (u32) -> PySample`: the off-CPU sample of a thread that is blocked now.
pub const MAP_OFF_CPU_PENDING: &str = "OFF_CPU_PENDING";
/// Global (set by the loader): the sampling period in ns for off-CPU walks; 0 turns
/// off-CPU sampling off.
pub const GLOBAL_OFF_CPU_PERIOD_NS: &str = "OFF_CPU_PERIOD_NS";

/// `PyFrameRef.owner` of a C-stack shim frame (3.12+); user space drops them.
pub const PY_FRAME_OWNED_BY_CSTACK: u8 = 3;

pub const PSTAT_SAMPLES: u32 = 0;
pub const PSTAT_RINGBUF_DROPS: u32 = 1;
pub const PSTAT_READ_ERRORS: u32 = 2;
pub const PSTAT_NO_TSTATE: u32 = 3;
pub const PSTAT_TRUNCATED: u32 = 4;
pub const PSTAT_TSTATE_WALKS: u32 = 5;
/// Off-CPU samples sent (not counted in `PSTAT_SAMPLES`, which counts CPU-clock ones).
pub const PSTAT_OFF_CPU_SAMPLES: u32 = 6;
/// Off-CPU walks skipped by the per-thread rate limit.
pub const PSTAT_OFF_CPU_SKIPPED: u32 = 7;
pub const PSTAT_LEN: u32 = 8;
pub const PSTAT_NAMES: [&str; PSTAT_LEN as usize] = [
    "samples",
    "ringbuf_drops",
    "read_errors",
    "no_thread_state",
    "truncated",
    "thread_state_walks",
    "off_cpu_samples",
    "off_cpu_skipped",
];

/// Where the frames of one process's interpreter are (from the version's layout,
/// checked by user space before the process is added to `PY_PROCS`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PyProcInfo {
    /// Address of `_PyRuntime.interpreters.head` in the process.
    pub interp_head_addr: u64,
    /// `PyInterpreterState.threads.head`.
    pub threads_head_off: u32,
    pub tstate_next_off: u32,
    pub tstate_native_tid_off: u32,
    /// `PyThreadState.cframe` (3.11, 3.12), or `u32::MAX` where the thread state holds
    /// the current frame itself (3.13).
    pub tstate_cframe_off: u32,
    /// `_PyCFrame.current_frame`, or `PyThreadState.current_frame` (3.13).
    pub current_frame_off: u32,
    /// `_PyInterpreterFrame.f_code` (`f_executable` on 3.13).
    pub frame_code_off: u32,
    pub frame_previous_off: u32,
    /// `prev_instr` (3.11, 3.12) or `instr_ptr` (3.13).
    pub frame_instr_off: u32,
    /// `u32::MAX`: frames have no owner byte (3.10's `PyFrameObject`).
    pub frame_owner_off: u32,
    /// How a thread state names its thread: `TID_NATIVE` (`native_thread_id` == the
    /// kernel tid, u32; 3.11+) or `TID_PTHREAD` (`thread_id` == pthread_self(), which
    /// on x86_64 glibc is the thread's fs base, u64; 3.10).
    pub tid_match: u32,
    /// Offset of `task_struct.thread.fsbase` (from BTF), for `TID_PTHREAD`.
    pub task_fsbase_off: u32,
    pub _pad: u32,
}

pub const TID_NATIVE: u32 = 0;
pub const TID_PTHREAD: u32 = 1;

/// One Python frame as the kernel saw it: resolved in user space.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PyFrameRef {
    /// Code object address.
    pub code: u64,
    /// Instruction pointer into the code's bytecode.
    pub instr: u64,
    /// `_PyInterpreterFrame.owner`.
    pub owner: u8,
    pub _pad: [u8; 7],
}

/// One CPU-clock sample of a watched worker thread.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PySample {
    /// CLOCK_MONOTONIC ns.
    pub ts_ns: u64,
    pub tgid: u32,
    pub tid: u32,
    pub cpu: u32,
    /// `SAMPLE_*` bits.
    pub flags: u32,
    /// Valid entries of `frames`, innermost first.
    pub py_depth: u32,
    /// Valid entries of `native`, innermost first.
    pub native_depth: u32,
    pub tstate: u64,
    /// Off-CPU samples (`SAMPLE_OFF_CPU`): ns from leaving the CPU (`ts_ns`) to running
    /// again. 0 for CPU-clock samples (each stands for one sampling period).
    pub off_cpu_ns: u64,
    /// Off-CPU samples: the syscall the thread blocked in (x86_64 number), or
    /// `NO_SYSCALL`; `off_cpu_state` its task state (0: preempted).
    pub off_cpu_syscall: i32,
    pub off_cpu_state: u32,
    pub frames: [PyFrameRef; PY_MAX_FRAMES],
    pub native: [u64; NATIVE_MAX_FRAMES],
}

pub const PY_SAMPLE_LEN: usize = core::mem::size_of::<PySample>();
const _: () = assert!(PY_SAMPLE_LEN < 4096);

#[cfg(feature = "user")]
mod pod {
    use super::*;
    unsafe impl aya::Pod for PyProcInfo {}
}
