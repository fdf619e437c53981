//! The split from recorded scheduling edges and (de)serialization calls, and the probe
//! plan of a real Python process.
#![allow(clippy::identity_op)]
use super::*;
use crate::kernel::{SchedEdge, SchedRecord, SerializeFn, SerializeRecord};
use std::path::Path;

const PID: u32 = 100;
const MS: u64 = 1_000_000;

fn rec(tid: u32, ts: u64, edge: SchedEdge) -> SchedRecord {
    SchedRecord {
        tgid: PID,
        tid,
        ts_ns: ts,
        edge,
    }
}

fn out(syscall: u32, arg0: u64) -> SchedEdge {
    SchedEdge::Out {
        state: 1,
        syscall: Some(syscall),
        arg0,
    }
}

fn wake(waker: u32) -> SchedEdge {
    SchedEdge::Wake {
        waker_tgid: PID,
        waker_tid: waker,
        new_thread: false,
    }
}

fn ser(tid: u32, f: SerializeFn, start: u64, end: u64, bytes: u64) -> SerializeRecord {
    SerializeRecord {
        tgid: PID,
        tid,
        function: f,
        ts_start_ns: start,
        ts_end_ns: end,
        bytes: Some(bytes),
    }
}

const FUTEX: u32 = 202;
const READ: u32 = 0;
const CLOCK_NANOSLEEP: u32 = 230;
const GIL_ADDR: u64 = 0x5000;

fn activity() -> WorkerActivity {
    let mut a = WorkerActivity::default();
    a.set_process_waits(
        PID,
        ProcessWaits {
            gil: Some(0x4000..0x6000),
            gpu_fds: vec![9],
            ..ProcessWaits::default()
        },
    );
    a
}

#[test]
fn a_cpu_bound_tool_is_on_cpu_and_preemption_is_runqueue() {
    let mut a = activity();
    let t = 7;
    a.on_sched(&rec(t, 0, SchedEdge::In));
    a.on_sched(&rec(
        t,
        60 * MS,
        SchedEdge::Out {
            state: 0,
            syscall: None,
            arg0: 0,
        },
    ));
    a.on_sched(&rec(t, 70 * MS, SchedEdge::In));
    a.on_serialize(&ser(t, SerializeFn::ProtobufDecode, 1 * MS, 2 * MS, 100));
    a.on_serialize(&ser(t, SerializeFn::ProtobufEncode, 98 * MS, 99 * MS, 50));
    let s = a.split(PID, None, 0, 100 * MS, MessageSizes::default());
    let sc = s.sched.expect("sched split");
    assert_eq!(sc.on_cpu, 90 * MS);
    assert_eq!(sc.runqueue, 10 * MS);
    assert_eq!(sc.total(), 100 * MS);
    assert_eq!(sc.bound().map(|b| b.0), Some("cpu"));
    assert_eq!(s.deserialize.map(|d| d.time), Some(MS));
    assert_eq!(s.serialize.map(|d| (d.time, d.bytes)), Some((MS, Some(50))));
    assert_eq!(s.serving_tid, Some(t));
}

#[test]
fn an_outer_entry_point_replaces_the_call_nested_in_it() {
    // FromString (outer, 1.0-3.2 ms) builds the message, then calls MergeFromString
    // (1.3-3.0 ms), whose record arrives first; another thread's decode in between
    // and this thread's later MergeFromString (ParseFromString) are kept.
    let mut a = activity();
    let t = 7;
    a.on_serialize(&ser(t, SerializeFn::ProtobufDecode, 1_300_000, 3 * MS, 900));
    a.on_serialize(&ser(8, SerializeFn::ProtobufDecode, 2 * MS, 2_100_000, 10));
    let mut outer = ser(t, SerializeFn::ProtobufDecode, MS, 3_200_000, 0);
    outer.bytes = None;
    a.on_serialize(&outer);
    a.on_serialize(&ser(t, SerializeFn::JsonDecode, 3_300_000, 4 * MS, 800));
    a.on_serialize(&ser(t, SerializeFn::ProtobufEncode, 98 * MS, 99 * MS, 50));
    let sizes = MessageSizes {
        request: Some(900),
        response: None,
    };
    let s = a.split(PID, None, 0, 100 * MS, sizes);
    let d = s.deserialize.expect("decode");
    let protobuf = d.parts.iter().find(|p| p.format == "protobuf").expect("pb");
    assert_eq!((protobuf.time, protobuf.calls), (2_200_000, 1));
    assert_eq!(protobuf.bytes, Some(900), "the inner call's size is kept");
    assert_eq!(d.time, 2_200_000 + 700_000);
}

