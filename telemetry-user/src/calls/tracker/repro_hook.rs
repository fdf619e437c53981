//! Feeds the repro-script generator (`crate::repro`): request messages and deadlines
//! of tool calls while they are in flight, the failure when they end.
use super::*;
use crate::repro::{FailedCall, Failure, Repro};

impl CallTracker {
    /// Turns on repro scripts for failed calls.
    pub fn set_repro(&mut self, repro: Repro) {
        self.repro = Some(repro);
    }

    #[cfg(test)]
    pub(crate) fn bus_for_tests(&self) -> crate::events::Bus {
        self.bus.clone()
    }

    pub(super) fn repro_request(&mut self, key: Key, message: &GrpcMessage) {
        let (Some(r), Some(call)) = (self.repro.as_mut(), self.calls.get(&key)) else {
            return;
        };
        if carries_tool_request(call.method_str()) {
            r.request(call.seq, call.conn.worker_pid, &message.data, message.len);
        }
    }

    pub(super) fn repro_headers(&mut self, key: Key, timeout: Option<&String>) {
        let (Some(r), Some(call), Some(t)) = (self.repro.as_mut(), self.calls.get(&key), timeout)
        else {
            return;
        };
        if carries_tool_request(call.method_str()) {
            r.grpc_timeout(call.seq, t);
        }
    }

    pub(super) fn repro_error_text(&mut self, key: Key, text: &str) {
        if let (Some(r), Some(call)) = (self.repro.as_mut(), self.calls.get(&key)) {
            r.error_text(call.seq, text);
        }
    }

    /// A call left the table: a failed user call gets its script, any other only
    /// frees its stored request.
    pub(super) fn repro_end(&mut self, call: &Call, outcome: Option<&Outcome>, t_end: u64) {
        let Some(r) = self.repro.as_mut() else {
            return;
        };
        let failure = match outcome {
            _ if call.internal => None,
            // Not known to have failed: no script (the repro tests count these).
            None | Some(Outcome::Ok) | Some(Outcome::Unknown) => None,
            Some(Outcome::Error) => Some(Failure::ToolError {
                error_type: call.error_type.clone(),
                message: call.error_message.clone(),
            }),
            Some(Outcome::Exception {
                kind: "exit",
                reason,
                ..
            }) => Some(Failure::WorkerDied {
                reason: reason.clone(),
            }),
            Some(Outcome::Exception {
                error_type, reason, ..
            }) => Some(Failure::Status {
                error_type: error_type.clone(),
                reason: reason.clone(),
            }),
        };
        let Some(failure) = failure else {
            r.discard(call.seq);
            return;
        };
        // A failing streaming call carries the tool's error JSON in grpc-message.
        if let (Failure::Status { .. }, Some(m)) = (&failure, &call.grpc_message) {
            if !m.is_empty() {
                r.error_text(call.seq, m);
            }
        }
        r.failed(FailedCall {
            seq: call.seq,
            time_unix_nano: t_end,
            operation: call.method_str().to_string(),
            tool: call.tool_name.as_deref().map(str::to_string),
            library: call.library.as_deref().map(str::to_string),
            function: call.function.as_deref().map(str::to_string),
            session_id: call.session_id.as_deref().map(str::to_string),
            correlation_id: call.correlation_id.as_deref().map(str::to_string),
            pool: call.conn.pool.to_string(),
            worker_id: call.conn.worker_id.to_string(),
            worker_pid: call.conn.worker_pid,
            failure,
        });
    }
}
