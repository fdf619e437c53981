//! The Python stack profiler against real workers: the demo tool `hot_path` spends
//! ~70 % of its CPU in the pure-Python `demo_hot.spin` and ~30 % in `numpy.dot`, by
//! construction (demo/python/demo_hot.py); the agent's profile must say so on every
//! tested CPython, and its outputs must be what they claim (pprof, SVG).
mod common;

use common::{demo_on, http_get, live_page_figure, pprof, start_profile, wait_success};
use serde_json::Value;
use snakepit_testkit::{
    agent::{agent_bin, events_named, read_events},
    demo::{Demo, LoadSpec},
    scratch_dir, workspace_root,
};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// `hot_path` calls back to back for `ms` (each a 200 ms CPU budget).
fn hot_load(demo: &mut Demo, dir: &Path, ms: u64) {
    hot_load_share(demo, dir, ms, 0.7);
}

/// The same with `python_share` of each call's CPU in demo_hot.spin, the rest numpy.
fn hot_load_share(demo: &mut Demo, dir: &Path, ms: u64, python_share: f64) {
    let mut spec = LoadSpec::new(4, ms, &[("hot_path", 1)]);
    spec.concurrency = 1;
    spec.extra
        .push(format!("hot_python_share => {python_share:.2}"));
    demo.load(&spec, &dir.join("truth.jsonl"))
        .expect("hot_path load");
}

/// (total, spin, matmul, matmul with a native numpy frame below it) from folded lines.
fn shares(folded: &str) -> (u64, u64, u64, u64) {
    let (mut total, mut spin, mut mm, mut native) = (0, 0, 0, 0);
    for line in folded.lines() {
        let (stack, n) = line.rsplit_once(' ').expect("folded line: stack count");
        let n: u64 = n.parse().expect("folded count");
        total += n;
        let frames: Vec<&str> = stack.split(';').collect();
        if frames.contains(&"demo_hot.spin") {
            spin += n;
        }
        if let Some(i) = frames.iter().position(|f| *f == "demo_hot.matmul") {
            mm += n;
            // Below numpy.dot (a C function: no Python frame of its own) lie numpy's
            // native frames: OpenBLAS (numpy.libs) or _multiarray_umath.
            if frames[i + 1..]
                .iter()
                .any(|f| f.contains("openblas") || f.contains("_multiarray_umath"))
            {
                native += n;
            }
        }
    }
    (total, spin, mm, native)
}

fn profile_hot_path_on(python: Option<PathBuf>, want_version: &str) {
    let dir = scratch_dir(&format!("profiler-{want_version}"));
    let mut demo = demo_on(&dir, python);
    // `check` reports the worker's interpreter and where its layout came from.
    let check = Command::new(agent_bin())
        .arg("check")
        .output()
        .expect("snakepit-agent check");
    let check = String::from_utf8_lossy(&check.stdout).to_string();
    assert!(
        check
            .lines()
            .any(|l| l.starts_with("python worker")
                && l.contains(&format!("CPython {want_version}"))),
        "check did not report a CPython {want_version} worker:\n{check}"
    );
    assert!(
        check.contains("perf_event:cpu-clock"),
        "check: no sampler\n{check}"
    );
    let out = dir.join("hot.folded");
    let out_s = out.to_string_lossy().to_string();
    let child = start_profile(
        &dir,
        &[
            "--duration",
            "14",
            "--function",
            "hot_path",
            "--format",
            "folded",
            "--output",
            &out_s,
        ],
    );
    std::thread::sleep(Duration::from_millis(1000));
    hot_load(&mut demo, &dir, 9000);
    wait_success(child, &dir);
    demo.stop().expect("demo stop");

    let log = std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default();
    assert!(
        log.contains(&format!("CPython {want_version}")),
        "the agent did not report profiling a CPython {want_version} worker; log:\n{log}"
    );
    let folded = std::fs::read_to_string(&out).expect("folded output");
    let (total, spin, mm, native) = shares(&folded);
    eprintln!("CPython {want_version}: {total} samples, spin {spin}, matmul {mm} ({native} with numpy native frames)");
    assert!(
        total >= 200,
        "only {total} samples of hot_path calls (want >= 200)"
    );
    let spin_share = spin as f64 / total as f64;
    let mm_share = mm as f64 / total as f64;
    assert!(
        (0.6..=0.8).contains(&spin_share),
        "demo_hot.spin has {:.1} % of the samples, want 70 +- 10 %\n{folded}",
        spin_share * 100.0
    );
    assert!(
        (0.2..=0.4).contains(&mm_share),
        "numpy.dot (under demo_hot.matmul) has {:.1} % of the samples, want 30 +- 10 %\n{folded}",
        mm_share * 100.0
    );
    assert!(
        native as f64 >= 0.8 * mm as f64,
        "only {native} of {mm} numpy samples show numpy's native frames below numpy.dot\n{folded}"
    );

    // Each hot_path call: its samples, its hot frame and library.
    let events = read_events(&dir.join("events.jsonl"));
    let stops: Vec<&Value> = events_named(&events, &["snakepit", "call", "stop"])
        .into_iter()
        .filter(|e| e["metadata"]["tool"] == "hot_path" || e["metadata"]["function"] == "hot_path")
        .collect();
    assert!(
        stops.len() >= 10,
        "only {} hot_path call.stop events",
        stops.len()
    );
    let sampled: Vec<&&Value> = stops
        .iter()
        .filter(|e| e["measurements"]["python_samples"].as_u64().unwrap_or(0) >= 5)
        .collect();
    assert!(
        sampled.len() * 10 >= stops.len() * 9,
        "only {} of {} hot_path calls carry >= 5 python_samples (200 ms of CPU at 99 Hz is ~20)",
        sampled.len(),
        stops.len()
    );
    // ~20 samples a call: a preempted call's few can tip either way, most cannot.
    let right = sampled
        .iter()
        .filter(|e| {
            e["metadata"]["hot_library"] == "demo_hot"
                && e["metadata"]["hot_frame"] == "demo_hot.spin"
        })
        .count();
    assert!(
        right * 10 >= sampled.len() * 8,
        "only {right} of {} sampled hot_path calls have hot_library demo_hot and hot_frame \
         demo_hot.spin; first: {}",
        sampled.len(),
        sampled[0]
    );
    let per_call: u64 = stops
        .iter()
        .filter_map(|e| e["measurements"]["python_samples"].as_u64())
        .sum();
    assert!(
        per_call >= total * 9 / 10,
        "the calls' python_samples add up to {per_call}, the function's profile has {total}"
    );
}

