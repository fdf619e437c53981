//! One merged stack per sample: the Python frames (root first) and, below the
//! innermost one, the native frames of the C extension it called into (numpy's
//! kernels, upb, orjson, ...). A thread with no Python frame keeps its native stack.
use super::code::CodeInfo;
use super::native::NativeFrame;
use crate::fast_hash::FastSet;
use std::path::Path;
use std::sync::Arc;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Frame {
    Python {
        /// `module.qualname`.
        function: String,
        library: String,
        file: String,
        line: u32,
    },
    Native {
        /// `symbol [object]`.
        name: String,
        library: String,
    },
}

impl Frame {
    pub fn python(code: &CodeInfo, line: u32) -> Frame {
        Frame::Python {
            function: code.function(),
            library: code.library().to_string(),
            file: code.filename.clone(),
            line,
        }
    }

    /// The name in folded stacks and flame graphs.
    pub fn name(&self) -> &str {
        match self {
            Frame::Python { function, .. } => function,
            Frame::Native { name, .. } => name,
        }
    }

    pub fn library(&self) -> &str {
        match self {
            Frame::Python { library, .. } | Frame::Native { library, .. } => library,
        }
    }

    pub fn is_python(&self) -> bool {
        matches!(self, Frame::Python { .. })
    }
}

/// Library of a native object: its package when installed in site-packages
/// (`numpy/_core/_multiarray_umath...so` and `numpy.libs/libscipy_openblas...so`
/// are both `numpy`), else the file name without version suffixes (`libc`).
pub fn native_library(path: &Path) -> String {
    let s = path.to_string_lossy();
    for marker in ["/site-packages/", "/dist-packages/"] {
        if let Some((_, rest)) = s.rsplit_once(marker) {
            let top = rest.split('/').next().unwrap_or(rest);
            let top = top.strip_suffix(".libs").unwrap_or(top);
            let top = top.split('.').next().unwrap_or(top);
            return top.to_string();
        }
    }
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("?");
    name.split(".so").next().unwrap_or(name).to_string()
}

/// Objects that are the runtime, not a library a user would blame.
fn is_runtime(library: &str) -> bool {
    library.starts_with("libpython")
        || library.starts_with("python3")
        || library.starts_with("libc")
        || library.starts_with("ld-linux")
        || library == "libm"
        || library == "libpthread"
}

/// A stack's frames, root first. Each frame is its own shared copy: samples differ
/// mostly in a line number or a leaf, so a distinct stack costs a pointer per frame,
/// not its frames' strings again.
pub type Frames = Arc<[Arc<Frame>]>;

/// A sample after resolution.
#[derive(Clone, Debug)]
pub struct Stack {
    pub tid: u32,
    /// Root first, each frame shared by every stack that holds it (see [`Interner`]).
    pub frames: Frames,
    /// The frame a user would name: innermost Python frame, else innermost native.
    /// (Shared: off-CPU episodes the kernel did not walk reuse a walked stack.)
    pub hot_frame: Arc<str>,
    /// Innermost non-runtime native library (numpy for BLAS kernels), else the
    /// innermost Python frame's package.
    pub library: Arc<str>,
    pub truncated: bool,
}

/// Merges `python` (innermost first, resolved) and `native` (innermost first).
/// `interpreter` is the file that holds the interpreter loop: native frames from the
/// leaf up to the first frame inside it belong below the innermost Python frame.
pub fn merge(
    tid: u32,
    python: Vec<Arc<Frame>>,
    native: &[NativeFrame],
    interpreter: &Path,
    truncated: bool,
) -> Stack {
    let python_len = python.len();
    let python_library = python.first().map(|f| f.library().to_owned());
    // Outermost first; the Python frames are shared (see `PythonFrames`).
    let mut frames: Vec<Arc<Frame>> = python.into_iter().rev().collect();
    let extension: Vec<&NativeFrame> = if python_len == 0 {
        native.iter().collect()
    } else {
        native
            .iter()
            .take_while(|f| f.path.as_path() != interpreter)
            .collect()
    };
    // When the unwinder never reached the interpreter (no frame pointers in the
    // library), only the leaf is certain.
    let reached = python_len == 0 || extension.len() < native.len();
    let extension: &[&NativeFrame] = if reached {
        &extension
    } else {
        &extension[..extension.len().min(1)]
    };
    frames.extend(extension.iter().rev().map(|f| f.frame.clone()));
    let library: Arc<str> = extension
        .iter()
        .map(|f| f.library.clone())
        .find(|l| !is_runtime(l))
        .or_else(|| python_library.map(Arc::from))
        .or_else(|| extension.first().map(|f| f.library.clone()))
        .unwrap_or_else(|| "unknown".into());
    // The innermost Python frame (the last of them, outermost first), else the leaf.
    let hot_frame = python_len
        .checked_sub(1)
        .and_then(|i| frames.get(i))
        .or(frames.last())
        .map(|f| f.name().to_string())
        .unwrap_or_else(|| "unknown".into());
    Stack {
        tid,
        frames: frames.into(),
        hot_frame: hot_frame.into(),
        library,
        truncated,
    }
}

