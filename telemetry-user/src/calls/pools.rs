//! Pool occupancy (size, busy, idle), per-worker circuit breakers and per-pool
//! crash-rate health alerts. Counts here are never sampled.
use super::config::{MonoClock, TrackerConfig};
use super::input::ConnContext;
use crate::events::{AgentEvent, CircuitBreakerOpen, HealthAlert, PoolSize};
use crate::fast_hash::FastSet;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

mod reload;

/// Exited workers remembered, so a late observation does not bring one back.
const EXITED_MEMORY: usize = 1024;
/// Connection ids `known_conns` holds at most (then it starts again).
const MAX_KNOWN_CONNS: usize = 65_536;

struct WorkerState {
    pid: u32,
    busy_calls: u32,
    consecutive_failures: u32,
    breaker_open: bool,
}

#[derive(Default)]
struct PoolState {
    workers: HashMap<String, WorkerState>,
    /// Busy/idle changed since the last size event.
    dirty: bool,
    last_size_emit: Option<u64>,
    crashes: VecDeque<u64>,
    last_alert: Option<u64>,
}

impl PoolState {
    fn counts(&self) -> (u64, u64) {
        let size = self.workers.len() as u64;
        let busy = self.workers.values().filter(|w| w.busy_calls > 0).count() as u64;
        (size, busy)
    }
}

pub(super) struct Pools {
    clock: MonoClock,
    size_interval_ns: u64,
    failure_threshold: u32,
    crash_threshold: u32,
    crash_window_ns: u64,
    pools: BTreeMap<String, PoolState>,
    exited: VecDeque<(String, String)>,
    exited_set: HashSet<(String, String)>,
    /// Connections whose worker is known and live: `note_conn` runs for every
    /// observation, and this skips its two lookups by pool and worker name. Emptied
    /// whenever a worker exits (connection ids are never reused).
    known_conns: FastSet<u64>,
}

impl Pools {
    pub(super) fn new(cfg: &TrackerConfig) -> Self {
        Pools {
            clock: cfg.clock,
            size_interval_ns: cfg.pool_size_interval_ms.saturating_mul(1_000_000),
            failure_threshold: cfg.failure_threshold,
            crash_threshold: cfg.crash_threshold,
            crash_window_ns: cfg.crash_window_s.saturating_mul(1_000_000_000),
            pools: BTreeMap::new(),
            exited: VecDeque::new(),
            exited_set: HashSet::new(),
            known_conns: FastSet::default(),
        }
    }

    fn size_event(&mut self, pool: &str, now: u64) -> Option<AgentEvent> {
        let t = self.clock.to_unix(now);
        let st = self.pools.get_mut(pool)?;
        let (size, busy) = st.counts();
        st.dirty = false;
        st.last_size_emit = Some(now);
        Some(AgentEvent::PoolSize(PoolSize {
            time_unix_nano: t,
            pool: pool.to_string(),
            size,
            busy,
            idle: size - busy,
        }))
    }

    /// Busy/idle changed: publish now unless one was published within the interval.
    fn busy_changed(&mut self, pool: &str, now: u64) -> Option<AgentEvent> {
        let interval = self.size_interval_ns;
        let st = self.pools.get_mut(pool)?;
        st.dirty = true;
        let due = st
            .last_size_emit
            .is_none_or(|last| interval == 0 || now.saturating_sub(last) >= interval);
        if due {
            self.size_event(pool, now)
        } else {
            None
        }
    }

    fn add_worker(&mut self, pool: &str, worker_id: &str, pid: u32, now: u64) -> Vec<AgentEvent> {
        let st = self.pools.entry(pool.to_string()).or_default();
        match st.workers.get_mut(worker_id) {
            Some(w) => {
                if pid != 0 {
                    w.pid = pid;
                }
                Vec::new()
            }
            None => {
                st.workers.insert(
                    worker_id.to_string(),
                    WorkerState {
                        pid,
                        busy_calls: 0,
                        consecutive_failures: 0,
                        breaker_open: false,
                    },
                );
                self.size_event(pool, now).into_iter().collect()
            }
        }
    }

    pub(super) fn worker_up(
        &mut self,
        pool: &str,
        worker_id: &str,
        pid: u32,
        _beam_pid: Option<u32>,
        now: u64,
    ) -> Vec<AgentEvent> {
        // A pid reused under the same id is a new worker: forget the old exit.
        let k = (pool.to_string(), worker_id.to_string());
        if self.exited_set.remove(&k) {
            self.exited.retain(|x| *x != k);
        }
        self.add_worker(pool, worker_id, pid, now)
    }

    /// A connection's worker is live unless we saw it exit.
    pub(super) fn note_conn(&mut self, conn: &ConnContext, now: u64) -> Vec<AgentEvent> {
        // Hot path (every observation): one integer lookup, nothing allocated.
        if self.known_conns.contains(&conn.conn_id) {
            return Vec::new();
        }
        if self
            .pools
            .get(&*conn.pool)
            .is_some_and(|p| p.workers.contains_key(&*conn.worker_id))
        {
            self.remember_conn(conn.conn_id);
            return Vec::new();
        }
        let k = (conn.pool.to_string(), conn.worker_id.to_string());
        if self.exited_set.contains(&k) {
            return Vec::new();
        }
        let events = self.add_worker(&conn.pool, &conn.worker_id, conn.worker_pid, now);
        self.remember_conn(conn.conn_id);
        events
    }

