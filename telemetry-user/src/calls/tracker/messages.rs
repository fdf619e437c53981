//! What the decoded gRPC messages tell about a call: method, tool, session,
//! SnakeBridge target, result and error; Python-side telemetry re-emitted.
use super::*;

impl CallTracker {
    pub(super) fn request_message(&mut self, key: Key, si: usize, message: &GrpcMessage, now: u64) {
        let role = key_role(&self.calls, &key);
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        call.last_seen_ns = now;
        call.req_bytes[si] += message.len as u64 + 5;
        // Both sides see the same message: parse the first copy only.
        if call.request_parsed || message.compressed {
            call.info_ready = true;
            return;
        }
        let data_known = !message.data.is_empty() || message.len == 0;
        if !data_known {
            return;
        }
        call.request_parsed = true;
        call.info_ready = true;
        if call.method.is_none() {
            let guess = sp::identify_method(Flow::Request, &message.data).map(|m| {
                // Same shapes both ways: the connection's direction tells them apart.
                if role == Some(CallRole::WorkerCallsBeam) && m == Method::ExecuteTool {
                    Method::ExecuteElixirTool
                } else {
                    m
                }
            });
            call.method = Some(
                guess
                    .map(|m| m.as_str().into())
                    .unwrap_or_else(|| UNKNOWN_OPERATION.into()),
            );
        }
        self.repro_request(key, message);
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        if carries_tool_request(call.method_str()) {
            // Most calls need three fields: read them in place (see wire/snakepit/peek).
            // (With ML rules the parameters are needed: no scan then.)
            let peek = self
                .cfg
                .ml_rules
                .is_empty()
                .then(|| sp::peek_execute_tool_request(&message.data))
                .flatten()
                .filter(|p| sp::snakebridge_kind(p.tool_name).is_none());
            if let Some(req) = peek {
                if !req.session_id.is_empty() {
                    call.session_id = Some(req.session_id.into());
                }
                if !req.tool_name.is_empty() {
                    call.tool_name = Some(req.tool_name.into());
                }
                if call.correlation_id.is_none() {
                    call.correlation_id = req.correlation_id.map(Arc::from);
                }
                call.library = call.conn.adapter.as_deref().map(Arc::from);
                call.function = call.tool_name.clone();
            } else if let Ok(p) = sp::decode_execute_tool_request(&message.data) {
                let req = p.msg;
                if !req.session_id.is_empty() {
                    call.session_id = Some(req.session_id.as_str().into());
                }
                if !req.tool_name.is_empty() {
                    call.tool_name = Some(req.tool_name.as_str().into());
                }
                if call.correlation_id.is_none() {
                    call.correlation_id = req
                        .metadata
                        .get("correlation_id")
                        .map(|s| s.as_str().into());
                }
                if !self.cfg.ml_rules.is_empty() {
                    call.params = Some(sp::parameters_json(&req));
                }
                match sp::snakebridge_call(&req) {
                    Some(sb) => {
                        call.library = sb.library.map(Arc::from);
                        call.function = sb.function.map(Arc::from);
                    }
                    None => {
                        call.library = call.conn.adapter.as_deref().map(Arc::from);
                        call.function = call.tool_name.clone();
                    }
                }
            }
        } else if call.method_str() == Method::Heartbeat.as_str() {
            if let Ok(p) = sp::decode_prefix::<sp::HeartbeatRequest>(&message.data) {
                if !p.msg.session_id.is_empty() {
                    call.session_id = Some(p.msg.session_id.into());
                }
            }
        }
    }

    pub(super) fn response_message(
        &mut self,
        key: Key,
        si: usize,
        is_client: bool,
        message: &GrpcMessage,
        obs: &Observation,
    ) {
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        call.last_seen_ns = obs.ts_exit_ns;
        call.info_ready = true;
        call.resp_bytes[si] += message.len as u64 + 5;
        call.resp_msgs[si] += 1;
        if !is_client {
            // Response HEADERS lost: the first message's send is the next best t2.
            call.t2.get_or_insert(obs.ts_enter_ns);
            call.t2_message.get_or_insert(obs.ts_enter_ns);
        }
        if call.method.is_none() {
            call.method = Some(UNKNOWN_OPERATION.into());
        }
        let method = call.method_str().to_string();
        if method == Method::StreamTelemetry.as_str() {
            // Each side sees each event once: publish the n-th event on its first sight.
            if call.resp_msgs[si] > call.python_emitted {
                call.python_emitted = call.resp_msgs[si];
                let conn = call.conn.clone();
                self.python_event(&conn, message, obs.ts_exit_ns);
            }
            return;
        }
        self.parse_response(key, message);
    }

    /// The start of a response message whose end the decoder lost (frame sync lost
    /// inside it, e.g. a 50 MB result): what it says of the tool's success counts; it
    /// is no message (no bytes, count or time of its own).
    pub(super) fn response_head(&mut self, key: Key, message: &GrpcMessage) {
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        if message.data.is_empty() {
            // Lost before its start (the DATA that held it was not captured).
            call.server_lost = true;
        } else if call.method.is_some() {
            self.parse_response(key, message);
        }
    }

