//! Process-level facts (workers up and down, connections closed) and time (grace
//! periods, stale calls, pool size events).
use super::*;

/// How long a call whose client read its end waits for the server's decoded side:
/// those records are at most a reader poll and a reorder wait behind (~40 ms).
const TIMED_END_GRACE_NS: u64 = 250_000_000;

impl CallTracker {
    pub fn lifecycle(&mut self, ev: Lifecycle) {
        match ev {
            Lifecycle::WorkerUp {
                pool,
                worker_id,
                worker_pid,
                beam_pid,
                ts_ns,
            } => {
                for ev in self
                    .pools
                    .worker_up(&pool, &worker_id, worker_pid, beam_pid, ts_ns)
                {
                    self.publish(ev);
                }
            }
            Lifecycle::WorkerExited {
                pool,
                worker_id,
                worker_pid,
                exit_code,
                signal,
                oom_killed,
                ts_ns,
            } => {
                let reason = match (signal, exit_code) {
                    (Some(s), _) if oom_killed => format!("worker OOM-killed (signal {s})"),
                    (Some(s), _) => format!("worker killed by signal {s}"),
                    (None, Some(c)) => format!("worker exited with code {c}"),
                    (None, None) => "worker exited".to_string(),
                };
                let victims: Vec<Key> = self
                    .calls
                    .iter()
                    .filter(|(_, c)| {
                        (worker_pid != 0 && c.conn.worker_pid == worker_pid)
                            || (*c.conn.pool == *pool && *c.conn.worker_id == *worker_id)
                    })
                    .map(|(k, c)| (c.seq, *k))
                    .collect::<BTreeMap<u64, Key>>()
                    .into_values()
                    .collect();
                let in_flight = victims.len();
                for k in victims {
                    self.complete(k, ts_ns, Some(reason.clone()));
                }
                let crashed = oom_killed || signal.is_some() || exit_code.is_some_and(|c| c != 0);
                let t = self.unix(ts_ns);
                if crashed {
                    self.stats.worker_crashes += 1;
                    let kind = if oom_killed {
                        "oom"
                    } else if signal.is_some() {
                        "signal"
                    } else {
                        "exit_code"
                    };
                    self.publish(WorkerCrash {
                        time_unix_nano: t,
                        pool: pool.clone(),
                        worker_id: worker_id.clone(),
                        worker_pid,
                        crash_type: kind,
                        exit_code,
                        signal,
                        oom_killed,
                        reason,
                        in_flight_calls: in_flight as u64,
                    });
                }
                let (events, alert) = self
                    .pools
                    .worker_exited(&pool, &worker_id, crashed, ts_ns, t);
                if alert {
                    self.stats.health_alerts += 1;
                }
                for ev in events {
                    self.publish(ev);
                }
            }
            Lifecycle::ConnectionClosed { conn_id, ts_ns } => {
                let keys: Vec<Key> = self
                    .calls
                    .iter()
                    .filter(|(k, _)| k.0 == conn_id)
                    .map(|(k, c)| (c.seq, *k))
                    .collect::<BTreeMap<u64, Key>>()
                    .into_values()
                    .collect();
                let mut open = false;
                for k in keys {
                    match self.calls.get(&k).and_then(|c| c.server_done) {
                        Some(done) => {
                            self.stats.worker_only_completions += 1;
                            self.complete(k, done, None);
                        }
                        None => open = true,
                    }
                }
                // A dying worker's connections close just before its exit is handled:
                // its open calls wait for that (they are its in-flight calls).
                if open {
                    self.closed_conns.insert(conn_id, ts_ns);
                }
                self.conns.remove(&conn_id);
            }
        }
    }

    /// Ends the calls of closed connections no worker exit claimed.
    fn end_closed_connections(&mut self) {
        for (conn_id, ts_ns) in std::mem::take(&mut self.closed_conns) {
            let keys: Vec<Key> = self
                .calls
                .iter()
                .filter(|(k, _)| k.0 == conn_id)
                .map(|(k, c)| (c.seq, *k))
                .collect::<BTreeMap<u64, Key>>()
                .into_values()
                .collect();
            for k in keys {
                self.complete(k, ts_ns, Some("connection closed".to_string()));
            }
        }
    }

    /// Time passes: grace periods, stale calls, pool size events.
    pub fn tick(&mut self, now_mono_ns: u64) {
        self.end_closed_connections();
        let grace = self.cfg.worker_only_grace_ms.saturating_mul(1_000_000);
        let stale = self.cfg.stale_call_s.saturating_mul(1_000_000_000);
        let mut finish = BTreeMap::new();
        let mut drop = BTreeMap::new();
        for (k, c) in &self.calls {
            // The client read the end but the server's side of it never came (its
            // records lost): complete with what is known.
            if let (Some(t3), None) = (c.t3, c.server_done) {
                if now_mono_ns.saturating_sub(t3) >= TIMED_END_GRACE_NS {
                    finish.insert(c.seq, (*k, t3));
                    continue;
                }
            }
            if let Some(done) = c.server_done {
                if c.t3.is_none() && now_mono_ns.saturating_sub(done) >= grace {
                    finish.insert(c.seq, (*k, done));
                    continue;
                }
            }
            if now_mono_ns.saturating_sub(c.last_seen_ns) >= stale {
                drop.insert(c.seq, *k);
            }
        }
        for (k, done) in finish.into_values() {
            self.stats.worker_only_completions += 1;
            self.complete(k, done, None);
        }
        for k in drop.into_values() {
            self.drop_call(k, true);
        }
        for ev in self.pools.tick(now_mono_ns) {
            self.publish(ev);
        }
        // The workers' scheduling and (de)serialization records before the oldest call
        // in flight are no call's any more (internal calls, e.g. the telemetry
        // stream, are never split).
        let oldest_open = self
            .calls
            .values()
            .filter(|c| !c.internal)
            .map(|c| c.t1.unwrap_or(u64::MAX).min(c.start_ns()))
            .min();
        self.activity.prune(now_mono_ns, oldest_open);
    }

    pub(super) fn note_worker(&mut self, conn: &ConnContext, now: u64) {
        for ev in self.pools.note_conn(conn, now) {
            self.publish(ev);
        }
    }
}
