//! From syscall records to call observations: stream order (kernel sequence numbers),
//! then the right wire decoder for each (process, fd, direction) of a known
//! connection, each decoded item stamped with the syscall that carried it.
//!
//! Records can arrive before discovery has paired their connection (pairing reads
//! /proc after the accept/connect event): they wait in a small bounded buffer per
//! stream and are decoded once the connection is known.
use crate::calls::input::{CallRole, ConnContext, Flow, Observation, Observed, Side};
use crate::discovery::{ConnInfo, ConnRole, Discovery, Transport};
use crate::kernel::decode::FrameStatus;
use crate::kernel::{Direction, IoRecord};
use crate::streams::{Assembler, Chunk, Ordered, StreamKey};
use crate::wire::grpc::{GrpcConfig, GrpcDirectionDecoder, GrpcEvent};
use crate::wire::http2::Start;
use crate::wire::port_packet::{PacketDecoder, PortMessage};
use crate::wire::DecodeStats;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use telemetry_common::{DIR_EGRESS, DIR_INGRESS};

/// Chunks kept per stream while its connection is not yet known.
const MAX_PENDING_CHUNKS: usize = 512;
/// A hole in a stream waits this long for its record before it is declared lost.
const REORDER_WAIT_NS: u64 = 20_000_000;
const REORDER_MAX_WAITING: usize = 256;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PipelineStats {
    /// Chunks decoded.
    pub chunks_decoded: u64,
    /// Chunks of fds that belong to no Snakepit connection (ignored).
    pub chunks_unowned: u64,
    /// Chunks dropped from a full pre-pairing buffer.
    pub pending_dropped: u64,
    /// Decoders restarted after a lost record (their state was unknown).
    pub decoder_restarts: u64,
}

enum Decoder {
    Grpc(Box<GrpcDirectionDecoder>),
    Packet(Box<PacketDecoder>),
    /// Bytes that carry no calls (a gRPC worker's log pipe).
    Ignore,
}

struct DirDecoder {
    decoder: Decoder,
    ctx: Arc<ConnContext>,
    side: Side,
    flow: Flow,
}

pub struct Pipeline {
    assembler: Assembler,
    decoders: HashMap<StreamKey, DirDecoder>,
    pending: HashMap<StreamKey, VecDeque<Ordered>>,
    /// Fds the kernel reported from accept/connect: seen from their first byte.
    opened_live: HashSet<(u32, i32)>,
    /// Pipe ends of connections discovered live: seen from their first byte.
    live_pipes: HashSet<(u32, i32)>,
    /// Workers whose every pipe fd is live (a worker's stdout pipe may be reached
    /// through several fds: 1, 2 and a dup such as 3).
    live_pipe_workers: HashSet<u32>,
    grpc_config: GrpcConfig,
    /// Counters of decoders that were dropped, so totals survive them.
    retired_wire_stats: DecodeStats,
    pub stats: PipelineStats,
}

impl Default for Pipeline {
    fn default() -> Self {
        Self::new(GrpcConfig::default())
    }
}

impl Pipeline {
    pub fn new(grpc_config: GrpcConfig) -> Self {
        Pipeline {
            assembler: Assembler::new(REORDER_WAIT_NS, REORDER_MAX_WAITING),
            decoders: HashMap::new(),
            pending: HashMap::new(),
            opened_live: HashSet::new(),
            live_pipes: HashSet::new(),
            live_pipe_workers: HashSet::new(),
            grpc_config,
            retired_wire_stats: DecodeStats::default(),
            stats: PipelineStats::default(),
        }
    }

    /// The kernel created this fd's watch entry at accept/connect.
    pub fn fd_opened(&mut self, tgid: u32, fd: i32) {
        self.opened_live.insert((tgid, fd));
    }

    /// A pipe connection discovered while its worker started: both ends are watched
    /// since before its first byte.
    pub fn pipe_is_live(&mut self, conn: &ConnInfo) {
        self.live_pipes.insert((conn.beam_pid, conn.beam_fd as i32));
        self.live_pipe_workers.insert(conn.worker_pid);
    }

