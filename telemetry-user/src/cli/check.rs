//! `snakepit-agent check`: can the agent run here, and what would it attach?
use crate::kernel::{self, KernelConfig, Probes};
use clap::Args;

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// Only inspect; do not try loading the probes.
    #[arg(long)]
    pub no_load: bool,
}

pub fn run(args: CheckArgs) -> anyhow::Result<i32> {
    let pf = kernel::preflight();
    let yes_no = |b: bool| if b { "yes" } else { "NO" };
    println!("kernel release      {}", pf.kernel_release);
    println!("root                {}", yes_no(pf.is_root));
    println!("CAP_BPF             {}", yes_no(pf.cap_bpf));
    println!("CAP_PERFMON         {}", yes_no(pf.cap_perfmon));
    println!("CAP_SYS_ADMIN       {}", yes_no(pf.cap_sys_admin));
    println!("BTF (vmlinux)       {}", yes_no(pf.btf_present));
    println!("tracefs mounted     {}", yes_no(pf.tracefs_mounted));
    println!("bpffs mounted       {}", yes_no(pf.bpffs_mounted));
    for (tp, present) in &pf.tracepoints {
        let state = match present {
            Some(true) => "present",
            Some(false) => "MISSING",
            None => "unknown (tracefs not readable)",
        };
        println!("tracepoint          {tp:<40} {state}");
    }
    // The GPU is optional: its absence is reported, not a problem.
    println!("GPU (NVML)          {}", crate::gpu::probe().line());
    let mut problems = pf.problems();
    if !args.no_load && problems.is_empty() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let loaded = rt.block_on(async { Probes::load(&KernelConfig::default()) });
        match loaded {
            Ok(mut probes) => {
                if let Err(e) = probes.start_profiler(99) {
                    println!("Python sampling     NO ({e})");
                }
                for p in probes.attached() {
                    println!("would attach        {p}");
                }
            }
            Err(e) => problems.push(format!("loading the probes failed: {e}")),
        }
    }
    python_workers();
    if problems.is_empty() {
        println!("ok: the agent can run here");
        Ok(0)
    } else {
        for p in &problems {
            println!("problem: {p}");
        }
        Ok(2)
    }
}

/// The interpreter and frame layout of every worker found now (what the Python stack
/// sampler would use, or why it would refuse the worker).
fn python_workers() {
    use crate::discovery::{Discovery, ProcSource, Selectors};
    let proc_root = std::path::Path::new("/proc");
    let mut discovery = Discovery::new(
        ProcSource::new(proc_root.to_path_buf()),
        Selectors::default(),
    );
    discovery.full_scan();
    let snap = discovery.snapshot();
    let workers = snap
        .deployments
        .iter()
        .flat_map(|d| d.pools.iter().flat_map(|p| p.workers.iter()))
        .chain(snap.unattached_workers.iter());
    for w in workers {
        match crate::profiler::layout::inspect(proc_root, w.pid) {
            Ok(i) => println!(
                "python worker       {:<8} CPython {} ({}, layout from {})",
                w.pid,
                i.version,
                i.path.display(),
                i.layout_source
            ),
            Err(e) => println!("python worker       {:<8} not profiled: {e}", w.pid),
        }
    }
}
