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

use smallvec::SmallVec;
use std::collections::HashMap;

use super::WireError;

mod peek;
pub use peek::{peek_execute_tool_request, peek_tool_success, RequestPeek};

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

/// Which way a message travels on its call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    Request,
    Response,
}

// ---------------------------------------------------------------------------
// Tolerant field scanner

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldValue<'a> {
    Varint(u64),
    Fixed64(u64),
    Fixed32(u32),
    /// Length-delimited. `data.len() < declared` when the message was cut.
    Len {
        data: &'a [u8],
        declared: usize,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScannedField<'a> {
    pub number: u32,
    pub value: FieldValue<'a>,
    /// Byte range of the whole field (key included) in the scanned buffer.
    pub start: usize,
    pub end: usize,
}

impl<'a> ScannedField<'a> {
    pub fn is_truncated(&self) -> bool {
        matches!(self.value, FieldValue::Len { data, declared } if data.len() < declared)
    }

    pub fn bytes(&self) -> Option<&'a [u8]> {
        match self.value {
            FieldValue::Len { data, .. } => Some(data),
            _ => None,
        }
    }

    pub fn varint(&self) -> Option<u64> {
        match self.value {
            FieldValue::Varint(v) => Some(v),
            _ => None,
        }
    }
}

/// Walks the fields of a (possibly cut) protobuf message. Stops at the end, at a
/// cut (setting `truncated`; a cut length-delimited field is still yielded with
/// the bytes present) or at malformed bytes (setting `malformed`).
#[derive(Debug, Clone)]
pub struct FieldScanner<'a> {
    buf: &'a [u8],
    pos: usize,
    pub truncated: bool,
    pub malformed: bool,
    /// End of the last complete field.
    pub complete_end: usize,
}

impl<'a> FieldScanner<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        FieldScanner {
            buf,
            pos: 0,
            truncated: false,
            malformed: false,
            complete_end: 0,
        }
    }

    /// Scans everything, returning the fields (on the stack up to 8: the agent's
    /// messages have fewer top-level fields, and several scans run per message).
    pub fn collect_all(buf: &'a [u8]) -> (SmallVec<[ScannedField<'a>; 8]>, FieldScanner<'a>) {
        let mut s = FieldScanner::new(buf);
        let fields: SmallVec<[ScannedField<'a>; 8]> = s.by_ref().collect();
        (fields, s)
    }

    fn varint(&mut self) -> Option<Result<u64, ()>> {
        let mut v: u64 = 0;
        for i in 0..10 {
            let b = self.buf.get(self.pos)?;
            self.pos += 1;
            if i == 9 && *b > 1 {
                return Some(Err(()));
            }
            v |= ((b & 0x7f) as u64) << (7 * i);
            if b & 0x80 == 0 {
                return Some(Ok(v));
            }
        }
        Some(Err(()))
    }
}

impl<'a> Iterator for FieldScanner<'a> {
    type Item = ScannedField<'a>;

