//! JSON lines: one event per line, `{"event": [...], "time_unix_nano": N,
//! "measurements": {...}, "metadata": {...}}`.
use crate::events::{json, AgentEvent, BusReceiver};
use std::io::Write;
use std::time::Duration;
use tokio::time::Instant;

/// Appends `event` and a newline to `out`.
pub fn write_event(out: &mut Vec<u8>, event: &AgentEvent) -> std::io::Result<()> {
    json::write_json(out, event)?;
    out.push(b'\n');
    Ok(())
}

/// A write goes out once this many bytes are waiting...
const FLUSH_BYTES: usize = 256 * 1024;
/// ...or this long after the first event that waits. Every write to a file costs the
/// file system a fixed amount (ext4: the inode's mtime through the journal), about as
/// much as formatting the events it carries when it carries a few; a reader tailing
/// the file still sees each event within this delay.
const FLUSH_AFTER: Duration = Duration::from_millis(50);

pub async fn run(rx: BusReceiver, out: Box<dyn Write + Send>) {
    if let Err(e) = try_run(rx, out).await {
        tracing::error!(error = %e, "writing JSON events failed; the sink stops");
    }
}

/// Writes until the bus closes; the first write error ends it (see `run_stream_sink`).
/// Events are written in whole lines, at most `FLUSH_AFTER` after they arrive, all of
/// them when the bus closes.
pub async fn try_run(mut rx: BusReceiver, mut out: Box<dyn Write + Send>) -> std::io::Result<()> {
    let mut lines = Vec::with_capacity(FLUSH_BYTES + 64 * 1024);
    while let Some(first) = rx.recv().await {
        lines.clear();
        write_event(&mut lines, &first)?;
        let deadline = Instant::now() + FLUSH_AFTER;
        let mut open = true;
        while lines.len() < FLUSH_BYTES {
            if let Some(event) = rx.try_recv() {
                write_event(&mut lines, &event)?;
                continue;
            }
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(event)) => write_event(&mut lines, &event)?,
                Ok(None) => {
                    open = false;
                    break;
                }
                Err(_elapsed) => break,
            }
        }
        out.write_all(&lines)?;
        out.flush()?;
        if lines.capacity() > 4 * FLUSH_BYTES {
            // A burst of large events: do not keep its buffer.
            lines = Vec::with_capacity(FLUSH_BYTES + 64 * 1024);
        }
        if !open {
            break;
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

    /// A writer that counts its flushes and keeps what was written.
    #[derive(Clone, Default)]
    struct Recorder(std::sync::Arc<std::sync::Mutex<(Vec<u8>, usize)>>);

    impl Write for Recorder {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").0.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            self.0.lock().expect("lock").1 += 1;
            Ok(())
        }
    }

    impl Recorder {
        fn lines_and_flushes(&self) -> (usize, usize) {
            let g = self.0.lock().expect("lock");
            (g.0.iter().filter(|b| **b == b'\n').count(), g.1)
        }
    }

    #[test]
    fn events_go_out_in_few_writes_soon_after_they_arrive_and_all_at_close() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let bus = crate::events::Bus::new(4096);
            let out = Recorder::default();
            let sink = tokio::spawn(try_run(bus.subscribe(), Box::new(out.clone())));
            let event = || Event::new(&["snakepit", "agent", "worker_exited"]).at(1);
            // One event on an open bus: written within the flush delay.
            bus.publish(event());
            tokio::time::sleep(FLUSH_AFTER * 4).await;
            assert_eq!(out.lines_and_flushes(), (1, 1));
            // A burst: one write for all of it, not one per event.
            for _ in 0..1000 {
                bus.publish(event());
            }
            tokio::time::sleep(FLUSH_AFTER * 4).await;
            assert_eq!(out.lines_and_flushes(), (1001, 2));
            // Events still waiting when the bus closes are written before the sink ends.
            for _ in 0..10 {
                bus.publish(event());
            }
            drop(bus);
            sink.await.expect("join").expect("sink");
            assert_eq!(out.lines_and_flushes(), (1011, 3));
        });
    }
}
