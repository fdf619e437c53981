use super::*;
use prost::Message;

fn any(json: &str) -> Any {
    Any {
        type_url: "type.googleapis.com/google.protobuf.StringValue".into(),
        value: json.as_bytes().to_vec(),
    }
}

fn snakebridge_request(big: usize) -> ExecuteToolRequest {
    let mut parameters = HashMap::new();
    parameters.insert("library".to_string(), any("\"numpy\""));
    parameters.insert("function".to_string(), any("\"mean\""));
    parameters.insert(
        "args".to_string(),
        any(&format!("[{}]", "1,".repeat(big) + "1")),
    );
    ExecuteToolRequest {
        session_id: "sess-1".into(),
        tool_name: "snakebridge.call".into(),
        parameters,
        ..Default::default()
    }
}

#[test]
fn roundtrip_and_snakebridge() {
    let req = snakebridge_request(3);
    let bytes = req.encode_to_vec();
    let p = decode_execute_tool_request(&bytes).unwrap();
    assert!(!p.truncated);
    assert_eq!(p.msg, req);
    let sb = snakebridge_call(&p.msg).unwrap();
    assert_eq!(sb.library.as_deref(), Some("numpy"));
    assert_eq!(sb.function.as_deref(), Some("mean"));
    assert!(!sb.streaming);
    assert_eq!(
        parameters_json(&p.msg)["args"],
        serde_json::json!([1, 1, 1, 1])
    );
    assert_eq!(
        identify_method(Flow::Request, &bytes),
        Some(Method::ExecuteTool)
    );
}

#[test]
fn truncated_request_keeps_what_is_present() {
    let req = snakebridge_request(500_000);
    let bytes = req.encode_to_vec();
    assert!(bytes.len() > 1_000_000);
    for cut in [3usize, 10, 20, 30, 64, 4096] {
        let p = decode_execute_tool_request(&bytes[..cut]).unwrap();
        assert!(p.truncated);
        if cut >= 30 {
            assert_eq!(p.msg.session_id, "sess-1");
            assert_eq!(p.msg.tool_name, "snakebridge.call");
            assert_eq!(
                identify_method(Flow::Request, &bytes[..cut]),
                Some(Method::ExecuteTool)
            );
        }
    }
    // Cut inside the tool name: absent, and `cut_field` says so.
    let p = decode_execute_tool_request(&bytes[..14]).unwrap();
    assert_eq!(p.cut_field, Some(2));
    assert_eq!(p.msg.tool_name, "", "a cut name is never reported");
    assert_eq!(p.msg.session_id, "sess-1");
    let p = decode_execute_tool_request(&bytes[..5]).unwrap();
    assert_eq!(p.cut_field, Some(1));
    assert_eq!(p.msg.session_id, "", "a cut session id is never reported");
}

/// The issue's cases: a 1 MB session id, a 20-character tool name cut after 17,
/// a 200k-deep JSON `library`: none of them is reported from a prefix.
#[test]
fn values_cut_by_the_copy_limit_are_absent_never_wrong() {
    let mut parameters = HashMap::new();
    let deep = format!("{}{}", "[".repeat(200_000), "]".repeat(200_000));
    parameters.insert(
        "library".to_string(),
        Any {
            type_url: "type.googleapis.com/google.protobuf.StringValue".into(),
            value: deep.into_bytes(),
        },
    );
    parameters.insert("function".to_string(), any("\"mean\""));
    let req = ExecuteToolRequest {
        session_id: "s".repeat(1 << 20),
        tool_name: "snakebridge.call".into(),
        parameters: parameters.clone(),
        ..Default::default()
    };
    let bytes = req.encode_to_vec();
    let p = decode_execute_tool_request(&bytes[..4096]).unwrap();
    assert_eq!(p.cut_field, Some(1));
    assert_eq!(p.msg.session_id, "");
    assert_eq!(p.msg.tool_name, "");

    let req = ExecuteToolRequest {
        session_id: "sess".into(),
        tool_name: "tool_5014_abcdefghij".into(),
        ..Default::default()
    };
    let bytes = req.encode_to_vec();
    let cut = bytes.len() - 3;
    let p = decode_execute_tool_request(&bytes[..cut]).unwrap();
    assert_eq!((p.cut_field, p.msg.tool_name.as_str()), (Some(2), ""));

    let req = ExecuteToolRequest {
        session_id: "sess".into(),
        tool_name: "snakebridge.call".into(),
        parameters,
        ..Default::default()
    };
    let bytes = req.encode_to_vec();
    let p = decode_execute_tool_request(&bytes[..4096]).unwrap();
    assert_eq!(p.msg.tool_name, "snakebridge.call");
    let sb = snakebridge_call(&p.msg).expect("snakebridge call");
    assert_eq!(sb.library, None, "a cut library is absent");
}

