use super::*;
use crate::events::{to_typed, Event};
use std::collections::BTreeMap;

/// Parsed samples: `name{sorted labels}` -> value.
fn parse(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    assert!(
        text.ends_with("# EOF\n"),
        "OpenMetrics text ends with # EOF"
    );
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = line.rsplit_once(' ').expect("sample line");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().expect("sample value"),
        };
        let key = match series.split_once('{') {
            Some((name, labels)) => {
                let labels = labels.trim_end_matches('}');
                let mut parts: Vec<&str> = split_labels(labels);
                parts.sort();
                format!("{name}{{{}}}", parts.join(","))
            }
            None => series.to_string(),
        };
        assert!(out.insert(key.clone(), value).is_none(), "duplicate {key}");
    }
    out
}

/// Splits `a="x",b="y,z"` on commas outside quotes.
fn split_labels(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if start < s.len() {
        parts.push(&s[start..]);
    }
    parts
}

fn stop(function: &str, result: &str, duration_ns: u64) -> Event {
    let mut ev = Event::new(schema::CALL_STOP)
        .measure("duration", duration_ns)
        .measure("queue_time", 100_000u64)
        .measure("python_time", duration_ns / 2)
        .meta("library", "demo_adapter.DemoAdapter")
        .meta("function", function)
        .meta("pool", "default")
        .meta("result", result);
    if result == "error" {
        ev = ev.meta("error_type", "ValueError");
    }
    ev
}

fn render(m: &Metrics) -> BTreeMap<String, f64> {
    parse(&m.encode().expect("encode"))
}

const LIB: &str = "library=\"demo_adapter.DemoAdapter\"";

#[test]
fn calls_errors_and_histograms_follow_the_events() {
    let mut m = Metrics::new(&MetricsConfig::default());
    m.observe(&to_typed(&stop("echo", "ok", 2_000_000)));
    m.observe(&to_typed(&stop("echo", "ok", 300_000)));
    m.observe(&to_typed(&stop("fail", "error", 4_000_000)));
    m.observe(&to_typed(
        &Event::new(schema::CALL_EXCEPTION)
            .measure("duration", 1_000_000u64)
            .meta("library", "demo_adapter.DemoAdapter")
            .meta("function", "crash")
            .meta("result", "error")
            .meta("error_type", "exit"),
    ));
    // Internal calls are not tool calls.
    m.observe(&to_typed(&stop("ping", "ok", 1_000).meta("internal", true)));
    let s = render(&m);
    let key = |name: &str, labels: &[&str]| {
        let mut l: Vec<String> = labels.iter().map(|s| s.to_string()).collect();
        l.sort();
        format!("{name}{{{}}}", l.join(","))
    };
    assert_eq!(
        s[&key(
            "snakepit_calls_total",
            &[LIB, "function=\"echo\"", "result=\"ok\""]
        )],
        2.0
    );
    assert_eq!(
        s[&key(
            "snakepit_calls_total",
            &[LIB, "function=\"fail\"", "result=\"error\""]
        )],
        1.0
    );
    assert_eq!(
        s[&key(
            "snakepit_calls_total",
            &[LIB, "function=\"crash\"", "result=\"error\""]
        )],
        1.0
    );
    assert!(
        !s.keys().any(|k| k.contains("ping")),
        "internal call exported"
    );
    assert_eq!(
        s[&key(
            "snakepit_call_exceptions_total",
            &[LIB, "error_type=\"ValueError\""]
        )],
        1.0
    );
    assert_eq!(
        s[&key(
            "snakepit_call_exceptions_total",
            &[LIB, "error_type=\"exit\""]
        )],
        1.0
    );
    let echo = [LIB, "function=\"echo\""];
    assert_eq!(s[&key("snakepit_call_duration_seconds_count", &echo)], 2.0);
    assert!((s[&key("snakepit_call_duration_seconds_sum", &echo)] - 0.0023).abs() < 1e-9);
    // 0.3 ms falls in the 0.5 ms bucket, 2 ms only from the 2.5 ms bucket on.
    let le = |b: &str| {
        let mut l = echo.to_vec();
        let le = format!("le=\"{b}\"");
        l.push(&le);
        s[&key("snakepit_call_duration_seconds_bucket", &l)]
    };
    assert_eq!(le("0.00025"), 0.0);
    assert_eq!(le("0.0005"), 1.0);
    assert_eq!(le("0.001"), 1.0);
    assert_eq!(le("0.0025"), 2.0);
    assert_eq!(le("+Inf"), 2.0);
    assert_eq!(
        s[&key("snakepit_call_queue_time_seconds_count", &echo)],
        2.0
    );
    assert_eq!(
        s[&key("snakepit_call_python_time_seconds_count", &echo)],
        2.0
    );
}