/// Python frames by code object and instruction, made once: a worker's samples repeat
/// the same few hundred (three strings each, made afresh for every frame of every
/// sample before, and the line table decoded for each). Holding the `CodeInfo` keeps
/// its address from being reused by another.
#[derive(Default)]
pub struct PythonFrames {
    frames: crate::fast_hash::FastMap<(usize, i64), (Arc<CodeInfo>, Arc<Frame>)>,
}

impl PythonFrames {
    /// The frame of `code` at instruction `units` (see [`CodeInfo::line`]).
    pub fn frame(&mut self, code: &Arc<CodeInfo>, units: i64) -> Arc<Frame> {
        let key = (Arc::as_ptr(code) as usize, units);
        if let Some((_, f)) = self.frames.get(&key) {
            return f.clone();
        }
        if self.frames.len() >= MAX_INTERNED {
            self.frames.clear();
        }
        let f = Arc::new(Frame::python(code, code.line(units)));
        self.frames.insert(key, (code.clone(), f.clone()));
        f
    }
}

/// Distinct stacks and names kept at once by an [`Interner`]; beyond it the table
/// starts again (stored samples keep what they share).
const MAX_INTERNED: usize = 16_384;

/// One copy of each distinct frame, stack and name: a worker's samples are mostly a
/// few stacks, and a stack of 20 Python frames is 60 strings (the store keeps up to
/// 200,000 samples: most of the agent's heap before this). CPU samples of a busy
/// worker differ in a line number almost every time: those stacks share their frames.
#[derive(Default)]
pub struct Interner {
    frame: FastSet<Arc<Frame>>,
    frames: FastSet<Frames>,
    names: FastSet<Arc<str>>,
}

impl Interner {
    /// `stack` sharing the frames and names of an equal one seen before.
    pub fn stack(&mut self, mut stack: Stack) -> Stack {
        if self.frames.len() >= MAX_INTERNED
            || self.frame.len() >= MAX_INTERNED
            || self.names.len() >= MAX_INTERNED
        {
            self.frame.clear();
            self.frames.clear();
            self.names.clear();
        }
        // One hash of the whole stack when it was seen before (most samples).
        stack.frames = match self.frames.get(&stack.frames) {
            Some(kept) => kept.clone(),
            None => {
                let own: Frames = stack
                    .frames
                    .iter()
                    .map(|f| share(&mut self.frame, f.clone()))
                    .collect();
                self.frames.insert(own.clone());
                own
            }
        };
        stack.hot_frame = share(&mut self.names, stack.hot_frame);
        stack.library = share(&mut self.names, stack.library);
        stack
    }

    /// (distinct frames, stacks, names) held.
    pub fn sizes(&self) -> (usize, usize, usize) {
        (self.frame.len(), self.frames.len(), self.names.len())
    }
}

