//! ML events from what is already on the wire: rules in the configuration mark tools
//! (or SnakeBridge library functions) as inference or training steps and say where
//! batch size, tokens, loss, learning rate, epoch and step are found in the request
//! parameters or the result JSON. A completed call that matches a rule becomes
//! `[:snakepit, :ml, :inference]` or `[:snakepit, :ml, :train_step]` (the design's
//! fields; tokens_per_second = tokens / (duration / 1e9), as the design computes it).
use crate::events::Event;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::HashMap;

pub use crate::events::schema::{
    MEMORY_ALLOCATE, MEMORY_RELEASE, ML_INFERENCE, ML_TENSOR_OP, ML_TRAIN_STEP,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MlKind {
    Inference,
    TrainStep,
}

/// One `[[calls.ml_rules]]` entry. A field path is `params.<name>[.<key>...]` (a
/// request parameter's JSON) or `result.<key>[...]` (the tool's result JSON); a value
/// starting with `=` is a literal (for `model`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MlRule {
    pub kind: MlKind,
    /// Match on the tool name (plain Snakepit tools) ...
    #[serde(default)]
    pub tool: Option<String>,
    /// ... or on SnakeBridge's library and function.
    #[serde(default)]
    pub library: Option<String>,
    #[serde(default)]
    pub function: Option<String>,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub batch_size: Option<String>,
    #[serde(default)]
    pub tokens: Option<String>,
    #[serde(default)]
    pub loss: Option<String>,
    #[serde(default)]
    pub learning_rate: Option<String>,
    #[serde(default)]
    pub epoch: Option<String>,
    #[serde(default)]
    pub step: Option<String>,
}

/// What a completed call offers to the rules.
pub struct CallFacts<'a> {
    pub tool: Option<&'a str>,
    pub library: Option<&'a str>,
    pub function: Option<&'a str>,
    pub params: Option<&'a HashMap<String, Value>>,
    pub result: Option<&'a Value>,
    pub duration_ns: u64,
}

impl MlRule {
    fn matches(&self, c: &CallFacts) -> bool {
        let eq = |want: &Option<String>, got: Option<&str>| {
            want.as_deref().is_none_or(|w| Some(w) == got)
        };
        (self.tool.is_some() || self.library.is_some() || self.function.is_some())
            && eq(&self.tool, c.tool)
            && eq(&self.library, c.library)
            && eq(&self.function, c.function)
    }
}

/// The ML event of the first rule matching the call, if any.
pub fn ml_event(rules: &[MlRule], c: &CallFacts) -> Option<Event> {
    let rule = rules.iter().find(|r| r.matches(c))?;
    let num = |path: &Option<String>| path.as_deref().and_then(|p| lookup(p, c)).and_then(as_f64);
    let text = |path: &Option<String>| {
        path.as_deref().and_then(|p| match p.strip_prefix('=') {
            Some(lit) => Some(lit.to_string()),
            None => lookup(p, c).map(|v| match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            }),
        })
    };
    let model = text(&rule.model)
        .or_else(|| c.function.map(str::to_string))
        .or_else(|| c.tool.map(str::to_string));
    let ev = match rule.kind {
        MlKind::Inference => {
            let tps = num(&rule.tokens)
                .filter(|_| c.duration_ns > 0)
                .map(|t| t / (c.duration_ns as f64 / 1e9));
            let mut ev = Event::new(ML_INFERENCE).measure("duration", c.duration_ns);
            if let Some(b) = num(&rule.batch_size) {
                ev = ev.measure("batch_size", b as u64);
            }
            if let Some(t) = tps {
                ev = ev.measure("tokens_per_second", t);
            }
            ev
        }
        MlKind::TrainStep => {
            let mut ev = Event::new(ML_TRAIN_STEP).measure("duration", c.duration_ns);
            if let Some(l) = num(&rule.loss) {
                ev = ev.measure("loss", l);
            }
            if let Some(lr) = num(&rule.learning_rate) {
                ev = ev.measure("learning_rate", lr);
            }
            ev.meta_opt("epoch", num(&rule.epoch).map(|e| e as u64))
                .meta_opt("step", num(&rule.step).map(|s| s as u64))
        }
    };
    Some(ev.meta_opt("model", model).meta("source", "rule"))
}

/// A Python-side telemetry event (already re-emitted as `["snakepit","python",...]`)
/// whose name and fields fit one of the design's ML or memory events, as that event.
/// `rest` is the name after `python`, e.g. `["ml", "inference"]`.
pub fn from_python(rest: &[&str], python: &Event) -> Option<Event> {
    let design: &[&str] = match rest {
        ["ml", "inference"] => ML_INFERENCE,
        ["ml", "train_step"] => ML_TRAIN_STEP,
        ["ml", "tensor_op"] => ML_TENSOR_OP,
        ["memory", "allocate"] => MEMORY_ALLOCATE,
        ["memory", "release"] => MEMORY_RELEASE,
        _ => return None,
    };
    let m = |k: &str| python.measurements.get(k).and_then(as_f64);
    // Durations: the design's unit is ns; Python may say `duration` or `duration_ns`.
    let duration = m("duration").or_else(|| m("duration_ns"));
    let mut ev = Event::new(design).at(python.time_unix_nano);
    let keep: &[&str] = match rest {
        ["ml", "inference"] => &["batch_size"],
        ["ml", "train_step"] => &["loss", "learning_rate"],
        ["ml", "tensor_op"] => &["input_elements", "output_elements"],
        _ => &["bytes"],
    };
    if rest[0] == "ml" {
        if let Some(d) = duration {
            ev = ev.measure("duration", d as u64);
        }
    }
    for k in keep {
        if let Some(v) = python.measurements.get(*k) {
            ev = ev.measure(k, v.clone());
        }
    }
    if design == ML_INFERENCE {
        if let (Some(t), Some(d)) = (m("tokens"), duration.filter(|d| *d > 0.0)) {
            ev = ev.measure("tokens_per_second", t / (d / 1e9));
        }
    }
    ev.metadata = python.metadata.clone();
    Some(ev.meta("source", "python_telemetry"))
}

