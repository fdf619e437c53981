//! The demo deployment (demo/README.md): starts the BEAM, speaks its control protocol
//! (one Erlang term per line on stdin, one `{"reply":...}` JSON line per command on stdout).
use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub grpc_workers: u32,
    pub pipe_workers: u32,
    pub instance_name: String,
    pub heartbeat_ms: u32,
    /// Continuous background load (calls/s) from boot; 0 = none.
    pub autoload: u32,
    /// Where the BEAM's stderr goes (None: inherit).
    pub log: Option<PathBuf>,
    /// Workers call InitializeSession back on every tool call, as real Snakepit does.
    pub init_session_per_call: bool,
    /// Scheduling priority (nice) of the BEAM and its workers; 0 = inherited.
    pub nice: i32,
    /// Extra emulator flags for `erl` (e.g. `+sbwt none`).
    pub erl_flags: Vec<String>,
    /// Environment of the BEAM, inherited by its workers.
    pub env: Vec<(String, String)>,
    /// A command that execs `erl` and its arguments in its place (e.g. one that puts
    /// the deployment in its own namespaces); empty: `erl` directly.
    pub wrapper: Vec<String>,
    /// The workers' interpreter (None: the project venv's `.venv/bin/python`).
    pub python: Option<PathBuf>,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            grpc_workers: 2,
            pipe_workers: 1,
            instance_name: "demo".into(),
            heartbeat_ms: 2000,
            autoload: 0,
            log: None,
            init_session_per_call: false,
            nice: 0,
            erl_flags: Vec::new(),
            env: Vec::new(),
            wrapper: Vec::new(),
            python: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct WorkerStatus {
    pub pool: String,
    pub worker_id: String,
    pub os_pid: u32,
    #[serde(default)]
    pub port: Option<u16>,
    pub transport: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Status {
    pub ready: bool,
    pub beam_pid: u32,
    pub beam_port: u16,
    pub workers: Vec<WorkerStatus>,
}

/// One BEAM socket's byte counts, from `inet:getstat/2` (the `stats` command).
#[derive(Debug, Clone, Deserialize)]
pub struct ConnStat {
    pub kind: String,
    #[serde(default)]
    pub worker_id: Option<String>,
    pub local: String,
    pub peer: String,
    pub send_oct: u64,
    pub recv_oct: u64,
    #[serde(default)]
    pub closed: bool,
}

/// One line of the ground-truth file.
#[derive(Debug, Clone, Deserialize)]
pub struct GroundTruthCall {
    pub seq: u64,
    pub pool: String,
    pub worker_id: String,
    #[serde(default)]
    pub worker_pid: Option<u32>,
    pub transport: String,
    pub method: String,
    pub tool: String,
    #[serde(default)]
    pub library: Option<String>,
    #[serde(default)]
    pub function: Option<String>,
    pub session_id: Option<String>,
    pub correlation_id: String,
    #[serde(default)]
    pub stream_id: Option<u32>,
    pub start_mono_ns: u64,
    pub end_mono_ns: u64,
    pub duration_ns: u64,
    pub success: bool,
    #[serde(default)]
    pub error_type: Option<String>,
}

pub struct Demo {
    child: Child,
    stdin: Option<ChildStdin>,
    replies: Receiver<String>,
}

impl Demo {
    pub fn start(opts: &DemoOptions) -> Result<Demo> {
        crate::require::demo_built();
        let root = crate::workspace_root();
        let mut program = opts.wrapper.clone();
        if opts.nice != 0 {
            program.extend(["nice".into(), "-n".into(), opts.nice.to_string()]);
        }
        program.push("erl".into());
        let mut cmd = Command::new(&program[0]);
        cmd.args(&program[1..]);
        cmd.current_dir(&root)
            .args([
                "-noshell",
                "-pa",
                "demo/_build/ebin",
                "-run",
                "demo_app",
                "main",
            ])
            .args(&opts.erl_flags)
            .arg("-extra")
            .arg("--python")
            .arg(
                opts.python
                    .clone()
                    .unwrap_or_else(|| root.join(".venv/bin/python")),
            )
            .args(["--grpc-workers", &opts.grpc_workers.to_string()])
            .args(["--pipe-workers", &opts.pipe_workers.to_string()])
            .args(["--instance-name", &opts.instance_name])
            .args(["--heartbeat-ms", &opts.heartbeat_ms.to_string()])
            .args(["--autoload", &opts.autoload.to_string()])
            .args(
                opts.init_session_per_call
                    .then_some("--init-session-per-call"),
            )
            .envs(opts.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        if let Some(log) = &opts.log {
            let f = std::fs::File::create(log)
                .with_context(|| format!("creating {}", log.display()))?;
            cmd.stderr(f);
        }
        let mut child = cmd.spawn().context("starting the demo BEAM (erl)")?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("no BEAM stdout"))?;
        let stdin = child.stdin.take();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.starts_with("{\"reply\":") && tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Demo {
            child,
            stdin,
            replies: rx,
        })
    }

    /// Starts a demo with `grpc_workers` + `pipe_workers` workers (BEAM log in
    /// `dir/beam.log`) and waits until every worker is up and connected.
    pub fn start_ready(dir: &Path, grpc_workers: u32, pipe_workers: u32) -> Result<(Demo, Status)> {
        Demo::start_ready_with(&DemoOptions {
            grpc_workers,
            pipe_workers,
            log: Some(dir.join("beam.log")),
            ..DemoOptions::default()
        })
    }

    /// Starts a demo with `opts` and waits (60 s at most) until every worker is up
    /// and connected.
    pub fn start_ready_with(opts: &DemoOptions) -> Result<(Demo, Status)> {
        let mut demo = Demo::start(opts)?;
        let status = demo.wait_ready(Duration::from_secs(60))?;
        Ok((demo, status))
    }

    pub fn beam_pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends one control term (without the final `.`) and waits for its reply.
    pub fn command(&mut self, term: &str, timeout: Duration) -> Result<Value> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| anyhow!("demo stdin closed"))?;
        writeln!(stdin, "{term}.").context("writing to the demo BEAM")?;
        stdin.flush()?;
        match self.replies.recv_timeout(timeout) {
            Ok(line) => serde_json::from_str(&line).with_context(|| format!("bad reply: {line}")),
            Err(RecvTimeoutError::Timeout) => {
                bail!("demo BEAM gave no reply to `{term}` in {timeout:?}")
            }
            Err(RecvTimeoutError::Disconnected) => {
                bail!("demo BEAM exited (while running `{term}`)")
            }
        }
    }

    pub fn status(&mut self) -> Result<Status> {
        let v = self.command("status", Duration::from_secs(10))?;
        Ok(serde_json::from_value(v)?)
    }

    /// Waits until every worker is up and connected.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<Status> {
        let deadline = Instant::now() + timeout;
        loop {
            let st = self.status()?;
            if st.ready {
                return Ok(st);
            }
            if Instant::now() > deadline {
                bail!("demo not ready after {timeout:?}: {st:?}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Runs a load (see demo/README.md) and returns its reply. `mix` is `[(tool, weight)]`.
    pub fn load(&mut self, spec: &LoadSpec, ground_truth: &Path) -> Result<Value> {
        self.command(&load_term(spec, Some(ground_truth)), load_timeout(spec))
    }

    /// Runs a load without writing ground truth (the benchmark: no file writes in
    /// the measured process) and returns the number of calls made.
    pub fn load_count(&mut self, spec: &LoadSpec) -> Result<u64> {
        let reply = self.command(&load_term(spec, None), load_timeout(spec))?;
        reply["calls"]
            .as_u64()
            .ok_or_else(|| anyhow!("load reply without a call count: {reply}"))
    }

    /// Runs a load and returns its ground truth (one line per call).
    pub fn load_truth(
        &mut self,
        spec: &LoadSpec,
        ground_truth: &Path,
    ) -> Result<Vec<GroundTruthCall>> {
        self.load(spec, ground_truth)?;
        read_jsonl(ground_truth)
    }

    pub fn quiesce(&mut self) -> Result<()> {
        self.command("quiesce", Duration::from_secs(10)).map(|_| ())
    }

    pub fn stats(&mut self, path: &Path) -> Result<Vec<ConnStat>> {
        self.command(
            &format!("{{stats, \"{}\"}}", path.display()),
            Duration::from_secs(10),
        )?;
        read_jsonl(path)
    }

    /// Stops the deployment: connections closed, workers told to exit, BEAM halts.
    pub fn stop(self) -> Result<()> {
        self.stop_with("stop").map(|_| ())
    }

    /// Stops the deployment and returns every connection's final counts, taken by the
    /// BEAM just before it closed each socket (a consistent cut for exact comparisons).
    pub fn stop_with_stats(self, path: &Path) -> Result<Vec<ConnStat>> {
        self.stop_with(&format!("{{stop, \"{}\"}}", path.display()))?;
        read_jsonl(path)
    }

    fn stop_with(mut self, term: &str) -> Result<Value> {
        let reply = self.command(term, Duration::from_secs(20));
        self.stdin = None;
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return reply;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        reply
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        // Closing stdin is the BEAM's stop signal; kill if it lingers.
        self.stdin = None;
        for _ in 0..40 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn load_timeout(spec: &LoadSpec) -> Duration {
    Duration::from_millis(spec.duration_ms) + Duration::from_secs(120)
}

/// The control term of a load (see demo/README.md).
fn load_term(spec: &LoadSpec, ground_truth: Option<&Path>) -> String {
    let mix: Vec<String> = spec
        .mix
        .iter()
        .map(|(k, w)| format!("'{k}' => {w}"))
        .collect();
    let pools: Vec<String> = spec.pools.iter().map(|p| format!("'{p}'")).collect();
    let truth = ground_truth
        .map(|p| format!(", ground_truth => \"{}\"", p.display()))
        .unwrap_or_default();
    let extra: String = spec.extra.iter().map(|e| format!(", {e}")).collect();
    format!(
        "{{load, #{{rate => {}, duration_ms => {}, concurrency => {}, mix => #{{{}}}{truth}, pools => [{}]{extra}}}}}",
        spec.rate,
        spec.duration_ms,
        spec.concurrency,
        mix.join(", "),
        pools.join(", ")
    )
}

#[derive(Debug, Clone)]
pub struct LoadSpec {
    pub rate: u32,
    pub duration_ms: u64,
    pub concurrency: u32,
    pub mix: Vec<(String, u32)>,
    pub pools: Vec<String>,
    /// Optional load keys as Erlang map entries, e.g. `sleep_ms => 1500`.
    pub extra: Vec<String>,
}

impl LoadSpec {
    pub fn new(rate: u32, duration_ms: u64, mix: &[(&str, u32)]) -> Self {
        LoadSpec {
            rate,
            duration_ms,
            concurrency: 4,
            mix: mix.iter().map(|(k, w)| (k.to_string(), *w)).collect(),
            pools: vec!["default".into()],
            extra: Vec::new(),
        }
    }
}

pub fn read_jsonl<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Vec<T>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l).with_context(|| format!("bad line in {}: {l}", path.display()))
        })
        .collect()
}
