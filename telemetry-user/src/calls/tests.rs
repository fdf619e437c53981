//! The tracker fed observation sequences, no kernel.
use super::input::{CallRole, ConnContext, Flow, FrameEnd, Lifecycle, Observation, Observed, Side};
use super::*;
use crate::events::{schema, AgentEvent, Bus, Event};
use crate::wire::grpc::{GrpcMessage, GrpcMetadata};
use crate::wire::snakepit as sp;
use prost::Message as _;
use std::collections::HashMap;
use std::sync::Arc;

const OFFSET: i128 = 1_700_000_000_000_000_000;
const PATH_EXEC: &str = "/snakepit.bridge.BridgeService/ExecuteTool";
const PATH_STREAM: &str = "/snakepit.bridge.BridgeService/ExecuteStreamingTool";
const PATH_HEARTBEAT: &str = "/snakepit.bridge.BridgeService/Heartbeat";
const PATH_TELEMETRY: &str = "/snakepit.bridge.BridgeService/StreamTelemetry";

fn cfg() -> TrackerConfig {
    TrackerConfig {
        clock: MonoClock::with_offset(OFFSET),
        pool_size_interval_ms: 0,
        ..TrackerConfig::default()
    }
}

/// The events as the sinks get them (typed where the tracker types them).
fn run_typed(
    cfg: TrackerConfig,
    f: impl FnOnce(&mut CallTracker),
) -> (Vec<Arc<AgentEvent>>, TrackerStats) {
    let bus = Bus::new(1 << 16);
    let mut rx = bus.subscribe();
    let mut t = CallTracker::new(cfg, bus);
    f(&mut t);
    let stats = t.stats();
    drop(t);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let events = rt.block_on(async {
        let mut out = Vec::new();
        while let Some(e) = rx.recv().await {
            out.push(e);
        }
        out
    });
    (events, stats)
}

/// The events with their fields by name.
fn run(cfg: TrackerConfig, f: impl FnOnce(&mut CallTracker)) -> (Vec<Arc<Event>>, TrackerStats) {
    let (events, stats) = run_typed(cfg, f);
    let events = events.iter().map(|e| Arc::new(e.to_event())).collect();
    (events, stats)
}

fn named<'a>(events: &'a [Arc<Event>], name: &[&str]) -> Vec<&'a Event> {
    events.iter().filter(|e| e.is(name)).map(|e| &**e).collect()
}

fn conn(conn_id: u64, role: CallRole, worker: &str, pid: u32) -> Arc<ConnContext> {
    Arc::new(ConnContext {
        conn_id,
        role,
        pool: "default".into(),
        worker_id: worker.into(),
        beam_pid: 100,
        worker_pid: pid,
        adapter: Some("demo_adapter.DemoAdapter".to_string()),
    })
}

fn grpc_conn(conn_id: u64) -> Arc<ConnContext> {
    conn(
        conn_id,
        CallRole::BeamCallsWorker,
        "default_worker_1_ab",
        4242,
    )
}

fn ob(c: &Arc<ConnContext>, side: Side, enter: u64, exit: u64, what: Observed) -> Observation {
    Observation {
        conn: c.clone(),
        side,
        tid: if side == Side::Worker { 4243 } else { 101 },
        ts_enter_ns: enter,
        ts_exit_ns: exit,
        what,
    }
}

fn req_headers(stream_id: u32, path: Option<&str>, corr: Option<&str>) -> Observed {
    Observed::Headers {
        flow: Flow::Request,
        stream_id,
        end_stream: false,
        trailers: false,
        metadata: GrpcMetadata {
            path: path.map(str::to_string),
            correlation_id: corr.map(str::to_string),
            ..GrpcMetadata::default()
        },
    }
}

fn resp_headers(stream_id: u32) -> Observed {
    Observed::Headers {
        flow: Flow::Response,
        stream_id,
        end_stream: false,
        trailers: false,
        metadata: GrpcMetadata {
            http_status: Some(200),
            ..GrpcMetadata::default()
        },
    }
}

fn trailers(stream_id: u32, status: u32, message: Option<&str>) -> Observed {
    Observed::Headers {
        flow: Flow::Response,
        stream_id,
        end_stream: true,
        trailers: true,
        metadata: GrpcMetadata {
            grpc_status: Some(status),
            grpc_message: message.map(str::to_string),
            ..GrpcMetadata::default()
        },
    }
}

fn msg(flow: Flow, stream_id: u32, data: Vec<u8>) -> Observed {
    Observed::Message {
        flow,
        stream_id,
        message: GrpcMessage {
            compressed: false,
            len: data.len(),
            data,
            cut: false,
        },
    }
}

fn end(flow: Flow, stream_id: u32) -> Observed {
    Observed::EndStream { flow, stream_id }
}

fn any_json(v: &str) -> sp::Any {
    sp::Any {
        type_url: "type.googleapis.com/google.protobuf.StringValue".to_string(),
        value: v.as_bytes().to_vec(),
    }
}

fn tool_request(tool: &str, params: &[(&str, &str)]) -> Vec<u8> {
    sp::ExecuteToolRequest {
        session_id: "sess_1".to_string(),
        tool_name: tool.to_string(),
        parameters: params
            .iter()
            .map(|(k, v)| (k.to_string(), any_json(v)))
            .collect(),
        metadata: HashMap::from([("correlation_id".to_string(), "c-meta".to_string())]),
        ..Default::default()
    }
    .encode_to_vec()
}

fn tool_response(success: bool, error_message: &str) -> Vec<u8> {
    sp::ExecuteToolResponse {
        success,
        result: success.then(|| any_json("\"hi\"")),
        error_message: error_message.to_string(),
        ..Default::default()
    }
    .encode_to_vec()
}

/// Moments of one unary call, and which sides are observed.
#[derive(Clone, Copy)]
struct Moments {
    t0: u64,
    t1: u64,
    t2: u64,
    t3: u64,
    beam: bool,
    worker: bool,
}

const M: Moments = Moments {
    t0: 1_000,
    t1: 1_200,
    t2: 5_000,
    t3: 5_300,
    beam: true,
    worker: true,
};

