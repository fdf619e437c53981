//! Golden JSON lines: one event of every kind the agent emits, built by the real
//! emitting code with fixed clocks, written by the JSON-lines sink and compared byte for
//! byte with `events.golden.jsonl`. The JSON schema (docs/events.md) must not change, so
//! this file changes only when an event is added on purpose. Regenerate with
//! `GOLDEN_UPDATE=1 cargo test -p telemetry-user --lib golden`.
use super::*;
use crate::agent::{topology_events, IoAccounting};
use crate::calls::ml::{MlKind, MlRule};
use crate::discovery::WorkerInfo;
use crate::discovery::{CloseReason, ConnInfo, ConnRole, ExitInfo, TopologyChange, Transport};

const GOLDEN: &str = include_str!("events.golden.jsonl");
const GOLDEN_PATH: &str = "src/calls/tests/events.golden.jsonl";
/// Time given to events whose emitter stamps them with the wall clock.
const WALL: u64 = 1_700_000_123_000_000_000;

fn tracker_events() -> Vec<Arc<AgentEvent>> {
    let c = grpc_conn(1);
    let ok = tool_response(true, "");
    let err = r#"{"type":"ValueError","message":"boom","stacktrace":[],"context":{}}"#;
    let cfg = TrackerConfig {
        include_internal: true,
        ml_rules: vec![
            MlRule {
                kind: MlKind::Inference,
                tool: Some("infer".into()),
                library: None,
                function: None,
                model: Some("=tiny-mlp".into()),
                batch_size: Some("params.batch".into()),
                tokens: Some("params.tokens".into()),
                loss: None,
                learning_rate: None,
                epoch: None,
                step: None,
            },
            MlRule {
                kind: MlKind::TrainStep,
                tool: Some("train".into()),
                library: None,
                function: None,
                model: None,
                batch_size: None,
                tokens: None,
                loss: Some("params.loss".into()),
                learning_rate: Some("params.lr".into()),
                epoch: Some("params.epoch".into()),
                step: Some("params.step".into()),
            },
        ],
        ..cfg()
    };
    let (ev, _) = run_typed(cfg, |t| {
        t.lifecycle(Lifecycle::WorkerUp {
            pool: "default".into(),
            worker_id: "default_worker_1_ab".into(),
            worker_pid: 4242,
            beam_pid: Some(100),
            ts_ns: 10,
        });
        // Unary ok (start, checkout, checkin, stop, pool sizes).
        unary(
            t,
            &c,
            1,
            &tool_request("echo", &[("value", "\"hi\"")]),
            &ok,
            M,
        );
        // Tool-level failure: a stop with error_type/error_message.
        unary(
            t,
            &c,
            3,
            &tool_request("fail", &[]),
            &tool_response(false, err),
            M,
        );
        // Streaming with chunks.
        let mut sreq =
            sp::ExecuteToolRequest::decode(&tool_request("stream", &[])[..]).expect("req");
        sreq.stream = true;
        let chunks: Vec<Vec<u8>> = (0..3)
            .map(|i| {
                sp::ToolChunk {
                    chunk_id: format!("stream-{i}"),
                    data: vec![7; 16],
                    is_final: i == 2,
                    ..Default::default()
                }
                .encode_to_vec()
            })
            .collect();
        request_half(t, &c, 5, Some(PATH_STREAM), &sreq.encode_to_vec(), M);
        response_half(t, &c, 5, &chunks, 0, None, M);
        // gRPC status exception.
        request_half(t, &c, 7, Some(PATH_STREAM), &tool_request("s", &[]), M);
        response_half(t, &c, 7, &[], 13, Some(r#"{"type":"RuntimeError"}"#), M);
        // RST_STREAM exception.
        request_half(t, &c, 9, Some(PATH_EXEC), &tool_request("sleep", &[]), M);
        t.observe(ob(
            &c,
            Side::Beam,
            3_000,
            3_010,
            Observed::Reset {
                flow: Flow::Request,
                stream_id: 9,
                code: 8,
            },
        ));
        // SnakeBridge call.
        let sb = tool_request(
            "snakebridge.call",
            &[("library", "\"numpy\""), ("function", "\"mean\"")],
        );
        unary(t, &c, 11, &sb, &ok, M);
        // Internal (heartbeat) call, published because include_internal.
        let hb = sp::HeartbeatRequest {
            session_id: "sess_1".into(),
            client_time: None,
        }
        .encode_to_vec();
        request_half(t, &c, 13, Some(PATH_HEARTBEAT), &hb, M);
        let hb_resp = sp::HeartbeatResponse {
            server_time: None,
            session_valid: true,
        }
        .encode_to_vec();
        response_half(t, &c, 13, &[hb_resp], 0, None, M);
        // ML rules: inference and train step.
        let infer = tool_request("infer", &[("batch", "8"), ("tokens", "64")]);
        unary(t, &c, 15, &infer, &ok, M);
        let train = tool_request(
            "train",
            &[
                ("loss", "0.25"),
                ("lr", "0.01"),
                ("epoch", "2"),
                ("step", "17"),
            ],
        );
        unary(t, &c, 17, &train, &ok, M);
        // Python telemetry: a plain re-emit, ML and memory ones mapped onto the design's.
        request_half(t, &c, 19, Some(PATH_TELEMETRY), &[], M);
        t.observe(ob(&c, Side::Worker, 2_000, 2_001, resp_headers(19)));
        let tv = |v| sp::TelemetryValue { value: Some(v) };
        use sp::telemetry_value::Value as TV;
        let python = [
            (
                vec!["python", "call", "stop"],
                vec![("duration", TV::IntValue(1234))],
            ),
            (
                vec!["python", "ml", "inference"],
                vec![
                    ("duration", TV::IntValue(500_000_000)),
                    ("batch_size", TV::IntValue(4)),
                    ("tokens", TV::IntValue(64)),
                    ("note", TV::StringValue("warm".into())),
                ],
            ),
            (
                vec!["ml", "train_step"],
                vec![
                    ("duration_ns", TV::FloatValue(2.5e6)),
                    ("loss", TV::FloatValue(0.5)),
                    ("learning_rate", TV::FloatValue(0.001)),
                ],
            ),
            (
                vec!["python", "ml", "tensor_op"],
                vec![
                    ("duration", TV::IntValue(1000)),
                    ("input_elements", TV::IntValue(10)),
                    ("output_elements", TV::IntValue(5)),
                ],
            ),
            (
                vec!["python", "memory", "allocate"],
                vec![("bytes", TV::IntValue(1024))],
            ),
            (
                vec!["python", "memory", "release"],
                vec![("bytes", TV::IntValue(512))],
            ),
            (vec![], vec![]),
        ];
        for (i, (parts, measurements)) in python.into_iter().enumerate() {
            let te = sp::TelemetryEvent {
                event_parts: parts.into_iter().map(str::to_string).collect(),
                measurements: measurements
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), tv(v)))
                    .collect(),
                metadata: HashMap::from([("model".to_string(), "tiny-mlp".to_string())]),
                timestamp_ns: if i == 6 { 0 } else { 42 + i as i64 },
                correlation_id: if i == 0 { "c-9".into() } else { String::new() },
            }
            .encode_to_vec();
            t.observe(ob(
                &c,
                Side::Worker,
                2_000,
                2_001 + i as u64,
                msg(Flow::Response, 19, te),
            ));
        }
        // Pipe calls (ok, error).
        let p = Arc::new(ConnContext {
            conn_id: 20,
            role: CallRole::Pipe,
            pool: "legacy".into(),
            worker_id: "legacy_worker_1_cd".into(),
            beam_pid: 100,
            worker_pid: 777,
            adapter: None,
        });
        let preq = |id: i64, cmd: &str| Observed::PipeRequest {
            id: Some(id),
            command: Some(cmd.to_string()),
            args: Some(serde_json::json!({"ms": 20})),
            len: 40,
        };
        let presp = |id: i64, ok: bool| Observed::PipeResponse {
            id: Some(id),
            success: Some(ok),
            error_type: (!ok).then(|| "ValueError".to_string()),
            error_message: None,
            len: 30,
        };
        t.observe(ob(&p, Side::Beam, 100, 110, preq(1, "sleep")));
        t.observe(ob(&p, Side::Beam, 120, 130, preq(2, "fail")));
        t.observe(ob(&p, Side::Worker, 90, 140, preq(1, "sleep")));
        t.observe(ob(&p, Side::Worker, 150, 160, preq(2, "fail")));
        t.observe(ob(&p, Side::Worker, 300, 310, presp(2, false)));
        t.observe(ob(&p, Side::Beam, 305, 320, presp(2, false)));
        t.observe(ob(&p, Side::Worker, 400, 410, presp(1, true)));
        t.observe(ob(&p, Side::Beam, 405, 450, presp(1, true)));
        // Circuit breaker: five failures in a row.
        for i in 0..5u32 {
            let fail = tool_request("fail", &[]);
            unary(t, &c, 21 + 2 * i, &fail, &tool_response(false, err), M);
        }
        // A call in flight when the worker is killed: exception (exit) and crash.
        request_half(t, &c, 41, Some(PATH_EXEC), &tool_request("sleep", &[]), M);
        t.lifecycle(Lifecycle::WorkerExited {
            pool: "default".into(),
            worker_id: "default_worker_1_ab".into(),
            worker_pid: 4242,
            exit_code: None,
            signal: Some(9),
            oom_killed: false,
            ts_ns: 7_000,
        });
        // Crash loop: a health alert.
        for i in 2..5u64 {
            t.lifecycle(Lifecycle::WorkerExited {
                pool: "default".into(),
                worker_id: format!("default_worker_{i}"),
                worker_pid: 5000 + i as u32,
                exit_code: Some(1),
                signal: None,
                oom_killed: i == 4,
                ts_ns: 8_000 + i,
            });
        }
    });
    ev
}

