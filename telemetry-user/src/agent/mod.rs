//! The running agent: kernel events -> discovery (which pid/fd is what) -> I/O
//! accounting -> events on the bus -> sinks. One task owns all mutable state, so no
//! locks sit on the per-event path.
pub(crate) mod io_summary;
mod output_file;
pub mod reload;
mod stats_event;
pub mod topology_events;
mod worker_probes;

use crate::calls::input::{Lifecycle, Observation};
use crate::calls::CallTracker;
use crate::config::Config;
use crate::discovery::{Discovery, ExitInfo, ProcSource, Selectors, TopologyChange};
use crate::events::{schema, Bus, Event};
use crate::fast_hash::{FastMap, FastSet};
use crate::kernel::{self, KernelConfig, KernelEvent, Probes};
use crate::pipeline::Pipeline;
use crate::sinks;
use anyhow::Context;
pub(crate) use io_summary::IoAccounting;
use output_file::open_output;
use std::io::Write;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

pub struct RunOptions {
    /// Stop after this long (None: until SIGINT/SIGTERM).
    pub duration: Option<Duration>,
    /// What SIGHUP reloads from (None: SIGHUP is ignored).
    pub reload: Option<reload::Reloader>,
}

/// How often pending sockets and listen ports are retried.
const DISCOVERY_TICK: Duration = Duration::from_millis(100);

pub struct Agent {
    config: Config,
    probes: Probes,
    kernel_rx: kernel::KernelEvents,
    discovery: Discovery,
    bus: Bus,
    sink: JoinHandle<()>,
    otlp: reload::OtlpTask,
    logger: JoinHandle<()>,
    io: IoAccounting,
    /// What was last written to the kernel's watch maps.
    watched_pids: FastMap<u32, u32>,
    watched_fds: FastSet<(u32, u32)>,
    /// Connections discovery reported closed whose other end is still open: their
    /// final summary waits for that end's close (or a deadline), so it carries the
    /// final totals of both ends.
    closing: Vec<Closing>,
    /// Records -> ordered streams -> wire decoders -> observations.
    pipeline: Pipeline,
    tracker: CallTracker,
    observations: Vec<Observation>,
    /// The first /proc scan is done: what is found from now on started while we watch.
    initial_scan_done: bool,
    /// Processes the OOM killer chose whose exit has not been handled yet.
    oom_victims: FastSet<u32>,
    /// Worker pids for the GPU sampler's attribution.
    gpu_workers: tokio::sync::watch::Sender<crate::gpu::WorkerMap>,
    _gpu: crate::gpu::GpuHandle,
    /// The Python stack sampler (`[profile] sampling`): workers come and go through it.
    profiler: Option<(
        mpsc::UnboundedSender<crate::profiler::Command>,
        crate::profiler::ProfileHandle,
    )>,
    counters: Counters,
    /// Scheduling records and (de)serialization uprobes of the workers.
    worker_probes: worker_probes::WorkerProbes,
    /// What `/healthz` and `/readyz` answer; a failed output ends `run` with an error.
    health: sinks::health::SharedHealth,
    /// Repro: request senders' bytes beyond each record's prefix (chunk records).
    chunks: crate::repro::chunks::ChunkJoin,
}

struct Closing {
    conn: crate::discovery::ConnInfo,
    deadline_mono_ns: u64,
}

/// The most time spent at shutdown on kernel events already queued.
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(5);
/// How long a half-closed connection waits for its other end's close.
const CLOSE_GRACE_NS: u64 = 2_000_000_000;

#[derive(Default)]
struct Counters {
    kernel_events: u64,
    watch_errors: u64,
}

