use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ProfilerError {
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("process {pid}: no CPython interpreter mapped (no libpython3.x or python3.x)")]
    NoInterpreter { pid: u32 },
    #[error("{path}: no `{symbol}` symbol")]
    MissingSymbol { path: PathBuf, symbol: &'static str },
    #[error("{path}: not a readable ELF file: {reason}")]
    Elf { path: PathBuf, reason: String },
    #[error(
        "process {pid}: CPython {version} has no known frame layout (supported: 3.10 to 3.13)"
    )]
    UnsupportedVersion { pid: u32, version: String },
    #[error("process {pid}: CPython {version} layout check failed: {what}")]
    LayoutMismatch {
        pid: u32,
        version: String,
        what: String,
    },
    #[error("process {pid}: reading {len} bytes at {addr:#x}: {source}")]
    Mem {
        pid: u32,
        addr: u64,
        len: usize,
        source: std::io::Error,
    },
    #[error("loading the profiler program: {0}")]
    Kernel(String),
    #[error("writing the profile: {0}")]
    Output(String),
}
