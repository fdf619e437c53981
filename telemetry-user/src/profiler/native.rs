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
    /// No re-read before this (a miss waits for it).
    next_read: Instant,
    /// Wait after the next fruitless re-read.
    backoff: Duration,
}

/// Files whose symbols are kept at most (each may be tens of thousands of symbols).
const MAX_FILES: usize = 256;
/// A miss re-reads the maps at most this often (new libraries loaded by the worker)...
const MAPS_REFRESH: Duration = Duration::from_secs(1);
/// ...and, while re-reads find nothing new for the address missed, half as often each
/// time, down to this. Unwinding without frame pointers yields return addresses in
/// no mapping at all: re-reading a busy worker's maps for them each second was 3 %
/// of the agent's CPU at saturation (about 1 ms per read).
const MAPS_REFRESH_MAX: Duration = Duration::from_secs(60);

pub struct Symbolizer {
    proc_root: PathBuf,
    procs: HashMap<u32, ProcMaps>,
    files: HashMap<PathBuf, Option<Arc<ElfSymbols>>>,
    /// (pid, address, caller) -> its frame: a worker's samples repeat the same few
    /// hundred return addresses, each resolved once (a mapping scan, a path join and
    /// a symbol search otherwise, for every frame of every sample).
    resolved: HashMap<(u32, u64, bool), NativeFrame>,
    maps_reads: u64,
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
            maps_reads: 0,
        }
    }

    /// /proc/PID/maps reads so far.
    pub fn maps_reads(&self) -> u64 {
        self.maps_reads
    }

    /// Native frames resolved and kept (for the profiler's stats).
    pub fn cached(&self) -> usize {
        self.resolved.len()
    }

    pub fn forget(&mut self, pid: u32) {
        self.procs.remove(&pid);
        self.resolved.retain(|(p, _, _), _| *p != pid);
    }

    fn mapping(&mut self, pid: u32, addr: u64, now: Instant) -> Option<Mapping> {
        let find = |maps: &[Mapping]| {
            maps.iter()
                .find(|m| m.exec && m.start <= addr && addr < m.end)
                .cloned()
        };
        let backoff = match self.procs.get(&pid) {
            Some(p) => {
                if let Some(m) = find(&p.maps) {
                    return Some(m);
                }
                if now < p.next_read {
                    return None;
                }
                p.backoff
            }
            None => MAPS_REFRESH,
        };
        let maps = read_maps(&self.proc_root, pid).ok()?;
        self.maps_reads += 1;
        let m = find(&maps);
        // Found: the worker loaded something new, later misses may be more of it.
        let backoff = if m.is_some() { MAPS_REFRESH } else { backoff };
        self.procs.insert(
            pid,
            ProcMaps {
                maps,
                next_read: now + backoff,
                backoff: (backoff * 2).min(MAPS_REFRESH_MAX),
            },
        );
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
        let m = self.mapping(pid, addr, Instant::now())?;
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

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "00400000-00401000 r-xp 00000000 08:01 42 /usr/bin/worker\n";

    fn proc_with_maps(text: &str) -> tempfile::TempDir {
        let root = tempfile::tempdir().expect("tmp");
        std::fs::create_dir_all(root.path().join("7")).expect("pid dir");
        std::fs::write(root.path().join("7/maps"), text).expect("maps");
        root
    }

    #[test]
    fn misses_reread_the_maps_less_often_while_nothing_new_turns_up() {
        let root = proc_with_maps(MAPS);
        let mut s = Symbolizer::new(root.path());
        let t0 = Instant::now();
        let at = |n: u64| t0 + Duration::from_millis(n);
        assert!(s.mapping(7, 0x0040_0010, t0).is_some(), "in the mapping");
        assert_eq!(s.maps_reads(), 1);
        // A stray address: re-read after 1 s, then 2 s, then 4 s...
        assert!(s.mapping(7, 0xdead_0000, at(10)).is_none());
        assert_eq!(s.maps_reads(), 1, "read 10 ms ago");
        assert!(s.mapping(7, 0xdead_0000, at(1_000)).is_none());
        assert_eq!(s.maps_reads(), 2);
        assert!(s.mapping(7, 0xdead_0000, at(2_500)).is_none());
        assert_eq!(s.maps_reads(), 2, "the next re-read waits 2 s");
        assert!(s.mapping(7, 0xdead_0000, at(3_000)).is_none());
        assert_eq!(s.maps_reads(), 3);
        // The worker loads a library there: found at the next re-read (4 s on)...
        std::fs::write(
            root.path().join("7/maps"),
            format!("{MAPS}dead0000-dead1000 r-xp 00000000 08:01 43 /usr/lib/libnew.so\n"),
        )
        .expect("maps");
        assert!(s.mapping(7, 0xdead_0000, at(6_000)).is_none());
        assert!(s.mapping(7, 0xdead_0000, at(7_000)).is_some());
        assert_eq!(s.maps_reads(), 4);
        // ...and the wait is 1 s again.
        assert!(s.mapping(7, 0xbeef_0000, at(7_500)).is_none());
        assert_eq!(s.maps_reads(), 4);
        assert!(s.mapping(7, 0xbeef_0000, at(8_000)).is_none());
        assert_eq!(s.maps_reads(), 5);
    }
}
