//! Which CPython (3.10-3.13) runs in a worker and where its frames are: the interpreter's file,
//! `_PyRuntime`, `Py_Version`, and the layout of its structs. 3.13 publishes its
//! offsets (`_Py_DebugOffsets`, read and cross-checked here); 3.11 and 3.12 use the
//! tables below (3.10 too; from the versions' own headers, `offsetof` on x86_64), checked
//! against the live process before any sampling.
use super::elf::{read_maps, ElfSymbols, Mapping};
use super::error::ProfilerError;
use super::mem::ProcMem;
use std::path::{Path, PathBuf};
use telemetry_common::PyProcInfo;

/// Offsets user space needs to read code objects and strings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CodeLayout {
    pub filename: u64,
    pub name: u64,
    pub qualname: u64,
    pub linetable: u64,
    pub firstlineno: u64,
    pub code_adaptive: u64,
    /// sizeof(PyASCIIObject) / sizeof(PyCompactUnicodeObject).
    pub ascii_size: u64,
    pub compact_size: u64,
    /// 3.10: frames hold `f_lasti` (an instruction index), not a pointer, the location
    /// table is the 3.10 format, and code objects have no `co_qualname`.
    pub legacy_310: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub interpreters_head: u64,
    pub threads_head: u64,
    pub tstate_next: u64,
    pub tstate_interp: u64,
    pub tstate_native_tid: u64,
    /// None: the thread state holds `current_frame` itself (3.13).
    pub tstate_cframe: Option<u64>,
    pub current_frame: u64,
    pub frame_code: u64,
    pub frame_previous: u64,
    pub frame_instr: u64,
    /// None: frames have no owner byte (3.10).
    pub frame_owner: Option<u64>,
    /// Thread states name their thread by pthread id (3.10), not by kernel tid.
    pub pthread_ids: bool,
    pub code: CodeLayout,
}

/// The table for a minor version of CPython 3 (x86_64, default build).
pub fn table(minor: u32) -> Option<Layout> {
    let code = |firstlineno, code_adaptive, ascii_size, compact_size| CodeLayout {
        filename: 112,
        name: 120,
        qualname: 128,
        linetable: 136,
        firstlineno,
        code_adaptive,
        ascii_size,
        compact_size,
        legacy_310: false,
    };
    Some(match minor {
        10 => Layout {
            interpreters_head: 32,
            threads_head: 8,
            tstate_next: 8,
            tstate_interp: 16,
            tstate_native_tid: 176,
            tstate_cframe: None,
            current_frame: 24,
            frame_code: 32,
            frame_previous: 24,
            frame_instr: 96,
            frame_owner: None,
            pthread_ids: true,
            code: CodeLayout {
                filename: 104,
                name: 112,
                qualname: 112,
                linetable: 120,
                firstlineno: 40,
                code_adaptive: 0,
                ascii_size: 48,
                compact_size: 72,
                legacy_310: true,
            },
        },
        11 => Layout {
            interpreters_head: 40,
            threads_head: 16,
            tstate_next: 8,
            tstate_interp: 16,
            tstate_native_tid: 160,
            tstate_cframe: Some(56),
            current_frame: 8,
            frame_code: 32,
            frame_previous: 48,
            frame_instr: 56,
            frame_owner: Some(69),
            pthread_ids: false,
            code: code(72, 184, 48, 72),
        },
        12 => Layout {
            interpreters_head: 40,
            threads_head: 72,
            tstate_next: 8,
            tstate_interp: 16,
            tstate_native_tid: 144,
            tstate_cframe: Some(56),
            current_frame: 0,
            frame_code: 0,
            frame_previous: 8,
            frame_instr: 56,
            frame_owner: Some(70),
            pthread_ids: false,
            code: code(68, 192, 40, 56),
        },
        13 => Layout {
            interpreters_head: 632,
            threads_head: 7344,
            tstate_next: 8,
            tstate_interp: 16,
            tstate_native_tid: 160,
            tstate_cframe: None,
            current_frame: 72,
            frame_code: 0,
            frame_previous: 8,
            frame_instr: 56,
            frame_owner: Some(70),
            pthread_ids: false,
            code: code(68, 200, 40, 56),
        },
        _ => return None,
    })
}