fn request_half(
    t: &mut CallTracker,
    c: &Arc<ConnContext>,
    sid: u32,
    path: Option<&str>,
    req: &[u8],
    m: Moments,
) {
    if m.beam {
        t.observe(ob(
            c,
            Side::Beam,
            m.t0,
            m.t0 + 10,
            req_headers(sid, path, Some("c-1")),
        ));
        t.observe(ob(
            c,
            Side::Beam,
            m.t0,
            m.t0 + 10,
            msg(Flow::Request, sid, req.to_vec()),
        ));
        t.observe(ob(c, Side::Beam, m.t0, m.t0 + 10, end(Flow::Request, sid)));
    }
    if m.worker {
        t.observe(ob(
            c,
            Side::Worker,
            m.t1 - 50,
            m.t1,
            req_headers(sid, path, Some("c-1")),
        ));
        t.observe(ob(
            c,
            Side::Worker,
            m.t1 - 50,
            m.t1,
            msg(Flow::Request, sid, req.to_vec()),
        ));
        t.observe(ob(
            c,
            Side::Worker,
            m.t1 - 50,
            m.t1,
            end(Flow::Request, sid),
        ));
    }
}

fn response_half(
    t: &mut CallTracker,
    c: &Arc<ConnContext>,
    sid: u32,
    resp: &[Vec<u8>],
    status: u32,
    status_msg: Option<&str>,
    m: Moments,
) {
    let mut sides = Vec::new();
    if m.worker {
        sides.push((Side::Worker, m.t2, m.t2 + 20));
    }
    if m.beam {
        sides.push((Side::Beam, m.t3 - 20, m.t3));
    }
    for (side, enter, exit) in sides {
        t.observe(ob(c, side, enter, enter + 5, resp_headers(sid)));
        for r in resp {
            t.observe(ob(
                c,
                side,
                enter,
                enter + 5,
                msg(Flow::Response, sid, r.clone()),
            ));
        }
        t.observe(ob(c, side, enter, exit, trailers(sid, status, status_msg)));
        t.observe(ob(c, side, enter, exit, end(Flow::Response, sid)));
    }
}

fn unary(t: &mut CallTracker, c: &Arc<ConnContext>, sid: u32, req: &[u8], resp: &[u8], m: Moments) {
    request_half(t, c, sid, Some(PATH_EXEC), req, m);
    response_half(t, c, sid, &[resp.to_vec()], 0, None, m);
}

fn num(e: &Event, k: &str) -> Option<u64> {
    e.measurements.get(k).and_then(|v| v.as_u64())
}

fn meta<'a>(e: &'a Event, k: &str) -> Option<&'a str> {
    e.metadata.get(k).and_then(|v| v.as_str())
}

#[test]
fn unary_call_seen_from_both_sides() {
    let c = grpc_conn(1);
    let req = tool_request("echo", &[("value", "\"hi\"")]);
    let resp = tool_response(true, "");
    let (ev, stats) = run(cfg(), |t| unary(t, &c, 1, &req, &resp, M));
    let starts = named(&ev, schema::CALL_START);
    assert_eq!(starts.len(), 1);
    assert_eq!(starts[0].time_unix_nano, (OFFSET + 1_000) as u64);
    let stops = named(&ev, schema::CALL_STOP);
    assert_eq!(stops.len(), 1);
    let s = stops[0];
    assert_eq!(num(s, "duration"), Some(4_300));
    assert_eq!(num(s, "queue_time"), Some(200));
    assert_eq!(num(s, "python_time"), Some(3_800));
    assert!(s.measurements.get("serialize_time").is_none());
    assert!(s.measurements.get("deserialize_time").is_none());
    assert_eq!(num(s, "request_bytes"), Some(req.len() as u64 + 5));
    assert_eq!(num(s, "response_bytes"), Some(resp.len() as u64 + 5));
    assert_eq!(meta(s, "operation"), Some("ExecuteTool"));
    assert_eq!(meta(s, "library"), Some("demo_adapter.DemoAdapter"));
    assert_eq!(meta(s, "function"), Some("echo"));
    assert_eq!(meta(s, "session_id"), Some("sess_1"));
    assert_eq!(meta(s, "correlation_id"), Some("c-1"));
    assert_eq!(meta(s, "result"), Some("ok"));
    assert_eq!(meta(s, "pool"), Some("default"));
    assert_eq!(s.metadata["worker_pid"], 4242);
    assert_eq!(s.metadata["worker_tid"], 4243);
    assert_eq!(s.metadata["beam_pid"], 100);
    assert_eq!(s.time_unix_nano, (OFFSET + 5_300) as u64);
    assert!(s.metadata.get("internal").is_none());
    let co = named(&ev, schema::POOL_CHECKOUT);
    assert_eq!(co.len(), 1);
    assert_eq!(num(co[0], "queue_time"), Some(200));
    let ci = named(&ev, schema::POOL_CHECKIN);
    assert_eq!(num(ci[0], "busy_time"), Some(4_300));
    assert_eq!(stats.calls_completed, 1);
    assert_eq!(stats.calls_ok, 1);
    assert_eq!(stats.in_flight, 0);
    assert_eq!(stats.late_observations, 0);
    assert_eq!(stats.unmatched_responses, 0);
}

/// Sends are timed at their exits: on two CPUs the worker can read a request before
/// the BEAM's send returns, and the BEAM can read the response before the worker's
/// does. The moments are put back in causal order, so the split still adds up.
#[test]
fn sends_seen_after_their_receipt_keep_the_moments_in_order() {
    let c = grpc_conn(1);
    let req = tool_request("echo", &[("value", "\"hi\"")]);
    let resp = tool_response(true, "");
    let m = Moments {
        t0: 1_300,
        t1: 1_200,
        t2: 5_400,
        t3: 5_300,
        beam: true,
        worker: true,
    };
    let (ev, _) = run(cfg(), |t| unary(t, &c, 1, &req, &resp, m));
    let stops = named(&ev, schema::CALL_STOP);
    assert_eq!(stops.len(), 1);
    let s = stops[0];
    assert_eq!(num(s, "duration"), Some(5_300 - 1_200));
    assert_eq!(num(s, "queue_time"), Some(0));
    assert_eq!(num(s, "python_time"), Some(5_300 - 1_200));
}

#[test]
fn worker_side_only_completes_at_the_workers_end() {
    let c = grpc_conn(2);
    let req = tool_request("echo", &[]);
    let resp = tool_response(true, "");
    let m = Moments { beam: false, ..M };
    let (ev, stats) = run(cfg(), |t| unary(t, &c, 1, &req, &resp, m));
    let stops = named(&ev, schema::CALL_STOP);
    assert_eq!(stops.len(), 1);
    assert_eq!(num(stops[0], "duration"), Some(3_800));
    assert_eq!(num(stops[0], "python_time"), Some(3_800));
    assert!(stops[0].measurements.get("queue_time").is_none());
    assert_eq!(stats.worker_only_completions, 1);
}

