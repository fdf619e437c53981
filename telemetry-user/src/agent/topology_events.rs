//! Topology changes from discovery, as events of the schema.
use crate::discovery::{ConnInfo, Discovery, NsIdentity, TopologyChange};
use crate::events::{schema, Event};

/// [`to_event`], with the namespaces and container identity discovery read for the
/// BEAM or worker found: `<role>_ns_pid` (its pid inside its pid namespace, when that
/// is not the host's), `pid_ns`, `net_ns`, `container_id`, `pod_uid`.
pub fn to_event_in(change: &TopologyChange, discovery: &Discovery) -> Event {
    let ev = to_event(change);
    let (role, pid) = match change {
        TopologyChange::BeamDiscovered { beam_pid, .. } => ("beam_ns_pid", *beam_pid),
        TopologyChange::WorkerDiscovered(w) => ("worker_ns_pid", w.pid),
        _ => return ev,
    };
    match discovery.identity(pid) {
        Some(id) => with_identity(ev, role, id),
        None => ev,
    }
}

fn with_identity(ev: Event, ns_pid_key: &str, id: &NsIdentity) -> Event {
    ev.meta_opt(ns_pid_key, id.ns_pid)
        .meta_opt("pid_ns", id.pid_ns)
        .meta_opt("net_ns", id.net_ns)
        .meta_opt("container_id", id.container_id.clone())
        .meta_opt("pod_uid", id.pod_uid.clone())
}

pub fn to_event(change: &TopologyChange) -> Event {
    match change {
        TopologyChange::BeamDiscovered {
            beam_pid,
            listen_ports,
            instance_name,
        } => Event::new(schema::BEAM_DISCOVERED)
            .meta("beam_pid", *beam_pid)
            .meta("listen_ports", listen_ports.clone())
            .meta_opt("instance_name", instance_name.clone()),
        TopologyChange::BeamExited { beam_pid, exit } => Event::new(schema::BEAM_EXITED)
            .meta("beam_pid", *beam_pid)
            .meta_opt("exit_code", exit.code)
            .meta_opt("signal", exit.signal),
        TopologyChange::WorkerDiscovered(w) => Event::new(schema::WORKER_DISCOVERED)
            .meta("pool", w.pool.clone())
            .meta("worker_id", w.worker_id.clone())
            .meta("worker_pid", w.pid)
            .meta_opt("beam_pid", w.beam_pid)
            .meta_opt("port", w.port)
            .meta(
                "transport",
                serde_json::to_value(w.transport).unwrap_or_default(),
            )
            .meta_opt("adapter", w.adapter.clone())
            .meta_opt("run_id", w.run_id.clone())
            .meta_opt("instance_name", w.instance_name.clone()),
        TopologyChange::WorkerListening {
            beam_pid,
            pid,
            worker_id,
            pool,
            port,
        } => Event::new(schema::WORKER_LISTENING)
            .meta("pool", pool.clone())
            .meta("worker_id", worker_id.clone())
            .meta("worker_pid", *pid)
            .meta_opt("beam_pid", *beam_pid)
            .meta("port", *port),
        TopologyChange::WorkerExited {
            beam_pid,
            pool,
            worker_id,
            pid,
            exit_code,
            signal,
            core_dumped,
        } => Event::new(schema::WORKER_EXITED)
            .meta("pool", pool.clone())
            .meta("worker_id", worker_id.clone())
            .meta("worker_pid", *pid)
            .meta_opt("beam_pid", *beam_pid)
            .meta_opt("exit_code", *exit_code)
            .meta_opt("signal", *signal)
            .meta("core_dumped", *core_dumped),
        TopologyChange::ConnectionOpened { conn } => {
            Event::new(schema::CONNECTION_OPENED).meta_from(&ConnMeta::from(conn))
        }
        TopologyChange::ConnectionClosed {
            conn,
            closed_by_pid,
            reason,
        } => Event::new(schema::CONNECTION_CLOSED)
            .meta_from(&ConnMeta::from(conn))
            .meta_opt("closed_by_pid", *closed_by_pid)
            .meta("reason", serde_json::to_value(reason).unwrap_or_default()),
    }
}

/// A connection as event metadata (addresses as strings, `conn_id` named as such).
#[derive(serde::Serialize)]
pub struct ConnMeta {
    pub conn_id: u64,
    pub role: serde_json::Value,
    pub transport: serde_json::Value,
    pub pool: String,
    pub worker_id: String,
    pub beam_pid: u32,
    pub beam_fd: u32,
    pub worker_pid: u32,
    pub worker_fd: u32,
    pub beam_addr: Option<String>,
    pub worker_addr: Option<String>,
}

impl From<&ConnInfo> for ConnMeta {
    fn from(c: &ConnInfo) -> Self {
        ConnMeta {
            conn_id: c.id,
            role: serde_json::to_value(c.role).unwrap_or_default(),
            transport: serde_json::to_value(c.transport).unwrap_or_default(),
            pool: c.pool.clone(),
            worker_id: c.worker_id.clone(),
            beam_pid: c.beam_pid,
            beam_fd: c.beam_fd,
            worker_pid: c.worker_pid,
            worker_fd: c.worker_fd,
            beam_addr: c.beam_addr.map(|a| a.to_string()),
            worker_addr: c.worker_addr.map(|a| a.to_string()),
        }
    }
}