#[test]
fn pools_crashes_gpu_inference_and_agent_stats() {
    let mut m = Metrics::new(&MetricsConfig::default());
    m.observe(&to_typed(
        &Event::new(schema::POOL_SIZE)
            .measure("size", 2)
            .measure("idle", 1)
            .measure("busy", 1)
            .meta("pool", "default"),
    ));
    m.observe(&to_typed(
        &Event::new(schema::WORKER_CRASH)
            .meta("pool", "default")
            .meta("type", "signal")
            .meta("signal", 9),
    ));
    m.observe(&to_typed(
        &Event::new(&["snakepit", "memory", "gpu"])
            .measure("allocated_mb", 512)
            .measure("reserved_mb", 1024)
            .measure("free_mb", 7168)
            .measure("total_mb", 8192)
            .meta("device", serde_json::json!(["cuda", 0])),
    ));
    m.observe(&to_typed(
        &Event::new(&["snakepit", "python", "ml", "inference"])
            .measure("duration", 50_000_000u64)
            .measure("tokens_per_second", 123.5)
            .meta("model", "tiny")
            .meta("device", "cuda:0"),
    ));
    let stats = Event::new(schema::AGENT_STATS)
        .measure("kernel_events", 1000)
        .measure("ringbuf_drops", 3)
        .measure("ring_decode_errors", 0)
        .measure("map_full", 1)
        .measure("watched_fds", 12)
        .meta("decode_errors_by_kind", serde_json::json!({"lost_sync": 5}))
        .meta("calls", serde_json::json!({"unknown_methods": 2}))
        .meta(
            "program_run_time",
            serde_json::json!({"sys_exit_read": {"run_count": 10, "avg_ns": 500.0}}),
        )
        .meta("export_failures", serde_json::json!({"otlp": 4}));
    m.observe(&to_typed(&stats));
    // A second, cumulative report raises the counters to its values (not adds).
    m.observe(&to_typed(&stats.clone().measure("kernel_events", 1500)));
    let s = render(&m);
    assert_eq!(s["snakepit_pool_size{pool=\"default\"}"], 2.0);
    assert_eq!(s["snakepit_pool_idle{pool=\"default\"}"], 1.0);
    assert_eq!(s["snakepit_pool_busy{pool=\"default\"}"], 1.0);
    assert_eq!(
        s["snakepit_worker_crashes_total{pool=\"default\",reason=\"signal\"}"],
        1.0
    );
    assert_eq!(
        s["snakepit_worker_crashes_total{pool=\"default\",reason=\"oom\"}"],
        0.0
    );
    let gpu = "{device=\"cuda:0\",pool=\"\",worker_id=\"\"}";
    assert_eq!(
        s[&format!("snakepit_gpu_memory_allocated_bytes{gpu}")],
        512.0 * MB
    );
    assert_eq!(
        s[&format!("snakepit_gpu_memory_total_bytes{gpu}")],
        8192.0 * MB
    );
    assert_eq!(s["snakepit_gpu_devices"], 1.0);
    let model = "{device=\"cuda:0\",model=\"tiny\"}";
    assert_eq!(
        s[&format!("snakepit_ml_inference_tokens_per_second{model}")],
        123.5
    );
    assert_eq!(
        s[&format!("snakepit_ml_inference_duration_seconds_count{model}")],
        1.0
    );
    assert_eq!(s["snakepit_agent_events_read_total"], 1500.0);
    assert_eq!(s["snakepit_agent_ringbuf_drops_total"], 3.0);
    assert_eq!(s["snakepit_agent_map_full_total"], 1.0);
    assert_eq!(s["snakepit_agent_watched_fds"], 12.0);
    assert_eq!(
        s["snakepit_agent_decode_errors_total{kind=\"lost_sync\"}"],
        5.0
    );
    assert_eq!(s["snakepit_agent_unknown_method_calls_total"], 2.0);
    assert_eq!(
        s["snakepit_agent_ebpf_program_runs_total{program=\"sys_exit_read\"}"],
        10.0
    );
    assert!(
        (s["snakepit_agent_ebpf_program_run_seconds_total{program=\"sys_exit_read\"}"] - 5e-6)
            .abs()
            < 1e-12
    );
    assert_eq!(
        s["snakepit_agent_export_failures_total{exporter=\"otlp\"}"],
        4.0
    );
}

