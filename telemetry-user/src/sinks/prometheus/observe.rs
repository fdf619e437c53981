//! From bus events to metrics: one handler per kind of event.

use super::*;

impl Metrics {
    /// Updates the metrics from one event. Unknown events are ignored.
    pub fn observe(&mut self, ev: &AgentEvent) {
        self.bus_events.inc();
        match ev {
            AgentEvent::CallEnd(e) => self.call_end(e),
            AgentEvent::PoolSize(e) => self.pool_size_event(e),
            AgentEvent::PoolCheckout(e) => {
                let pool = self.label_ref("pool", &e.pool);
                self.pool_checkouts
                    .get_or_create(&PoolLabels { pool })
                    .inc();
            }
            AgentEvent::WorkerCrash(e) => {
                let pool = self.label_ref("pool", &e.pool);
                let reason = self.label_ref("reason", e.crash_type);
                self.worker_crashes
                    .get_or_create(&CrashLabels { pool, reason })
                    .inc();
            }
            AgentEvent::CircuitBreakerOpen(e) => {
                let pool = self.label_ref("pool", &e.pool);
                self.circuit_breaker_opens
                    .get_or_create(&PoolLabels { pool })
                    .inc();
            }
            AgentEvent::CallStart(_)
            | AgentEvent::PoolCheckin(_)
            | AgentEvent::HealthAlert(_)
            | AgentEvent::SerializeStop(_) => {}
            AgentEvent::Dynamic(e) => self.dynamic(e),
        }
        self.sync_overflow();
    }

    fn dynamic(&mut self, ev: &Event) {
        if ev.is(schema::AGENT_STATS) {
            self.agent_stats(ev);
        } else if ev.is(crate::repro::REPRO_WRITTEN) || ev.is(crate::repro::REPRO_SKIPPED) {
            let (outcome, reason) = if ev.is(crate::repro::REPRO_WRITTEN) {
                ("written", String::new())
            } else {
                let r = ev.metadata.get("reason").and_then(Value::as_str);
                ("skipped", r.unwrap_or("unknown").to_string())
            };
            self.repro_scripts
                .get_or_create(&ReproLabels { outcome, reason })
                .inc();
        } else if ends_with(ev, &["memory", "gpu"]) || ends_with(ev, &["memory", "gpu_worker"]) {
            self.gpu_memory(ev);
        } else if ends_with(ev, &["memory", "allocate"]) || ends_with(ev, &["memory", "release"]) {
            let memory_type = self.label("memory_type", meta_str(ev, "type"));
            let device = self.label("device", meta_str(ev, "device"));
            let bytes = measure_f64(ev, "bytes").unwrap_or(0.0).max(0.0) as u64;
            let family = if ends_with(ev, &["memory", "allocate"]) {
                &self.memory_allocated
            } else {
                &self.memory_released
            };
            family
                .get_or_create(&MemoryLabels {
                    memory_type,
                    device,
                })
                .inc_by(bytes);
        } else if ends_with(ev, &["ml", "inference"]) {
            let model = self.label("model", meta_str(ev, "model"));
            let device = self.label("device", meta_str(ev, "device"));
            let l = ModelLabels { model, device };
            if let Some(d) = measure_f64(ev, "duration") {
                self.inference_duration.get_or_create(&l).observe(d / NS);
            }
            if let Some(t) = measure_f64(ev, "tokens_per_second") {
                self.tokens_per_second.get_or_create(&l).set(t);
            }
        }
    }

    fn call_end(&mut self, ev: &CallEnd) {
        // Internal calls (health checks, registration) are not the user's tool calls.
        if ev.call.internal {
            return;
        }
        let library = self.label_opt("library", ev.call.library.as_deref());
        let function = self.label_opt("function", ev.call.function_or_tool());
        let result = ev.result().to_string();
        self.calls
            .get_or_create(&CallLabels {
                library: library.clone(),
                function: function.clone(),
                result,
            })
            .inc();
        if let Some(p) = &ev.profile {
            let hot_library = self.label_ref("hot_library", &p.hot_library);
            self.python_samples
                .get_or_create(&SampleLabels {
                    function: function.clone(),
                    hot_library,
                })
                .inc_by(p.python_samples);
        }
        let fl = FunctionLabels {
            library: library.clone(),
            function,
        };
        self.call_duration
            .get_or_create(&fl)
            .observe(ev.duration as f64 / NS);
        if let Some(d) = ev.queue_time {
            self.queue_time.get_or_create(&fl).observe(d as f64 / NS);
        }
        if let Some(d) = ev.python_time {
            self.python_time.get_or_create(&fl).observe(d as f64 / NS);
        }
        if let Some(split) = &ev.split {
            self.split(&fl, split);
        }
        if ev.is_failed() {
            let error_type = self.label_opt("error_type", ev.error_type());
            self.exceptions
                .get_or_create(&ErrorLabels {
                    library,
                    error_type,
                })
                .inc();
        }
    }

