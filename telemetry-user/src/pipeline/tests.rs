//! The pipeline alone: kernel records in, observations out. Records are built the way
//! the probes build them (full records from the sender, lean records from the
//! receiver), from real HTTP/2 + HPACK + gRPC bytes.
use super::*;
use crate::kernel::{FrameMark, FrameMarks, Syscall};
use crate::wire::snakepit as sp;
use bytes::Bytes;
use prost::Message;

const BEAM: u32 = 100;
const BEAM_FD: u32 = 20;
const WORKER: u32 = 200;
const WORKER_FD: u32 = 7;
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const TOOL_PATH: &str = "/snakepit.bridge.BridgeService/ExecuteTool";

/// One BEAM -> worker gRPC connection, as discovery pairs it.
struct OneConn(ConnInfo);

impl ConnDirectory for OneConn {
    fn conn_for_fd(&self, tgid: u32, fd: u32) -> Option<&ConnInfo> {
        let c = &self.0;
        ((tgid, fd) == (c.beam_pid, c.beam_fd) || (tgid, fd) == (c.worker_pid, c.worker_fd))
            .then_some(c)
    }
    fn adapter(&self, _worker_pid: u32) -> Option<String> {
        Some("demo_adapter.DemoAdapter".into())
    }
    fn stdin_conn_id(&self, stdout: &ConnInfo) -> u64 {
        stdout.id
    }
}

fn directory() -> OneConn {
    OneConn(ConnInfo {
        id: 1,
        beam_pid: BEAM,
        beam_fd: BEAM_FD,
        worker_pid: WORKER,
        worker_fd: WORKER_FD,
        worker_id: "default_worker_1_a".into(),
        pool: "default".into(),
        beam_addr: None,
        worker_addr: None,
        role: ConnRole::BeamClient,
        transport: Transport::Grpc,
        inode: 9,
    })
}

fn frame(ty: u8, flags: u8, sid: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.extend([ty, flags]);
    f.extend(sid.to_be_bytes());
    f.extend(payload);
    f
}

/// HPACK literals without indexing, plain strings.
fn block(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut b = Vec::new();
    for (n, v) in fields {
        b.push(0x00);
        b.push(n.len() as u8);
        b.extend(n.as_bytes());
        b.push(v.len() as u8);
        b.extend(v.as_bytes());
    }
    b
}

fn grpc_message(body: &[u8]) -> Vec<u8> {
    let mut m = vec![0];
    m.extend((body.len() as u32).to_be_bytes());
    m.extend(body);
    m
}

/// The BEAM's request stream for `calls` unary ExecuteTool calls (odd stream ids), and
/// the offsets of its frame headers.
fn request_stream(calls: u32, with_preface: bool) -> (Vec<u8>, Vec<usize>) {
    let mut s = Vec::new();
    let mut heads = Vec::new();
    if with_preface {
        s.extend(PREFACE);
        heads.push(s.len());
        s.extend(frame(4, 0, 0, &[]));
    }
    for i in 0..calls {
        let sid = 2 * i + 1;
        let req = sp::ExecuteToolRequest {
            session_id: "sess_1".into(),
            tool_name: format!("tool_{i}"),
            ..Default::default()
        }
        .encode_to_vec();
        heads.push(s.len());
        s.extend(frame(
            1,
            0x4,
            sid,
            &block(&[
                (":method", "POST"),
                (":scheme", "http"),
                (":path", TOOL_PATH),
                ("content-type", "application/grpc"),
            ]),
        ));
        heads.push(s.len());
        s.extend(frame(0, 0x1, sid, &grpc_message(&req)));
    }
    (s, heads)
}

/// The worker's response stream for the same calls.
fn response_stream(calls: u32) -> (Vec<u8>, Vec<usize>) {
    let mut s = Vec::new();
    let mut heads = vec![0];
    s.extend(frame(4, 0, 0, &[]));
    for i in 0..calls {
        let sid = 2 * i + 1;
        let resp = sp::ExecuteToolResponse {
            success: true,
            ..Default::default()
        }
        .encode_to_vec();
        heads.push(s.len());
        s.extend(frame(1, 0x4, sid, &block(&[(":status", "200")])));
        heads.push(s.len());
        s.extend(frame(0, 0, sid, &grpc_message(&resp)));
        heads.push(s.len());
        s.extend(frame(1, 0x5, sid, &block(&[("grpc-status", "0")])));
    }
    (s, heads)
}

struct Rec {
    tgid: u32,
    fd: u32,
    direction: Direction,
}

