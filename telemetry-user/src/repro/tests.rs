//! Rendering, redaction and the scripts themselves (run with a real Python).
use super::payload::{Cut, StoredRequest};
use super::render::{file_name, render, rfc3339, timeout_seconds};
use super::*;
use crate::wire::snakepit::{Any, ExecuteToolRequest};
use prost::Message;
use std::process::Command;

fn json_any(v: &str) -> Any {
    Any {
        type_url: "type.googleapis.com/snakepit.json".into(),
        value: v.as_bytes().to_vec(),
    }
}

fn request(tool: &str, params: &[(&str, &str)]) -> Vec<u8> {
    let mut req = ExecuteToolRequest {
        session_id: "sess_1".into(),
        tool_name: tool.into(),
        ..Default::default()
    };
    for (k, v) in params {
        req.parameters.insert(k.to_string(), json_any(v));
    }
    req.metadata.insert("correlation_id".into(), "c-42".into());
    req.metadata
        .insert("authorization".into(), "Bearer tok_abcdefghijklmnop".into());
    req.metadata
        .insert("trace".into(), "Bearer zzzzzzzzzzzzzzzz".into());
    req.encode_to_vec()
}

fn stored(data: Vec<u8>, cut: Cut, len: usize) -> StoredRequest {
    StoredRequest {
        data,
        len,
        cut,
        limit: 1 << 20,
        grpc_timeout: None,
        error_text: None,
    }
}

fn failed(tool: &str, failure: Failure) -> FailedCall {
    FailedCall {
        seq: 7,
        time_unix_nano: 1_700_000_000_123_456_789,
        operation: "ExecuteTool".into(),
        tool: Some(tool.into()),
        library: Some("math".into()),
        function: Some("sqrt".into()),
        session_id: Some("sess_1".into()),
        correlation_id: Some("c-42/../x".into()),
        pool: "default".into(),
        worker_id: "default_worker_1".into(),
        worker_pid: 1234,
        failure,
    }
}

/// The project's venv Python (what the demo workers run), else `python3` on PATH.
fn venv_python() -> Option<String> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    if root.exists() {
        return Some(root.display().to_string());
    }
    Command::new("python3")
        .arg("-c")
        .arg("pass")
        .status()
        .ok()
        .filter(|s| s.success())
        .map(|_| "python3".to_string())
}

fn python() -> String {
    match venv_python() {
        Some(p) => p,
        None => panic!("no Python: neither .venv/bin/python nor python3 found (cargo xtask setup installs them)"),
    }
}

fn run_script(text: &str) -> (i32, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("s.py");
    std::fs::write(&path, text).expect("write");
    let out = Command::new(python())
        .arg(&path)
        .output()
        .expect("run python");
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), all)
}

const SECRETS: [&str; 3] = [
    "sk-live-SECRET123",
    "tok_abcdefghijklmnop",
    "zzzzzzzzzzzzzzzz",
];

#[test]
fn snakebridge_script_reproduces_the_error_and_redacts_secrets() {
    let data = request(
        "snakebridge.call",
        &[
            ("library", "\"math\""),
            ("python_module", "\"math\""),
            ("function", "\"sqrt\""),
            ("call_type", "\"function\""),
            ("args", "[-1]"),
            ("kwargs", "{}"),
            ("api_key", "\"sk-live-SECRET123\""),
        ],
    );
    let len = data.len();
    let call = failed(
        "snakebridge.call",
        Failure::ToolError {
            error_type: Some("ValueError".into()),
            message: Some("math domain error (key sk-live-SECRET123)".into()),
        },
    );
    let out = render(
        &call,
        Some(&stored(data, Cut::Whole, len)),
        &WorkerInfo::default(),
        &ReproConfig::default().redact_keys,
    );
    for s in SECRETS {
        assert!(
            !out.text.contains(s),
            "secret {s} in the script:\n{}",
            out.text
        );
    }
    assert!(
        out.text.contains("redacted: key \"api_key\" matches"),
        "{}",
        out.text
    );
    assert_eq!(out.redactions, 3);
    assert!(!out.truncated);
    assert!(out
        .file_name
        .starts_with("snakepit_repro_1700000000_sqrt_c-42____x"));
    let (code, text) = run_script(&out.text);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("Error: ValueError: math domain error\n"),
        "{text}"
    );
}

