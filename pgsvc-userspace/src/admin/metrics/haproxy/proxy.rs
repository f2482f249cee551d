//! `haproxy_frontend_*` and `haproxy_backend_*`: one pair per service (a `listen`).

use super::super::{Exposition, Kind, proxy, state_set};
use super::{BACKEND_STATES, Field, ZERO, backend_limit};
use crate::status::Status;

const FRONTEND: &[(&str, Kind, &str, Field)] = &[
    (
        "current_sessions",
        Kind::Gauge,
        "Current number of active sessions.",
        |_, v| v.current_sessions.into(),
    ),
    (
        "max_sessions",
        Kind::Gauge,
        "Maximum observed number of active sessions.",
        |_, v| v.peaks.max_sessions.into(),
    ),
    (
        "limit_sessions",
        Kind::Gauge,
        "Configured session limit.",
        |_, v| v.maxconn.into(),
    ),
    (
        "sessions_total",
        Kind::Counter,
        "Total number of sessions.",
        |_, v| v.sessions_total.into(),
    ),
    (
        "limit_session_rate",
        Kind::Gauge,
        "Configured limit on new sessions per second.",
        |_, _| ZERO,
    ),
    (
        "max_session_rate",
        Kind::Gauge,
        "Maximum observed number of sessions per second.",
        |_, v| v.peaks.max_session_rate.into(),
    ),
    (
        "connections_rate_max",
        Kind::Gauge,
        "Maximum observed number of connections per second.",
        |_, v| v.peaks.max_session_rate.into(),
    ),
    (
        "connections_total",
        Kind::Counter,
        "Total number of connections.",
        |_, v| v.sessions_total.into(),
    ),
    (
        "bytes_in_total",
        Kind::Counter,
        "Current total of incoming bytes.",
        |_, v| v.bytes_in.into(),
    ),
    (
        "bytes_out_total",
        Kind::Counter,
        "Current total of outgoing bytes.",
        |_, v| v.bytes_out.into(),
    ),
    (
        "requests_denied_total",
        Kind::Counter,
        "Total number of denied requests.",
        |_, _| ZERO,
    ),
    (
        "denied_connections_total",
        Kind::Counter,
        "Total number of requests denied by \"tcp-request connection\" rules.",
        |_, _| ZERO,
    ),
    (
        "denied_sessions_total",
        Kind::Counter,
        "Total number of requests denied by \"tcp-request session\" rules.",
        |_, _| ZERO,
    ),
    (
        "request_errors_total",
        Kind::Counter,
        "Total number of request errors.",
        |_, _| ZERO,
    ),
    (
        "http_requests_total",
        Kind::Counter,
        "Total number of HTTP requests received.",
        |_, _| ZERO,
    ),
];

pub(in crate::admin::metrics) fn frontend(e: &mut Exposition, s: &Status) {
    // A frontend is UP (HAProxy's OPEN) once the datapath serves its address.
    let state = if s.ready { "UP" } else { "DOWN" };
    e.family(
        "haproxy_frontend_status",
        Kind::Gauge,
        "Current status of the service.",
        s.services
            .iter()
            .flat_map(|v| state_set(proxy(v), &BACKEND_STATES, state)),
    );
    for &(name, kind, help, field) in FRONTEND {
        e.family(
            &format!("haproxy_frontend_{name}"),
            kind,
            help,
            s.services.iter().map(|v| (proxy(v), field(s, v))),
        );
    }
}