/// Full records of `stream` cut into `writes`, with the kernel's cursor (`heads`).
fn full_records(
    r: Rec,
    stream: &[u8],
    heads: &[usize],
    writes: &[usize],
    seq0: u64,
    t: u64,
) -> Vec<IoRecord> {
    let mut out = Vec::new();
    let mut pos = 0;
    for (i, &n) in writes.iter().enumerate() {
        let cursor = heads
            .get(heads.partition_point(|&h| h < pos))
            .map(|&h| (h - pos) as u32);
        out.push(IoRecord {
            tgid: r.tgid,
            tid: r.tgid + 1,
            fd: r.fd,
            direction: r.direction,
            syscall: Syscall::Writev,
            ret: n as i64,
            ts_enter_ns: t + 10 * i as u64,
            ts_exit_ns: t + 10 * i as u64 + 5,
            seq: seq0 + i as u64,
            payload: Bytes::copy_from_slice(&stream[pos..pos + n]),
            marks: FrameMarks::default(),
            frame_status: if cursor.is_some() {
                FrameStatus::Tracked
            } else {
                FrameStatus::Unknown
            },
            cursor_in: cursor,
            partial_in: 0,
            capture: Capture::Full,
            stream_pos: pos as u64,
        });
        pos += n;
    }
    out
}

/// Lean records of `stream` read in `reads`, as the kernel sends them: no payload, a
/// mark (up to MARK_BYTES) at each frame header not inside the previous mark, and a
/// record only for reads in which a frame ends. Reads never split a header here.
fn lean_records(r: Rec, stream: &[u8], heads: &[usize], reads: &[usize], t: u64) -> Vec<IoRecord> {
    let mut bounds: Vec<usize> = heads.to_vec();
    bounds.push(stream.len());
    let mut out = Vec::new();
    let mut pos = 0;
    for (i, &n) in reads.iter().enumerate() {
        let end = pos + n;
        // Heads are sorted: the ones in [pos, end) by binary search (benchmarks build
        // thousands of calls).
        let (first, past) = (
            heads.partition_point(|&h| h < pos),
            heads.partition_point(|&h| h < end),
        );
        assert!(
            !heads[..past].iter().rev().take(1).any(|&h| h + 9 > end),
            "a read splits a header"
        );
        let next = bounds[bounds.partition_point(|&b| b < pos)];
        if next <= end {
            let mut marks = Vec::new();
            let mut last: Option<(usize, usize)> = None;
            for &h in &heads[first..past] {
                if last.is_some_and(|(ms, me)| h >= ms && h + 9 <= me) {
                    continue;
                }
                let me = (h + telemetry_common::MARK_BYTES).min(end);
                marks.push(FrameMark {
                    offset: (h - pos) as u32,
                    bytes: Bytes::copy_from_slice(&stream[h..me]),
                });
                last = Some((h, me));
            }
            out.push(IoRecord {
                tgid: r.tgid,
                tid: r.tgid + 2,
                fd: r.fd,
                direction: r.direction,
                syscall: Syscall::Recvfrom,
                ret: n as i64,
                ts_enter_ns: t + 10 * i as u64,
                ts_exit_ns: t + 10 * i as u64 + 5,
                seq: out.len() as u64,
                payload: Bytes::new(),
                marks: FrameMarks::from_vec(marks),
                frame_status: FrameStatus::Tracked,
                cursor_in: Some((next - pos) as u32),
                partial_in: 0,
                capture: Capture::Frames,
                stream_pos: pos as u64,
            });
        }
        pos = end;
    }
    out
}

/// The tool names of the ExecuteTool requests decoded in `obs`.
fn request_tools(obs: &[Observation]) -> Vec<String> {
    obs.iter()
        .filter_map(|o| match &o.what {
            Observed::Message {
                flow: Flow::Request,
                message,
                ..
            } => sp::decode_execute_tool_request(&message.data)
                .ok()
                .map(|p| p.msg.tool_name),
            _ => None,
        })
        .collect()
}

fn feed(p: &mut Pipeline, dir: &OneConn, recs: Vec<IoRecord>) -> Vec<Observation> {
    let mut out = Vec::new();
    for r in recs {
        p.on_io(r, dir, &mut out);
    }
    out
}

fn live_pipeline(dir: &OneConn) -> Pipeline {
    let mut p = Pipeline::default();
    p.fd_opened(BEAM, BEAM_FD);
    p.fd_opened(WORKER, WORKER_FD);
    let mut out = Vec::new();
    p.connection_opened(&dir.0, dir, &mut out);
    p
}

const BEAM_OUT: Rec = Rec {
    tgid: BEAM,
    fd: BEAM_FD,
    direction: Direction::Egress,
};
const BEAM_IN: Rec = Rec {
    tgid: BEAM,
    fd: BEAM_FD,
    direction: Direction::Ingress,
};
const WORKER_OUT: Rec = Rec {
    tgid: WORKER,
    fd: WORKER_FD,
    direction: Direction::Egress,
};
const WORKER_IN: Rec = Rec {
    tgid: WORKER,
    fd: WORKER_FD,
    direction: Direction::Ingress,
};

