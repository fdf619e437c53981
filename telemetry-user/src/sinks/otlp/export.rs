//! The OTLP exporters behind the SDK's batch span processor and periodic metric
//! reader, wrapped to count what they export and what fails.
use super::metrics::Instruments;
use super::{OtlpConfig, OtlpCounters, OtlpProtocol};
use opentelemetry::metrics::MeterProvider as _;
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::data::ResourceMetrics;
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider, Temporality};
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SpanData, SpanExporter, SpanProcessor,
};
use opentelemetry_sdk::Resource;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    #[error("invalid otlp config: {0}")]
    Config(String),
    #[error("building the OTLP exporter for {endpoint}: {source}")]
    Build {
        endpoint: String,
        source: opentelemetry_otlp::ExporterBuildError,
    },
}

/// The running exporters.
pub(super) struct Exporting {
    pub spans: Option<BatchSpanProcessor>,
    meters: Option<SdkMeterProvider>,
    pub instruments: Option<Instruments>,
    pub scope: InstrumentationScope,
}

impl Exporting {
    /// Must run inside the tokio runtime (the gRPC channel is created on it).
    pub fn build(
        cfg: &OtlpConfig,
        service_name: &str,
        counters: Arc<OtlpCounters>,
    ) -> Result<Exporting, OtlpError> {
        let resource = Resource::builder()
            .with_service_name(service_name.to_string())
            .with_attribute(KeyValue::new("host.name", host_name()))
            .build();
        let scope = InstrumentationScope::builder("snakepit-agent")
            .with_version(env!("CARGO_PKG_VERSION"))
            .build();
        let timeout = Duration::from_millis(cfg.export_timeout_ms);
        let interval = Duration::from_millis(cfg.export_interval_ms);
        // gRPC exports run on the SDK's threads but tonic's timers and sockets live on
        // the agent's runtime: each export is polled inside it.
        let runtime = match cfg.protocol {
            OtlpProtocol::Grpc => tokio::runtime::Handle::try_current().ok(),
            OtlpProtocol::HttpProtobuf => None,
        };
        let build_err = |source| OtlpError::Build {
            endpoint: cfg.endpoint.clone(),
            source,
        };

        let spans = if cfg.traces {
            let inner = match cfg.protocol {
                OtlpProtocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
                    .with_tonic()
                    .with_endpoint(cfg.endpoint.clone())
                    .with_timeout(timeout)
                    .build(),
                OtlpProtocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
                    .with_http()
                    .with_protocol(Protocol::HttpBinary)
                    .with_endpoint(signal_url(&cfg.endpoint, "traces"))
                    .with_timeout(timeout)
                    .build(),
            }
            .map_err(build_err)?;
            let exporter = CountingSpans {
                inner,
                counters: counters.clone(),
                runtime: runtime.clone(),
            };
            let batch = BatchConfigBuilder::default()
                .with_max_queue_size(cfg.max_queue_length)
                .with_max_export_batch_size(cfg.batch_size.min(cfg.max_queue_length))
                .with_scheduled_delay(interval)
                .build();
            let mut processor = BatchSpanProcessor::builder(exporter)
                .with_batch_config(batch)
                .build();
            processor.set_resource(&resource);
            Some(processor)
        } else {
            None
        };

        let (meters, instruments) = if cfg.metrics {
            let inner = match cfg.protocol {
                OtlpProtocol::Grpc => opentelemetry_otlp::MetricExporter::builder()
                    .with_tonic()
                    .with_endpoint(cfg.endpoint.clone())
                    .with_timeout(timeout)
                    .build(),
                OtlpProtocol::HttpProtobuf => opentelemetry_otlp::MetricExporter::builder()
                    .with_http()
                    .with_protocol(Protocol::HttpBinary)
                    .with_endpoint(signal_url(&cfg.endpoint, "metrics"))
                    .with_timeout(timeout)
                    .build(),
            }
            .map_err(build_err)?;
            let exporter = CountingMetrics {
                inner,
                counters,
                runtime,
            };
            let reader = PeriodicReader::builder(exporter)
                .with_interval(interval)
                .build();
            let provider = SdkMeterProvider::builder()
                .with_resource(resource)
                .with_reader(reader)
                .build();
            let instruments = Instruments::new(&provider.meter_with_scope(scope.clone()));
            (Some(provider), Some(instruments))
        } else {
            (None, None)
        };
        Ok(Exporting {
            spans,
            meters,
            instruments,
            scope,
        })
    }

    /// Flushes what is queued and stops the exporter threads. Blocking.
    pub fn shutdown(self, timeout: Duration) {
        if let Some(p) = &self.spans {
            if let Err(e) = p.shutdown_with_timeout(timeout) {
                tracing::warn!("otlp span processor shutdown: {e}");
            }
        }
        if let Some(m) = &self.meters {
            if let Err(e) = m.shutdown_with_timeout(timeout) {
                tracing::warn!("otlp meter provider shutdown: {e}");
            }
        }
    }
}

/// `http://host:4318` -> `http://host:4318/v1/traces` (the OTLP/HTTP signal paths).
fn signal_url(base: &str, signal: &str) -> String {
    format!("{}/v1/{signal}", base.trim_end_matches('/'))
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_string())
}

/// Polls a future with the agent's runtime entered (tonic needs its timers and reactor).
struct InRuntime<'a> {
    runtime: Option<tokio::runtime::Handle>,
    fut: Pin<Box<dyn Future<Output = OTelSdkResult> + Send + 'a>>,
}

impl Future for InRuntime<'_> {
    type Output = OTelSdkResult;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<OTelSdkResult> {
        let _guard = self.runtime.as_ref().map(|h| h.enter());
        self.fut.as_mut().poll(cx)
    }
}

#[derive(Debug)]
struct CountingSpans {
    inner: opentelemetry_otlp::SpanExporter,
    counters: Arc<OtlpCounters>,
    runtime: Option<tokio::runtime::Handle>,
}

impl SpanExporter for CountingSpans {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len() as u64;
        let result = InRuntime {
            runtime: self.runtime.clone(),
            fut: Box::pin(self.inner.export(batch)),
        }
        .await;
        let c = &self.counters;
        c.spans_queued.fetch_sub(
            n.min(c.spans_queued.load(Ordering::Acquire)),
            Ordering::AcqRel,
        );
        match &result {
            Ok(()) => {
                c.spans_exported.fetch_add(n, Ordering::Relaxed);
            }
            Err(_) => {
                c.spans_failed.fetch_add(n, Ordering::Relaxed);
                c.span_export_failures.fetch_add(1, Ordering::Relaxed);
            }
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

struct CountingMetrics {
    inner: opentelemetry_otlp::MetricExporter,
    counters: Arc<OtlpCounters>,
    runtime: Option<tokio::runtime::Handle>,
}

impl PushMetricExporter for CountingMetrics {
    async fn export(&self, metrics: &ResourceMetrics) -> OTelSdkResult {
        let result = InRuntime {
            runtime: self.runtime.clone(),
            fut: Box::pin(self.inner.export(metrics)),
        }
        .await;
        let c = &self.counters;
        match &result {
            Ok(()) => c.metric_exports.fetch_add(1, Ordering::Relaxed),
            Err(_) => c.metric_export_failures.fetch_add(1, Ordering::Relaxed),
        };
        result
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn temporality(&self) -> Temporality {
        self.inner.temporality()
    }
}
