//! What to probe inside a worker, from what it has mapped (/proc/PID/maps): protobuf's
//! upb extension (`google/_upb/_message*.so`) and orjson, resolved by symbol (the upb
//! bindings are local `.symtab` symbols of an unstripped object); and the address range
//! of the interpreter's `_PyRuntime` (libpython or the python executable), inside which
//! the GIL's mutex and condition variable lie: a futex wait there is a GIL wait.
use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use object::{Object, ObjectSection, ObjectSegment, ObjectSymbol};

use super::timeline::ProcessWaits;
use crate::kernel::{SerializeFn, SerializeTarget, SizeFrom};

/// Entry points tried in order per function: the Python bindings first (what a
/// worker's own timing around `FromString`/`SerializeToString` measures), then upb's
/// core (older or differently built wheels).
const PROTOBUF_DECODE: &[(&str, SizeFrom)] = &[
    ("PyUpb_Message_MergeFromString", SizeFrom::ArgObject),
    ("upb_Decode", SizeFrom::ArgValue),
];
const PROTOBUF_ENCODE: &[(&str, SizeFrom)] =
    &[("PyUpb_Message_SerializeInternal", SizeFrom::RetObject)];
/// The class method a gRPC stub's request deserializer is (`Message.FromString`): it
/// builds the message, then calls `MergeFromString`. Building it is part of the
/// worker's decode (mostly a few us, at times 0.2 ms: new arena, object cache), so it
/// is probed too, as an outer entry point whose window replaces the inner one.
const PROTOBUF_DECODE_OUTER: (&str, SizeFrom) = ("PyUpb_Message_FromString", SizeFrom::ArgObject);
const JSON_DECODE: &[(&str, SizeFrom)] = &[("loads", SizeFrom::ArgObject)];
const JSON_ENCODE: &[(&str, SizeFrom)] = &[("dumps", SizeFrom::RetObject)];
/// The stdlib json C accelerator (`_json`): the scanner that parses a document and the
/// encoder that renders one (json.loads / json.dumps spend nearly all their time
/// there). Only where `_json` is a shared object with its symbols (e.g. pyenv builds;
/// Debian builds it into a stripped python3).
const STDLIB_JSON_DECODE: &[(&str, SizeFrom)] = &[("scanner_call", SizeFrom::ArgTupleFirst)];
const STDLIB_JSON_ENCODE: &[(&str, SizeFrom)] = &[("encoder_call", SizeFrom::None)];

/// What the agent will probe in one worker, and what it could not.
#[derive(Clone, Debug, Default)]
pub struct WorkerProbePlan {
    pub targets: Vec<SerializeTarget>,
    pub waits: ProcessWaits,
    /// Why a format or the GIL is not covered, one line each.
    pub missing: Vec<String>,
    /// The interpreter object that holds `_PyRuntime`.
    pub interpreter: Option<PathBuf>,
    /// Nothing is left to find later: the GIL, upb's two functions and orjson's two.
    /// The stdlib json does not complete a plan: a worker imports it long before
    /// orjson (Snakepit's server does, then its adapters), and a plan that stopped
    /// there would never probe the orjson the worker actually uses.
    pub complete: bool,
}

/// A mapped file: its lowest address and file offset 0's mapping start.
#[derive(Clone, Debug)]
struct Mapped {
    base: u64,
}

fn mapped_files(maps: &str) -> BTreeMap<String, Mapped> {
    let mut out: BTreeMap<String, Mapped> = BTreeMap::new();
    for line in maps.lines() {
        let mut f = line.split_whitespace();
        let (Some(range), _perms, Some(offset), _dev, _inode, Some(path)) =
            (f.next(), f.next(), f.next(), f.next(), f.next(), f.next())
        else {
            continue;
        };
        if !path.starts_with('/') {
            continue;
        }
        let start = range
            .split('-')
            .next()
            .and_then(|s| u64::from_str_radix(s, 16).ok());
        let offset = u64::from_str_radix(offset, 16).ok();
        if let (Some(start), Some(0)) = (start, offset) {
            out.entry(path.to_string())
                .or_insert(Mapped { base: start });
        }
    }
    out
}

