//! Native user frames -> (object file, symbol), through the process's mappings and the
//! files' ELF symbol tables (`.symtab` where present, else `.dynsym`).
use super::elf::{parse_maps, parse_spans, read_maps_text, ElfSymbols, Mapping};
use super::stacks::{native_library, Frame};
use crate::fast_hash::FastMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NativeFrame {
    pub addr: u64,
    pub path: Arc<PathBuf>,
    pub symbol: Option<Arc<str>>,
    /// Its stack frame and library, made once with the resolution (two strings per
    /// native frame of every sample before).
    pub frame: Arc<Frame>,
    pub library: Arc<str>,
}

impl NativeFrame {
    pub fn new(addr: u64, path: Arc<PathBuf>, symbol: Option<Arc<str>>) -> Self {
        let library: Arc<str> = native_library(&path).into();
        let object = path.file_name().and_then(|n| n.to_str()).unwrap_or("?");
        // `symbol [object]`, or `[object]` when no symbol covers the address.
        let name = match &symbol {
            Some(s) => format!("{s} [{object}]"),
            None => format!("[{object}]"),
        };
        let frame = Arc::new(Frame::Native {
            name,
            library: library.to_string(),
        });
        NativeFrame {
            addr,
            path,
            symbol,
            frame,
            library,
        }
    }
}

struct ProcMaps {
    maps: Vec<Mapping>,
    /// Every mapping's range, anonymous ones too, sorted.
    spans: Vec<(u64, u64)>,
    read_at: Instant,
    /// The process's code size when the maps were read (see [`code_kb`]).
    code_kb: Option<u64>,
}

impl ProcMaps {
    fn exec_mapping(&self, addr: u64) -> Option<&Mapping> {
        self.maps
            .iter()
            .find(|m| m.exec && m.start <= addr && addr < m.end)
    }

    fn in_some_mapping(&self, addr: u64) -> bool {
        let i = self.spans.partition_point(|&(start, _)| start <= addr);
        i > 0 && addr < self.spans[i - 1].1
    }
}

/// Files whose symbols are kept at most (each may be tens of thousands of symbols).
const MAX_FILES: usize = 256;
/// An address in no mapping re-reads the maps at most this often: the worker may have
/// loaded a library since (numpy at its first use).
const MAPS_REFRESH: Duration = Duration::from_secs(1);
/// An address inside a mapping that is not code (heap, stack, data): what unwinding
/// without frame pointers yields for most of its bad frames, so a re-read would find
/// the same; only a remap can change it, so it re-reads rarely. (A busy gRPC worker's
/// maps take about 1 ms to read, and such addresses come with nearly every sample.)
const MAPS_REFRESH_MAPPED: Duration = Duration::from_secs(30);
/// Below this no code is mapped (`vm.mmap_min_addr` is 64 KiB by default).
const LOWEST_CODE: u64 = 0x1_0000;
/// Above this is not user space on x86_64 (47-bit) and arm64 (48-bit) processes
/// without 5-level page tables.
const USER_SPACE_END: u64 = 1 << 48;

pub struct Symbolizer {
    proc_root: PathBuf,
    procs: FastMap<u32, ProcMaps>,
    files: FastMap<PathBuf, Option<Arc<ElfSymbols>>>,
    /// (pid, address, caller) -> its frame: a worker's samples repeat the same few
    /// hundred return addresses, each resolved once (a mapping scan, a path join and
    /// a symbol search otherwise, for every frame of every sample). (foldhash: std's
    /// SipHash was most of a cache hit.)
    resolved: FastMap<(u32, u64, bool), NativeFrame>,
}

/// Resolved frames kept at most (cleared beyond: a new library or a JIT's addresses);
/// about 100 bytes each.
const MAX_RESOLVED: usize = 16_384;

impl Symbolizer {
    pub fn new(proc_root: &Path) -> Self {
        Symbolizer {
            proc_root: proc_root.to_path_buf(),
            procs: FastMap::default(),
            files: FastMap::default(),
            resolved: FastMap::default(),
        }
    }

    /// Native frames resolved and kept (for the profiler's stats).
    pub fn cached(&self) -> usize {
        self.resolved.len()
    }

    pub fn forget(&mut self, pid: u32) {
        self.procs.remove(&pid);
        self.resolved.retain(|(p, _, _), _| *p != pid);
    }

    fn mapping(&mut self, pid: u32, addr: u64) -> Option<Mapping> {
        if let Some(p) = self.procs.get(&pid) {
            if let Some(m) = p.exec_mapping(addr) {
                return Some(m.clone());
            }
            if !maps_worth_rereading(p, addr) {
                return None;
            }
        }
        // Nothing new is mapped as code while its size stays: a status read (tens of
        // us) instead of the maps (about 1 ms for a busy gRPC worker, a few times a
        // second at saturation, for the bad frames of unwinding without frame pointers).
        let code_kb = code_kb(&self.proc_root, pid);
        if let Some(p) = self.procs.get_mut(&pid) {
            if code_kb.is_some() && p.code_kb == code_kb {
                p.read_at = Instant::now();
                return None;
            }
        }
        let text = read_maps_text(&self.proc_root, pid).ok()?;
        let p = ProcMaps {
            maps: parse_maps(&text),
            spans: parse_spans(&text),
            read_at: Instant::now(),
            code_kb,
        };
        let m = p.exec_mapping(addr).cloned();
        self.procs.insert(pid, p);
        m
    }

    /// `caller`: the address is a return address (every frame but the innermost), so
    /// the call instruction is the byte before it.
    pub fn resolve(&mut self, pid: u32, addr: u64, caller: bool) -> Option<NativeFrame> {
        if let Some(f) = self.resolved.get(&(pid, addr, caller)) {
            return Some(f.clone());
        }
        let frame = self.resolve_uncached(pid, addr, caller)?;
        if self.resolved.len() >= MAX_RESOLVED {
            self.resolved.clear();
        }
        self.resolved.insert((pid, addr, caller), frame.clone());
        Some(frame)
    }

