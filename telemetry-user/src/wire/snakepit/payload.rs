//! What the agent reports from a message's payload: parameters as JSON,
//! SnakeBridge library and function, a failing tool's error JSON.

use super::scanner::lossy;
use super::*;

/// A parameter's JSON value (`Any.value` holds raw JSON text). None when the
/// bytes are not complete JSON (cut, or not JSON at all).
pub fn param_json(any: &Any) -> Option<serde_json::Value> {
    serde_json::from_slice(&any.value).ok()
}

/// All parameters that parse as JSON.
pub fn parameters_json(req: &ExecuteToolRequest) -> HashMap<String, serde_json::Value> {
    req.parameters
        .iter()
        .filter_map(|(k, v)| param_json(v).map(|j| (k.clone(), j)))
        .collect()
}

/// A parameter as text: a JSON string's content, other JSON as written, or the raw
/// bytes when not JSON.
pub fn param_text(any: &Any) -> String {
    match param_json(any) {
        Some(serde_json::Value::String(s)) => s,
        Some(v) => v.to_string(),
        None => lossy(&any.value),
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SnakeBridgeCall {
    pub library: Option<String>,
    pub function: Option<String>,
    pub python_module: Option<String>,
    pub call_type: Option<String>,
    pub class: Option<String>,
    pub streaming: bool,
}

/// Whether `tool_name` is a SnakeBridge call: Some(streaming).
pub fn snakebridge_kind(tool_name: &str) -> Option<bool> {
    match tool_name {
        "snakebridge.call" => Some(false),
        "snakebridge.stream" => Some(true),
        _ => None,
    }
}

/// For `snakebridge.call` / `snakebridge.stream`, the wrapped library and function.
pub fn snakebridge_call(req: &ExecuteToolRequest) -> Option<SnakeBridgeCall> {
    let streaming = snakebridge_kind(&req.tool_name)?;
    let get = |k: &str| {
        req.parameters
            .get(k)
            .map(param_text)
            .filter(|s| !s.is_empty())
    };
    Some(SnakeBridgeCall {
        library: get("library"),
        function: get("function"),
        python_module: get("python_module"),
        call_type: get("call_type"),
        class: get("class"),
        streaming,
    })
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ToolError {
    pub error_type: Option<String>,
    pub message: Option<String>,
}

/// Parses a failing tool's `error_message` JSON (`type`, `message`). Falls back to
/// scanning for those keys when the text is cut; plain text becomes the message.
pub fn parse_tool_error(text: &str) -> ToolError {
    if let Ok(serde_json::Value::Object(o)) = serde_json::from_str::<serde_json::Value>(text) {
        let s = |k: &str| o.get(k).and_then(|v| v.as_str()).map(str::to_string);
        return ToolError {
            error_type: s("type"),
            message: s("message"),
        };
    }
    if text.trim_start().starts_with('{') {
        return ToolError {
            error_type: json_string_field(text, "type"),
            message: json_string_field(text, "message"),
        };
    }
    ToolError {
        error_type: None,
        message: (!text.is_empty()).then(|| text.to_string()),
    }
}

/// Finds `"key": "<string>"` in (possibly cut) JSON text and decodes the string.
/// Only for top-level-looking keys in small objects: a nested key with the same
/// name may match first.
pub fn json_string_field(text: &str, key: &str) -> Option<String> {
    let pat = format!("\"{key}\"");
    let mut from = 0;
    while let Some(i) = text.get(from..)?.find(&pat) {
        let after = from + i + pat.len();
        let rest = text.get(after..)?.trim_start();
        if let Some(rest) = rest.strip_prefix(':') {
            let rest = rest.trim_start();
            if rest.starts_with('"') {
                // Find the closing quote, honouring escapes.
                let bytes = rest.as_bytes();
                let mut j = 1;
                while j < bytes.len() {
                    match bytes[j] {
                        b'\\' => j += 2,
                        b'"' => {
                            return serde_json::from_str::<String>(rest.get(..=j)?).ok();
                        }
                        _ => j += 1,
                    }
                }
                return None;
            }
        }
        from = after;
    }
    None
}

/// Finds `"key": <number>` in (possibly cut) JSON text.
pub fn json_number_field(text: &str, key: &str) -> Option<i64> {
    let pat = format!("\"{key}\"");
    let i = text.find(&pat)?;
    let rest = text
        .get(i + pat.len()..)?
        .trim_start()
        .strip_prefix(':')?
        .trim_start();
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '-'))
        .unwrap_or(rest.len());
    rest.get(..end)?.parse().ok()
}