/// The path through which the agent opens a worker's file (its mount namespace).
fn host_path(proc_root: &Path, pid: u32, path: &str) -> PathBuf {
    proc_root
        .join(pid.to_string())
        .join("root")
        .join(path.trim_start_matches('/'))
}

/// A symbol of an object: its address, size and, when it lies in a section with file
/// contents, its offset in the file (what multi-uprobe links take).
#[derive(Clone, Copy, Debug)]
struct Sym {
    address: u64,
    size: u64,
    file_offset: Option<u64>,
}

/// Symbol name -> symbol.
type SymbolTable = BTreeMap<String, Sym>;

/// The `wanted` symbols of the object at `path`, and its first segment's page address.
fn symbols(path: &Path, wanted: &[&str]) -> std::io::Result<(SymbolTable, u64)> {
    // Every worker of a deployment maps the same objects (libpython is ~25 MB): read and
    // parse each file once, keyed by its identity, not per worker and plan.
    use std::os::unix::fs::MetadataExt;
    type Key = (u64, u64, u64, i64, String);
    static CACHE: std::sync::Mutex<Option<std::collections::HashMap<Key, (SymbolTable, u64)>>> =
        std::sync::Mutex::new(None);
    let meta = std::fs::metadata(path)?;
    let key: Key = (
        meta.dev(),
        meta.ino(),
        meta.len(),
        meta.mtime(),
        wanted.join(","),
    );
    if let Ok(cache) = CACHE.lock() {
        if let Some(hit) = cache.as_ref().and_then(|c| c.get(&key)) {
            return Ok(hit.clone());
        }
    }
    let parsed = parse_symbols(path, wanted)?;
    if let Ok(mut cache) = CACHE.lock() {
        let c = cache.get_or_insert_with(Default::default);
        // Bounded: a deployment maps a handful of such objects.
        if c.len() >= 256 {
            c.clear();
        }
        c.insert(key, parsed.clone());
    }
    Ok(parsed)
}

fn parse_symbols(path: &Path, wanted: &[&str]) -> std::io::Result<(SymbolTable, u64)> {
    let data = crate::profiler::elf::map_file(path)?;
    let file = object::File::parse(&*data)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    let mut out = BTreeMap::new();
    for sym in file.symbols().chain(file.dynamic_symbols()) {
        if let Ok(name) = sym.name() {
            if wanted.contains(&name) && sym.address() != 0 {
                let file_offset = sym
                    .section_index()
                    .and_then(|i| file.section_by_index(i).ok())
                    .and_then(|sec| {
                        let (start, _) = sec.file_range()?;
                        Some(sym.address().checked_sub(sec.address())? + start)
                    });
                out.entry(name.to_string()).or_insert(Sym {
                    address: sym.address(),
                    size: sym.size(),
                    file_offset,
                });
            }
        }
    }
    // Load bias: mapping of offset 0 minus the first segment's page-aligned address.
    let first_vaddr = file.segments().map(|s| s.address()).min().unwrap_or(0) & !0xfff;
    Ok((out, first_vaddr))
}

fn pick(
    host: &Path,
    function: SerializeFn,
    candidates: &[(&str, SizeFrom)],
    found: &SymbolTable,
) -> Option<SerializeTarget> {
    let (name, size, sym) = candidates
        .iter()
        .find_map(|(n, size)| found.get(*n).map(|sym| (*n, size, sym)))?;
    let (enter_size, exit_size) = match size {
        SizeFrom::RetObject => (SizeFrom::None, SizeFrom::RetObject),
        other => (*other, SizeFrom::None),
    };
    Some(SerializeTarget {
        path: host.to_path_buf(),
        symbol: name.to_string(),
        function,
        enter_size,
        exit_size,
        offset: sym.file_offset,
        outer: false,
    })
}

fn is_upb(path: &str) -> bool {
    path.contains("/google/_upb/_message") && path.ends_with(".so")
}

fn is_orjson(path: &str) -> bool {
    let base = path.rsplit('/').next().unwrap_or("");
    path.contains("/orjson/") && base.starts_with("orjson") && base.ends_with(".so")
}

fn is_stdlib_json(path: &str) -> bool {
    let base = path.rsplit('/').next().unwrap_or("");
    path.contains("/lib-dynload/") && base.starts_with("_json.") && base.ends_with(".so")
}