impl Agent {
    /// Loads and attaches the probes, scans /proc, starts the sink. Must run inside
    /// a tokio runtime.
    pub async fn start(config: Config) -> anyhow::Result<Agent> {
        // What the user can get wrong (output path, a taken port) fails before the
        // probes' seconds of verifier time.
        // Whole lines or nothing reach the file (a full disk leaves no torn line).
        let out: Box<dyn Write + Send> = match &config.output.path {
            Some(path) => Box::new(sinks::output::WholeLines::new(
                open_output(path).with_context(|| format!("creating output {}", path.display()))?,
            )),
            None => Box::new(std::io::stdout()),
        };
        let health = sinks::health::Health::new();
        let http_server = if config.http.enabled {
            Some(
                sinks::web::Server::bind(config.http.clone())
                    .await
                    .context("starting the HTTP endpoint (/metrics, live page)")?
                    .with_health(health.clone()),
            )
        } else {
            None
        };
        kernel::ensure_mounts().context("mounting tracefs/bpffs")?;
        let mut probes = Probes::load(&KernelConfig {
            capture_bytes: config.capture.bytes,
            ring_buffer_bytes: config.capture.ring_buffer_bytes,
            decode_once: config.capture.decode_once,
            scheduling: config.profile.scheduling,
            serialization: config.profile.serialization,
            off_cpu_period_ns: config.profile.off_cpu_period_ns(),
            full_capture_bytes: if config.repro.repro_on_error {
                config.repro.max_payload_bytes
            } else {
                0
            },
        })
        .context("loading the eBPF probes (see `snakepit-agent check`)")?;
        let kernel_rx = probes.events()?;
        health.set_probes_attached();
        let profiler = if config.profile.sampling {
            match crate::profiler::start(
                &mut probes,
                &config.profile,
                config.discovery.proc_root.clone(),
            ) {
                Ok(p) => Some(p),
                Err(e) => {
                    tracing::warn!(error = %e, "Python stack sampling unavailable");
                    None
                }
            }
        } else {
            None
        };

        let bus = Bus::new(1 << 16);
        let stream_sink =
            sinks::run_stream_sink(config.output.format, bus.subscribe(), out, health.clone());
        let sink = tokio::spawn(stream_sink);
        // OTLP export: awaited at the end too, so it flushes before the agent exits.
        let otlp = reload::OtlpTask::spawn(config.otlp.clone(), &bus);

        // The design's Logger handler: slow calls as warnings, exceptions and crashes
        // as errors, the rest at debug (target `snakepit::events`).
        let logger = tokio::spawn(sinks::logger::run(
            bus.subscribe(),
            sinks::logger::LoggerConfig {
                slow_call_ms: config.calls.slow_call_ms,
            },
        ));
        // /metrics and the live page (bound above); the server task ends with the runtime.
        if let Some(mut server) = http_server {
            if config.repro.repro_on_error {
                server = server.serve_repro(config.repro.directory.clone());
            }
            let server = server.with_profile(profiler.as_ref().map(|(_, h)| h.clone()));
            let rx = bus.subscribe();
            tokio::spawn(async move {
                if let Err(e) = server.run(rx, std::future::pending()).await {
                    tracing::error!(error = %e, "the HTTP endpoint stopped");
                }
            });
        }
        // GPU memory (NVML): runs until `gpu_workers` is dropped; without NVML it says
        // why in one line and ends.
        let gpu = crate::gpu::GpuHandle::new(&config.gpu);
        let gpu_enabled = config.gpu.enabled;
        let (gpu_workers, gpu_workers_rx) =
            tokio::sync::watch::channel(crate::gpu::WorkerMap::new());
        if config.gpu.enabled {
            tokio::spawn(crate::gpu::run(
                config.gpu.clone(),
                bus.clone(),
                gpu_workers_rx,
                gpu.clone(),
            ));
        }
        let d = &config.discovery;
        let selectors = Selectors {
            worker_patterns: d.worker_cmdline_patterns.clone(),
            beam_patterns: d.beam_cmdline_patterns.clone(),
            worker_pids: d.worker_pids.clone(),
            beam_pids: d.beam_pids.clone(),
        };
        let discovery = Discovery::new(ProcSource::new(d.proc_root.clone()), selectors);
        let tracker_config = config.calls.clone();
        let tracker_bus = bus.clone();
        let repro_config = config.repro.clone();
        let p = &config.profile;
        let split_max_calls_per_s =
            (p.scheduling || p.serialization).then_some(p.split_max_calls_per_s);
        let mut agent = Agent {
            config,
            probes,
            kernel_rx,
            discovery,
            bus,
            sink,
            otlp,
            logger,
            io: IoAccounting::default(),
            watched_pids: FastMap::default(),
            watched_fds: FastSet::default(),
            closing: Vec::new(),
            pipeline: Pipeline::new(crate::repro::grpc_config(&repro_config)),
            tracker: {
                let mut t = CallTracker::new(tracker_config, tracker_bus.clone());
                if gpu_enabled {
                    t.set_gpu(gpu.clone());
                }
                if let Some(r) = crate::repro::Repro::start(repro_config, tracker_bus) {
                    t.set_repro(r);
                }
                if let Some((_, h)) = &profiler {
                    t.set_profile(h.clone());
                }
                if let Some(max) = split_max_calls_per_s {
                    t.activity_mut().sampler.set_max_calls_per_s(max);
                }
                t
            },
            observations: Vec::new(),
            initial_scan_done: false,
            oom_victims: FastSet::default(),
            gpu_workers,
            _gpu: gpu,
            profiler,
            counters: Counters::default(),
            worker_probes: Default::default(),
            health,
            chunks: Default::default(),
        };
        let changes = agent.discovery.full_scan();
        agent.apply(changes);
        agent.initial_scan_done = true;
        agent.health.set_discovery_done();
        agent.bus.publish(
            Event::new(schema::AGENT_STARTED)
                .meta("version", env!("CARGO_PKG_VERSION"))
                .meta("capture_bytes", agent.config.capture.bytes)
                .meta("probes", agent.probes.attached()),
        );
        // One line for the journal: the agent is up (and how much it found).
        let snap = agent.discovery.snapshot();
        tracing::info!(
            probes = agent.probes.attached().len(),
            deployments = snap.deployments.len(),
            connections = snap.connections.len(),
            "started"
        );
        Ok(agent)
    }

