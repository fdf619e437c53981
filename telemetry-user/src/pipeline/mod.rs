//! From syscall records to call observations: stream order (kernel sequence numbers),
//! then the right wire decoder for each (process, fd, direction) of a known
//! connection, each decoded item stamped with the syscall that carried it.
//!
//! Records can arrive before discovery has paired their connection (pairing reads
//! /proc after the accept/connect event): they wait in a small bounded buffer per
//! stream and are decoded once the connection is known.
use crate::calls::input::{CallRole, ConnContext, Flow, FrameEnd, Observation, Observed, Side};
use crate::discovery::{ConnInfo, ConnRole, Transport};
use crate::fast_hash::{FastMap, FastSet};
use crate::kernel::{Capture, Direction, FrameStatus, IoRecord};
use crate::streams::{Assembler, Chunk, Ordered, StreamKey};
use crate::wire::frame_timing::{FrameTimer, FrameTiming};
use crate::wire::grpc::{GrpcConfig, GrpcDirectionDecoder, GrpcEvent};
use crate::wire::http2::Start;
use crate::wire::port_packet::{PacketDecoder, PortMessage};
use crate::wire::{keep_scratch, DecodeStats};
use std::collections::VecDeque;

mod directory;
#[cfg(test)]
mod tests;

pub use directory::ConnDirectory;
use std::sync::Arc;

/// Chunks kept per stream while its connection is not yet known.
const MAX_PENDING_CHUNKS: usize = 512;
/// A hole in a stream waits this long for its record before it is declared lost.
const REORDER_WAIT_NS: u64 = 20_000_000;
const REORDER_MAX_WAITING: usize = 256;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PipelineStats {
    /// Chunks decoded.
    pub chunks_decoded: u64,
    /// Lean chunks (the other end decodes their flow): timed, not decoded.
    pub chunks_timed: u64,
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
    /// Times this direction from lean records while the other end decodes it.
    timer: Option<FrameTimer>,
    /// Lean records went by since `decoder` last saw bytes: it must search again
    /// before it decodes a full record.
    decoder_behind: bool,
    ctx: Arc<ConnContext>,
    side: Side,
    flow: Flow,
    /// The other end of the connection (its tgid and fd).
    peer: (u32, u32),
    /// One lean chunk's frame ends, kept for the next.
    timing_ends: Vec<FrameTiming>,
}

/// A frame cursor the kernel does not know but a decoder does (a stream joined
/// mid-way): the agent hands it to `Probes::set_cursor_hint`, which lets the kernel
/// follow frames and send lean records from then on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CursorHint {
    pub tgid: u32,
    pub fd: u32,
    pub direction: Direction,
    /// The syscall after which the next frame header is `cursor` bytes ahead.
    pub after_seq: u64,
    pub cursor: u32,
}

