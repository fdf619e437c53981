//! What a bench run prints and writes to docs/benchmarks.md.
use super::miss::MissPath;
use super::phase::{Attached, Detached};
use super::BenchArgs;
use std::fmt::Write as _;

pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub kernel: String,
    pub memory_gib: f64,
    pub load_avg: String,
}

impl Machine {
    pub fn describe() -> Machine {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let cpuinfo = read("/proc/cpuinfo");
        let cpu_model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        let mem_kib: f64 = read("/proc/meminfo")
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        Machine {
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu_model,
            kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
            memory_gib: mem_kib / (1024.0 * 1024.0),
            load_avg: read("/proc/loadavg")
                .split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" "),
        }
    }
}

fn per_call(total: f64, calls: u64) -> f64 {
    if calls == 0 {
        0.0
    } else {
        total / calls as f64
    }
}

/// (min, median, max); zeros for an empty list.
fn spread(mut v: Vec<f64>) -> (f64, f64, f64) {
    if v.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    (v[0], median, v[n - 1])
}

pub struct Report {
    pub machine: Machine,
    pub setup: String,
    /// Saturation: detached phases, one more than attached ones, which sit between
    /// them (attached[k] between detached[k] and detached[k + 1]).
    pub detached: Vec<Detached>,
    pub attached: Vec<Attached>,
    /// Saturation: one more attached phase after the rounds, with the kernel's
    /// run-time statistics on (the programs' run times come from it alone).
    pub counted: Option<Attached>,
    pub rate: Option<Attached>,
    pub rate_target: u32,
    pub miss: Option<MissPath>,
}

impl Report {
    pub fn new(args: &BenchArgs, machine: Machine) -> Report {
        let setup = format!(
            "{} gRPC workers, {} pipe workers, tool echo, {} calls in flight per worker, InitializeSession callback per call: {}, nice {}, BEAM scheduler busy-wait: {}; {} s per phase{}",
            args.workers,
            args.pipe_workers,
            args.concurrency,
            if args.no_session_callbacks { "no" } else { "yes" },
            args.nice,
            if args.beam_busy_wait { "on" } else { "off" },
            args.seconds,
            if args.rate > 0 {
                format!(", target {} calls/s", args.rate)
            } else {
                format!(
                    ", {} rounds{}",
                    args.rounds,
                    if args.detached_only {
                        " (detached only)"
                    } else {
                        " (attached phases between detached ones)"
                    }
                )
            }
        );
        Report {
            machine,
            setup,
            detached: Vec::new(),
            attached: Vec::new(),
            counted: None,
            rate: None,
            rate_target: args.rate,
            miss: None,
        }
    }

    /// Every attached phase of the run.
    fn all_attached(&self) -> Vec<&Attached> {
        self.attached
            .iter()
            .chain(self.counted.as_ref())
            .chain(self.rate.as_ref())
            .collect()
    }

    /// The phase whose programs' run times were counted.
    fn counted_phase(&self) -> Option<&Attached> {
        self.counted.as_ref().or(self.rate.as_ref())
    }

    /// The detached phases on both sides of attached phase `k`.
    fn neighbours(&self, k: usize) -> Option<(&Detached, &Detached)> {
        Some((self.detached.get(k)?, self.detached.get(k + 1)?))
    }

    /// Attached calls over the mean of the neighbouring detached phases' calls.
    fn ratio(&self, k: usize) -> Option<f64> {
        let a = self.attached.get(k)?;
        let (d0, d1) = self.neighbours(k)?;
        let off = (d0.calls + d1.calls) as f64 / 2.0;
        (off > 0.0).then(|| a.calls as f64 / off)
    }

    /// The same ratio from CPU cost per call: detached deployment CPU per call over
    /// attached deployment + agent CPU per call. At saturation on a machine of its
    /// own the two agree; when others take CPU this one still holds.
    fn cpu_ratio(&self, k: usize) -> Option<f64> {
        let a = self.attached.get(k)?;
        let (d0, d1) = self.neighbours(k)?;
        let off = per_call(
            (d0.deploy_cpu + d1.deploy_cpu).as_secs_f64(),
            d0.calls + d1.calls,
        );
        let on = per_call((a.deploy_cpu + a.agent_cpu).as_secs_f64(), a.calls);
        (on > 0.0).then(|| off / on)
    }

