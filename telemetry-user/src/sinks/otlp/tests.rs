use super::*;
use crate::events::Bus;

#[test]
fn config_defaults_and_toml() {
    let d = OtlpConfig::default();
    assert!(!d.enabled);
    assert_eq!(d.endpoint, "http://127.0.0.1:4317");
    assert_eq!(d.protocol, OtlpProtocol::Grpc);
    let c: OtlpConfig = toml::from_str(
        "enabled = true\nprotocol = \"http-protobuf\"\nendpoint = \"http://127.0.0.1:4318\"\nservice_name = \"svc\"\nbatch_size = 10\nmax_queue_length = 100\nexport_interval_ms = 250\n",
    )
    .expect("valid otlp table");
    assert!(c.enabled);
    assert_eq!(c.protocol, OtlpProtocol::HttpProtobuf);
    assert_eq!(c.service_name.as_deref(), Some("svc"));
    assert_eq!((c.batch_size, c.max_queue_length), (10, 100));
    assert!(c.validate().is_ok());
    assert!(toml::from_str::<OtlpConfig>("enabeld = true\n").is_err());
    assert!(toml::from_str::<OtlpConfig>("protocol = \"http\"\n").is_err());
    let bad = OtlpConfig {
        endpoint: "127.0.0.1:4317".into(),
        ..OtlpConfig::default()
    };
    assert!(bad.validate().is_err());
}

#[test]
fn host_port_split() {
    assert_eq!(
        split_host_port("127.0.0.1:4000"),
        Some(("127.0.0.1".to_string(), 4000))
    );
    assert_eq!(split_host_port("[::1]:80"), Some(("::1".to_string(), 80)));
    assert_eq!(split_host_port("nope"), None);
}

fn call_stop(i: u64) -> Event {
    Event::new(schema::CALL_STOP)
        .measure("duration", 4_000_000u64)
        .measure("queue_time", 500_000u64)
        .measure("python_time", 2_000_000u64)
        .meta("operation", "ExecuteTool")
        .meta("tool", "echo")
        .meta("pool", "default")
        .meta("worker_id", "w1")
        .meta("correlation_id", format!("c-{i}"))
        .meta("beam_pid", 1u64)
        .meta("worker_pid", 2u64)
        .meta("conn_id", 3u64)
        .meta("stream_id", 2 * i + 1)
        .meta("transport", "grpc")
        .meta("result", "ok")
}

/// A loopback port with nothing listening.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_down_means_counted_drops_and_failures_not_growth() {
    let cfg = OtlpConfig {
        enabled: true,
        endpoint: format!("http://127.0.0.1:{}", closed_port()),
        export_interval_ms: 100,
        export_timeout_ms: 300,
        batch_size: 8,
        max_queue_length: 8,
        ..OtlpConfig::default()
    };
    let bus = Bus::new(1024);
    let counters = Arc::new(OtlpCounters::default());
    let sink = tokio::spawn(run_with(cfg, bus.subscribe(), counters.clone()));
    // Ten calls of four spans into a queue of eight: two calls fit, eight do not.
    for i in 0..10 {
        bus.publish(call_stop(i));
    }
    drop(bus);
    tokio::time::timeout(Duration::from_secs(20), sink)
        .await
        .expect("sink stops in time")
        .expect("sink task");
    let s = counters.snapshot();
    assert_eq!(s.dropped_spans, 32, "{s:?}");
    assert_eq!(s.exported_spans, 0, "{s:?}");
    assert_eq!(s.failed_spans, 8, "{s:?}");
    assert!(
        s.export_failures >= 2,
        "span and metric exports fail: {s:?}"
    );
    assert_eq!(s.queued_spans, 0, "{s:?}");
}

#[tokio::test]
async fn a_disabled_sink_returns_at_once() {
    let bus = Bus::new(16);
    let counters = Arc::new(OtlpCounters::default());
    let rx = bus.subscribe();
    bus.publish(call_stop(1));
    tokio::time::timeout(
        Duration::from_secs(1),
        run_with(OtlpConfig::default(), rx, counters.clone()),
    )
    .await
    .expect("returns");
    assert_eq!(counters.snapshot(), OtlpStats::default());
}

fn closed_port_config() -> OtlpConfig {
    OtlpConfig {
        enabled: true,
        endpoint: format!("http://127.0.0.1:{}", closed_port()),
        export_timeout_ms: 200,
        ..OtlpConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_name_waits_for_the_instance_name_past_pipe_workers_pool_sizes() {
    let mut sink = Sink::new(closed_port_config(), Arc::default());
    // A pipe worker: discovered with its pool size, without an instance name.
    let pipe = Event::new(schema::WORKER_DISCOVERED)
        .meta("beam_pid", 9u64)
        .meta("worker_id", "legacy_1")
        .meta("pool", "legacy");
    let size = Event::new(schema::POOL_SIZE)
        .measure("size", 1u64)
        .meta("pool", "legacy");
    sink.on_event(&Arc::new(crate::events::AgentEvent::from(pipe)));
    sink.on_event(&Arc::new(crate::events::AgentEvent::from(size)));
    assert!(
        sink.exporting.is_none(),
        "pool sizes alone do not start export"
    );
    let grpc = Event::new(schema::WORKER_DISCOVERED)
        .meta("beam_pid", 9u64)
        .meta("worker_id", "default_1")
        .meta("instance_name", "demo")
        .meta("port", 4000u64);
    sink.on_event(&Arc::new(crate::events::AgentEvent::from(grpc)));
    assert_eq!(sink.service_name.as_deref(), Some("demo"));
    let stop = crate::events::to_typed(
        &call_stop(1)
            .meta("beam_pid", 9u64)
            .meta("worker_id", "default_1"),
    );
    let crate::events::AgentEvent::CallEnd(stop) = stop else {
        panic!("a call stop is typed");
    };
    let ctx = sink.call_context(&stop.call);
    assert_eq!(ctx.instance_name.as_deref(), Some("demo"));
    assert_eq!(ctx.server_port, Some(4000));
    sink.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_instance_name_the_first_call_exports_as_snakepit() {
    let mut sink = Sink::new(closed_port_config(), Arc::default());
    sink.on_event(&Arc::new(crate::events::AgentEvent::from(call_stop(1))));
    assert_eq!(sink.service_name.as_deref(), Some("snakepit"));
    sink.shutdown().await;
    let mut named = Sink::new(
        OtlpConfig {
            service_name: Some("svc".into()),
            ..closed_port_config()
        },
        Arc::default(),
    );
    named.on_event(&Arc::new(crate::events::AgentEvent::from(Event::new(
        schema::AGENT_STARTED,
    ))));
    assert_eq!(named.service_name.as_deref(), Some("svc"));
    named.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_protobuf_builds_inside_the_runtime_and_counts_failures() {
    let cfg = OtlpConfig {
        protocol: OtlpProtocol::HttpProtobuf,
        export_interval_ms: 100,
        ..closed_port_config()
    };
    let bus = Bus::new(64);
    let counters = Arc::new(OtlpCounters::default());
    let sink = tokio::spawn(run_with(cfg, bus.subscribe(), counters.clone()));
    bus.publish(call_stop(1));
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(bus);
    tokio::time::timeout(Duration::from_secs(20), sink)
        .await
        .expect("sink stops in time")
        .expect("sink task");
    let s = counters.snapshot();
    assert_eq!(s.exported_spans, 0, "{s:?}");
    assert_eq!(s.failed_spans, 4, "{s:?}");
    assert!(s.export_failures >= 1, "{s:?}");
}
