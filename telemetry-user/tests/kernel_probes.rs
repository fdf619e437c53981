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
    preflight, Direction, ExitStatus, KernelConfig, KernelEvent, Probes, Syscall, FD_PIPE,
    PID_WATCH_NEW_SOCKETS, PID_WORKER,
};
use telemetry_common::{
    PROBE_READ, PROBE_RECVFROM, PROBE_SENDMSG, PROBE_SENDTO, PROBE_WRITE, PROBE_WRITEV,
    STAT_EVENTS, STAT_TRUNCATED,
};
use tokio::sync::mpsc::Receiver;

/// Loading probes twice at once is fine, but the timing test must run alone.
static SERIAL: Mutex<()> = Mutex::new(());

fn load() -> Probes {
    let pf = preflight();
    let problems = pf.problems();
    assert!(
        problems.is_empty(),
        "kernel probes cannot run here: {problems:?} ({pf:?})"
    );
    Probes::load(&KernelConfig::default())
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
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 is needed by this test");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("child ready");
    assert_eq!(line.trim(), "ready");
    (child, out)
}

/// Collects events until `done` says so or the deadline passes.
async fn collect(
    rx: &mut Receiver<KernelEvent>,
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
    let mut probes = load();
    let mut rx = probes.events().expect("events");
    assert_eq!(probes.attached().len(), 24, "{:?}", probes.attached());

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
    let opens: Vec<(i32, Syscall, i64)> = evs
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
        .0;
    let accept_fd = opens
        .iter()
        .find(|o| o.1 == Syscall::Accept4 || o.1 == Syscall::Accept)
        .unwrap_or_else(|| panic!("no accept open: {opens:?}"))
        .0;

    // I/O per (fd, direction): contiguous seq, exact bytes and payload.
    let want = expected_stream();
    let mut streams: BTreeMap<(i32, Direction), Vec<_>> = BTreeMap::new();
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
    let close_totals = |fd: i32| {
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
    probes.watch_fd(me, fds[0], FD_PIPE, None).unwrap();
    probes.watch_fd(me, fds[1], FD_PIPE, None).unwrap();
    let msg = b"pipe-bytes";
    let mut buf = [0u8; 64];
    // SAFETY: valid buffers and fds.
    unsafe {
        assert_eq!(libc::write(fds[1], msg.as_ptr().cast(), msg.len()), 10);
        assert_eq!(libc::read(fds[0], buf.as_mut_ptr().cast(), buf.len()), 10);
    }
    let t = probes.fd_totals(me, fds[1]).expect("totals of watched fd");
    assert_eq!((t.bytes_out, t.calls_out), (10, 1));
    let t = probes.fd_totals(me, fds[0]).expect("totals of watched fd");
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
    probes.unwatch_fd(me, fds[0]).unwrap();
    probes.unwatch_fd(me, fds[1]).unwrap();
    assert_eq!(probes.fd_totals(me, fds[1]), None);
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

#[test]
fn miss_path_cost() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    const N: usize = 200_000;
    write_devnull_loop(N / 10); // warm up
    let before = write_devnull_loop(N);
    let probes = load();
    let with = write_devnull_loop(N);
    let run: Vec<_> = probes
        .prog_run_stats()
        .into_iter()
        .filter(|s| s.name.ends_with("_write"))
        .collect();
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
}
