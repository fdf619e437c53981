//! What the call tracker is fed: decoded wire observations, each stamped with the
//! syscall that carried it and the connection it belongs to, plus lifecycle facts.
//! Produced by `crate::pipeline` (kernel records -> stream order -> wire decoders).
use crate::wire::grpc::{GrpcMessage, GrpcMetadata};
use serde::Serialize;
use std::sync::Arc;

/// Which process's syscall saw the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    Beam,
    Worker,
}

pub use crate::wire::Flow;

/// Who is the RPC client on this connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CallRole {
    /// The BEAM calls the worker's gRPC server (ExecuteTool, Heartbeat, Ping ...).
    BeamCallsWorker,
    /// The worker calls the BEAM's gRPC server (callbacks: InitializeSession, ...).
    WorkerCallsBeam,
    /// `{packet,4}` JSON over the port's pipes (BEAM writes requests to the worker's
    /// stdin, reads responses from its stdout).
    Pipe,
}

/// The connection an observation belongs to (shared, cheap to clone).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConnContext {
    /// Discovery's connection id (stable for the connection's life).
    pub conn_id: u64,
    pub role: CallRole,
    pub pool: Arc<str>,
    pub worker_id: Arc<str>,
    pub beam_pid: u32,
    pub worker_pid: u32,
    /// The worker's adapter module (`--adapter`), the `library` of plain tools.
    pub adapter: Option<String>,
}

/// One decoded observation.
#[derive(Debug, Clone)]
pub struct Observation {
    pub conn: Arc<ConnContext>,
    pub side: Side,
    /// Thread that made the syscall.
    pub tid: u32,
    /// Enter and exit times (CLOCK_MONOTONIC ns) of the syscall that carried the
    /// observation's last byte.
    pub ts_enter_ns: u64,
    pub ts_exit_ns: u64,
    pub what: Observed,
}

#[derive(Debug, Clone)]
pub enum Observed {
    /// A header block of a stream: the request's headers (Flow::Request), the
    /// response's headers, or the response trailers (`trailers`).
    Headers {
        flow: Flow,
        stream_id: u32,
        end_stream: bool,
        trailers: bool,
        metadata: GrpcMetadata,
    },
    /// A header block that could not be decoded (capture gap).
    HeadersLost {
        flow: Flow,
        stream_id: u32,
        end_stream: bool,
    },
    /// A gRPC message (its first bytes and full length).
    Message {
        flow: Flow,
        stream_id: u32,
        message: GrpcMessage,
    },
    /// END_STREAM in this flow (on DATA or HEADERS; also reported after Headers or
    /// Message from the same frame).
    EndStream { flow: Flow, stream_id: u32 },
    /// RST_STREAM sent in this flow.
    Reset {
        flow: Flow,
        stream_id: u32,
        code: u32,
    },
    /// The decoder lost frame sync on this flow: calls in flight on the connection
    /// may never see their ends from this side.
    SyncLost { flow: Flow },
    /// From a flow the other end decodes (decode-once): this side only read it, and
    /// this is when a frame of interest ended. Carries timing, never content: the
    /// call's method, result and errors come from the decoding side.
    Timing {
        flow: Flow,
        stream_id: u32,
        end: FrameEnd,
    },
    /// A `{packet,4}` request (BEAM -> worker stdin).
    PipeRequest {
        id: Option<i64>,
        command: Option<String>,
        args: Option<serde_json::Value>,
        len: usize,
    },
    /// A `{packet,4}` response (worker stdout -> BEAM).
    PipeResponse {
        id: Option<i64>,
        success: Option<bool>,
        error_type: Option<String>,
        error_message: Option<String>,
        len: usize,
    },
}

/// Which frame a `Observed::Timing` saw end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameEnd {
    /// A header block; `end_stream` for trailers or a request without a body.
    Headers { end_stream: bool },
    /// A DATA frame with END_STREAM.
    Stream,
    /// A whole gRPC message of `len` bytes (its length only).
    Message { len: usize },
}

/// Process-level facts the tracker needs besides the wire.
#[derive(Debug, Clone)]
pub enum Lifecycle {
    WorkerUp {
        pool: String,
        worker_id: String,
        worker_pid: u32,
        beam_pid: Option<u32>,
        ts_ns: u64,
    },
    WorkerExited {
        pool: String,
        worker_id: String,
        worker_pid: u32,
        exit_code: Option<i32>,
        signal: Option<i32>,
        /// The kernel's OOM killer chose it (a SIGKILL sent by the kernel).
        oom_killed: bool,
        ts_ns: u64,
    },
    ConnectionClosed {
        conn_id: u64,
        ts_ns: u64,
    },
}