fn is_interpreter(path: &str) -> bool {
    let base = path.rsplit('/').next().unwrap_or("");
    base.starts_with("libpython3") || (base.starts_with("python3") && !base.ends_with(".so"))
}

/// The probe plan of worker `pid` (`proc_root` is normally /proc). `known_gil`: the
/// interpreter's runtime range from an earlier plan (its objects are not read again).
pub fn plan(proc_root: &Path, pid: u32, known_gil: Option<Range<u64>>) -> WorkerProbePlan {
    let mut plan = WorkerProbePlan::default();
    plan.waits.gil = known_gil;
    let maps = match std::fs::read_to_string(proc_root.join(pid.to_string()).join("maps")) {
        Ok(m) => m,
        Err(e) => {
            plan.missing
                .push(format!("cannot read /proc/{pid}/maps: {e}"));
            return plan;
        }
    };
    let files = mapped_files(&maps);
    let mut have_protobuf = false;
    let mut have_json = false;
    let mut have_orjson = false;
    let (mut protobuf_picked, mut orjson_picked) = (0, 0);
    for (path, mapped) in &files {
        let host = host_path(proc_root, pid, path);
        if is_upb(path) {
            have_protobuf = true;
            let wanted: Vec<&str> = PROTOBUF_DECODE
                .iter()
                .chain(PROTOBUF_ENCODE)
                .chain([&PROTOBUF_DECODE_OUTER])
                .map(|(n, _)| *n)
                .collect();
            match symbols(&host, &wanted) {
                Ok((found, _)) => {
                    for (f, c) in [
                        (SerializeFn::ProtobufDecode, PROTOBUF_DECODE),
                        (SerializeFn::ProtobufEncode, PROTOBUF_ENCODE),
                    ] {
                        match pick(&host, f, c, &found) {
                            Some(t) => {
                                protobuf_picked += 1;
                                plan.targets.push(t)
                            }
                            None => plan.missing.push(format!(
                                "protobuf {f:?}: none of {:?} in {path} (stripped?)",
                                c.iter().map(|(n, _)| *n).collect::<Vec<_>>()
                            )),
                        }
                    }
                    // Optional: without it the inner call alone is timed.
                    let outer = [PROTOBUF_DECODE_OUTER];
                    if let Some(mut t) = pick(&host, SerializeFn::ProtobufDecode, &outer, &found) {
                        t.outer = true;
                        plan.targets.push(t);
                    }
                }
                Err(e) => plan
                    .missing
                    .push(format!("protobuf: cannot read {path}: {e}")),
            }
        } else if is_orjson(path) {
            have_json = true;
            have_orjson = true;
            match symbols(&host, &["loads", "dumps"]) {
                Ok((found, _)) => {
                    for (f, c) in [
                        (SerializeFn::JsonDecode, JSON_DECODE),
                        (SerializeFn::JsonEncode, JSON_ENCODE),
                    ] {
                        match pick(&host, f, c, &found) {
                            Some(t) => {
                                orjson_picked += 1;
                                plan.targets.push(t)
                            }
                            None => plan
                                .missing
                                .push(format!("orjson: no {f:?} symbol in {path}")),
                        }
                    }
                }
                Err(e) => plan
                    .missing
                    .push(format!("orjson: cannot read {path}: {e}")),
            }
        } else if is_stdlib_json(path) {
            match symbols(&host, &["scanner_call", "encoder_call"]) {
                Ok((found, _)) => {
                    for (f, c) in [
                        (SerializeFn::JsonDecode, STDLIB_JSON_DECODE),
                        (SerializeFn::JsonEncode, STDLIB_JSON_ENCODE),
                    ] {
                        match pick(&host, f, c, &found) {
                            Some(t) => {
                                have_json = true;
                                plan.targets.push(t)
                            }
                            None => plan
                                .missing
                                .push(format!("stdlib json: no {f:?} symbol in {path} (stripped)")),
                        }
                    }
                }
                Err(e) => plan
                    .missing
                    .push(format!("stdlib json: cannot read {path}: {e}")),
            }
        } else if plan.waits.gil.is_none() && is_interpreter(path) {
            if let Ok((found, first_vaddr)) = symbols(&host, &["_PyRuntime"]) {
                if let Some(&Sym {
                    address: addr,
                    size,
                    ..
                }) = found.get("_PyRuntime")
                {
                    let start = mapped.base - first_vaddr + addr;
                    plan.waits.gil = Some(runtime_range(start, size));
                    plan.interpreter = Some(PathBuf::from(path));
                }
            }
        }
    }
    if !have_protobuf {
        plan.missing.push("protobuf: no google/_upb/_message*.so mapped (pure-Python or cpp protobuf, or not imported yet)".into());
    }
    if !have_json {
        plan.missing.push(
            "json: neither orjson nor the stdlib _json extension (with symbols) is mapped".into(),
        );
    }
    if have_json && !have_orjson {
        plan.missing.push(
            "orjson: not mapped (not imported yet, or not used: the stdlib json is probed)".into(),
        );
    }
    plan.complete = plan.waits.gil.is_some() && protobuf_picked == 2 && orjson_picked == 2;
    if plan.waits.gil.is_none() {
        plan.missing.push("gil: no _PyRuntime symbol in a mapped libpython or python executable (GIL waits count as lock waits)".into());
    }
    plan.waits.gpu_fds = gpu_fds(proc_root, pid);
    plan.waits.fd_dir = Some(proc_root.join(pid.to_string()).join("fd"));
    plan
}

