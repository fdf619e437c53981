//! SIGHUP: the configuration is read again and what can change on a running agent
//! is applied without touching the probes: the call tracker's thresholds, sampling
//! and ML rules, the logger's slow-call threshold, and the OTLP exporter (flushed
//! and replaced). Sections that need a restart (capture, discovery, output, http,
//! gpu) are named in a warning when changed.
use super::Agent;
use crate::config::Config;
use crate::events::{Bus, Event};
use crate::sinks;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The OTLP sink's task, and what stops it early (a reload replacing it).
pub struct OtlpTask {
    handle: JoinHandle<()>,
    stop: oneshot::Sender<()>,
}

impl OtlpTask {
    pub fn spawn(cfg: sinks::otlp::OtlpConfig, bus: &Bus) -> OtlpTask {
        let (stop, stopped) = oneshot::channel::<()>();
        let handle = tokio::spawn(sinks::otlp::run_until(cfg, bus.subscribe(), stopped));
        OtlpTask { handle, stop }
    }

    /// Stops it: it exports no event after this, flushes what it holds and ends in
    /// the background (the agent's loop does not wait for the collector).
    fn replace(self) {
        let _ = self.stop.send(());
        tokio::spawn(async move {
            let _ = self.handle.await;
        });
    }

    /// Waits for its end (the bus closing); it flushes first.
    pub async fn finish(self) {
        let OtlpTask { handle, stop } = self;
        let _ = handle.await;
        drop(stop);
    }
}

/// `["snakepit","agent","reloaded"]`: a SIGHUP was applied (docs/events.md).
pub const AGENT_RELOADED: &[&str] = &["snakepit", "agent", "reloaded"];

/// Builds the new configuration (the file read again, the same flags applied).
pub type Reloader = Box<dyn Fn() -> anyhow::Result<Config> + Send>;

/// Sections of `new` that differ from `old` and are only read at start.
pub fn restart_only_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    let same = |a: &dyn erased::Ser, b: &dyn erased::Ser| a.json() == b.json();
    let mut out = Vec::new();
    for (name, a, b) in [
        (
            "capture",
            &old.capture as &dyn erased::Ser,
            &new.capture as &dyn erased::Ser,
        ),
        ("discovery", &old.discovery, &new.discovery),
        ("output", &old.output, &new.output),
        ("http", &old.http, &new.http),
        ("gpu", &old.gpu, &new.gpu),
        ("profile", &old.profile, &new.profile),
    ] {
        if !same(a, b) {
            out.push(name);
        }
    }
    out
}

/// Comparing config sections through their serialized form (they are not `PartialEq`).
mod erased {
    pub trait Ser {
        fn json(&self) -> serde_json::Value;
    }
    impl<T: serde::Serialize> Ser for T {
        fn json(&self) -> serde_json::Value {
            serde_json::to_value(self).unwrap_or_default()
        }
    }
}

impl Agent {
    pub(super) fn reload(&mut self, reloader: &Reloader) {
        let new = match reloader() {
            Ok(cfg) => cfg,
            Err(e) => {
                tracing::error!(
                    "SIGHUP: the new configuration is invalid, keeping the running one: {}",
                    crate::cli::error_line(&e)
                );
                return;
            }
        };
        let not_applied = restart_only_changes(&self.config, &new);
        if !not_applied.is_empty() {
            tracing::warn!(
                sections = ?not_applied,
                "SIGHUP: these sections changed and take effect at the next restart"
            );
        }
        self.tracker.reconfigure(new.calls.clone());
        let otlp_changed = erased::Ser::json(&self.config.otlp) != erased::Ser::json(&new.otlp);
        if otlp_changed {
            // Stopped before the new one subscribes: no event goes to both.
            let old =
                std::mem::replace(&mut self.otlp, OtlpTask::spawn(new.otlp.clone(), &self.bus));
            old.replace();
        }
        self.logger.abort();
        self.logger = tokio::spawn(sinks::logger::run(
            self.bus.subscribe(),
            sinks::logger::LoggerConfig {
                slow_call_ms: new.calls.slow_call_ms,
            },
        ));
        let applied = serde_json::json!({
            "slow_call_ms": new.calls.slow_call_ms,
            "sample_rate": new.calls.sample_rate,
            "ml_rules": new.calls.ml_rules.len(),
        });
        self.config.calls = new.calls;
        self.config.otlp = new.otlp;
        tracing::info!("SIGHUP: configuration reloaded (probes kept)");
        self.bus.publish(
            Event::new(AGENT_RELOADED)
                .meta("calls", applied)
                .meta("otlp_restarted", otlp_changed)
                .meta("not_applied", not_applied),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_only_sections_are_named_and_calls_are_not() {
        let old = Config::default();
        let mut new = Config::default();
        assert!(restart_only_changes(&old, &new).is_empty());
        new.calls.sample_rate = 0.5;
        new.calls.slow_call_ms = 5;
        assert!(restart_only_changes(&old, &new).is_empty());
        new.otlp.enabled = true;
        assert!(
            restart_only_changes(&old, &new).is_empty(),
            "otlp is reloaded"
        );
        new.capture.bytes = 100;
        new.http.enabled = true;
        assert_eq!(restart_only_changes(&old, &new), vec!["capture", "http"]);
    }
}
