//! What the pipeline needs to know of the topology: which connection an fd belongs to.
//! Discovery answers in the agent; tests answer with a fixed table.
use crate::discovery::{ConnInfo, ConnRole, Discovery};

pub trait ConnDirectory {
    /// The paired connection `(tgid, fd)` is an end of, if any.
    fn conn_for_fd(&self, tgid: u32, fd: u32) -> Option<&ConnInfo>;
    /// The worker's adapter module (`--adapter`), the `library` of plain tools.
    fn adapter(&self, worker_pid: u32) -> Option<String>;
    /// The id of the stdin pipe connection of the worker a stdout pipe belongs to: a
    /// request and its response meet in the tracker under that id.
    fn stdin_conn_id(&self, stdout: &ConnInfo) -> u64;
}

impl ConnDirectory for Discovery {
    fn conn_for_fd(&self, tgid: u32, fd: u32) -> Option<&ConnInfo> {
        Discovery::conn_for_fd(self, tgid, fd)
    }

    fn adapter(&self, worker_pid: u32) -> Option<String> {
        self.worker(worker_pid).and_then(|w| w.adapter.clone())
    }

    fn stdin_conn_id(&self, stdout: &ConnInfo) -> u64 {
        self.connections()
            .find(|c| {
                c.role == ConnRole::PipeStdin
                    && c.worker_pid == stdout.worker_pid
                    && c.beam_pid == stdout.beam_pid
            })
            .map(|c| c.id)
            .unwrap_or(stdout.id)
    }
}
