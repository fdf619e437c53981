//! Pure parsers for the /proc texts discovery reads. No I/O here: every function
//! takes bytes or text and is unit-tested on fixture strings.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use serde::{Deserialize, Serialize};

use super::DiscoveryError;

// ---------------------------------------------------------------------------
// cmdline
// ---------------------------------------------------------------------------

/// Splits a NUL-separated `/proc/PID/cmdline` into arguments. A trailing NUL (the
/// normal case) does not make an empty last argument; non-UTF-8 bytes are replaced.
pub fn parse_cmdline(raw: &[u8]) -> Vec<String> {
    let raw = raw.strip_suffix(&[0]).unwrap_or(raw);
    if raw.is_empty() {
        return Vec::new();
    }
    raw.split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// Last path component (`/usr/lib/erlang/.../beam.smp` -> `beam.smp`).
pub fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// Arguments a Snakepit worker is started with (all optional: user-selected workers
/// may carry none of them).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct WorkerArgs {
    /// `--adapter <python.module.Class>`.
    pub adapter: Option<String>,
    /// `--port N` as given (0 = kernel picks; the real port comes from the LISTEN socket).
    pub port_arg: Option<u16>,
    /// `--elixir-address host:port` (the BEAM's callback server).
    pub elixir_address: Option<(String, u16)>,
    /// `--snakepit-run-id` (or the older `--run-id`).
    pub run_id: Option<String>,
    /// `--snakepit-instance-name`.
    pub instance_name: Option<String>,
    /// Whether `--snakepit-instance-token` is present (the value is a secret: not kept).
    pub has_instance_token: bool,
    /// `grpc_server_threaded.py` rather than `grpc_server.py`.
    pub threaded: bool,
    /// `--pool NAME` (pipe workers of the demo).
    pub pool_arg: Option<String>,
    /// The script argument (`.../grpc_server.py`, `.../port_worker.py`), if any.
    pub script: Option<String>,
}

/// What a process is, from its command line (and comm).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ProcessKind {
    Beam,
    GrpcWorker(WorkerArgs),
    /// Legacy stdin/stdout ({packet,4}) worker.
    PortWorker(WorkerArgs),
    Other,
}

impl ProcessKind {
    pub fn is_worker(&self) -> bool {
        matches!(
            self,
            ProcessKind::GrpcWorker(_) | ProcessKind::PortWorker(_)
        )
    }
    pub fn worker_args(&self) -> Option<&WorkerArgs> {
        match self {
            ProcessKind::GrpcWorker(a) | ProcessKind::PortWorker(a) => Some(a),
            _ => None,
        }
    }
}

/// User additions to the built-in rules (config `discovery` section). Patterns are
/// plain substrings matched against the space-joined command line.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Selectors {
    /// A process whose cmdline contains one of these is a worker.
    pub worker_patterns: Vec<String>,
    /// A process whose cmdline contains one of these is a (candidate) BEAM.
    pub beam_patterns: Vec<String>,
    /// These pids are workers whatever their cmdline.
    pub worker_pids: Vec<u32>,
    /// These pids are BEAMs whatever their cmdline.
    pub beam_pids: Vec<u32>,
}

/// Value of `--flag value` or `--flag=value` (first occurrence).
fn flag_value<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == flag {
            return it.next().map(String::as_str);
        }
        if let Some(v) = a.strip_prefix(flag).and_then(|r| r.strip_prefix('=')) {
            return Some(v);
        }
    }
    None
}

fn has_flag(args: &[String], flag: &str) -> bool {
    args.iter()
        .any(|a| a == flag || a.strip_prefix(flag).is_some_and(|r| r.starts_with('=')))
}

/// `127.0.0.1:50051`, `[::1]:50051`, `localhost:4000` -> (host, port).
pub fn parse_host_port(s: &str) -> Option<(String, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let port = port.parse().ok()?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() {
        return None;
    }
    Some((host.to_string(), port))
}