fn venv_python(minor: u32) -> PathBuf {
    let p = workspace_root().join(format!(".venv-py3.{minor}/bin/python"));
    assert!(
        p.exists(),
        "{} is missing (a CPython 3.{minor} venv with the worker's packages): run `cargo xtask setup` \
         (it needs pyenv's 3.{minor} in ~/.pyenv/versions)",
        p.display()
    );
    p
}

#[test]
fn hot_path_profile_on_cpython_3_10() {
    profile_hot_path_on(Some(venv_python(10)), "3.10");
}

#[test]
fn hot_path_profile_on_cpython_3_11() {
    profile_hot_path_on(Some(venv_python(11)), "3.11");
}

#[test]
fn hot_path_profile_on_cpython_3_12() {
    profile_hot_path_on(Some(venv_python(12)), "3.12");
}

#[test]
fn hot_path_profile_on_cpython_3_13() {
    profile_hot_path_on(Some(venv_python(13)), "3.13");
}

/// "N samples written to FILE" from the agent's log.
fn samples_written(dir: &Path) -> u64 {
    let log = std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default();
    log.lines()
        .find_map(|l| {
            l.split_once(" samples written to ")
                .and_then(|(n, _)| n.trim().parse().ok())
        })
        .unwrap_or_else(|| panic!("no sample count in the log:\n{log}"))
}

