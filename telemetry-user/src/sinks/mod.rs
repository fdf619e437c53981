//! Sinks subscribe to the bus and write events somewhere. Adding one touches no other
//! stage.
pub mod health;
pub mod jsonl;
pub mod logger;
pub mod otlp;
pub mod output;
pub mod prometheus;
pub mod text;
pub mod web;

use crate::config::OutputFormat;
use crate::events::BusReceiver;
use std::io::Write;

/// Runs the stream sink for `format` until the bus closes. A write error (full disk,
/// closed pipe) stops it for good: said once, counted, and `health` goes bad so the
/// agent exits non-zero and `/healthz` fails.
pub async fn run_stream_sink(
    format: OutputFormat,
    rx: BusReceiver,
    out: Box<dyn Write + Send>,
    health: health::SharedHealth,
) {
    let result = match format {
        OutputFormat::Json => jsonl::try_run(rx, out).await,
        OutputFormat::Text => text::try_run(rx, out).await,
    };
    if let Err(e) = result {
        tracing::error!(error = %e, "writing events to the output failed; no more events are written there");
        health.fail_output(e.to_string());
    }
}
