//! The agent's HTTP endpoint, one listener: `/metrics` (OpenMetrics text for
//! Prometheus), `/` (the live page, plain HTML+JS, no external assets), `/events`
//! (server-sent events carrying the page's state) and `/api/state` (the same state as
//! JSON). One task consumes the bus and updates both the metrics and the page state.
//! `/healthz` and `/readyz` answer DaemonSet probes. Hostile clients are bounded
//! (`guard.rs`); a non-loopback address needs `allow_remote` and takes a bearer token.
mod auth;
mod functions;
mod guard;
pub mod live;
mod profile;
mod repro_files;

use crate::events::BusReceiver;
use crate::sinks::health::{Health, SharedHealth};
use crate::sinks::prometheus::{self, Metrics, MetricsConfig};
use bytes::Bytes;
use guard::{Limits, StallGuard};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use live::{Live, LiveSizes};
use serde::{Deserialize, Serialize};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
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
    #[error("reading http.bearer_token_file {path}: {reason}")]
    Token { path: PathBuf, reason: String },
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
    /// Serving on a non-loopback address must be asked for explicitly.
    pub allow_remote: bool,
    /// A file holding a token every request but `/healthz` and `/readyz` must carry
    /// (`Authorization: Bearer TOKEN`, or `?token=TOKEN` for the page's stream).
    pub bearer_token_file: Option<PathBuf>,
    /// Open connections at most; more are closed at once (counted).
    pub max_connections: usize,
    /// Open live-page streams (`/events`) at most; more get 503 (counted).
    pub max_event_streams: usize,
    /// A client has this long to send its request headers.
    pub header_read_timeout_ms: u64,
    /// A client that reads nothing for this long while the agent has data for it is
    /// dropped (counted), with whatever was buffered for it.
    pub write_stall_timeout_ms: u64,
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
            allow_remote: false,
            bearer_token_file: None,
            max_connections: 256,
            max_event_streams: 64,
            header_read_timeout_ms: 10_000,
            write_stall_timeout_ms: 10_000,
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
        if !self.listen.ip().is_loopback() && !self.allow_remote {
            return Err(format!(
                "http.listen {} is not a loopback address: set http.allow_remote = true \
                 (and http.bearer_token_file) to serve other hosts",
                self.listen
            ));
        }
        if self.max_connections == 0
            || self.max_event_streams == 0
            || self.header_read_timeout_ms == 0
            || self.write_stall_timeout_ms == 0
        {
            return Err(
                "http.max_connections, max_event_streams, header_read_timeout_ms and \
                 write_stall_timeout_ms must be at least 1"
                    .into(),
            );
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
    /// The live page's latest state as one server-sent event (`Snapshot`), refreshed
    /// every `page_update_ms`; every stream shares its bytes.
    snapshot: watch::Receiver<Snapshot>,
    health: SharedHealth,
    limits: Arc<Limits>,
    token: Option<auth::Token>,
    max_event_streams: usize,
    /// Where `/repro/<file>` reads scripts from (None: repro off).
    repro_dir: Option<std::path::PathBuf>,
    /// The Python stack sampler's samples, when it runs (`/debug/pprof/...`).
    profile: Option<crate::profiler::ProfileHandle>,
}

/// `event: state\ndata: JSON\n\n`, built once per state: `json()` is a view into it.
#[derive(Clone)]
struct Snapshot(Bytes);

const SSE_HEAD: &[u8] = b"event: state\ndata: ";

impl Snapshot {
    fn new(json: &str) -> Snapshot {
        let mut b = Vec::with_capacity(SSE_HEAD.len() + json.len() + 2);
        b.extend_from_slice(SSE_HEAD);
        b.extend_from_slice(json.as_bytes());
        b.extend_from_slice(b"\n\n");
        Snapshot(Bytes::from(b))
    }

    fn json(&self) -> Bytes {
        self.0.slice(SSE_HEAD.len()..self.0.len() - 2)
    }
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
    health: SharedHealth,
    token: Option<auth::Token>,
    repro_dir: Option<std::path::PathBuf>,
    profile: Option<crate::profiler::ProfileHandle>,
}