#[test]
fn waits_are_classified_by_syscall_and_the_gil_by_address() {
    let mut a = activity();
    let t = 7;
    a.on_sched(&rec(t, 0, SchedEdge::In));
    a.on_sched(&rec(t, 10 * MS, out(READ, 3)));
    a.on_sched(&rec(t, 40 * MS, SchedEdge::In));
    a.on_sched(&rec(t, 50 * MS, out(FUTEX, GIL_ADDR)));
    a.on_sched(&rec(t, 70 * MS, SchedEdge::In));
    a.on_sched(&rec(t, 75 * MS, out(FUTEX, 0x9000)));
    a.on_sched(&rec(t, 80 * MS, SchedEdge::In));
    a.on_sched(&rec(t, 85 * MS, out(CLOCK_NANOSLEEP, 0)));
    a.on_sched(&rec(t, 95 * MS, SchedEdge::In));
    a.on_sched(&rec(t, 96 * MS, out(16, 9)));
    a.on_sched(&rec(t, 99 * MS, SchedEdge::In));
    let sc = a
        .split(PID, Some(t), 0, 100 * MS, MessageSizes::default())
        .sched
        .expect("split");
    assert_eq!(sc.io_wait, 30 * MS);
    assert_eq!(sc.gil_wait, 20 * MS);
    assert_eq!(sc.lock_wait, 5 * MS);
    assert_eq!(sc.sleep, 10 * MS);
    assert_eq!(sc.gpu_wait, 3 * MS);
    assert_eq!(sc.total(), 100 * MS);
    assert_eq!(sc.on_cpu, 32 * MS);
    assert_eq!(sc.bound().map(|b| b.0), Some("cpu"));
}

#[test]
fn a_wakeup_ends_a_wait_with_runqueue_time() {
    let mut a = activity();
    let t = 7;
    a.on_sched(&rec(t, 0, out(READ, 3)));
    a.on_sched(&rec(
        t,
        30 * MS,
        SchedEdge::Wake {
            waker_tgid: 1,
            waker_tid: 1,
            new_thread: false,
        },
    ));
    a.on_sched(&rec(t, 40 * MS, SchedEdge::In));
    let sc = a
        .split(PID, Some(t), 10 * MS, 50 * MS, MessageSizes::default())
        .sched
        .expect("split");
    assert_eq!(
        (sc.io_wait, sc.runqueue, sc.on_cpu),
        (20 * MS, 10 * MS, 10 * MS)
    );
}

/// asyncio.to_thread: the loop thread (serving: it encodes) hands the tool to a pool
/// thread and waits in epoll; the pool thread's time is the call's.
#[test]
fn a_wait_for_a_thread_it_woke_takes_that_threads_states() {
    let mut a = activity();
    let (lp, pool) = (7, 8);
    a.on_sched(&rec(pool, 0, out(FUTEX, 0x9000)));
    a.on_sched(&rec(lp, 0, SchedEdge::In));
    a.on_serialize(&ser(lp, SerializeFn::ProtobufDecode, 1 * MS, 2 * MS, 100));
    a.on_sched(&rec(pool, 3 * MS, wake(lp)));
    a.on_sched(&rec(lp, 4 * MS, out(232, 5))); // epoll_wait
    a.on_sched(&rec(pool, 4 * MS, SchedEdge::In));
    a.on_sched(&rec(pool, 50 * MS, out(READ, 3)));
    a.on_sched(&rec(pool, 80 * MS, SchedEdge::In));
    a.on_sched(&rec(lp, 90 * MS, wake(pool)));
    a.on_sched(&rec(pool, 90 * MS, out(FUTEX, 0x9000)));
    a.on_sched(&rec(lp, 90 * MS, SchedEdge::In));
    a.on_serialize(&ser(lp, SerializeFn::ProtobufEncode, 95 * MS, 96 * MS, 10));
    let s = a.split(PID, None, 0, 100 * MS, MessageSizes::default());
    // The loop's wait is named, for the profiler's off-CPU samples of the pool thread.
    assert_eq!(
        s.handoffs,
        [crate::events::Handoff {
            tid: pool,
            from_ns: 4 * MS,
            to_ns: 90 * MS
        }]
    );
    let sc = s.sched.expect("split");
    assert_eq!(sc.total(), 100 * MS);
    // lp on CPU 0-4 and 90-100; pool on CPU 4-50 and 80-90, in read 50-80.
    assert_eq!(sc.on_cpu, 70 * MS);
    assert_eq!(sc.io_wait, 30 * MS);
}