#[test]
fn decode_once_full_sender_lean_receiver() {
    let dir = directory();
    let mut p = live_pipeline(&dir);
    let (req, req_heads) = request_stream(2, true);
    let (resp, resp_heads) = response_stream(2);

    // The BEAM writes both requests at once; the worker reads them in two reads.
    let beam_out = feed(
        &mut p,
        &dir,
        full_records(BEAM_OUT, &req, &req_heads, &[req.len()], 0, 1000),
    );
    let cut = req_heads[3]; // the second call's HEADERS starts the second read
    let worker_in = feed(
        &mut p,
        &dir,
        lean_records(WORKER_IN, &req, &req_heads, &[cut, req.len() - cut], 2000),
    );
    // The decoding side: both requests, with their tool names.
    let tools = request_tools(&beam_out);
    assert_eq!(tools, ["tool_0", "tool_1"]);
    assert!(beam_out.iter().all(|o| o.side == Side::Beam));
    // The timing side: no content, the end of each request at the read that held it.
    assert!(worker_in
        .iter()
        .all(|o| matches!(o.what, Observed::Timing { .. })));
    let ends: Vec<(u32, u64)> = worker_in
        .iter()
        .filter_map(|o| match o.what {
            Observed::Timing {
                flow: Flow::Request,
                stream_id,
                end: FrameEnd::Stream,
            } => Some((stream_id, o.ts_exit_ns)),
            _ => None,
        })
        .collect();
    assert_eq!(ends, [(1, 2005), (3, 2015)]);

    // The worker writes each response in one write; the BEAM reads them in small
    // reads: one of them falls inside a frame and sends nothing.
    let worker_out = feed(
        &mut p,
        &dir,
        full_records(WORKER_OUT, &resp, &resp_heads, &[resp.len()], 0, 3000),
    );
    let d1 = resp_heads[2];
    let reads = [d1 + 9 + 3, 2, resp.len() - (d1 + 14)];
    let beam_in = feed(
        &mut p,
        &dir,
        lean_records(BEAM_IN, &resp, &resp_heads, &reads, 4000),
    );
    let decoded_ends = worker_out
        .iter()
        .filter(|o| {
            matches!(
                o.what,
                Observed::EndStream {
                    flow: Flow::Response,
                    ..
                }
            )
        })
        .count();
    assert_eq!(decoded_ends, 2, "{worker_out:?}");
    let timed_ends: Vec<(u32, u64)> = beam_in
        .iter()
        .filter_map(|o| match o.what {
            Observed::Timing {
                flow: Flow::Response,
                stream_id,
                end: FrameEnd::Headers { end_stream: true },
            } => Some((stream_id, o.ts_exit_ns)),
            _ => None,
        })
        .collect();
    assert_eq!(timed_ends, [(1, 4025), (3, 4025)]);
    assert_eq!(
        p.stats.chunks_timed, 4,
        "the read inside a frame sent nothing"
    );
    assert!(
        p.take_cursor_hints().is_empty(),
        "the kernel knew every cursor"
    );
}

#[test]
fn silent_reads_inside_a_large_frame_keep_the_timer_in_step() {
    let dir = directory();
    let mut p = live_pipeline(&dir);
    // One request whose DATA frame is 20 KB, read 1460 bytes at a time.
    let big = sp::ExecuteToolRequest {
        tool_name: "big".into(),
        session_id: "x".repeat(20_000),
        ..Default::default()
    }
    .encode_to_vec();
    let mut req = PREFACE.to_vec();
    let h_settings = req.len();
    req.extend(frame(4, 0, 0, &[]));
    let h_headers = req.len();
    req.extend(frame(1, 0x4, 1, &block(&[(":path", TOOL_PATH)])));
    let h_data = req.len();
    req.extend(frame(0, 0x1, 1, &grpc_message(&big)));
    let heads = [h_settings, h_headers, h_data];
    let _ = feed(
        &mut p,
        &dir,
        full_records(BEAM_OUT, &req, &heads, &[req.len()], 0, 10),
    );
    let mut reads = vec![h_data + 9];
    let mut left = req.len() - reads[0];
    while left > 0 {
        let n = left.min(1460);
        reads.push(n);
        left -= n;
    }
    let recs = lean_records(WORKER_IN, &req, &heads, &reads, 5000);
    assert!(
        recs.len() < 4,
        "only reads that end a frame send a record: {}",
        recs.len()
    );
    let last_read = reads.len() - 1;
    let obs = feed(&mut p, &dir, recs);
    let ends: Vec<u64> = obs
        .iter()
        .filter(|o| {
            matches!(
                o.what,
                Observed::Timing {
                    end: FrameEnd::Stream,
                    ..
                }
            )
        })
        .map(|o| o.ts_exit_ns)
        .collect();
    assert_eq!(ends, [5000 + 10 * last_read as u64 + 5]);
}

