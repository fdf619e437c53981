//! oom/mark_victim: the kernel's OOM killer (global or a memory cgroup's) chose a
//! process. Reported for watched processes only, so a worker's SIGKILL can be told
//! apart from an OOM kill (the exit status alone cannot).
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use telemetry_common::{RecordKind, PROBE_OOM};

use crate::lifecycle::{empty_event, send};
use crate::maps::{ctx_u32, WATCHED_PIDS};

/// `int pid` of the mark_victim record (after the 8-byte common header).
const MARK_VICTIM_PID: usize = 8;

#[tracepoint]
pub fn oom_mark_victim(ctx: TracePointContext) -> u32 {
    match try_mark_victim(&ctx) {
        Ok(()) | Err(()) => 0,
    }
}

#[inline(always)]
fn try_mark_victim(ctx: &TracePointContext) -> Result<(), ()> {
    let victim = ctx_u32(ctx, MARK_VICTIM_PID);
    // Rare (an OOM kill); the lookup keeps unwatched victims out.
    if WATCHED_PIDS.get_ptr(victim).is_none() {
        return Ok(());
    }
    // The current task is whoever ran out of memory, not necessarily the victim.
    let mut ev = empty_event(RecordKind::OomKill, 0);
    ev.tgid = victim;
    ev.tid = victim;
    send(&ev, PROBE_OOM);
    Ok(())
}
