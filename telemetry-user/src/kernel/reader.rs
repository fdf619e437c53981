//! The ring-buffer reader task: drains EVENTS when epoll says it is readable,
//! decodes each record at the one checked point and forwards it.
use std::sync::{atomic::Ordering, Arc};

use aya::maps::{MapData, RingBuf};
use tokio::{io::unix::AsyncFd, sync::mpsc};

use super::{
    decode::{decode, KernelEvent},
    stats::ReaderCounters,
};

/// Events buffered between the reader and its consumer. When full the reader waits,
/// and the kernel counts ring-buffer drops instead of user space losing records.
pub const CHANNEL_CAPACITY: usize = 65536;
/// Records taken per wakeup before they are forwarded.
const BATCH: usize = 1024;
/// Pause after draining the ring (adds at most this much latency to events).
const COALESCE: std::time::Duration = std::time::Duration::from_millis(2);

pub(crate) async fn run(
    mut afd: AsyncFd<RingBuf<MapData>>,
    tx: mpsc::Sender<KernelEvent>,
    counters: Arc<ReaderCounters>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let mut guard = match afd.readable_mut().await {
            Ok(g) => g,
            Err(e) => {
                log::error!("ring buffer poll failed: {e}");
                return;
            }
        };
        let ring = guard.get_inner_mut();
        let mut drained = true;
        while let Some(item) = ring.next() {
            counters.records.fetch_add(1, Ordering::Relaxed);
            match decode(&item) {
                Ok(ev) => batch.push(ev),
                Err(e) => {
                    counters.decode_errors.fetch_add(1, Ordering::Relaxed);
                    log::debug!("bad kernel record: {e}");
                }
            }
            if batch.len() >= BATCH {
                drained = false;
                break;
            }
        }
        // Only an empty ring may wait for the next epoll edge.
        if drained {
            guard.clear_ready();
        }
        drop(guard);
        for ev in batch.drain(..) {
            if tx.send(ev).await.is_err() {
                return; // consumer gone
            }
        }
        if drained {
            // The kernel wakes epoll for every record: under load that is a thread
            // switch per syscall observed. Pausing briefly once the ring is empty lets
            // records gather, so one wakeup drains many (the ring is sized for it).
            tokio::time::sleep(COALESCE).await;
        }
    }
}

/// Forwards aya-log records from the probes to the `log` facade.
pub(crate) async fn run_logger(mut afd: AsyncFd<aya_log::EbpfLogger<&'static dyn log::Log>>) {
    loop {
        let mut guard = match afd.readable_mut().await {
            Ok(g) => g,
            Err(e) => {
                log::warn!("eBPF log poll failed: {e}");
                return;
            }
        };
        guard.get_inner_mut().flush();
        guard.clear_ready();
    }
}
