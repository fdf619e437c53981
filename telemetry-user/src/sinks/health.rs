//! What `/healthz` and `/readyz` answer, shared by the agent, its output sink and the
//! HTTP endpoint: lock-free flags the agent sets and the handlers read.
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

#[derive(Default)]
pub struct Health {
    probes_attached: AtomicBool,
    discovery_done: AtomicBool,
    output_errors: AtomicU64,
    /// Why the output sink stopped, once it has.
    output_failure: Mutex<Option<String>>,
    failed: Notify,
}

pub type SharedHealth = Arc<Health>;

impl Health {
    pub fn new() -> SharedHealth {
        Arc::new(Health::default())
    }

    pub fn set_probes_attached(&self) {
        self.probes_attached.store(true, Ordering::Relaxed);
    }

    pub fn set_discovery_done(&self) {
        self.discovery_done.store(true, Ordering::Relaxed);
    }

    /// The event output failed for good (full disk, closed pipe): health goes bad
    /// and whoever waits in [`Health::output_failed`] wakes up.
    pub fn fail_output(&self, why: String) {
        self.output_errors.fetch_add(1, Ordering::Relaxed);
        let mut f = self
            .output_failure
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if f.is_none() {
            *f = Some(why);
        }
        drop(f);
        self.failed.notify_waiters();
        self.failed.notify_one();
    }

    pub fn output_errors(&self) -> u64 {
        self.output_errors.load(Ordering::Relaxed)
    }

    pub fn output_failure(&self) -> Option<String> {
        self.output_failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Completes once the output has failed.
    pub async fn output_failed(&self) -> String {
        loop {
            let notified = self.failed.notified();
            if let Some(why) = self.output_failure() {
                return why;
            }
            notified.await;
        }
    }

    /// `Ok` while the process's sinks work; otherwise why not.
    pub fn healthy(&self) -> Result<(), String> {
        match self.output_failure() {
            Some(why) => Err(format!("event output failed: {why}")),
            None => Ok(()),
        }
    }

    /// `Ok` once the probes are attached and the first /proc discovery is done.
    pub fn ready(&self) -> Result<(), String> {
        self.healthy()?;
        if !self.probes_attached.load(Ordering::Relaxed) {
            return Err("probes not attached yet".into());
        }
        if !self.discovery_done.load(Ordering::Relaxed) {
            return Err("first discovery not done yet".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ready_needs_probes_and_discovery_and_a_working_output() {
        let h = Health::new();
        assert!(h.healthy().is_ok());
        assert!(h.ready().is_err());
        h.set_probes_attached();
        assert!(h.ready().is_err());
        h.set_discovery_done();
        assert!(h.ready().is_ok());
        let waiter = tokio::spawn({
            let h = h.clone();
            async move { h.output_failed().await }
        });
        h.fail_output("No space left on device".into());
        let why = tokio::time::timeout(std::time::Duration::from_secs(2), waiter)
            .await
            .expect("woken")
            .expect("joined");
        assert!(why.contains("No space"));
        assert!(h.healthy().is_err());
        assert!(h.ready().is_err());
        assert_eq!(h.output_errors(), 1);
    }
}