/// A GIL wait is never handed over: the serving thread waits for the interpreter.
#[test]
fn a_gil_wait_stays_the_serving_threads() {
    let mut a = activity();
    let (t, other) = (7, 8);
    a.on_sched(&rec(t, 0, SchedEdge::In));
    a.on_sched(&rec(other, 1 * MS, wake(t)));
    a.on_sched(&rec(t, 2 * MS, out(FUTEX, GIL_ADDR)));
    a.on_sched(&rec(other, 2 * MS, SchedEdge::In));
    a.on_sched(&rec(t, 10 * MS, SchedEdge::In));
    let sc = a
        .split(PID, Some(t), 0, 10 * MS, MessageSizes::default())
        .sched
        .expect("split");
    assert_eq!((sc.on_cpu, sc.gil_wait), (2 * MS, 8 * MS));
    assert_eq!(sc.bound().map(|b| b.0), Some("gil"));
}

/// The request decode and the parameter decodes right after it count; a tool's own
/// parsing later in the window does not.
#[test]
fn the_tools_own_parsing_is_not_the_calls_decoding() {
    let mut a = activity();
    let t = 7;
    a.on_serialize(&ser(5, SerializeFn::ProtobufDecode, 1 * MS, 2 * MS, 1000));
    a.on_serialize(&ser(t, SerializeFn::JsonDecode, 3 * MS, 4 * MS, 400));
    a.on_serialize(&ser(
        t,
        SerializeFn::JsonDecode,
        4 * MS + 10_000,
        5 * MS,
        400,
    ));
    // The tool parses something of its own 20 ms later.
    a.on_serialize(&ser(t, SerializeFn::ProtobufDecode, 25 * MS, 30 * MS, 99));
    a.on_serialize(&ser(t, SerializeFn::JsonDecode, 31 * MS, 32 * MS, 99));
    a.on_serialize(&ser(t, SerializeFn::JsonEncode, 90 * MS, 92 * MS, 300));
    a.on_serialize(&ser(t, SerializeFn::ProtobufEncode, 93 * MS, 94 * MS, 350));
    let sizes = MessageSizes {
        request: Some(900),
        response: None,
    };
    let s = a.split(PID, None, 0, 100 * MS, sizes);
    let d = s.deserialize.expect("decode");
    assert_eq!(d.time, MS + MS + MS - 10_000);
    assert_eq!(d.bytes, Some(1800));
    let e = s.serialize.expect("encode");
    assert_eq!((e.time, e.bytes), (3 * MS, Some(650)));
    assert_eq!(e.parts.len(), 2);
}

#[test]
fn unknown_states_leave_the_sched_split_absent() {
    let a = activity();
    assert!(a
        .split(PID, Some(7), 0, 100 * MS, MessageSizes::default())
        .sched
        .is_none());
}

#[test]
fn old_records_are_pruned_but_the_current_state_is_kept() {
    let mut a = activity();
    a.on_sched(&rec(7, 0, out(READ, 3)));
    a.on_sched(&rec(8, 0, SchedEdge::In));
    a.on_sched(&rec(8, HORIZON_NS + 10 * MS, out(READ, 3)));
    a.prune(HORIZON_NS + 20 * MS, Some(0));
    // Thread 7 has been blocked since 0: its state is still known.
    let sc = a
        .split(
            PID,
            Some(7),
            HORIZON_NS + 20 * MS,
            HORIZON_NS + 30 * MS,
            MessageSizes::default(),
        )
        .sched
        .expect("split");
    assert_eq!(sc.io_wait, 10 * MS);
}

