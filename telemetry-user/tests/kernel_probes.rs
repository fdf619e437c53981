//! Loads the real probes and checks what they report. Needs root (or CAP_BPF +
//! CAP_PERFMON), tracefs, kernel BTF and python3: when any is missing the tests FAIL
//! with a message saying what is missing; they never skip.
use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Write},
    process::{Child, Command, Stdio},
    sync::Mutex,
    time::{Duration, Instant},
};

use snakepit_agent::kernel::{
    preflight, Capture, Direction, ExitStatus, FrameStatus, IoRecord, KernelConfig, KernelEvent,
    KernelEvents, Probes, Syscall, FD_PIPE, PID_WATCH_NEW_SOCKETS, PID_WORKER,
};
use telemetry_common::{
    PROBE_READ, PROBE_RECVFROM, PROBE_SENDMSG, PROBE_SENDTO, PROBE_WRITE, PROBE_WRITEV,
    STAT_CURSOR_LOST, STAT_EVENTS, STAT_TRUNCATED,
};

/// The `sendmsg` records of `pid`, in arrival order.
fn sendmsg_records(evs: &[KernelEvent], pid: u32) -> Vec<&IoRecord> {
    evs.iter()
        .filter_map(|e| match e {
            KernelEvent::Io(io) if io.tgid == pid && io.syscall == Syscall::Sendmsg => Some(io),
            _ => None,
        })
        .collect()
}

/// (run time in ns, runs) of the program `name` so far.
fn prog_run(probes: &Probes, name: &str) -> (u64, u64) {
    probes
        .prog_run_stats()
        .into_iter()
        .find(|s| s.name == name)
        .map(|s| (s.run_time_ns, s.run_count))
        .unwrap_or((0, 0))
}

/// Loading probes twice at once is fine, but the timing test must run alone.
static SERIAL: Mutex<()> = Mutex::new(());

fn load() -> Probes {
    load_with(&KernelConfig::default())
}

/// With the kernel's run-time statistics on: the tests that count or time program
/// runs (off by default, as in the agent).
fn load_counted() -> Probes {
    load_with(&KernelConfig {
        program_stats: true,
        ..KernelConfig::default()
    })
}

/// Both ends of every connection copy and decode everything (no decode-once): the
/// tests of the full capture read the receiving side's payload too.
fn load_full() -> Probes {
    load_with(&KernelConfig {
        decode_once: false,
        ..KernelConfig::default()
    })
}

fn load_with(cfg: &KernelConfig) -> Probes {
    let pf = preflight();
    let problems = pf.problems();
    assert!(
        problems.is_empty(),
        "kernel probes cannot run here: {problems:?} ({pf:?})"
    );
    Probes::load(cfg)
        .unwrap_or_else(|e| panic!("loading the probes failed (BPF unavailable?): {e}"))
}

/// The child: waits for "go", then does socket I/O with known bytes, forks a child
/// that exits 0, starts a thread (must not look like a fork) and exits 3.
const CHILD: &str = r#"
import os, socket, sys, threading
sys.stdout.write("ready\n"); sys.stdout.flush()
sys.stdin.readline()
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(1)
c = socket.socket(); c.connect(srv.getsockname())
s, _ = srv.accept()
os.write(c.fileno(), b"hello-write")
os.writev(c.fileno(), [b"", b"vec-one", b"", b"vec-two"])
c.sendmsg([b"", b"msg-part1", b"msg-part2"])
big = bytes((i * 7) % 251 for i in range(10000))
c.sendall(big)
want = 11 + 14 + 18 + len(big)
got = os.read(s.fileno(), 11)
got += s.recvmsg(14)[0]
while len(got) < want:
    got += s.recv(65536)
c.close()
assert s.recv(100) == b""
s.close()
t = threading.Thread(target=lambda: None); t.start(); t.join()
pid = os.fork()
if pid == 0:
    os._exit(0)
os.waitpid(pid, 0)
sys.stdout.write("%d\n" % pid); sys.stdout.flush()
os._exit(3)
"#;

fn expected_stream() -> Vec<u8> {
    let mut v = b"hello-writevec-onevec-twomsg-part1msg-part2".to_vec();
    v.extend((0..10000u32).map(|i| ((i * 7) % 251) as u8));
    v
}

fn spawn_python(script: &str) -> (Child, BufReader<std::process::ChildStdout>) {
    spawn_interpreter("python3".as_ref(), script, &[])
}

/// `script` run by `python` with `args`, once it said "ready".
fn spawn_interpreter(
    python: &std::ffi::OsStr,
    script: &str,
    args: &[&str],
) -> (Child, BufReader<std::process::ChildStdout>) {
    let mut child = Command::new(python)
        .args(["-c", script])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{python:?} is needed by this test: {e}"));
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("child ready");
    assert_eq!(line.trim(), "ready");
    (child, out)
}

/// Collects events until `done` says so or the deadline passes.
async fn collect(
    rx: &mut KernelEvents,
    timeout: Duration,
    mut done: impl FnMut(&[KernelEvent]) -> bool,
) -> Vec<KernelEvent> {
    let mut evs = Vec::new();
    let deadline = Instant::now() + timeout;
    while !done(&evs) {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Some(ev)) => evs.push(ev),
            _ => break,
        }
    }
    evs
}

fn exit_of(evs: &[KernelEvent], pid: u32) -> Option<ExitStatus> {
    evs.iter().find_map(|e| match e {
        KernelEvent::Exit { tgid, status, .. } if *tgid == pid => Some(*status),
        _ => None,
    })
}

#[test]
fn capture_lifecycle_and_stats() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(capture_lifecycle_and_stats_body());
}

