//! Human-readable lines for a terminal: time, dotted event name, measurements, metadata.
use crate::events::{json, AgentEvent, BusReceiver};
use std::io::Write;

pub fn format_event(event: &AgentEvent) -> String {
    let t = event.time_unix_nano();
    let secs = t / 1_000_000_000;
    let millis = (t / 1_000_000) % 1000;
    let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
    let mut line = format!("{h:02}:{m:02}:{s:02}.{millis:03} {}", event.name().dotted());
    json::write_text_fields(&mut line, event);
    line
}

pub async fn run(rx: BusReceiver, out: Box<dyn Write + Send>) {
    if let Err(e) = try_run(rx, out).await {
        tracing::error!(error = %e, "writing text events failed; the sink stops");
    }
}

/// Writes until the bus closes; the first write error ends it (see `run_stream_sink`).
pub async fn try_run(mut rx: BusReceiver, mut out: Box<dyn Write + Send>) -> std::io::Result<()> {
    while let Some(first) = rx.recv().await {
        let mut result = writeln!(out, "{}", format_event(&first));
        while result.is_ok() {
            let Some(event) = rx.try_recv() else { break };
            result = writeln!(out, "{}", format_event(&event));
        }
        result.and_then(|_| out.flush())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Event;

    #[test]
    fn text_line_names_the_event_and_its_fields() {
        let ev = Event::new(&["snakepit", "agent", "worker_discovered"])
            .at(3_723_004_000_000)
            .meta("worker_id", "default_worker_1_x")
            .meta("pid", 42);
        assert_eq!(
            format_event(&ev.into()),
            "01:02:03.004 snakepit.agent.worker_discovered pid=42 worker_id=default_worker_1_x"
        );
    }
}