#[test]
fn pprof_and_svg_outputs_are_valid() {
    use prost::Message;
    use std::io::Read;
    let root = scratch_dir("profiler-outputs");
    let mut demo = demo_on(&root, None);
    for format in ["pprof", "svg"] {
        let dir = root.join(format);
        std::fs::create_dir_all(&dir).expect("dir");
        let out = dir.join(format!("hot.{format}"));
        let out_s = out.to_string_lossy().to_string();
        let child = start_profile(
            &dir,
            &[
                "--duration",
                "7",
                "--function",
                "hot_path",
                "--format",
                format,
                "--output",
                &out_s,
            ],
        );
        std::thread::sleep(Duration::from_millis(500));
        hot_load(&mut demo, &dir, 4000);
        wait_success(child, &dir);
        let n = samples_written(&dir);
        assert!(n > 0);
        let bytes = std::fs::read(&out).expect("profile output");
        if format == "pprof" {
            let mut raw = Vec::new();
            flate2::read::GzDecoder::new(&bytes[..])
                .read_to_end(&mut raw)
                .expect("pprof output is gzip");
            let p = pprof::Profile::decode(&raw[..]).expect("pprof output decodes as a Profile");
            let st = &p.string_table;
            assert_eq!(
                st.first().map(String::as_str),
                Some(""),
                "string_table[0] must be empty"
            );
            assert_eq!(st[p.sample_type[0].r#type as usize], "samples");
            let total: i64 = p.sample.iter().map(|s| s.value[0]).sum();
            assert_eq!(
                total as u64, n,
                "pprof sample total vs the samples the agent took"
            );
            let name_of = |loc: u64| {
                let l = &p.location[p
                    .location
                    .iter()
                    .position(|l| l.id == loc)
                    .expect("location")];
                let f = p
                    .function
                    .iter()
                    .find(|f| f.id == l.line[0].function_id)
                    .expect("function");
                st[f.name as usize].clone()
            };
            let spin: i64 = p
                .sample
                .iter()
                .filter(|s| s.location_id.iter().any(|l| name_of(*l) == "demo_hot.spin"))
                .map(|s| s.value[0])
                .sum();
            assert!(
                spin * 2 > total,
                "demo_hot.spin in {spin} of {total} pprof samples (want most)"
            );
        } else {
            let svg = String::from_utf8(bytes).expect("svg is UTF-8");
            assert!(svg.trim_start().starts_with("<?xml"), "not an XML document");
            assert!(
                svg.contains("<svg") && svg.trim_end().ends_with("</svg>"),
                "not an SVG"
            );
            assert!(
                svg.contains("demo_hot.spin"),
                "the flame graph lacks demo_hot.spin"
            );
            assert_eq!(
                svg.matches("<g").count(),
                svg.matches("</g>").count(),
                "unbalanced <g> elements"
            );
        }
    }
    demo.stop().expect("demo stop");
}

#[test]
fn http_endpoint_serves_pprof_and_flame_graphs() {
    use prost::Message;
    use std::io::Read;
    let dir = scratch_dir("profiler-http");
    let addr = snakepit_testkit::free_loopback_addr();
    let agent = snakepit_testkit::agent::Agent::start(&dir, &["--http-listen", &addr])
        .expect("agent start");
    let mut demo = demo_on(&dir, None);
    std::thread::sleep(Duration::from_millis(800));
    // The worker's first hot_path call imports numpy. With the machine's disk busy
    // (CI, the page cache cold) its page faults have held that call for up to 3.9 s,
    // with and without this agent; the profile below is of the calls after it.
    let mut warm_up = LoadSpec::new(4, 300, &[("hot_path", 1)]);
    warm_up.concurrency = 1;
    demo.load(&warm_up, &dir.join("warm-up.jsonl"))
        .expect("hot_path warm-up");
    let a = addr.clone();
    let fetch = std::thread::spawn(move || {
        http_get(&a, "/debug/pprof/profile?seconds=5&function=hot_path")
    });
    hot_load(&mut demo, &dir, 7000);
    let (status, body) = fetch.join().expect("fetch thread");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(&body[..])
        .read_to_end(&mut raw)
        .expect("gzip");
    let p = pprof::Profile::decode(&raw[..]).expect("pprof");
    let total: i64 = p.sample.iter().map(|s| s.value[0]).sum();
    // 5 s of a busy worker at 99 Hz.
    assert!(
        total >= 250,
        "only {total} samples in a 5 s profile of hot_path"
    );
    assert!(p.string_table.iter().any(|s| s == "demo_hot.spin"));

    let (status, body) = http_get(&addr, "/debug/pprof/functions");
    assert_eq!(status, 200);
    let fns: Value = serde_json::from_slice(&body).expect("functions JSON");
    assert!(
        fns.as_array()
            .is_some_and(|a| a.iter().any(|f| f["function"] == "hot_path")),
        "{fns}"
    );
    let (status, body) = http_get(
        &addr,
        "/debug/pprof/flamegraph.svg?seconds=60&function=hot_path",
    );
    assert_eq!(status, 200);
    let svg = String::from_utf8_lossy(&body);
    assert!(svg.contains("<svg") && svg.contains("demo_hot.spin"));

    // The live page draws it: headless Chromium's DOM, the page held 3 s (see /hold).
    let (fig, dom) = live_page_figure(&dir, &addr, "hot_path");
    assert!(
        fig.contains("/debug/pprof/flamegraph.svg?seconds=60&amp;function=hot_path")
            || fig.contains("/debug/pprof/flamegraph.svg?seconds=60&function=hot_path"),
        "the hot_path figure does not show its flame graph: {fig}"
    );
    assert!(
        !dom.contains("id=\"flames-note\""),
        "the page still says it has no samples"
    );
    demo.stop().expect("demo stop");
    agent.stop().expect("agent stop");
}

/// Calls whose CPU is mostly numpy.dot (20 % Python): their hot library is numpy and
/// their hot frame the Python function that called numpy.dot.
#[test]
fn numpy_heavy_calls_name_numpy_as_their_hot_library() {
    let dir = scratch_dir("profiler-numpy-heavy");
    let agent = snakepit_testkit::agent::Agent::start(&dir, &[]).expect("agent start");
    let mut demo = demo_on(&dir, None);
    std::thread::sleep(Duration::from_millis(800));
    hot_load_share(&mut demo, &dir, 5000, 0.2);
    demo.stop().expect("demo stop");
    std::thread::sleep(Duration::from_millis(500));
    let events = agent.stop().expect("agent stop");
    let sampled: Vec<&Value> = events_named(&events, &["snakepit", "call", "stop"])
        .into_iter()
        .filter(|e| e["metadata"]["tool"] == "hot_path")
        .filter(|e| e["measurements"]["python_samples"].as_u64().unwrap_or(0) >= 5)
        .collect();
    assert!(
        sampled.len() >= 10,
        "only {} sampled hot_path calls",
        sampled.len()
    );
    let numpy = sampled
        .iter()
        .filter(|e| {
            e["metadata"]["hot_library"] == "numpy"
                && e["metadata"]["hot_frame"] == "demo_hot.matmul"
        })
        .count();
    assert!(
        numpy * 10 >= sampled.len() * 8,
        "only {numpy} of {} numpy-heavy calls have hot_library numpy and hot_frame \
         demo_hot.matmul; first: {}",
        sampled.len(),
        sampled[0]
    );
}
