//! SIGHUP: new thresholds, sampling and ML rules for a running tracker. In-flight
//! calls, pool state and the clock stay, so no call is lost to a reload.
use super::CallTracker;
use crate::calls::TrackerConfig;

impl CallTracker {
    pub fn reconfigure(&mut self, cfg: TrackerConfig) {
        let clock = self.cfg.clock;
        self.pools.reconfigure(&cfg);
        self.cfg = TrackerConfig { clock, ..cfg };
    }
}