/// Reads every worker flag out of a command line.
pub fn parse_worker_args(args: &[String]) -> WorkerArgs {
    let joined = args.join(" ");
    let script = args
        .iter()
        .find(|a| a.ends_with(".py"))
        .map(|s| s.to_string());
    WorkerArgs {
        adapter: flag_value(args, "--adapter").map(str::to_string),
        port_arg: flag_value(args, "--port").and_then(|p| p.parse().ok()),
        elixir_address: flag_value(args, "--elixir-address").and_then(parse_host_port),
        run_id: flag_value(args, "--snakepit-run-id")
            .or_else(|| flag_value(args, "--run-id"))
            .map(str::to_string),
        instance_name: flag_value(args, "--snakepit-instance-name").map(str::to_string),
        has_instance_token: has_flag(args, "--snakepit-instance-token"),
        threaded: joined.contains("grpc_server_threaded.py"),
        pool_arg: flag_value(args, "--pool").map(str::to_string),
        script,
    }
}

/// Snakepit's own rule (facts file): cmdline holds `grpc_server.py` or
/// `grpc_server_threaded.py` and `--snakepit-run-id` (older `--run-id`).
pub fn is_snakepit_grpc_worker(args: &[String]) -> bool {
    let joined = args.join(" ");
    (joined.contains("grpc_server.py") || joined.contains("grpc_server_threaded.py"))
        && (has_flag(args, "--snakepit-run-id") || has_flag(args, "--run-id"))
}

/// Whether comm, exe or argv[0] names `beam.smp`.
pub fn is_beam(args: &[String], comm: &str, exe: Option<&str>) -> bool {
    comm == "beam.smp"
        || exe.is_some_and(|e| basename(e) == "beam.smp")
        || args.first().is_some_and(|a0| basename(a0) == "beam.smp")
}

/// Classifies a process from what its command line says. The env-based rule for
/// pipe workers (child of a BEAM with `SNAKEPIT_WORKER_ID`) needs ancestry and is
/// applied by the topology.
pub fn classify(
    pid: u32,
    args: &[String],
    comm: &str,
    exe: Option<&str>,
    sel: &Selectors,
) -> ProcessKind {
    let joined = args.join(" ");
    let worker_kind = || {
        let wa = parse_worker_args(args);
        if joined.contains("port_worker.py") {
            ProcessKind::PortWorker(wa)
        } else {
            ProcessKind::GrpcWorker(wa)
        }
    };
    if sel.beam_pids.contains(&pid) {
        return ProcessKind::Beam;
    }
    if sel.worker_pids.contains(&pid) {
        return worker_kind();
    }
    if is_beam(args, comm, exe) {
        return ProcessKind::Beam;
    }
    if is_snakepit_grpc_worker(args) {
        return ProcessKind::GrpcWorker(parse_worker_args(args));
    }
    if args.iter().any(|a| basename(a) == "port_worker.py") {
        return ProcessKind::PortWorker(parse_worker_args(args));
    }
    let matches = |pats: &[String]| pats.iter().any(|p| !p.is_empty() && joined.contains(p));
    if matches(&sel.beam_patterns) {
        return ProcessKind::Beam;
    }
    if matches(&sel.worker_patterns) {
        return worker_kind();
    }
    ProcessKind::Other
}

// ---------------------------------------------------------------------------
// environ
// ---------------------------------------------------------------------------

/// The Snakepit-relevant part of `/proc/PID/environ`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SnakepitEnv {
    /// `SNAKEPIT_READY_FILE` as given.
    pub ready_file: Option<String>,
    /// From the ready file name, else from `SNAKEPIT_WORKER_ID`.
    pub worker_id: Option<String>,
    /// Text before the last `_worker_` of the worker id.
    pub pool: Option<String>,
    /// `SNAKEPIT_WORKER_ID` (pipe workers).
    pub worker_id_var: Option<String>,
    /// Every `SNAKEPIT_*` variable plus `GRPC_POLL_STRATEGY`.
    pub vars: BTreeMap<String, String>,
}

