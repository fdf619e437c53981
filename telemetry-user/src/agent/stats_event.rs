//! The agent's `stats` event: every loss and error counted by the kernel, the
//! reader, the pipeline, the tracker and the sinks, never silent.
use super::Agent;
use crate::events::{schema, Event};

impl Agent {
    /// Losses and errors, never silent: ring-buffer drops and probe errors per probe
    /// and per CPU, reader decode errors, bus lag.
    pub(super) fn stats_event(&self) -> Event {
        use telemetry_common::{
            PROBE_NAMES, STAT_MAP_FULL, STAT_NAMES, STAT_READ_ERRORS, STAT_RINGBUF_DROPS,
            STAT_TRUNCATED,
        };
        let ks = self.probes.stats();
        let (records, decode_errors) = self.probes.reader_counters();
        let mut per_probe = serde_json::Map::new();
        for p in &ks.probes {
            let mut row = serde_json::Map::new();
            for (i, name) in STAT_NAMES.iter().enumerate() {
                if p.total[i] != 0 {
                    row.insert((*name).into(), p.total[i].into());
                }
            }
            let drops_per_cpu: Vec<u64> = p
                .per_cpu
                .iter()
                .map(|c| c[STAT_RINGBUF_DROPS as usize])
                .collect();
            if drops_per_cpu.iter().any(|&d| d != 0) {
                row.insert("ringbuf_drops_per_cpu".into(), drops_per_cpu.into());
            }
            if !row.is_empty() {
                per_probe.insert(p.probe.into(), row.into());
            }
        }
        debug_assert_eq!(ks.probes.len(), PROBE_NAMES.len());
        let mut run = serde_json::Map::new();
        for r in self.probes.prog_run_stats() {
            if let Some(avg) = r.avg_ns() {
                run.insert(
                    r.name.clone(),
                    serde_json::json!({"run_count": r.run_count, "avg_ns": avg}),
                );
            }
        }
        let wire = self.pipeline.wire_stats();
        let mut wire_errors = serde_json::Map::new();
        for (kind, n) in wire.error_counts() {
            wire_errors.insert(kind.as_str().into(), n.into());
        }
        let asm = self.pipeline.assembly_stats();
        let ps = self.pipeline.stats;
        let ts = self.tracker.stats();
        let otlp = crate::sinks::otlp::stats();
        Event::new(schema::AGENT_STATS)
            .measure("decode_errors", wire.total_errors())
            .measure("decode_gap_bytes", wire.gap_bytes)
            .measure("decode_resyncs", wire.resyncs)
            .measure("unknown_header_refs", wire.unknown_header_refs)
            .measure("records_lost", asm.lost_records)
            .measure("records_late", asm.late_records)
            .measure("records_reordered", asm.chunks_reordered)
            .measure("pending_dropped", ps.pending_dropped)
            .measure("decoder_restarts", ps.decoder_restarts)
            .meta("decode_errors_by_kind", wire_errors)
            .meta(
                "export_failures",
                serde_json::json!({"otlp": otlp.export_failures}),
            )
            .meta("otlp", serde_json::to_value(otlp).unwrap_or_default())
            .meta("calls", serde_json::to_value(&ts).unwrap_or_default())
            .meta("split_sampling", self.tracker.activity().sampler.stats())
            .measure("kernel_events", self.counters.kernel_events)
            .measure("ring_records", records)
            .measure("ring_decode_errors", decode_errors)
            .measure("ringbuf_drops", ks.total(STAT_RINGBUF_DROPS))
            .measure("probe_read_errors", ks.total(STAT_READ_ERRORS))
            .measure("map_full", ks.total(STAT_MAP_FULL))
            .measure("truncated_bytes", ks.total(STAT_TRUNCATED))
            .measure("watch_errors", self.counters.watch_errors)
            .measure(
                "proc_permission_errors",
                self.discovery.fd_permission_errors(),
            )
            .measure("chunks_timed", ps.chunks_timed)
            .measure("repro_chunk_bytes", self.chunks.joined_bytes)
            .measure("repro_chunk_orphans", self.chunks.orphans)
            .measure("bus_lagged", self.bus.lagged())
            .measure("watched_fds", self.probes.watched_fd_count() as u64)
            .meta("probes", per_probe)
            .meta("program_run_time", run)
            .meta_opt(
                "profiler",
                self.profiler
                    .as_ref()
                    .map(|(_, h)| serde_json::Value::Object(h.stats())),
            )
    }
}
