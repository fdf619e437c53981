//! The running agent: kernel events -> discovery (which pid/fd is what) -> I/O
//! accounting -> events on the bus -> sinks. One task owns all mutable state, so no
//! locks sit on the per-event path.
pub(crate) mod io_summary;
mod kernel_events;
mod output_file;
pub mod reload;
mod stats_event;
mod topology;
pub mod topology_events;
mod worker_probes;

use crate::calls::input::Observation;
use crate::calls::CallTracker;
use crate::config::Config;
use crate::discovery::{Discovery, ProcSource, Selectors};
use crate::events::{schema, Bus, Event};
use crate::fast_hash::{FastMap, FastSet};
use crate::kernel::{self, KernelConfig, Probes};
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
            program_stats: config.capture.program_stats,
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
                    let Some(mut batch) = batch else {
                        tracing::error!("the ring-buffer reader stopped");
                        break;
                    };
                    self.drain_profiler().await;
                    for ev in batch.drain(..) {
                        self.on_kernel_event(ev);
                    }
                    self.kernel_rx.recycle(batch);
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

    /// The sampler's store, when sampling runs (for `snakepit-agent profile`).
    pub fn profile(&self) -> Option<crate::profiler::ProfileHandle> {
        self.profiler.as_ref().map(|(_, h)| h.clone())
    }

    fn feed_tracker(&mut self) {
        for obs in self.observations.drain(..) {
            self.tracker.observe(obs);
        }
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
                .summary(conn, |p, f| probes.fd_totals(p, f), final_summary);
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
