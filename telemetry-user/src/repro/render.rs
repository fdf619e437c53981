//! The script: the design's template (docstring with the error, the payload, a
//! `reproduce()`), filled from the stored request, the failure and the worker.
use super::payload::{Cut, StoredRequest};
use super::pyrepr::{one_line, str_literal, Entry, Py};
use super::redact::Redactor;
use super::{FailedCall, Failure, WorkerInfo, FILE_PREFIX};
use crate::wire::snakepit::{self as sp, ExecuteToolRequest, FieldScanner, FieldValue};
use base64::Engine;
use serde_json::Value;
use std::fmt::Write as _;

const TEMPLATE_TAIL: &str = include_str!("template.py");
/// Traceback lines copied into the header at most.
const MAX_TRACEBACK_LINES: usize = 60;

pub struct Rendered {
    pub file_name: String,
    pub text: String,
    pub truncated: bool,
    pub redactions: usize,
}

/// `snakepit_repro_<time>_<function>_<correlation>.py`, safe characters only.
pub fn file_name(call: &FailedCall) -> String {
    let secs = call.time_unix_nano / 1_000_000_000;
    let function = call
        .function
        .as_deref()
        .or(call.tool.as_deref())
        .unwrap_or("unknown");
    let corr = call
        .correlation_id
        .clone()
        .unwrap_or_else(|| format!("seq{}", call.seq));
    format!(
        "{FILE_PREFIX}{secs}_{}_{}.py",
        safe(function, 48),
        safe(&corr, 64)
    )
}

fn safe(s: &str, max: usize) -> String {
    let out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(max)
        .collect();
    if out.is_empty() {
        "_".into()
    } else {
        out
    }
}

/// RFC 3339 UTC time of a Unix-nanosecond timestamp.
pub fn rfc3339(unix_ns: u64) -> String {
    let secs = unix_ns / 1_000_000_000;
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        unix_ns % 1_000_000_000 / 1000
    )
}

/// `grpc-timeout` (`<digits><H|M|S|m|u|n>`) in seconds.
pub fn timeout_seconds(v: &str) -> Option<f64> {
    let v = v.trim();
    let (num, unit) = v.split_at(v.len().checked_sub(1)?);
    let n: f64 = num.parse().ok()?;
    let scale = match unit {
        "H" => 3600.0,
        "M" => 60.0,
        "S" => 1.0,
        "m" => 1e-3,
        "u" => 1e-6,
        "n" => 1e-9,
        _ => return None,
    };
    Some(n * scale)
}

/// A parameter's value as the worker decodes it: JSON, else text, empty = None.
fn param_value(any: &sp::Any) -> Value {
    if any.value.is_empty() {
        return Value::Null;
    }
    sp::param_json(any).unwrap_or_else(|| Value::String(String::from_utf8_lossy(&any.value).into()))
}

/// The key of a parameter map entry cut by the end of the captured bytes.
fn cut_parameter(data: &[u8]) -> Option<(String, usize, usize)> {
    let (fields, _) = FieldScanner::collect_all(data);
    let last = fields
        .last()
        .filter(|f| f.is_truncated() && f.number == 3)?;
    let entry = last.bytes()?;
    let mut key = None;
    let mut seen = (0, 0);
    for f in FieldScanner::new(entry) {
        match (f.number, f.value) {
            (1, FieldValue::Len { data, declared }) if data.len() == declared => {
                key = Some(String::from_utf8_lossy(data).into_owned())
            }
            (2, FieldValue::Len { data, declared }) => seen = (data.len(), declared),
            _ => {}
        }
    }
    key.map(|k| (k, seen.0, seen.1))
}

fn failure_lines(f: &Failure) -> (Option<String>, Option<String>, Option<String>) {
    match f {
        Failure::ToolError {
            error_type,
            message,
        } => (error_type.clone(), message.clone(), None),
        Failure::Status { error_type, reason } => {
            let err = sp::parse_tool_error(reason);
            match err.error_type {
                // Streaming tools send the tool's error JSON as grpc-message.
                Some(t) => (Some(t), err.message, None),
                None => (Some(error_type.clone()), Some(reason.clone()), None),
            }
        }
        Failure::WorkerDied { reason } => (None, None, Some(reason.clone())),
    }
}

