//! End-to-end: a real Prometheus (Debian's package, started here with a scratch config)
//! scrapes the agent's /metrics during a demo load; PromQL over what it stored must
//! match the demo's ground truth, and every query of the Grafana dashboard
//! (docs/grafana/snakepit.json) must be valid and return data.
use anyhow::{bail, Context, Result};
use serde_json::Value;
use snakepit_testkit::agent::Agent;
use snakepit_testkit::demo::{Demo, DemoOptions, LoadSpec};
use snakepit_testkit::http::http_get;
use snakepit_testkit::{require, scratch_dir, workspace_root};
use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const PROMETHEUS: &str = "/usr/bin/prometheus";

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("binding a free port");
    l.local_addr().expect("local addr").port()
}

fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

struct Prometheus {
    child: Child,
    addr: String,
}

impl Prometheus {
    fn start(dir: &Path, target: &str) -> Result<Prometheus> {
        assert!(
            Path::new(PROMETHEUS).exists(),
            "{PROMETHEUS} is missing: install Debian's `prometheus` package (cargo xtask setup)"
        );
        let addr = format!("127.0.0.1:{}", free_port());
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: snakepit-agent\n    scrape_interval: 1s\n    scrape_timeout: 1s\n    static_configs:\n      - targets: [\"{target}\"]\n"
            ),
        )?;
        let log = std::fs::File::create(dir.join("prometheus.log"))?;
        let child = Command::new(PROMETHEUS)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting prometheus")?;
        let p = Prometheus { child, addr };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok((200, _)) = http_get(&p.addr, "/-/ready") {
                return Ok(p);
            }
            if Instant::now() > deadline {
                bail!("prometheus not ready in 60 s; see prometheus.log");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn api(&self, path: &str) -> Result<Value> {
        let (status, body) = http_get(&self.addr, path)?;
        let v: Value =
            serde_json::from_str(&body).with_context(|| format!("{path}: {status} {body}"))?;
        if v["status"] != "success" {
            bail!("{path}: {body}");
        }
        Ok(v["data"].clone())
    }

    /// Instant query: `labels -> value` (labels as `k=v,...`).
    fn query(&self, q: &str) -> Result<BTreeMap<String, f64>> {
        let data = self.api(&format!("/api/v1/query?query={}", encode(q)))?;
        let mut out = BTreeMap::new();
        for r in data["result"].as_array().into_iter().flatten() {
            let labels = r["metric"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default();
            let v = r["value"][1]
                .as_str()
                .and_then(|s| s.parse().ok())
                .unwrap_or(f64::NAN);
            out.insert(labels, v);
        }
        Ok(out)
    }

    fn scalar(&self, q: &str) -> Result<Option<f64>> {
        Ok(self.query(q)?.values().next().copied())
    }

    /// Polls an instant query until `pred` holds.
    fn wait(&self, q: &str, pred: impl Fn(Option<f64>) -> bool) -> Result<Option<f64>> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let v = self.scalar(q)?;
            if pred(v) {
                return Ok(v);
            }
            if Instant::now() > deadline {
                bail!("`{q}` is {v:?} after 60 s");
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[test]
fn prometheus_scrapes_the_ground_truth_and_every_dashboard_query_has_data() {
    require::root_and_bpf();
    require::demo_built();
    let dir = scratch_dir("prometheus");
    let listen = format!("127.0.0.1:{}", free_port());
    // --program-stats: the dashboard's eBPF time panel reads the programs' run times.
    let agent = Agent::start(
        &dir,
        &[
            "--http-listen",
            &listen,
            "--summary-interval-ms",
            "1000",
            "--program-stats",
        ],
    )
    .expect("agent start (with --http-listen)");
    let prom = Prometheus::start(&dir, &listen).expect("prometheus start");
    // Prometheus starts its scrape loops a while after it is ready (discovery is
    // throttled): wait until it scrapes the agent steadily, or the dashboard's rate()
    // windows below would hold too few samples.
    prom.wait("count_over_time(up{job=\"snakepit-agent\"}[1m])", |v| {
        v.is_some_and(|n| n >= 3.0)
    })
    .expect("Prometheus scrapes the agent");
    let t_start = unix_now();
    let mut demo = Demo::start(&DemoOptions {
        log: Some(dir.join("beam.log")),
        ..DemoOptions::default()
    })
    .expect("demo start");
    let status = demo
        .wait_ready(Duration::from_secs(60))
        .expect("demo ready");
    std::thread::sleep(Duration::from_millis(500));

    let mut spec = LoadSpec::new(
        60,
        4_000,
        &[
            ("echo", 4),
            ("sleep", 1),
            ("fail", 2),
            ("snakebridge", 1),
            ("stream", 1),
        ],
    );
    spec.pools = vec!["default".into(), "legacy".into()];
    let gt_path = dir.join("ground_truth.jsonl");
    let truth = demo.load_truth(&spec, &gt_path).expect("load");
    assert!(truth.len() > 100, "load made only {} calls", truth.len());

    // Total calls: every ground-truth call, counted once.
    let total = truth.len() as f64;
    prom.wait("sum(snakepit_calls_total)", |v| v == Some(total))
        .expect("total calls in Prometheus = ground truth");

    // Errors by type.
    let mut want_errors: BTreeMap<String, f64> = BTreeMap::new();
    for g in truth.iter().filter(|g| !g.success) {
        let t = g.error_type.clone().unwrap_or_else(|| "unknown".into());
        *want_errors.entry(format!("error_type={t}")).or_default() += 1.0;
    }
    assert!(!want_errors.is_empty(), "the load made no failed call");
    let got_errors = prom
        .query("sum by (error_type) (snakepit_call_exceptions_total)")
        .expect("errors query");
    assert_eq!(got_errors, want_errors, "errors by type");
    let failed = prom
        .scalar("sum(snakepit_calls_total{result=\"error\"})")
        .expect("query");
    assert_eq!(failed, Some(want_errors.values().sum()));

    // Pool sizes, from the demo's own view.
    let mut want_pools: BTreeMap<String, f64> = BTreeMap::new();
    for w in &status.workers {
        *want_pools.entry(format!("pool={}", w.pool)).or_default() += 1.0;
    }
    let got_pools = prom
        .query("max by (pool) (snakepit_pool_size)")
        .expect("pools");
    assert_eq!(got_pools, want_pools, "pool sizes");
    let idle_plus_busy = prom
        .query("max by (pool) (snakepit_pool_idle + snakepit_pool_busy)")
        .expect("idle+busy");
    assert_eq!(idle_plus_busy, want_pools, "idle + busy = size per pool");

    // A worker killed by a signal is one crash of its pool, reason `signal`.
    let victim = status
        .workers
        .iter()
        .find(|w| w.pool == "default")
        .expect("a default-pool worker");
    demo.command(
        &format!("{{kill_worker, \"{}\"}}", victim.worker_id),
        Duration::from_secs(10),
    )
    .expect("kill_worker");
    prom.wait(
        "sum(snakepit_worker_crashes_total{pool=\"default\",reason=\"signal\"})",
        |v| v == Some(1.0),
    )
    .expect("the crash is counted");
    prom.wait("sum(snakepit_agent_events_read_total)", |v| {
        v.is_some_and(|v| v > 0.0)
    })
    .expect("agent self-metrics scraped");

    // A few more scrapes after the last change, so every rate() window has two.
    std::thread::sleep(Duration::from_secs(3));

    // Every dashboard query: valid PromQL with data over the test's window (GPU
    // panels only need data where the agent exports GPU series).
    let (_, metrics) = http_get(&listen, "/metrics").expect("agent /metrics");
    let gpu_exported = metrics
        .lines()
        .any(|l| l.starts_with("snakepit_gpu_memory_"));
    let dash_path = workspace_root().join("docs/grafana/snakepit.json");
    let dash: Value = serde_json::from_str(
        &std::fs::read_to_string(&dash_path).expect("reading docs/grafana/snakepit.json"),
    )
    .expect("the dashboard is JSON");
    let end = unix_now();
    let mut problems = Vec::new();
    let mut checked = 0;
    for panel in dash["panels"].as_array().expect("panels") {
        let title = panel["title"].as_str().unwrap_or("?");
        let targets = panel["targets"].as_array().cloned().unwrap_or_default();
        assert!(!targets.is_empty(), "panel {title} has no query");
        for t in targets {
            let expr = t["expr"].as_str().expect("target expr");
            let q = expr
                .replace("$__rate_interval", "10s")
                .replace("$__interval", "1s")
                .replace("$pool", ".*")
                .replace("$library", ".*")
                .replace("$function", ".*");
            let path = format!(
                "/api/v1/query_range?query={}&start={t_start}&end={end}&step=1",
                encode(&q)
            );
            checked += 1;
            match prom.api(&path) {
                Err(e) => problems.push(format!("{title}: `{q}` invalid: {e}")),
                Ok(data) => {
                    let empty = data["result"].as_array().is_none_or(|r| r.is_empty());
                    let optional = q.contains("snakepit_gpu_") && !gpu_exported;
                    if empty && !optional {
                        problems.push(format!("{title}: `{q}` returned no data"));
                    }
                }
            }
        }
    }
    // Template variables: `label_values(metric, label)` must name a scraped series.
    for var in dash["templating"]["list"].as_array().expect("templating") {
        let Some(q) = var["query"]["query"].as_str() else {
            continue;
        };
        if let Some(inner) = q
            .strip_prefix("label_values(")
            .and_then(|r| r.strip_suffix(')'))
        {
            let (metric, label) = inner.rsplit_once(',').expect("label_values(m, l)");
            let metric = metric.replace("$library", ".*");
            let data = prom
                .api(&format!("/api/v1/series?match[]={}", encode(metric.trim())))
                .expect("series query");
            let has = data
                .as_array()
                .is_some_and(|s| s.iter().any(|s| s[label.trim()].is_string()));
            if !has {
                problems.push(format!("variable {q}: no series with that label"));
            }
        }
    }
    assert!(checked >= 10, "only {checked} dashboard queries");
    assert!(
        problems.is_empty(),
        "dashboard queries:\n{}",
        problems.join("\n")
    );

    demo.stop().expect("demo stop");
    agent.stop().expect("agent stop");
}