#[test]
fn worker_side_end_waits_a_grace_period_when_the_beam_side_is_watched() {
    let c = grpc_conn(3);
    let req = tool_request("echo", &[]);
    let resp = tool_response(true, "");
    let (ev, stats) = run(cfg(), |t| {
        // The BEAM side was seen on this connection, but this call's end never shows.
        unary(t, &c, 1, &req, &resp, M);
        request_half(t, &c, 3, Some(PATH_EXEC), &req, M);
        response_half(
            t,
            &c,
            3,
            std::slice::from_ref(&resp),
            0,
            None,
            Moments { beam: false, ..M },
        );
        t.tick(M.t2 + 1_000);
        assert_eq!(t.stats().in_flight, 1);
        t.tick(M.t2 + 20 + 2_000_000_000);
    });
    assert_eq!(named(&ev, schema::CALL_STOP).len(), 2);
    assert_eq!(stats.worker_only_completions, 1);
    assert_eq!(stats.in_flight, 0);
}

#[test]
fn beam_side_only_measures_t3_minus_t0() {
    let c = grpc_conn(4);
    let req = tool_request("echo", &[]);
    let resp = tool_response(true, "");
    let m = Moments { worker: false, ..M };
    let (ev, _) = run(cfg(), |t| unary(t, &c, 1, &req, &resp, m));
    let stops = named(&ev, schema::CALL_STOP);
    assert_eq!(num(stops[0], "duration"), Some(4_300));
    assert!(stops[0].measurements.get("queue_time").is_none());
    assert!(stops[0].measurements.get("python_time").is_none());
    let co = named(&ev, schema::POOL_CHECKOUT);
    assert_eq!(co.len(), 1);
}

#[test]
fn interleaved_streams_on_one_connection_are_kept_apart() {
    let c = grpc_conn(5);
    let (ev, stats) = run(cfg(), |t| {
        let a = tool_request("sleep", &[]);
        let b = tool_request("echo", &[]);
        let ma = Moments {
            t0: 100,
            t1: 150,
            t2: 9_000,
            t3: 9_100,
            ..M
        };
        let mb = Moments {
            t0: 200,
            t1: 260,
            t2: 500,
            t3: 600,
            ..M
        };
        request_half(t, &c, 1, Some(PATH_EXEC), &a, ma);
        request_half(t, &c, 3, Some(PATH_EXEC), &b, mb);
        response_half(t, &c, 3, &[tool_response(true, "")], 0, None, mb);
        response_half(t, &c, 1, &[tool_response(true, "")], 0, None, ma);
    });
    let stops = named(&ev, schema::CALL_STOP);
    assert_eq!(stops.len(), 2);
    assert_eq!(meta(stops[0], "function"), Some("echo"));
    assert_eq!(num(stops[0], "duration"), Some(400));
    assert_eq!(stops[0].metadata["stream_id"], 3);
    assert_eq!(meta(stops[1], "function"), Some("sleep"));
    assert_eq!(num(stops[1], "duration"), Some(9_000));
    assert_eq!(stats.calls_completed, 2);
}

#[test]
fn streaming_call_counts_chunks_and_ends_at_trailers() {
    let c = grpc_conn(6);
    let mut req = sp::ExecuteToolRequest::decode(&tool_request("stream", &[])[..]).expect("req");
    req.stream = true;
    let req = req.encode_to_vec();
    let chunks: Vec<Vec<u8>> = (0..5)
        .map(|i| {
            sp::ToolChunk {
                chunk_id: format!("stream-{i}"),
                data: vec![7; 1024],
                is_final: i == 4,
                ..Default::default()
            }
            .encode_to_vec()
        })
        .collect();
    let (ev, _) = run(cfg(), |t| {
        request_half(t, &c, 1, Some(PATH_STREAM), &req, M);
        response_half(t, &c, 1, &chunks, 0, None, M);
    });
    let stops = named(&ev, schema::CALL_STOP);
    assert_eq!(stops.len(), 1);
    assert_eq!(meta(stops[0], "operation"), Some("ExecuteStreamingTool"));
    assert_eq!(num(stops[0], "chunks"), Some(5));
    let total: u64 = chunks.iter().map(|c| c.len() as u64 + 5).sum();
    assert_eq!(num(stops[0], "response_bytes"), Some(total));
    assert_eq!(meta(stops[0], "result"), Some("ok"));
}

#[test]
fn failing_tool_is_a_stop_with_the_error_jsons_type() {
    let c = grpc_conn(7);
    let err = r#"{"type":"ValueError","message":"boom","stacktrace":[],"context":{}}"#;
    let (ev, stats) = run(cfg(), |t| {
        unary(
            t,
            &c,
            1,
            &tool_request("fail", &[]),
            &tool_response(false, err),
            M,
        )
    });
    let stops = named(&ev, schema::CALL_STOP);
    assert_eq!(meta(stops[0], "result"), Some("error"));
    assert_eq!(meta(stops[0], "error_type"), Some("ValueError"));
    assert_eq!(meta(stops[0], "error_message"), Some("boom"));
    assert_eq!(stats.calls_error, 1);
    assert!(named(&ev, schema::CALL_EXCEPTION).is_empty());
}

