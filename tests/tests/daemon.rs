//! End-to-end: the daemon as users get it. The .deb (`cargo xtask package`) installs
//! on this Debian, its unit verifies, and the installed agent, as its own system user
//! with only the unit's capabilities and the packaged config, reports the demo's
//! calls, serves /metrics on loopback and applies a SIGHUP reload without dropping
//! its probes. And `cargo xtask demo` with no flags serves the page on
//! 127.0.0.1:9464 with ML events within its first minute.
use serde_json::Value;
use snakepit_testkit::agent::{events_named, Agent};
use snakepit_testkit::demo::{Demo, GroundTruthCall, LoadSpec};
use snakepit_testkit::http::http_get;
use snakepit_testkit::otlp_receiver::{OtlpReceiver, KIND_SERVER};
use snakepit_testkit::privileges::{cap_mask, caps_and_uid, setpriv_prefix, unit_caps};
use snakepit_testkit::{require, scratch_dir, workspace_root};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const UNIT: &str = "/lib/systemd/system/snakepit-agent.service";
const CONFIG: &str = "/etc/snakepit-agent/config.toml";
const STATE: &str = "/var/lib/snakepit-agent";
const ENDPOINT: &str = "127.0.0.1:9464";

/// Purges the package when the test ends, passed or not.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = Command::new("dpkg")
            .args(["--purge", "snakepit-agent"])
            .stdout(Stdio::null())
            .status();
    }
}

fn build_package() -> PathBuf {
    let out = Command::new("cargo")
        .current_dir(workspace_root())
        .args(["xtask", "package"])
        .stderr(Stdio::inherit())
        .output()
        .expect("running cargo xtask package");
    assert!(out.status.success(), "cargo xtask package failed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let deb = PathBuf::from(stdout.lines().last().unwrap_or_default().trim());
    assert!(
        deb.extension().is_some_and(|e| e == "deb") && deb.exists(),
        "no .deb from cargo xtask package: {stdout}"
    );
    deb
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed: {text}");
    text
}

fn uid_of(user: &str) -> Option<u32> {
    let out = Command::new("id").args(["-u", user]).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().parse().ok())
        .flatten()
}

/// Correlation ids of the calls reported as ended.
fn ended(events: &[Value]) -> HashSet<String> {
    events_named(events, &["snakepit", "call", "stop"])
        .into_iter()
        .chain(events_named(events, &["snakepit", "call", "exception"]))
        .filter_map(|e| e["metadata"]["correlation_id"].as_str().map(String::from))
        .collect()
}

fn ml_rule_ids(events: &[Value]) -> HashSet<String> {
    events_named(events, &["snakepit", "ml", "inference"])
        .into_iter()
        .filter(|e| e["metadata"]["source"] == "rule")
        .filter_map(|e| e["metadata"]["correlation_id"].as_str().map(String::from))
        .collect()
}

const ML_RULE: &str = r#"
[[calls.ml_rules]]
kind = "inference"
tool = "ml_infer"
model = "params.model"
batch_size = "params.batch_size"
tokens = "result.tokens"
"#;