    fn split(&mut self, fl: &FunctionLabels, split: &WorkerSplit) {
        self.worker_time
            .get_or_create(fl)
            .observe(split.worker_time as f64 / NS);
        if let Some(d) = &split.deserialize {
            self.deserialize_time
                .get_or_create(fl)
                .observe(d.time as f64 / NS);
        }
        if let Some(d) = &split.serialize {
            self.serialize_time
                .get_or_create(fl)
                .observe(d.time as f64 / NS);
        }
        let Some(sched) = &split.sched else {
            return;
        };
        for (state, v) in [
            ("on_cpu", sched.on_cpu),
            ("runqueue", sched.runqueue),
            ("io", sched.io_wait),
            ("gil", sched.gil_wait),
            ("lock", sched.lock_wait),
            ("sleep", sched.sleep),
            ("gpu", sched.gpu_wait),
        ] {
            self.sched_time
                .get_or_create(&SchedLabels {
                    library: fl.library.clone(),
                    function: fl.function.clone(),
                    state: state.to_string(),
                })
                .observe(v as f64 / NS);
        }
        if let Some((bound, _)) = sched.bound() {
            self.bound
                .get_or_create(&BoundLabels {
                    library: fl.library.clone(),
                    function: fl.function.clone(),
                    bound: bound.to_string(),
                })
                .inc();
        }
    }

    fn pool_size_event(&mut self, ev: &PoolSize) {
        let pool = self.label_ref("pool", &ev.pool);
        let l = PoolLabels { pool: pool.clone() };
        for (v, family) in [
            (ev.size, &self.pool_size),
            (ev.idle, &self.pool_idle),
            (ev.busy, &self.pool_busy),
        ] {
            family.get_or_create(&l).set(v as i64);
        }
        // Crash counters start at 0 for every known pool: rate() then sees the first
        // crash, and dashboards show 0 rather than no data.
        if self.pools_seen.insert(pool.clone()) {
            for reason in CRASH_REASONS {
                let _ = self.worker_crashes.get_or_create(&CrashLabels {
                    pool: pool.clone(),
                    reason: reason.to_string(),
                });
            }
            let _ = self.pool_checkouts.get_or_create(&l);
        }
    }

    fn gpu_memory(&mut self, ev: &Event) {
        let device = self.label("device", meta_str(ev, "device"));
        let pool = match meta_str(ev, "pool") {
            Some(p) => self.label("pool", Some(p)),
            None => String::new(),
        };
        let worker_id = match meta_str(ev, "worker_id") {
            Some(w) => self.label("worker_id", Some(w)),
            None => String::new(),
        };
        if self.gpu_devices_seen.len() < 4096 && self.gpu_devices_seen.insert(device.clone()) {
            self.gpu_devices.set(self.gpu_devices_seen.len() as i64);
        }
        let l = GpuLabels {
            device,
            pool,
            worker_id,
        };
        // A worker's own figure (`gpu_worker` events) is its allocation on the device.
        let allocated_key = if measure_f64(ev, "used_mb").is_some() {
            "used_mb"
        } else {
            "allocated_mb"
        };
        for (key, family) in [
            (allocated_key, &self.gpu_allocated),
            ("reserved_mb", &self.gpu_reserved),
            ("free_mb", &self.gpu_free),
            ("total_mb", &self.gpu_total),
        ] {
            if let Some(v) = measure_f64(ev, key) {
                family.get_or_create(&l).set(v * MB);
            }
        }
    }

    fn agent_stats(&mut self, ev: &Event) {
        let m = |k: &str| measure_f64(ev, k).map(|v| v.max(0.0) as u64);
        if let Some(v) = m("kernel_events") {
            raise(&self.events_read, v);
        }
        if let Some(v) = m("ringbuf_drops") {
            raise(&self.ringbuf_drops, v);
        }
        if let Some(v) = m("map_full") {
            raise(&self.map_full, v);
        }
        if let Some(v) = m("bus_lagged") {
            raise(&self.bus_lagged, v);
        }
        if let Some(v) = m("watched_fds") {
            self.watched_fds.set(v as i64);
        }
        if let Some(v) = m("ring_decode_errors") {
            raise(
                &self.decode_errors.get_or_create(&KindLabels {
                    kind: "ring_record".into(),
                }),
                v,
            );
        }
        if let Some(Value::Object(kinds)) = ev.metadata.get("decode_errors_by_kind") {
            for (kind, n) in kinds {
                if let Some(n) = n.as_u64() {
                    let kind = self.label("kind", Some(kind.clone()));
                    raise(&self.decode_errors.get_or_create(&KindLabels { kind }), n);
                }
            }
        }
        if let Some(n) = ev
            .metadata
            .get("calls")
            .and_then(|c| c.get("unknown_methods"))
            .and_then(Value::as_u64)
        {
            raise(&self.unknown_methods, n);
        }
        if let Some(Value::Object(progs)) = ev.metadata.get("program_run_time") {
            for (name, row) in progs {
                let runs = row.get("run_count").and_then(Value::as_u64);
                let avg = row.get("avg_ns").and_then(Value::as_f64);
                let program = self.label("program", Some(name.clone()));
                let l = ProgramLabels { program };
                if let Some(runs) = runs {
                    raise(&self.program_runs.get_or_create(&l), runs);
                    if let Some(avg) = avg {
                        let secs = runs as f64 * avg / NS;
                        let c = self.program_run_seconds.get_or_create(&l);
                        let cur = c.get();
                        if secs > cur {
                            c.inc_by(secs - cur);
                        }
                    }
                }
            }
        }
        // Exporters report their failures as `export_failures: {exporter: n}`.
        if let Some(Value::Object(by)) = ev.metadata.get("export_failures") {
            for (name, n) in by {
                if let Some(n) = n.as_u64() {
                    let exporter = self.label("exporter", Some(name.clone()));
                    raise(
                        &self
                            .export_failures
                            .get_or_create(&ExporterLabels { exporter }),
                        n,
                    );
                }
            }
        }
    }
}
