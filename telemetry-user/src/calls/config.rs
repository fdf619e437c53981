//! The call tracker's settings (a `[calls]` table in the agent's TOML) and the
//! monotonic-to-wall clock conversion.
use serde::{Deserialize, Serialize};

/// Converts kernel timestamps (CLOCK_MONOTONIC, what `bpf_ktime_get_ns` reads) to
/// Unix time. The offset is measured once: both clocks tick at the same rate, and a
/// later NTP step would otherwise make event times jump inside one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MonoClock {
    /// unix_ns - mono_ns.
    offset_ns: i128,
}

impl MonoClock {
    /// Reads both clocks now.
    pub fn measure() -> Self {
        let unix = crate::events::now_unix_nano() as i128;
        MonoClock {
            offset_ns: unix - mono_now_ns() as i128,
        }
    }

    /// A fixed offset (tests, replays).
    pub fn with_offset(offset_ns: i128) -> Self {
        MonoClock { offset_ns }
    }

    pub fn to_unix(&self, mono_ns: u64) -> u64 {
        (mono_ns as i128 + self.offset_ns).clamp(0, u64::MAX as i128) as u64
    }
}

impl Default for MonoClock {
    fn default() -> Self {
        MonoClock::measure()
    }
}

/// CLOCK_MONOTONIC now, in nanoseconds (0 if the clock cannot be read).
pub fn mono_now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec we pass, which lives on our stack.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if rc != 0 {
        return 0;
    }
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrackerConfig {
    /// Calls slower than this are logged as warnings (the logger sink reads it).
    pub slow_call_ms: u64,
    /// Fraction of calls whose per-call events (start, stop, checkout, checkin) are
    /// published. Exceptions, crashes, alerts and every counter are never thinned.
    pub sample_rate: f64,
    /// Consecutive failed calls on one worker that open its circuit breaker.
    pub failure_threshold: u32,
    /// Crashes of one pool's workers within `crash_window_s` that raise a health alert.
    pub crash_threshold: u32,
    pub crash_window_s: u64,
    /// Publish call events for internal RPCs (Heartbeat, Ping, session callbacks) too.
    pub include_internal: bool,
    /// In-flight calls kept per connection and in total; the oldest are evicted.
    pub max_in_flight_per_conn: usize,
    pub max_in_flight: usize,
    /// How long a call whose worker side finished waits for the BEAM side's end
    /// before it is completed from the worker side alone.
    pub worker_only_grace_ms: u64,
    /// Least time between two `[:snakepit, :pool, :size]` events of one pool while
    /// only busy/idle changes (0: every change). Size changes publish at once.
    pub pool_size_interval_ms: u64,
    /// A call with no observation for this long is dropped (its end was lost).
    pub stale_call_s: u64,
    /// Rules that turn matching calls into `[:snakepit, :ml, ...]` events.
    pub ml_rules: Vec<super::ml::MlRule>,
    #[serde(skip)]
    pub clock: MonoClock,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        TrackerConfig {
            slow_call_ms: 1000,
            sample_rate: 1.0,
            failure_threshold: 5,
            crash_threshold: 3,
            crash_window_s: 60,
            include_internal: false,
            max_in_flight_per_conn: 1024,
            max_in_flight: 65_536,
            worker_only_grace_ms: 2000,
            pool_size_interval_ms: 1000,
            stale_call_s: 600,
            ml_rules: Vec::new(),
            clock: MonoClock::default(),
        }
    }
}
