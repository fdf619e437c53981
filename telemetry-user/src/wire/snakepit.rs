//! Snakepit's `snakepit.bridge.BridgeService` messages, written by hand from the
//! field tables in the facts file (no protoc), plus helpers for what the agent
//! reports: parameters as JSON, SnakeBridge library/function, tool error JSON,
//! and a guess of the RPC method from a message alone.
//!
//! Messages may be cut (we keep only a prefix of large messages), so decoding goes
//! through [`FieldScanner`], which walks the fields that are present and marks a
//! last field cut short, instead of relying on prost for partial bytes. The
//! complete fields form a valid message that prost decodes; the cut field is then
//! filled in by hand where it matters (tool name, a parameter, error text).
//!
//! Layout: this file holds the messages and the service's methods; `scanner` the
//! tolerant field scanner and partial decoding, `peek` the fast reads of the fields
//! the call tracker needs, `payload` parameters and errors as reported, `identify`
//! the method guessed from a message's shape.

use smallvec::SmallVec;
use std::collections::HashMap;

use super::WireError;

mod identify;
mod payload;
mod peek;
mod scanner;
#[cfg(test)]
mod tests;

pub use identify::identify_method;
pub use payload::*;
pub use peek::{peek_execute_tool_request, peek_tool_success, RequestPeek};
pub use scanner::*;

#[derive(Clone, PartialEq, prost::Message)]
pub struct Any {
    #[prost(string, tag = "1")]
    pub type_url: String,
    #[prost(bytes = "vec", tag = "2")]
    pub value: Vec<u8>,
}

