//! A broadcast bus: every sink gets every event. A sink too slow to keep up loses the
//! oldest events *for itself only*, and the loss is counted (never silent).
use super::AgentEvent;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::broadcast;

#[derive(Clone)]
pub struct Bus {
    tx: broadcast::Sender<Arc<AgentEvent>>,
    lagged: Arc<AtomicU64>,
}

impl Bus {
    pub fn new(capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(capacity.max(16));
        Bus {
            tx,
            lagged: Arc::new(AtomicU64::new(0)),
        }
    }

    pub fn publish(&self, event: impl Into<AgentEvent>) {
        // No subscriber is not an error: the event simply has no sink.
        let _ = self.tx.send(Arc::new(event.into()));
    }

    pub fn subscribe(&self) -> BusReceiver {
        BusReceiver {
            rx: self.tx.subscribe(),
            lagged: self.lagged.clone(),
        }
    }

    /// Events lost by slow sinks, summed over sinks.
    pub fn lagged(&self) -> u64 {
        self.lagged.load(Ordering::Relaxed)
    }
}

pub struct BusReceiver {
    rx: broadcast::Receiver<Arc<AgentEvent>>,
    lagged: Arc<AtomicU64>,
}

impl BusReceiver {
    /// An event already waiting, without blocking (None: nothing waiting right now,
    /// or closed). Lets a sink batch its writes.
    pub fn try_recv(&mut self) -> Option<Arc<AgentEvent>> {
        loop {
            match self.rx.try_recv() {
                Ok(ev) => return Some(ev),
                Err(broadcast::error::TryRecvError::Lagged(n)) => {
                    self.lagged.fetch_add(n, Ordering::Relaxed);
                    tracing::warn!(
                        lost = n,
                        "a sink fell behind the event bus; events lost for it"
                    );
                }
                Err(_) => return None,
            }
        }
    }

    /// Next event, or None once the bus is closed and drained.
    pub async fn recv(&mut self) -> Option<Arc<AgentEvent>> {
        loop {
            match self.rx.recv().await {
                Ok(ev) => return Some(ev),
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    self.lagged.fetch_add(n, Ordering::Relaxed);
                    tracing::warn!(
                        lost = n,
                        "a sink fell behind the event bus; events lost for it"
                    );
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Event;

    #[tokio::test]
    async fn every_subscriber_gets_every_event_and_lag_is_counted() {
        let bus = Bus::new(16);
        let mut a = bus.subscribe();
        let mut slow = bus.subscribe();
        for i in 0..40u64 {
            bus.publish(Event::new(&["snakepit", "test"]).measure("i", i));
        }
        for i in 0..16u64 {
            let ev = a.recv().await;
            assert!(ev.is_some());
            let _ = i;
        }
        // `slow` lost the 24 oldest events; it is told, and the loss is counted.
        let first = slow.recv().await.expect("event");
        assert_eq!(first.dynamic().expect("dynamic").measurements["i"], 24);
        assert_eq!(bus.lagged(), 24 + 24);
    }
}
