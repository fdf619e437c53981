//! The agent's HTTP endpoint, one listener: `/metrics` (OpenMetrics text for
//! Prometheus), `/` (the live page, plain HTML+JS, no external assets), `/events`
//! (server-sent events carrying the page's state) and `/api/state` (the same state as
//! JSON). One task consumes the bus and updates both the metrics and the page state.
pub mod live;
mod profile;

use crate::events::BusReceiver;
use crate::sinks::prometheus::{self, Metrics, MetricsConfig};
use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use live::{Live, LiveSizes};
use serde::{Deserialize, Serialize};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("binding the HTTP listener on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("reading the HTTP listener's address: {0}")]
    LocalAddr(std::io::Error),
}

/// The `[http]` table of the agent configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Serve at all (the `--http-listen` flag also turns it on).
    pub enabled: bool,
    /// Where `/metrics` and the live page listen.
    pub listen: SocketAddr,
    /// Upper bounds (seconds) of the duration histograms: call duration, queue time,
    /// python time, inference duration.
    pub histogram_buckets: Vec<f64>,
    /// Distinct values per label (function, library, error type, ...) before the
    /// rest are exported as `other`.
    pub label_value_cap: usize,
    /// Live page history: rows in the recent-calls and recent-errors tables, GPU
    /// memory samples kept per device (or per worker).
    pub recent_calls: usize,
    pub recent_errors: usize,
    pub gpu_samples: usize,
    /// How often the live page receives a new state (when something changed).
    pub page_update_ms: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            enabled: false,
            listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
            histogram_buckets: prometheus::default_buckets(),
            label_value_cap: 500,
            recent_calls: 100,
            recent_errors: 50,
            gpu_samples: 600,
            page_update_ms: 500,
        }
    }
}

impl HttpConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.label_value_cap == 0 {
            return Err("http.label_value_cap must be at least 1".into());
        }
        if self
            .histogram_buckets
            .iter()
            .any(|b| !b.is_finite() || *b <= 0.0)
        {
            return Err("http.histogram_buckets must be positive, finite seconds".into());
        }
        if self.recent_calls == 0 || self.recent_errors == 0 || self.gpu_samples < 2 {
            return Err("http.recent_calls/recent_errors must be >= 1, gpu_samples >= 2".into());
        }
        Ok(())
    }
}

/// What the bus consumer updates and the HTTP handlers read.
struct State {
    metrics: Metrics,
    live: Live,
}

