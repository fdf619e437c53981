//! Sinks subscribe to the bus and write events somewhere. Adding one touches no other
//! stage.
pub mod jsonl;
pub mod logger;
pub mod otlp;
pub mod prometheus;
pub mod text;
pub mod web;

use crate::config::OutputFormat;
use crate::events::BusReceiver;
use std::io::Write;

/// Runs the stream sink for `format` until the bus closes.
pub async fn run_stream_sink(format: OutputFormat, rx: BusReceiver, out: Box<dyn Write + Send>) {
    match format {
        OutputFormat::Json => jsonl::run(rx, out).await,
        OutputFormat::Text => text::run(rx, out).await,
    }
}