async fn capture_lifecycle_and_stats_body() {
    let mut probes = load_full();
    let mut rx = probes.events().expect("events");
    // 17 syscall (the read and write families at their exits only), lifecycle and OOM
    // programs, and the 2 scheduling ones of the worker split.
    assert_eq!(probes.attached().len(), 19, "{:?}", probes.attached());

    // --- sockets of a watched child ---
    let (mut child, mut out) = spawn_python(CHILD);
    let pid = child.id();
    probes.watch_pid(pid, PID_WATCH_NEW_SOCKETS).unwrap();
    child.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    let mut line = String::new();
    out.read_line(&mut line).expect("grandchild pid");
    let grandchild: u32 = line.trim().parse().expect("pid line");
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(3), "child failed");

    let evs = collect(&mut rx, Duration::from_secs(10), |evs| {
        exit_of(evs, pid).is_some() && exit_of(evs, grandchild).is_some()
    })
    .await;

    // exec of the child was seen (every exec is reported).
    assert!(
        evs.iter()
            .any(|e| matches!(e, KernelEvent::Exec { tgid, comm, .. }
            if *tgid == pid && comm.starts_with("python"))),
        "no exec event for {pid}"
    );
    // One fork (the thread is not a fork), exits with the right status.
    let forks: Vec<_> = evs
        .iter()
        .filter(|e| matches!(e, KernelEvent::Fork { parent_tgid, .. } if *parent_tgid == pid))
        .collect();
    assert_eq!(forks.len(), 1, "forks: {forks:?}");
    assert!(matches!(forks[0], KernelEvent::Fork { child_pid, .. } if *child_pid == grandchild));
    assert_eq!(exit_of(&evs, pid), Some(ExitStatus::Exited(3)));
    assert_eq!(exit_of(&evs, grandchild), Some(ExitStatus::Exited(0)));

    // fd opens: one connect (ret 0) and one accept4.
    let opens: Vec<(Option<u32>, Syscall, i64)> = evs
        .iter()
        .filter_map(|e| match e {
            KernelEvent::FdOpen {
                tgid,
                fd,
                syscall,
                ret,
                ..
            } if *tgid == pid => Some((*fd, *syscall, *ret)),
            _ => None,
        })
        .collect();
    let connect_fd = opens
        .iter()
        .find(|o| o.1 == Syscall::Connect && o.2 == 0)
        .unwrap_or_else(|| panic!("no connect open: {opens:?}"))
        .0
        .expect("a connect's fd");
    let accept_fd = opens
        .iter()
        .find(|o| o.1 == Syscall::Accept4 || o.1 == Syscall::Accept)
        .unwrap_or_else(|| panic!("no accept open: {opens:?}"))
        .0
        .expect("an accept's fd");

    // I/O per (fd, direction): contiguous seq, exact bytes and payload.
    let want = expected_stream();
    let mut streams: BTreeMap<(u32, Direction), Vec<_>> = BTreeMap::new();
    for e in &evs {
        if let KernelEvent::Io(io) = e {
            if io.tgid == pid {
                streams
                    .entry((io.fd, io.direction))
                    .or_default()
                    .push(io.clone());
            }
        }
    }
    for (key, fd) in [
        ((connect_fd, Direction::Egress), connect_fd),
        ((accept_fd, Direction::Ingress), accept_fd),
    ] {
        let mut recs = streams.remove(&key).unwrap_or_default();
        recs.sort_by_key(|r| r.seq);
        let seqs: Vec<u64> = recs.iter().map(|r| r.seq).collect();
        assert_eq!(
            seqs,
            (0..recs.len() as u64).collect::<Vec<_>>(),
            "fd {fd} seq"
        );
        let mut off = 0usize;
        for r in &recs {
            if r.ret <= 0 {
                continue;
            }
            let n = r.ret as usize;
            let cap = n.min(4096);
            assert_eq!(r.payload.len(), cap, "fd {fd} seq {} captured", r.seq);
            assert_eq!(
                &r.payload[..],
                &want[off..off + cap],
                "fd {fd} seq {} payload",
                r.seq
            );
            off += n;
        }
        assert_eq!(off, want.len(), "fd {fd} byte count");
        println!(
            "fd {fd} {:?}: {} records, {} bytes, syscalls {:?}",
            key.1,
            recs.len(),
            off,
            recs.iter().map(|r| r.syscall.name()).collect::<Vec<_>>()
        );
        if key.1 == Direction::Ingress {
            // The EOF read is reported too.
            assert!(recs.iter().any(|r| r.ret == 0), "no EOF record");
        } else {
            let sys: Vec<Syscall> = recs.iter().map(|r| r.syscall).collect();
            for s in [Syscall::Write, Syscall::Writev, Syscall::Sendmsg] {
                assert!(sys.contains(&s), "{s:?} missing in {sys:?}");
            }
        }
    }
    // fd closes carry the kernel totals.
    let close_totals = |fd: u32| {
        evs.iter()
            .find_map(|e| match e {
                KernelEvent::FdClose {
                    tgid,
                    fd: f,
                    totals,
                    ..
                } if *tgid == pid && *f == fd => Some(*totals),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no close for fd {fd}"))
    };
    let ct = close_totals(connect_fd);
    assert_eq!((ct.bytes_out, ct.bytes_in), (want.len() as u64, 0));
    assert!(ct.calls_out >= 4, "{ct:?}");
    let at = close_totals(accept_fd);
    assert_eq!((at.bytes_in, at.bytes_out), (want.len() as u64, 0));

    // --- SIGKILL ---
    let (mut victim, _out) = spawn_python(
        "import sys, time\nsys.stdout.write('ready\\n'); sys.stdout.flush()\ntime.sleep(60)",
    );
    let vpid = victim.id();
    probes.watch_pid(vpid, PID_WORKER).unwrap();
    victim.kill().unwrap();
    victim.wait().unwrap();
    let evs = collect(&mut rx, Duration::from_secs(10), |evs| {
        exit_of(evs, vpid).is_some()
    })
    .await;
    assert_eq!(
        exit_of(&evs, vpid),
        Some(ExitStatus::Signaled {
            signal: 9,
            core_dumped: false
        })
    );
    assert_eq!(probes.pid_flags(vpid), None, "exit must unwatch the pid");

    // --- watch_fd / fd_totals on our own pipe ---
    let mut fds = [0i32; 2];
    // SAFETY: valid array of two ints.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    let me = std::process::id();
    probes.watch_fd(me, open_fd(fds[0]), FD_PIPE, None).unwrap();
    probes.watch_fd(me, open_fd(fds[1]), FD_PIPE, None).unwrap();
    let msg = b"pipe-bytes";
    let mut buf = [0u8; 64];
    // SAFETY: valid buffers and fds.
    unsafe {
        assert_eq!(libc::write(fds[1], msg.as_ptr().cast(), msg.len()), 10);
        assert_eq!(libc::read(fds[0], buf.as_mut_ptr().cast(), buf.len()), 10);
    }
    let t = probes
        .fd_totals(me, open_fd(fds[1]))
        .expect("totals of watched fd");
    assert_eq!((t.bytes_out, t.calls_out), (10, 1));
    let t = probes
        .fd_totals(me, open_fd(fds[0]))
        .expect("totals of watched fd");
    assert_eq!((t.bytes_in, t.calls_in), (10, 1));
    let evs = collect(&mut rx, Duration::from_secs(5), |evs| {
        evs.iter()
            .filter(|e| matches!(e, KernelEvent::Io(io) if io.tgid == me))
            .count()
            >= 2
    })
    .await;
    let pipe_payloads: Vec<_> = evs
        .iter()
        .filter_map(|e| match e {
            KernelEvent::Io(io) if io.tgid == me => Some((io.syscall, io.payload.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(pipe_payloads.len(), 2, "{pipe_payloads:?}");
    assert!(pipe_payloads.iter().all(|(_, p)| &p[..] == msg));
    probes.unwatch_fd(me, open_fd(fds[0])).unwrap();
    probes.unwatch_fd(me, open_fd(fds[1])).unwrap();
    assert_eq!(probes.fd_totals(me, open_fd(fds[1])), None);
    // SAFETY: our fds.
    unsafe {
        libc::close(fds[0]);
        libc::close(fds[1]);
    }

    // --- counters ---
    let stats = probes.stats();
    for (probe, name) in [
        (PROBE_WRITE, "write"),
        (PROBE_WRITEV, "writev"),
        (PROBE_SENDMSG, "sendmsg"),
        (PROBE_SENDTO, "sendto"),
        (PROBE_READ, "read"),
        (PROBE_RECVFROM, "recvfrom"),
    ] {
        assert!(
            stats.get(probe, STAT_EVENTS) >= 1,
            "no {name} events counted"
        );
    }
    assert!(stats.get(PROBE_SENDTO, STAT_TRUNCATED) >= 10000 - 4096);
    println!("stats: {:?}", stats.nonzero());
    println!(
        "reader (records, decode errors): {:?}",
        probes.reader_counters()
    );
    assert_eq!(probes.reader_counters().1, 0, "decode errors");
}

fn write_devnull_loop(n: usize) -> f64 {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/null")
        .expect("/dev/null");
    use std::os::fd::AsRawFd;
    let fd = f.as_raw_fd();
    let b = [0u8; 1];
    let start = Instant::now();
    for _ in 0..n {
        // SAFETY: valid fd and buffer.
        unsafe { libc::write(fd, b.as_ptr().cast(), 1) };
    }
    start.elapsed().as_nanos() as f64 / n as f64
}

/// The kernel's run-time statistics stay off unless asked for: the switch is global,
/// and while it is on every BPF program run on the host reads the clock twice more.
#[test]
fn program_runs_are_counted_only_when_asked() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    const N: usize = 20_000;
    let probes = load();
    let (_, r0) = prog_run(&probes, "sys_exit_write");
    write_devnull_loop(N);
    let (_, r1) = prog_run(&probes, "sys_exit_write");
    drop(probes);
    assert_eq!(
        r1 - r0,
        0,
        "write exits were counted with program_stats off: the probes turned the kernel's \
         BPF run-time statistics on, or another process on this host holds them on \
         (bpftool prog profile, bpftop, sysctl kernel.bpf_stats_enabled=1)"
    );
    let probes = load_counted();
    let (_, r0) = prog_run(&probes, "sys_exit_write");
    write_devnull_loop(N);
    let (_, r1) = prog_run(&probes, "sys_exit_write");
    assert!(
        r1 - r0 >= N as u64,
        "with program_stats on, {N} writes counted {} write exits",
        r1 - r0
    );
}

#[test]
fn miss_path_cost() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    const N: usize = 200_000;
    write_devnull_loop(N / 10); // warm up
    let before = write_devnull_loop(N);
    let mut probes = load_counted();
    let with = write_devnull_loop(N);
    let run: Vec<_> = probes
        .prog_run_stats()
        .into_iter()
        .filter(|s| s.name.ends_with("_write"))
        .collect();
    // A watched process's unwatched fd (a runtime's wakeup pipe or eventfd): the
    // register read and the per-CPU cache of unwatched fds.
    let me = std::process::id();
    probes.watch_pid(me, 0).expect("watch pid");
    let (ns0, runs0) = prog_run(&probes, "sys_exit_write");
    let watched = write_devnull_loop(N);
    let (ns1, runs1) = prog_run(&probes, "sys_exit_write");
    drop(probes);
    let after = write_devnull_loop(N);
    println!(
        "write(/dev/null) x{N}: {before:.0} ns/syscall without probes, {with:.0} with \
         (miss path), {after:.0} after unload; overhead {:.0} ns",
        with - (before + after) / 2.0
    );
    for s in run {
        println!(
            "  {}: {} runs, {:.0} ns/run in-kernel",
            s.name,
            s.run_count,
            s.avg_ns().unwrap_or(0.0)
        );
    }
    assert!(
        runs1 - runs0 >= N as u64,
        "sys_exit_write did not run for each write"
    );
    println!(
        "write(/dev/null) x{N} by a watched process: {watched:.0} ns/syscall; \
         sys_exit_write {:.0} ns/run in-kernel",
        (ns1 - ns0) as f64 / (runs1 - runs0) as f64
    );
}

// ---------------------------------------------------------------------------
// Frame cursor
// ---------------------------------------------------------------------------

/// xorshift64: deterministic test data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() % (hi - lo + 1) as u64) as usize
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Preface + `n` HTTP/2 frames of random sizes and types 0/1/4/8. Returns the stream
/// and the offset of every frame header.
fn http2_stream(rng: &mut Rng, n: usize, max_len: usize) -> (Vec<u8>, Vec<usize>) {
    let mut s = PREFACE.to_vec();
    let mut heads = Vec::with_capacity(n);
    for _ in 0..n {
        let len = rng.range(1, max_len);
        let ty = [0u8, 1, 4, 8][rng.range(0, 3)];
        let sid = (rng.next() as u32) & 0x7fff_ffff;
        heads.push(s.len());
        s.extend_from_slice(&(len as u32).to_be_bytes()[1..]);
        s.push(ty);
        s.push(rng.next() as u8);
        s.extend_from_slice(&sid.to_be_bytes());
        s.extend(rng.bytes(len));
    }
    (s, heads)
}

/// One syscall of the child's plan: "write" (one part), "writev" or "sendmsg".
#[derive(serde::Serialize)]
struct Op {
    op: &'static str,
    iov: Vec<usize>,
}

/// The plan: preface + frames 0..50 in one sendmsg ending inside header 50; frames to
/// 80 in writes cut at awkward points (a header in three pieces, cuts at a header's
/// first byte, mid-payload); frames to 130 in one writev and the rest in one sendmsg,
/// their iovecs cut gRPC-style (9-byte header iovecs), inside headers, and empty.
fn http2_plan(h: &[usize], total: usize) -> Vec<Op> {
    let at = |i: usize| if i < h.len() { h[i] } else { total };
    let vec_cuts = |from: usize, to: usize, frames: std::ops::Range<usize>| {
        let mut cuts = vec![from];
        for j in frames {
            match j % 4 {
                0 => cuts.extend([h[j], h[j] + 9]),
                1 => cuts.push(h[j] + 1 + j % 8),
                2 => cuts.extend([h[j] + 4, h[j] + 4]), // an empty iovec inside a header
                _ => {}
            }
        }
        cuts.push(to);
        cuts.retain(|&c| c >= from && c <= to);
        cuts.sort_unstable();
        cuts.windows(2).map(|w| w[1] - w[0]).collect::<Vec<_>>()
    };
    let mut ops = Vec::new();
    let e1 = at(50) + 5;
    ops.push(Op {
        op: "sendmsg",
        iov: vec_cuts(0, e1, 1..50),
    });
    let mut cuts = vec![e1];
    for i in 51..80 {
        match i % 4 {
            0 => cuts.extend([h[i] + 2, h[i] + 5]),
            1 => cuts.push(h[i]),
            2 => cuts.push(h[i] + 9 + (h[i + 1] - h[i] - 9) / 2),
            _ => {}
        }
    }
    let e2 = at(80) + 7;
    cuts.push(e2);
    for w in cuts.windows(2) {
        if w[1] > w[0] {
            ops.push(Op {
                op: "write",
                iov: vec![w[1] - w[0]],
            });
        }
    }
    let e3 = at(130) + 1;
    ops.push(Op {
        op: "writev",
        iov: vec_cuts(e2, e3, 81..130),
    });
    ops.push(Op {
        op: "sendmsg",
        iov: vec_cuts(e3, total, 131..h.len()),
    });
    ops
}

/// Runs `plan` in a watched python child (new sockets watched by the kernel, so the
/// cursors start at the preface): it writes `data` on the connecting end and reads it
/// on the accepted end with recv/recvmsg_into of varied sizes, or, given a third
/// argument (a JSON list of sizes), with recv of exactly those sizes once all is written.
const CHILD_PLAN: &str = r#"
import json, os, socket, sys, threading
plan = json.load(open(sys.argv[1])); data = open(sys.argv[2], "rb").read()
exact = json.loads(sys.argv[3]) if len(sys.argv) > 3 else None
written = threading.Event()
sys.stdout.write("ready\n"); sys.stdout.flush()
sys.stdin.readline()
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(1)
c = socket.socket(); c.connect(srv.getsockname())
s, _ = srv.accept()
got = []
def reader():
    n = 0; i = 0
    sizes = [1000, 7, 65536, 3, 16393, 9, 40000, 1, 5000]
    if exact:
        written.wait()
        for sz in exact:
            b = s.recv(sz, socket.MSG_WAITALL)
            got.append(b); n += len(b)
    while n < len(data):
        sz = sizes[i % len(sizes)]; i += 1
        if i % 5 == 0:
            bufs = [bytearray(sz), bytearray(13), bytearray(20000)]
            k = s.recvmsg_into(bufs)[0]
            b = b"".join(bytes(x) for x in bufs)[:k]
        else:
            b = s.recv(sz)
        if not b:
            break
        got.append(b); n += len(b)
t = threading.Thread(target=reader); t.start()
pos = 0
for op in plan:
    parts = []
    for l in op["iov"]:
        parts.append(data[pos:pos + l]); pos += l
    total = sum(op["iov"])
    if op["op"] == "write":
        n = os.write(c.fileno(), parts[0])
    elif op["op"] == "writev":
        n = os.writev(c.fileno(), parts)
    else:
        n = c.sendmsg(parts)
    assert n == total, (op["op"], n, total)
written.set()
t.join()
assert b"".join(got) == data, "stream mismatch"
sys.stdout.write("%d %d\n" % (c.fileno(), s.fileno())); sys.stdout.flush()
c.close(); s.close()
"#;

/// The records of one (tgid, fd, direction), in seq order.
fn io_stream(evs: &[KernelEvent], tgid: u32, fd: i32, dir: Direction) -> Vec<IoRecord> {
    let fd = open_fd(fd);
    let mut v: Vec<IoRecord> = evs
        .iter()
        .filter_map(|e| match e {
            KernelEvent::Io(io) if io.tgid == tgid && io.fd == fd && io.direction == dir => {
                Some(io.clone())
            }
            _ => None,
        })
        .collect();
    v.sort_by_key(|r| r.seq);
    v
}

/// Checks that every frame header of `stream` (at `heads`, `hdr` bytes each) is
/// visible in the records' prefixes and marks, that every mark holds the right bytes at
/// a header (or continues one at offset 0), that the kernel cursor at each syscall
/// start is right and never lost. Returns (records, marks).
fn check_frames(
    what: &str,
    recs: &[IoRecord],
    stream: &[u8],
    heads: &[usize],
    hdr: usize,
) -> (usize, usize) {
    let seqs: Vec<u64> = recs.iter().map(|r| r.seq).collect();
    assert_eq!(
        seqs,
        (0..recs.len() as u64).collect::<Vec<_>>(),
        "{what}: seq gaps (records dropped?)"
    );
    if std::env::var_os("FRAME_DEBUG").is_some() {
        for r in recs {
            println!(
                "{what} seq {} {} ret {} cap {} status {:?} cursor_in {:?} partial {} marks {:?}",
                r.seq,
                r.syscall.name(),
                r.ret,
                r.payload.len(),
                r.frame_status,
                r.cursor_in,
                r.partial_in,
                r.marks
                    .iter()
                    .map(|m| (m.offset, m.bytes.len()))
                    .collect::<Vec<_>>()
            );
        }
    }
    let mut known = vec![false; stream.len()];
    let mut base = 0usize;
    let mut n_marks = 0;
    for r in recs.iter().filter(|r| r.ret > 0) {
        let n = r.ret as usize;
        assert_eq!(
            r.frame_status,
            FrameStatus::Tracked,
            "{what}: seq {} at {base}: cursor lost",
            r.seq
        );
        // The cursor the kernel had at the syscall start.
        let next = heads.partition_point(|&h| h < base);
        if r.partial_in > 0 {
            let start = base - r.partial_in as usize;
            assert!(
                heads.binary_search(&start).is_ok() && base < start + hdr,
                "{what}: seq {} partial {} at {base}",
                r.seq,
                r.partial_in
            );
        } else if next < heads.len() {
            assert_eq!(
                r.cursor_in,
                Some((heads[next] - base) as u32),
                "{what}: seq {} cursor",
                r.seq
            );
        }
        let p = r.payload.len();
        if r.payload[..] != stream[base..base + p] {
            let d = (0..p).find(|&i| r.payload[i] != stream[base + i]);
            panic!(
                "{what}: seq {} prefix at {base}: first difference at {d:?} of {p}: {:?} vs {:?}",
                r.seq,
                &r.payload[d.unwrap_or(0)..][..8.min(p)],
                &stream[base + d.unwrap_or(0)..][..8]
            );
        }
        known[base..base + p].iter_mut().for_each(|k| *k = true);
        let mut last = None;
        for m in &r.marks {
            assert!(last < Some(m.offset), "{what}: marks out of order");
            last = Some(m.offset);
            let off = base + m.offset as usize;
            let len = m.bytes.len();
            assert!(off + len <= base + n, "{what}: mark beyond the syscall");
            assert_eq!(
                &m.bytes[..],
                &stream[off..off + len],
                "{what}: mark at {off}"
            );
            let at_head = heads.binary_search(&off).is_ok();
            let continues = m.offset == 0 && r.partial_in > 0;
            assert!(
                at_head || continues,
                "{what}: mark at {off} is not at a header"
            );
            assert!(
                len == telemetry_common::MARK_BYTES || off + len == base + n,
                "{what}: short mark at {off}"
            );
            known[off..off + len].iter_mut().for_each(|k| *k = true);
            n_marks += 1;
        }
        base += n;
    }
    assert_eq!(base, stream.len(), "{what}: byte count");
    for (i, &h) in heads.iter().enumerate() {
        assert!(
            known[h..h + hdr].iter().all(|&k| k),
            "{what}: header {i} at {h} not visible to user space"
        );
    }
    (recs.iter().filter(|r| r.ret > 0).count(), n_marks)
}

fn lost_count(probes: &Probes) -> u64 {
    probes.stats().total(STAT_CURSOR_LOST)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

#[test]
fn frame_cursor_http2_socket() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    runtime().block_on(async {
        let mut probes = load_full();
        let mut rx = probes.events().expect("events");
        let mut rng = Rng(0x5eed_1234_abcd_0001);
        let (stream, heads) = http2_stream(&mut rng, 200, 20000);
        let plan = http2_plan(&heads, stream.len());
        let (pid, evs, fds) = run_plan(&mut probes, &mut rx, &stream, &plan).await;

        let out_recs = io_stream(&evs, pid, fds[0], Direction::Egress);
        let in_recs = io_stream(&evs, pid, fds[1], Direction::Ingress);
        let sys: Vec<&str> = out_recs.iter().map(|r| r.syscall.name()).collect();
        println!(
            "http2: {} bytes, {} frames, {} egress syscalls {sys:?}",
            stream.len(),
            heads.len(),
            out_recs.len()
        );
        let (r, m) = check_frames("egress", &out_recs, &stream, &heads, 9);
        println!("egress: {r} records, {m} marks");
        assert!(m >= 100, "expected most headers in marks, got {m}");
        let (r, m) = check_frames("ingress", &in_recs, &stream, &heads, 9);
        println!("ingress: {r} records, {m} marks");
        assert_eq!(
            lost_count(&probes),
            0,
            "cursor lost: {:?}",
            probes.stats().nonzero()
        );
        assert_eq!(probes.reader_counters().1, 0, "decode errors");
    });
}

/// Decode-once: the receiving end of a socket sends lean records (frame headers, no
/// payload) and only for reads in which a frame ends; the sending end is unchanged.
#[test]
fn lean_ingress_http2_socket() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    runtime().block_on(async {
        let mut probes = load();
        let mut rx = probes.events().expect("events");
        let mut rng = Rng(0x5eed_1234_abcd_0002);
        let (stream, heads) = http2_stream(&mut rng, 200, 20000);
        let plan = http2_plan(&heads, stream.len());
        let (pid, evs, fds) = run_plan(&mut probes, &mut rx, &stream, &plan).await;

        let out_recs = io_stream(&evs, pid, fds[0], Direction::Egress);
        let (_, m) = check_frames("egress", &out_recs, &stream, &heads, 9);
        assert!(m >= 100, "expected most headers in marks, got {m}");
        let in_recs = io_stream(&evs, pid, fds[1], Direction::Ingress);
        let reads = fd_close_calls(&evs, pid, fds[1]);
        let n = check_lean("ingress", &in_recs, &stream, &heads);
        println!("lean ingress: {n} records for {reads} reads");
        assert!(
            (n as u64) < reads,
            "reads inside one frame must send nothing ({n} records, {reads} reads)"
        );
        assert_eq!(lost_count(&probes), 0, "{:?}", probes.stats().nonzero());
        assert_eq!(probes.reader_counters().1, 0, "decode errors");
    });
}

/// Lean records keep each DATA frame's first payload bytes (a gRPC message's length
/// prefix, which the receiver's timing reads) when a read ends just after the frame's
/// header or inside that prefix: the next read's record starts with a mark of the rest.
#[test]
fn lean_marks_carry_a_frame_start_cut_by_a_read() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    runtime().block_on(async {
        let mut probes = load();
        let mut rx = probes.events().expect("events");
        // Preface, then DATA frames of one gRPC message each (5-byte prefix + body).
        let mut stream = PREFACE.to_vec();
        let mut heads = Vec::new();
        for i in 0..24u32 {
            let body = 100 + 3 * i as usize;
            heads.push(stream.len());
            stream.extend_from_slice(&((body + 5) as u32).to_be_bytes()[1..]);
            stream.extend([0u8, 0, 0, 0, 0, 1]);
            stream.extend([0u8]);
            stream.extend_from_slice(&(body as u32).to_be_bytes());
            stream.extend((0..body).map(|b| b as u8));
        }
        // Reads that end at each frame's header end plus 0..=4 bytes, in turn, or in
        // the middle of the frame (unchanged behaviour).
        let mut reads = Vec::new();
        let mut at = 0usize;
        for (i, &h) in heads.iter().enumerate() {
            let cut = match i % 7 {
                5 => h + 60,
                6 => continue,
                k => h + 9 + k,
            };
            reads.push(cut - at);
            at = cut;
        }
        reads.push(stream.len() - at);
        let plan = vec![Op {
            op: "sendmsg",
            iov: vec![stream.len()],
        }];
        let (pid, evs, fds) =
            run_plan_reads(&mut probes, &mut rx, &stream, &plan, Some(&reads)).await;
        let in_recs = io_stream(&evs, pid, fds[1], Direction::Ingress);
        assert_eq!(
            fd_close_calls(&evs, pid, fds[1]),
            reads.len() as u64,
            "the reads were not the planned ones"
        );
        check_lean("ingress", &in_recs, &stream, &heads);
        // Every byte known from the marks, by stream offset.
        let mut known = vec![false; stream.len()];
        for r in in_recs.iter().filter(|r| r.ret > 0) {
            for m in &r.marks {
                let off = r.stream_pos as usize + m.offset as usize;
                known[off..off + m.bytes.len()].fill(true);
            }
        }
        let cut: Vec<usize> = heads
            .iter()
            .enumerate()
            .filter(|&(_, &h)| !known[h + 9..h + 14].iter().all(|&k| k))
            .map(|(i, _)| i)
            .collect();
        assert!(
            cut.is_empty(),
            "DATA frames whose message prefix no lean record holds: {cut:?}"
        );
        assert_eq!(lost_count(&probes), 0, "{:?}", probes.stats().nonzero());
    });
}

/// Pins the calling thread to CPU 0: the exits cache unwatched fds per CPU, and the
/// test below needs its misses and its later writes to meet the same cache.
fn pin_to_cpu0() {
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET writes inside it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
            0,
            "sched_setaffinity"
        );
    }
}

