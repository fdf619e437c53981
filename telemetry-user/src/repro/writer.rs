//! The writer thread: renders and writes scripts off the tracker's thread (file
//! system latency never stalls call reconstruction), then announces each one.
use super::payload::StoredRequest;
use super::render::render;
use super::{FailedCall, ReproConfig, ReproError, WorkerInfo, FILE_PREFIX, REPRO_WRITTEN};
use crate::events::{Bus, Event};
use std::fs::{DirBuilder, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;

/// Scripts waiting for the writer at most; beyond, failures are skipped and counted.
const QUEUE: usize = 64;

pub(super) struct Job {
    pub(super) call: FailedCall,
    pub(super) stored: Option<StoredRequest>,
    pub(super) worker: Arc<WorkerInfo>,
}

pub(super) struct WriterHandle {
    tx: SyncSender<Job>,
}

impl WriterHandle {
    pub(super) fn start(cfg: Arc<ReproConfig>, bus: Bus) -> Self {
        let (tx, rx) = sync_channel::<Job>(QUEUE);
        let spawned = std::thread::Builder::new()
            .name("repro-writer".into())
            .spawn(move || {
                for job in rx {
                    write_job(&cfg, &bus, job);
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "repro: cannot start the writer thread");
        }
        WriterHandle { tx }
    }

    /// Queues a job; gives it back when the queue is full (or the writer is gone).
    pub(super) fn send(&self, job: Job) -> Result<(), Box<Job>> {
        match self.tx.try_send(job) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(j)) | Err(TrySendError::Disconnected(j)) => Err(Box::new(j)),
        }
    }
}

fn write_job(cfg: &ReproConfig, bus: &Bus, job: Job) {
    let rendered = render(
        &job.call,
        job.stored.as_ref(),
        &job.worker,
        &cfg.redact_keys,
    );
    let call = &job.call;
    let base = Event::new(super::REPRO_SKIPPED)
        .at(call.time_unix_nano)
        .meta("pool", call.pool.clone())
        .meta("worker_id", call.worker_id.clone())
        .meta_opt("correlation_id", call.correlation_id.clone())
        .meta_opt(
            "function",
            call.function.clone().or_else(|| call.tool.clone()),
        );
    match write_script(&cfg.directory, &rendered.file_name, &rendered.text) {
        Ok(path) => {
            let mut ev = base
                .meta("path", path.display().to_string())
                .meta("truncated", rendered.truncated)
                .measure("bytes", rendered.text.len() as u64)
                .measure("redactions", rendered.redactions as u64);
            ev.name = REPRO_WRITTEN.iter().map(|s| s.to_string()).collect();
            bus.publish(ev);
        }
        Err(e) => {
            tracing::warn!(error = %e, "repro: script not written");
            bus.publish(base.meta("reason", "write_error"));
        }
    }
}

/// Creates the directory (0700) when missing and the file (0600, never replacing one).
pub fn write_script(dir: &Path, name: &str, text: &str) -> Result<PathBuf, ReproError> {
    if !dir.exists() {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| ReproError::Dir {
                path: dir.to_path_buf(),
                source,
            })?;
        // The umask may have cleared bits, never added any: set exactly 0700.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(
            |source| ReproError::Dir {
                path: dir.to_path_buf(),
                source,
            },
        )?;
    }
    let mut path = dir.join(name);
    let mut n = 1;
    let file = loop {
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(f) => break f,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 100 => {
                n += 1;
                let stem = name.trim_end_matches(".py");
                path = dir.join(format!("{stem}_{n}.py"));
            }
            Err(source) => return Err(ReproError::Write { path, source }),
        }
    };
    let mut file = file;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_data())
        .map_err(|source| ReproError::Write {
            path: path.clone(),
            source,
        })?;
    Ok(path)
}

/// The scripts in `dir`, oldest first by name (names start with the Unix time).
pub fn list_scripts(dir: &Path) -> Result<Vec<PathBuf>, ReproError> {
    let rd = std::fs::read_dir(dir).map_err(|source| ReproError::List {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut out: Vec<PathBuf> = rd
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(FILE_PREFIX) && n.ends_with(".py"))
        })
        .collect();
    out.sort();
    Ok(out)
}

/// Scripts already in `dir` (0 when it does not exist yet).
pub(super) fn count_scripts(dir: &Path) -> u64 {
    list_scripts(dir).map(|v| v.len() as u64).unwrap_or(0)
}
