//! `cargo xtask demo`: the agent on the bundled demo deployment, or on the Snakepit
//! deployment already running on this host.
use anyhow::{bail, Context, Result};
use snakepit_testkit::demo::{Demo, DemoOptions};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Where the demo serves /metrics and the live page unless given `--http-listen`.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9464";
/// The agent configuration of the demo unless given `--config`: ML rules for the
/// demo's ML tools.
pub const DEFAULT_CONFIG: &str = "demo/agent.toml";

pub struct DemoArgs {
    duration_secs: Option<u64>,
    grpc_workers: u32,
    pipe_workers: u32,
    rate: u32,
    agent_args: Vec<String>,
}

impl DemoArgs {
    /// Our flags are taken out; everything else goes to `snakepit-agent run`.
    pub fn parse(args: &[String]) -> Result<DemoArgs> {
        let mut out = DemoArgs {
            duration_secs: None,
            grpc_workers: 2,
            pipe_workers: 1,
            rate: 20,
            agent_args: Vec::new(),
        };
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            let mut value = |name: &str| -> Result<u64> {
                let v = it.next().with_context(|| format!("{name} needs a value"))?;
                v.parse()
                    .with_context(|| format!("{name}: not a number: {v}"))
            };
            match arg.as_str() {
                "--duration" => out.duration_secs = Some(value("--duration")?),
                "--grpc-workers" => out.grpc_workers = value("--grpc-workers")? as u32,
                "--pipe-workers" => out.pipe_workers = value("--pipe-workers")? as u32,
                "--rate" => out.rate = value("--rate")? as u32,
                _ => out.agent_args.push(arg.clone()),
            }
        }
        Ok(out)
    }

    /// The arguments of `snakepit-agent run`: the user's, plus the endpoint and the
    /// demo's config when the user gave none.
    pub fn agent_args(&self, root: &Path) -> Vec<String> {
        let given = |flag: &str| {
            self.agent_args
                .iter()
                .any(|a| a == flag || a.starts_with(&format!("{flag}=")))
        };
        let mut args = self.agent_args.clone();
        if !given("--http-listen") {
            args.extend(["--http-listen".to_string(), DEFAULT_LISTEN.to_string()]);
        }
        if !given("--config") {
            args.push("--config".to_string());
            args.push(root.join(DEFAULT_CONFIG).display().to_string());
        }
        args
    }

    /// The address the page is served on (the user's `--http-listen` or the default).
    pub fn listen(&self) -> String {
        let mut it = self.agent_args.iter();
        while let Some(a) = it.next() {
            if a == "--http-listen" {
                if let Some(v) = it.next() {
                    return v.clone();
                }
            } else if let Some(v) = a.strip_prefix("--http-listen=") {
                return v.to_string();
            }
        }
        DEFAULT_LISTEN.to_string()
    }
}

pub fn run(root: &Path, args: DemoArgs) -> Result<()> {
    crate::run_cmd(Command::new("cargo").current_dir(root).args([
        "build",
        "--release",
        "-p",
        "telemetry-user",
    ]))?;
    let agent = root.join("target/release/snakepit-agent");

    let demo = if snakepit_deployment_running() {
        eprintln!("demo: a Snakepit deployment is already running; attaching to it");
        None
    } else {
        eprintln!(
            "demo: starting the bundled deployment ({} gRPC workers, {} pipe workers, {} calls/s)",
            args.grpc_workers, args.pipe_workers, args.rate
        );
        let mut demo = Demo::start(&DemoOptions {
            grpc_workers: args.grpc_workers,
            pipe_workers: args.pipe_workers,
            autoload: args.rate,
            log: Some(root.join("target/demo-beam.log")),
            ..DemoOptions::default()
        })?;
        let st = demo.wait_ready(Duration::from_secs(60))?;
        eprintln!(
            "demo: ready: BEAM pid {}, {} workers",
            st.beam_pid,
            st.workers.len()
        );
        Some(demo)
    };

    let mut cmd = Command::new(&agent);
    let agent_args = args.agent_args(root);
    cmd.arg("run").args(&agent_args);
    // Repro scripts of the demo's failed calls go to target/repro (not /var/lib).
    if !agent_args
        .iter()
        .any(|a| a.as_str() == "--repro-dir" || a.as_str() == "--no-repro")
    {
        cmd.arg("--repro-dir").arg(root.join("target/repro"));
    }
    eprintln!(
        "demo: live page http://{0}/  metrics http://{0}/metrics",
        args.listen()
    );
    if let Some(secs) = args.duration_secs {
        cmd.args(["--duration", &secs.to_string()]);
    }
    let status = cmd.status().context("running snakepit-agent")?;
    if let Some(demo) = demo {
        demo.stop()?;
    }
    if !status.success() {
        bail!("snakepit-agent exited with {status}");
    }
    Ok(())
}

/// True when a process on this host matches Snakepit's worker rule.
fn snakepit_deployment_running() -> bool {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return false;
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .any(|cmdline| {
            let text = String::from_utf8_lossy(&cmdline);
            (text.contains("grpc_server.py") || text.contains("grpc_server_threaded.py"))
                && (text.contains("--snakepit-run-id") || text.contains("--run-id"))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> DemoArgs {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        DemoArgs::parse(&args).expect("parses")
    }

    #[test]
    fn no_flags_serve_on_loopback_with_the_demo_config() {
        let root = Path::new("/r");
        let a = parse(&[]);
        assert_eq!(
            a.agent_args(root),
            [
                "--http-listen",
                DEFAULT_LISTEN,
                "--config",
                "/r/demo/agent.toml"
            ]
        );
        assert_eq!(a.listen(), "127.0.0.1:9464");
    }

    #[test]
    fn the_users_endpoint_and_config_win() {
        let root = Path::new("/r");
        let a = parse(&[
            "--duration",
            "5",
            "--http-listen",
            "127.0.0.1:1",
            "--config",
            "x.toml",
        ]);
        assert_eq!(
            a.agent_args(root),
            ["--http-listen", "127.0.0.1:1", "--config", "x.toml"]
        );
        assert_eq!(a.listen(), "127.0.0.1:1");
    }

    #[test]
    fn the_shipped_demo_config_has_ml_rules_for_the_demo_tools() {
        let text = std::fs::read_to_string(crate::workspace_root().join(DEFAULT_CONFIG))
            .expect("demo/agent.toml");
        assert!(text.contains("tool = \"ml_infer\"") && text.contains("tool = \"ml_train_step\""));
    }
}