#[derive(Clone, Copy, PartialEq, prost::Message)]
pub struct Timestamp {
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ExecuteToolRequest {
    #[prost(string, tag = "1")]
    pub session_id: String,
    #[prost(string, tag = "2")]
    pub tool_name: String,
    #[prost(map = "string, message", tag = "3")]
    pub parameters: HashMap<String, Any>,
    #[prost(map = "string, string", tag = "4")]
    pub metadata: HashMap<String, String>,
    #[prost(bool, tag = "5")]
    pub stream: bool,
    #[prost(map = "string, bytes", tag = "6")]
    pub binary_parameters: HashMap<String, Vec<u8>>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ExecuteToolResponse {
    #[prost(bool, tag = "1")]
    pub success: bool,
    #[prost(message, optional, tag = "2")]
    pub result: Option<Any>,
    #[prost(string, tag = "3")]
    pub error_message: String,
    #[prost(map = "string, string", tag = "4")]
    pub metadata: HashMap<String, String>,
    #[prost(int64, tag = "5")]
    pub execution_time_ms: i64,
    #[prost(bytes = "vec", tag = "6")]
    pub binary_result: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ToolChunk {
    #[prost(string, tag = "1")]
    pub chunk_id: String,
    #[prost(bytes = "vec", tag = "2")]
    pub data: Vec<u8>,
    #[prost(bool, tag = "3")]
    pub is_final: bool,
    #[prost(map = "string, string", tag = "4")]
    pub metadata: HashMap<String, String>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ExecuteElixirToolRequest {
    #[prost(string, tag = "1")]
    pub session_id: String,
    #[prost(string, tag = "2")]
    pub tool_name: String,
    #[prost(map = "string, message", tag = "3")]
    pub parameters: HashMap<String, Any>,
    #[prost(map = "string, string", tag = "4")]
    pub metadata: HashMap<String, String>,
}

/// Same fields as [`ExecuteToolResponse`].
pub type ExecuteElixirToolResponse = ExecuteToolResponse;

#[derive(Clone, PartialEq, prost::Message)]
pub struct PingRequest {
    #[prost(string, tag = "1")]
    pub message: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PingResponse {
    #[prost(string, tag = "1")]
    pub message: String,
    #[prost(message, optional, tag = "2")]
    pub server_time: Option<Timestamp>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct HeartbeatRequest {
    #[prost(string, tag = "1")]
    pub session_id: String,
    #[prost(message, optional, tag = "2")]
    pub client_time: Option<Timestamp>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct HeartbeatResponse {
    #[prost(message, optional, tag = "1")]
    pub server_time: Option<Timestamp>,
    #[prost(bool, tag = "2")]
    pub session_valid: bool,
}

/// The facts file does not list SessionConfig's fields; unknown fields are skipped.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SessionConfig {}

#[derive(Clone, PartialEq, prost::Message)]
pub struct InitializeSessionRequest {
    #[prost(string, tag = "1")]
    pub session_id: String,
    #[prost(map = "string, string", tag = "2")]
    pub metadata: HashMap<String, String>,
    #[prost(message, optional, tag = "3")]
    pub config: Option<SessionConfig>,
}

/// Only the name; the other fields are skipped.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ToolRegistration {
    #[prost(string, tag = "1")]
    pub name: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct RegisterToolsRequest {
    #[prost(string, tag = "1")]
    pub session_id: String,
    #[prost(message, repeated, tag = "2")]
    pub tools: Vec<ToolRegistration>,
    #[prost(string, tag = "3")]
    pub worker_id: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct TelemetryValue {
    #[prost(oneof = "telemetry_value::Value", tags = "1, 2, 3")]
    pub value: Option<telemetry_value::Value>,
}

pub mod telemetry_value {
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Value {
        #[prost(int64, tag = "1")]
        IntValue(i64),
        #[prost(double, tag = "2")]
        FloatValue(f64),
        #[prost(string, tag = "3")]
        StringValue(String),
    }
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct TelemetryEvent {
    #[prost(string, repeated, tag = "1")]
    pub event_parts: Vec<String>,
    #[prost(map = "string, message", tag = "2")]
    pub measurements: HashMap<String, TelemetryValue>,
    #[prost(map = "string, string", tag = "3")]
    pub metadata: HashMap<String, String>,
    #[prost(int64, tag = "4")]
    pub timestamp_ns: i64,
    #[prost(string, tag = "5")]
    pub correlation_id: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct TelemetryToggle {
    #[prost(bool, tag = "1")]
    pub enabled: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct TelemetrySampling {
    #[prost(double, tag = "1")]
    pub sampling_rate: f64,
    #[prost(string, repeated, tag = "2")]
    pub event_patterns: Vec<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct TelemetryFilter {
    #[prost(string, repeated, tag = "1")]
    pub allow: Vec<String>,
    #[prost(string, repeated, tag = "2")]
    pub deny: Vec<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct TelemetryControl {
    #[prost(oneof = "telemetry_control::Control", tags = "1, 2, 3")]
    pub control: Option<telemetry_control::Control>,
}

pub mod telemetry_control {
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Control {
        #[prost(message, tag = "1")]
        Toggle(super::TelemetryToggle),
        #[prost(message, tag = "2")]
        Sampling(super::TelemetrySampling),
        #[prost(message, tag = "3")]
        Filter(super::TelemetryFilter),
    }
}

/// RPC methods of `snakepit.bridge.BridgeService`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    Ping,
    InitializeSession,
    CleanupSession,
    GetSession,
    Heartbeat,
    ExecuteTool,
    ExecuteStreamingTool,
    RegisterTools,
    GetExposedElixirTools,
    ExecuteElixirTool,
    StreamTelemetry,
}

pub const SERVICE: &str = "snakepit.bridge.BridgeService";

impl Method {
    pub const ALL: [Method; 11] = [
        Method::Ping,
        Method::InitializeSession,
        Method::CleanupSession,
        Method::GetSession,
        Method::Heartbeat,
        Method::ExecuteTool,
        Method::ExecuteStreamingTool,
        Method::RegisterTools,
        Method::GetExposedElixirTools,
        Method::ExecuteElixirTool,
        Method::StreamTelemetry,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Method::Ping => "Ping",
            Method::InitializeSession => "InitializeSession",
            Method::CleanupSession => "CleanupSession",
            Method::GetSession => "GetSession",
            Method::Heartbeat => "Heartbeat",
            Method::ExecuteTool => "ExecuteTool",
            Method::ExecuteStreamingTool => "ExecuteStreamingTool",
            Method::RegisterTools => "RegisterTools",
            Method::GetExposedElixirTools => "GetExposedElixirTools",
            Method::ExecuteElixirTool => "ExecuteElixirTool",
            Method::StreamTelemetry => "StreamTelemetry",
        }
    }

    pub fn from_name(name: &str) -> Option<Method> {
        Method::ALL.into_iter().find(|m| m.as_str() == name)
    }

    /// From a `:path` such as `/snakepit.bridge.BridgeService/ExecuteTool`.
    pub fn from_path(path: &str) -> Option<Method> {
        let rest = path
            .strip_prefix('/')?
            .strip_prefix(SERVICE)?
            .strip_prefix('/')?;
        Method::from_name(rest)
    }
}

/// Which way a message travels on its call: from the RPC's client to its server
/// (`Request`) or back (`Response`). Not the kernel's [`crate::kernel::Direction`],
/// which is which way bytes move through one process's fd.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Flow {
    Request,
    Response,
}
