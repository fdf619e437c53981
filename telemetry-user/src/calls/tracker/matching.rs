//! Finding the call an observation belongs to: per connection, stream ids (and pipe
//! request ids or order), with recently completed ids remembered so a late
//! observation never starts a phantom call; bounded in-flight tables.
use super::*;

/// Completed-call ids remembered per connection, so a late observation of a call
/// (e.g. the other side's copy of a reset) does not start a phantom call.
pub(super) const RECENT_PER_CONN: usize = 256;

/// How an observation may relate to an unknown call.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Create {
    /// Only an existing call (response flow, resets).
    Never,
    /// Start one unless the id was recently completed.
    IfNew,
    /// Always a new call when none is in flight (the client sends a new request).
    Fresh,
}

pub(super) struct ConnState {
    pub(super) seen_client: bool,
    pub(super) in_flight: BTreeMap<u64, CallId>,
    pub(super) recent: VecDeque<CallId>,
    pub(super) recent_set: FastSet<CallId>,
    pub(super) pipe_seq: u64,
}

impl ConnState {
    pub(super) fn new() -> Self {
        ConnState {
            seen_client: false,
            in_flight: BTreeMap::new(),
            recent: VecDeque::new(),
            recent_set: FastSet::default(),
            pipe_seq: 0,
        }
    }

    pub(super) fn remember(&mut self, id: CallId) {
        if self.recent_set.insert(id) {
            self.recent.push_back(id);
        }
        while self.recent.len() > RECENT_PER_CONN {
            if let Some(old) = self.recent.pop_front() {
                self.recent_set.remove(&old);
            }
        }
    }

    pub(super) fn forget(&mut self, id: CallId) {
        if self.recent_set.remove(&id) {
            self.recent.retain(|x| *x != id);
        }
    }
}

pub(super) fn header_create(flow: Flow, is_client: bool) -> Create {
    match (flow, is_client) {
        (Flow::Request, true) => Create::Fresh,
        (Flow::Request, false) => Create::IfNew,
        (Flow::Response, _) => Create::Never,
    }
}

pub(super) fn key_role(calls: &FastMap<Key, Call>, key: &Key) -> Option<CallRole> {
    calls.get(key).map(|c| c.conn.role)
}

impl CallTracker {
    pub(super) fn lookup(
        &mut self,
        conn: &Arc<ConnContext>,
        id: CallId,
        create: Create,
        now: u64,
    ) -> Option<Key> {
        let key = (conn.conn_id, id);
        if self.calls.contains_key(&key) {
            return Some(key);
        }
        let cs = self
            .conns
            .entry(conn.conn_id)
            .or_insert_with(ConnState::new);
        match create {
            Create::Never => {
                if cs.recent_set.contains(&id) {
                    self.stats.late_observations += 1;
                } else {
                    self.stats.unmatched_responses += 1;
                }
                return None;
            }
            Create::IfNew if cs.recent_set.contains(&id) => {
                self.stats.late_observations += 1;
                return None;
            }
            Create::IfNew => {}
            Create::Fresh => cs.forget(id),
        }
        self.create(conn, id, now);
        Some(key)
    }

    pub(super) fn create(&mut self, conn: &Arc<ConnContext>, id: CallId, now: u64) {
        let conn_id = conn.conn_id;
        let per_conn = self
            .conns
            .get(&conn_id)
            .map(|c| c.in_flight.len())
            .unwrap_or(0);
        if per_conn >= self.cfg.max_in_flight_per_conn.max(1) {
            let oldest = self
                .conns
                .get(&conn_id)
                .and_then(|c| c.in_flight.values().next().copied());
            if let Some(old) = oldest {
                self.drop_call((conn_id, old), false);
            }
        }
        if self.calls.len() >= self.cfg.max_in_flight.max(1) {
            if let Some(old) = self.order.values().next().copied() {
                self.drop_call(old, false);
            }
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let key = (conn_id, id);
        self.calls
            .insert(key, Call::new(seq, conn.clone(), id, now));
        self.order.insert(seq, key);
        self.conns
            .entry(conn_id)
            .or_insert_with(ConnState::new)
            .in_flight
            .insert(seq, id);
    }

    /// Removes a call from every index; returns it.
    pub(super) fn take(&mut self, key: Key) -> Option<Call> {
        let call = self.calls.remove(&key)?;
        self.order.remove(&call.seq);
        if let Some(cs) = self.conns.get_mut(&key.0) {
            cs.in_flight.remove(&call.seq);
            cs.remember(key.1);
        }
        if call.busy_counted {
            let now = call.last_seen_ns;
            let events = self.pools.call_ended(&call.conn, now);
            for ev in events {
                self.publish(ev);
            }
        }
        Some(call)
    }

    /// Drops a call without an event (memory bound or stale).
    pub(super) fn drop_call(&mut self, key: Key, stale: bool) {
        if let Some(call) = self.take(key) {
            self.repro_end(&call, None, 0);
            if stale {
                self.stats.stale += 1;
            } else {
                self.stats.evicted += 1;
            }
        }
    }

    pub(super) fn pipe_request_key(
        &mut self,
        conn: &Arc<ConnContext>,
        id: Option<i64>,
        is_client: bool,
        now: u64,
    ) -> Option<Key> {
        match id {
            Some(i) => {
                let create = if is_client {
                    Create::Fresh
                } else {
                    Create::IfNew
                };
                self.lookup(conn, CallId::Pipe(i), create, now)
            }
            None => {
                if !is_client {
                    // The worker reads requests in the order the BEAM wrote them.
                    if let Some(k) = self.first_pipe_seq(conn.conn_id, |c| !c.server_req_seen) {
                        return Some(k);
                    }
                }
                let cs = self
                    .conns
                    .entry(conn.conn_id)
                    .or_insert_with(ConnState::new);
                cs.pipe_seq += 1;
                let id = CallId::PipeSeq(cs.pipe_seq);
                self.lookup(conn, id, Create::Fresh, now)
            }
        }
    }

    pub(super) fn pipe_response_key(
        &mut self,
        conn: &Arc<ConnContext>,
        id: Option<i64>,
        is_client: bool,
        now: u64,
    ) -> Option<Key> {
        match id {
            Some(i) => self.lookup(conn, CallId::Pipe(i), Create::Never, now),
            None => {
                let found = if is_client {
                    self.first_pipe_seq(conn.conn_id, |c| c.t3.is_none())
                } else {
                    self.first_pipe_seq(conn.conn_id, |c| c.server_done.is_none())
                };
                if found.is_none() {
                    self.stats.unmatched_responses += 1;
                }
                found
            }
        }
    }

    pub(super) fn first_pipe_seq(&self, conn_id: u64, pred: impl Fn(&Call) -> bool) -> Option<Key> {
        let cs = self.conns.get(&conn_id)?;
        cs.in_flight
            .values()
            .filter(|id| matches!(id, CallId::PipeSeq(_)))
            .map(|id| (conn_id, *id))
            .find(|k| self.calls.get(k).is_some_and(&pred))
    }

    // -----------------------------------------------------------------------
    // Progress and completion
}