fn lookup<'a>(path: &str, c: &'a CallFacts) -> Option<&'a Value> {
    let mut parts = path.split('.');
    let mut cur = match parts.next()? {
        "params" => c.params?.get(parts.next()?)?,
        "result" => c.result?,
        _ => return None,
    };
    for key in parts {
        cur = match cur {
            Value::Object(m) => m.get(key)?,
            Value::Array(a) => a.get(key.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(cur)
}

fn as_f64(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rules() -> Vec<MlRule> {
        let cfg: crate::config::Config = toml::from_str(
            r#"
[[calls.ml_rules]]
kind = "inference"
tool = "ml_infer"
model = "params.model"
batch_size = "params.batch_size"
tokens = "result.tokens"

[[calls.ml_rules]]
kind = "train_step"
library = "mymodel"
function = "train_step"
model = "=mymodel"
loss = "result.metrics.loss"
learning_rate = "params.lr"
epoch = "params.epoch"
step = "result.step"
"#,
        )
        .expect("rules parse");
        cfg.calls.ml_rules
    }

    #[test]
    fn inference_rule_takes_batch_size_and_computes_tokens_per_second() {
        let params = HashMap::from([
            ("model".to_string(), json!("tiny-mlp")),
            ("batch_size".to_string(), json!(8)),
        ]);
        let result = json!({"tokens": 400});
        let ev = ml_event(
            &rules(),
            &CallFacts {
                tool: Some("ml_infer"),
                library: Some("demo_adapter.DemoAdapter"),
                function: Some("ml_infer"),
                params: Some(&params),
                result: Some(&result),
                duration_ns: 200_000_000,
            },
        )
        .expect("an inference event");
        assert!(ev.is(ML_INFERENCE));
        assert_eq!(ev.measurements["batch_size"], 8);
        assert_eq!(ev.measurements["tokens_per_second"], 2000.0);
        assert_eq!(ev.metadata["model"], "tiny-mlp");
    }

    #[test]
    fn train_rule_reads_nested_result_fields_and_literals() {
        let params = HashMap::from([
            ("lr".to_string(), json!(0.01)),
            ("epoch".to_string(), json!(2)),
        ]);
        let result = json!({"metrics": {"loss": 0.25}, "step": 17});
        let ev = ml_event(
            &rules(),
            &CallFacts {
                tool: Some("snakebridge.call"),
                library: Some("mymodel"),
                function: Some("train_step"),
                params: Some(&params),
                result: Some(&result),
                duration_ns: 5,
            },
        )
        .expect("a train step");
        assert!(ev.is(ML_TRAIN_STEP));
        assert_eq!(ev.measurements["loss"], 0.25);
        assert_eq!(ev.measurements["learning_rate"], 0.01);
        assert_eq!(ev.metadata["epoch"], 2);
        assert_eq!(ev.metadata["step"], 17);
        assert_eq!(ev.metadata["model"], "mymodel");
    }

    #[test]
    fn python_telemetry_maps_onto_the_design_events() {
        let py = Event::new(&["snakepit", "python", "ml", "inference"])
            .at(7)
            .measure("duration", 500_000_000u64)
            .measure("batch_size", 4)
            .measure("tokens", 64)
            .meta("model", "tiny-mlp");
        let ev = from_python(&["ml", "inference"], &py).expect("inference");
        assert!(ev.is(ML_INFERENCE));
        assert_eq!(ev.measurements["batch_size"], 4);
        assert_eq!(ev.measurements["tokens_per_second"], 128.0);
        assert_eq!(ev.metadata["model"], "tiny-mlp");
        let alloc = Event::new(&["snakepit", "python", "memory", "allocate"])
            .measure("bytes", 1024)
            .meta("type", "cpu");
        let ev = from_python(&["memory", "allocate"], &alloc).expect("allocate");
        assert!(ev.is(MEMORY_ALLOCATE));
        assert_eq!(ev.measurements["bytes"], 1024);
        assert!(from_python(&["call", "stop"], &alloc).is_none());
    }

    #[test]
    fn no_rule_no_event_and_missing_fields_are_absent() {
        let c = CallFacts {
            tool: Some("echo"),
            library: None,
            function: Some("echo"),
            params: None,
            result: None,
            duration_ns: 1,
        };
        assert!(ml_event(&rules(), &c).is_none());
        let c = CallFacts {
            tool: Some("ml_infer"),
            ..c
        };
        let ev = ml_event(&rules(), &c).expect("event");
        assert!(!ev.measurements.contains_key("batch_size"));
        assert!(!ev.measurements.contains_key("tokens_per_second"));
    }
}
