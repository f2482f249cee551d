//! `haproxy_process_*`: the agent process and connection totals.

use super::super::{Exposition, Kind, Num};
use super::ZERO;
use crate::status::Status;

pub(in crate::admin::metrics) fn process(e: &mut Exposition, s: &Status) {
    let p = &s.process;
    let current: u64 = s.services.iter().map(|v| v.current_sessions).sum();
    let total: u64 = s.services.iter().map(|v| v.sessions_total).sum();
    let listeners = s.services.len() as u64;
    let max_flows = s.datapath.max_flows;
    let uptime = (s.updated_at - s.started_at).max(0.0);
    let g = Kind::Gauge;
    let c = Kind::Counter;
    let rows: &[(&str, Kind, &str, Num)] = &[
        (
            "nbthread",
            g,
            "Number of started threads (agent worker threads).",
            p.nbthread.into(),
        ),
        ("nbproc", g, "Number of started processes.", 1u64.into()),
        (
            "relative_process_id",
            g,
            "Relative process id, starting at 1.",
            1u64.into(),
        ),
        (
            "uptime_seconds",
            g,
            "How long ago this process was started (seconds).",
            uptime.into(),
        ),
        (
            "start_time_seconds",
            g,
            "Start time in seconds.",
            s.started_at.into(),
        ),
        (
            "max_memory_bytes",
            g,
            "Per-process memory limit (in bytes); 0=unset.",
            ZERO,
        ),
        (
            "pool_allocated_bytes",
            g,
            "Total amount of memory allocated in pools (in bytes).",
            ZERO,
        ),
        (
            "pool_used_bytes",
            g,
            "Total amount of memory used in pools (in bytes).",
            ZERO,
        ),
        (
            "pool_failures_total",
            c,
            "Total number of failed pool allocations.",
            ZERO,
        ),
        (
            "max_fds",
            g,
            "Maximum number of open file descriptors; 0=unset.",
            p.max_fds.into(),
        ),
        (
            "max_sockets",
            g,
            "Maximum number of open sockets.",
            p.max_fds.into(),
        ),
        (
            "max_connections",
            g,
            "Maximum number of concurrent connections.",
            max_flows.into(),
        ),
        (
            "hard_max_connections",
            g,
            "Initial Maximum number of concurrent connections.",
            max_flows.into(),
        ),
        (
            "current_connections",
            g,
            "Number of active sessions.",
            current.into(),
        ),
        (
            "connections_total",
            c,
            "Total number of created sessions.",
            total.into(),
        ),
        (
            "requests_total",
            c,
            "Total number of requests (TCP or HTTP).",
            ZERO,
        ),
        ("max_pipes", g, "Maximum number of pipes.", ZERO),
        ("pipes_used_total", c, "Number of pipes in used.", ZERO),
        ("pipes_free_total", c, "Number of pipes unused.", ZERO),
        (
            "current_connection_rate",
            g,
            "Current number of connections per second over last elapsed second.",
            p.peaks.session_rate.into(),
        ),
        (
            "limit_connection_rate",
            g,
            "Configured maximum number of connections per second.",
            ZERO,
        ),
        (
            "max_connection_rate",
            g,
            "Maximum observed number of connections per second.",
            p.peaks.max_session_rate.into(),
        ),
        (
            "current_session_rate",
            g,
            "Current number of sessions per second over last elapsed second.",
            p.peaks.session_rate.into(),
        ),
        (
            "limit_session_rate",
            g,
            "Configured maximum number of sessions per second.",
            ZERO,
        ),
        (
            "max_session_rate",
            g,
            "Maximum observed number of sessions per second.",
            p.peaks.max_session_rate.into(),
        ),
        ("current_tasks", g, "Current number of tasks.", ZERO),
        (
            "current_run_queue",
            g,
            "Current number of tasks in the run-queue.",
            ZERO,
        ),
        (
            "idle_time_percent",
            g,
            "Idle to total ratio over last sample (percent).",
            p.idle_percent.into(),
        ),
        ("stopping", g, "Non zero means stopping in progress.", ZERO),
        (
            "jobs",
            g,
            "Current number of active jobs (listeners, sessions, open devices).",
            (current + listeners).into(),
        ),
        (
            "unstoppable_jobs",
            g,
            "Current number of active jobs that can't be stopped during a soft stop.",
            ZERO,
        ),
        (
            "listeners",
            g,
            "Current number of active listeners.",
            listeners.into(),
        ),
        ("active_peers", g, "Current number of active peers.", ZERO),
        (
            "connected_peers",
            g,
            "Current number of connected peers.",
            ZERO,
        ),
        (
            "dropped_logs_total",
            c,
            "Total number of dropped logs.",
            ZERO,
        ),
    ];
    for &(name, kind, help, value) in rows {
        e.single(&format!("haproxy_process_{name}"), kind, help, value);
    }
    e.family(
        "haproxy_process_build_info",
        Kind::Gauge,
        "Build info.",
        [(vec![("version", s.version.as_str())], Num::Int(1))],
    );
}
