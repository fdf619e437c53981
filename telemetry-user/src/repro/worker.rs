//! What a script needs of the worker that ran the call: its Python, its working
//! directory, its server script and `--adapter`. Read from /proc once per worker
//! pid, while the worker is alive (a killed worker's entry is gone by the time
//! its call's script is written).
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Workers remembered at most; the cache is cleared beyond (pids are reused anyway).
const MAX_WORKERS: usize = 4096;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct WorkerInfo {
    pub pid: u32,
    /// `/proc/PID/exe`: the interpreter that ran the worker.
    pub python: Option<String>,
    pub cwd: Option<String>,
    /// The worker's server script (`grpc_server.py`), absolute.
    pub script: Option<String>,
    /// `--adapter module.Class`.
    pub adapter: Option<String>,
}

impl WorkerInfo {
    pub fn from_cmdline(pid: u32, args: &[String], cwd: Option<&str>) -> WorkerInfo {
        let adapter = args
            .iter()
            .position(|a| a == "--adapter")
            .and_then(|i| args.get(i + 1).cloned())
            .or_else(|| {
                args.iter()
                    .find_map(|a| a.strip_prefix("--adapter=").map(str::to_string))
            });
        let script = args.iter().find(|a| a.ends_with(".py")).map(|s| {
            let p = Path::new(s);
            match cwd {
                Some(c) if p.is_relative() => Path::new(c).join(p).display().to_string(),
                _ => s.clone(),
            }
        });
        WorkerInfo {
            pid,
            python: None,
            cwd: cwd.map(str::to_string),
            script,
            adapter,
        }
    }
}

pub(super) struct WorkerCache {
    proc_root: PathBuf,
    by_pid: HashMap<u32, Arc<WorkerInfo>>,
}

impl WorkerCache {
    pub(super) fn new(proc_root: PathBuf) -> Self {
        WorkerCache {
            proc_root,
            by_pid: HashMap::new(),
        }
    }

    /// Reads the worker's /proc entries the first time its pid is seen.
    pub(super) fn note(&mut self, pid: u32) {
        if pid == 0 || self.by_pid.contains_key(&pid) {
            return;
        }
        if self.by_pid.len() >= MAX_WORKERS {
            self.by_pid.clear();
        }
        let info = self.read(pid);
        self.by_pid.insert(pid, Arc::new(info));
    }

    pub(super) fn get(&mut self, pid: u32) -> Arc<WorkerInfo> {
        self.note(pid);
        self.by_pid
            .get(&pid)
            .cloned()
            .unwrap_or_else(|| Arc::new(WorkerInfo::default()))
    }

    fn read(&self, pid: u32) -> WorkerInfo {
        let dir = self.proc_root.join(pid.to_string());
        let args: Vec<String> = std::fs::read(dir.join("cmdline"))
            .map(|b| {
                b.split(|c| *c == 0)
                    .filter(|a| !a.is_empty())
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect()
            })
            .unwrap_or_default();
        let link = |name: &str| {
            std::fs::read_link(dir.join(name))
                .ok()
                .map(|p| p.display().to_string())
        };
        let cwd = link("cwd");
        let mut info = WorkerInfo::from_cmdline(pid, &args, cwd.as_deref());
        // argv[0] as started (a venv's python symlink) runs with the venv's packages;
        // /proc/PID/exe would name the base interpreter.
        info.python = args
            .first()
            .filter(|a| a.contains("python"))
            .map(
                |a| match (&cwd, Path::new(a).is_relative() && a.contains('/')) {
                    (Some(c), true) => Path::new(c).join(a).display().to_string(),
                    _ => a.clone(),
                },
            )
            .or_else(|| link("exe"));
        info
    }
}