fn write_fd(fd: i32, bytes: &[u8]) {
    // SAFETY: a valid buffer of bytes.len() bytes.
    let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
    assert_eq!(n, bytes.len() as isize, "write to fd {fd}");
}

/// The exits remember, per CPU, which fds of a watched process they found unwatched
/// (the runtimes' wakeup pipes and eventfds), and skip the WATCHED_FDS lookup for them
/// next time. An fd that becomes watched afterwards must be captured at once: whether
/// user space watches it (a connection found by the /proc scan) or the kernel does (an
/// accept that reuses the number of a closed fd that was cached as unwatched).
#[test]
fn an_fd_cached_as_unwatched_is_captured_once_watched() {
    use std::os::fd::{AsRawFd, IntoRawFd};
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    runtime().block_on(async {
        let mut probes = load();
        let mut rx = probes.events().expect("events");
        let me = std::process::id();
        // The syscalls below run on a thread of their own, pinned to one CPU.
        let (pipe_w, accepted) = std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    pin_to_cpu0();
                    probes
                        .watch_pid(me, PID_WATCH_NEW_SOCKETS)
                        .expect("watch pid");
                    // 1. User space watches an fd after its misses were cached.
                    let mut fds = [0i32; 2];
                    // SAFETY: valid array of two ints.
                    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
                    let mut sink = [0u8; 64];
                    for _ in 0..50 {
                        write_fd(fds[1], b"unwatched");
                        // SAFETY: `sink` is 64 bytes long.
                        unsafe { libc::read(fds[0], sink.as_mut_ptr().cast(), sink.len()) };
                    }
                    probes
                        .watch_fd(me, open_fd(fds[1]), FD_PIPE, None)
                        .expect("watch fd");
                    write_fd(fds[1], b"after-user-watch");
                    // 2. The kernel's accept reuses a number cached as unwatched.
                    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
                    let client = std::net::TcpStream::connect(listener.local_addr().expect("addr"))
                        .expect("connect");
                    let spare = std::fs::File::create("/dev/null")
                        .expect("/dev/null")
                        .into_raw_fd();
                    for _ in 0..50 {
                        write_fd(spare, b"unwatched");
                    }
                    // SAFETY: `spare` is ours and closed once.
                    unsafe { libc::close(spare) };
                    let (conn, _) = listener.accept().expect("accept");
                    assert_eq!(
                        conn.as_raw_fd(),
                        spare,
                        "accept did not reuse the closed fd's number"
                    );
                    write_fd(conn.as_raw_fd(), b"after-accept");
                    drop(client);
                    (fds[1], conn.into_raw_fd())
                })
                .join()
                .expect("pinned thread")
        });
        let evs = collect(&mut rx, Duration::from_secs(5), |evs| {
            !io_stream(evs, me, pipe_w, Direction::Egress).is_empty()
                && !io_stream(evs, me, accepted, Direction::Egress).is_empty()
        })
        .await;
        let pipe_recs = io_stream(&evs, me, pipe_w, Direction::Egress);
        assert_eq!(
            pipe_recs.iter().map(|r| r.ret).collect::<Vec<_>>(),
            vec![16],
            "the pipe's write after user space watched it"
        );
        let conn_recs = io_stream(&evs, me, accepted, Direction::Egress);
        assert_eq!(
            conn_recs.iter().map(|r| r.ret).collect::<Vec<_>>(),
            vec![12],
            "the accepted socket's write"
        );
        // SAFETY: both fds are ours and closed once.
        unsafe {
            libc::close(pipe_w);
            libc::close(accepted);
        }
    });
}

