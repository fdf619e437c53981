//! The ring-buffer reader task: drains EVENTS on a timer, decodes each record at the
//! one checked point and forwards it.
//!
//! The probes submit with BPF_RB_NO_WAKEUP: a wakeup costs the traced process ~1.4 us
//! per record (and the agent a thread switch); polling costs nothing per record and
//! adds at most `POLL_MAX` of latency. Once the ring holds an eighth of its size
//! unread, the probes submit with BPF_RB_FORCE_WAKEUP instead, and the reader, which
//! waits on the ring's fd as well as its timer, drains it at once: a burst cannot fill
//! the ring between two polls.
use std::sync::{atomic::Ordering, Arc, Mutex};
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

/// Emptied batches handed back for the reader to fill again, at most this many kept
/// (each has room for BATCH records; others are dropped).
/// A batch of a busy drain holds hundreds of 160-byte records: allocating one per
/// drain and freeing it after was 3-4 % of the agent's CPU at saturation, most of it
/// glibc consolidating its free lists at each of these large allocations.
const SPARE_BATCHES: usize = 4;

/// Batches the consumer emptied, for the reader (both run on the agent's runtime).
#[derive(Clone, Default)]
struct SpareBatches(Arc<Mutex<Vec<Vec<KernelEvent>>>>);

impl SpareBatches {
    fn put(&self, mut batch: Vec<KernelEvent>) {
        batch.clear();
        if let Ok(mut spare) = self.0.lock() {
            if spare.len() < SPARE_BATCHES && batch.capacity() == BATCH {
                spare.push(batch);
            }
        }
    }

    /// An empty batch with room for BATCH records (it never grows), one handed back
    /// if there is one.
    fn take(&self) -> Vec<KernelEvent> {
        let spare = self.0.lock().ok().and_then(|mut s| s.pop());
        spare.unwrap_or_else(|| Vec::with_capacity(BATCH))
    }
}

/// The decoded records, in batches: one channel send per drain of the ring, not one
/// per record (about 22 records per tool call, with its InitializeSession callback).
pub struct KernelEvents {
    rx: mpsc::Receiver<Vec<KernelEvent>>,
    /// The rest of the batch `recv`/`try_recv` took last, in order.
    pending: std::collections::VecDeque<KernelEvent>,
    spare: SpareBatches,
}

impl KernelEvents {
    /// The next batch (waiting for one); None when the reader stopped. Hand it back
    /// with [`Self::recycle`] once its records are taken out.
    pub async fn recv_batch(&mut self) -> Option<Vec<KernelEvent>> {
        if !self.pending.is_empty() {
            return Some(self.pending.drain(..).collect());
        }
        self.rx.recv().await
    }

    /// Gives an emptied batch back to the reader, to be filled again.
    pub fn recycle(&self, batch: Vec<KernelEvent>) {
        self.spare.put(batch);
    }

    /// The next record (waiting for one); None when the reader stopped.
    pub async fn recv(&mut self) -> Option<KernelEvent> {
        while self.pending.is_empty() {
            let mut batch = self.rx.recv().await?;
            self.pending.extend(batch.drain(..));
            self.spare.put(batch);
        }
        self.pending.pop_front()
    }

    /// A record already decoded, without waiting.
    pub fn try_recv(&mut self) -> Option<KernelEvent> {
        while self.pending.is_empty() {
            let mut batch = self.rx.try_recv().ok()?;
            self.pending.extend(batch.drain(..));
            self.spare.put(batch);
        }
        self.pending.pop_front()
    }
}

pub(crate) fn spawn(ring: RingBuf<MapData>, counters: Arc<ReaderCounters>) -> KernelEvents {
    let (tx, rx) = mpsc::channel(CHANNEL_BATCHES);
    let spare = SpareBatches::default();
    tokio::spawn(run(ring, tx, counters, spare.clone()));
    KernelEvents {
        rx,
        pending: Default::default(),
        spare,
    }
}

async fn run(
    ring: RingBuf<MapData>,
    tx: mpsc::Sender<Vec<KernelEvent>>,
    counters: Arc<ReaderCounters>,
    spare: SpareBatches,
) {
    let mut ring = Ring::new(ring);
    let mut batch = spare.take();
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
            let next = spare.take();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emptied_batches_are_filled_again_up_to_a_few() {
        let spare = SpareBatches::default();
        let first = spare.take();
        assert_eq!(first.capacity(), BATCH);
        let at = first.as_ptr();
        spare.put(first);
        let again = spare.take();
        assert_eq!(again.as_ptr(), at, "the batch handed back is reused");
        for _ in 0..SPARE_BATCHES + 3 {
            spare.put(Vec::with_capacity(BATCH));
        }
        spare.put(Vec::with_capacity(7));
        assert_eq!(spare.0.lock().map(|s| s.len()).unwrap_or(0), SPARE_BATCHES);
    }
}
