//! The ring-buffer reader task: drains EVENTS on a timer, decodes each record at the
//! one checked point and forwards it.
//!
//! The probes submit with BPF_RB_NO_WAKEUP: a wakeup costs the traced process ~1.4 us
//! per record (and the agent a thread switch); polling costs nothing per record and
//! adds at most `POLL_MAX` of latency. Once the ring holds an eighth of its size
//! unread, the probes submit with BPF_RB_FORCE_WAKEUP instead, and the reader, which
//! waits on the ring's fd as well as its timer, drains it at once: a burst cannot fill
//! the ring between two polls.
use std::sync::{atomic::Ordering, Arc};
use std::time::Duration;

use aya::maps::{MapData, RingBuf};
use tokio::{io::unix::AsyncFd, sync::mpsc};

use super::{
    decode::{decode_with, KernelEvent},
    stats::ReaderCounters,
};

/// Batches buffered between the reader and its consumer (at most BATCH records
/// each). When full the reader waits, and the kernel counts ring-buffer drops instead
/// of user space losing records.
pub const CHANNEL_BATCHES: usize = 64;
/// Records taken before they are forwarded.
const BATCH: usize = 1024;
/// Poll interval while records keep coming, and the longest one when idle (the
/// interval doubles from the first to the second while the ring stays empty).
/// Every wakeup walks the agent's working set cold: 16 ms instead of 4 ms took about
/// 15 % off the agent's CPU per call (docs/benchmarks.md).
const POLL_MIN: Duration = Duration::from_millis(16);
const POLL_MAX: Duration = Duration::from_millis(32);

/// The decoded records, in batches: one channel send per drain of the ring, not one
/// per record (about 22 records per tool call, with its InitializeSession callback).
pub struct KernelEvents {
    rx: mpsc::Receiver<Vec<KernelEvent>>,
    /// The rest of the batch `recv`/`try_recv` took last, in order.
    pending: std::collections::VecDeque<KernelEvent>,
}

impl KernelEvents {
    /// The next batch (waiting for one); None when the reader stopped.
    pub async fn recv_batch(&mut self) -> Option<Vec<KernelEvent>> {
        if !self.pending.is_empty() {
            return Some(self.pending.drain(..).collect());
        }
        self.rx.recv().await
    }

    /// The next record (waiting for one); None when the reader stopped.
    pub async fn recv(&mut self) -> Option<KernelEvent> {
        while self.pending.is_empty() {
            self.pending.extend(self.rx.recv().await?);
        }
        self.pending.pop_front()
    }

    /// A record already decoded, without waiting.
    pub fn try_recv(&mut self) -> Option<KernelEvent> {
        while self.pending.is_empty() {
            self.pending.extend(self.rx.try_recv().ok()?);
        }
        self.pending.pop_front()
    }
}

pub(crate) fn spawn(ring: RingBuf<MapData>, counters: Arc<ReaderCounters>) -> KernelEvents {
    let (tx, rx) = mpsc::channel(CHANNEL_BATCHES);
    tokio::spawn(run(ring, tx, counters));
    KernelEvents {
        rx,
        pending: Default::default(),
    }
}

async fn run(
    ring: RingBuf<MapData>,
    tx: mpsc::Sender<Vec<KernelEvent>>,
    counters: Arc<ReaderCounters>,
) {
    let mut ring = Ring::new(ring);
    let mut batch = Vec::with_capacity(BATCH);
    let mut arena = bytes::BytesMut::with_capacity(super::decode::ARENA_BYTES);
    let mut pause = POLL_MIN;
    loop {
        let mut drained = true;
        let mut any = false;
        while let Some(item) = ring.ring().next() {
            any = true;
            counters.records.fetch_add(1, Ordering::Relaxed);
            match decode_with(&item, &mut arena) {
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
        if !batch.is_empty() {
            // The next batch starts at about this one's size.
            let next = Vec::with_capacity(batch.len().max(16));
            if tx.send(std::mem::replace(&mut batch, next)).await.is_err() {
                return; // consumer gone
            }
        }
        if drained {
            pause = if any {
                POLL_MIN
            } else {
                (pause * 2).min(POLL_MAX)
            };
            ring.wait(pause).await;
        } else if tx.is_closed() {
            return;
        }
    }
}

/// The ring, with its fd registered for the forced wakeups where that works.
enum Ring {
    Polled(AsyncFd<RingBuf<MapData>>),
    TimerOnly(RingBuf<MapData>),
}

impl Ring {
    fn new(ring: RingBuf<MapData>) -> Ring {
        // SAFETY: the RingBuf owns its map fd and neither closes nor replaces it while
        // the AsyncFd holds it (it is closed when the AsyncFd drops the RingBuf).
        let registered =
            unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) };
        match registered {
            Ok(fd) => Ring::Polled(fd),
            Err(e) => {
                let (ring, e) = e.into_parts();
                log::warn!(
                    "ring buffer fd cannot be polled ({e}): records are read on the timer only"
                );
                Ring::TimerOnly(ring)
            }
        }
    }

    fn ring(&mut self) -> &mut RingBuf<MapData> {
        match self {
            Ring::Polled(fd) => fd.get_mut(),
            Ring::TimerOnly(ring) => ring,
        }
    }

    /// Waits for the poll interval or a forced wakeup, whichever comes first.
    async fn wait(&mut self, pause: Duration) {
        let fd = match self {
            Ring::Polled(fd) => fd,
            Ring::TimerOnly(_) => return tokio::time::sleep(pause).await,
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            ready = fd.readable_mut() => match ready {
                // Cleared before the drain that follows, so a wakeup during it is seen.
                Ok(mut guard) => guard.clear_ready(),
                // Only when the runtime shuts down: sleep, do not spin.
                Err(e) => {
                    log::debug!("ring buffer poll failed: {e}");
                    tokio::time::sleep(pause).await
                }
            },
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