pub fn render(
    call: &FailedCall,
    stored: Option<&StoredRequest>,
    worker: &WorkerInfo,
    redact_keys: &[String],
) -> Rendered {
    let mut r = Redactor::new(redact_keys);
    let mut missing: Vec<String> = Vec::new();
    let empty = StoredRequest {
        data: Vec::new(),
        len: 0,
        cut: Cut::NotSeen,
        limit: 0,
        grpc_timeout: None,
        error_text: None,
    };
    let st = stored.unwrap_or(&empty);
    match st.cut {
        Cut::Whole => {}
        Cut::NotSeen => missing.push(
            "the request message was not seen (the agent joined mid-call, or its bytes were lost)"
                .into(),
        ),
        Cut::NotCaptured => missing.push(format!(
            "bytes {}..{} of the {}-byte request message were not seen (the kernel copies a bounded prefix of each syscall)",
            st.data.len(),
            st.len,
            st.len
        )),
        Cut::PayloadLimit => missing.push(format!(
            "bytes {}..{} of the {}-byte request message were not kept ([repro] max_payload_bytes = {})",
            st.data.len(),
            st.len,
            st.len,
            st.limit
        )),
        Cut::InflightLimit => missing.push(format!(
            "the {}-byte request message was not kept: the in-flight budget was full ([repro] max_inflight_bytes = {})",
            st.len, st.limit
        )),
    }
    let decoded = sp::decode_execute_tool_request(&st.data).ok();
    let req = decoded.as_ref().map(|p| p.msg.clone()).unwrap_or_default();
    let cut_param = (st.cut != Cut::Whole)
        .then(|| cut_parameter(&st.data))
        .flatten();
    if let Some((k, seen, total)) = &cut_param {
        missing.push(format!("parameter {k:?}: {seen} of its {total} bytes seen"));
    }
    let payload = payload_py(&req, cut_param.as_ref().map(|c| c.0.as_str()), &mut r);
    let truncated = !missing.is_empty();

    let (etype, emsg, died) = failure_lines(&call.failure);
    let tb = st
        .error_text
        .as_deref()
        .and_then(|t| serde_json::from_str::<Value>(t).ok())
        .and_then(|v| {
            v.get("traceback")
                .and_then(Value::as_str)
                .map(str::to_string)
        });
    let emsg = emsg.map(|m| r.text(&m));
    let deadline = match (&call.failure, st.grpc_timeout.as_deref()) {
        (Failure::Status { error_type, .. }, Some(t)) if error_type == "DEADLINE_EXCEEDED" => {
            timeout_seconds(t)
        }
        _ => None,
    };

    let mut s = String::new();
    let shebang = worker.python.as_deref().unwrap_or("/usr/bin/env python3");
    let _ = writeln!(s, "#!{shebang}");
    let _ = writeln!(
        s,
        "# Run with the worker's Python: {} <this file>",
        worker.python.as_deref().unwrap_or("python3")
    );
    s.push_str("\"\"\"\nReproduction script generated by snakepit-agent from the request seen on the wire.\n");
    let err_line = match (&etype, &emsg, &died) {
        (_, _, Some(d)) => format!("the worker died during the call ({d})"),
        (t, m, _) => format!(
            "{}: {}",
            t.as_deref().unwrap_or("unknown"),
            m.as_deref().unwrap_or("")
        ),
    };
    let _ = writeln!(s, "Error: {}", one_line(&err_line));
    let _ = writeln!(s, "Generated: {}", rfc3339(crate::events::now_unix_nano()));
    let _ = writeln!(s, "When: {}", rfc3339(call.time_unix_nano));
    let _ = writeln!(
        s,
        "Call: {} tool={} library={} function={}",
        call.operation,
        call.tool.as_deref().unwrap_or("?"),
        call.library.as_deref().unwrap_or("?"),
        call.function.as_deref().unwrap_or("?")
    );
    let _ = writeln!(
        s,
        "Correlation id: {}  session: {}",
        call.correlation_id.as_deref().unwrap_or("?"),
        call.session_id.as_deref().unwrap_or("?")
    );
    let _ = writeln!(
        s,
        "Pool: {}  worker: {} (pid {})  adapter: {}",
        call.pool,
        call.worker_id,
        call.worker_pid,
        worker.adapter.as_deref().unwrap_or("?")
    );
    let _ = writeln!(
        s,
        "Worker's Python: {}",
        worker.python.as_deref().unwrap_or("?")
    );
    if truncated {
        s.push_str("TRUNCATED: this script does not reproduce the call; what was not seen:\n");
        for m in &missing {
            let _ = writeln!(s, "  - {}", one_line(m));
        }
    }
    if !r.notes.is_empty() {
        s.push_str("Redacted before writing:\n");
        for n in &r.notes {
            let _ = writeln!(s, "  - {}", one_line(n));
        }
    }
    s.push_str("\"\"\"\n");
    if let Some(tb) = tb {
        s.push_str("# Traceback sent by the worker:\n");
        for line in r.text(&tb).lines().take(MAX_TRACEBACK_LINES) {
            let _ = writeln!(s, "#   {}", one_line(line));
        }
    }
    s.push_str("import base64\nimport importlib\nimport inspect\nimport json\nimport os\nimport sys\nimport threading\nimport traceback\n\n");
    let expected = Py::Dict(vec![
        Entry::new("type", etype.as_deref().map(Py::str).unwrap_or(Py::None)),
        Entry::new("message", emsg.as_deref().map(Py::str).unwrap_or(Py::None)),
    ]);
    let _ = writeln!(s, "EXPECTED_ERROR = {}", expected.render(0));
    let opt = |v: Option<&str>| v.map(Py::str).unwrap_or(Py::None);
    let call_py = Py::Dict(vec![
        Entry::new("operation", Py::str(&call.operation)),
        Entry::new("pool", Py::str(&call.pool)),
        Entry::new("worker_id", Py::str(&call.worker_id)),
        Entry::new("worker_pid", Py::Num(call.worker_pid.to_string())),
        Entry::new("correlation_id", opt(call.correlation_id.as_deref())),
        Entry::new("time", Py::str(&rfc3339(call.time_unix_nano))),
    ]);
    let _ = writeln!(s, "CALL = {}", call_py.render(0));
    let script_dir = worker.script.as_deref().and_then(|p| {
        std::path::Path::new(p)
            .parent()
            .map(|d| d.display().to_string())
    });
    let worker_py = Py::Dict(vec![
        Entry::new("python", opt(worker.python.as_deref())),
        Entry::new("cwd", opt(worker.cwd.as_deref())),
        Entry::new("script", opt(worker.script.as_deref())),
        Entry::new("script_dir", opt(script_dir.as_deref())),
        Entry::new("adapter", opt(worker.adapter.as_deref())),
    ]);
    let _ = writeln!(s, "WORKER = {}", worker_py.render(0));
    let trunc = truncated.then(|| missing.join("; "));
    let _ = writeln!(s, "TRUNCATED = {}", opt(trunc.as_deref()).render(0));
    let _ = writeln!(s, "WORKER_DIED = {}", opt(died.as_deref()).render(0));
    let _ = writeln!(
        s,
        "DEADLINE_S = {}",
        deadline.map_or("None".to_string(), |d| format!("{d:?}"))
    );
    s.push_str("\n# Payload that caused the error\n");
    let _ = writeln!(s, "payload = {}", payload.render(0));
    s.push_str(TEMPLATE_TAIL);
    Rendered {
        file_name: file_name(call),
        text: s,
        truncated,
        redactions: r.notes.len(),
    }
}