    fn next(&mut self) -> Option<ScannedField<'a>> {
        if self.truncated || self.malformed || self.pos >= self.buf.len() {
            return None;
        }
        let start = self.pos;
        let key = match self.varint() {
            None => {
                self.truncated = true;
                return None;
            }
            Some(Err(())) => {
                self.malformed = true;
                return None;
            }
            Some(Ok(k)) => k,
        };
        let number = (key >> 3) as u32;
        if number == 0 || key >> 3 > 0x1fff_ffff {
            self.malformed = true;
            return None;
        }
        let value = match key & 7 {
            0 => match self.varint() {
                None => {
                    self.truncated = true;
                    return None;
                }
                Some(Err(())) => {
                    self.malformed = true;
                    return None;
                }
                Some(Ok(v)) => FieldValue::Varint(v),
            },
            1 => match self.buf.get(self.pos..self.pos + 8) {
                Some(b) => {
                    self.pos += 8;
                    let mut a = [0u8; 8];
                    a.copy_from_slice(b);
                    FieldValue::Fixed64(u64::from_le_bytes(a))
                }
                None => {
                    self.truncated = true;
                    return None;
                }
            },
            5 => match self.buf.get(self.pos..self.pos + 4) {
                Some(b) => {
                    self.pos += 4;
                    FieldValue::Fixed32(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                }
                None => {
                    self.truncated = true;
                    return None;
                }
            },
            2 => {
                let len = match self.varint() {
                    None => {
                        self.truncated = true;
                        return None;
                    }
                    Some(Err(())) => {
                        self.malformed = true;
                        return None;
                    }
                    Some(Ok(l)) => l,
                };
                let declared = usize::try_from(len).unwrap_or(usize::MAX);
                let avail = self.buf.len() - self.pos;
                let take = declared.min(avail);
                let data = &self.buf[self.pos..self.pos + take];
                self.pos += take;
                if take < declared {
                    self.truncated = true;
                }
                FieldValue::Len { data, declared }
            }
            _ => {
                // Groups (3, 4) are not used by these protos; 6 and 7 are invalid.
                self.malformed = true;
                return None;
            }
        };
        let f = ScannedField {
            number,
            value,
            start,
            end: self.pos,
        };
        if !f.is_truncated() {
            self.complete_end = self.pos;
        }
        Some(f)
    }
}

/// A message decoded from a possibly cut buffer.
#[derive(Debug, Clone, PartialEq)]
pub struct Partial<T> {
    pub msg: T,
    /// The buffer was cut: fields after the cut are missing, the cut one may be
    /// partly filled in.
    pub truncated: bool,
    /// Number of the field that was cut, if it was a length-delimited one.
    pub cut_field: Option<u32>,
}

/// Decodes the complete fields of `buf` with prost and returns the cut field.
fn decode_complete<T: prost::Message + Default>(
    buf: &[u8],
) -> Result<(T, bool, Option<ScannedField<'_>>), WireError> {
    let (fields, scan) = FieldScanner::collect_all(buf);
    if scan.malformed {
        return Err(WireError::Protobuf("malformed field"));
    }
    let cut = fields.last().filter(|f| f.is_truncated()).copied();
    let msg =
        T::decode(&buf[..scan.complete_end]).map_err(|_| WireError::Protobuf("invalid message"))?;
    Ok((msg, scan.truncated, cut))
}