    /// The tool's success, error and result from an ExecuteTool response's message.
    fn parse_response(&mut self, key: Key, message: &GrpcMessage) {
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        let method = call.method_str();
        if call.response_parsed || message.compressed || !carries_tool_request(method) {
            return;
        }
        if method == Method::ExecuteStreamingTool.as_str() {
            return;
        }
        if message.data.is_empty() && message.len > 0 {
            return;
        }
        // A success needs nothing else from the message unless ML rules read its
        // result or the call has no correlation id yet (see wire/snakepit/peek).
        if self.cfg.ml_rules.is_empty()
            && call.correlation_id.is_some()
            && sp::peek_tool_success(&message.data) == Some(true)
        {
            call.response_parsed = true;
            call.success = Some(true);
            return;
        }
        if let Ok(p) = sp::decode_execute_tool_response(&message.data) {
            call.response_parsed = true;
            // proto3 omits false: a captured body without field 1 means failure.
            call.success = Some(p.msg.success);
            if !self.cfg.ml_rules.is_empty() {
                call.result_json = p.msg.result.as_ref().and_then(sp::param_json);
            }
            if !p.msg.success && !p.msg.error_message.is_empty() {
                let err = sp::parse_tool_error(&p.msg.error_message);
                call.error_type = err.error_type;
                call.error_message = err.message.or(Some(p.msg.error_message.clone()));
            }
            if call.correlation_id.is_none() {
                call.correlation_id = p
                    .msg
                    .metadata
                    .get("correlation_id")
                    .map(|s| s.as_str().into());
            }
            if !p.msg.success && !p.msg.error_message.is_empty() {
                self.repro_error_text(key, &p.msg.error_message);
            }
        }
    }

    pub(super) fn response_end(&mut self, key: Key, is_client: bool, obs: &Observation) {
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        call.last_seen_ns = obs.ts_exit_ns;
        call.info_ready = true;
        if call.method.is_none() {
            call.method = Some(UNKNOWN_OPERATION.into());
        }
        if is_client {
            call.t3 = Some(obs.ts_exit_ns);
            self.progress(key);
            self.complete(key, obs.ts_exit_ns, None);
        } else {
            call.server_done = Some(obs.ts_exit_ns);
            self.progress(key);
            // The client's read of the end was timed first (decode-once): done now.
            if let Some(t3) = self.calls.get(&key).and_then(|c| c.t3) {
                self.complete(key, t3, None);
                return;
            }
            self.maybe_worker_only(key, obs.ts_exit_ns);
        }
    }

    /// Completes a call the server side finished when the client side cannot end it.
    pub(super) fn maybe_worker_only(&mut self, key: Key, end: u64) {
        let seen_client = self.conns.get(&key.0).is_some_and(|c| c.seen_client);
        let lost = self.calls.get(&key).is_some_and(|c| c.client_lost);
        if !seen_client || lost {
            self.stats.worker_only_completions += 1;
            self.complete(key, end, None);
        }
    }

    pub(super) fn python_event(&mut self, conn: &ConnContext, message: &GrpcMessage, ts: u64) {
        let Ok(p) = sp::decode_prefix::<sp::TelemetryEvent>(&message.data) else {
            return;
        };
        let te = p.msg;
        let mut name: Vec<&str> = PYTHON_PREFIX.to_vec();
        let parts: Vec<&str> = te.event_parts.iter().map(String::as_str).collect();
        let rest = match parts.first() {
            Some(&"python") => &parts[1..],
            _ => &parts[..],
        };
        name.extend(rest);
        if rest.is_empty() {
            name.push("event");
        }
        let time = if te.timestamp_ns > 0 {
            te.timestamp_ns as u64
        } else {
            self.unix(ts)
        };
        let mut ev = Event::new(&name).at(time);
        for (k, v) in &te.measurements {
            use sp::telemetry_value::Value as TV;
            ev = match &v.value {
                Some(TV::IntValue(i)) => ev.measure(k, *i),
                Some(TV::FloatValue(f)) => ev.measure(k, *f),
                Some(TV::StringValue(s)) => ev.meta(k, s.clone()),
                None => ev,
            };
        }
        for (k, v) in &te.metadata {
            ev = ev.meta(k, v.clone());
        }
        ev = ev
            .meta("pool", conn.pool.to_string())
            .meta("worker_id", conn.worker_id.to_string())
            .meta("worker_pid", conn.worker_pid)
            .meta_opt(
                "correlation_id",
                (!te.correlation_id.is_empty()).then_some(te.correlation_id),
            );
        self.stats.python_events += 1;
        let design = crate::calls::ml::from_python(rest, &ev);
        self.publish(ev);
        if let Some(design) = design {
            self.publish(design);
        }
    }

    // -----------------------------------------------------------------------
    // Call table
}