#[test]
fn grpc_status_13_is_an_exception_named_internal() {
    let c = grpc_conn(8);
    let req = tool_request("stream", &[]);
    let (ev, stats) = run(cfg(), |t| {
        request_half(t, &c, 1, Some(PATH_STREAM), &req, M);
        response_half(t, &c, 1, &[], 13, Some(r#"{"type":"RuntimeError"}"#), M);
    });
    let ex = named(&ev, schema::CALL_EXCEPTION);
    assert_eq!(ex.len(), 1);
    assert_eq!(meta(ex[0], "error_type"), Some("INTERNAL"));
    assert_eq!(meta(ex[0], "kind"), Some("error"));
    assert_eq!(ex[0].metadata["grpc_status"], 13);
    assert_eq!(num(ex[0], "duration"), Some(4_300));
    assert_eq!(stats.exceptions, 1);
    assert!(named(&ev, schema::CALL_STOP).is_empty());
}

#[test]
fn rst_stream_ends_the_call_as_reset_once() {
    let c = grpc_conn(9);
    let req = tool_request("sleep", &[]);
    let (ev, stats) = run(cfg(), |t| {
        request_half(t, &c, 1, Some(PATH_EXEC), &req, M);
        let rst = || Observed::Reset {
            flow: Flow::Request,
            stream_id: 1,
            code: 8,
        };
        t.observe(ob(&c, Side::Beam, 3_000, 3_010, rst()));
        t.observe(ob(&c, Side::Worker, 3_020, 3_030, rst()));
    });
    let ex = named(&ev, schema::CALL_EXCEPTION);
    assert_eq!(ex.len(), 1);
    assert_eq!(meta(ex[0], "error_type"), Some(ERROR_RESET));
    assert_eq!(num(ex[0], "duration"), Some(2_010));
    assert_eq!(stats.late_observations, 1);
}

#[test]
fn worker_killed_mid_call_ends_it_as_exit_and_reports_the_crash() {
    let c = grpc_conn(10);
    let req = tool_request("sleep", &[]);
    let (ev, stats) = run(cfg(), |t| {
        t.lifecycle(Lifecycle::WorkerUp {
            pool: "default".into(),
            worker_id: "default_worker_1_ab".into(),
            worker_pid: 4242,
            beam_pid: Some(100),
            ts_ns: 10,
        });
        request_half(t, &c, 1, Some(PATH_EXEC), &req, M);
        request_half(t, &c, 3, Some(PATH_EXEC), &req, M);
        t.lifecycle(Lifecycle::WorkerExited {
            pool: "default".into(),
            worker_id: "default_worker_1_ab".into(),
            worker_pid: 4242,
            exit_code: None,
            signal: Some(9),
            oom_killed: false,
            ts_ns: 7_000,
        });
    });
    let ex = named(&ev, schema::CALL_EXCEPTION);
    assert_eq!(ex.len(), 2);
    assert!(ex.iter().all(|e| meta(e, "kind") == Some("exit")));
    assert_eq!(num(ex[0], "duration"), Some(6_000));
    let crash = named(&ev, schema::WORKER_CRASH);
    assert_eq!(crash.len(), 1);
    assert_eq!(crash[0].metadata["signal"], 9);
    assert_eq!(meta(crash[0], "type"), Some("signal"));
    assert_eq!(num(crash[0], "in_flight_calls"), Some(2));
    assert_eq!(stats.worker_crashes, 1);
    assert_eq!(stats.in_flight, 0);
    // The pool shrinks to zero and nothing is left busy.
    let sizes = named(&ev, schema::POOL_SIZE);
    let last = sizes.last().expect("size event");
    assert_eq!(num(last, "size"), Some(0));
    assert_eq!(num(last, "busy"), Some(0));
}

#[test]
fn a_late_observation_does_not_bring_an_exited_worker_back() {
    let c = grpc_conn(12);
    let req = tool_request("sleep", &[]);
    let (ev, _) = run(cfg(), |t| {
        // Known from its connection's traffic alone, then exited.
        request_half(t, &c, 1, Some(PATH_EXEC), &req, M);
        t.lifecycle(Lifecycle::WorkerExited {
            pool: "default".into(),
            worker_id: "default_worker_1_ab".into(),
            worker_pid: 4242,
            exit_code: Some(0),
            signal: None,
            oom_killed: false,
            ts_ns: 7_000,
        });
        // Bytes of its connection read after the exit was seen.
        let late = Moments {
            t0: 8_000,
            t1: 8_200,
            ..M
        };
        request_half(t, &c, 3, Some(PATH_EXEC), &req, late);
    });
    let sizes: Vec<_> = named(&ev, schema::POOL_SIZE)
        .iter()
        .map(|e| num(e, "size"))
        .collect();
    assert_eq!(sizes.first(), Some(&Some(1)));
    assert_eq!(sizes.last(), Some(&Some(0)));
}

#[test]
fn pipe_calls_match_by_id_on_one_pipe_pair() {
    let c = Arc::new(ConnContext {
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
    let (ev, stats) = run(cfg(), |t| {
        t.observe(ob(&c, Side::Beam, 100, 110, preq(1, "sleep")));
        t.observe(ob(&c, Side::Beam, 120, 130, preq(2, "fail")));
        t.observe(ob(&c, Side::Worker, 90, 140, preq(1, "sleep")));
        t.observe(ob(&c, Side::Worker, 150, 160, preq(2, "fail")));
        t.observe(ob(&c, Side::Worker, 300, 310, presp(2, false)));
        t.observe(ob(&c, Side::Beam, 305, 320, presp(2, false)));
        t.observe(ob(&c, Side::Worker, 400, 410, presp(1, true)));
        t.observe(ob(&c, Side::Beam, 405, 450, presp(1, true)));
    });
    let stops = named(&ev, schema::CALL_STOP);
    assert_eq!(stops.len(), 2);
    let fail = stops[0];
    assert_eq!(meta(fail, "operation"), Some(PIPE_OPERATION));
    assert_eq!(meta(fail, "function"), Some("fail"));
    assert_eq!(meta(fail, "error_type"), Some("ValueError"));
    assert_eq!(meta(fail, "correlation_id"), Some("2"));
    assert_eq!(num(fail, "duration"), Some(200));
    assert_eq!(num(fail, "queue_time"), Some(40));
    assert_eq!(num(fail, "python_time"), Some(140));
    let ok = stops[1];
    assert_eq!(meta(ok, "result"), Some("ok"));
    assert_eq!(num(ok, "duration"), Some(350));
    assert_eq!(num(ok, "request_bytes"), Some(40));
    assert_eq!(num(ok, "response_bytes"), Some(30));
    assert_eq!(stats.calls_completed, 2);
}

#[test]
fn unknown_path_takes_the_method_from_the_message() {
    let c = grpc_conn(11);
    let req = tool_request("echo", &[]);
    let resp = tool_response(true, "");
    let (ev, stats) = run(cfg(), |t| {
        // Joined mid-connection: the :path was an unknown HPACK entry.
        request_half(t, &c, 101, None, &req, M);
        response_half(t, &c, 101, std::slice::from_ref(&resp), 0, None, M);
        // A request whose header block was lost and whose body says nothing.
        t.observe(ob(
            &c,
            Side::Beam,
            9_000,
            9_010,
            Observed::HeadersLost {
                flow: Flow::Request,
                stream_id: 103,
                end_stream: false,
            },
        ));
        t.observe(ob(
            &c,
            Side::Beam,
            9_000,
            9_010,
            msg(Flow::Request, 103, vec![]),
        ));
        t.observe(ob(&c, Side::Beam, 9_000, 9_010, end(Flow::Request, 103)));
    });
    let stops = named(&ev, schema::CALL_STOP);
    assert_eq!(stops.len(), 1);
    assert_eq!(meta(stops[0], "operation"), Some("ExecuteTool"));
    assert_eq!(meta(stops[0], "function"), Some("echo"));
    assert_eq!(stats.unknown_methods, 1);
}

#[test]
fn snakebridge_calls_report_the_wrapped_library_and_function() {
    let c = grpc_conn(12);
    let req = tool_request(
        "snakebridge.call",
        &[
            ("library", "\"numpy\""),
            ("function", "\"mean\""),
            ("args", "[[1,2,3,4]]"),
        ],
    );
    let (ev, _) = run(cfg(), |t| {
        unary(t, &c, 1, &req, &tool_response(true, ""), M)
    });
    let starts = named(&ev, schema::CALL_START);
    assert_eq!(meta(starts[0], "library"), Some("numpy"));
    assert_eq!(meta(starts[0], "function"), Some("mean"));
    let stops = named(&ev, schema::CALL_STOP);
    assert_eq!(meta(stops[0], "library"), Some("numpy"));
    assert_eq!(meta(stops[0], "tool"), Some("snakebridge.call"));
}

#[test]
fn internal_calls_are_tracked_but_not_published_by_default() {
    let c = grpc_conn(13);
    let hb = sp::HeartbeatRequest {
        session_id: "sess_1".into(),
        client_time: Some(sp::Timestamp {
            seconds: 5,
            nanos: 1,
        }),
    }
    .encode_to_vec();
    let hb_resp = sp::HeartbeatResponse {
        server_time: None,
        session_valid: true,
    }
    .encode_to_vec();
    let feed = |t: &mut CallTracker| {
        request_half(t, &c, 1, Some(PATH_HEARTBEAT), &hb, M);
        response_half(t, &c, 1, std::slice::from_ref(&hb_resp), 0, None, M);
    };
    let (ev, stats) = run(cfg(), feed);
    assert!(named(&ev, schema::CALL_START).is_empty());
    assert!(named(&ev, schema::CALL_STOP).is_empty());
    assert!(named(&ev, schema::POOL_CHECKOUT).is_empty());
    assert_eq!(stats.internal_calls, 1);
    assert_eq!(stats.calls_completed, 1);
    // Never busy: every size event shows an idle worker.
    assert!(named(&ev, schema::POOL_SIZE)
        .iter()
        .all(|e| num(e, "busy") == Some(0)));
    let with = TrackerConfig {
        include_internal: true,
        ..cfg()
    };
    let (ev, _) = run(with, feed);
    let stops = named(&ev, schema::CALL_STOP);
    assert_eq!(stops.len(), 1);
    assert_eq!(meta(stops[0], "operation"), Some("Heartbeat"));
    assert_eq!(stops[0].metadata["internal"], true);
}

#[test]
fn pool_size_busy_and_idle_follow_calls() {
    let c = grpc_conn(14);
    let req = tool_request("sleep", &[]);
    let (ev, _) = run(cfg(), |t| {
        for (i, id) in ["default_worker_1_ab", "default_worker_2_cd"]
            .iter()
            .enumerate()
        {
            t.lifecycle(Lifecycle::WorkerUp {
                pool: "default".into(),
                worker_id: id.to_string(),
                worker_pid: 4242 + i as u32 * 10,
                beam_pid: Some(100),
                ts_ns: 1,
            });
        }
        request_half(t, &c, 1, Some(PATH_EXEC), &req, M);
        request_half(t, &c, 3, Some(PATH_EXEC), &req, M);
        response_half(t, &c, 1, &[tool_response(true, "")], 0, None, M);
        response_half(t, &c, 3, &[tool_response(true, "")], 0, None, M);
    });
    let sizes: Vec<(u64, u64, u64)> = named(&ev, schema::POOL_SIZE)
        .iter()
        .map(|e| {
            (
                num(e, "size").unwrap_or(99),
                num(e, "busy").unwrap_or(99),
                num(e, "idle").unwrap_or(99),
            )
        })
        .collect();
    assert_eq!(sizes, vec![(1, 0, 1), (2, 0, 2), (2, 1, 1), (2, 0, 2)]);
    assert!(named(&ev, schema::POOL_SIZE)
        .iter()
        .all(|e| meta(e, "pool") == Some("default")));
}

#[test]
fn pool_size_events_are_rate_limited_and_flushed_by_tick() {
    let c = grpc_conn(15);
    let req = tool_request("echo", &[]);
    let slow = TrackerConfig {
        pool_size_interval_ms: 1000,
        ..cfg()
    };
    let (ev, _) = run(slow, |t| {
        unary(t, &c, 1, &req, &tool_response(true, ""), M);
        t.tick(2_000_000_000);
    });
    let sizes: Vec<u64> = named(&ev, schema::POOL_SIZE)
        .iter()
        .map(|e| num(e, "busy").unwrap_or(99))
        .collect();
    // New worker (size), busy (within the interval: deferred), tick flushes idle.
    assert_eq!(sizes, vec![0, 0]);
}

#[test]
fn circuit_breaker_opens_after_consecutive_failures() {
    let c = grpc_conn(16);
    let err = r#"{"type":"ValueError","message":"boom"}"#;
    let (ev, stats) = run(cfg(), |t| {
        unary(
            t,
            &c,
            1,
            &tool_request("fail", &[]),
            &tool_response(false, err),
            M,
        );
        unary(
            t,
            &c,
            3,
            &tool_request("echo", &[]),
            &tool_response(true, ""),
            M,
        );
        for i in 0..6u32 {
            let sid = 5 + 2 * i;
            unary(
                t,
                &c,
                sid,
                &tool_request("fail", &[]),
                &tool_response(false, err),
                M,
            );
        }
    });
    let open = named(&ev, schema::CIRCUIT_BREAKER_OPEN);
    assert_eq!(open.len(), 1);
    assert_eq!(num(open[0], "failure_count"), Some(5));
    assert_eq!(meta(open[0], "worker_id"), Some("default_worker_1_ab"));
    assert_eq!(meta(open[0], "error_type"), Some("ValueError"));
    assert_eq!(stats.circuit_breaker_opens, 1);
}

#[test]
fn health_alert_after_crashes_in_a_window() {
    let exit = |i: u64, ts: u64| Lifecycle::WorkerExited {
        pool: "default".into(),
        worker_id: format!("default_worker_{i}"),
        worker_pid: 5000 + i as u32,
        exit_code: Some(1),
        signal: None,
        oom_killed: false,
        ts_ns: ts,
    };
    let s = 1_000_000_000u64;
    let (ev, stats) = run(cfg(), |t| {
        t.lifecycle(exit(1, 0));
        t.lifecycle(exit(2, 70 * s)); // first one fell out of the 60 s window
        t.lifecycle(exit(3, 80 * s));
        t.lifecycle(exit(4, 90 * s)); // third within the window: alert
        t.lifecycle(exit(5, 95 * s)); // still in the same episode: no second alert
    });
    let alerts = named(&ev, schema::HEALTH_ALERT);
    assert_eq!(alerts.len(), 1);
    assert_eq!(num(alerts[0], "crash_count"), Some(3));
    assert_eq!(alerts[0].time_unix_nano, (OFFSET + 90 * s as i128) as u64);
    assert_eq!(named(&ev, schema::WORKER_CRASH).len(), 5);
    assert_eq!(stats.health_alerts, 1);
    // A clean exit is not a crash.
    let (ev, _) = run(cfg(), |t| {
        t.lifecycle(Lifecycle::WorkerExited {
            pool: "default".into(),
            worker_id: "w".into(),
            worker_pid: 1,
            exit_code: Some(0),
            signal: None,
            oom_killed: false,
            ts_ns: 1,
        })
    });
    assert!(named(&ev, schema::WORKER_CRASH).is_empty());
}

#[test]
fn sample_rate_thins_events_but_not_counters() {
    let c = grpc_conn(17);
    let req = tool_request("echo", &[]);
    let resp = tool_response(true, "");
    let half = TrackerConfig {
        sample_rate: 0.5,
        ..cfg()
    };
    let n = 400u32;
    let (ev, stats) = run(half, |t| {
        for i in 0..n {
            unary(t, &c, 1 + 2 * i, &req, &resp, M);
        }
    });
    let stops = named(&ev, schema::CALL_STOP).len() as u32;
    let starts = named(&ev, schema::CALL_START).len() as u32;
    assert!(stops > n / 4 && stops < 3 * n / 4, "{stops} stops");
    assert_eq!(stops, starts);
    assert_eq!(named(&ev, schema::POOL_CHECKIN).len() as u32, stops);
    assert_eq!(stats.calls_completed, n as u64);
    assert_eq!(stats.calls_ok, n as u64);
    assert_eq!(stats.sampled_out, (n - stops) as u64);
}

#[test]
fn python_telemetry_is_re_emitted_once_under_snakepit_python() {
    let c = grpc_conn(18);
    let te = sp::TelemetryEvent {
        event_parts: vec!["python".into(), "call".into(), "stop".into()],
        measurements: HashMap::from([(
            "duration".to_string(),
            sp::TelemetryValue {
                value: Some(sp::telemetry_value::Value::IntValue(1234)),
            },
        )]),
        metadata: HashMap::from([("tool".to_string(), "echo".to_string())]),
        timestamp_ns: 42,
        correlation_id: "c-9".into(),
    }
    .encode_to_vec();
    let (ev, stats) = run(cfg(), |t| {
        request_half(t, &c, 1, Some(PATH_TELEMETRY), &[], M);
        t.observe(ob(&c, Side::Worker, 2_000, 2_001, resp_headers(1)));
        t.observe(ob(
            &c,
            Side::Worker,
            2_000,
            2_001,
            msg(Flow::Response, 1, te.clone()),
        ));
        t.observe(ob(&c, Side::Beam, 2_005, 2_010, resp_headers(1)));
        t.observe(ob(
            &c,
            Side::Beam,
            2_005,
            2_010,
            msg(Flow::Response, 1, te.clone()),
        ));
    });
    let py: Vec<_> = ev
        .iter()
        .filter(|e| {
            e.name.first().map(String::as_str) == Some("snakepit")
                && e.name.get(1).map(String::as_str) == Some("python")
        })
        .collect();
    assert_eq!(py.len(), 1);
    assert_eq!(py[0].name, vec!["snakepit", "python", "call", "stop"]);
    assert_eq!(py[0].time_unix_nano, 42);
    assert_eq!(py[0].measurements["duration"], 1234);
    assert_eq!(meta(py[0], "tool"), Some("echo"));
    assert_eq!(meta(py[0], "correlation_id"), Some("c-9"));
    assert_eq!(stats.python_events, 1);
    assert!(named(&ev, schema::CALL_START).is_empty());
}

#[test]
fn in_flight_calls_are_bounded_and_the_oldest_evicted() {
    let c = grpc_conn(19);
    let req = tool_request("sleep", &[]);
    let small = TrackerConfig {
        max_in_flight_per_conn: 2,
        max_in_flight: 3,
        ..cfg()
    };
    let (_, stats) = run(small, |t| {
        for sid in [1u32, 3, 5] {
            request_half(t, &c, sid, Some(PATH_EXEC), &req, M);
        }
        let other = grpc_conn(21);
        for sid in [1u32, 3] {
            request_half(t, &other, sid, Some(PATH_EXEC), &req, M);
        }
        // A response for the evicted stream 1 matches nothing.
        response_half(t, &c, 1, &[tool_response(true, "")], 0, None, M);
    });
    assert_eq!(stats.evicted, 2);
    assert_eq!(stats.in_flight, 3);
    assert!(stats.late_observations > 0);
}

/// Discovery reports a dying worker's connections closed just before the worker's
/// exit: the crash still counts the calls that were in flight on them.
#[test]
fn worker_crash_counts_calls_whose_connection_closed_first() {
    let c = grpc_conn(10);
    let req = tool_request("sleep", &[]);
    let (ev, _) = run(cfg(), |t| {
        t.lifecycle(Lifecycle::WorkerUp {
            pool: "default".into(),
            worker_id: "default_worker_1_ab".into(),
            worker_pid: 4242,
            beam_pid: Some(100),
            ts_ns: 10,
        });
        request_half(t, &c, 1, Some(PATH_EXEC), &req, M);
        request_half(t, &c, 3, Some(PATH_EXEC), &req, M);
        t.lifecycle(Lifecycle::ConnectionClosed {
            conn_id: 10,
            ts_ns: 6_900,
        });
        t.lifecycle(Lifecycle::WorkerExited {
            pool: "default".into(),
            worker_id: "default_worker_1_ab".into(),
            worker_pid: 4242,
            exit_code: None,
            signal: Some(9),
            oom_killed: false,
            ts_ns: 7_000,
        });
        t.tick(7_100);
    });
    let crash = named(&ev, schema::WORKER_CRASH);
    assert_eq!(crash.len(), 1);
    assert_eq!(num(crash[0], "in_flight_calls"), Some(2));
    let ex = named(&ev, schema::CALL_EXCEPTION);
    assert_eq!(ex.len(), 2, "each call ends once");
    assert!(ex.iter().all(|e| meta(e, "kind") == Some("exit")));
}

#[test]
fn connection_close_ends_in_flight_calls_as_exit() {
    let c = grpc_conn(22);
    let req = tool_request("sleep", &[]);
    let (ev, _) = run(cfg(), |t| {
        request_half(t, &c, 1, Some(PATH_EXEC), &req, M);
        t.lifecycle(Lifecycle::ConnectionClosed {
            conn_id: 22,
            ts_ns: 3_000,
        });
        // Ended at the next tick (a worker exit in the same batch would claim it).
        t.tick(3_100);
    });
    let ex = named(&ev, schema::CALL_EXCEPTION);
    assert_eq!(ex.len(), 1);
    assert_eq!(meta(ex[0], "kind"), Some("exit"));
    assert_eq!(meta(ex[0], "error_type"), Some(ERROR_EXIT));
}

#[test]
fn config_reads_from_toml_with_defaults() {
    let c: TrackerConfig = toml::from_str("slow_call_ms = 250\nsample_rate = 0.1").expect("toml");
    assert_eq!(c.slow_call_ms, 250);
    assert_eq!(c.sample_rate, 0.1);
    assert_eq!(c.failure_threshold, 5);
    assert_eq!(c.crash_threshold, 3);
    assert_eq!(c.crash_window_s, 60);
    assert!(!c.include_internal);
    assert!(toml::from_str::<TrackerConfig>("bogus = 1").is_err());
}

#[test]
fn grpc_status_names() {
    assert_eq!(grpc_status_name(13), "INTERNAL");
    assert_eq!(grpc_status_name(14), "UNAVAILABLE");
    assert_eq!(grpc_status_name(99), "STATUS_99");
}

#[test]
fn client_sync_loss_completes_in_flight_calls_from_the_worker_side_only() {
    let c = grpc_conn(23);
    let req = tool_request("echo", &[]);
    let resp = tool_response(true, "");
    let (ev, stats) = run(cfg(), |t| {
        request_half(t, &c, 1, Some(PATH_EXEC), &req, M);
        t.observe(ob(
            &c,
            Side::Beam,
            0,
            0,
            Observed::SyncLost {
                flow: Flow::Response,
            },
        ));
        response_half(
            t,
            &c,
            1,
            std::slice::from_ref(&resp),
            0,
            None,
            Moments { beam: false, ..M },
        );
        assert_eq!(t.stats().in_flight, 0);
        // After the decoder resynchronises, new calls end on the BEAM side again.
        unary(t, &c, 3, &req, &resp, M);
    });
    let stops = named(&ev, schema::CALL_STOP);
    assert_eq!(stops.len(), 2);
    assert_eq!(num(stops[0], "duration"), Some(3_800));
    assert_eq!(num(stops[1], "duration"), Some(4_300));
    assert_eq!(stats.worker_only_completions, 1);
}

/// The BEAM's side of a request only (its writes, decoded).
const BEAM_ONLY: Moments = Moments { worker: false, ..M };

/// Decode-once: each flow is decoded from its sender only; the receivers' reads come
/// as timing. `beam_end_first`: the BEAM's read of the response end is seen before
/// the worker's decoded response (ring-buffer order across CPUs).
fn unary_decoded_once(
    t: &mut CallTracker,
    c: &Arc<ConnContext>,
    req: &[u8],
    resp: &[u8],
    beam_end_first: bool,
) {
    let timing = |flow, end| Observed::Timing {
        flow,
        stream_id: 1,
        end,
    };
    request_half(t, c, 1, Some(PATH_EXEC), req, BEAM_ONLY);
    t.observe(ob(
        c,
        Side::Worker,
        M.t1 - 50,
        M.t1,
        timing(Flow::Request, FrameEnd::Headers { end_stream: false }),
    ));
    t.observe(ob(
        c,
        Side::Worker,
        M.t1 - 50,
        M.t1,
        timing(Flow::Request, FrameEnd::Stream),
    ));
    let beam_end = ob(
        c,
        Side::Beam,
        M.t3 - 20,
        M.t3,
        timing(Flow::Response, FrameEnd::Headers { end_stream: true }),
    );
    if beam_end_first {
        t.observe(beam_end.clone());
    }
    t.observe(ob(c, Side::Worker, M.t2, M.t2 + 5, resp_headers(1)));
    t.observe(ob(
        c,
        Side::Worker,
        M.t2,
        M.t2 + 5,
        msg(Flow::Response, 1, resp.to_vec()),
    ));
    t.observe(ob(c, Side::Worker, M.t2, M.t2 + 20, trailers(1, 0, None)));
    t.observe(ob(c, Side::Worker, M.t2, M.t2 + 20, end(Flow::Response, 1)));
    if !beam_end_first {
        t.observe(beam_end);
    }
}

#[test]
fn decode_once_takes_content_from_senders_and_times_from_receivers() {
    for beam_end_first in [false, true] {
        let c = grpc_conn(40);
        let req = tool_request("echo", &[("value", "\"hi\"")]);
        let resp = tool_response(false, r#"{"type": "ValueError", "message": "boom"}"#);
        let (ev, stats) = run(cfg(), |t| {
            unary_decoded_once(t, &c, &req, &resp, beam_end_first)
        });
        let stops = named(&ev, schema::CALL_STOP);
        assert_eq!(stops.len(), 1, "beam_end_first {beam_end_first}");
        let s = stops[0];
        assert_eq!(num(s, "duration"), Some(4_300));
        assert_eq!(num(s, "queue_time"), Some(200));
        assert_eq!(num(s, "python_time"), Some(3_800));
        assert_eq!(meta(s, "function"), Some("echo"));
        assert_eq!(meta(s, "result"), Some("error"));
        assert_eq!(meta(s, "error_type"), Some("ValueError"));
        assert_eq!(s.metadata["worker_tid"], 4243);
        assert_eq!(s.time_unix_nano, (OFFSET + 5_300) as u64);
        assert_eq!(named(&ev, schema::CALL_START).len(), 1);
        assert_eq!(stats.worker_only_completions, 0);
        assert_eq!(stats.in_flight, 0);
    }
}

#[test]
fn decode_once_client_end_without_the_servers_side_completes_after_the_grace() {
    let c = grpc_conn(41);
    let req = tool_request("echo", &[]);
    let (ev, stats) = run(cfg(), |t| {
        request_half(t, &c, 1, Some(PATH_EXEC), &req, BEAM_ONLY);
        let timed = Observed::Timing {
            flow: Flow::Response,
            stream_id: 1,
            end: FrameEnd::Stream,
        };
        t.observe(ob(&c, Side::Beam, M.t3 - 20, M.t3, timed));
        t.tick(M.t3 + 1_000);
        assert_eq!(t.stats().in_flight, 1, "waits for the server's side");
        t.tick(M.t3 + 3_000_000_000);
    });
    let stops = named(&ev, schema::CALL_STOP);
    assert_eq!(stops.len(), 1);
    assert_eq!(num(stops[0], "duration"), Some(4_300));
    assert_eq!(stats.in_flight, 0);
}
/// The worker's decoder lost frame sync in the response (at t2).
fn response_sync_lost(c: &Arc<ConnContext>) -> Observation {
    let lost = Observed::SyncLost {
        flow: Flow::Response,
    };
    ob(c, Side::Worker, M.t2, M.t2 + 9, lost)
}

/// The BEAM read the response's end (trailers with END_STREAM) at t3, timed.
fn response_end_read(c: &Arc<ConnContext>) -> Observation {
    let timed = Observed::Timing {
        flow: Flow::Response,
        stream_id: 1,
        end: FrameEnd::Headers { end_stream: true },
    };
    ob(c, Side::Beam, M.t3 - 20, M.t3, timed)
}

/// A 50 MB response written in one sendmsg overflows the kernel's mark slots: the
/// server side's decoder loses sync and never sees the trailers. The client's timed
/// end completes the call at once, in either order. Its response message (the tool's
/// `success`) was never read: the result is not known, not `ok`.
#[test]
fn decode_once_server_sync_lost_completes_at_the_clients_timed_end() {
    for lost_first in [true, false] {
        let c = grpc_conn(42);
        let req = tool_request("large", &[]);
        let (ev, stats) = run(cfg(), |t| {
            request_half(t, &c, 1, Some(PATH_EXEC), &req, BEAM_ONLY);
            t.observe(ob(&c, Side::Worker, M.t2, M.t2 + 5, resp_headers(1)));
            let (lost, timed) = (response_sync_lost(&c), response_end_read(&c));
            if lost_first {
                t.observe(lost);
                t.observe(timed);
            } else {
                t.observe(timed);
                t.observe(lost);
            }
            assert_eq!(
                t.stats().in_flight,
                0,
                "completed without waiting (lost_first {lost_first})"
            );
        });
        let stops = named(&ev, schema::CALL_STOP);
        assert_eq!(stops.len(), 1);
        assert_eq!(num(stops[0], "duration"), Some(4_300));
        assert_eq!(meta(stops[0], "result"), Some("unknown"));
        assert_eq!((stats.calls_unknown, stats.calls_ok), (1, 0));
        assert_eq!(stats.in_flight, 0);
    }
}

/// The same loss inside a response message whose start the worker's decoder kept (a
/// 50 MB result after `success = true`): the start says the tool succeeded. A start
/// saying it failed is an error; a message lost before its start (this stream's DATA
/// not captured), the result is unknown.
#[test]
fn a_cut_response_messages_start_gives_the_tools_success() {
    for (success, result) in [(true, "ok"), (false, "error"), (false, "unknown")] {
        let c = grpc_conn(44);
        let req = tool_request("large", &[]);
        let (ev, stats) = run(cfg(), |t| {
            request_half(t, &c, 1, Some(PATH_EXEC), &req, BEAM_ONLY);
            t.observe(ob(&c, Side::Worker, M.t2, M.t2 + 5, resp_headers(1)));
            let mut head = tool_response(success, "boom");
            // Lost before its start: nothing kept.
            head.truncate(if result == "unknown" { 0 } else { 64 });
            let cut = Observed::Message {
                flow: Flow::Response,
                stream_id: 1,
                message: GrpcMessage {
                    compressed: false,
                    len: 50 << 20,
                    data: head,
                    cut: true,
                },
            };
            t.observe(ob(&c, Side::Worker, M.t2, M.t2 + 9, cut));
            if result != "unknown" {
                t.observe(response_sync_lost(&c));
            } // else only this stream's DATA was lost: no connection-wide loss.
            t.observe(response_end_read(&c));
        });
        let stops = named(&ev, schema::CALL_STOP);
        assert_eq!(stops.len(), 1);
        assert_eq!(meta(stops[0], "result"), Some(result));
        assert_eq!(stats.calls_unknown, u64::from(result == "unknown"));
        // No message of its own: its bytes are not the response's.
        assert!(num(stops[0], "response_bytes").unwrap_or(0) < 50 << 20);
    }
}

mod bench;
mod golden;
mod repro;

/// The same lost end, with the worker's (de)serialization recorded: the response's
/// first write (its headers, t2) came before the result was encoded, and neither the
/// response message nor its end was seen from the worker's writes. The worker window
/// ends at the call's end then, and holds the encoding.
#[test]
fn a_lost_response_end_leaves_the_worker_window_to_the_calls_end() {
    use crate::kernel::{SerializeFn, SerializeRecord};
    let c = grpc_conn(43);
    let req = tool_request("large", &[]);
    let rec = |function, ts_start_ns, ts_end_ns| SerializeRecord {
        tgid: 4242,
        tid: 4243,
        function,
        ts_start_ns,
        ts_end_ns,
        bytes: Some(100),
    };
    let (ev, _) = run(cfg(), |t| {
        request_half(t, &c, 1, Some(PATH_EXEC), &req, BEAM_ONLY);
        // The worker's read of the request (t1), timed.
        for end in [FrameEnd::Headers { end_stream: false }, FrameEnd::Stream] {
            let timing = Observed::Timing {
                flow: Flow::Request,
                stream_id: 1,
                end,
            };
            t.observe(ob(&c, Side::Worker, M.t1 - 50, M.t1, timing));
        }
        t.observe(ob(&c, Side::Worker, M.t2, M.t2 + 5, resp_headers(1)));
        t.observe(response_sync_lost(&c));
        let a = t.activity_mut();
        a.on_serialize(&rec(SerializeFn::ProtobufDecode, 1_300, 1_400));
        a.on_serialize(&rec(SerializeFn::JsonEncode, 5_050, 5_150));
        a.on_serialize(&rec(SerializeFn::ProtobufEncode, 5_160, 5_200));
        t.observe(response_end_read(&c));
    });
    let stops = named(&ev, schema::CALL_STOP);
    assert_eq!(stops.len(), 1);
    assert_eq!(num(stops[0], "worker_time"), Some(M.t3 - M.t1));
    assert_eq!(num(stops[0], "deserialize_time"), Some(100));
    assert_eq!(num(stops[0], "serialize_time"), Some(140));
}
