//! JSON lines: one event per line, `{"event": [...], "time_unix_nano": N,
//! "measurements": {...}, "metadata": {...}}`.
use crate::events::{json, AgentEvent, BusReceiver};
use std::io::Write;

/// Appends `event` and a newline to `out`.
pub fn write_event(out: &mut Vec<u8>, event: &AgentEvent) -> std::io::Result<()> {
    json::write_json(out, event)?;
    out.push(b'\n');
    Ok(())
}

/// Events written between two flushes at most.
const BATCH: usize = 512;

pub async fn run(rx: BusReceiver, out: Box<dyn Write + Send>) {
    if let Err(e) = try_run(rx, out).await {
        tracing::error!(error = %e, "writing JSON events failed; the sink stops");
    }
}

/// Writes until the bus closes; the first write error ends it (see `run_stream_sink`).
pub async fn try_run(mut rx: BusReceiver, mut out: Box<dyn Write + Send>) -> std::io::Result<()> {
    let mut lines = Vec::with_capacity(64 * 1024);
    while let Some(first) = rx.recv().await {
        // Whatever is already waiting goes out with it; then one flush, so a reader
        // tailing the file sees events as they happen without a write per event.
        lines.clear();
        write_event(&mut lines, &first)?;
        let mut n = 1;
        while n < BATCH {
            let Some(event) = rx.try_recv() else { break };
            write_event(&mut lines, &event)?;
            n += 1;
        }
        out.write_all(&lines)?;
        out.flush()?;
        if lines.capacity() > 1 << 20 {
            // A burst of large events: do not keep its buffer.
            lines = Vec::with_capacity(64 * 1024);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Event;

    #[test]
    fn line_has_the_documented_shape() {
        let ev = Event::new(&["snakepit", "agent", "worker_exited"])
            .at(7)
            .measure("exit_code", 0)
            .meta("signal", 9);
        let mut buf = Vec::new();
        write_event(&mut buf, &ev.into()).expect("write");
        let text = String::from_utf8(buf).expect("utf8");
        assert!(text.ends_with('\n'));
        let v: serde_json::Value = serde_json::from_str(text.trim()).expect("json");
        assert_eq!(
            v["event"],
            serde_json::json!(["snakepit", "agent", "worker_exited"])
        );
        assert_eq!(v["time_unix_nano"], 7);
        assert_eq!(v["measurements"]["exit_code"], 0);
        assert_eq!(v["metadata"]["signal"], 9);
    }
}
