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

/// The address ranges of every mapping (anonymous ones too), sorted by start.
pub fn parse_spans(text: &str) -> Vec<(u64, u64)> {
    let mut spans: Vec<(u64, u64)> = text
        .lines()
        .filter_map(|l| {
            let (s, e) = l.split_whitespace().next()?.split_once('-')?;
            Some((
                u64::from_str_radix(s, 16).ok()?,
                u64::from_str_radix(e, 16).ok()?,
            ))
        })
        .collect();
    spans.sort_unstable();
    spans
}

pub fn read_maps_text(proc_root: &Path, pid: u32) -> Result<String, ProfilerError> {
    let path = proc_root.join(pid.to_string()).join("maps");
    std::fs::read_to_string(&path).map_err(|source| ProfilerError::Io { path, source })
}

pub fn read_maps(proc_root: &Path, pid: u32) -> Result<Vec<Mapping>, ProfilerError> {
    Ok(parse_maps(&read_maps_text(proc_root, pid)?))
}

/// A loaded segment: file range and virtual address.
#[derive(Clone, Copy, Debug)]
struct Segment {
    file_off: u64,
    file_size: u64,
    vaddr: u64,
}

/// Symbols of one ELF file, sorted by address.
/// An object file, mapped read-only rather than read: only the pages the parse
/// touches (headers, symbol and string tables) become resident, and only while it
/// runs. Reading libpython or numpy's objects whole was tens of MB of heap.
pub(crate) fn map_file(path: &Path) -> std::io::Result<memmap2::Mmap> {
    let file = std::fs::File::open(path)?;
    // SAFETY: a private read-only mapping of an installed library or executable that
    // running processes map too; it is parsed at once and dropped. (Truncating such
    // a file under a running process is the one way to fault here, and it would
    // fault those processes first.)
    unsafe { memmap2::Mmap::map(&file) }
}

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
        let data = map_file(&real).map_err(|source| ProfilerError::Io {
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
        let mut symbols = defined_symbols(&file);
        // A stripped file (no .symtab, e.g. a distribution's python3) may have its
        // symbols in a separate debug file: found by build id or .gnu_debuglink.
        if file.symbol_table().is_none() {
            if let Some(debug) = debug_file(&file, path, root) {
                if let Ok(d) = object::File::parse(&*debug) {
                    symbols.extend(defined_symbols(&d));
                }
            }
        }
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

/// Defined function and data symbols of `file` (.symtab and .dynsym): (address, size, name).
fn defined_symbols(file: &object::File) -> Vec<(u64, u64, String)> {
    file.symbols()
        .chain(file.dynamic_symbols())
        .filter(|s| s.is_definition() && matches!(s.kind(), SymbolKind::Text | SymbolKind::Data))
        .filter_map(|s| Some((s.address(), s.size(), s.name().ok()?.to_string())))
        .filter(|(a, _, n)| *a != 0 && !n.is_empty())
        .collect()
}

/// The bytes of the separate debug file of `file` (at `path`, as the process sees it;
/// read through `root`), where GDB looks for it: `/usr/lib/debug/.build-id/xx/rest.debug`
/// by build id, else the `.gnu_debuglink` name next to the file, in its `.debug/`, or
/// under `/usr/lib/debug` + its directory. A debuglink candidate counts only when its
/// CRC-32 matches the link's.
fn debug_file(file: &object::File, path: &Path, root: Option<&Path>) -> Option<memmap2::Mmap> {
    let under_root = |p: PathBuf| match root {
        Some(r) => r.join(p.strip_prefix("/").unwrap_or(&p)),
        None => p,
    };
    if let Ok(Some(id)) = file.build_id() {
        if id.len() > 1 {
            let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
            let p = PathBuf::from(format!(
                "/usr/lib/debug/.build-id/{}/{}.debug",
                &hex[..2],
                &hex[2..]
            ));
            if let Ok(data) = map_file(&under_root(p)) {
                return Some(data);
            }
        }
    }
    let (name, crc) = file.gnu_debuglink().ok().flatten()?;
    let name = Path::new(std::str::from_utf8(name).ok()?);
    // A link is a file name; anything else (a path) is not followed.
    if name.components().count() != 1 {
        return None;
    }
    let dir = path.parent()?;
    let rel = dir.strip_prefix("/").unwrap_or(dir);
    [
        dir.join(name),
        dir.join(".debug").join(name),
        Path::new("/usr/lib/debug").join(rel).join(name),
    ]
    .into_iter()
    .filter_map(|p| map_file(&under_root(p)).ok())
    .find(|data| crc32(data) == crc)
}

/// CRC-32 (IEEE, as .gnu_debuglink uses). Bitwise: a debug file is checked once per
/// file the profiler resolves, not per sample, and this avoids a dependency for it.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
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
    fn spans_cover_every_mapping_in_order() {
        let text = "\
7f0000400000-7f0000401000 rw-p 00000000 00:00 0
55d0c0a00000-55d0c0a01000 r--p 00000000 08:01 123 /usr/bin/python3.11
garbage line
";
        assert_eq!(
            parse_spans(text),
            vec![
                (0x55d0c0a00000, 0x55d0c0a01000),
                (0x7f0000400000, 0x7f0000401000)
            ]
        );
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

    #[test]
    fn crc32_is_the_ieee_one() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    /// A stripped binary whose symbols are in a debug file named by .gnu_debuglink
    /// (built here with gcc and binutils, which `cargo xtask setup` installs).
    #[test]
    fn stripped_binaries_take_their_symbols_from_the_debuglink_file() {
        let dir = std::env::temp_dir().join(format!("snakepit-debuglink-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let src = dir.join("t.c");
        std::fs::write(
            &src,
            "static int __attribute__((noinline)) snakepit_static_fn(int x) { return x * 3; }\n\
             int main(int c, char **v) { (void)v; return snakepit_static_fn(c); }\n",
        )
        .expect("write source");
        let exe = dir.join("t");
        let debug = dir.join("t.debug");
        let run = |cmd: &str, args: &[&std::ffi::OsStr]| {
            let st = std::process::Command::new(cmd)
                .args(args)
                .status()
                .unwrap_or_else(|e| {
                    panic!("{cmd} is required (cargo xtask setup installs gcc and binutils): {e}")
                });
            assert!(st.success(), "{cmd} {args:?} failed");
        };
        run(
            "gcc",
            &[
                "-g".as_ref(),
                "-O1".as_ref(),
                "-o".as_ref(),
                exe.as_os_str(),
                src.as_os_str(),
            ],
        );
        run(
            "objcopy",
            &[
                "--only-keep-debug".as_ref(),
                exe.as_os_str(),
                debug.as_os_str(),
            ],
        );
        run("strip", &["--strip-all".as_ref(), exe.as_os_str()]);
        let link = format!("--add-gnu-debuglink={}", debug.display());
        run("objcopy", &[link.as_ref(), exe.as_os_str()]);

        let syms = ElfSymbols::load(&exe, None).expect("load stripped ELF");
        let addr = syms
            .symbol("snakepit_static_fn")
            .expect("the static function, from the debug file");
        assert_eq!(syms.lookup(addr), Some("snakepit_static_fn"));
        // A debug file that does not match the link's CRC is not used.
        std::fs::write(&debug, b"not the debug file").expect("overwrite");
        let syms = ElfSymbols::load(&exe, None).expect("load stripped ELF");
        assert_eq!(syms.symbol("snakepit_static_fn"), None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