    /// One read/write record of a watched fd.
    pub fn on_io(&mut self, rec: IoRecord, discovery: &Discovery, out: &mut Vec<Observation>) {
        let key = StreamKey {
            tgid: rec.tgid,
            fd: rec.fd,
            direction: match rec.direction {
                Direction::Ingress => DIR_INGRESS,
                Direction::Egress => DIR_EGRESS,
            },
        };
        let chunk = Chunk {
            seq: rec.seq,
            // Errors (EAGAIN from non-blocking reads) and EOF carry no bytes but
            // hold a sequence number: they pass through the assembler as empty.
            len: rec.ret.max(0) as usize,
            payload: rec.payload,
            marks: rec.marks.into_iter().map(|m| (m.offset, m.bytes)).collect(),
            frame_start: match rec.frame_status {
                FrameStatus::Tracked | FrameStatus::Overflow if rec.partial_in == 0 => {
                    rec.cursor_in
                }
                _ => None,
            },
            ts_enter_ns: rec.ts_enter_ns,
            ts_exit_ns: rec.ts_exit_ns,
            tid: rec.tid,
        };
        for item in self.assembler.push(key, chunk) {
            self.route(key, item, discovery, out);
        }
    }

    /// Periodic: holes that waited too long become gaps.
    pub fn tick(&mut self, now_mono_ns: u64, discovery: &Discovery, out: &mut Vec<Observation>) {
        for (key, item) in self.assembler.flush_expired(now_mono_ns) {
            self.route(key, item, discovery, out);
        }
    }

    /// Discovery paired a connection: decode what waited for it.
    pub fn connection_opened(
        &mut self,
        conn: &ConnInfo,
        discovery: &Discovery,
        out: &mut Vec<Observation>,
    ) {
        for (pid, fd) in [
            (conn.beam_pid, conn.beam_fd),
            (conn.worker_pid, conn.worker_fd),
        ] {
            for direction in [DIR_INGRESS, DIR_EGRESS] {
                let key = StreamKey {
                    tgid: pid,
                    fd: fd as i32,
                    direction,
                };
                if let Some(items) = self.pending.remove(&key) {
                    for item in items {
                        self.route(key, item, discovery, out);
                    }
                }
            }
        }
    }

    /// An fd closed (or its process exited): forget its streams.
    pub fn fd_closed(&mut self, tgid: u32, fd: i32) {
        let _ = self.assembler.remove(tgid, fd);
        for direction in [DIR_INGRESS, DIR_EGRESS] {
            let key = StreamKey {
                tgid,
                fd,
                direction,
            };
            if let Some(d) = self.decoders.remove(&key) {
                self.retire(d);
            }
            self.pending.remove(&key);
        }
        self.opened_live.remove(&(tgid, fd));
        self.live_pipes.remove(&(tgid, fd));
    }

    pub fn process_exited(&mut self, tgid: u32) {
        self.assembler.remove_process(tgid);
        let keys: Vec<StreamKey> = self
            .decoders
            .keys()
            .filter(|k| k.tgid == tgid)
            .copied()
            .collect();
        for k in keys {
            if let Some(d) = self.decoders.remove(&k) {
                self.retire(d);
            }
        }
        self.pending.retain(|k, _| k.tgid != tgid);
        self.opened_live.retain(|k| k.0 != tgid);
        self.live_pipes.retain(|k| k.0 != tgid);
        self.live_pipe_workers.remove(&tgid);
    }

    /// Wire decoder counters, summed over live and retired decoders.
    pub fn wire_stats(&self) -> DecodeStats {
        let mut s = self.retired_wire_stats.clone();
        for d in self.decoders.values() {
            match &d.decoder {
                Decoder::Grpc(g) => s.merge(&g.stats()),
                Decoder::Packet(p) => s.merge(&p.stats),
                Decoder::Ignore => {}
            }
        }
        s
    }

    pub fn assembly_stats(&self) -> crate::streams::AssemblyStats {
        self.assembler.stats
    }

    fn retire(&mut self, d: DirDecoder) {
        match &d.decoder {
            Decoder::Grpc(g) => self.retired_wire_stats.merge(&g.stats()),
            Decoder::Packet(p) => self.retired_wire_stats.merge(&p.stats),
            Decoder::Ignore => {}
        }
    }