    fn remember_conn(&mut self, conn_id: u64) {
        if self.known_conns.len() >= MAX_KNOWN_CONNS {
            self.known_conns.clear();
        }
        self.known_conns.insert(conn_id);
    }

    pub(super) fn call_started(&mut self, conn: &ConnContext, now: u64) -> Vec<AgentEvent> {
        let Some(w) = self
            .pools
            .get_mut(&*conn.pool)
            .and_then(|p| p.workers.get_mut(&*conn.worker_id))
        else {
            return Vec::new();
        };
        w.busy_calls += 1;
        if w.busy_calls == 1 {
            self.busy_changed(&conn.pool, now).into_iter().collect()
        } else {
            Vec::new()
        }
    }

    pub(super) fn call_ended(&mut self, conn: &ConnContext, now: u64) -> Vec<AgentEvent> {
        let Some(w) = self
            .pools
            .get_mut(&*conn.pool)
            .and_then(|p| p.workers.get_mut(&*conn.worker_id))
        else {
            return Vec::new();
        };
        if w.busy_calls == 0 {
            return Vec::new();
        }
        w.busy_calls -= 1;
        if w.busy_calls == 0 {
            self.busy_changed(&conn.pool, now).into_iter().collect()
        } else {
            Vec::new()
        }
    }

    /// Counts consecutive failures per worker; returns the breaker-open event when
    /// a streak reaches the threshold (once per streak).
    pub(super) fn call_result(
        &mut self,
        conn: &ConnContext,
        failed: bool,
        error_type: Option<String>,
        t_unix: u64,
    ) -> Option<AgentEvent> {
        let threshold = self.failure_threshold;
        let w = self
            .pools
            .get_mut(&*conn.pool)
            .and_then(|p| p.workers.get_mut(&*conn.worker_id))?;
        if !failed {
            w.consecutive_failures = 0;
            w.breaker_open = false;
            return None;
        }
        w.consecutive_failures += 1;
        if threshold == 0 || w.breaker_open || w.consecutive_failures < threshold {
            return None;
        }
        w.breaker_open = true;
        Some(
            CircuitBreakerOpen {
                time_unix_nano: t_unix,
                pool: conn.pool.to_string(),
                worker_id: conn.worker_id.to_string(),
                worker_pid: w.pid,
                failure_count: w.consecutive_failures.into(),
                error_type,
            }
            .into(),
        )
    }

    /// Removes the worker; on a crash, checks the pool's crash rate. Returns the
    /// events and whether a health alert was raised.
    pub(super) fn worker_exited(
        &mut self,
        pool: &str,
        worker_id: &str,
        crashed: bool,
        now: u64,
        t_unix: u64,
    ) -> (Vec<AgentEvent>, bool) {
        let mut out = Vec::new();
        self.known_conns.clear();
        let k = (pool.to_string(), worker_id.to_string());
        if self.exited_set.insert(k.clone()) {
            self.exited.push_back(k);
            while self.exited.len() > EXITED_MEMORY {
                if let Some(old) = self.exited.pop_front() {
                    self.exited_set.remove(&old);
                }
            }
        }
        let window = self.crash_window_ns;
        let threshold = self.crash_threshold;
        let st = self.pools.entry(pool.to_string()).or_default();
        let removed = st.workers.remove(worker_id).is_some();
        let mut alert = false;
        if crashed {
            st.crashes.push_back(now);
            while st
                .crashes
                .front()
                .is_some_and(|t| now.saturating_sub(*t) > window)
            {
                st.crashes.pop_front();
            }
            let count = st.crashes.len() as u64;
            let quiet = st
                .last_alert
                .is_none_or(|last| now.saturating_sub(last) >= window);
            if threshold > 0 && count >= threshold as u64 && quiet {
                st.last_alert = Some(now);
                alert = true;
                out.push(
                    HealthAlert {
                        time_unix_nano: t_unix,
                        pool: pool.to_string(),
                        alert_type: "crash_loop",
                        worker_id: worker_id.to_string(),
                        crash_count: count,
                        window_s: window / 1_000_000_000,
                    }
                    .into(),
                );
            }
        }
        if removed {
            out.extend(self.size_event(pool, now));
        }
        (out, alert)
    }

    /// Size events for pools whose busy/idle changed and whose interval passed.
    pub(super) fn tick(&mut self, now: u64) -> Vec<AgentEvent> {
        let interval = self.size_interval_ns;
        let due: Vec<String> = self
            .pools
            .iter()
            .filter(|(_, p)| {
                p.dirty
                    && p.last_size_emit
                        .is_none_or(|last| now.saturating_sub(last) >= interval)
            })
            .map(|(name, _)| name.clone())
            .collect();
        due.iter()
            .filter_map(|pool| self.size_event(pool, now))
            .collect()
    }
}