/// The request as Python: tool, session, metadata, parameters (decoded like the
/// worker does), binary parameters, and the SnakeBridge target when it is one.
fn payload_py(req: &ExecuteToolRequest, cut: Option<&str>, r: &mut Redactor) -> Py {
    let mut params: Vec<(&String, &sp::Any)> = req.parameters.iter().collect();
    params.sort_by(|a, b| a.0.cmp(b.0));
    let mut pentries = Vec::new();
    for (k, any) in params {
        if cut == Some(k.as_str()) {
            let mut e = Entry::new(k.clone(), Py::None);
            e.comment = Some("cut: not seen whole (see TRUNCATED)".into());
            pentries.push(e);
            continue;
        }
        let v = param_value(any);
        let mut e = r.entry("parameters", k, &v);
        if e.comment.is_none() && !any.type_url.is_empty() {
            e.comment = Some(format!("Any type_url: {}", any.type_url));
        }
        pentries.push(e);
    }
    let mut meta: Vec<(&String, &String)> = req.metadata.iter().collect();
    meta.sort();
    let mentries = meta
        .into_iter()
        .map(|(k, v)| r.entry("metadata", k, &Value::String(v.clone())))
        .collect();
    let mut bin: Vec<(&String, &Vec<u8>)> = req.binary_parameters.iter().collect();
    bin.sort();
    let bentries = bin
        .into_iter()
        .map(|(k, v)| match r.key_matches(k) {
            Some(p) => {
                let mut e = Entry::new(k.clone(), Py::Expr("b\"\"".into()));
                e.comment = Some(format!("redacted: key {k:?} matches {p:?}"));
                r.notes.push(format!("binary_parameters.{k}: redacted"));
                e
            }
            None => Entry::new(
                k.clone(),
                Py::Expr(format!(
                    "base64.b64decode({})",
                    str_literal(&base64::engine::general_purpose::STANDARD.encode(v))
                )),
            ),
        })
        .collect();
    let mut top = vec![
        Entry::new("tool_name", Py::str(&req.tool_name)),
        Entry::new("session_id", Py::str(&req.session_id)),
        Entry::new("metadata", Py::Dict(mentries)),
        Entry::new("parameters", Py::Dict(pentries.clone())),
        Entry::new("binary_parameters", Py::Dict(bentries)),
    ];
    if let Some(sb) = sp::snakebridge_call(req) {
        let find = |name: &str| {
            pentries
                .iter()
                .find(|e| e.key == name)
                .map(|e| e.value.clone())
                .unwrap_or(Py::None)
        };
        let opt = |v: Option<String>| v.map(Py::Str).unwrap_or(Py::None);
        top.push(Entry::new(
            "snakebridge",
            Py::Dict(vec![
                Entry::new("library", opt(sb.library)),
                Entry::new("python_module", opt(sb.python_module)),
                Entry::new("function", opt(sb.function)),
                Entry::new("call_type", opt(sb.call_type)),
                Entry::new("class", opt(sb.class)),
                Entry::new("args", find("args")),
                Entry::new("kwargs", find("kwargs")),
            ]),
        ));
    }
    Py::Dict(top)
}
