//! Method identification: the RPC a message belongs to, guessed from its shape when
//! the `:path` is unknown (the agent joined the connection after its HEADERS).

use super::*;

fn is_identifier(b: &[u8]) -> bool {
    !b.is_empty()
        && b.len() <= 256
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-' | b':' | b'/'))
}

fn is_printable(b: &[u8]) -> bool {
    std::str::from_utf8(b)
        .is_ok_and(|s| !s.chars().any(|c| c.is_control() && c != '\n' && c != '\t'))
}

/// A complete Timestamp: only fields 1 and 2, both varints.
fn is_timestamp(b: &[u8]) -> bool {
    let (fields, scan) = FieldScanner::collect_all(b);
    !scan.malformed
        && !scan.truncated
        && fields
            .iter()
            .all(|f| matches!((f.number, f.value), (1 | 2, FieldValue::Varint(_))))
}

/// A map<string, _> entry: field 1 a string key, field 2 anything length-delimited.
fn is_map_entry(b: &[u8]) -> bool {
    let (fields, scan) = FieldScanner::collect_all(b);
    !scan.malformed
        && fields
            .iter()
            .all(|f| matches!(f.value, FieldValue::Len { .. }) && f.number <= 2)
        && fields
            .first()
            .is_some_and(|f| f.number == 1 && f.bytes().is_some_and(is_printable))
}

fn complete_bytes<'a>(f: &ScannedField<'a>) -> Option<&'a [u8]> {
    f.bytes().filter(|_| !f.is_truncated())
}

/// Guesses the RPC method from one message's bytes (a prefix is fine) when the
/// `:path` is unknown (we joined after the HEADERS).
///
/// Heuristics, by shape (field numbers and wire types) since proto3 has no type tag:
/// - Requests: field 2 an identifier-like string => ExecuteTool (ExecuteStreamingTool
///   if field 5 is true). Field 2 a Timestamp-shaped message => Heartbeat. Field 2
///   map entries and no worker id => InitializeSession; field 2 messages plus a
///   field 3 identifier string => RegisterTools. Only field 1, printable => Ping.
///   Oneof 1/2/3 holding a message => StreamTelemetry (TelemetryControl).
/// - Responses: field 1 a varint, or field 2 an Any (`type_url` with a `/`) or field
///   3 text => ExecuteTool. Field 1 a string with a `-<n>` suffix => streaming
///   ToolChunk. Field 1 Timestamp / field 2 varint => Heartbeat. Field 1 string and
///   field 2 Timestamp => Ping. Field 4 a varint or repeated field 1 strings with
///   field 2/3 maps => StreamTelemetry (TelemetryEvent).
///
/// Limits: ExecuteElixirTool has the same shapes as ExecuteTool (reported as
/// ExecuteTool; the connection's direction tells them apart). CleanupSession and
/// GetSession requests (a session id only) look like Ping. Empty messages, and
/// responses with every field at its default, say nothing: None.
pub fn identify_method(flow: Flow, bytes: &[u8]) -> Option<Method> {
    let (fields, scan) = FieldScanner::collect_all(bytes);
    if scan.malformed || fields.is_empty() {
        return None;
    }
    let get = |n: u32| fields.iter().find(|f| f.number == n);
    let all_in = |allowed: &[(u32, u8)]| {
        fields.iter().all(|f| {
            let wt = match f.value {
                FieldValue::Varint(_) => 0,
                FieldValue::Fixed64(_) => 1,
                FieldValue::Len { .. } => 2,
                FieldValue::Fixed32(_) => 5,
            };
            allowed.contains(&(f.number, wt))
        })
    };
    match flow {
        Flow::Request => {
            if all_in(&[(1, 2), (2, 2), (3, 2), (4, 2), (5, 0), (6, 2)]) {
                if let Some(name) = get(2).and_then(|f| complete_bytes(f)) {
                    if is_identifier(name)
                        && get(1).is_none_or(|f| f.bytes().is_some_and(is_printable))
                    {
                        let streaming = get(5).and_then(|f| f.varint()) == Some(1);
                        return Some(if streaming {
                            Method::ExecuteStreamingTool
                        } else {
                            Method::ExecuteTool
                        });
                    }
                    if is_timestamp(name) && all_in(&[(1, 2), (2, 2)]) {
                        return Some(Method::Heartbeat);
                    }
                }
            }
            if all_in(&[(1, 2), (2, 2), (3, 2)]) && get(2).is_some() {
                let worker_id = get(3)
                    .and_then(|f| complete_bytes(f))
                    .is_some_and(is_identifier);
                let entries_are_maps = fields
                    .iter()
                    .filter(|f| f.number == 2)
                    .filter_map(|f| complete_bytes(f))
                    .all(is_map_entry);
                return Some(if worker_id || !entries_are_maps {
                    Method::RegisterTools
                } else {
                    Method::InitializeSession
                });
            }
            if fields.len() == 1 {
                let f = &fields[0];
                if let Some(b) = f.bytes() {
                    if f.number == 1 && is_printable(b) {
                        return Some(Method::Ping);
                    }
                    if (1..=3).contains(&f.number) {
                        let (_, s) = FieldScanner::collect_all(b);
                        if !s.malformed {
                            return Some(Method::StreamTelemetry);
                        }
                    }
                }
            }
            None
        }
        Flow::Response => {
            if get(4).is_some_and(|f| f.varint().is_some())
                && all_in(&[(1, 2), (2, 2), (3, 2), (4, 0), (5, 2)])
            {
                return Some(Method::StreamTelemetry);
            }
            if get(1).is_some_and(|f| f.varint().is_some())
                && all_in(&[(1, 0), (2, 2), (3, 2), (4, 2), (5, 0), (6, 2)])
            {
                return Some(Method::ExecuteTool);
            }
            if get(2).is_some_and(|f| f.varint().is_some()) && all_in(&[(1, 2), (2, 0)]) {
                return Some(Method::Heartbeat);
            }
            if all_in(&[(1, 2)])
                && get(1)
                    .and_then(|f| complete_bytes(f))
                    .is_some_and(is_timestamp)
            {
                return Some(Method::Heartbeat);
            }
            if all_in(&[(1, 2), (2, 2), (3, 0), (4, 2)]) {
                if let Some(id) = get(1).and_then(|f| complete_bytes(f)) {
                    let chunk_like = std::str::from_utf8(id).ok().is_some_and(|s| {
                        s.rsplit_once('-').is_some_and(|(_, n)| {
                            !n.is_empty() && n.bytes().all(|c| c.is_ascii_digit())
                        })
                    });
                    if chunk_like || get(3).is_some() {
                        return Some(Method::ExecuteStreamingTool);
                    }
                    if is_printable(id)
                        && all_in(&[(1, 2), (2, 2)])
                        && get(2)
                            .and_then(|f| complete_bytes(f))
                            .is_none_or(is_timestamp)
                    {
                        return Some(Method::Ping);
                    }
                }
                let repeated_strings = fields.iter().filter(|f| f.number == 1).count() > 1;
                if repeated_strings {
                    return Some(Method::StreamTelemetry);
                }
            }
            if all_in(&[(1, 0), (2, 2), (3, 2), (4, 2), (5, 0), (6, 2)]) {
                let any_like = get(2)
                    .and_then(|f| f.bytes())
                    .and_then(|b| FieldScanner::new(b).next())
                    .and_then(|f| if f.number == 1 { f.bytes() } else { None })
                    .is_some_and(|t| t.contains(&b'/'));
                if any_like || get(3).is_some() || get(5).is_some() {
                    return Some(Method::ExecuteTool);
                }
            }
            None
        }
    }
}