/// Records are kept SETTLE_NS before the oldest call in flight, else before now: a
/// call in flight still gets its whole window, and an idle worker keeps seconds, not
/// the whole horizon.
#[test]
fn records_are_kept_for_the_calls_in_flight_and_a_settling_time() {
    let mut a = activity();
    for i in 0..1000 {
        a.on_sched(&rec(8, i * 10 * MS, SchedEdge::In));
        a.on_sched(&rec(8, i * 10 * MS + MS, out(READ, 3)));
    }
    let now = 10_000 * MS;
    let kept = |a: &WorkerActivity| a.timelines.thread(8).map_or(0, |t| t.segments.len());
    a.prune(now, Some(5_000 * MS));
    // From the segment in force at 3 s on.
    assert_eq!(kept(&a), 1 + 2 * 700 - 1);
    let sc = a
        .split(
            PID,
            Some(8),
            5_000 * MS,
            5_100 * MS,
            MessageSizes::default(),
        )
        .sched
        .expect("the open call's window is whole");
    assert_eq!(sc.on_cpu + sc.io_wait, 100 * MS);
    a.prune(now, None);
    assert_eq!(kept(&a), 1 + 2 * 200 - 1);
    assert!(a
        .split(
            PID,
            Some(8),
            5_000 * MS,
            5_100 * MS,
            MessageSizes::default()
        )
        .sched
        .is_none());
}