#[test]
fn joined_mid_stream_full_records_find_frames_and_hint_the_kernel() {
    let dir = directory();
    // Not opened live: the agent joined this connection.
    let mut p = Pipeline::default();
    let mut out = Vec::new();
    p.connection_opened(&dir.0, &dir, &mut out);
    let (req, heads) = request_stream(6, false);
    // The first record starts inside call 0's DATA frame; the kernel knows no cursor.
    let start = heads[1] + 20;
    let tail = &req[start..];
    let tail_heads: Vec<usize> = heads
        .iter()
        .filter(|&&h| h >= start)
        .map(|&h| h - start)
        .collect();
    // The last write stops 7 bytes into the last DATA frame's payload.
    let last_data = *tail_heads.last().expect("heads");
    let cut = last_data + 9 + 7;
    let mut recs = full_records(
        BEAM_OUT,
        tail,
        &tail_heads,
        &[tail_heads[2], cut - tail_heads[2]],
        40,
        10,
    );
    for r in &mut recs {
        r.frame_status = FrameStatus::Unknown;
        r.cursor_in = None;
    }
    let obs = feed(&mut p, &dir, recs);
    let tools = request_tools(&obs);
    assert!(tools.ends_with(&["tool_4".to_string()]), "{tools:?}");
    // The decoder knows where the next header is: 7 bytes into a DATA frame.
    let hints = p.take_cursor_hints();
    let last = hints.last().expect("a cursor hint");
    let data_len = req.len() - (start + last_data) - 9;
    assert_eq!(
        (
            last.tgid,
            last.fd,
            last.direction,
            last.after_seq,
            last.cursor
        ),
        (BEAM, BEAM_FD, Direction::Egress, 41, (data_len - 7) as u32)
    );
}

#[test]
fn lean_record_errors_are_counted_and_survive_the_timer() {
    let dir = directory();
    let mut p = live_pipeline(&dir);
    // The worker reads a request whose gRPC message prefix is invalid (flag byte 7).
    let mut req = PREFACE.to_vec();
    let h_headers = req.len();
    req.extend(frame(1, 0x4, 1, &block(&[(":path", TOOL_PATH)])));
    let h_data = req.len();
    req.extend(frame(0, 0x1, 1, &[7, 0, 0, 0, 1, 42]));
    let heads = [h_headers, h_data];
    let _ = feed(
        &mut p,
        &dir,
        lean_records(WORKER_IN, &req, &heads, &[req.len()], 10),
    );
    let bad = |p: &Pipeline| {
        p.wire_stats()
            .errors(crate::wire::ErrorKind::BadMessagePrefix)
    };
    assert_eq!(bad(&p), 1);
    // The request's header block was read without its payload (a lean record): timed,
    // not decoded, and no error.
    assert_eq!(
        p.wire_stats()
            .errors(crate::wire::ErrorKind::HeaderBlockGap),
        0,
        "a lean record's header block is no gap"
    );
    // A full record on the same stream retires the timer: its count stays.
    let more = frame(4, 0, 0, &[]);
    let mut rec = full_records(WORKER_IN, &more, &[0], &[more.len()], 1, 20);
    rec[0].stream_pos = req.len() as u64;
    let _ = feed(&mut p, &dir, rec);
    assert_eq!(bad(&p), 1);
    assert_eq!(
        p.wire_stats().gap_bytes,
        0,
        "a lean record's payload is no gap"
    );
}

#[test]
fn lean_header_blocks_longer_than_a_mark_are_no_decode_error() {
    let dir = directory();
    let mut p = live_pipeline(&dir);
    // Real request headers run to a few hundred bytes: the kernel's mark of the
    // HEADERS frame holds its first MARK_BYTES; the rest is a gap by design.
    let long = "a".repeat(300);
    let mut req = PREFACE.to_vec();
    let h_headers = req.len();
    req.extend(frame(
        1,
        0x4,
        1,
        &block(&[(":path", TOOL_PATH), ("x-long", long.as_str())]),
    ));
    let h_data = req.len();
    req.extend(frame(0, 0x1, 1, &[0, 0, 0, 0, 1, 42]));
    let _ = feed(
        &mut p,
        &dir,
        lean_records(WORKER_IN, &req, &[h_headers, h_data], &[req.len()], 10),
    );
    assert_eq!(
        p.wire_stats().total_errors(),
        0,
        "{:?}",
        p.wire_stats().error_counts().collect::<Vec<_>>()
    );
}

mod bench;
