//! Native user frames -> (object file, symbol), through the process's mappings and the
//! files' ELF symbol tables (`.symtab` where present, else `.dynsym`).
use super::elf::{read_maps, ElfSymbols, Mapping};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NativeFrame {
    pub addr: u64,
    pub path: Arc<PathBuf>,
    pub symbol: Option<Arc<str>>,
}

impl NativeFrame {
    pub fn object(&self) -> &str {
        self.path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("?")
    }

    /// `symbol [object]`, or `object+0xoffset` when no symbol covers the address.
    pub fn name(&self) -> String {
        match &self.symbol {
            Some(s) => format!("{s} [{}]", self.object()),
            None => format!("[{}]", self.object()),
        }
    }
}

struct ProcMaps {
    maps: Vec<Mapping>,
    read_at: Instant,
}

/// Files whose symbols are kept at most (each may be tens of thousands of symbols).
const MAX_FILES: usize = 256;
/// A miss re-reads the maps at most this often (new libraries loaded by the worker).
const MAPS_REFRESH: Duration = Duration::from_secs(1);

pub struct Symbolizer {
    proc_root: PathBuf,
    procs: HashMap<u32, ProcMaps>,
    files: HashMap<PathBuf, Option<Arc<ElfSymbols>>>,
    /// (pid, address, caller) -> its frame: a worker's samples repeat the same few
    /// hundred return addresses, each resolved once (a mapping scan, a path join and
    /// a symbol search otherwise, for every frame of every sample).
    resolved: HashMap<(u32, u64, bool), NativeFrame>,
}

/// Resolved frames kept at most (cleared beyond: a new library or a JIT's addresses);
/// about 100 bytes each.
const MAX_RESOLVED: usize = 16_384;

impl Symbolizer {
    pub fn new(proc_root: &Path) -> Self {
        Symbolizer {
            proc_root: proc_root.to_path_buf(),
            procs: HashMap::new(),
            files: HashMap::new(),
            resolved: HashMap::new(),
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
        let find = |p: &ProcMaps| {
            p.maps
                .iter()
                .find(|m| m.exec && m.start <= addr && addr < m.end)
                .cloned()
        };
        if let Some(m) = self.procs.get(&pid).and_then(find) {
            return Some(m);
        }
        let stale = self
            .procs
            .get(&pid)
            .is_none_or(|p| p.read_at.elapsed() >= MAPS_REFRESH);
        if !stale {
            return None;
        }
        let maps = read_maps(&self.proc_root, pid).ok()?;
        let p = ProcMaps {
            maps,
            read_at: Instant::now(),
        };
        let m = find(&p);
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
        Some(NativeFrame {
            addr,
            path: Arc::new(m.path),
            symbol,
        })
    }
}
