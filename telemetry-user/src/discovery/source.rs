//! Reading a proc tree. The root is a path so tests can point at a fake tree in a
//! temporary directory; the agent uses `/proc`.

use std::io;
use std::path::{Path, PathBuf};

use super::parse::{self, FdTarget, ProcStat, SnakepitEnv, TcpEntry};
use super::DiscoveryError;

#[derive(Clone, Debug)]
pub struct ProcSource {
    root: PathBuf,
}

impl Default for ProcSource {
    fn default() -> Self {
        Self::system()
    }
}

fn io_err(path: &Path, source: io::Error) -> DiscoveryError {
    DiscoveryError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl ProcSource {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The host's `/proc`.
    pub fn system() -> Self {
        Self::new("/proc")
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn pid_path(&self, pid: u32, rest: &str) -> PathBuf {
        self.root.join(pid.to_string()).join(rest)
    }

    fn read(&self, pid: u32, rest: &str) -> Result<Vec<u8>, DiscoveryError> {
        let p = self.pid_path(pid, rest);
        std::fs::read(&p).map_err(|e| io_err(&p, e))
    }

    fn read_link(&self, pid: u32, rest: &str) -> Result<String, DiscoveryError> {
        let p = self.pid_path(pid, rest);
        let target = std::fs::read_link(&p).map_err(|e| io_err(&p, e))?;
        Ok(target.to_string_lossy().into_owned())
    }

    /// Every numeric entry of the root (processes, not threads).
    pub fn pids(&self) -> Result<Vec<u32>, DiscoveryError> {
        let rd = std::fs::read_dir(&self.root).map_err(|e| io_err(&self.root, e))?;
        let mut pids: Vec<u32> = rd
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
            .collect();
        pids.sort_unstable();
        Ok(pids)
    }

    pub fn stat(&self, pid: u32) -> Result<ProcStat, DiscoveryError> {
        let raw = self.read(pid, "stat")?;
        parse::parse_stat(&String::from_utf8_lossy(&raw))
    }

    pub fn cmdline(&self, pid: u32) -> Result<Vec<String>, DiscoveryError> {
        Ok(parse::parse_cmdline(&self.read(pid, "cmdline")?))
    }

    pub fn environ(&self, pid: u32) -> Result<SnakepitEnv, DiscoveryError> {
        Ok(parse::parse_environ(&self.read(pid, "environ")?))
    }

    /// The executable's path; unreadable (kernel threads, other users) is `None`.
    pub fn exe(&self, pid: u32) -> Option<String> {
        self.read_link(pid, "exe").ok()
    }

    /// Network namespace identity (`net:[4026531840]`), used to share one read of
    /// the tcp tables between processes; `None` when not readable (fake trees).
    pub fn netns(&self, pid: u32) -> Option<String> {
        self.read_link(pid, "ns/net").ok()
    }

    pub fn fd_target(&self, pid: u32, fd: u32) -> Result<FdTarget, DiscoveryError> {
        Ok(parse::parse_fd_link(
            &self.read_link(pid, &format!("fd/{fd}"))?,
        ))
    }

    /// Open flags of an fd (`fdinfo`), e.g. to tell a pipe's write end.
    pub fn fd_flags(&self, pid: u32, fd: u32) -> Result<u32, DiscoveryError> {
        let raw = self.read(pid, &format!("fdinfo/{fd}"))?;
        parse::parse_fdinfo_flags(&String::from_utf8_lossy(&raw)).ok_or_else(|| {
            DiscoveryError::Parse {
                what: "fdinfo",
                detail: format!("no flags for {pid}/{fd}"),
            }
        })
    }

    /// Sockets and pipes among the process's fds (other fds are left out). Fds that
    /// vanish while listing are skipped; a link we may not read (CAP_DAC_READ_SEARCH
    /// lists the directory, the links need CAP_SYS_PTRACE) fails the whole call, so
    /// it is counted and reported instead of looking like a process with no sockets.
    pub fn fds(&self, pid: u32) -> Result<Vec<(u32, FdTarget)>, DiscoveryError> {
        let dir = self.pid_path(pid, "fd");
        let rd = std::fs::read_dir(&dir).map_err(|e| io_err(&dir, e))?;
        let mut out = Vec::new();
        for entry in rd.filter_map(|e| e.ok()) {
            let Some(fd) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
                continue;
            };
            let link = match std::fs::read_link(entry.path()) {
                Ok(link) => link,
                Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                    return Err(io_err(&entry.path(), e));
                }
                Err(_) => continue,
            };
            let t = parse::parse_fd_link(&link.to_string_lossy());
            if !matches!(t, FdTarget::Other(_)) {
                out.push((fd, t));
            }
        }
        out.sort_unstable_by_key(|(fd, _)| *fd);
        Ok(out)
    }

    /// `net/tcp` and `net/tcp6` as seen from the process's network namespace. A
    /// missing tcp6 (IPv6 disabled) is not an error.
    pub fn tcp_table(&self, pid: u32) -> Result<Vec<TcpEntry>, DiscoveryError> {
        let mut out = parse::parse_net_tcp(&String::from_utf8_lossy(&self.read(pid, "net/tcp")?));
        if let Ok(raw) = self.read(pid, "net/tcp6") {
            out.extend(parse::parse_net_tcp(&String::from_utf8_lossy(&raw)));
        }
        Ok(out)
    }
}