#[test]
fn truncated_response_error_text() {
    let err = r#"{"type":"ValueError","message":"bad \"input\"","stacktrace":["a","b"],"traceback":"long..."}"#;
    let resp = ExecuteToolResponse {
        success: false,
        error_message: err.into(),
        execution_time_ms: 12,
        ..Default::default()
    };
    let bytes = resp.encode_to_vec();
    let full = decode_execute_tool_response(&bytes).unwrap();
    let e = parse_tool_error(&full.msg.error_message);
    assert_eq!(e.error_type.as_deref(), Some("ValueError"));
    assert_eq!(e.message.as_deref(), Some("bad \"input\""));
    let cut = decode_execute_tool_response(&bytes[..60]).unwrap();
    assert_eq!(cut.cut_field, Some(3));
    let e = parse_tool_error(&cut.msg.error_message);
    assert_eq!(e.error_type.as_deref(), Some("ValueError"));
    assert_eq!(e.message.as_deref(), Some("bad \"input\""));
    assert_eq!(parse_tool_error("plain").message.as_deref(), Some("plain"));
}

#[test]
fn identify_shapes() {
    use Flow::*;
    let ts = Some(Timestamp {
        seconds: 1_700_000_000,
        nanos: 5,
    });
    let cases: Vec<(Flow, Vec<u8>, Option<Method>)> = vec![
        (
            Request,
            PingRequest {
                message: "health".into(),
            }
            .encode_to_vec(),
            Some(Method::Ping),
        ),
        (
            Request,
            HeartbeatRequest {
                session_id: "s1".into(),
                client_time: ts,
            }
            .encode_to_vec(),
            Some(Method::Heartbeat),
        ),
        (
            Request,
            ExecuteToolRequest {
                session_id: "s".into(),
                tool_name: "stream_data".into(),
                stream: true,
                ..Default::default()
            }
            .encode_to_vec(),
            Some(Method::ExecuteStreamingTool),
        ),
        (
            Request,
            RegisterToolsRequest {
                session_id: "s".into(),
                tools: vec![ToolRegistration { name: "add".into() }],
                worker_id: "default_worker_1_123".into(),
            }
            .encode_to_vec(),
            Some(Method::RegisterTools),
        ),
        (
            Request,
            InitializeSessionRequest {
                session_id: "s".into(),
                metadata: [("k".to_string(), "v".to_string())].into(),
                config: None,
            }
            .encode_to_vec(),
            Some(Method::InitializeSession),
        ),
        (
            Request,
            TelemetryControl {
                control: Some(telemetry_control::Control::Toggle(TelemetryToggle {
                    enabled: true,
                })),
            }
            .encode_to_vec(),
            Some(Method::StreamTelemetry),
        ),
        (
            Response,
            ExecuteToolResponse {
                success: true,
                result: Some(Any {
                    type_url: "type.googleapis.com/snakepit.float".into(),
                    value: b"2.5".to_vec(),
                }),
                ..Default::default()
            }
            .encode_to_vec(),
            Some(Method::ExecuteTool),
        ),
        (
            Response,
            ExecuteToolResponse {
                success: false,
                error_message: "{}".into(),
                ..Default::default()
            }
            .encode_to_vec(),
            Some(Method::ExecuteTool),
        ),
        (
            Response,
            ToolChunk {
                chunk_id: "stream_data-3".into(),
                data: b"{}".to_vec(),
                ..Default::default()
            }
            .encode_to_vec(),
            Some(Method::ExecuteStreamingTool),
        ),
        (
            Response,
            PingResponse {
                message: "pong".into(),
                server_time: ts,
            }
            .encode_to_vec(),
            Some(Method::Ping),
        ),
        (
            Response,
            HeartbeatResponse {
                server_time: ts,
                session_valid: true,
            }
            .encode_to_vec(),
            Some(Method::Heartbeat),
        ),
        (
            Response,
            TelemetryEvent {
                event_parts: vec!["python".into(), "call".into(), "start".into()],
                timestamp_ns: 1_700_000_000_000_000_000,
                ..Default::default()
            }
            .encode_to_vec(),
            Some(Method::StreamTelemetry),
        ),
        (Request, vec![], None),
        (Response, vec![0xff, 0xff], None),
    ];
    for (dir, bytes, want) in cases {
        assert_eq!(identify_method(dir, &bytes), want, "{dir:?} {bytes:?}");
    }
}

#[test]
fn scanner_malformed_and_cut() {
    // Wire type 7: malformed.
    assert!(decode_prefix::<PingRequest>(&[0x0f]).is_err());
    // Cut varint key.
    let p = decode_prefix::<HeartbeatResponse>(&[0x10, 0x01, 0x0a]).unwrap();
    assert!(p.truncated);
    assert!(p.msg.session_valid);
    // Huge declared length on a tiny buffer.
    let p = decode_tool_chunk(&[0x12, 0xff, 0xff, 0xff, 0xff, 0x0f, 1, 2]).unwrap();
    assert_eq!(p.msg.data, vec![1, 2]);
    let ev = TelemetryEvent {
        event_parts: vec!["a".into()],
        measurements: [(
            "d".to_string(),
            TelemetryValue {
                value: Some(telemetry_value::Value::FloatValue(1.5)),
            },
        )]
        .into(),
        ..Default::default()
    };
    let b = ev.encode_to_vec();
    assert_eq!(decode_prefix::<TelemetryEvent>(&b).unwrap().msg, ev);
}

#[test]
fn methods_from_path() {
    assert_eq!(
        Method::from_path("/snakepit.bridge.BridgeService/ExecuteStreamingTool"),
        Some(Method::ExecuteStreamingTool)
    );
    assert_eq!(Method::from_path("/other.Service/Ping"), None);
}
