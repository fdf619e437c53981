//! The agent binary under test: started with JSON-lines output to a file, stopped with
//! SIGINT (it then flushes its summaries), its events read back as JSON values.
use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `SNAKEPIT_AGENT_BIN`, else the release build in target/ (`cargo xtask test` builds
/// it: a debug agent competes for CPU with the deployment it measures).
pub fn agent_bin() -> PathBuf {
    std::env::var_os("SNAKEPIT_AGENT_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::workspace_root().join("target/release/snakepit-agent"))
}

pub struct Agent {
    child: Child,
    pub output: PathBuf,
}

impl Agent {
    /// Starts `snakepit-agent run --format json --output <dir>/events.jsonl ARGS` and waits
    /// until it reports `["snakepit","agent","started"]`.
    pub fn start(dir: &Path, extra_args: &[&str]) -> Result<Agent> {
        Agent::start_with(dir, extra_args, 0)
    }

    /// [`Agent::start`] writing its events to `output` (agent.log stays in `dir`).
    pub fn start_to(dir: &Path, output: &Path, extra_args: &[&str]) -> Result<Agent> {
        Agent::spawn(dir, output.to_path_buf(), &[], extra_args, &[])
    }

    /// [`Agent::start`] with extra environment variables (e.g. `LD_LIBRARY_PATH`).
    pub fn start_env(dir: &Path, extra_args: &[&str], env: &[(&str, &Path)]) -> Result<Agent> {
        Agent::spawn(dir, dir.join("events.jsonl"), &[], extra_args, env)
    }

    /// [`Agent::start`] at scheduling priority `nice` (0 = inherited).
    pub fn start_with(dir: &Path, extra_args: &[&str], nice: i32) -> Result<Agent> {
        let nice_prefix = ["nice".to_string(), "-n".to_string(), nice.to_string()];
        let prefix: &[String] = if nice != 0 { &nice_prefix } else { &[] };
        Agent::spawn(dir, dir.join("events.jsonl"), prefix, extra_args, &[])
    }

    /// [`Agent::start`] through a command that execs the agent in its place (e.g.
    /// `setpriv ... --` to run it as another user with some capabilities).
    pub fn start_prefixed(dir: &Path, prefix: &[String], extra_args: &[&str]) -> Result<Agent> {
        Agent::spawn(dir, dir.join("events.jsonl"), prefix, extra_args, &[])
    }

    fn spawn(
        dir: &Path,
        output: PathBuf,
        prefix: &[String],
        extra_args: &[&str],
        env: &[(&str, &Path)],
    ) -> Result<Agent> {
        let bin = agent_bin();
        if !bin.exists() {
            bail!(
                "agent binary {} is missing: run `cargo build --release -p telemetry-user`",
                bin.display()
            );
        }
        let mut command = prefix.to_vec();
        command.push(bin.display().to_string());
        Agent::run_command(dir, output, &command, extra_args, env)
    }

    /// [`Agent::start`] with `command` (a program and its first arguments) running the
    /// agent binary, e.g. an installed one under `setpriv`.
    pub fn start_command(dir: &Path, command: &[String], extra_args: &[&str]) -> Result<Agent> {
        Agent::run_command(dir, dir.join("events.jsonl"), command, extra_args, &[])
    }

    fn run_command(
        dir: &Path,
        output: PathBuf,
        command: &[String],
        extra_args: &[&str],
        env: &[(&str, &Path)],
    ) -> Result<Agent> {
        crate::require::root_and_bpf();
        let log = std::fs::File::create(dir.join("agent.log"))?;
        let Some((program, args)) = command.split_first() else {
            bail!("no agent command");
        };
        let mut cmd = Command::new(program);
        cmd.args(args)
            .args(["run", "--format", "json", "--output"])
            .arg(&output)
            .args(extra_args);
        // Repro scripts of the test's failed calls stay in its scratch dir (root runs
        // only: an agent run as another user under a prefix keeps its own default).
        let as_root = program.ends_with("snakepit-agent") || program == "nice";
        if as_root
            && !extra_args
                .iter()
                .any(|a| *a == "--repro-dir" || *a == "--no-repro")
        {
            cmd.arg("--repro-dir").arg(dir.join("repro"));
        }
        // SNAKEPIT_TEST_AGENT_CONFIG: a config for every agent a test starts without one
        // (debugging a test, e.g. with a subsystem turned off).
        if let Ok(config) = std::env::var("SNAKEPIT_TEST_AGENT_CONFIG") {
            if !extra_args.contains(&"--config") {
                cmd.arg("--config").arg(config);
            }
        }
        let child = cmd
            // SNAKEPIT_TEST_AGENT_LOG overrides the agent's log filter (debugging a test).
            .env(
                "RUST_LOG",
                std::env::var("SNAKEPIT_TEST_AGENT_LOG").unwrap_or_else(|_| "info".into()),
            )
            .envs(env.iter().map(|(k, v)| (*k, *v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {program}"))?;
        let mut agent = Agent { child, output };
        agent.wait_for(Duration::from_secs(60), |e| {
            is_event(e, &["snakepit", "agent", "started"])
        })?;
        Ok(agent)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// User + system CPU time the agent process has used so far.
    pub fn cpu_time(&self) -> Option<std::time::Duration> {
        crate::procfs::cpu_time(self.child.id())
    }

    pub fn events(&self) -> Vec<Value> {
        read_events(&self.output)
    }

    /// Polls the output until an event satisfies `pred`; returns it.
    pub fn wait_for(&mut self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(ev) = self.events().into_iter().find(|e| pred(e)) {
                return Ok(ev);
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                bail!("agent exited ({status}) before the awaited event; see agent.log");
            }
            if Instant::now() > deadline {
                bail!("awaited agent event not seen within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits up to `timeout` for the agent to exit by itself; its status, or None.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<Option<std::process::ExitStatus>> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                return Ok(Some(status));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(None)
    }

    /// SIGINT, then waits for a clean exit; returns every event written.
    pub fn stop(self) -> Result<Vec<Value>> {
        self.stop_timed().map(|(_, events)| events)
    }

    /// Like `stop`, with the time from SIGINT to the agent's exit (reading its
    /// events afterwards is not counted: a long run's take seconds to parse).
    pub fn stop_timed(mut self) -> Result<(Duration, Vec<Value>)> {
        let sent = Instant::now();
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait()? {
                let took = sent.elapsed();
                if !status.success() {
                    bail!("agent exited with {status}; see agent.log");
                }
                return Ok((took, self.events()));
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                bail!("agent did not stop within 20 s of SIGINT");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn read_events(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    // The last line may be half-written while the agent runs: skip what does not parse.
    text.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

pub fn is_event(ev: &Value, name: &[&str]) -> bool {
    ev["event"]
        .as_array()
        .is_some_and(|a| a.len() == name.len() && a.iter().zip(name).all(|(x, n)| x == n))
}

pub fn events_named<'a>(events: &'a [Value], name: &[&str]) -> Vec<&'a Value> {
    events.iter().filter(|e| is_event(e, name)).collect()
}
