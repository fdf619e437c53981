//! Reads of another process's memory through /proc/PID/mem (pread: no ptrace stop).
use super::error::ProfilerError;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

pub struct ProcMem {
    pid: u32,
    file: File,
}

impl ProcMem {
    pub fn open(proc_root: &std::path::Path, pid: u32) -> Result<ProcMem, ProfilerError> {
        let path: PathBuf = proc_root.join(pid.to_string()).join("mem");
        let file = File::open(&path).map_err(|source| ProfilerError::Io { path, source })?;
        Ok(ProcMem { pid, file })
    }

    pub fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), ProfilerError> {
        self.file
            .read_exact_at(buf, addr)
            .map_err(|source| ProfilerError::Mem {
                pid: self.pid,
                addr,
                len: buf.len(),
                source,
            })
    }

    pub fn u64(&self, addr: u64) -> Result<u64, ProfilerError> {
        let mut b = [0u8; 8];
        self.read(addr, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    pub fn i64(&self, addr: u64) -> Result<i64, ProfilerError> {
        Ok(self.u64(addr)? as i64)
    }

    pub fn u32(&self, addr: u64) -> Result<u32, ProfilerError> {
        let mut b = [0u8; 4];
        self.read(addr, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    pub fn bytes(&self, addr: u64, len: usize) -> Result<Vec<u8>, ProfilerError> {
        let mut v = vec![0u8; len];
        self.read(addr, &mut v)?;
        Ok(v)
    }
}
