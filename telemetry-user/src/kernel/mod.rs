//! The kernel side of the agent: loading and attaching the eBPF probes
//! (telemetry-ebpf), driving their maps, and reading their ring buffer.
//!
//! - `loader`: `Probes::load` and stats; `loader/watch`: watch/unwatch of pids and fds.
//! - `mounts`: tracefs and bpffs, mounted when missing.
//! - `reader`: the tokio task behind `Probes::events()`.
//! - `decode`: THE one checked decode point for kernel records.
//! - `workers`: the per-worker probes: the sched bitmap, (de)serialization uprobes.
//! - `uprobe_multi`: those uprobes as multi-uprobe links, attached per split window.
//! - `btf`: task_struct and pt_regs offsets from /sys/kernel/btf/vmlinux (no CO-RE in
//!   Rust eBPF).
//! - `preflight`: what `snakepit-agent check` reports.
//!
//! Timestamps in events are CLOCK_MONOTONIC nanoseconds (bpf_ktime_get_ns); use
//! [`monotonic_to_unix_ns`] for wall-clock time.
pub mod btf;
pub mod decode;
pub mod error;
mod frame_marks;
pub mod loader;
mod mounts;
pub mod preflight;
mod profiling;
mod reader;
pub mod stats;
mod teardown;
mod uprobe_multi;
mod workers;

pub use btf::TaskOffsets;
pub use decode::{
    decode, Capture, DecodeError, Direction, ExitStatus, FdTotals, FrameMark, FrameMarks,
    FrameStatus, IoRecord, KernelEvent, OffCpu, SchedEdge, SchedEpisode, SchedRecord,
    SerializeRecord,
};
pub use error::KernelError;
pub use loader::{KernelConfig, Probes, DEFAULT_RING_BUFFER_BYTES};
pub use mounts::ensure_mounts;
pub use preflight::{preflight, Preflight};
pub use profiling::ProfilerMaps;
pub use reader::KernelEvents;
pub use stats::{KernelStats, ProbeStats, ProgRunStats};
pub use telemetry_common::{
    SerializeFn, SizeFrom, Syscall, CURSOR_UNKNOWN, FD_PIPE, FD_SOCKET, PID_BEAM, PID_LINEAGE,
    PID_WATCH_NEW_SOCKETS, PID_WORKER,
};
pub use workers::{SerializeTarget, WorkerProbeError};

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// CLOCK_MONOTONIC now, in the probes' time base.
pub fn monotonic_now_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// Converts a probe timestamp to nanoseconds since the Unix epoch (using the current
/// offset between the clocks; good to the precision of NTP slews).
pub fn monotonic_to_unix_ns(ts_ns: u64) -> u64 {
    let offset = clock_ns(libc::CLOCK_REALTIME).saturating_sub(monotonic_now_ns());
    ts_ns.saturating_add(offset)
}