/// `<tmp>/snakepit_ready_<worker_id>_<n>` -> `<worker_id>`. The worker id has
/// underscores of its own, so only a trailing all-digit `_<n>` is stripped; a name
/// without it is taken whole.
pub fn worker_id_from_ready_file(path: &str) -> Option<String> {
    let name = basename(path).strip_prefix("snakepit_ready_")?;
    let id = match name.rsplit_once('_') {
        Some((id, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => id,
        _ => name,
    };
    (!id.is_empty()).then(|| id.to_string())
}

/// Pool of a worker id `<pool>_worker_<i>_<unique>` (or `<pool>_worker_<unique>`).
pub fn pool_from_worker_id(id: &str) -> Option<String> {
    id.rfind("_worker_")
        .map(|i| id[..i].to_string())
        .filter(|p| !p.is_empty())
}

/// Parses a NUL-separated environ block.
pub fn parse_environ(raw: &[u8]) -> SnakepitEnv {
    let mut env = SnakepitEnv::default();
    for entry in raw.split(|b| *b == 0) {
        let entry = String::from_utf8_lossy(entry);
        let Some((k, v)) = entry.split_once('=') else {
            continue;
        };
        if k.starts_with("SNAKEPIT_") || k == "GRPC_POLL_STRATEGY" {
            env.vars.insert(k.to_string(), v.to_string());
        }
    }
    env.ready_file = env.vars.get("SNAKEPIT_READY_FILE").cloned();
    env.worker_id_var = env.vars.get("SNAKEPIT_WORKER_ID").cloned();
    env.worker_id = env
        .ready_file
        .as_deref()
        .and_then(worker_id_from_ready_file)
        .or_else(|| env.worker_id_var.clone());
    env.pool = env.worker_id.as_deref().and_then(pool_from_worker_id);
    env
}

// ---------------------------------------------------------------------------
// stat
// ---------------------------------------------------------------------------

/// The fields of `/proc/PID/stat` discovery uses.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ProcStat {
    pub pid: u32,
    pub comm: String,
    pub state: char,
    pub ppid: u32,
    pub pgrp: i32,
    pub session: i32,
    /// Clock ticks after boot (field 22): with the pid, identifies a process instance.
    pub start_time: u64,
}

/// Parses `/proc/PID/stat`. comm is everything between the first `(` and the last
/// `)`: it may itself hold spaces and parentheses.
pub fn parse_stat(text: &str) -> Result<ProcStat, DiscoveryError> {
    let bad = |detail: &str| DiscoveryError::Parse {
        what: "stat",
        detail: detail.to_string(),
    };
    let open = text.find('(').ok_or_else(|| bad("no '('"))?;
    let close = text.rfind(')').ok_or_else(|| bad("no ')'"))?;
    if close < open {
        return Err(bad("')' before '('"));
    }
    let pid = text[..open]
        .trim()
        .parse()
        .map_err(|_| bad("pid not a number"))?;
    let comm = text[open + 1..close].to_string();
    let rest: Vec<&str> = text[close + 1..].split_whitespace().collect();
    // rest[0] = state (field 3), rest[1] = ppid (4), ... rest[19] = starttime (22).
    let field = |i: usize| rest.get(i).copied().ok_or_else(|| bad("too few fields"));
    let state = field(0)?.chars().next().unwrap_or('?');
    let ppid = field(1)?.parse().map_err(|_| bad("bad ppid"))?;
    let pgrp = field(2)?.parse().map_err(|_| bad("bad pgrp"))?;
    let session = field(3)?.parse().map_err(|_| bad("bad session"))?;
    let start_time = field(19)?.parse().map_err(|_| bad("bad starttime"))?;
    Ok(ProcStat {
        pid,
        comm,
        state,
        ppid,
        pgrp,
        session,
        start_time,
    })
}

// ---------------------------------------------------------------------------
// /proc/net/tcp, tcp6
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TcpState {
    Established,
    SynSent,
    SynRecv,
    FinWait1,
    FinWait2,
    TimeWait,
    Close,
    CloseWait,
    LastAck,
    Listen,
    Closing,
    NewSynRecv,
    Unknown(u8),
}

impl TcpState {
    pub fn from_code(c: u8) -> Self {
        match c {
            0x01 => TcpState::Established,
            0x02 => TcpState::SynSent,
            0x03 => TcpState::SynRecv,
            0x04 => TcpState::FinWait1,
            0x05 => TcpState::FinWait2,
            0x06 => TcpState::TimeWait,
            0x07 => TcpState::Close,
            0x08 => TcpState::CloseWait,
            0x09 => TcpState::LastAck,
            0x0A => TcpState::Listen,
            0x0B => TcpState::Closing,
            0x0C => TcpState::NewSynRecv,
            other => TcpState::Unknown(other),
        }
    }
    /// A connection whose two ends can carry data (or soon will).
    pub fn is_connected(self) -> bool {
        matches!(
            self,
            TcpState::Established | TcpState::SynSent | TcpState::SynRecv | TcpState::CloseWait
        )
    }
}

/// One row of `/proc/net/tcp` or `tcp6`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TcpEntry {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub state: TcpState,
    pub uid: u32,
    pub inode: u64,
}

