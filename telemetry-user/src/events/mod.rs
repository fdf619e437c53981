//! The design's event schema as typed Rust, and the bus every sink subscribes to.
//!
//! An event is `{"event": [...name], "time_unix_nano": N, "measurements": {...},
//! "metadata": {...}}`, the JSON shape of a `:telemetry.execute/3` call. Names are the
//! design's (`[:snakepit, :call, :stop]` becomes `["snakepit","call","stop"]`); names
//! and typed field names are spelled only in `schema`.
//!
//! The bus carries [`AgentEvent`]s: call, pool and worker-health events as structs
//! (`typed`), everything else as a by-name [`Event`]. Only `json` turns them into
//! JSON (for the JSON-lines and text sinks); the golden test in
//! `calls/tests/golden.rs` pins the output byte for byte.
mod bus;
pub mod json;
mod parse;
pub mod schema;
mod typed;

pub use bus::{Bus, BusReceiver};
pub use typed::{
    AgentEvent, CallEnd, CallOutcome, CallRecord, CallRef, CallStart, CircuitBreakerOpen, Handoff,
    HealthAlert, NameRef, PoolCheckin, PoolCheckout, PoolSize, SchedSplit, SerializeSplit,
    SerializeStop, Val, Visitor, WorkerCrash, WorkerSplit,
};

use serde::Serialize;
use serde_json::{Map, Value};
use std::time::{SystemTime, UNIX_EPOCH};

/// An event with its fields by name: Python's own telemetry and the agent's rarer
/// events travel so (`AgentEvent::Dynamic`); call, pool and worker-health events are
/// typed.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Event {
    #[serde(rename = "event")]
    pub name: Vec<String>,
    pub time_unix_nano: u64,
    pub measurements: Map<String, Value>,
    pub metadata: Map<String, Value>,
}

impl Event {
    pub fn new(name: &[&str]) -> Self {
        Event {
            name: name.iter().map(|s| s.to_string()).collect(),
            time_unix_nano: now_unix_nano(),
            measurements: Map::new(),
            metadata: Map::new(),
        }
    }

    pub fn measure(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.measurements.insert(key.to_string(), value.into());
        self
    }

    pub fn meta(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.metadata.insert(key.to_string(), value.into());
        self
    }

    /// Adds a metadata field only when there is a value (absent, not null, otherwise).
    pub fn meta_opt<V: Into<Value>>(self, key: &str, value: Option<V>) -> Self {
        match value {
            Some(v) => self.meta(key, v),
            None => self,
        }
    }

    pub fn at(mut self, time_unix_nano: u64) -> Self {
        self.time_unix_nano = time_unix_nano;
        self
    }

    /// `snakepit.agent.worker_exited` style dotted name for logs.
    pub fn dotted_name(&self) -> String {
        self.name.join(".")
    }

    pub fn is(&self, name: &[&str]) -> bool {
        self.name.len() == name.len() && self.name.iter().zip(name).all(|(a, b)| a == b)
    }
}

pub fn now_unix_nano() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

impl Event {
    /// Merges the fields of a serializable struct into metadata (e.g. a connection's
    /// description). Non-object values are ignored.
    pub fn meta_from<T: Serialize>(mut self, value: &T) -> Self {
        if let Ok(Value::Object(fields)) = serde_json::to_value(value) {
            for (k, v) in fields {
                if !v.is_null() {
                    self.metadata.insert(k, v);
                }
            }
        }
        self
    }
}

/// An untyped event as the bus carries it (tests build events by name).
#[cfg(test)]
pub fn to_typed(e: &Event) -> AgentEvent {
    e.clone().into()
}