/// The plan of a real Python process, in the order a Snakepit worker imports: the
/// stdlib json and upb first (the plan is not complete: orjson is still to come and
/// would never be probed), then orjson (complete: its symbols, upb's and the
/// interpreter's _PyRuntime).
#[test]
fn plans_the_probes_of_a_real_python_process() {
    use std::io::{BufRead, Write};
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    assert!(
        python.exists(),
        "{} missing: run `cargo xtask setup` (the project venv with protobuf and orjson)",
        python.display()
    );
    let mut child = std::process::Command::new(&python)
        .args([
            "-c",
            "import sys, json; from google.protobuf import any_pb2; print('ready', flush=True); \
             sys.stdin.readline(); import orjson; print('ready', flush=True); sys.stdin.read()",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn python");
    let mut stdout = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    let mut ready = || {
        let mut line = String::new();
        stdout.read_line(&mut line).expect("read");
        assert_eq!(line.trim(), "ready");
    };
    ready();
    let before = targets::plan(Path::new("/proc"), child.id(), None);
    child
        .stdin
        .as_mut()
        .expect("stdin")
        .write_all(b"go\n")
        .expect("write");
    ready();
    let plan = targets::plan(Path::new("/proc"), child.id(), None);
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        !before.complete
            && before
                .missing
                .iter()
                .any(|m| m.starts_with("orjson: not mapped")),
        "{:?}",
        before.missing
    );
    let found: Vec<(SerializeFn, &str)> = plan
        .targets
        .iter()
        .map(|t| (t.function, t.symbol.as_str()))
        .collect();
    assert!(plan.complete, "{found:?} {:?}", plan.missing);
    assert!(
        found.contains(&(SerializeFn::JsonDecode, "loads")),
        "{found:?} {:?}",
        plan.missing
    );
    assert!(
        found.contains(&(SerializeFn::JsonEncode, "dumps")),
        "{found:?}"
    );
    assert!(
        found.iter().any(|(f, _)| *f == SerializeFn::ProtobufDecode),
        "{found:?}"
    );
    assert!(
        found.iter().any(|(f, _)| *f == SerializeFn::ProtobufEncode),
        "{found:?}"
    );
    // The stubs' deserializer, as an outer entry point around MergeFromString.
    assert!(
        plan.targets
            .iter()
            .any(|t| t.outer && t.symbol == "PyUpb_Message_FromString"),
        "{found:?}"
    );
    let gil = plan.waits.gil.expect("_PyRuntime found");
    assert!(gil.end - gil.start > 1000);
}

/// Other threads' small messages between the request decode and the parameters do not
/// end the parameter run; the response is found by its size on the handler's thread.
#[test]
fn interleaved_messages_of_other_threads_are_skipped() {
    let mut a = activity();
    let (poller, handler, telemetry) = (5, 7, 9);
    a.on_serialize(&ser(
        poller,
        SerializeFn::ProtobufDecode,
        1 * MS,
        2 * MS,
        1000,
    ));
    a.on_serialize(&ser(
        telemetry,
        SerializeFn::ProtobufEncode,
        3 * MS,
        3 * MS + 10,
        3,
    ));
    a.on_serialize(&ser(
        handler,
        SerializeFn::JsonDecode,
        30 * MS,
        40 * MS,
        900,
    ));
    a.on_serialize(&ser(
        handler,
        SerializeFn::JsonEncode,
        50 * MS,
        60 * MS,
        900,
    ));
    a.on_serialize(&ser(
        handler,
        SerializeFn::ProtobufEncode,
        90 * MS,
        91 * MS,
        950,
    ));
    a.on_serialize(&ser(
        handler,
        SerializeFn::ProtobufEncode,
        95 * MS,
        95 * MS + 10,
        40,
    ));
    let sizes = MessageSizes {
        request: Some(1000),
        response: Some(950),
    };
    let s = a.split(PID, None, 0, 100 * MS, sizes);
    // The parameter JSON carries most of the request: taken across a 28 ms gap.
    assert_eq!(s.deserialize.map(|d| d.time), Some(11 * MS));
    // The result JSON carries most of the response: taken across a 30 ms gap.
    assert_eq!(s.serialize.map(|d| d.time), Some(11 * MS));
    assert_eq!(s.serving_tid, Some(handler));
}

/// stdlib json's encoder gives no size (it returns chunks): the result's encode is
/// still the response's across a hand-over that grows with the message (join,
/// str-to-bytes and the `Any` copy of 20 MB took 55 ms in the e2e test), but not
/// across more than 10 ns per byte of it.
#[test]
fn an_unsized_result_encode_is_taken_across_a_handover_that_grows_with_the_message() {
    const MB20: u64 = 20 << 20;
    for (gap, taken) in [(55 * MS, true), (250 * MS, false)] {
        let mut a = activity();
        let handler = 7;
        let mut encoder = ser(handler, SerializeFn::JsonEncode, 10 * MS, 400 * MS, 0);
        encoder.bytes = None;
        a.on_serialize(&encoder);
        let response_start = 400 * MS + gap;
        a.on_serialize(&ser(
            handler,
            SerializeFn::ProtobufEncode,
            response_start,
            response_start + 15 * MS,
            MB20,
        ));
        let sizes = MessageSizes {
            request: None,
            response: Some(MB20),
        };
        let s = a.split(PID, None, 0, 2_000 * MS, sizes);
        let expected = if taken { 405 * MS } else { 15 * MS };
        assert_eq!(s.serialize.map(|d| d.time), Some(expected), "gap {gap}");
    }
}

/// A GPU opened by a call after the worker was planned (frameworks open it lazily):
/// the fd of an ioctl wait is looked up in the process's fd directory, and looked up
/// again after 10 s (an fd closed and reused for something else).
#[test]
fn an_ioctl_wait_on_a_gpu_opened_after_the_plan_is_a_gpu_wait() {
    const IOCTL: u32 = 16;
    let fd_dir = std::env::temp_dir().join(format!("snakepit-fds-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&fd_dir);
    std::fs::create_dir_all(&fd_dir).unwrap();
    let mut a = WorkerActivity::default();
    a.set_process_waits(
        PID,
        ProcessWaits {
            fd_dir: Some(fd_dir.clone()),
            ..ProcessWaits::default()
        },
    );
    // Opened after the plan.
    std::os::unix::fs::symlink("/dev/nvidia0", fd_dir.join("12")).unwrap();
    let t = 7;
    let wait_on_fd_12 = |a: &mut WorkerActivity, at: u64| {
        a.on_sched(&rec(t, at, SchedEdge::In));
        a.on_sched(&rec(t, at + MS, out(IOCTL, 12)));
        a.on_sched(&rec(t, at + 5 * MS, SchedEdge::In));
        a.split(PID, Some(t), at, at + 5 * MS, MessageSizes::default())
            .sched
            .expect("split")
    };
    let sc = wait_on_fd_12(&mut a, 0);
    assert_eq!((sc.gpu_wait, sc.io_wait), (4 * MS, 0));
    assert_eq!(sc.bound().map(|b| b.0), Some("gpu"));
    // fd 12 closed and reopened on a terminal: still the GPU until looked up again.
    std::fs::remove_file(fd_dir.join("12")).unwrap();
    std::os::unix::fs::symlink("/dev/pts/0", fd_dir.join("12")).unwrap();
    let sc = wait_on_fd_12(&mut a, 1_000 * MS);
    assert_eq!(sc.gpu_wait, 4 * MS);
    let sc = wait_on_fd_12(&mut a, 12_000 * MS);
    assert_eq!((sc.gpu_wait, sc.io_wait), (0, 4 * MS));
    let _ = std::fs::remove_dir_all(&fd_dir);
}

/// The first call on a fresh worker: grpc's pool starts the handler thread for it,
/// and the tool's executor starts its helper thread. Neither was seen before the
/// window: the handler takes the reader's states until it first ran, and the helper
/// its own from when it first ran.
#[test]
fn threads_started_for_the_call_are_followed_from_when_first_seen() {
    let mut a = activity();
    let (reader, handler, helper) = (5, 7, 8);
    a.on_sched(&rec(reader, 0, SchedEdge::In));
    a.on_sched(&rec(reader, 3 * MS, out(232, 4))); // back to epoll_wait
    a.on_sched(&rec(handler, 2 * MS, SchedEdge::In)); // first seen
    a.on_serialize(&ser(handler, SerializeFn::JsonDecode, 4 * MS, 5 * MS, 100));
    a.on_sched(&rec(handler, 10 * MS, out(FUTEX, 0x9000)));
    a.on_sched(&rec(helper, 12 * MS, SchedEdge::In)); // first seen
    a.on_sched(&rec(helper, 20 * MS, out(READ, 3)));
    a.on_sched(&rec(helper, 80 * MS, SchedEdge::In));
    a.on_sched(&rec(handler, 90 * MS, wake(helper)));
    a.on_sched(&rec(helper, 90 * MS, out(FUTEX, 0x9100)));
    a.on_sched(&rec(handler, 90 * MS, SchedEdge::In));
    let s = a.split(PID, Some(reader), 1 * MS, 100 * MS, MessageSizes::default());
    assert_eq!(s.serving_tid, Some(handler));
    let sc = s.sched.expect("split");
    assert_eq!(sc.total(), 99 * MS);
    // reader 1-2 on CPU; handler 2-10, helper 12-20 and 80-90, handler 90-100 on CPU;
    // helper in read 20-80; 10-12 (before the helper first ran) the handler's wait.
    assert_eq!(sc.on_cpu, (1 + 8 + 8 + 10 + 10) * MS);
    assert_eq!(sc.io_wait, 60 * MS);
    assert_eq!(sc.lock_wait, 2 * MS);
    assert_eq!(
        s.handoffs,
        [crate::events::Handoff {
            tid: helper,
            from_ns: 10 * MS,
            to_ns: 90 * MS
        }]
    );
}

/// The split's probes paused (sampling above a call rate) from 100 to 300 ms: a thread
/// that did not switch since has no known state, one that did is known again from its
/// first record, and a window across the pause is never split.
#[test]
fn a_pause_of_the_split_probes_leaves_threads_unknown_until_their_next_record() {
    let mut a = activity();
    let (busy, idle) = (7, 8);
    for t in [busy, idle] {
        a.on_sched(&rec(t, 0, SchedEdge::In));
        a.on_sched(&rec(t, 50 * MS, out(READ, 3)));
    }
    // Paused at 100 ms, resumed at 300 ms (the tick sees the pause's start).
    a.timelines.mark_unwatched(100 * MS);
    // The busy thread's first switch in the new window is a first sight (In only).
    a.on_sched(&rec(busy, 320 * MS, SchedEdge::In));
    a.on_sched(&rec(busy, 340 * MS, out(READ, 3)));
    let split = |a: &WorkerActivity, tid: u32, from: u64, to: u64| {
        a.split(PID, Some(tid), from, to, MessageSizes::default())
            .sched
    };
    let known = split(&a, busy, 330 * MS, 360 * MS).expect("known again");
    assert_eq!((known.on_cpu, known.io_wait), (10 * MS, 20 * MS));
    assert!(
        split(&a, idle, 330 * MS, 360 * MS).is_none(),
        "not seen since the pause"
    );
    assert!(
        split(&a, busy, 60 * MS, 330 * MS).is_none(),
        "across the pause"
    );
    // Before the pause, as before.
    let before = split(&a, busy, 10 * MS, 90 * MS).expect("before the pause");
    assert_eq!((before.on_cpu, before.io_wait), (40 * MS, 40 * MS));
}
