//! End-to-end: ML events derived from the wire by configured rules, compared with what
//! the demo's ML tools were asked to do (batch sizes, steps) and with the calls' own
//! durations (tokens per second).
use serde_json::Value;
use snakepit_testkit::agent::{events_named, Agent};
use snakepit_testkit::demo::{read_jsonl, Demo, GroundTruthCall, LoadSpec};
use snakepit_testkit::{require, scratch_dir};
use std::collections::HashMap;
use std::time::Duration;

const RULES: &str = r#"
[[calls.ml_rules]]
kind = "inference"
tool = "ml_infer"
model = "params.model"
batch_size = "params.batch_size"
tokens = "result.tokens"

[[calls.ml_rules]]
kind = "train_step"
tool = "ml_train_step"
loss = "result.loss"
learning_rate = "params.lr"
epoch = "params.epoch"
step = "result.step"
"#;

fn by_correlation<'a>(events: &'a [Value], name: &[&str]) -> HashMap<String, &'a Value> {
    by_correlation_from(events, name, None)
}

/// Events of `name` keyed by correlation id, only those from `source` when given.
fn by_correlation_from<'a>(
    events: &'a [Value],
    name: &[&str],
    source: Option<&str>,
) -> HashMap<String, &'a Value> {
    events_named(events, name)
        .into_iter()
        .filter(|e| source.is_none_or(|s| e["metadata"]["source"] == s))
        .filter_map(|e| Some((e["metadata"]["correlation_id"].as_str()?.to_string(), e)))
        .collect()
}

#[test]
fn ml_rules_turn_tool_calls_into_inference_and_train_step_events() {
    require::root_and_bpf();
    let dir = scratch_dir("ml-events");
    let config = dir.join("agent.toml");
    std::fs::write(&config, RULES).expect("writing the agent config");
    let agent = Agent::start(&dir, &["--config", config.to_str().expect("utf-8 path")])
        .expect("agent start");
    let (mut demo, _) = Demo::start_ready(&dir, 2, 0).expect("demo start");
    std::thread::sleep(Duration::from_millis(500));
    let gt_path = dir.join("ground_truth.jsonl");
    demo.load(
        &LoadSpec::new(40, 2_500, &[("ml_infer", 3), ("ml_train", 2), ("echo", 1)]),
        &gt_path,
    )
    .expect("load");
    let truth: Vec<GroundTruthCall> = read_jsonl(&gt_path).expect("ground truth");
    demo.stop().expect("demo stop");
    std::thread::sleep(Duration::from_millis(1_000));
    let events = agent.stop().expect("agent stop");

    let inference = by_correlation_from(&events, &["snakepit", "ml", "inference"], Some("rule"));
    let train = by_correlation_from(&events, &["snakepit", "ml", "train_step"], Some("rule"));
    let py_inference = by_correlation_from(
        &events,
        &["snakepit", "ml", "inference"],
        Some("python_telemetry"),
    );
    let py_alloc = by_correlation_from(
        &events,
        &["snakepit", "memory", "allocate"],
        Some("python_telemetry"),
    );
    let py_stops = by_correlation(&events, &["snakepit", "python", "call", "stop"]);
    let stops = by_correlation(&events, &["snakepit", "call", "stop"]);
    let infer_calls: Vec<&GroundTruthCall> =
        truth.iter().filter(|g| g.tool == "ml_infer").collect();
    let train_calls: Vec<&GroundTruthCall> =
        truth.iter().filter(|g| g.tool == "ml_train_step").collect();
    assert!(
        infer_calls.len() >= 10 && train_calls.len() >= 5,
        "load too small: {}",
        truth.len()
    );
    assert_eq!(
        inference.len(),
        infer_calls.len(),
        "one inference event per ml_infer call"
    );
    assert_eq!(
        train.len(),
        train_calls.len(),
        "one train_step event per ml_train_step call"
    );

    // The worker's own telemetry, seen on the StreamTelemetry stream the BEAM keeps
    // open: every tool call's python.call.stop, and the ML tool's inference and
    // memory events mapped onto the design's.
    assert_eq!(py_stops.len(), truth.len(), "python.call.stop per call");
    assert_eq!(
        py_inference.len(),
        infer_calls.len(),
        "python-side inference events"
    );
    assert_eq!(
        py_alloc.len(),
        infer_calls.len(),
        "python-side memory.allocate events"
    );
    for g in &infer_calls {
        let e = py_inference[&g.correlation_id];
        assert_eq!(
            e["measurements"]["batch_size"].as_u64(),
            Some(1 + g.seq % 8),
            "{e}"
        );
        assert!(
            e["measurements"]["tokens_per_second"]
                .as_f64()
                .is_some_and(|t| t > 0.0),
            "{e}"
        );
        assert!(py_alloc[&g.correlation_id]["measurements"]["bytes"]
            .as_u64()
            .is_some_and(|b| b > 0));
    }
    for g in infer_calls {
        let e = inference[&g.correlation_id];
        let batch = 1 + g.seq % 8;
        assert_eq!(e["measurements"]["batch_size"].as_u64(), Some(batch), "{e}");
        assert_eq!(e["metadata"]["model"], "tiny-mlp");
        let duration = stops[&g.correlation_id]["measurements"]["duration"]
            .as_u64()
            .expect("duration");
        assert_eq!(e["measurements"]["duration"].as_u64(), Some(duration));
        let tps = e["measurements"]["tokens_per_second"]
            .as_f64()
            .expect("tokens_per_second");
        let want = (batch * 16) as f64 / (duration as f64 / 1e9);
        assert!(
            (tps - want).abs() <= want * 1e-9,
            "tokens/s {tps} want {want}"
        );
    }
    for g in train_calls {
        let e = train[&g.correlation_id];
        assert_eq!(e["metadata"]["step"].as_u64(), Some(g.seq), "{e}");
        assert_eq!(e["metadata"]["epoch"].as_u64(), Some(1));
        assert_eq!(e["measurements"]["learning_rate"].as_f64(), Some(0.01));
        assert!(
            e["measurements"]["loss"].as_f64().is_some_and(|l| l > 0.0),
            "{e}"
        );
    }
}