impl Layout {
    /// `task_fsbase_off`: `task_struct.thread.fsbase` (BTF), needed for 3.10.
    pub fn proc_info(&self, runtime_addr: u64, task_fsbase_off: u32) -> PyProcInfo {
        PyProcInfo {
            interp_head_addr: runtime_addr + self.interpreters_head,
            threads_head_off: self.threads_head as u32,
            tstate_next_off: self.tstate_next as u32,
            tstate_native_tid_off: self.tstate_native_tid as u32,
            tstate_cframe_off: self.tstate_cframe.map_or(u32::MAX, |o| o as u32),
            current_frame_off: self.current_frame as u32,
            frame_code_off: self.frame_code as u32,
            frame_previous_off: self.frame_previous as u32,
            frame_instr_off: self.frame_instr as u32,
            frame_owner_off: self.frame_owner.map_or(u32::MAX, |o| o as u32),
            tid_match: if self.pthread_ids {
                telemetry_common::TID_PTHREAD
            } else {
                telemetry_common::TID_NATIVE
            },
            task_fsbase_off,
            _pad: 0,
        }
    }
}

/// `_Py_DebugOffsets` of 3.13 as u64 words after the 8-byte cookie: (word index, what,
/// getter into Layout). Index 0 is the version.
type Getter = fn(&Layout) -> u64;

const DEBUG_OFFSETS_313: &[(usize, &str, Getter)] = &[
    (4, "runtime_state.interpreters_head", |l| {
        l.interpreters_head
    }),
    (8, "interpreter_state.threads_head", |l| l.threads_head),
    (20, "thread_state.next", |l| l.tstate_next),
    (21, "thread_state.interp", |l| l.tstate_interp),
    (22, "thread_state.current_frame", |l| l.current_frame),
    (24, "thread_state.native_thread_id", |l| l.tstate_native_tid),
    (28, "interpreter_frame.previous", |l| l.frame_previous),
    (29, "interpreter_frame.executable", |l| l.frame_code),
    (30, "interpreter_frame.instr_ptr", |l| l.frame_instr),
    (32, "interpreter_frame.owner", |l| {
        l.frame_owner.unwrap_or(0)
    }),
    (34, "code_object.filename", |l| l.code.filename),
    (35, "code_object.name", |l| l.code.name),
    (36, "code_object.qualname", |l| l.code.qualname),
    (37, "code_object.linetable", |l| l.code.linetable),
    (38, "code_object.firstlineno", |l| l.code.firstlineno),
    (42, "code_object.co_code_adaptive", |l| l.code.code_adaptive),
];

/// A worker's interpreter, checked and ready to sample.
#[derive(Clone, Debug)]
pub struct Interpreter {
    pub pid: u32,
    /// "3.11.7".
    pub version: String,
    pub minor: u32,
    /// libpython or the python executable, as the process maps it.
    pub path: PathBuf,
    pub runtime_addr: u64,
    pub layout: Layout,
    /// "table" or "_Py_DebugOffsets".
    pub layout_source: &'static str,
}

/// `libpython3.10.so.1.0` / `python3.10` -> 10.
fn minor_from_name(p: &Path) -> Option<u32> {
    let name = p.file_name()?.to_str()?;
    let rest = name
        .strip_prefix("libpython3.")
        .or_else(|| name.strip_prefix("python3."))?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

fn is_interpreter_file(p: &Path) -> bool {
    let Some(name) = p.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    name.starts_with("libpython3.")
        || (name.starts_with("python3") && !name.contains(".so") && !name.ends_with(".py"))
}

/// Finds and checks the CPython interpreter of process `pid`.
pub fn inspect(proc_root: &Path, pid: u32) -> Result<Interpreter, ProfilerError> {
    let maps = read_maps(proc_root, pid)?;
    // libpython holds the runtime when the executable links it dynamically.
    let mut candidates: Vec<&Mapping> = maps
        .iter()
        .filter(|m| is_interpreter_file(&m.path))
        .collect();
    candidates.sort_by_key(|m| {
        !m.path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("libpython"))
    });
    let root = proc_root.join(pid.to_string()).join("root");
    let mut found = None;
    for m in candidates {
        let Ok(syms) = ElfSymbols::load(&m.path, Some(&root)) else {
            continue;
        };
        if let (Some(rt), Some(bias)) = (syms.symbol("_PyRuntime"), syms.bias(m)) {
            found = Some((syms, rt.wrapping_add(bias), bias));
            break;
        }
    }
    let (syms, runtime_addr, bias) = found.ok_or(ProfilerError::NoInterpreter { pid })?;
    let mem = ProcMem::open(proc_root, pid)?;
    // `Py_Version` exists from 3.11; before, the file's name says the minor version.
    let (hex, version) = match syms.symbol("Py_Version") {
        Some(a) => {
            let hex = mem.u64(a.wrapping_add(bias))?;
            let v = format!("{}.{}.{}", hex >> 24, (hex >> 16) & 0xff, (hex >> 8) & 0xff);
            (hex, v)
        }
        None => match minor_from_name(&syms.path) {
            Some(minor) => (0x0300_0000 | u64::from(minor) << 16, format!("3.{minor}")),
            None => {
                return Err(ProfilerError::UnsupportedVersion {
                    pid,
                    version: format!("unknown ({})", syms.path.display()),
                })
            }
        },
    };
    let (major, minor) = ((hex >> 24) as u32, ((hex >> 16) & 0xff) as u32);
    let unsupported = || ProfilerError::UnsupportedVersion {
        pid,
        version: version.clone(),
    };
    if major != 3 {
        return Err(unsupported());
    }
    let mut layout = table(minor).ok_or_else(unsupported)?;
    let mut layout_source = "table";
    let mismatch = |what: String| ProfilerError::LayoutMismatch {
        pid,
        version: version.clone(),
        what,
    };
    if minor >= 13 {
        let cookie = mem.bytes(runtime_addr, 8)?;
        if cookie != b"xdebugpy" {
            return Err(mismatch("no _Py_DebugOffsets cookie at _PyRuntime".into()));
        }
        let raw = mem.bytes(runtime_addr + 8, 8 * 44)?;
        let word = |i: usize| {
            raw.get(i * 8..i * 8 + 8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_le_bytes)
                .unwrap_or(u64::MAX)
        };
        if word(0) >> 16 != hex >> 16 {
            return Err(mismatch(format!("_Py_DebugOffsets version {:#x}", word(0))));
        }
        for (i, what, get) in DEBUG_OFFSETS_313 {
            if word(*i) != get(&layout) {
                return Err(mismatch(format!(
                    "{what} is {} in _Py_DebugOffsets, {} in the table",
                    word(*i),
                    get(&layout)
                )));
            }
        }
        // Taken from the interpreter itself; the table agreeing is the layout check.
        layout.interpreters_head = word(4);
        layout.threads_head = word(8);
        layout_source = "_Py_DebugOffsets";
    }
    check_live(&mem, pid, proc_root, runtime_addr, &layout).map_err(mismatch)?;
    Ok(Interpreter {
        pid,
        version,
        minor,
        path: syms.path.clone(),
        runtime_addr,
        layout,
        layout_source,
    })
}

