//! Resolved samples kept for a window, per worker; per-call attribution (the calls a
//! worker served and when) and per-(pool, function) profiles read from it.
use super::stacks::Stack;
use std::collections::{HashMap, VecDeque};

/// A sample as stored: when, which worker, and its stack.
#[derive(Clone, Debug)]
pub struct StoredSample {
    pub ts_ns: u64,
    pub stack: Stack,
    /// The call it fell in, once that call finished: (function, call's pool).
    pub function: Option<String>,
}

/// What the samples of one call say (call.stop metadata).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallProfile {
    pub python_samples: u64,
    pub hot_frame: String,
    pub hot_library: String,
}

#[derive(Default)]
struct Worker {
    pool: String,
    samples: VecDeque<StoredSample>,
}

/// Which samples to take.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub function: Option<String>,
    pub pool: Option<String>,
    /// CLOCK_MONOTONIC ns; samples at or after.
    pub since_ns: u64,
}

pub struct SampleStore {
    workers: HashMap<u32, Worker>,
    window_ns: u64,
    max_per_worker: usize,
    pub total_samples: u64,
    pub attributed: u64,
}

impl SampleStore {
    pub fn new(window_ns: u64, max_per_worker: usize) -> Self {
        SampleStore {
            workers: HashMap::new(),
            window_ns,
            max_per_worker,
            total_samples: 0,
            attributed: 0,
        }
    }

    pub fn add_worker(&mut self, pid: u32, pool: &str) {
        self.workers.entry(pid).or_default().pool = pool.to_string();
    }

    pub fn remove_worker(&mut self, pid: u32) {
        self.workers.remove(&pid);
    }

    pub fn pool_of(&self, pid: u32) -> Option<&str> {
        self.workers.get(&pid).map(|w| w.pool.as_str())
    }

    pub fn push(&mut self, pid: u32, ts_ns: u64, stack: Stack) {
        let Some(w) = self.workers.get_mut(&pid) else {
            return;
        };
        self.total_samples += 1;
        w.samples.push_back(StoredSample {
            ts_ns,
            stack,
            function: None,
        });
        let oldest = ts_ns.saturating_sub(self.window_ns);
        while w
            .samples
            .front()
            .is_some_and(|s| s.ts_ns < oldest || w.samples.len() > self.max_per_worker)
        {
            w.samples.pop_front();
        }
    }

    /// A call of `function` ran on worker `pid` over [start_ns, end_ns]: its samples
    /// are marked with the function, and summarised. None when it had none.
    pub fn call_finished(
        &mut self,
        pid: u32,
        start_ns: u64,
        end_ns: u64,
        function: &str,
    ) -> Option<CallProfile> {
        let w = self.workers.get_mut(&pid)?;
        let first = w.samples.partition_point(|s| s.ts_ns < start_ns);
        let mut n = 0u64;
        let mut frames: HashMap<&str, u64> = HashMap::new();
        let mut libs: HashMap<&str, u64> = HashMap::new();
        for s in w.samples.range_mut(first..) {
            if s.ts_ns > end_ns {
                break;
            }
            s.function = Some(function.to_string());
        }
        for s in w.samples.range(first..) {
            if s.ts_ns > end_ns {
                break;
            }
            n += 1;
            *frames.entry(s.stack.hot_frame.as_str()).or_default() += 1;
            *libs.entry(s.stack.library.as_str()).or_default() += 1;
        }
        if n == 0 {
            return None;
        }
        self.attributed += n;
        let top = |m: HashMap<&str, u64>| {
            m.into_iter()
                .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(a.0)))
                .map(|(k, _)| k.to_string())
                .unwrap_or_default()
        };
        Some(CallProfile {
            python_samples: n,
            hot_frame: top(frames),
            hot_library: top(libs),
        })
    }

    /// Samples matching `f`, oldest first.
    pub fn select(&self, f: &Filter) -> Vec<(u32, &StoredSample)> {
        let mut out: Vec<(u32, &StoredSample)> = self
            .workers
            .iter()
            .filter(|(_, w)| f.pool.as_ref().is_none_or(|p| *p == w.pool))
            .flat_map(|(pid, w)| w.samples.iter().map(move |s| (*pid, s)))
            .filter(|(_, s)| s.ts_ns >= f.since_ns)
            .filter(|(_, s)| {
                f.function
                    .as_ref()
                    .is_none_or(|want| s.function.as_deref() == Some(want.as_str()))
            })
            .collect();
        out.sort_by_key(|(_, s)| s.ts_ns);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profiler::stacks::Frame;

    fn stack(hot: &str, lib: &str) -> Stack {
        Stack {
            tid: 1,
            frames: vec![Frame::Native {
                name: hot.into(),
                library: lib.into(),
            }]
            .into(),
            hot_frame: hot.into(),
            library: lib.into(),
            truncated: false,
        }
    }

    #[test]
    fn calls_take_the_samples_of_their_window() {
        let mut st = SampleStore::new(10_000, 1000);
        st.add_worker(5, "default");
        for t in 0..10 {
            let (h, l) = if t < 7 {
                ("demo_hot.spin", "demo_hot")
            } else {
                ("dgemm", "numpy")
            };
            st.push(5, 100 + t, stack(h, l));
        }
        st.push(6, 100, stack("x", "y")); // not a worker: ignored
        let p = st.call_finished(5, 100, 109, "hot_path").expect("samples");
        assert_eq!(p.python_samples, 10);
        assert_eq!(p.hot_frame, "demo_hot.spin");
        assert_eq!(p.hot_library, "demo_hot");
        assert!(st.call_finished(5, 200, 300, "other").is_none());
        let f = Filter {
            function: Some("hot_path".into()),
            ..Default::default()
        };
        assert_eq!(st.select(&f).len(), 10);
        let f = Filter {
            pool: Some("gpu".into()),
            ..Default::default()
        };
        assert!(st.select(&f).is_empty());
    }

    #[test]
    fn the_window_is_bounded() {
        let mut st = SampleStore::new(100, 5);
        st.add_worker(1, "p");
        for t in 0..50 {
            st.push(1, 1000 + t, stack("a", "b"));
        }
        assert_eq!(st.select(&Filter::default()).len(), 5);
    }
}