/// IPv4-mapped IPv6 (`::ffff:127.0.0.1`) becomes plain IPv4 so both ends of a
/// connection compare equal whichever table they are in.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => addr,
        },
        SocketAddr::V4(_) => addr,
    }
}

pub fn is_loopback(addr: SocketAddr) -> bool {
    canonical(addr).ip().is_loopback()
}

/// The kernel prints each 32-bit word of the address as the integer it reads from
/// memory (host order), so the word's native-endian bytes are the network bytes.
fn parse_hex_addr(s: &str) -> Option<SocketAddr> {
    let (ip_hex, port_hex) = s.split_once(':')?;
    let port = u16::from_str_radix(port_hex, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        let w = ip_hex.get(i * 8..i * 8 + 8)?;
        Some(u32::from_str_radix(w, 16).ok()?.to_ne_bytes())
    };
    let ip = match ip_hex.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(b))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// Parses one data line (not the header) of `/proc/net/tcp{,6}`.
pub fn parse_tcp_line(line: &str) -> Result<TcpEntry, DiscoveryError> {
    let bad = |detail: &str| DiscoveryError::Parse {
        what: "net/tcp",
        detail: format!("{detail}: {line:?}"),
    };
    let f: Vec<&str> = line.split_whitespace().collect();
    if f.len() < 10 || !f[0].ends_with(':') {
        return Err(bad("too few fields"));
    }
    let local = parse_hex_addr(f[1]).ok_or_else(|| bad("bad local address"))?;
    let remote = parse_hex_addr(f[2]).ok_or_else(|| bad("bad remote address"))?;
    let state = u8::from_str_radix(f[3], 16).map_err(|_| bad("bad state"))?;
    let uid = f[7].parse().map_err(|_| bad("bad uid"))?;
    let inode = f[9].parse().map_err(|_| bad("bad inode"))?;
    Ok(TcpEntry {
        local,
        remote,
        state: TcpState::from_code(state),
        uid,
        inode,
    })
}