#[test]
fn a_cut_request_says_what_was_not_seen_and_does_not_run() {
    let big = format!("\"{}\"", "x".repeat(5000));
    let data = request("fail", &[("data", &big), ("message", "\"boom\"")]);
    let len = data.len();
    let mut prefix = data.clone();
    // Parameters are encoded in map order: cut in the middle of the big one.
    let pos = data
        .windows(4)
        .position(|w| w == b"xxxx")
        .expect("big param");
    prefix.truncate(pos + 100);
    let call = failed(
        "fail",
        Failure::ToolError {
            error_type: Some("ValueError".into()),
            message: Some("boom".into()),
        },
    );
    let out = render(
        &call,
        Some(&stored(prefix, Cut::NotCaptured, len)),
        &WorkerInfo::default(),
        &[],
    );
    assert!(out.truncated);
    assert!(
        out.text
            .contains("TRUNCATED: this script does not reproduce"),
        "{}",
        out.text
    );
    assert!(
        out.text
            .contains(&format!("of the {len}-byte request message were not seen")),
        "{}",
        out.text
    );
    assert!(out.text.contains("parameter \"data\""), "{}", out.text);
    let (code, text) = run_script(&out.text);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("Not reproducing"), "{text}");
}

#[test]
fn worker_death_and_deadline_are_announced() {
    let data = request("sleep", &[("ms", "100")]);
    let len = data.len();
    let mut st = stored(data, Cut::Whole, len);
    st.grpc_timeout = Some("250m".into());
    let call = failed(
        "sleep",
        Failure::Status {
            error_type: "DEADLINE_EXCEEDED".into(),
            reason: "Deadline Exceeded".into(),
        },
    );
    let out = render(&call, Some(&st), &WorkerInfo::default(), &[]);
    assert!(out.text.contains("DEADLINE_S = 0.25\n"), "{}", out.text);
    let died = failed(
        "exit",
        Failure::WorkerDied {
            reason: "worker exited with code 3".into(),
        },
    );
    let out = render(&died, None, &WorkerInfo::default(), &[]);
    assert!(
        out.text
            .contains("WORKER_DIED = \"worker exited with code 3\""),
        "{}",
        out.text
    );
    assert!(
        out.text.contains("the request message was not seen"),
        "{}",
        out.text
    );
}

#[test]
fn names_times_and_timeouts() {
    assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000Z");
    assert_eq!(
        rfc3339(1_700_000_000_123_456_789),
        "2023-11-14T22:13:20.123456Z"
    );
    assert_eq!(timeout_seconds("30S"), Some(30.0));
    assert_eq!(timeout_seconds("500m"), Some(0.5));
    assert_eq!(timeout_seconds("x"), None);
    let mut c = failed(
        "fail",
        Failure::WorkerDied {
            reason: String::new(),
        },
    );
    c.function = None;
    c.correlation_id = None;
    assert_eq!(file_name(&c), "snakepit_repro_1700000000_fail_seq7.py");
}

#[test]
fn files_are_0600_in_a_0700_directory_and_never_replaced() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("a/repro");
    let p1 = writer::write_script(&dir, "snakepit_repro_1_f_c.py", "x").expect("write");
    let p2 = writer::write_script(&dir, "snakepit_repro_1_f_c.py", "y").expect("write");
    assert_ne!(p1, p2);
    let mode =
        |p: &std::path::Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
    assert_eq!(mode(&p1), 0o600);
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(std::fs::read_to_string(&p1).expect("read"), "x");
    assert_eq!(writer::list_scripts(&dir).expect("list").len(), 2);
}
