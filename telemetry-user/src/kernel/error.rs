//! Errors of the kernel layer.
use thiserror::Error;

#[derive(Debug, Error)]
pub enum KernelError {
    #[error("mounting {what} at {path} failed: {source} (needs root)")]
    Mount {
        what: &'static str,
        path: &'static str,
        source: std::io::Error,
    },
    #[error("loading the eBPF object failed: {0} (needs root or CAP_BPF+CAP_PERFMON)")]
    Load(#[source] aya::EbpfError),
    #[error("program {0} is missing from the eBPF object")]
    MissingProgram(&'static str),
    #[error("map {0} is missing from the eBPF object")]
    MissingMap(&'static str),
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        source: aya::maps::MapError,
    },
    #[error("probe {name} ({target}): {source}")]
    Probe {
        name: &'static str,
        target: String,
        source: aya::programs::ProgramError,
    },
    #[error("the event stream was already taken")]
    EventsTaken,
    #[error("ring buffer reader: {0} (events() needs a tokio runtime)")]
    Reader(#[source] std::io::Error),
}