pub struct Pipeline {
    assembler: Assembler,
    decoders: FastMap<StreamKey, DirDecoder>,
    pending: FastMap<StreamKey, VecDeque<Ordered>>,
    /// Fds the kernel reported from accept/connect: seen from their first byte.
    opened_live: FastSet<(u32, u32)>,
    /// Pipe ends of connections discovered live: seen from their first byte.
    live_pipes: FastSet<(u32, u32)>,
    /// Workers whose every pipe fd is live (a worker's stdout pipe may be reached
    /// through several fds: 1, 2 and a dup such as 3).
    live_pipe_workers: FastSet<u32>,
    grpc_config: GrpcConfig,
    /// Counters of decoders that were dropped, so totals survive them.
    retired_wire_stats: DecodeStats,
    /// Cursor hints for the kernel, drained by the agent (`take_cursor_hints`).
    hints: Vec<CursorHint>,
    /// One chunk's gRPC events, kept for the next chunk.
    grpc_events: Vec<GrpcEvent>,
    /// Scratch: the records the assembler put in order for the record being handled.
    ordered: Vec<Ordered>,
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
            decoders: FastMap::default(),
            pending: FastMap::default(),
            opened_live: FastSet::default(),
            live_pipes: FastSet::default(),
            live_pipe_workers: FastSet::default(),
            grpc_config,
            retired_wire_stats: DecodeStats::default(),
            hints: Vec::new(),
            grpc_events: Vec::new(),
            ordered: Vec::new(),
            stats: PipelineStats::default(),
        }
    }

    /// Frame cursors learnt since the last call, for the kernel.
    pub fn take_cursor_hints(&mut self) -> Vec<CursorHint> {
        std::mem::take(&mut self.hints)
    }

    /// The kernel created this fd's watch entry at accept/connect.
    pub fn fd_opened(&mut self, tgid: u32, fd: u32) {
        self.opened_live.insert((tgid, fd));
    }

    /// A pipe connection discovered while its worker started: both ends are watched
    /// since before its first byte.
    pub fn pipe_is_live(&mut self, conn: &ConnInfo) {
        self.live_pipes.insert((conn.beam_pid, conn.beam_fd));
        self.live_pipe_workers.insert(conn.worker_pid);
    }

    /// One read/write record of a watched fd.
    pub fn on_io(
        &mut self,
        rec: IoRecord,
        discovery: &dyn ConnDirectory,
        out: &mut Vec<Observation>,
    ) {
        let key = StreamKey {
            tgid: rec.tgid,
            fd: rec.fd,
            direction: rec.direction,
        };
        let chunk = Chunk {
            seq: rec.seq,
            // Errors (EAGAIN from non-blocking reads) and EOF carry no bytes but
            // hold a sequence number: they pass through the assembler as empty.
            len: rec.ret.max(0) as usize,
            payload: rec.payload,
            marks: rec.marks,
            frame_start: match rec.frame_status {
                FrameStatus::Tracked | FrameStatus::Overflow if rec.partial_in == 0 => {
                    rec.cursor_in
                }
                _ => None,
            },
            ts_enter_ns: rec.ts_enter_ns,
            ts_exit_ns: rec.ts_exit_ns,
            tid: rec.tid,
            capture: rec.capture,
            stream_pos: rec.stream_pos,
        };
        let mut ordered = std::mem::take(&mut self.ordered);
        self.assembler.push_into(key, chunk, &mut ordered);
        for item in ordered.drain(..) {
            self.route(key, item, discovery, out);
        }
        keep_scratch(&mut self.ordered, ordered);
    }

    /// Periodic: holes that waited too long become gaps.
    pub fn tick(
        &mut self,
        now_mono_ns: u64,
        discovery: &dyn ConnDirectory,
        out: &mut Vec<Observation>,
    ) {
        for (key, item) in self.assembler.flush_expired(now_mono_ns) {
            self.route(key, item, discovery, out);
        }
    }

    /// Discovery paired a connection: decode what waited for it.
    pub fn connection_opened(
        &mut self,
        conn: &ConnInfo,
        discovery: &dyn ConnDirectory,
        out: &mut Vec<Observation>,
    ) {
        for (pid, fd) in [
            (conn.beam_pid, conn.beam_fd),
            (conn.worker_pid, conn.worker_fd),
        ] {
            for direction in [Direction::Ingress, Direction::Egress] {
                let key = StreamKey {
                    tgid: pid,
                    fd,
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
    pub fn fd_closed(&mut self, tgid: u32, fd: u32) {
        let _ = self.assembler.remove(tgid, fd);
        for direction in [Direction::Ingress, Direction::Egress] {
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
            if let Some(t) = &d.timer {
                s.merge(&t.stats());
            }
        }
        s
    }

    pub fn assembly_stats(&self) -> crate::streams::AssemblyStats {
        self.assembler.stats
    }

    fn retire(&mut self, mut d: DirDecoder) {
        match &d.decoder {
            Decoder::Grpc(g) => self.retired_wire_stats.merge(&g.stats()),
            Decoder::Packet(p) => self.retired_wire_stats.merge(&p.stats),
            Decoder::Ignore => {}
        }
        retire_timer(&mut self.retired_wire_stats, &mut d.timer);
    }

    fn route(
        &mut self,
        key: StreamKey,
        item: Ordered,
        discovery: &dyn ConnDirectory,
        out: &mut Vec<Observation>,
    ) {
        if matches!(&item, Ordered::Chunk(c) if c.len == 0) {
            return; // an empty record only kept the sequence contiguous
        }
        if !self.decoders.contains_key(&key) {
            match discovery.conn_for_fd(key.tgid, key.fd) {
                Some(conn) => {
                    let first_seq = match &item {
                        Ordered::Chunk(c) => Some(c.seq),
                        Ordered::Gap { .. } => None,
                    };
                    let d = self.new_decoder(conn, key, first_seq, discovery);
                    self.decoders.insert(key, d);
                }
                None => {
                    // Not paired yet (or not a Snakepit connection at all): it may
                    // wait long, so it holds its own bytes, not the reader's buffer.
                    let mut item = item;
                    if let Ordered::Chunk(c) = &mut item {
                        c.detach();
                    }
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
                retire_timer(&mut self.retired_wire_stats, &mut d.timer);
                d.decoder_behind = false;
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
        if chunk.capture == Capture::Frames {
            self.stats.chunks_timed += 1;
            time_lean_chunk(d, &chunk, out);
            return;
        }
        self.stats.chunks_decoded += 1;
        // A full record: what a timer knew ends here, and a decoder that slept
        // through lean records picks up at the kernel's frame start.
        retire_timer(&mut self.retired_wire_stats, &mut d.timer);
        if d.decoder_behind {
            d.decoder_behind = false;
            if let Decoder::Grpc(old) = &d.decoder {
                // Its counters stay in the totals (they were lost with it).
                self.retired_wire_stats.merge(&old.stats());
                d.decoder = Decoder::Grpc(Box::new(GrpcDirectionDecoder::new(
                    self.grpc_config.clone(),
                    Start::Searching,
                )));
            }
        }
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
                let mut events = std::mem::take(&mut self.grpc_events);
                for (bytes, span) in chunk.pieces() {
                    dec.feed_into(bytes, span, &mut events);
                }
                // The kernel follows no frames here (joined mid-way) but we do: tell it
                // where the next header is, so it can send lean records from then on.
                if chunk.frame_start.is_none() {
                    if let Some(cursor) = dec.bytes_to_next_header() {
                        self.hints.push(CursorHint {
                            tgid: key.tgid,
                            fd: key.fd,
                            direction: key.direction,
                            after_seq: chunk.seq,
                            cursor,
                        });
                    }
                }
                for ev in events.drain(..) {
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
                keep_scratch(&mut self.grpc_events, events);
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
        // SETTINGS a sender announces bind what its peer sends, whichever end
        // decodes that: the peer's writes, or the sender's own reads.
        if let Some((table, frame)) = peer_settings {
            let me = (key.tgid, key.fd);
            let (sender, peer) = if key.direction == Direction::Egress {
                (me, d.peer)
            } else {
                (d.peer, me)
            };
            for (tgid, fd, direction) in [
                (peer.0, peer.1, Direction::Egress),
                (sender.0, sender.1, Direction::Ingress),
            ] {
                let target = StreamKey {
                    tgid,
                    fd,
                    direction,
                };
                if let Some(DirDecoder {
                    decoder: Decoder::Grpc(g),
                    ..
                }) = self.decoders.get_mut(&target)
                {
                    g.apply_peer_settings(table, frame);
                }
            }
        }
    }

    fn new_decoder(
        &self,
        conn: &ConnInfo,
        key: StreamKey,
        first_seq: Option<u64>,
        discovery: &dyn ConnDirectory,
    ) -> DirDecoder {
        let side = if key.tgid == conn.beam_pid && key.fd == conn.beam_fd {
            Side::Beam
        } else {
            Side::Worker
        };
        let egress = key.direction == Direction::Egress;
        let adapter = discovery.adapter(conn.worker_pid);
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
                discovery.stdin_conn_id(conn),
            ),
        };
        let ctx = Arc::new(ConnContext {
            conn_id,
            role,
            pool: conn.pool.as_str().into(),
            worker_id: conn.worker_id.as_str().into(),
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
        let peer = match side {
            Side::Beam => (conn.worker_pid, conn.worker_fd),
            Side::Worker => (conn.beam_pid, conn.beam_fd),
        };
        DirDecoder {
            decoder,
            timer: None,
            decoder_behind: false,
            ctx,
            side,
            flow,
            peer,
            timing_ends: Vec::new(),
        }
    }
}

/// Drops a timer, keeping its counters (errors of lean records are counted too).
fn retire_timer(retired: &mut DecodeStats, timer: &mut Option<FrameTimer>) {
    if let Some(t) = timer.take() {
        retired.merge(&t.stats());
    }
}

/// A lean record: the other end decodes this flow; here it is only timed.
fn time_lean_chunk(d: &mut DirDecoder, chunk: &Chunk, out: &mut Vec<Observation>) {
    d.decoder_behind = true;
    let mut ends = std::mem::take(&mut d.timing_ends);
    d.timer.get_or_insert_with(FrameTimer::new).feed(
        chunk.stream_pos,
        chunk.len,
        chunk.frame_start,
        chunk.pieces(),
        &mut ends,
    );
    let flow = d.flow;
    for end in ends.drain(..) {
        let what = match end {
            FrameTiming::HeadersRead {
                stream_id,
                end_stream,
            } => Observed::Timing {
                flow,
                stream_id,
                end: FrameEnd::Headers { end_stream },
            },
            FrameTiming::StreamEnded { stream_id } => Observed::Timing {
                flow,
                stream_id,
                end: FrameEnd::Stream,
            },
            FrameTiming::MessageRead { stream_id, len } => Observed::Timing {
                flow,
                stream_id,
                end: FrameEnd::Message { len },
            },
            FrameTiming::SyncLost => Observed::SyncLost { flow },
        };
        out.push(Observation {
            conn: d.ctx.clone(),
            side: d.side,
            tid: chunk.tid,
            ts_enter_ns: chunk.ts_enter_ns,
            ts_exit_ns: chunk.ts_exit_ns,
            what,
        });
    }
    keep_scratch(&mut d.timing_ends, ends);
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
