//! The miss path: what the agent's syscall probes cost a process it does not watch.
//! This process writes and reads /dev/null a fixed number of times without the agent,
//! with it (attached, idle), with it and the kernel's run-time stats on, and without it
//! again; those stats of the read/write programs over the counted loop give the
//! in-kernel cost (the first attached loop is the agent as shipped: stats off).
use anyhow::{Context, Result};
use snakepit_testkit::agent::Agent;
use snakepit_testkit::bpf_stats;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

/// write+read pairs per repetition.
const PAIRS: usize = 100_000;
/// Repetitions; the fastest counts (the others were preempted more).
const REPS: usize = 5;

pub struct MissPath {
    /// Wall ns per syscall: without the agent (mean of before and after), with it,
    /// and with it while the kernel counts the programs' run times.
    pub without_ns: f64,
    pub with_ns: f64,
    pub with_counted_ns: f64,
    /// Kernel run time per hooked syscall: enter + exit program, averaged over
    /// read and write.
    pub ebpf_ns: f64,
}

/// Fastest ns per syscall over REPS loops of PAIRS write+read pairs.
fn devnull_loop() -> Result<f64> {
    let w = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/null")
        .context("/dev/null")?;
    let r = std::fs::File::open("/dev/null").context("/dev/null")?;
    let (wfd, rfd) = (w.as_raw_fd(), r.as_raw_fd());
    let mut buf = [0u8; 1];
    let mut best = f64::MAX;
    for _ in 0..REPS {
        let t = Instant::now();
        for _ in 0..PAIRS {
            // SAFETY: valid fds and a live one-byte buffer.
            unsafe {
                libc::write(wfd, buf.as_ptr().cast(), 1);
                libc::read(rfd, buf.as_mut_ptr().cast(), 1);
            }
        }
        best = best.min(t.elapsed().as_nanos() as f64 / (2 * PAIRS) as f64);
    }
    Ok(best)
}

pub fn measure(dir: &Path, nice: i32) -> Result<MissPath> {
    devnull_loop()?; // warm-up
    let before = devnull_loop()?;
    let pre = bpf_stats::snapshot();
    let agent = Agent::start_with(dir, &[], nice)?;
    let ids = bpf_stats::new_programs(&pre, &bpf_stats::snapshot());
    std::thread::sleep(Duration::from_millis(500));
    let with = devnull_loop()?;
    let stats_on = bpf_stats::count().context("BPF_ENABLE_STATS (the miss path's run times)")?;
    let s0 = bpf_stats::snapshot();
    let with_counted = devnull_loop()?;
    let s1 = bpf_stats::snapshot();
    drop(stats_on);
    agent.stop().context("stopping the agent (miss path)")?;
    let after = devnull_loop()?;
    // Average run time of each program, so other processes' syscalls in the window
    // (also misses) do not skew it; a syscall pays its enter and its exit program
    // (this agent has exit programs only; an older one, run with SNAKEPIT_AGENT_BIN,
    // may have enters).
    let avg = |name: &str| {
        let (t, c) = bpf_stats::delta(&ids, &s0, &s1, |n| n == name);
        if c == 0 {
            0.0
        } else {
            t as f64 / c as f64
        }
    };
    let write = avg("sys_enter_write") + avg("sys_exit_write");
    let read = avg("sys_enter_read") + avg("sys_exit_read");
    Ok(MissPath {
        without_ns: (before + after) / 2.0,
        with_ns: with,
        with_counted_ns: with_counted,
        ebpf_ns: (write + read) / 2.0,
    })
}