#[test]
fn the_deb_installs_and_its_agent_reports_calls_as_its_own_user_and_reloads_on_sighup() {
    require::root_and_bpf();
    for tool in ["dpkg", "setpriv", "systemd-analyze", "adduser"] {
        assert!(
            Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success()),
            "{tool} is missing: run `cargo xtask setup`"
        );
    }
    let deb = build_package();
    let _purge = Installed;
    run_ok(Command::new("dpkg").arg("-i").arg(&deb));

    // What postinst made, and the unit as installed.
    let uid = uid_of("snakepit-agent").expect("postinst made no snakepit-agent user");
    let repro = std::fs::metadata(Path::new(STATE).join("repro")).expect("repro directory");
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&repro), uid);
    let verify = run_ok(Command::new("systemd-analyze").args(["verify", UNIT]));
    assert!(
        !verify.contains("snakepit-agent"),
        "verify warnings: {verify}"
    );
    let unit = std::fs::read_to_string(UNIT).expect("installed unit");
    let caps = unit_caps(&unit);

    // The installed agent as the unit runs it: its user, its capabilities, its
    // config (/metrics on loopback).
    let mut command = setpriv_prefix("snakepit-agent", "snakepit-agent", &caps);
    command.push("/usr/bin/snakepit-agent".into());
    let config_arg = ["--config", CONFIG];
    // Its events and log go to the scratch directory (kept after the purge).
    let dir = scratch_dir("daemon-deb");
    snakepit_testkit::privileges::open_up(&dir);
    let mut agent = Agent::start_command(&dir, &command, &config_arg).expect("installed agent");
    assert_eq!(caps_and_uid(agent.pid()), (cap_mask(&caps), uid));

    let (mut demo, _) = Demo::start_ready(&dir, 2, 0).expect("demo start");
    std::thread::sleep(Duration::from_millis(500));
    let spec = LoadSpec::new(40, 1_500, &[("echo", 2), ("ml_infer", 2)]);
    let before: Vec<GroundTruthCall> = demo
        .load_truth(&spec, &dir.join("before.jsonl"))
        .expect("first load");
    let (status, metrics) = http_get(ENDPOINT, "/metrics").expect("GET /metrics");
    assert_eq!(status, 200);
    assert!(
        metrics.contains("snakepit_"),
        "no snakepit metric: {metrics}"
    );

    // Every earlier call handled before the reload (the agent runs a little behind).
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let seen = ended(&agent.events());
        if before.iter().all(|g| seen.contains(&g.correlation_id)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the first load's calls not all reported"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // SIGHUP with an ML rule added and OTLP turned on in the packaged config: both
    // apply to the next calls, and the probes (so every call) are kept.
    let receiver = OtlpReceiver::start().expect("OTLP receiver");
    let mut config = std::fs::read_to_string(CONFIG).expect("packaged config");
    config = config.replace("ml_rules = []", "");
    for (packaged, reloaded) in [
        (
            "[otlp]\nenabled = false",
            "[otlp]\nenabled = true".to_string(),
        ),
        (
            "export_interval_ms = 5000",
            "export_interval_ms = 500".to_string(),
        ),
        (
            "endpoint = \"http://127.0.0.1:4317\"",
            format!("endpoint = \"{}\"", receiver.endpoint()),
        ),
    ] {
        assert!(
            config.contains(packaged),
            "the packaged config lacks {packaged:?}"
        );
        config = config.replace(packaged, &reloaded);
    }
    std::fs::write(CONFIG, format!("{config}{ML_RULE}")).expect("writing the config");
    // SAFETY: kill(2) on the agent's pid (our child).
    unsafe { libc::kill(agent.pid() as i32, libc::SIGHUP) };
    agent
        .wait_for(Duration::from_secs(10), |e| {
            e["event"] == serde_json::json!(["snakepit", "agent", "reloaded"])
        })
        .expect("reloaded event");
    let after: Vec<GroundTruthCall> = demo
        .load_truth(&spec, &dir.join("after.jsonl"))
        .expect("second load");
    demo.stop().expect("demo stop");
    std::thread::sleep(Duration::from_millis(1_000));
    let events = agent.stop().expect("agent stop");

    let ends = ended(&events);
    let lost: Vec<&str> = before
        .iter()
        .chain(&after)
        .map(|g| g.correlation_id.as_str())
        .filter(|c| !ends.contains(*c))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} calls not reported by the installed agent",
        lost.len(),
        before.len() + after.len()
    );
    let ml = ml_rule_ids(&events);
    let infer = |calls: &[GroundTruthCall]| -> HashSet<String> {
        calls
            .iter()
            .filter(|g| g.tool == "ml_infer")
            .map(|g| g.correlation_id.clone())
            .collect()
    };
    assert!(
        infer(&before).is_disjoint(&ml),
        "an ML event before the rule was loaded"
    );
    assert!(!infer(&after).is_empty());
    assert_eq!(
        infer(&after),
        ml,
        "the reloaded rule covers exactly the later calls"
    );
    // OTLP, started by the reload: one server span per later call, none before.
    let exported: Vec<String> = receiver
        .spans()
        .iter()
        .filter(|sp| sp.kind == KIND_SERVER)
        .filter_map(|sp| {
            sp.attributes
                .get("snakepit.correlation_id")?
                .as_str()
                .map(String::from)
        })
        .collect();
    let after_ids: HashSet<String> = after.iter().map(|g| g.correlation_id.clone()).collect();
    let exported_set: HashSet<String> = exported.iter().cloned().collect();
    assert_eq!(exported.len(), exported_set.len(), "a span exported twice");
    assert_eq!(
        exported_set, after_ids,
        "OTLP spans are exactly the calls after the reload"
    );

    drop(_purge);
    assert!(uid_of("snakepit-agent").is_none(), "purge left the user");
    assert!(!Path::new(STATE).exists(), "purge left {STATE}");
}

/// `cargo xtask demo` in its own process group, stopped with SIGINT on drop.
struct XtaskDemo(std::process::Child);

