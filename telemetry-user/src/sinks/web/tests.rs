use super::*;
use crate::events::{schema, Bus, Event};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    out
}

/// Reads the start of a stream that never ends, until `needle` shows up.
async fn read_until(addr: SocketAddr, path: &str, needle: &str) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&out).contains(needle) {
        let n = s.read(&mut buf).await.expect("read");
        assert!(n > 0, "stream closed before {needle:?}");
        out.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn serves_metrics_page_state_and_event_stream() {
    let bus = Bus::new(64);
    let cfg = HttpConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        page_update_ms: 50,
        ..HttpConfig::default()
    };
    let server = Server::bind(cfg).await.expect("bind");
    let addr = server.local_addr();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.run(bus.subscribe(), async {
        let _ = stop_rx.await;
    }));
    bus.publish(
        Event::new(schema::POOL_SIZE)
            .measure("size", 2)
            .measure("idle", 2)
            .measure("busy", 0)
            .meta("pool", "default"),
    );
    bus.publish(
        Event::new(schema::CALL_STOP)
            .measure("duration", 1_000_000)
            .meta("function", "</script><b>x")
            .meta("pool", "default")
            .meta("result", "ok"),
    );
    // The consumer and the snapshot ticker run concurrently: wait for both.
    let mut state = String::new();
    for _ in 0..100 {
        state = get(addr, "/api/state").await;
        if state.contains("</script>") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(state.starts_with("HTTP/1.1 200"), "{state}");
    assert!(state.contains("\"size\":2"), "{state}");

    let metrics = get(addr, "/metrics").await;
    assert!(metrics.starts_with("HTTP/1.1 200"));
    assert!(metrics.contains("application/openmetrics-text"));
    assert!(metrics.contains("snakepit_pool_size{pool=\"default\"} 2"));
    assert!(metrics.contains("snakepit_calls_total{"));
    assert!(metrics.trim_end().ends_with("# EOF"));

    let page = get(addr, "/").await;
    assert!(page.contains("text/html"));
    assert!(page.contains("const INITIAL = {"), "state inlined");
    assert!(
        !page.contains("</script><b>"),
        "wire text cannot close the script"
    );

    let stream = read_until(addr, "/events", "event: state\ndata: {").await;
    assert!(stream.contains("text/event-stream"));

    assert!(get(addr, "/nope").await.starts_with("HTTP/1.1 404"));
    let _ = stop_tx.send(());
    let done = tokio::time::timeout(Duration::from_secs(5), task).await;
    assert!(matches!(done, Ok(Ok(Ok(())))), "server stops on shutdown");
}

#[tokio::test]
async fn a_taken_port_is_a_bind_error() {
    let first = Server::bind(HttpConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        ..HttpConfig::default()
    })
    .await
    .expect("bind");
    let again = Server::bind(HttpConfig {
        listen: first.local_addr(),
        ..HttpConfig::default()
    })
    .await;
    assert!(matches!(again, Err(HttpError::Bind { .. })));
}

#[test]
fn config_parses_from_toml_and_rejects_unknown_keys() {
    let cfg: HttpConfig = toml::from_str(
        "enabled = true\nlisten = \"0.0.0.0:9999\"\nallow_remote = true\nlabel_value_cap = 50\nhistogram_buckets = [0.01, 1.0]\n",
    )
    .expect("parse");
    assert!(cfg.enabled);
    assert_eq!(cfg.listen.port(), 9999);
    assert_eq!(cfg.label_value_cap, 50);
    assert_eq!(cfg.recent_calls, 100);
    assert!(cfg.validate().is_ok());
    assert!(toml::from_str::<HttpConfig>("listen_addr = \"x\"").is_err());
    let d = HttpConfig::default();
    assert_eq!(d.listen.to_string(), "127.0.0.1:9464");
    assert_eq!(d.label_value_cap, 500);
}

#[test]
fn a_remote_address_needs_allow_remote() {
    let cfg = HttpConfig {
        listen: "0.0.0.0:9464".parse().expect("addr"),
        ..HttpConfig::default()
    };
    let err = cfg.validate().expect_err("refused");
    assert!(err.contains("allow_remote"), "{err}");
    let v6 = HttpConfig {
        listen: "[::1]:9464".parse().expect("addr"),
        ..HttpConfig::default()
    };
    assert!(v6.validate().is_ok(), "loopback v6 is local");
}

/// Starts a server on an ephemeral port; the returned sender stops it.
async fn start(
    cfg: HttpConfig,
    health: Option<SharedHealth>,
) -> (SocketAddr, Bus, tokio::sync::oneshot::Sender<()>) {
    let bus = Bus::new(64);
    let mut server = Server::bind(HttpConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        page_update_ms: 50,
        ..cfg
    })
    .await
    .expect("bind");
    if let Some(h) = health {
        server = server.with_health(h);
    }
    let addr = server.local_addr();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.run(bus.subscribe(), async {
        let _ = stop_rx.await;
    }));
    (addr, bus, stop_tx)
}

