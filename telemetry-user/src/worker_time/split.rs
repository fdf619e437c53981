//! A call's worker window `[t1, t2]` cut into its parts.
//!
//! The serving thread is the one that decoded the parameters (the tool's handler),
//! else the one that encoded the response, else the one that read the request. Its
//! own timeline gives the split, with one hand-over rule: while it waits on a lock or
//! for I/O and another thread of the same process ends that wait (wakes it), the wait
//! was for that thread's work, and that thread's own states count over it (one level,
//! no further hand-over): the gRPC thread that read the request and handed it over,
//! the pool thread of `asyncio.to_thread` that ran the tool while the event loop
//! waited. A GIL wait, a sleep or a GPU wait is never handed over.
use super::timeline::{ThreadState, Timelines, WaitReason};
use super::{MessageSizes, WorkerActivity};
use crate::events::{Handoff, SchedSplit, SerializeSplit, WorkerSplit};

pub fn split(
    act: &WorkerActivity,
    tgid: u32,
    reader_tid: Option<u32>,
    a: u64,
    b: u64,
    sizes: MessageSizes,
) -> WorkerSplit {
    let (decode, encode) = act.serialize.phases(tgid, a, b, sizes);
    let serving = decode
        .as_ref()
        .filter(|p| p.parts.iter().any(|x| x.format == "json"))
        .map(|p| p.tid)
        .or(encode.as_ref().map(|p| p.tid))
        .or(reader_tid);
    let (sched, handoffs) = serving
        .and_then(|tid| sched_split(&act.timelines, tgid, tid, reader_tid, a, b))
        .map_or((None, Vec::new()), |(s, h)| (Some(s), h));
    WorkerSplit {
        worker_time: b.saturating_sub(a),
        deserialize: decode.map(|p| SerializeSplit {
            time: p.time,
            bytes: p.bytes,
            parts: p.parts,
        }),
        serialize: encode.map(|p| SerializeSplit {
            time: p.time,
            bytes: p.bytes,
            parts: p.parts,
        }),
        sched,
        serving_tid: serving,
        handoffs,
    }
}

fn add(split: &mut SchedSplit, state: ThreadState, d: u64) {
    match state {
        ThreadState::OnCpu => split.on_cpu += d,
        ThreadState::Runnable => split.runqueue += d,
        // Never clipped into a window (`clipped` refuses it).
        ThreadState::Unwatched => {}
        ThreadState::Blocked(r) => match r {
            WaitReason::Io => split.io_wait += d,
            WaitReason::Gil => split.gil_wait += d,
            WaitReason::Lock => split.lock_wait += d,
            WaitReason::Sleep => split.sleep += d,
            WaitReason::Gpu => split.gpu_wait += d,
        },
    }
}

/// The serving thread's split of `[a, b]` and the waits it handed over, None when its
/// timeline does not cover `a`. A serving thread first seen inside the window (a
/// pool's thread started for the call) takes the reader's states before that: the
/// request was still the reader's.
pub fn sched_split(
    tl: &Timelines,
    tgid: u32,
    tid: u32,
    reader_tid: Option<u32>,
    a: u64,
    b: u64,
) -> Option<(SchedSplit, Vec<Handoff>)> {
    let same_process = |t: u32| tl.thread(t).filter(|l| l.tgid == tgid);
    let line = same_process(tid)?;
    let mut out = SchedSplit::default();
    let segs = match line.clipped(a, b) {
        Some(segs) => segs,
        None => {
            let seen = line.first_seen().filter(|&f| f < b)?;
            let reader = reader_tid.filter(|&r| r != tid).and_then(same_process)?;
            for (s, e, state) in reader.clipped(a, seen)? {
                add(&mut out, state, e - s);
            }
            line.clipped(seen, b)?
        }
    };
    let mut handoffs = Vec::new();
    for (s, e, state) in segs {
        // The helper may be a thread started for the work (first seen in the wait).
        let delegate = match state {
            ThreadState::Blocked(WaitReason::Lock | WaitReason::Io) => line
                .woken_by_in(s, wait_end(line, s, b))
                .filter(|&d| d != tid)
                .and_then(|d| Some((d, same_process(d)?.clipped_since_seen(s, e)?))),
            _ => None,
        };
        match delegate {
            Some((d, parts)) if !parts.is_empty() => {
                handoffs.push(Handoff {
                    tid: d,
                    from_ns: s,
                    to_ns: e,
                });
                let covered: u64 = parts.iter().map(|(ps, pe, _)| pe - ps).sum();
                for (ps, pe, st) in parts {
                    add(&mut out, st, pe - ps);
                }
                // Whatever the delegate's timeline does not cover stays the wait's.
                add(&mut out, state, (e - s).saturating_sub(covered));
            }
            _ => add(&mut out, state, e - s),
        }
    }
    Some((out, handoffs))
}

/// When the blocked segment starting at `s` ends (its next segment), or `b`.
fn wait_end(line: &super::timeline::ThreadLine, s: u64, b: u64) -> u64 {
    let i = line.segments.partition_point(|x| x.start <= s);
    line.segments.get(i).map_or(b, |n| n.start)
}
