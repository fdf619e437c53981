//! Process mappings (/proc/PID/maps) and ELF symbol tables (`object`), for the
//! interpreter's globals and for native frames.
use super::error::ProfilerError;
use object::{Object, ObjectSegment, ObjectSymbol, SymbolKind};
use std::path::{Path, PathBuf};

/// One file-backed mapping of a process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    pub offset: u64,
    pub exec: bool,
    /// The path as the process sees it.
    pub path: PathBuf,
}

/// Parses /proc/PID/maps text; anonymous and pseudo mappings ([vdso], ...) are left out.
pub fn parse_maps(text: &str) -> Vec<Mapping> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let range = f.next()?;
            let perms = f.next()?;
            let offset = u64::from_str_radix(f.next()?, 16).ok()?;
            let _dev = f.next()?;
            let _inode = f.next()?;
            let path = f.collect::<Vec<_>>().join(" ");
            if !path.starts_with('/') {
                return None;
            }
            let (s, e) = range.split_once('-')?;
            Some(Mapping {
                start: u64::from_str_radix(s, 16).ok()?,
                end: u64::from_str_radix(e, 16).ok()?,
                offset,
                exec: perms.as_bytes().get(2) == Some(&b'x'),
                path: PathBuf::from(path.trim_end_matches(" (deleted)")),
            })
        })
        .collect()
}

pub fn read_maps(proc_root: &Path, pid: u32) -> Result<Vec<Mapping>, ProfilerError> {
    let path = proc_root.join(pid.to_string()).join("maps");
    let text =
        std::fs::read_to_string(&path).map_err(|source| ProfilerError::Io { path, source })?;
    Ok(parse_maps(&text))
}

/// A loaded segment: file range and virtual address.
#[derive(Clone, Copy, Debug)]
struct Segment {
    file_off: u64,
    file_size: u64,
    vaddr: u64,
}

/// Symbols of one ELF file, sorted by address.
pub struct ElfSymbols {
    pub path: PathBuf,
    segments: Vec<Segment>,
    /// (address, size, name), sorted by address.
    symbols: Vec<(u64, u64, String)>,
}

impl ElfSymbols {
    /// `path` is read through `root` (the process's /proc/PID/root) when given.
    pub fn load(path: &Path, root: Option<&Path>) -> Result<ElfSymbols, ProfilerError> {
        let real = match root {
            Some(r) => r.join(path.strip_prefix("/").unwrap_or(path)),
            None => path.to_path_buf(),
        };
        let data = std::fs::read(&real).map_err(|source| ProfilerError::Io {
            path: real.clone(),
            source,
        })?;
        let elf_err = |reason: String| ProfilerError::Elf {
            path: path.to_path_buf(),
            reason,
        };
        let file = object::File::parse(&*data).map_err(|e| elf_err(e.to_string()))?;
        let segments = file
            .segments()
            .map(|s| {
                let (file_off, file_size) = s.file_range();
                Segment {
                    file_off,
                    file_size,
                    vaddr: s.address(),
                }
            })
            .collect();
        let mut symbols: Vec<(u64, u64, String)> = file
            .symbols()
            .chain(file.dynamic_symbols())
            .filter(|s| {
                s.is_definition() && matches!(s.kind(), SymbolKind::Text | SymbolKind::Data)
            })
            .filter_map(|s| Some((s.address(), s.size(), s.name().ok()?.to_string())))
            .filter(|(a, _, n)| *a != 0 && !n.is_empty())
            .collect();
        symbols.sort();
        symbols.dedup_by(|a, b| a.0 == b.0 && a.2 == b.2);
        Ok(ElfSymbols {
            path: path.to_path_buf(),
            segments,
            symbols,
        })
    }

    /// Address of a symbol by name (file-relative, before the load bias).
    pub fn symbol(&self, name: &str) -> Option<u64> {
        self.symbols
            .iter()
            .find(|(_, _, n)| n == name)
            .map(|(a, _, _)| *a)
    }

    /// The function containing file-relative address `svma`: its name, if a symbol
    /// covers it (a sized symbol's range, or the nearest one below when unsized).
    pub fn lookup(&self, svma: u64) -> Option<&str> {
        let i = self.symbols.partition_point(|(a, _, _)| *a <= svma);
        let (a, size, name) = self.symbols.get(i.checked_sub(1)?)?;
        (*size == 0 || svma < a + size).then_some(name.as_str())
    }

    /// Load bias of this file in a process, from one of its mappings: runtime address =
    /// file address + bias.
    pub fn bias(&self, m: &Mapping) -> Option<u64> {
        let seg = self.segments.iter().find(|s| {
            m.offset >= s.file_off & !0xfff && m.offset < s.file_off + s.file_size.max(1)
        })?;
        let va_at_start = seg.vaddr.wrapping_add(m.offset).wrapping_sub(seg.file_off);
        Some(m.start.wrapping_sub(va_at_start))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_keep_file_mappings_only() {
        let text = "\
55d0c0a00000-55d0c0a01000 r--p 00000000 08:01 123 /usr/bin/python3.11
7f0000000000-7f0000200000 r-xp 00100000 08:01 456 /lib/libpython3.11.so.1.0
7f0000400000-7f0000401000 rw-p 00000000 00:00 0
7ffd00000000-7ffd00002000 r-xp 00000000 00:00 0 [vdso]
7f0000500000-7f0000501000 r-xp 00000000 08:01 789 /tmp/a b.so (deleted)
";
        let m = parse_maps(text);
        assert_eq!(m.len(), 3);
        assert!(!m[0].exec);
        assert!(m[1].exec);
        assert_eq!(m[1].offset, 0x100000);
        assert_eq!(m[2].path, PathBuf::from("/tmp/a b.so"));
    }

    #[test]
    fn own_binary_symbols_resolve() {
        // The test binary itself: a symbol's address maps back to its name.
        let exe = std::env::current_exe().expect("current exe");
        let syms = ElfSymbols::load(&exe, None).expect("load own ELF");
        let (addr, _, name) = syms
            .symbols
            .iter()
            .find(|(_, s, _)| *s > 0)
            .cloned()
            .expect("a sized symbol");
        assert_eq!(syms.lookup(addr), Some(name.as_str()));
        assert_eq!(syms.symbol(&name), Some(addr));
    }
}
