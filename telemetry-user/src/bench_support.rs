//! What the in-process benchmarks (`#[ignore]` tests run with `--ignored`) share.

/// CPU time of this process so far (all threads, user and system), in ns.
pub(crate) fn process_cpu_ns() -> u64 {
    // SAFETY: getrusage only writes the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let ns = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1_000;
    ns(ru.ru_utime) + ns(ru.ru_stime)
}

/// Calls a benchmark runs: `BENCH_CALLS`, else `default`.
pub(crate) fn bench_calls(default: u32) -> u32 {
    std::env::var("BENCH_CALLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}
