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
            Ok(probes) => {
                for p in probes.attached() {
                    println!("would attach        {p}");
                }
            }
            Err(e) => problems.push(format!("loading the probes failed: {e}")),
        }
    }
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