/// Reads (or writes) of `fd` counted by the kernel, from its close event.
fn fd_close_calls(evs: &[KernelEvent], tgid: u32, fd: i32) -> u64 {
    let fd = open_fd(fd);
    evs.iter()
        .find_map(|e| match e {
            KernelEvent::FdClose {
                tgid: t,
                fd: f,
                totals,
                ..
            } if *t == tgid && *f == fd => Some(totals.calls_in),
            _ => None,
        })
        .expect("close event of the reading fd")
}

/// Lean records: no payload, contiguous sequence numbers, stream positions that add
/// up, every frame header in a mark, no header in the bytes of reads that sent no
/// record, and a frame ending in every record. Returns the number of records.
fn check_lean(what: &str, recs: &[IoRecord], stream: &[u8], heads: &[usize]) -> usize {
    let seqs: Vec<u64> = recs.iter().map(|r| r.seq).collect();
    assert_eq!(
        seqs,
        (0..recs.len() as u64).collect::<Vec<_>>(),
        "{what}: seq gaps"
    );
    // Marks that start at a header: (start, end) in stream order.
    let mut marked: Vec<(usize, usize)> = Vec::new();
    let mut end = 0usize;
    for r in recs.iter().filter(|r| r.ret > 0) {
        assert_eq!(r.capture, Capture::Frames, "{what}: seq {}", r.seq);
        assert!(r.payload.is_empty(), "{what}: seq {} has a payload", r.seq);
        let base = r.stream_pos as usize;
        assert!(base >= end, "{what}: seq {} goes back", r.seq);
        let skipped = heads.partition_point(|&h| h < base) - heads.partition_point(|&h| h < end);
        assert_eq!(skipped, 0, "{what}: a header in reads before seq {}", r.seq);
        for m in &r.marks {
            let off = base + m.offset as usize;
            assert_eq!(
                &m.bytes[..],
                &stream[off..off + m.bytes.len()],
                "{what}: mark at {off}"
            );
            assert!(
                m.bytes.len() == telemetry_common::MARK_BYTES
                    || off + m.bytes.len() == base + r.ret as usize
                    || m.offset == 0,
                "{what}: a short lean mark of {} bytes at {off}",
                m.bytes.len()
            );
            if heads.binary_search(&off).is_ok() {
                marked.push((off, off + m.bytes.len()));
            } else {
                // The rest of a header split by the last read, or of a mark it cut.
                assert!(m.offset == 0, "{what}: mark at {off} is not at a header");
            }
        }
        let frame_ends = r.partial_in > 0
            || !r.marks.is_empty()
            || r.cursor_in.is_some_and(|c| i64::from(c) <= r.ret);
        assert!(frame_ends, "{what}: seq {} ends no frame", r.seq);
        end = base + r.ret as usize;
    }
    assert_eq!(end, stream.len(), "{what}: byte count");
    // Each header starts a mark (the rest of a split one follows in the next
    // record), or lies whole in the mark before it.
    for (i, &h) in heads.iter().enumerate() {
        let before = marked.partition_point(|&(start, _)| start <= h);
        let covered = before > 0 && {
            let (start, end) = marked[before - 1];
            start == h || h + 9 <= end
        };
        assert!(covered, "{what}: header {i} at {h} in no mark");
    }
    recs.len()
}

