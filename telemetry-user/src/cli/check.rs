//! `snakepit-agent check`: can the agent run here, and what would it attach?
use crate::discovery::{Discovery, ProcSource, Selectors};
use crate::kernel::{self, KernelConfig, Probes};
use crate::privileges::{self, TracefsState};
use clap::Args;
use std::path::Path;

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
    let caps = privileges::effective_caps();
    for req in privileges::REQUIRED {
        let ok = privileges::satisfied(req, caps);
        println!("{:<19} {:<3}  {}", req.name, yes_no(ok), req.why);
    }
    println!("BTF (vmlinux)       {}", yes_no(pf.btf_present));
    let tracefs = privileges::tracefs_state();
    println!(
        "tracefs             {}",
        match tracefs {
            TracefsState::Readable => "mounted, readable",
            TracefsState::Denied => "mounted, PERMISSION DENIED",
            TracefsState::NotMounted => "NOT MOUNTED (the agent mounts it when allowed)",
        }
    );
    println!("bpffs mounted       {}", yes_no(pf.bpffs_mounted));
    for (tp, present) in &pf.tracepoints {
        let state = match (present, tracefs) {
            (Some(true), _) => "present",
            (Some(false), _) => "MISSING",
            (None, TracefsState::Denied) => "unknown (tracefs: permission denied)",
            (None, _) => "unknown (tracefs not mounted)",
        };
        println!("tracepoint          {tp:<40} {state}");
    }
    // The GPU is optional: its absence is reported, not a problem.
    println!("GPU (NVML)          {}", crate::gpu::probe().line());
    let mut problems = pf.problems();
    let missing = privileges::missing(caps);
    if !missing.is_empty() {
        problems.push(privileges::PrivilegeError::MissingCaps(missing).to_string());
    }
    if tracefs == TracefsState::Denied {
        problems.push(privileges::PrivilegeError::TracefsDenied.to_string());
    }
    // Reading a real target's /proc entries, as discovery will.
    match proc_target() {
        Some(target) => match privileges::check_proc_access(Path::new("/proc"), target) {
            Ok(()) => println!("/proc access        pid {target}: ok"),
            Err(e) => {
                println!("/proc access        pid {target}: DENIED");
                problems.push(e.to_string());
            }
        },
        None => println!("/proc access        no other process to test on"),
    }
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

/// A Snakepit worker or BEAM when one runs here (what the agent must read), else
/// another user's process.
fn proc_target() -> Option<u32> {
    let mut d = Discovery::new(ProcSource::system(), Selectors::default());
    d.full_scan();
    let snap = d.snapshot();
    snap.deployments
        .iter()
        .flat_map(|d| d.pools.iter().flat_map(|p| p.workers.iter().map(|w| w.pid)))
        .chain(snap.deployments.iter().map(|d| d.beam_pid))
        .next()
        // SAFETY: geteuid has no preconditions.
        .or_else(|| privileges::other_process(Path::new("/proc"), unsafe { libc::geteuid() }))
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
        // The worker split's probes: what would be attached, and what is missing.
        let plan = crate::worker_time::targets::plan(proc_root, w.pid, None);
        for t in &plan.targets {
            println!(
                "worker uprobe       {:<8} {:?} {} in {}",
                w.pid,
                t.function,
                t.symbol,
                t.path.display()
            );
        }
        if let Some(r) = &plan.waits.gil {
            println!(
                "worker gil          {:<8} _PyRuntime {:#x}..{:#x}{}",
                w.pid,
                r.start,
                r.end,
                plan.interpreter
                    .as_ref()
                    .map(|p| format!(" in {}", p.display()))
                    .unwrap_or_default()
            );
        }
        for m in &plan.missing {
            println!("worker split        {:<8} missing: {m}", w.pid);
        }
    }
}