struct Shared {
    state: Mutex<State>,
    /// The live page's latest state as JSON, refreshed every `page_update_ms`.
    snapshot: watch::Receiver<Arc<String>>,
    /// The Python stack sampler's samples, when it runs (`/debug/pprof/...`).
    profile: Option<crate::profiler::ProfileHandle>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain counters behind: still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A bound, not yet serving, HTTP endpoint (bind first, so a taken port fails the
/// agent's start rather than a background task).
pub struct Server {
    cfg: HttpConfig,
    listener: TcpListener,
    addr: SocketAddr,
    profile: Option<crate::profiler::ProfileHandle>,
}

impl Server {
    pub async fn bind(cfg: HttpConfig) -> Result<Server, HttpError> {
        let listener = TcpListener::bind(cfg.listen)
            .await
            .map_err(|source| HttpError::Bind {
                addr: cfg.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(HttpError::LocalAddr)?;
        Ok(Server {
            cfg,
            listener,
            addr,
            profile: None,
        })
    }

    /// Serves the profiler's samples under `/debug/pprof/`.
    pub fn with_profile(mut self, profile: Option<crate::profiler::ProfileHandle>) -> Self {
        self.profile = profile;
        self
    }

    /// The bound address (the real port when `listen` had port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Consumes `rx` and serves until `shutdown` completes. The bus closing ends only
    /// the consumer: the last values stay scrapeable until shutdown.
    pub async fn run(
        self,
        mut rx: BusReceiver,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), HttpError> {
        let cfg = self.cfg;
        let state = State {
            metrics: Metrics::new(&MetricsConfig {
                buckets: cfg.histogram_buckets.clone(),
                label_value_cap: cfg.label_value_cap,
            }),
            live: Live::new(LiveSizes {
                recent_calls: cfg.recent_calls,
                recent_errors: cfg.recent_errors,
                gpu_samples: cfg.gpu_samples,
            }),
        };
        let first = Arc::new(state.live.snapshot().to_string());
        let (snap_tx, snap_rx) = watch::channel(first);
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            snapshot: snap_rx,
            profile: self.profile.clone(),
        });
        let mut tasks = JoinSet::new();
        let consumer = shared.clone();
        tasks.spawn(async move {
            while let Some(ev) = rx.recv().await {
                let mut st = consumer.lock();
                st.metrics.observe(&ev);
                st.live.observe(&ev);
            }
        });
        let snapshots = shared.clone();
        let every = Duration::from_millis(cfg.page_update_ms.max(50));
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(every);
            let mut sent = 0;
            loop {
                tick.tick().await;
                let json = {
                    let st = snapshots.lock();
                    if st.live.version() == sent {
                        continue;
                    }
                    sent = st.live.version();
                    st.live.snapshot().to_string()
                };
                if snap_tx.send(Arc::new(json)).is_err() {
                    return;
                }
            }
        });
        tracing::info!(addr = %self.addr, "serving /metrics and the live page");
        let mut conns = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        let shared = shared.clone();
                        conns.spawn(async move {
                            let svc = hyper::service::service_fn(move |req| {
                                let shared = shared.clone();
                                async move { Ok::<_, Infallible>(route(&shared, req).await) }
                            });
                            let io = hyper_util::rt::TokioIo::new(stream);
                            if let Err(e) = hyper::server::conn::http1::Builder::new()
                                .serve_connection(io, svc)
                                .await
                            {
                                tracing::debug!(error = %e, "HTTP connection ended with an error");
                            }
                        });
                    }
                    Err(e) => {
                        // Out of fds and the like: pause rather than spin.
                        tracing::warn!(error = %e, "accepting an HTTP connection failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
        // Live-page streams never end by themselves: close every connection.
        conns.abort_all();
        tasks.abort_all();
        Ok(())
    }
}

/// Binds `cfg.listen` and serves until `shutdown` (see [`Server`]).
pub async fn serve(
    cfg: HttpConfig,
    rx: BusReceiver,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), HttpError> {
    Server::bind(cfg).await?.run(rx, shutdown).await
}

type Body = BoxBody<Bytes, Infallible>;

const PAGE: &str = include_str!("page.html");
const INITIAL_MARK: &str = "/*INITIAL_STATE*/null";
const MAX_HOLD_MS: u64 = 30_000;
const HOLD_SVG: &str = r#"<svg xmlns="http://www.w3.org/2000/svg" width="1" height="1"/>"#;

async fn route(shared: &Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
    }
    match req.uri().path() {
        "/metrics" => {
            let text = shared.lock().metrics.encode();
            match text {
                Ok(t) => full(StatusCode::OK, prometheus::CONTENT_TYPE, t),
                Err(e) => plain(StatusCode::INTERNAL_SERVER_ERROR, &format!("{e}\n")),
            }
        }
        "/" | "/index.html" => {
            // The first state is inlined so the page shows data before its stream opens.
            let json = shared.snapshot.borrow().clone();
            let page = PAGE.replacen(INITIAL_MARK, &script_safe(&json), 1);
            full(StatusCode::OK, "text/html; charset=utf-8", page)
        }
        "/api/state" => {
            let json = shared.snapshot.borrow().clone();
            full(StatusCode::OK, "application/json", json.to_string())
        }
        "/events" => sse(shared),
        p if p.starts_with("/debug/pprof/") => {
            let Some(h) = &shared.profile else {
                return plain(StatusCode::NOT_FOUND, "Python stack sampling is off\n");
            };
            let q = req.uri().query();
            let reply = match p {
                "/debug/pprof/profile" => profile::pprof_profile(h, q).await,
                "/debug/pprof/flamegraph.svg" => profile::flamegraph(h, q),
                "/debug/pprof/functions" => profile::functions(h),
                _ => return plain(StatusCode::NOT_FOUND, "not found\n"),
            };
            match reply {
                profile::Reply::Ok(ct, body) => {
                    let mut resp = Response::new(Full::new(Bytes::from(body)).boxed());
                    if let Ok(v) = ct.parse() {
                        resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
                    }
                    resp
                }
                profile::Reply::Err(code, text) => plain(
                    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                    &text,
                ),
            }
        }
        // `/?hold=MS` makes the page fetch this, which keeps its load event back MS
        // milliseconds: headless browsers dump the DOM at load, and a test wants the
        // page to have received live updates by then.
        "/hold" => {
            let ms = req
                .uri()
                .query()
                .and_then(|q| q.strip_prefix("ms="))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
                .min(MAX_HOLD_MS);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            full(StatusCode::OK, "image/svg+xml", HOLD_SVG.to_string())
        }
        _ => plain(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// JSON inside a `<script>`: `</script>` in wire data must not end the script.
fn script_safe(json: &str) -> String {
    json.replace("</", "<\\/").replace("<!--", "<\\!--")
}

fn full(status: StatusCode, content_type: &str, body: String) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(body)).boxed());
    *resp.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    resp
}

fn plain(status: StatusCode, text: &str) -> Response<Body> {
    full(status, "text/plain; charset=utf-8", text.to_string())
}

/// `text/event-stream`: the current state at once, then each new one, and a comment
/// every 15 s so proxies keep the stream open.
fn sse(shared: &Arc<Shared>) -> Response<Body> {
    let (tx, rx) = mpsc::channel::<Bytes>(4);
    let mut snapshots = shared.snapshot.clone();
    tokio::spawn(async move {
        let mut heartbeat = tokio::time::interval(Duration::from_secs(15));
        heartbeat.tick().await;
        let mut msg = event_message(&snapshots.borrow_and_update());
        loop {
            if tx.send(msg).await.is_err() {
                return; // the client went away
            }
            msg = tokio::select! {
                changed = snapshots.changed() => match changed {
                    Ok(()) => event_message(&snapshots.borrow_and_update()),
                    Err(_) => return,
                },
                _ = heartbeat.tick() => Bytes::from_static(b": keep-alive\n\n"),
            };
        }
    });
    let mut resp = Response::new(SseBody { rx }.boxed());
    let h = resp.headers_mut();
    h.insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/event-stream"),
    );
    h.insert(
        hyper::header::CACHE_CONTROL,
        hyper::header::HeaderValue::from_static("no-cache"),
    );
    resp
}

fn event_message(json: &str) -> Bytes {
    Bytes::from(format!("event: state\ndata: {json}\n\n"))
}

struct SseBody {
    rx: mpsc::Receiver<Bytes>,
}

impl hyper::body::Body for SseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx.poll_recv(cx).map(|m| m.map(|b| Ok(Frame::data(b))))
    }
}

#[cfg(test)]
mod tests;