fn share<T: ?Sized + Eq + std::hash::Hash>(set: &mut FastSet<Arc<T>>, value: Arc<T>) -> Arc<T> {
    match set.get(&value) {
        Some(kept) => kept.clone(),
        None => {
            set.insert(value.clone());
            value
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn nf(path: &str, sym: &str) -> NativeFrame {
        NativeFrame::new(1, Arc::new(PathBuf::from(path)), Some(sym.into()))
    }

    fn py(function: &str, library: &str) -> Arc<Frame> {
        Arc::new(Frame::Python {
            function: function.into(),
            library: library.into(),
            file: String::new(),
            line: 1,
        })
    }

    const LIBPY: &str = "/py/lib/libpython3.11.so.1.0";
    const BLAS: &str =
        "/v/lib/python3.11/site-packages/numpy.libs/libscipy_openblas64_-ff651d7f.so";
    const UMATH: &str = "/v/lib/python3.11/site-packages/numpy/_core/_multiarray_umath.cpython-311-x86_64-linux-gnu.so";

    #[test]
    fn extension_frames_go_below_the_innermost_python_frame() {
        let python = vec![
            py("demo_hot.matmul", "demo_hot"),
            py("demo_hot.hot_path", "demo_hot"),
        ];
        let native = vec![
            nf(BLAS, "dgemm_kernel"),
            nf(UMATH, "cblas_matrixproduct"),
            nf(LIBPY, "_PyEval_EvalFrameDefault"),
            nf(LIBPY, "PyObject_Call"),
        ];
        let s = merge(7, python, &native, std::path::Path::new(LIBPY), false);
        let names: Vec<&str> = s.frames.iter().map(|f| f.name()).collect();
        assert_eq!(
            names,
            [
                "demo_hot.hot_path",
                "demo_hot.matmul",
                "cblas_matrixproduct [_multiarray_umath.cpython-311-x86_64-linux-gnu.so]",
                "dgemm_kernel [libscipy_openblas64_-ff651d7f.so]",
            ]
        );
        assert_eq!(&*s.library, "numpy");
        assert_eq!(&*s.hot_frame, "demo_hot.matmul");
    }

    #[test]
    fn pure_python_time_is_the_modules() {
        let python = vec![py("demo_hot.spin", "demo_hot")];
        let native = vec![nf(LIBPY, "_PyEval_EvalFrameDefault"), nf(LIBPY, "main")];
        let s = merge(7, python, &native, std::path::Path::new(LIBPY), false);
        assert_eq!(s.frames.len(), 1);
        assert_eq!(&*s.library, "demo_hot");
        assert_eq!(&*s.hot_frame, "demo_hot.spin");
    }

    #[test]
    fn a_native_thread_keeps_its_native_stack() {
        let native = vec![
            nf(BLAS, "dgemm_kernel"),
            nf("/lib/libc.so.6", "start_thread"),
        ];
        let s = merge(9, vec![], &native, std::path::Path::new(LIBPY), false);
        assert_eq!(s.frames.len(), 2);
        assert_eq!(s.frames[0].name(), "start_thread [libc.so.6]");
        assert_eq!(&*s.library, "numpy");
    }

    #[test]
    fn libraries_of_native_objects() {
        assert_eq!(native_library(Path::new(BLAS)), "numpy");
        assert_eq!(native_library(Path::new(UMATH)), "numpy");
        assert_eq!(
            native_library(Path::new("/lib/x86_64-linux-gnu/libc.so.6")),
            "libc"
        );
        assert_eq!(
            native_library(Path::new("/v/site-packages/google/_upb/_message.abi3.so")),
            "google"
        );
    }

    #[test]
    fn a_python_frame_is_made_once_per_code_and_instruction() {
        let code = Arc::new(CodeInfo::new(
            "hot_path".into(),
            "/app/demo_hot.py".into(),
            10,
            Vec::new(),
        ));
        let mut frames = PythonFrames::default();
        let a = frames.frame(&code, 12);
        assert!(Arc::ptr_eq(&a, &frames.frame(&code, 12)));
        let b = frames.frame(&code, 13);
        assert!(!Arc::ptr_eq(&a, &b));
        // No line table: every instruction is on the first line.
        assert_eq!(*a, Frame::python(&code, 10));
        assert_eq!(*b, Frame::python(&code, 10));
        // Equal code elsewhere (another worker's copy) is a frame of its own.
        let other = Arc::new(CodeInfo::new(
            "hot_path".into(),
            "/app/demo_hot.py".into(),
            10,
            Vec::new(),
        ));
        assert!(!Arc::ptr_eq(&a, &frames.frame(&other, 12)));
    }

    #[test]
    fn equal_stacks_share_one_copy() {
        let python = |f: &str| {
            Arc::new(Frame::Python {
                function: f.into(),
                library: "demo".into(),
                file: "demo.py".into(),
                line: 1,
            })
        };
        let mut interner = Interner::default();
        let a = interner.stack(merge(
            1,
            vec![python("a"), python("main")],
            &[],
            Path::new("/p"),
            false,
        ));
        let b = interner.stack(merge(
            2,
            vec![python("a"), python("main")],
            &[],
            Path::new("/p"),
            false,
        ));
        let c = interner.stack(merge(
            1,
            vec![python("c"), python("main")],
            &[],
            Path::new("/p"),
            false,
        ));
        assert!(Arc::ptr_eq(&a.frames, &b.frames) && Arc::ptr_eq(&a.hot_frame, &b.hot_frame));
        assert!(Arc::ptr_eq(&a.library, &c.library));
        assert!(!Arc::ptr_eq(&a.frames, &c.frames));
        // Different stacks share the frames they have in common (`main`, the root).
        assert!(Arc::ptr_eq(&a.frames[0], &c.frames[0]));
        assert!(!Arc::ptr_eq(&a.frames[1], &c.frames[1]));
        assert_eq!(interner.sizes(), (3, 2, 3));
        assert_eq!((a.tid, b.tid, &*c.hot_frame), (1, 2, "c"));
    }
}