/// Writes `data` to a watched pipe of this process with the given write sizes while a
/// thread reads it in varied sizes; returns the pipe's fds.
fn pipe_roundtrip(probes: &mut Probes, data: &[u8], writes: &[Vec<usize>]) -> [i32; 2] {
    let mut fds = [0i32; 2];
    // SAFETY: valid array of two ints.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    let me = std::process::id();
    probes
        .watch_fd(me, open_fd(fds[0]), FD_PIPE, Some([0, 0]))
        .unwrap();
    probes
        .watch_fd(me, open_fd(fds[1]), FD_PIPE, Some([0, 0]))
        .unwrap();
    let total = data.len();
    let rfd = fds[0];
    let reader = std::thread::spawn(move || {
        let sizes = [5000usize, 3, 70000, 1, 4, 65536, 9];
        let mut buf = vec![0u8; 70000];
        let mut got = Vec::with_capacity(total);
        let mut i = 0;
        while got.len() < total {
            let sz = sizes[i % sizes.len()];
            i += 1;
            // SAFETY: buf is at least sz long.
            let n = unsafe { libc::read(rfd, buf.as_mut_ptr().cast(), sz) };
            assert!(n > 0, "pipe read {n}");
            got.extend_from_slice(&buf[..n as usize]);
        }
        got
    });
    let mut pos = 0;
    for parts in writes {
        let iov: Vec<libc::iovec> = parts
            .iter()
            .map(|&l| {
                let v = libc::iovec {
                    iov_base: data[pos..].as_ptr() as *mut _,
                    iov_len: l,
                };
                pos += l;
                v
            })
            .collect();
        let want: usize = parts.iter().sum();
        // SAFETY: the iovecs point into `data`, which outlives the call.
        let n = unsafe {
            if iov.len() == 1 {
                libc::write(fds[1], iov[0].iov_base, iov[0].iov_len)
            } else {
                libc::writev(fds[1], iov.as_ptr(), iov.len() as i32)
            }
        };
        assert_eq!(n, want as isize, "pipe write");
    }
    assert_eq!(pos, total);
    assert_eq!(reader.join().expect("reader"), data, "pipe bytes");
    fds
}

/// Events of `ep` within `ms`: 0 or 1 (one fd registered).
fn epoll_events(ep: i32, ms: i32) -> i32 {
    let mut ev = libc::epoll_event { events: 0, u64: 0 };
    // SAFETY: one valid epoll_event to fill.
    unsafe { libc::epoll_wait(ep, &mut ev, 1, ms) }
}

