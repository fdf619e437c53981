//! Every event name the agent emits, in one place (docs/events.md lists them too).
//! Agent-level topology events live under `["snakepit","agent",...]`; the design's own
//! events (`call`, `pool`, `worker`, ...) keep the design's names.

pub const AGENT_STARTED: &[&str] = &["snakepit", "agent", "started"];
pub const AGENT_STOPPED: &[&str] = &["snakepit", "agent", "stopped"];
/// Periodic and final: events read, ring-buffer drops and probe errors per probe.
pub const AGENT_STATS: &[&str] = &["snakepit", "agent", "stats"];
pub const BEAM_DISCOVERED: &[&str] = &["snakepit", "agent", "beam_discovered"];
pub const WORKER_DISCOVERED: &[&str] = &["snakepit", "agent", "worker_discovered"];
pub const WORKER_EXITED: &[&str] = &["snakepit", "agent", "worker_exited"];
pub const CONNECTION_OPENED: &[&str] = &["snakepit", "agent", "connection_opened"];
pub const CONNECTION_CLOSED: &[&str] = &["snakepit", "agent", "connection_closed"];
/// Per-connection I/O summary (periodic, at close and at agent stop).
pub const CONNECTION_IO: &[&str] = &["snakepit", "agent", "connection_io"];

pub const CALL_START: &[&str] = &["snakepit", "call", "start"];
pub const CALL_STOP: &[&str] = &["snakepit", "call", "stop"];
pub const CALL_EXCEPTION: &[&str] = &["snakepit", "call", "exception"];
pub const POOL_CHECKOUT: &[&str] = &["snakepit", "pool", "checkout"];
pub const POOL_CHECKIN: &[&str] = &["snakepit", "pool", "checkin"];
pub const POOL_SIZE: &[&str] = &["snakepit", "pool", "size"];
pub const SERIALIZE_STOP: &[&str] = &["snakepit", "serialize", "stop"];
pub const WORKER_CRASH: &[&str] = &["snakepit", "worker", "crash"];
pub const CIRCUIT_BREAKER_OPEN: &[&str] = &["snakepit", "circuit_breaker", "open"];
pub const HEALTH_ALERT: &[&str] = &["snakepit", "health", "alert"];
pub const BEAM_EXITED: &[&str] = &["snakepit", "agent", "beam_exited"];
/// A worker's gRPC LISTEN port became known after its discovery.
pub const WORKER_LISTENING: &[&str] = &["snakepit", "agent", "worker_listening"];

/// Python's own `:telemetry` events are re-emitted under this prefix.
pub const PYTHON_PREFIX: &[&str] = &["snakepit", "python"];
pub const ML_INFERENCE: &[&str] = &["snakepit", "ml", "inference"];
pub const ML_TRAIN_STEP: &[&str] = &["snakepit", "ml", "train_step"];
pub const ML_TENSOR_OP: &[&str] = &["snakepit", "ml", "tensor_op"];
pub const MEMORY_ALLOCATE: &[&str] = &["snakepit", "memory", "allocate"];
pub const MEMORY_RELEASE: &[&str] = &["snakepit", "memory", "release"];
/// GPU memory per device, per worker, and around a long call (docs/gpu.md).
pub const GPU_MEMORY: &[&str] = &["snakepit", "memory", "gpu"];
pub const GPU_WORKER_MEMORY: &[&str] = &["snakepit", "memory", "gpu_worker"];
pub const GPU_CALL_MEMORY: &[&str] = &["snakepit", "memory", "gpu_call"];

/// Field names of the typed events (measurements and metadata), spelled once.
pub mod field {
    pub const OPERATION: &str = "operation";
    pub const LIBRARY: &str = "library";
    pub const FUNCTION: &str = "function";
    pub const TOOL: &str = "tool";
    pub const SESSION_ID: &str = "session_id";
    pub const CORRELATION_ID: &str = "correlation_id";
    pub const POOL: &str = "pool";
    pub const WORKER_ID: &str = "worker_id";
    pub const BEAM_PID: &str = "beam_pid";
    pub const WORKER_PID: &str = "worker_pid";
    pub const WORKER_TID: &str = "worker_tid";
    pub const CONN_ID: &str = "conn_id";
    pub const TRANSPORT: &str = "transport";
    pub const STREAM_ID: &str = "stream_id";
    pub const REQUEST_ID: &str = "request_id";
    pub const INTERNAL: &str = "internal";
    pub const RESULT: &str = "result";
    pub const KIND: &str = "kind";
    pub const ERROR_TYPE: &str = "error_type";
    pub const ERROR_MESSAGE: &str = "error_message";
    pub const REASON: &str = "reason";
    pub const GRPC_STATUS: &str = "grpc_status";
    pub const SYSTEM_TIME: &str = "system_time";
    pub const MONOTONIC_TIME: &str = "monotonic_time";
    pub const DURATION: &str = "duration";
    pub const REQUEST_BYTES: &str = "request_bytes";
    pub const RESPONSE_BYTES: &str = "response_bytes";
    pub const QUEUE_TIME: &str = "queue_time";
    pub const PYTHON_TIME: &str = "python_time";
    /// Profiler (call.stop): CPU samples of the call's worker during the call, the
    /// innermost frame and the library most of them were in.
    pub const PYTHON_SAMPLES: &str = "python_samples";
    pub const HOT_FRAME: &str = "hot_frame";
    pub const HOT_LIBRARY: &str = "hot_library";
    pub const CHUNKS: &str = "chunks";
    pub const BUSY_TIME: &str = "busy_time";
    pub const SIZE: &str = "size";
    pub const BUSY: &str = "busy";
    pub const IDLE: &str = "idle";
    pub const IN_FLIGHT_CALLS: &str = "in_flight_calls";
    pub const TYPE: &str = "type";
    pub const EXIT_CODE: &str = "exit_code";
    pub const SIGNAL: &str = "signal";
    pub const OOM_KILLED: &str = "oom_killed";
    pub const FAILURE_COUNT: &str = "failure_count";
    pub const CRASH_COUNT: &str = "crash_count";
    pub const WINDOW_S: &str = "window_s";
    pub const ALERT_TYPE: &str = "alert_type";
    // Serialization and scheduling split of a call (call.stop, serialize.stop).
    pub const WORKER_TIME: &str = "worker_time";
    pub const DESERIALIZE_TIME: &str = "deserialize_time";
    pub const SERIALIZE_TIME: &str = "serialize_time";
    pub const ON_CPU_TIME: &str = "on_cpu_time";
    pub const RUNQUEUE_TIME: &str = "runqueue_time";
    pub const IO_WAIT_TIME: &str = "io_wait_time";
    pub const GIL_WAIT_TIME: &str = "gil_wait_time";
    pub const LOCK_WAIT_TIME: &str = "lock_wait_time";
    pub const SLEEP_TIME: &str = "sleep_time";
    pub const GPU_WAIT_TIME: &str = "gpu_wait_time";
    pub const BOUND: &str = "bound";
    pub const BYTES: &str = "bytes";
    pub const CALLS: &str = "calls";
    pub const DIRECTION: &str = "direction";
    pub const FORMAT: &str = "format";
}
