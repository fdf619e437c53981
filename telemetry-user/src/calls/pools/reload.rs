//! SIGHUP: the pools' thresholds change; their workers, streaks and crash history stay.
use super::Pools;
use crate::calls::TrackerConfig;

impl Pools {
    pub(in crate::calls) fn reconfigure(&mut self, cfg: &TrackerConfig) {
        self.size_interval_ns = cfg.pool_size_interval_ms.saturating_mul(1_000_000);
        self.failure_threshold = cfg.failure_threshold;
        self.crash_threshold = cfg.crash_threshold;
        self.crash_window_ns = cfg.crash_window_s.saturating_mul(1_000_000_000);
    }
}
