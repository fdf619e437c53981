//! Process figures read from /proc for the benchmark: CPU time of one process or of a
//! whole process tree (the BEAM and its Python workers), resident memory.
use std::collections::HashMap;
use std::time::Duration;

fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).max(1) as u64
}

/// (ppid, utime + stime in ticks) from /proc/PID/stat.
fn stat_fields(pid: u32) -> Option<(u32, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let after = stat.get(stat.rfind(')')? + 2..)?;
    let f: Vec<&str> = after.split_whitespace().collect();
    let ppid = f.get(1)?.parse().ok()?;
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some((ppid, utime + stime))
}

/// User + system CPU time of one process (all its threads) so far.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let (_, ticks) = stat_fields(pid)?;
    Some(Duration::from_micros(ticks * 1_000_000 / clock_ticks()))
}

/// CPU time of `root` and every live descendant. A descendant that exits takes its
/// time with it, so compare snapshots of a tree whose processes live throughout.
pub fn tree_cpu_time(root: u32) -> Duration {
    let mut procs: HashMap<u32, (u32, u64)> = HashMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some(v) = stat_fields(pid) {
                procs.insert(pid, v);
            }
        }
    }
    let in_tree = |mut pid: u32| {
        for _ in 0..64 {
            if pid == root {
                return true;
            }
            match procs.get(&pid) {
                Some(&(ppid, _)) if ppid != 0 && ppid != pid => pid = ppid,
                _ => return false,
            }
        }
        false
    };
    let ticks: u64 = procs
        .iter()
        .filter(|(pid, _)| in_tree(**pid))
        .map(|(_, (_, t))| *t)
        .sum();
    Duration::from_micros(ticks * 1_000_000 / clock_ticks())
}

/// A `VmRSS:`/`VmHWM:` line of /proc/PID/status, in KiB.
fn status_kib(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    line.get(key.len()..)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Resident memory now, KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmRSS:")
}

/// Peak resident memory over the process's life so far, KiB.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmHWM:")
}

/// Sets the nice value of the autogroup (session) `pid` belongs to. With
/// `sched_autogroup_enabled`, the kernel shares CPU between sessions first, so a
/// process's own nice only counts against its session mates: the Python workers call
/// setsid(), each is a session of its own.
pub fn set_autogroup_nice(pid: u32, nice: i32) -> std::io::Result<()> {
    let path = format!("/proc/{pid}/autogroup");
    if !std::path::Path::new(&path).exists() {
        return Ok(()); // kernel without autogroups: plain nice is all there is
    }
    std::fs::write(path, nice.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_figures_are_read() {
        let me = std::process::id();
        // Burn a little CPU so the count cannot be zero.
        let t = std::time::Instant::now();
        let mut x = 0u64;
        while t.elapsed() < Duration::from_millis(50) {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        assert!(x != 1);
        assert!(cpu_time(me).is_some());
        assert!(tree_cpu_time(me) >= cpu_time(me).unwrap_or_default());
        let rss = rss_kib(me).expect("VmRSS");
        assert!(rss > 0);
        assert!(peak_rss_kib(me).expect("VmHWM") >= rss);
    }

    #[test]
    fn tree_includes_children() {
        let child = std::process::Command::new("sh")
            .args([
                "-c",
                "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done; sleep 5",
            ])
            .spawn()
            .expect("sh");
        std::thread::sleep(Duration::from_millis(800));
        let own = cpu_time(std::process::id()).unwrap_or_default();
        let tree = tree_cpu_time(std::process::id());
        let child_cpu = cpu_time(child.id()).unwrap_or_default();
        let mut child = child;
        let _ = child.kill();
        let _ = child.wait();
        assert!(child_cpu > Duration::ZERO, "the child burnt no CPU?");
        assert!(tree >= own + child_cpu - Duration::from_millis(20));
    }
}