/// The layout must lead from `_PyRuntime` to a thread state that points back to its
/// interpreter and names a thread of this process.
fn check_live(
    mem: &ProcMem,
    pid: u32,
    proc_root: &Path,
    runtime: u64,
    l: &Layout,
) -> Result<(), String> {
    let e = |x: ProfilerError| x.to_string();
    let interp = mem.u64(runtime + l.interpreters_head).map_err(e)?;
    if interp == 0 {
        return Err("no interpreter yet (_PyRuntime.interpreters.head is NULL)".into());
    }
    let ts = mem.u64(interp + l.threads_head).map_err(e)?;
    if ts == 0 {
        return Err("the interpreter has no thread state".into());
    }
    let back = mem.u64(ts + l.tstate_interp).map_err(e)?;
    if back != interp {
        return Err(format!(
            "thread state {ts:#x} points to interpreter {back:#x}, not {interp:#x}"
        ));
    }
    if l.pthread_ids {
        // 3.10: a pthread id (an address), not a tid.
        return match mem.u64(ts + l.tstate_native_tid).map_err(e)? {
            0 => Err("thread state without a thread id".into()),
            _ => Ok(()),
        };
    }
    let tid = mem.u32(ts + l.tstate_native_tid).map_err(e)?;
    let task = proc_root
        .join(pid.to_string())
        .join("task")
        .join(tid.to_string());
    if !task.exists() {
        return Err(format!(
            "thread state's native_thread_id {tid} is no thread of the process"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_table_is_consistent() {
        for minor in 10..=13 {
            let l = table(minor).expect("table");
            let info = l.proc_info(0x1000, 5000);
            assert_eq!(info.interp_head_addr, 0x1000 + l.interpreters_head);
            assert_eq!(
                info.tstate_cframe_off == u32::MAX,
                minor >= 13 || minor == 10
            );
            assert_eq!(info.tid_match == telemetry_common::TID_PTHREAD, minor == 10);
            assert_eq!(info.frame_owner_off == u32::MAX, minor == 10);
        }
        assert!(table(9).is_none());
        assert_eq!(
            minor_from_name(Path::new("/x/libpython3.10.so.1.0")),
            Some(10)
        );
        assert_eq!(minor_from_name(Path::new("/usr/bin/python3.9")), Some(9));
        assert!(table(14).is_none());
    }

    #[test]
    fn interpreter_files_are_recognised() {
        assert!(is_interpreter_file(Path::new(
            "/usr/lib/libpython3.12.so.1.0"
        )));
        assert!(is_interpreter_file(Path::new("/usr/bin/python3.11")));
        assert!(!is_interpreter_file(Path::new(
            "/x/_multiarray_umath.cpython-311-x86_64-linux-gnu.so"
        )));
        assert!(!is_interpreter_file(Path::new(
            "/x/python3.11/site-packages/a.so"
        )));
    }
}