/// Generic prefix decoding: complete fields only.
pub fn decode_prefix<T: prost::Message + Default>(buf: &[u8]) -> Result<Partial<T>, WireError> {
    let (msg, truncated, cut) = decode_complete::<T>(buf)?;
    Ok(Partial {
        msg,
        truncated,
        cut_field: cut.map(|f| f.number),
    })
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn partial_any(data: &[u8]) -> Any {
    let mut any = Any::default();
    for f in FieldScanner::new(data) {
        match (f.number, f.value) {
            (1, FieldValue::Len { data, .. }) => any.type_url = lossy(data),
            (2, FieldValue::Len { data, .. }) => any.value = data.to_vec(),
            _ => {}
        }
    }
    any
}

/// ExecuteToolRequest (also ExecuteElixirToolRequest) from a possibly cut buffer.
/// A session id, tool name, parameter or metadata entry cut by the copy limit stays
/// out (empty / absent, `cut_field` says which): a prefix reported as the value
/// would be wrong.
pub fn decode_execute_tool_request(buf: &[u8]) -> Result<Partial<ExecuteToolRequest>, WireError> {
    let (msg, truncated, cut) = decode_complete::<ExecuteToolRequest>(buf)?;
    Ok(Partial {
        msg,
        truncated,
        cut_field: cut.map(|f| f.number),
    })
}

/// ExecuteToolResponse (also ExecuteElixirToolResponse) from a possibly cut buffer.
pub fn decode_execute_tool_response(buf: &[u8]) -> Result<Partial<ExecuteToolResponse>, WireError> {
    let (mut msg, truncated, cut) = decode_complete::<ExecuteToolResponse>(buf)?;
    if let Some(f) = cut {
        let data = f.bytes().unwrap_or_default();
        match f.number {
            2 => msg.result = Some(partial_any(data)),
            3 => msg.error_message = lossy(data),
            6 => msg.binary_result = data.to_vec(),
            _ => {}
        }
    }
    Ok(Partial {
        msg,
        truncated,
        cut_field: cut.map(|f| f.number),
    })
}

/// ToolChunk from a possibly cut buffer.
pub fn decode_tool_chunk(buf: &[u8]) -> Result<Partial<ToolChunk>, WireError> {
    let (mut msg, truncated, cut) = decode_complete::<ToolChunk>(buf)?;
    if let Some(f) = cut {
        let data = f.bytes().unwrap_or_default();
        match f.number {
            1 => msg.chunk_id = lossy(data),
            2 => msg.data = data.to_vec(),
            _ => {}
        }
    }
    Ok(Partial {
        msg,
        truncated,
        cut_field: cut.map(|f| f.number),
    })
}

// ---------------------------------------------------------------------------
// Payload helpers

/// A parameter's JSON value (`Any.value` holds raw JSON text). None when the
/// bytes are not complete JSON (cut, or not JSON at all).
pub fn param_json(any: &Any) -> Option<serde_json::Value> {
    serde_json::from_slice(&any.value).ok()
}

/// All parameters that parse as JSON.
pub fn parameters_json(req: &ExecuteToolRequest) -> HashMap<String, serde_json::Value> {
    req.parameters
        .iter()
        .filter_map(|(k, v)| param_json(v).map(|j| (k.clone(), j)))
        .collect()
}

/// A parameter as text: a JSON string's content, other JSON as written, or the raw
/// bytes when not JSON.
pub fn param_text(any: &Any) -> String {
    match param_json(any) {
        Some(serde_json::Value::String(s)) => s,
        Some(v) => v.to_string(),
        None => lossy(&any.value),
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SnakeBridgeCall {
    pub library: Option<String>,
    pub function: Option<String>,
    pub python_module: Option<String>,
    pub call_type: Option<String>,
    pub class: Option<String>,
    pub streaming: bool,
}

/// Whether `tool_name` is a SnakeBridge call: Some(streaming).
pub fn snakebridge_kind(tool_name: &str) -> Option<bool> {
    match tool_name {
        "snakebridge.call" => Some(false),
        "snakebridge.stream" => Some(true),
        _ => None,
    }
}

/// For `snakebridge.call` / `snakebridge.stream`, the wrapped library and function.
pub fn snakebridge_call(req: &ExecuteToolRequest) -> Option<SnakeBridgeCall> {
    let streaming = snakebridge_kind(&req.tool_name)?;
    let get = |k: &str| {
        req.parameters
            .get(k)
            .map(param_text)
            .filter(|s| !s.is_empty())
    };
    Some(SnakeBridgeCall {
        library: get("library"),
        function: get("function"),
        python_module: get("python_module"),
        call_type: get("call_type"),
        class: get("class"),
        streaming,
    })
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ToolError {
    pub error_type: Option<String>,
    pub message: Option<String>,
}

/// Parses a failing tool's `error_message` JSON (`type`, `message`). Falls back to
/// scanning for those keys when the text is cut; plain text becomes the message.
pub fn parse_tool_error(text: &str) -> ToolError {
    if let Ok(serde_json::Value::Object(o)) = serde_json::from_str::<serde_json::Value>(text) {
        let s = |k: &str| o.get(k).and_then(|v| v.as_str()).map(str::to_string);
        return ToolError {
            error_type: s("type"),
            message: s("message"),
        };
    }
    if text.trim_start().starts_with('{') {
        return ToolError {
            error_type: json_string_field(text, "type"),
            message: json_string_field(text, "message"),
        };
    }
    ToolError {
        error_type: None,
        message: (!text.is_empty()).then(|| text.to_string()),
    }
}

/// Finds `"key": "<string>"` in (possibly cut) JSON text and decodes the string.
/// Only for top-level-looking keys in small objects: a nested key with the same
/// name may match first.
pub fn json_string_field(text: &str, key: &str) -> Option<String> {
    let pat = format!("\"{key}\"");
    let mut from = 0;
    while let Some(i) = text.get(from..)?.find(&pat) {
        let after = from + i + pat.len();
        let rest = text.get(after..)?.trim_start();
        if let Some(rest) = rest.strip_prefix(':') {
            let rest = rest.trim_start();
            if rest.starts_with('"') {
                // Find the closing quote, honouring escapes.
                let bytes = rest.as_bytes();
                let mut j = 1;
                while j < bytes.len() {
                    match bytes[j] {
                        b'\\' => j += 2,
                        b'"' => {
                            return serde_json::from_str::<String>(rest.get(..=j)?).ok();
                        }
                        _ => j += 1,
                    }
                }
                return None;
            }
        }
        from = after;
    }
    None
}

/// Finds `"key": <number>` in (possibly cut) JSON text.
pub fn json_number_field(text: &str, key: &str) -> Option<i64> {
    let pat = format!("\"{key}\"");
    let i = text.find(&pat)?;
    let rest = text
        .get(i + pat.len()..)?
        .trim_start()
        .strip_prefix(':')?
        .trim_start();
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '-'))
        .unwrap_or(rest.len());
    rest.get(..end)?.parse().ok()
}

// ---------------------------------------------------------------------------
// Method identification

fn is_identifier(b: &[u8]) -> bool {
    !b.is_empty()
        && b.len() <= 256
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-' | b':' | b'/'))
}

fn is_printable(b: &[u8]) -> bool {
    std::str::from_utf8(b)
        .is_ok_and(|s| !s.chars().any(|c| c.is_control() && c != '\n' && c != '\t'))
}

/// A complete Timestamp: only fields 1 and 2, both varints.
fn is_timestamp(b: &[u8]) -> bool {
    let (fields, scan) = FieldScanner::collect_all(b);
    !scan.malformed
        && !scan.truncated
        && fields
            .iter()
            .all(|f| matches!((f.number, f.value), (1 | 2, FieldValue::Varint(_))))
}

/// A map<string, _> entry: field 1 a string key, field 2 anything length-delimited.
fn is_map_entry(b: &[u8]) -> bool {
    let (fields, scan) = FieldScanner::collect_all(b);
    !scan.malformed
        && fields
            .iter()
            .all(|f| matches!(f.value, FieldValue::Len { .. }) && f.number <= 2)
        && fields
            .first()
            .is_some_and(|f| f.number == 1 && f.bytes().is_some_and(is_printable))
}

fn complete_bytes<'a>(f: &ScannedField<'a>) -> Option<&'a [u8]> {
    f.bytes().filter(|_| !f.is_truncated())
}

