//! The few fields of an ExecuteTool request or response that the call tracker reads
//! for every call, borrowed from the message.
//!
//! A full prost decode builds every string, map and `Any` of the message: about a
//! dozen allocations per call, for fields the tracker does not read unless ML rules
//! or a SnakeBridge call need them. These peeks read only what is needed. They
//! answer None for anything unusual (a cut or malformed message, an unexpected
//! field or wire type, text that is not UTF-8); the caller then decodes the whole
//! message as before.
use super::{FieldScanner, FieldValue};

/// ExecuteToolRequest fields 1 (session id), 2 (tool name) and the
/// `correlation_id` entry of field 4 (metadata).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RequestPeek<'a> {
    pub session_id: &'a str,
    pub tool_name: &'a str,
    pub correlation_id: Option<&'a str>,
}

pub fn peek_execute_tool_request(buf: &[u8]) -> Option<RequestPeek<'_>> {
    let mut peek = RequestPeek::default();
    let mut scan = FieldScanner::new(buf);
    for f in scan.by_ref() {
        match (f.number, f.value) {
            (1, FieldValue::Len { data, .. }) => {
                peek.session_id = std::str::from_utf8(data).ok()?
            }
            (2, FieldValue::Len { data, .. }) => peek.tool_name = std::str::from_utf8(data).ok()?,
            (4, FieldValue::Len { data, .. }) => {
                // A map: the last entry of a key wins, as in prost.
                let (key, value) = string_map_entry(data)?;
                if key == "correlation_id" {
                    peek.correlation_id = Some(value);
                }
            }
            // Parameters, binary parameters, the stream flag: not read here.
            (3 | 6, FieldValue::Len { .. }) | (5, FieldValue::Varint(_)) => {}
            _ => return None,
        }
    }
    (!scan.truncated && !scan.malformed).then_some(peek)
}

/// ExecuteToolResponse field 1 (success), when the whole message scans clean.
pub fn peek_tool_success(buf: &[u8]) -> Option<bool> {
    let mut success = false;
    let mut scan = FieldScanner::new(buf);
    for f in scan.by_ref() {
        match (f.number, f.value) {
            (1, FieldValue::Varint(v)) => success = v != 0,
            (2 | 3 | 4 | 6, FieldValue::Len { .. }) | (5, FieldValue::Varint(_)) => {}
            _ => return None,
        }
    }
    (!scan.truncated && !scan.malformed).then_some(success)
}

/// A `map<string, string>` entry: key (1) and value (2), empty when absent.
fn string_map_entry(entry: &[u8]) -> Option<(&str, &str)> {
    let (mut key, mut value) = ("", "");
    let mut scan = FieldScanner::new(entry);
    for f in scan.by_ref() {
        match (f.number, f.value) {
            (1, FieldValue::Len { data, .. }) => key = std::str::from_utf8(data).ok()?,
            (2, FieldValue::Len { data, .. }) => value = std::str::from_utf8(data).ok()?,
            _ => return None,
        }
    }
    (!scan.truncated && !scan.malformed).then_some((key, value))
}

#[cfg(test)]
mod tests {
    use super::super::{
        decode_execute_tool_request, decode_execute_tool_response, Any, ExecuteToolRequest,
        ExecuteToolResponse,
    };
    use super::*;
    use prost::Message;

    fn request() -> ExecuteToolRequest {
        ExecuteToolRequest {
            session_id: "sess_1".into(),
            tool_name: "echo".into(),
            parameters: [(
                "value".to_string(),
                Any {
                    type_url: "type.googleapis.com/google.protobuf.StringValue".into(),
                    value: b"\"hi\"".to_vec(),
                },
            )]
            .into(),
            metadata: [
                ("correlation_id".to_string(), "c-1".to_string()),
                ("other".to_string(), "x".to_string()),
            ]
            .into(),
            stream: true,
            binary_parameters: [("blob".to_string(), vec![0xff, 0])].into(),
        }
    }

    #[test]
    fn a_request_peek_reads_what_the_full_decode_reads() {
        let bytes = request().encode_to_vec();
        let full = decode_execute_tool_request(&bytes).expect("decodes").msg;
        let peek = peek_execute_tool_request(&bytes).expect("peeks");
        assert_eq!(peek.session_id, full.session_id);
        assert_eq!(peek.tool_name, full.tool_name);
        assert_eq!(
            peek.correlation_id,
            full.metadata.get("correlation_id").map(String::as_str)
        );
        let empty = ExecuteToolRequest::default().encode_to_vec();
        assert_eq!(
            peek_execute_tool_request(&empty),
            Some(RequestPeek::default())
        );
    }

    #[test]
    fn unusual_requests_are_left_to_the_full_decode() {
        let bytes = request().encode_to_vec();
        // Cut anywhere inside: no peek (the full decode keeps what is complete).
        for cut in [1, 5, bytes.len() / 2, bytes.len() - 1] {
            assert_eq!(
                peek_execute_tool_request(&bytes[..cut]),
                None,
                "cut at {cut}"
            );
        }
        // Not UTF-8, an unknown field, a wrong wire type, garbage.
        let bad_text = [0x0a, 0x02, 0xff, 0xfe];
        let unknown_field = [0x78, 0x01];
        let wrong_type = [0x08, 0x01];
        for b in [
            &bad_text[..],
            &unknown_field[..],
            &wrong_type[..],
            &[0xff; 12][..],
        ] {
            assert_eq!(peek_execute_tool_request(b), None, "{b:?}");
        }
    }

    #[test]
    fn a_response_peek_says_success_only_for_a_clean_message() {
        let ok = ExecuteToolResponse {
            success: true,
            result: Some(Any {
                type_url: "t".into(),
                value: b"{}".to_vec(),
            }),
            metadata: [("correlation_id".to_string(), "c-1".to_string())].into(),
            execution_time_ms: 3,
            ..Default::default()
        }
        .encode_to_vec();
        assert_eq!(peek_tool_success(&ok), Some(true));
        assert!(
            decode_execute_tool_response(&ok)
                .expect("decodes")
                .msg
                .success
        );
        let failed = ExecuteToolResponse {
            success: false,
            error_message: "{\"type\":\"ValueError\"}".into(),
            ..Default::default()
        }
        .encode_to_vec();
        assert_eq!(peek_tool_success(&failed), Some(false));
        assert_eq!(peek_tool_success(&ok[..ok.len() - 1]), None);
        assert_eq!(peek_tool_success(&[0x12, 0x01, 0x01, 0x78, 0x01]), None);
    }
}