async fn get_with(addr: SocketAddr, path: &str, auth: &str) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    out
}

#[tokio::test]
async fn a_bearer_token_guards_everything_but_the_probes() {
    let dir = tempfile::tempdir().expect("tmp");
    let token = dir.path().join("token");
    std::fs::write(&token, "abc123\n").expect("write");
    let (addr, _bus, _stop) = start(
        HttpConfig {
            bearer_token_file: Some(token),
            ..HttpConfig::default()
        },
        None,
    )
    .await;
    for path in ["/metrics", "/", "/api/state", "/events"] {
        let r = get(addr, path).await;
        assert!(r.starts_with("HTTP/1.1 401"), "{path}: {r}");
    }
    let ok = get_with(addr, "/metrics", "Authorization: Bearer abc123\r\n").await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    assert!(
        ok.contains("snakepit_agent_http_unauthorized_total 4"),
        "{ok}"
    );
    assert!(ok.trim_end().ends_with("# EOF"), "one EOF, at the end");
    let page = get(addr, "/api/state?token=abc123").await;
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(get(addr, "/healthz").await.starts_with("HTTP/1.1 200"));
    assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 200"));
    assert!(Server::bind(HttpConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        bearer_token_file: Some(dir.path().join("missing")),
        ..HttpConfig::default()
    })
    .await
    .is_err_and(|e| matches!(e, HttpError::Token { .. })));
}

#[tokio::test]
async fn health_and_readiness_follow_the_agent() {
    let health = Health::new();
    let (addr, _bus, _stop) = start(HttpConfig::default(), Some(health.clone())).await;
    assert!(get(addr, "/healthz").await.starts_with("HTTP/1.1 200"));
    let r = get(addr, "/readyz").await;
    assert!(r.starts_with("HTTP/1.1 503") && r.contains("probes"), "{r}");
    health.set_probes_attached();
    health.set_discovery_done();
    assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 200"));
    health.fail_output("No space left on device (os error 28)".into());
    let r = get(addr, "/healthz").await;
    assert!(
        r.starts_with("HTTP/1.1 503") && r.contains("No space"),
        "{r}"
    );
    assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 503"));
}

#[tokio::test]
async fn connections_and_streams_are_capped_and_refusals_counted() {
    let (addr, _bus, _stop) = start(
        HttpConfig {
            max_connections: 3,
            max_event_streams: 1,
            ..HttpConfig::default()
        },
        None,
    )
    .await;
    // One stream open and reading; a second is refused.
    let s1 = read_until(addr, "/events", "event: state").await;
    assert!(s1.contains("event: state"));
    let mut first = TcpStream::connect(addr).await.expect("connect");
    first
        .write_all(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut buf = [0u8; 64];
    let n = first.read(&mut buf).await.expect("read");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let refused = get(addr, "/events").await;
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    // Connections: `first` plus two idle ones fill the cap; the next is closed at once.
    let _idle1 = TcpStream::connect(addr).await.expect("connect");
    let _idle2 = TcpStream::connect(addr).await.expect("connect");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut over = TcpStream::connect(addr).await.expect("connect");
    let _ = over
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let mut out = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(2), over.read_to_end(&mut out)).await;
    assert!(
        matches!(r, Ok(Ok(0)) | Ok(Err(_))),
        "closed without an answer: {r:?} {:?}",
        String::from_utf8_lossy(&out)
    );
    drop((_idle1, _idle2, first));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let m = get(addr, "/metrics").await;
    assert!(
        m.contains("snakepit_agent_http_refused_event_streams_total 1"),
        "{m}"
    );
    assert!(
        m.contains("snakepit_agent_http_refused_connections_total 1"),
        "{m}"
    );
}

#[tokio::test]
async fn a_client_that_stops_reading_is_dropped_and_counted() {
    let limits = Arc::new(Limits::default());
    let (client, server) = tokio::io::duplex(1024);
    let mut guarded = StallGuard::new(server, Duration::from_millis(100), limits.clone());
    let chunk = vec![b'x'; 4096];
    let r = tokio::time::timeout(Duration::from_secs(5), guarded.write_all(&chunk)).await;
    match r {
        Ok(Err(e)) => assert_eq!(e.kind(), std::io::ErrorKind::TimedOut),
        other => panic!("the stalled write must fail: {other:?}"),
    }
    assert_eq!(
        limits
            .slow_clients_dropped
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    drop(client);
}

#[tokio::test]
async fn a_client_sending_no_headers_is_closed() {
    let (addr, _bus, _stop) = start(
        HttpConfig {
            header_read_timeout_ms: 200,
            ..HttpConfig::default()
        },
        None,
    )
    .await;
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"GET /metr").await.expect("write");
    let mut out = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut out)).await;
    assert!(r.is_ok(), "closed by the header timeout, not left open");
}
