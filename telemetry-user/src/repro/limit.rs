//! How many scripts a failure storm may write: at most `max_files` in the directory
//! (those already there count) and `max_per_minute` in any 60 s window.
use std::collections::VecDeque;
use std::time::{Duration, Instant};

const WINDOW: Duration = Duration::from_secs(60);

pub struct Limiter {
    max_files: u64,
    max_per_minute: u32,
    files: u64,
    /// Admission times within the last window.
    recent: VecDeque<Instant>,
}

impl Limiter {
    /// `existing`: scripts already in the directory.
    pub fn new(max_files: u64, max_per_minute: u32, existing: u64) -> Self {
        Limiter {
            max_files,
            max_per_minute,
            files: existing,
            recent: VecDeque::new(),
        }
    }

    /// Admits one more script at `now`, or says which bound refused it.
    pub fn admit(&mut self, now: Instant) -> Result<(), &'static str> {
        if self.files >= self.max_files {
            return Err("max_files");
        }
        while let Some(t) = self.recent.front() {
            if now.saturating_duration_since(*t) >= WINDOW {
                self.recent.pop_front();
            } else {
                break;
            }
        }
        if self.recent.len() >= self.max_per_minute as usize {
            return Err("max_per_minute");
        }
        self.recent.push_back(now);
        self.files += 1;
        Ok(())
    }

    /// Takes back the last admission (its script was not written after all).
    pub fn unadmit(&mut self) {
        self.recent.pop_back();
        self.files = self.files.saturating_sub(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_storm_of_ten_thousand_admits_only_the_rate() {
        let mut l = Limiter::new(1000, 60, 0);
        let t0 = Instant::now();
        // 10,000 failures within 10 s.
        let admitted = (0..10_000)
            .filter(|i| l.admit(t0 + Duration::from_millis(*i)).is_ok())
            .count();
        assert_eq!(admitted, 60);
        // A minute later the window has room again.
        assert!(l.admit(t0 + Duration::from_secs(71)).is_ok());
    }

    #[test]
    fn max_files_counts_existing_scripts_and_never_resets() {
        let mut l = Limiter::new(5, 1000, 3);
        let t0 = Instant::now();
        let ok = (0..10_000)
            .filter(|i| l.admit(t0 + Duration::from_secs(*i)).is_ok())
            .count();
        assert_eq!(ok, 2);
        assert_eq!(l.admit(t0 + Duration::from_secs(99_999)), Err("max_files"));
    }

    #[test]
    fn unadmit_gives_the_slot_back() {
        let mut l = Limiter::new(1, 1, 0);
        let t0 = Instant::now();
        assert!(l.admit(t0).is_ok());
        l.unadmit();
        assert!(l.admit(t0).is_ok());
        assert!(l.admit(t0).is_err());
    }
}