/// Records submitted while the ring holds less than an eighth of its size unread do
/// not wake its reader (BPF_RB_NO_WAKEUP: it polls); beyond that each one does, so a
/// burst is read at once instead of filling the ring before the next poll.
#[test]
fn ring_wakes_its_reader_only_when_filling() {
    use std::os::fd::AsRawFd;
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut probes = load_with(&KernelConfig {
        ring_buffer_bytes: 1 << 20,
        ..KernelConfig::default()
    });
    let ring = probes.ring_fd().expect("ring fd").as_raw_fd();
    // SAFETY: plain syscalls on fds this test owns.
    let ep = unsafe { libc::epoll_create1(0) };
    assert!(ep >= 0, "epoll_create1");
    let mut reg = libc::epoll_event {
        // Edge-triggered: an event only for a wakeup after this point.
        events: (libc::EPOLLIN | libc::EPOLLET) as u32,
        u64: 0,
    };
    // SAFETY: `ring` and `ep` are open; `reg` is valid.
    assert_eq!(
        unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, ring, &mut reg) },
        0
    );
    assert_eq!(epoll_events(ep, 0), 0, "the ring is not empty at start");

    let mut fds = [0i32; 2];
    // SAFETY: valid array of two ints.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    let me = std::process::id();
    probes
        .watch_fd(me, open_fd(fds[1]), FD_PIPE, Some([0, 0]))
        .unwrap();
    // {packet,4} frames, as the pipe workers write them.
    let frame = |len: usize| {
        let mut f = (len as u32).to_be_bytes().to_vec();
        f.extend((0..len).map(|i| (i % 251) as u8));
        f
    };
    // Written, then read back from the unwatched end (no records).
    let mut back = vec![0u8; 8192];
    let mut write = |bytes: &[u8]| {
        // SAFETY: `bytes` is valid for its length and `back` holds more; the pipe has
        // room for one frame.
        unsafe {
            let n = libc::write(fds[1], bytes.as_ptr().cast(), bytes.len());
            assert_eq!(n, bytes.len() as isize, "pipe write");
            let n = libc::read(fds[0], back.as_mut_ptr().cast(), back.len());
            assert_eq!(n, bytes.len() as isize, "pipe read");
        }
    };
    let writes = || probes.stats().get(PROBE_WRITE, STAT_EVENTS);
    let before = writes();
    for _ in 0..5 {
        write(&frame(200));
    }
    assert_eq!(writes() - before, 5, "five watched writes, five records");
    // Every exec on the host is a record too: the mark (128 KiB) leaves room for
    // hundreds of them meanwhile.
    assert_eq!(
        epoll_events(ep, 200),
        0,
        "about 1.5 KB unread (of a 1 MiB ring) woke the reader"
    );
    for _ in 0..40 {
        write(&frame(4000));
    }
    assert_eq!(writes() - before, 45, "45 watched writes, 45 records");
    assert_eq!(
        epoll_events(ep, 2000),
        1,
        "160 KB unread (over the 128 KiB mark of a 1 MiB ring) did not wake the reader"
    );
    // SAFETY: fds this test opened.
    unsafe {
        libc::close(fds[0]);
        libc::close(fds[1]);
        libc::close(ep);
    }
}

#[test]
fn frame_cursor_packet4_pipe() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    runtime().block_on(async {
        let mut probes = load();
        let mut rx = probes.events().expect("events");
        let mut rng = Rng(0x9ac4_0000_0000_0777);
        let mut data = Vec::new();
        let mut heads = Vec::new();
        let mut push = |data: &mut Vec<u8>, heads: &mut Vec<usize>, len: usize| {
            heads.push(data.len());
            data.extend_from_slice(&(len as u32).to_be_bytes());
            data.extend(rng.bytes(len));
            len + 4
        };
        let mut writes: Vec<Vec<usize>> = Vec::new();
        // Port-style writev([header, payload]) of big and small messages.
        for i in 0..30 {
            let len = if i % 3 == 0 {
                150_000 + i * 1000
            } else {
                i * 37
            };
            push(&mut data, &mut heads, len);
            writes.push(vec![4, len]);
        }
        // Many small messages in one write: headers beyond the prefix, several per mark.
        let mut batch = 0;
        for i in 0..120 {
            batch += push(&mut data, &mut heads, (i * 13) % 90);
        }
        writes.push(vec![batch]);
        // A header split across three writes, the last with the payload.
        let n = push(&mut data, &mut heads, 9000);
        writes.extend([vec![1], vec![2], vec![n - 3]]);
        for i in 0..20 {
            let n = push(&mut data, &mut heads, 5000 + i * 3000);
            writes.push(vec![n]);
        }
        let fds = pipe_roundtrip(&mut probes, &data, &writes);
        let me = std::process::id();
        let cursors = probes.fd_cursors(me, open_fd(fds[1])).expect("watched");
        let evs = collect(&mut rx, Duration::from_secs(10), |evs| {
            let n = |d| {
                evs.iter()
                    .filter(
                        |e| matches!(e, KernelEvent::Io(io) if io.tgid == me && io.direction == d),
                    )
                    .filter_map(|e| match e {
                        KernelEvent::Io(io) => Some(io.ret.max(0) as usize),
                        _ => None,
                    })
                    .sum::<usize>()
            };
            n(Direction::Egress) == data.len() && n(Direction::Ingress) == data.len()
        })
        .await;
        let w = io_stream(&evs, me, fds[1], Direction::Egress);
        let r = io_stream(&evs, me, fds[0], Direction::Ingress);
        let (nr, nm) = check_frames("pipe egress", &w, &data, &heads, 4);
        println!(
            "pipe egress: {nr} records, {nm} marks, {} messages",
            heads.len()
        );
        let (nr, nm) = check_frames("pipe ingress", &r, &data, &heads, 4);
        println!("pipe ingress: {nr} records, {nm} marks");
        assert_eq!(
            cursors[Direction::Egress.index()],
            Some(0),
            "cursor after the last message"
        );
        assert_eq!(lost_count(&probes), 0, "{:?}", probes.stats().nonzero());
        for fd in fds {
            probes.unwatch_fd(me, open_fd(fd)).unwrap();
            // SAFETY: our fd.
            unsafe { libc::close(fd) };
        }
    });
}

/// Garbage where frames are expected: the cursor is lost (counted), records say so,
/// nothing breaks, later records are plain.
#[test]
fn frame_cursor_garbage() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    runtime().block_on(async {
        let mut probes = load();
        let mut rx = probes.events().expect("events");
        let mut rng = Rng(0x0bad_f00d_0000_0001);
        // Socket: a preface then random bytes (frame type 0xee: no HTTP/2 frame).
        let mut stream = PREFACE.to_vec();
        stream.extend(rng.bytes(30_000));
        stream[24 + 3] = 0xee;
        let plan = vec![
            Op {
                op: "sendmsg",
                iov: vec![10_000, 7, 5_000],
            },
            Op {
                op: "write",
                iov: vec![stream.len() - 15_007],
            },
        ];
        let (pid, evs, fds) = run_plan(&mut probes, &mut rx, &stream, &plan).await;
        let w = io_stream(&evs, pid, fds[0], Direction::Egress);
        let st: Vec<FrameStatus> = w.iter().map(|r| r.frame_status).collect();
        assert_eq!(st, vec![FrameStatus::Lost, FrameStatus::Unknown], "{w:?}");
        assert!(w.iter().all(|r| r.marks.is_empty()));
        let r = io_stream(&evs, pid, fds[1], Direction::Ingress);
        assert_eq!(
            r.iter()
                .filter(|r| r.frame_status == FrameStatus::Lost)
                .count(),
            1
        );
        let stats = probes.stats();
        assert!(stats.get(PROBE_SENDMSG, STAT_CURSOR_LOST) >= 1);
        assert!(stats.total(STAT_CURSOR_LOST) >= 2);

        // Pipe: a {packet,4} length above 1 GiB.
        let mut data = vec![0xff, 0xff, 0xff, 0xff];
        data.extend(rng.bytes(10_000));
        let before = lost_count(&probes);
        let fds = pipe_roundtrip(&mut probes, &data, &[vec![4, 5000], vec![5000]]);
        let me = std::process::id();
        assert_eq!(
            probes.fd_cursors(me, open_fd(fds[1])),
            Some([Some(0), None])
        );
        assert_eq!(lost_count(&probes), before + 2, "write and read side");
        println!("garbage: {:?}", probes.stats().nonzero());
        for fd in fds {
            probes.unwatch_fd(me, open_fd(fd)).unwrap();
            // SAFETY: our fd.
            unsafe { libc::close(fd) };
        }
        assert_eq!(probes.reader_counters().1, 0, "decode errors");
    });
}

