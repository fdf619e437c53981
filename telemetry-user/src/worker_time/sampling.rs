//! The worker split in recording windows above a call rate (issue 10).
//!
//! The split costs a kernel record per context switch of a worker thread (about 60
//! per call on grpcio workers) and a uprobe hit per (de)serialization: at saturation
//! that was most of the agent's cost. Above `[profile] split_max_calls_per_s` the
//! split's probes record in windows of `WINDOW_NS`, paused in between for as long as
//! keeps the calls split near that rate; the wire's fast path (every call found,
//! named and timed) never pauses. A call gets a split only when its whole worker
//! window lies inside one recording window; the others carry none, as when the
//! split is off.
//!
//! The kernel side is one gate word (SPLIT_GATE): paused, or recording window
//! `generation`. A thread whose kernel state is from an older generation ran unseen
//! during the pause, so its next switch is a first sight; user space marks every
//! timeline unwatched from the pause on (`Timelines::mark_unwatched`).
use std::collections::VecDeque;

/// How long a recording window lasts (calls at saturation last a few ms).
pub const WINDOW_NS: u64 = 250_000_000;
/// The longest pause: at any rate, some calls are split every few seconds.
pub const MAX_PAUSE_NS: u64 = 5_000_000_000;
/// The call rate is measured over this much of the past.
const RATE_SPAN_NS: u64 = 1_000_000_000;
/// Recording windows remembered (for calls that end after their window).
const MAX_WINDOWS: usize = 64;

/// What the kernel's gate must become.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GateChange {
    Pause,
    Resume { generation: u32 },
}

/// Counters for the agent's stats.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SamplingCounters {
    /// Recording windows opened after a pause.
    pub windows: u64,
    /// Time the split's probes were paused, in all.
    pub paused_ns: u64,
    /// User calls that ended outside a recording window (no split).
    pub calls_not_split: u64,
}

/// Decides when the split's probes record, and which times they covered.
pub struct SplitSampler {
    /// 0: always recording.
    max_calls_per_s: u32,
    recording: bool,
    generation: u32,
    /// When the current state (recording or paused) began.
    since_ns: u64,
    calls_finished: u64,
    /// (tick time, calls finished by then), over RATE_SPAN_NS.
    rate_marks: VecDeque<(u64, u64)>,
    /// Recording windows `[start, end)`, oldest first; the last is open while recording.
    windows: VecDeque<(u64, Option<u64>)>,
    pub counters: SamplingCounters,
}

impl SplitSampler {
    /// Recording from the start (the probes load with the gate open).
    pub fn new(max_calls_per_s: u32) -> Self {
        SplitSampler {
            max_calls_per_s,
            recording: true,
            generation: 0,
            since_ns: 0,
            calls_finished: 0,
            rate_marks: VecDeque::new(),
            windows: VecDeque::from([(0, None)]),
            counters: SamplingCounters::default(),
        }
    }

    pub fn set_max_calls_per_s(&mut self, max: u32) {
        self.max_calls_per_s = max;
    }

    pub fn is_recording(&self) -> bool {
        self.recording
    }

    /// A user call ended (its rate drives the windows).
    pub fn call_finished(&mut self) {
        self.calls_finished += 1;
    }

    /// Calls per second over the last RATE_SPAN_NS of ticks.
    pub fn rate(&self) -> f64 {
        match (self.rate_marks.front(), self.rate_marks.back()) {
            (Some(&(t0, c0)), Some(&(t1, c1))) if t1 > t0 => {
                (c1 - c0) as f64 * 1e9 / (t1 - t0) as f64
            }
            _ => 0.0,
        }
    }

    /// Called on every tick: the gate change to make now, if any.
    pub fn tick(&mut self, now_ns: u64) -> Option<GateChange> {
        self.rate_marks.push_back((now_ns, self.calls_finished));
        while self
            .rate_marks
            .front()
            .is_some_and(|&(t, _)| t + RATE_SPAN_NS < now_ns)
        {
            self.rate_marks.pop_front();
        }
        let max = self.max_calls_per_s as f64;
        let rate = self.rate();
        let held = now_ns.saturating_sub(self.since_ns);
        if self.recording {
            if max == 0.0 || rate <= max || held < WINDOW_NS {
                return None;
            }
            self.recording = false;
            self.since_ns = now_ns;
            if let Some(last) = self.windows.back_mut() {
                last.1 = Some(now_ns);
            }
            return Some(GateChange::Pause);
        }
        // Paused: long enough that a window's share of the time is max / rate.
        let pause = if max == 0.0 || rate <= max {
            0
        } else {
            ((WINDOW_NS as f64 * (rate / max - 1.0)) as u64).min(MAX_PAUSE_NS)
        };
        if held < pause {
            return None;
        }
        self.counters.paused_ns += held;
        self.counters.windows += 1;
        self.recording = true;
        self.since_ns = now_ns;
        self.generation = self.generation.wrapping_add(1);
        if self.windows.len() >= MAX_WINDOWS {
            self.windows.pop_front();
        }
        self.windows.push_back((now_ns, None));
        Some(GateChange::Resume {
            generation: self.generation,
        })
    }

