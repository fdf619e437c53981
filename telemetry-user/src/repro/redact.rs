//! Secret redaction before anything is written: values under keys matching the
//! configured list (case-insensitive substrings: `password`, `api_key`, ...) and
//! strings that look like bearer tokens are replaced, with a comment saying so. The
//! secrets found are then scrubbed from free text too (an error message or
//! traceback may repeat a parameter).
use super::pyrepr::{Entry, Py};
use serde_json::Value;

pub const REDACTED: &str = "<redacted>";
/// Shortest secret value scrubbed from free text (shorter ones would hit ordinary words).
const MIN_SCRUB: usize = 4;

pub struct Redactor {
    keys: Vec<String>,
    /// Secret values found so far, scrubbed from free text.
    secrets: Vec<String>,
    /// One line per redaction, for the script's header.
    pub notes: Vec<String>,
}

impl Redactor {
    pub fn new(keys: &[String]) -> Self {
        Redactor {
            keys: keys.iter().map(|k| k.to_ascii_lowercase()).collect(),
            secrets: Vec::new(),
            notes: Vec::new(),
        }
    }

    pub fn key_matches(&self, key: &str) -> Option<&str> {
        let k = key.to_ascii_lowercase();
        self.keys
            .iter()
            .find(|p| !p.is_empty() && k.contains(p.as_str()))
            .map(String::as_str)
    }

    /// One named value (a parameter, a metadata entry) at `path`: redacted whole when
    /// its key matches, else walked for nested keys and bearer tokens.
    pub fn entry(&mut self, path: &str, key: &str, value: &Value) -> Entry {
        if let Some(p) = self.key_matches(key).map(str::to_string) {
            self.remember(value);
            let why = format!("redacted: key {key:?} matches {p:?}");
            self.notes.push(format!("{path}: {why}"));
            return Entry {
                key: key.to_string(),
                value: Py::str(REDACTED),
                comment: Some(why),
            };
        }
        let mut e = Entry::new(key, Py::None);
        let (py, comment) = self.value(&format!("{path}.{key}"), value);
        e.value = py;
        e.comment = comment;
        e
    }

    fn value(&mut self, path: &str, v: &Value) -> (Py, Option<String>) {
        match v {
            Value::String(s) if looks_like_bearer(s) => {
                self.remember(v);
                let why = "redacted: looks like a bearer token".to_string();
                self.notes.push(format!("{path}: {why}"));
                (Py::str(REDACTED), Some(why))
            }
            Value::Array(a) => {
                let items = a
                    .iter()
                    .enumerate()
                    .map(|(i, x)| self.value(&format!("{path}[{i}]"), x).0)
                    .collect();
                (Py::List(items), None)
            }
            Value::Object(o) => {
                let items = o.iter().map(|(k, x)| self.entry(path, k, x)).collect();
                (Py::Dict(items), None)
            }
            other => (Py::from_json(other), None),
        }
    }

    fn remember(&mut self, v: &Value) {
        let mut texts = Vec::new();
        collect_strings(v, &mut texts);
        for s in texts {
            if s.len() >= MIN_SCRUB && !self.secrets.contains(&s) {
                self.secrets.push(s);
            }
        }
    }

    /// Free text (error message, traceback) with every known secret and every bearer
    /// token replaced.
    pub fn text(&self, s: &str) -> String {
        let mut out = s.to_string();
        for secret in &self.secrets {
            out = out.replace(secret.as_str(), REDACTED);
        }
        scrub_bearer(&out)
    }
}

fn collect_strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => {
            out.push(s.clone());
            // "Bearer abc": the token alone may appear elsewhere too.
            if let Some(tok) = bearer_token(s) {
                out.push(tok.to_string());
            }
        }
        Value::Array(a) => a.iter().for_each(|x| collect_strings(x, out)),
        Value::Object(o) => o.values().for_each(|x| collect_strings(x, out)),
        Value::Number(n) => out.push(n.to_string()),
        _ => {}
    }
}

fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-._~+/=".contains(c)
}

/// The token of the first `Bearer <token>` in `s` (case-insensitive), if any.
fn bearer_token(s: &str) -> Option<&str> {
    let lower = s.to_ascii_lowercase();
    let mut from = 0;
    while let Some(i) = lower[from..].find("bearer") {
        let start = from + i + "bearer".len();
        let rest = &s[start..];
        let trimmed = rest.trim_start_matches([' ', '\t', ':', '=']);
        if trimmed.len() < rest.len() {
            let end = trimmed
                .find(|c: char| !is_token_char(c))
                .unwrap_or(trimmed.len());
            if end >= 8 {
                return Some(&trimmed[..end]);
            }
        }
        from = start;
    }
    None
}

pub fn looks_like_bearer(s: &str) -> bool {
    bearer_token(s).is_some()
}

/// Replaces every bearer token's value in free text.
pub fn scrub_bearer(s: &str) -> String {
    let mut out = s.to_string();
    while let Some(tok) = bearer_token(&out).map(str::to_string) {
        out = out.replace(&tok, REDACTED);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn keys() -> Vec<String> {
        crate::repro::ReproConfig::default().redact_keys
    }

    #[test]
    fn matching_keys_and_bearer_values_are_replaced_with_a_comment() {
        let mut r = Redactor::new(&keys());
        let e = r.entry("parameters", "API_KEY", &json!("sk-live-123456"));
        assert_eq!(e.value, Py::str(REDACTED));
        assert!(e.comment.as_deref().unwrap_or_default().contains("api_key"));
        let e = r.entry(
            "parameters",
            "opts",
            &json!({"db_password": "hunter22", "h": ["Bearer abcdefgh12345678"], "n": 3}),
        );
        let text = e.value.render(0);
        assert!(!text.contains("hunter22"), "{text}");
        assert!(!text.contains("abcdefgh12345678"), "{text}");
        assert!(text.contains("\"n\": 3"), "{text}");
        assert_eq!(r.notes.len(), 3, "{:?}", r.notes);
        // Secrets seen in values are scrubbed from free text as well.
        let t = r.text("bad key sk-live-123456; pw hunter22; auth bearer zzzzzzzzzzzz");
        assert_eq!(
            t,
            "bad key <redacted>; pw <redacted>; auth bearer <redacted>"
        );
    }

    #[test]
    fn ordinary_values_are_kept() {
        let mut r = Redactor::new(&keys());
        let e = r.entry("parameters", "message", &json!("bearer of bad news"));
        assert_eq!(e.value, Py::str("bearer of bad news"));
        assert!(r.notes.is_empty());
        assert_eq!(r.text("the bearer arrived"), "the bearer arrived");
    }
}