    /// What round `k` measured (its attached phase and the detached one after it).
    pub fn round_line(&self, k: usize) -> String {
        let mut s = String::new();
        if let Some(a) = self.attached.get(k) {
            let _ = write!(
                s,
                "attached {} calls ({:.0} us/call + agent {:.1} us/call, stopped in {:.1} s), ",
                a.calls,
                per_call(a.deploy_cpu.as_secs_f64() * 1e6, a.calls),
                per_call(a.agent_cpu.as_secs_f64() * 1e6, a.calls),
                a.stop_seconds
            );
        }
        if let Some(d) = self.detached.get(k + 1) {
            let _ = write!(
                s,
                "detached {} calls ({:.0} us/call)",
                d.calls,
                per_call(d.deploy_cpu.as_secs_f64() * 1e6, d.calls)
            );
        }
        if let (Some(r), Some(c)) = (self.ratio(k), self.cpu_ratio(k)) {
            let _ = write!(s, "; ratio {r:.3}, CPU-cost ratio {c:.3}");
        }
        format!("round {k}: {s}")
    }

    /// (label, value) lines: the same in the terminal and in the document.
    fn lines(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let m = &self.machine;
        out.push((
            "machine".into(),
            format!(
                "{} CPUs, {}, kernel {}, {:.1} GiB, load average {} at start",
                m.cpus, m.cpu_model, m.kernel, m.memory_gib, m.load_avg
            ),
        ));
        out.push(("setup".into(), self.setup.clone()));
        if !self.detached.is_empty() {
            let det: Vec<f64> = self.detached.iter().map(|d| d.calls as f64).collect();
            let (lo, med, hi) = spread(det.clone());
            out.push((
                "detached calls per phase".into(),
                format!(
                    "min {lo:.0} / median {med:.0} / max {hi:.0} (max/min {:.2}; {})",
                    hi / lo.max(1.0),
                    det.iter()
                        .map(|c| format!("{c:.0}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
            let secs = self.detached[0].seconds.max(1e-9);
            out.push((
                "calls/s detached (median)".into(),
                format!("{:.0}", med / secs),
            ));
            let dcpu: Vec<f64> = self
                .detached
                .iter()
                .map(|d| per_call(d.deploy_cpu.as_secs_f64() * 1e6, d.calls))
                .collect();
            let (lo, med, hi) = spread(dcpu);
            out.push((
                "deployment CPU per call, detached".into(),
                format!("min {lo:.0} / median {med:.0} / max {hi:.0} us"),
            ));
            let n = self.attached.len();
            let ratios: Vec<f64> = (0..n).filter_map(|k| self.ratio(k)).collect();
            if !ratios.is_empty() {
                let (lo, med, hi) = spread(ratios.clone());
                out.push((
                    "throughput ratio attached/detached".into(),
                    format!(
                        "min {lo:.3} / median {med:.3} / max {hi:.3} over {} rounds",
                        ratios.len()
                    ),
                ));
                let (lo, med, hi) = spread((0..n).filter_map(|k| self.cpu_ratio(k)).collect());
                out.push((
                    "CPU-cost ratio detached/attached per call".into(),
                    format!("min {lo:.3} / median {med:.3} / max {hi:.3}"),
                ));
            }
        }
        if let Some(a) = &self.rate {
            out.push((
                "rate achieved".into(),
                format!(
                    "{:.0} calls/s of {} asked ({} calls in {:.0} s)",
                    a.calls as f64 / a.seconds.max(1e-9),
                    self.rate_target,
                    a.calls,
                    a.seconds
                ),
            ));
        }
        let att = self.all_attached();
        if let Some(c) = self.counted_phase() {
            out.push((
                "eBPF run time per call".into(),
                format!(
                    "{:.0} ns ({:.1} program runs per call; {}, with the kernel's run-time stats on)",
                    per_call(c.ebpf_ns as f64, c.calls),
                    per_call(c.ebpf_runs as f64, c.calls),
                    if self.counted.is_some() {
                        "an attached phase after the rounds"
                    } else {
                        "the phase"
                    }
                ),
            ));
            let top: Vec<String> = c
                .ebpf_by_prog
                .iter()
                .take(8)
                .map(|(n, t, runs)| {
                    format!(
                        "{n} {:.0} ({:.1} runs of {:.0} ns)",
                        per_call(*t as f64, c.calls),
                        per_call(*runs as f64, c.calls),
                        per_call(*t as f64, *runs)
                    )
                })
                .collect();
            out.push((
                "eBPF ns per call, top programs: runs per call, ns per run".into(),
                top.join(", "),
            ));
        }
        if !att.is_empty() {
            // Agent CPU from the rounds (the agent as shipped), else the rate phase.
            let own: Vec<&Attached> = if self.attached.is_empty() {
                att.clone()
            } else {
                self.attached.iter().collect()
            };
            let med = |f: &dyn Fn(&Attached) -> f64| spread(own.iter().map(|a| f(a)).collect()).1;
            out.push((
                "agent CPU per call".into(),
                format!(
                    "{:.1} us (median of phases)",
                    med(&|a| per_call(a.agent_cpu.as_secs_f64() * 1e6, a.calls))
                ),
            ));
            let rss_max = att.iter().map(|a| a.rss_max_kib).max().unwrap_or(0);
            let rss_peak = att.iter().map(|a| a.rss_peak_kib).max().unwrap_or(0);
            out.push((
                "agent RSS".into(),
                format!(
                    "max VmRSS under load {:.1} MiB, VmHWM {:.1} MiB",
                    rss_max as f64 / 1024.0,
                    rss_peak as f64 / 1024.0
                ),
            ));
            let sum = |f: &dyn Fn(&Attached) -> u64| att.iter().map(|a| f(a)).sum::<u64>();
            out.push((
                "losses (all attached phases)".into(),
                format!(
                    "ring-buffer drops {}, lost records {}, decode errors {}, bus lagged {}",
                    sum(&|a| a.ringbuf_drops),
                    sum(&|a| a.records_lost),
                    sum(&|a| a.decode_errors),
                    sum(&|a| a.bus_lagged)
                ),
            ));
            out.push((
                "agent exit after SIGINT".into(),
                format!(
                    "max {:.1} s",
                    att.iter().map(|a| a.stop_seconds).fold(0.0, f64::max)
                ),
            ));
        }
        if let Some(m) = &self.miss {
            out.push((
                "miss path (unwatched process, read/write /dev/null)".into(),
                format!(
                    "wall {:.0} ns/syscall attached vs {:.0} detached ({:+.0} ns); with the run-time stats on {:.0} ns ({:+.0} ns), {:.0} ns of it eBPF per hooked syscall (enter + exit)",
                    m.with_ns,
                    m.without_ns,
                    m.with_ns - m.without_ns,
                    m.with_counted_ns,
                    m.with_counted_ns - m.without_ns,
                    m.ebpf_ns,
                ),
            ));
        }
        out
    }

    pub fn render(&self) -> String {
        let mut s = String::new();
        for (k, v) in self.lines() {
            let _ = writeln!(s, "{k:<52} {v}");
        }
        s
    }

    pub fn render_markdown(&self) -> String {
        let mut s = String::from("| measure | result |\n|---|---|\n");
        for (k, v) in self.lines() {
            let _ = writeln!(s, "| {k} | {} |", v.replace('|', "\\|"));
        }
        if !self.attached.is_empty() {
            s.push_str("\nPer round:\n\n");
            for k in 0..self.attached.len() {
                let _ = writeln!(s, "- {}", self.round_line(k));
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_is_min_median_max() {
        assert_eq!(spread(vec![3.0, 1.0, 2.0]), (1.0, 2.0, 3.0));
        assert_eq!(spread(vec![4.0, 1.0, 2.0, 3.0]), (1.0, 2.5, 4.0));
        assert_eq!(spread(vec![]), (0.0, 0.0, 0.0));
    }
}