impl Server {
    pub async fn bind(cfg: HttpConfig) -> Result<Server, HttpError> {
        let token = match &cfg.bearer_token_file {
            Some(path) => Some(auth::Token::read(path).map_err(|reason| HttpError::Token {
                path: path.clone(),
                reason,
            })?),
            None => None,
        };
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
            // Alone (tests, no agent): healthy and ready from the start.
            health: {
                let h = Health::new();
                h.set_probes_attached();
                h.set_discovery_done();
                h
            },
            token,
            repro_dir: None,
            profile: None,
        })
    }

    /// Reports the agent's health on `/healthz` and `/readyz`.
    pub fn with_health(mut self, health: SharedHealth) -> Server {
        self.health = health;
        self
    }

    /// Serves the repro scripts in `dir` at `/repro/<file>` (loopback clients only).
    pub fn serve_repro(mut self, dir: std::path::PathBuf) -> Self {
        self.repro_dir = Some(dir);
        self
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
        let first = Snapshot::new(&state.live.snapshot().to_string());
        let (snap_tx, snap_rx) = watch::channel(first);
        let limits = Arc::new(Limits::default());
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            repro_dir: self.repro_dir.clone(),
            snapshot: snap_rx,
            health: self.health,
            limits: limits.clone(),
            token: self.token,
            max_event_streams: cfg.max_event_streams,
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
                if snap_tx.send(Snapshot::new(&json)).is_err() {
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
                    Ok((stream, peer)) => {
                        // Over the cap: the socket closes here, before any buffer exists.
                        let Some(slot) = limits.take(
                            |l| &l.connections,
                            |l| &l.refused_connections,
                            cfg.max_connections,
                        ) else {
                            continue;
                        };
                        let shared = shared.clone();
                        let loopback = peer.ip().is_loopback();
                        let stall = Duration::from_millis(cfg.write_stall_timeout_ms);
                        let headers = Duration::from_millis(cfg.header_read_timeout_ms);
                        conns.spawn(async move {
                            let _slot = slot;
                            let limits = shared.limits.clone();
                            let svc = hyper::service::service_fn(move |req| {
                                let shared = shared.clone();
                                async move {
                                    Ok::<_, Infallible>(route(&shared, req, loopback).await)
                                }
                            });
                            let io = hyper_util::rt::TokioIo::new(StallGuard::new(stream, stall, limits));
                            if let Err(e) = hyper::server::conn::http1::Builder::new()
                                .timer(hyper_util::rt::TokioTimer::new())
                                .header_read_timeout(headers)
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

async fn route(shared: &Arc<Shared>, req: Request<Incoming>, loopback: bool) -> Response<Body> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
    }
    match req.uri().path() {
        // Probes carry no token: they reveal only whether the agent works.
        "/healthz" => {
            return match shared.health.healthy() {
                Ok(()) => plain(StatusCode::OK, "ok\n"),
                Err(why) => plain(StatusCode::SERVICE_UNAVAILABLE, &format!("{why}\n")),
            }
        }
        "/readyz" => {
            return match shared.health.ready() {
                Ok(()) => plain(StatusCode::OK, "ready\n"),
                Err(why) => plain(StatusCode::SERVICE_UNAVAILABLE, &format!("{why}\n")),
            }
        }
        _ => {}
    }
    if let Some(token) = &shared.token {
        if !token.admits(&req) {
            shared
                .limits
                .unauthorized
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut resp = plain(StatusCode::UNAUTHORIZED, "bearer token required\n");
            resp.headers_mut().insert(
                hyper::header::WWW_AUTHENTICATE,
                hyper::header::HeaderValue::from_static("Bearer"),
            );
            return resp;
        }
    }
    if let Some(name) = req.uri().path().strip_prefix("/repro/") {
        return repro_files::serve(shared.repro_dir.as_deref(), name, loopback);
    }
    match req.uri().path() {
        "/metrics" => {
            let text = shared.lock().metrics.encode();
            match text {
                Ok(t) => {
                    // The endpoint's own counters go before the registry's `# EOF`.
                    let body = t.trim_end().strip_suffix("# EOF").unwrap_or(&t);
                    let t = format!("{body}{}# EOF\n", shared.limits.encode());
                    full(StatusCode::OK, prometheus::CONTENT_TYPE, t)
                }
                Err(e) => plain(StatusCode::INTERNAL_SERVER_ERROR, &format!("{e}\n")),
            }
        }
        "/" | "/index.html" => {
            // The first state is inlined so the page shows data before its stream opens.
            let json = shared.snapshot.borrow().json();
            let page = PAGE.replacen(
                INITIAL_MARK,
                &script_safe(&String::from_utf8_lossy(&json)),
                1,
            );
            full(StatusCode::OK, "text/html; charset=utf-8", page)
        }
        "/api/state" => {
            let json = shared.snapshot.borrow().json();
            bytes(StatusCode::OK, "application/json", json)
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
                .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("ms=")))
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
    bytes(status, content_type, Bytes::from(body))
}

fn bytes(status: StatusCode, content_type: &str, body: Bytes) -> Response<Body> {
    let mut resp = Response::new(Full::new(body).boxed());
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
/// every 15 s so proxies keep the stream open. One message waits per client at most
/// (the states are shared bytes, not copies); a client that stops reading is ended
/// by the connection's `StallGuard`.
fn sse(shared: &Arc<Shared>) -> Response<Body> {
    let Some(slot) = shared.limits.take(
        |l| &l.streams,
        |l| &l.refused_streams,
        shared.max_event_streams,
    ) else {
        return plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many live streams open (http.max_event_streams)\n",
        );
    };
    let (tx, rx) = mpsc::channel::<Bytes>(1);
    let mut snapshots = shared.snapshot.clone();
    tokio::spawn(async move {
        let _slot = slot;
        let mut heartbeat = tokio::time::interval(Duration::from_secs(15));
        heartbeat.tick().await;
        let mut msg = snapshots.borrow_and_update().0.clone();
        loop {
            if tx.send(msg).await.is_err() {
                return; // the client went away
            }
            msg = tokio::select! {
                changed = snapshots.changed() => match changed {
                    Ok(()) => snapshots.borrow_and_update().0.clone(),
                    Err(_) => return,
                },
                _ = heartbeat.tick() => Bytes::from_static(b": keep-alive\n\n"),
                // The connection ended (client gone or dropped as slow): free the slot now.
                _ = tx.closed() => return,
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