    fn route(
        &mut self,
        key: StreamKey,
        item: Ordered,
        discovery: &Discovery,
        out: &mut Vec<Observation>,
    ) {
        if matches!(&item, Ordered::Chunk(c) if c.len == 0) {
            return; // an empty record only kept the sequence contiguous
        }
        if !self.decoders.contains_key(&key) {
            match discovery.conn_for_fd(key.tgid, key.fd as u32) {
                Some(conn) => {
                    let first_seq = match &item {
                        Ordered::Chunk(c) => Some(c.seq),
                        Ordered::Gap { .. } => None,
                    };
                    let d = self.new_decoder(conn, key, first_seq, discovery);
                    self.decoders.insert(key, d);
                }
                None => {
                    // Not paired yet (or not a Snakepit connection at all).
                    let q = self.pending.entry(key).or_default();
                    if q.len() >= MAX_PENDING_CHUNKS {
                        q.pop_front();
                        self.stats.pending_dropped += 1;
                        // The decoder will have to search for a boundary.
                        if let Some(Ordered::Chunk(c)) = q.pop_front() {
                            q.push_front(Ordered::Gap {
                                from: c.seq,
                                to: c.seq + 1,
                            });
                        }
                    }
                    q.push_back(item);
                    return;
                }
            }
        }
        let Some(d) = self.decoders.get_mut(&key) else {
            return;
        };
        let chunk = match item {
            Ordered::Chunk(c) => c,
            Ordered::Gap { .. } => {
                // Bytes of unknown length are missing: restart the decoder in
                // "searching" mode (its HPACK table is then only partly known).
                self.stats.decoder_restarts += 1;
                let flow = d.flow;
                let fresh = match &d.decoder {
                    Decoder::Grpc(_) => Decoder::Grpc(Box::new(GrpcDirectionDecoder::new(
                        self.grpc_config.clone(),
                        Start::Searching,
                    ))),
                    Decoder::Packet(_) => Decoder::Packet(Box::new(PacketDecoder::new(false))),
                    Decoder::Ignore => Decoder::Ignore,
                };
                let old = std::mem::replace(&mut d.decoder, fresh);
                match &old {
                    Decoder::Grpc(g) => self.retired_wire_stats.merge(&g.stats()),
                    Decoder::Packet(p) => self.retired_wire_stats.merge(&p.stats),
                    Decoder::Ignore => {}
                }
                let (ctx, side) = (d.ctx.clone(), d.side);
                out.push(Observation {
                    conn: ctx,
                    side,
                    tid: 0,
                    ts_enter_ns: 0,
                    ts_exit_ns: 0,
                    what: Observed::SyncLost { flow },
                });
                return;
            }
        };
        self.stats.chunks_decoded += 1;
        let stamp = |what: Observed| Observation {
            conn: d.ctx.clone(),
            side: d.side,
            tid: chunk.tid,
            ts_enter_ns: chunk.ts_enter_ns,
            ts_exit_ns: chunk.ts_exit_ns,
            what,
        };
        let flow = d.flow;
        let mut peer_settings = None;
        match &mut d.decoder {
            Decoder::Ignore => {}
            Decoder::Grpc(dec) => {
                // A decoder that lost sync (a huge syscall overflowed the kernel's
                // mark slots, or a gap) picks up at the kernel's exact frame start.
                if let Some(start) = chunk.frame_start {
                    if (start as usize) < chunk.len {
                        dec.resync_at(start as usize);
                    }
                }
                let mut events = Vec::new();
                for (bytes, span) in chunk.pieces() {
                    events.extend(dec.feed(bytes, span));
                }
                for ev in events {
                    let what = match ev {
                        GrpcEvent::Headers {
                            stream_id,
                            end_stream,
                            trailers,
                            metadata,
                            ..
                        } => Observed::Headers {
                            flow,
                            stream_id,
                            end_stream,
                            trailers,
                            metadata: *metadata,
                        },
                        GrpcEvent::HeadersLost {
                            stream_id,
                            end_stream,
                        } => Observed::HeadersLost {
                            flow,
                            stream_id,
                            end_stream,
                        },
                        GrpcEvent::Message { stream_id, message } => Observed::Message {
                            flow,
                            stream_id,
                            message,
                        },
                        GrpcEvent::EndStream { stream_id } => {
                            Observed::EndStream { flow, stream_id }
                        }
                        GrpcEvent::Reset { stream_id, code } => Observed::Reset {
                            flow,
                            stream_id,
                            code,
                        },
                        GrpcEvent::SyncLost => Observed::SyncLost { flow },
                        GrpcEvent::Settings {
                            ack: false,
                            header_table_size,
                            max_frame_size,
                        } => {
                            peer_settings = Some((header_table_size, max_frame_size));
                            continue;
                        }
                        GrpcEvent::Settings { .. }
                        | GrpcEvent::Ping { .. }
                        | GrpcEvent::GoAway { .. } => continue,
                    };
                    out.push(stamp(what));
                }
            }
            Decoder::Packet(dec) => {
                let mut packets = Vec::new();
                for (bytes, span) in chunk.pieces() {
                    packets.extend(dec.feed(bytes, span));
                }
                for packet in packets {
                    let len = packet.len;
                    let what = match (flow, packet.message()) {
                        (Flow::Request, PortMessage::Request { id, command, args }) => {
                            Observed::PipeRequest {
                                id,
                                command,
                                args,
                                len,
                            }
                        }
                        (
                            Flow::Response,
                            PortMessage::Response {
                                id, success, error, ..
                            },
                        ) => {
                            let (error_type, error_message) = pipe_error(&packet.data, error);
                            Observed::PipeResponse {
                                id,
                                success,
                                error_type,
                                error_message,
                                len,
                            }
                        }
                        _ => continue,
                    };
                    out.push(stamp(what));
                }
            }
        }
        // SETTINGS a sender announces bind what its peer sends: the opposite
        // direction on the same socket end.
        if let Some((table, frame)) = peer_settings {
            let opposite = StreamKey {
                direction: key.direction ^ 1,
                ..key
            };
            if let Some(DirDecoder {
                decoder: Decoder::Grpc(g),
                ..
            }) = self.decoders.get_mut(&opposite)
            {
                g.apply_peer_settings(table, frame);
            }
        }
    }

