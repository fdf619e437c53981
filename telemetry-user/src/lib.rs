//! snakepit-agent: eBPF observability for Snakepit deployments.
//!
//! Data flows one way: `kernel` (probes, ring-buffer reader, the one checked decode
//! point) -> `discovery` (which pid is a BEAM or a worker, which fd is which
//! connection) -> `wire` (HTTP/2, HPACK, gRPC, Snakepit messages, port packets) ->
//! `calls` (call reconstruction, pools, crashes) -> `events` (the design's schema on a
//! typed bus) -> `sinks` (JSON lines, logger, ...).
pub mod agent;
#[cfg(test)]
mod bench_support;
pub mod calls;
pub mod cli;
pub mod config;
pub mod discovery;
pub mod events;
pub mod fast_hash;
pub mod gpu;
pub mod kernel;
pub mod pipeline;
pub mod privileges;
pub mod profiler;
pub mod repro;
pub mod sinks;
pub mod streams;
pub mod wire;
pub mod worker_time;