    /// For the agent's stats: the limit, the state, the rate and the counters.
    pub fn stats(&self) -> serde_json::Value {
        serde_json::json!({
            "max_calls_per_s": self.max_calls_per_s,
            "recording": self.recording,
            "calls_per_s": self.rate().round() as u64,
            "windows": self.counters.windows,
            "paused_ms": self.counters.paused_ns / 1_000_000,
            "calls_not_split": self.counters.calls_not_split,
        })
    }

    /// While recording after a pause: when that pause began (the timelines are
    /// unknown from then until each thread's first switch in the new window).
    pub fn last_pause_ns(&self) -> Option<u64> {
        let n = self.windows.len();
        (n >= 2).then(|| self.windows[n - 2].1).flatten()
    }

    /// Whether `[a, b]` lies inside one recording window.
    pub fn covered(&self, a: u64, b: u64) -> bool {
        self.windows
            .iter()
            .rev()
            .any(|&(start, end)| start <= a && end.is_none_or(|e| b <= e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    /// Ticks every 100 ms for `secs` with `rate` calls/s; returns the time spent
    /// recording and the gate changes.
    fn drive(s: &mut SplitSampler, from: u64, secs: u64, rate: u64) -> (u64, Vec<GateChange>) {
        let mut recorded = 0;
        let mut changes = Vec::new();
        let mut t = from;
        while t < from + secs * 1000 * MS {
            t += 100 * MS;
            for _ in 0..rate / 10 {
                s.call_finished();
            }
            if s.is_recording() {
                recorded += 100 * MS;
            }
            changes.extend(s.tick(t));
        }
        (recorded, changes)
    }

    #[test]
    fn below_the_rate_it_always_records() {
        let mut s = SplitSampler::new(100);
        let (recorded, changes) = drive(&mut s, 0, 10, 80);
        assert_eq!(recorded, 10_000 * MS);
        assert!(changes.is_empty());
        assert!(s.covered(5, 9_000 * MS));
        let mut off = SplitSampler::new(0);
        let (_, changes) = drive(&mut off, 0, 10, 5_000);
        assert!(changes.is_empty(), "0: never paused");
    }

    #[test]
    fn above_the_rate_windows_record_about_max_over_rate_of_the_time() {
        let mut s = SplitSampler::new(100);
        let (recorded, changes) = drive(&mut s, 0, 60, 1_000);
        // One second to measure the rate, then ~10 % of the time.
        let share = recorded as f64 / (60_000 * MS) as f64;
        assert!((0.08..0.16).contains(&share), "recorded {share}");
        assert!(changes.len() > 20, "{changes:?}");
        // Pauses and resumes alternate, each resume a new generation.
        let mut gens = Vec::new();
        for (i, c) in changes.iter().enumerate() {
            match c {
                GateChange::Pause => assert_eq!(i % 2, 0),
                GateChange::Resume { generation } => {
                    assert_eq!(i % 2, 1);
                    gens.push(*generation);
                }
            }
        }
        assert!(gens.windows(2).all(|w| w[1] == w[0] + 1));
        assert_eq!(s.counters.windows, gens.len() as u64);
        // Back under the rate: recording again within the longest pause, and it stays.
        let end = 60_000 * MS;
        let (_, _) = drive(&mut s, end, 6, 10);
        assert!(s.is_recording());
        let (recorded, changes) = drive(&mut s, end + 6_000 * MS, 5, 10);
        assert_eq!((recorded, changes.len()), (5_000 * MS, 0));
    }

    #[test]
    fn a_call_is_covered_only_inside_one_window() {
        let mut s = SplitSampler::new(100);
        let (_, changes) = drive(&mut s, 0, 30, 1_000);
        assert!(!changes.is_empty());
        let windows: Vec<_> = s.windows.iter().copied().collect();
        let (start, end) = windows[windows.len() - 2];
        let end = end.expect("a closed window");
        assert!(s.covered(start, end));
        assert!(s.covered(start + MS, end - MS));
        assert!(
            !s.covered(start - MS, start + MS),
            "began before the window"
        );
        assert!(!s.covered(end - MS, end + MS), "ended after it");
        // Through the next pause and resume: the pause that ends began where the
        // window before it ended.
        let mut t = 30_000 * MS;
        let mut paused_at = None;
        loop {
            t += 100 * MS;
            for _ in 0..100 {
                s.call_finished();
            }
            match s.tick(t) {
                Some(GateChange::Pause) => paused_at = Some(t),
                Some(GateChange::Resume { .. }) if paused_at.is_some() => break,
                _ => {}
            }
            assert!(t < 45_000 * MS, "a pause and a resume within 15 s");
        }
        assert_eq!(s.last_pause_ns(), paused_at);
    }
}
