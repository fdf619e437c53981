//! Limits that keep hostile or stuck HTTP clients from growing the agent: a cap on
//! connections and on live streams (refusals counted), and a socket wrapper that ends
//! a connection whose client stopped reading (its writes pending too long), so what
//! it holds is freed instead of piling up.
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// Counters of the endpoint's own protection, exported on `/metrics`.
#[derive(Default)]
pub struct Limits {
    pub connections: AtomicUsize,
    pub streams: AtomicUsize,
    pub refused_connections: AtomicU64,
    pub refused_streams: AtomicU64,
    pub slow_clients_dropped: AtomicU64,
    pub unauthorized: AtomicU64,
}

impl Limits {
    /// Takes one of `max` slots of `gauge`, or `None` (refusal counted in `refused`).
    pub fn take(
        self: &Arc<Self>,
        gauge: fn(&Limits) -> &AtomicUsize,
        refused: fn(&Limits) -> &AtomicU64,
        max: usize,
    ) -> Option<Slot> {
        let g = gauge(self);
        let won = g
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok();
        if !won {
            refused(self).fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(Slot {
            limits: self.clone(),
            gauge,
        })
    }

    /// The counters as OpenMetrics text (before the registry's `# EOF`).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let gauges: [(&str, &str, u64); 2] = [
            (
                "snakepit_agent_http_connections",
                "Open HTTP connections to the agent's endpoint.",
                self.connections.load(Ordering::Relaxed) as u64,
            ),
            (
                "snakepit_agent_http_event_streams",
                "Open live-page event streams.",
                self.streams.load(Ordering::Relaxed) as u64,
            ),
        ];
        for (name, help, v) in gauges {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}\n"
            ));
        }
        let counters: [(&str, &str, &AtomicU64); 4] = [
            (
                "snakepit_agent_http_refused_connections",
                "HTTP connections closed at once: http.max_connections were open.",
                &self.refused_connections,
            ),
            (
                "snakepit_agent_http_refused_event_streams",
                "Live-page streams refused (503): http.max_event_streams were open.",
                &self.refused_streams,
            ),
            (
                "snakepit_agent_http_slow_clients_dropped",
                "HTTP connections ended because the client stopped reading.",
                &self.slow_clients_dropped,
            ),
            (
                "snakepit_agent_http_unauthorized",
                "HTTP requests refused for a missing or wrong bearer token.",
                &self.unauthorized,
            ),
        ];
        for (name, help, c) in counters {
            let v = c.load(Ordering::Relaxed);
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} counter\n{name}_total {v}\n"
            ));
        }
        out
    }
}

/// One taken slot; dropping it gives it back.
pub struct Slot {
    limits: Arc<Limits>,
    gauge: fn(&Limits) -> &AtomicUsize,
}

impl Drop for Slot {
    fn drop(&mut self) {
        (self.gauge)(&self.limits).fetch_sub(1, Ordering::AcqRel);
    }
}

/// A socket whose writes may stay blocked at most `limit`: then the write fails,
/// which ends the connection (and frees its buffers). Counted as a slow client.
pub struct StallGuard<S> {
    inner: S,
    limit: Duration,
    stalled: Option<Pin<Box<Sleep>>>,
    limits: Arc<Limits>,
}

impl<S> StallGuard<S> {
    pub fn new(inner: S, limit: Duration, limits: Arc<Limits>) -> Self {
        StallGuard {
            inner,
            limit,
            stalled: None,
            limits,
        }
    }

    fn on_write<T>(
        &mut self,
        polled: Poll<io::Result<T>>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<T>> {
        if polled.is_ready() {
            self.stalled = None;
            return polled;
        }
        let limit = self.limit;
        let sleep = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        if sleep.as_mut().poll(cx).is_ready() {
            self.limits
                .slow_clients_dropped
                .fetch_add(1, Ordering::Relaxed);
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the HTTP client stopped reading",
            )));
        }
        Poll::Pending
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for StallGuard<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for StallGuard<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.on_write(polled, cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.on_write(polled, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_flush(cx);
        this.on_write(polled, cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