/// The child for the cost test: 1 MiB sendmsgs of 64 gRPC-style DATA frames (header and
/// payload in separate iovecs), first on a socket whose cursor is followed (marks),
/// then on one whose cursor was lost on purpose (no marks).
const CHILD_COST: &str = r#"
import socket, sys, threading
N = int(sys.argv[1])
sys.stdout.write("ready\n"); sys.stdout.flush()
sys.stdin.readline()
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(2)
def conn():
    c = socket.socket(); c.connect(srv.getsockname()); s, _ = srv.accept()
    def drain():
        while s.recv(1 << 20):
            pass
    t = threading.Thread(target=drain); t.start()
    return c, s, t
payload = bytes(16384)
hdr = (16384).to_bytes(3, "big") + bytes([0, 0]) + (1).to_bytes(4, "big")
iov = [hdr, payload] * 64
def phase(c, name):
    for _ in range(N):
        assert c.sendmsg(iov) == 64 * (16384 + 9)
    sys.stdout.write(name + "\n"); sys.stdout.flush()
    sys.stdin.readline()
c1, s1, t1 = conn()
c1.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
phase(c1, "marks")
c2, s2, t2 = conn()
c2.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\xff" * 9)
phase(c2, "plain")
for c in (c1, c2):
    c.close()
for t in (t1, t2):
    t.join()
"#;

#[test]
fn frame_cursor_cost() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    runtime().block_on(async {
        const N: usize = 50;
        let mut probes = load_counted();
        let mut rx = probes.events().expect("events");
        let (mut child, mut out) =
            spawn_interpreter("python3".as_ref(), CHILD_COST, &[&N.to_string()]);
        let mut line = String::new();
        let pid = child.id();
        probes.watch_pid(pid, PID_WATCH_NEW_SOCKETS).unwrap();
        let sendmsg_run = |p: &Probes| prog_run(p, "sys_exit_sendmsg");
        let mut results = Vec::new();
        for _ in 0..2 {
            let (t0, c0) = sendmsg_run(&probes);
            child.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
            line.clear();
            out.read_line(&mut line).expect("phase");
            let (t1, c1) = sendmsg_run(&probes);
            results.push((line.trim().to_string(), t1 - t0, c1 - c0));
        }
        child.stdin.as_mut().unwrap().write_all(b"end\n").unwrap();
        assert!(child.wait().unwrap().success(), "child failed");
        let evs = collect(&mut rx, Duration::from_secs(10), |evs| {
            exit_of(evs, pid).is_some()
        })
        .await;
        let sends = sendmsg_records(&evs, pid);
        let with = sends.iter().filter(|r| r.marks.len() == 63).count();
        let without = sends
            .iter()
            .filter(|r| r.frame_status == FrameStatus::Unknown)
            .count();
        assert_eq!((with, without), (N, N), "records with 63 marks / untracked");
        for (name, ns, runs) in results {
            println!(
                "1 MiB sendmsg (64 frames, 128 iovecs), {name}: {runs} sys_exit_sendmsg runs, \
                 {:.0} ns/run in-kernel (the prefix copy included)",
                ns as f64 / runs.max(1) as f64
            );
        }
    });
}

/// Runs CHILD_PLAN for `stream` / `plan` in a watched child; returns its pid, the
/// events and (connecting fd, accepted fd).
async fn run_plan(
    probes: &mut Probes,
    rx: &mut KernelEvents,
    stream: &[u8],
    plan: &[Op],
) -> (u32, Vec<KernelEvent>, [i32; 2]) {
    run_plan_reads(probes, rx, stream, plan, None).await
}

/// [`run_plan`], the reading end reading exactly `reads` (sizes, in order) once the
/// whole stream is written, when given.
async fn run_plan_reads(
    probes: &mut Probes,
    rx: &mut KernelEvents,
    stream: &[u8],
    plan: &[Op],
    reads: Option<&[usize]>,
) -> (u32, Vec<KernelEvent>, [i32; 2]) {
    let dir = tempfile::tempdir().expect("tempdir");
    let plan_path = dir.path().join("plan.json");
    let data_path = dir.path().join("data.bin");
    std::fs::write(&plan_path, serde_json::to_vec(plan).expect("json")).expect("plan");
    std::fs::write(&data_path, stream).expect("data");
    let mut cmd = Command::new("python3");
    cmd.arg("-c")
        .arg(CHILD_PLAN)
        .arg(&plan_path)
        .arg(&data_path);
    if let Some(reads) = reads {
        cmd.arg(serde_json::to_string(reads).expect("json"));
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("ready");
    let pid = child.id();
    probes.watch_pid(pid, PID_WATCH_NEW_SOCKETS).unwrap();
    child.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    line.clear();
    out.read_line(&mut line).expect("fds");
    let fds: Vec<i32> = line
        .split_whitespace()
        .filter_map(|f| f.parse().ok())
        .collect();
    assert!(child.wait().unwrap().success(), "child failed");
    let evs = collect(rx, Duration::from_secs(10), |evs| {
        exit_of(evs, pid).is_some()
    })
    .await;
    assert_eq!(fds.len(), 2, "{line:?}");
    (pid, evs, [fds[0], fds[1]])
}

/// More headers beyond the prefix than MAX_MARKS in one syscall: the record carries
/// MAX_MARKS valid marks (the last one is the last header found), says Overflow, and
/// the cursor stays exact: the next record starts at the right frame header.
#[test]
fn frame_cursor_too_many_frames() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    runtime().block_on(async {
        let mut probes = load();
        let mut rx = probes.events().expect("events");
        let mut rng = Rng(0x7007_0000_0000_0003);
        let (stream, heads) = http2_stream(&mut rng, 120, 1000);
        let first = stream.len() - 500;
        let plan = vec![
            Op {
                op: "sendmsg",
                iov: vec![first],
            },
            Op {
                op: "write",
                iov: vec![500],
            },
        ];
        let (pid, evs, fds) = run_plan(&mut probes, &mut rx, &stream, &plan).await;
        let w = io_stream(&evs, pid, fds[0], Direction::Egress);
        assert_eq!(w.len(), 2);
        assert_eq!(w[0].frame_status, FrameStatus::Overflow);
        assert_eq!(w[0].marks.len(), telemetry_common::MAX_MARKS as usize);
        for m in &w[0].marks {
            let off = m.offset as usize;
            assert!(heads.binary_search(&off).is_ok(), "mark at {off}");
            assert_eq!(&m.bytes[..], &stream[off..off + m.bytes.len()]);
        }
        // The second write starts where the kernel's cursor says, on a real header.
        assert_eq!(w[1].frame_status, FrameStatus::Tracked);
        let next = w[1].cursor_in.expect("cursor after the overflow") as usize + first;
        assert!(
            heads.binary_search(&next).is_ok() || next >= stream.len(),
            "cursor {next} is not a frame start"
        );
        assert_eq!(probes.stats().get(PROBE_SENDMSG, STAT_CURSOR_LOST), 0);
    });
}

/// A watched process killed by the OOM killer of its memory cgroup: the probe reports
/// it (oom/mark_victim) before its exit by SIGKILL, so a crash can say "OOM-killed".
#[test]
fn oom_kill_reported() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let memcg = std::path::Path::new("/sys/fs/cgroup/memory");
    assert!(
        memcg.join("cgroup.procs").exists(),
        "this test needs the cgroup v1 memory controller at {} to cause an OOM kill",
        memcg.display()
    );
    let group = memcg.join(format!("snakepit-oom-test-{}", std::process::id()));
    std::fs::create_dir_all(&group).expect("creating a memory cgroup");
    std::fs::write(group.join("memory.limit_in_bytes"), "33554432").expect("memory limit");
    runtime().block_on(async {
        let mut probes = load();
        let mut rx = probes.events().expect("events");
        // Waits for "go", then touches 256 MiB: the cgroup's OOM killer ends it.
        let (mut child, _out) = spawn_python(
            "import sys\nsys.stdout.write('ready\\n'); sys.stdout.flush()\nsys.stdin.readline()\nb = b'x' * (256 << 20)\n",
        );
        let pid = child.id();
        std::fs::write(group.join("cgroup.procs"), pid.to_string()).expect("joining the cgroup");
        probes.watch_pid(pid, PID_WORKER).unwrap();
        child.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
        let evs = collect(&mut rx, Duration::from_secs(20), |evs| {
            exit_of(evs, pid).is_some()
        })
        .await;
        let _ = child.wait();
        let oom = evs
            .iter()
            .position(|e| matches!(e, KernelEvent::OomKill { tgid, .. } if *tgid == pid));
        let exit = evs
            .iter()
            .position(|e| matches!(e, KernelEvent::Exit { tgid, .. } if *tgid == pid));
        assert!(oom.is_some(), "no OOM kill reported for {pid}: {evs:?}");
        assert!(oom < exit, "the OOM kill comes before the exit");
        assert_eq!(
            exit_of(&evs, pid),
            Some(ExitStatus::Signaled {
                signal: 9,
                core_dumped: false
            })
        );
    });
    let _ = std::fs::remove_dir(&group);
}

