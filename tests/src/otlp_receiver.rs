//! A minimal OpenTelemetry collector for tests: a real OTLP/gRPC server (TraceService
//! and MetricsService from the official proto definitions, via `opentelemetry-proto`)
//! on a loopback port, keeping what it receives in memory, flattened for assertions.
use anyhow::{anyhow, Context, Result};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point};
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use tokio::sync::oneshot;

pub type Attributes = BTreeMap<String, Value>;

/// One received span with its resource and scope.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    pub resource: Attributes,
    pub scope: String,
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    pub name: String,
    /// The proto's SpanKind: 1 internal, 2 server, 3 client.
    pub kind: i32,
    pub start_unix_nano: u64,
    pub end_unix_nano: u64,
    pub attributes: Attributes,
    /// The proto's StatusCode: 0 unset, 1 ok, 2 error.
    pub status_code: i32,
    pub status_message: String,
    pub events: Vec<(String, Attributes)>,
}

pub const KIND_INTERNAL: i32 = 1;
pub const KIND_SERVER: i32 = 2;
pub const KIND_CLIENT: i32 = 3;
pub const STATUS_ERROR: i32 = 2;

/// One data point of a received metric.
#[derive(Debug, Clone)]
pub struct ReceivedPoint {
    pub resource: Attributes,
    pub metric: String,
    pub unit: String,
    /// "sum", "gauge" or "histogram".
    pub kind: &'static str,
    pub attributes: Attributes,
    /// Sum/gauge value, or a histogram's sum.
    pub value: f64,
    /// Histogram count (0 otherwise).
    pub count: u64,
    pub time_unix_nano: u64,
}

#[derive(Default)]
struct Store {
    trace_requests: usize,
    metric_requests: usize,
    spans: Vec<ReceivedSpan>,
    points: Vec<ReceivedPoint>,
}

type Shared = Arc<Mutex<Store>>;

pub struct OtlpReceiver {
    pub addr: SocketAddr,
    store: Shared,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl OtlpReceiver {
    /// Serves OTLP/gRPC on 127.0.0.1 (a free port) until dropped.
    pub fn start() -> Result<OtlpReceiver> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .context("building the receiver's runtime")?;
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .context("binding the OTLP receiver")?;
        let addr = listener.local_addr()?;
        let store: Shared = Arc::default();
        let (stop, stopped) = oneshot::channel::<()>();
        let svc = Collector(store.clone());
        let thread = std::thread::Builder::new()
            .name("otlp-receiver".into())
            .spawn(move || {
                let incoming = tonic::transport::server::TcpIncoming::from(listener);
                let serve = tonic::transport::Server::builder()
                    .add_service(TraceServiceServer::new(svc.clone()))
                    .add_service(MetricsServiceServer::new(svc))
                    .serve_with_incoming_shutdown(incoming, async {
                        let _ = stopped.await;
                    });
                if let Err(e) = rt.block_on(serve) {
                    eprintln!("otlp receiver: {e}");
                }
            })
            .map_err(|e| anyhow!("spawning the receiver thread: {e}"))?;
        Ok(OtlpReceiver {
            addr,
            store,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// `http://127.0.0.1:PORT`, the exporter's endpoint.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.lock().spans.clone()
    }

    pub fn points(&self) -> Vec<ReceivedPoint> {
        self.lock().points.clone()
    }

    /// (trace export requests, metric export requests) received.
    pub fn requests(&self) -> (usize, usize) {
        let s = self.lock();
        (s.trace_requests, s.metric_requests)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Store> {
        // A panic while holding the lock leaves the data usable for a test.
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[derive(Clone)]
struct Collector(Shared);

impl Collector {
    fn lock(&self) -> std::sync::MutexGuard<'_, Store> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let req = request.into_inner();
        let mut store = self.lock();
        store.trace_requests += 1;
        for rs in req.resource_spans {
            let resource = rs
                .resource
                .map(|r| attributes(&r.attributes))
                .unwrap_or_default();
            for ss in rs.scope_spans {
                let scope = ss.scope.map(|s| s.name).unwrap_or_default();
                for s in ss.spans {
                    let (status_code, status_message) =
                        s.status.map(|st| (st.code, st.message)).unwrap_or_default();
                    store.spans.push(ReceivedSpan {
                        resource: resource.clone(),
                        scope: scope.clone(),
                        trace_id: hex(&s.trace_id),
                        span_id: hex(&s.span_id),
                        parent_span_id: hex(&s.parent_span_id),
                        name: s.name,
                        kind: s.kind,
                        start_unix_nano: s.start_time_unix_nano,
                        end_unix_nano: s.end_time_unix_nano,
                        attributes: attributes(&s.attributes),
                        status_code,
                        status_message,
                        events: s
                            .events
                            .iter()
                            .map(|e| (e.name.clone(), attributes(&e.attributes)))
                            .collect(),
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

#[tonic::async_trait]
impl MetricsService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let req = request.into_inner();
        let mut store = self.lock();
        store.metric_requests += 1;
        for rm in req.resource_metrics {
            let resource = rm
                .resource
                .map(|r| attributes(&r.attributes))
                .unwrap_or_default();
            for sm in rm.scope_metrics {
                for m in sm.metrics {
                    let point = |kind, attrs: &[KeyValue], value, count, time| ReceivedPoint {
                        resource: resource.clone(),
                        metric: m.name.clone(),
                        unit: m.unit.clone(),
                        kind,
                        attributes: attributes(attrs),
                        value,
                        count,
                        time_unix_nano: time,
                    };
                    let mut points = Vec::new();
                    match &m.data {
                        Some(metric::Data::Sum(s)) => {
                            for p in &s.data_points {
                                points.push(point(
                                    "sum",
                                    &p.attributes,
                                    number(&p.value),
                                    0,
                                    p.time_unix_nano,
                                ));
                            }
                        }
                        Some(metric::Data::Gauge(g)) => {
                            for p in &g.data_points {
                                points.push(point(
                                    "gauge",
                                    &p.attributes,
                                    number(&p.value),
                                    0,
                                    p.time_unix_nano,
                                ));
                            }
                        }
                        Some(metric::Data::Histogram(h)) => {
                            for p in &h.data_points {
                                points.push(point(
                                    "histogram",
                                    &p.attributes,
                                    p.sum.unwrap_or(0.0),
                                    p.count,
                                    p.time_unix_nano,
                                ));
                            }
                        }
                        _ => {}
                    }
                    store.points.extend(points);
                }
            }
        }
        Ok(tonic::Response::new(ExportMetricsServiceResponse {
            partial_success: None,
        }))
    }
}

fn number(v: &Option<number_data_point::Value>) -> f64 {
    match v {
        Some(number_data_point::Value::AsDouble(d)) => *d,
        Some(number_data_point::Value::AsInt(i)) => *i as f64,
        None => 0.0,
    }
}

fn attributes(kvs: &[KeyValue]) -> Attributes {
    kvs.iter()
        .map(|kv| (kv.key.clone(), any_value_json(kv.value.as_ref())))
        .collect()
}

fn any_value_json(v: Option<&AnyValue>) -> Value {
    match v.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => Value::from(s.clone()),
        Some(any_value::Value::BoolValue(b)) => Value::from(*b),
        Some(any_value::Value::IntValue(i)) => Value::from(*i),
        Some(any_value::Value::DoubleValue(d)) => Value::from(*d),
        Some(any_value::Value::ArrayValue(a)) => {
            Value::Array(a.values.iter().map(|x| any_value_json(Some(x))).collect())
        }
        Some(other) => Value::from(format!("{other:?}")),
        None => Value::Null,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
