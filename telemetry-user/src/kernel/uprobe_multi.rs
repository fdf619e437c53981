//! Multi-uprobe links (BPF_TRACE_UPROBE_MULTI, Linux 6.6) for the (de)serialization
//! programs, so the worker split can attach them for its recording windows only.
//!
//! Why: a uprobe costs the traced worker its trap (int3, the return trampoline, the
//! probe lookup), about 4-5 us per hit with the program returning at once, 10 hits per
//! call in the demo: the second largest cost of an attached call. A perf-event uprobe
//! cannot follow the windows: each detach waits for a grace period under the kernel's
//! global trace-event mutex (about 110 ms each, one after the other). A multi-uprobe
//! link removes its breakpoints at once on close and waits for one grace period
//! without that mutex, so the links of all workers go together.
//!
//! aya 0.14 can neither load a uprobe program with that expected attach type nor
//! create such a link, so this module loads a second copy of `serialize_enter` and
//! `serialize_exit` from the same object with aya-obj (relocated against the maps aya
//! created: both copies share every map), and creates links with bpf(BPF_LINK_CREATE).
use std::{
    collections::{HashMap, HashSet},
    ffi::CString,
    os::{
        fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd},
        unix::ffi::OsStrExt,
    },
    path::Path,
};

use aya::{maps::Map, Ebpf};
use aya_obj::generated::{
    bpf_attach_type::BPF_TRACE_UPROBE_MULTI, bpf_attr, bpf_cmd, bpf_insn, bpf_prog_info,
    bpf_prog_type::BPF_PROG_TYPE_KPROBE, BPF_F_UPROBE_MULTI_RETURN,
};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum MultiUprobeError {
    #[error("parsing the eBPF object: {0}")]
    Parse(#[from] aya_obj::ParseError),
    #[error("relocating the eBPF object: {0}")]
    Relocate(#[from] aya_obj::relocation::EbpfRelocationError),
    #[error("map {0} was not created by the loader")]
    MissingMap(String),
    #[error("program {0} is not in the eBPF object")]
    MissingProgram(&'static str),
    #[error("loading {name} for multi-uprobe links: {source}{log}")]
    Load {
        name: &'static str,
        source: std::io::Error,
        log: String,
    },
    #[error("path {0:?} has a NUL byte")]
    Path(std::path::PathBuf),
    #[error("multi-uprobe link on {path:?}: {source}")]
    Link {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// The two programs, loaded for multi-uprobe links.
pub(crate) struct MultiUprobePrograms {
    enter: OwnedFd,
    exit: OwnedFd,
    names: [&'static str; 2],
}

/// One function of an object to probe: its file offset and the cookie the programs read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct UprobeSite {
    pub offset: u64,
    pub cookie: u64,
}

impl MultiUprobePrograms {
    /// Loads `enter` and `exit` of `object` (the bytes `ebpf` was loaded from) with the
    /// multi-uprobe attach type. Must run before any map is taken out of `ebpf`.
    pub(crate) fn load(
        object: &[u8],
        ebpf: &Ebpf,
        enter: &'static str,
        exit: &'static str,
    ) -> Result<MultiUprobePrograms, MultiUprobeError> {
        let mut obj = aya_obj::Object::parse(object)?;
        let defs = obj.maps.clone();
        let mut maps: Vec<(&str, RawFd, &aya_obj::Map)> = Vec::with_capacity(defs.len());
        for (name, def) in &defs {
            let fd = ebpf
                .map(name)
                .and_then(map_fd)
                .ok_or_else(|| MultiUprobeError::MissingMap(name.clone()))?;
            maps.push((name.as_str(), fd, def));
        }
        let text_sections: HashSet<usize> = obj.functions.keys().map(|(s, _)| *s).collect();
        obj.relocate_maps(maps.into_iter(), &text_sections)?;
        obj.relocate_calls(&text_sections)?;
        Ok(MultiUprobePrograms {
            enter: load_one(&obj, enter)?,
            exit: load_one(&obj, exit)?,
            names: [enter, exit],
        })
    }

    /// (name, run time in ns, runs) of both programs (BPF_ENABLE_STATS must be on for
    /// the kernel to count them).
    pub(crate) fn run_stats(&self) -> Vec<(&'static str, u64, u64)> {
        [&self.enter, &self.exit]
            .into_iter()
            .zip(self.names)
            .filter_map(|(fd, name)| {
                let info = prog_info(fd)?;
                Some((name, info.run_time_ns, info.run_cnt))
            })
            .collect()
    }

    /// Attaches the entry (or, with `ret`, the return) program to `sites` of the
    /// object at `path`, in process `pid` only. Dropping the link detaches it.
    pub(crate) fn attach(
        &self,
        path: &Path,
        pid: u32,
        sites: &[UprobeSite],
        ret: bool,
    ) -> Result<OwnedFd, MultiUprobeError> {
        let c_path = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| MultiUprobeError::Path(path.to_path_buf()))?;
        let offsets: Vec<u64> = sites.iter().map(|s| s.offset).collect();
        let cookies: Vec<u64> = sites.iter().map(|s| s.cookie).collect();
        let prog = if ret { &self.exit } else { &self.enter };
        // SAFETY: an all-zero bpf_attr is the documented "unset" value of every field.
        let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
        // SAFETY: writes to the link_create member of the zeroed union.
        unsafe {
            let lc = &mut attr.link_create;
            lc.__bindgen_anon_1.prog_fd = prog.as_raw_fd() as u32;
            lc.attach_type = BPF_TRACE_UPROBE_MULTI as u32;
            let um = &mut lc.__bindgen_anon_3.uprobe_multi;
            um.path = c_path.as_ptr() as u64;
            um.offsets = offsets.as_ptr() as u64;
            um.cookies = cookies.as_ptr() as u64;
            um.cnt = sites.len() as u32;
            um.flags = if ret { BPF_F_UPROBE_MULTI_RETURN } else { 0 };
            um.pid = pid;
        }
        // SAFETY: `attr` and the buffers it points to outlive the call.
        sys_bpf(bpf_cmd::BPF_LINK_CREATE, &mut attr).map_err(|source| MultiUprobeError::Link {
            path: path.to_path_buf(),
            source,
        })
    }
}

/// The fd of an aya map (the variants this object uses).
fn map_fd(map: &Map) -> Option<RawFd> {
    let data = match map {
        Map::Array(d)
        | Map::PerCpuArray(d)
        | Map::HashMap(d)
        | Map::LruHashMap(d)
        | Map::PerCpuHashMap(d)
        | Map::PerCpuLruHashMap(d)
        | Map::RingBuf(d)
        | Map::PerfEventArray(d)
        | Map::StackTraceMap(d)
        | Map::Stack(d)
        | Map::Queue(d)
        | Map::Unsupported(d) => d,
        _ => return None,
    };
    Some(data.fd().as_fd().as_raw_fd())
}

/// Has the kernel verify program `name` of the relocated `obj`.
fn load_one(obj: &aya_obj::Object, name: &'static str) -> Result<OwnedFd, MultiUprobeError> {
    let prog = obj
        .programs
        .get(name)
        .ok_or(MultiUprobeError::MissingProgram(name))?;
    let function = obj
        .functions
        .get(&prog.function_key())
        .ok_or(MultiUprobeError::MissingProgram(name))?;
    let insns: &[bpf_insn] = &function.instructions;
    let mut log = vec![0u8; 64 * 1024];
    let mut prog_name = [0 as std::ffi::c_char; 16];
    for (dst, src) in prog_name.iter_mut().zip(name.bytes().take(15)) {
        *dst = src as std::ffi::c_char;
    }
    let load = |log_level: u32, log: &mut [u8]| {
        // SAFETY: an all-zero bpf_attr is the documented "unset" value of every field.
        let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
        // SAFETY: writes to the prog-load member of the zeroed union.
        unsafe {
            let p = &mut attr.__bindgen_anon_3;
            p.prog_type = BPF_PROG_TYPE_KPROBE as u32;
            p.expected_attach_type = BPF_TRACE_UPROBE_MULTI as u32;
            p.insn_cnt = insns.len() as u32;
            p.insns = insns.as_ptr() as u64;
            p.license = prog.license.as_ptr() as u64;
            p.prog_name = prog_name;
            if log_level > 0 {
                p.log_level = log_level;
                p.log_buf = log.as_mut_ptr() as u64;
                p.log_size = log.len() as u32;
            }
        }
        sys_bpf(bpf_cmd::BPF_PROG_LOAD, &mut attr)
    };
    match load(0, &mut log) {
        Ok(fd) => Ok(fd),
        Err(first) => {
            // Again with the verifier's log, for the error.
            let text = match load(1, &mut log) {
                Ok(_) => String::new(),
                Err(_) => {
                    let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
                    let text = String::from_utf8_lossy(&log[..end]);
                    let tail: Vec<&str> = text.lines().rev().take(5).collect();
                    format!(
                        " (verifier: {})",
                        tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
                    )
                }
            };
            Err(MultiUprobeError::Load {
                name,
                source: first,
                log: text,
            })
        }
    }
}

/// The kernel's info of the program at `fd`.
fn prog_info(fd: &OwnedFd) -> Option<bpf_prog_info> {
    // SAFETY: all-zero is a valid bpf_prog_info and bpf_attr.
    let mut info: bpf_prog_info = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    // Writes to a union's plain fields; `info` outlives the call below.
    attr.info.bpf_fd = fd.as_raw_fd() as u32;
    attr.info.info_len = std::mem::size_of::<bpf_prog_info>() as u32;
    attr.info.info = &mut info as *mut bpf_prog_info as u64;
    // SAFETY: `attr` is a valid bpf_attr of the size passed; the kernel writes at most
    // info_len bytes to `info`.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            bpf_cmd::BPF_OBJ_GET_INFO_BY_FD as libc::c_long,
            &mut attr as *mut bpf_attr,
            std::mem::size_of::<bpf_attr>(),
        )
    };
    (rc == 0).then_some(info)
}

/// bpf(2) for commands that return a new fd.
fn sys_bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> Result<OwnedFd, std::io::Error> {
    // SAFETY: `attr` is a valid bpf_attr of the size passed; the kernel reads at most
    // that many bytes and writes only fields of the command.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            attr as *mut bpf_attr,
            std::mem::size_of::<bpf_attr>(),
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: on success the command returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(rc as RawFd) })
}

/// Groups `(path, site)` pairs by path, in first-seen order.
pub(crate) fn by_path<'a>(
    sites: impl IntoIterator<Item = (&'a Path, UprobeSite)>,
) -> Vec<(&'a Path, Vec<UprobeSite>)> {
    let mut order: Vec<(&Path, Vec<UprobeSite>)> = Vec::new();
    let mut index: HashMap<&Path, usize> = HashMap::new();
    for (path, site) in sites {
        let i = *index.entry(path).or_insert_with(|| {
            order.push((path, Vec::new()));
            order.len() - 1
        });
        order[i].1.push(site);
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sites_are_grouped_per_object_in_order() {
        let a = Path::new("/a.so");
        let b = Path::new("/b.so");
        let s = |offset| UprobeSite { offset, cookie: 0 };
        let groups = by_path([(a, s(1)), (b, s(2)), (a, s(3))]);
        assert_eq!(groups, vec![(a, vec![s(1), s(3)]), (b, vec![s(2)])]);
    }
}