fn runtime_range(start: u64, size: u64) -> Range<u64> {
    // A symbol without a size (stripped of it): the runtime state is a few hundred KiB.
    let size = if size == 0 { 1 << 20 } else { size };
    start..start + size
}

/// fds of `pid` open on GPU devices (`/dev/nvidia*`, `/dev/dri/renderD*`).
pub fn gpu_fds(proc_root: &Path, pid: u32) -> Vec<u64> {
    let dir = proc_root.join(pid.to_string()).join("fd");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let target = std::fs::read_link(e.path()).ok()?;
            is_gpu_device(&target.to_string_lossy())
                .then(|| e.file_name().to_string_lossy().parse().ok())
                .flatten()
        })
        .collect()
}

/// A GPU device node: NVIDIA's (`/dev/nvidia0`, `/dev/nvidiactl`, `/dev/nvidia-uvm`)
/// or a DRM render node.
pub fn is_gpu_device(path: &str) -> bool {
    path.starts_with("/dev/nvidia") || path.starts_with("/dev/dri/renderD")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapped_files_keep_the_offset_zero_mapping() {
        let maps = "\
7f00000000-7f00001000 r--p 00000000 08:01 1 /venv/lib/python3.11/site-packages/google/_upb/_message.abi3.so
7f00001000-7f00009000 r-xp 00001000 08:01 1 /venv/lib/python3.11/site-packages/google/_upb/_message.abi3.so
7f10000000-7f10001000 rw-p 00000000 00:00 0 [heap]
";
        let files = mapped_files(maps);
        assert_eq!(files.len(), 1);
        let (path, m) = files.iter().next().unwrap();
        assert!(is_upb(path));
        assert_eq!(m.base, 0x7f00000000);
    }

    #[test]
    fn recognises_objects_by_path() {
        assert!(is_orjson(
            "/v/site-packages/orjson/orjson.cpython-311-x86_64-linux-gnu.so"
        ));
        assert!(!is_orjson("/v/site-packages/foo/orjson.py"));
        assert!(is_interpreter(
            "/root/.pyenv/versions/3.11.7/lib/libpython3.11.so.1.0"
        ));
        assert!(is_interpreter("/usr/bin/python3.11"));
        assert!(!is_interpreter(
            "/usr/lib/python3.11/lib-dynload/_json.cpython-311.so"
        ));
    }

    /// The agent's own test process is not Python, but the plan of a real interpreter
    /// is checked end to end in tests/tests/worker_split.rs.
    #[test]
    fn a_process_without_python_says_what_is_missing() {
        let plan = plan(Path::new("/proc"), std::process::id(), None);
        assert!(plan.targets.is_empty());
        assert!(plan.missing.iter().any(|m| m.starts_with("protobuf")));
        assert!(plan.missing.iter().any(|m| m.starts_with("gil")));
    }
}
