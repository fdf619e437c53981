//! End-to-end: headless Chromium (Debian's package) loads the agent's live page during
//! a demo load. The tables fill and update, the pool and GPU cards are there, and a
//! screenshot is taken; all checked on the DOM Chromium dumps, not by eye.
use snakepit_testkit::agent::Agent;
use snakepit_testkit::browser::chromium;
use snakepit_testkit::demo::{Demo, DemoOptions, LoadSpec};
use snakepit_testkit::{require, scratch_dir};
use std::net::TcpListener;
use std::time::Duration;

fn attr(dom: &str, name: &str) -> Option<u64> {
    let rest = dom.split(&format!("{name}=\"")).nth(1)?;
    rest.split('"').next()?.parse().ok()
}

/// Rows of a table's body (`<tr` inside `<table id=...>`).
fn rows(dom: &str, table: &str) -> Vec<String> {
    let Some(t) = dom.split(&format!("<table id=\"{table}\">")).nth(1) else {
        return Vec::new();
    };
    let t = t.split("</table>").next().unwrap_or_default();
    let body = t.split("<tbody>").nth(1).unwrap_or_default();
    body.split("<tr")
        .skip(1)
        .map(|r| r.split("</tr>").next().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn live_page_fills_and_updates_during_a_load() {
    require::root_and_bpf();
    require::demo_built();
    let dir = scratch_dir("live-page");
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let listen = format!("127.0.0.1:{port}");
    let agent = Agent::start(
        &dir,
        &["--http-listen", &listen, "--summary-interval-ms", "1000"],
    )
    .expect("agent start (with --http-listen)");
    let (mut demo, _) = Demo::start_ready_with(&DemoOptions {
        log: Some(dir.join("beam.log")),
        ..DemoOptions::default()
    })
    .expect("demo start");
    std::thread::sleep(Duration::from_millis(500));

    let gt = dir.join("ground_truth.jsonl");
    let load = std::thread::spawn(move || {
        let mut spec = LoadSpec::new(30, 12_000, &[("echo", 3), ("fail", 1), ("sleep", 1)]);
        spec.pools = vec!["default".into(), "legacy".into()];
        let r = demo.load(&spec, &gt);
        (demo, r)
    });
    std::thread::sleep(Duration::from_secs(2));
    let url = format!("http://{listen}/?hold=3000");
    // The page stays loading 3 s (see /hold): enough live updates reach it by then.
    let first = chromium(&dir, "p1", &["--dump-dom".into()], &url);
    let second = chromium(&dir, "p2", &["--dump-dom".into()], &url);
    let shot = dir.join("live.png");
    chromium(
        &dir,
        "p3",
        &[format!("--screenshot={}", shot.display())],
        &url,
    );
    let (demo, r) = load.join().expect("load thread");
    r.expect("load");

    for dom in [&first, &second] {
        assert!(dom.contains("id=\"pools\""), "no pool section: {dom}");
        assert!(
            dom.contains("class=\"card pool-card\" data-pool=\"default\""),
            "no card for pool default"
        );
        assert!(
            dom.contains("data-pool=\"legacy\""),
            "no card for pool legacy"
        );
        assert!(
            dom.contains("class=\"workers\">2<"),
            "default pool shows 2 workers"
        );
        // No GPU on this machine: the card says so (GPU data adds device cards).
        assert!(
            dom.contains("no GPU (NVML unavailable)") || dom.contains("data-device="),
            "no GPU card"
        );
        let updates = attr(dom, "data-updates").unwrap_or(0);
        assert!(updates >= 2, "the page got {updates} live updates in 3 s");
        assert!(dom.contains("id=\"conn\">live<"), "event stream not live");
        let calls = rows(dom, "calls");
        assert!(calls.len() >= 10, "recent calls: {} rows", calls.len());
        assert!(calls.iter().any(|r| r.contains(">echo<")), "no echo call");
        assert!(
            calls.iter().any(|r| r.contains("class=\"error\"")),
            "no failed call"
        );
        // The worker split: a stacked bar on gRPC calls, and the per-function table.
        assert!(
            calls
                .iter()
                .any(|r| r.contains("class=\"splitbar\"") && r.contains("class=\"seg ")),
            "no call with a worker-split bar"
        );
        let functions = rows(dom, "functions");
        assert!(
            functions
                .iter()
                .any(|r| r.contains(">echo<") && r.contains("class=\"splitbar\"")),
            "no echo row with a mean split in the functions table"
        );
        let errors = rows(dom, "errors");
        assert!(!errors.is_empty(), "recent errors empty");
        assert!(
            errors.iter().any(|r| r.contains(">ValueError<")),
            "no ValueError row"
        );
    }
    // Tables update: the later load shows newer state.
    let (v1, v2) = (attr(&first, "data-version"), attr(&second, "data-version"));
    assert!(
        v2 > v1,
        "state did not move between loads: {v1:?} -> {v2:?}"
    );
    assert_ne!(rows(&first, "calls")[0], rows(&second, "calls")[0]);

    let png = std::fs::read(&shot).expect("screenshot written");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "screenshot"
    );

    demo.stop().expect("demo stop");
    agent.stop().expect("agent stop");
}
