//! Python source for values: the payload is written as a readable Python literal
//! (dicts, lists, strings, numbers), one entry per line so a redaction can carry a
//! comment next to the value it replaced.
use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
pub enum Py {
    None,
    Bool(bool),
    /// A number as JSON wrote it (valid Python too).
    Num(String),
    Str(String),
    List(Vec<Py>),
    Dict(Vec<Entry>),
    /// Python source used as is (e.g. `base64.b64decode("...")`).
    Expr(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub key: String,
    pub value: Py,
    pub comment: Option<String>,
}

impl Entry {
    pub fn new(key: impl Into<String>, value: Py) -> Self {
        Entry {
            key: key.into(),
            value,
            comment: None,
        }
    }
}

impl Py {
    /// A JSON value as is (no redaction).
    pub fn from_json(v: &Value) -> Py {
        match v {
            Value::Null => Py::None,
            Value::Bool(b) => Py::Bool(*b),
            Value::Number(n) => Py::Num(n.to_string()),
            Value::String(s) => Py::Str(s.clone()),
            Value::Array(a) => Py::List(a.iter().map(Py::from_json).collect()),
            Value::Object(o) => Py::Dict(
                o.iter()
                    .map(|(k, v)| Entry::new(k.clone(), Py::from_json(v)))
                    .collect(),
            ),
        }
    }

    pub fn str(s: &str) -> Py {
        Py::Str(s.to_string())
    }

    /// Python source of this value, nested lines indented from `indent`.
    pub fn render(&self, indent: usize) -> String {
        let mut out = String::new();
        self.write(&mut out, indent);
        out
    }

    fn write(&self, out: &mut String, indent: usize) {
        match self {
            Py::None => out.push_str("None"),
            Py::Bool(true) => out.push_str("True"),
            Py::Bool(false) => out.push_str("False"),
            Py::Num(n) => out.push_str(n),
            Py::Str(s) => out.push_str(&str_literal(s)),
            Py::Expr(e) => out.push_str(e),
            Py::List(items) if items.is_empty() => out.push_str("[]"),
            Py::Dict(items) if items.is_empty() => out.push_str("{}"),
            Py::List(items) => {
                out.push_str("[\n");
                for it in items {
                    pad(out, indent + 4);
                    it.write(out, indent + 4);
                    out.push_str(",\n");
                }
                pad(out, indent);
                out.push(']');
            }
            Py::Dict(items) => {
                out.push_str("{\n");
                for e in items {
                    pad(out, indent + 4);
                    out.push_str(&str_literal(&e.key));
                    out.push_str(": ");
                    e.value.write(out, indent + 4);
                    out.push(',');
                    if let Some(c) = &e.comment {
                        out.push_str("  # ");
                        out.push_str(&one_line(c));
                    }
                    out.push('\n');
                }
                pad(out, indent);
                out.push('}');
            }
        }
    }
}

fn pad(out: &mut String, n: usize) {
    out.extend(std::iter::repeat_n(' ', n));
}

/// A Python string literal: JSON's string escapes are all valid Python escapes.
pub fn str_literal(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_string())
}

/// Text safe inside a `#` comment or a docstring line: no line breaks, no quotes run.
pub fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .replace("\"\"\"", "'''")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_becomes_python_with_comments() {
        let v: Value = serde_json::json!({"a": [1, 2.5, null, true], "b": "x\"y\n", "c": {}});
        let mut py = Py::from_json(&v);
        if let Py::Dict(items) = &mut py {
            items[1].comment = Some("note\nhere".into());
        }
        let text = py.render(0);
        assert_eq!(
            text,
            "{\n    \"a\": [\n        1,\n        2.5,\n        None,\n        True,\n    ],\n    \"b\": \"x\\\"y\\n\",  # note here\n    \"c\": {},\n}"
        );
    }
}
