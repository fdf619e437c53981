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
        "enabled = true\nlisten = \"0.0.0.0:9999\"\nlabel_value_cap = 50\nhistogram_buckets = [0.01, 1.0]\n",
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
