//! JSON and text renderings of an event, written straight from the typed values: the
//! only place a typed event becomes JSON. The shape is docs/events.md's
//! `{"event":[...],"time_unix_nano":N,"measurements":{...},"metadata":{...}}`, keys
//! sorted within each object, as serde_json's maps have always written them.
use super::typed::{AgentEvent, NameRef, Val, Visitor};
use std::fmt::Write as _;
use std::io::{self, Write};

type List<'a> = Vec<(&'a str, Val<'a>)>;

/// An event's fields, split and sorted by key.
#[derive(Default)]
struct Fields<'a> {
    measurements: List<'a>,
    metadata: List<'a>,
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
        measurements: Vec::with_capacity(8),
        metadata: Vec::with_capacity(24),
    };
    event.visit(&mut f);
    f.measurements.sort_unstable_by(|a, b| a.0.cmp(b.0));
    f.metadata.sort_unstable_by(|a, b| a.0.cmp(b.0));
    f
}

/// One JSON object, no newline.
pub fn write_json(out: &mut dyn Write, event: &AgentEvent) -> io::Result<()> {
    if let AgentEvent::Dynamic(e) = event {
        return serde_json::to_writer(&mut *out, e).map_err(io::Error::from);
    }
    let NameRef::Static(name) = event.name() else {
        unreachable!("typed events have schema names")
    };
    out.write_all(b"{\"event\":")?;
    serde_json::to_writer(&mut *out, name)?;
    write!(out, ",\"time_unix_nano\":{}", event.time_unix_nano())?;
    let f = fields(event);
    out.write_all(b",\"measurements\":")?;
    write_object(out, &f.measurements)?;
    out.write_all(b",\"metadata\":")?;
    write_object(out, &f.metadata)?;
    out.write_all(b"}")
}

fn write_object(out: &mut dyn Write, list: &List<'_>) -> io::Result<()> {
    out.write_all(b"{")?;
    for (i, (k, v)) in list.iter().enumerate() {
        if i > 0 {
            out.write_all(b",")?;
        }
        serde_json::to_writer(&mut *out, k)?;
        out.write_all(b":")?;
        match v {
            Val::Str(s) => serde_json::to_writer(&mut *out, s)?,
            Val::U64(n) => write!(out, "{n}")?,
            Val::I64(n) => write!(out, "{n}")?,
            Val::Bool(b) => write!(out, "{b}")?,
            Val::Json(j) => serde_json::to_writer(&mut *out, j)?,
        }
    }
    out.write_all(b"}")
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