#[test]
fn ten_thousand_function_names_stay_under_the_cap() {
    let cap = 500;
    let mut m = Metrics::new(&MetricsConfig {
        label_value_cap: cap,
        ..MetricsConfig::default()
    });
    for i in 0..10_000 {
        m.observe(&to_typed(&stop(
            &format!("tool_{i}\"\n\\"),
            "ok",
            1_000_000,
        )));
    }
    let text = m.encode().expect("encode");
    let s = parse(&text);
    let functions: std::collections::HashSet<&str> = text
        .lines()
        .filter(|l| l.starts_with("snakepit_calls_total{"))
        .filter_map(|l| l.split("function=\"").nth(1))
        .map(|rest| rest.split("\",").next().unwrap_or(rest))
        .collect();
    assert_eq!(functions.len(), cap + 1, "cap values plus `other`");
    assert!(functions.contains("other"));
    let total: f64 = s
        .iter()
        .filter(|(k, _)| k.starts_with("snakepit_calls_total{"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(total, 10_000.0, "no call lost to the cap");
    let other = format!("snakepit_calls_total{{function=\"other\",{LIB},result=\"ok\"}}");
    assert_eq!(s[&other], (10_000 - cap) as f64);
    assert_eq!(
        s["snakepit_agent_label_overflow_total{label=\"function\"}"],
        (10_000 - cap) as f64
    );
    // The whole exposition stays bounded: a call counter and three histograms
    // (21 series each) per admitted value.
    let series = text.lines().filter(|l| !l.starts_with('#')).count();
    assert!(series < 70 * (cap + 1), "{series} series");
    // Wire data with quotes, newlines and backslashes is escaped, not injected.
    assert!(text.contains("tool_0\\\"\\n\\\\"));
}

#[test]
fn custom_buckets_are_used_sorted() {
    let m = Metrics::new(&MetricsConfig {
        buckets: vec![1.0, 0.01, f64::NAN, 0.1],
        ..MetricsConfig::default()
    });
    let mut m = m;
    m.observe(&to_typed(&stop("echo", "ok", 50_000_000)));
    let text = m.encode().expect("encode");
    let buckets: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("snakepit_call_duration_seconds_bucket"))
        .filter_map(|l| l.split("le=\"").nth(1))
        .filter_map(|r| r.split('"').next())
        .collect();
    assert_eq!(buckets, vec!["0.01", "0.1", "1.0", "+Inf"]);
}

#[test]
fn python_samples_count_by_function_and_hot_library() {
    let mut m = Metrics::new(&MetricsConfig::default());
    let profiled = |n: u64, lib: &str| {
        stop("hot_path", "ok", 1_000_000)
            .measure("python_samples", n)
            .meta("hot_frame", "demo_hot.spin")
            .meta("hot_library", lib)
    };
    m.observe(&to_typed(&profiled(20, "demo_hot")));
    m.observe(&to_typed(&profiled(5, "demo_hot")));
    m.observe(&to_typed(&profiled(7, "numpy")));
    // A call without samples adds nothing.
    m.observe(&to_typed(&stop("hot_path", "ok", 1_000_000)));
    let s = render(&m);
    let get = |lib: &str| {
        s.get(&format!(
            "snakepit_python_samples_total{{function=\"hot_path\",hot_library=\"{lib}\"}}"
        ))
        .copied()
    };
    assert_eq!(get("demo_hot"), Some(25.0));
    assert_eq!(get("numpy"), Some(7.0));
}