/// Guesses the RPC method from one message's bytes (a prefix is fine) when the
/// `:path` is unknown (we joined after the HEADERS).
///
/// Heuristics, by shape (field numbers and wire types) since proto3 has no type tag:
/// - Requests: field 2 an identifier-like string => ExecuteTool (ExecuteStreamingTool
///   if field 5 is true). Field 2 a Timestamp-shaped message => Heartbeat. Field 2
///   map entries and no worker id => InitializeSession; field 2 messages plus a
///   field 3 identifier string => RegisterTools. Only field 1, printable => Ping.
///   Oneof 1/2/3 holding a message => StreamTelemetry (TelemetryControl).
/// - Responses: field 1 a varint, or field 2 an Any (`type_url` with a `/`) or field
///   3 text => ExecuteTool. Field 1 a string with a `-<n>` suffix => streaming
///   ToolChunk. Field 1 Timestamp / field 2 varint => Heartbeat. Field 1 string and
///   field 2 Timestamp => Ping. Field 4 a varint or repeated field 1 strings with
///   field 2/3 maps => StreamTelemetry (TelemetryEvent).
///
/// Limits: ExecuteElixirTool has the same shapes as ExecuteTool (reported as
/// ExecuteTool; the connection's direction tells them apart). CleanupSession and
/// GetSession requests (a session id only) look like Ping. Empty messages, and
/// responses with every field at its default, say nothing: None.
pub fn identify_method(direction: Direction, bytes: &[u8]) -> Option<Method> {
    let (fields, scan) = FieldScanner::collect_all(bytes);
    if scan.malformed || fields.is_empty() {
        return None;
    }
    let get = |n: u32| fields.iter().find(|f| f.number == n);
    let all_in = |allowed: &[(u32, u8)]| {
        fields.iter().all(|f| {
            let wt = match f.value {
                FieldValue::Varint(_) => 0,
                FieldValue::Fixed64(_) => 1,
                FieldValue::Len { .. } => 2,
                FieldValue::Fixed32(_) => 5,
            };
            allowed.contains(&(f.number, wt))
        })
    };
    match direction {
        Direction::Request => {
            if all_in(&[(1, 2), (2, 2), (3, 2), (4, 2), (5, 0), (6, 2)]) {
                if let Some(name) = get(2).and_then(|f| complete_bytes(f)) {
                    if is_identifier(name)
                        && get(1).is_none_or(|f| f.bytes().is_some_and(is_printable))
                    {
                        let streaming = get(5).and_then(|f| f.varint()) == Some(1);
                        return Some(if streaming {
                            Method::ExecuteStreamingTool
                        } else {
                            Method::ExecuteTool
                        });
                    }
                    if is_timestamp(name) && all_in(&[(1, 2), (2, 2)]) {
                        return Some(Method::Heartbeat);
                    }
                }
            }
            if all_in(&[(1, 2), (2, 2), (3, 2)]) && get(2).is_some() {
                let worker_id = get(3)
                    .and_then(|f| complete_bytes(f))
                    .is_some_and(is_identifier);
                let entries_are_maps = fields
                    .iter()
                    .filter(|f| f.number == 2)
                    .filter_map(|f| complete_bytes(f))
                    .all(is_map_entry);
                return Some(if worker_id || !entries_are_maps {
                    Method::RegisterTools
                } else {
                    Method::InitializeSession
                });
            }
            if fields.len() == 1 {
                let f = &fields[0];
                if let Some(b) = f.bytes() {
                    if f.number == 1 && is_printable(b) {
                        return Some(Method::Ping);
                    }
                    if (1..=3).contains(&f.number) {
                        let (_, s) = FieldScanner::collect_all(b);
                        if !s.malformed {
                            return Some(Method::StreamTelemetry);
                        }
                    }
                }
            }
            None
        }
        Direction::Response => {
            if get(4).is_some_and(|f| f.varint().is_some())
                && all_in(&[(1, 2), (2, 2), (3, 2), (4, 0), (5, 2)])
            {
                return Some(Method::StreamTelemetry);
            }
            if get(1).is_some_and(|f| f.varint().is_some())
                && all_in(&[(1, 0), (2, 2), (3, 2), (4, 2), (5, 0), (6, 2)])
            {
                return Some(Method::ExecuteTool);
            }
            if get(2).is_some_and(|f| f.varint().is_some()) && all_in(&[(1, 2), (2, 0)]) {
                return Some(Method::Heartbeat);
            }
            if all_in(&[(1, 2)])
                && get(1)
                    .and_then(|f| complete_bytes(f))
                    .is_some_and(is_timestamp)
            {
                return Some(Method::Heartbeat);
            }
            if all_in(&[(1, 2), (2, 2), (3, 0), (4, 2)]) {
                if let Some(id) = get(1).and_then(|f| complete_bytes(f)) {
                    let chunk_like = std::str::from_utf8(id).ok().is_some_and(|s| {
                        s.rsplit_once('-').is_some_and(|(_, n)| {
                            !n.is_empty() && n.bytes().all(|c| c.is_ascii_digit())
                        })
                    });
                    if chunk_like || get(3).is_some() {
                        return Some(Method::ExecuteStreamingTool);
                    }
                    if is_printable(id)
                        && all_in(&[(1, 2), (2, 2)])
                        && get(2)
                            .and_then(|f| complete_bytes(f))
                            .is_none_or(is_timestamp)
                    {
                        return Some(Method::Ping);
                    }
                }
                let repeated_strings = fields.iter().filter(|f| f.number == 1).count() > 1;
                if repeated_strings {
                    return Some(Method::StreamTelemetry);
                }
            }
            if all_in(&[(1, 0), (2, 2), (3, 2), (4, 2), (5, 0), (6, 2)]) {
                let any_like = get(2)
                    .and_then(|f| f.bytes())
                    .and_then(|b| FieldScanner::new(b).next())
                    .and_then(|f| if f.number == 1 { f.bytes() } else { None })
                    .is_some_and(|t| t.contains(&b'/'));
                if any_like || get(3).is_some() || get(5).is_some() {
                    return Some(Method::ExecuteTool);
                }
            }
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn any(json: &str) -> Any {
        Any {
            type_url: "type.googleapis.com/google.protobuf.StringValue".into(),
            value: json.as_bytes().to_vec(),
        }
    }

    fn snakebridge_request(big: usize) -> ExecuteToolRequest {
        let mut parameters = HashMap::new();
        parameters.insert("library".to_string(), any("\"numpy\""));
        parameters.insert("function".to_string(), any("\"mean\""));
        parameters.insert(
            "args".to_string(),
            any(&format!("[{}]", "1,".repeat(big) + "1")),
        );
        ExecuteToolRequest {
            session_id: "sess-1".into(),
            tool_name: "snakebridge.call".into(),
            parameters,
            ..Default::default()
        }
    }

    #[test]
    fn roundtrip_and_snakebridge() {
        let req = snakebridge_request(3);
        let bytes = req.encode_to_vec();
        let p = decode_execute_tool_request(&bytes).unwrap();
        assert!(!p.truncated);
        assert_eq!(p.msg, req);
        let sb = snakebridge_call(&p.msg).unwrap();
        assert_eq!(sb.library.as_deref(), Some("numpy"));
        assert_eq!(sb.function.as_deref(), Some("mean"));
        assert!(!sb.streaming);
        assert_eq!(
            parameters_json(&p.msg)["args"],
            serde_json::json!([1, 1, 1, 1])
        );
        assert_eq!(
            identify_method(Direction::Request, &bytes),
            Some(Method::ExecuteTool)
        );
    }

    #[test]
    fn truncated_request_keeps_what_is_present() {
        let req = snakebridge_request(500_000);
        let bytes = req.encode_to_vec();
        assert!(bytes.len() > 1_000_000);
        for cut in [3usize, 10, 20, 30, 64, 4096] {
            let p = decode_execute_tool_request(&bytes[..cut]).unwrap();
            assert!(p.truncated);
            if cut >= 30 {
                assert_eq!(p.msg.session_id, "sess-1");
                assert_eq!(p.msg.tool_name, "snakebridge.call");
                assert_eq!(
                    identify_method(Direction::Request, &bytes[..cut]),
                    Some(Method::ExecuteTool)
                );
            }
        }
        // Cut inside the tool name: absent, and `cut_field` says so.
        let p = decode_execute_tool_request(&bytes[..14]).unwrap();
        assert_eq!(p.cut_field, Some(2));
        assert_eq!(p.msg.tool_name, "", "a cut name is never reported");
        assert_eq!(p.msg.session_id, "sess-1");
        let p = decode_execute_tool_request(&bytes[..5]).unwrap();
        assert_eq!(p.cut_field, Some(1));
        assert_eq!(p.msg.session_id, "", "a cut session id is never reported");
    }

    /// The issue's cases: a 1 MB session id, a 20-character tool name cut after 17,
    /// a 200k-deep JSON `library`: none of them is reported from a prefix.
    #[test]
    fn values_cut_by_the_copy_limit_are_absent_never_wrong() {
        let mut parameters = HashMap::new();
        let deep = format!("{}{}", "[".repeat(200_000), "]".repeat(200_000));
        parameters.insert(
            "library".to_string(),
            Any {
                type_url: "type.googleapis.com/google.protobuf.StringValue".into(),
                value: deep.into_bytes(),
            },
        );
        parameters.insert("function".to_string(), any("\"mean\""));
        let req = ExecuteToolRequest {
            session_id: "s".repeat(1 << 20),
            tool_name: "snakebridge.call".into(),
            parameters: parameters.clone(),
            ..Default::default()
        };
        let bytes = req.encode_to_vec();
        let p = decode_execute_tool_request(&bytes[..4096]).unwrap();
        assert_eq!(p.cut_field, Some(1));
        assert_eq!(p.msg.session_id, "");
        assert_eq!(p.msg.tool_name, "");

        let req = ExecuteToolRequest {
            session_id: "sess".into(),
            tool_name: "tool_5014_abcdefghij".into(),
            ..Default::default()
        };
        let bytes = req.encode_to_vec();
        let cut = bytes.len() - 3;
        let p = decode_execute_tool_request(&bytes[..cut]).unwrap();
        assert_eq!((p.cut_field, p.msg.tool_name.as_str()), (Some(2), ""));

        let req = ExecuteToolRequest {
            session_id: "sess".into(),
            tool_name: "snakebridge.call".into(),
            parameters,
            ..Default::default()
        };
        let bytes = req.encode_to_vec();
        let p = decode_execute_tool_request(&bytes[..4096]).unwrap();
        assert_eq!(p.msg.tool_name, "snakebridge.call");
        let sb = snakebridge_call(&p.msg).expect("snakebridge call");
        assert_eq!(sb.library, None, "a cut library is absent");
    }

    #[test]
    fn truncated_response_error_text() {
        let err = r#"{"type":"ValueError","message":"bad \"input\"","stacktrace":["a","b"],"traceback":"long..."}"#;
        let resp = ExecuteToolResponse {
            success: false,
            error_message: err.into(),
            execution_time_ms: 12,
            ..Default::default()
        };
        let bytes = resp.encode_to_vec();
        let full = decode_execute_tool_response(&bytes).unwrap();
        let e = parse_tool_error(&full.msg.error_message);
        assert_eq!(e.error_type.as_deref(), Some("ValueError"));
        assert_eq!(e.message.as_deref(), Some("bad \"input\""));
        let cut = decode_execute_tool_response(&bytes[..60]).unwrap();
        assert_eq!(cut.cut_field, Some(3));
        let e = parse_tool_error(&cut.msg.error_message);
        assert_eq!(e.error_type.as_deref(), Some("ValueError"));
        assert_eq!(e.message.as_deref(), Some("bad \"input\""));
        assert_eq!(parse_tool_error("plain").message.as_deref(), Some("plain"));
    }

    #[test]
    fn identify_shapes() {
        use Direction::*;
        let ts = Some(Timestamp {
            seconds: 1_700_000_000,
            nanos: 5,
        });
        let cases: Vec<(Direction, Vec<u8>, Option<Method>)> = vec![
            (
                Request,
                PingRequest {
                    message: "health".into(),
                }
                .encode_to_vec(),
                Some(Method::Ping),
            ),
            (
                Request,
                HeartbeatRequest {
                    session_id: "s1".into(),
                    client_time: ts,
                }
                .encode_to_vec(),
                Some(Method::Heartbeat),
            ),
            (
                Request,
                ExecuteToolRequest {
                    session_id: "s".into(),
                    tool_name: "stream_data".into(),
                    stream: true,
                    ..Default::default()
                }
                .encode_to_vec(),
                Some(Method::ExecuteStreamingTool),
            ),
            (
                Request,
                RegisterToolsRequest {
                    session_id: "s".into(),
                    tools: vec![ToolRegistration { name: "add".into() }],
                    worker_id: "default_worker_1_123".into(),
                }
                .encode_to_vec(),
                Some(Method::RegisterTools),
            ),
            (
                Request,
                InitializeSessionRequest {
                    session_id: "s".into(),
                    metadata: [("k".to_string(), "v".to_string())].into(),
                    config: None,
                }
                .encode_to_vec(),
                Some(Method::InitializeSession),
            ),
            (
                Request,
                TelemetryControl {
                    control: Some(telemetry_control::Control::Toggle(TelemetryToggle {
                        enabled: true,
                    })),
                }
                .encode_to_vec(),
                Some(Method::StreamTelemetry),
            ),
            (
                Response,
                ExecuteToolResponse {
                    success: true,
                    result: Some(Any {
                        type_url: "type.googleapis.com/snakepit.float".into(),
                        value: b"2.5".to_vec(),
                    }),
                    ..Default::default()
                }
                .encode_to_vec(),
                Some(Method::ExecuteTool),
            ),
            (
                Response,
                ExecuteToolResponse {
                    success: false,
                    error_message: "{}".into(),
                    ..Default::default()
                }
                .encode_to_vec(),
                Some(Method::ExecuteTool),
            ),
            (
                Response,
                ToolChunk {
                    chunk_id: "stream_data-3".into(),
                    data: b"{}".to_vec(),
                    ..Default::default()
                }
                .encode_to_vec(),
                Some(Method::ExecuteStreamingTool),
            ),
            (
                Response,
                PingResponse {
                    message: "pong".into(),
                    server_time: ts,
                }
                .encode_to_vec(),
                Some(Method::Ping),
            ),
            (
                Response,
                HeartbeatResponse {
                    server_time: ts,
                    session_valid: true,
                }
                .encode_to_vec(),
                Some(Method::Heartbeat),
            ),
            (
                Response,
                TelemetryEvent {
                    event_parts: vec!["python".into(), "call".into(), "start".into()],
                    timestamp_ns: 1_700_000_000_000_000_000,
                    ..Default::default()
                }
                .encode_to_vec(),
                Some(Method::StreamTelemetry),
            ),
            (Request, vec![], None),
            (Response, vec![0xff, 0xff], None),
        ];
        for (dir, bytes, want) in cases {
            assert_eq!(identify_method(dir, &bytes), want, "{dir:?} {bytes:?}");
        }
    }

    #[test]
    fn scanner_malformed_and_cut() {
        // Wire type 7: malformed.
        assert!(decode_prefix::<PingRequest>(&[0x0f]).is_err());
        // Cut varint key.
        let p = decode_prefix::<HeartbeatResponse>(&[0x10, 0x01, 0x0a]).unwrap();
        assert!(p.truncated);
        assert!(p.msg.session_valid);
        // Huge declared length on a tiny buffer.
        let p = decode_tool_chunk(&[0x12, 0xff, 0xff, 0xff, 0xff, 0x0f, 1, 2]).unwrap();
        assert_eq!(p.msg.data, vec![1, 2]);
        let ev = TelemetryEvent {
            event_parts: vec!["a".into()],
            measurements: [(
                "d".to_string(),
                TelemetryValue {
                    value: Some(telemetry_value::Value::FloatValue(1.5)),
                },
            )]
            .into(),
            ..Default::default()
        };
        let b = ev.encode_to_vec();
        assert_eq!(decode_prefix::<TelemetryEvent>(&b).unwrap().msg, ev);
    }

    #[test]
    fn methods_from_path() {
        assert_eq!(
            Method::from_path("/snakepit.bridge.BridgeService/ExecuteStreamingTool"),
            Some(Method::ExecuteStreamingTool)
        );
        assert_eq!(Method::from_path("/other.Service/Ping"), None);
    }
}