fn conn_info() -> ConnInfo {
    ConnInfo {
        id: 1,
        beam_pid: 10,
        beam_fd: 20,
        worker_pid: 11,
        worker_fd: 7,
        worker_id: "default_worker_1_a".into(),
        pool: "default".into(),
        beam_addr: Some("127.0.0.1:40000".parse().expect("addr")),
        worker_addr: Some("127.0.0.1:50051".parse().expect("addr")),
        role: ConnRole::BeamClient,
        transport: Transport::Grpc,
        inode: 5,
    }
}

fn agent_events() -> Vec<Event> {
    let worker = WorkerInfo {
        pid: 11,
        beam_pid: Some(10),
        worker_id: "default_worker_1_a".into(),
        pool: "default".into(),
        port: Some(50051),
        transport: Transport::Grpc,
        adapter: Some("demo_adapter.DemoAdapter".into()),
        run_id: Some("r1".into()),
        instance_name: None,
        threaded: false,
        elixir_address: None,
        start_time: 5,
    };
    let changes = [
        TopologyChange::BeamDiscovered {
            beam_pid: 10,
            listen_ports: vec![4000, 4001],
            instance_name: Some("demo".into()),
        },
        TopologyChange::WorkerDiscovered(worker),
        TopologyChange::WorkerListening {
            beam_pid: Some(10),
            pid: 11,
            worker_id: "default_worker_1_a".into(),
            pool: "default".into(),
            port: 50051,
        },
        TopologyChange::ConnectionOpened { conn: conn_info() },
        TopologyChange::ConnectionClosed {
            conn: conn_info(),
            closed_by_pid: Some(11),
            reason: CloseReason::FdClosed,
        },
        TopologyChange::WorkerExited {
            beam_pid: Some(10),
            pool: "default".into(),
            worker_id: "default_worker_1_a".into(),
            pid: 11,
            exit_code: None,
            signal: Some(9),
            core_dumped: true,
        },
        TopologyChange::BeamExited {
            beam_pid: 10,
            exit: ExitInfo {
                code: Some(0),
                signal: None,
                core_dumped: false,
            },
        },
    ];
    let mut out: Vec<Event> = changes.iter().map(topology_events::to_event).collect();
    let mut io = IoAccounting::default();
    io.record(10, 20, 1, 100, 0, false);
    io.record(11, 7, 0, 100, 0, false);
    out.push(io.summary(&conn_info(), |_, _| None, true));
    out.into_iter().map(|e| e.at(WALL)).collect()
}

fn golden_text() -> String {
    let mut events: Vec<AgentEvent> = tracker_events().iter().map(|e| (**e).clone()).collect();
    events.extend(agent_events().into_iter().map(AgentEvent::from));
    events.extend(
        crate::gpu::golden_events()
            .into_iter()
            .map(AgentEvent::from),
    );
    let mut buf = Vec::new();
    for e in &events {
        crate::sinks::jsonl::write_event(&mut buf, e).expect("write");
    }
    String::from_utf8(buf).expect("utf8")
}

#[test]
fn every_event_kind_serializes_exactly_as_the_golden_file() {
    let text = golden_text();
    if std::env::var_os("GOLDEN_UPDATE").is_some() {
        std::fs::write(GOLDEN_PATH, &text).expect("write golden");
        return;
    }
    for (i, (got, want)) in text.lines().zip(GOLDEN.lines()).enumerate() {
        assert_eq!(got, want, "line {} differs", i + 1);
    }
    assert_eq!(text.lines().count(), GOLDEN.lines().count(), "event count");
    assert_eq!(text, GOLDEN);
}