/// A Python process of the project venv that calls orjson in a loop until its stdin
/// closes.
const ORJSON_LOOP: &str = r#"
import orjson, sys, threading, time
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.readline(), stop.set()), daemon=True).start()
sys.stdout.write("ready\n"); sys.stdout.flush()
i = 0
while not stop.is_set():
    orjson.loads(orjson.dumps({"i": i, "payload": "x" * 64}))
    i += 1
    time.sleep(0.0005)
"#;

fn venv_python() -> std::path::PathBuf {
    let py = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    assert!(
        py.exists(),
        "the project venv is missing ({}): run `cargo xtask setup`",
        py.display()
    );
    py
}

fn serialize_runs(probes: &Probes) -> u64 {
    probes
        .prog_run_stats()
        .iter()
        .filter(|r| r.name.starts_with("serialize_"))
        .map(|r| r.run_count)
        .sum()
}

fn serialize_records(evs: &[KernelEvent], pid: u32) -> usize {
    evs.iter()
        .filter(|e| matches!(e, KernelEvent::Serialize(s) if s.tgid == pid))
        .count()
}

/// Waits up to 5 s for 50 serialize records of `pid`; fails saying `when` otherwise.
async fn expect_serialize_records(rx: &mut KernelEvents, pid: u32, when: &str) {
    let evs = collect(rx, Duration::from_secs(5), |e| {
        serialize_records(e, pid) >= 50
    })
    .await;
    assert!(
        serialize_records(&evs, pid) >= 50,
        "serialize records {when}: {}",
        serialize_records(&evs, pid)
    );
}

/// The (de)serialization uprobes are multi-uprobe links on this kernel: attached
/// while the worker split records, gone while it pauses (the worker's calls then run
/// no program at all, not even one that returns at once), back for the next window.
#[test]
fn serialization_uprobes_follow_the_split_windows() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    runtime().block_on(async {
        let mut probes = load_counted();
        let mut rx = probes.events().expect("events");
        let (mut child, _out) = spawn_interpreter(venv_python().as_os_str(), ORJSON_LOOP, &[]);
        let pid = child.id();

        let plan =
            snakepit_agent::worker_time::targets::plan(std::path::Path::new("/proc"), pid, None);
        let orjson: Vec<_> = plan
            .targets
            .iter()
            .filter(|t| t.path.to_string_lossy().contains("orjson"))
            .collect();
        assert_eq!(orjson.len(), 2, "orjson loads and dumps in {:?}", plan);
        for t in &orjson {
            probes.attach_serialize(pid, t).expect("attach");
        }
        let (links, multi) = probes.serialize_links();
        assert!(
            multi,
            "kernel 6.6+ has multi-uprobe links; the agent fell back to perf uprobes"
        );
        assert_eq!(links, 4, "entry and return links of two functions");

        expect_serialize_records(&mut rx, pid, "while recording").await;

        // Pause: the links go; after their closes settle no program runs.
        probes.set_split_gate(false, 0).expect("pause");
        assert_eq!(probes.serialize_links().0, 0, "links while paused");
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before = serialize_runs(&probes);
        tokio::time::sleep(Duration::from_millis(700)).await;
        let paused_runs = serialize_runs(&probes) - before;
        assert_eq!(paused_runs, 0, "uprobe programs ran while the split paused");
        while rx.try_recv().is_some() {}

        // The next window: attached again, records again.
        let started = Instant::now();
        probes.set_split_gate(true, 1).expect("resume");
        println!("attach of one worker's links: {:?}", started.elapsed());
        assert_eq!(
            probes.serialize_links().0,
            2,
            "one link per object and direction"
        );
        expect_serialize_records(&mut rx, pid, "in the next window").await;
        assert!(serialize_runs(&probes) > before, "programs run again");

        let started = Instant::now();
        probes.detach_serialize(pid);
        println!("detach (background): {:?}", started.elapsed());
        drop(child.stdin.take());
        let _ = child.wait();
    });
}

/// The child for the small-send test: `N` sendmsgs shaped like grpc's unary response
/// (HEADERS, DATA with a 5-byte message prefix, trailing HEADERS: six iovecs, none
/// adjacent to the next in memory, 192 bytes), then exit.
const CHILD_SMALL: &str = r#"
import socket, sys, threading
N = int(sys.argv[1])
sys.stdout.write("ready\n"); sys.stdout.flush()
sys.stdin.readline()
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(2)
c = socket.socket(); c.connect(srv.getsockname()); s, _ = srv.accept()
def drain():
    while s.recv(1 << 20):
        pass
t = threading.Thread(target=drain); t.start()
c.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
def fh(n, ty, fl, sid):
    return n.to_bytes(3, "big") + bytes([ty, fl]) + sid.to_bytes(4, "big")
for i in range(N):
    sid = 2 * i + 1
    body = bytes([i % 251]) * 100
    iov = [fh(40, 1, 4, sid), bytes(40), fh(105, 0, 0, sid), b"\x00\x00\x00\x00\x64", body,
           fh(20, 1, 5, sid) + bytes(20)]
    assert c.sendmsg(iov) == 192
c.close(); t.join()
sys.stdout.write("done\n"); sys.stdout.flush()
"#;

/// The same bytes as CHILD_SMALL's send `i`.
fn small_send(i: usize) -> Vec<u8> {
    let fh = |n: u32, ty: u8, fl: u8, sid: u32| {
        let mut h = n.to_be_bytes()[1..].to_vec();
        h.extend([ty, fl]);
        h.extend(sid.to_be_bytes());
        h
    };
    let sid = 2 * i as u32 + 1;
    let mut v = fh(40, 1, 4, sid);
    v.extend([0u8; 40]);
    v.extend(fh(105, 0, 0, sid));
    v.extend([0, 0, 0, 0, 0x64]);
    v.extend(std::iter::repeat_n((i % 251) as u8, 100));
    v.extend(fh(20, 1, 5, sid));
    v.extend([0u8; 20]);
    v
}

/// Small gRPC-shaped sends of six iovecs are captured whole and in order, with their
/// frames followed; prints what a send costs in the kernel (issue 10: the copies are
/// one `bpf_probe_read_user` per iovec, the largest part of a small send's cost).
#[test]
fn small_grpc_sends_are_captured_whole() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    runtime().block_on(async {
        const N: usize = 5000;
        let mut probes = load_counted();
        let mut rx = probes.events().expect("events");
        let (mut child, mut out) =
            spawn_interpreter("python3".as_ref(), CHILD_SMALL, &[&N.to_string()]);
        let mut line = String::new();
        let pid = child.id();
        probes
            .watch_pid(pid, PID_WATCH_NEW_SOCKETS)
            .expect("watch pid");
        let sendmsg_run = |p: &Probes| prog_run(p, "sys_exit_sendmsg");
        let (t0, c0) = sendmsg_run(&probes);
        child
            .stdin
            .as_mut()
            .expect("stdin")
            .write_all(b"go\n")
            .expect("go");
        line.clear();
        out.read_line(&mut line).expect("done");
        let (t1, c1) = sendmsg_run(&probes);
        assert!(child.wait().expect("wait").success(), "child failed");
        let evs = collect(&mut rx, Duration::from_secs(10), |evs| {
            exit_of(evs, pid).is_some()
        })
        .await;
        let sends = sendmsg_records(&evs, pid);
        assert_eq!(sends.len(), N, "sendmsg records");
        for (i, r) in sends.iter().enumerate() {
            assert_eq!(r.payload.as_ref(), small_send(i).as_slice(), "send {i}");
            assert_eq!(r.frame_status, FrameStatus::Tracked, "send {i}");
        }
        // (The reading end's 1 MiB reads hold more frames than one walk follows: its
        // cursor may be lost, and that side is not what this test is about.)
        let stats = probes.stats().nonzero();
        assert!(
            !stats
                .iter()
                .any(|&(p, k, _)| p == "sendmsg" && (k == "cursor_lost" || k == "read_errors")),
            "{stats:?}"
        );
        println!(
            "small gRPC sendmsg (6 iovecs, 192 bytes): {} runs, {:.0} ns/run in-kernel",
            c1 - c0,
            (t1 - t0) as f64 / (c1 - c0).max(1) as f64
        );
    });
}

/// An fd this test opened, as the agent's fd type.
fn open_fd(fd: i32) -> u32 {
    u32::try_from(fd).expect("an open fd is not negative")
}
