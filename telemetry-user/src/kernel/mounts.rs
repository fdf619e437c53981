//! tracefs and bpffs: attaching tracepoints needs the first, pinning the second;
//! a fresh machine may have neither mounted.

use std::{ffi::CString, path::Path};

use super::error::KernelError;

const TRACEFS: &str = "/sys/kernel/tracing";
const BPFFS: &str = "/sys/fs/bpf";

fn is_mounted(path: &str, fstype: &str) -> bool {
    std::fs::read_to_string("/proc/self/mounts")
        .map(|m| {
            m.lines().any(|l| {
                let mut f = l.split_whitespace();
                f.nth(1) == Some(path) && f.next() == Some(fstype)
            })
        })
        .unwrap_or(false)
}

fn mount(fstype: &'static str, path: &'static str) -> Result<(), KernelError> {
    let err = |source| KernelError::Mount {
        what: fstype,
        path,
        source,
    };
    let (src, dst) = match (CString::new(fstype), CString::new(path)) {
        (Ok(s), Ok(d)) => (s, d),
        _ => return Err(err(std::io::Error::from(std::io::ErrorKind::InvalidInput))),
    };
    // SAFETY: NUL-terminated strings that outlive the call; no data argument.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            src.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        // EBUSY: mounted meanwhile (by another agent or the test harness).
        if e.raw_os_error() != Some(libc::EBUSY) {
            return Err(err(e));
        }
    }
    Ok(())
}

/// Mounts tracefs (needed to attach tracepoints) and bpffs if missing. Idempotent.
pub fn ensure_mounts() -> Result<(), KernelError> {
    if !Path::new(TRACEFS).join("events").is_dir() && !is_mounted(TRACEFS, "tracefs") {
        mount("tracefs", TRACEFS)?;
    }
    if !is_mounted(BPFFS, "bpf") {
        // Nothing is pinned today; a failure here must not stop the agent.
        if let Err(e) = mount("bpf", BPFFS) {
            log::warn!("{e}");
        }
    }
    Ok(())
}
