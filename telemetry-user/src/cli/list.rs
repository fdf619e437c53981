//! `snakepit-agent list`: a one-shot view of the Snakepit deployments on this host,
//! from /proc alone (no eBPF needed).
use crate::discovery::{Discovery, ProcSource, Selectors, TopologySnapshot};
use clap::Args;
use std::fmt::Write as _;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct ListArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// proc root to read (default /proc).
    #[arg(long, default_value = "/proc")]
    pub proc_root: PathBuf,
    /// Extra command-line substring that marks a worker (repeatable).
    #[arg(long = "worker-pattern")]
    pub worker_patterns: Vec<String>,
}

pub fn run(args: ListArgs) -> anyhow::Result<i32> {
    let mut discovery = Discovery::new(
        ProcSource::new(args.proc_root),
        Selectors {
            worker_patterns: args.worker_patterns,
            ..Selectors::default()
        },
    );
    discovery.full_scan();
    let snap = discovery.snapshot();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&snap)?);
    } else {
        print!("{}", render(&snap));
    }
    Ok(0)
}

pub fn render(snap: &TopologySnapshot) -> String {
    let mut out = String::new();
    if snap.deployments.is_empty() {
        out.push_str("no Snakepit deployment found\n");
    }
    for d in &snap.deployments {
        let _ = writeln!(
            out,
            "BEAM pid {} instance {} listening on {:?}",
            d.beam_pid,
            d.instance_name.as_deref().unwrap_or("-"),
            d.listen_ports
        );
        for p in &d.pools {
            let _ = writeln!(out, "  pool {} ({} workers)", p.pool, p.workers.len());
            for w in &p.workers {
                let _ = writeln!(
                    out,
                    "    {:<32} pid {:<8} port {:<6} {:?} {}",
                    w.worker_id,
                    w.pid,
                    w.port.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                    w.transport,
                    w.adapter.as_deref().unwrap_or("")
                );
            }
        }
    }
    if !snap.connections.is_empty() {
        let _ = writeln!(out, "connections:");
        for c in &snap.connections {
            let addr = |a: Option<std::net::SocketAddr>| {
                a.map(|a| a.to_string()).unwrap_or_else(|| "pipe".into())
            };
            let _ = writeln!(
                out,
                "  #{:<4} {:?} {} beam {}:fd{} ({}) <-> worker {}:fd{} ({})",
                c.id,
                c.role,
                c.worker_id,
                c.beam_pid,
                c.beam_fd,
                addr(c.beam_addr),
                c.worker_pid,
                c.worker_fd,
                addr(c.worker_addr)
            );
        }
    }
    for w in &snap.unattached_workers {
        let _ = writeln!(out, "worker without a BEAM: {} pid {}", w.worker_id, w.pid);
    }
    out
}
