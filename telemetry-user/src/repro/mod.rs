//! Repro scripts for failed calls (the design's "Repro Script Generator").
//!
//! The tracker hands this module each user call's request message as the agent saw it
//! on the wire ([`Repro::request`]); the bytes wait in a bounded store
//! ([`payload::PayloadStore`]) until the call ends. When it fails (`result: error`,
//! an exception, the worker dying), the limiter decides whether a script may be
//! written and a writer thread renders `snakepit_repro_<time>_<function>_<corr>.py`
//! (0600, directory 0700) with the payload, secrets redacted ([`redact`]), and a
//! `reproduce()` that calls the tool the way the worker does ([`render`]).
//! Successful calls only free their bytes: the hot path is one copy of the request
//! message and one hash insert.
pub mod chunks;
pub mod limit;
pub mod payload;
pub mod pyrepr;
pub mod redact;
pub mod render;
mod worker;
pub mod writer;

#[cfg(test)]
mod tests;

use crate::events::{Bus, Event};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;

pub use payload::{PayloadStore, StoredRequest};
pub use worker::WorkerInfo;

/// `[:snakepit, :repro, :written]`: a script was written (metadata `path`).
pub const REPRO_WRITTEN: &[&str] = &["snakepit", "repro", "written"];
/// `[:snakepit, :repro, :skipped]`: a failed call got no script (metadata `reason`).
pub const REPRO_SKIPPED: &[&str] = &["snakepit", "repro", "skipped"];
/// File names: `snakepit_repro_<time>_<function>_<correlation>.py`.
pub const FILE_PREFIX: &str = "snakepit_repro_";

#[derive(Debug, thiserror::Error)]
pub enum ReproError {
    #[error("creating the repro directory {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("writing repro script {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("reading repro directory {path}: {source}")]
    List {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no repro script matches {0:?}")]
    NotFound(String),
}

/// The `[repro]` table of the agent configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReproConfig {
    /// Write a script for every failed user call (the design's `repro_on_error`).
    pub repro_on_error: bool,
    /// Where scripts go (created 0700 by the agent).
    pub directory: PathBuf,
    /// Request bytes kept per call; a bigger request gives a script marked truncated.
    pub max_payload_bytes: u64,
    /// Request bytes kept for all calls in flight together.
    pub max_inflight_bytes: u64,
    /// Scripts in the directory at most (existing ones count).
    pub max_files: u64,
    /// Scripts written per minute at most; the rest are counted as skipped.
    pub max_per_minute: u32,
    /// Keys (case-insensitive substrings) whose values are redacted.
    pub redact_keys: Vec<String>,
}

impl Default for ReproConfig {
    fn default() -> Self {
        ReproConfig {
            repro_on_error: true,
            directory: PathBuf::from("/var/lib/snakepit-agent/repro"),
            max_payload_bytes: 1 << 20,
            max_inflight_bytes: 64 << 20,
            max_files: 1000,
            max_per_minute: 60,
            redact_keys: ["password", "secret", "token", "api_key", "authorization"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
        }
    }
}

/// How a failed call ended, as the script reports it.
#[derive(Debug, Clone, PartialEq)]
pub enum Failure {
    /// The tool failed (`result: error`): the worker's error JSON, when sent.
    ToolError {
        error_type: Option<String>,
        message: Option<String>,
    },
    /// A non-OK gRPC status or a reset (`call.exception`, kind `error`).
    Status { error_type: String, reason: String },
    /// The worker or its connection died under the call.
    WorkerDied { reason: String },
}

/// What the tracker knows of a failed call when it ends.
#[derive(Debug, Clone)]
pub struct FailedCall {
    pub seq: u64,
    pub time_unix_nano: u64,
    pub operation: String,
    pub tool: Option<String>,
    pub library: Option<String>,
    pub function: Option<String>,
    pub session_id: Option<String>,
    pub correlation_id: Option<String>,
    pub pool: String,
    pub worker_id: String,
    pub worker_pid: u32,
    pub failure: Failure,
}

/// The tracker's handle: the payload store, the limiter and the writer's queue.
pub struct Repro {
    cfg: Arc<ReproConfig>,
    store: PayloadStore,
    workers: worker::WorkerCache,
    limiter: limit::Limiter,
    writer: writer::WriterHandle,
    bus: Bus,
}

impl Repro {
    /// Starts the writer thread; `None` when `repro_on_error` is off.
    pub fn start(cfg: ReproConfig, bus: Bus) -> Option<Repro> {
        if !cfg.repro_on_error {
            return None;
        }
        let cfg = Arc::new(cfg);
        let existing = writer::count_scripts(&cfg.directory);
        Some(Repro {
            store: PayloadStore::new(cfg.max_payload_bytes, cfg.max_inflight_bytes),
            workers: worker::WorkerCache::new(PathBuf::from("/proc")),
            limiter: limit::Limiter::new(cfg.max_files, cfg.max_per_minute, existing),
            writer: writer::WriterHandle::start(cfg.clone(), bus.clone()),
            cfg,
            bus,
        })
    }

