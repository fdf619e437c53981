//! Helpers of the profiler's end-to-end tests (tests/tests/profiler.rs, offcpu.rs):
//! `snakepit-agent profile` runs, the demo on a given interpreter, a pprof decoder.
#![allow(dead_code)]
use snakepit_testkit::{
    agent::{agent_bin, read_events},
    demo::{Demo, DemoOptions},
    require,
};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `snakepit-agent profile ARGS --events <dir>/events.jsonl`, once it has started.
pub fn start_profile(dir: &Path, args: &[&str]) -> Child {
    require::root_and_bpf();
    let bin = agent_bin();
    assert!(
        bin.exists(),
        "agent binary {} is missing: run `cargo build --release -p telemetry-user`",
        bin.display()
    );
    let events = dir.join("events.jsonl");
    let log = std::fs::File::create(dir.join("agent.log")).expect("agent log");
    let mut child = Command::new(&bin)
        .arg("profile")
        .args(args)
        .arg("--events")
        .arg(&events)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("starting snakepit-agent profile");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !read_events(&events)
        .iter()
        .any(|e| snakepit_testkit::agent::is_event(e, &["snakepit", "agent", "started"]))
    {
        if let Ok(Some(st)) = child.try_wait() {
            panic!(
                "profile exited ({st}) before starting; see {}/agent.log",
                dir.display()
            );
        }
        assert!(
            Instant::now() < deadline,
            "profile did not start within 60 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

pub fn wait_success(mut child: Child, dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Some(st) = child.try_wait().expect("wait") {
            assert!(
                st.success(),
                "profile failed ({st}); see {}/agent.log",
                dir.display()
            );
            return;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("profile did not finish in time");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn demo_on(dir: &Path, python: Option<PathBuf>) -> Demo {
    let mut demo = Demo::start(&DemoOptions {
        grpc_workers: 1,
        pipe_workers: 0,
        log: Some(dir.join("beam.log")),
        python,
        ..DemoOptions::default()
    })
    .expect("demo start");
    demo.wait_ready(Duration::from_secs(60))
        .expect("demo ready");
    demo
}

/// GET over plain HTTP/1.1; (status, body).
pub fn http_get(addr: &str, path: &str) -> (u16, Vec<u8>) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the agent's HTTP endpoint");
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("response");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("HTTP header end");
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status code");
    (status, raw[split + 4..].to_vec())
}

/// Only the fields read here of perftools.profiles.Profile (field numbers from
/// google/pprof proto/profile.proto), decoded independently of the agent's encoder.
/// The live page's flame-graph `<figure>` of `function`, and the whole DOM, as headless
/// Chromium renders it (the page held 3 s, see /hold).
pub fn live_page_figure(dir: &Path, addr: &str, function: &str) -> (String, String) {
    let dom = snakepit_testkit::browser::chromium(
        dir,
        "flames",
        &["--dump-dom".into()],
        &format!("http://{addr}/?hold=3000"),
    );
    let fig = dom
        .split(&format!("<figure data-function=\"{function}\""))
        .nth(1)
        .unwrap_or_else(|| panic!("no flame graph figure for {function} on the live page:\n{dom}"));
    let fig = fig
        .split("</figure>")
        .next()
        .unwrap_or_default()
        .to_string();
    (fig, dom)
}

pub mod pprof {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Profile {
        #[prost(message, repeated, tag = "1")]
        pub sample_type: Vec<ValueType>,
        #[prost(message, repeated, tag = "2")]
        pub sample: Vec<Sample>,
        #[prost(message, repeated, tag = "4")]
        pub location: Vec<Location>,
        #[prost(message, repeated, tag = "5")]
        pub function: Vec<Function>,
        #[prost(string, repeated, tag = "6")]
        pub string_table: Vec<String>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ValueType {
        #[prost(int64, tag = "1")]
        pub r#type: i64,
        #[prost(int64, tag = "2")]
        pub unit: i64,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Sample {
        #[prost(uint64, repeated, tag = "1")]
        pub location_id: Vec<u64>,
        #[prost(int64, repeated, tag = "2")]
        pub value: Vec<i64>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Location {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(message, repeated, tag = "4")]
        pub line: Vec<Line>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Line {
        #[prost(uint64, tag = "1")]
        pub function_id: u64,
        #[prost(int64, tag = "2")]
        pub line: i64,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Function {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(int64, tag = "2")]
        pub name: i64,
        #[prost(int64, tag = "4")]
        pub filename: i64,
    }
}
