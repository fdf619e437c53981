//! JSON and text renderings of an event, written straight from the typed values: the
//! only place a typed event becomes JSON. The shape is docs/events.md's
//! `{"event":[...],"time_unix_nano":N,"measurements":{...},"metadata":{...}}`, keys
//! sorted within each object, as serde_json's maps have always written them.
use super::typed::{AgentEvent, NameRef, Val, Visitor};
use smallvec::SmallVec;
use std::fmt::Write as _;
use std::io;

/// On the stack for every event the schema has (at most 8 measurements and 24
/// metadata fields): two lists per event were most of the JSON sink's allocations.
type List<'a, const N: usize> = SmallVec<[(&'a str, Val<'a>); N]>;

/// An event's fields, split and sorted by key.
#[derive(Default)]
struct Fields<'a> {
    measurements: List<'a, 8>,
    metadata: List<'a, 24>,
}

impl<'a> Visitor<'a> for Fields<'a> {
    fn measure(&mut self, key: &'a str, value: Val<'a>) {
        self.measurements.push((key, value));
    }
    fn meta(&mut self, key: &'a str, value: Val<'a>) {
        self.metadata.push((key, value));
    }
}

fn fields(event: &AgentEvent) -> Fields<'_> {
    let mut f = Fields {
        measurements: SmallVec::new(),
        metadata: SmallVec::new(),
    };
    event.visit(&mut f);
    f.measurements.sort_unstable_by(|a, b| a.0.cmp(b.0));
    f.metadata.sort_unstable_by(|a, b| a.0.cmp(b.0));
    f
}

/// One JSON object, no newline, appended to `out` (the sinks render a line into a
/// reused buffer: no dynamic dispatch and no formatting machinery per field).
pub fn write_json(out: &mut Vec<u8>, event: &AgentEvent) -> io::Result<()> {
    if let AgentEvent::Dynamic(e) = event {
        return serde_json::to_writer(&mut *out, e).map_err(io::Error::from);
    }
    let NameRef::Static(name) = event.name() else {
        unreachable!("typed events have schema names")
    };
    out.extend_from_slice(b"{\"event\":");
    serde_json::to_writer(&mut *out, name)?;
    out.extend_from_slice(b",\"time_unix_nano\":");
    out.extend_from_slice(
        itoa::Buffer::new()
            .format(event.time_unix_nano())
            .as_bytes(),
    );
    let f = fields(event);
    out.extend_from_slice(b",\"measurements\":");
    write_object(out, &f.measurements)?;
    out.extend_from_slice(b",\"metadata\":");
    write_object(out, &f.metadata)?;
    out.push(b'}');
    Ok(())
}

fn write_object(out: &mut Vec<u8>, list: &[(&str, Val<'_>)]) -> io::Result<()> {
    out.push(b'{');
    let mut num = itoa::Buffer::new();
    for (i, (k, v)) in list.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_str(out, k)?;
        out.push(b':');
        match v {
            Val::Str(s) => write_str(out, s)?,
            Val::U64(n) => out.extend_from_slice(num.format(*n).as_bytes()),
            Val::I64(n) => out.extend_from_slice(num.format(*n).as_bytes()),
            Val::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
            Val::Json(j) => serde_json::to_writer(&mut *out, j)?,
        }
    }
    out.push(b'}');
    Ok(())
}

/// A JSON string: copied between quotes when nothing in it needs escaping (schema
/// keys, tool names, ids), else serde_json's escaping.
fn write_str(out: &mut Vec<u8>, s: &str) -> io::Result<()> {
    if s.bytes()
        .all(|b| b >= 0x20 && b != b'"' && b != b'\\' && b < 0x7f)
    {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
        return Ok(());
    }
    serde_json::to_writer(&mut *out, s).map_err(io::Error::from)
}

/// The text sink's `key=value` pairs: measurements, then metadata, each sorted;
/// strings bare, everything else as JSON.
pub fn write_text_fields(line: &mut String, event: &AgentEvent) {
    let f = fields(event);
    for (k, v) in f.measurements.iter().chain(f.metadata.iter()) {
        let _ = match v {
            Val::Str(s) => write!(line, " {k}={s}"),
            Val::U64(n) => write!(line, " {k}={n}"),
            Val::I64(n) => write!(line, " {k}={n}"),
            Val::Bool(b) => write!(line, " {k}={b}"),
            Val::Json(serde_json::Value::String(s)) => write!(line, " {k}={s}"),
            Val::Json(j) => write!(line, " {k}={j}"),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_written_as_serde_json_writes_them() {
        for s in [
            "plain_key",
            "",
            "with \"quotes\"",
            "back\\slash",
            "control\u{1}\n\t\r",
            "del\u{7f}",
            "ünïcode ✓",
            "</script>",
        ] {
            let mut out = Vec::new();
            write_str(&mut out, s).expect("write");
            assert_eq!(out, serde_json::to_vec(s).expect("json"), "{s:?}");
        }
    }
}