    pub fn config(&self) -> &ReproConfig {
        &self.cfg
    }

    /// A user call's request message (`data` = its captured prefix, `len` = its
    /// declared length), keyed by the tracker's call sequence number.
    pub fn request(&mut self, seq: u64, worker_pid: u32, data: &[u8], len: usize) {
        self.workers.note(worker_pid);
        self.store.insert(seq, data, len);
    }

    /// The call's `grpc-timeout` request header (a deadline to reproduce).
    pub fn grpc_timeout(&mut self, seq: u64, timeout: &str) {
        self.store.set_timeout(seq, timeout);
    }

    /// The worker's error text (`ExecuteToolResponse.error_message`, or grpc-message).
    pub fn error_text(&mut self, seq: u64, text: &str) {
        self.store.set_error_text(seq, text);
    }

    /// A call ended without a script to write (ok, internal, dropped).
    pub fn discard(&mut self, seq: u64) {
        self.store.remove(seq);
    }

    /// A user call failed: queue its script, or count why not.
    pub fn failed(&mut self, call: FailedCall) {
        let stored = self.store.remove(call.seq);
        // `{packet,4}` port workers have no adapter to import: only gRPC tool calls.
        if call.operation == crate::calls::PIPE_OPERATION {
            self.skipped(&call, "pipe_call");
            return;
        }
        if let Err(reason) = self.limiter.admit(std::time::Instant::now()) {
            self.skipped(&call, reason);
            return;
        }
        let worker = self.workers.get(call.worker_pid);
        let job = writer::Job {
            call,
            stored,
            worker,
        };
        if let Err(job) = self.writer.send(job) {
            self.limiter.unadmit();
            self.skipped(&job.call, "queue_full");
        }
    }

    fn skipped(&self, call: &FailedCall, reason: &'static str) {
        self.bus.publish(
            Event::new(REPRO_SKIPPED)
                .at(call.time_unix_nano)
                .meta("reason", reason)
                .meta("pool", call.pool.clone())
                .meta("worker_id", call.worker_id.clone())
                .meta_opt("correlation_id", call.correlation_id.clone())
                .meta_opt(
                    "function",
                    call.function.clone().or_else(|| call.tool.clone()),
                ),
        );
    }

    /// Bytes held for calls in flight now.
    pub fn held_bytes(&self) -> u64 {
        self.store.held_bytes()
    }
}

/// The gRPC decoder's settings with repro on: messages are kept up to
/// `max_payload_bytes` from their start (as far as their bytes were captured).
pub fn grpc_config(cfg: &ReproConfig) -> crate::wire::grpc::GrpcConfig {
    let mut g = crate::wire::grpc::GrpcConfig::default();
    if cfg.repro_on_error {
        g.keep_prefix = g.keep_prefix.max(cfg.max_payload_bytes as usize);
    }
    g
}