    fn new_decoder(
        &self,
        conn: &ConnInfo,
        key: StreamKey,
        first_seq: Option<u64>,
        discovery: &Discovery,
    ) -> DirDecoder {
        let side = if key.tgid == conn.beam_pid && key.fd as u32 == conn.beam_fd {
            Side::Beam
        } else {
            Side::Worker
        };
        let egress = key.direction == DIR_EGRESS;
        let adapter = discovery
            .worker(conn.worker_pid)
            .and_then(|w| w.adapter.clone());
        let (role, flow, conn_id) = match conn.role {
            ConnRole::BeamClient => {
                let client_sends = (side == Side::Beam) == egress;
                (
                    CallRole::BeamCallsWorker,
                    if client_sends {
                        Flow::Request
                    } else {
                        Flow::Response
                    },
                    conn.id,
                )
            }
            ConnRole::WorkerCallback => {
                let client_sends = (side == Side::Worker) == egress;
                (
                    CallRole::WorkerCallsBeam,
                    if client_sends {
                        Flow::Request
                    } else {
                        Flow::Response
                    },
                    conn.id,
                )
            }
            // The BEAM writes requests into the worker's stdin and reads responses
            // from its stdout; both halves share the stdin pipe's id so a request
            // and its response meet in the tracker.
            ConnRole::PipeStdin => (CallRole::Pipe, Flow::Request, conn.id),
            ConnRole::PipeStdout => (
                CallRole::Pipe,
                Flow::Response,
                stdin_conn_id(conn, discovery),
            ),
        };
        let ctx = Arc::new(ConnContext {
            conn_id,
            role,
            pool: conn.pool.clone(),
            worker_id: conn.worker_id.clone(),
            beam_pid: conn.beam_pid,
            worker_pid: conn.worker_pid,
            adapter,
        });
        let from_start = first_seq == Some(0);
        let decoder = match (conn.role, conn.transport) {
            (ConnRole::BeamClient | ConnRole::WorkerCallback, _) => {
                let start = if from_start && self.opened_live.contains(&(key.tgid, key.fd)) {
                    if flow == Flow::Request {
                        Start::Preface
                    } else {
                        Start::FrameBoundary
                    }
                } else {
                    Start::Searching
                };
                Decoder::Grpc(Box::new(GrpcDirectionDecoder::new(
                    self.grpc_config.clone(),
                    start,
                )))
            }
            (ConnRole::PipeStdin | ConnRole::PipeStdout, Transport::Pipe) => {
                let at_boundary = from_start
                    && (self.live_pipes.contains(&(key.tgid, key.fd))
                        || self.live_pipe_workers.contains(&key.tgid));
                Decoder::Packet(Box::new(PacketDecoder::new(at_boundary)))
            }
            (ConnRole::PipeStdin | ConnRole::PipeStdout, _) => Decoder::Ignore,
        };
        DirDecoder {
            decoder,
            ctx,
            side,
            flow,
        }
    }
}

/// The id of the stdin pipe connection of the worker a stdout pipe belongs to.
fn stdin_conn_id(stdout: &ConnInfo, discovery: &Discovery) -> u64 {
    discovery
        .connections()
        .find(|c| {
            c.role == ConnRole::PipeStdin
                && c.worker_pid == stdout.worker_pid
                && c.beam_pid == stdout.beam_pid
        })
        .map(|c| c.id)
        .unwrap_or(stdout.id)
}

/// `error` of a `{packet,4}` response: `{"type": ..., "message": ...}` or a string.
fn pipe_error(body: &[u8], fallback: Option<String>) -> (Option<String>, Option<String>) {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
        match &v["error"] {
            serde_json::Value::Object(o) => {
                let s = |k: &str| o.get(k).and_then(|x| x.as_str()).map(str::to_string);
                return (s("type"), s("message"));
            }
            serde_json::Value::String(m) => return (None, Some(m.clone())),
            _ => {}
        }
    }
    (None, fallback)
}