/// Parses a whole table; the header and malformed lines are skipped.
pub fn parse_net_tcp(text: &str) -> Vec<TcpEntry> {
    text.lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .filter_map(|l| match parse_tcp_line(l) {
            Ok(e) => Some(e),
            Err(e) => {
                tracing::debug!("skipping tcp line: {e}");
                None
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------
// /proc/PID/fd/N
// ---------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FdTarget {
    Socket(u64),
    Pipe(u64),
    Other(String),
}

/// `socket:[123]` / `pipe:[456]` / anything else.
pub fn parse_fd_link(link: &str) -> FdTarget {
    let inode = |prefix: &str| {
        link.strip_prefix(prefix)
            .and_then(|r| r.strip_suffix(']'))
            .and_then(|n| n.parse::<u64>().ok())
    };
    if let Some(i) = inode("socket:[") {
        FdTarget::Socket(i)
    } else if let Some(i) = inode("pipe:[") {
        FdTarget::Pipe(i)
    } else {
        FdTarget::Other(link.to_string())
    }
}

/// The `flags:` line of `/proc/PID/fdinfo/N` (octal open flags).
pub fn parse_fdinfo_flags(text: &str) -> Option<u32> {
    text.lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
}

/// Whether open flags allow writing (O_WRONLY or O_RDWR).
pub fn flags_writable(flags: u32) -> bool {
    flags & 3 != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split(' ').map(str::to_string).collect()
    }

    #[test]
    fn cmdline_splits_on_nul() {
        assert_eq!(parse_cmdline(b"a\0b c\0\0d\0"), vec!["a", "b c", "", "d"]);
        assert_eq!(parse_cmdline(b"x"), vec!["x"]);
        assert!(parse_cmdline(b"").is_empty());
        assert_eq!(parse_cmdline(b"\xff\0"), vec!["\u{fffd}"]);
    }

    #[test]
    fn classify_grpc_worker() {
        let a = args(
            "/venv/bin/python3 /app/priv/python/grpc_server.py --adapter demo_adapter.DemoAdapter \
             --port 0 --elixir-address 127.0.0.1:41234 --snakepit-run-id a1b2c3d \
             --snakepit-instance-name demo --snakepit-instance-token s3cret",
        );
        let k = classify(10, &a, "python3", None, &Selectors::default());
        let ProcessKind::GrpcWorker(w) = k else {
            panic!("not a worker: {k:?}")
        };
        assert_eq!(w.adapter.as_deref(), Some("demo_adapter.DemoAdapter"));
        assert_eq!(w.port_arg, Some(0));
        assert_eq!(w.elixir_address, Some(("127.0.0.1".into(), 41234)));
        assert_eq!(w.run_id.as_deref(), Some("a1b2c3d"));
        assert_eq!(w.instance_name.as_deref(), Some("demo"));
        assert!(w.has_instance_token);
        assert!(!w.threaded);
    }

    #[test]
    fn classify_threaded_old_run_id_and_eq_form() {
        let a = args(
            "python grpc_server_threaded.py --adapter m.C --max-workers 4 --run-id=zz9 \
             --elixir-address=[::1]:50051",
        );
        let ProcessKind::GrpcWorker(w) = classify(1, &a, "python", None, &Selectors::default())
        else {
            panic!()
        };
        assert!(w.threaded);
        assert_eq!(w.run_id.as_deref(), Some("zz9"));
        assert_eq!(w.elixir_address, Some(("::1".into(), 50051)));
        assert!(!w.has_instance_token);
    }

    #[test]
    fn grpc_server_without_run_id_is_not_a_worker() {
        let a = args("python grpc_server.py --adapter m.C --port 0");
        assert_eq!(
            classify(1, &a, "python", None, &Selectors::default()),
            ProcessKind::Other
        );
        // --run-id-ish flags must match exactly.
        let a = args("python grpc_server.py --run-idx 3");
        assert!(!is_snakepit_grpc_worker(&a));
    }

    #[test]
    fn classify_beam_and_port_worker() {
        let s = Selectors::default();
        let beam = args("/usr/lib/erlang/erts-13.1/bin/beam.smp -- -root /usr/lib/erlang");
        assert_eq!(classify(1, &beam, "beam.smp", None, &s), ProcessKind::Beam);
        assert_eq!(
            classify(1, &beam, "1_scheduler", None, &s),
            ProcessKind::Beam
        );
        assert_eq!(
            classify(1, &[], "x", Some("/usr/lib/erts/bin/beam.smp"), &s),
            ProcessKind::Beam
        );
        let pw = args("/venv/bin/python /repo/demo/python/port_worker.py --pool legacy");
        let ProcessKind::PortWorker(w) = classify(2, &pw, "python", None, &s) else {
            panic!()
        };
        assert_eq!(w.pool_arg.as_deref(), Some("legacy"));
        assert_eq!(
            w.script.as_deref(),
            Some("/repo/demo/python/port_worker.py")
        );
        assert_eq!(
            classify(3, &args("bash -c ls"), "bash", None, &s),
            ProcessKind::Other
        );
    }

    #[test]
    fn selectors_pick_workers_and_beams() {
        let sel = Selectors {
            worker_patterns: vec!["my_worker.py".into()],
            beam_patterns: vec!["elixir_vm".into()],
            worker_pids: vec![77],
            beam_pids: vec![88],
        };
        let w = args("python my_worker.py --port 5000 --elixir-address localhost:4000");
        let ProcessKind::GrpcWorker(wa) = classify(1, &w, "python", None, &sel) else {
            panic!()
        };
        assert_eq!(wa.port_arg, Some(5000));
        assert_eq!(
            classify(2, &args("elixir_vm run"), "x", None, &sel),
            ProcessKind::Beam
        );
        assert!(classify(77, &args("sleep 1"), "sleep", None, &sel).is_worker());
        assert_eq!(
            classify(88, &args("sleep 1"), "sleep", None, &sel),
            ProcessKind::Beam
        );
        assert_eq!(
            classify(3, &args("sleep 1"), "sleep", None, &sel),
            ProcessKind::Other
        );
    }

    #[test]
    fn host_port() {
        assert_eq!(
            parse_host_port("127.0.0.1:1"),
            Some(("127.0.0.1".into(), 1))
        );
        assert_eq!(parse_host_port("[::1]:80"), Some(("::1".into(), 80)));
        assert_eq!(parse_host_port("nohost"), None);
        assert_eq!(parse_host_port(":80"), None);
        assert_eq!(parse_host_port("h:99999"), None);
    }

    #[test]
    fn ready_file_worker_id_and_pool() {
        assert_eq!(
            worker_id_from_ready_file("/tmp/snakepit_ready_default_worker_1_ab12_42").as_deref(),
            Some("default_worker_1_ab12")
        );
        // The unique part may itself be digits: only the last segment is stripped.
        assert_eq!(
            worker_id_from_ready_file("/tmp/x/snakepit_ready_my_pool_worker_3_123_7").as_deref(),
            Some("my_pool_worker_3_123")
        );
        assert_eq!(
            worker_id_from_ready_file("snakepit_ready_p_worker_xyz").as_deref(),
            Some("p_worker_xyz")
        );
        assert_eq!(worker_id_from_ready_file("/tmp/other_file_1"), None);
        assert_eq!(
            pool_from_worker_id("my_pool_worker_3_123").as_deref(),
            Some("my_pool")
        );
        assert_eq!(
            pool_from_worker_id("a_worker_b_worker_1_x").as_deref(),
            Some("a_worker_b")
        );
        assert_eq!(pool_from_worker_id("noworker"), None);
    }

    #[test]
    fn environ_block() {
        let raw = b"PATH=/bin\0SNAKEPIT_READY_FILE=/tmp/snakepit_ready_default_worker_2_q9_17\0\
SNAKEPIT_HEARTBEAT_CONFIG={\"interval_ms\":2000}\0SNAKEPIT_LOG_LEVEL=info\0GRPC_POLL_STRATEGY=poll\0\
OMP_NUM_THREADS=1\0";
        let e = parse_environ(raw);
        assert_eq!(e.worker_id.as_deref(), Some("default_worker_2_q9"));
        assert_eq!(e.pool.as_deref(), Some("default"));
        assert_eq!(e.worker_id_var, None);
        assert_eq!(
            e.vars.get("SNAKEPIT_HEARTBEAT_CONFIG").map(String::as_str),
            Some("{\"interval_ms\":2000}")
        );
        assert_eq!(
            e.vars.get("GRPC_POLL_STRATEGY").map(String::as_str),
            Some("poll")
        );
        assert!(!e.vars.contains_key("PATH"));
        assert_eq!(e.vars.len(), 4);

        let pipe = parse_environ(b"SNAKEPIT_WORKER_ID=legacy_worker_1_cd34\0HOME=/\0");
        assert_eq!(pipe.worker_id.as_deref(), Some("legacy_worker_1_cd34"));
        assert_eq!(pipe.worker_id_var.as_deref(), Some("legacy_worker_1_cd34"));
        assert_eq!(pipe.pool.as_deref(), Some("legacy"));
        assert_eq!(parse_environ(b""), SnakepitEnv::default());
    }

    #[test]
    fn stat_with_odd_comm() {
        let s =
            "1234 (we (ird) name) S 1000 1234 1234 0 -1 4194560 100 0 0 0 5 3 0 0 20 0 4 0 987654 \
                 1000000 200 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n";
        let st = parse_stat(s).expect("parses");
        assert_eq!(st.pid, 1234);
        assert_eq!(st.comm, "we (ird) name");
        assert_eq!(st.state, 'S');
        assert_eq!(st.ppid, 1000);
        assert_eq!(st.pgrp, 1234);
        assert_eq!(st.session, 1234);
        assert_eq!(st.start_time, 987654);
        assert!(parse_stat("12 (x) S 1").is_err());
        assert!(parse_stat("garbage").is_err());
        assert!(parse_stat("12 )x( S 1 2 3").is_err());
    }

    const TCP4: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:A0D2 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 5001 1 0000000000000000 100 0 0 10 0
   1: 0100007F:9C41 0100007F:C351 01 00000000:00000000 00:00000000 00000000     0        0 5002 1 0000000000000000 20 4 30 10 -1
   2: 0500000A:0016 6400000A:D431 06 00000000:00000000 03:00001234 00000000     0        0 0 3 0000000000000000
   3: bogus line
";

    #[cfg(target_endian = "little")]
    #[test]
    fn tcp4_table() {
        let t = parse_net_tcp(TCP4);
        assert_eq!(t.len(), 3);
        assert_eq!(t[0].local, "127.0.0.1:41170".parse().unwrap());
        assert_eq!(t[0].remote, "0.0.0.0:0".parse().unwrap());
        assert_eq!(t[0].state, TcpState::Listen);
        assert_eq!((t[0].uid, t[0].inode), (1000, 5001));
        assert_eq!(t[1].local, "127.0.0.1:40001".parse().unwrap());
        assert_eq!(t[1].remote, "127.0.0.1:50001".parse().unwrap());
        assert_eq!(t[1].state, TcpState::Established);
        assert!(t[1].state.is_connected());
        assert_eq!(t[2].local, "10.0.0.5:22".parse().unwrap());
        assert_eq!(t[2].state, TcpState::TimeWait);
        assert!(!is_loopback(t[2].local));
        assert!(parse_tcp_line("0: zz:1 00000000:0000 01 0 0 0 0 0 1").is_err());
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn tcp6_table_mapped_and_loopback() {
        let t6 = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:C351 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 6001 1 0000000000000000 100 0 0 10 0
   1: 0000000000000000FFFF00000100007F:C351 0000000000000000FFFF00000100007F:9C41 01 00000000:00000000 00:00000000 00000000  1000        0 6002 1 0000000000000000 20 4 30 10 -1
   2: 00000000000000000000000001000000:1F90 00000000000000000000000001000000:D000 01 00000000:00000000 00:00000000 00000000  1000        0 6003 1 0000000000000000 20 4 30 10 -1
   3: 000080FE00000000FF005452B4A0F1FE:0016 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 6004 1 0000000000000000 100 0 0 10 0
";
        let t = parse_net_tcp(t6);
        assert_eq!(t.len(), 4);
        assert_eq!(t[0].local, "[::]:50001".parse().unwrap());
        assert_eq!(t[0].state, TcpState::Listen);
        assert_eq!(t[1].local, "[::ffff:127.0.0.1]:50001".parse().unwrap());
        assert_eq!(canonical(t[1].local), "127.0.0.1:50001".parse().unwrap());
        assert_eq!(canonical(t[1].remote), "127.0.0.1:40001".parse().unwrap());
        assert!(is_loopback(t[1].remote));
        assert_eq!(t[2].local, "[::1]:8080".parse().unwrap());
        assert!(is_loopback(t[2].local));
        assert_eq!(t[3].local, "[fe80::5254:ff:fef1:a0b4]:22".parse().unwrap());
        assert!(!is_loopback(t[3].local));
    }

    #[test]
    fn fdinfo_flags() {
        let w = "pos:\t0\nflags:\t02000001\nmnt_id:\t16\nino:\t28744\n";
        assert_eq!(parse_fdinfo_flags(w), Some(0o2000001));
        assert!(flags_writable(0o2000001));
        assert!(!flags_writable(0o4000));
        assert!(flags_writable(0o2));
        assert_eq!(parse_fdinfo_flags("pos: 0\n"), None);
        assert_eq!(parse_fdinfo_flags("flags:\t9\n"), None);
    }

    #[test]
    fn fd_links() {
        assert_eq!(parse_fd_link("socket:[12345]"), FdTarget::Socket(12345));
        assert_eq!(parse_fd_link("pipe:[99]"), FdTarget::Pipe(99));
        assert_eq!(
            parse_fd_link("/dev/null"),
            FdTarget::Other("/dev/null".into())
        );
        assert_eq!(
            parse_fd_link("anon_inode:[eventpoll]"),
            FdTarget::Other("anon_inode:[eventpoll]".into())
        );
        assert_eq!(
            parse_fd_link("socket:[x]"),
            FdTarget::Other("socket:[x]".into())
        );
    }
}