    pub async fn run(mut self, opts: RunOptions) -> anyhow::Result<()> {
        let mut discovery_tick = tokio::time::interval(DISCOVERY_TICK);
        let mut rescan = tokio::time::interval(Duration::from_millis(
            self.config.discovery.rescan_interval_ms.max(100),
        ));
        rescan.tick().await; // the first tick is immediate; start() already scanned
        release_free_heap(); // what loading the probes parsed
        let mut summary = tokio::time::interval(Duration::from_millis(
            self.config.output.summary_interval_ms.max(100),
        ));
        summary.tick().await;
        let deadline = async {
            match opts.duration {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(deadline);
        let mut sigterm =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        // One SIGINT stream for the whole loop: a `ctrl_c()` future made afresh each
        // iteration misses a signal that lands while an event is being handled.
        let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
        let mut sighup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        let health = self.health.clone();
        let output_failed = health.output_failed();
        tokio::pin!(output_failed);
        let mut failure = None;
        // Kernel events come in batches (one drain of the ring each): one pass of this
        // select per batch, not per record (about 22 records per tool call).
        loop {
            tokio::select! {
                batch = self.kernel_rx.recv_batch() => {
                    let Some(batch) = batch else {
                        tracing::error!("the ring-buffer reader stopped");
                        break;
                    };
                    self.drain_profiler().await;
                    for ev in batch {
                        self.on_kernel_event(ev);
                    }
                }
                _ = discovery_tick.tick() => {
                    let changes = self.discovery.tick();
                    self.apply(changes);
                    let now = kernel::monotonic_now_ns();
                    self.finish_closing(now);
                    // Workers import protobuf/orjson after they are found: plan again.
                    self.sync_worker_probes();
                    self.pipeline.tick(now, &self.discovery, &mut self.observations);
                    self.feed_tracker();
                    self.tracker.tick(now);
                    self.tick_split_sampler(now);
                }
                _ = rescan.tick() => {
                    let changes = self.discovery.full_scan();
                    self.apply(changes);
                }
                _ = summary.tick() => self.emit_summaries(false),
                _ = &mut deadline => break,
                _ = sigint.recv() => {
                    tracing::info!("SIGINT: stopping");
                    break;
                }
                _ = sigterm.recv() => {
                    tracing::info!("SIGTERM: stopping");
                    break;
                }
                _ = sighup.recv() => match &opts.reload {
                    Some(reloader) => self.reload(reloader),
                    None => tracing::info!("SIGHUP ignored: no configuration to reload"),
                },
                why = &mut output_failed => {
                    failure = Some(why);
                    break;
                }
            }
        }
        // Each step of the shutdown is timed: a daemon's stop must stay well inside a
        // service manager's stop timeout, and the log says which step took it.
        let stopping = std::time::Instant::now();
        let mut steps: Vec<(&str, u128)> = Vec::new();
        let mut step = |name: &'static str, since: &mut std::time::Instant| {
            steps.push((name, since.elapsed().as_millis()));
            *since = std::time::Instant::now();
        };
        let mut since = stopping;
        // Drain what the kernel already delivered, so the final summaries include it;
        // bounded, since traffic that goes on would keep the queue from ever emptying.
        let drain_until = std::time::Instant::now() + SHUTDOWN_DRAIN;
        while let Some(ev) = self.kernel_rx.try_recv() {
            self.on_kernel_event(ev);
            if std::time::Instant::now() >= drain_until {
                tracing::warn!("stopping with kernel events still queued");
                break;
            }
        }
        step("drain", &mut since);
        self.finish_closing(u64::MAX);
        self.emit_summaries(true);
        self.bus.publish(Event::new(schema::AGENT_STOPPED));
        step("summaries", &mut since);
        // The sink ends when every sender of the bus is gone (the tracker holds one).
        let Agent {
            sink,
            otlp,
            logger,
            bus,
            tracker,
            gpu_workers,
            probes,
            profiler,
            ..
        } = self;
        drop(tracker);
        drop(gpu_workers);
        drop(bus);
        let _ = sink.await;
        step("sink", &mut since);
        otlp.finish().await;
        step("otlp", &mut since);
        let _ = logger.await;
        step("log", &mut since);
        drop(profiler);
        let mut probes = probes;
        let links = probes.detach_all();
        step("detach", &mut since);
        drop(probes);
        step("unload", &mut since);
        tracing::info!(
            total_ms = stopping.elapsed().as_millis() as u64,
            links,
            steps = ?steps,
            "stopped"
        );
        match failure.or_else(|| health.output_failure()) {
            Some(why) => anyhow::bail!("the event output failed: {why}"),
            None => Ok(()),
        }
    }

    fn on_kernel_event(&mut self, ev: KernelEvent) {
        self.counters.kernel_events += 1;
        match ev {
            KernelEvent::IoChunk {
                tgid,
                fd,
                seq,
                offset,
                bytes,
            } => self.chunks.chunk(tgid, fd, seq, offset, bytes),
            KernelEvent::Io(mut rec) => {
                self.chunks.join(&mut rec);
                if rec.fd >= 0 {
                    self.io.record(
                        rec.tgid,
                        rec.fd as u32,
                        rec.direction.index(),
                        rec.ret,
                        rec.stream_pos,
                        rec.capture == kernel::Capture::Frames,
                    );
                    self.pipeline
                        .on_io(rec, &self.discovery, &mut self.observations);
                    self.feed_tracker();
                    self.pass_cursor_hints();
                }
            }
            KernelEvent::Sched(ep) => {
                self.tracker.activity_mut().on_episode(&ep);
                self.weigh_unwalked(&ep);
            }
            KernelEvent::Serialize(rec) => self.tracker.activity_mut().on_serialize(&rec),
            KernelEvent::Exec { tgid, .. } => {
                let changes = self.discovery.on_exec(tgid);
                self.apply(changes);
            }
            KernelEvent::OomKill { tgid, .. } => {
                // Its exit follows: the crash is then reported as an OOM kill.
                self.oom_victims.insert(tgid);
            }
            KernelEvent::Fork { .. } => {
                // The kernel already put the child in the lineage; its exec is what
                // tells whether it is a worker.
            }
            KernelEvent::Exit { tgid, status, .. } => {
                // A dying process's fds close without close(2): take their final
                // kernel totals before the entries go.
                let ends: Vec<u32> = self
                    .discovery
                    .connections()
                    .flat_map(|c| [(c.beam_pid, c.beam_fd), (c.worker_pid, c.worker_fd)])
                    .filter(|(p, _)| *p == tgid)
                    .map(|(_, fd)| fd)
                    .collect();
                for fd in ends {
                    if let Some(t) = self.probes.fd_totals(tgid, fd as i32) {
                        self.io.closed(tgid, fd, t);
                    }
                }
                let exit = exit_info(status);
                let changes = self.discovery.on_exit(tgid, exit);
                self.apply(changes);
                self.oom_victims.remove(&tgid);
                self.pipeline.process_exited(tgid);
                self.probes.forget_tgid(tgid);
                self.worker_probes
                    .forget(&mut self.probes, &mut self.tracker, tgid);
                self.watched_pids.remove(&tgid);
                self.watched_fds.retain(|k| k.0 != tgid);
                let keep: FastSet<u32> = self
                    .closing
                    .iter()
                    .flat_map(|c| {
                        [
                            (c.conn.beam_pid, c.conn.beam_fd),
                            (c.conn.worker_pid, c.conn.worker_fd),
                        ]
                    })
                    .filter(|(p, _)| *p == tgid)
                    .map(|(_, fd)| fd)
                    .collect();
                self.io.forget_process(tgid, &keep);
            }
            KernelEvent::FdOpen { tgid, fd, ret, .. } => {
                // A failed accept gives no fd; a connect in progress is still a socket.
                let fd = if ret >= 0 && fd < 0 { ret as i32 } else { fd };
                if fd >= 0 {
                    self.pipeline.fd_opened(tgid, fd);
                    let changes = self.discovery.on_fd_open(tgid, fd as u32);
                    self.apply(changes);
                }
            }
            KernelEvent::FdClose {
                tgid, fd, totals, ..
            } => {
                if fd >= 0 {
                    self.io.closed(tgid, fd as u32, totals);
                    self.watched_fds.remove(&(tgid, fd as u32));
                    let changes = self.discovery.on_fd_close(tgid, fd as u32);
                    self.apply(changes);
                    self.pipeline.fd_closed(tgid, fd);
                    let _ = self.probes.clear_cursor_hint(tgid, fd);
                    self.finish_closing(kernel::monotonic_now_ns());
                }
            }
        }
    }

    /// Publishes topology changes and brings the kernel's watch maps in line.
    /// Repro: the request sender of a gRPC connection (the BEAM's end of a worker
    /// connection, the worker's end of a callback one) is captured whole.
    fn repro_capture(&mut self, conn: &crate::discovery::ConnInfo, on: bool) {
        use crate::discovery::ConnRole;
        if !self.config.repro.repro_on_error {
            return;
        }
        let (pid, fd) = match conn.role {
            ConnRole::BeamClient => (conn.beam_pid, conn.beam_fd),
            ConnRole::WorkerCallback => (conn.worker_pid, conn.worker_fd),
            ConnRole::PipeStdin | ConnRole::PipeStdout => return,
        };
        let r = if on {
            self.probes.capture_whole(pid, fd)
        } else {
            self.probes.stop_capture_whole(pid, fd)
        };
        if let Err(e) = r {
            tracing::debug!(pid, fd, error = %e, "repro: full capture not changed");
        }
    }

    fn apply(&mut self, changes: Vec<TopologyChange>) {
        let now = kernel::monotonic_now_ns();
        for change in &changes {
            self.bus
                .publish(topology_events::to_event_in(change, &self.discovery));
            match change {
                TopologyChange::ConnectionClosed { conn, .. } => {
                    self.repro_capture(conn, false);
                    self.closing.push(Closing {
                        conn: conn.clone(),
                        deadline_mono_ns: now + CLOSE_GRACE_NS,
                    });
                    self.tracker.lifecycle(Lifecycle::ConnectionClosed {
                        conn_id: conn.id,
                        ts_ns: now,
                    });
                }
                TopologyChange::ConnectionOpened { conn } => {
                    self.repro_capture(conn, true);
                    if self.initial_scan_done && conn.transport == crate::discovery::Transport::Pipe
                    {
                        self.pipeline.pipe_is_live(conn);
                    }
                    self.pipeline
                        .connection_opened(conn, &self.discovery, &mut self.observations);
                }
                TopologyChange::WorkerDiscovered(w) => {
                    self.profiler_command(crate::profiler::Command::WorkerUp {
                        pid: w.pid,
                        pool: w.pool.clone(),
                    });
                    self.tracker.lifecycle(Lifecycle::WorkerUp {
                        pool: w.pool.clone(),
                        worker_id: w.worker_id.clone(),
                        worker_pid: w.pid,
                        beam_pid: w.beam_pid,
                        ts_ns: now,
                    })
                }
                TopologyChange::WorkerExited {
                    pool,
                    worker_id,
                    pid,
                    exit_code,
                    signal,
                    ..
                } => {
                    // Observations decoded before the exit belong before it.
                    self.feed_tracker();
                    self.profiler_command(crate::profiler::Command::WorkerGone { pid: *pid });
                    self.tracker.lifecycle(Lifecycle::WorkerExited {
                        pool: pool.clone(),
                        worker_id: worker_id.clone(),
                        worker_pid: *pid,
                        exit_code: *exit_code,
                        signal: *signal,
                        oom_killed: self.oom_victims.remove(pid),
                        ts_ns: now,
                    });
                }
                _ => {}
            }
        }
        self.feed_tracker();
        self.finish_closing(kernel::monotonic_now_ns());
        self.sync_watch_maps();
        if changes.iter().any(|c| {
            matches!(
                c,
                TopologyChange::WorkerDiscovered(_) | TopologyChange::WorkerExited { .. }
            )
        }) {
            let map: crate::gpu::WorkerMap = self
                .discovery
                .snapshot()
                .deployments
                .iter()
                .flat_map(|d| d.pools.iter().flat_map(|p| p.workers.iter()))
                .map(|w| (w.pid, crate::gpu::WorkerRef::from(w)))
                .collect();
            let _ = self.gpu_workers.send(map);
        }
    }

    /// Lets the profiler take the samples queued so far (see `Command::Drain`).
    async fn drain_profiler(&self) {
        let Some((tx, _)) = &self.profiler else {
            return;
        };
        let (done, drained) = tokio::sync::oneshot::channel();
        if tx.send(crate::profiler::Command::Drain(done)).is_ok() {
            // An error only says the profiler has stopped.
            let _ = drained.await;
        }
    }

    fn profiler_command(&self, c: crate::profiler::Command) {
        if let Some((tx, _)) = &self.profiler {
            let _ = tx.send(c);
        }
    }

    /// A blocked episode the kernel's rate limit did not walk still weighs in the
    /// off-CPU profile (see `SampleStore::push_unwalked`).
    fn weigh_unwalked(&self, ep: &crate::kernel::SchedEpisode) {
        let Some(off) = ep.off.filter(|o| o.state != 0 && !o.walked) else {
            return;
        };
        let Some((_, handle)) = &self.profiler else {
            return;
        };
        let blocked = crate::profiler::BlockedIn {
            syscall: off.syscall.map_or(-1, i64::from),
            state: off.state,
        };
        handle.unwalked(
            ep.tgid,
            ep.tid,
            off.out_ns,
            ep.in_ns.saturating_sub(off.out_ns),
            blocked,
        );
    }

    /// The sampler's store, when sampling runs (for `snakepit-agent profile`).
    pub fn profile(&self) -> Option<crate::profiler::ProfileHandle> {
        self.profiler.as_ref().map(|(_, h)| h.clone())
    }

    /// Frame cursors the decoders know and the kernel does not (streams joined
    /// mid-way) go to the kernel, which then follows frames and sends lean records.
    fn pass_cursor_hints(&mut self) {
        for h in self.pipeline.take_cursor_hints() {
            if let Err(e) =
                self.probes
                    .set_cursor_hint(h.tgid, h.fd, h.direction, h.after_seq, h.cursor)
            {
                self.counters.watch_errors += 1;
                tracing::debug!(tgid = h.tgid, fd = h.fd, error = %e, "cannot pass a frame cursor");
            }
        }
    }

    fn feed_tracker(&mut self) {
        for obs in self.observations.drain(..) {
            self.tracker.observe(obs);
        }
    }

    /// Emits the final summary of closed connections whose two ends both closed (or
    /// whose grace period ran out).
    fn finish_closing(&mut self, now_mono_ns: u64) {
        if self.closing.is_empty() {
            return;
        }
        let (done, waiting): (Vec<Closing>, Vec<Closing>) = std::mem::take(&mut self.closing)
            .into_iter()
            .partition(|c| {
                let ends_closed = self.io.is_closed(c.conn.beam_pid, c.conn.beam_fd)
                    && self.io.is_closed(c.conn.worker_pid, c.conn.worker_fd);
                ends_closed || now_mono_ns >= c.deadline_mono_ns
            });
        self.closing = waiting;
        for c in done {
            let probes = &self.probes;
            let ev = self
                .io
                .summary(&c.conn, |p, f| probes.fd_totals(p, f as i32), true);
            self.bus.publish(ev);
            self.io.forget(&c.conn);
        }
    }

    fn sync_watch_maps(&mut self) {
        let plan = self.discovery.watch_plan();
        let mut want_pids = FastMap::with_capacity_and_hasher(plan.pids.len(), Default::default());
        for (tgid, flags) in plan.pids {
            want_pids.insert(tgid, flags);
            if self.watched_pids.get(&tgid) != Some(&flags) {
                if let Err(e) = self.probes.watch_pid(tgid, flags) {
                    self.counters.watch_errors += 1;
                    tracing::warn!(tgid, error = %e, "cannot watch process");
                    continue;
                }
                self.watched_pids.insert(tgid, flags);
            }
        }
        let stale: Vec<u32> = self
            .watched_pids
            .keys()
            .filter(|p| !want_pids.contains_key(p))
            .copied()
            .collect();
        for tgid in stale {
            let _ = self.probes.unwatch_pid(tgid);
            self.watched_pids.remove(&tgid);
        }
        self.sync_worker_probes();
        let mut want_fds = FastSet::with_capacity_and_hasher(plan.fds.len(), Default::default());
        // Ends of half-closed connections stay watched until they close.
        for c in &self.closing {
            want_fds.insert((c.conn.beam_pid, c.conn.beam_fd));
            want_fds.insert((c.conn.worker_pid, c.conn.worker_fd));
        }
        for (tgid, fd, kind) in plan.fds {
            want_fds.insert((tgid, fd));
            if !self.watched_fds.contains(&(tgid, fd)) {
                match self.probes.watch_fd(tgid, fd as i32, kind, None) {
                    Ok(()) => {
                        self.watched_fds.insert((tgid, fd));
                    }
                    Err(e) => {
                        self.counters.watch_errors += 1;
                        tracing::warn!(tgid, fd, error = %e, "cannot watch fd");
                    }
                }
            }
        }
        // Only fds this loop added are removed here: the kernel itself adds the new
        // sockets of watched processes, and discovery decides about them later.
        let stale: Vec<(u32, u32)> = self.watched_fds.difference(&want_fds).copied().collect();
        for (tgid, fd) in stale {
            let _ = self.probes.unwatch_fd(tgid, fd as i32);
            self.watched_fds.remove(&(tgid, fd));
        }
    }

    /// Scheduling records and (de)serialization probes for the watched workers.
    fn sync_worker_probes(&mut self) {
        let workers: Vec<u32> = self
            .watched_pids
            .iter()
            .filter(|(_, f)| **f & kernel::PID_WORKER != 0)
            .map(|(p, _)| *p)
            .collect();
        self.worker_probes.sync(
            &mut self.probes,
            &mut self.tracker,
            &self.config.discovery.proc_root,
            &workers,
            &self.config.profile,
            kernel::monotonic_now_ns(),
        );
    }

    /// Pauses or resumes the worker split's probes (recording windows above
    /// `[profile] split_max_calls_per_s`).
    fn tick_split_sampler(&mut self, now: u64) {
        let Some(change) = self.tracker.activity_mut().tick_sampler(now) else {
            return;
        };
        let (recording, generation) = match change {
            crate::worker_time::GateChange::Pause => (false, 0),
            crate::worker_time::GateChange::Resume { generation } => (true, generation),
        };
        let started = std::time::Instant::now();
        if let Err(e) = self.probes.set_split_gate(recording, generation) {
            tracing::warn!(error = %e, recording, "cannot set the worker split's gate");
        }
        tracing::debug!(
            recording,
            generation,
            took_us = started.elapsed().as_micros() as u64,
            "worker split gate"
        );
    }

    fn emit_summaries(&mut self, final_summary: bool) {
        let probes = &self.probes;
        let conns: Vec<_> = self.discovery.connections().cloned().collect();
        for conn in &conns {
            let ev = self
                .io
                .summary(conn, |p, f| probes.fd_totals(p, f as i32), final_summary);
            self.bus.publish(ev);
        }
        self.bus.publish(self.stats_event());
        release_free_heap();
    }
}

/// Gives the heap's free pages back to the kernel. glibc keeps freed memory for
/// reuse: the load's parse of the kernel's BTF and a burst of large records (a repro
/// capture of a 30 MB request) would otherwise stay in the agent's RSS for good. A few
/// ms at most, once per summary interval.
fn release_free_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks glibc's own arenas; it takes no pointer.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn exit_info(status: kernel::ExitStatus) -> ExitInfo {
    match status {
        kernel::ExitStatus::Exited(code) => ExitInfo {
            code: Some(i32::from(code)),
            signal: None,
            core_dumped: false,
        },
        kernel::ExitStatus::Signaled {
            signal,
            core_dumped,
        } => ExitInfo {
            code: None,
            signal: Some(i32::from(signal)),
            core_dumped,
        },
        kernel::ExitStatus::Unknown => ExitInfo::default(),
    }
}