    fn resolve_uncached(&mut self, pid: u32, addr: u64, caller: bool) -> Option<NativeFrame> {
        let m = self.mapping(pid, addr)?;
        if self.files.len() >= MAX_FILES && !self.files.contains_key(&m.path) {
            self.files.clear();
        }
        let root = self.proc_root.join(pid.to_string()).join("root");
        let syms = self
            .files
            .entry(m.path.clone())
            .or_insert_with(|| ElfSymbols::load(&m.path, Some(&root)).ok().map(Arc::new))
            .clone();
        let symbol = syms.as_ref().and_then(|s| {
            let bias = s.bias(&m)?;
            let lookup = addr.wrapping_sub(bias).wrapping_sub(u64::from(caller));
            s.lookup(lookup).map(Arc::from)
        });
        Some(NativeFrame::new(addr, Arc::new(m.path), symbol))
    }
}

/// The size of the process's code mappings, kB (`VmExe` + `VmLib` of its status: the
/// kernel's count of executable, non-writable pages); a library loaded or a JIT's
/// code mapped changes it.
fn code_kb(proc_root: &Path, pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(proc_root.join(pid.to_string()).join("status")).ok()?;
    parse_code_kb(&text)
}

fn parse_code_kb(status: &str) -> Option<u64> {
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find_map(|l| l.strip_prefix(name))?;
        line.trim().strip_suffix("kB")?.trim().parse().ok()
    };
    Some(field("VmExe:")? + field("VmLib:")?)
}

/// Whether `addr`, in no code mapping of `p`, may be code mapped since `p` was read.
fn maps_worth_rereading(p: &ProcMaps, addr: u64) -> bool {
    if !(LOWEST_CODE..USER_SPACE_END).contains(&addr) {
        return false;
    }
    let wait = if p.in_some_mapping(addr) {
        MAPS_REFRESH_MAPPED
    } else {
        MAPS_REFRESH
    };
    p.read_at.elapsed() >= wait
}

#[cfg(test)]
mod tests {
    use super::*;

    fn maps_read(ago: Duration) -> ProcMaps {
        let text = "\
7f0000000000-7f0000200000 r-xp 00100000 08:01 456 /lib/libpython3.11.so.1.0
7f0000400000-7f0000500000 rw-p 00000000 00:00 0
";
        ProcMaps {
            maps: parse_maps(text),
            spans: parse_spans(text),
            read_at: Instant::now() - ago,
            code_kb: Some(10),
        }
    }

    #[test]
    fn code_size_is_read_from_the_status() {
        let status = "Name:\tpython3\nVmPeak:\t  500 kB\nVmExe:\t    8 kB\nVmLib:\t 4096 kB\n";
        assert_eq!(parse_code_kb(status), Some(4104));
        assert_eq!(parse_code_kb("Name:\tkthreadd\n"), None);
        assert_eq!(parse_code_kb("VmExe:\t x kB\nVmLib:\t 1 kB\n"), None);
    }

    /// An address in no mapping re-reads the maps only when the process's code size
    /// moved since they were read.
    #[test]
    fn maps_are_reread_only_when_code_was_mapped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let proc_dir = dir.path().join("7");
        std::fs::create_dir_all(&proc_dir).expect("mkdir");
        let lib = "7f0000000000-7f0000200000 r-xp 00100000 08:01 456 /lib/libpython3.11.so.1.0\n";
        let numpy = "7f0000600000-7f0000700000 r-xp 00000000 08:01 457 /lib/libnumpy.so\n";
        let status = |kb: u64| format!("VmExe:\t 0 kB\nVmLib:\t {kb} kB\n");
        std::fs::write(proc_dir.join("maps"), lib).expect("maps");
        std::fs::write(proc_dir.join("status"), status(2048)).expect("status");
        let mut s = Symbolizer::new(dir.path());
        let in_numpy = 0x7f00_0060_1000;
        assert!(s.mapping(7, in_numpy).is_none());
        // numpy is mapped but the code size says nothing moved (a stale maps file
        // stands in for it): not re-read.
        std::fs::write(proc_dir.join("maps"), format!("{lib}{numpy}")).expect("maps");
        s.procs.get_mut(&7).expect("read").read_at -= MAPS_REFRESH;
        assert!(s.mapping(7, in_numpy).is_none());
        // The code size moved: re-read, found.
        std::fs::write(proc_dir.join("status"), status(3072)).expect("status");
        s.procs.get_mut(&7).expect("read").read_at -= MAPS_REFRESH;
        assert!(s.mapping(7, in_numpy).is_some());
    }

    #[test]
    fn only_an_address_in_no_mapping_rereads_soon() {
        let fresh = maps_read(Duration::ZERO);
        let old = maps_read(MAPS_REFRESH);
        let unmapped = 0x7f00_0060_0000;
        let heap = 0x7f00_0040_1000;
        assert!(fresh.exec_mapping(0x7f00_0000_1000).is_some());
        assert!(!maps_worth_rereading(&fresh, unmapped));
        assert!(maps_worth_rereading(&old, unmapped));
        // A pointer into data, read as a return address: the maps would say the same.
        assert!(!maps_worth_rereading(&old, heap));
        assert!(maps_worth_rereading(&maps_read(MAPS_REFRESH_MAPPED), heap));
        // Never code: small integers and kernel-looking values.
        assert!(!maps_worth_rereading(&old, 42));
        assert!(!maps_worth_rereading(&old, 0xffff_8000_0000_0000));
    }
}
