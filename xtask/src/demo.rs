//! `cargo xtask demo`: the agent on the bundled demo deployment, or on the Snakepit
//! deployment already running on this host.
use anyhow::{bail, Context, Result};
use snakepit_testkit::demo::{Demo, DemoOptions};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

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
    cmd.arg("run").args(&args.agent_args);
    // Repro scripts of the demo's failed calls go to target/repro (not /var/lib).
    let repro_flags = ["--repro-dir", "--no-repro", "--config"];
    if !args
        .agent_args
        .iter()
        .any(|a| repro_flags.contains(&a.as_str()))
    {
        cmd.arg("--repro-dir").arg(root.join("target/repro"));
    }
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