impl Drop for XtaskDemo {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the process group this test made.
        unsafe { libc::kill(-(self.0.id() as i32), libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // SAFETY: as above.
        unsafe { libc::kill(-(self.0.id() as i32), libc::SIGKILL) };
        let _ = self.0.wait();
    }
}

/// The count of a metric family's samples summed over its label sets.
fn sum_of(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn xtask_demo_with_no_flags_serves_the_page_and_shows_ml_events_in_its_first_minute() {
    require::root_and_bpf();
    require::demo_built();
    let dir = scratch_dir("daemon-xtask-demo");
    let stderr = std::fs::File::create(dir.join("xtask-demo.err")).expect("log");
    let stdout = std::fs::File::create(dir.join("xtask-demo.out")).expect("log");
    use std::os::unix::process::CommandExt;
    let child = Command::new("cargo")
        .current_dir(workspace_root())
        .args(["xtask", "demo"])
        .stdout(stdout)
        .stderr(stderr)
        .process_group(0)
        .spawn()
        .expect("cargo xtask demo");
    let demo = XtaskDemo(child);

    // Set-up and the release build are done by then (cargo xtask test ran them).
    let deadline = Instant::now() + Duration::from_secs(180);
    let answered = loop {
        if let Ok((200, page)) = http_get(ENDPOINT, "/") {
            break page;
        }
        assert!(
            Instant::now() < deadline,
            "nothing answered on {ENDPOINT}; see {}",
            dir.display()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(answered.contains("<html"), "the live page: {answered:.200}");
    let first_minute = Instant::now() + Duration::from_secs(60);
    let ml = loop {
        let (_, metrics) = http_get(ENDPOINT, "/metrics").expect("GET /metrics");
        let n = sum_of(&metrics, "snakepit_ml_inference_duration_seconds_count");
        if n > 0.0 {
            break n;
        }
        assert!(
            Instant::now() < first_minute,
            "no ML inference in the demo's first minute"
        );
        std::thread::sleep(Duration::from_secs(1));
    };
    drop(demo);
    let err = std::fs::read_to_string(dir.join("xtask-demo.err")).unwrap_or_default();
    assert!(
        err.contains("live page http://127.0.0.1:9464/"),
        "the URL is not printed: {err}"
    );
    let out = std::fs::read_to_string(dir.join("xtask-demo.out")).unwrap_or_default();
    assert!(
        out.contains("snakepit.ml.inference"),
        "ML events ({ml} in /metrics) not in the event stream"
    );
}

/// `snakepit-agent run ARGS` as root; (exit success, stderr, seconds taken).
fn run_agent(args: &[&str]) -> (bool, String, f64) {
    let started = Instant::now();
    let out = Command::new(snakepit_testkit::agent::agent_bin())
        .arg("run")
        .args(args)
        .stdout(Stdio::null())
        .output()
        .expect("running the agent");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        started.elapsed().as_secs_f64(),
    )
}

#[test]
fn bad_config_values_are_refused_at_start_naming_the_key() {
    require::root_and_bpf();
    let dir = scratch_dir("daemon-bad-config");
    for (toml, key) in [
        ("[calls]\nsample_rate = -1.0\n", "calls.sample_rate"),
        ("[calls]\nsample_rate = nan\n", "calls.sample_rate"),
        ("[otlp]\nendpoint = \"not a url\"\n", "otlp.endpoint"),
    ] {
        let path = dir.join("bad.toml");
        std::fs::write(&path, toml).expect("config");
        let (ok, err, secs) =
            run_agent(&["--config", path.to_str().expect("utf-8"), "--duration", "1"]);
        assert!(!ok, "{toml:?} accepted");
        assert!(err.contains(key), "{toml:?}: {err}");
        assert!(secs < 5.0, "{toml:?} refused only after {secs:.1} s");
    }
    // A TOML syntax error: its cause printed once.
    let path = dir.join("syntax.toml");
    std::fs::write(&path, "[calls\n").expect("config");
    let (ok, err, _) = run_agent(&["--config", path.to_str().expect("utf-8")]);
    assert!(!ok);
    assert_eq!(err.matches("invalid table header").count(), 1, "{err}");
}

#[test]
fn a_bad_output_path_or_a_taken_port_fails_before_the_probes_load() {
    require::root_and_bpf();
    let (ok, err, secs) = run_agent(&[
        "--output",
        "/nonexistent-dir/events.jsonl",
        "--duration",
        "1",
    ]);
    assert!(!ok, "a bad --output was accepted");
    assert!(err.contains("/nonexistent-dir/events.jsonl"), "{err}");
    assert!(
        secs < 3.0,
        "the bad path failed only after {secs:.1} s (probe loading)"
    );
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");

    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
    let addr = taken.local_addr().expect("addr").to_string();
    let (ok, err, secs) = run_agent(&[
        "--http-listen",
        &addr,
        "--output",
        "/dev/null",
        "--duration",
        "1",
    ]);
    assert!(!ok, "a taken port was accepted");
    assert!(err.contains(&addr), "{err}");
    assert!(
        secs < 3.0,
        "the taken port failed only after {secs:.1} s (probe loading)"
    );
    assert_eq!(err.matches("Address already in use").count(), 1, "{err}");
}

#[test]
fn log_format_json_writes_one_json_object_per_stderr_line() {
    require::root_and_bpf();
    let (ok, err, _) = run_agent(&[
        "--log-format",
        "json",
        "--duration",
        "1",
        "--output",
        "/dev/null",
    ]);
    assert!(ok, "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(
        lines.iter().any(|l| l.contains("\"started\"")),
        "no start line: {err}"
    );
    for line in lines {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v["level"].is_string() && v["fields"].is_object(), "{line}");
    }
}