const BACKEND: &[(&str, Kind, &str, Field)] = &[
    (
        "current_queue",
        Kind::Gauge,
        "Number of current queued connections.",
        |_, _| ZERO,
    ),
    (
        "max_queue",
        Kind::Gauge,
        "Maximum observed number of queued connections.",
        |_, _| ZERO,
    ),
    (
        "current_sessions",
        Kind::Gauge,
        "Number of current sessions.",
        |_, v| v.current_sessions.into(),
    ),
    (
        "max_sessions",
        Kind::Gauge,
        "Maximum observed number of active sessions.",
        |_, v| v.peaks.max_sessions.into(),
    ),
    (
        "limit_sessions",
        Kind::Gauge,
        "Configured session limit.",
        |_, v| backend_limit(v.maxconn).into(),
    ),
    (
        "sessions_total",
        Kind::Counter,
        "Total number of sessions.",
        |_, v| v.sessions_total.into(),
    ),
    (
        "max_session_rate",
        Kind::Gauge,
        "Maximum observed number of sessions per second.",
        |_, v| v.peaks.max_session_rate.into(),
    ),
    (
        "last_session_seconds",
        Kind::Gauge,
        "Number of seconds since last session assigned to server/backend.",
        |s, v| v.peaks.last_session_seconds(s.updated_at).into(),
    ),
    (
        "bytes_in_total",
        Kind::Counter,
        "Current total of incoming bytes.",
        |_, v| v.bytes_in.into(),
    ),
    (
        "bytes_out_total",
        Kind::Counter,
        "Current total of outgoing bytes.",
        |_, v| v.bytes_out.into(),
    ),
    (
        "connection_attempts_total",
        Kind::Counter,
        "Total number of connection establishment attempts.",
        |_, v| v.sessions_total.into(),
    ),
    (
        "connection_reuses_total",
        Kind::Counter,
        "Total number of connection reuses.",
        |_, _| ZERO,
    ),
    (
        "connection_errors_total",
        Kind::Counter,
        "Total number of connection errors.",
        |_, _| ZERO,
    ),
    (
        "response_errors_total",
        Kind::Counter,
        "Total number of response errors.",
        |_, _| ZERO,
    ),
    (
        "retry_warnings_total",
        Kind::Counter,
        "Total number of retry warnings.",
        |_, _| ZERO,
    ),
    (
        "redispatch_warnings_total",
        Kind::Counter,
        "Total number of redispatch warnings.",
        |_, _| ZERO,
    ),
    (
        "client_aborts_total",
        Kind::Counter,
        "Total number of data transfers aborted by the client.",
        |_, _| ZERO,
    ),
    (
        "server_aborts_total",
        Kind::Counter,
        "Total number of data transfers aborted by the server.",
        |_, _| ZERO,
    ),
    ("weight", Kind::Gauge, "Service weight.", |_, v| {
        v.servers
            .iter()
            .filter(|x| x.active)
            .map(|x| u64::from(x.effective_weight))
            .sum::<u64>()
            .into()
    }),
    (
        "active_servers",
        Kind::Gauge,
        "Current number of active servers.",
        |_, v| v.active_servers.into(),
    ),
    (
        "backup_servers",
        Kind::Gauge,
        "Current number of backup servers.",
        |_, v| v.backup_servers.into(),
    ),
    (
        "check_up_down_total",
        Kind::Counter,
        "Total number of UP->DOWN transitions.",
        |_, v| v.down_transitions.into(),
    ),
    (
        "loadbalanced_total",
        Kind::Counter,
        "Total number of times a service was selected, either for new sessions, or when redispatching.",
        |_, v| v.sessions_total.into(),
    ),
    (
        "http_requests_total",
        Kind::Counter,
        "Total number of HTTP requests received.",
        |_, _| ZERO,
    ),
];

pub(in crate::admin::metrics) fn backend(e: &mut Exposition, s: &Status) {
    e.family(
        "haproxy_backend_status",
        Kind::Gauge,
        "Current status of the service.",
        s.services.iter().flat_map(|v| {
            let up = v.active_servers + v.backup_servers > 0;
            state_set(proxy(v), &BACKEND_STATES, if up { "UP" } else { "DOWN" })
        }),
    );
    for &(name, kind, help, field) in BACKEND {
        e.family(
            &format!("haproxy_backend_{name}"),
            kind,
            help,
            s.services.iter().map(|v| (proxy(v), field(s, v))),
        );
    }
}
